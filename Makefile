# `make demo` and `make test` do all their own set-up (scripts/setup.sh), so a fresh Debian 12 machine
# needs nothing else; a second run skips what is done.
PY := .venv/bin/python
TD := .venv/bin/tower-detector
BACKEND_SOURCES := $(shell find backend -name '*.py' -not -path '*/__pycache__/*')
DEMO := demo

.PHONY: setup test lint demo resources clean
.DEFAULT_GOAL := help

help:
	@echo "make demo   - generate the sample scene, its tile cover and a training set under $(DEMO)/"
	@echo "make test   - lint and run all tests"

setup:
	@scripts/setup.sh

resources: setup
	@$(PY) scripts/build_plugin.py resources

lint: setup
	@.venv/bin/ruff check --output-format concise backend tower_detector_plugin tests benchmarks scripts

test: setup resources lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest

demo: setup $(DEMO)/tiles.json $(DEMO)/dataset/dataset.json $(DEMO)/model/metrics.json $(DEMO)/results/heatmap.tif
	@echo
	@echo "Demo outputs:"
	@echo "  imagery (GeoTIFF, EPSG:3857):  $(DEMO)/scene/scene.tif"
	@echo "  towers and lines (GeoJSON):    $(DEMO)/scene/towers.geojson"
	@echo "  area (GeoJSON):                $(DEMO)/scene/area.geojson"
	@echo "  zoom-18 tile cover (JSON):     $(DEMO)/tiles.json"
	@echo "  training set (label-maker):    $(DEMO)/dataset/ (data.npz, labels.npz, config.json, tiles/)"
	@echo "  small model (offline, tiny):   $(DEMO)/model/ (model.keras, params.json, metrics.json, roc.png)"
	@echo "  results store (chunks):        $(DEMO)/store/"
	@echo "  heatmap (GeoTIFF):             $(DEMO)/results/heatmap.tif"
	@echo "  candidates (GeoPackage):       $(DEMO)/results/candidates.gpkg"
	@echo "  seed JSON / GeoJSON overlay:   $(DEMO)/results/seed.json, $(DEMO)/results/overlay.geojson"

$(DEMO)/scene/scene.tif: $(BACKEND_SOURCES)
	$(TD) sample --out $(DEMO)/scene --tiles-x 16 --tiles-y 16 --seed 7

$(DEMO)/tiles.json: $(DEMO)/scene/scene.tif
	$(TD) tiles --area $(DEMO)/scene/area.geojson --zoom 18 --shards 2 --out $@

$(DEMO)/dataset/dataset.json: $(DEMO)/scene/scene.tif
	$(TD) dataset --area $(DEMO)/scene/area.geojson --towers $(DEMO)/scene/towers.geojson \
		--imagery $(DEMO)/scene/scene.tif --out $(DEMO)/dataset --block-size 4 --seed 7

# offline: no ImageNet weights, and a tiny image size and few epochs so the demo stays quick
$(DEMO)/model/metrics.json: $(DEMO)/dataset/dataset.json
	rm -rf $(DEMO)/model
	$(TD) train --data $(DEMO)/dataset --out $(DEMO)/model --weights none --image-size 72 \
		--epochs-top 1 --epochs-fine 3 --batch-size 16

$(DEMO)/results/heatmap.tif: $(DEMO)/model/metrics.json
	rm -rf $(DEMO)/store $(DEMO)/results
	mkdir -p $(DEMO)/results
	$(TD) predict --model $(DEMO)/model --imagery $(DEMO)/scene/scene.tif --area $(DEMO)/scene/area.geojson \
		--out $(DEMO)/store --shards 2 --checkpoint-every 64
	$(TD) results $(DEMO)/store --heatmap $@ --candidates $(DEMO)/results/candidates.gpkg \
		--json $(DEMO)/results/seed.json --geojson $(DEMO)/results/overlay.geojson \
		--threshold $$($(PY) -c "import json; print(json.load(open('$(DEMO)/model/metrics.json'))['thresholds']['youden'] or 0.5)")

clean:
	rm -rf $(DEMO) build dist
