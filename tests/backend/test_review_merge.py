"""Review decisions survive every later write of a candidates GeoPackage: `results --candidates` run again (a new
store, another threshold) and `remote fetch` merge by tile id into the reviewed file; only --overwrite starts
afresh. Reviews are recorded with sqlite3 and GDAL, as the plugin's review dock and conflation do."""

import hashlib
import json
import re
import sqlite3
import subprocess
from contextlib import closing

import numpy as np
import pytest

from tests.fakes.candidates_helpers import CLI, make_candidates, review
from tests.fakes.storedata import make_store, scores_b, scores_of
from tower_detector.cli import main
from tower_detector.common.errors import UserError
from tower_detector.prediction.store import open_store
from tower_detector.results import gpkg_connect, merge_results

REVIEW = ("status", "note", "reviewer", "reviewed_at", "point_lon", "point_lat", "point_source")


def all_scores(spec):
    """{tile_id: score} of every tile a store scored."""
    store = open_store(spec)
    try:
        return {f"{x}-{y}-18": s for _, _, c in store.iter_chunks(sorted(store.done_chunks()))
                for x, y, s in zip(c["x"].tolist(), c["y"].tolist(), c["score"].tolist()) if s == s}
    finally:
        store.close()


def rows(path):
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return {r["tile_id"]: dict(r) for r in db.execute("SELECT * FROM candidates")}


def decisions(path):
    return {t: tuple(r[k] for k in REVIEW) for t, r in rows(path).items() if r["status"] != "unreviewed"}


def tile(tile_id):
    x, y, _ = map(int, tile_id.split("-"))
    return x, y


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def review_as_people_do(path, pick):
    """5 confirmed, 3 false positives on the tiles `pick` chooses; the first confirmed one with a moved point
    and a note, written through GDAL (as QGIS's review dock writes, WAL journal and all); the rest with sqlite3.
    Conflation's columns and a saved QGIS style come along."""
    from osgeo import ogr

    chosen = pick(sorted(rows(path)))
    statuses = ["confirmed"] * 5 + ["false_positive"] * 3
    for tile_id, status in zip(chosen[1:], statuses[1:]):
        review(path, tile(tile_id), status, reviewer="bo")
    ds = ogr.Open(path, 1)
    ds.ExecuteSQL("PRAGMA journal_mode = WAL")
    layer = ds.GetLayerByName("candidates")
    layer.SetAttributeFilter(f"tile_id = '{chosen[0]}'")
    feature = next(iter(layer))
    for name, value in (("status", "confirmed"), ("note", "lattice tower, shadow"), ("reviewer", "ana"),
                        ("reviewed_at", "2024-05-01T10:00:00Z"), ("point_lon", feature["point_lon"] + 1e-5),
                        ("point_lat", feature["point_lat"] - 1e-5), ("point_source", "reviewer")):
        feature.SetField(name, value)
    layer.SetFeature(feature)
    ds = layer = feature = None
    with closing(gpkg_connect(path)) as db, db:  # what conflation and QGIS add to the file
        db.execute("ALTER TABLE candidates ADD COLUMN osm_flags TEXT")
        db.execute("UPDATE candidates SET osm_flags = 'line_without_tower' WHERE tile_id = ?", (chosen[5],))
        db.execute("CREATE TABLE layer_styles (id INTEGER PRIMARY KEY, styleName TEXT, styleQML TEXT)")
        db.execute("INSERT INTO layer_styles (styleName, styleQML) VALUES ('tower-detector', '<qgis/>')")
    return chosen


def check_consistent(path):
    """Points layer, R-trees and GDAL's view agree with the candidates layer; ranks follow the scores."""
    from osgeo import ogr
    from osgeo_utils.samples import validate_gpkg

    with closing(sqlite3.connect(path)) as db:
        cands = db.execute("SELECT fid, tile_id, score, rank, point_lon, point_lat, point_source, x, y "
                           "FROM candidates ORDER BY rank").fetchall()
        points = {r[0]: r[1:] for r in db.execute("SELECT fid, tile_id, score, point_source FROM candidate_points")}
        rtree = {r[0] for r in db.execute("SELECT id FROM rtree_candidates_geom")}
        prtree = {r[0]: r[1:] for r in db.execute("SELECT id, minx, miny FROM rtree_candidate_points_geom")}
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [r[3] for r in cands] == list(range(1, len(cands) + 1))
    scored = [r[2] for r in cands if r[2] is not None]  # a row added by hand may have no score: ranked last
    assert scored == sorted(scored, reverse=True) and all(r[2] is None for r in cands[len(scored):])
    assert rtree == {r[0] for r in cands}
    assert set(points) == set(prtree) == {r[0] for r in cands if re.fullmatch(r"\d+-\d+-\d+", r[1]) or r[4] is not None}
    for fid, tile_id, score, _rank, lon, lat, source, _x, _y in cands:
        if fid not in points:
            continue
        assert points[fid] == (tile_id, score, source)
        assert prtree[fid] == pytest.approx((lon, lat), abs=1e-5)  # the point layer shows the reviewer's point
    validate_gpkg.check(path, abort_at_first_error=True, extra_checks=True, warning_as_error=True)
    ds = ogr.Open(path)
    assert ds.GetLayerByName("candidates").GetFeatureCount() == len(cands)
    assert ds.GetLayerByName("candidate_points").GetFeatureCount() == len(points)
    return cands


