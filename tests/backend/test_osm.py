"""Tower points from Overpass (a loopback server), OSM extracts, GeoJSON and GeoPackage files."""

import json
import socket
import sqlite3
import struct

import numpy as np
import osmium
import pyproj
import pytest
import requests
import shapely

from tests.fakes.overpass_server import OverpassServer, elements_from_geojson, parse_query
from tower_detector.common.errors import UserError
from tower_detector.geo.areas import load_area
from tower_detector.sources.osm import Towers, load_towers, overpass_chunks, parse_tag_filter

FAST = {"backoff": 0.01}  # keep retry waits short; Retry-After headers still set the pace where sent


@pytest.fixture(scope="module")
def scene(sample_scene):
    """The scene's point features as Overpass elements, split into towers and poles, and its area."""
    elements = elements_from_geojson(sample_scene["towers"])
    towers = [e for e in elements if e["tags"].get("power") == "tower"]
    poles = [e for e in elements if e["tags"].get("power") == "pole"]
    assert towers and poles
    return {"elements": elements, "towers": towers, "poles": poles, "area": load_area(str(sample_scene["area"])),
            "path": sample_scene["towers"]}


@pytest.fixture
def overpass(scene):
    with OverpassServer(scene["elements"]) as server:
        yield server


def _inside(elements, area):
    """The elements inside the area, decided here without the code under test."""
    return [e for e in elements if area.geometry.intersects(shapely.Point(e["lon"], e["lat"]))]


def _assert_same_points(towers, elements, ids=True, tol=1e-9):
    """towers holds exactly the elements' points (and their "node/ID" ids unless ids=False)."""
    assert len(towers) == len(elements) and len(set(towers.ids)) == len(towers)
    if ids:
        got = dict(zip(towers.ids, zip(towers.lon, towers.lat)))
        want = {f"node/{e['id']}": (e["lon"], e["lat"]) for e in elements}
        assert got.keys() == want.keys()
        got, want = [got[k] for k in sorted(want)], [want[k] for k in sorted(want)]
    else:
        got = np.c_[towers.lon, towers.lat][np.lexsort((towers.lat, towers.lon))]
        want = sorted((e["lon"], e["lat"]) for e in elements)
    np.testing.assert_allclose(np.array(got).reshape(-1, 2), np.array(want).reshape(-1, 2), atol=tol, rtol=0)


# --- tag filters ---------------------------------------------------------------------------------


def test_parse_tag_filter_forms():
    tower = parse_tag_filter("power=tower")
    assert (tower.key, tower.values) == ("power", ("tower",))
    assert parse_tag_filter(" power = tower, pole ").values == ("tower", "pole")
    assert parse_tag_filter("power").values is None
    assert parse_tag_filter("ALL").key is None
    assert tower.matches({"power": "tower"}) and not tower.matches({"power": "pole"}) and not tower.matches({})
    assert parse_tag_filter("all").matches({})
    assert str(parse_tag_filter("power=tower,pole")) == "power=tower,pole"


@pytest.mark.parametrize("text", ["", "=tower", "power=", "power=tower,", 'power="tower"', "po\\wer"])
def test_parse_tag_filter_rejects(text):
    with pytest.raises(UserError, match="bad tag filter"):
        parse_tag_filter(text)


# --- Overpass --------------------------------------------------------------------------------------


def test_overpass_returns_the_scene_towers(scene, overpass):
    towers = load_towers(f"overpass:{overpass.url}", area=scene["area"])
    _assert_same_points(towers, _inside(scene["towers"], scene["area"]))
    assert towers.source == f"overpass {overpass.url}"
    assert len(overpass.log) == len(overpass_chunks(scene["area"].geometry)) >= 1
    assert all('node["power"="tower"]' in entry["query"] and "[out:json][timeout:180]" in entry["query"]
               for entry in overpass.log)


def test_overpass_value_list_includes_poles(scene, overpass):
    towers = load_towers(f"overpass:{overpass.url}", area=scene["area"], tag_filter="power=tower,pole")
    _assert_same_points(towers, _inside(scene["towers"] + scene["poles"], scene["area"]))
    filters = [f for f, _ in parse_query(overpass.log[0]["query"])]
    assert filters == [[("power", "=", "tower")], [("power", "=", "pole")]]  # a union of two statements


