"""A loopback stand-in for the Overpass API's `interpreter` endpoint, for tests (a real HTTP server).

It answers Overpass QL queries of the form tower_detector.sources.osm generates, `node[...](s,w,n,e);` or
`way[...](s,w,n,e);` statements alone or in a union, with the recorded nodes (ways, with their `out geom`
geometry) that match the tag filters and lie in (have a point in) the bbox:

    from tests.fakes.overpass_server import OverpassServer, elements_from_geojson

    with OverpassServer(elements_from_geojson(scene["towers"])) as server:
        load_towers(f"overpass:{server.url}", area=...)
        server.log          # one dict per request: method, query, bboxes, status, elements
        server.clear_log()

Knobs (plain attributes, changeable while it runs; the counters count down as requests come):
    latency      seconds to wait before each answer; with slow_first=N only the next N requests wait
    fail_429     answer the next N requests with 429 and a Retry-After of `retry_after` seconds
    fail_504     then answer the next N with 504 (gateway timeout, as a busy Overpass does)
    empty        answer every query with no elements
    fixed        (status, content_type, body_bytes): answer every request with exactly that
Filters understood: ["k"], ["k"="v"], ["k"~"regex"]. A query without a bbox statement gets a 400 HTML page.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.fakes.loopback import LoopbackServer

_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_STATEMENT = re.compile(r'(node|way)((?:\[[^\]]*\])*)\(' + ",".join([_NUMBER] * 4) + r'\)')
_FILTER = re.compile(r'\[\s*"([^"]+)"\s*(?:(=|~)\s*"([^"]*)"\s*)?\]')
_ERROR_PAGE = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en"><head>
<meta http-equiv="content-type" content="text/html; charset=utf-8" lang="en"/><title>OSM3S Response</title>
</head><body>
<p>The data included in this document is from www.openstreetmap.org. The data is made available under ODbL.</p>
<p><strong style="color:#FF0000">Error</strong>: {message}</p>
</body></html>
"""


def elements_from_geojson(path, ways=False):
    """Overpass node elements for every Point of a GeoJSON file, tags from its properties; with ways, also way
    elements (with `out geom` geometry) for every LineString.

    Ids come from an "@id" like "node/12" or an integer feature id; otherwise they are 1 + the feature's
    index in the file, so they stay the same from run to run.
    """
    with open(path, encoding="utf-8") as f:
        features = json.load(f)["features"]
    elements = []
    for index, feature in enumerate(features):
        geometry = feature.get("geometry") or {}
        props = feature.get("properties") or {}
        if ways and geometry.get("type") == "LineString":
            elements.append({"type": "way", "id": 100_000 + index, "tags": {k: str(v) for k, v in props.items()},
                             "geometry": [{"lon": lon, "lat": lat} for lon, lat, *_ in geometry["coordinates"]]})
            continue
        if geometry.get("type") != "Point":
            continue
        ref = str(props.get("@id", ""))
        if ref.startswith("node/"):
            node_id = int(ref[5:])
        else:
            node_id = feature["id"] if isinstance(feature.get("id"), int) else index + 1
        lon, lat = geometry["coordinates"][:2]
        tags = {k: str(v) for k, v in props.items() if v is not None and not k.startswith("@")}
        elements.append({"type": "node", "id": node_id, "lat": lat, "lon": lon, "tags": tags})
    return elements


def parse_query(query):
    """[(filters, (south, west, north, east))] of each node or way statement; filters are (key, op, value)."""
    return [(filters, box) for _, filters, box in _statements(query)]


def _statements(query):
    return [(kind, [(k, op or None, v) for k, op, v in _FILTER.findall(flts)], tuple(float(b) for b in box))
            for kind, flts, *box in _STATEMENT.findall(query)]


def _matches(tags, filters):
    for key, op, value in filters:
        if key not in tags or (op == "=" and tags[key] != value) or (op == "~" and not re.search(value, tags[key])):
            return False
    return True


class OverpassServer(LoopbackServer):
    def __init__(self, elements, *, latency=0.0, slow_first=None, fail_429=0, retry_after=1, fail_504=0,
                 empty=False, fixed=None):
        self.elements = list(elements)
        self.latency = latency
        self.slow_first = slow_first
        self.fail_429 = fail_429
        self.retry_after = retry_after
        self.fail_504 = fail_504
        self.empty = empty
        self.fixed = fixed
        self.log = []
        self._lock = threading.Lock()

    @property
    def url(self):
        return super().url + "/api/interpreter"

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server._handle(self, parse_qs(urlsplit(self.path).query).get("data", [""])[0])

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
                form = parse_qs(body)
                server._handle(self, form["data"][0] if "data" in form else body)  # form-encoded or raw QL

            def log_message(self, *args):
                pass  # keep pytest's output clean

        return Handler

    def clear_log(self):
        with self._lock:
            self.log.clear()

    def _handle(self, request, query):
        statements = _statements(query)
        with self._lock:
            wait = self.latency
            if self.slow_first is not None:
                wait = self.latency if self.slow_first > 0 else 0.0
                self.slow_first = max(self.slow_first - 1, 0)
            found = None  # elements answered, for the log
            if self.fixed:
                status, content_type, body = self.fixed
                headers = {}
            elif self.fail_429 > 0:
                self.fail_429 -= 1
                status, content_type, headers = 429, "text/html", {"Retry-After": str(self.retry_after)}
                body = _ERROR_PAGE.format(message="runtime error: Too many requests (rate limited)").encode()
            elif self.fail_504 > 0:
                self.fail_504 -= 1
                status, content_type, headers = 504, "text/html", {}
                body = _ERROR_PAGE.format(message="runtime error: Gateway Timeout").encode()
            elif not statements:
                status, content_type, headers = 400, "text/html", {}
                body = _ERROR_PAGE.format(message="line 1: parse error: no node statement with a bbox").encode()
            else:
                status, content_type, headers = 200, "application/json", {}
                answer = self._answer(statements)
                found = len(answer["elements"])
                body = json.dumps(answer).encode()
            self.log.append({"method": request.command, "query": query, "bboxes": [box for _, _, box in statements],
                             "status": status, "elements": found,
                             "time": time.monotonic()})
        time.sleep(wait)
        try:
            request.send_response(status)
            request.send_header("Content-Type", content_type)
            request.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                request.send_header(key, value)
            request.end_headers()
            request.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test)

    def _answer(self, statements):
        found = {}
        if not self.empty:
            for kind, filters, (south, west, north, east) in statements:
                for e in self.elements:
                    points = e.get("geometry", [e])  # a way: its points
                    if e["type"] == kind and _matches(e["tags"], filters) and any(
                            south <= p["lat"] <= north and west <= p["lon"] <= east for p in points):
                        found[(kind, e["id"])] = e  # a union yields each element once
        return {"version": 0.6, "generator": "Overpass API (loopback test server)",
                "osm3s": {"copyright": "The data included in this document is from www.openstreetmap.org."},
                "elements": [found[k] for k in sorted(found)]}
