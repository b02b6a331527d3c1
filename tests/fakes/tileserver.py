"""A real HTTP tile server on 127.0.0.1 for tests and benchmarks, serving tiles cut from a tile-aligned GeoTIFF.

    with TileServer(sample_scene["imagery"], latency=0.02) as server:     # or server.start() ... server.stop()
        url = server.template("png")              # http://127.0.0.1:PORT/{z}/{x}/{y}.png (server.url: the base)
        x, y = server.tiles[0]                    # the scene's tiles at server.zoom, row by row from (x0, y0)
        server.expected(x, y)                     # the scene's pixels of that tile, (256, 256, 3) uint8
        server.encoded(x, y, "jpg")               # the bytes served for it
        server.count(f"/{server.zoom}/{x}/{y}.png"), server.max_in_flight, server.paths

TileServer(geotiff, *, latency=0.0, token=None, files=None): files maps names to local paths served as-is.

Paths: /{z}/{x}/{y}.png (lossless), .jpg and .webp (quality 90) for the scene's tiles at its zoom (any other
tile: 404), and /files/<name> for the `files` given (with HTTP Range support, for GDAL's /vsicurl/).
The scene must be an EPSG:3857 raster at exactly one zoom level's resolution, aligned to the tile grid (what
tower_detector.synthetic writes).

Knobs: attributes, which tests may change between requests; tiles are (x, y) pairs.
    latency     seconds to wait before answering each request (every path)
    status      {tile: code}: always answer with that code (404, 500, 403...)
    flaky       {tile: (code, n)}: answer with code the first n times, then serve the tile
    retry_after the Retry-After header (seconds) sent with every 429 (default 1)
    truncated   tiles whose body stops half-way while Content-Length promises all of it (then the connection closes)
    corrupt     tiles whose body is the first half of the image, with a Content-Length that matches it
    token       when set, every request needs ?access_token=<token>; otherwise 403 (template(ext, token) adds it)
Records: paths (each request's path without its query, in arrival order; a proxy's absolute URL gives its
path too, so the server also stands in for an HTTP proxy), arrivals (their times), headers (their headers),
count(path), arrivals_of(path), max_in_flight (the most requests being answered at once). reset() clears the
records and puts the knobs back as constructed.
"""

import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import numpy as np
import rasterio
from PIL import Image

from tests.fakes.loopback import LoopbackServer
from tower_detector.geo.tilemath import ORIGIN_SHIFT, TILE_SIZE

_FORMATS = {"png": ("PNG", "image/png", {"compress_level": 1}), "jpg": ("JPEG", "image/jpeg", {"quality": 90}),
            "webp": ("WEBP", "image/webp", {"quality": 90, "method": 0})}