def test_overpass_any_value(scene, overpass):
    towers = load_towers(f"overpass:{overpass.url}", area=scene["area"], tag_filter="power")
    assert len(towers) == len(_inside(scene["towers"] + scene["poles"], scene["area"]))


def test_overpass_keeps_only_points_inside_the_polygon(scene, overpass):
    west, south, east, north = scene["area"].geometry.bounds
    halves = [load_area(json.dumps({"type": "Polygon", "coordinates": [ring]})) for ring in (
        [[west, south], [east, south], [west, north], [west, south]],
        [[east, south], [east, north], [west, north], [east, south]])]
    found = [load_towers(f"overpass:{overpass.url}", area=half) for half in halves]
    for towers, half in zip(found, halves):
        _assert_same_points(towers, _inside(scene["towers"], half))
    assert sorted(found[0].ids + found[1].ids) == sorted(f"node/{e['id']}" for e in scene["towers"])
    assert sum(entry["elements"] for entry in overpass.log) == 2 * len(scene["towers"])  # each asks the bbox


def test_overpass_large_area_is_queried_in_chunks(scene, overpass):
    west, south, east, north = scene["area"].geometry.bounds
    big = load_area(f"{west - 0.6},{south - 0.6},{east + 0.6},{north + 0.6}")
    towers = load_towers(f"overpass:{overpass.url}", area=big)
    _assert_same_points(towers, scene["towers"])
    assert len(overpass.log) == len(overpass_chunks(big.geometry)) >= 9
    for entry in overpass.log:
        (s, w, n, e), = entry["bboxes"]
        assert 0 < n - s <= 0.5 and 0 < e - w <= 0.5


def test_overpass_chunks_share_edges_and_dedupe(scene, overpass):
    size = 0.004  # a few chunks over the ~1 km scene
    west, south, east, north = scene["area"].geometry.bounds
    edge_lon = (np.floor(west / size) + 1) * size  # the first grid line inside the area
    assert west < edge_lon < east
    on_edge = {"type": "node", "id": 10**9, "lon": edge_lon, "lat": (south + north) / 2, "tags": {"power": "tower"}}
    overpass.elements.append(on_edge)
    towers = load_towers(f"overpass:{overpass.url}", area=scene["area"], chunk_degrees=size)
    _assert_same_points(towers, _inside(scene["towers"] + [on_edge], scene["area"]))
    assert len(overpass.log) >= 4
    assert sum(entry["elements"] for entry in overpass.log) > len(towers)  # the edge node came twice
    assert towers.ids.count(f"node/{10**9}") == 1


def test_overpass_cache_makes_a_rerun_offline(scene, overpass, tmp_path):
    first = load_towers(f"overpass:{overpass.url}", area=scene["area"], cache_dir=tmp_path, chunk_degrees=0.004)
    assert len(overpass.log) >= 4
    overpass.clear_log()
    second = load_towers(f"overpass:{overpass.url}", area=scene["area"], cache_dir=tmp_path, chunk_degrees=0.004)
    assert overpass.log == []
    assert second.ids == first.ids and np.array_equal(second.lon, first.lon)
    assert "answered from the cache" in second.notes[0]
    assert not list(tmp_path.rglob("*.tmp"))
    # another filter is another query: it goes to the server
    load_towers(f"overpass:{overpass.url}", area=scene["area"], cache_dir=tmp_path, tag_filter="power=pole")
    assert overpass.log


def test_overpass_429_then_ok_honours_retry_after(scene, overpass):
    overpass.fail_429, overpass.retry_after = 1, 1
    towers = load_towers(f"overpass:{overpass.url}", area=scene["area"], **FAST)
    assert len(towers) == len(_inside(scene["towers"], scene["area"]))
    assert [e["status"] for e in overpass.log[:2]] == [429, 200]
    assert overpass.log[1]["time"] - overpass.log[0]["time"] >= 0.95


