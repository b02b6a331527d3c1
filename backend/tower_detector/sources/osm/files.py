"""Tower points and lines from files: OSM extracts (read with pyosmium), GeoJSON (or a saved Overpass answer) and
GeoPackage point layers (read with sqlite3).

File forms
  PATH.osm.pbf | .pbf | .osm | .osm.gz | .osm.bz2    an OSM extract
  PATH.geojson | .json   points with OSM tags as properties, flat or nested under "tags"; or a saved Overpass JSON
                         answer ({"elements": [...]}, nodes with "tags")
  PATH.gpkg, PATH.gpkg:LAYER, PATH.gpkg|layername=LAYER    a GeoPackage point layer
Lines come from OSM extracts, GeoJSON LineStrings and saved Overpass answers (ways with "geometry" from `out geom`,
or with "nodes" resolved against the answer's nodes); a GeoPackage gives points only: an empty Lines with a note.
Points and lines in another CRS (a GeoJSON crs member, a GeoPackage's srs) are reprojected to WGS84; coordinates
that look swapped or projected without a declared CRS are refused.
"""

import json
import math
import os
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import osmium
import pyproj
import shapely

from ...common.errors import UserError
from .model import Lines, Towers
from .overpass import answer_elements, is_overpass_answer, overpass_lines

_OSM_SUFFIXES = (".osm.pbf", ".pbf", ".osm", ".osm.gz", ".osm.bz2")
_GEOJSON_SUFFIXES = (".geojson", ".json")
_SOURCES_HINT = "give overpass, overpass:URL, or a .osm.pbf, .osm, .geojson or .gpkg file"
_HSTORE = re.compile(r'"((?:[^"\\]|\\.)*)"=>"((?:[^"\\]|\\.)*)"')


@dataclass
class _Features:
    """What a file reader found: points with their tags, and facts about all of the file's features."""

    name: str
    ids: list
    x: np.ndarray
    y: np.ndarray
    tags: list
    crs: object  # a pyproj CRS, or None when the file declares none
    n_features: int
    keys: set  # every attribute name seen on any feature
    all_points: bool


def read_towers_file(spec, flt):
    """The points of a file source matching the TagFilter flt, as Towers in WGS84."""
    path, layer = _checked_path(spec)
    lower = path.lower()
    if lower.endswith(_OSM_SUFFIXES):
        return _read_osm(path, flt)
    if lower.endswith(_GEOJSON_SUFFIXES):
        data = _read_json(path)
        features = _overpass_points(data, path) if is_overpass_answer(data) else _read_geojson(data, path)
    elif lower.endswith(".gpkg"):
        features = _read_gpkg(path, layer)
    else:
        raise UserError(f"unknown towers file type: {os.path.basename(path)} ({_SOURCES_HINT})")
    return _select(features, flt)


def read_lines_file(spec, flt):
    """The ways (lines) of a file source matching the TagFilter flt, as Lines in WGS84."""
    path, _ = _checked_path(spec)
    lower = path.lower()
    if lower.endswith(_OSM_SUFFIXES):
        return _read_osm_lines(path, flt)
    if lower.endswith(_GEOJSON_SUFFIXES):
        data = _read_json(path)
        return _overpass_file_lines(data, path, flt) if is_overpass_answer(data) else _geojson_lines(data, path, flt)
    if lower.endswith(".gpkg"):
        name = os.path.basename(path)
        return Lines([], [], name, [f"{name}: lines are not read from GeoPackage files (points only)"])
    raise UserError(f"unknown towers file type: {os.path.basename(path)} ({_SOURCES_HINT})")


def _checked_path(spec):
    """(path, layer) of a file source that exists and can be read."""
    path, layer = _split_layer(spec)
    if not os.path.exists(path):
        raise UserError(f"towers source not found: {spec} ({_SOURCES_HINT})")
    if os.path.isdir(path):
        raise UserError(f"towers source {spec} is a directory ({_SOURCES_HINT})")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read the towers file {spec}: permission denied")
    return path, layer


