"""The plan of a prediction job: which tiles each chunk holds, fixed by the cover, the shards and chunk_size.

Chunking (deterministic: a function of the cover, the shards and chunk_size only)
    Shard i holds cover.shard(x_start, x_end)'s tiles in run order: column by column (x ascending), then y
    ascending. Chunk j of a shard holds that order's tiles [j * chunk_size, (j + 1) * chunk_size). Tiles are
    found from the runs' cumulative lengths with searchsorted, so finding a chunk's tiles costs little however big
    the country, and no tile list is ever built.
The job spec pins the plan (ChunkPlan.to_dict, with cover_hash): a resume with another cover, shard list or chunk
size is refused, so chunk boundaries never move under a job.
"""

import hashlib

import numpy as np

from ...common.errors import UserError


class ChunkPlan:
    """The fixed chunking of a cover: shards are [x_start, x_end) ranges, chunks runs of chunk_size tiles."""

    def __init__(self, cover, shards, chunk_size):
        self.cover = cover
        self.zoom = cover.zoom
        self.chunk_size = int(chunk_size)
        if self.chunk_size < 1:
            raise UserError(f"chunk size must be at least 1, not {chunk_size}")
        self.shards = [(int(a), int(b)) for a, b in shards]
        self._runs = []
        for a, b in self.shards:
            keep = (cover.x >= a) & (cover.x < b)
            x, y0 = cover.x[keep], cover.y0[keep]
            ends = np.cumsum(cover.y1[keep] - y0)
            self._runs.append((x, y0, ends, ends - (cover.y1[keep] - y0)))  # ends and starts of runs, in tiles

    def count(self, shard):
        """Tiles in a shard."""
        ends = self._runs[shard][2]
        return int(ends[-1]) if len(ends) else 0

    def chunk_count(self, shard):
        return -(-self.count(shard) // self.chunk_size)

    @property
    def total_chunks(self):
        return sum(self.chunk_count(i) for i in range(len(self.shards)))

    def all_chunks(self):
        """Every (shard, index) of the plan, in order."""
        return [(i, j) for i in range(len(self.shards)) for j in range(self.chunk_count(i))]

    def chunk_len(self, shard, index):
        return min(self.chunk_size, self.count(shard) - index * self.chunk_size)

    def chunk_tiles(self, shard, index):
        """(xs, ys) int64 arrays of chunk `index` of shard `shard`, in plan order."""
        if not 0 <= shard < len(self.shards):
            raise IndexError(f"shard {shard} is not in the plan (0..{len(self.shards) - 1})")
        if not 0 <= index < self.chunk_count(shard):
            raise IndexError(f"chunk {index} is not in shard {shard} (0..{self.chunk_count(shard) - 1})")
        x, y0, ends, starts = self._runs[shard]
        start = index * self.chunk_size
        pos = np.arange(start, min(start + self.chunk_size, int(ends[-1])), dtype=np.int64)
        run = np.searchsorted(ends, pos, side="right")  # the run holding each position
        return x[run], y0[run] + (pos - starts[run])

    def chunk_columns(self, shard):
        """(first x, last x) int64 arrays over the shard's chunks: the columns each chunk spans."""
        x, _, ends, _ = self._runs[shard]
        n = self.chunk_count(shard)
        first = np.arange(n, dtype=np.int64) * self.chunk_size
        last = np.minimum(first + self.chunk_size, self.count(shard)) - 1
        return x[np.searchsorted(ends, first, side="right")], x[np.searchsorted(ends, last, side="right")]

    def to_dict(self):
        return {"zoom": self.zoom, "count": self.cover.count, "runs": len(self.cover.x),
                "cover_sha256": cover_hash(self.cover), "chunk_size": self.chunk_size,
                "shards": [{"x_start": a, "x_end": b, "count": self.count(i), "chunks": self.chunk_count(i)}
                           for i, (a, b) in enumerate(self.shards)],
                "chunks": self.total_chunks}


def chunk_count(cover, shard_range, chunk_size):
    """Number of chunks of chunk_size tiles in the shard [x_start, x_end) of `cover`."""
    return ChunkPlan(cover, [shard_range], chunk_size).chunk_count(0)


def chunk_tiles(cover, shard_range, chunk_size, index):
    """(xs, ys) int64 arrays of chunk `index` of the shard [x_start, x_end) of `cover`."""
    return ChunkPlan(cover, [shard_range], chunk_size).chunk_tiles(0, index)


def cover_hash(cover):
    """sha256 of a cover's zoom and runs: equal covers, equal hashes."""
    runs = np.stack([cover.x, cover.y0, cover.y1], axis=1).astype("<i8")
    return hashlib.sha256(f"z{cover.zoom}:".encode() + runs.tobytes()).hexdigest()


def check_shards(cover, shards):
    """[(x_start, x_end)] ascending, disjoint and together holding every tile of the cover; else UserError."""
    if not cover.count:
        raise UserError("the tile cover is empty: nothing to predict")
    if shards is None:
        xmin, _, xmax, _ = cover.bounds()
        return [(xmin, xmax + 1)]
    try:
        shards = [(int(a), int(b)) for a, b in shards]
    except (TypeError, ValueError):
        raise UserError(f"shards must be (x_start, x_end) pairs, not {shards!r}") from None
    if not shards:
        raise UserError("the shard list is empty")
    for (a, b), nxt in zip(shards, shards[1:] + [None]):
        if b <= a or (nxt and nxt[0] < b):
            raise UserError(f"shards must be ascending, non-empty, disjoint X ranges; got {shards}")
    inside = sum(int(((cover.x >= a) & (cover.x < b)) @ (cover.y1 - cover.y0)) for a, b in shards)
    if inside != cover.count:
        raise UserError(f"the shards hold {inside:,} of the cover's {cover.count:,} tiles; they must hold all")
    return shards