def test_overpass_504_recovers(scene, overpass):
    overpass.fail_504 = 2
    said = []
    towers = load_towers(f"overpass:{overpass.url}", area=scene["area"], log=said.append, **FAST)
    assert len(towers) == len(_inside(scene["towers"], scene["area"]))
    assert [e["status"] for e in overpass.log[:3]] == [504, 504, 200]
    # each retry is said, so that a run waiting on Overpass shows why (the plugin's Jobs panel)
    retries = FAST.get("retries", 4)
    assert [line.split(": retrying ")[1].split(" in ")[0] for line in said] == [f"1/{retries}", f"2/{retries}"]
    assert said[0].startswith(f"Overpass at {overpass.url} answered 504")


def test_overpass_timeout_recovers(scene, overpass):
    overpass.latency, overpass.slow_first = 2.5, 1  # past the client's 1 + 1 s wait
    towers = load_towers(f"overpass:{overpass.url}", area=scene["area"], timeout=1, **FAST)
    assert len(towers) == len(_inside(scene["towers"], scene["area"]))
    assert len(overpass.log) == len(overpass_chunks(scene["area"].geometry)) + 1


def test_overpass_persistent_429_is_a_user_error(scene, overpass):
    overpass.fail_429, overpass.retry_after = 100, 0
    with pytest.raises(UserError, match=r"kept answering 429 \(rate limited\) after 3 tries; wait and retry"):
        load_towers(f"overpass:{overpass.url}", area=scene["area"], retries=2, **FAST)
    assert len(overpass.log) == 3


def test_overpass_unreachable_is_a_user_error(scene):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match="could not be reached .*after 2 tries"):
        load_towers(f"overpass:http://127.0.0.1:{port}/api/interpreter", area=scene["area"], retries=1, **FAST)


def test_overpass_empty_answer_is_empty_towers(scene, overpass):
    overpass.empty = True
    towers = load_towers(f"overpass:{overpass.url}", area=scene["area"])
    assert len(towers) == 0 and towers.lon.dtype == np.float64 and towers.ids == []


@pytest.mark.parametrize("answer, message", [
    ((200, "text/html", b"<html><body><p><strong>Error</strong>: runtime error: open64: 0 Success</p></body></html>"),
     "answered an HTML page instead of JSON: Error: runtime error: open64"),
    ((200, "application/json", json.dumps({"version": 0.6, "elements": [],
                                           "remark": "runtime error: Query timed out in \"query\" at line 1 "
                                                     "after 180 seconds."}).encode()),
     "failed the query for bbox .*: runtime error: Query timed out"),
    ((200, "text/plain", b"not json at all"), "answered something instead of JSON: not json at all"),
    ((200, "application/json", b'{"something": "else"}'), "without an 'elements' list"),
    ((400, "text/html", b"<p><strong>Error</strong>: line 1: parse error: Unknown type</p>"),
     r"rejected the query \(HTTP 400\): Error: line 1: parse error"),
])
def test_overpass_bad_answers_are_user_errors(scene, overpass, tmp_path, answer, message):
    overpass.fixed = answer
    with pytest.raises(UserError, match=message) as info:
        load_towers(f"overpass:{overpass.url}", area=scene["area"], cache_dir=tmp_path, **FAST)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.rglob("*.json"))  # nothing bad is cached


def test_overpass_never_prints_credentials(scene, overpass):
    host_port = overpass.url.split("//")[1]
    url = f"http://user:s3cret@{host_port}?key=s3cret"
    towers = load_towers(f"overpass:{url}", area=scene["area"])
    assert "s3cret" not in towers.source
    overpass.fail_429, overpass.retry_after = 100, 0
    with pytest.raises(UserError) as info:
        load_towers(f"overpass:{url}", area=scene["area"], retries=0)
    assert "s3cret" not in str(info.value)


def test_overpass_needs_an_area_and_a_tag():
    with pytest.raises(UserError, match="needs an area"):
        load_towers("overpass")
    with pytest.raises(UserError, match="Overpass needs a tag"):
        load_towers("overpass:http://127.0.0.1:9/api/interpreter", area="1,1,2,2", tag_filter="all")
    with pytest.raises(UserError, match="bad Overpass URL"):
        load_towers("overpass:ftp://example", area="1,1,2,2")


