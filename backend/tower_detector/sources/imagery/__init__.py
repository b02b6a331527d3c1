"""Imagery: 256x256x3 uint8 tiles for zoom-z tile ids, read concurrently from four kinds of source.

    with open_imagery("https://tiles.example.com/{z}/{x}/{y}.jpg?access_token=...", cache_dir="cache") as src:
        print(src.description)                     # the spec with secrets replaced by ***
        for t in src.fetch(cover):                 # TileResult(x, y, z, image, error), in input order
            ...
        images, errors = src.fetch_batch(xs, ys, 18)

API
    open_imagery(spec, *, cache_dir=None, concurrency=16, rate_limit=None, retries=4, timeout=20.0, deadline=60.0,
                 backoff=0.5, tms=False, subdomains="abc", tile_size=256, bands=None) -> ImagerySource
    ImagerySource.fetch(tiles, zoom=None, *, fail_fast=20) -> Iterator[TileResult]
        tiles: (x, y, z) tuples, "x-y-z" ids, a TileCover, or, with zoom=, (x, y) pairs or (xs, ys) array
        batches (as TileCover.iter_batches yields). At most 2 x concurrency tiles are in flight or waiting to be
        yielded (a sliding window), plus the first `fail_fast` results, held back for the check below.
    ImagerySource.fetch_batch(xs, ys, z, *, fail_fast=20) -> (uint8 array [n, size, size, 3], [error or None])
    ImagerySource.description, .kind ("xyz", "geotiff", "mbtiles", "tiledir"), .close(); a context manager.
    decode_tile(bytes, size=256) -> array or ValueError.

Spec forms
    XYZ/TMS template  http(s)://...{z}/{x}/{y}... with {z} {x} {y}, {-y} (TMS row 2^z-1-y), {q} (quadkey) and {s}
                      (one of `subdomains`); tms=True flips {y} too. `rate_limit` (requests/s) is one token
                      bucket (capacity 1: evenly spaced requests) for the template's host, subdomains included,
                      shared by all threads; a 429's Retry-After pauses that bucket for every thread.
    GeoTIFF/COG/VRT   a local path, http(s) URL (GDAL /vsicurl/), s3://bucket/key (/vsis3/) or /vsi... path ending
                      .tif, .tiff or .vrt, in any CRS: each tile's EPSG:3857 bounds are warped to tile_size px
                      (bilinear, a WarpedVRT per tile), one dataset handle per thread. Tiles the raster does not
                      reach, or where it is all nodata/transparent, are "outside imagery"; partly covered tiles
                      are black where there is no data. Bands: 1 band -> gray to RGB; 2 bands -> gray
                      and alpha; 3+ bands -> the first three unless `bands` picks them; a band flagged alpha is
                      the validity mask and is dropped. uint16/int16 are scaled linearly from 0..2^NBITS-1 to
                      0..255 (NBITS is the TIFF tag, 16 for uint16 and 15 for int16 when absent), rounded; other
                      data types are refused. A zoom whose pixels are over 4x finer than the raster's is refused.
    MBTiles           a local .mbtiles file (TMS rows, tile_row = 2^z-1-y); zooms outside the metadata's
                      minzoom..maxzoom (or the tiles table's) are refused up front.
    tile directory    an existing directory or s3://bucket/prefix of x-y-z.{jpg,png,webp} files (label-maker's
                      layout), one extension per zoom (the first file seen decides); boto3's standard credential
                      chain, AWS_ENDPOINT_URL honoured. A zoom with no files is refused up front.

Behaviour
    Errors are per tile: a missing, corrupt or unreachable tile is a TileResult with image None and a reason
    ("HTTP 404", "truncated/corrupt image: ...", "outside imagery", "timeout after 2 retries"), never an exception.
    Fail fast: when the first `fail_fast` tiles (all of them if fewer) all fail with HTTP 401/403, HTTP 404 or
    "missing tile", or are all outside the imagery, fetch raises UserError naming the source and the likely
    cause. Pass fail_fast=0 when the imagery may cover only part of the tiles and those come first.
    HTTP retries (`retries`, exponential backoff from `backoff` seconds with jitter) on 408, 429, 5xx, timeouts,
    connection errors and bodies shorter than their Content-Length; other 4xx answers are final, and so is a
    200 answer with a text or JSON body (a login page served as a tile). Each request waits at most `timeout`
    seconds to connect and between bytes, and a tile's tries together at most `deadline` seconds.
    Permanent and transient failures: no imagery (HTTP 204/404/410, a missing tile, outside the raster), a corrupt
    tile or one of the wrong shape, and other 4xx answers are permanent: the tile is done, with no score.
    Timeouts, refused connections, 5xx and 429 after their retries, 401/403 (a token that expired mid-run) and
    read errors are transient (TileResult.transient): the tile is not done, and a later run fetches it again.
    Giving up (give_up=True, the default): fetch raises ImageryUnreachable (a Failure, exit 1) when the first
    `fail_fast` tiles all failed transiently, or when 50 of the last 100 did (OutageGuard): an outage, which no
    amount of waiting inside one run fixes.
    Decoding (Pillow): JPEG, PNG, WebP and anything else Pillow reads; gray and palette images become RGB, alpha
    is dropped (transparent pixels keep their colour values), 16-bit gray is scaled by 255/65535, and square
    tiles of another size are resized to tile_size with Lanczos.
    Cache (cache_dir, any source): cache_dir/{z}/{x}/{y}.{png,jpg,webp}, the bytes as fetched (warped GeoTIFF
    tiles as PNG), written atomically after a successful decode; a hit makes no request. One directory per source.
    Secrets: description, error values, UserError messages and this module's logs are redacted by
    redaction.redact (every query value but those of harmless parameters, and user:password@); so are urllib3's
    and rasterio's log records. Secrets elsewhere in a URL (a path segment) cannot be recognised.
"""

