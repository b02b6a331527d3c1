"""Real stand-ins on loopback (a tile server, Overpass, JOSM, an S3 fault proxy) and known data, for the tests
and the benchmarks: `from tests.fakes.tileserver import TileServer`, from the repository's root."""