def _split_layer(spec):
    """'a.gpkg:layer' or 'a.gpkg|layername=layer' -> ('a.gpkg', 'layer'); anything else -> (spec, None)."""
    m = re.match(r"(?is)^(.*\.gpkg)\|layername=(.+)$", spec)
    if not m and not os.path.exists(spec):
        m = re.match(r"(?is)^(.*\.gpkg):([^\\/]+)$", spec)
    return (m.group(1), m.group(2).strip()) if m else (spec, None)


def _read_osm(path, flt):
    ids, lon, lat, values = [], [], [], []
    try:
        # filtering in C++ (and reading nodes only) keeps a country extract's millions of nodes out of Python
        for node in osmium.FileProcessor(path, osmium.osm.NODE).with_filter(_osmium_filter(flt)):
            if node.location.valid():
                ids.append(f"node/{node.id}")
                lon.append(node.location.lon)
                lat.append(node.location.lat)
                values.append(flt.value_of(node.tags))
    except RuntimeError as exc:
        raise UserError(f"cannot read {os.path.basename(path)} as an OSM file: {' '.join(str(exc).split())}") from None
    return Towers(lon, lat, ids, path, values=values)


def _read_osm_lines(path, flt):
    geometries, ids = [], []
    processor = (osmium.FileProcessor(path, osmium.osm.NODE | osmium.osm.WAY).with_locations()
                 .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY)).with_filter(_osmium_filter(flt)))
    try:
        for way in processor:  # node locations are cached before the filters drop the nodes
            coords = [(n.lon, n.lat) for n in way.nodes if n.location.valid()]
            if len(coords) >= 2:
                geometries.append(shapely.LineString(coords))
                ids.append(f"way/{way.id}")
    except RuntimeError as exc:
        raise UserError(f"cannot read {os.path.basename(path)} as an OSM file: {' '.join(str(exc).split())}") from None
    return Lines(geometries, ids, path)


def _osmium_filter(flt):
    if flt.key is None:
        raise UserError("tag filter 'all' is for plain point files; OSM extracts need a tag, e.g. power=tower")
    if flt.values is None:
        return osmium.filter.KeyFilter(flt.key)
    return osmium.filter.TagFilter(*((flt.key, v) for v in flt.values))


def _read_json(path):
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except UnicodeDecodeError:
        raise UserError(f"{name} is not GeoJSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} is not GeoJSON (invalid JSON at line {exc.lineno}: {exc.msg})") from None
    except OSError as exc:
        raise UserError(f"cannot read the towers file {name}: {exc.strerror or exc}") from None


def _overpass_elements(data, path):
    name = os.path.basename(path)
    return name, answer_elements(data, name, f"the Overpass answer in {name} reports an error")


def _overpass_points(data, path):
    """A saved Overpass JSON answer's nodes, with their tags, as _Features (WGS84, as Overpass gives them)."""
    name, elements = _overpass_elements(data, path)
    nodes = [e for e in elements if e["type"] == "node"]
    tags = [e.get("tags") or {} for e in nodes]
    return _Features(name, [f"node/{e['id']}" for e in nodes], np.array([e["lon"] for e in nodes], dtype=np.float64),
                     np.array([e["lat"] for e in nodes], dtype=np.float64), tags, None, len(elements),
                     {k for t in tags for k in t}, len(nodes) == len(elements))


def _overpass_file_lines(data, path, flt):
    name, elements = _overpass_elements(data, path)
    nodes = {e["id"]: (e["lon"], e["lat"]) for e in elements if e["type"] == "node"}
    ways = [e for e in elements if e["type"] == "way" and flt.matches(e.get("tags") or {})]
    return overpass_lines(ways, nodes, name)


