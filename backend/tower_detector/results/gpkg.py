"""The candidates output: a GeoPackage written with sqlite3 (no GDAL needed), and the merge of new results onto
one that was reviewed, keeping every review decision.

Candidates (GeoPackage, written with sqlite3 to the OGC GeoPackage 1.2 spec; GDAL's validator accepts it)
    layer candidates (Polygon, EPSG:4326): the tile squares with score >= threshold, by score descending (fid
    and rank 1 = the highest; ties by x, then y). Fields: tile_id "x-y-z", x, y, z, score, rank, point_lon,
    point_lat (the CAM point, tile pixels -> lon/lat; the tile centre when there is none), point_source
    ("cam" or "tile_centre"), status (default "unreviewed"), note, reviewer, reviewed_at (for the review UI),
    in_results (1; 0 for a reviewed candidate that the last write kept only for its review, see below),
    score_raw (the model's score; score is the re-scored value with `results --line-rescore`, else the same) and
    line_support (0..1, topology.py; NULL without --line-rescore).
    layer candidate_points (Point, EPSG:4326): the same candidates' points (same fid), tile_id, score,
    point_source. Both have an R-tree spatial index. Its update triggers fire only when the geometry or the
    fid changes, so plain sqlite3 clients can update status/note without GDAL's ST_* functions; once GDAL has
    opened the file for writing (QGIS's review does) it rewrites them, and gpkg_connect provides the functions.
    table job (attributes, key/value TEXT): threshold, yes_threshold, zoom, store, job identity and notes,
    counts; no secrets (the store redacts its job spec).

Writing onto an existing candidates GeoPackage (a reviewed one: `results` run again, `remote fetch` again)
    merges into it by tile id, in one SQLite transaction on the file itself: a failure rolls back and leaves it
    as it was, and QGIS may keep it open meanwhile (in WAL mode; its own writes wait). Rows keep their fid, so
    an open layer's features stay valid; ranks are renumbered by score (fid order is no longer rank order).
    A row is reviewed when it has a status other than unreviewed, a note, or a point a reviewer moved
    (point_source "reviewer"). A reviewed row is never dropped, and keeps its status, note, reviewer,
    reviewed_at and point; its score follows the new store where that scored the tile. An unreviewed row that
    is a candidate again gets the new score and point; new candidates are added, unreviewed. A reviewed row that
    is not a candidate this time (below the threshold, or not scored in this store) stays, with in_results = 0;
    an unreviewed one is dropped. Columns and tables that others added (conflate's osm_* columns, QGIS's saved
    style) are kept; candidate_points is rewritten to mirror the candidates' points (the reviewer's included);
    the job table is updated, and its key `merges` lists every write. A file that is not a candidates
    GeoPackage, or holds another zoom, is refused. overwrite writes a new file and puts it in place with
    SQLite's backup API, not a rename: a database renamed in beside a -wal journal that QGIS still holds would
    be read with that journal's pages, i.e. corrupted.
"""

import json
import os
import sqlite3
import struct
from contextlib import closing

import numpy as np

from ..common.atomic import remove_if_present
from ..common.errors import UserError
from ..geo.cover import tile_lonlat

# GeoPackage 1.2: http://www.geopackage.org/spec120/
_WGS84_WKT = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
              'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",'
              '0.0174532925199433,AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],'
              'AUTHORITY["EPSG","4326"]]')
