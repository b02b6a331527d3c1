"""`tower-detector export`: every kind written from a reviewed candidates GeoPackage and read back by real parsers
(xml.etree, pyosmium, json, shapely, the dataset builder), and bad input refused with exit 2 and no file."""

import base64
import json
import os
import re
import sqlite3
import xml.etree.ElementTree as ET

import numpy as np
import osmium
import pytest
import shapely
from pyproj import Geod

from tests.fakes.candidates_helpers import centre, make_candidates, review, run_cli, scene_features, tile_of
from tests.fakes.training import folder_bytes
from tower_detector.common.errors import UserError
from tower_detector.datasets.dataset import build_dataset
from tower_detector.geo.tilemath import tile_bounds_4326
from tower_detector.pipeline import options
from tower_detector.review.exports import UNPLACED_FIXME, export
from tower_detector.sources.osm import load_towers

GEOD = Geod(ellps="WGS84")
RS = "\x1e"
ALL = ("--include-near-duplicates",)


@pytest.fixture(scope="module")
def reviewed(sample_scene, tmp_path_factory):
    """A reviewed candidates file on the sample scene: {"path", "tiles": {name: (x, y)}, "points": {name: (lon, lat)}}.

    tower0: confirmed at its CAM point (the tower); tower1: confirmed after the reviewer moved the point onto the
    tower; twin: the tile next to tower2, confirmed with its point moved 3 m from tower2's (the same tower twice);
    tower2 confirmed too; empty tiles: false_positive, unreviewed, unsure, bad_imagery, already_mapped.
    """
    towers = scene_features(sample_scene["towers"], "tower")
    tiles = {f"tower{i}": tile_of(*towers[i]) for i in range(3)}
    tiles["twin"] = (tiles["tower2"][0] + 1, tiles["tower2"][1])
    info = sample_scene["info"]["tile_range"]
    taken = {tile_of(*p) for p in towers} | set(tiles.values())
    free = [(x, y) for x in range(info["x"][0], info["x"][1] + 1) for y in range(info["y"][0], info["y"][1] + 1)
            if all(abs(x - a) > 1 or abs(y - b) > 1 for a, b in taken)]
    for name, tile in zip(("false_positive", "unreviewed", "unsure", "bad_imagery", "already_mapped"), free):
        tiles[name] = tile
    lon, lat, _ = GEOD.fwd(*towers[2], 90, 3.0)
    points = {"tower0": towers[0], "tower1": towers[1], "tower2": towers[2], "twin": (lon, lat)}
    path = make_candidates(tmp_path_factory.mktemp("reviewed") / "candidates.gpkg", list(tiles.values()),
                           points=[towers[0], None, towers[2], None, *[None] * 5])
    for name in ("tower0", "tower2"):
        review(path, tiles[name], "confirmed")
    review(path, tiles["tower1"], "confirmed", point=towers[1])
    review(path, tiles["twin"], "confirmed", point=points["twin"])
    for name in ("false_positive", "unsure", "bad_imagery", "already_mapped"):
        review(path, tiles[name], name)
    return {"path": path, "tiles": tiles, "points": points}


