"""Image loading for vision-language prompts (LMDeploy's ``lmdeploy.vl`` surface).

What must stay true:
- ``load_image`` returns a fully decoded ``PIL.Image.Image`` in mode ``RGB`` or
  raises ``ImageLoadError`` (a ``ValueError``) naming the source and the reason;
  it never returns a placeholder image.
- Images with transparency are composited onto white before dropping alpha
  (what transformers' ``convert_to_rgb`` and vLLM do), so processors agree.
- ``image_hash`` depends only on mode, size and pixel bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import pathlib
import socket
import urllib.error
import urllib.request

from PIL import Image, UnidentifiedImageError

from seer.vl.constants import (DEFAULT_IMAGE_FETCH_TIMEOUT, IMAGE_FETCH_TIMEOUT_ENV,
                               IMAGE_FETCH_USER_AGENT, IMAGE_TOKEN)

ACCEPTED_SOURCES = ("a PIL.Image.Image, a file path (str or pathlib.Path), an http(s):// URL, "
                    "a data:image/...;base64,... URI, or raw image bytes")


class ImageLoadError(ValueError):
    """An image source could not be turned into a decoded RGB image."""


def _describe(src, limit: int = 80) -> str:
    """Short printable name of a source; long strings (data URIs) are truncated."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    text = str(src)
    if len(text) > limit:
        return f"{text[:limit - 20]}...({len(text)} chars)"
    return text


def fetch_timeout() -> float:
    """Seconds to wait on an http(s) image, from ``SEER_IMAGE_FETCH_TIMEOUT`` (default 10)."""
    raw = os.environ.get(IMAGE_FETCH_TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_IMAGE_FETCH_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{IMAGE_FETCH_TIMEOUT_ENV}={raw!r} is invalid: a number of seconds > 0")
    return value


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of ``img``; transparent pixels become white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _decode(data: bytes, name: str) -> Image.Image:
    """Decode encoded image bytes completely, so truncation or corruption fails here."""
    if not data:
        raise ImageLoadError(f"image {name}: no data (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise ImageLoadError(f"image {name}: not a recognised image format "
                             f"({len(data)} bytes; expected PNG, JPEG, WebP, GIF, BMP, ...)") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image {name}: too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"image {name}: corrupt or truncated image data ({exc})") from None
    return _to_rgb(img)


def _read_file(path: pathlib.Path) -> bytes:
    if not path.exists():
        raise ImageLoadError(f"image file {str(path)!r} does not exist")
    if not path.is_file():
        raise ImageLoadError(f"image path {str(path)!r} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"image file {str(path)!r} could not be read: {exc}") from None


def _fetch(url: str) -> bytes:
    """GET ``url`` with a User-Agent and the configured timeout; HTTP errors raise."""
    timeout = fetch_timeout()
    request = urllib.request.Request(url, headers={"User-Agent": IMAGE_FETCH_USER_AGENT})
    name = _describe(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the open response
        raise ImageLoadError(f"image URL {name}: HTTP error {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (socket.timeout, TimeoutError)):
            raise ImageLoadError(f"image URL {name}: timed out after {timeout:g}s "
                                 f"(set {IMAGE_FETCH_TIMEOUT_ENV} to change)") from None
        raise ImageLoadError(f"image URL {name}: unreachable ({exc.reason})") from None
    except (socket.timeout, TimeoutError):
        raise ImageLoadError(f"image URL {name}: timed out after {timeout:g}s "
                             f"(set {IMAGE_FETCH_TIMEOUT_ENV} to change)") from None
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"image URL {name}: fetch failed ({exc})") from None


def _decode_data_uri(uri: str) -> bytes:
    """Payload of ``data:image/<kind>;base64,<payload>``."""
    header, comma, payload = uri.partition(",")
    name = _describe(uri)
    if not comma or not header.lower().startswith("data:image/") or ";base64" not in header.lower():
        raise ImageLoadError(f"image data URI {name} is malformed: expected "
                             "'data:image/<format>;base64,<base64 data>'")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageLoadError(f"image data URI {name}: invalid base64 ({exc})") from None


def _load_str(src: str) -> Image.Image:
    text = src.strip()
    lowered = text[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return _decode(_fetch(text), f"URL {_describe(text)}")
    if lowered.startswith("data:"):
        return _decode(_decode_data_uri(text), f"data URI {_describe(text)}")
    if lowered.startswith("file://"):
        text = urllib.request.url2pathname(text[len("file://"):])
    if not text:
        raise ImageLoadError(f"image source is an empty string; accepted: {ACCEPTED_SOURCES}")
    return _decode(_read_file(pathlib.Path(text)), f"file {text!r}")


def load_image(src) -> Image.Image:
    """Load ``src`` as a fully decoded RGB ``PIL.Image.Image``.

    ``src`` may be a PIL image, a file path (``str``/``pathlib.Path``, also
    ``file://``), an ``http(s)://`` URL (timeout from ``SEER_IMAGE_FETCH_TIMEOUT``),
    a ``data:image/...;base64,...`` URI, or raw encoded bytes. Any failure raises
    ``ImageLoadError`` (a ``ValueError``).
    """
    if isinstance(src, Image.Image):
        try:
            src.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"PIL image could not be decoded: {exc}") from None
        return _to_rgb(src)
    if isinstance(src, pathlib.PurePath):
        return _decode(_read_file(pathlib.Path(src)), f"file {str(src)!r}")
    if isinstance(src, str):
        return _load_str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode(bytes(src), _describe(src))
    raise ImageLoadError(f"unsupported image source of type {type(src).__name__}; "
                         f"accepted: {ACCEPTED_SOURCES}")


def image_hash(img: Image.Image) -> str:
    """Content hash of ``img`` (mode, size and pixel bytes): equal pixels give equal hashes."""
    if not isinstance(img, Image.Image):
        raise ValueError(f"image_hash needs a PIL.Image.Image, got {type(img).__name__}")
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{img.mode}|{img.size[0]}x{img.size[1]}|".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()


__all__ = ["IMAGE_TOKEN", "ImageLoadError", "load_image", "image_hash", "fetch_timeout"]