def test_overpass_antimeridian_area(overpass):
    overpass.elements = [
        {"type": "node", "id": 1, "lon": 179.8, "lat": -16.5, "tags": {"power": "tower"}},
        {"type": "node", "id": 2, "lon": -179.8, "lat": -16.5, "tags": {"power": "tower"}},
        {"type": "node", "id": 3, "lon": 179.0, "lat": -16.5, "tags": {"power": "tower"}},
    ]
    towers = load_towers(f"overpass:{overpass.url}", area="179.5,-17,-179.5,-16")
    assert sorted(towers.ids) == ["node/1", "node/2"]
    for entry in overpass.log:
        (s, w, n, e), = entry["bboxes"]
        assert -180 <= w < e <= 180


def test_server_answers_get_and_refuses_queries_without_a_bbox(scene, overpass):
    query = '[out:json];node["power"="pole"](-90,-180,90,180);out;'
    answer = requests.get(overpass.url, params={"data": query}, timeout=10)
    assert answer.status_code == 200 and len(answer.json()["elements"]) == len(scene["poles"])
    answer = requests.post(overpass.url, data={"data": "[out:json];node[power];out;"}, timeout=10)
    assert answer.status_code == 400 and "parse error" in answer.text
    assert [(e["method"], e["status"]) for e in overpass.log] == [("GET", 200), ("POST", 400)]


# --- within ----------------------------------------------------------------------------------------


def test_within_antimeridian_area():
    area = load_area("179.5,-17,-179.5,-16")  # stored as 179.5..180.5
    towers = Towers([179.8, -179.8, 179.0, -179.0, 0.0, 179.9], [-16.5, -16.5, -16.5, -16.5, -16.5, -18.0],
                    ["a", "b", "c", "d", "e", "f"], "test")
    inside = towers.within(area)
    assert inside.ids == ["a", "b"]
    np.testing.assert_array_equal(inside.lon, [179.8, -179.8])  # positions are not shifted
    assert towers.within(load_area("-10,-20,10,-10")).ids == ["e"]


# --- OSM extracts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".osm.pbf", ".osm"])
def test_osm_extract(scene, tmp_path, suffix):
    path = tmp_path / f"extract{suffix}"
    with osmium.SimpleWriter(str(path)) as writer:
        for e in scene["elements"]:
            writer.add_node(osmium.osm.mutable.Node(id=e["id"], location=(e["lon"], e["lat"]), tags=e["tags"]))
        ids = [e["id"] for e in scene["towers"][:2]]
        writer.add_way(osmium.osm.mutable.Way(id=1, nodes=ids, tags={"power": "line"}))
    towers = load_towers(str(path))
    _assert_same_points(towers, scene["towers"], tol=1e-7)  # OSM files store 1e-7 degree steps
    assert towers.source == str(path)
    both = load_towers(str(path), tag_filter="power=tower,pole", area=scene["area"])
    _assert_same_points(both, _inside(scene["towers"] + scene["poles"], scene["area"]), tol=1e-7)


def test_osm_extract_unreadable(tmp_path):
    path = tmp_path / "broken.osm.pbf"
    path.write_bytes(b"\x00\x00\x00\x0egarbage garbage garbage")
    with pytest.raises(UserError, match="cannot read broken.osm.pbf as an OSM file"):
        load_towers(str(path))


# --- GeoJSON ---------------------------------------------------------------------------------------


def _write_geojson(path, features, crs=None):
    data = {"type": "FeatureCollection", "features": features}
    if crs:
        data["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(data))
    return str(path)


def _point(x, y, props, fid=None):
    feature = {"type": "Feature", "properties": props, "geometry": {"type": "Point", "coordinates": [x, y]}}
    if fid is not None:
        feature["id"] = fid
    return feature


def test_geojson_flat_tags_is_the_sample_file(scene):
    towers = load_towers(str(scene["path"]))
    _assert_same_points(towers, scene["towers"], ids=False)
    poles = load_towers(str(scene["path"]), tag_filter="power=pole")
    _assert_same_points(poles, scene["poles"], ids=False)
    power = load_towers(str(scene["path"]), tag_filter="power")  # points only: the lines are not points
    assert len(power) == len(scene["towers"]) + len(scene["poles"])


def test_geojson_nested_tags(scene, tmp_path):
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [e["lon"], e["lat"]]},
                 "properties": {"type": "node", "id": e["id"], "tags": e["tags"]}} for e in scene["elements"]]
    towers = load_towers(_write_geojson(tmp_path / "nested.geojson", features))
    _assert_same_points(towers, scene["towers"])


