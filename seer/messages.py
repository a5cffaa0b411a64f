"""Every accepted prompt shape, turned into one internal conversation form.

A ``Conversation`` is a list of messages ``{"role": ROLE, "content": [Part, ...]}``
with ROLE in ``system``/``user``/``assistant``/``tool`` (``developer`` is read as ``system``;
an assistant message may also carry ``tool_calls`` and have no content, a tool message
``tool_call_id`` and ``name``, which chat templates that know tools render) and each Part either
``{"type": "text", "text": str}`` or ``{"type": "image", "image": IMAGE}``, IMAGE
being a decoded RGB ``PIL.Image.Image`` or a ``torch.Tensor`` of precomputed
image embeddings (passed through untouched). An image part may also carry
``min_pixels`` / ``max_pixels`` (ints), read by dynamic-resolution families, and
``max_dynamic_patch`` (int), read by tiling families (InternVL).
Video models also get ``{"type": "video", "video": seer.vl.video.Video}`` parts
(frames loaded, files decoded), with the same optional keys.

What must stay true:
- ``to_conversation`` loads every image (bad images raise ``ValueError`` here,
  before any engine work) and only emits the form above.
- Images are accepted in user messages only.
- A text part (even an empty one) before an image marks that image as placed
  inline by the user; images that lead a turn are "prepended" images, which
  chat templates follow with their image separator (LMDeploy's convention).
- ``to_conversation`` accepts its own output (it is idempotent).
"""

from __future__ import annotations

from typing import Any, Optional

from seer.config import check_max_tiles, check_pixel_bounds
from seer.vl import MediaPolicy, load_image
from seer.vl.video import load_video
from seer.vl.constants import IMAGE_TOKEN

Part = dict
Message = dict
Conversation = list

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}  # the OpenAI SDK's name for system prompts of newer models
ACCEPTED_ROLES = ROLES + tuple(ROLE_ALIASES)
MAX_TOOL_CALLS = 128  # tool calls in one assistant message
PROMPT_SHAPES = ("a str; a tuple (text, image_or_list_of_images); a list of OpenAI-style message "
                 "dicts (each with 'role' and 'content'); or a batch: a list of any of these")
PART_TYPES = ("{'type': 'text', 'text': str}, {'type': 'image_url', 'image_url': {'url': URL}} "
              "(or 'image_url': URL), {'type': 'image', 'image': PIL_or_URL}, "
              "{'type': 'image_data', 'image_data': {'data': PIL}}, "
              "{'type': 'image_embeds', 'image_embeds': torch.Tensor}, "
              "{'type': 'video', 'video': LIST_OF_FRAMES_or_FILE} (or 'video_url': {'url': FILE_or_URL}; "
              "video models only)")


def _is_tensor(obj) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the engine
        return False
    return isinstance(obj, torch.Tensor)


def _is_message_list(obj) -> bool:
    return isinstance(obj, list) and len(obj) > 0 and all(isinstance(m, dict) and "role" in m for m in obj)


def _is_single(obj) -> bool:
    if isinstance(obj, str):
        return True
    if isinstance(obj, tuple):
        return len(obj) == 2 and isinstance(obj[0], str)
    return _is_message_list(obj)


def split_batch(prompts) -> tuple[list, bool]:
    """Return ``(list_of_single_prompts, is_batch)`` for what a user passed.

    A single prompt gives ``([prompt], False)``; a list of single prompts gives
    ``(that list, True)``. Anything else raises ``ValueError`` listing the shapes.
    """
    if _is_single(prompts):
        return [prompts], False
    if isinstance(prompts, list) and prompts:
        for i, item in enumerate(prompts):
            if isinstance(item, dict):
                raise ValueError(f"unsupported prompt shape ({_shape(prompts)}); accepted: {PROMPT_SHAPES}")
            if not _is_single(item):
                raise ValueError(f"prompt #{i} of the batch has an unsupported shape "
                                 f"({_shape(item)}); accepted: {PROMPT_SHAPES}")
        return list(prompts), True
    raise ValueError(f"unsupported prompt shape ({_shape(prompts)}); accepted: {PROMPT_SHAPES}")


def _shape(obj) -> str:
    """A short description of why ``obj`` is not a prompt, for error messages."""
    if isinstance(obj, tuple):
        if len(obj) != 2:
            return f"a tuple of length {len(obj)}, expected (text, images)"
        return f"a tuple whose first item is {type(obj[0]).__name__}, expected str text"
    if isinstance(obj, dict):
        return "a single dict; wrap a message in a list: [{'role': 'user', 'content': ...}]"
    if isinstance(obj, list):
        if not obj:
            return "an empty list"
        if all(isinstance(m, dict) for m in obj):
            missing = next(i for i, m in enumerate(obj) if "role" not in m)
            return f"message #{missing} has no 'role' (accepted roles: {ROLES})"
        return "a list mixing message dicts with other items or dicts without 'role'"
    return f"a {type(obj).__name__}"