# --- osm ---------------------------------------------------------------------------------------------------------
def test_osm_file_for_josm(reviewed, tmp_path):
    out = tmp_path / "towers.osm"
    code, events = run_cli("export", "osm", "--candidates", reviewed["path"], "--out", out, "--comment", "Towers",
                           "--source", "Esri World Imagery", "--hashtags", "#towers; #zambia",
                           "--include-near-duplicates")  # the scene's towers are OSM's: kept only when asked
    assert code == 0, events
    result = events[-1]
    assert result["event"] == "result" and result["exported"] == 4 and result["nodes"] == 3 and result["merged"] == 1
    assert result["near_duplicates"] is None and any("warning: not checked against OSM" in e["message"]
                                                     for e in events if e["event"] == "log")
    root = ET.parse(out).getroot()
    assert root.tag == "osm" and root.get("version") == "0.6" and root.get("upload") == "false"
    assert root.get("generator").startswith("tower-detector ")
    (changeset,) = root.findall("changeset")
    assert {t.get("k"): t.get("v") for t in changeset.findall("tag")} == {
        "comment": "Towers", "source": "Esri World Imagery", "hashtags": "#towers;#zambia"}
    nodes = root.findall("node")
    assert [n.get("id") for n in nodes] == ["-1", "-2", "-3"]
    assert all(n.get("action") is None and n.get("version") is None for n in nodes)
    # tower0 and tower2 keep the detector's point, which no reviewer placed: marked for the mapper to check
    tags = [dict((t.get("k"), t.get("v")) for t in n.findall("tag")) for n in nodes]
    assert tags == [{"power": "tower", "fixme": UNPLACED_FIXME}, {"power": "tower"},
                    {"power": "tower", "fixme": UNPLACED_FIXME}]
    assert result["unplaced"] == 2
    want = [reviewed["points"][k] for k in ("tower0", "tower1", "tower2")]  # rank order; the twin merged into tower2
    got = [(float(n.get("lon")), float(n.get("lat"))) for n in nodes]
    np.testing.assert_allclose(got, want, atol=1e-7)

    read, changesets = [], []  # pyosmium reads the changeset element too
    for obj in osmium.FileProcessor(str(out)):
        if obj.type_str() == "c":
            changesets.append(dict(obj.tags))
        else:
            read.append((obj.id, dict(obj.tags), obj.location.lon, obj.location.lat))
    assert changesets == [{"comment": "Towers", "source": "Esri World Imagery", "hashtags": "#towers;#zambia"}]
    assert [r[0] for r in read] == [-1, -2, -3] and [r[1] for r in read] == tags
    np.testing.assert_allclose([r[2:] for r in read], want, atol=1e-7)


def test_osm_merge_distance_follows_how_the_points_were_placed(sample_scene, tmp_path):
    """Two reviewers' points of one tower agree within a few metres: merged within MERGE_M. The detector's own
    points are off by more (the CAM point's error): two tiles' estimates of one tower merge within
    DETECTOR_MERGE_M, which a reviewer-placed point next to a detector point uses too."""
    from tower_detector.review.exports import DETECTOR_MERGE_M, MERGE_M

    towers = scene_features(sample_scene["towers"], "tower")
    base = tile_of(*towers[0])
    tiles = [(base[0] + 2 * k, base[1]) for k in range(6)]
    gap = (MERGE_M + DETECTOR_MERGE_M) / 2  # more than reviewers' points, less than the detector's
    lon0, lat0 = towers[0]
    east = [GEOD.fwd(lon0, lat0, 90, d)[:2] for d in (0, gap, 500, 500 + gap, 1000, 1000 + gap)]
    path = make_candidates(tmp_path / "c.gpkg", tiles, points=east)
    for k, tile in enumerate(tiles):
        # pair 1: both detector points; pair 2: both placed by a reviewer; pair 3: one of each
        review(path, tile, "confirmed", point=east[k] if k in (2, 3, 4) else None)
    summary = export("osm", path, tmp_path / "t.osm", include_near_duplicates=True)
    nodes = ET.parse(tmp_path / "t.osm").getroot().findall("node")
    got = [(float(n.get("lon")), float(n.get("lat"))) for n in nodes]
    np.testing.assert_allclose(got, [east[0], east[2], east[3], east[4]], atol=1e-7)
    assert summary["merged"] == 2 and summary["unplaced"] == 1  # east[5], merged into east[4], is not written
    assert DETECTOR_MERGE_M > MERGE_M


