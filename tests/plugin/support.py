"""Shared fixtures and helpers for the plugin's tests (imported by the test_plugin_*.py modules; no tests here)."""

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QEventLoop

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the plugin package is imported from the dev checkout
    sys.path.insert(0, str(REPO))
# its copies of the backend's shared modules (`make resources` writes them too), fresh before it is imported
_spec = importlib.util.spec_from_file_location("build_plugin", REPO / "scripts" / "build_plugin.py")
build_plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_plugin)
build_plugin.copy_shared(REPO / build_plugin.PLUGIN)
CLI = Path(sys.prefix) / "bin" / "tower-detector"


# A backend that crashes: a traceback on stderr, exit 1, no error event.
CRASH_SCRIPT = """
sys.stderr.write("Traceback (most recent call last):\\n  File \\"cli.py\\", line 1, in <module>\\n")
sys.stderr.write("RuntimeError: the model exploded\\n")
sys.exit(1)
"""


def real_cli() -> str:
    path = str(CLI) if CLI.is_file() else shutil.which("tower-detector")
    if not path:
        pytest.skip("the tower-detector CLI is not installed in this environment")
    return path


@pytest.fixture
def plugin_settings(tmp_path, qgis_app):
    """The plugin's settings reset, its work dir in tmp_path, and the real backend CLI configured."""
    from tower_detector_plugin.core import settings

    settings.reset()
    settings.set_value("work_dir", str(tmp_path / "work"))
    if CLI.is_file():
        settings.set_value("cli/path", str(CLI))
    yield settings
    # A test that failed half-way must not leave a backend running: QGIS waits for its tasks when it exits.
    QgsApplication.taskManager().cancelAll()
    wait_until(lambda: not QgsApplication.taskManager().countActiveTasks(), 30, "cancelled tasks to end")
    settings.reset()