def _read_geojson(data, path):
    name = os.path.basename(path)
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in ("FeatureCollection", "Feature"):
        raise UserError(f"{name} is not a GeoJSON FeatureCollection (type {kind!r})")
    features = (data.get("features") or []) if kind == "FeatureCollection" else [data]
    ids, xs, ys, tags, keys = [], [], [], [], set()
    all_points = True
    for index, feature in enumerate(features):
        if not isinstance(feature, dict):
            raise UserError(f"{name}: feature {index} is not a GeoJSON object")
        props = _geojson_tags(feature.get("properties"))
        keys.update(props)
        geometry = feature.get("geometry")
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind not in ("Point", "MultiPoint"):
            all_points = False
            continue
        positions = [geometry.get("coordinates")] if kind == "Point" else geometry.get("coordinates") or []
        fid = _feature_id(feature.get("id"), props, index)
        for part, position in enumerate(positions):
            if not (isinstance(position, list) and len(position) >= 2
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in position[:2])):
                raise UserError(f"{name}: feature {index} has a bad coordinate {json.dumps(position)[:60]}")
            ids.append(fid if len(positions) == 1 else f"{fid}:{part}")
            xs.append(position[0])
            ys.append(position[1])
            tags.append(props)
    return _Features(name, ids, np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64), tags,
                     _geojson_crs(data, name), len(features), keys, all_points)


