"""Candidates GeoPackages for the export and conflation tests: written by the real writer
(results.write_candidates_gpkg), then reviewed with plain sqlite3 as the QGIS review dock does."""

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np

from tower_detector.geo.tilemath import lonlat_to_tile_fraction, tile_bounds_4326
from tower_detector.results import write_candidates_gpkg

IMAGERY = "https://{s}.tiles.example.com/{z}/{x}/{y}.jpg?key=***"
CLI = os.path.join(os.path.dirname(sys.executable), "tower-detector")


def scene_features(towers_geojson, kind):
    """[(lon, lat)] of the scene's points with power=kind."""
    with open(towers_geojson, encoding="utf-8") as f:
        features = json.load(f)["features"]
    return [tuple(f["geometry"]["coordinates"]) for f in features
            if f["geometry"]["type"] == "Point" and f["properties"]["power"] == kind]


def tile_of(lon, lat, zoom=18):
    fx, fy = lonlat_to_tile_fraction(lon, lat, zoom)
    return int(fx), int(fy)


def centre(x, y, zoom=18):
    w, s, e, n = tile_bounds_4326(x, y, zoom)
    return (w + e) / 2, (s + n) / 2


def make_candidates(path, tiles, points=None, scores=None, zoom=18, imagery=IMAGERY):
    """A candidates GeoPackage of `tiles` [(x, y)], best first; points [(lon, lat) or None] become the CAM point
    (None: the tile centre); scores default to a descending run from 0.99."""
    x, y = np.array([t[0] for t in tiles]), np.array([t[1] for t in tiles])
    points = points or [None] * len(tiles)
    cam = np.full((len(tiles), 2), np.nan)
    for i, p in enumerate(points):
        if p is not None:
            fx, fy = lonlat_to_tile_fraction(p[0], p[1], zoom)
            cam[i] = (fx - x[i]) * 256, (fy - y[i]) * 256
    scores = np.linspace(0.99, 0.6, len(tiles)) if scores is None else np.asarray(scores)
    write_candidates_gpkg(str(path), zoom, x, y, scores.astype(np.float32), cam[:, 0], cam[:, 1],
                          {"threshold": 0.5, "identity": {"imagery": imagery, "zoom": zoom}})
    return path


def review(path, tile, status, point=None, reviewer="alice"):
    """Record a decision on the candidate of tile (x, y), optionally moving its point, as the review dock does."""
    with sqlite3.connect(str(path)) as db:
        db.execute("UPDATE candidates SET status = ?, reviewer = ?, reviewed_at = '2024-01-01T00:00:00Z' "
                   "WHERE x = ? AND y = ?", (status, reviewer, *tile))
        if point is not None:
            db.execute("UPDATE candidates SET point_lon = ?, point_lat = ?, point_source = 'reviewer' "
                       "WHERE x = ? AND y = ?", (*point, *tile))


def rows(path):
    """The candidates layer as {tile_id: {column: value}}."""
    with sqlite3.connect(str(path)) as db:
        db.row_factory = sqlite3.Row
        return {r["tile_id"]: dict(r) for r in db.execute("SELECT * FROM candidates")}


def run_cli(*args):
    """(exit code, events) of `tower-detector ARGS --events`."""
    proc = subprocess.run([CLI, *map(str, args), "--events"], capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, events
