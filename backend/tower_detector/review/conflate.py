"""Conflation: which candidates OSM already has, which new towers stand on a mapped line, which mapped supports
look misplaced.

    summary = conflate("zambia.gpkg", "overpass", duplicate_m=30)

The OSM side comes from any source osm.load_towers reads (overpass, overpass:URL, .osm.pbf/.osm, GeoJSON, a
saved Overpass JSON answer, GeoPackage): supports (power=tower, portal and pole points, read in one pass) and lines
(power=line and minor_line ways; not from GeoPackage files, which give points only). Overpass is asked only around
the candidates. Each candidate is judged by its tower point (point_lon/point_lat: the model's CAM point, or where
the reviewer moved it), not by its tile: towers of parallel lines stand 40-80 m apart, often in one tile.
  already_mapped      a support lies within duplicate_m (DUPLICATE_M) of the point, and is not a tower of another
                      line: when the point lies nearer a mapped line that the support is not on, the candidate is
                      that line's tower (on_mapped_line). A candidate still `unreviewed` gets status already_mapped
                      (reviewer CONFLATE_REVIEWER); a human decision is never overwritten. A status conflate set
                      itself goes back to unreviewed when a later run finds no support there any more. Points that
                      are only the tile's centre (point_source tile_centre) do not say where in the tile the tower
                      stands: for them a support inside the tile counts.
  on_mapped_line      not already mapped, and a mapped line passes within duplicate_m of the point (crosses the
                      tile, for a tile-centre point): a tower the line's mapping lacks. It stays in the review queue.
  possibly_misplaced  not already mapped; the nearest support is beyond duplicate_m and within MISPLACED_M of the
                      point, and nothing else explains it: no other candidate point is within duplicate_m of it, its
                      tile is not a candidate (the model saw no tower there), and this is the candidate nearest to
                      it. OSM's support may then be off the tower seen here. Not for tile-centre points.
The flags go to column osm_flags (comma-separated, '' when none), the distance from the point to the nearest
support within SEARCH_M to osm_distance_m (metres; NULL when none is that near) and its id (node/123) to osm_ref;
the columns are added when missing. The supports within SEARCH_M of the candidate tiles go to the attributes table
osm_supports (ref, power, lon, lat): what the exports that add nodes check confirmed points against. Every run
recomputes all of it from scratch, so running it twice changes nothing more. The job table records the last run
(key `conflation`, with duplicate_m).

Metres: candidates and OSM features go to Web Mercator, where STRtrees find the pairs (each query widened by
1/cos(latitude), the projection's scale there); distances are then great-circle metres (exports.haversine_m), or,
to lines, Mercator distances times cos(latitude).
"""

import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import shapely

from ..common.errors import UserError
from ..geo.areas import Area
from ..geo.cover import tile_lonlat
from ..geo.tilemath import ORIGIN_SHIFT
from ..results import gpkg_connect
from ..sources.osm import Towers, load_lines, load_towers
from .exports import haversine_m, mercator, pairs_within, read_candidates

SUPPORTS = "power=tower,portal,pole"  # towers and poles come from one read, then split by their power value
LINES = "power=line,minor_line"
DUPLICATE_M = 30.0  # a mapped support this near a tower point is that tower (points are off by up to ~15 m)
MISPLACED_M = 100.0
SEARCH_M = 200.0  # the nearest support is looked for this far; Overpass is asked this far around the tiles
ON_LINE_M = 1.0  # a support this near a line is one of its towers (OSM's towers are its ways' vertices)
CONFLATE_REVIEWER = "tower-detector conflate"
_NEW_COLUMNS = (("osm_flags", "TEXT"), ("osm_distance_m", "REAL"), ("osm_ref", "TEXT"))
_SUPPORTS_TABLE = ("CREATE TABLE IF NOT EXISTS osm_supports (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
                   "ref TEXT, power TEXT, lon REAL, lat REAL)")