def _geojson_lines(data, path, flt):
    """The LineString/MultiLineString features matching flt, in WGS84 (reprojected when a CRS is declared)."""
    name = os.path.basename(path)
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in ("FeatureCollection", "Feature"):
        raise UserError(f"{name} is not a GeoJSON FeatureCollection (type {kind!r})")
    geometries, ids = [], []
    for index, feature in enumerate((data.get("features") or []) if kind == "FeatureCollection" else [data]):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        props = _geojson_tags(feature.get("properties")) if isinstance(feature, dict) else {}
        if not (isinstance(geometry, dict) and geometry.get("type") in ("LineString", "MultiLineString")
                and flt.matches(props)):
            continue
        try:
            parts = shapely.get_parts(shapely.geometry.shape(geometry))
        except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException):
            raise UserError(f"{name}: feature {index} has a bad line geometry") from None
        fid = _feature_id(feature.get("id"), props, index)
        for part, line in enumerate(parts):
            geometries.append(line)
            ids.append(fid if len(parts) == 1 else f"{fid}:{part}")
    lines = np.array(geometries, dtype=object)
    crs = _geojson_crs(data, name)
    if len(lines) and crs is not None and not _is_wgs84(crs):
        to_wgs84 = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        lines = shapely.transform(lines, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
    elif len(lines):
        xy = shapely.get_coordinates(lines)
        _check_lonlat(name, xy[:, 0], xy[:, 1], declared=crs is not None)
    return Lines(lines, ids, name)


def _geojson_tags(props):
    """Flat properties, with OSM tags nested under "tags" (some exports) or in "other_tags" (GDAL) lifted up."""
    if not isinstance(props, dict):
        return {}
    tags = {k: v for k, v in props.items() if k != "tags" and v is not None}
    nested = props.get("tags")
    if isinstance(nested, dict):
        tags.update((k, v) for k, v in nested.items() if v is not None)
    return _with_other_tags(tags)


def _with_other_tags(tags):
    # GDAL's OSM driver puts the tags it has no column for in one hstore string: "power"=>"tower","ref"=>"12"
    other = tags.get("other_tags")
    if isinstance(other, str):
        tags = {**tags, **{_unescape(k): _unescape(v) for k, v in _HSTORE.findall(other)}}
    return tags


def _unescape(text):
    return text.replace('\\"', '"').replace("\\\\", "\\")


def _feature_id(fid, props, index):
    if isinstance(props.get("@id"), str):
        return props["@id"]
    if props.get("type") in ("node", "way", "relation") and isinstance(props.get("id"), int):
        return f"{props['type']}/{props['id']}"
    if isinstance(fid, str) and fid:
        return fid
    return f"feature/{fid if isinstance(fid, int) else index}"


def _geojson_crs(data, name):
    """The legacy (2008) GeoJSON crs member as a pyproj CRS, or None when absent."""
    crs = data.get("crs")
    if not crs:
        return None
    props = (crs.get("properties") or {}) if isinstance(crs, dict) else {}
    ident = props.get("name") or (f"EPSG:{props['code']}" if "code" in props else None)
    return _crs(ident, name)


def _crs(ident, name):
    try:
        return pyproj.CRS.from_user_input(ident)
    except (pyproj.exceptions.CRSError, TypeError):
        raise UserError(f"{name} declares a CRS that is not understood: {str(ident)[:80]!r}") from None


def _read_gpkg(path, layer):
    name = os.path.basename(path)
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as db:
            layers = db.execute(
                "SELECT g.table_name, g.column_name, g.geometry_type_name, g.srs_id FROM gpkg_geometry_columns g "
                "JOIN gpkg_contents c ON c.table_name = g.table_name WHERE c.data_type = 'features'").fetchall()
            table, column, srs_id = _pick_layer(name, layers, layer)
            crs = _gpkg_crs(db, srs_id, name)
            columns = db.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
            pk = next((c[1] for c in columns if c[5]), None)
            attributes = [c[1] for c in columns if c[1] not in (pk, column)]
            selected = ", ".join(_quote(c) for c in [pk or "rowid", column, *attributes])
            rows = db.execute(f"SELECT {selected} FROM {_quote(table)}").fetchall()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot read {name} as a GeoPackage ({exc})") from None
    label = f"{name}:{table}"
    wkb = np.array([_gpkg_wkb(row[1], label) for row in rows], dtype=object)
    try:
        geometries = shapely.from_wkb(wkb)
    except shapely.errors.GEOSException as exc:
        raise UserError(f"{label}: unreadable geometry ({exc})") from None
    present = ~shapely.is_missing(geometries)
    parts, owner = shapely.get_parts(geometries[present], return_index=True)
    owner = np.flatnonzero(present)[owner]
    points = (shapely.get_type_id(parts) == 0) & ~shapely.is_empty(parts)
    parts, owner = parts[points], owner[points]
    coords = shapely.get_coordinates(parts).reshape(-1, 2)
    all_tags = [_with_other_tags({k: v for k, v in zip(attributes, row[2:]) if v is not None}) for row in rows]
    n_parts = np.bincount(owner, minlength=len(rows))
    ids, seen = [], {}
    for i in owner.tolist():  # get_parts lists a multipoint's parts together, in order
        part = seen[i] = seen.get(i, -1) + 1
        fid = _feature_id(rows[i][0], all_tags[i], i)
        ids.append(fid if n_parts[i] == 1 else f"{fid}:{part}")
    kinds = shapely.get_type_id(geometries[present])
    return _Features(label, ids, coords[:, 0], coords[:, 1], [all_tags[i] for i in owner.tolist()], crs, len(rows),
                     {k for t in all_tags for k in t}, bool(np.isin(kinds, (0, 4)).all()))


def _quote(identifier):
    return '"' + identifier.replace('"', '""') + '"'


def _pick_layer(name, layers, wanted):
    """(table, geometry column, srs_id) of the named layer, or of the file's only point layer."""
    if wanted is not None:
        for table, column, _, srs_id in layers:
            if table.lower() == wanted.lower():
                return table, column, srs_id
        listed = ", ".join(t for t, *_ in layers) or "none"
        raise UserError(f"{name} has no layer {wanted!r} (layers: {listed})")
    points = [(t, c, s) for t, c, kind, s in layers if str(kind).upper() in ("POINT", "MULTIPOINT")]
    if len(points) == 1:
        return points[0]
    if not points:
        listed = ", ".join(f"{t} ({kind.lower()})" for t, _, kind, _ in layers) or "none"
        raise UserError(f"{name} has no point layer (layers: {listed}); name one as {name}:LAYER")
    listed = ", ".join(t for t, *_ in points)
    raise UserError(f"{name} has several point layers ({listed}); pick one as {name}:LAYER")


def _gpkg_crs(db, srs_id, name):
    """The layer's CRS, or None for GeoPackage's 'undefined' systems (srs_id 0 and -1)."""
    if srs_id in (0, -1):
        return None
    row = db.execute("SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys "
                     "WHERE srs_id = ?", (srs_id,)).fetchone()
    if row is None:
        raise UserError(f"{name}: the layer's srs_id {srs_id} is missing from gpkg_spatial_ref_sys")
    organization, code, definition = row
    if str(organization).upper() == "EPSG" and code:
        return _crs(f"EPSG:{code}", name)
    return _crs(definition, name)


def _gpkg_wkb(blob, label):
    """The WKB inside a GeoPackage binary geometry (None for a null or empty one)."""
    if blob is None:
        return None
    blob = bytes(blob)
    if len(blob) < 8 or blob[:2] != b"GP":
        raise UserError(f"{label}: a geometry is not GeoPackage binary (no 'GP' header)")
    flags = blob[3]
    if flags & 0x10:  # the empty-geometry bit
        return None
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((flags >> 1) & 0x07)
    if envelope is None:
        raise UserError(f"{label}: a geometry has an invalid envelope code in its GeoPackage header")
    # bytes 4-8 hold the srs_id (in the byte order of flag bit 0): the layer's, which we already have
    return blob[8 + envelope:]


def _select(features, flt):
    """Apply the tag filter, then bring the kept points to WGS84 lon/lat (reprojecting, or checking)."""
    name = features.name
    if flt.key is not None and features.n_features and flt.key not in features.keys:
        listed = ", ".join(sorted(features.keys)[:10]) or "none"
        if features.all_points:
            raise UserError(f"no feature in {name} has a {flt.key!r} attribute (its attributes: {listed}); for a "
                            "plain point layer pass --tower-filter all, or name an attribute as key=value")
        raise UserError(f"no feature in {name} has a {flt.key!r} attribute (its attributes: {listed}); "
                        "pass a --tower-filter that names one of them")
    keep = np.array([flt.matches(t) for t in features.tags], dtype=bool)
    ids = [i for i, k in zip(features.ids, keep) if k]
    values = [flt.value_of(t) for t, k in zip(features.tags, keep) if k]
    x, y = features.x[keep], features.y[keep]
    notes = []
    crs = features.crs
    if crs is not None and not _is_wgs84(crs):
        x, y = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise UserError(f"{name}: some points could not be reprojected from {_crs_name(crs)} to WGS84")
        notes.append(f"reprojected {len(ids)} points from {_crs_name(crs)} to WGS84")
    else:
        _check_lonlat(name, x, y, declared=crs is not None)
    return Towers(x, y, ids, name, notes, values)


def _is_wgs84(crs):
    return crs.is_geographic and crs.equals(pyproj.CRS.from_epsg(4326), ignore_axis_order=True)


def _crs_name(crs):
    return crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"


def _check_lonlat(name, x, y, declared):
    if not len(x):
        return
    max_x, max_y = float(np.abs(x).max()), float(np.abs(y).max())
    if 90 < max_y <= 180 and max_x <= 90:
        raise UserError(f"{name}: latitude and longitude look swapped (latitudes up to {max_y:g}); "
                        "the order is x=longitude, y=latitude")
    if max_x > 180 or max_y > 90:
        i = int(np.argmax(np.maximum(np.abs(x) / 180, np.abs(y) / 90)))
        sample = f"({x[i]:.6g}, {y[i]:.6g})"
        if declared:
            raise UserError(f"{name}: coordinate {sample} is outside longitude -180..180 / latitude -90..90")
        raise UserError(f"{name}: coordinates look projected, e.g. {sample}, but no CRS is declared; "
                        "reproject to WGS84 (EPSG:4326) or declare the CRS")