import io
import logging
import os
import random
import re
import socket
import sqlite3
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from http.client import IncompleteRead as HttpIncompleteRead
from itertools import chain, islice, repeat
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

import certifi
import numpy as np
import urllib3
from PIL import Image, UnidentifiedImageError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from ... import __version__
from ...common.errors import Failure, UserError, one_line
from ...common.redaction import redact
from ...geo.tilemath import TILE_SIZE, parse_tile_id, quadkey, resolution, tile_bounds_3857

log = logging.getLogger(__name__)

FAIL_FAST = 20
MAX_RETRY_AFTER = 60.0  # seconds; a server asking for more still gets its retry, just sooner
MAX_BACKOFF = 30.0
MAX_COARSENESS = 4  # raster pixels up to this many times a zoom's pixel size are still usable
_TILE_EXTS = ("png", "jpg", "webp")
_FATAL = ("auth", "missing", "outside")  # error kinds that, on every leading tile, mean a wrong source

class _RedactingFilter(logging.Filter):
    def filter(self, record):
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


# urllib3 logs every request's URL, query included, at DEBUG (and redirects' at INFO); GDAL's messages (through
# rasterio) name URLs too
for _name in ("urllib3.connectionpool", "urllib3.poolmanager", "rasterio._env", "rasterio._err", "rasterio.env"):
    logging.getLogger(_name).addFilter(_RedactingFilter())


class TileResult(NamedTuple):
    x: int
    y: int
    z: int
    image: np.ndarray | None  # (size, size, 3) uint8, or None when error says why
    error: str | None
    transient: bool = False  # the failure may pass (an outage, a timeout): the tile is not done, retry it later


# Failure kinds (_TileError.kind) that may pass: the tile is retried by a later run. The others are permanent: no
# imagery there ("missing", "outside"), or bytes that will not decode ("corrupt"), or a request the server refuses
# for good ("http": a 4xx other than 401/403/407/408/429).
TRANSIENT_KINDS = ("transient", "auth")


class ImageryUnreachable(Failure):
    """The imagery failed transiently for too many tiles in a row: the run stops, nothing is marked done."""

    def __init__(self, message):
        super().__init__(message, retry=True)


class OutageGuard:
    """Decides when transient failures are an outage rather than bad luck: when the first `head` results all failed
    transiently, or when at least `limit` of the last `window` did. check() raises ImageryUnreachable then."""

    def __init__(self, head=FAIL_FAST, window=100, limit=50):
        self.head, self.window, self.limit = head, window, limit
        self.seen = 0
        self.last = deque(maxlen=window)  # reasons of the last results, None where it did not fail transiently
        self.failures = 0

    def check(self, result):
        reason = result.error if result.transient else None
        if len(self.last) == self.window and self.last[0] is not None:
            self.failures -= 1
        self.last.append(reason)
        self.failures += reason is not None
        self.seen += 1
        if self.seen == self.head and self.failures == self.head:
            self._raise(self.head, self.head)
        if self.failures >= self.limit:
            self._raise(self.failures, len(self.last))

    def _raise(self, n, m):
        reason, _ = Counter(r for r in self.last if r is not None).most_common(1)[0]
        raise ImageryUnreachable(f"imagery unreachable: {n} of the last {m} tiles failed: {reason}; run the same "
                                 "command again to resume")


