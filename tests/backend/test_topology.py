"""Line-topology re-scoring (results/topology.py, `results --line-rescore`): hand-built score grids whose geometry
is known in metres, then the command end to end on a small store, read back with sqlite3."""

import json
import math
import sqlite3
from contextlib import closing

import numpy as np
import pytest
import shapely

from tests.fakes.storedata import JOB
from tower_detector.cli import main
from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import lonlat_to_tile_space, tile_cover, tile_lonlat
from tower_detector.prediction.store import open_store
from tower_detector.results import merge_results
from tower_detector.results.topology import (
    END_SHARE,
    FLOOR,
    ON_LINE_SUPPORT,
    floor_for,
    neighbour_support,
    rescore_tiles,
)
from tower_detector.training.evaluate import precision_at_recall, rescore_gain

Z = 18
LON0, LAT0 = 28.0, -15.0


def place(east_north, lat0=LAT0):
    """(x, y, cam_x, cam_y) of tower points at (east, north) metres from (LON0, lat0), worked out independently
    of the code under test (a local equirectangular offset, exact enough over a few km)."""
    e, n = np.asarray(east_north, float).T
    lat = lat0 + n / 111_320.0
    lon = LON0 + e / (111_320.0 * math.cos(math.radians(lat0)))
    fx, fy = lonlat_to_tile_space(lon, lat, Z)
    x, y = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    return x, y, (fx - x) * 256, (fy - y) * 256


def rescored(points, scores, **kw):
    x, y, cx, cy = place(points, kw.pop("lat0", LAT0))
    return rescore_tiles(x, y, Z, np.asarray(scores, np.float32), cx, cy, **kw)


FAR_AWAY = (20_000.0, 20_000.0)


def test_a_chain_of_moderate_tiles_beats_an_isolated_tile_of_the_same_score():
    chain = [(300.0 * k, 0.0) for k in range(5)]
    r, support = rescored(chain + [FAR_AWAY], [0.4] * 6)
    assert support[5] == 0 and r[5] < 0.4  # isolated: penalised
    assert (r[1:4] > 0.4).all() and (r[:5] > r[5]).all()
    assert support[2] == pytest.approx(0.4)  # mid-line: the geometric mean of its two neighbours


def test_a_lines_end_gets_less_support_than_its_middle():
    chain = [(0.0, 320.0 * k) for k in range(5)]
    r, support = rescored(chain, [0.6] * 5)
    assert support[0] == support[4] == pytest.approx(END_SHARE * 0.6)
    assert support[0] < support[1] == support[2] == support[3] == pytest.approx(0.6)
    assert r[0] < r[2] and r[4] < r[2]


def test_neighbours_at_a_right_angle_count_less_than_opposite_ones():
    opposite, _ = rescored([(0, 0), (350, 0), (-350, 0)], [0.5, 0.8, 0.8])
    square, support = rescored([(0, 0), (350, 0), (0, 350)], [0.5, 0.8, 0.8])
    assert support[0] == pytest.approx(END_SHARE * 0.8)  # no pair: only a line's end
    assert square[0] < opposite[0]
    bent, _ = rescored([(0, 0), (350, 0), (-350 * math.cos(0.4), 350 * math.sin(0.4))], [0.5, 0.8, 0.8])
    assert bent[0] == pytest.approx(opposite[0])  # an angle tower (23 degrees off straight) is still mid-line


def test_neighbours_nearer_than_a_span_are_not_line_support():
    """Adjacent tiles of one tower (and clutter 150 m off) are not the next tower on a line."""
    r, support = rescored([(0, 0), (60, 10), (-40, -30), (150, 0), (-90, 120)], [0.5, 0.9, 0.9, 0.9, 0.9])
    assert support[0] == 0 and r[0] < 0.5
    beyond, support = rescored([(0, 0), (600, 0), (-600, 0)], [0.5, 0.9, 0.9])  # two spans away: not either
    assert (support == 0).all()


def test_distances_are_metres_on_the_ground_at_any_latitude():
    """At 60 degrees a tile is half as many ground metres as at the equator: the same 300 m chain still counts."""
    chain = [(300.0 * k, 0.0) for k in range(3)]
    _, south = rescored(chain, [0.6] * 3)
    _, north = rescored(chain, [0.6] * 3, lat0=60.0)
    assert north[1] == pytest.approx(south[1]) == pytest.approx(0.6)
    _, too_near = rescored([(0.0, 0.0), (180.0, 0.0)], [0.6] * 2, lat0=60.0)  # 360 Web-Mercator metres apart
    assert (too_near == 0).all()


def test_tiles_below_the_floor_are_neither_rescored_nor_neighbours():
    r, support = rescored([(0, 0), (300, 0), (-300, 0)], [0.5, 0.04, 0.04], floor=0.05)
    assert support[0] == 0 and np.isnan(support[1:]).all()
    assert r[1:].tolist() == pytest.approx([0.04, 0.04])


