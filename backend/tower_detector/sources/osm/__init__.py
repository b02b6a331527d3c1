"""Tower points from OSM sources: the Overpass API, a .osm.pbf/.osm extract, a GeoJSON or a GeoPackage.

`load_towers(spec, ...)` reads any of them into `Towers` (WGS84 points with ids). Spec forms:
  overpass               the public Overpass API (needs an area)
  overpass:URL           any Overpass `interpreter` endpoint
  PATH.osm.pbf | .pbf | .osm | .osm.gz | .osm.bz2    an OSM extract, read with pyosmium
  PATH.geojson | .json   points with OSM tags as properties, flat or nested under "tags"; or a saved
                         Overpass JSON answer ({"elements": [...]}, nodes with "tags")
  PATH.gpkg, PATH.gpkg:LAYER, PATH.gpkg|layername=LAYER    a GeoPackage point layer (read with sqlite3)

`load_lines(spec, ...)` reads ways (power=line,minor_line by default) from the same sources into `Lines`:
Overpass (`way[...]` with `out geom`), OSM extracts, GeoJSON LineStrings and saved Overpass answers (ways
with "geometry" from `out geom`, or with "nodes" resolved against the answer's nodes). GeoPackage sources
give points only: lines from one are an empty Lines with a note saying so.

Tag filters (`parse_tag_filter`): "power=tower", "power=tower,pole" (any of the values), "power" (any
value) or "all" (every point, for plain point layers without OSM tags).

Overpass is queried in chunks of a fixed degree grid clipped to the area's bbox, so a country is many
small queries rather than one that times out, and a cache (one file per chunk answer) lets a rerun
skip the network. Every problem a user can fix is a UserError with a one-line reason.
"""

import email.utils
import hashlib
import json
import math
import os
import re
import sqlite3
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import osmium
import pyproj
import requests
import shapely

from ... import __version__
from ...common.errors import UserError
from ...common.redaction import redact
from ...geo.areas import load_area

DEFAULT_OVERPASS_URL = "https://overpass-api.de/api/interpreter"
CHUNK_DEGREES = 0.5
MAX_RETRY_AFTER = 300  # seconds: the longest wait a Retry-After header gets

_OSM_SUFFIXES = (".osm.pbf", ".pbf", ".osm", ".osm.gz", ".osm.bz2")
_GEOJSON_SUFFIXES = (".geojson", ".json")
_SOURCES_HINT = "give overpass, overpass:URL, or a .osm.pbf, .osm, .geojson or .gpkg file"
_NAME = re.compile(r'^[^"\\=,\s][^"\\=,]*$')  # a tag key or value we can quote safely in Overpass QL
_HSTORE = re.compile(r'"((?:[^"\\]|\\.)*)"=>"((?:[^"\\]|\\.)*)"')
_RETRY_STATUS = {429, 502, 503, 504}


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


def load_towers(spec, *, area=None, tag_filter="power=tower", overpass_url=None, cache_dir=None, timeout=180,
                retries=4, backoff=2.0, chunk_degrees=CHUNK_DEGREES, progress=None):
    """Tower points from `spec` (see the module docstring), inside `area` (an Area or area spec) when given.

    Overpass only: `timeout` is the query's [timeout:N] (the client waits a little longer), `retries` the
    extra tries after 429/50x answers, timeouts and connection errors (waiting Retry-After, else `backoff`
    seconds doubling each time), `cache_dir` keeps each chunk's answer, `progress(done, total)` is called
    per chunk. An Overpass answer with no towers is an empty Towers, not an error.
    """
    flt = parse_tag_filter(tag_filter)
    spec = str(spec).strip()
    area, client = _source(spec, area, "towers", overpass_url, timeout, retries, backoff, cache_dir)
    towers = client.towers(area.geometry, flt, chunk_degrees, progress) if client else _load_file(spec, flt)
    return towers if area is None else towers.within(area)


