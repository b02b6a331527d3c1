"""Web-Mercator tile math with the standard library only.

The QGIS plugin imports this module too (QGIS installs have no numpy guarantee worth relying on
for such small things), so keep it free of third-party imports.

Conventions: XYZ tiles (origin top-left, y grows southwards), ids are "x-y-z" strings as in
label-maker, EPSG:3857 bounds are (minx, miny, maxx, maxy) in metres.
"""

import math

EARTH_RADIUS = 6378137.0
ORIGIN_SHIFT = math.pi * EARTH_RADIUS  # half the width of the Web-Mercator square, in metres
MAX_LATITUDE = 85.0511287798066  # atan(sinh(pi)): the square's northern and southern edge
TILE_SIZE = 256


def tile_id(x, y, z):
    return f"{x}-{y}-{z}"


def parse_tile_id(text):
    """'x-y-z' -> (x, y, z), with a clear ValueError for anything else."""
    parts = str(text).strip().split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a tile id of the form x-y-z: {text!r}")
    x, y, z = (int(p) for p in parts)
    n = 1 << z
    if x >= n or y >= n:
        raise ValueError(f"tile {text} is outside the zoom-{z} grid (0..{n - 1})")
    return x, y, z


def lonlat_to_tile_fraction(lon, lat, z):
    """Fractional tile coordinates of a WGS84 point at zoom z (x not wrapped)."""
    n = 1 << z
    x = (lon + 180.0) / 360.0 * n
    s = math.sin(math.radians(lat))
    y = (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * n
    return x, y


def lonlat_to_tile(lon, lat, z):
    """The tile that contains a WGS84 point."""
    n = 1 << z
    fx, fy = lonlat_to_tile_fraction(lon, lat, z)
    return int(math.floor(fx)) % n, min(max(int(math.floor(fy)), 0), n - 1)


def tile_bounds_3857(x, y, z):
    size = 2 * ORIGIN_SHIFT / (1 << z)
    minx = -ORIGIN_SHIFT + x * size
    maxy = ORIGIN_SHIFT - y * size
    return (minx, maxy - size, minx + size, maxy)


def tile_bounds_4326(x, y, z):
    """(west, south, east, north) in degrees."""
    n = 1 << z

    def lat(ty):
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * ty / n))))

    return (x / n * 360.0 - 180.0, lat(y + 1), (x + 1) / n * 360.0 - 180.0, lat(y))


def resolution(z):
    """Metres per pixel of a 256-px tile at zoom z, in Web-Mercator metres (true at the equator)."""
    return 2 * ORIGIN_SHIFT / (TILE_SIZE << z)


def ground_resolution(z, lat):
    """Metres on the ground per pixel at latitude lat."""
    return resolution(z) * math.cos(math.radians(lat))


def mercator_to_lonlat(mx, my):
    lon = mx / ORIGIN_SHIFT * 180.0
    lat = math.degrees(2 * math.atan(math.exp(my / EARTH_RADIUS)) - math.pi / 2)
    return lon, lat


def lonlat_to_mercator(lon, lat):
    lat = max(min(lat, MAX_LATITUDE), -MAX_LATITUDE)
    mx = lon / 180.0 * ORIGIN_SHIFT
    my = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) * EARTH_RADIUS
    return mx, my


def quadkey(x, y, z):
    digits = []
    for i in range(z, 0, -1):
        mask = 1 << (i - 1)
        digits.append(str((1 if x & mask else 0) + (2 if y & mask else 0)))
    return "".join(digits)
