"""A fault-injecting HTTP proxy on 127.0.0.1 for S3 tests: it forwards every request to an upstream endpoint
(moto's server) and, on a fixed schedule, answers with the faults real S3 gives instead.

    with FaultProxy(s3.meta.endpoint_url, every=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        ...
        proxy.injected      # Counter of the faults injected, by kind
        proxy.requests      # [(method, path with query, body length, fault or None)], in arrival order

Every `every`-th request gets the next fault of `faults`, cycling:
    slowdown   503 SlowDown XML; not forwarded
    internal   500 InternalError XML; not forwarded
    throttle   429 TooManyRequests XML; not forwarded
    lost       forwarded (upstream acts on it), then 500 InternalError: the client never sees upstream's answer
    drop       the connection is closed without an answer; not forwarded
deny=True answers every request with 403 AccessDenied instead; deny=callable(method, path) only those it is
true for (a bucket of another account, say).
"""

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from tests.fakes.loopback import LoopbackServer

FAULTS = ("slowdown", "internal", "throttle", "lost", "drop")
_ERRORS = {"slowdown": (503, "SlowDown", "Please reduce your request rate."),
           "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
           "throttle": (429, "TooManyRequests", "Too many requests."),
           "lost": (500, "InternalError", "We encountered an internal error. Please try again."),
           "deny": (403, "AccessDenied", "Access Denied")}
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy(LoopbackServer):
    def __init__(self, upstream, *, every=3, faults=FAULTS, deny=False):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.every, self.faults, self.deny = every, tuple(faults), deny
        self.injected = Counter()
        self.requests = []
        self._lock = threading.Lock()
        self._n = 0

    def handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self._body()
                with proxy._lock:
                    proxy._n += 1
                    fault = None
                    if proxy.deny(self.command, self.path) if callable(proxy.deny) else proxy.deny:
                        fault = "deny"
                    elif proxy.every and proxy._n % proxy.every == 0:
                        fault = proxy.faults[sum(proxy.injected.values()) % len(proxy.faults)]
                    if fault:
                        proxy.injected[fault] += 1
                    proxy.requests.append((self.command, self.path, len(body), fault))
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault in (None, "lost"):
                    status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                if fault:
                    status, code, message = _ERRORS[fault]
                    data = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                            f"<Message>{message}</Message><RequestId>fault-{proxy._n}</RequestId></Error>").encode()
                    headers = [("Content-Type", "application/xml")]
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in _HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self):
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        return Handler

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in _HOP}
            out["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=out)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def count(self, method=None, contains=""):
        """Requests seen with this method (any: None) whose path contains `contains`."""
        return sum(1 for m, p, _, _ in self.requests if (method is None or m == method) and contains in p)