# the tables every GeoPackage has (review's labels export builds on them too); _CORE adds the candidates' own
GPKG_CORE = """
PRAGMA application_id = 1196444487;  -- 'GPKG'
PRAGMA user_version = 10200;
CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY,
  organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
  description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
  geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name), CONSTRAINT uk_gc_table_name UNIQUE (table_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
CREATE TABLE gpkg_extensions (table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL,
  definition TEXT NOT NULL, scope TEXT NOT NULL, CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name));
"""
_CORE = GPKG_CORE + """
CREATE TABLE candidates (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom POLYGON, tile_id TEXT NOT NULL UNIQUE,
  x INTEGER, y INTEGER, z INTEGER, score REAL, rank INTEGER, point_lon REAL, point_lat REAL, point_source TEXT,
  status TEXT DEFAULT 'unreviewed', note TEXT, reviewer TEXT, reviewed_at TEXT, in_results INTEGER DEFAULT 1,
  score_raw REAL, line_support REAL);
CREATE TABLE candidate_points (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom POINT, tile_id TEXT NOT NULL,
  score REAL, point_source TEXT);
CREATE TABLE job (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, key TEXT NOT NULL UNIQUE, value TEXT);
CREATE VIRTUAL TABLE rtree_candidates_geom USING rtree(id, minx, maxx, miny, maxy);
CREATE VIRTUAL TABLE rtree_candidate_points_geom USING rtree(id, minx, maxx, miny, maxy);
"""
# The spec's R-tree triggers, except that update3/update4 (which act only when the fid changes) fire on
# UPDATE OF fid instead of on any UPDATE: the same behaviour, but an UPDATE of status or note no longer needs
# GDAL's ST_* SQL functions, so any sqlite3 client can record review decisions.
_RTREE_TRIGGERS = """
CREATE TRIGGER rtree_{t}_geom_insert AFTER INSERT ON {t} WHEN (new.geom NOT NULL AND NOT ST_IsEmpty(NEW.geom))
BEGIN INSERT OR REPLACE INTO rtree_{t}_geom VALUES (NEW.fid, ST_MinX(NEW.geom), ST_MaxX(NEW.geom),
  ST_MinY(NEW.geom), ST_MaxY(NEW.geom)); END;
CREATE TRIGGER rtree_{t}_geom_update1 AFTER UPDATE OF geom ON {t}
  WHEN OLD.fid = NEW.fid AND (NEW.geom NOTNULL AND NOT ST_IsEmpty(NEW.geom))
BEGIN INSERT OR REPLACE INTO rtree_{t}_geom VALUES (NEW.fid, ST_MinX(NEW.geom), ST_MaxX(NEW.geom),
  ST_MinY(NEW.geom), ST_MaxY(NEW.geom)); END;
CREATE TRIGGER rtree_{t}_geom_update2 AFTER UPDATE OF geom ON {t}
  WHEN OLD.fid = NEW.fid AND (NEW.geom ISNULL OR ST_IsEmpty(NEW.geom))
BEGIN DELETE FROM rtree_{t}_geom WHERE id = OLD.fid; END;
CREATE TRIGGER rtree_{t}_geom_update3 AFTER UPDATE OF fid ON {t}
  WHEN OLD.fid != NEW.fid AND (NEW.geom NOTNULL AND NOT ST_IsEmpty(NEW.geom))
BEGIN DELETE FROM rtree_{t}_geom WHERE id = OLD.fid; INSERT OR REPLACE INTO rtree_{t}_geom VALUES (NEW.fid,
  ST_MinX(NEW.geom), ST_MaxX(NEW.geom), ST_MinY(NEW.geom), ST_MaxY(NEW.geom)); END;
CREATE TRIGGER rtree_{t}_geom_update4 AFTER UPDATE OF fid ON {t}
  WHEN OLD.fid != NEW.fid AND (NEW.geom ISNULL OR ST_IsEmpty(NEW.geom))
BEGIN DELETE FROM rtree_{t}_geom WHERE id IN (OLD.fid, NEW.fid); END;
CREATE TRIGGER rtree_{t}_geom_delete AFTER DELETE ON {t} WHEN old.geom NOT NULL
BEGIN DELETE FROM rtree_{t}_geom WHERE id = OLD.fid; END;
"""


def gpkg_connect(path, **kwargs) -> sqlite3.Connection:
    """sqlite3 on a GeoPackage, with the ST_* SQL functions its R-tree triggers call. GDAL (QGIS) rewrites the
    triggers when it opens the file for writing, after which they fire on any UPDATE; without these functions
    every plain sqlite3 update of a file QGIS has touched would fail ("no such function: ST_IsEmpty")."""
    db = sqlite3.connect(path, **kwargs)
    for name, index in (("ST_MinX", 0), ("ST_MaxX", 1), ("ST_MinY", 2), ("ST_MaxY", 3)):
        db.create_function(name, 1, lambda blob, i=index: None if blob is None else _gpkg_envelope(blob)[i],
                           deterministic=True)
    db.create_function("ST_IsEmpty", 1, lambda blob: None if blob is None else int(bool(blob[3] & 0b10000)),
                       deterministic=True)
    return db


