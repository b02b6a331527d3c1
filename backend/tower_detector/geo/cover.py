"""Exact tile covers at country scale, held as runs of tiles rather than one object per tile.

A tile belongs to the cover when its interior overlaps the area's interior (positive-area overlap:
a tile that only shares an edge or a corner with the area is not in it). That set is
  (a) the tiles whose open square meets the boundary, found by walking every edge column by column, plus
  (b) the tiles wholly inside, found by even-odd scanlines through the column centres.
A tile whose open square misses the boundary is wholly inside or wholly outside, and (b) decides which
by its centre, so (a) + (b) is exact. Both steps are vectorised over edges, and the result is kept as
column runs (x, y0, y1) - tiles x, y0 <= y < y1 - so Zambia's 34 M tiles at zoom 18 take ~25 k runs.
Columns come first because shards are X-index ranges, as the original project split countries.
"""

import json
import os

import numpy as np

from ..common.atomic import atomic_file
from ..common.errors import UserError, one_line
from .tilemath import tile_id

FORMAT = "tower-detector/tile-cover"
# Snap tile-space coordinates this close to a grid line onto it, so that an area drawn exactly on
# tile edges (often made from tile bounds, with float noise) does not pick up a ring of neighbours.
SNAP = 1e-7
TEXT_EXTENSIONS = (".txt", ".csv")


