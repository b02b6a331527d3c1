"""Real label-maker 0.9.1 (its tippecanoe path) against our positive_tiles, and its config schema."""

import json

import mercantile
import numpy as np
import pytest

from tower_detector.common.errors import UserError
from tower_detector.datasets.labelmaker import run_label_maker_labels, validate_config
from tower_detector.datasets.labels import positive_tiles
from tower_detector.geo.areas import load_area

TOWER = {"name": "tower", "filter": ["==", "power", "tower"]}
POLE = {"name": "pole", "filter": ["==", "power", "pole"]}


def config(geojson, bbox, classes=(TOWER,)):
    return {"geojson": str(geojson), "zoom": 18, "classes": list(classes), "imagery": "http://tiles/{z}/{x}/{y}.png",
            "ml_type": "classification", "bounding_box": list(bbox)}


def bbox_keys(bbox):
    return {f"{t.x}-{t.y}-18" for t in mercantile.tiles(*bbox, 18)}


def keys(tiles):
    return {f"{x}-{y}-18" for x, y in np.asarray(tiles).tolist()}


def lonlat(fx, fy, zoom=18):
    """Fractional zoom-18 tile coordinates to lon/lat."""
    n = 1 << zoom
    return fx / n * 360 - 180, np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * fy / n))))


def point(lon, lat, power):
    return {"type": "Feature", "properties": {"power": power}, "geometry": {"type": "Point", "coordinates": [lon, lat]}}


def test_sample_scene_labels_match_label_maker(sample_scene, tmp_path):
    features = json.loads(sample_scene["towers"].read_text())["features"]
    towers = np.array([f["geometry"]["coordinates"] for f in features if f["properties"]["power"] == "tower"])
    poles = np.array([f["geometry"]["coordinates"] for f in features if f["properties"]["power"] == "pole"])
    bbox = load_area(str(sample_scene["area"])).geometry.bounds

    labels = run_label_maker_labels(config(sample_scene["towers"], bbox), tmp_path / "lm")

    tiles = bbox_keys(bbox)
    assert set(labels) == tiles  # every tile of the bbox, no sampling
    assert all(v.tolist() in ([1, 0], [0, 1]) for v in labels.values())
    positives = {k for k, v in labels.items() if v[1]}
    assert positives == keys(positive_tiles(towers[:, 0], towers[:, 1], 18)) & tiles
    pole_only = keys(positive_tiles(poles[:, 0], poles[:, 1], 18)) & tiles - positives
    assert pole_only and all(labels[k].tolist() == [1, 0] for k in pole_only)  # the filter leaves poles out


# Points d px (1/256 of a tile) beyond an edge or corner of a tile, each in a block of its own. tippecanoe keeps
# 5 px around a tile, after snapping points to its 4096-step grid with ties rounding up: 5.03 px (80.48 steps)
# beyond a left or top edge snaps onto the buffer's edge and is kept; beyond a right or bottom edge it is not.
SIDES = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "top-left": (-1, -1),
         "bottom-right": (1, 1)}
DISTANCES = (0, 1, 4, 5, 5.02, 5.03, 5.05, 6)


def kept(side, d):
    return d <= 5.02 or (d == 5.03 and side in ("left", "top", "top-left"))


def test_buffer_rule_matches_label_maker_at_edges_and_corners(tmp_path):
    origin = mercantile.tile(7.0, 6.0, 18)  # in the original project's Nigerian training region
    cases, features = [], []
    for i, (side, d) in enumerate([(s, d) for s in SIDES for d in DISTANCES] + [("pole", 1), ("pole", 4)]):
        x, y = origin.x + 4 * (i % 10) + 1, origin.y + 4 * (i // 10) + 1  # the tile under test, in a 4x4 block
        sx, sy = SIDES.get(side, (-1, 0))
        fx = x + 0.5 + sx * (0.5 + d / 256) if sx else x + 0.3
        fy = y + 0.5 + sy * (0.5 + d / 256) if sy else y + 0.6
        features.append(point(*lonlat(fx, fy), "pole" if side == "pole" else "tower"))
        cases.append((side, d, f"{x}-{y}-18"))
    rows = -(-len(cases) // 10)
    west, north = mercantile.ul(origin)
    east, south = mercantile.ul(origin.x + 40, origin.y + 4 * rows, 18)
    bbox = (west, south, east, north)
    geojson = tmp_path / "points.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))

    labels = run_label_maker_labels(config(geojson, bbox, classes=(TOWER, POLE)), tmp_path / "lm")

    assert set(labels) == bbox_keys(bbox)
    for side, d, key in cases:  # what label-maker does, stated on its own
        expected = [0, 0, 1] if side == "pole" else [0, 1, 0] if kept(side, d) else [1, 0, 0]
        assert labels[key].tolist() == expected, (side, d)
    coords = np.array([f["geometry"]["coordinates"] for f in features])
    is_tower = np.array([f["properties"]["power"] == "tower" for f in features])
    for column, chosen in ((1, is_tower), (2, ~is_tower)):  # and ours, tile for tile
        ours = keys(positive_tiles(coords[chosen, 0], coords[chosen, 1], 18)) & set(labels)
        assert {k for k, v in labels.items() if v[column]} == ours
    assert all(v[0] == (v[1:].sum() == 0) for v in labels.values())


GOOD = config("towers.geojson", (7.0, 6.0, 7.01, 6.01))


@pytest.mark.parametrize("change, message", [
    ({"zoom": "18"}, "zoom: must be of integer type"),
    ({"classes": None}, "classes: required field"),
    ({"ml_type": "foo"}, "ml_type: unallowed value foo"),
    ({"bounding_box": [7, 6, 200, 6.01]}, "bounding_box.2: max value is 180"),
    ({"classes": [{"name": "tower"}]}, "classes.0.filter: required field"),
    ({"geojson": None}, 'either "geojson" or "country" and "bounding_box" must be present'),
])
def test_validate_config_gives_label_makers_reason_in_one_line(change, message):
    bad = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(UserError) as err:
        validate_config(bad)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("config.json rejected by label-maker")


def test_validate_config_accepts_a_good_config():
    validate_config(GOOD)
    validate_config({**GOOD, "background_ratio": 2.0, "seed": 1, "split_vals": [0.8, 0.2]})