def _set_job(path, key, value):
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO job (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def test_osm_source_is_the_imagerys_name_never_a_host_and_refuses_other_statuses(reviewed, tmp_path):
    path = tmp_path / "c.gpkg"
    path.write_bytes(reviewed["path"].read_bytes())
    # the job scored https://{s}.tiles.example.com/...: its host is no source a mapper can check
    summary = export("osm", path, tmp_path / "a.osm", include_near_duplicates=True)
    assert summary["source"] == "aerial imagery" and "example" not in (tmp_path / "a.osm").read_text()
    _set_job(path, "imagery_name", "Esri World Imagery")  # as `results` copies `predict --imagery-name`
    summary = export("osm", path, tmp_path / "b.osm", include_near_duplicates=True)
    assert summary["source"] == "Esri World Imagery"
    changeset = ET.parse(tmp_path / "b.osm").getroot().find("changeset")
    assert {t.get("k"): t.get("v") for t in changeset.findall("tag")}["source"] == "Esri World Imagery"
    assert export("osm", path, tmp_path / "c.osm", source="Bing", include_near_duplicates=True)["source"] == "Bing"
    with pytest.raises(UserError, match="confirmed candidates only"):
        export("osm", path, tmp_path / "d.osm", statuses="unsure")
    with pytest.raises(UserError, match="--hashtags must look like"):
        export("osm", path, tmp_path / "e.osm", hashtags="towers zambia", include_near_duplicates=True)
    assert not (tmp_path / "d.osm").exists() and not (tmp_path / "e.osm").exists()


@pytest.fixture
def near(sample_scene, tmp_path):
    """Confirmed candidates on the sample scene, by their distance to the nearest mapped tower: on0 5 m from tower 0,
    near3 25 m from tower 3, off4 45 m from tower 4, and new in an empty tile, far from any support."""
    towers = scene_features(sample_scene["towers"], "tower")
    points = {"on0": GEOD.fwd(*towers[0], 30, 5.0)[:2], "near3": GEOD.fwd(*towers[3], 90, 25.0)[:2],
              "off4": GEOD.fwd(*towers[4], 180, 45.0)[:2]}
    tiles = {name: tile_of(*p) for name, p in points.items()}
    info = sample_scene["info"]["tile_range"]
    supports = [tile_of(*p) for kind in ("tower", "pole") for p in scene_features(sample_scene["towers"], kind)]
    tiles["new"] = next((x, y) for x in range(info["x"][0], info["x"][1] + 1)
                        for y in range(info["y"][0], info["y"][1] + 1)
                        if all(abs(x - a) > 1 or abs(y - b) > 1 for a, b in supports))
    points["new"] = centre(*tiles["new"])
    assert len(set(tiles.values())) == 4
    path = make_candidates(tmp_path / "c.gpkg", list(tiles.values()), points=list(points.values()))
    for tile in tiles.values():
        review(path, tile, "confirmed")
    return {"path": path, "points": points, "towers": sample_scene["towers"]}


def _nodes(path):
    return [(float(n.get("lon")), float(n.get("lat"))) for n in ET.parse(path).getroot().findall("node")]


def test_osm_leaves_out_towers_osm_has_after_conflation(near, tmp_path):
    """Issue 29: 49 confirmed candidates became 49 new nodes, 25 within 1 m of an OSM tower."""
    code, events = run_cli("conflate", "--candidates", near["path"], "--osm", near["towers"])
    assert code == 0, events
    out = tmp_path / "towers.osm"
    code, events = run_cli("export", "osm", "--candidates", near["path"], "--out", out)
    assert code == 0, events
    result = events[-1]
    assert (result["near_duplicates"], result["exported"], result["nodes"], result["duplicate_m"]) == (2, 2, 2, 30)
    assert "2 left out: within 30 m of a tower or pole OSM already has" in result["message"]
    assert "--include-near-duplicates" in result["message"] and "conflation" in result["checked_against"]
    np.testing.assert_allclose(_nodes(out), [near["points"]["off4"], near["points"]["new"]], atol=1e-7)
    # a point moved since is checked where it is now: off4 onto tower 4 is OSM's
    tower4 = GEOD.fwd(*near["points"]["off4"], 0, 45.0)[:2]
    review(near["path"], tile_of(*near["points"]["off4"]), "confirmed", point=tower4)
    summary = export("osm", near["path"], tmp_path / "moved.osm")
    assert summary["near_duplicates"] == 3 and summary["nodes"] == 1
    everything = export("osm", near["path"], tmp_path / "all.osm", include_near_duplicates=True)
    assert everything["nodes"] == 4 and everything["near_duplicates"] is None
    cooperative = export("maproulette-cooperative", near["path"], tmp_path / "coop.geojson")
    assert cooperative["tasks"] == 1 and cooperative["near_duplicates"] == 3
    # a candidate a later `results` merged in was never conflated: its point proves nothing, so it is refused
    with sqlite3.connect(near["path"]) as db:
        db.execute("UPDATE candidates SET osm_flags = NULL WHERE fid = (SELECT MIN(fid) FROM candidates WHERE "
                   "status = 'confirmed')")
    with pytest.raises(UserError, match="1 of the candidates to export in .* came after its last conflation"):
        export("osm", near["path"], tmp_path / "later.osm")


def test_osm_conflates_on_the_spot_with_osm_and_refuses_unchecked_candidates(near, tmp_path):
    before = near["path"].read_bytes()
    out = tmp_path / "towers.osm"
    code, events = run_cli("export", "osm", "--candidates", near["path"], "--out", out, "--osm", near["towers"])
    assert code == 0, events
    assert events[-1]["near_duplicates"] == 2 and events[-1]["checked_against"] == "OSM from towers.geojson"
    np.testing.assert_allclose(_nodes(out), [near["points"]["off4"], near["points"]["new"]], atol=1e-7)
    wider = export("osm", near["path"], tmp_path / "wider.osm", osm=str(near["towers"]), duplicate_m=50)
    assert wider["near_duplicates"] == 3 and wider["nodes"] == 1
    code, events = run_cli("export", "osm", "--candidates", near["path"], "--out", tmp_path / "unchecked.osm")
    assert code == 2 and "never conflated with OSM" in events[-1]["message"]
    assert "--include-near-duplicates" in events[-1]["message"] and not (tmp_path / "unchecked.osm").exists()
    assert near["path"].read_bytes() == before  # an export never writes to the candidates
    # every confirmed tower already mapped: nothing to export, and says why
    only = make_candidates(tmp_path / "only.gpkg", [tile_of(*near["points"]["on0"])], points=[near["points"]["on0"]])
    review(only, tile_of(*near["points"]["on0"]), "confirmed")
    with pytest.raises(UserError, match="all 1 confirmed candidates are within 30 m of a mapped tower or pole"):
        export("osm", only, tmp_path / "none.osm", osm=str(near["towers"]))
    _set_job(only, "conflation", {"time": "2024-01-01T00:00:00Z", "buffer_m": 20})  # before supports were kept
    with pytest.raises(UserError, match="conflated by an older version.*run `tower-detector conflate` on it"):
        export("osm", only, tmp_path / "none.osm")


def test_osm_reference_layer(reviewed, tmp_path):
    out = tmp_path / "reference.osm"
    summary = export("osm-reference", reviewed["path"], out)
    assert summary["exported"] == len(reviewed["tiles"])
    root = ET.parse(out).getroot()
    assert root.get("upload") == "never"
    node_ids = {n.get("id") for n in root.findall("node")}
    ways = root.findall("way")
    assert len(ways) == len(reviewed["tiles"]) and not node_ids & {w.get("id") for w in ways}
    for way in ways:
        refs = [nd.get("ref") for nd in way.findall("nd")]
        assert len(refs) == 5 and refs[0] == refs[-1] and set(refs) <= node_ids
    # read with pyosmium, each way's square is exactly its tile's bounds (its location cache ignores negative
    # ids, so the nodes are looked up here)
    squares, located = {}, {}
    for obj in osmium.FileProcessor(str(out)):
        if obj.type_str() == "n":
            located[obj.id] = (obj.location.lon, obj.location.lat)
        else:
            tags = dict(obj.tags)
            assert tags["tower_detector:candidate"] == "yes" and "power" not in tags
            squares[tags["tower_detector:tile_id"]] = (tags["tower_detector:status"],
                                                      [located[n.ref] for n in obj.nodes])
    for name, (x, y) in reviewed["tiles"].items():
        status, ring = squares[f"{x}-{y}-18"]
        assert status == ("confirmed" if name.startswith(("tower", "twin")) else name)
        w, s, e, n = tile_bounds_4326(x, y, 18)
        np.testing.assert_allclose(np.array(ring).min(axis=0), (w, s), atol=1e-7)
        np.testing.assert_allclose(np.array(ring).max(axis=0), (e, n), atol=1e-7)
    # neighbours share corners: tower2 and its twin are side by side
    assert len(node_ids) < 4 * len(ways)


def test_bbox_keeps_the_candidates_whose_point_is_inside(reviewed, tmp_path):
    lon, lat = reviewed["points"]["tower0"]
    out = tmp_path / "around.osm"
    box = f"{lon - 1e-5},{lat - 1e-5},{lon + 1e-5},{lat + 1e-5}"
    summary = export("osm-reference", reviewed["path"], out, bbox=box)
    assert summary["exported"] == 1
    x, y = reviewed["tiles"]["tower0"]
    [way] = ET.parse(out).getroot().findall("way")
    assert {t.get("k"): t.get("v") for t in way.findall("tag")}["tower_detector:tile_id"] == f"{x}-{y}-18"
    with pytest.raises(UserError, match="nothing to export.*inside"):
        export("osm-reference", reviewed["path"], tmp_path / "none.osm", bbox="0,0,0.001,0.001")
    with pytest.raises(UserError, match="not W,S,E,N"):
        export("osm-reference", reviewed["path"], tmp_path / "bad.osm", bbox="1,2,3")


# --- overlay -----------------------------------------------------------------------------------------------------
def test_overlay_reuses_the_seed_bands(reviewed, tmp_path):
    out = tmp_path / "overlay.geojson"
    summary = export("overlay", reviewed["path"], out, yes_threshold=0.9)
    features = json.loads(out.read_text())["features"]
    assert len(features) == summary["exported"] == len(reviewed["tiles"]) - 1  # false positives left out
    fp = reviewed["tiles"]["false_positive"]
    assert (fp[0], fp[1]) not in {(f["properties"]["x"], f["properties"]["y"]) for f in features}
    for f in features:
        p = f["properties"]
        assert p["z"] == 18 and p["label"] == ("Yes" if p["prob"] >= 0.9 else "Maybe") and "fill" in p
    with sqlite3.connect(reviewed["path"]) as db:
        scores = np.array([r[0] for r in db.execute("SELECT score FROM candidates")], np.float32)
    high = export("overlay", reviewed["path"], tmp_path / "high.geojson", min_score=0.9, statuses="all")
    assert high["exported"] == (scores >= np.float32(0.9)).sum() == len(json.loads(
        (tmp_path / "high.geojson").read_text())["features"])


# --- MapRoulette -------------------------------------------------------------------------------------------------
def _lines(path):
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]  # not splitlines(): it splits at RS too
    assert text.endswith("\n") and all(line.startswith(RS) and RS not in line[1:] for line in lines)
    return [json.loads(line[1:]) for line in lines]


