"""`tower-detector synthetic`: a tile-aligned synthetic scene whose GeoJSON says truly where its towers are."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from tower_detector import synthetic
from tower_detector.common.errors import UserError
from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import tile_cover
from tower_detector.geo.tilemath import ORIGIN_SHIFT, TILE_SIZE, lonlat_to_mercator, lonlat_to_tile, resolution

ARGS = dict(tiles_x=6, tiles_y=4, seed=7)


def write(out, **kwargs):
    info = synthetic.write_scene(str(out), **{**ARGS, **kwargs})
    with rasterio.open(out / "scene.tif") as ds:
        pixels = ds.read()
    return info, pixels, json.loads((out / "towers.geojson").read_text())


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    info, pixels, power = write(out)
    return {"dir": out, "info": info, "pixels": pixels, "power": power}


def features(power, kind):
    return [f for f in power["features"] if f["properties"]["power"] == kind]


def pixel_of(ds_transform, lon, lat):
    mx, my = lonlat_to_mercator(lon, lat)
    return int((my - ds_transform.f) // ds_transform.e), int((mx - ds_transform.c) // ds_transform.a)


def haversine(a, b):
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371008.8 * math.asin(math.sqrt(h))


def test_geotiff_is_rgb_web_mercator_on_the_tile_grid(scene):
    info = scene["info"]
    tile_m = TILE_SIZE * resolution(18)
    with rasterio.open(scene["dir"] / "scene.tif") as ds:
        assert ds.crs.to_epsg() == 3857
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3
        assert ds.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert (ds.width, ds.height) == (6 * 256, 4 * 256) == tuple(info["size_px"])
        assert ds.block_shapes == [(256, 256)] * 3 and ds.compression.value in ("DEFLATE", "LZW")
        t = ds.transform
        assert t.a == pytest.approx(resolution(18), abs=1e-9) and t.e == pytest.approx(-resolution(18), abs=1e-9)
        col, row = (t.c + ORIGIN_SHIFT) / tile_m, (ORIGIN_SHIFT - t.f) / tile_m
    assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
    assert (round(col), round(row)) == (info["tile_range"]["x"][0], info["tile_range"]["y"][0])
    assert info["tile_range"] == {"x": [round(col), round(col) + 5], "y": [round(row), round(row) + 3], "z": 18}
    # the tile holding the requested point is the middle one
    assert lonlat_to_tile(28.28, -15.42, 18) == (round(col) + 3, round(row) + 2)


def test_area_covers_exactly_the_scene_tiles(scene):
    cover = tile_cover(load_area(str(scene["dir"] / "area.geojson")), 18)
    r = scene["info"]["tile_range"]
    assert cover.count == 24 == scene["info"]["tiles"]
    assert cover.bounds() == (r["x"][0], r["y"][0], r["x"][1], r["y"][1])


def test_same_seed_same_bytes_other_seed_other_scene(scene, tmp_path):
    _, pixels, power = write(tmp_path / "again")
    assert np.array_equal(pixels, scene["pixels"])
    assert (tmp_path / "again" / "towers.geojson").read_text() == (scene["dir"] / "towers.geojson").read_text()
    _, other_pixels, other_power = write(tmp_path / "other", seed=8)
    assert np.mean(other_pixels != scene["pixels"]) > 0.5
    assert other_power != power


def test_every_tower_point_lies_on_drawn_tower_steel(scene):
    plan = synthetic.plan_scene(**ARGS)
    full, steel = synthetic.render_scene(plan)
    bare, no_steel = synthetic.render_scene(plan, towers=False)
    assert np.array_equal(full, scene["pixels"]) and not no_steel.any()
    changed = np.any(full != bare, axis=0)
    assert 0 < changed.mean() < 0.1  # towers, their shadows and conductors: nothing else
    towers = features(scene["power"], "tower")
    assert towers
    with rasterio.open(scene["dir"] / "scene.tif") as ds:
        for f in towers:
            row, col = pixel_of(ds.transform, *f["geometry"]["coordinates"])
            assert steel[row, col], f["properties"]
            contrast = np.abs(full[:, row, col].astype(int) - bare[:, row, col]).max()
            assert contrast >= 25, (f["properties"], contrast)


@pytest.mark.parametrize("zoom", [17, 18, 19])
def test_towers_lie_inside_and_250_to_450_m_apart(tmp_path, zoom):
    info, _, power = write(tmp_path, zoom=zoom, tiles_x=3, tiles_y=3, seed=zoom)
    west, south, east, north = load_area(str(tmp_path / "area.geojson")).geometry.bounds
    lines = features(power, "line")
    towers = features(power, "tower")
    assert len(lines) == info["lines"] >= 2 and len(towers) == info["towers"] >= 2
    for line in lines:
        vertices = line["geometry"]["coordinates"]
        spans = [haversine(a, b) for a, b in zip(vertices, vertices[1:])]
        assert spans and all(250 <= s <= 450 for s in spans), spans
        mine = [f["geometry"]["coordinates"] for f in towers if f["properties"]["line"] == line["properties"]["ref"]]
        assert mine and all(p in vertices for p in mine)
    for f in towers:
        lon, lat = f["geometry"]["coordinates"]
        assert west <= lon <= east and south <= lat <= north
        assert f["properties"]["power"] == "tower" and f["properties"]["ref"]


def test_poles_are_hard_negatives_not_towers(scene):
    power, info = scene["power"], scene["info"]
    poles, towers = features(power, "pole"), features(power, "tower")
    assert len(poles) == info["poles"] > 0 and features(power, "minor_line")
    assert {f["properties"]["power"] for f in power["features"]} == {"tower", "line", "pole", "minor_line"}
    for pole in poles:
        assert all(haversine(pole["geometry"]["coordinates"], t["geometry"]["coordinates"]) > 5 for t in towers)


def test_default_scene_has_enough_towers_and_big_scenes_more_lines(sample_scene):
    info = sample_scene["info"]
    assert 4 <= info["towers"] <= 30 and info["lines"] >= 2 and info["poles"] > 0
    big = synthetic.plan_scene(tiles_x=24, tiles_y=24, seed=1)
    inside = sum(int(big.grid.outside_by(p) == 0) for line in big.hv_lines for p in line.towers)
    assert len(big.hv_lines) >= 4 and inside >= 30


@pytest.mark.parametrize("kwargs, message", [
    (dict(tiles_x=0), "tiles_x must be"),
    (dict(tiles_y=65), "tiles_y must be"),
    (dict(tiles_x=2.5), "tiles_x must be"),
    (dict(lat=89.0), "latitude 89.0"),
    (dict(lon=200.0), "longitude 200.0"),
    (dict(zoom=15), "zoom 15"),
    (dict(seed=-1), "seed must be"),
])
def test_bad_arguments_are_one_line_user_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message) as err:
        synthetic.write_scene(str(tmp_path / "out"), **{"tiles_x": 2, "tiles_y": 2, **kwargs})
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out in (blocker, blocker / "scene"):
        with pytest.raises(UserError, match="cannot write the synthetic scene"):
            synthetic.write_scene(str(out), tiles_x=1, tiles_y=1)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tower_detector", "synthetic", *args, "--events"],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_a_scene_and_reports_json_events(tmp_path):
    done = run_cli("--out", str(tmp_path / "s"), "--tiles-x", "4", "--tiles-y", "4")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["tiles"] == 16
    assert any(e["event"] == "progress" for e in events[:-1])
    power = json.loads((tmp_path / "s" / "towers.geojson").read_text())
    assert events[-1]["towers"] == len(features(power, "tower")) > 0
    bad = run_cli("--out", str(tmp_path / "t"), "--tiles-x", "0")
    assert bad.returncode == 2
    error = json.loads(bad.stdout.splitlines()[-1])
    assert error["event"] == "error" and error["kind"] == "bad_input" and "--tiles-x" in error["message"]
