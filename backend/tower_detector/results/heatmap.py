"""The heatmap output: one float32 pixel per tile, a GeoTIFF QGIS opens at once at any scale.

Heatmap (GeoTIFF)
    EPSG:3857, one pixel per tile, aligned to the tile grid: pixel (col, row) is tile (x0 + col, y0 + row), the
    geotransform is tile (x0, y0)'s tilemath.tile_bounds_3857 corner with the tile's width as pixel size. float32
    P(tower), nodata -1 where a tile is not scored, failed, in a missing chunk or outside the cover. Tiled 512 x
    512, DEFLATE with the floating-point predictor, BigTIFF when needed, internal overviews (x2, x4, ... down
    to ~128 px) averaged with nodata ignored, so a country opens at once in QGIS. Tags: zoom, tile_x0, tile_y0.
    Written in strips of 512 columns (chunks are merged in column order), so each block is written once and
    memory is one strip (512 x height float32 values) and GDAL's block cache, bounded to CACHE_BYTES while the
    file is written and its overviews built, never the whole raster.
    Antimeridian: a cover that crosses it (columns at both ends of the grid) is not a world-wide strip: x0 is
    the column after the widest empty gap, and the raster continues east past 180 degrees (EPSG:3857 x beyond
    20,037,508 m) with tiles x < x0 at columns (x - x0) mod 2^zoom. GDAL and QGIS draw it there, contiguous.
"""

import sqlite3

import numpy as np

from ..geo.tilemath import ORIGIN_SHIFT

NODATA = -1.0
BLOCK = 512  # GeoTIFF block size, and the width of the strips the heatmap is written in
# GDAL's block cache while the heatmap is written, its overviews built and read back (GDAL's default is 5 % of
# the RAM, and these fill it with the whole raster): 64 MiB holds a full row of 512 x 512 float32 blocks (1 MiB
# each) of a raster up to 64 blocks (32,768 px) wide, which is how overviews are built (results_memory.md)
CACHE_BYTES = 64 << 20


def heatmap_grid(cover):
    """The heatmap's pixel grid: {zoom, x0, y0, width, height}; see the module docstring (antimeridian)."""
    n = 1 << cover.zoom
    cols = np.unique(cover.x)
    x0, width = int(cols[0]), int(cols[-1] - cols[0] + 1)
    if len(cols) > 1:
        gaps = np.diff(cols)
        k = int(np.argmax(gaps))
        if gaps[k] > cols[0] + n - cols[-1]:  # the widest gap is inside: the cover wraps around x = 0
            x0, width = int(cols[k + 1]), int(cols[k] + n - cols[k + 1] + 1)
    y0 = int(cover.y0.min())
    return {"zoom": cover.zoom, "x0": x0, "y0": y0, "width": width, "height": int(cover.y1.max()) - y0}


def heatmap_transform(grid):
    """The affine geotransform of a heatmap grid (rasterio's Affine)."""
    from rasterio.transform import Affine

    size = 2 * ORIGIN_SHIFT / (1 << grid["zoom"])
    return Affine(size, 0.0, -ORIGIN_SHIFT + grid["x0"] * size, 0.0, -size, ORIGIN_SHIFT - grid["y0"] * size)


def merge_order(plan, done, grid):
    """The present chunks sorted by the first heatmap column they touch (then plan order)."""
    n = 1 << plan.zoom
    keys = []
    for shard in range(len(plan.shards)):
        first, last = plan.chunk_columns(shard)
        col = (first - grid["x0"]) % n
        col[(first < grid["x0"]) & (grid["x0"] <= last)] = 0  # a chunk spanning the wrap starts at column 0
        keys += [(int(c), shard, j) for j, c in enumerate(col.tolist()) if (shard, j) in done]
    return [(shard, j) for _, shard, j in sorted(keys)]