def _gpkg_envelope(blob):
    """(minx, maxx, miny, maxy) of a GeoPackage geometry blob: its header's envelope, else its WKB's bounds."""
    flags = blob[3]
    order = "<" if flags & 1 else ">"
    if (flags >> 1) & 0b111:
        return struct.unpack_from(order + "4d", blob, 8)
    wkb = "<" if blob[8] else ">"  # points carry no envelope: read the WKB after the 8-byte header
    if len(blob) == 29 and struct.unpack_from(wkb + "I", blob, 9)[0] == 1:  # a 2D point, the usual case
        x, y = struct.unpack_from(wkb + "2d", blob, 13)
        return x, x, y, y
    import shapely

    minx, miny, maxx, maxy = shapely.from_wkb(bytes(blob[8:])).bounds
    return minx, maxx, miny, maxy


def gpkg_polygons(w, s, e, n):
    """GeoPackage binary tile squares: 'GP' header with an [minx, maxx, miny, maxy] envelope, then WKB."""
    dt = np.dtype([("magic", "S2"), ("version", "u1"), ("flags", "u1"), ("srs", "<i4"), ("env", "<f8", (4,)),
                   ("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"), ("xy", "<f8", (10,))])
    a = np.zeros(len(w), dt)
    a["magic"], a["flags"], a["srs"] = b"GP", 0b011, 4326  # flags: little-endian, xy envelope
    a["env"] = np.stack([w, e, s, n], axis=1)
    a["order"], a["type"], a["rings"], a["points"] = 1, 3, 1, 5  # little-endian WKB Polygon, 1 ring of 5 points
    a["xy"] = np.stack([w, s, e, s, e, n, w, n, w, s], axis=1)
    return _rows_bytes(a)


def gpkg_points(lon, lat):
    dt = np.dtype([("magic", "S2"), ("version", "u1"), ("flags", "u1"), ("srs", "<i4"), ("order", "u1"),
                   ("type", "<u4"), ("xy", "<f8", (2,))])
    a = np.zeros(len(lon), dt)
    a["magic"], a["flags"], a["srs"], a["order"], a["type"] = b"GP", 0b001, 4326, 1, 1  # no envelope; WKB Point
    a["xy"] = np.stack([lon, lat], axis=1)
    return _rows_bytes(a)


def _rows_bytes(a):
    raw, size = a.tobytes(), a.dtype.itemsize
    return [raw[i * size:(i + 1) * size] for i in range(len(a))]


def candidate_points(x, y, cam_x, cam_y, zoom):
    """(lon, lat, source): the CAM point of each tile in lon/lat, or the tile centre where it has none."""
    cam = ~(np.isnan(cam_x) | np.isnan(cam_y))
    fx = x + np.where(cam, cam_x / 256.0, 0.5)
    fy = y + np.where(cam, cam_y / 256.0, 0.5)
    lon, lat = tile_lonlat(fx, fy, zoom)
    return lon, lat, np.where(cam, "cam", "tile_centre")


def insert_srs(db):
    """The spatial reference systems a GeoPackage must have (WGS 84 and the two undefined ones)."""
    db.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", [
        ("WGS 84 geodetic", 4326, "EPSG", 4326, _WGS84_WKT, "longitude/latitude coordinates in decimal degrees"),
        ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate system"),
        ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate system")])