class _TileError(Exception):
    """One tile's failure: `reason` becomes TileResult.error, `kind` drives the fail-fast check."""

    def __init__(self, reason, kind):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def decode_tile(data, size=TILE_SIZE):
    """Encoded tile bytes -> (size, size, 3) uint8 RGB; ValueError("truncated/corrupt image: ...") if unreadable."""
    if not data:
        raise ValueError("truncated/corrupt image: empty body")
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except UnidentifiedImageError:
        raise ValueError("truncated/corrupt image: not in an image format Pillow reads") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, EOFError, struct.error... for bad data
        raise ValueError(f"truncated/corrupt image: {exc or type(exc).__name__}") from None
    return _to_rgb(im, size)


def _to_rgb(im, size):
    if im.width != im.height:
        raise ValueError(f"unexpected tile size {im.width}x{im.height}")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        im = Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8))
    elif im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # a palette may carry transparency; RGBA -> RGB below drops it
    if im.mode != "RGB":
        im = im.convert("RGB")
    if im.width != size:
        im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


def _sniff(data):
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _iter_tiles(tiles, zoom):
    """(x, y, z) ints from (x, y, z) tuples, "x-y-z" ids, a TileCover, or (x, y) pairs and (xs, ys) array
    batches with `zoom`."""
    if hasattr(tiles, "iter_batches") and hasattr(tiles, "zoom"):
        zoom, tiles = tiles.zoom, tiles.iter_batches(4096)
    for item in tiles:
        if isinstance(item, str):
            yield parse_tile_id(item)
        elif len(item) == 2:
            if zoom is None:
                raise ValueError("fetch() needs zoom= for (xs, ys) batches")
            xs, ys = item
            if np.ndim(xs) == 0:
                yield int(xs), int(ys), int(zoom)
            else:
                yield from zip(np.asarray(xs).tolist(), np.asarray(ys).tolist(), repeat(int(zoom)))
        else:
            x, y, z = item
            yield int(x), int(y), int(z)


