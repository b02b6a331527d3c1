"""`tower-detector synthetic`'s density and realism options: each changes the pixels the way it says, the defaults
change nothing, and confusers never become tower labels."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from tower_detector import synthetic
from tower_detector.common.errors import UserError
from tower_detector.datasets.labels import positive_tiles
from tower_detector.geo.tilemath import ground_resolution, lonlat_to_tile
from tower_detector.pipeline import synthetic_arguments
from tower_detector.synthetic.plan import MAX_TOWER_H_M, streams

ARGS = dict(tiles_x=6, tiles_y=4, seed=7)


def render(**options):
    plan = synthetic.plan_scene(**ARGS, options=synthetic.scene_options(**options))
    return plan, *synthetic.render_scene(plan)


@pytest.fixture(scope="module")
def plain():
    return render()


def luminance(rgb):
    return rgb.astype(np.float64).mean(axis=0)


def test_new_random_stream_leaves_the_old_ones_as_they_were():
    old = np.random.default_rng(11).spawn(6)
    new = streams(11)
    assert len(new) == 7
    for a, b in zip(old, list(new.values())[:6]):
        assert np.array_equal(a.integers(0, 2**32, 8), b.integers(0, 2**32, 8))


def test_default_options_are_the_original_scene(plain):
    plan, rgb, _ = render(hv_lines=None, jpeg_quality=None, low_contrast=False, lean=0.0, haze=0.0, confusers=0.0)
    assert plan.options.default and plan.lean is None and not plan.confusers
    assert np.array_equal(rgb, plain[1])


def block_edges(rgb, offset):
    """Mean absolute step between columns 8k+offset-1 and 8k+offset, and between rows likewise."""
    y = luminance(rgb)
    cols = np.abs(np.diff(y, axis=1))[:, offset - 1::8].mean()
    rows = np.abs(np.diff(y, axis=0))[offset - 1::8, :].mean()
    return cols + rows


def test_jpeg_tiles_add_8_px_block_edges_on_the_tile_grid(plain):
    _, rgb, _ = render(jpeg_quality=30)
    assert not np.array_equal(rgb, plain[1])
    # steps across the 8-px block boundaries (offset 8) against steps inside blocks (offset 4)
    before = block_edges(plain[1], 8) / block_edges(plain[1], 4)
    after = block_edges(rgb, 8) / block_edges(rgb, 4)
    assert before == pytest.approx(1, abs=0.05)
    assert after > before + 0.15, (before, after)


def test_haze_brightens_and_flattens(plain):
    _, rgb, _ = render(haze=0.4)
    before, after = luminance(plain[1]), luminance(rgb)
    assert after.mean() > before.mean() + 10
    assert after.std() < 0.7 * before.std()


def test_low_contrast_steel_is_close_to_the_ground(plain):
    plan = synthetic.plan_scene(**ARGS, options=synthetic.scene_options(low_contrast=True))
    bare, _ = synthetic.render_scene(plan, towers=False)
    pale, steel = synthetic.render_scene(plan)
    normal, normal_steel = plain[1], plain[2]
    assert np.array_equal(steel, normal_steel) and steel.any()

    def contrast(rgb):
        return np.abs(luminance(rgb) - luminance(bare))[steel].mean()

    assert contrast(pale) < 0.5 * contrast(normal), (contrast(pale), contrast(normal))


def centroid(mask, c, r):
    x0, y0 = max(int(c[0]) - r, 0), max(int(c[1]) - r, 0)
    yy, xx = np.nonzero(mask[y0: int(c[1]) + r, x0: int(c[0]) + r])
    return np.array([xx.mean() + x0 + 0.5, yy.mean() + y0 + 0.5])


def test_lean_shears_the_drawn_tower_and_keeps_its_point_at_the_base(plain, tmp_path):
    plan, _, steel = render(lean=20.0)
    assert np.hypot(*plan.lean) == pytest.approx(20.0 / MAX_TOWER_H_M * plan.ppm)
    checked = 0
    for line in plan.hv_lines:
        for c, h, s in zip(line.towers, line.height, line.footprint):
            if plan.grid.outside_by(c) > 0:
                continue
            top = plan.lean * h
            peak = np.floor(c + top).astype(int)
            assert steel[peak[1], peak[0]]  # the peak is drawn where the view puts it
            shift = centroid(steel, c, int(s + 40)) - centroid(plain[2], c, int(s + 40))
            # the base stays, the top moves: the steel's centroid moves part of the way, along the lean
            assert shift @ top / np.hypot(*shift) / np.hypot(*top) > 0.98
            assert 0.2 < np.hypot(*shift) / np.hypot(*top) < 0.6
            checked += 1
    assert checked >= 2
    # the truth stays at the towers' bases
    straight = synthetic.write_scene(str(tmp_path / "a"), **ARGS)
    leaning = synthetic.write_scene(str(tmp_path / "b"), **ARGS, lean=20.0)
    assert leaning["options"] == {"lean": 20.0} and "options" not in straight
    assert (tmp_path / "a" / "towers.geojson").read_bytes() == (tmp_path / "b" / "towers.geojson").read_bytes()


def test_confusers_are_drawn_apart_from_tower_tiles_and_never_labelled(tmp_path):
    plain_info = synthetic.write_scene(str(tmp_path / "plain"), **ARGS)
    info = synthetic.write_scene(str(tmp_path / "c"), **ARGS, confusers=4.0)
    out = tmp_path / "c"
    assert info["files"]["confusers"] == str(out / "confusers.geojson")
    assert not (tmp_path / "plain" / "confusers.geojson").exists() and "confusers" not in plain_info["files"]
    # the towers and their labels are the same with or without confusers
    assert (out / "towers.geojson").read_bytes() == (tmp_path / "plain" / "towers.geojson").read_bytes()
    features = json.loads((out / "confusers.geojson").read_text())["features"]
    kinds = {f["properties"]["confuser"] for f in features}
    assert {"telecom_mast", "substation", "water_tower"} <= kinds
    assert info["confusers"] == {k: sum(f["properties"]["confuser"] == k for f in features) for k in kinds}
    assert all("power" not in f["properties"] for f in features)
    power = json.loads((out / "towers.geojson").read_text())["features"]
    towers = np.array([f["geometry"]["coordinates"] for f in power if f["properties"]["power"] == "tower"])
    labelled = {tuple(t) for t in positive_tiles(towers[:, 0], towers[:, 1], 18).tolist()}
    assert labelled
    for f in features:
        assert lonlat_to_tile(*f["geometry"]["coordinates"], 18) not in labelled, f
    # each new confuser is drawn: the pixels around it change
    with rasterio.open(out / "scene.tif") as a, rasterio.open(tmp_path / "plain" / "scene.tif") as b:
        changed = np.any(a.read() != b.read(), axis=0)
    plan = synthetic.plan_scene(**ARGS, options=synthetic.scene_options(confusers=4.0))
    assert plan.confusers
    for f in plan.confusers:
        x, y = f["c"].astype(int)
        assert changed[max(y - 3, 0): y + 4, max(x - 3, 0): x + 4].all(), f["kind"]


def test_hv_lines_sets_the_line_count_and_the_summary_counts_tower_tiles(tmp_path):
    info = synthetic.write_scene(str(tmp_path), tiles_x=8, tiles_y=8, seed=3, hv_lines=1)
    assert info["lines"] == 1 and info["towers"] >= 1
    power = json.loads((tmp_path / "towers.geojson").read_text())["features"]
    towers = np.array([f["geometry"]["coordinates"] for f in power if f["properties"]["power"] == "tower"])
    r = info["tile_range"]
    inside = [t for t in positive_tiles(towers[:, 0], towers[:, 1], 18).tolist()
              if r["x"][0] <= t[0] <= r["x"][1] and r["y"][0] <= t[1] <= r["y"][1]]
    assert info["tower_tiles"] == len(inside)
    assert info["tower_tile_share"] == pytest.approx(len(inside) / 64, abs=1e-5)
    none = synthetic.write_scene(str(tmp_path / "none"), tiles_x=2, tiles_y=2, hv_lines=0)
    assert none["lines"] == none["towers"] == none["tower_tiles"] == 0


@pytest.mark.slow
def test_one_line_on_the_largest_scene_is_at_most_one_percent_tower_tiles():
    plan = synthetic.plan_scene(64, 64, seed=0, options=synthetic.scene_options(hv_lines=1))
    assert len(plan.hv_lines) == 1
    mask = synthetic.tower_tiles(plan.grid, plan.hv_lines)
    assert 0 < mask.mean() <= 0.01


def test_high_latitude_keeps_towers_in_metres(tmp_path):
    south = synthetic.plan_scene(3, 3, seed=2)
    north = synthetic.plan_scene(3, 3, seed=2, lat=55.0)
    assert north.ppm == pytest.approx(1 / ground_resolution(18, 55.0), rel=2e-3)
    assert north.ppm / south.ppm == pytest.approx(np.cos(np.radians(15.42)) / np.cos(np.radians(55)), rel=5e-3)
    for plan in (south, north):
        metres = np.concatenate([line.footprint for line in plan.hv_lines]) / plan.ppm
        assert 8 * 0.95 <= metres.min() and metres.max() <= 14 * 1.05
    info = synthetic.write_scene(str(tmp_path), tiles_x=3, tiles_y=3, seed=2, lat=55.0)
    assert info["towers"] >= 1
    _, lat = json.loads((tmp_path / "area.geojson").read_text())["features"][0]["geometry"]["coordinates"][0][0]
    assert 54.9 < lat < 55.1


@pytest.mark.parametrize("kwargs, message", [
    (dict(lean=-1.0), "lean must be"),
    (dict(jpeg_quality=0), "jpeg_quality must be"),
    (dict(jpeg_quality=101), "jpeg_quality must be"),
    (dict(haze=1.5), "haze must be"),
    (dict(haze=-0.1), "haze must be"),
    (dict(hv_lines=-1), "hv_lines must be"),
    (dict(confusers=-2.0), "confusers must be"),
])
def test_bad_option_values_are_one_line_user_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message) as err:
        synthetic.write_scene(str(tmp_path / "out"), tiles_x=1, tiles_y=1, **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, flag", [
    (["--lean", "-1"], "--lean"),
    (["--jpeg-quality", "101"], "--jpeg-quality"),
    (["--haze", "2"], "--haze"),
    (["--hv-lines", "x"], "--hv-lines"),
])
def test_cli_refuses_bad_values_with_one_line(tmp_path, args, flag):
    done = subprocess.run([sys.executable, "-m", "tower_detector", "synthetic", "--out", str(tmp_path / "s"), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and flag in done.stderr
    assert not (tmp_path / "s").exists()


def test_realism_help_names_the_preset_values():
    parser = argparse.ArgumentParser()
    help_text = next(a.help for a in synthetic_arguments(parser) if a.dest == "realism")
    for name, value in synthetic.REALISM.items():
        flag = "--" + name.replace("_", "-")
        assert (flag if value is True else f"{flag} {value:g}") in help_text


def test_cli_realism_preset_and_an_override(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tower_detector", "synthetic", "--out", str(tmp_path / "s"),
                           "--tiles-x", "2", "--tiles-y", "2", "--realism", "--haze", "0", "--no-low-contrast",
                           "--hv-lines", "1",
                           "--events"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # the summary lists the options that differ from the defaults: --haze 0 and --no-low-contrast are defaults
    off = ("haze", "low_contrast")
    assert result["options"] == {**{k: v for k, v in synthetic.REALISM.items() if k not in off}, "hv_lines": 1}
    assert result["lines"] == 1 and (tmp_path / "s" / "confusers.geojson").exists()
    assert result["tower_tile_share"] == pytest.approx(result["tower_tiles"] / 4, abs=1e-5)
