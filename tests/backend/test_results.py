"""Merged outputs of a results store, read back with the real readers: the heatmap with rasterio, the candidates
GeoPackage with sqlite3, shapely and GDAL (its own validator included), the JSON and GeoJSON with json."""

import json
import math
import os
import shutil
import sqlite3
import struct
from collections import Counter

import numpy as np
import pytest
import rasterio
import shapely
from shapely import wkb

from tests.fakes.storedata import JOB, REASONS, TRIANGLE, expected, fill, payload
from tower_detector.common.errors import UserError
from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import tile_cover
from tower_detector.geo.tilemath import ORIGIN_SHIFT, tile_bounds_3857, tile_bounds_4326
from tower_detector.prediction.store import open_store
from tower_detector.results import merge_results

MISSING = (1, 1)  # the chunk the job has not written yet


def make_store(path, area, shards, chunk_size, skip=()):
    cover = tile_cover(load_area(area), 18)
    store = open_store(path, create=True)
    store.create_job(JOB, cover, cover.shard_ranges(shards), chunk_size)
    fill(store, skip)
    done = [c for c in store.plan.all_chunks() if c not in skip]
    return store, expected(store.plan, done)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    store, exp = make_store(root / "store", json.dumps(TRIANGLE), 3, 50, skip={MISSING})
    return {"root": root, "store": str(root / "store"), "plan": store.plan, "exp": exp}


@pytest.fixture(scope="module")
def merged(job):
    root, events = job["root"], []
    out = {"heatmap": root / "heat.tif", "candidates": root / "cand.gpkg", "json_path": root / "original.json",
           "geojson_path": root / "overlay.geojson"}
    summary = merge_results(job["store"], threshold=0.5, progress=lambda d, t, **f: events.append((d, t, f)),
                            log=lambda m, **f: events.append(m), **out)
    return {**job, **out, "summary": summary, "events": events}


def candidates_of(exp, threshold):
    """Expected candidates: indices into exp, score descending, then x, then y."""
    ok = np.flatnonzero(exp["score"] >= threshold)  # NaN compares False
    return ok[np.lexsort((exp["y"][ok], exp["x"][ok], -exp["score"][ok]))]


def lonlat(fx, fy, z=18):
    """Scalar tile-space -> lon/lat, written out independently of the code under test."""
    n = 2**z
    return fx / n * 360 - 180, math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * fy / n))))


# -- summary ---------------------------------------------------------------------------------------
def test_summary_counts_everything(merged):
    s, exp, plan = merged["summary"], merged["exp"], merged["plan"]
    valid = exp["score"][~np.isnan(exp["score"])]
    assert s["tiles"] == plan.cover.count and s["zoom"] == 18
    assert (s["chunks_total"], s["chunks_done"], s["chunks_missing"]) == (plan.total_chunks, plan.total_chunks - 1, 1)
    assert s["complete"] is False and s["tiles_missing"] == plan.chunk_len(*MISSING)
    assert s["tiles_done"] == len(exp["x"]) == plan.cover.count - plan.chunk_len(*MISSING)
    assert s["scored"] == len(valid) and s["failed"] == exp["failed"].sum() > 0
    assert s["failures"] == Counter(r for r in exp["reason"] if r is not None) and set(s["failures"]) == set(REASONS)
    assert s["unscored"] == len(exp["x"]) - len(valid) - exp["failed"].sum() > 0
    assert s["candidates"] == (valid >= 0.5).sum() > 0 and s["candidates_yes"] == (valid >= 0.97).sum() > 0
    assert s["histogram"]["counts"] == np.histogram(valid, bins=10, range=(0, 1))[0].tolist()
    assert s["histogram"]["edges"] == [round(0.1 * i, 1) for i in range(11)]
    assert s["score_min"] == valid.min() and s["score_max"] == valid.max()
    assert s["score_mean"] == pytest.approx(valid.astype(np.float64).mean(), rel=1e-9)
    assert s["outputs"]["heatmap"] == str(merged["heatmap"])
    assert any("not finished: 1 of" in e for e in merged["events"] if isinstance(e, str))
    progress = [e for e in merged["events"] if isinstance(e, tuple)]
    assert progress[-1][0] == progress[-1][1] == plan.total_chunks - 1
    json.dumps(s)  # plain JSON for the CLI's result event