def test_results_from_a_new_store_keep_every_review_decision(tmp_path):
    first = make_store(tmp_path / "a", scores_of)
    path = str(tmp_path / "c.gpkg")
    merge_results(first, candidates=path, threshold=0.5)
    old = rows(path)
    b = {t: float(scores_b(np.array([tile(t)[0]]), np.array([tile(t)[1]]))[0]) for t in old}

    def pick(tiles):  # reviewed tiles that the new store scores above and below 0.5, and one it cannot score
        above = [t for t in tiles if b[t] >= 0.5]
        below = [t for t in tiles if b[t] < 0.5]
        return [above[0], below[0], above[1], below[1], above[2], below[2], above[3], below[3]]

    chosen = review_as_people_do(path, pick)
    before = decisions(path)
    assert len(before) == 8
    unreviewed_below = {t for t in old if t not in before and b[t] < 0.5}
    assert unreviewed_below
    gone = tile(chosen[2])
    second = make_store(tmp_path / "b", scores_b, failed={gone}, cam_shift=64)  # and no score for one of them
    with sqlite3.connect(path) as reader:  # QGIS keeps the file open while it is merged
        reader.execute("SELECT count(*) FROM candidates").fetchone()
        summary = merge_results(second, candidates=path, threshold=0.5)

    after = rows(path)
    assert decisions(path) == before  # statuses, notes, reviewers, times, moved points: all there
    assert after[chosen[5]]["osm_flags"] == "line_without_tower"
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT styleName FROM layer_styles").fetchall() == [("tower-detector",)]
        job = dict(db.execute("SELECT key, value FROM job"))
    for t, r in after.items():
        if t == chosen[2]:  # not scored by the new store: its last score stays, and it is marked
            assert r["score"] == old[t]["score"] and r["in_results"] == 0
        elif t in before and b[t] < 0.5:  # reviewed, now below the threshold: stays, marked, score updated
            assert r["in_results"] == 0 and np.float32(r["score"]) == np.float32(b[t])
        else:
            assert r["in_results"] == 1 and r["score"] >= 0.5
        if t in old and t not in before:  # an unreviewed candidate takes the new model's point; reviewed ones not
            assert r["point_lon"] != old[t]["point_lon"] and r["point_source"] == "cam"
    assert not unreviewed_below & after.keys()  # unreviewed ones below the threshold are dropped
    assert after.keys() == {t for t, s in all_scores(second).items() if s >= 0.5} | before.keys()
    added = {t for t in after if t not in old}
    assert added and all(after[t]["status"] == "unreviewed" and after[t]["in_results"] == 1 for t in added)
    assert all(after[t]["fid"] == old[t]["fid"] for t in after if t in old)  # an open layer's fids still hold
    check_consistent(path)
    below = 1 + sum(1 for t in before if t != chosen[2] and b[t] < 0.5)
    assert summary["merge"] == {"mode": "merged", "reviewed_kept": 8, "updated": len(after) - len(added) - below,
                                "added": len(added), "reviewed_below_threshold": below,
                                "unreviewed_dropped": len(unreviewed_below)}
    assert summary["candidates"] == sum(r["in_results"] for r in after.values())
    assert json.loads(job["merges"])[-1]["store"] == second and len(json.loads(job["merges"])) == 2
    assert float(job["threshold"]) == 0.5 and job["store"] == second


