"""The tests: tests/backend (the tower-detector engine), tests/plugin (the QGIS plugin, in real QGIS) and
tests/fakes (loopback servers and known data, which the benchmarks use too)."""