def test_a_low_cut_lowers_the_floor_so_a_weak_tile_between_strong_neighbours_can_reach_it():
    assert floor_for(0.5) == FLOOR and floor_for(0.9) == FLOOR
    low = floor_for(0.1)
    assert low < 0.03
    r, support = rescored([(0, 0), (300, 0), (-300, 0)], [0.03, 0.9, 0.9], floor=low)
    assert support[0] == pytest.approx(0.9) and r[0] >= 0.1
    r, support = rescored([(0, 0), (300, 0), (-300, 0)], [0.03, 0.9, 0.9], floor=floor_for(0.5))
    assert np.isnan(support[0]) and r[0] == pytest.approx(0.03)


def test_a_candidate_near_a_mapped_line_gets_support():
    x, y, cx, cy = place([(0, 0), (2_000, 0)])
    lon, lat = tile_lonlat(x + cx / 256, y + cy / 256, Z)
    # a mapped line passing 40 m north of the first point (not through the second, 2 km east)
    dlat = 40 / 111_320.0
    line = shapely.LineString([(lon[0] - 0.01, lat[0] + dlat), (lon[0] + 0.01, lat[0] + dlat)])
    r, support = rescore_tiles(x, y, Z, np.float32([0.5, 0.5]), cx, cy, lines=[line])
    assert support.tolist() == pytest.approx([ON_LINE_SUPPORT, 0.0])
    assert r[0] > r[1]
    far = shapely.LineString([(lon[0] - 0.01, lat[0] + 3 * dlat), (lon[0] + 0.01, lat[0] + 3 * dlat)])  # 120 m
    _, support = rescore_tiles(x, y, Z, np.float32([0.5, 0.5]), cx, cy, lines=[far])
    assert support[0] == 0


def test_batches_give_the_same_support_as_one_pass():
    rng = np.random.default_rng(3)
    pts = rng.uniform(-3_000, 3_000, (400, 2))
    x, y, cx, cy = place(pts)
    s = rng.uniform(0.05, 1, 400).astype(np.float32)
    fx, fy = x + cx / 256, y + cy / 256
    assert np.array_equal(neighbour_support(fx, fy, Z, s, batch=7), neighbour_support(fx, fy, Z, s))
    # brute force: every pair of the 400 points, in metres from their offsets
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    one = neighbour_support(fx, fy, Z, s)
    ring = (d >= 195) & (d <= 505)  # 5 m either side of the band, where projection rounding could decide
    near = (d >= 205) & (d <= 495)
    assert (one[~ring.any(1)] == 0).all()
    sure = ~(ring & ~near).any(1)
    strongest = np.where(near, s[None, :], 0).max(1)
    assert sure.sum() > 100 and (one[sure] >= END_SHARE * strongest[sure] - 1e-6).all()


def test_precision_at_recall_and_the_gain_of_rescoring():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
    raw = np.array([0.9, 0.8, 0.3, 0.85, 0.7, 0.6, 0.2, 0.1])
    assert precision_at_recall(labels, raw, 0.5) == pytest.approx(2 / 3)  # 0.9, 0.85, 0.8
    assert precision_at_recall(labels, raw, 1.0) == pytest.approx(4 / 7)
    better = np.array([0.9, 0.8, 0.75, 0.3, 0.2, 0.1, 0.7, 0.05])
    gain = rescore_gain(labels, raw, better, recall=1.0, budget=4)
    assert gain["precision_at_recall"] == {"raw": pytest.approx(4 / 7), "rescored": 1.0}
    assert gain["recall_at_budget"] == {"raw": 0.5, "rescored": 1.0}