class ImagerySource:
    """Base of all sources: concurrency, ordering, caching and the fail-fast check. Subclasses give _load()."""

    kind = "imagery"

    def __init__(self, description, *, concurrency=16, cache_dir=None, tile_size=TILE_SIZE):
        self.description = description
        self.concurrency = max(1, int(concurrency))
        self.tile_size = int(tile_size)
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self._pool = None
        self._zooms_checked = set()
        self._local = threading.local()
        self._handles = []  # per-thread handles, closed by close()
        self._lock = threading.Lock()

    def __repr__(self):
        return f"<{type(self).__name__} {self.description}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close()
        self._local = threading.local()

    # -- what subclasses provide ---------------------------------------------------------------
    def _load(self, x, y, z):
        """Encoded tile bytes or a (size, size, 3) uint8 array; raises _TileError."""
        raise NotImplementedError

    def _check_zoom(self, z):
        """Raise UserError when the source has no imagery at zoom z (called once per zoom, before any fetch)."""

    def _fail_hint(self, kind, z):
        return {"auth": "the access token or credentials are probably missing, wrong or expired",
                "missing": f"the imagery does not cover these tiles at zoom {z}",
                "outside": "the tiles are outside the imagery; check the area and the imagery"}[kind]

    def _thread_handle(self, opener):
        """This worker thread's own handle (GDAL datasets and sqlite connections must not be shared)."""
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = opener()
            with self._lock:
                self._handles.append(handle)
        return handle

    # -- fetching ------------------------------------------------------------------------------
    def fetch(self, tiles, zoom=None, *, fail_fast=FAIL_FAST, give_up=True):
        """Yield a TileResult per tile, in input order; see the module docstring. give_up: raise
        ImageryUnreachable when transient failures look like an outage (OutageGuard)."""
        stream = self._results(tiles, zoom)
        guard = OutageGuard() if give_up else None
        try:
            head = list(islice(stream, fail_fast)) if fail_fast else []
            self._check_head(head)
            for result, _ in chain(head, stream):
                if guard:
                    guard.check(result)
                yield result
        finally:
            stream.close()

    def _results(self, tiles, zoom):
        """(TileResult, error kind) per tile in input order, with at most 2 x concurrency tiles in flight."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="imagery")
        window = deque()
        try:
            for x, y, z in _iter_tiles(tiles, zoom):
                if z not in self._zooms_checked:
                    self._check_zoom(z)
                    self._zooms_checked.add(z)
                window.append(self._pool.submit(self._fetch_one, x, y, z))
                if len(window) >= 2 * self.concurrency:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def fetch_batch(self, xs, ys, z, *, fail_fast=FAIL_FAST, give_up=True):
        """(uint8 array [n, size, size, 3], errors): zeros and the reason where a tile failed, None where ok."""
        xs, ys = np.asarray(xs).ravel(), np.asarray(ys).ravel()
        images = np.zeros((len(xs), self.tile_size, self.tile_size, 3), dtype=np.uint8)
        errors = [None] * len(xs)
        for i, result in enumerate(self.fetch([(xs, ys)], zoom=z, fail_fast=fail_fast, give_up=give_up)):
            if result.error is None:
                images[i] = result.image
            else:
                errors[i] = result.error
        return images, errors

    def _check_head(self, head):
        kinds = [kind for _, kind in head]
        if not head or not all(kind in _FATAL for kind in kinds):
            return
        kind, _ = Counter(kinds).most_common(1)[0]
        reason, _ = Counter(r.error for r, k in head if k == kind).most_common(1)[0]
        first = head[0][0]
        n = len(head)
        subject = f"the first {n} tiles" if n > 1 else "the only tile"
        raise UserError(redact(f"imagery {self.description}: {reason} for all of {subject} "
                               f"(e.g. {first.x}-{first.y}-{first.z}): {self._fail_hint(kind, first.z)}"))

    def _fetch_one(self, x, y, z):
        try:
            image = self._cached(x, y, z)
            if image is None:
                data = self._load(x, y, z)
                if isinstance(data, np.ndarray):
                    image = data
                else:
                    try:
                        image = decode_tile(data, self.tile_size)
                    except ValueError as exc:
                        raise _TileError(str(exc), "corrupt") from None
                self._store(x, y, z, data, image)
            return TileResult(x, y, z, image, None), None
        except _TileError as exc:
            return TileResult(x, y, z, None, redact(exc.reason), exc.kind in TRANSIENT_KINDS), exc.kind

    # -- cache ---------------------------------------------------------------------------------
    def _cache_path(self, x, y, z, ext):
        return os.path.join(self.cache_dir, str(z), str(x), f"{y}.{ext}")

    def _cached(self, x, y, z):
        if self.cache_dir is None:
            return None
        for ext in _TILE_EXTS:
            try:
                with open(self._cache_path(x, y, z, ext), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            try:
                return decode_tile(data, self.tile_size)
            except ValueError:
                return None  # a damaged cache file is a miss; the fetch overwrites it
        return None

    def _store(self, x, y, z, data, image):
        if self.cache_dir is None:
            return
        ext = None if isinstance(data, np.ndarray) else _sniff(data)
        if ext is None:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            data, ext = buf.getvalue(), "png"
        path = self._cache_path(x, y, z, ext)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{y}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("cannot write the imagery cache %s: %s", self.cache_dir, exc.strerror or exc)


# ---------------------------------------------------------------------------------------------
# XYZ / TMS URL templates
# ---------------------------------------------------------------------------------------------
class _HostLimiter:
    """A token bucket of capacity 1 (requests evenly spaced at `rate` per second), shared by all threads;
    hold() pauses every thread, as a 429's Retry-After asks."""

    def __init__(self, rate):
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self):
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)

    def hold(self, seconds):
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