def test_maproulette_line_by_line(reviewed, tmp_path):
    out = tmp_path / "tasks.geojson"
    code, events = run_cli("export", "maproulette", "--candidates", reviewed["path"], "--out", out)
    assert code == 0 and events[-1]["tasks"] == 2  # unreviewed and unsure by default
    tasks = _lines(out)
    assert len(tasks) == 2
    for task in tasks:
        assert task["type"] == "FeatureCollection" and len(task["features"]) == 1 and "cooperativeWork" not in task
        (feature,) = task["features"]
        z, x, y = map(int, feature["properties"]["id"].split("/"))
        assert (z, x, y) in {(18, *reviewed["tiles"][k]) for k in ("unreviewed", "unsure")}
        assert feature["geometry"] == {"type": "Point", "coordinates": [round(c, 7) for c in centre(x, y)]}
        assert feature["properties"]["tile_id"] == f"{x}-{y}-18" and 0 < feature["properties"]["prob"] <= 1
        w, s, e, n = map(float, feature["properties"]["tile_bbox"].split(","))
        assert (w, s, e, n) == pytest.approx(tile_bounds_4326(x, y, 18), abs=1e-7)
    everything = export("maproulette", reviewed["path"], tmp_path / "all.geojson", statuses="all")
    assert len(_lines(tmp_path / "all.geojson")) == everything["tasks"] == len(reviewed["tiles"])