class TileCover:
    """A set of zoom-z tiles as sorted, disjoint column runs: tile (x, y) for y0 <= y < y1."""

    def __init__(self, zoom, x, y0, y1):
        self.zoom = int(zoom)
        self.x = np.asarray(x, dtype=np.int64)
        self.y0 = np.asarray(y0, dtype=np.int64)
        self.y1 = np.asarray(y1, dtype=np.int64)

    def __len__(self):
        return int((self.y1 - self.y0).sum())

    @property
    def count(self):
        return len(self)

    def __repr__(self):
        return f"TileCover(zoom={self.zoom}, tiles={self.count}, runs={len(self.x)})"

    # -- what is in it -------------------------------------------------------------------------
    def column_counts(self):
        """(columns, tiles per column), columns ascending."""
        cols, inverse = np.unique(self.x, return_inverse=True)
        return cols, np.bincount(inverse, weights=self.y1 - self.y0).astype(np.int64)

    def contains(self, x, y):
        """Vectorised membership test for arrays of tile x, y."""
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        key_start = _keys(self.x, self.y0, self.zoom)
        key = _keys(x, y, self.zoom)
        i = np.searchsorted(key_start, key, side="right") - 1
        ok = i >= 0
        i = np.clip(i, 0, None)
        return ok & (self.x[i] == x) & (y < self.y1[i])

    def iter_batches(self, size=65536):
        """Yield (x, y) int64 arrays of at most `size` tiles, in column order."""
        lengths = self.y1 - self.y0
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if len(ends) else 0
        for start in range(0, total, size):
            stop = min(start + size, total)
            first = int(np.searchsorted(ends, start, side="right"))
            last = int(np.searchsorted(ends, stop - 1, side="right"))
            runs = slice(first, last + 1)
            x = np.repeat(self.x[runs], lengths[runs])
            offsets = np.arange(len(x)) - np.repeat(np.cumsum(lengths[runs]) - lengths[runs], lengths[runs])
            y = np.repeat(self.y0[runs], lengths[runs]) + offsets
            skip = start - (int(ends[first - 1]) if first else 0)
            yield x[skip : skip + stop - start], y[skip : skip + stop - start]

    def tile_ids(self):
        for xs, ys in self.iter_batches():
            for x, y in zip(xs.tolist(), ys.tolist()):
                yield tile_id(x, y, self.zoom)

    def bounds(self):
        """(xmin, ymin, xmax, ymax) tile indices, inclusive."""
        return int(self.x.min()), int(self.y0.min()), int(self.x.max()), int(self.y1.max() - 1)

    # -- shards ----------------------------------------------------------------------------------
    def shard_ranges(self, n):
        """n X-index ranges [x_start, x_end) of about equal tile counts (columns are never split)."""
        cols, counts = self.column_counts()
        if n < 1:
            raise UserError("--shards must be at least 1")
        if n > len(cols):
            raise UserError(f"--shards {n} is more than the area's {len(cols)} tile columns")
        cum = np.cumsum(counts)
        # cut after the column where the running count first reaches k/n of the total
        targets = cum[-1] * np.arange(1, n) / n
        cuts = np.searchsorted(cum, targets, side="left") + 1
        cuts = np.maximum(cuts, np.arange(1, n))  # at least one column each
        cuts = np.minimum(cuts, len(cols) - n + np.arange(1, n))
        cuts = np.maximum.accumulate(cuts)
        edges = np.concatenate([[0], cuts, [len(cols)]])
        return [(int(cols[a]), int(cols[b - 1]) + 1) for a, b in zip(edges[:-1], edges[1:])]

    def shard(self, x_start, x_end):
        keep = (self.x >= x_start) & (self.x < x_end)
        return TileCover(self.zoom, self.x[keep], self.y0[keep], self.y1[keep])

    # -- files -------------------------------------------------------------------------------------
    def to_dict(self, shards=None):
        data = {"format": FORMAT, "version": 1, "zoom": self.zoom, "count": self.count}
        if shards:
            data["shards"] = [
                {"x_start": a, "x_end": b, "count": self.shard(a, b).count} for a, b in shards
            ]
        data["runs"] = np.stack([self.x, self.y0, self.y1], axis=1).tolist()
        return data

    def save(self, path, shards=None):
        """Write the cover: JSON runs (compact, any size), or one x-y-z id per line for .txt/.csv."""
        check_cover_path(path)
        try:
            with atomic_file(path, encoding="utf-8") as f:
                if str(path).lower().endswith(TEXT_EXTENSIONS):
                    for xs, ys in self.iter_batches():
                        f.write("".join(f"{x}-{y}-{self.zoom}\n" for x, y in zip(xs.tolist(), ys.tolist())))
                else:
                    json.dump(self.to_dict(shards), f, separators=(",", ":"))
        except OSError as exc:  # a full disk, a read-only folder: nothing is left behind
            raise UserError(f"cannot write the tile cover {path}: {one_line(exc)}") from None

    @classmethod
    def load(cls, path):
        """A cover file from save(): its runs must be whole, sorted, disjoint tiles of its zoom."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError, RecursionError) as exc:
            raise UserError(f"cannot read tile cover {path}: {one_line(exc)}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path} is not a tile cover written by `tower-detector tiles`")
        zoom = data.get("zoom")
        try:
            runs = np.asarray(data.get("runs", []))
        except (TypeError, ValueError):  # ragged lists
            runs = np.asarray(None)
        if type(zoom) is not int or not 0 <= zoom <= 24:
            raise UserError(f"tile cover {path}: zoom {zoom!r} is not a whole number from 0 to 24")
        if runs.size == 0:
            runs = np.zeros((0, 3), dtype=np.int64)
        if runs.ndim != 2 or runs.shape[1] != 3 or runs.dtype.kind not in "iu":
            raise UserError(f"tile cover {path}: runs must be [x, y0, y1] triples of whole numbers")
        x, y0, y1 = runs.astype(np.int64).T
        n = 1 << zoom
        keys = _keys(x, y0, zoom)
        bad = (x < 0) | (x >= n) | (y0 < 0) | (y0 >= y1) | (y1 > n)
        bad[1:] |= keys[1:] < _keys(x, y1, zoom)[:-1]  # each run starts after the previous one ends
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(f"tile cover {path}: run {i} {runs[i].tolist()} is not a run of zoom-{zoom} tiles "
                            "after the one before it (need 0 <= x < 2^zoom, 0 <= y0 < y1 <= 2^zoom, sorted, disjoint)")
        cover = cls(zoom, x, y0, y1)
        if "count" in data and data["count"] != cover.count:
            raise UserError(f"tile cover {path}: its count {data['count']!r} is not the {cover.count} tiles its runs "
                            "hold (the file is damaged)")
        return cover


def check_cover_path(path):
    """A cover file's name: .json (runs) or .txt/.csv (x-y-z ids), not a folder; checked before any work."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"the tile cover {path} is a folder: give a file name")
    if not path.lower().endswith((".json",) + TEXT_EXTENSIONS):
        raise UserError(f"the tile cover {path} must end with .json (runs) or .txt/.csv (one x-y-z per line)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write the tile cover {path}: no such folder {folder}")


def _keys(x, y, zoom):
    # one sortable integer per (column, row); a column's keys never reach the next column's
    return x * ((1 << zoom) + 1) + y


def lonlat_to_tile_space(lon, lat, zoom):
    """Vectorised fractional tile coordinates (x not wrapped, snapped onto grid lines within SNAP)."""
    n = float(1 << zoom)
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    x = (lon + 180.0) / 360.0 * n
    s = np.sin(np.radians(lat))
    y = (0.5 - np.log((1 + s) / (1 - s)) / (4 * np.pi)) * n
    for v in (x, y):
        r = np.round(v)
        near = np.abs(v - r) < SNAP
        v[near] = r[near]
    return x, y


def tile_lonlat(x, y, zoom):
    """Vectorised lon, lat of fractional tile coordinates (x + 0.5 is a tile's centre column)."""
    n = float(1 << zoom)
    lon = np.asarray(x, dtype=np.float64) / n * 360.0 - 180.0
    lat = np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * np.asarray(y, dtype=np.float64) / n))))
    return lon, lat