def test_geojson_ids_and_multipoints(tmp_path):
    path = _write_geojson(tmp_path / "ids.geojson", [
        _point(1, 1, {"power": "tower"}, fid="node/7"),
        _point(2, 2, {"power": "tower", "@id": "node/8"}),
        _point(3, 3, {"power": "tower"}, fid=5),
        _point(4, 4, {"power": "tower"}),
        {"type": "Feature", "properties": {"other_tags": '"power"=>"tower","ref"=>"A \\"1\\""'},
         "geometry": {"type": "MultiPoint", "coordinates": [[5, 5], [6, 6]]}},
    ])
    towers = load_towers(path)
    assert towers.ids == ["node/7", "node/8", "feature/5", "feature/3", "feature/4:0", "feature/4:1"]
    np.testing.assert_array_equal(towers.lon, [1, 2, 3, 4, 5, 6])


@pytest.mark.parametrize("crs, name", [
    ("EPSG:3857", "EPSG:3857"), ("urn:ogc:def:crs:EPSG::32735", "EPSG:32735"),
])
def test_geojson_in_another_crs_is_reprojected(scene, tmp_path, crs, name):
    to_crs = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    features = []
    for e in scene["elements"]:
        x, y = to_crs.transform(e["lon"], e["lat"])
        features.append(_point(x, y, e["tags"], fid=f"node/{e['id']}"))
    towers = load_towers(_write_geojson(tmp_path / "projected.geojson", features, crs=crs))
    _assert_same_points(towers, scene["towers"], tol=1e-6)
    assert towers.notes == [f"reprojected {len(towers)} points from {name} to WGS84"]


def test_geojson_declared_wgs84_is_taken_as_is(scene, tmp_path):
    features = [_point(e["lon"], e["lat"], e["tags"], fid=f"node/{e['id']}") for e in scene["elements"]]
    for crs in ("urn:ogc:def:crs:OGC:1.3:CRS84", "EPSG:4326"):
        towers = load_towers(_write_geojson(tmp_path / "wgs84.geojson", features, crs=crs))
        _assert_same_points(towers, scene["towers"])
        assert towers.notes == []


def test_geojson_projected_without_crs(tmp_path):
    path = _write_geojson(tmp_path / "metres.geojson", [_point(350000.0, 8150000.0, {"power": "tower"})])
    with pytest.raises(UserError, match="coordinates look projected, e.g. .*no CRS is declared"):
        load_towers(path)


def test_geojson_swapped(tmp_path):
    path = _write_geojson(tmp_path / "swapped.geojson", [_point(-16.5, 179.8, {"power": "tower"}),
                                                         _point(7.5, 3.9, {"power": "tower"})])
    with pytest.raises(UserError, match="latitude and longitude look swapped"):
        load_towers(path)


def test_geojson_unknown_crs(tmp_path):
    path = _write_geojson(tmp_path / "odd.geojson", [_point(1, 1, {"power": "tower"})], crs="EPSG:999999")
    with pytest.raises(UserError, match="declares a CRS that is not understood"):
        load_towers(path)


def test_untagged_point_layer_suggests_all(scene, tmp_path):
    path = _write_geojson(tmp_path / "plain.geojson",
                          [_point(e["lon"], e["lat"], {"name": f"t{i}"}) for i, e in enumerate(scene["towers"])])
    with pytest.raises(UserError, match="no feature in plain.geojson has a 'power' attribute .*--tower-filter all"):
        load_towers(path)
    towers = load_towers(path, tag_filter="all")
    _assert_same_points(towers, scene["towers"], ids=False)


def test_file_without_the_key_and_not_only_points(tmp_path):
    line = {"type": "Feature", "properties": {"name": "x"},
            "geometry": {"type": "LineString", "coordinates": [[1, 1], [2, 2]]}}
    path = _write_geojson(tmp_path / "mixed.geojson", [_point(1, 1, {"name": "a"}), line])
    with pytest.raises(UserError, match="pass a --tower-filter that names one of them"):
        load_towers(path)