def load_lines(spec, *, area=None, tag_filter="power=line,minor_line", overpass_url=None, cache_dir=None,
               timeout=180, retries=4, backoff=2.0, chunk_degrees=CHUNK_DEGREES, progress=None):
    """Ways matching tag_filter from `spec` as Lines, those meeting `area` when given; arguments as load_towers."""
    flt = parse_tag_filter(tag_filter)
    if flt.key is None:
        raise UserError("tag filter 'all' is for plain point files; lines need a tag, e.g. power=line")
    spec = str(spec).strip()
    area, client = _source(spec, area, "lines", overpass_url, timeout, retries, backoff, cache_dir)
    lines = client.lines(area.geometry, flt, chunk_degrees, progress) if client else _load_line_file(spec, flt)
    return lines if area is None else lines.intersecting(area)


def _source(spec, area, what, overpass_url, timeout, retries, backoff, cache_dir):
    """(the area loaded, an Overpass client when spec names Overpass, else None)."""
    if isinstance(area, (str, os.PathLike)):
        area = load_area(str(area))
    if not (spec == "overpass" or spec.startswith("overpass:")):
        return area, None
    if area is None:
        raise UserError(f"the overpass {what} source needs an area to query")
    url = spec[len("overpass:"):] or overpass_url or DEFAULT_OVERPASS_URL
    return area, _Overpass(url, timeout, retries, backoff, cache_dir)


# --- Overpass ------------------------------------------------------------------------------------


def overpass_query(flt, bbox, timeout, element="node"):
    """(settings, body) of the QL query for nodes (or ways, with their geometry) matching flt in bbox
    (south, west, north, east)."""
    if flt.key is None:
        raise UserError("tag filter 'all' is for plain point files; Overpass needs a tag, e.g. power=tower")
    box = "(" + ",".join(_coordinate(v, up) for v, up in zip(bbox, (False, False, True, True))) + ")"
    if flt.values is None:
        statements = [f'{element}["{flt.key}"]{box};']
    else:
        statements = [f'{element}["{flt.key}"="{v}"]{box};' for v in flt.values]
    body = statements[0] if len(statements) == 1 else "(" + "".join(statements) + ");"
    return f"[out:json][timeout:{int(timeout)}];", body + ("out;" if element == "node" else "out geom;")


def _coordinate(value, up):
    # round outwards to 1e-7 degrees (~1 cm) so that no node on a chunk's edge falls between chunks
    scaled = value * 1e7
    scaled = math.ceil(scaled - 1e-6) if up else math.floor(scaled + 1e-6)
    return f"{scaled / 1e7:.7f}".rstrip("0").rstrip(".")


def overpass_chunks(geometry, size=CHUNK_DEGREES):
    """(south, west, north, east) boxes of a size-degree grid that meet geometry, clipped to its bbox.

    Longitudes past 180 (antimeridian areas) are brought back into -180..180 for the query.
    """
    west, south, east, north = geometry.bounds
    south, north = max(south, -90.0), min(north, 90.0)
    cells = [(max(x * size, west), max(y * size, south), min((x + 1) * size, east), min((y + 1) * size, north))
             for x in range(math.floor(west / size), math.ceil(east / size))
             for y in range(math.floor(south / size), math.ceil(north / size))]
    cells = [c for c in cells if c[0] < c[2] and c[1] < c[3]]
    if not cells:
        return []
    shapely.prepare(geometry)
    hits = shapely.intersects(geometry, shapely.box(*np.array(cells).T))
    chunks = []
    for w, s, e, n in (c for c, hit in zip(cells, hits) if hit):
        pieces = [(w, e)] if w >= 180 or e <= 180 else [(w, 180.0), (180.0, e)]  # a grid that doesn't divide 180
        for pw, pe in pieces:
            shift = -360.0 if pw >= 180 else 0.0
            chunks.append((s, pw + shift, n, pe + shift))
    return chunks