def write_candidates_gpkg(path, zoom, x, y, score, cam_x, cam_y, info, score_raw=None, line_support=None):
    """The candidates GeoPackage (see the module docstring); rows in the order given (rank 1 first). score_raw:
    the model's scores (None: score); line_support: NaN or None for none."""
    k = len(x)
    raws, supports = _extra_columns(score, score_raw, line_support)
    x, y = np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)
    w, n = tile_lonlat(x, y, zoom)
    e, s = tile_lonlat(x + 1, y + 1, zoom)
    lon, lat, source = candidate_points(x, y, np.asarray(cam_x, np.float64), np.asarray(cam_y, np.float64), zoom)
    fid = list(range(1, k + 1))
    ids = [f"{a}-{b}-{zoom}" for a, b in zip(x.tolist(), y.tolist())]
    # float32 scores as their shortest decimal (0.9, not 0.8999999761581421): what people read in QGIS
    scores, source = [float(str(v)) for v in np.asarray(score, np.float32)], source.tolist()
    remove_if_present(path)
    db = sqlite3.connect(path)
    try:
        db.executescript(_CORE)
        insert_srs(db)
        bounds = (float(w.min()), float(s.min()), float(e.max()), float(n.max())) if k else (None,) * 4
        pbounds = (float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())) if k else (None,) * 4
        db.executemany("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, min_x, min_y, "
                       "max_x, max_y, srs_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                           ("candidates", "features", "candidates",
                            f"zoom-{zoom} tiles with P(tower) >= {info['threshold']:g}, best first", *bounds, 4326),
                           ("candidate_points", "features", "candidate_points",
                            "the most likely tower point of each candidate tile", *pbounds, 4326),
                           ("job", "attributes", "job", "the prediction job and merge settings", None, None,
                            None, None, None)])
        db.executemany("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, 4326, 0, 0)",
                       [("candidates", "POLYGON"), ("candidate_points", "POINT")])
        db.executemany("INSERT INTO gpkg_extensions VALUES (?, 'geom', 'gpkg_rtree_index', "
                       "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
                       [("candidates",), ("candidate_points",)])
        # rows and R-tree entries first, the R-tree triggers last (they call GDAL's ST_* SQL functions)
        db.executemany("INSERT INTO candidates (fid, geom, tile_id, x, y, z, score, rank, point_lon, point_lat, "
                       "point_source, status, score_raw, line_support) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'unreviewed', ?, ?)",
                       zip(fid, gpkg_polygons(w, s, e, n), ids, x.tolist(), y.tolist(), [zoom] * k, scores, fid,
                           lon.tolist(), lat.tolist(), source, raws, supports))
        db.executemany("INSERT INTO candidate_points VALUES (?, ?, ?, ?, ?)",
                       zip(fid, gpkg_points(lon, lat), ids, scores, source))
        db.executemany("INSERT INTO rtree_candidates_geom VALUES (?, ?, ?, ?, ?)",
                       zip(fid, w.tolist(), e.tolist(), s.tolist(), n.tolist()))
        db.executemany("INSERT INTO rtree_candidate_points_geom VALUES (?, ?, ?, ?, ?)",
                       zip(fid, lon.tolist(), lon.tolist(), lat.tolist(), lat.tolist()))
        db.executemany("INSERT INTO job (key, value) VALUES (?, ?)",
                       [(key, value if isinstance(value, str) else json.dumps(value, default=str))
                        for key, value in info.items()])
        db.executescript(_RTREE_TRIGGERS.format(t="candidates") + _RTREE_TRIGGERS.format(t="candidate_points"))
        db.commit()
    finally:
        db.close()


_NOT_CANDIDATES = "is not a candidates GeoPackage (from `tower-detector results --candidates`)"
_NEEDED = ("tile_id", "x", "y", "z", "score", "rank", "point_lon", "point_lat", "point_source", "status", "note",
           "reviewer", "reviewed_at")
# a human (or conflate) has touched the row: a status, a note, or a tower point moved by hand
_REVIEWED = ("(coalesce(status, 'unreviewed') != 'unreviewed' OR coalesce(note, '') != '' "
             "OR coalesce(point_source, '') = 'reviewer')")


def tile_keys(x, y, zoom):
    """One int64 per tile of a zoom (x << zoom | y): the merge's key, sortable and searchable with numpy."""
    return np.asarray(x, np.int64) << zoom | np.asarray(y, np.int64)


def _tiles_of(tile_ids):
    """(x, y, z) int64 arrays of "x-y-z" tile ids (the merge's key; the x, y, z columns may have been edited),
    -1 where one does not parse (a row someone added by hand)."""
    xyz = []
    for tile_id in tile_ids:
        try:
            x, y, z = map(int, str(tile_id).split("-"))
        except ValueError:
            x = y = z = -1
        xyz.append((x, y, z))
    return tuple(np.array(c, np.int64).reshape(-1) for c in (zip(*xyz) if xyz else ((), (), ())))


