"""Per-tile labels from tower points, as label-maker makes them for classification.

label-maker cuts its label source into vector tiles with tippecanoe, whose tiles carry features within
a buffer of 5/256 of a tile around their edges, and labels a tile [0, 1] when any matching feature is in
it. A tower within ~3 m of a tile edge at zoom 18 is thus a positive in both tiles, which suits towers:
their footprint reaches over the edge. We reproduce that rule, tippecanoe's coordinate rounding included,
directly on the points (no tippecanoe run); tests check it against real label-maker tile for tile.
"""

import numpy as np

from ..geo.cover import lonlat_to_tile_space

TIPPECANOE_BUFFER = 5 / 256  # tippecanoe's default --buffer, in tiles
TIPPECANOE_DETAIL = 12  # tippecanoe's default -d: its max-zoom tiles keep 2**12 steps a side


def positive_tiles(lon, lat, zoom, buffer=TIPPECANOE_BUFFER):
    """Unique (x, y) tiles, as an (n, 2) int64 array sorted by x then y, holding a point within `buffer`.

    Exactly as tippecanoe (run by label-maker with -z zoom -Z zoom) places points: rounded to 32-bit world
    coordinates, then to its detail grid (round half up), and kept in a tile when within the buffer, edges
    included. So a point 5.03 px beyond a tile's left or top edge is in it, but not 5.03 px beyond its right
    or bottom edge.
    """
    fx, fy = lonlat_to_tile_space(np.atleast_1d(lon), np.atleast_1d(lat), zoom)
    units = float(1 << (32 - zoom))  # tippecanoe's world units per tile
    step = float(1 << max(32 - zoom - TIPPECANOE_DETAIL, 0))  # its geometry grid, in world units
    fx, fy = (np.floor(np.floor(v * units + 0.5) / step + 0.5) * step / units for v in (fx, fy))
    buffer = np.floor(buffer * units) / units  # tippecanoe's buffer is whole world units
    n = 1 << zoom
    found = []
    # a point near an edge or corner also belongs to the neighbours within the buffer
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            x = np.floor(fx).astype(np.int64) + dx
            y = np.floor(fy).astype(np.int64) + dy
            near = (fx >= x - buffer) & (fx <= x + 1 + buffer) & (fy >= y - buffer) & (fy <= y + 1 + buffer)
            near &= (y >= 0) & (y < n)
            found.append(np.stack([x[near] % n, y[near]], axis=1))
    return np.unique(np.concatenate(found), axis=0)
