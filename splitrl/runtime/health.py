"""HTTP health endpoints for load balancers, on their own port (the KServe v2 / Triton paths):

    GET /v2/health/live    200 while the process serves HTTP at all
    GET /v2/health/ready   200 when the model is loaded, the server is not draining and request and
                           connection slots are left; 503 otherwise. Both answer a JSON body.

It starts before the model loads (ready is false with reason "loading the model" meanwhile). One
thread, one request at a time, 2 s to send it: a stuck client delays health answers, never requests.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("splitrl.cloud")


def loading() -> dict:
    return {"ready": False, "reason": "loading the model"}


class HealthServer:
    def __init__(self, host: str, port: int, status: Callable[[], dict] = loading):
        self.status = status
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 2.0

            def do_GET(self):  # noqa: N802 - the http.server hook's name
                if self.path == "/v2/health/live":
                    code, body = 200, {"live": True}
                elif self.path == "/v2/health/ready":
                    body = outer.status()
                    code = 200 if body.get("ready") else 503
                else:
                    code, body = 404, {"error": f"unknown path {self.path}; use /v2/health/live or /v2/health/ready"}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt, *args):
                log.debug("health: " + fmt, *args)

        self.httpd = http.server.HTTPServer((host, port), Handler)
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