def existing_candidates(path, zoom, overwrite=False):
    """What is at a candidates output already: None (no file), else {merge: True to merge into it, keys: its
    tiles (tile_keys, sorted; empty unless merging), reviewed: how many of its candidates were reviewed}.
    Without overwrite, a file that is not a candidates GeoPackage, or holds another zoom, is a UserError."""
    if not os.path.exists(path):
        return None
    x = y = z = reviewed = np.zeros(0, np.int64)
    problem = None
    try:
        with closing(sqlite3.connect(path, timeout=60)) as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(candidates)")}
            missing = [c for c in _NEEDED if c not in have]
            if missing:
                why = "it has no candidates layer" if not have else f"its candidates layer lacks {', '.join(missing)}"
                problem = f"{_NOT_CANDIDATES} ({why})"
            else:
                rows = db.execute(f"SELECT tile_id, {_REVIEWED} FROM candidates").fetchall()
                x, y, z = _tiles_of([r[0] for r in rows])
                reviewed = np.array([r[1] for r in rows], np.int64)
                zooms = sorted(set(z.tolist()) - {zoom, -1})
                if zooms:
                    problem = f"holds zoom-{zooms[0]} candidates and this job is zoom {zoom}"
    except sqlite3.DatabaseError as exc:
        problem = f"{_NOT_CANDIDATES} ({exc})"
    if problem and not overwrite:
        raise UserError(f"{os.path.basename(path)} {problem}: write them to another file, or pass --overwrite "
                        "to replace it")
    merge = not (problem or overwrite)
    keys = np.sort(tile_keys(x[z == zoom], y[z == zoom], zoom)) if merge else np.zeros(0, np.int64)
    return {"merge": merge, "keys": keys, "reviewed": int(reviewed.sum())}


def write_candidates(path, tmp, existing, zoom, x, y, score, cam_x, cam_y, chosen, info, score_raw=None,
                     line_support=None):
    """The candidates output: a new file where there is none (or with overwrite), else a merge into the one
    there. x, y, ... are the candidate tiles and the existing file's other scored tiles (chosen: the candidates,
    rank order); score_raw and line_support as write_candidates_gpkg. Returns what was done: {mode: new,
    overwritten or merged, and its counts}."""
    score_raw = score if score_raw is None else score_raw
    line_support = np.full(len(x), np.nan) if line_support is None else line_support
    try:
        if existing is not None and existing["merge"]:
            counts = merge_candidates_gpkg(path, zoom, x, y, score, cam_x, cam_y, chosen, info, score_raw,
                                           line_support)
            return {"mode": "merged", **counts}
        counts = {"mode": "new" if existing is None else "overwritten", "added": int(chosen.sum())}
        if existing is not None:
            counts["reviewed_discarded"] = existing["reviewed"]
        info = {**info, "merges": [_history(info, counts)]}
        write_candidates_gpkg(tmp, zoom, x[chosen], y[chosen], score[chosen], cam_x[chosen], cam_y[chosen], info,
                              score_raw[chosen], line_support[chosen])
        if existing is None:
            os.replace(tmp, path)
        else:
            _replace_contents(tmp, path)
        return counts
    finally:
        remove_if_present(tmp)


def _extra_columns(score, score_raw, line_support):
    """score_raw and line_support as column values: float32 shortest decimals (score_raw None: the scores), None
    for a NaN support."""
    raw = np.asarray(score if score_raw is None else score_raw, np.float32)
    support = np.full(len(raw), np.nan, np.float32) if line_support is None else np.asarray(line_support, np.float32)
    return ([float(str(v)) for v in raw],
            [None if np.isnan(v) else float(str(v)) for v in support])


def _history(info, counts):
    return {"time": info["merged"], "store": info["store"], "threshold": info["threshold"], **counts}