@pytest.fixture
def fake_backend(tmp_path, plugin_settings):
    """make(body) -> path of an executable Python script standing in for the backend, and configured as it."""

    def make(body: str, name: str = "fake-tower-detector") -> Path:
        path = tmp_path / name
        path.write_text(f"#!{sys.executable}\nimport json, os, subprocess, sys, time\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        plugin_settings.set_value("cli/path", str(path))
        return path

    return make


def wait_until(predicate, timeout_s: float = 60.0, what: str = "the condition"):
    """Process Qt events until predicate() is true (pytest-qt's waitUntil, which this venv does not have)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        QgsApplication.processEvents(QEventLoop.AllEvents, 50)
        time.sleep(0.01)


def run_task(task, timeout_s: float = 60.0):
    """Run a BackendTask in QGIS's task manager; its TaskEnd, once it has ended (QGIS then deletes the task)."""
    ended = []
    task.done.connect(ended.append)
    QgsApplication.taskManager().addTask(task)
    wait_until(lambda: bool(ended), timeout_s, f"task {task.description()}")
    return ended[0]


def process_gone(pid: int) -> bool:
    """True when pid has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def offscreen_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.update(extra)
    return env


# --- results files as the backend writes them (made here with rasterio and ogr, never by the plugin) -------------
HALF_WORLD = 20037508.342789244


def tile_bounds_3857(x, y, z=18):
    size = 2 * HALF_WORLD / 2**z
    return -HALF_WORLD + x * size, HALF_WORLD - (y + 1) * size, -HALF_WORLD + (x + 1) * size, HALF_WORLD - y * size


def tile_lonlat(x, y, z=18):
    """The (west, south, east, north) of tile x, y in degrees."""
    import math

    n = 2**z

    def lat(yy):
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * yy / n))))

    return x / n * 360 - 180, lat(y + 1), (x + 1) / n * 360 - 180, lat(y)


def make_heatmap(path, scores, x0=151_000, y0=142_000, z=18):
    """A heatmap GeoTIFF: EPSG:3857, one float32 pixel per tile from (x0, y0), nodata -1, with overviews."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin

    scores = np.asarray(scores, dtype="float32")
    west, _s, _e, north = tile_bounds_3857(x0, y0, z)
    size = 2 * HALF_WORLD / 2**z
    with rasterio.open(path, "w", driver="GTiff", width=scores.shape[1], height=scores.shape[0], count=1,
                       dtype="float32", crs="EPSG:3857", transform=from_origin(west, north, size, size),
                       nodata=-1) as dst:
        dst.write(scores, 1)
        dst.build_overviews([2], Resampling.average)
    return path


def make_candidates(path, tiles, z=18):
    """A candidates GeoPackage: `candidates` polygons and `candidate_points`, from [(x, y, score), ...]."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    polys = ds.CreateLayer("candidates", srs, ogr.wkbPolygon)
    for name, kind in (("tile_id", ogr.OFTString), ("x", ogr.OFTInteger), ("y", ogr.OFTInteger),
                       ("z", ogr.OFTInteger), ("score", ogr.OFTReal), ("point_lon", ogr.OFTReal),
                       ("point_lat", ogr.OFTReal), ("point_source", ogr.OFTString), ("status", ogr.OFTString),
                       ("note", ogr.OFTString), ("reviewer", ogr.OFTString), ("reviewed_at", ogr.OFTString)):
        field = ogr.FieldDefn(name, kind)
        if name == "status":
            field.SetDefault("'unreviewed'")
        polys.CreateField(field)
    points = ds.CreateLayer("candidate_points", srs, ogr.wkbPoint)
    for name, kind in (("tile_id", ogr.OFTString), ("score", ogr.OFTReal), ("point_source", ogr.OFTString)):
        points.CreateField(ogr.FieldDefn(name, kind))
    for x, y, score in tiles:
        w, s, e, n = tile_lonlat(x, y, z)
        lon, lat = (w + e) / 2, (s + n) / 2
        f = ogr.Feature(polys.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({w} {s},{e} {s},{e} {n},{w} {n},{w} {s}))"))
        for key, value in (("tile_id", f"{x}-{y}-{z}"), ("x", x), ("y", y), ("z", z), ("score", score),
                           ("point_lon", lon), ("point_lat", lat), ("point_source", "tile_centre"),
                           ("status", "unreviewed")):
            f.SetField(key, value)
        polys.CreateFeature(f)
        p = ogr.Feature(points.GetLayerDefn())
        p.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT({lon} {lat})"))
        for key, value in (("tile_id", f"{x}-{y}-{z}"), ("score", score), ("point_source", "tile_centre")):
            p.SetField(key, value)
        points.CreateFeature(p)
    ds = None
    return path


def make_model_dir(path, with_plots=("roc.png",)):
    """A model directory's metrics.json (and plots) as `tower-detector train` writes them."""
    from qgis.PyQt.QtGui import QColor, QImage

    path.mkdir(parents=True, exist_ok=True)
    metrics = {"accuracy": 0.91, "precision": 0.8, "recall": 0.75, "f1": 0.774, "roc_auc": 0.955, "pr_auc": 0.81,
               "roc": {"fpr": [0, 0.1, 1], "tpr": [0, 0.8, 1], "thresholds": [1, 0.6, 0]},
               "thresholds": {"youden": 0.62, "recall_0.9": 0.41, "seed": 0.97},
               # the test split scored with predict's 2, 4 and 8 views: their thresholds differ a little
               "views": {str(n): {"roc_auc": 0.955 + n / 1000, "pr_auc": 0.82, "thresholds": {
                   "youden": 0.62 - n / 100, "recall_0.9": 0.4, "seed": 0.97}} for n in (2, 4, 8)}}
    (path / "metrics.json").write_text(json.dumps(metrics))
    for name in with_plots:
        image = QImage(320, 240, QImage.Format_RGB32)
        image.fill(QColor("white"))
        image.save(str(path / name))
    (path / "params.json").write_text("{}")
    return path


def sample_scene(out, tiles=8, seed=3) -> dict:
    """`tower-detector sample` into out; its result event (tile_range, files, ...)."""
    done = subprocess.run([real_cli(), "sample", "--out", str(out), "--tiles-x", str(tiles), "--tiles-y", str(tiles),
                           "--seed", str(seed), "--events"], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout.splitlines()[-1])


def _tile_of(lon, lat, z=18):
    import math

    n = 2**z
    return int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)


def fake_results(scene_dir, tile_range, out_dir, threshold=0.5):
    """A plausible heatmap and candidates GeoPackage for a sample scene: tower tiles score high, a few hard
    negatives middling, the rest low (deterministic). Returns (heatmap path, candidates path)."""
    import random

    rng = random.Random(7)
    (x0, x1), (y0, y1) = tile_range["x"], tile_range["y"]
    towers = json.load(open(Path(scene_dir) / "towers.geojson"))["features"]
    hot = {_tile_of(*f["geometry"]["coordinates"]) for f in towers
           if f["geometry"]["type"] == "Point" and f["properties"].get("power") == "tower"}
    scores = [[0.0] * (x1 - x0 + 1) for _ in range(y1 - y0 + 1)]
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            score = rng.uniform(0.9, 0.995) if (x, y) in hot else rng.choice((rng.uniform(0, 0.3),) * 6
                                                                              + (rng.uniform(0.5, 0.8),))
            scores[y - y0][x - x0] = score
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heatmap = make_heatmap(out_dir / "heatmap.tif", scores, x0, y0)
    picked = [(x, y, scores[y - y0][x - x0]) for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)
              if scores[y - y0][x - x0] >= threshold]
    return str(heatmap), str(make_candidates(out_dir / "candidates.gpkg", picked))
