"""Areas of interest: a GeoJSON file or text, or a bbox "W,S,E,N", checked and normalised.

Every problem a user will plausibly hit is a UserError with a one-line reason. Two are repaired
rather than refused, as docs/cli.md documents: rings that cross the antimeridian are unwrapped
(longitudes continue past 180) so the cover is split at the antimeridian instead of becoming a
world-wide strip, and with repair=True an invalid polygon goes through shapely's make_valid.
"""

import json
import math
import os
import re

import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping

from ..common.errors import UserError, one_line
from .tilemath import MAX_LATITUDE

_NUMBER = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*"
_BBOX = re.compile(rf"^{_NUMBER}(,{_NUMBER}){{3}}$")
_WGS84_NAMES = ("crs84", "epsg::4326", "epsg:4326", "4326")


class Area:
    """Polygons in WGS84 lon/lat; longitudes may exceed 180 where an area crosses the antimeridian."""

    def __init__(self, geometry, name="area"):
        self.geometry = geometry  # shapely Polygon or MultiPolygon
        self.name = name

    @property
    def polygons(self):
        g = self.geometry
        return list(g.geoms) if isinstance(g, MultiPolygon) else [g]

    def rings(self):
        """Every ring (exteriors and holes) as a list of (lon, lat) tuples."""
        for poly in self.polygons:
            yield list(poly.exterior.coords)
            for hole in poly.interiors:
                yield list(hole.coords)

    def to_geojson(self):
        return {
            "type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": {"name": self.name}, "geometry": mapping(self.geometry)}],
        }


