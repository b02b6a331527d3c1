"""Line-topology re-scoring of candidate tiles: towers stand in chains, one span (250-450 m) apart, so a tile with
scored neighbours a span away on either side is more likely a tower, and an isolated one (a boulder cluster, a
shed) less likely.

    rescored, support = rescore_tiles(x, y, zoom, score, cam_x, cam_y, lines=None, floor=FLOOR)

For each tile scoring at least `floor` (the others are left as they are, support NaN), its neighbours are the
other such tiles whose points (the CAM point, else the tile centre) lie NEAR_M..FAR_M away on the ground
(Web-Mercator metres x cos(latitude)); nearer ones are the same tower's other tiles or clutter, not the next tower.
    pair support: the best pair of neighbours whose directions are within OPPOSITE_DEG of opposite (the tile
        sits mid-line), worth the geometric mean of their two scores;
    end support: the best single neighbour, worth END_SHARE of its score (the tile may be a line's end);
    line support: ON_LINE_SUPPORT when the point is within LINE_M of a mapped power=line (lines, optional).
support = the largest of the three, in 0..1, and the re-scored value moves the score's logit by a straight line in
it, from -PENALTY (no support: isolated) to +GAIN (full support):
    rescored = sigmoid(logit(score) - PENALTY + (GAIN + PENALTY) * support)
The neighbours' own raw scores are used (one pass, no iteration), and only the MAX_NEIGHBOURS best of a tile's
neighbours are paired. Where it hurts: a line's first tower, whose next tower scored low (end support only), a
single tower on its own, and a tower whose neighbours the detector missed (a gap), all lose; a cluster of
confusers a span apart in opposite directions gains.

Scale: neighbours are found by hashing points into cells FAR_M wide (no scipy), a batch of tiles at a time, so
memory grows with the tiles at or above the floor, not with the job.
"""

import math

import numpy as np

from ..geo.cover import tile_lonlat
from ..geo.tilemath import ORIGIN_SHIFT
from ..training.evaluate import logit

NEAR_M, FAR_M = 200.0, 500.0  # a neighbour on the line: about one span away (spans are 250-450 m)
OPPOSITE_DEG = 30.0  # two neighbours make a line through the tile when their directions are this near opposite
END_SHARE = 0.5  # a lone neighbour (a line's end) counts this share of its score
LINE_M = 60.0  # a point this near a mapped power=line is on it
ON_LINE_SUPPORT = 0.5  # what being on a mapped line is worth (the line also crosses tiles between its towers)
GAIN = 2.0  # logit added at full support
PENALTY = 1.0  # logit taken from a tile without any support
FLOOR = 0.05  # the lowest score that is re-scored or counted as a neighbour (results lowers it for a low cut)
MAX_NEIGHBOURS = 12  # the best neighbours of a tile that are paired
BATCH = 20_000  # tiles whose neighbours are gathered at once (memory: about BATCH x MAX_NEIGHBOURS^2 floats)


def floor_for(cut):
    """The floor for a candidate cut: FLOOR, or lower when the largest boost (GAIN) could lift a score below FLOOR
    to the cut, so that no tile that could reach the cut is left out."""
    return min(FLOOR, float(_sigmoid(logit([cut])[0] - GAIN)))


def rescore(score, support):
    """The re-scored values (see the module docstring); the score itself where support is NaN."""
    score = np.asarray(score, np.float64)
    support = np.asarray(support, np.float64)
    moved = _sigmoid(logit(score).reshape(score.shape) - PENALTY + (GAIN + PENALTY) * np.nan_to_num(support))
    return np.where(np.isnan(support), score, moved)


def rescore_tiles(x, y, zoom, score, cam_x=None, cam_y=None, lines=None, floor=FLOOR):
    """(rescored float32, support float32): every tile's re-scored value and line support (NaN below the floor,
    rescored = score there). x, y: tile indices; cam_x, cam_y: the CAM point in tile pixels (NaN: none, the tile
    centre stands in); lines: mapped power lines (sources.osm.Lines, or shapely LineStrings in lon/lat)."""
    score = np.asarray(score, np.float32)
    fx, fy = tower_points(x, y, cam_x, cam_y)
    support = np.full(len(score), np.nan, np.float32)
    on = np.flatnonzero(score >= np.float32(floor))
    if len(on):
        support[on] = neighbour_support(fx[on], fy[on], zoom, score[on])
        if lines is not None:
            near = near_lines(fx[on], fy[on], zoom, lines)
            support[on] = np.maximum(support[on], np.where(near, ON_LINE_SUPPORT, 0.0))
    return rescore(score, support).astype(np.float32), support


