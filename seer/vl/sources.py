"""Where image and video bytes come from, and what one source may cost.

``MediaPolicy`` is the one place that decides (1) which local files may be read and
(2) the bounds on a fetch (total time, bytes) and on a decoded image (pixels). Offline
APIs use ``MediaPolicy()``: any local file the caller names, default bounds. The server
passes a policy built from its flags: no local file unless ``--allowed-local-media-path``,
and then only below that folder.

What must stay true:
- A local path is checked once, on the path that is then opened: the source string
  stripped, its ``file://`` scheme (any case) removed and percent-decoded, made absolute
  and resolved (``..`` and symlinks followed). A refused path is refused before anything
  about it is looked at, so the error says nothing about whether it exists.
- A fetch ends within ``fetch_timeout`` seconds in all (connect, headers, whole body):
  a timer shuts the socket at the deadline, whatever the host sends or withholds.
- A body over ``max_bytes`` is refused from its ``Content-Length`` before reading, and
  cut as soon as it grows past the cap otherwise.
- Every failure is an ``ImageLoadError`` (a ``ValueError``) that names the source.
"""

from __future__ import annotations

import http.client
import os
import pathlib
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

from seer.vl.constants import (DEFAULT_IMAGE_FETCH_TIMEOUT, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_MEDIA_BYTES,
                               IMAGE_FETCH_TIMEOUT_ENV, IMAGE_FETCH_USER_AGENT)

ANYWHERE = "/"  # local_root that admits every local file (the offline default)
MAX_REDIRECTS = 3


class ImageLoadError(ValueError):
    """An image source could not be turned into a decoded RGB image."""


def fetch_timeout() -> float:
    """Seconds a fetch may take in all, from ``SEER_IMAGE_FETCH_TIMEOUT`` (default 10)."""
    raw = os.environ.get(IMAGE_FETCH_TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_IMAGE_FETCH_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"{IMAGE_FETCH_TIMEOUT_ENV}={raw!r} is invalid: a number of seconds > 0")
    return value


@dataclass(frozen=True)
class MediaPolicy:
    """Which local files may be read and what one image or video source may cost."""

    local_root: Optional[str] = ANYWHERE  # local files below this folder only; None: no local files
    max_bytes: int = DEFAULT_MAX_MEDIA_BYTES  # encoded bytes of one fetched or read source
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # width * height of one decoded image or frame
    timeout: Optional[float] = None  # seconds for one fetch in all; None: fetch_timeout()
    _root: Optional[str] = field(default=None, init=False, repr=False)

    def __post_init__(self):
        for name in ("max_bytes", "max_pixels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} is invalid: an integer >= 1")
        if self.local_root is not None:
            object.__setattr__(self, "_root", os.path.realpath(self.local_root))

    def fetch_seconds(self) -> float:
        return self.timeout if self.timeout is not None else fetch_timeout()

    def local_path(self, src: str, what: str = "image") -> pathlib.Path:
        """The resolved path ``src`` names (a path or a ``file://`` URL), if the policy lets it be read."""
        text = src.strip()
        if text[:7].lower() == "file://":
            text = urllib.request.url2pathname(text[7:])
        shown = _describe(src)
        if self._root is None:
            raise ImageLoadError(f"{what} {shown}: local files are not allowed here; send an http(s) URL or a "
                                 "data: URI (a server reads local files only below --allowed-local-media-path)")
        if not text:
            raise ImageLoadError(f"{what} source is an empty string")
        path = os.path.realpath(text)
        if os.path.commonpath([path, self._root]) != self._root:
            raise ImageLoadError(f"{what} {shown}: local files are allowed only below {self._root}")
        return pathlib.Path(path)

    def read_file(self, src, what: str = "image") -> bytes:
        """The bytes of the local file ``src`` (str or path) names, within the policy."""
        path = self.local_path(str(src), what)
        shown = repr(str(src))[:80]
        try:
            if not path.is_file():
                raise ImageLoadError(f"{what} file {shown} does not exist or is not a regular file")
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ImageLoadError(f"{what} file {shown} has {size} bytes, over the limit of {self.max_bytes} bytes")
            return path.read_bytes()
        except OSError as exc:
            raise ImageLoadError(f"{what} file {shown} could not be read: {exc.strerror or exc}") from None

    def fetch(self, url: str, what: str = "image") -> bytes:
        """GET ``url`` (http or https), following up to 3 redirects, within the time and size bounds."""
        seconds = self.fetch_seconds()
        end = time.monotonic() + seconds
        shown = _describe(url)
        for _ in range(MAX_REDIRECTS + 1):
            location, body = _get(url, end, seconds, self.max_bytes, what, shown)
            if location is None:
                return body
            url = urllib.parse.urljoin(url, location)
            if not url.lower().startswith(("http://", "https://")):
                raise ImageLoadError(f"{what} URL {shown}: redirected to a non-http(s) location")
        raise ImageLoadError(f"{what} URL {shown}: more than {MAX_REDIRECTS} redirects")


def _describe(src, limit: int = 80) -> str:
    """Short printable name of a source; long strings (data URIs) are truncated."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    text = str(src)
    if len(text) > limit:  # both ends: a URI's scheme, a path's file name
        return f"{text[:limit // 2]}...{text[-(limit // 3):]} ({len(text)} chars)"
    return repr(text) if text != text.strip() else text


def _get(url: str, end: float, seconds: float, cap: int, what: str, shown: str):
    """One GET: ``(redirect location or None, body)``; a timer shuts the socket at ``end``
    (``time.monotonic()``), so a host that trickles or stalls cannot hold the caller longer."""
    timed_out = ImageLoadError(f"{what} URL {shown}: timed out after {seconds:g}s "
                               f"(set {IMAGE_FETCH_TIMEOUT_ENV} to change)")
    left = end - time.monotonic()
    if left <= 0:
        raise timed_out
    fired = threading.Event()
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ImageLoadError(f"{what} URL {shown}: not an http(s) URL with a host")
    try:
        port = parts.port
    except ValueError:
        raise ImageLoadError(f"{what} URL {shown}: invalid port") from None
    if scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, port, timeout=left,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=left)

    def cut():
        fired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(left, cut)
    timer.daemon = True
    timer.start()
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"User-Agent": IMAGE_FETCH_USER_AGENT, "Accept": "*/*"})
        resp = conn.getresponse()
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            return resp.getheader("Location"), b""
        if resp.status != 200:
            raise ImageLoadError(f"{what} URL {shown}: HTTP error {resp.status} {resp.reason}")
        declared = resp.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap:
            raise ImageLoadError(f"{what} URL {shown}: {int(declared)} bytes, over the limit of {cap} bytes")
        chunks, size = [], 0
        while True:
            chunk = resp.read(min(1 << 16, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise ImageLoadError(f"{what} URL {shown}: the body grew past the limit of {cap} bytes")
        if fired.is_set():
            raise timed_out
        return None, b"".join(chunks)
    except ImageLoadError:
        raise
    except (socket.timeout, TimeoutError):
        raise timed_out from None
    except (http.client.HTTPException, OSError, ValueError) as exc:
        if fired.is_set():
            raise timed_out from None
        kind = "unreachable" if isinstance(exc, (ConnectionError, socket.gaierror)) else "bad response"
        raise ImageLoadError(f"{what} URL {shown}: {kind} ({type(exc).__name__}: {str(exc)[:120]})") from None
    finally:
        timer.cancel()
        conn.close()