def check_text(text: str, where: str = "text") -> str:
    """``text`` if it can be encoded as UTF-8 (a lone surrogate such as '\\ud800' cannot, and
    tokenizers fail on it); else a ``ValueError``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where} is not valid Unicode text: {e.reason} at character {e.start} "
                         f"({text[e.start]!r}); send UTF-8 text") from None
    return text


def check_token_ids(ids, vocab: int, what: str) -> None:
    """A ``ValueError`` naming the first few of ``ids`` that are not token ids of the model's
    ``vocab``-token vocabulary."""
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"{what} {bad[:5]} are outside the model's vocabulary [0, {vocab})")


def text_part(text: str) -> Part:
    return {"type": "text", "text": check_text(text)}


def image_part(image, policy: Optional[MediaPolicy] = None) -> Part:
    """An image part; ``image`` is loaded (within ``policy``) unless it is a tensor of embeddings."""
    return {"type": "image", "image": image if _is_tensor(image) else load_image(image, policy)}


def _image_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _tuple_to_parts(text: str, images, policy: Optional[MediaPolicy]) -> list[Part]:
    """Text with images: at the IMAGE_TOKEN positions if any, otherwise images first."""
    images = [image_part(img, policy) for img in _image_list(images)]
    n_tokens = text.count(IMAGE_TOKEN)
    if n_tokens == 0:
        return images + [text_part(text)]
    if n_tokens != len(images):
        raise ValueError(f"the prompt text contains {IMAGE_TOKEN} {n_tokens} time(s) but {len(images)} "
                         f"image(s) were given; use one {IMAGE_TOKEN} per image, or none to put the "
                         "images before the text")
    pieces = text.split(IMAGE_TOKEN)
    parts = [text_part(pieces[0])]  # kept even when empty: it marks the images as placed inline
    for img, piece in zip(images, pieces[1:]):
        parts.append(img)
        if piece:
            parts.append(text_part(piece))
    return parts


def _image_source(part: dict, kind: str) -> Any:
    """The image payload of an OpenAI/LMDeploy/HF-style image part."""
    if kind == "image_url":
        value = part.get("image_url")
        return value.get("url") if isinstance(value, dict) else value
    if kind == "image_data":
        value = part.get("image_data")
        return value.get("data") if isinstance(value, dict) else value
    if kind == "image_embeds":
        return part.get("image_embeds")
    for key in ("image", "url", "path"):  # HF chat format allows url/path keys
        if part.get(key) is not None:
            return part[key]
    return None


def _convert_part(part, role: str, where: str, policy: Optional[MediaPolicy]) -> Part:
    if isinstance(part, str):
        return text_part(part)
    if not isinstance(part, dict) or "type" not in part:
        raise ValueError(f"{where}: content part {part!r:.80} is not a dict with a 'type'; "
                         f"accepted parts: {PART_TYPES}")
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{where}: a text part needs 'text' as a str, got {part.get('text')!r:.80}")
        return text_part(part["text"])
    if kind in ("video", "video_url"):
        return _convert_video_part(part, kind, role, where, policy)
    if kind not in ("image", "image_url", "image_data", "image_embeds"):
        raise ValueError(f"{where}: unknown content part type {kind!r}; accepted parts: {PART_TYPES}")
    if role != "user":
        raise ValueError(f"{where}: images are only accepted in user messages, found one in a {role!r} message")
    source = _image_source(part, kind)
    if source is None:
        raise ValueError(f"{where}: the {kind!r} part carries no image; accepted parts: {PART_TYPES}")
    if kind == "image_embeds" and not _is_tensor(source):
        raise ValueError(f"{where}: 'image_embeds' must be a torch.Tensor, got {type(source).__name__}")
    return {**image_part(source, policy), **_image_options(part, kind, where)}


def _convert_video_part(part: dict, kind: str, role: str, where: str, policy: Optional[MediaPolicy]) -> Part:
    """``{"type": "video", "video": Video, ...options}``; the frames are loaded (files decoded) here."""
    if role != "user":
        raise ValueError(f"{where}: videos are only accepted in user messages, found one in a {role!r} message")
    value = part.get(kind)
    inner = value if isinstance(value, dict) else {}
    source = inner.get("url") if kind == "video_url" and inner else value
    if source is None:
        raise ValueError(f"{where}: the {kind!r} part carries no video; accepted parts: {PART_TYPES}")
    options = {k: part[k] if part.get(k) is not None else inner.get(k) for k in ("fps", "nframes")}
    video = load_video(source, **options, policy=policy)
    return {"type": "video", "video": video, **_image_options(part, kind, where)}


IMAGE_OPTIONS = ("min_pixels", "max_pixels", "max_dynamic_patch")


def _image_options(part: dict, kind: str, where: str) -> dict:
    """Per-image preprocessing options (``min_pixels``/``max_pixels``, read by dynamic-resolution
    families such as Qwen2-VL; ``max_dynamic_patch``, read by InternVL): on the part itself (Qwen's
    message format) or inside its ``image_url`` dict (LMDeploy's)."""
    inner = part.get(kind) if isinstance(part.get(kind), dict) else {}
    found = {k: part[k] if part.get(k) is not None else inner.get(k) for k in IMAGE_OPTIONS}
    check_pixel_bounds(found["min_pixels"], found["max_pixels"], f"{where}: image part's ")
    check_max_tiles(found["max_dynamic_patch"], f"{where}: image part's ")
    return {k: v for k, v in found.items() if v is not None}


def _convert_message(message: dict, index: int, policy: Optional[MediaPolicy]) -> Message:
    where = f"message #{index}"
    role = message.get("role")
    if role not in ACCEPTED_ROLES:
        raise ValueError(f"{where}: role {role!r} is not supported; accepted roles: {ACCEPTED_ROLES}")
    role = ROLE_ALIASES.get(role, role)
    content = message.get("content")
    extra = _tool_fields(message, role, where)
    if content is None and "tool_calls" in extra:  # an assistant turn that only called tools
        return {"role": role, "content": [], **extra}
    if isinstance(content, str):
        return {"role": role, "content": [text_part(content)], **extra}
    if isinstance(content, (list, tuple)):
        return {"role": role, "content": [_convert_part(p, role, where, policy) for p in content], **extra}
    raise ValueError(f"{where} ({role}): 'content' must be a str or a list of parts (or null in an assistant "
                     f"message with tool_calls), got {type(content).__name__}; accepted parts: {PART_TYPES}")


def _tool_fields(message: dict, role: str, where: str) -> dict:
    """What a message carries about tools, checked: an assistant's ``tool_calls`` (OpenAI's shape:
    ``[{"id", "type": "function", "function": {"name", "arguments"}}]``), a tool's ``tool_call_id``
    and ``name``. Chat templates that know tools render them; the others see only the content."""
    out = {}
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise ValueError(f"{where}: tool_calls are only accepted in assistant messages, found in a {role!r} one")
        if not isinstance(calls, (list, tuple)) or len(calls) > MAX_TOOL_CALLS:
            raise ValueError(f"{where}: tool_calls must be a list of at most {MAX_TOOL_CALLS} calls")
        for i, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)
                    and isinstance(fn.get("arguments", ""), (str, dict))):
                raise ValueError(f"{where}: tool_calls[{i}] must be {{'id': str, 'type': 'function', 'function': "
                                 f"{{'name': str, 'arguments': JSON string}}}}")
            check_text(fn["name"], f"{where}: tool_calls[{i}].function.name")
            if isinstance(fn.get("arguments"), str):
                check_text(fn["arguments"], f"{where}: tool_calls[{i}].function.arguments")
        out["tool_calls"] = [dict(c) for c in calls]
    for key in ("tool_call_id", "name"):
        v = message.get(key)
        if v is not None and role == "tool":
            if not isinstance(v, str):
                raise ValueError(f"{where}: {key} must be a string")
            out[key] = check_text(v, f"{where}: {key}")
    return out


