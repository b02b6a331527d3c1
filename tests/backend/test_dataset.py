"""`tower-detector dataset`: label-maker-format training sets from the sample scene, splits, review labels."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window

from tests.fakes.training import folder_bytes
from tower_detector.common.errors import UserError
from tower_detector.datasets.dataset import build_dataset
from tower_detector.datasets.labelmaker import validate_config
from tower_detector.datasets.labels import positive_tiles
from tower_detector.pipeline import options
from tower_detector.sources.osm import load_towers


def build(scene, out, **kwargs):
    """build_dataset on a scene, as `dataset` would run it with these arguments."""
    values = dict(zoom=18, background_ratio=2.0, split="0.6,0.2,0.2", seed=1, block_size=2)
    values.update(kwargs)
    return build_dataset(options("dataset", area=str(scene["area"]), towers=str(scene["towers"]),
                                 imagery=str(scene["imagery"]), out=str(out), **values), log=lambda *a: None)


@pytest.fixture(scope="module")
def dataset(sample_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    return out, build(sample_scene, out)


def read_index(out):
    with open(out / "index.csv") as f:
        return list(csv.DictReader(f))


def test_outputs_agree_with_each_other_and_the_imagery(dataset, sample_scene):
    out, summary = dataset
    rows = read_index(out)
    labels = np.load(out / "labels.npz")
    data = np.load(out / "data.npz")
    assert len(rows) == summary["tiles"] == len(labels.files)
    x0, y0 = sample_scene["info"]["tile_range"]["x"][0], sample_scene["info"]["tile_range"]["y"][0]
    with rasterio.open(sample_scene["imagery"]) as src:
        for name in ("train", "val", "test"):
            members = [r for r in rows if r["split"] == name]
            x, y = data[f"x_{name}"], data[f"y_{name}"]
            assert x.shape == (len(members), 256, 256, 3) and x.dtype == np.uint8 and y.shape == (len(members), 2)
            assert len(members) == summary["splits"][name]["tiles"] > 0
            for i, row in enumerate(members):
                label = int(row["label"])
                assert list(y[i]) == [1 - label, label] == list(labels[row["tile_id"]])
                assert np.array_equal(np.asarray(Image.open(out / row["path"])), x[i])
                window = Window((int(row["x"]) - x0) * 256, (int(row["y"]) - y0) * 256, 256, 256)
                assert np.array_equal(np.moveaxis(src.read(window=window), 0, -1), x[i])


def test_tower_tiles_are_labelled_positive(dataset, sample_scene):
    out, summary = dataset
    towers = load_towers(str(sample_scene["towers"]))
    expected = {f"{x}-{y}-18" for x, y in positive_tiles(towers.lon, towers.lat, 18).tolist()}
    rows = read_index(out)
    positives = {r["tile_id"] for r in rows if r["label"] == "1"}
    assert positives and positives <= expected
    assert all(r["tile_id"] not in expected for r in rows if r["label"] == "0")
    # only tiles dropped at split borders may be missing
    assert len(expected - positives) <= summary["tiles"]
    assert summary["towers_in_area"] == len(towers)


def test_tower_positions_stand_on_the_rendered_steel(dataset, sample_scene):
    """towers.csv gives every tower tile its towers in tile pixels; the scene's own rendering (its tower-steel
    mask, drawn again here) has steel at each of them, and a background tile has none listed."""
    from tower_detector.synthetic import plan_scene, render_scene

    out, _ = dataset
    rows = {r["tile_id"]: r for r in read_index(out)}
    with open(out / "towers.csv") as f:
        towers = list(csv.DictReader(f))
    assert {t["tile_id"] for t in towers} == {k for k, r in rows.items() if r["label"] == "1"}
    _, steel = render_scene(plan_scene(8, 8, seed=3))
    x0, y0 = sample_scene["info"]["tile_range"]["x"][0], sample_scene["info"]["tile_range"]["y"][0]
    for t in towers:
        row = rows[t["tile_id"]]
        u = (int(row["x"]) - x0) * 256 + float(t["px"])
        v = (int(row["y"]) - y0) * 256 + float(t["py"])
        near = steel[max(int(v) - 12, 0):int(v) + 13, max(int(u) - 12, 0):int(u) + 13]
        assert near.any(), f"no tower steel within 12 px of {t}"
        assert -6 <= float(t["px"]) <= 262 and -6 <= float(t["py"]) <= 262


def test_splits_are_spatially_separated(dataset):
    out, _ = dataset
    where = {(int(r["x"]), int(r["y"])): r["split"] for r in read_index(out)}
    for (x, y), split in where.items():
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                other = where.get((x + dx, y + dy))
                assert other in (None, split), f"tile {x}-{y} ({split}) touches a {other} tile"


def _splits_per_line(out, towers_path):
    """{line ref: the splits of the index's tiles that hold that line's towers} (the scene's own line refs)."""
    features = json.loads(open(towers_path).read())["features"]
    where = {r["tile_id"]: r["split"] for r in read_index(out)}
    found = {}
    for f in features:
        if f["properties"].get("power") == "tower":
            lon, lat = f["geometry"]["coordinates"]
            for x, y in positive_tiles(np.array([lon]), np.array([lat]), 18).tolist():
                if f"{x}-{y}-18" in where:
                    found.setdefault(f["properties"]["line"], set()).add(where[f"{x}-{y}-18"])
    return found


def test_each_line_keeps_its_towers_in_one_split(training_set, tmp_path):
    """A line's towers look alike (design, steel, ground): all its tower tiles go to one split, while the
    dataset's lines still spread over the splits."""
    scene = training_set.parent / "scene"
    per_line = _splits_per_line(training_set, scene / "towers.geojson")
    assert len(per_line) == 3 and all(len(splits) == 1 for splits in per_line.values()), per_line
    assert len(set().union(*per_line.values())) > 1
    summary = json.loads((training_set / "dataset.json").read_text())["split_by_line"]
    assert summary["line_aware"] and summary["lines"] == 3 and summary["towers_on_lines"] == 21
    # the same with the smallest blocks, where blocks alone would cut every line
    again = build({"area": scene / "area.geojson", "towers": scene / "towers.geojson",
                   "imagery": scene / "scene.tif"}, tmp_path / "ds", block_size=1)
    per_line = _splits_per_line(tmp_path / "ds", scene / "towers.geojson")
    assert all(len(splits) == 1 for splits in per_line.values()), per_line
    assert again["split_by_line"]["groups"] > 3


def _lines_through_tiles(sample_scene, folder, lines):
    """towers.geojson of power lines {ref: (column offsets, row offsets)} from the scene's first tile, with a tower
    at the centre of each tile they pass."""
    from tower_detector.geo.cover import tile_lonlat

    info = sample_scene["info"]["tile_range"]
    features = []
    for ref, (xs, ys) in lines.items():
        lon, lat = tile_lonlat(info["x"][0] + xs + 0.5, info["y"][0] + ys + 0.5, 18)
        coords = [[float(a), float(b)] for a, b in zip(lon, lat)]
        features.append({"type": "Feature", "properties": {"power": "line"},
                         "geometry": {"type": "LineString", "coordinates": coords}})
        features += [{"type": "Feature", "properties": {"power": "tower", "line": ref},
                      "geometry": {"type": "Point", "coordinates": c}} for c in coords]
    towers = folder / "towers.geojson"
    towers.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return towers


def test_lines_sharing_a_block_but_no_tile_stay_apart(sample_scene, tmp_path):
    """Two lines 4 tiles apart in one 8x8 block: joining the blocks a line touches would chain them into one
    group (and leave one of two splits without towers); they share no tile, so they stay two groups."""
    towers = _lines_through_tiles(sample_scene, tmp_path, {"A": (np.arange(8), np.full(8, 1)),
                                                           "B": (np.arange(8), np.full(8, 5))})
    summary = build(dict(sample_scene, towers=towers), tmp_path / "ds", split="0.5,0.5", block_size=8,
                    background_ratio=0.5)
    assert summary["split_by_line"]["lines"] == 2
    per_line = _splits_per_line(tmp_path / "ds", towers)
    assert all(len(v) == 1 for v in per_line.values()) and per_line["A"] != per_line["B"]
    assert all(s["tower"] > 0 for s in summary["splits"].values())


def test_crossing_lines_stay_two_groups_and_their_shared_tile_keeps_no_line_in_two_splits(sample_scene, tmp_path):
    """Two lines crossing in one tile: chaining lines through shared tiles made a meshed network one group that no
    split could share (one split without towers). They stay two groups; the tile they share goes with the first
    line, or out where the other went to another split."""
    towers = _lines_through_tiles(sample_scene, tmp_path, {"A": (np.arange(8), np.full(8, 3)),
                                                           "B": (np.full(8, 3), np.arange(8))})
    summary = build(dict(sample_scene, towers=towers), tmp_path / "ds", split="0.5,0.5", block_size=2,
                    background_ratio=0.5)
    assert summary["split_by_line"]["lines"] == 2
    per_line = _splits_per_line(tmp_path / "ds", towers)
    assert all(len(v) == 1 for v in per_line.values()), per_line
    assert all(s["tower"] > 0 for s in summary["splits"].values()), summary["splits"]
    where = {r["tile_id"]: r["split"] for r in read_index(tmp_path / "ds")}
    info = sample_scene["info"]["tile_range"]
    crossing = f"{info['x'][0] + 3}-{info['y'][0] + 3}-18"
    assert (crossing in where) == (per_line["A"] == per_line["B"])


def test_towers_without_lines_keep_their_blocks(sample_scene, tmp_path):
    """A points-only source (no lines): each tower's block is its own group, as before lines were known."""
    data = json.loads(sample_scene["towers"].read_text())
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "FeatureCollection", "features": [
        f for f in data["features"] if f["geometry"]["type"] == "Point"]}))
    with_lines = build(sample_scene, tmp_path / "lines", block_size=1)
    without = build(dict(sample_scene, towers=points), tmp_path / "points", block_size=1)
    assert without["split_by_line"]["lines"] == 0 and with_lines["split_by_line"]["lines"] == 2
    rows = read_index(tmp_path / "lines")
    # block_size 1: one group per tile without lines; the lines join their tower tiles
    assert without["split_by_line"]["groups"] > with_lines["split_by_line"]["groups"]
    assert without["tiles"] > 0 and sum(s["tower"] for s in without["splits"].values()) > 0 and rows