class TileServer(LoopbackServer):
    def __init__(self, geotiff, *, latency=0.0, token=None, files=None):
        with rasterio.open(geotiff) as ds:
            self._pixels = ds.read().transpose(1, 2, 0)[:, :, :3]
            t = ds.transform
        tile_metres = t.a * TILE_SIZE
        self.zoom = round(np.log2(2 * ORIGIN_SHIFT / tile_metres))
        self.x0 = round((t.c + ORIGIN_SHIFT) / tile_metres)
        self.y0 = round((ORIGIN_SHIFT - t.f) / tile_metres)
        rows, cols = self._pixels.shape[0] // TILE_SIZE, self._pixels.shape[1] // TILE_SIZE
        self.tiles = [(self.x0 + i, self.y0 + j) for j in range(rows) for i in range(cols)]
        self.files = dict(files or {})
        self._defaults = {"latency": latency, "token": token}
        self._encoded = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self.reset()

    # -- records -------------------------------------------------------------------------------
    def reset(self):
        """Forget the records and put the knobs back as constructed."""
        with self._lock:
            self.latency = self._defaults["latency"]
            self.token = self._defaults["token"]
            self.status = {}
            self.flaky = {}
            self.retry_after = 1
            self.truncated = set()
            self.corrupt = set()
            self.paths = []
            self.arrivals = []  # time.monotonic() of each request, in step with paths
            self.headers = []  # each request's headers, in step with paths
            self.max_in_flight = 0
            self._served = Counter()

    def count(self, path):
        with self._lock:
            return self.paths.count(path)

    def arrivals_of(self, path):
        """When each request for path arrived (time.monotonic()), in order."""
        with self._lock:
            return [t for p, t in zip(self.paths, self.arrivals) if p == path]

    # -- the scene -----------------------------------------------------------------------------
    def expected(self, x, y):
        i, j = x - self.x0, y - self.y0
        return self._pixels[j * TILE_SIZE:(j + 1) * TILE_SIZE, i * TILE_SIZE:(i + 1) * TILE_SIZE].copy()

    def encoded(self, x, y, ext):
        """The tile's bytes as served (encoded once, then kept)."""
        key = (x, y, ext)
        with self._lock:
            data = self._encoded.get(key)
        if data is None:
            fmt, _, options = _FORMATS[ext]
            buf = io.BytesIO()
            Image.fromarray(self.expected(x, y)).save(buf, format=fmt, **options)
            data = buf.getvalue()
            with self._lock:
                self._encoded[key] = data
        return data

    # -- life ----------------------------------------------------------------------------------
    def template(self, ext="png", token=None):
        query = f"?access_token={token}" if token else ""
        return f"{self.url}/{{z}}/{{x}}/{{y}}.{ext}{query}"

    def handler(self):
        server = self

        class Handler(_Handler):
            tiles = server

        return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so that the client's connection pool is used
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls
    tiles: TileServer

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head):
        server = self.tiles
        parts = urlsplit(self.path)
        with server._lock:
            server.paths.append(parts.path)
            server.arrivals.append(time.monotonic())
            server.headers.append(dict(self.headers))
            server._in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server._in_flight)
        try:
            if server.latency:
                time.sleep(server.latency)
            if server.token and parse_qs(parts.query).get("access_token") != [server.token]:
                return self._send(403, b"bad or missing access token", "text/plain", head)
            if parts.path.startswith("/files/"):
                return self._file(parts.path[len("/files/"):], head)
            self._tile(parts.path, head)
        finally:
            with server._lock:
                server._in_flight -= 1

    def _tile(self, path, head):
        server = self.tiles
        try:
            z, x, rest = path.strip("/").split("/")
            y, ext = rest.split(".")
            z, x, y = int(z), int(x), int(y)
        except ValueError:
            return self._send(404, b"not a tile path", "text/plain", head)
        tile = (x, y)
        if z != server.zoom or tile not in server.tiles or ext not in _FORMATS:
            return self._send(404, b"no such tile", "text/plain", head)
        if tile in server.status:
            return self._send(server.status[tile], b"error", "text/plain", head)
        if tile in server.flaky:
            code, n = server.flaky[tile]
            with server._lock:
                server._served[path] += 1
                failing = server._served[path] <= n
            if failing:
                extra = {"Retry-After": str(server.retry_after)} if code == 429 else {}
                return self._send(code, b"try again", "text/plain", head, extra)
        data = server.encoded(x, y, ext)
        content_type = _FORMATS[ext][1]
        if tile in server.corrupt:
            return self._send(200, data[:len(data) // 2], content_type, head)
        if tile in server.truncated:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data[:len(data) // 2])
            self.close_connection = True
            return
        self._send(200, data, content_type, head)

    def _file(self, name, head):
        path = self.tiles.files.get(name)
        if path is None:
            return self._send(404, b"no such file", "text/plain", head)
        with open(path, "rb") as f:
            data = f.read()
        ranges = self.headers.get("Range", "")
        if not ranges.startswith("bytes="):
            return self._send(200, data, "application/octet-stream", head, {"Accept-Ranges": "bytes"})
        first, _, last = ranges[len("bytes="):].split(",")[0].partition("-")
        start = int(first) if first else max(0, len(data) - int(last))
        end = min(int(last), len(data) - 1) if first and last else len(data) - 1
        if start >= len(data):
            return self._send(416, b"", "text/plain", head, {"Content-Range": f"bytes */{len(data)}"})
        self._send(206, data[start:end + 1], "application/octet-stream", head,
                   {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    def _send(self, code, body, content_type, head, headers=None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