def to_conversation(prompt, policy: Optional[MediaPolicy] = None) -> Conversation:
    """Convert one single prompt (see ``split_batch``) to a ``Conversation``; images and videos
    load within ``policy`` (default: any local file, default bounds; see ``seer.vl.sources``)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": [text_part(prompt)]}]
    if isinstance(prompt, tuple) and len(prompt) == 2 and isinstance(prompt[0], str):
        return [{"role": "user", "content": _tuple_to_parts(prompt[0], prompt[1], policy)}]
    if _is_message_list(prompt):
        return [_convert_message(m, i, policy) for i, m in enumerate(prompt)]
    raise ValueError(f"unsupported prompt shape ({_shape(prompt)}); accepted: {PROMPT_SHAPES}")


def images_of(conversation: Conversation) -> list:
    """Every image (PIL image or embedding tensor) in order of appearance."""
    return [p["image"] for m in conversation for p in m["content"] if p["type"] == "image"]


def count_images(conversation: Conversation) -> int:
    return len(images_of(conversation))


def text_of(message: Message) -> str:
    """The concatenated text parts of one message (images dropped)."""
    return "".join(p["text"] for p in message["content"] if p["type"] == "text")


def append_turn(conversation: Conversation, role: str, text: str) -> Conversation:
    """A new conversation with a text turn appended; the input is not modified."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not supported; accepted roles: {ROLES}")
    if not isinstance(text, str):
        raise ValueError(f"turn text must be a str, got {type(text).__name__}")
    return list(conversation) + [{"role": role, "content": [text_part(text)]}]


__all__ = [
    "Conversation", "ROLES", "split_batch", "to_conversation", "count_images", "images_of",
    "text_of", "append_turn", "text_part", "image_part",
]