def tile_cover(area, zoom):
    """The exact cover of an Area at a zoom, as a TileCover."""
    if not 0 <= int(zoom) <= 24:
        raise UserError(f"zoom {zoom} is outside 0..24")
    zoom = int(zoom)
    ax, ay, bx, by = [], [], [], []
    for ring in area.rings():
        lon, lat = np.asarray(ring, dtype=np.float64)[:, :2].T
        if lon[0] != lon[-1] or lat[0] != lat[-1]:
            lon, lat = np.append(lon, lon[0]), np.append(lat, lat[0])
        x, y = lonlat_to_tile_space(lon, lat, zoom)
        ax.append(x[:-1])
        ay.append(y[:-1])
        bx.append(x[1:])
        by.append(y[1:])
    edges = tuple(np.concatenate(v) for v in (ax, ay, bx, by))
    runs = np.concatenate([_boundary_runs(*edges), _interior_runs(*edges)])
    n = 1 << zoom
    runs[:, 0] %= n  # areas unwrapped across the antimeridian fold back onto the grid here
    runs[:, 1:] = np.clip(runs[:, 1:], 0, n)
    return TileCover(zoom, *_union(runs, zoom).T)


def _boundary_runs(x0, y0, x1, y1):
    """Runs of tiles whose open square meets an edge: each edge is split at column lines."""
    xmin, xmax = np.minimum(x0, x1), np.maximum(x0, x1)
    first = np.floor(xmin).astype(np.int64)
    ncols = np.maximum(np.ceil(xmax).astype(np.int64) - first, 0)
    vertical = x0 == x1
    ncols[vertical] = (xmin[vertical] != first[vertical]).astype(np.int64)  # on a grid line: none
    edge = np.repeat(np.arange(len(x0)), ncols)
    col = np.repeat(first, ncols) + (np.arange(len(edge)) - np.repeat(np.cumsum(ncols) - ncols, ncols))
    # the edge's y range inside this column (the whole edge when vertical)
    ex0, ey0, ex1, ey1 = x0[edge], y0[edge], x1[edge], y1[edge]
    dx = ex1 - ex0
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(dx != 0, (ey1 - ey0) / dx, 0.0)
    lo = np.clip(col, np.minimum(ex0, ex1), np.maximum(ex0, ex1))
    hi = np.clip(col + 1, np.minimum(ex0, ex1), np.maximum(ex0, ex1))
    ya = np.where(dx != 0, ey0 + (lo - ex0) * slope, ey0)
    yb = np.where(dx != 0, ey0 + (hi - ex0) * slope, ey1)
    ylo, yhi = np.minimum(ya, yb), np.maximum(ya, yb)
    r0 = np.floor(ylo).astype(np.int64)
    r1 = np.ceil(yhi).astype(np.int64)
    flat = ylo == yhi
    r1[flat] = r0[flat] + (ylo[flat] != r0[flat])  # a horizontal piece on a grid line meets no open tile
    keep = r1 > r0
    return np.stack([col[keep], r0[keep], r1[keep]], axis=1)


def _interior_runs(x0, y0, x1, y1):
    """Runs of tiles whose centre is inside, by even-odd crossings of the lines x = column + 0.5."""
    xmin, xmax = np.minimum(x0, x1), np.maximum(x0, x1)
    # columns c with c + 0.5 in [xmin, xmax): half-open so a vertex on the line counts once
    c_first = np.ceil(xmin - 0.5).astype(np.int64)
    ncross = np.maximum(np.ceil(xmax - 0.5).astype(np.int64) - c_first, 0)
    edge = np.repeat(np.arange(len(x0)), ncross)
    col = np.repeat(c_first, ncross) + (np.arange(len(edge)) - np.repeat(np.cumsum(ncross) - ncross, ncross))
    ex0, ey0, ex1, ey1 = x0[edge], y0[edge], x1[edge], y1[edge]
    y = ey0 + (col + 0.5 - ex0) * (ey1 - ey0) / (ex1 - ex0)
    order = np.lexsort((y, col))
    col, y = col[order], y[order]
    if len(col) % 2:
        raise UserError("the area's rings are not closed polygons")
    c, ya, yb = col[0::2], y[0::2], y[1::2]
    # rows r with r + 0.5 in [ya, yb)
    r0 = np.ceil(ya - 0.5).astype(np.int64)
    r1 = np.ceil(yb - 0.5).astype(np.int64)
    keep = r1 > r0
    return np.stack([c[keep], r0[keep], r1[keep]], axis=1)


def _union(runs, zoom):
    """Merge overlapping or touching runs of the same column into sorted disjoint runs."""
    if len(runs) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    start = _keys(runs[:, 0], runs[:, 1], zoom)
    end = _keys(runs[:, 0], runs[:, 2], zoom)
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    reach = np.maximum.accumulate(end)
    new = np.ones(len(start), dtype=bool)
    new[1:] = start[1:] > reach[:-1]
    g_start = start[new]
    g_end = np.maximum.reduceat(end, np.flatnonzero(new))
    width = (1 << zoom) + 1
    x = g_start // width
    return np.stack([x, g_start - x * width, g_end - x * width], axis=1)
