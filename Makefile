# `make demo` and `make test` do all their own set-up (scripts/setup.sh), so a fresh Debian 12 machine
# needs nothing else; a second run skips what is done.
PY := .venv/bin/python
TD := .venv/bin/tower-detector
BACKEND_SOURCES := $(shell find backend -name '*.py' -not -path '*/__pycache__/*')
DEMO := demo
# the demo model's recommended threshold (max Youden J), read when a rule needs it
THRESHOLD = $$($(PY) -c "import json; print(json.load(open('$(DEMO)/model/metrics.json'))['thresholds']['youden'] or 0.5)")

.PHONY: setup test test-fast lint demo resources clean package qgis
.DEFAULT_GOAL := help

help:
	@echo "make demo   - the whole pipeline on a generated sample scene under $(DEMO)/, offline, ending in a QGIS project"
	@echo "make test   - lint and run all tests"
	@echo "make test-fast - the same without the tests that train or score with TensorFlow"
	@echo "make package - the installable QGIS plugin zip in dist/, checked against plugins.qgis.org's rules"
	@echo "make qgis   - start QGIS with the plugin from this checkout (a profile of its own in build/qgis)"

setup:
	@scripts/setup.sh

resources: setup
	@$(PY) scripts/build_plugin.py resources

lint: setup
	@.venv/bin/ruff check --output-format concise backend tower_detector_plugin tests benchmarks scripts

# Two pytest processes, as in production: the backend's tests (TensorFlow, no QGIS: pytest-qgis is not loaded)
# and the plugin's (real QGIS, no TensorFlow).
test: setup resources lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -p no:pytest_qgis tests/backend
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest tests/plugin

# the same without the tests that train or score with TensorFlow (marker `slow`): a quick check while working
test-fast: setup resources lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -p no:pytest_qgis -m "not slow" tests/backend
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m "not slow" tests/plugin

# The demo trains on scene A and shows scene B, which the model never saw (another seed: other terrain, lines and
# look-alikes). Scene A is dense (16 HV lines) so that a small area holds a few hundred tower tiles to learn from.
demo: setup resources $(DEMO)/tiles.json $(DEMO)/dataset/dataset.json $(DEMO)/model/metrics.json \
		$(DEMO)/results/heatmap.tif $(DEMO)/demo.qgz
	@echo
	@echo "Demo outputs:"
	@echo "  training scene A (GeoTIFF, towers, area): $(DEMO)/scene-a/"
	@echo "  unseen scene B (GeoTIFF, towers, area):   $(DEMO)/scene-b/"
	@echo "  zoom-18 tile cover of B (JSON):   $(DEMO)/tiles.json"
	@echo "  training set from A (label-maker): $(DEMO)/dataset/ (data.npz, labels.npz, config.json, tiles/)"
	@echo "  model (compact backbone):         $(DEMO)/model/ (model.keras, params.json, metrics.json, MODEL_CARD.md)"
	@echo "  results store of B (chunks):      $(DEMO)/store/"
	@echo "  heatmap (GeoTIFF):                $(DEMO)/results/heatmap.tif"
	@echo "  candidates (GeoPackage):          $(DEMO)/results/candidates.gpkg"
	@echo "  original JSON / GeoJSON overlay:  $(DEMO)/results/original.json, $(DEMO)/results/overlay.geojson"
	@echo "  QGIS project of B, styled (.qgz): $(DEMO)/demo.qgz, rendered by QGIS to $(DEMO)/demo.png"
	@echo
	@$(PY) scripts/demo_report.py --scores $(DEMO)/results/original.json --towers $(DEMO)/scene-b/towers.geojson \
		--threshold $(THRESHOLD)

$(DEMO)/scene-a/scene.tif: $(BACKEND_SOURCES)
	$(TD) synthetic --out $(DEMO)/scene-a --tiles-x 48 --tiles-y 48 --seed 7 --hv-lines 16

$(DEMO)/scene-b/scene.tif: $(BACKEND_SOURCES)
	$(TD) synthetic --out $(DEMO)/scene-b --tiles-x 24 --tiles-y 24 --seed 8

$(DEMO)/tiles.json: $(DEMO)/scene-b/scene.tif
	$(TD) tiles --area $(DEMO)/scene-b/area.geojson --zoom 18 --shards 2 --out $@

$(DEMO)/dataset/dataset.json: $(DEMO)/scene-a/scene.tif
	$(TD) dataset --area $(DEMO)/scene-a/area.geojson --towers $(DEMO)/scene-a/towers.geojson \
		--imagery $(DEMO)/scene-a/scene.tif --out $(DEMO)/dataset --block-size 4 --seed 7

# offline, from scratch: the compact backbone learns the synthetic towers in a few minutes on a CPU
$(DEMO)/model/metrics.json: $(DEMO)/dataset/dataset.json
	rm -rf $(DEMO)/model
	$(TD) train --data $(DEMO)/dataset --out $(DEMO)/model --backbone compact --weights none --epochs-fine 8

$(DEMO)/results/heatmap.tif: $(DEMO)/model/metrics.json $(DEMO)/scene-b/scene.tif
	rm -rf $(DEMO)/store $(DEMO)/results
	mkdir -p $(DEMO)/results
	$(TD) predict --model $(DEMO)/model --imagery $(DEMO)/scene-b/scene.tif --area $(DEMO)/scene-b/area.geojson \
		--out $(DEMO)/store --shards 2 --checkpoint-every 64
	$(TD) results $(DEMO)/store --heatmap $@ --candidates $(DEMO)/results/candidates.gpkg \
		--json $(DEMO)/results/original.json --geojson $(DEMO)/results/overlay.geojson \
		--threshold $(THRESHOLD)

# the plugin's own styling, from Debian's QGIS; THRESHOLD as for the results above
$(DEMO)/demo.qgz: $(DEMO)/results/heatmap.tif
	QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/demo_project.py --scene $(DEMO)/scene-b/scene.tif \
		--heatmap $(DEMO)/results/heatmap.tif --candidates $(DEMO)/results/candidates.gpkg --out $@ \
		--png $(DEMO)/demo.png --threshold $(THRESHOLD)

package: setup resources
	$(PY) scripts/build_plugin.py zip --dist dist

qgis: setup resources
	$(PY) scripts/qgis_profile.py --root build/qgis --run

clean:
	rm -rf $(DEMO) build dist