def test_empty_file_and_no_match_are_empty(tmp_path):
    assert len(load_towers(_write_geojson(tmp_path / "empty.geojson", []))) == 0
    path = _write_geojson(tmp_path / "lines.geojson", [_point(1, 1, {"power": "pole"})])
    assert len(load_towers(path)) == 0


@pytest.mark.parametrize("content, message", [
    ("{not json", "not GeoJSON .invalid JSON at line 1"),
    ('{"type": "Polygon", "coordinates": []}', "not a GeoJSON FeatureCollection"),
    ('{"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": ["a", 1]}}',
     "bad coordinate"),
])
def test_geojson_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_towers(str(path))


def test_missing_unknown_and_directory_sources(tmp_path):
    with pytest.raises(UserError, match="towers source not found: .*nope.geojson"):
        load_towers(str(tmp_path / "nope.geojson"))
    (tmp_path / "towers.csv").write_text("x,y\n1,2\n")
    with pytest.raises(UserError, match="unknown towers file type: towers.csv"):
        load_towers(str(tmp_path / "towers.csv"))
    with pytest.raises(UserError, match="is a directory"):
        load_towers(str(tmp_path))


# --- GeoPackage ------------------------------------------------------------------------------------


def _ogr_gpkg(path, layers):
    """Write a GeoPackage with GDAL: layers is {name: (epsg, geometry type, [(geometry wkt, {field: value})])}."""
    ogr = pytest.importorskip("osgeo.ogr")
    osr = pytest.importorskip("osgeo.osr")
    ogr.UseExceptions()
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    for name, (epsg, gtype, rows) in layers.items():
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        layer = ds.CreateLayer(name, srs, gtype)
        for field in ("power", "ref"):
            layer.CreateField(ogr.FieldDefn(field, ogr.OFTString))
        for wkt, props in rows:
            feature = ogr.Feature(layer.GetLayerDefn())
            for key, value in props.items():
                feature.SetField(key, value)
            feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
            layer.CreateFeature(feature)
    ds = None  # closes and flushes the file
    return str(path)


def _rows(elements, epsg=4326):
    to_crs = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    rows = []
    for e in elements:
        x, y = to_crs.transform(e["lon"], e["lat"])
        rows.append((f"POINT ({x!r} {y!r})", {"power": e["tags"]["power"], "ref": e["tags"].get("ref")}))
    return rows


def test_gpkg_wgs84_and_utm(scene, tmp_path):
    ogr = pytest.importorskip("osgeo.ogr")
    points = scene["towers"] + scene["poles"]
    path = _ogr_gpkg(tmp_path / "towers.gpkg", {
        "towers": (4326, ogr.wkbPoint, _rows(points)),
        "lines": (4326, ogr.wkbLineString, [("LINESTRING (1 1, 2 2)", {"power": "line"})]),
    })
    towers = load_towers(path)  # the only point layer
    _assert_same_points(towers, scene["towers"], ids=False)
    assert towers.source == "towers.gpkg:towers" and towers.notes == []
    assert towers.ids[0].startswith("feature/")

    utm = _ogr_gpkg(tmp_path / "utm.gpkg", {"points": (32735, ogr.wkbPoint, _rows(points, 32735))})
    towers = load_towers(utm, tag_filter="power=tower,pole", area=scene["area"])
    _assert_same_points(towers, _inside(points, scene["area"]), ids=False, tol=1e-6)
    assert towers.notes == [f"reprojected {len(points)} points from EPSG:32735 to WGS84"]


def test_gpkg_layer_choice(scene, tmp_path):
    ogr = pytest.importorskip("osgeo.ogr")
    path = _ogr_gpkg(tmp_path / "two.gpkg", {
        "towers": (4326, ogr.wkbPoint, _rows(scene["towers"])),
        "poles": (4326, ogr.wkbPoint, _rows(scene["poles"])),
    })
    with pytest.raises(UserError, match="two.gpkg has several point layers .towers, poles.; pick one as"):
        load_towers(path)
    assert len(load_towers(f"{path}:towers")) == len(scene["towers"])
    assert len(load_towers(f"{path}|layername=poles", tag_filter="power=pole")) == len(scene["poles"])
    with pytest.raises(UserError, match="has no layer 'nope' .layers: towers, poles."):
        load_towers(f"{path}:nope")