def conflate(candidates, source, *, duplicate_m=DUPLICATE_M, cache_dir=None, progress=None, log=None):
    """Flag the candidates against OSM (see the module docstring); return the summary of counts per outcome."""
    say = log or (lambda message, **fields: None)
    duplicate_m = check_duplicate_m(duplicate_m)
    rows, _ = read_candidates(candidates)
    if not len(rows["fid"]):
        raise UserError(f"no candidates in {os.path.basename(candidates)}: nothing to conflate")
    zoom = int(rows["z"][0])
    supports = load_supports(source, rows, cache_dir=cache_dir, progress=progress)
    area = _around(rows, zoom, SEARCH_M) if _is_overpass(source) else None
    lines = load_lines(source, tag_filter=LINES, area=area, cache_dir=cache_dir, progress=progress)
    kinds = np.array(supports.values, dtype=object)
    n_towers, n_poles = int(np.isin(kinds, ("tower", "portal")).sum()), int((kinds == "pole").sum())
    for note in dict.fromkeys(supports.notes + lines.notes):
        say(note)
    say(f"{n_towers} towers, {n_poles} poles ({SUPPORTS}) and {len(lines)} lines ({LINES}) from {supports.source}")

    n = len(rows["fid"])
    lon, lat = rows["point_lon"], rows["point_lat"]
    centre = rows["point_source"] == "tile_centre"
    # the nearest support of each point: its distance, id and index
    distance, ref, nearest = np.full(n, np.nan), np.full(n, None, dtype=object), np.full(n, -1)
    i, j, metres = _nearest(lon, lat, supports.lon, supports.lat, SEARCH_M)
    distance[i], ref[i], nearest[i] = np.round(metres, 1), np.array(supports.ids, dtype=object)[j], j
    # the mapped line nearest each point within duplicate_m, and whether the point's nearest support is on it
    line_near, other_line = _line_near(lon, lat, nearest, supports, lines, duplicate_m)
    # points that are only the tile's centre: the tile decides
    tiles = {key: rows[key][centre] for key in ("fid", "x", "y")}
    in_tile, crossed = np.zeros(n, bool), np.zeros(n, bool)
    in_tile[np.flatnonzero(centre)[_near_tiles(tiles, zoom, supports, 0.0)[0]]] = True
    crossed[centre] = _lines_in_tiles(tiles, zoom, lines)
    mapped = np.where(centre, in_tile, (distance <= duplicate_m) & ~other_line)
    on_line = ~mapped & np.where(centre, crossed, line_near)
    misplaced = ~mapped & ~centre & _unexplained(rows, zoom, nearest, distance, supports, duplicate_m,
                                                 line_near & ~other_line)
    flags = [",".join(name for name, on in (("already_mapped", a), ("on_mapped_line", b), ("possibly_misplaced", c))
                      if on)
             for a, b, c in zip(mapped.tolist(), on_line.tolist(), misplaced.tolist())]

    # conflate decides only for rows no human has decided: unreviewed ones, and those it marked itself
    ours = (rows["status"] == "unreviewed") | ((rows["status"] == "already_mapped")
                                               & (rows["reviewer"] == CONFLATE_REVIEWER))
    set_mapped = mapped & (rows["status"] == "unreviewed")
    reverted = ours & ~mapped & (rows["status"] == "already_mapped")
    _, near_tiles = _near_tiles(rows, zoom, supports, SEARCH_M)
    kept = supports.subset(np.isin(np.arange(len(supports)), near_tiles))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summary = {"candidates": n, "towers": n_towers, "poles": n_poles, "lines": len(lines),
               "source": supports.source, "duplicate_m": duplicate_m, "already_mapped": int(mapped.sum()),
               "status_set": int(set_mapped.sum()), "status_reverted": int(reverted.sum()),
               "human_decisions_kept": int((mapped & ~ours).sum()), "on_mapped_line": int(on_line.sum()),
               "possibly_misplaced": int(misplaced.sum()), "no_flags": int(sum(not f for f in flags)),
               "supports_kept": len(kept)}
    _write(candidates, rows["fid"], flags, distance, ref, set_mapped, reverted, now, summary, kept)
    return summary


