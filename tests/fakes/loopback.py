"""The life of a test HTTP server on 127.0.0.1, shared by the tile, Overpass and JOSM servers and the S3 fault proxy.

    class MyServer(LoopbackServer):
        def handler(self):            # the BaseHTTPRequestHandler class that answers this server's requests
            ...
    with MyServer() as server:        # or server.start() ... server.stop(); stop twice is fine
        server.url                    # http://127.0.0.1:PORT
"""

import sys
import threading
from http.server import ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 makes bursts of concurrent connections wait for SYN retries

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up (timeout, fail-fast) is fine
            super().handle_error(request, client_address)


class LoopbackServer:
    _httpd = None
    _thread = None

    def handler(self):
        raise NotImplementedError

    @property
    def url(self):
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        if self._httpd is None:
            self._httpd = _Server(("127.0.0.1", 0), self.handler())
            # a short poll interval: stop() waits for the serving loop's next look at its flag
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