def _retry_after(value):
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class XyzSource(ImagerySource):
    kind = "xyz"

    def __init__(self, template, *, tms=False, subdomains="abc", retries=4, timeout=20.0, deadline=60.0,
                 backoff=0.5, rate_limit=None, **common):
        super().__init__(redact(template), **common)
        has_xy = "{x}" in template and ("{y}" in template or "{-y}" in template) and "{z}" in template
        if not (has_xy or "{q}" in template):
            raise UserError(f"imagery URL {self.description} needs {{z}}, {{x}} and {{y}} (or {{-y}}), or {{q}}")
        if "{s}" in template and not subdomains:
            raise UserError(f"imagery URL {self.description} has {{s}} but no subdomains were given")
        if rate_limit is not None and rate_limit <= 0:
            raise UserError(f"the rate limit must be a positive number of requests per second, not {rate_limit}")
        self._template = template
        self._tms = tms
        self._subdomains = list(subdomains or "")
        self._retries = max(0, int(retries))
        self._timeout = timeout
        self._deadline = deadline
        self._backoff = backoff
        self._limiter = _HostLimiter(rate_limit)
        # one pool slot per worker thread, per host ({s} subdomains are separate hosts to urllib3)
        self._http = _http_pool(self.url(0, 0, 0), num_pools=max(1, len(self._subdomains)), maxsize=self.concurrency)

    def close(self):
        super().close()
        self._http.clear()

    def url(self, x, y, z):
        """The tile's URL (with its secrets: never print it, print redact(url))."""
        flipped = (1 << z) - 1 - y
        url = self._template
        for key, value in (("{z}", z), ("{x}", x), ("{y}", flipped if self._tms else y), ("{-y}", flipped)):
            url = url.replace(key, str(value))
        if "{q}" in url:
            url = url.replace("{q}", quadkey(x, y, z))
        if "{s}" in url:
            url = url.replace("{s}", self._subdomains[(x + y) % len(self._subdomains)])
        return url

    def _fail_hint(self, kind, z):
        if kind == "missing":
            return (f"check the URL template ({{z}}/{{x}}/{{y}} order, {{-y}} or tms for TMS servers) and that "
                    f"the imagery has zoom {z} here")
        return super()._fail_hint(kind, z)

    def _load(self, x, y, z):
        url = self.url(x, y, z)
        failure = retry_after = None
        deadline = time.monotonic() + self._deadline
        attempt = 0
        for attempt in range(self._retries + 1):
            if attempt:
                delay = min(MAX_BACKOFF, self._backoff * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)  # jitter, so that threads that failed together spread out
                if time.monotonic() + delay >= deadline:
                    attempt -= 1  # the tile's time is up: no more tries
                    break
                if failure.startswith("HTTP 429"):
                    # pause the whole host, not only this thread; acquire() below waits it out
                    self._limiter.hold(max(delay, retry_after))
                else:
                    time.sleep(delay)
                log.debug("retry %d of %s: %s", attempt, redact(url), failure)
            self._limiter.acquire()
            left = max(deadline - time.monotonic(), 0.1)
            try:
                response = self._http.request("GET", url, timeout=urllib3.Timeout(
                    total=left, connect=min(self._timeout, left), read=min(self._timeout, left)))
                body = response.data
            except Urllib3Error as exc:
                failure = _failure(exc)
                continue
            status = response.status
            if status == 200:
                expected = response.headers.get("Content-Length", "")
                if expected.isdigit() and "Content-Encoding" not in response.headers and len(body) < int(expected):
                    failure = _truncated(len(body), expected)
                    continue
                content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
                if content_type.startswith("text/") or content_type.endswith("json"):
                    # a login page or an error message served as a tile
                    raise _TileError(f"HTTP 200 with {content_type}, not an image", "corrupt")
                return body
            if status in (401, 403):
                raise _TileError(f"HTTP {status}", "auth")
            if status in (204, 404, 410):
                raise _TileError(f"HTTP {status}", "missing")
            if status not in (408, 429) and status < 500:
                raise _TileError(f"HTTP {status}", "http")
            failure = f"HTTP {status}"
            retry_after = min(MAX_RETRY_AFTER, _retry_after(response.headers.get("Retry-After")) or 0.0)
        raise _TileError(f"{failure} after {attempt} {'retry' if attempt == 1 else 'retries'}", "transient")


def _http_pool(url, **pool):
    """A urllib3 pool for this URL's scheme, through the environment's proxy (http_proxy, https_proxy, no_proxy)
    where one applies. urllib3 rather than requests: requests costs about twice the CPU per tile, and
    predict fetches hundreds of tiles a second on the CPUs the model needs."""
    options = dict(pool, retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=10),
                   headers={"User-Agent": f"tower-detector/{__version__}"}, block=False,
                   ca_certs=os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or certifi.where())
    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if not proxy or proxy_bypass(parts.hostname or ""):
        return urllib3.PoolManager(**options)
    proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if proxy_parts.username:  # user:password@ in the proxy URL -> Proxy-Authorization, as requests does
        credentials = f"{unquote(proxy_parts.username)}:{unquote(proxy_parts.password or '')}"
        options["proxy_headers"] = urllib3.make_headers(proxy_basic_auth=credentials)
    netloc = proxy_parts.netloc.rsplit("@", 1)[-1]
    return urllib3.ProxyManager(f"{proxy_parts.scheme}://{netloc}", **options)


def _truncated(received, expected):
    return f"truncated/corrupt image: {received} of {expected} bytes received"


def _failure(exc):
    """A failed request's reason, as retries and error values name it."""
    reason = getattr(exc, "reason", None) or exc  # under the MaxRetryError our no-retry policy raises at once
    if isinstance(reason, NewConnectionError):  # before Urllib3Timeout: urllib3 makes it a ConnectTimeoutError
        cause = reason.__context__ or reason.__cause__
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host not found"
        return "cannot connect"
    if isinstance(reason, Urllib3Timeout):
        return "timeout"
    # urllib3's IncompleteRead is an http.client one whose partial is a count, not the bytes
    short = next((a for a in getattr(reason, "args", ()) if isinstance(a, HttpIncompleteRead)), None)
    if short is not None:  # the connection closed before Content-Length bytes came
        received = short.partial if isinstance(short.partial, int) else len(short.partial)
        return _truncated(received, received + (short.expected or 0))
    return f"connection error ({type(reason).__name__})"


