"""`tower-detector tiles`: outputs, events, and a clear one-line error (exit 2) for each bad area."""

import json
import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tower_detector", *args], capture_output=True, text=True, timeout=60)


def polygon(ring, **extra):
    return {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}, **extra}


SQUARE = [[28.0, -15.0], [28.01, -15.0], [28.01, -14.99], [28.0, -14.99], [28.0, -15.0]]


def write(tmp_path, data, name="area.geojson"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_tiles_prints_count_writes_cover_and_shards(tmp_path):
    out = tmp_path / "cover.json"
    proc = run_cli("tiles", "--area", write(tmp_path, polygon(SQUARE)), "--zoom", "18", "--shards", "3",
                   "--out", str(out), "--events")
    assert proc.returncode == 0, proc.stderr
    event = json.loads(proc.stdout.strip().splitlines()[-1])
    assert event["event"] == "result" and event["count"] > 0
    assert sum(s["count"] for s in event["shards"]) == event["count"]
    saved = json.loads(out.read_text())
    assert saved["count"] == event["count"] and len(saved["shards"]) == 3
    human = run_cli("tiles", "--area", "28.0,-15.0,28.01,-14.99")
    assert human.returncode == 0 and human.stdout.startswith(f"{event['count']} tiles at zoom 18")


BAD_AREAS = {
    "self-intersecting": (polygon([[28, -15], [28.01, -14.99], [28.01, -15], [28, -14.99], [28, -15]]),
                          "invalid polygon (Self-intersection"),
    "lat/lon swapped": (polygon([[-15.0, 128.0], [-15.0, 128.01], [-14.99, 128.01], [-15.0, 128.0]]), "swapped"),
    "beyond mercator": (polygon([[28, 80], [29, 80], [29, 86], [28, 80]]), "beyond Web Mercator"),
    "empty": ({"type": "FeatureCollection", "features": []}, "empty"),
    "null geometry": ({"type": "Feature", "properties": {}, "geometry": None}, "empty"),
    "line": ({"type": "LineString", "coordinates": [[28, -15], [29, -14]]}, "must be Polygon or MultiPolygon"),
    "projected crs member": (
        {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32735"}},
         "features": [polygon(SQUARE)]}, "reproject it to WGS84"),
    "projected coordinates": (polygon([[3117000, -1690000], [3118000, -1690000], [3118000, -1689000],
                                       [3117000, -1690000]]), "look projected"),
    "not json": ("name,lat,lon\nx,1,2\n", "is not GeoJSON"),
    "json, not geojson": ({"hello": "world"}, "is not GeoJSON"),
    "degenerate": (polygon([[28, -15], [28.01, -15], [28, -15]]), "fewer than 3 distinct points"),
}


@pytest.mark.parametrize("case", sorted(BAD_AREAS))
def test_bad_areas_fail_with_one_line(tmp_path, case):
    data, expected = BAD_AREAS[case]
    proc = run_cli("tiles", "--area", write(tmp_path, data))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert expected in lines[0]
    events = run_cli("tiles", "--area", write(tmp_path, data), "--events")
    error = json.loads(events.stdout.strip().splitlines()[-1])
    assert events.returncode == 2 and error["event"] == "error" and expected in error["message"]


def test_binary_file_and_missing_file(tmp_path):
    binary = tmp_path / "area.gpkg"
    binary.write_bytes(b"SQLite format 3\x00\xff\xfe" * 10)
    for path, expected in [(str(binary), "is not GeoJSON"), (str(tmp_path / "nope.geojson"), "not found")]:
        proc = run_cli("tiles", "--area", path)
        assert proc.returncode == 2 and expected in proc.stderr


def test_repair_makes_a_bowtie_usable(tmp_path):
    bowtie = write(tmp_path, polygon([[28, -15], [28.01, -14.99], [28.01, -15], [28, -14.99], [28, -15]]))
    proc = run_cli("tiles", "--area", bowtie, "--repair", "--events")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["count"] > 0


def test_max_tiles_refuses_big_areas(tmp_path):
    proc = run_cli("tiles", "--area", "20,-18,34,-8", "--max-tiles", "1000000")
    assert proc.returncode == 2
    assert "over --max-tiles 1,000,000" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("bbox,expected", [("28,-15,28.1", "bbox 28,-15,28.1 has 3 values; give 4: W,S,E,N"),
                                           ("28,-14,28.1,-15", "not below north"),
                                           ("28,-15,28.1,95", "outside -90..90"), ("190,-15,191,-14", "outside -180"),
                                           ("a,b,c,d", "bbox a,b,c,d: 'a' is not a number"),
                                           ("28,-15,,-14", "bbox 28,-15,,-14: '' is not a number"),
                                           ("nan,-15,28.1,-14", "nan is not a finite number"),
                                           ("28,-15,inf,-14", "inf is not a finite number"),
                                           ("3,-15,2,-14", "bbox west 3 is east of east 2")])
def test_bad_bboxes(bbox, expected):
    proc = run_cli("tiles", "--area", bbox)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr


def test_usage_mistakes_are_one_line_bad_input():
    proc = run_cli("tiles", "--zoom", "18")
    assert proc.returncode == 2
    expected = "error: tower-detector tiles: the following arguments are required: --area (see --help)"
    assert proc.stderr.strip() == expected
    events = run_cli("tiles", "--zoom", "eighteen", "--area", "28,-15,28.1,-14.9", "--events")
    assert events.returncode == 2 and json.loads(events.stdout)["event"] == "error"