def _write_gpkg_by_hand(path, srs_id, blobs, attributes):
    """A minimal GeoPackage written with sqlite3: one point layer 'pts' with a 'power' column."""
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT, srs_id INTEGER PRIMARY KEY, organization TEXT,
                organization_coordsys_id INTEGER, definition TEXT, description TEXT);
            CREATE TABLE gpkg_contents (table_name TEXT PRIMARY KEY, data_type TEXT, identifier TEXT);
            CREATE TABLE gpkg_geometry_columns (table_name TEXT, column_name TEXT, geometry_type_name TEXT,
                srs_id INTEGER, z TINYINT, m TINYINT);
            CREATE TABLE pts (fid INTEGER PRIMARY KEY AUTOINCREMENT, geom BLOB, power TEXT);
            INSERT INTO gpkg_contents VALUES ('pts', 'features', 'pts');
        """)
        db.execute("INSERT INTO gpkg_spatial_ref_sys VALUES ('WGS 84', 4326, 'EPSG', 4326, ?, '')",
                   (pyproj.CRS.from_epsg(4326).to_wkt(),))
        db.execute("INSERT INTO gpkg_geometry_columns VALUES ('pts', 'geom', 'POINT', ?, 0, 0)", (srs_id,))
        db.executemany("INSERT INTO pts (geom, power) VALUES (?, ?)", zip(blobs, attributes))
    db.close()
    return str(path)


def _gp_blob(x, y, big_endian=False, envelope=False, empty=False):
    order = ">" if big_endian else "<"
    flags = (0 if big_endian else 1) | (2 if envelope else 0) | (0x10 if empty else 0)
    header = b"GP" + bytes([0, flags]) + struct.pack(order + "i", 4326)
    if envelope:
        header += struct.pack(order + "4d", x, x, y, y)
    wkb = shapely.to_wkb(shapely.Point(x, y), byte_order=0 if big_endian else 1)
    return header + wkb


def test_gpkg_binary_header_variants(tmp_path):
    blobs = [_gp_blob(1.5, 2.5), _gp_blob(3.5, 4.5, big_endian=True), _gp_blob(5.5, 6.5, envelope=True),
             _gp_blob(0, 0, empty=True), None, _gp_blob(7.5, 8.5, big_endian=True, envelope=True)]
    path = _write_gpkg_by_hand(tmp_path / "hand.gpkg", 4326, blobs, ["tower", "tower", "tower", "tower", "tower",
                                                                      "pole"])
    towers = load_towers(path)
    assert towers.ids == ["feature/1", "feature/2", "feature/3"]
    np.testing.assert_array_equal(np.c_[towers.lon, towers.lat], [[1.5, 2.5], [3.5, 4.5], [5.5, 6.5]])
    undefined = _write_gpkg_by_hand(tmp_path / "undefined.gpkg", 0, [_gp_blob(500000.0, 8e6)], ["tower"])
    with pytest.raises(UserError, match="look projected"):
        load_towers(undefined)


def test_gpkg_not_a_geopackage(tmp_path):
    path = tmp_path / "fake.gpkg"
    path.write_text("hello")
    with pytest.raises(UserError, match="cannot read fake.gpkg as a GeoPackage"):
        load_towers(str(path))
    with sqlite3.connect(tmp_path / "plain.gpkg") as db:
        db.execute("CREATE TABLE t (a)")
    db.close()
    with pytest.raises(UserError, match="cannot read plain.gpkg as a GeoPackage .no such table"):
        load_towers(str(tmp_path / "plain.gpkg"))


# --- reference data ----------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_nigeria_osm_export(shared_data):
    path = shared_data / "osm" / "nigeria_power_2018-04-04.geojson"
    towers = load_towers(str(path))  # how fast: benchmarks/labels.py
    assert len(towers) == 29_110
    assert all(i.startswith("node/") for i in towers.ids) and len(set(towers.ids)) == 29_110
    assert 2 < towers.lon.min() and towers.lon.max() < 15 and 4 < towers.lat.min() and towers.lat.max() < 14
    roi = shared_data / "boundaries" / "training_roi_nigeria.geojson"
    if roi.exists():
        inside = towers.within(load_area(str(roi)))
        assert 0 < len(inside) < len(towers)