class _Overpass:
    def __init__(self, url, timeout, retries, backoff, cache_dir):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"bad Overpass URL {redact(url)!r}: give overpass:http(s)://host/api/interpreter")
        self.url = url
        self.name = f"Overpass at {redact(url)}"
        self.timeout = timeout
        self.retries = max(int(retries), 0)
        self.backoff = backoff
        self.cache_dir = os.path.join(cache_dir, "overpass") if cache_dir else None

    def towers(self, geometry, flt, chunk_degrees, progress):
        nodes, note = self._collect(geometry, flt, "node", chunk_degrees, progress)
        ids = list(nodes)
        coords = np.array([(nodes[i]["lon"], nodes[i]["lat"]) for i in ids], dtype=np.float64).reshape(-1, 2)
        return Towers(coords[:, 0], coords[:, 1], [f"node/{i}" for i in ids], f"overpass {redact(self.url)}",
                      [note], [flt.value_of(nodes[i].get("tags") or {}) for i in ids])

    def lines(self, geometry, flt, chunk_degrees, progress):
        ways, note = self._collect(geometry, flt, "way", chunk_degrees, progress)
        return _overpass_lines(list(ways.values()), {}, f"overpass {redact(self.url)}", [note])

    def _collect(self, geometry, flt, element, chunk_degrees, progress):
        """({id: element}, note) of the elements of one kind matching flt, over the chunks of geometry."""
        chunks = overpass_chunks(geometry, chunk_degrees)
        found = {}
        cached = 0
        with requests.Session() as session:
            session.headers["User-Agent"] = f"tower-detector/{__version__}"
            for done, bbox in enumerate(chunks, 1):
                settings, body = overpass_query(flt, bbox, self.timeout, element)
                elements, from_cache = self._answer(session, settings, body, bbox)
                cached += from_cache
                for e in elements:
                    if e["type"] == element:
                        found[e["id"]] = e  # chunks share edges: an id seen twice is one element
                if progress:
                    progress(done, len(chunks))
        note = f"{len(chunks)} Overpass queries of <= {chunk_degrees} degrees"
        if cached:
            note += f", {cached} answered from the cache"
        return found, note

    def _answer(self, session, settings, body, bbox):
        """(elements, came_from_cache) for one chunk's query."""
        path = None
        if self.cache_dir:
            key = hashlib.sha256(f"{self.url}\n{body}".encode()).hexdigest()
            path = os.path.join(self.cache_dir, key + ".json")
            try:
                with open(path, encoding="utf-8") as f:
                    return self._elements(f.read(), bbox), True
            except (OSError, UserError):
                pass  # absent, or unreadable: ask again and overwrite it
        text = self._fetch(session, settings + body)
        elements = self._elements(text, bbox)
        if path:
            _write_atomic(path, text)
        return elements, False

    def _fetch(self, session, query):
        # Overpass gives up at [timeout:N] and says so; wait a little longer than that for its answer
        timeouts = (min(self.timeout, 30), self.timeout + min(self.timeout, 10))
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2**attempt
            try:
                response = session.post(self.url, data={"data": query}, timeout=timeouts)
            except requests.Timeout:
                failure = f"did not answer within {timeouts[1]} s"
            except requests.ConnectionError as exc:
                failure = f"could not be reached ({_reason(exc)})"
            except requests.RequestException as exc:
                failure = f"broke off its answer ({type(exc).__name__})"
            else:
                status = response.status_code
                # Overpass answers UTF-8; decoding it ourselves spares requests guessing over megabytes
                text = response.content.decode("utf-8", errors="replace")
                if status == 200:
                    return text
                if status not in _RETRY_STATUS:
                    raise UserError(f"{self.name} rejected the query (HTTP {status}): {_page_text(text)}")
                failure = "kept answering 429 (rate limited)" if status == 429 else f"kept answering {status}"
                wait = _retry_after(response.headers.get("Retry-After"), wait)
            if attempt < self.retries:
                time.sleep(wait)
        tries = f"{self.retries + 1} tries" if self.retries else "1 try"
        raise UserError(f"{self.name} {failure} after {tries}; wait and retry or use another endpoint (overpass:URL)")

    def _elements(self, text, bbox):
        try:
            data = json.loads(text)
        except ValueError:
            what = "an HTML page" if text.lstrip().startswith("<") else "something"
            raise UserError(f"{self.name} answered {what} instead of JSON: {_page_text(text)}") from None
        box = ",".join(f"{v:.4f}" for v in bbox)
        return _answer_elements(data, self.name, f"{self.name} failed the query for bbox {box} (S,W,N,E)")