def test_the_summary_of_a_heatmap_alone_counts_the_same_candidates(merged, tmp_path):
    # without a candidates file or overlay, candidates are counted, not kept (memory: results_memory.md)
    s = merge_results(merged["store"], heatmap=tmp_path / "h.tif", threshold=0.5)
    assert {k: s[k] for k in ("candidates", "candidates_yes", "scored", "histogram")} == {
        k: merged["summary"][k] for k in ("candidates", "candidates_yes", "scored", "histogram")}


def test_a_complete_job(tmp_path):
    store, exp = make_store(tmp_path / "store", "28.0,-15.0,28.01,-14.99", 2, 20)
    s = merge_results(store.spec, json_path=tmp_path / "s.json")
    assert s["complete"] is True and s["chunks_missing"] == 0 and s["tiles_missing"] == 0
    assert s["tiles_done"] == s["tiles"] == store.cover.count


# -- heatmap ---------------------------------------------------------------------------------------
def heatmap_expected(exp, x0, y0, width, height, n=2**18):
    want = np.full((height, width), -1.0, dtype=np.float32)
    ok = ~np.isnan(exp["score"])
    want[exp["y"][ok] - y0, (exp["x"][ok] - x0) % n] = exp["score"][ok]
    return want


def overview_expected(full):
    """2x2 averages that leave nodata out (nodata where a block has no data), for the complete blocks."""
    h, w = full.shape[0] // 2 * 2, full.shape[1] // 2 * 2
    blocks = full[:h, :w].reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(h // 2, w // 2, 4)
    valid = blocks != -1
    total = np.where(valid, blocks, 0).sum(axis=2)
    count = valid.sum(axis=2)
    return np.where(count > 0, total / np.maximum(count, 1), -1)


def test_heatmap_pixels_are_the_chunk_scores_on_the_tile_grid(merged):
    exp, cover = merged["exp"], merged["plan"].cover
    xmin, ymin, xmax, ymax = cover.bounds()
    with rasterio.open(merged["heatmap"]) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.count == 1 and ds.dtypes[0] == "float32" and ds.nodata == -1
        assert (ds.width, ds.height) == (xmax - xmin + 1, ymax - ymin + 1)
        minx, miny, maxx, maxy = tile_bounds_3857(xmin, ymin, 18)
        t = ds.transform
        assert (t.c, t.f, t.b, t.d) == (pytest.approx(minx, abs=1e-6), pytest.approx(maxy, abs=1e-6), 0, 0)
        assert t.a == pytest.approx(maxx - minx, rel=1e-12) and t.e == pytest.approx(miny - maxy, rel=1e-12)
        last = tile_bounds_3857(xmax, ymax, 18)
        assert (ds.bounds.right, ds.bounds.bottom) == pytest.approx((last[2], last[1]), abs=1e-6)
        assert ds.block_shapes == [(512, 512)] and ds.compression.name == "deflate"
        assert ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        assert {k: ds.tags()[k] for k in ("zoom", "tile_x0", "tile_y0")} == {"zoom": "18", "tile_x0": str(xmin),
                                                                              "tile_y0": str(ymin)}
        full = ds.read(1)
        assert ds.overviews(1) == [2]
    want = heatmap_expected(exp, xmin, ymin, xmax - xmin + 1, ymax - ymin + 1)
    assert np.array_equal(full, want)  # scores where scored; -1 where failed, unscored, missing or outside
    missing_x, missing_y = merged["plan"].chunk_tiles(*MISSING)
    assert (full[missing_y - ymin, missing_x - xmin] == -1).all()
    with rasterio.open(merged["heatmap"], overview_level=0) as ov:
        half = ov.read(1)
    # scores are >= 0, so an average that took nodata (-1) in would mostly come out in (-1, 0)
    assert ((half == -1) | (half >= 0)).all() and (half == -1).any() and (half >= 0).any()


def test_heatmap_overviews_average_without_nodata(tmp_path):
    # a tile-aligned 16 x 16 area: 2 x 2 blocks fall exactly on overview pixels
    w, _, _, n = tile_bounds_4326(151460, 142091, 18)
    _, s, e, _ = tile_bounds_4326(151475, 142106, 18)
    store, exp = make_store(tmp_path / "store", f"{w},{s},{e},{n}", 2, 30, skip={(0, 2)})
    merge_results(store.spec, heatmap=tmp_path / "h.tif")
    with rasterio.open(tmp_path / "h.tif") as ds:
        assert (ds.width, ds.height) == (16, 16) and ds.overviews(1) == [2]
        full = ds.read(1)
    with rasterio.open(tmp_path / "h.tif", overview_level=0) as ov:
        half = ov.read(1)
    want = overview_expected(full)
    mixed = (full.reshape(8, 2, 8, 2) == -1).any(axis=(1, 3)) & (want != -1)
    assert mixed.sum() >= 5 and (want == -1).any()  # blocks with some nodata, and blocks with nothing
    assert np.allclose(half, want, atol=1e-6)


def test_gdal_block_cache_is_bounded_while_the_heatmap_is_written(tmp_path):
    # GDAL's default cache is 5 % of the RAM, and building overviews fills it (about 1 GB for a country)
    from rasterio.env import get_gdal_config

    from tower_detector.results.heatmap import CACHE_BYTES

    default, seen = get_gdal_config("GDAL_CACHEMAX"), []
    store, _ = make_store(tmp_path / "store", "28.0,-15.0,28.01,-14.99", 2, 20)
    merge_results(store.spec, heatmap=tmp_path / "h.tif",
                  progress=lambda d, t, stage, **f: seen.append((stage, get_gdal_config("GDAL_CACHEMAX"))))
    assert ("overviews", CACHE_BYTES) in seen and CACHE_BYTES < default
    assert get_gdal_config("GDAL_CACHEMAX") == default  # given back: the rest of the process is as it was


def test_a_wide_heatmap_is_written_strip_by_strip(tmp_path):
    # 1,166 columns x 4 rows: three 512-column strips, chunks straddling strip edges, two chunks missing
    store, exp = make_store(tmp_path / "store", "0.0,10.0,1.6,10.002", 3, 97, skip={(0, 3), (2, 5)})
    s = merge_results(store.spec, heatmap=tmp_path / "wide.tif")
    xmin, ymin, xmax, ymax = store.cover.bounds()
    assert xmax - xmin + 1 > 1024 and s["chunks_missing"] == 2
    with rasterio.open(tmp_path / "wide.tif") as ds:
        assert np.array_equal(ds.read(1), heatmap_expected(exp, xmin, ymin, xmax - xmin + 1, ymax - ymin + 1))
        assert ds.overviews(1) == [2, 4, 8]  # down to the last level with >= 128 px


def test_a_heatmap_across_the_antimeridian_stays_narrow(tmp_path):
    n = 2**18
    store, exp = make_store(tmp_path / "store", "179.996,-16.003,-179.996,-16.0", 2, 7)  # W > E: split there
    cols = np.unique(store.cover.x)
    assert cols.min() == 0 and cols.max() == n - 1
    s = merge_results(store.spec, heatmap=tmp_path / "am.tif", geojson_path=tmp_path / "am.geojson", threshold=0)
    x0 = int(cols[cols > n // 2].min())
    width = int(cols[cols < n // 2].max()) + n - x0 + 1
    assert (s["heatmap_grid"]["x0"], s["heatmap_grid"]["width"]) == (x0, width) and width < 20
    with rasterio.open(tmp_path / "am.tif") as ds:
        assert ds.width == width
        assert ds.transform.c == pytest.approx(tile_bounds_3857(x0, 0, 18)[0], abs=1e-6)
        assert ds.bounds.right > ORIGIN_SHIFT  # continues east past 180 degrees
        assert np.array_equal(ds.read(1), heatmap_expected(exp, x0, s["heatmap_grid"]["y0"], width, ds.height))
    lons = [p[0] for f in json.loads((tmp_path / "am.geojson").read_text())["features"]
            for p in f["geometry"]["coordinates"][0]]
    assert min(lons) >= -180 and max(lons) <= 180 and min(lons) < -179.99 and max(lons) > 179.99


# -- GeoPackage ------------------------------------------------------------------------------------
def parse_gpkg_geometry(blob):
    """(srs_id, envelope or None, shapely geometry) from GeoPackage binary."""
    assert blob[:2] == b"GP" and blob[2] == 0
    flags = blob[3]
    assert flags & 1  # little-endian header
    srs_id = struct.unpack("<i", blob[4:8])[0]
    env_len = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(flags >> 1) & 7]
    env = struct.unpack("<4d", blob[8:40]) if env_len == 32 else None
    return srs_id, env, wkb.loads(bytes(blob[8 + env_len:]))


def test_candidates_geopackage_rows_geometries_and_order(merged):
    exp, order = merged["exp"], candidates_of(merged["exp"], 0.5)
    with sqlite3.connect(merged["candidates"]) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
        contents = dict(db.execute("SELECT table_name, data_type FROM gpkg_contents"))
        assert contents == {"candidates": "features", "candidate_points": "features", "job": "attributes"}
        rows = db.execute("SELECT fid, geom, tile_id, x, y, z, score, rank, point_lon, point_lat, point_source, "
                          "status, note, reviewer, reviewed_at FROM candidates ORDER BY fid").fetchall()
        points = db.execute("SELECT fid, geom, tile_id, score, point_source FROM candidate_points "
                            "ORDER BY fid").fetchall()
        rtree = db.execute("SELECT id, minx, maxx, miny, maxy FROM rtree_candidates_geom ORDER BY id").fetchall()
        info = dict(db.execute("SELECT key, value FROM job"))
    assert len(rows) == len(order) == merged["summary"]["candidates"] and len(points) == len(rtree) == len(rows)
    assert [r[0] for r in rows] == [r[7] for r in rows] == list(range(1, len(rows) + 1))
    for row, point, entry, i in zip(rows, points, rtree, order):
        fid, geom, tile, x, y, z, score, rank, plon, plat, source, status, note, reviewer, reviewed_at = row
        assert (tile, x, y, z) == (f"{exp['x'][i]}-{exp['y'][i]}-18", exp["x"][i], exp["y"][i], 18)
        assert np.float32(score) == exp["score"][i] >= 0.5 and len(repr(score)) <= 10  # 0.9, not 0.89999997...
        assert (status, note, reviewer, reviewed_at) == ("unreviewed", None, None, None)
        w, s, e, n = tile_bounds_4326(x, y, 18)
        srs, env, poly = parse_gpkg_geometry(geom)
        assert srs == 4326 and env == pytest.approx((w, e, s, n), abs=1e-12)
        assert poly.geom_type == "Polygon" and poly.bounds == pytest.approx((w, s, e, n), abs=1e-12)
        assert poly.exterior.is_ccw and len(poly.exterior.coords) == 5
        assert entry[0] == fid and entry[1:] == pytest.approx((w, e, s, n), abs=1e-5)  # R-tree: float32 bounds
        cx, cy = exp["cam_x"][i], exp["cam_y"][i]
        if np.isnan(cx):
            want, want_source = lonlat(x + 0.5, y + 0.5), "tile_centre"
        else:
            want, want_source = lonlat(x + cx / 256, y + cy / 256), "cam"
        assert (plon, plat) == pytest.approx(want, abs=1e-12) and source == want_source
        assert poly.covers(shapely.Point(plon, plat))
        psrs, penv, pt = parse_gpkg_geometry(point[1])
        assert psrs == 4326 and penv is None and (pt.x, pt.y) == (plon, plat)
        assert point[0] == fid and point[2:] == (tile, score, source)
    scores = [r[6] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r[10] for r in rows} == {"cam", "tile_centre"}
    assert float(info["threshold"]) == 0.5 and float(info["yes_threshold"]) == 0.97
    assert json.loads(info["identity"]) == JOB["identity"] and info["store"] == merged["store"]
    assert json.loads(info["counts"])["candidates"] == len(rows)


def test_gdal_reads_and_validates_the_geopackage(merged, tmp_path):
    ogr = pytest.importorskip("osgeo.ogr")
    validate = pytest.importorskip("osgeo_utils.samples.validate_gpkg")
    ogr.UseExceptions()
    validate.check(str(merged["candidates"]), abort_at_first_error=True, extra_checks=True, warning_as_error=True)
    ds = ogr.Open(str(merged["candidates"]))
    names = sorted(ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount()))
    assert names == ["candidate_points", "candidates", "job"]
    layer = ds.GetLayerByName("candidates")
    assert layer.GetFeatureCount() == merged["summary"]["candidates"]
    assert layer.GetGeomType() == ogr.wkbPolygon and layer.GetSpatialRef().GetAuthorityCode(None) == "4326"
    defn = layer.GetLayerDefn()
    fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    assert fields == ["tile_id", "x", "y", "z", "score", "rank", "point_lon", "point_lat", "point_source", "status",
                      "note", "reviewer", "reviewed_at", "in_results", "score_raw", "line_support"]
    assert defn.GetFieldDefn(fields.index("status")).GetDefault() == "'unreviewed'"
    # the spatial index answers a window query with exactly the tiles that overlap it
    exp, order = merged["exp"], candidates_of(merged["exp"], 0.5)
    w, s, e, n = tile_bounds_4326(int(exp["x"][order[0]]), int(exp["y"][order[0]]), 18)
    layer.SetSpatialFilterRect(w + 1e-7, s + 1e-7, e - 1e-7, n - 1e-7)
    assert [f.GetFID() for f in layer] == [1]
    layer.SetSpatialFilter(None)
    assert ds.GetLayerByName("candidate_points").GetGeomType() == ogr.wkbPoint
    ds = None

    # review decisions: plain sqlite3 can update a row (no GDAL functions needed), and GDAL sees it
    copy = tmp_path / "review.gpkg"
    shutil.copy(merged["candidates"], copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE candidates SET status = 'confirmed', reviewer = 'ana' WHERE fid = 2")
    ds = ogr.Open(str(copy), 1)
    feature = ds.GetLayerByName("candidates").GetFeature(2)
    assert (feature.GetField("status"), feature.GetField("reviewer")) == ("confirmed", "ana")
    feature.SetField("status", "false_positive")  # and GDAL's own edits keep working with our triggers
    ds.GetLayerByName("candidates").SetFeature(feature)
    ds = None
    validate.check(str(copy), abort_at_first_error=True, extra_checks=True, warning_as_error=True)


# -- JSON and GeoJSON ------------------------------------------------------------------------------
def test_seed_json_holds_every_scored_tile(merged):
    exp = merged["exp"]
    seed = json.loads(merged["json_path"].read_text())
    ok = ~np.isnan(exp["score"])
    want = {f"{x}-{y}-18": float(s) for x, y, s in zip(exp["x"][ok], exp["y"][ok], exp["score"][ok])}
    assert seed.keys() == want.keys() and len(seed) == merged["summary"]["scored"]
    assert all(abs(seed[k] - v) <= 1e-6 * max(v, 1e-3) for k, v in want.items())


def test_geojson_overlay_bands_and_style(merged, tmp_path):
    exp, order = merged["exp"], candidates_of(merged["exp"], 0.5)
    data = json.loads(merged["geojson_path"].read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == len(order)
    labels = Counter()
    for feature, i in zip(data["features"], order):
        p = feature["properties"]
        score = float(exp["score"][i])
        assert (p["x"], p["y"], p["z"]) == (exp["x"][i], exp["y"][i], 18) and p["prob"] == round(score, 3)
        assert p["label"] == ("Yes" if score >= 0.97 else "Maybe")
        assert p["fill"] == {"Yes": "#d7191c", "Maybe": "#fdae61"}[p["label"]]
        assert {"stroke", "fill-opacity", "stroke-width"} <= p.keys()
        w, s, e, n = tile_bounds_4326(p["x"], p["y"], 18)
        ring = feature["geometry"]["coordinates"][0]
        assert np.allclose(ring, [[w, s], [e, s], [e, n], [w, n], [w, s]], rtol=0, atol=1e-8)
        labels[p["label"]] += 1
    assert labels["Yes"] == merged["summary"]["candidates_yes"] > 0 and labels["Maybe"] > 0

    s = merge_results(merged["store"], geojson_path=tmp_path / "o.geojson", candidates=tmp_path / "c.gpkg",
                      threshold=0.9, yes_threshold=0.95)
    props = [f["properties"] for f in json.loads((tmp_path / "o.geojson").read_text())["features"]]
    valid = exp["score"][~np.isnan(exp["score"])]
    assert len(props) == s["candidates"] == (valid >= 0.9).sum()
    assert sum(p["label"] == "Yes" for p in props) == s["candidates_yes"] == (valid >= 0.95).sum()
    with sqlite3.connect(tmp_path / "c.gpkg") as db:
        assert db.execute("SELECT count(*), min(score) FROM candidates").fetchone() == (len(props), 0.9)
    s = merge_results(merged["store"], candidates=tmp_path / "c.gpkg", threshold=1.0)  # merged: unreviewed ones go
    with sqlite3.connect(tmp_path / "c.gpkg") as db:
        assert db.execute("SELECT count(*), min(score) FROM candidates").fetchone() == ((valid == 1).sum(), 1.0)


# -- S3 --------------------------------------------------------------------------------------------
def test_merge_from_s3_equals_the_local_merge(s3, merged, tmp_path):
    s3.create_bucket(Bucket="results-test")
    root = merged["store"]
    for folder, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
            with open(os.path.join(folder, f), "rb") as data:
                s3.put_object(Bucket="results-test", Key=f"runs/tri/{rel}", Body=data.read())
    s = merge_results("s3://results-test/runs/tri", json_path=tmp_path / "original.json", threshold=0.5)
    def same(summary):
        return {k: v for k, v in summary.items() if k not in ("store", "outputs", "merge")}

    assert same(s) == same(merged["summary"])
    assert (tmp_path / "original.json").read_bytes() == merged["json_path"].read_bytes()


# -- bad input -------------------------------------------------------------------------------------
def test_bad_inputs_are_one_line_and_write_nothing(merged, tmp_path):
    (tmp_path / "a-dir.tif").mkdir()
    (tmp_path / "empty-store").mkdir()
    store = merged["store"]
    cases = [
        (dict(store_spec=tmp_path / "empty-store"), "no prediction job in"),
        (dict(store_spec=tmp_path / "absent"), "no prediction job in"),
        (dict(threshold=-0.1), r"--threshold must be in 0..1, not -0.1"),
        (dict(threshold=1.5), r"--threshold must be in 0..1"),
        (dict(threshold=float("nan")), r"--threshold must be in 0..1, not nan"),
        (dict(threshold="high"), r"--threshold must be a number in 0..1, not 'high'"),
        (dict(yes_threshold=2), r"the Yes threshold must be in 0..1"),
        (dict(heatmap=tmp_path / "no-such-dir" / "h.tif"), "cannot write the heatmap output .*no such directory"),
        (dict(heatmap=tmp_path / "a-dir.tif"), "the heatmap output .* is a directory"),
        (dict(heatmap=tmp_path / "h.png"), r"the heatmap output .*h.png must end with .tif or .tiff"),
        (dict(candidates=tmp_path / "c.shp"), r"must end with .gpkg"),
        (dict(json_path=tmp_path / "x.json", geojson_path=tmp_path / "x.json"), "are the same file"),
    ]
    before = sorted(os.listdir(tmp_path))
    for kwargs, match in cases:
        kwargs = {"store_spec": store, "heatmap": tmp_path / "h.tif", **kwargs}
        with pytest.raises(UserError, match=match) as caught:
            merge_results(**kwargs)
        assert "\n" not in str(caught.value)
        assert sorted(os.listdir(tmp_path)) == before  # no output, no temp file


def test_budget_takes_the_top_n_scores_and_leaves_a_tie_at_the_cut_out_whole(job, tmp_path):
    """The store's scores come in steps of 0.01, so many tie: --budget N takes every score above the cut whole
    and no score tied at it, which is at most N and exactly N where no tie straddles it."""
    valid = job["exp"]["score"][~np.isnan(job["exp"]["score"])]
    levels, counts = np.unique(valid, return_counts=True)
    above = np.cumsum(counts[::-1])  # candidates at or above each level, from the top level down
    assert above[0] > 1  # the top score ties: a budget of 1 takes none
    for n in (1, int(above[3]), int(above[3]) + 1, int(above[10]) - 1, len(valid), len(valid) + 50):
        want = int(above[above <= n].max()) if (above <= n).any() else 0
        out = tmp_path / f"c{n}.gpkg"
        s = merge_results(job["store"], candidates=out, budget=n)
        with sqlite3.connect(out) as db:
            scores = [r[0] for r in db.execute("SELECT score FROM candidates")]
        assert s["budget"] == n and s["candidates"] == len(scores) == want <= n
        assert sorted(scores, reverse=True) == pytest.approx(sorted(valid)[::-1][:want], abs=1e-6)  # the top ones
        assert not scores or min(scores) == pytest.approx(s["threshold"])
    assert merge_results(job["store"], candidates=tmp_path / "x.gpkg", budget=int(above[3]))["candidates"] == \
        int(above[3])  # no tie straddles a level boundary: exactly N
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UserError, match="--budget must be a whole number"):
            merge_results(job["store"], candidates=tmp_path / "bad.gpkg", budget=bad)


def test_budget_and_threshold_exclude_each_other_before_any_work(tmp_path):
    import subprocess
    import sys

    absent = tmp_path / "no-store"
    for args, match in ((["--budget", "5", "--threshold", "0.3"], "not allowed with argument"),
                        (["--budget", "0"], "--budget: must be at least 1"),
                        (["--budget", "many"], "--budget: must be a whole number")):
        proc = subprocess.run([sys.executable, "-m", "tower_detector", "results", str(absent), "--candidates",
                               str(tmp_path / "c.gpkg"), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and match in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "c.gpkg").exists()


def test_a_calibrated_job_gives_the_probability_of_the_cut(tmp_path):
    """predict keeps the model's Platt calibration in the job; results reports what the cut means as a
    probability (scores stay the model's own) and the candidates file keeps the calibration."""
    cover = tile_cover(load_area("28.0,-15.0,28.01,-14.99"), 18)
    store = open_store(tmp_path / "store", create=True)
    calibration = {"method": "platt", "split": "val", "a": 2.0, "b": -1.0}
    store.create_job(dict(JOB, calibration=calibration), cover, cover.shard_ranges(1), 20)
    fill(store)
    s = merge_results(store.spec, candidates=tmp_path / "c.gpkg", threshold=0.75)
    # logit(0.75) = ln 3, so P = 1 / (1 + exp(-(2 ln 3 - 1))) = 9 / (9 + e)
    assert s["calibration"] == calibration and s["threshold_probability"] == pytest.approx(9 / (9 + math.e))
    with sqlite3.connect(tmp_path / "c.gpkg") as db:
        assert json.loads(dict(db.execute("SELECT key, value FROM job"))["calibration"]) == calibration
    plain = merge_results(job_store(tmp_path), json_path=tmp_path / "s.json")
    assert plain["calibration"] is None and plain["threshold_probability"] is None


def job_store(tmp_path):
    store, _ = make_store(tmp_path / "plain-store", "28.0,-15.0,28.01,-14.99", 1, 20)
    return store.spec


def test_a_store_with_nothing_scored_is_refused(tmp_path):
    cover = tile_cover(load_area("28.0,-15.0,28.01,-14.99"), 18)
    store = open_store(tmp_path / "store", create=True)
    store.create_job(JOB, cover, None, 40)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=r"no chunks in .*store yet: nothing to merge"):
        merge_results(store.spec, heatmap=out / "h.tif")
    for shard, index in store.plan.all_chunks():  # every tile failed
        x, y, *_ = payload(store.plan, shard, index)
        store.write_chunk(shard, index, x, y, np.full(len(x), np.nan), errors=["HTTP 403"] * len(x))
    failed = rf"no scored tiles in .*store yet \({cover.count} failed: HTTP 403 x{cover.count}\): nothing to merge"
    with pytest.raises(UserError, match=failed):
        merge_results(store.spec, heatmap=out / "h.tif", candidates=out / "c.gpkg", json_path=out / "s.json",
                      geojson_path=out / "o.geojson")
    assert os.listdir(out) == []  # nothing half-written left behind


def test_plain_sqlite_updates_still_work_once_gdal_has_written_the_geopackage(tmp_path):
    """QGIS's review writes through GDAL, which rewrites the R-tree triggers to call ST_* on any UPDATE; the
    backend's own sqlite3 writers (conflate) use gpkg_connect, whose ST_* functions keep the R-tree right."""
    from osgeo import ogr

    from tests.fakes.candidates_helpers import make_candidates
    from tower_detector.results import gpkg_connect

    path = str(make_candidates(tmp_path / "c.gpkg", [(151_000, 142_000), (151_005, 142_003)]))
    ds = ogr.Open(path, 1)
    layer = ds.GetLayerByName("candidates")
    feature = layer.GetFeature(1)
    feature.SetField("note", "seen in QGIS")
    layer.SetFeature(feature)
    ds = layer = None
    with gpkg_connect(path) as db:
        db.execute("UPDATE candidates SET status = 'confirmed' WHERE fid = 1")
        db.execute("UPDATE candidate_points SET geom = (SELECT geom FROM candidate_points WHERE fid = 2) "
                   "WHERE fid = 1")
        db.execute("UPDATE candidates SET fid = 7 WHERE fid = 2")
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT status, note FROM candidates WHERE fid = 1").fetchone()
        assert row == ("confirmed", "seen in QGIS")
        boxes = {r[0]: r[1:] for r in db.execute("SELECT id, minx, maxx, miny, maxy FROM rtree_candidate_points_geom")}
        assert boxes[1] == pytest.approx(boxes[2])  # point 1 moved onto point 2: its R-tree entry followed
        assert sorted(r[0] for r in db.execute("SELECT id FROM rtree_candidates_geom")) == [1, 7]
    again = ogr.Open(path)  # and GDAL still reads it, spatial filter (R-tree) included
    lyr = again.GetLayerByName("candidates")
    w, s, e, n = tile_bounds_4326(151_005, 142_003, 18)
    lyr.SetSpatialFilterRect(w + 1e-6, s + 1e-6, e - 1e-6, n - 1e-6)
    assert [f.GetFID() for f in lyr] == [7]


def test_the_yes_band_of_a_calibrated_job_is_a_calibrated_probability(tmp_path):
    """Issue 31: after calibration the original project's "Yes" band must mean what it says: P(tower) >= 0.97,
    not a raw score >= 0.97. With Platt's a = 2, b = -1, P = 0.97 is the score s with 2 logit(s) - 1 = logit(0.97),
    s = sigmoid((ln(97/3) + 1) / 2); the scores written stay the model's own."""
    from tests.fakes.storedata import expected

    cover = tile_cover(load_area("28.0,-15.0,28.01,-14.99"), 18)
    store = open_store(tmp_path / "store", create=True)
    store.create_job(dict(JOB, calibration={"method": "platt", "split": "val", "a": 2.0, "b": -1.0}), cover,
                     cover.shard_ranges(1), 20)
    fill(store)
    s = merge_results(store.spec, candidates=tmp_path / "c.gpkg", geojson_path=tmp_path / "o.geojson",
                      threshold=0.5, yes_threshold=0.97)
    yes_score = 1 / (1 + math.exp(-(math.log(97 / 3) + 1) / 2))  # 0.9483...
    assert s["yes_threshold"] == 0.97 and s["yes_score"] == pytest.approx(yes_score)
    scores = expected(store.plan, store.plan.all_chunks())["score"]
    assert s["candidates_yes"] == int((scores >= np.float32(yes_score)).sum()) > int((scores >= 0.97).sum())
    labels = Counter(f["properties"]["label"] for f in json.loads((tmp_path / "o.geojson").read_text())["features"])
    assert labels["Yes"] == s["candidates_yes"]
    with sqlite3.connect(tmp_path / "c.gpkg") as db:
        job = dict(db.execute("SELECT key, value FROM job"))
    assert float(job["yes_score"]) == pytest.approx(yes_score) and float(job["yes_threshold"]) == 0.97
    plain = merge_results(job_store(tmp_path), json_path=tmp_path / "s.json", yes_threshold=0.97)
    assert plain["yes_score"] == 0.97  # no calibration: the band is the raw score, as before