def test_config_is_valid_label_maker_and_build_is_deterministic(dataset, sample_scene, tmp_path):
    out, summary = dataset
    config = json.loads((out / "config.json").read_text())
    validate_config(config)
    assert config["ml_type"] == "classification" and config["zoom"] == 18
    assert config["classes"][0]["filter"] == ["==", "power", "tower"]
    again = build(sample_scene, tmp_path / "again")
    assert again["fingerprint"] == summary["fingerprint"]
    other = build(sample_scene, tmp_path / "other", seed=2)
    assert other["fingerprint"] != summary["fingerprint"]


def _review_file(path, confirmed, rejected):
    """Review decisions as `export labels` writes them: a confirmed tower and a false positive at tile centres."""
    from tower_detector.geo.tilemath import tile_bounds_4326

    def centre(x, y):
        w, s, e, n = tile_bounds_4326(x, y, 18)
        return [(w + e) / 2, (s + n) / 2]

    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"status": status},
         "geometry": {"type": "Point", "coordinates": centre(*tile)}}
        for status, tile in (("confirmed", confirmed), ("false_positive", rejected))]}))
    return path


def test_review_labels_add_positives_and_hard_negatives(sample_scene, tmp_path):
    info = sample_scene["info"]

    # a confirmed tower where OSM has none, and a rejected candidate: both at known tile centres
    towers = load_towers(str(sample_scene["towers"]))
    tower_tiles = {tuple(t) for t in positive_tiles(towers.lon, towers.lat, 18).tolist()}
    free = [(x, y) for x in range(info["tile_range"]["x"][0], info["tile_range"]["x"][1] + 1)
            for y in range(info["tile_range"]["y"][0], info["tile_range"]["y"][1] + 1) if (x, y) not in tower_tiles]
    confirmed, rejected = free[0], free[-1]

    review = _review_file(tmp_path / "review.geojson", confirmed, rejected)
    summary = build(sample_scene, tmp_path / "ds", extra_labels=str(review), block_size=1, background_ratio=0.5)
    rows = {r["tile_id"]: r for r in read_index(tmp_path / "ds")}
    assert summary["hard_negatives"] == 1
    key_confirmed, key_rejected = (f"{x}-{y}-18" for x, y in (confirmed, rejected))
    assert key_confirmed not in rows or rows[key_confirmed]["label"] == "1"
    assert key_rejected not in rows or rows[key_rejected]["label"] == "0"
    assert key_confirmed in rows or key_rejected in rows  # at most one can be lost at a split border


