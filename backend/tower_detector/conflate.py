"""Conflation: which candidates OSM already has, which OSM towers look misplaced, where lines lack towers.

    summary = conflate("zambia.gpkg", "overpass", buffer_m=20)

The OSM side comes from any source osm.load_towers reads (overpass, overpass:URL, .osm.pbf/.osm, GeoJSON, a
saved Overpass JSON answer, GeoPackage): towers (power=tower and portal points), poles (power=pole) and lines
(power=line and minor_line ways; not from GeoPackage files, which give points only). Towers and poles are the
supports, read in one pass (split by their power value). Overpass is asked only around the candidates. For
each candidate of the `candidates` layer:
  already_mapped      a support lies within the tile buffered by buffer_m metres (a round buffer). A candidate
                      still `unreviewed` gets status already_mapped (reviewer CONFLATE_REVIEWER); a human decision
                      is never overwritten. A status conflate set itself goes back to unreviewed when a later run
                      finds no support there any more.
  possibly_misplaced  the nearest tower is MISPLACED_M (30-100 m) from the candidate point: OSM's tower may be
                      off the one seen in the imagery. Not for points that are only the tile's centre
                      (point_source tile_centre): their distance says nothing.
  line_without_tower  a mapped line crosses the tile but no support is within the buffered tile.
The flags go to column osm_flags (comma-separated, '' when none), the distance from the point to the nearest
tower within SEARCH_M to osm_distance_m (metres; NULL when none is that near) and its id (node/123) to osm_ref;
the columns are added when missing. Every run recomputes them from scratch, so running it twice changes nothing
more. The job table records the last run (key `conflation`).

Metres: candidates and OSM features go to Web Mercator, where an STRtree finds the pairs (each query widened by
1/cos(latitude), the projection's scale there); distances are then great-circle metres (exports.haversine_m).
100k candidates against 100k towers take a few seconds.
"""

import json
import os
import sqlite3
import time
from contextlib import closing

import numpy as np
import shapely

from .areas import Area
from .events import UserError
from .exports import haversine_m, mercator, read_candidates
from .osm import load_lines, load_towers
from .results import gpkg_connect, tile_lonlat
from .tilemath import ORIGIN_SHIFT

SUPPORTS = "power=tower,portal,pole"  # towers and poles come from one read, then split by their power value
LINES = "power=line,minor_line"
MISPLACED_M = (30.0, 100.0)
SEARCH_M = 200.0  # the nearest tower is looked for this far; Overpass is asked this far around the tiles
CONFLATE_REVIEWER = "tower-detector conflate"
_NEW_COLUMNS = (("osm_flags", "TEXT"), ("osm_distance_m", "REAL"), ("osm_ref", "TEXT"))