# ---------------------------------------------------------------------------------------------
# GeoTIFF / COG / VRT
# ---------------------------------------------------------------------------------------------
def _gdal_options(spec, retries, timeout, backoff):
    options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": str(retries),
               "GDAL_HTTP_RETRY_DELAY": str(backoff), "GDAL_HTTP_TIMEOUT": str(max(1, int(timeout)))}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and spec.lower().startswith(("s3://", "/vsis3/")):
        # GDAL 3.10 does not read AWS_ENDPOINT_URL; it wants the host and the scheme apart
        parts = urlsplit(endpoint)
        options.update(AWS_S3_ENDPOINT=parts.netloc + parts.path.rstrip("/"),
                       AWS_HTTPS="YES" if parts.scheme == "https" else "NO", AWS_VIRTUAL_HOSTING="FALSE")
    return options


class GeoTiffSource(ImagerySource):
    kind = "geotiff"

    def __init__(self, spec, *, bands=None, retries=4, timeout=30.0, backoff=0.5, **common):
        import rasterio

        super().__init__(redact(spec), **common)
        self._spec = spec
        self._options = _gdal_options(spec, retries, timeout, backoff)
        try:
            with rasterio.Env(**self._options), rasterio.open(spec) as ds:
                self._inspect(ds, bands)
        except rasterio.errors.RasterioError as exc:
            raise UserError(redact(f"cannot open imagery {self.description}: {one_line(exc)}")) from None

    def _inspect(self, ds, bands):
        from rasterio.enums import ColorInterp
        from rasterio.warp import calculate_default_transform, transform_bounds

        if ds.crs is None:
            raise UserError(f"imagery {self.description} has no coordinate reference system")
        dtype = np.dtype(ds.dtypes[0])
        if dtype not in (np.uint8, np.uint16, np.int16):
            raise UserError(f"imagery {self.description} has {dtype} pixels; convert it to 8 or 16-bit integers "
                            f"(gdal_translate -ot Byte -scale)")
        alpha = [i + 1 for i, c in enumerate(ds.colorinterp) if c == ColorInterp.alpha]
        self._alpha = alpha[0] if alpha else 0
        colour = [b for b in range(1, ds.count + 1) if b != self._alpha]
        if bands is not None:
            bands = [int(b) for b in bands]
            if len(bands) not in (1, 3) or not all(1 <= b <= ds.count for b in bands):
                raise UserError(f"bands must be 1 or 3 band numbers within 1..{ds.count}, not {bands}")
        else:
            bands = colour[:3] if len(colour) >= 3 else colour[:1]
        self._bands = bands
        self._dtype = dtype
        bits = ds.tags(bands[0], ns="IMAGE_STRUCTURE").get("NBITS")  # a band-level tag
        bits = int(bits) if bits and bits.isdigit() else (8 if dtype == np.uint8 else 16 if dtype == np.uint16 else 15)
        self._max_value = (1 << bits) - 1
        self._bounds = transform_bounds(ds.crs, "EPSG:3857", *ds.bounds, densify_pts=21)
        transform, _, _ = calculate_default_transform(ds.crs, "EPSG:3857", ds.width, ds.height, *ds.bounds)
        self._pixel_size = abs(transform.a)  # EPSG:3857 metres

    def _check_zoom(self, z):
        coarseness = self._pixel_size / resolution(z)
        if coarseness > MAX_COARSENESS:
            raise UserError(f"imagery {self.description} has {self._pixel_size:.3g} m pixels, {coarseness:.0f}x "
                            f"coarser than zoom {z} ({resolution(z):.3g} m): too coarse to show towers")

    def _open(self):
        import rasterio

        with rasterio.Env(**self._options):
            return rasterio.open(self._spec)

    def _load(self, x, y, z):
        import rasterio
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        left, bottom, right, top = tile_bounds_3857(x, y, z)
        b = self._bounds
        if left >= b[2] or right <= b[0] or bottom >= b[3] or top <= b[1]:
            raise _TileError("outside imagery", "outside")
        size = self.tile_size
        transform = Affine((right - left) / size, 0, left, 0, -(top - bottom) / size, top)
        try:
            ds = self._thread_handle(self._open)
            # a WarpedVRT per tile: rasterio's reproject() into arrays warns spuriously when threads overlap
            with rasterio.Env(**self._options), WarpedVRT(
                    ds, crs="EPSG:3857", transform=transform, width=size, height=size,
                    resampling=Resampling.bilinear, src_alpha=self._alpha, add_alpha=not self._alpha) as vrt:
                data = vrt.read(indexes=[*self._bands, self._alpha or ds.count + 1])
        except rasterio.errors.RasterioError as exc:
            raise _TileError(f"read error: {one_line(exc)}", "transient") from None
        rgb, valid = data[:-1], data[-1]
        if not valid.any():
            raise _TileError("outside imagery", "outside")  # inside the bounds, but all nodata
        if self._dtype != np.uint8:
            scaled = np.clip(rgb, 0, self._max_value).astype(np.float32) * (255.0 / self._max_value)
            rgb = np.rint(scaled).astype(np.uint8)
        if len(rgb) == 1:
            rgb = np.repeat(rgb, 3, axis=0)
        return np.ascontiguousarray(rgb.transpose(1, 2, 0))


