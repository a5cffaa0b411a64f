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
import pathlib
from typing import Optional

from PIL import Image, UnidentifiedImageError

from seer.vl.constants import IMAGE_TOKEN
from seer.vl.sources import ImageLoadError, MediaPolicy, _describe, fetch_timeout

ACCEPTED_SOURCES = ("a PIL.Image.Image, a file path (str or pathlib.Path), an http(s):// URL, "
                    "a data:image/...;base64,... URI, or raw image bytes")
DEFAULT_POLICY = MediaPolicy()


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of ``img``; transparent pixels become white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _decode(data: bytes, name: str, policy: MediaPolicy) -> Image.Image:
    """Decode encoded image bytes completely, so truncation or corruption fails here; the size
    in the header is checked against ``policy.max_pixels`` before any pixel is decoded."""
    if not data:
        raise ImageLoadError(f"image {name}: no data (0 bytes)")
    if len(data) > policy.max_bytes:
        raise ImageLoadError(f"image {name}: {len(data)} bytes, over the limit of {policy.max_bytes} bytes")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > policy.max_pixels:
            raise ImageLoadError(f"image {name}: {w}x{h} pixels, over the limit of {policy.max_pixels} pixels")
        img.load()
    except UnidentifiedImageError:
        raise ImageLoadError(f"image {name}: not a recognised image format "
                             f"({len(data)} bytes; expected PNG, JPEG, WebP, GIF, BMP, ...)") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image {name}: too large to decode safely ({exc})") from None
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"image {name}: corrupt or truncated image data ({exc})") from None
    return _to_rgb(img)


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


def _load_str(src: str, policy: MediaPolicy) -> Image.Image:
    text = src.strip()
    lowered = text[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return _decode(policy.fetch(text), f"URL {_describe(text)}", policy)
    if lowered.startswith("data:"):
        return _decode(_decode_data_uri(text), f"data URI {_describe(text)}", policy)
    if not text:
        raise ImageLoadError(f"image source is an empty string; accepted: {ACCEPTED_SOURCES}")
    return _decode(policy.read_file(src), f"file {_describe(src)}", policy)


def load_image(src, policy: Optional[MediaPolicy] = None) -> Image.Image:
    """Load ``src`` as a fully decoded RGB ``PIL.Image.Image``.

    ``src`` may be a PIL image, a file path (``str``/``pathlib.Path``, also
    ``file://``), an ``http(s)://`` URL (timeout from ``SEER_IMAGE_FETCH_TIMEOUT``),
    a ``data:image/...;base64,...`` URI, or raw encoded bytes. ``policy`` (default: any
    local file, default bounds) says which local files may be read and what a source may
    cost. Any failure raises ``ImageLoadError`` (a ``ValueError``).
    """
    policy = policy or DEFAULT_POLICY
    if isinstance(src, Image.Image):
        try:
            src.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"PIL image could not be decoded: {exc}") from None
        return _to_rgb(src)
    if isinstance(src, pathlib.PurePath):
        return _decode(policy.read_file(src), f"file {str(src)!r}", policy)
    if isinstance(src, str):
        return _load_str(src, policy)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode(bytes(src), _describe(src), policy)
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


__all__ = ["IMAGE_TOKEN", "ImageLoadError", "MediaPolicy", "load_image", "image_hash", "fetch_timeout"]