class HeatmapWriter:
    """Writes the heatmap in strips of BLOCK columns. Tiles must come grouped so that, once a tile arrives
    right of the current strip, no later tile falls left of it, except tiles of the same add() call."""

    def __init__(self, path, grid, store_spec):
        import rasterio

        self.path, self.grid = path, grid
        self.width, self.height = grid["width"], grid["height"]
        self.ds = None
        self._env = rasterio.Env(GDAL_CACHEMAX=CACHE_BYTES, GDAL_TIFF_OVR_BLOCKSIZE=BLOCK,
                                 COMPRESS_OVERVIEW="DEFLATE", PREDICTOR_OVERVIEW=3,
                                 GDAL_NUM_THREADS="ALL_CPUS")
        self._env.__enter__()
        try:
            self.ds = rasterio.open(
                path, "w", driver="GTiff", width=self.width, height=self.height, count=1, dtype="float32",
                crs="EPSG:3857", transform=heatmap_transform(grid), nodata=NODATA, tiled=True, blockxsize=BLOCK,
                blockysize=BLOCK, compress="deflate", predictor=3, zlevel=6, bigtiff="IF_SAFER")
        except BaseException:
            self._env.__exit__(None, None, None)
            raise
        self.ds.update_tags(zoom=grid["zoom"], tile_x0=grid["x0"], tile_y0=grid["y0"], store=store_spec,
                            pixel=f"one zoom-{grid['zoom']} tile; value P(tower), -1 nodata")
        self.ds.set_band_description(1, "P(tower)")
        self.start = 0  # first column of the strip in the buffer
        self.buf = np.full((self.height, BLOCK), NODATA, dtype=np.float32)
        self.dirty = False
        self.pending = []  # (cols, rows, values) right of the current strip

    def add(self, cols, rows, values):
        if len(cols):
            self._advance(int(cols.min()))
            self._place(cols, rows, values)

    def _place(self, cols, rows, values):
        inside = cols < self.start + BLOCK
        self.buf[rows[inside], cols[inside] - self.start] = values[inside]
        self.dirty |= bool(inside.any())
        if not inside.all():
            self.pending.append((cols[~inside], rows[~inside], values[~inside]))

    def _advance(self, col):
        """Write out every strip left of the one holding column `col`."""
        while col >= self.start + BLOCK:
            self._flush()
            pending, self.pending = self.pending, []
            self.start = min([col] + [int(c.min()) for c, _, _ in pending]) // BLOCK * BLOCK
            for item in pending:
                self._place(*item)

    def _flush(self):
        from rasterio.windows import Window

        if self.dirty:
            w = min(BLOCK, self.width - self.start)
            self.ds.write(self.buf[:, :w], 1, window=Window(self.start, 0, w, self.height))
            self.buf.fill(NODATA)
            self.dirty = False

    def close(self):
        from rasterio.enums import Resampling

        self._advance(self.width + BLOCK)
        self._flush()
        factors = _overview_factors(self.width, self.height)
        if factors:
            self.ds.build_overviews(factors, Resampling.average)  # GDAL leaves nodata pixels out of averages
            self.ds.update_tags(ns="rio_overview", resampling="average")
        self.abort()
        self._check()

    def _check(self):
        """Read every block back: GDAL may close a file it could not finish (a full disk) without an error."""
        import rasterio

        try:
            with rasterio.Env(GDAL_CACHEMAX=CACHE_BYTES), rasterio.open(self.path) as ds:
                levels = [None, *range(len(ds.overviews(1)))]
            for level in levels:  # every block read once: GDAL's cache would keep them all, up to its bound
                with rasterio.Env(GDAL_CACHEMAX=CACHE_BYTES), \
                        rasterio.open(self.path, **({} if level is None else {"overview_level": level})) as ds:
                    for _, window in ds.block_windows(1):
                        ds.read(1, window=window)
        except write_errors():
            raise OSError("the heatmap does not read back whole (is the disk full?)") from None

    def abort(self):
        if self.ds is not None:
            self.ds.close()
            self.ds = None
            self._env.__exit__(None, None, None)


def _overview_factors(width, height):
    """x2, x4, ... while the level keeps >= 128 px on its long side (x2 at least, for any raster > 1 px)."""
    size = max(width, height)
    factors = [2] if size > 1 else []
    while size / (factors[-1] * 2 if factors else 2) >= 128:
        factors.append(factors[-1] * 2)
    return factors


def write_errors():
    """What a failed write of an output raises: OSError, SQLite's error, GDAL's (rasterio names their base only in
    a private module)."""
    from rasterio._err import CPLE_BaseError

    return OSError, sqlite3.OperationalError, CPLE_BaseError
