"""The data model of OSM power features: tower points (Towers) and lines (Lines) in WGS84, and the tag filters that
pick them.

Tag filters (`parse_tag_filter`): "power=tower", "power=tower,pole" (any of the values), "power" (any value) or
"all" (every point, for plain point layers without OSM tags).
"""

import re
from dataclasses import dataclass

import numpy as np
import shapely

from ...common.errors import UserError

_NAME = re.compile(r'^[^"\\=,\s][^"\\=,]*$')  # a tag key or value we can quote safely in Overpass QL


class Towers:
    """Points in WGS84: lon and lat (float64 arrays), ids ("node/123", "feature/5"), a printable source, and
    values: each point's value of the tag filter's key ("tower", "pole"; None for the filter all), so that one
    read can serve several kinds."""

    def __init__(self, lon, lat, ids, source, notes=(), values=None):
        self.lon = np.asarray(lon, dtype=np.float64)
        self.lat = np.asarray(lat, dtype=np.float64)
        self.ids = list(ids)
        self.source = source
        self.notes = list(notes)  # things done on the way worth telling the user, e.g. a reprojection
        self.values = list(values) if values is not None else [None] * len(self.ids)

    def __len__(self):
        return len(self.ids)

    def __repr__(self):
        return f"Towers({len(self)} points from {self.source})"

    def within(self, area):
        """The points inside an Area (or shapely geometry), its boundary included.

        Areas that cross the antimeridian carry longitudes past 180, so each point is also tried at lon+360.
        """
        geometry = getattr(area, "geometry", area)
        shapely.prepare(geometry)
        inside = shapely.intersects_xy(geometry, self.lon, self.lat)
        west, _, east, _ = geometry.bounds
        if east > 180:
            inside |= shapely.intersects_xy(geometry, self.lon + 360, self.lat)
        if west < -180:
            inside |= shapely.intersects_xy(geometry, self.lon - 360, self.lat)
        return self.subset(inside)

    def subset(self, mask):
        keep = np.flatnonzero(mask)
        return Towers(self.lon[keep], self.lat[keep], [self.ids[i] for i in keep], self.source, self.notes,
                      [self.values[i] for i in keep])

    def of_kind(self, *values):
        """The points whose tag value is one of `values`."""
        return self.subset(np.isin(np.array(self.values, dtype=object), values))


class Lines:
    """Lines in WGS84: shapely LineStrings of lon/lat (an object array), ids ("way/123", "feature/5"), a source."""

    def __init__(self, geometries, ids, source, notes=()):
        self.geometries = np.array(list(geometries), dtype=object)
        self.ids = list(ids)
        self.source = source
        self.notes = list(notes)

    def __len__(self):
        return len(self.ids)

    def __repr__(self):
        return f"Lines({len(self)} lines from {self.source})"

    def intersecting(self, area):
        """The lines that meet an Area (or shapely geometry)."""
        geometry = getattr(area, "geometry", area)
        shapely.prepare(geometry)
        keep = np.flatnonzero(shapely.intersects(geometry, self.geometries)) if len(self) else []
        return Lines(self.geometries[keep], [self.ids[i] for i in keep], self.source, self.notes)


@dataclass(frozen=True)
class TagFilter:
    key: str | None  # None: every point
    values: tuple[str, ...] | None = None  # None: any value of key

    def matches(self, tags):
        if self.key is None:
            return True
        value = self.value_of(tags)
        return value is not None and (self.values is None or value in self.values)

    def value_of(self, tags):
        """The key's value in `tags` (a dict or osmium's tag list) as text; None for the filter all or no value."""
        value = tags.get(self.key) if self.key is not None else None
        return None if value is None else str(value)

    def __str__(self):
        if self.key is None:
            return "all"
        return self.key if self.values is None else f"{self.key}={','.join(self.values)}"


def parse_tag_filter(text):
    """"power=tower" | "power=tower,pole" | "power" | "all" -> TagFilter."""
    if isinstance(text, TagFilter):
        return text
    text = str(text or "").strip()
    if text.lower() == "all":
        return TagFilter(None)
    key, eq, values = (part.strip() for part in text.partition("="))
    hint = "use key=value, key=value1,value2, key, or all (e.g. power=tower)"
    if not _NAME.match(key):
        raise UserError(f"bad tag filter {text!r}: {hint}")
    if not eq:
        return TagFilter(key)
    parts = tuple(v.strip() for v in values.split(","))
    if not all(_NAME.match(v) for v in parts):
        raise UserError(f"bad tag filter {text!r}: {hint}")
    return TagFilter(key, tuple(dict.fromkeys(parts)))
