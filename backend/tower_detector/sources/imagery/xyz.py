"""XYZ/TMS URL templates: tiles over HTTP(S), one request per tile.

Spec
    http(s)://...{z}/{x}/{y}... with {z} {x} {y}, {-y} (TMS row 2^z-1-y), {q} (quadkey) and {s} (one of
    `subdomains`); tms=True flips {y} too. `rate_limit` (requests/s) is one token bucket (capacity 1: evenly spaced
    requests) for the template's host, subdomains included, shared by all threads; a 429's Retry-After pauses that
    bucket for every thread.

HTTP
    Retries (`retries`, exponential backoff from `backoff` seconds with jitter) on 408, 429, 5xx, timeouts,
    connection errors and bodies shorter than their Content-Length; other 4xx answers are final, and so is a
    200 answer with a text or JSON body (a login page served as a tile). Each request waits at most `timeout`
    seconds to connect and between bytes, and a tile's tries together at most `deadline` seconds. 204, 404 and
    410 mean no imagery there; 401/403 a refused token (see base.py for which failures are transient).
    Requests go through the environment's proxy (http_proxy, https_proxy, no_proxy) where one applies.
"""

import logging
import os
import random
import socket
import threading
import time
from http.client import IncompleteRead as HttpIncompleteRead
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

import certifi
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from ...common.errors import UserError
from ...common.redaction import redact
from ...geo.tilemath import quadkey
from ..web import USER_AGENT, retry_after
from .base import ImagerySource, TileError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 60.0  # seconds; a server asking for more still gets its retry, just sooner
MAX_BACKOFF = 30.0


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

    def _note(self, started, outcome):
        """One request into the request log, when a caller asked for one (a pilot): its latency and outcome."""
        if self.request_log is not None:
            self.request_log.add(time.monotonic() - started, outcome)

    def _load(self, x, y, z):
        url = self.url(x, y, z)
        failure = asked = None  # asked: the wait a 429's Retry-After asked for
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
                    self._limiter.hold(max(delay, asked))
                else:
                    time.sleep(delay)
                log.debug("retry %d of %s: %s", attempt, redact(url), failure)
            self._limiter.acquire()
            left = max(deadline - time.monotonic(), 0.1)
            started = time.monotonic()
            try:
                response = self._http.request("GET", url, timeout=urllib3.Timeout(
                    total=left, connect=min(self._timeout, left), read=min(self._timeout, left)))
                body = response.data
            except Urllib3Error as exc:
                self._note(started, "transient")
                failure = _failure(exc)
                continue
            status = response.status
            if status == 200:
                expected = response.headers.get("Content-Length", "")
                if expected.isdigit() and "Content-Encoding" not in response.headers and len(body) < int(expected):
                    self._note(started, "transient")
                    failure = _truncated(len(body), expected)
                    continue
                content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
                if content_type.startswith("text/") or content_type.endswith("json"):
                    # a login page or an error message served as a tile
                    self._note(started, "permanent")
                    raise TileError(f"HTTP 200 with {content_type}, not an image", "corrupt")
                self._note(started, "ok")
                return body
            if status in (401, 403):
                self._note(started, "transient")
                raise TileError(f"HTTP {status}", "auth")
            if status in (204, 404, 410):
                self._note(started, "missing")
                raise TileError(f"HTTP {status}", "missing")
            if status not in (408, 429) and status < 500:
                self._note(started, "permanent")
                raise TileError(f"HTTP {status}", "http")
            self._note(started, "transient")
            failure = f"HTTP {status}"
            asked = min(MAX_RETRY_AFTER, retry_after(response.headers.get("Retry-After")) or 0.0)
        raise TileError(f"{failure} after {attempt} {'retry' if attempt == 1 else 'retries'}", "transient")


def _http_pool(url, **pool):
    """A urllib3 pool for this URL's scheme, through the environment's proxy (http_proxy, https_proxy, no_proxy)
    where one applies. urllib3 rather than requests: it costs less CPU per tile, and predict fetches tiles on the
    CPUs the model needs."""
    options = dict(pool, retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=10),
                   headers={"User-Agent": USER_AGENT}, block=False,
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