# ---------------------------------------------------------------------------------------------
# MBTiles
# ---------------------------------------------------------------------------------------------
class MBTilesSource(ImagerySource):
    kind = "mbtiles"

    def __init__(self, path, **common):
        super().__init__(path, **common)
        self._uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
        try:
            conn = sqlite3.connect(self._uri, uri=True)
            try:
                meta = dict(conn.execute("SELECT name, value FROM metadata").fetchall())
                zooms = conn.execute("SELECT MIN(zoom_level), MAX(zoom_level) FROM tiles").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise UserError(f"{path} is not a readable MBTiles file ({exc})") from None
        if str(meta.get("format", "")).lower() in ("pbf", "mvt"):
            raise UserError(f"{path} holds vector tiles ({meta['format']}), not imagery")
        try:
            self.minzoom = int(meta["minzoom"])
            self.maxzoom = int(meta["maxzoom"])
        except (KeyError, ValueError):
            self.minzoom, self.maxzoom = zooms  # metadata is optional; the tiles table is the truth
        if self.minzoom is None:
            raise UserError(f"{path} holds no tiles")
        self.format = meta.get("format")

    def _check_zoom(self, z):
        if not self.minzoom <= z <= self.maxzoom:
            raise UserError(f"imagery {self.description} has zooms {self.minzoom}-{self.maxzoom}, not {z}")

    def _open(self):
        # closed by close() from the main thread, hence check_same_thread=False; still one per thread
        return sqlite3.connect(self._uri, uri=True, check_same_thread=False)

    def _load(self, x, y, z):
        try:
            row = self._thread_handle(self._open).execute(
                "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?",
                (z, x, (1 << z) - 1 - y)).fetchone()
        except sqlite3.Error as exc:
            raise _TileError(f"read error: {exc}", "transient") from None
        if row is None:
            raise _TileError("missing tile", "missing")
        return bytes(row[0])


# ---------------------------------------------------------------------------------------------
# Tile directories: local or s3://bucket/prefix, files x-y-z.ext
# ---------------------------------------------------------------------------------------------
_TILE_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.(jpe?g|png|webp)$", re.IGNORECASE)
_LIST_PAGES = 20  # S3 listing pages (1,000 keys each) searched for a zoom's tiles