def _answer_elements(data, name, failed):
    """The elements of an Overpass JSON answer, checked: nodes with lat/lon, ways with geometry or node ids
    (other kinds, such as relations, pass unchecked: no reader uses them). `failed` starts the message when the
    answer reports an error in its remark."""
    if not isinstance(data, dict) or not isinstance(data.get("elements"), list):
        raise UserError(f"{name} answered JSON without an 'elements' list; is it an Overpass endpoint?")
    remark = str(data.get("remark") or "")
    if "error" in remark.lower():
        raise UserError(f"{failed}: {' '.join(remark.split())}")
    elements = data["elements"]
    for e in elements:
        ok = isinstance(e, dict) and isinstance(e.get("type"), str) and isinstance(e.get("id"), int)
        if ok and e["type"] == "node":
            ok = all(isinstance(e.get(k), (int, float)) for k in ("lat", "lon"))
        elif ok and e["type"] == "way":
            ok = isinstance(e.get("geometry", e.get("nodes")), list)
        if not ok:
            raise UserError(f"{name} answered a malformed element: {json.dumps(e)[:120]}")
    return elements


def _is_overpass_answer(data):
    return isinstance(data, dict) and "type" not in data and isinstance(data.get("elements"), list)


def _overpass_lines(ways, nodes, source, notes=()):
    """Lines of Overpass way elements: from their `out geom` geometry, else their node ids looked up in
    nodes ({id: (lon, lat)}); ways with fewer than two known positions are left out."""
    geometries, ids = [], []
    for way in ways:
        if "geometry" in way:
            coords = [(p["lon"], p["lat"]) for p in way["geometry"] if isinstance(p, dict)]
        else:
            coords = [nodes[n] for n in way["nodes"] if n in nodes]
        if len(coords) >= 2:
            geometries.append(shapely.LineString(coords))
            ids.append(f"way/{way['id']}")
    return Lines(geometries, ids, source, notes)


def _retry_after(header, default):
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), else default."""
    if not header:
        return default
    try:
        seconds = float(header)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(header).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _reason(exc):
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                   "Connection reset", "No route to host"):
        if marker in text:
            return marker
    return type(exc).__name__


def _page_text(text, limit=160):
    """The gist of an error page: Overpass puts it after 'Error:'; otherwise the start of the text."""
    plain = re.sub(r"<[^>]*>", " ", re.sub(r"(?is)<(script|style|head)\b.*?</\1>", " ", text))
    plain = re.sub(r"\s+([:;,.])", r"\1", " ".join(plain.split()))  # "<b>Error</b>: x" -> "Error: x"
    start = plain.find("Error:")
    plain = plain[start:] if start >= 0 else plain
    return (plain[:limit] + "...") if len(plain) > limit else (plain or "(empty answer)")


def _write_atomic(path, text):
    # a temporary file renamed into place: a crash never leaves a truncated answer under the real name
    directory = os.path.dirname(path)
    temporary = None
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=directory, suffix=".tmp", delete=False) as f:
            temporary = f.name
            f.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        if temporary and os.path.exists(temporary):
            os.unlink(temporary)
        raise UserError(f"cannot write the Overpass cache in {directory}: {exc.strerror or exc}") from None


# --- files ---------------------------------------------------------------------------------------


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


def _load_file(spec, flt):
    path, layer = _checked_path(spec)
    lower = path.lower()
    if lower.endswith(_OSM_SUFFIXES):
        return _read_osm(path, flt)
    if lower.endswith(_GEOJSON_SUFFIXES):
        data = _read_json(path)
        features = _overpass_points(data, path) if _is_overpass_answer(data) else _read_geojson(data, path)
    elif lower.endswith(".gpkg"):
        features = _read_gpkg(path, layer)
    else:
        raise UserError(f"unknown towers file type: {os.path.basename(path)} ({_SOURCES_HINT})")
    return _select(features, flt)


def _load_line_file(spec, flt):
    path, _ = _checked_path(spec)
    lower = path.lower()
    if lower.endswith(_OSM_SUFFIXES):
        return _read_osm_lines(path, flt)
    if lower.endswith(_GEOJSON_SUFFIXES):
        data = _read_json(path)
        return _overpass_file_lines(data, path, flt) if _is_overpass_answer(data) else _geojson_lines(data, path, flt)
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
    return name, _answer_elements(data, name, f"the Overpass answer in {name} reports an error")


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
    return _overpass_lines(ways, nodes, name)


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
