"""The area of a job: any polygon made WGS84 (EPSG:4326), measured, its zoom-18 tiles estimated, written as
the GeoJSON file the CLI reads, and shown as a styled layer."""

import json
import math
import os

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsDistanceArea,
    QgsFillSymbol,
    QgsGeometry,
    QgsProject,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
    QgsWkbTypes,
)

from ..i18n import tr
from . import parameters

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
MAX_LAT = 85.05112878  # Web Mercator's limit: tiles do not go further
EARTH_CIRCUMFERENCE_M = 40075016.686
AREA_COLOUR = "245,124,0"  # the picker's orange
ZOOM = parameters.ZOOM.default  # the zoom the picker counts and estimates
# A vertex this close to a zoom-18 tile edge is put on it: an extent made from tile bounds (a heatmap, a tile-aligned
# layer) carries float or rounding noise of millimetres, and an edge a hair outside takes in a whole row of tiles.
SNAP_M = 0.05


def _context(transform_context):
    return transform_context if transform_context is not None else QgsProject.instance().transformContext()


def to_wgs84(geom: QgsGeometry, crs: QgsCoordinateReferenceSystem, transform_context=None) -> QgsGeometry:
    """geom (in crs) in EPSG:4326. Long straight edges are densified first: a straight edge in UTM is not
    straight in degrees, and the tile cover must follow the shape the user saw."""
    geom = QgsGeometry(geom)
    if geom.isEmpty() or geom.type() != QgsWkbTypes.PolygonGeometry:
        raise ValueError(tr("the area must be a polygon"))
    if crs != WGS84:
        box = geom.boundingBox()
        geom = geom.densifyByDistance(max(box.width(), box.height()) / 64.0)
        geom.transform(QgsCoordinateTransform(crs, WGS84, _context(transform_context)))
    if not geom.isGeosValid():
        geom = geom.makeValid()  # a drawn polygon that crosses itself: keep what it encloses
    if geom.isEmpty() or geom.area() <= 0:
        raise ValueError(tr("the area is empty (an empty map, or a layer without extent?)"))
    box = geom.boundingBox()
    if box.yMinimum() < -MAX_LAT or box.yMaximum() > MAX_LAT:
        message = tr("the area reaches beyond latitude {MAX_LAT:.4f}, where Web Mercator tiles end")
        raise ValueError(message.format(MAX_LAT=MAX_LAT))
    return geom


def _tile_y(lat: float, n: int) -> float:
    return (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n


def _tile_lat(y: float, n: int) -> float:
    return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))


def snap_to_tiles(geom4326: QgsGeometry, zoom: int = ZOOM, tolerance_m: float = SNAP_M) -> QgsGeometry:
    """geom4326 with each vertex within tolerance_m of a zoom-z tile edge moved onto that edge, so that its tile
    cover is the tiles the user meant (an edge on a tile line takes in neither neighbour)."""
    n = 2**zoom
    geom = QgsGeometry(geom4326)
    moves = []
    for i, v in enumerate(geom4326.vertices()):
        lon, lat = v.x(), v.y()
        side_m = EARTH_CIRCUMFERENCE_M * math.cos(math.radians(lat)) / n  # a tile's ground size here
        tol = tolerance_m / side_m  # in tile units
        fx, fy = (lon + 180.0) / 360.0 * n, _tile_y(lat, n)
        new_lon = round(fx) / n * 360.0 - 180.0 if abs(fx - round(fx)) < tol else lon
        new_lat = _tile_lat(round(fy), n) if abs(fy - round(fy)) < tol else lat
        if (new_lon, new_lat) != (lon, lat):
            moves.append((i, new_lon, new_lat))
    for i, lon, lat in moves:
        geom.moveVertex(lon, lat, i)
    return geom


def feature_collection(geom4326: QgsGeometry, name: str) -> dict:
    # full precision: 7 decimals (about 1 cm) move a tile-aligned edge off its tile line, outward as often as not
    geometry = json.loads(geom4326.asJson(17))
    return {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": name},
                                                       "geometry": geometry}]}


def write_area(geom4326: QgsGeometry, path: str, name: str = "") -> str:
    """The area as the GeoJSON file the CLI reads, its vertices snapped to the tile grid within SNAP_M."""
    geom4326 = snap_to_tiles(geom4326)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(feature_collection(geom4326, name or os.path.splitext(os.path.basename(path))[0]), f)
    os.replace(tmp, path)
    return path


def read_area(path: str) -> QgsGeometry:
    """The area of a GeoJSON file (the union of its polygons) in WGS84; ValueError with one line if unreadable."""
    layer = QgsVectorLayer(path, "area", "ogr")
    if not layer.isValid():
        raise ValueError(tr("cannot read the area file {path}").format(path=path))
    parts = [f.geometry() for f in layer.getFeatures() if f.hasGeometry()]
    if not parts:
        raise ValueError(tr("the area file {path} holds no polygon").format(path=path))
    return QgsGeometry.unaryUnion(parts)


def add_area_layer(path: str, name: str = "", project: QgsProject = None) -> QgsVectorLayer:
    """The area file as an orange outline (the imagery shows through) in the project; a layer already reading
    that file is read again instead of added twice."""
    project = project or QgsProject.instance()
    real = os.path.realpath(path)
    for layer in project.mapLayers().values():
        if os.path.realpath(layer.source().split("|")[0]) == real:
            layer.reload()
            layer.updateExtents()
            layer.triggerRepaint()
            return layer
    layer = QgsVectorLayer(path, name or os.path.splitext(os.path.basename(path))[0], "ogr")
    if not layer.isValid():
        raise ValueError(tr("cannot read the area file {path}").format(path=path))
    symbol = QgsFillSymbol.createSimple({"color": f"{AREA_COLOUR},40", "outline_color": AREA_COLOUR,
                                         "outline_width": "0.8"})
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))
    project.addMapLayer(layer)
    return layer


def _measure(geom4326: QgsGeometry, transform_context=None):
    da = QgsDistanceArea()
    da.setSourceCrs(WGS84, _context(transform_context))
    da.setEllipsoid("WGS84")
    return da.measureArea(geom4326), da.measurePerimeter(geom4326)


def area_km2(geom4326: QgsGeometry, transform_context=None) -> float:
    return _measure(geom4326, transform_context)[0] / 1e6


def estimate_tiles(geom4326: QgsGeometry, zoom: int = ZOOM, transform_context=None) -> int:
    """About how many zoom-z tiles cover the area: area / tile area plus a border of half a tile along the
    perimeter (a randomly placed a x b rectangle meets (a/s + 1)(b/s + 1) tiles on average)."""
    area_m2, perimeter_m = _measure(geom4326, transform_context)
    lat = geom4326.centroid().asPoint().y()
    side = EARTH_CIRCUMFERENCE_M * math.cos(math.radians(lat)) / 2**zoom  # a tile's ground size there
    parts = max(1, geom4326.constGet().numGeometries() if geom4326.isMultipart() else 1)
    return int(round(area_m2 / side**2 + perimeter_m / (2 * side) + parts))