def test_maproulette_cooperative_carries_an_osmchange(reviewed, tmp_path):
    out = tmp_path / "cooperative.geojson"
    summary = export("maproulette-cooperative", reviewed["path"], out, include_near_duplicates=True)
    tasks = _lines(out)
    assert len(tasks) == summary["tasks"] == 3 and summary["merged"] == 1
    for k, task in enumerate(tasks):
        (feature,) = task["features"]
        work = task["cooperativeWork"]
        assert work["meta"] == {"version": 2, "type": 2}
        assert {k: work["file"][k] for k in ("type", "format", "encoding")} == {
            "type": "xml", "format": "osc", "encoding": "base64"}
        osc = base64.b64decode(work["file"]["content"], validate=True)
        change = ET.fromstring(osc)
        assert change.tag == "osmChange" and change.get("version") == "0.6"
        (create,) = list(change)
        (node,) = list(create)
        assert create.tag == "create" and node.tag == "node" and node.get("id") == "-1"
        want = {"power": "tower", **({} if k == 1 else {"fixme": UNPLACED_FIXME})}  # tower1 a reviewer placed
        assert {t.get("k"): t.get("v") for t in node.findall("tag")} == want
        assert [float(node.get("lon")), float(node.get("lat"))] == feature["geometry"]["coordinates"]
        path = tmp_path / f"task{k}.osc"
        path.write_bytes(osc)
        read = [(o.type_str(), o.id, dict(o.tags), o.deleted) for o in osmium.FileProcessor(str(path))]
        assert read == [("n", -1, want, False)]