def _replace_contents(tmp, path):
    """Put the database tmp in place of the one at path, inside SQLite (its backup API, one transaction): a
    program that has it open (QGIS, in WAL mode) reads the new contents, and no stale -wal file is ever paired
    with a renamed-in database. A file that is not SQLite at all is simply replaced."""
    try:
        with closing(sqlite3.connect(tmp)) as src, closing(sqlite3.connect(path, timeout=60)) as dst:
            src.backup(dst)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_NOTADB:
            raise
        os.replace(tmp, path)


def merge_candidates_gpkg(path, zoom, x, y, score, cam_x, cam_y, chosen, info, score_raw=None, line_support=None):
    """Merge candidates into an existing candidates GeoPackage by tile id, in one SQLite transaction (see the
    module docstring); returns the counts: reviewed_kept, updated, added, reviewed_below_threshold,
    unreviewed_dropped. score_raw, line_support: as write_candidates_gpkg."""
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    lon, lat, source = candidate_points(x, y, np.asarray(cam_x, np.float64), np.asarray(cam_y, np.float64), zoom)
    scores = [float(str(v)) for v in np.asarray(score, np.float32)]
    scores = list(zip(scores, *_extra_columns(score, score_raw, line_support)))  # (score, score_raw, line_support)
    new = {f"{a}-{b}-{zoom}": i for i, (a, b) in enumerate(zip(x.tolist(), y.tolist()))}
    db = gpkg_connect(path, timeout=60, isolation_level=None)  # explicit transaction; waits while QGIS writes
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            counts = _merge_rows(db, zoom, x, y, scores, lon, lat, source.tolist(), chosen.tolist(), new)
            info = {**info, "merges": [*_merges(db), _history(info, {"mode": "merged", **counts})]}
            _finish_gpkg(db, zoom, info)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    finally:
        db.close()
    return counts


def _merges(db):
    value = (db.execute("SELECT value FROM job WHERE key = 'merges'").fetchone() or ["[]"])[0]
    try:
        merges = json.loads(value)
    except ValueError:
        return []
    return merges if isinstance(merges, list) else []


def _merge_rows(db, zoom, x, y, scores, lon, lat, source, chosen, new):
    have = {row[1] for row in db.execute("PRAGMA table_info(candidates)")}
    for column, kind in (("in_results", "INTEGER DEFAULT 1"), ("score_raw", "REAL"), ("line_support", "REAL")):
        if column not in have:  # a file written before the column existed
            db.execute(f"ALTER TABLE candidates ADD COLUMN {column} {kind}")
    counts = dict.fromkeys(("reviewed_kept", "updated", "added", "reviewed_below_threshold", "unreviewed_dropped"), 0)
    updates, points, marks, drops = [], [], [], []
    for fid, tile_id, reviewed in db.execute(f"SELECT fid, tile_id, {_REVIEWED} FROM candidates").fetchall():
        i = new.pop(tile_id, None)
        counts["reviewed_kept"] += bool(reviewed)
        if i is not None and chosen[i]:
            counts["updated"] += 1
            updates.append((*scores[i], 1, fid))
            if not reviewed:  # a reviewed candidate keeps the point the reviewer saw (or moved)
                points.append((lon[i], lat[i], source[i], fid))
        elif reviewed:
            counts["reviewed_below_threshold"] += 1
            if i is None:  # not scored in this store: its last score stays
                marks.append((fid,))
            else:
                updates.append((*scores[i], 0, fid))
        else:
            counts["unreviewed_dropped"] += 1
            drops.append((fid,))
    db.executemany("UPDATE candidates SET score = ?, score_raw = ?, line_support = ?, in_results = ? WHERE fid = ?",
                   updates)
    db.executemany("UPDATE candidates SET point_lon = ?, point_lat = ?, point_source = ? WHERE fid = ?", points)
    db.executemany("UPDATE candidates SET in_results = 0 WHERE fid = ?", marks)
    db.executemany("DELETE FROM candidates WHERE fid = ?", drops)
    added = [i for i in new.values() if chosen[i]]
    counts["added"] = len(added)
    if added:
        k = np.array(added)
        w, n = tile_lonlat(x[k], y[k], zoom)
        e, s = tile_lonlat(x[k] + 1, y[k] + 1, zoom)
        db.executemany("INSERT INTO candidates (geom, tile_id, x, y, z, score, score_raw, line_support, rank, "
                       "point_lon, point_lat, point_source, status, in_results) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 'unreviewed', 1)",
                       [(g, f"{x[i]}-{y[i]}-{zoom}", int(x[i]), int(y[i]), zoom, *scores[i], lon[i], lat[i],
                         source[i]) for g, i in zip(gpkg_polygons(w, s, e, n), added)])
    return counts


