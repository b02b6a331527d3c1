"""Planted layouts for judging conflation: real towers, the OSM side with towers missing or misplaced, and
candidates where a model would put them; then the figures conflation is judged by.

    layout = corridors(seed)                       # parallel HV lines, synthetic but shaped like the Copperbelt's
    layout = on_real_towers(lon, lat, lines, seed)  # or real OSM towers, some taken out or moved
    layout.write(folder)                           # osm.geojson and candidates.gpkg
    figures(layout, candidates_helpers.rows(path)) # recall, hidden new towers, misplaced precision, with counts

Truth kinds of the real towers: mapped (OSM has it where it stands), removed (a tower of a mapped line that OSM
lacks), new_line (a tower of a line OSM lacks entirely, beside a mapped one), misplaced (OSM has it 35-90 m away).
Candidates are one per zoom-18 tile, as the model gives them: the tile's point on one of the towers in the tile
(chosen at random) with the model's point error (uniform in a disc of ERROR_M), clipped into the tile as the CAM
point is; a tower within EDGE_M of a tile edge is also seen by the neighbouring tile when that one has no tower of
its own; and false positives in empty tiles near the lines (truth -1).
"""

import json
import os

import numpy as np

from tests.fakes.candidates_helpers import make_candidates

ZOOM = 18
ERROR_M = 15.0
EDGE_M = 8.0
R = 6371008.8
KINDS = ("mapped", "removed", "new_line", "misplaced")


class Layout:
    def __init__(self, lon, lat, kind, osm_lon, osm_lat, lines, rng, fp_fraction=0.1):
        self.lon, self.lat, self.kind = np.asarray(lon), np.asarray(lat), np.asarray(kind)
        self.osm_lon, self.osm_lat = np.asarray(osm_lon), np.asarray(osm_lat)  # NaN where OSM lacks the tower
        self.lines = lines  # [[(lon, lat), ...]] of the OSM side
        self.tiles, self.points, self.truth = _plant(self.lon, self.lat, rng, fp_fraction)

    def osm_geojson(self):
        mapped = ~np.isnan(self.osm_lon)
        features = [{"type": "Feature", "properties": {"power": "tower"},
                     "geometry": {"type": "Point", "coordinates": [float(a), float(b)]}}
                    for a, b in zip(self.osm_lon[mapped], self.osm_lat[mapped])]
        features += [{"type": "Feature", "properties": {"power": "line"},
                      "geometry": {"type": "LineString", "coordinates": [list(map(float, p)) for p in line]}}
                     for line in self.lines if len(line) > 1]
        return {"type": "FeatureCollection", "features": features}

    def write(self, folder):
        """(candidates.gpkg, osm.geojson) in folder."""
        osm = os.path.join(folder, "osm.geojson")
        with open(osm, "w", encoding="utf-8") as f:
            json.dump(self.osm_geojson(), f)
        path = make_candidates(os.path.join(folder, "candidates.gpkg"), self.tiles, points=self.points)
        return path, osm

    def tile_ids(self):
        return [f"{x}-{y}-{ZOOM}" for x, y in self.tiles]


def _metres(lon0, lat0):
    """(to lon/lat, from lon/lat) for a local east/north plane in metres around lon0, lat0."""
    k = np.cos(np.radians(lat0))

    def to_lonlat(e, n):
        return lon0 + np.degrees(np.asarray(e) / (R * k)), lat0 + np.degrees(np.asarray(n) / R)

    def from_lonlat(lon, lat):
        return np.radians(np.asarray(lon) - lon0) * R * k, np.radians(np.asarray(lat) - lat0) * R

    return to_lonlat, from_lonlat


def _tile_fraction(lon, lat):
    n = 1 << ZOOM
    s = np.sin(np.radians(lat))
    return (np.asarray(lon) + 180.0) / 360.0 * n, (0.5 - np.log((1 + s) / (1 - s)) / (4 * np.pi)) * n


def _from_fraction(fx, fy):
    n = float(1 << ZOOM)
    return fx / n * 360.0 - 180.0, np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * fy / n))))