# --- Tasking Manager ---------------------------------------------------------------------------------------------
def _collection(path, kinds):
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and "crs" not in data
    geoms = []
    for f in data["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] in kinds and isinstance(f["properties"], dict)
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid and not geom.is_empty
        assert all(p.exterior.is_ccw and not any(r.is_ccw for r in p.interiors) for p in shapely.get_parts(geom))
        lon, lat = shapely.get_coordinates(geom).T
        assert (np.abs(lon) <= 180).all() and (np.abs(lat) <= 90).all()
        geoms.append(geom)
    return data["features"], geoms


def test_tasking_manager_files(reviewed, tmp_path):
    out = tmp_path / "tm"
    code, events = run_cli("export", "tasking-manager", "--candidates", reviewed["path"], "--out", out,
                           "--task-zoom", "17", "--yes-threshold", "0.9")
    assert code == 0, events
    summary = events[-1]
    assert sorted(os.listdir(out)) == ["aoi.geojson", "priority_areas.geojson", "tasks.geojson"]
    tasks, squares = _collection(out / "tasks.geojson", {"Polygon"})
    (aoi,), (area,) = _collection(out / "aoi.geojson", {"MultiPolygon"})
    priorities, priority_areas = _collection(out / "priority_areas.geojson", {"Polygon"})
    assert len(tasks) == summary["tasks"] and len(priorities) == summary["priority_areas"] > 0

    exported = [t for k, t in reviewed["tiles"].items() if k not in ("false_positive", "already_mapped", "bad_imagery")]
    assert sum(t["properties"]["candidates"] for t in tasks) == len(exported) == summary["exported"]
    assert sum(t["properties"]["confirmed"] for t in tasks) == 4
    for x, y in exported:  # every candidate's tile lies in exactly one task
        tile = shapely.box(*tile_bounds_4326(x, y, 18)).buffer(-1e-6)  # coordinates are rounded to 1e-7
        assert sum(sq.covers(tile) for sq in squares) == 1
    assert shapely.union_all(squares).symmetric_difference(area).area < 1e-12
    assert all(area.covers(p) for p in priority_areas)
    yes = {t["properties"]["tile_id"] for t in tasks if t["properties"]["max_score"] >= 0.9}
    assert yes and all(t["properties"]["yes"] > 0 for t in tasks if t["properties"]["tile_id"] in yes)
    yes_area = shapely.union_all([sq for t, sq in zip(tasks, squares) if t["properties"]["tile_id"] in yes])
    assert shapely.union_all(priority_areas).symmetric_difference(yes_area).area < 1e-12
    with pytest.raises(UserError, match="--task-zoom"):
        export("tasking-manager", reviewed["path"], tmp_path / "bad", task_zoom=19)


def test_a_tasking_manager_export_failing_midway_leaves_the_old_folder_whole(tmp_path):
    """The disk fills up after the new tasks.geojson is written: the folder of the previous export stays byte for
    byte (not new tasks beside old areas); with room again the new export replaces it whole."""
    import subprocess

    tiles = [(150000 + 2 * i, 120000 + 2 * j) for i in range(20) for j in range(20)]  # 400 separate tasks at 18
    path = make_candidates(tmp_path / "candidates.gpkg", tiles)
    export("tasking-manager", path, tmp_path / "want", task_zoom=18)
    want = folder_bytes(tmp_path / "want")
    pages = {name: -(-len(data) // 4096) for name, data in want.items()}
    assert pages["aoi.geojson"] >= 2  # so that the room left below holds the new tasks but not its areas too
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs as a disk that fills up")
    try:
        out = disk / "tm"
        export("tasking-manager", path, out, task_zoom=12)  # the previous export: one task
        before = folder_bytes(out)
        room = pages["tasks.geojson"] + pages["aoi.geojson"] - 2
        (disk / "filler").write_bytes(bytes((os.statvfs(disk).f_bavail - room) * 4096))
        with pytest.raises(UserError, match="cannot write"):
            export("tasking-manager", path, out, task_zoom=18)
        assert folder_bytes(out) == before
        assert sorted(os.listdir(disk)) == ["filler", "tm"]  # no temporary file or folder left
        (disk / "filler").unlink()
        export("tasking-manager", path, out, task_zoom=18)
        assert folder_bytes(out) == want and sorted(os.listdir(disk)) == ["tm"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_tasking_manager_export_never_replaces_a_folder_of_other_files(reviewed, tmp_path):
    """The export replaces its folder whole, so a folder holding anything else (the job folder the dialog opens
    at) is refused, untouched."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "candidates.gpkg").write_bytes(b"the review")
    (folder / "tasks.geojson").write_text("{}")
    with pytest.raises(UserError, match="holds other files"):
        export("tasking-manager", reviewed["path"], folder)
    assert folder_bytes(folder) == {"candidates.gpkg": b"the review", "tasks.geojson": b"{}"}
    with pytest.raises(UserError, match="is a file"):
        export("tasking-manager", reviewed["path"], folder / "candidates.gpkg")


# --- labels for the next training set ----------------------------------------------------------------------------
def test_labels_round_trip_into_a_dataset(sample_scene, tmp_path):
    """A confirmed tower where OSM has none becomes a tower tile; a false positive a hard negative."""
    towers = load_towers(str(sample_scene["towers"]))
    osm_tiles = {tile_of(lon, lat) for lon, lat in zip(towers.lon, towers.lat)}
    info = sample_scene["info"]["tile_range"]
    free = [(x, y) for x in range(info["x"][0], info["x"][1] + 1) for y in range(info["y"][0], info["y"][1] + 1)
            if all(abs(x - a) > 1 or abs(y - b) > 1 for a, b in osm_tiles)]
    new_tower, rejected, skipped = free[0], free[-1], free[len(free) // 2]
    path = make_candidates(tmp_path / "c.gpkg", [new_tower, rejected, skipped])
    review(path, new_tower, "confirmed", point=centre(*new_tower))
    review(path, rejected, "false_positive")
    review(path, skipped, "unsure")

    for name in ("labels.geojson", "labels.gpkg"):
        summary = export("labels", path, tmp_path / name)
        assert summary["statuses"] == {"confirmed": 1, "false_positive": 1}
        confirmed = load_towers(str(tmp_path / name), tag_filter="status=confirmed")
        rejected_points = load_towers(str(tmp_path / name), tag_filter="status=false_positive")
        assert [tile_of(confirmed.lon[0], confirmed.lat[0])] == [new_tower] and len(confirmed) == 1
        assert [tile_of(rejected_points.lon[0], rejected_points.lat[0])] == [rejected] and len(rejected_points) == 1

    out = tmp_path / "ds"
    result = build_dataset(options("dataset", area=str(sample_scene["area"]), towers=str(sample_scene["towers"]),
                                   imagery=str(sample_scene["imagery"]), out=str(out), split="1", block_size=2,
                                   background_ratio=1, seed=1, extra_labels=str(tmp_path / "labels.gpkg")),
                           log=lambda *a: None)
    assert result["hard_negatives"] == 1
    with open(out / "index.csv", encoding="utf-8") as f:
        header, *lines = [line.strip().split(",") for line in f]
    labels = {r[header.index("tile_id")]: r[header.index("label")] for r in lines}
    assert labels[f"{new_tower[0]}-{new_tower[1]}-18"] == "1"
    assert labels[f"{rejected[0]}-{rejected[1]}-18"] == "0"


def test_labels_geopackage_is_valid_for_gdal(reviewed, tmp_path):
    ogr = pytest.importorskip("osgeo.ogr")
    validate = pytest.importorskip("osgeo_utils.samples.validate_gpkg")
    ogr.UseExceptions()
    export("labels", reviewed["path"], tmp_path / "labels.gpkg")
    validate.check(str(tmp_path / "labels.gpkg"), abort_at_first_error=True, extra_checks=True,
                   warning_as_error=True)
    ds = ogr.Open(str(tmp_path / "labels.gpkg"))  # kept: its layers die with it
    layer = ds.GetLayerByName("labels")
    assert layer.GetGeomType() == ogr.wkbPoint and layer.GetSpatialRef().GetAuthorityCode(None) == "4326"
    assert sorted(f.GetField("status") for f in layer) == ["confirmed"] * 4 + ["false_positive"]


def test_labels_need_a_known_suffix(reviewed, tmp_path):
    with pytest.raises(UserError, match=r"must end with \.geojson, \.json or \.gpkg"):
        export("labels", reviewed["path"], tmp_path / "labels.csv")


# --- bad input ---------------------------------------------------------------------------------------------------
def test_bad_inputs_exit_2_and_write_nothing(reviewed, sample_scene, tmp_path):
    unreviewed = make_candidates(tmp_path / "fresh.gpkg", [(151660, 142434), (151661, 142434)])
    plain = tmp_path / "plain.gpkg"
    with sqlite3.connect(plain) as db:
        db.execute("CREATE TABLE something (a)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    existing = tmp_path / "existing.osm"
    existing.write_text("keep me")
    cases = [
        (["osm", "--candidates", tmp_path / "missing.gpkg", "--out", tmp_path / "a.osm"], "candidates file not found"),
        (["osm", "--candidates", sample_scene["area"], "--out", tmp_path / "a.osm"], "is not a candidates GeoPackage"),
        (["osm", "--candidates", plain, "--out", tmp_path / "a.osm"], "has no candidates layer"),
        (["osm", "--candidates", unreviewed, "--out", existing], "no candidates .* with status confirmed"),
        (["osm", "--candidates", reviewed["path"], "--out", tmp_path / "nope" / "a.osm", *ALL], "cannot write"),
        (["osm", "--candidates", reviewed["path"], "--out", tmp_path / "a.txt", *ALL], r"must end with \.osm"),
        (["osm", "--candidates", reviewed["path"], "--out", tmp_path / "a.osm"], "never conflated with OSM"),
        (["osm", "--candidates", reviewed["path"], "--out", tmp_path / "a.osm", "--osm", tmp_path / "none.osm"],
         "towers source not found"),
        (["osm", "--candidates", reviewed["path"], "--out", tmp_path / "a.osm", "--osm", sample_scene["towers"],
          "--duplicate-distance", "-1"], "--duplicate-distance must be more than 0"),
        (["maproulette", "--candidates", reviewed["path"], "--out", tmp_path, "--status", "all"], "cannot write"),
        (["overlay", "--candidates", reviewed["path"], "--out", tmp_path / "o.geojson", "--status", "yes"],
         "unknown --status yes"),
        (["overlay", "--candidates", reviewed["path"], "--out", tmp_path / "o.geojson", "--min-score", "2"],
         "--min-score must be in 0..1"),
        (["wat", "--candidates", reviewed["path"], "--out", tmp_path / "o"], "unknown export kind"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((["osm", "--candidates", reviewed["path"], "--out", locked / "a.osm", *ALL], "cannot write"))
    for args, message in cases:
        before = sorted(os.listdir(tmp_path))
        code, events = run_cli("export", *args)
        assert code == 2, (args, events)
        assert events[-1]["event"] == "error" and "\n" not in events[-1]["message"]
        assert re.search(message, events[-1]["message"]), (message, events[-1]["message"])
        assert sorted(os.listdir(tmp_path)) == before and not os.listdir(locked)
    assert existing.read_text() == "keep me"


def test_the_overlays_yes_band_follows_the_candidates_calibration(tmp_path):
    """Issue 31: with the model's calibration kept in the candidates' job, the "Yes" band is P(tower) >= 0.97,
    as `results` draws it: with a = 2, b = -1 the band starts at a score of 0.9483, so 0.95 is "Yes"."""
    path = make_candidates(tmp_path / "c.gpkg", [(151_000 + i, 142_000) for i in range(3)],
                           scores=[0.99, 0.95, 0.9])
    plain = export("overlay", path, tmp_path / "plain.geojson", statuses="all")
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO job (key, value) VALUES ('calibration', ?)",
                   (json.dumps({"method": "platt", "split": "val", "a": 2.0, "b": -1.0}),))
    calibrated = export("overlay", path, tmp_path / "calibrated.geojson", statuses="all")
    labels = {}
    for name in ("plain", "calibrated"):
        features = json.loads((tmp_path / f"{name}.geojson").read_text())["features"]
        labels[name] = [f["properties"]["label"] for f in features]
    assert plain["exported"] == calibrated["exported"] == 3
    assert labels == {"plain": ["Yes", "Maybe", "Maybe"], "calibrated": ["Yes", "Yes", "Maybe"]}