def check_duplicate_m(value):
    if not (isinstance(value, (int, float)) and 0 < value <= MISPLACED_M):
        raise UserError(f"--duplicate-distance must be more than 0 and at most {MISPLACED_M:g} metres, not {value}")
    return float(value)


def _is_overpass(source):
    return str(source).strip().startswith("overpass")


def load_supports(source, rows, cache_dir=None, progress=None):
    """The towers, portals and poles of an OSM source (Overpass: around the candidate tiles of rows), as Towers
    whose values are their power tag."""
    area = _around(rows, int(rows["z"][0]), SEARCH_M) if _is_overpass(source) else None
    return load_towers(source, tag_filter=SUPPORTS, area=area, cache_dir=cache_dir, progress=progress)


def stored_supports(candidates):
    """(the supports the last conflation kept in the GeoPackage as Towers, its job record), or (None, None) when the
    candidates were never conflated (by a version that keeps them)."""
    try:
        with closing(sqlite3.connect(Path(candidates).resolve().as_uri() + "?mode=ro", uri=True)) as db:
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'osm_supports'").fetchone():
                return None, None
            found = db.execute("SELECT ref, power, lon, lat FROM osm_supports ORDER BY id").fetchall()
            record = db.execute("SELECT value FROM job WHERE key = 'conflation'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot read {candidates}: {exc}") from None
    ref, power, lon, lat = zip(*found) if found else ((), (), (), ())
    record = json.loads(record[0]) if record else {}
    return Towers(lon, lat, ref, record.get("source", "the last conflation"), values=power), record


def _nearest(lon, lat, tree_lon, tree_lat, within_m):
    """(i, j, metres): for each point i, the nearest tree point j, where it is within within_m."""
    if not len(tree_lon) or not len(lon):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    tx, ty = mercator(tree_lon, tree_lat)
    px, py = mercator(lon, lat)
    reach = within_m / np.cos(np.radians(np.abs(lat).max())) * 1.02  # in Mercator metres, enough everywhere
    i, j = shapely.STRtree(shapely.points(tx, ty)).query_nearest(shapely.points(px, py), max_distance=reach,
                                                                  all_matches=False)
    metres = haversine_m(lon[i], lat[i], tree_lon[j], tree_lat[j])
    ok = metres <= within_m
    return i[ok], j[ok], metres[ok]


def _segments(lines):
    """The lines cut into their segments, in Web Mercator (small envelopes make quick trees): (segments, the line
    of each)."""
    merc = shapely.transform(lines.geometries, lambda xy: np.column_stack(mercator(xy[:, 0], xy[:, 1])))
    coords, line = shapely.get_coordinates(merc, return_index=True)
    start = np.flatnonzero(line[1:] == line[:-1])
    return shapely.linestrings(np.stack([coords[start], coords[start + 1]], axis=1)), line[start]


