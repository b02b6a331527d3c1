"""Zoom-18 tower labels for Nigeria's OSM towers: our positive_tiles against label-maker's own tippecanoe path.

    .venv/bin/python -m benchmarks.labels [--region training_roi_nigeria.geojson]

Both sides read the same file, ../shared/data/osm/nigeria_power_2018-04-04.geojson (29,110 towers among
other power features), with the filter power=tower, and label the same tiles: those of the region's bounding
box, which label-maker walks tile by tile (a sqlite lookup, a dict entry and a labels.npz member each). The
region is the original project's Nigerian training region (0.69 M tiles): the towers' own bbox is 47 M tiles, about
1.5 h and ~90 GB of memory for label-maker (~2 kB a tile), so its time there is only extrapolated.
Ours: read the GeoJSON (json + numpy), positive_tiles on every tower, keep the tiles in the bbox.
label-maker's: its whole `labels` step (tippecanoe over the file, then tilereduce over the bbox, writing
labels.npz and classification.geojson), in a child process.
Both are timed once, in this run. Prints seconds, the ratio, and how many positive tiles differ.
Needs ../shared/data; exits 0 with a note when it is absent.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import mercantile
import numpy as np

from tower_detector.datasets.labelmaker import run_label_maker_labels
from tower_detector.datasets.labels import positive_tiles
from tower_detector.geo.areas import load_area

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOWERS = DATA / "osm" / "nigeria_power_2018-04-04.geojson"
ZOOM = 18


def tower_points(path):
    """lon, lat arrays of the Point features tagged power=tower."""
    with open(path) as f:
        features = json.load(f)["features"]
    coords = [f["geometry"]["coordinates"][:2] for f in features
              if f["properties"].get("power") == "tower" and f["geometry"]["type"] == "Point"]
    lon, lat = np.array(coords, dtype=np.float64).T
    return lon, lat


def our_labels(path, first, last):
    """Positive (x, y) tiles from tile `first` to tile `last`: the part of the labels that is not background."""
    lon, lat = tower_points(path)
    tiles = positive_tiles(lon, lat, ZOOM)
    inside = (tiles[:, 0] >= first.x) & (tiles[:, 0] <= last.x) & (tiles[:, 1] >= first.y) & (tiles[:, 1] <= last.y)
    return tiles[inside]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", default="training_roi_nigeria.geojson", help="in ../shared/data/boundaries")
    args = parser.parse_args()
    if not TOWERS.is_file():
        print(f"reference data absent ({TOWERS}): nothing to benchmark")
        return 0
    bbox = load_area(str(DATA / "boundaries" / args.region)).geometry.bounds
    walk = list(mercantile.tiles(*bbox, ZOOM))  # label-maker's tiles, column by column
    bbox_tiles = {f"{t.x}-{t.y}-{ZOOM}" for t in walk}
    print(f"region {args.region}: bbox {', '.join(f'{v:.5f}' for v in bbox)}, {len(bbox_tiles):,} zoom-{ZOOM} tiles")

    start = time.perf_counter()
    ours = our_labels(TOWERS, walk[0], walk[-1])
    t_ours = time.perf_counter() - start
    ours = {f"{x}-{y}-{ZOOM}" for x, y in ours.tolist()}
    lon, lat = tower_points(TOWERS)
    print(f"ours:        {t_ours:8.3f} s  ({len(lon):,} towers read, {len(ours):,} positive tiles in the bbox)")

    config = {"geojson": str(TOWERS), "zoom": ZOOM, "classes": [{"name": "tower", "filter": ["==", "power", "tower"]}],
              "imagery": "http://tiles.invalid/{z}/{x}/{y}.png", "ml_type": "classification",
              "bounding_box": list(bbox)}
    with tempfile.TemporaryDirectory() as dest:
        start = time.perf_counter()
        labels = run_label_maker_labels(config, dest)
        t_lm = time.perf_counter() - start
    theirs = {key for key, label in labels.items() if label[1]}
    print(f"label-maker: {t_lm:8.3f} s  ({len(labels):,} tiles labelled, {len(theirs):,} positive)")
    print(f"ratio:       label-maker / ours = {t_lm / t_ours:,.0f}x")
    first, last = mercantile.tile(lon.min(), lat.max(), ZOOM), mercantile.tile(lon.max(), lat.min(), ZOOM)
    tower_bbox = (last.x - first.x + 1) * (last.y - first.y + 1)
    print(f"label-maker over the towers' whole bbox ({tower_bbox:,} tiles), extrapolated: "
          f"~{t_lm * tower_bbox / len(bbox_tiles) / 3600:.1f} h")

    differing = ours ^ theirs
    print(f"agreement:   {len(differing)} positive tiles differ "
          f"({len(ours - theirs)} only ours, {len(theirs - ours)} only label-maker); "
          f"label-maker's tiles {'==' if set(labels) == bbox_tiles else '!='} the bbox's tiles")
    if differing:
        print("  e.g.", ", ".join(sorted(differing)[:10]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