def load_area(spec, repair=False):
    """Parse a bbox string, a GeoJSON path or GeoJSON text into a checked Area."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("no area given: pass a GeoJSON file or a bbox W,S,E,N")
    if _BBOX.match(spec) or ("," in spec and not spec.startswith("{") and not os.path.exists(spec)):
        return _bbox_area(spec)
    if spec.startswith("{"):
        text, name = spec, "area"
    else:
        if not os.path.exists(spec):
            raise UserError(f"area file not found: {spec} (give a GeoJSON file or a bbox W,S,E,N)")
        if os.path.isdir(spec):
            raise UserError(f"the area {spec} is a folder: give a GeoJSON file or a bbox W,S,E,N")
        name = os.path.splitext(os.path.basename(spec))[0]
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise UserError(f"{spec} is not GeoJSON (not UTF-8 text; convert other formats to GeoJSON)") from None
        except OSError as exc:
            raise UserError(f"cannot read the area {spec}: {one_line(exc)}") from None
    try:
        data = json.loads(text)
        return area_from_geojson(data, name=name, repair=repair)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} is not GeoJSON (invalid JSON at line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise UserError(f"{name} is not GeoJSON (nested too deeply)") from None


def area_from_geojson(data, name="area", repair=False):
    if not isinstance(data, dict) or "type" not in data:
        raise UserError(f"{name} is not GeoJSON (no 'type' member)")
    _check_crs(data, name)
    polygons = []
    for geom in _geometries(data, name):
        gtype = geom.get("type")
        coords = geom.get("coordinates")
        if gtype == "Polygon":
            parts = [coords]
        elif gtype == "MultiPolygon":
            parts = coords
        else:
            raise UserError(f"{name}: the area must be Polygon or MultiPolygon geometry, found {gtype}")
        for rings in parts or []:
            rings = [r for r in (rings or []) if r]
            if rings:
                polygons.append(rings)
    if not polygons:
        raise UserError(f"{name}: the area is empty (no polygon with coordinates)")
    _check_coordinates(polygons, name)
    shapes = [_polygon(_unwrap_antimeridian(rings), name) for rings in polygons]
    geometry = shapes[0] if len(shapes) == 1 else MultiPolygon(shapes)
    return Area(_checked_validity(geometry, name, repair), name=name)


def _bbox_area(spec):
    parts = spec.split(",")
    if len(parts) != 4:
        raise UserError(f"bbox {spec} has {len(parts)} values; give 4: W,S,E,N in degrees")
    values = []
    for v in parts:
        try:
            values.append(float(v))
        except ValueError:
            raise UserError(f"bbox {spec}: {v.strip()!r} is not a number (give W,S,E,N in degrees)") from None
        if not math.isfinite(values[-1]):
            raise UserError(f"bbox {spec}: {v.strip()} is not a finite number of degrees (give W,S,E,N)")
    west, south, east, north = values
    for lon in (west, east):
        if not -180 <= lon <= 180:
            raise UserError(f"bbox longitude {lon} is outside -180..180 (the order is W,S,E,N)")
    for lat in (south, north):
        if not -90 <= lat <= 90:
            raise UserError(f"bbox latitude {lat} is outside -90..90 (the order is W,S,E,N; lat/lon swapped?)")
        _check_latitude(lat, "bbox")
    if south >= north:
        raise UserError(f"bbox south {south} is not below north {north} (the order is W,S,E,N)")
    if west == east:
        raise UserError("bbox has zero width (west equals east)")
    if west > east:  # crosses the antimeridian, as GeoJSON bboxes do: from the eastern to the western hemisphere
        if not west > 0 > east:
            raise UserError(f"bbox west {west:g} is east of east {east:g} (the order is W,S,E,N; a bbox across the "
                            "antimeridian has W > 0 > E)")
        east += 360
    poly = Polygon([(west, south), (east, south), (east, north), (west, north)])
    return Area(poly, name="bbox")


def _geometries(data, name):
    t = data["type"]
    if t == "FeatureCollection":
        for feature in data.get("features") or []:
            yield from _geometries(feature, name)
    elif t == "Feature":
        if data.get("geometry"):
            yield from _geometries(data["geometry"], name)
    elif t == "GeometryCollection":
        for g in data.get("geometries") or []:
            yield from _geometries(g, name)
    elif t in ("Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString", "MultiLineString"):
        yield data
    else:
        raise UserError(f"{name} is not GeoJSON (unknown type {t!r})")


def _check_crs(data, name):
    crs = data.get("crs")
    if not crs:
        return
    crs_name = str((crs.get("properties") or {}).get("name", "")).lower()
    if not crs_name.endswith(_WGS84_NAMES):
        raise UserError(f"{name} is in {crs_name or 'a non-WGS84 CRS'}; reproject it to WGS84 (EPSG:4326) first")


def _check_coordinates(polygons, name):
    points = [p for rings in polygons for ring in rings for p in ring]
    for p in points:
        if len(p) < 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in p[:2]):
            raise UserError(f"{name}: bad coordinate {p!r}")
    lons = [p[0] for p in points]
    lats = [p[1] for p in points]
    if max(map(abs, lons)) > 1000 or max(map(abs, lats)) > 1000:
        raise UserError(f"{name}: coordinates look projected (metres, e.g. {points[0][:2]}); "
                        "reproject to WGS84 (EPSG:4326)")
    if max(map(abs, lats)) > 90:
        if max(map(abs, lons)) <= 90:
            raise UserError(f"{name}: latitude and longitude look swapped (latitudes up to {max(map(abs, lats))}); "
                            "GeoJSON order is [longitude, latitude]")
        raise UserError(f"{name}: latitude {max(lats, key=abs)} is outside -90..90")
    if max(map(abs, lons)) > 540:
        raise UserError(f"{name}: longitude {max(lons, key=abs)} is outside -180..180")
    for lat in (min(lats), max(lats)):
        _check_latitude(lat, name)


def _check_latitude(lat, name):
    if abs(lat) > MAX_LATITUDE:
        raise UserError(f"{name}: latitude {lat} is beyond Web Mercator's limit of +-{MAX_LATITUDE:.4f}; clip the area")


def _unwrap_antimeridian(rings):
    """Shift longitudes so that no edge jumps by more than 180 degrees (an antimeridian crossing)."""
    if not any(abs(b[0] - a[0]) > 180 for ring in rings for a, b in zip(ring, ring[1:])):
        return rings
    return [[(p[0] + 360 if p[0] < 0 else p[0], p[1]) for p in ring] for ring in rings]


def _polygon(rings, name):
    rings = [[tuple(p[:2]) for p in ring] for ring in rings]
    if any(len({p for p in ring}) < 3 for ring in rings[:1]):
        raise UserError(f"{name}: a polygon has fewer than 3 distinct points")
    return Polygon(rings[0], [r for r in rings[1:] if len(set(r)) >= 3])


def _checked_validity(geometry, name, repair):
    if geometry.is_valid:
        return geometry
    reason = shapely.is_valid_reason(geometry)
    if not repair:
        raise UserError(f"{name}: invalid polygon ({reason}); fix it, or pass --repair to apply make_valid")
    fixed = shapely.make_valid(geometry)
    polys = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, (Polygon, MultiPolygon)) and not g.is_empty]
    parts = [p for g in polys for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
    if not parts:
        raise UserError(f"{name}: invalid polygon ({reason}) and nothing polygonal is left after repair")
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)
