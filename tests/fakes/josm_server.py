"""A real HTTP server on 127.0.0.1 that answers like JOSM's remote control, for the plugin's editor tests.

    with JosmServer() as josm:                    # or josm.start() ... josm.stop()
        remote = JosmRemote(josm.url)             # http://127.0.0.1:PORT
        ...
        josm.requests[-1]                         # {"method", "path", "query", "body"}
        josm.last("load_data")["query"]["data"]

Answers, as JOSM does: /version with its JSON; the commands it knows (load_and_zoom, zoom, load_data, ...) with
"OK\\r\\n", or 400 and JOSM's HTML error page when a mandatory parameter is missing; an unknown command with 400;
any method but GET with 501. The query is decoded as JOSM decodes it: split on "&", each pair percent-decoded
("+" is a space), then split at its first "=".

Knobs, which tests may change between requests:
    error       (status, message): answer every command (not /version) with that status and JOSM's error page
    delay       seconds to wait before answering
stop() closes the port, so that the next request finds nothing listening.
Note: the standard library refuses request lines over 64 KiB (414); JOSM itself has no such limit.
"""

import html
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote_plus, urlsplit

from tests.fakes.loopback import LoopbackServer

VERSION = {"protocolversion": {"major": 1, "minor": 12}, "application": "JOSM RemoteControl", "version": 18969}
MANDATORY = {"load_and_zoom": ("bottom", "top", "left", "right"), "zoom": ("bottom", "top", "left", "right"),
             "load_data": ("data",), "load_object": ("objects",), "import": ("url",), "open_file": ("filename",),
             "imagery": ("url",), "add_node": ("lat", "lon"), "add_way": ("way",)}


class JosmServer(LoopbackServer):
    def __init__(self):
        self.requests = []
        self.error = None
        self.delay = 0.0
        self._lock = threading.Lock()

    def last(self, command):
        """The latest request for /command."""
        with self._lock:
            return next(r for r in reversed(self.requests) if r["path"] == f"/{command}")

    def handler(self):
        server = self

        class Handler(_Handler):
            josm = server

        return Handler


def _josm_query(raw: str) -> dict:
    query = {}
    for pair in raw.split("&") if raw else []:
        key, _, value = unquote_plus(pair, encoding="utf-8").partition("=")
        query[key] = value
    return query


def _error_page(status: int, title: str, message: str) -> bytes:
    paragraph = f"<p>{html.escape(message)}</p>" if message else ""
    return (f'<!DOCTYPE html><html><head><meta charset="UTF-8"><title>{title}</title></head><body>'
            f"<h1>HTTP Error {status}: {title}</h1>{paragraph}</body></html>").encode()


class _Handler(BaseHTTPRequestHandler):
    josm: JosmServer

    def log_message(self, *args):
        pass

    def _record(self):
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {"method": self.command, "path": parts.path, "query": _josm_query(parts.query), "body": body}
        with self.josm._lock:
            self.josm.requests.append(record)
        if self.josm.delay:
            time.sleep(self.josm.delay)
        return record

    def do_GET(self):
        record = self._record()
        command = record["path"].lstrip("/")
        if command == "version":
            return self._send(200, json.dumps(VERSION).encode(), "application/json")
        if command not in MANDATORY:
            return self._send(400, _error_page(400, "Bad Request", "No command specified! The following commands "
                                               "are available: " + ", ".join(MANDATORY)), "text/html")
        missing = [key for key in MANDATORY[command] if not record["query"].get(key)]
        if missing:
            return self._send(400, _error_page(400, "Bad Request", "The following keys are mandatory, but have not "
                                               "been provided: " + ", ".join(missing)), "text/html")
        if self.josm.error:
            status, message = self.josm.error
            title = {400: "Bad Request", 403: "Forbidden"}.get(status, "Internal Server Error")
            return self._send(status, _error_page(status, title, message), "text/html")
        self._send(200, b"OK\r\n", "text/plain")

    def do_POST(self):
        self._record()
        self._send(501, _error_page(501, "Not Implemented", ""), "text/html")

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Server", "JOSM RemoteControl")
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