def _finish_gpkg(db, zoom, info):
    """After rows changed: ranks, the candidate_points layer, extents, feature counts and the job table."""
    rows = db.execute("SELECT fid, score, rank, point_lon, point_lat, tile_id, point_source FROM candidates").fetchall()
    fid = np.array([r[0] for r in rows], np.int64)
    score = np.array([r[1] for r in rows], np.float64)  # NULL: NaN, ranked last
    x, y, _ = _tiles_of([r[5] for r in rows])
    order = np.lexsort((y, x, -score))
    rank = np.empty(len(rows), np.int64)
    rank[order] = np.arange(1, len(rows) + 1)
    db.executemany("UPDATE candidates SET rank = ? WHERE fid = ?",
                   [(int(r), int(f)) for r, f, row in zip(rank, fid, rows) if row[2] != r])

    # the points layer mirrors the candidates' points (a reviewer's moved point included); same fids
    tiled = x >= 0
    cx, cy = tile_lonlat(x + 0.5, y + 0.5, zoom)
    lon = np.array([c if r[3] is None else r[3] for r, c in zip(rows, cx.tolist())], np.float64)
    lat = np.array([c if r[4] is None else r[4] for r, c in zip(rows, cy.tolist())], np.float64)
    placed = tiled | np.array([r[3] is not None and r[4] is not None for r in rows], bool)
    want = {int(f): (g, r[5], r[1], r[6]) for f, g, r, ok in zip(fid, gpkg_points(lon, lat), rows, placed) if ok}
    have = {r[0]: r[1:] for r in db.execute("SELECT fid, geom, tile_id, score, point_source FROM candidate_points")}
    db.executemany("DELETE FROM candidate_points WHERE fid = ?", [(f,) for f in have if f not in want])
    db.executemany("UPDATE candidate_points SET geom = ?, tile_id = ?, score = ?, point_source = ? WHERE fid = ?",
                   [(*v, f) for f, v in want.items() if f in have and tuple(have[f]) != v])
    db.executemany("INSERT INTO candidate_points (fid, geom, tile_id, score, point_source) VALUES (?, ?, ?, ?, ?)",
                   [(f, *v) for f, v in want.items() if f not in have])

    x, y, lon, lat = x[tiled], y[tiled], lon[placed], lat[placed]
    w, n = tile_lonlat(x, y, zoom)
    e, s = tile_lonlat(x + 1, y + 1, zoom)
    extents = {"candidates": (w.min(), s.min(), e.max(), n.max()) if len(x) else (None,) * 4,
               "candidate_points": (lon.min(), lat.min(), lon.max(), lat.max()) if len(lon) else (None,) * 4}
    for table, bounds in extents.items():
        db.execute("UPDATE gpkg_contents SET min_x = ?, min_y = ?, max_x = ?, max_y = ?, "
                   "last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE table_name = ?",
                   (*(None if v is None else float(v) for v in bounds), table))
    db.execute("UPDATE gpkg_contents SET description = ? WHERE table_name = 'candidates'",
               (f"zoom-{zoom} tiles with P(tower) >= {info['threshold']:g} and reviewed ones, best first",))
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'gpkg_ogr_contents'").fetchone():  # GDAL's counts
        for table in ("candidates", "candidate_points"):
            db.execute(f"UPDATE gpkg_ogr_contents SET feature_count = (SELECT count(*) FROM {table}) "
                       "WHERE lower(table_name) = ?", (table,))
    db.executemany("INSERT OR REPLACE INTO job (key, value) VALUES (?, ?)",
                   [(key, value if isinstance(value, str) else json.dumps(value, default=str))
                    for key, value in info.items()])