def _line_near(lon, lat, nearest, supports, lines, within_m):
    """(a mapped line passes within within_m of the point, and the point's nearest support is not on that line)."""
    n = len(lon)
    near, other = np.zeros(n, bool), np.zeros(n, bool)
    if not len(lines):
        return near, other
    segments, line_of = _segments(lines)
    tree = shapely.STRtree(segments)
    px, py = mercator(lon, lat)
    points = shapely.points(px, py)
    scale = np.cos(np.radians(lat))  # Mercator metres -> metres, here
    i, k = tree.query_nearest(points, max_distance=within_m / scale.min() * 1.02, all_matches=False)
    ok = shapely.distance(points[i], segments[k]) * scale[i] <= within_m
    i, k = i[ok], k[ok]
    near[i] = True
    i, k = i[nearest[i] >= 0], k[nearest[i] >= 0]
    if not len(i):
        return near, other
    # the lines each of those supports is on
    slon, slat = supports.lon[nearest[i]], supports.lat[nearest[i]]
    sx, sy = mercator(slon, slat)
    spoints, sscale = shapely.points(sx, sy), np.cos(np.radians(slat))
    t, g = tree.query(spoints, predicate="dwithin", distance=ON_LINE_M / sscale.min() * 1.02)
    on = shapely.distance(spoints[t], segments[g]) * sscale[t] <= ON_LINE_M
    on_lines = np.unique(t[on] * len(lines) + line_of[g[on]])
    other[i] = ~np.isin(np.arange(len(i)) * len(lines) + line_of[k], on_lines)
    return near, other


def _unexplained(rows, zoom, nearest, distance, supports, duplicate_m, on_its_line):
    """Mask of the candidates whose nearest support lies beyond duplicate_m, within MISPLACED_M, and is explained by
    nothing else: no other point within duplicate_m of it, no candidate tile over it, and no nearer candidate."""
    n = len(rows["fid"])
    seen = (rows["point_source"] != "tile_centre") & (rows["status"] != "false_positive")  # points that show a tower
    far = seen & (distance > duplicate_m) & (distance <= MISPLACED_M)
    out = np.zeros(n, bool)
    if not far.any():
        return out
    lon, lat = rows["point_lon"], rows["point_lat"]
    support = np.unique(nearest[far])
    slon, slat = supports.lon[support], supports.lat[support]
    explained = np.zeros(len(support), bool)
    k, _, _ = pairs_within(slon, slat, lon[seen], lat[seen], duplicate_m)
    explained[k] = True
    sx, sy = mercator(slon, slat)
    size = 2 * ORIGIN_SHIFT / (1 << zoom)
    tiles = np.floor((sx + ORIGIN_SHIFT) / size).astype(np.int64) * (1 << zoom) + np.floor(
        (ORIGIN_SHIFT - sy) / size).astype(np.int64)
    # the candidate nearest each support, among those that show a tower
    candidates = np.flatnonzero(seen)
    k, c, _ = _nearest(slon, slat, lon[candidates], lat[candidates], MISPLACED_M)
    nearest_candidate = np.full(len(support), -1)
    nearest_candidate[k] = candidates[c]
    # a candidate tile over the support: the model saw a tower there, unless it is this candidate's own tile and
    # this point lies on the support's line (then the point may well be where the support really stands)
    codes = rows["x"] * (1 << zoom) + rows["y"]
    own = (tiles == codes[nearest_candidate]) & on_its_line[nearest_candidate]
    explained |= np.isin(tiles, codes) & ~own
    rank = np.searchsorted(support, nearest[far])
    out[np.flatnonzero(far)] = ~explained[rank] & (nearest_candidate[rank] == np.flatnonzero(far))
    return out


def _around(rows, zoom, margin_m):
    """The candidate tiles widened by margin_m, merged: the area Overpass is asked about."""
    w, n = tile_lonlat(rows["x"], rows["y"], zoom)
    e, s = tile_lonlat(rows["x"] + 1, rows["y"] + 1, zoom)
    pad_lat = margin_m * 1.1 / 111_000.0  # degrees; generous, so nothing near a tile's edge is missed
    pad_lon = pad_lat / np.cos(np.radians(np.maximum(np.abs(n), np.abs(s))))
    return Area(shapely.union_all(shapely.box(w - pad_lon, s - pad_lat, e + pad_lon, n + pad_lat)), "the candidates")


def _tile_boxes(rows, zoom):
    """(minx, miny, maxx, maxy) of the candidate tiles in Web-Mercator metres."""
    size = 2 * ORIGIN_SHIFT / (1 << zoom)
    minx, maxy = -ORIGIN_SHIFT + rows["x"] * size, ORIGIN_SHIFT - rows["y"] * size
    return minx, maxy - size, minx + size, maxy


