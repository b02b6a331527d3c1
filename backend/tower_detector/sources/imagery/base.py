"""The base of every imagery source: ImagerySource fetches tiles concurrently and in order, caches them and decides
when failures mean a wrong source or an outage; a subclass only loads one tile (its bytes, or its pixels).

API
    ImagerySource.fetch(tiles, zoom=None, *, fail_fast=20, give_up=True) -> Iterator[TileResult]
        tiles: (x, y, z) tuples, "x-y-z" ids, a TileCover, or, with zoom=, (x, y) pairs or (xs, ys) array
        batches (as TileCover.iter_batches yields). At most 2 x concurrency tiles are in flight or waiting to be
        yielded (a sliding window), plus the first `fail_fast` results, held back for the check below.
    ImagerySource.fetch_batch(xs, ys, z, *, fail_fast=20) -> (uint8 array [n, size, size, 3], [error or None])
    ImagerySource.description, .kind ("xyz", "geotiff", "mbtiles", "tiledir"), .close(); a context manager.
    decode_tile(bytes, size=256) -> array or ValueError.
    A subclass gives _load(x, y, z) (bytes or an array; raises TileError) and may give _check_zoom(z) (UserError
    when the source has no imagery at that zoom, asked once per zoom before any fetch) and _fail_hint.
    ImagerySource.request_log: None, or a RequestLog that the source fills with each request's latency and
    outcome (XYZ sources do; a pilot sets one, see remote/pilot.py).

Behaviour
    Errors are per tile: a missing, corrupt or unreachable tile is a TileResult with image None and a reason
    ("HTTP 404", "truncated/corrupt image: ...", "outside imagery", "timeout after 2 retries"), never an exception.
    Fail fast: when the first `fail_fast` tiles (all of them if fewer) all fail with HTTP 401/403, HTTP 404 or
    "missing tile", or are all outside the imagery, fetch raises UserError naming the source and the likely
    cause. Pass fail_fast=0 when the imagery may cover only part of the tiles and those come first.
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
    Secrets: description, error values, UserError messages and the imagery modules' logs are redacted by
    redaction.redact (every query value but those of harmless parameters, and user:password@); so are urllib3's
    and rasterio's log records. Secrets elsewhere in a URL (a path segment) cannot be recognised.
"""

import io
import logging
import os
import tempfile
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, islice, repeat
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...common.errors import Failure, UserError
from ...common.redaction import redact
from ...geo.tilemath import TILE_SIZE, parse_tile_id

log = logging.getLogger(__name__)

FAIL_FAST = 20
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


# Failure kinds (TileError.kind) that may pass: the tile is retried by a later run. The others are permanent: no
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


class RequestLog:
    """Each imagery request's latency (seconds, the answer read whole, rate-limit waits not counted) and outcome:
    "ok", "transient" (may pass: 5xx, 429, 401/403, timeouts, connection errors, short bodies), "missing" (no
    imagery there: 204/404/410) or "permanent" (other 4xx, a text body). Off unless a caller sets one; when on, a
    lock and an append per request."""

    OUTCOMES = ("ok", "transient", "missing", "permanent")

    def __init__(self):
        self._lock = threading.Lock()
        self.seconds = []
        self.outcomes = Counter()

    def add(self, seconds, outcome):
        with self._lock:
            self.seconds.append(seconds)
            self.outcomes[outcome] += 1

    def summary(self):
        """{"requests", "latency_median_s", "latency_p95_s", "failed_transient", "failed_permanent" (no imagery
        included), "no_imagery", "error_rate_transient", "error_rate_permanent"}; latencies None when no request."""
        with self._lock:
            seconds, outcomes = np.asarray(self.seconds, float), Counter(self.outcomes)
        n = len(seconds)
        permanent = outcomes["permanent"] + outcomes["missing"]
        return {"requests": n,
                "latency_median_s": round(float(np.median(seconds)), 4) if n else None,
                "latency_p95_s": round(float(np.percentile(seconds, 95)), 4) if n else None,
                "failed_transient": outcomes["transient"], "failed_permanent": permanent,
                "no_imagery": outcomes["missing"],
                "error_rate_transient": round(outcomes["transient"] / n, 4) if n else None,
                "error_rate_permanent": round(permanent / n, 4) if n else None}


class TileError(Exception):
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
        self.request_log = None  # a RequestLog, when a caller wants each request timed (XYZ sources)

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
        """Encoded tile bytes or a (size, size, 3) uint8 array; raises TileError."""
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
                        raise TileError(str(exc), "corrupt") from None
                self._store(x, y, z, data, image)
            return TileResult(x, y, z, image, None), None
        except TileError as exc:
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
        try:  # atomic, as atomic_file, but without its fsync: a cache file lost in a crash is only a miss
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
