"""A throw-away local HTTP server for image-URL tests (127.0.0.1 only, no internet).

``ImageServer`` serves in-memory bodies by path, optionally after a delay (to exercise the
fetch timeout); ``closed_port_url`` gives a URL nothing listens on (connection refused).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class ImageServer:
    """``add(path, body, ...)`` then ``url(path)``; use as a context manager."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, str, float]] = {}
        self.hits: list[str] = []
        self.agents: list[str] = []
        routes, hits, agents = self.routes, self.hits, self.agents

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server naming
                hits.append(self.path)
                agents.append(self.headers.get("User-Agent"))
                status, body, ctype, delay = routes.get(self.path, (404, b"not found", "text/plain", 0.0))
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, body: bytes, status: int = 200, ctype: str = "image/png",
            delay: float = 0.0) -> str:
        self.routes[path] = (status, body, ctype, delay)
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def __enter__(self) -> "ImageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url(path: str = "/image.png") -> str:
    """An http URL on 127.0.0.1 whose port was just freed: connecting is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{path}"