def _near_tiles(rows, zoom, supports, metres):
    """(i, j): candidate i and support j within metres of its tile (a round buffer; 0: inside the tile)."""
    if not len(supports) or not len(rows["x"]):
        return np.zeros(0, int), np.zeros(0, int)
    minx, miny, maxx, maxy = _tile_boxes(rows, zoom)
    # the buffer in Mercator metres at each tile (its scale is 1/cos(lat)), a little wide; metres decide below
    _, lat = tile_lonlat(rows["x"] + 0.5, rows["y"] + 0.5, zoom)
    pad = metres / np.cos(np.radians(lat)) * 1.02
    sx, sy = mercator(supports.lon, supports.lat)
    i, j = shapely.STRtree(shapely.points(sx, sy)).query(shapely.box(minx - pad, miny - pad, maxx + pad, maxy + pad))
    # the nearest point of the tile to each support, back in lon/lat, then the true distance
    nx = np.clip(sx[j], minx[i], maxx[i])
    ny = np.clip(sy[j], miny[i], maxy[i])
    nlon = np.degrees(nx / ORIGIN_SHIFT * np.pi)
    nlat = np.degrees(np.arctan(np.sinh(ny / ORIGIN_SHIFT * np.pi)))
    near = haversine_m(nlon, nlat, supports.lon[j], supports.lat[j]) <= metres
    return i[near], j[near]


def _lines_in_tiles(rows, zoom, lines):
    """Mask of the candidates whose tile a line crosses."""
    crossed = np.zeros(len(rows["fid"]), bool)
    if len(lines) and len(rows["fid"]):
        i, _ = shapely.STRtree(_segments(lines)[0]).query(shapely.box(*_tile_boxes(rows, zoom)),
                                                          predicate="intersects")
        crossed[i] = True
    return crossed


def _write(path, fid, flags, distance, ref, set_mapped, reverted, now, summary, supports):
    try:
        with closing(gpkg_connect(path)) as db, db:
            have = {row[1] for row in db.execute("PRAGMA table_info(candidates)")}
            for name, kind in _NEW_COLUMNS:
                if name not in have:
                    db.execute(f"ALTER TABLE candidates ADD COLUMN {name} {kind}")
            db.executemany("UPDATE candidates SET osm_flags = ?, osm_distance_m = ?, osm_ref = ? WHERE fid = ?",
                           zip(flags, [None if np.isnan(d) else float(d) for d in distance], ref.tolist(),
                               fid.tolist()))
            db.executemany("UPDATE candidates SET status = 'already_mapped', reviewer = ?, reviewed_at = ? "
                           "WHERE fid = ?", [(CONFLATE_REVIEWER, now, f) for f in fid[set_mapped].tolist()])
            db.executemany("UPDATE candidates SET status = 'unreviewed', reviewer = NULL, reviewed_at = NULL "
                           "WHERE fid = ?", [(f,) for f in fid[reverted].tolist()])
            db.execute("UPDATE gpkg_contents SET last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                       "WHERE table_name = 'candidates'")
            db.execute(_SUPPORTS_TABLE)
            db.execute("DELETE FROM osm_supports")
            db.executemany("INSERT INTO osm_supports (ref, power, lon, lat) VALUES (?, ?, ?, ?)",
                           zip(supports.ids, supports.values, supports.lon.tolist(), supports.lat.tolist()))
            db.execute("INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier, description) VALUES "
                       "('osm_supports', 'attributes', 'osm_supports', 'OSM towers, portals and poles near the "
                       "candidates, from the last conflation')")
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job'").fetchone():
                db.execute("INSERT OR REPLACE INTO job (key, value) VALUES ('conflation', ?)",
                           (json.dumps({"time": now, **summary}),))
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot update {path}: {exc}") from None