def conflate(candidates, source, *, buffer_m=20.0, cache_dir=None, progress=None, log=None):
    """Flag the candidates against OSM (see the module docstring); return the summary of counts per outcome."""
    say = log or (lambda message, **fields: None)
    if not (isinstance(buffer_m, (int, float)) and 0 <= buffer_m <= 1000):
        raise UserError(f"--buffer must be 0 to 1000 metres, not {buffer_m}")
    rows, _ = read_candidates(candidates)
    if not len(rows["fid"]):
        raise UserError(f"no candidates in {os.path.basename(candidates)}: nothing to conflate")
    zoom = int(rows["z"][0])
    area = _around(rows, zoom, max(buffer_m, SEARCH_M)) if str(source).startswith("overpass") else None
    kw = {"area": area, "cache_dir": cache_dir, "progress": progress}
    supports = load_towers(source, tag_filter=SUPPORTS, **kw)
    towers, poles = supports.of_kind("tower", "portal"), supports.of_kind("pole")
    lines = load_lines(source, tag_filter=LINES, **kw)
    for note in dict.fromkeys(supports.notes + lines.notes):
        say(note)
    say(f"{len(towers)} towers, {len(poles)} poles ({SUPPORTS}) and {len(lines)} lines ({LINES}) from "
        f"{supports.source}")

    n = len(rows["fid"])
    lon, lat = rows["point_lon"], rows["point_lat"]
    mapped = _supports_in_tiles(rows, zoom, towers, buffer_m) | _supports_in_tiles(rows, zoom, poles, buffer_m)
    distance, ref = np.full(n, np.nan), np.full(n, None, dtype=object)
    if len(towers):
        tx, ty = mercator(towers.lon, towers.lat)
        px, py = mercator(lon, lat)
        reach = SEARCH_M / np.cos(np.radians(np.abs(lat).max())) * 1.02  # in Mercator metres, enough everywhere
        i, j = shapely.STRtree(shapely.points(tx, ty)).query_nearest(shapely.points(px, py), max_distance=reach,
                                                                      all_matches=False)
        metres = haversine_m(lon[i], lat[i], towers.lon[j], towers.lat[j])
        near = metres <= SEARCH_M
        distance[i[near]] = np.round(metres[near], 1)
        ref[i[near]] = np.array(towers.ids, dtype=object)[j[near]]
    misplaced = (distance >= MISPLACED_M[0]) & (distance <= MISPLACED_M[1]) & (rows["point_source"] != "tile_centre")
    line_only = _lines_in_tiles(rows, zoom, lines) & ~mapped
    flags = [",".join(name for name, on in (("already_mapped", a), ("possibly_misplaced", b),
                                             ("line_without_tower", c)) if on)
             for a, b, c in zip(mapped.tolist(), misplaced.tolist(), line_only.tolist())]

    # conflate decides only for rows no human has decided: unreviewed ones, and those it marked itself
    ours = (rows["status"] == "unreviewed") | ((rows["status"] == "already_mapped")
                                               & (rows["reviewer"] == CONFLATE_REVIEWER))
    set_mapped = mapped & (rows["status"] == "unreviewed")
    reverted = ours & ~mapped & (rows["status"] == "already_mapped")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summary = {"candidates": n, "towers": len(towers), "poles": len(poles), "lines": len(lines),
               "source": towers.source, "buffer_m": buffer_m, "already_mapped": int(mapped.sum()),
               "status_set": int(set_mapped.sum()), "status_reverted": int(reverted.sum()),
               "human_decisions_kept": int((mapped & ~ours).sum()), "possibly_misplaced": int(misplaced.sum()),
               "line_without_tower": int(line_only.sum()), "no_flags": int(sum(not f for f in flags))}
    _write(candidates, rows["fid"], flags, distance, ref, set_mapped, reverted, now, summary)
    return summary


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


def _supports_in_tiles(rows, zoom, supports, buffer_m):
    """Mask of the candidates with a support within their tile buffered by buffer_m (a round buffer)."""
    mapped = np.zeros(len(rows["fid"]), bool)
    if not len(supports):
        return mapped
    minx, miny, maxx, maxy = _tile_boxes(rows, zoom)
    # the buffer in Mercator metres at each tile (its scale is 1/cos(lat)), a little wide; metres decide below
    _, lat = tile_lonlat(rows["x"] + 0.5, rows["y"] + 0.5, zoom)
    pad = buffer_m / np.cos(np.radians(lat)) * 1.02
    sx, sy = mercator(supports.lon, supports.lat)
    i, j = shapely.STRtree(shapely.points(sx, sy)).query(shapely.box(minx - pad, miny - pad, maxx + pad, maxy + pad))
    # the nearest point of the tile to each support, back in lon/lat, then the true distance
    nx = np.clip(sx[j], minx[i], maxx[i])
    ny = np.clip(sy[j], miny[i], maxy[i])
    nlon = np.degrees(nx / ORIGIN_SHIFT * np.pi)
    nlat = np.degrees(np.arctan(np.sinh(ny / ORIGIN_SHIFT * np.pi)))
    near = haversine_m(nlon, nlat, supports.lon[j], supports.lat[j]) <= buffer_m
    mapped[i[near]] = True
    return mapped


def _lines_in_tiles(rows, zoom, lines):
    """Mask of the candidates whose tile a line crosses."""
    crossed = np.zeros(len(rows["fid"]), bool)
    if len(lines):
        merc = shapely.transform(lines.geometries, lambda xy: np.column_stack(mercator(xy[:, 0], xy[:, 1])))
        i, _ = shapely.STRtree(merc).query(shapely.box(*_tile_boxes(rows, zoom)), predicate="intersects")
        crossed[i] = True
    return crossed


def _write(path, fid, flags, distance, ref, set_mapped, reverted, now, summary):
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
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job'").fetchone():
                db.execute("INSERT OR REPLACE INTO job (key, value) VALUES ('conflation', ?)",
                           (json.dumps({"time": now, **summary}),))
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot update {path}: {exc}") from None