# -- the command ---------------------------------------------------------------------------------------------------
AREA = "28.0,-15.0,28.025,-14.985"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A store over AREA (tile centres, no CAM points): background 0.01, a chain of five tiles two columns apart
    (295 m) scoring 0.45 (below the cut of 0.5) and an isolated tile scoring 0.55 (above it)."""
    root = tmp_path_factory.mktemp("topology")
    cover = tile_cover(load_area(AREA), Z)
    (x0, y0, x1, y1) = cover.bounds()
    row = y0 + 1
    chain = [(x0 + 1 + 2 * k, row) for k in range(5)]
    lone = (x0 + 13, y1 - 1)
    assert x0 + 13 <= x1 and y1 - 1 - row >= 5
    scores = {**dict.fromkeys(chain, 0.45), lone: 0.55}
    store = open_store(root / "store", create=True)
    store.create_job(dict(JOB, calibration={"method": "platt", "split": "val", "a": 2.0, "b": -1.0}), cover,
                     cover.shard_ranges(1), 50)
    for shard, index in store.plan.all_chunks():
        x, y = store.plan.chunk_tiles(shard, index)
        s = np.array([scores.get(t, 0.01) for t in zip(x.tolist(), y.tolist())], np.float32)
        nan = np.full(len(x), np.nan, np.float32)
        store.write_chunk(shard, index, x, y, s, nan, nan, errors=[None] * len(x))
    store.close()
    return {"root": root, "store": str(root / "store"), "chain": chain, "lone": lone}


def tid(tile):
    return f"{tile[0]}-{tile[1]}-{Z}"


def rows(path):
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        found = {r["tile_id"]: dict(r) for r in db.execute("SELECT * FROM candidates ORDER BY rank")}
        job = dict(db.execute("SELECT key, value FROM job"))
    return found, job


def test_results_without_the_switch_keeps_the_models_ranking(grid, tmp_path):
    out = tmp_path / "c.gpkg"
    assert main(["results", grid["store"], "--candidates", str(out)]) == 0
    found, job = rows(out)
    assert list(found) == [tid(grid["lone"])]
    r = found[tid(grid["lone"])]
    assert r["score"] == r["score_raw"] == 0.55 and r["line_support"] is None
    assert json.loads(job["line_rescore"]) is None and json.loads(job["calibration"])["a"] == 2.0


def test_line_rescore_lifts_the_chain_and_drops_the_isolated_tile(grid, tmp_path, capsys):
    out, overlay = tmp_path / "c.gpkg", tmp_path / "o.geojson"
    assert main(["results", grid["store"], "--candidates", str(out), "--geojson", str(overlay),
                 "--line-rescore"]) == 0
    text = capsys.readouterr().out
    assert "line re-scoring on" in text and "3 moved into the cut, 1 out of it" in text
    found, job = rows(out)
    middle = [tid(t) for t in grid["chain"][1:4]]
    assert sorted(found) == sorted(middle)  # the chain's ends gain too little, the lone tile loses
    for t in middle:
        assert found[t]["score_raw"] == 0.45 and found[t]["score"] > 0.5
    assert found[middle[1]]["line_support"] == pytest.approx(0.45)
    # the calibration is fitted on raw scores: not claimed for the re-scored ones
    assert json.loads(job["calibration"]) is None and json.loads(job["calibration_raw"])["a"] == 2.0
    assert float(job["yes_score"]) == float(job["yes_threshold"])
    summary = json.loads(job["line_rescore"])
    assert (summary["moved_in"], summary["moved_out"], summary["supported"]) == (3, 1, 5)
    features = json.loads(overlay.read_text())["features"]
    assert sorted(f"{f['properties']['x']}-{f['properties']['y']}-{Z}" for f in features) == sorted(middle)


def test_a_budget_takes_the_top_n_rescored(grid, tmp_path):
    s = merge_results(grid["store"], candidates=tmp_path / "c.gpkg", budget=3, line_rescore=True)
    found, _ = rows(tmp_path / "c.gpkg")
    assert sorted(found) == sorted(tid(t) for t in grid["chain"][1:4]) and s["candidates"] == 3
    # the model's top 3: the lone 0.55, then five tied at 0.45, left out whole
    assert s["line_rescore"]["threshold_raw"] == 0.55 and s["threshold"] > 0.5
    assert s["calibration"] is None and s["calibration_raw"]["a"] == 2.0


def test_mapped_lines_give_support_and_imply_the_switch(grid, tmp_path):
    lon, lat = tile_lonlat(grid["lone"][0] + 0.5, grid["lone"][1] + 0.5, Z)
    path = tmp_path / "lines.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"power": "line"},
         "geometry": {"type": "LineString", "coordinates": [[lon - 0.01, lat], [lon + 0.01, lat]]}},
        {"type": "Feature", "properties": {"power": "minor_line"},  # not an HV line: no support
         "geometry": {"type": "LineString", "coordinates": [[28.0, -14.99], [28.03, -14.99]]}}]}))
    s = merge_results(grid["store"], candidates=tmp_path / "c.gpkg", lines=path)
    found, _ = rows(tmp_path / "c.gpkg")
    assert tid(grid["lone"]) in found and found[tid(grid["lone"])]["line_support"] == ON_LINE_SUPPORT
    assert s["line_rescore"]["lines"] == 1 and s["line_rescore"]["moved_out"] == 0


def test_a_missing_lines_file_is_one_line_and_exit_2(grid, tmp_path, capsys):
    out = tmp_path / "c.gpkg"
    assert main(["results", grid["store"], "--candidates", str(out), "--lines", str(tmp_path / "nope.geojson")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--lines" in err and "nope.geojson" in err and len(err.splitlines()) == 1
    assert not out.exists()
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    assert main(["results", grid["store"], "--candidates", str(out), "--lines", str(empty)]) == 2
    assert "no power=line ways" in capsys.readouterr().err and not out.exists()


def test_rescoring_into_a_reviewed_file_keeps_the_decisions_and_fills_the_new_columns(grid, tmp_path):
    out = tmp_path / "c.gpkg"
    merge_results(grid["store"], candidates=out)
    with closing(sqlite3.connect(out)) as db, db:  # a file from before these columns, reviewed
        db.execute("ALTER TABLE candidates DROP COLUMN score_raw")
        db.execute("ALTER TABLE candidates DROP COLUMN line_support")
        db.execute("UPDATE candidates SET status = 'false_positive' WHERE tile_id = ?", (tid(grid["lone"]),))
    s = merge_results(grid["store"], candidates=out, line_rescore=True)
    found, _ = rows(out)
    lone = found[tid(grid["lone"])]
    assert lone["status"] == "false_positive" and lone["in_results"] == 0  # below the re-scored cut, kept
    assert lone["score_raw"] == 0.55 and lone["score"] < 0.5 and lone["line_support"] == 0
    assert s["merge"]["added"] == 3