def test_a_new_threshold_keeps_reviewed_candidates_below_it_and_marks_them(tmp_path):
    store = make_store(tmp_path / "a", scores_of)
    path = str(tmp_path / "c.gpkg")
    merge_results(store, candidates=path, threshold=0.5)
    old = rows(path)
    chosen = review_as_people_do(path, lambda tiles: sorted(tiles, key=lambda t: old[t]["score"])[:8])
    before = decisions(path)
    assert max(old[t]["score"] for t in chosen) < 0.9

    summary = merge_results(store, candidates=path, threshold=0.9)
    after = rows(path)
    assert decisions(path) == before
    assert {t for t, r in after.items() if r["in_results"] == 0} == set(chosen)
    assert all(r["score"] >= 0.9 for t, r in after.items() if t not in chosen)
    assert summary["merge"]["reviewed_below_threshold"] == 8 and summary["merge"]["added"] == 0
    check_consistent(path)

    merge_results(store, candidates=path, threshold=0.5)  # back down: all in the results again, nothing lost
    again = rows(path)
    assert decisions(path) == before and again.keys() == old.keys()
    assert all(r["in_results"] == 1 for r in again.values())
    check_consistent(path)


def run(*args):
    proc = subprocess.run([CLI, *map(str, args), "--events"], capture_output=True, text=True, timeout=300)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()], proc.stderr


def test_the_cli_run_again_on_a_reviewed_file_merges_and_says_so(tmp_path):
    """The defect as seen: 5 confirmed and 3 false positives became 256 unreviewed rows, exit 0, no word."""
    store = make_store(tmp_path / "a", scores_of)
    path = str(tmp_path / "c.gpkg")
    rc, events, err = run("results", store, "--candidates", path)
    assert rc == 0, err
    review_as_people_do(path, lambda tiles: tiles[:8])
    # QGIS holds the file open in WAL mode, its last writes still in the -wal journal
    holder = gpkg_connect(path)
    holder.execute("UPDATE candidates SET note = 'seen' WHERE rank = 1")
    holder.commit()
    before = decisions(path)
    rc, events, err = run("results", store, "--candidates", path)
    assert rc == 0, err
    assert decisions(path) == before
    assert "9 reviewed kept" in events[-1]["message"], events[-1]["message"]  # a note alone counts as a review

    holder.execute("UPDATE candidates SET note = 'seen again' WHERE rank = 2")
    holder.commit()
    rc, events, err = run("results", store, "--candidates", path, "--overwrite")  # the one way to start afresh
    assert rc == 0, err
    assert holder.execute("SELECT count(*) FROM candidates WHERE note IS NOT NULL").fetchone()[0] == 0
    holder.close()
    assert decisions(path) == {} and events[-1]["merge"]["mode"] == "overwritten"
    assert any("--overwrite" in e.get("message", "") and "10 reviewed" in e["message"] for e in events
               if e["event"] == "log")
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM candidates WHERE fid != rank").fetchone()[0] == 0
    check_consistent(path)


def test_a_file_of_another_zoom_or_no_candidates_file_is_refused(tmp_path):
    store = make_store(tmp_path / "a", scores_of)
    zoom17 = make_candidates(tmp_path / "z17.gpkg", [(75_500, 71_000)], zoom=17)
    text = tmp_path / "notes.gpkg"
    text.write_text("my notes\n")
    other = tmp_path / "other.gpkg"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE roads (id INTEGER PRIMARY KEY)")
    for path, message in ((zoom17, "zoom-17 candidates"), (text, "not a candidates GeoPackage"),
                          (other, "not a candidates GeoPackage")):
        before = sha(path)
        with pytest.raises(UserError, match=message) as caught:
            merge_results(store, candidates=path, heatmap=tmp_path / "h.tif")
        assert "\n" not in str(caught.value) and "--overwrite" in str(caught.value)
        assert sha(path) == before and not (tmp_path / "h.tif").exists()
    assert main(["results", store, "--candidates", str(zoom17), "--events"]) == 2
    for path in (zoom17, text, other):  # --overwrite replaces any of them
        assert main(["results", store, "--candidates", str(path), "--overwrite", "--events"]) == 0
        assert len(rows(path)) == 36 and decisions(path) == {}