def test_review_labels_outside_the_area_join_the_dataset_as_their_own_tiles(sample_scene, tmp_path, monkeypatch):
    """Reviews come from a prediction elsewhere (scene B, another district): their decided tiles are labels wherever
    they lie, while OSM's towers and the background stay those of --area. dataset.json records the files as
    absolute paths, so that a retraining (the plugin's) can rebuild it from anywhere."""
    from tower_detector.geo.tilemath import tile_bounds_4326

    x0, x1 = sample_scene["info"]["tile_range"]["x"]
    y0, y1 = sample_scene["info"]["tile_range"]["y"]
    half = (x0 + x1) // 2  # the area: the scene's western tiles x0..half; the reviews: east of it
    w, _, _, n = tile_bounds_4326(x0, y0, 18)
    _, s, e, _ = tile_bounds_4326(half, y1, 18)
    area = tmp_path / "west.geojson"
    area.write_text(json.dumps({"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}))
    towers = load_towers(str(sample_scene["towers"]))
    tower_tiles = {tuple(t) for t in positive_tiles(towers.lon, towers.lat, 18).tolist()}
    east = [(x, y) for x in range(half + 2, x1 + 1) for y in range(y0, y1 + 1) if (x, y) not in tower_tiles]
    confirmed, rejected = east[0], east[-1]

    review = _review_file(tmp_path / "review.geojson", confirmed, rejected)
    monkeypatch.chdir(tmp_path)
    summary = build({**sample_scene, "area": "west.geojson"}, tmp_path / "ds", extra_labels="review.geojson",
                    split="1", block_size=1, background_ratio=0.5)
    assert summary["sources"]["area"] == str(area) and summary["sources"]["extra_labels"] == str(review)
    assert summary["sources"]["towers_spec"] == str(sample_scene["towers"])
    assert summary["sources"]["imagery_spec"] == str(sample_scene["imagery"])
    rows = {r["tile_id"]: r for r in read_index(tmp_path / "ds")}
    assert summary["hard_negatives"] == 1 and summary["review_tiles_outside_area"] == 2
    assert rows[f"{confirmed[0]}-{confirmed[1]}-18"]["label"] == "1"
    assert rows[f"{rejected[0]}-{rejected[1]}-18"]["label"] == "0"
    # everything else is the area's: OSM's towers and background east of it stay out
    others = [r for key, r in rows.items() if key not in {f"{x}-{y}-18" for x, y in (confirmed, rejected)}]
    assert others and all(int(r["x"]) <= half for r in others)


def _tiles_on_lines(rows, towers_path):
    """The rows' tiles that a power=line crosses."""
    import shapely

    from tower_detector.geo.tilemath import tile_bounds_4326
    from tower_detector.sources.osm import load_lines

    lines = load_lines(str(towers_path), tag_filter="power=line")
    return {r["tile_id"] for r in rows
            if shapely.intersects(shapely.box(*tile_bounds_4326(int(r["x"]), int(r["y"]), 18)), lines.geometries).any()}


def test_span_negatives_come_from_lines_between_mapped_towers(sample_scene, tmp_path):
    from tower_detector.datasets.dataset import span_tiles
    from tower_detector.sources.osm import load_lines

    towers = load_towers(str(sample_scene["towers"]), tag_filter="power=tower")
    lines = load_lines(str(sample_scene["towers"]), tag_filter="power=line")
    every = {f"{x}-{y}-18" for x, y in span_tiles(lines, towers, 18).tolist()}
    assert every and not every & {f"{x}-{y}-18" for x, y in positive_tiles(towers.lon, towers.lat, 18).tolist()}

    one_split = "1"  # no tiles dropped at split borders, so every tile chosen is in the index
    plain = build(sample_scene, tmp_path / "plain", split=one_split, background_ratio=1.0)
    spans = build(sample_scene, tmp_path / "spans", split=one_split, background_ratio=1.0, span_negatives=1.0)
    assert plain["span_negative_tiles"] == 0 and spans["span_negative_tiles"] == min(len(every), plain["tiles"] // 2)
    rows = {r["tile_id"]: r for r in read_index(tmp_path / "spans")}
    chosen = every & set(rows)
    assert len(chosen) == spans["span_negative_tiles"] and all(rows[t]["label"] == "0" for t in chosen)
    assert chosen <= _tiles_on_lines(rows.values(), sample_scene["towers"])  # each one crossed by a line
    assert spans["tiles"] == plain["tiles"] + len(chosen)  # beside the background, not instead of it

    # a line vertex that is not a mapped tower ends the spans on either side: they may hide that tower
    without = [{f"{x}-{y}-18" for x, y in span_tiles(lines, towers.subset(np.arange(len(towers)) != k), 18).tolist()}
               for k in range(len(towers))]
    assert all(w <= every for w in without) and any(w < every for w in without)
    with pytest.raises(UserError, match="--span-negatives must be 0 to 100"):
        build(sample_scene, tmp_path / "bad", span_negatives=-1)


def test_no_towers_needs_force(sample_scene, tmp_path):
    empty = tmp_path / "none.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"power": "tower"}, "geometry": {"type": "Point", "coordinates": [0, 0]}}]}))
    scene = dict(sample_scene, towers=empty)
    with pytest.raises(UserError, match="no towers .* --force"):
        build(scene, tmp_path / "a")
    summary = build(scene, tmp_path / "b", force=True)
    assert summary["tiles"] > 0 and all(s["tower"] == 0 for s in summary["splits"].values())


def test_a_split_without_a_tower_tile_is_said_in_plain_words(sample_scene, tmp_path):
    """Issue 33: a dataset whose test split had no tower tile reported success, and training then failed."""
    data = json.loads(open(sample_scene["towers"]).read())
    towers = [f for f in data["features"] if f["properties"].get("power") == "tower"]
    one = tmp_path / "one.geojson"
    one.write_text(json.dumps({"type": "FeatureCollection", "features": towers[:1]}))
    lines = []
    summary = build_dataset(options("dataset", area=str(sample_scene["area"]), towers=str(one),
                                    imagery=str(sample_scene["imagery"]), out=str(tmp_path / "ds"), zoom=18,
                                    background_ratio=2.0, split="0.6,0.2,0.2", seed=1, block_size=2),
                            log=lines.append)
    empty = [name for name, s in summary["splits"].items() if name != "train" and s["tower"] == 0]
    assert empty  # one tower tile: at most one split has it
    assert len(summary["warnings"]) == len(empty)
    for name, text in zip(empty, summary["warnings"]):
        assert f"the {name} split has no tower tile" in text and "more towers" in text and "--" not in text
        assert text in lines


def test_a_dataset_with_towers_in_every_split_has_no_warning(training_set):
    built = json.loads((training_set / "dataset.json").read_text())
    assert all(s["tower"] for s in built["splits"].values()) and built["warnings"] == []


def test_too_few_blocks_for_the_splits(sample_scene, tmp_path):
    with pytest.raises(UserError, match="too few tiles for the splits"):
        build(sample_scene, tmp_path / "ds", block_size=64)


def test_unwritable_output_is_refused_before_any_work(sample_scene, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the dataset"):
        build(sample_scene, blocker / "ds")


def test_label_maker_config_runs_and_bad_config_is_one_line(sample_scene, tmp_path):
    from tower_detector.geo.areas import load_area

    bbox = list(load_area(str(sample_scene["area"])).geometry.bounds)
    config = {"geojson": str(sample_scene["towers"]), "bounding_box": bbox, "zoom": 18,
              "classes": [{"name": "tower", "filter": ["==", "power", "tower"]}],
              "imagery": str(sample_scene["imagery"]),
              "background_ratio": 1.0, "ml_type": "classification", "seed": 4, "split_vals": [0.5, 0.5],
              "split_names": ["train", "test"]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    cli = [sys.executable, "-m", "tower_detector", "dataset", "--config", str(path), "--block-size", "2", "--events"]
    proc = subprocess.run([*cli, "--out", str(tmp_path / "ds")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert any(e["event"] == "progress" for e in events) and events[-1]["event"] == "result"
    assert set(np.load(tmp_path / "ds" / "data.npz").files) == {"x_train", "y_train", "x_test", "y_test"}

    path.write_text(json.dumps(dict(config, zoom="eighteen")))
    proc = subprocess.run([*cli, "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    error = json.loads(proc.stdout.splitlines()[-1])
    assert error["event"] == "error" and "zoom" in error["message"] and "\n" not in error["message"]


# -- end to end through the CLI, against loopback servers -----------------------------------------
SECRET = "sk.DATASET-SECRET-7c1e"


def run_cli(*args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "tower_detector", "dataset", *map(str, args), "--events"],
                          capture_output=True, text=True, timeout=timeout)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc, events


def test_xyz_and_overpass_with_failing_tiles_are_skipped_counted_and_redacted(sample_scene, tmp_path):
    from tests.fakes.overpass_server import OverpassServer, elements_from_geojson
    from tests.fakes.tileserver import TileServer

    towers = load_towers(str(sample_scene["towers"]))
    positive = {tuple(t) for t in positive_tiles(towers.lon, towers.lat, 18).tolist()}
    with TileServer(sample_scene["imagery"], token=SECRET) as tiles, \
            OverpassServer(elements_from_geojson(sample_scene["towers"], ways=True)) as overpass:
        background = [t for t in tiles.tiles if t not in positive]
        tiles.status = {background[0]: 404, positive and sorted(positive)[0]: 404}
        tiles.corrupt = set(background[1:3])
        out = tmp_path / "ds"
        proc, events = run_cli("--area", sample_scene["area"], "--towers", f"overpass:{overpass.url}",
                               "--imagery", tiles.template("png", token=SECRET), "--out", out,
                               "--block-size", 2, "--background-ratio", 10, "--split", "0.6,0.2,0.2")
    assert proc.returncode == 0, proc.stderr
    result = events[-1]
    summary = json.loads((out / "dataset.json").read_text())
    failed = {s["tile"]: s["reason"] for s in summary["skipped_tiles"]}
    requested = set(failed) | {r["tile_id"] for r in read_index(out)}
    bad = {f"{x}-{y}-18" for x, y in [background[0], sorted(positive)[0], *background[1:3]]} & requested
    assert bad and set(failed) == bad and result["skipped"] == summary["skipped"] == len(bad)
    assert {r.split(":")[0] for r in failed.values()} <= {"HTTP 404", "truncated/corrupt image"}
    assert summary["towers_in_area"] == len(towers)
    assert summary["split_by_line"]["lines"] == 2  # the lines came from Overpass too
    assert "skipped" in result["message"]
    for text in (proc.stdout, proc.stderr, *(p.read_text() for p in out.glob("*.json"))):
        assert SECRET not in text
    assert "access_token=***" in json.loads((out / "config.json").read_text())["imagery"]


def test_imagery_refusing_everything_fails_fast_in_one_redacted_line(sample_scene, tmp_path):
    from tests.fakes.tileserver import TileServer

    with TileServer(sample_scene["imagery"], token="the-right-one") as tiles:
        proc, events = run_cli("--area", sample_scene["area"], "--towers", sample_scene["towers"],
                               "--imagery", tiles.template("png", token=SECRET), "--out", tmp_path / "ds",
                               "--block-size", 2)
        assert len(tiles.paths) < 60  # stopped early, not one request per tile
    assert proc.returncode == 2
    error = events[-1]
    assert error["event"] == "error" and "HTTP 403" in error["message"] and "\n" not in error["message"]
    assert SECRET not in proc.stdout + proc.stderr and "access_token=***" in error["message"]
    assert not (tmp_path / "ds" / "data.npz").exists()


def test_a_zoom_the_imagery_does_not_have(sample_scene, tmp_path):
    proc, events = run_cli("--area", sample_scene["area"], "--towers", sample_scene["towers"],
                           "--imagery", sample_scene["imagery"], "--out", tmp_path / "ds", "--zoom", 21,
                           "--block-size", 2)
    assert proc.returncode == 2 and events[-1]["event"] == "error"
    assert "zoom 21" in events[-1]["message"] and "\n" not in events[-1]["message"]
    assert not (tmp_path / "ds").exists()  # nothing left as if it were a dataset


def test_a_rebuild_whose_imagery_fails_leaves_the_old_dataset_whole(sample_scene, tmp_path):
    """Every tile failing: exit non-zero, the dataset already there is byte-identical, a fresh --out stays absent,
    and no temporary folder is left beside them."""
    from tests.fakes.tileserver import TileServer

    out = tmp_path / "ds"
    build(sample_scene, out)
    before = folder_bytes(out)
    with TileServer(sample_scene["imagery"]) as tiles:
        tiles.corrupt = set(tiles.tiles)  # every tile answers half an image: no retry, no fail-fast
        for target in (out, tmp_path / "fresh"):
            proc, events = run_cli("--area", sample_scene["area"], "--towers", sample_scene["towers"],
                                   "--imagery", tiles.template("png"), "--out", target, "--block-size", 2)
            assert proc.returncode != 0 and events[-1]["event"] == "error"
            assert "no imagery could be read" in events[-1]["message"]
    assert folder_bytes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_a_rebuild_replaces_the_dataset_whole_and_never_a_folder_of_other_files(sample_scene, tmp_path):
    out = tmp_path / "ds"
    build(sample_scene, out)
    (out / "tiles" / "stale.png").write_bytes(b"a tile of an older build")
    summary = build(sample_scene, out, seed=2)
    assert json.loads((out / "dataset.json").read_text())["fingerprint"] == summary["fingerprint"]
    assert not (out / "tiles" / "stale.png").exists()  # the new build whole, nothing of the old one
    assert {p.name for p in out.iterdir()} == {"config.json", "data.npz", "dataset.json", "index.csv", "labels.npz",
                                              "tiles", "towers.csv"}
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]

    other = tmp_path / "documents"
    other.mkdir()
    (other / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match="is not a dataset"):
        build(sample_scene, other)
    assert folder_bytes(other) == {"notes.txt": b"the user's"}
    with pytest.raises(UserError, match="--cache .* inside --out"):
        build(sample_scene, out, cache=str(out / "cache"))


def test_full_disk_is_one_line_and_leaves_no_partial_arrays(sample_scene, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    try:
        with pytest.raises(UserError, match="disk is full") as caught:
            build(sample_scene, disk / "ds")
        assert "\n" not in str(caught.value)
        assert list(disk.iterdir()) == []  # no partial arrays, no empty dataset, no temporary folder
    finally:
        subprocess.run(["umount", str(disk)], check=True)
