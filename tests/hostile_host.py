"""A local image host that misbehaves on purpose (127.0.0.1 only), for the fetch-hardening tests.

``HostileHost`` answers each connection by path with one of ``BEHAVIOURS``: bytes that trickle,
broken status lines, too many or too long headers, a huge declared length, a body that grows
without end, redirects in a loop, or a good PNG. Each connection runs in its own daemon thread
and gives up quietly when the client hangs up.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib


def huge_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _ok(length) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n\r\n".encode()


def _trickle_body(conn, png: bytes):
    conn.sendall(_ok(len(png)))
    for b in png:
        conn.sendall(bytes([b]))
        time.sleep(1.0)


def _trickle_headers(conn, png: bytes):
    for b in _ok(len(png)):
        conn.sendall(bytes([b]))
        time.sleep(1.0)


def _stall(conn, png: bytes):
    time.sleep(60)


def _bad_status(conn, png: bytes):
    conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")


def _many_headers(conn, png: bytes):
    conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n" + png)


def _long_header(conn, png: bytes):
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n" + png)


def _huge_length(conn, png: bytes):
    conn.sendall(_ok(2 << 30) + png[:10])


def _endless(conn, png: bytes):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
    block = b"\x00" * 65536
    for _ in range(4096):  # 256 MiB at most
        conn.sendall(block)


def _redirect_loop(conn, png: bytes):
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /redirect_loop\r\nContent-Length: 0\r\n\r\n")


def _good(conn, png: bytes):
    conn.sendall(_ok(len(png)) + png)


BEHAVIOURS = {f.__name__[1:]: f for f in (_trickle_body, _trickle_headers, _stall, _bad_status, _many_headers,
                                          _long_header, _huge_length, _endless, _redirect_loop, _good)}


class HostileHost:
    """``url(behaviour)`` serves ``png`` the way the behaviour says; use as a context manager."""

    def __init__(self, png: bytes):
        self.png = png
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, behaviour: str) -> str:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; known: {sorted(BEHAVIOURS)}")
        return f"http://127.0.0.1:{self.port}/{behaviour}"

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(4096)
                    if not data:
                        return
                    request += data
                path = request.split(b" ", 2)[1].decode().lstrip("/")
                BEHAVIOURS.get(path, _good)(conn, self.png)
            except OSError:
                pass  # the client hung up

    def __enter__(self) -> "HostileHost":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