def _plant(lon, lat, rng, fp_fraction):
    """(tiles, points, truth) of the candidates (see the module docstring), best score first in random order."""
    fx, fy = _tile_fraction(lon, lat)
    tx, ty = np.floor(fx).astype(int), np.floor(fy).astype(int)
    metres_per_tile = 2 * np.pi * R * np.cos(np.radians(lat)) / (1 << ZOOM)
    by_tile = {}
    for i in rng.permutation(len(lon)):  # the tile's point goes to one of its towers, at random
        by_tile.setdefault((tx[i], ty[i]), int(i))
    for i in rng.permutation(len(lon)):  # towers on an edge are seen from the tile beside too
        edge = EDGE_M / metres_per_tile[i]
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            near = ((dx == -1 and fx[i] - tx[i] < edge) or (dx == 1 and tx[i] + 1 - fx[i] < edge)
                    or (dy == -1 and fy[i] - ty[i] < edge) or (dy == 1 and ty[i] + 1 - fy[i] < edge))
            if near:
                by_tile.setdefault((tx[i] + dx, ty[i] + dy), int(i))
    tiles, truth = list(by_tile), list(by_tile.values())
    # false positives: empty tiles within 3 tiles of a tower, the point anywhere in the tile
    around = sorted({(x + dx, y + dy) for x, y in by_tile for dx in range(-3, 4) for dy in range(-3, 4)} - set(by_tile))
    n_fp = min(len(around), int(round(fp_fraction * len(tiles))))
    fps = [around[k] for k in rng.choice(len(around), n_fp, replace=False)]
    tiles += fps
    truth += [-1] * len(fps)
    points = []
    for (x, y), i in zip(tiles, truth):
        if i < 0:
            px, py = x + rng.uniform(0.05, 0.95), y + rng.uniform(0.05, 0.95)
        else:
            r, a = ERROR_M * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            to_lonlat, _ = _metres(lon[i], lat[i])
            plon, plat = to_lonlat(r * np.cos(a), r * np.sin(a))
            px, py = _tile_fraction(plon, plat)
            px, py = np.clip(px, x + 1e-6, x + 1 - 1e-6), np.clip(py, y + 1e-6, y + 1 - 1e-6)  # CAM: in the tile
        plon, plat = _from_fraction(px, py)
        points.append((float(plon), float(plat)))
    order = rng.permutation(len(tiles))
    return [tiles[k] for k in order], [points[k] for k in order], np.array([truth[k] for k in order])


def _walk(rng, start, heading, spans):
    """Tower positions (metres) of a line: spans of 250-450 m, turning a few degrees at each tower."""
    pts = [np.asarray(start, float)]
    for _ in range(spans):
        heading += np.radians(rng.normal(0, 4))
        pts.append(pts[-1] + rng.uniform(250, 450) * np.array([np.cos(heading), np.sin(heading)]))
    return np.array(pts)


def _beside(rng, line, separation):
    """A parallel line's towers: abreast of the first line's, `separation` metres to its left, give or take."""
    d = np.gradient(line, axis=0)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1) / np.linalg.norm(d, axis=1)[:, None]
    along = d / np.linalg.norm(d, axis=1)[:, None]
    return line + normal * (separation + rng.uniform(-5, 5, (len(line), 1))) + along * rng.uniform(-30, 30,
                                                                                                  (len(line), 1))


def _moved(rng, xy, i):
    """Where OSM has tower i when it is misplaced: 35-90 m off, and at least 50 m from every other tower (so that
    the truth is plain: the node is no other tower's)."""
    others = np.delete(xy, i, axis=0)
    for _ in range(100):
        a, r = rng.uniform(0, 2 * np.pi), rng.uniform(35, 90)
        p = xy[i] + r * np.array([np.cos(a), np.sin(a)])
        if np.min(np.linalg.norm(others - p, axis=1), initial=np.inf) >= 50:
            break
    return p