class TileDirSource(ImagerySource):
    kind = "tiledir"

    def __init__(self, spec, *, retries=4, timeout=30.0, **common):
        super().__init__(redact(spec), **common)
        self._ext = {}  # zoom -> the file extension seen for it
        if spec.lower().startswith("s3://"):
            import boto3
            from botocore.config import Config

            bucket, _, prefix = spec[5:].partition("/")
            if not bucket:
                raise UserError(f"no bucket in {self.description}; expected s3://bucket/prefix")
            self._bucket = bucket
            self._prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
            config = Config(max_pool_connections=self.concurrency, connect_timeout=timeout, read_timeout=timeout,
                            retries={"max_attempts": retries + 1, "mode": "standard"})
            self._s3 = boto3.client("s3", config=config)  # clients are thread-safe; endpoint from AWS_ENDPOINT_URL
        else:
            self._root = spec
            self._s3 = None

    def _names(self):
        """File names in the directory, lazily (S3: up to _LIST_PAGES pages)."""
        if self._s3 is None:
            with os.scandir(self._root) as entries:
                yield from (e.name for e in entries)
            return
        from botocore.exceptions import BotoCoreError, ClientError

        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._prefix, PaginationConfig={"MaxItems": _LIST_PAGES * 1000})
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self._prefix):]
        except (BotoCoreError, ClientError) as exc:
            raise UserError(f"cannot list imagery {self.description}: {one_line(exc)}") from None

    def _check_zoom(self, z):
        seen = set()
        for name in self._names():
            match = _TILE_NAME.match(name)
            if match:
                if int(match[3]) == z:
                    self._ext[z] = match[4]
                    return
                seen.add(int(match[3]))
        found = f"zooms {', '.join(map(str, sorted(seen)))}" if seen else "no x-y-z.jpg/png/webp tiles"
        raise UserError(f"imagery {self.description} has no zoom-{z} tiles (x-y-{z}.jpg/png/webp); it has {found}")

    def _load(self, x, y, z):
        name = f"{x}-{y}-{z}.{self._ext[z]}"
        if self._s3 is None:
            try:
                with open(os.path.join(self._root, name), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                raise _TileError("missing tile", "missing") from None
            except OSError as exc:
                raise _TileError(f"read error: {exc.strerror or exc}", "transient") from None
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._s3.get_object(Bucket=self._bucket, Key=self._prefix + name)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404") or status == 404:
                raise _TileError("missing tile", "missing") from None
            if status in (401, 403):
                raise _TileError(f"S3 {code or status}", "auth") from None
            raise _TileError(f"S3 {code or status}", "transient") from None
        except BotoCoreError as exc:
            raise _TileError(f"S3 error: {one_line(exc)}", "transient") from None

    def close(self):
        super().close()
        if self._s3 is not None:
            self._s3.close()


# ---------------------------------------------------------------------------------------------
# open_imagery
# ---------------------------------------------------------------------------------------------
_FORMS = ("an XYZ URL template (https://.../{z}/{x}/{y}.png), a GeoTIFF/COG/VRT (.tif, .tiff or .vrt: a path, "
          "an http(s) URL or s3://), an .mbtiles file, or a directory or s3://bucket/prefix of x-y-z.jpg/png/webp "
          "tiles")


def open_imagery(spec, *, cache_dir=None, concurrency=16, rate_limit=None, retries=4, timeout=20.0, deadline=60.0,
                 backoff=0.5, tms=False, subdomains="abc", tile_size=TILE_SIZE, bands=None):
    """An ImagerySource for `spec` (see the module docstring for the forms); UserError for anything else."""
    written = os.fspath(spec).strip()
    source = _open(_expand_env(written), cache_dir, concurrency, rate_limit, retries, timeout, deadline, backoff,
                   tms, subdomains, tile_size, bands)
    if "${" in written:  # keep ${NAME}, never its value, wherever the spec is shown or stored
        source.description = redact(written)
    return source


def _expand_env(spec):
    """${NAME} references -> their environment values: how secrets reach us without a command line or file."""
    def value(match):
        name = match.group(1)
        if name not in os.environ:
            raise UserError(f"the imagery spec refers to ${{{name}}}, which is not set in the environment")
        return os.environ[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value, spec)


def _open(spec, cache_dir, concurrency, rate_limit, retries, timeout, deadline, backoff, tms, subdomains, tile_size,
          bands):
    common = dict(cache_dir=cache_dir, concurrency=concurrency, tile_size=tile_size)
    lower = spec.lower()
    is_url = lower.startswith(("http://", "https://"))
    remote = is_url or lower.startswith(("s3://", "/vsi"))
    path = urlsplit(spec).path.lower() if is_url else lower
    if is_url and any(key in spec for key in ("{x}", "{-y}", "{q}")):
        return XyzSource(spec, tms=tms, subdomains=subdomains, retries=retries, timeout=timeout, deadline=deadline,
                         backoff=backoff, rate_limit=rate_limit, **common)
    if path.endswith((".tif", ".tiff", ".vrt")):
        if not remote and not os.path.isfile(spec):
            raise UserError(f"imagery file not found: {spec}")
        return GeoTiffSource(spec, bands=bands, retries=retries, timeout=timeout, backoff=backoff, **common)
    if path.endswith(".mbtiles"):
        if remote:
            raise UserError(f"MBTiles must be a local file, not {redact(spec)}")
        if not os.path.isfile(spec):
            raise UserError(f"imagery file not found: {spec}")
        return MBTilesSource(spec, **common)
    if lower.startswith("s3://") or (not remote and os.path.isdir(spec)):
        return TileDirSource(spec, retries=retries, timeout=timeout, **common)
    if not remote and not os.path.exists(spec):
        raise UserError(f"imagery not found: {spec}; expected {_FORMS}")
    raise UserError(f"unrecognised imagery {redact(spec)}; expected {_FORMS}")