def test_a_merge_that_fails_leaves_the_file_as_it_was(tmp_path):
    store = make_store(tmp_path / "a", scores_of)
    path = str(tmp_path / "c.gpkg")
    merge_results(store, candidates=path, threshold=0.5)
    review_as_people_do(path, lambda tiles: tiles[:8])
    with closing(gpkg_connect(path)) as db, db:  # a real failure half-way through the merge's writes
        db.execute("CREATE TRIGGER no_low BEFORE INSERT ON candidates WHEN NEW.score < 0.45 "
                   "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before, content = sha(path), rows(path)
    rc = main(["results", store, "--candidates", path, "--threshold", "0.4", "--heatmap",
               str(tmp_path / "h.tif"), "--events"])
    assert rc == 1
    assert rows(path) == content and sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.gpkg"]  # no heatmap, no temp file


def test_remote_fetch_twice_keeps_the_review(s3, tmp_path, monkeypatch):
    from tower_detector.remote.jobs import save_job

    monkeypatch.setenv("TOWER_DETECTOR_HOME", str(tmp_path / "home"))
    s3.create_bucket(Bucket="review-merge")
    store = make_store("s3://review-merge/jobs/p1/results", scores_of)
    save_job({"name": "p1", "kind": "predict", "store": store, "job_id": "0" * 8, "region": "us-east-1"})
    out = tmp_path / "fetched"
    assert main(["remote", "fetch", "p1", "--out", str(out), "--events"]) == 0
    path = str(out / "candidates.gpkg")
    review_as_people_do(path, lambda tiles: tiles[-8:])
    before = decisions(path)
    assert main(["remote", "fetch", "p1", "--out", str(out), "--threshold", "0.6", "--events"]) == 0
    assert decisions(path) == before
    check_consistent(path)


def test_exports_after_a_merge_follow_the_new_ranks(tmp_path):
    """fids keep their rows through a merge (an open QGIS layer relies on them), so fid order is no longer rank
    order: the .osm export's "the better-ranked of two points on one tower" must read the ranks."""
    from tower_detector.results import tile_lonlat
    from tower_detector.review.exports import export

    path = str(tmp_path / "c.gpkg")
    merge_results(make_store(tmp_path / "a", scores_of), candidates=path, threshold=0.0)
    old = rows(path)
    west, east = next((f"{x}-{y}-18", f"{x + 1}-{y}-18") for x, y in map(tile, sorted(old))
                      if f"{x + 1}-{y}-18" in old and old[f"{x}-{y}-18"]["score"] != old[f"{x + 1}-{y}-18"]["score"])
    (xw, y), (xe, _) = tile(west), tile(east)

    def swapped(x, yy):  # the new model swaps the two tiles' scores
        s = scores_of(x, yy)
        a, b = (x == xw) & (yy == y), (x == xe) & (yy == y)
        s[a], s[b] = s[b], s[a]
        return s

    edge, _ = tile_lonlat(xe, y, 18)
    lat = old[west]["point_lat"]
    review(path, (xw, y), "confirmed", point=(float(edge) - 1e-5, lat))  # one tower on the tiles' shared edge
    review(path, (xe, y), "confirmed", point=(float(edge) + 1e-5, lat))
    merge_results(make_store(tmp_path / "b", swapped), candidates=path, threshold=0.0)
    now = rows(path)
    better = min((west, east), key=lambda t: now[t]["rank"])
    assert now[better]["fid"] > min(now[west]["fid"], now[east]["fid"])  # the better one is now the later fid
    summary = export("osm", path, tmp_path / "towers.osm", include_near_duplicates=True)  # not conflated here
    assert summary["nodes"] == 1 and summary["merged"] == 1
    text = (tmp_path / "towers.osm").read_text()
    assert f'lon="{now[better]["point_lon"]:.7f}"' in text, text


def test_rows_added_by_hand_survive_a_merge(tmp_path):
    """A mapper digitised a tower the model missed in QGIS: a row with a geometry, a tile id of their own and a
    status, nothing else. The merge keeps it (and drops a bare one nobody decided on)."""
    from osgeo import ogr

    store = make_store(tmp_path / "a", scores_of)
    path = str(tmp_path / "c.gpkg")
    merge_results(store, candidates=path, threshold=0.5)
    ds = ogr.Open(path, 1)
    layer = ds.GetLayerByName("candidates")
    for tile_id, status in (("missed-by-model", "confirmed"), ("scratch", None)):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((28.001 -14.995,28.002 -14.995,28.002 -14.994,"
                                                      "28.001 -14.994,28.001 -14.995))"))
        feature.SetField("tile_id", tile_id)
        if status:
            feature.SetField("status", status)
        layer.CreateFeature(feature)
    ds = layer = feature = None
    summary = merge_results(store, candidates=path, threshold=0.6)
    after = rows(path)
    assert after["missed-by-model"]["status"] == "confirmed" and after["missed-by-model"]["in_results"] == 0
    assert "scratch" not in after and summary["merge"]["reviewed_kept"] == 1
    check_consistent(path)