def corridors(seed, lon0=28.2, lat0=-12.8, n_corridors=6, spans=24, removed=0.12, misplaced=0.06, fp_fraction=0.1):
    """Corridors of two or three parallel lines 40-80 m apart (spans 250-450 m) near lon0, lat0; in every third
    corridor one line is missing from OSM altogether. Of the mapped lines' towers, `removed` are missing from OSM
    (the line keeps its vertex there: taken out of the file as points, as in issue 29's experiment) and
    `misplaced` are 35-90 m off in OSM (the line runs through OSM's position)."""
    rng = np.random.default_rng(seed)
    to_lonlat, _ = _metres(lon0, lat0)
    towers, kinds, line_of = [], [], []
    for c in range(n_corridors):
        while True:  # corridors apart from each other: only a corridor's own lines stand close
            first = _walk(rng, rng.uniform(-6000, 6000, 2), rng.uniform(0, 2 * np.pi), spans)
            group = [first, _beside(rng, first, rng.uniform(40, 80))]
            if rng.uniform() < 0.5:
                group.append(_beside(rng, first, -rng.uniform(40, 80)))
            new = np.concatenate(group)
            if not towers or np.min(np.linalg.norm(new[:, None] - np.concatenate(towers)[None], axis=2)) > 300:
                break
        for k, line in enumerate(group):
            towers.append(line)
            kinds.append("new_line" if (c % 3 == 2 and k == 1) else "mapped")
            line_of.append(len(line))
    xy = np.concatenate(towers)
    kind = np.concatenate([[k] * n for k, n in zip(kinds, line_of)]).astype(object)
    mapped = np.flatnonzero(kind == "mapped")
    picked = rng.permutation(mapped)
    n_removed, n_misplaced = int(round(removed * len(mapped))), int(round(misplaced * len(mapped)))
    kind[picked[:n_removed]] = "removed"
    kind[picked[n_removed:n_removed + n_misplaced]] = "misplaced"
    osm_xy = xy.copy()
    for i in np.flatnonzero(kind == "misplaced"):
        osm_xy[i] = _moved(rng, xy, i)
    lon, lat = to_lonlat(xy[:, 0], xy[:, 1])
    olon, olat = to_lonlat(osm_xy[:, 0], osm_xy[:, 1])
    lines, start = [], 0
    for n, k in zip(line_of, kinds):
        if k == "mapped":
            lines.append(list(zip(olon[start:start + n], olat[start:start + n])))
        start += n
    absent = np.isin(kind, ("removed", "new_line"))
    olon, olat = np.where(absent, np.nan, olon), np.where(absent, np.nan, olat)
    return Layout(lon, lat, kind, olon, olat, lines, rng, fp_fraction)


def on_real_towers(lon, lat, lines, seed, removed=0.10, misplaced=0.05, fp_fraction=0.1):
    """Real towers as the truth, lines as coordinate lists through them; OSM lacks `removed` of the towers (the
    lines keep their vertices there, as in issue 29's experiment) and has `misplaced` of them 35-90 m off (the lines'
    vertices there move with them)."""
    rng = np.random.default_rng(seed)
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    kind = np.full(len(lon), "mapped", dtype=object)
    picked = rng.permutation(len(lon))
    n_removed, n_misplaced = int(round(removed * len(lon))), int(round(misplaced * len(lon)))
    kind[picked[:n_removed]] = "removed"
    moved = picked[n_removed:n_removed + n_misplaced]
    kind[moved] = "misplaced"
    olon, olat = lon.copy(), lat.copy()
    for i in moved:
        to_lonlat, from_lonlat = _metres(lon[i], lat[i])
        olon[i], olat[i] = to_lonlat(*_moved(rng, np.column_stack(from_lonlat(lon, lat)), i))
    where = {(lon[i], lat[i]): (olon[i], olat[i]) for i in moved}
    lines = [[where.get(tuple(c), tuple(c)) for c in line] for line in lines]
    olon[kind == "removed"] = np.nan
    olat[kind == "removed"] = np.nan
    return Layout(lon, lat, kind, olon, olat, lines, rng, fp_fraction)


def figures(layout, rows):
    """The figures conflation is judged by, from the conflated candidates ({tile_id: row}), with their counts."""
    got = [rows[t] for t in layout.tile_ids()]
    status = np.array([r["status"] for r in got], dtype=object)
    flags = [set((r["osm_flags"] or "").split(",")) - {""} for r in got]
    truth = layout.truth
    kind = np.where(truth >= 0, layout.kind[np.maximum(truth, 0)], "false_positive")
    marked = status == "already_mapped"
    flagged = np.array(["possibly_misplaced" in f for f in flags])
    on_line = np.array(["on_mapped_line" in f for f in flags])
    new = np.isin(kind, ("removed", "new_line"))

    def ratio(part, whole):
        return {"value": round(part / whole, 3) if whole else None, "of": int(whole), "count": int(part)}

    return {
        "candidates": len(got),
        "already_mapped_recall": ratio((marked & (kind == "mapped")).sum(), (kind == "mapped").sum()),
        "new_towers_hidden": ratio((marked & new).sum(), new.sum()),
        "removed_flagged_on_mapped_line": ratio((on_line & (kind == "removed")).sum(), (kind == "removed").sum()),
        "possibly_misplaced_precision": ratio((flagged & (kind == "misplaced")).sum(), flagged.sum()),
        "possibly_misplaced_recall": ratio((flagged & (kind == "misplaced")).sum(), (kind == "misplaced").sum()),
        "false_positives_marked_mapped": ratio((marked & (kind == "false_positive")).sum(),
                                               (kind == "false_positive").sum()),
    }
