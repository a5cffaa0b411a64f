"""Video inputs: a list of frames, or a video file decoded with PyAV (``pip install av``).

What must stay true:
- ``load_video`` returns a ``Video`` whose frames are decoded RGB ``PIL.Image.Image``s of one
  size, or raises ``VideoLoadError`` (a ``ValueError``) naming the source and the reason.
- A file is sampled as Qwen's own tooling (qwen-vl-utils) samples it: ``fps`` frames per second
  (default 2), at least 4 and at most 768 frames, an even count, spread evenly over the whole
  video; ``nframes`` asks for a count instead. A list of frames is taken as given.
- ``Video.fps`` is the rate of the frames kept (for a file: kept / total * the file's rate,
  transformers' ``sampled_fps``); for a list of frames, the caller's ``fps`` or None.
- ``video_hash`` depends only on the frames' pixels and ``fps``.
"""

from __future__ import annotations

import hashlib
import io
import math
import pathlib
from dataclasses import dataclass
from typing import Optional

from seer.vl import DEFAULT_POLICY, ImageLoadError, MediaPolicy, _describe, image_hash, load_image

ACCEPTED_VIDEO_SOURCES = ("a list of frames (each a PIL image or any image source), a video file path, "
                          "a file:// or http(s):// URL, or the file's bytes")
FPS, MIN_FRAMES, MAX_FRAMES, FRAME_FACTOR = 2.0, 4, 768, 2


class VideoLoadError(ValueError):
    """A video source could not be turned into frames."""


@dataclass
class Video:
    frames: list  # decoded RGB PIL images, all one size
    fps: Optional[float] = None  # frames per second of ``frames``; None: not known

    def __repr__(self) -> str:
        w, h = self.frames[0].size
        return f"Video({len(self.frames)} frames of {w}x{h}, fps={self.fps})"


def sample_indices(total: int, video_fps: float, fps: Optional[float] = None,
                   nframes: Optional[int] = None) -> list[int]:
    """Which of a file's ``total`` frames to keep (qwen-vl-utils' ``smart_nframes``)."""
    import torch  # lazily: this module stays importable without torch

    if total < FRAME_FACTOR:
        return list(range(total))
    if nframes is not None:
        n = max(FRAME_FACTOR, round(nframes / FRAME_FACTOR) * FRAME_FACTOR)
    else:
        lo = math.ceil(MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
        hi = math.floor(min(MAX_FRAMES, total) / FRAME_FACTOR) * FRAME_FACTOR
        n = min(max(total / video_fps * (fps or FPS), lo), hi, total)
        n = max(FRAME_FACTOR, math.floor(n / FRAME_FACTOR) * FRAME_FACTOR)
    return torch.linspace(0, total - 1, min(n, total)).round().long().tolist()


def _open_source(src, policy: MediaPolicy):
    """The encoded bytes of a file, URL or bytes source, within ``policy``; and a printable name."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) > policy.max_bytes:
            raise VideoLoadError(f"video {_describe(src)}: over the limit of {policy.max_bytes} bytes")
        return bytes(src), _describe(src)
    text = str(src).strip()
    try:
        if text[:8].lower().startswith(("http://", "https://")):
            return policy.fetch(text, "video"), _describe(text)
        return policy.read_file(src, "video"), _describe(src)
    except ImageLoadError as e:
        raise VideoLoadError(str(e)) from None


def _decode_file(src, fps: Optional[float], nframes: Optional[int], policy: MediaPolicy) -> Video:
    data, name = _open_source(src, policy)  # the policy first: a refused source says so, whatever is installed
    try:
        import av
    except ImportError:
        raise VideoLoadError("decoding a video file needs PyAV: pip install av (or seer[video]); "
                             "or pass the video as a list of frames") from None
    frames = {}
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > policy.max_pixels:
                raise VideoLoadError(f"video {name}: {w}x{h} frames, over the limit of {policy.max_pixels} pixels")
            video_fps = float(stream.average_rate or stream.base_rate or 24)
            total = stream.frames or sum(1 for _ in container.decode(stream))
        if not total:
            raise VideoLoadError(f"video {name}: it has no frames")
        keep = sample_indices(total, video_fps, fps, nframes)
        wanted = set(keep)
        with av.open(io.BytesIO(data)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    frames[i] = frame.to_image().convert("RGB")
                if i >= keep[-1]:
                    break
    except VideoLoadError:
        raise
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as e:
        raise VideoLoadError(f"video {name}: could not be decoded ({e})") from None
    if not frames:
        raise VideoLoadError(f"video {name}: no frames could be decoded")
    # A file whose header overstates its frame count: the missing ones repeat the last decoded frame.
    last = frames[max(frames)]
    return Video([frames.get(i, last) for i in keep], len(keep) / total * video_fps)


def load_video(src, fps: Optional[float] = None, nframes: Optional[int] = None,
               policy: Optional[MediaPolicy] = None) -> Video:
    """``src`` as a ``Video``: a list of frames (``fps``: the rate they were taken at) or a file,
    sampled at ``fps`` frames per second (default 2) or to ``nframes`` frames; ``policy`` as
    for ``load_image``."""
    policy = policy or DEFAULT_POLICY
    if isinstance(src, Video):
        return src
    for name, v in (("fps", fps), ("nframes", nframes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise VideoLoadError(f"video {name}={v!r} is invalid: a number > 0")
    if isinstance(src, (list, tuple)):
        if not src:
            raise VideoLoadError("a video given as a list of frames needs at least one frame")
        try:
            frames = [load_image(f, policy) for f in src]
        except ImageLoadError as e:
            raise VideoLoadError(f"a frame of the video could not be loaded: {e}") from None
        sizes = {f.size for f in frames}
        if len(sizes) > 1:
            raise VideoLoadError(f"the frames of a video must all have one size, got {sorted(sizes)}")
        return Video(frames, float(fps) if fps is not None else None)
    if isinstance(src, (str, pathlib.PurePath, bytes, bytearray, memoryview)):
        return _decode_file(src, fps, nframes, policy)
    raise VideoLoadError(f"unsupported video source of type {type(src).__name__}; accepted: {ACCEPTED_VIDEO_SOURCES}")


def video_hash(video: Video) -> str:
    """Content hash of the frames and their rate."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{len(video.frames)}|{video.fps}|".encode())
    for f in video.frames:
        digest.update(image_hash(f).encode())
    return digest.hexdigest()


__all__ = ["Video", "VideoLoadError", "load_video", "video_hash", "sample_indices"]