def tower_points(x, y, cam_x=None, cam_y=None):
    """Fractional tile coordinates of each tile's tower point: its CAM point, else its centre."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if cam_x is None or cam_y is None:
        return x + 0.5, y + 0.5
    cx, cy = np.asarray(cam_x, np.float64), np.asarray(cam_y, np.float64)
    cam = ~(np.isnan(cx) | np.isnan(cy))
    return x + np.where(cam, cx / 256, 0.5), y + np.where(cam, cy / 256, 0.5)


def ground_scale(fy, zoom):
    """Ground metres per tile unit at each point: the Web-Mercator tile size x cos(latitude)."""
    _, lat = tile_lonlat(np.zeros_like(fy), fy, zoom)
    return 2 * ORIGIN_SHIFT / (1 << zoom) * np.cos(np.radians(lat))


def neighbour_support(fx, fy, zoom, score, batch=BATCH):
    """Pair or end support of each point from the others (see the module docstring), float32 in 0..1."""
    n = len(fx)
    scale = ground_scale(fy, zoom)
    out = np.zeros(n, np.float32)
    if n < 2:
        return out
    cell = FAR_M / float(scale.min())  # in tile units: any neighbour is in one of the 3 x 3 cells around
    cx, cy = np.floor(fx / cell).astype(np.int64), np.floor(fy / cell).astype(np.int64)
    key = _cell_key(cx, cy)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    for start in range(0, n, batch):
        q = np.arange(start, min(n, start + batch))
        i, j = _candidate_pairs(q, cx, cy, sorted_key, order)
        dx, dy = (fx[j] - fx[i]) * scale[i], (fy[j] - fy[i]) * scale[i]
        d = np.hypot(dx, dy)
        ok = (j != i) & (d >= NEAR_M) & (d <= FAR_M)
        i, dx, dy, d, s = i[ok], dx[ok], dy[ok], d[ok], score[j[ok]].astype(np.float64)
        out[q] = _best_support(i - start, len(q), dx / d, dy / d, s)
    return out


def _cell_key(cx, cy):
    return cx * (1 << 31) + cy


def _candidate_pairs(q, cx, cy, sorted_key, order):
    """(i, j): every point j in the 3 x 3 cells around each point i of q."""
    parts_i, parts_j = [], []
    for ox in (-1, 0, 1):
        for oy in (-1, 0, 1):
            k = _cell_key(cx[q] + ox, cy[q] + oy)
            lo, hi = np.searchsorted(sorted_key, k, "left"), np.searchsorted(sorted_key, k, "right")
            counts = hi - lo
            total = int(counts.sum())
            if not total:
                continue
            first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
            parts_i.append(np.repeat(q, counts))
            parts_j.append(order[first + np.arange(total)])
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(parts_i), np.concatenate(parts_j)


def _best_support(i, n, ux, uy, s):
    """Per point 0..n-1: max(best opposite pair's geometric mean, END_SHARE x best single), from its neighbours
    (i: whose neighbour; ux, uy: unit direction; s: score), the MAX_NEIGHBOURS best of each."""
    if not len(i):
        return np.zeros(n, np.float32)
    by = np.lexsort((-s, i))  # per point, best neighbour first
    i, ux, uy, s = i[by], ux[by], uy[by], s[by]
    first = np.r_[0, np.flatnonzero(np.diff(i)) + 1]
    rank = np.arange(len(i)) - np.repeat(first, np.diff(np.r_[first, len(i)]))
    keep = rank < MAX_NEIGHBOURS
    i, ux, uy, s, rank = i[keep], ux[keep], uy[keep], s[keep], rank[keep]
    k = MAX_NEIGHBOURS
    S = np.zeros((n, k))
    U = np.zeros((n, k, 2))
    S[i, rank], U[i, rank, 0], U[i, rank, 1] = s, ux, uy
    out = END_SHARE * S[:, 0]
    cos = np.einsum("nad,nbd->nab", U, U)
    opposite = cos <= -math.cos(math.radians(OPPOSITE_DEG))  # empty slots have a zero vector: never opposite
    pair = np.sqrt(S[:, :, None] * S[:, None, :]) * opposite
    return np.maximum(out, pair.max(axis=(1, 2))).astype(np.float32)


def near_lines(fx, fy, zoom, lines, metres=LINE_M):
    """Whether each point lies within `metres` on the ground of one of the lines (lon/lat LineStrings)."""
    import shapely

    geoms = np.asarray(getattr(lines, "geometries", lines), dtype=object)
    near = np.zeros(len(fx), bool)
    if not len(geoms) or not len(fx):
        return near
    size = 2 * ORIGIN_SHIFT / (1 << zoom)

    def to_tiles(coords):  # lon/lat -> this zoom's tile units (Web Mercator, y down)
        lon, lat = coords[:, 0], np.clip(coords[:, 1], -85.0511, 85.0511)
        s = np.sin(np.radians(lat))
        return np.stack([(lon + 180) / 360, 0.5 - np.log((1 + s) / (1 - s)) / (4 * np.pi)], axis=1) * (1 << zoom)

    tiled = shapely.transform(geoms, to_tiles)
    points = shapely.points(fx, fy)
    scale = ground_scale(fy, zoom) / size  # ground metres per Web-Mercator metre at each point
    reach = metres / float(scale.min()) / size  # in tile units, the largest at the highest latitude
    p, g = shapely.STRtree(tiled).query(points, predicate="dwithin", distance=reach)
    close = shapely.distance(points[p], tiled[g]) * size * scale[p] <= metres
    near[p[close]] = True
    return near


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))
