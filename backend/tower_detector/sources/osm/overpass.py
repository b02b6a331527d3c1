"""The Overpass API as a source of tower points and lines.

Overpass is queried in chunks of a fixed degree grid clipped to the area's bbox, so a country is many small queries
rather than one that times out, and a cache (one file per chunk answer) lets a rerun skip the network. Answers of
429/50x, timeouts and connection errors are retried (waiting Retry-After, else a doubling backoff). Every problem a
user can fix is a UserError with a one-line reason. Saved Overpass answers read as files (files.py) are checked
and turned into lines by the same functions (answer_elements, overpass_lines).
"""

import hashlib
import json
import math
import os
import re
import time
from urllib.parse import urlsplit

import numpy as np
import requests
import shapely

from ...common.atomic import atomic_file
from ...common.errors import UserError
from ...common.redaction import redact
from ..web import USER_AGENT, retry_after
from .model import Lines, Towers

DEFAULT_OVERPASS_URL = "https://overpass-api.de/api/interpreter"
CHUNK_DEGREES = 0.5
MAX_RETRY_AFTER = 300  # seconds: the longest wait a Retry-After header gets
_RETRY_STATUS = {429, 502, 503, 504}


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


class Overpass:
    """A client of one Overpass endpoint: towers() and lines() over an area's chunks; answers cached in cache_dir."""

    def __init__(self, url, timeout, retries, backoff, cache_dir, log=None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"bad Overpass URL {redact(url)!r}: give overpass:http(s)://host/api/interpreter")
        self.url = url
        self.name = f"Overpass at {redact(url)}"
        self.timeout = timeout
        self.retries = max(int(retries), 0)
        self.backoff = backoff
        self.log = log or (lambda *a, **k: None)  # hears each retry, so a waiting run says why it waits
        self.cache_dir = os.path.join(cache_dir, "overpass") if cache_dir else None

    def towers(self, geometry, flt, chunk_degrees, progress):
        nodes, note = self._collect(geometry, flt, "node", chunk_degrees, progress)
        ids = list(nodes)
        coords = np.array([(nodes[i]["lon"], nodes[i]["lat"]) for i in ids], dtype=np.float64).reshape(-1, 2)
        return Towers(coords[:, 0], coords[:, 1], [f"node/{i}" for i in ids], f"overpass {redact(self.url)}",
                      [note], [flt.value_of(nodes[i].get("tags") or {}) for i in ids])

    def lines(self, geometry, flt, chunk_degrees, progress):
        ways, note = self._collect(geometry, flt, "way", chunk_degrees, progress)
        return overpass_lines(list(ways.values()), {}, f"overpass {redact(self.url)}", [note])

    def _collect(self, geometry, flt, element, chunk_degrees, progress):
        """({id: element}, note) of the elements of one kind matching flt, over the chunks of geometry."""
        chunks = overpass_chunks(geometry, chunk_degrees)
        found = {}
        cached = 0
        with requests.Session() as session:
            session.headers["User-Agent"] = USER_AGENT
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
                asked = retry_after(response.headers.get("Retry-After"))
                wait = wait if asked is None else min(asked, MAX_RETRY_AFTER)
            if attempt < self.retries:
                self.log(f"{self.name} {failure.replace('kept answering', 'answered')}: retrying "
                         f"{attempt + 1}/{self.retries} in {wait:g} s")
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
        return answer_elements(data, self.name, f"{self.name} failed the query for bbox {box} (S,W,N,E)")


def answer_elements(data, name, failed):
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


def is_overpass_answer(data):
    return isinstance(data, dict) and "type" not in data and isinstance(data.get("elements"), list)


def overpass_lines(ways, nodes, source, notes=()):
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
    # a crash never leaves a truncated answer under the real name
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        with atomic_file(path, encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise UserError(f"cannot write the Overpass cache in {directory}: {exc.strerror or exc}") from None
