"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``) in transformers layout.

- The decoder is seer's Llama-style one (q/k/v with bias) with M-RoPE: each token has a
  (temporal, height, width) position, and ``mrope_section`` says which of the three turns each
  rotary frequency (``MRotaryEmbedding``).
- The vision tower is transformers' own (``Qwen2VisionTransformerPretrainedModel``, or for 2.5
  ``Qwen2_5_VisionTransformerPretrainedModel`` with its window attention), built from the
  checkpoint's ``vision_config``. It takes the patches of any number of images of any sizes,
  concatenated, with their ``grid_thw``; attention never crosses images, so one forward
  serves a batch of differently sized images.
- Dynamic resolution: transformers' Qwen2-VL image processor resizes each image (aspect ratio
  kept) to sides that are multiples of ``patch * merge`` with ``min_pixels..max_pixels`` pixels
  and cuts it into patches; an image fills ``t * h * w / merge^2`` placeholder tokens
  (``<|image_pad|>``), exactly what transformers' ``Qwen2VLProcessor`` puts in the prompt.
  Bounds: the request's image part (``min_pixels``/``max_pixels`` keys) over ``VisionConfig``
  over the checkpoint's ``preprocessor_config.json``.
- Videos (a list of frames, or a file decoded by ``seer.vl.video``) take the same path: frames
  are resized alike, paired into temporal patches of ``temporal_patch_size`` frames
  (``video_patches``), and fill ``t * h * w / merge^2`` ``<|video_pad|>`` tokens. The chat
  template writes each video as an image; ``_expand`` puts the video's tokens in its place.
- Positions follow transformers' ``get_rope_index``: text tokens count up on all three axes;
  an image's tokens get ``(start, start + row, start + col)`` on its merged grid, a video's
  also ``start + frame * interval`` on the temporal axis (Qwen2.5-VL: ``interval =
  tokens_per_second * temporal_patch_size / fps``; Qwen2-VL: 1), and the text after it resumes
  at ``start + max(h, w) / merge``. Generated tokens get ``index + rope_delta``,
  ``rope_delta = max(prompt positions) + 1 - prompt length``.
- Feature- and prefix-cache keys are content hashes plus the grid, so one image at two
  resolutions never shares features or KV blocks.

Weight names: ``model.language_model.*`` / ``model.visual.*`` (inside transformers 5's model)
and ``model.*`` / ``visual.*`` (the published checkpoints, also what ``save_pretrained``
writes), plus ``lm_head.*``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..engine.parallel import SINGLE, TPGroup
from ..engine.request import MMItem, PromptInputs
from ..vl import image_hash
from ..vl.video import video_hash
from .base import ModelFamily, decoder_tp_shape, load_image_processor, processor_settings
from .vlm import VisionLanguageModel
from .llama import LlamaForCausalLM

_VISION = ("model.visual.", "visual.")
_LM = ("model.language_model.", "model.")


def _strip(name: str, prefixes) -> Optional[str]:
    for p in prefixes:
        if name.startswith(p):
            return name[len(p):]
    return None


def _tower_class(model_type: str):
    if model_type == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        return Qwen2_5_VisionTransformerPretrainedModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    return Qwen2VisionTransformerPretrainedModel


def mrope_positions(num_tokens: int, grids: list[tuple[int, tuple[int, int, int], float]],
                    merge: int) -> tuple[torch.Tensor, int]:
    """M-RoPE positions ``[3, num_tokens]`` and ``rope_delta`` of a prompt, as transformers'
    ``get_rope_index`` computes them.

    ``grids``: per image (or video), in prompt order: ``(offset of its first placeholder,
    (t, h, w) patch grid, time interval)``; the interval spaces temporal positions (1 for images).
    """
    chunks, pos, cursor = [], 0, 0
    for offset, (t, h, w), interval in grids:
        if offset > cursor:
            chunks.append(torch.arange(offset - cursor).expand(3, -1) + pos)
            pos += offset - cursor
        gh, gw = h // merge, w // merge
        tt = (torch.arange(t) * interval).long() + pos
        grid = torch.meshgrid(tt, torch.arange(gh) + pos, torch.arange(gw) + pos, indexing="ij")
        chunks.append(torch.stack(grid).reshape(3, -1))
        pos += max(h, w) // merge
        cursor = offset + t * gh * gw
    if num_tokens > cursor:
        chunks.append(torch.arange(num_tokens - cursor).expand(3, -1) + pos)
    positions = torch.cat(chunks, dim=1)
    return positions, int(positions.max()) + 1 - num_tokens


class Qwen2VLForConditionalGeneration(VisionLanguageModel):
    mrope = True  # the runner passes [3, T] positions

    def __init__(self, hf_config, max_positions: int, tp: TPGroup = SINGLE):
        super().__init__()
        self.hf_config = hf_config
        self.language_model = LlamaForCausalLM(hf_config.text_config, max_positions, tp)
        self.language_model.spec.tie_word_embeddings = bool(
            getattr(hf_config, "tie_word_embeddings", False)
            or getattr(hf_config.text_config, "tie_word_embeddings", False))
        if not self.language_model.mrope_section:
            raise ValueError("the checkpoint's rope parameters name no 'mrope_section'; Qwen2-VL needs one")
        self.merge = hf_config.vision_config.spatial_merge_size
        self.visual = None  # built in finish_init, outside the meta device
        self._vision_state: dict[str, torch.Tensor] = {}

    def load_weights(self, weights) -> None:
        def lm_weights():
            for name, w in weights:
                if (rest := _strip(name, _VISION)) is not None:
                    self._vision_state[rest] = w
                elif (rest := _strip(name, _LM)) is not None:
                    yield "model." + rest, w
                elif name.startswith("lm_head."):
                    yield name, w
                else:
                    raise ValueError(f"unexpected tensor {name!r} in a Qwen2-VL checkpoint")

        self.language_model.load_weights(lm_weights())

    def finish_init(self) -> None:
        self.language_model.finish_init()
        ref = self.language_model.embed_tokens.weight
        cls = _tower_class(self.hf_config.model_type)
        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # pragma: no cover - older transformers
            from transformers.modeling_utils import no_init_weights
        with no_init_weights():  # every weight comes from the checkpoint
            tower = cls._from_config(self.hf_config.vision_config)
        missing, unexpected = tower.load_state_dict(self._vision_state, strict=False)
        if missing or unexpected:
            raise ValueError(f"the checkpoint's vision tower does not match its vision_config: "
                             f"missing {missing[:8]}, unexpected {unexpected[:8]}")
        self.visual = tower.to(device=ref.device, dtype=ref.dtype).eval()
        self._vision_state = {}

    # ---- the runner's interface ------------------------------------------------------------
    def encode_images(self, images: list) -> list[torch.Tensor]:
        """``images``: ``(patches [n, C*T*P*P], (t, h, w))`` pairs, of any sizes; one tower forward
        over all of them. Returns each one's features ``[t*h*w / merge^2, hidden]``."""
        ref = self.language_model.embed_tokens.weight
        pixels = torch.cat([p for p, _ in images]).to(device=ref.device, dtype=ref.dtype)
        grid = torch.tensor([g for _, g in images], dtype=torch.long, device=ref.device)
        feats = self.visual(pixels, grid_thw=grid).pooler_output
        return list(feats.split([t * h * w // self.merge ** 2 for _, (t, h, w) in images]))


class Qwen2VLFamily(ModelFamily):
    architectures = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    accepts_images = True
    accepts_videos = True
    image_placeholder = "<|vision_start|><|image_pad|><|vision_end|>"  # for built-in chat templates

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return decoder_tp_shape(path)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_processor = ip = load_image_processor(self.path)
        self.merge = self.hf_config.vision_config.spatial_merge_size
        if ip.merge_size != self.merge:
            raise ValueError(f"preprocessor_config.json merge_size={ip.merge_size} but the vision tower merges "
                             f"{self.merge}x{self.merge} patches")
        image = (ip.size["shortest_edge"], ip.size["longest_edge"])
        engine = (self.vision_cfg.min_pixels, self.vision_cfg.max_pixels)
        self.default_pixels = {"image": tuple(e or d for e, d in zip(engine, image)),
                               "video": tuple(e or d for e, d in zip(engine, _video_bounds(self.path, image)))}

    def build_model(self):
        return Qwen2VLForConditionalGeneration(self.hf_config, self.session_len, self.tp)

    # ---- conversation -> tokens ------------------------------------------------------------
    def encode(self, conversation: list[dict], tools: Optional[list] = None) -> PromptInputs:
        parts = [p for m in conversation for p in m["content"] if p["type"] in ("image", "video")]
        if not parts:
            return super().encode(conversation, tools)
        # The chat template writes every visual part as an image (<|vision_start|><|image_pad|>
        # <|vision_end|>); the Qwen templates write a video the same way with <|video_pad|>,
        # which ``_expand`` puts in.
        return self._expand(self.prompt_ids(conversation, tools), parts)

    def _expand_images(self, ids: list[int], images: list) -> PromptInputs:
        return self._expand(ids, [{"type": "image", "image": img} for img in images])

    def pixel_bounds(self, part: dict) -> tuple[int, int]:
        """(min_pixels, max_pixels) for one image or video: its part's keys, else VisionConfig's,
        else the checkpoint's processor config."""
        lo, hi = self.default_pixels[part["type"]]
        lo, hi = part.get("min_pixels") or lo, part.get("max_pixels") or hi
        if lo > hi:
            raise ValueError(f"min_pixels={lo} exceeds max_pixels={hi} for this {part['type']}")
        return lo, hi

    def image_inputs(self, image, options: Optional[dict] = None):
        """(placeholder tokens, (patches, (t, h, w))) for one image."""
        lo, hi = self.pixel_bounds({"type": "image", **(options or {})})
        out = self.image_processor(images=[image], size={"shortest_edge": lo, "longest_edge": hi},
                                   return_tensors="pt")
        t, h, w = (int(x) for x in out["image_grid_thw"][0])
        return t * h * w // self.merge ** 2, (out["pixel_values"].to(self.dtype), (t, h, w))

    def video_inputs(self, video, options: Optional[dict] = None):
        """(placeholder tokens, (patches, (t, h, w)), temporal position step) for one video."""
        patches, grid = video_patches(video.frames, self.image_processor,
                                      self.pixel_bounds({"type": "video", **(options or {})}))
        interval = 1.0
        if self.hf_config.model_type == "qwen2_5_vl":  # temporal positions follow time
            # transformers' rule: seconds per temporal patch = temporal_patch_size / fps (24 if unknown).
            seconds = self.image_processor.temporal_patch_size / (video.fps or 24)
            interval = self.hf_config.vision_config.tokens_per_second * seconds
        t, h, w = grid
        return t * h * w // self.merge ** 2, (patches.to(self.dtype), grid), interval

    def _expand(self, ids: list[int], parts: list[dict]) -> PromptInputs:
        """Each image token -> the run of placeholders of its image or video; plus the prompt's
        M-RoPE positions."""
        tok = self.image_token_id
        found = ids.count(tok)
        if found != len(parts):
            raise ValueError(f"the prompt has {found} image placeholder(s) but {len(parts)} image(s) and "
                             f"video(s) were given")
        out: list[int] = []
        items: list[MMItem] = []
        grids = []
        it = iter(parts)
        for t in ids:
            if t != tok:
                out.append(t)
                continue
            part = next(it)
            if part["type"] == "video":
                video = part["video"]
                n, (pixels, grid), interval = self.video_inputs(video, part)
                key, pad = f"video:{video_hash(video)}", self.hf_config.video_token_id
            else:
                img = part["image"]
                if isinstance(img, torch.Tensor):
                    raise ValueError("precomputed image embeddings are not accepted by Qwen2-VL models: M-RoPE "
                                     "needs each image's grid; pass the image itself")
                n, (pixels, grid) = self.image_inputs(img, part)
                key, pad, interval = image_hash(img), tok, 1
            # The grid is part of the key: one image at two resolutions is two different inputs.
            items.append(MMItem(len(out), n, f"{key}:{'x'.join(map(str, grid))}", (pixels, grid)))
            grids.append((len(out), grid, interval))
            out.extend([pad] * n)
        positions, delta = mrope_positions(len(out), grids, self.merge)
        return PromptInputs(out, items, mrope_positions=positions, rope_delta=delta)


def _video_bounds(path: str, image_bounds: tuple[int, int]) -> tuple[int, int]:
    """Default (min_pixels, max_pixels) of videos, found as transformers finds its video processor's:
    video_preprocessor_config.json, else processor_config.json's "video_processor", else the images'."""
    cfg = processor_settings(path, "video_processor") or {}
    size = cfg.get("size") or {}
    lo = cfg.get("min_pixels") or size.get("shortest_edge")
    hi = cfg.get("max_pixels") or size.get("longest_edge")
    return (int(lo), int(hi)) if lo and hi else image_bounds


def video_patches(frames: list, ip, bounds: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Frames -> (patches ``[t*h*w, C*T*P*P]``, grid ``(t, h, w)``), as transformers' Qwen2-VL video
    processor lays them out.

    Every frame is resized (PIL bicubic; transformers uses torchvision's, which may differ by a
    level here and there) to the size ``smart_resize`` picks for the first frame, normalized as
    ``(x - 255 * mean) / (255 * std)`` in fp32, padded with copies of the last frame to a multiple
    of ``temporal_patch_size`` frames, then cut into patches.
    """
    import numpy as np
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    p, m, tp = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    width, height = frames[0].size
    rh, rw = smart_resize(height, width, factor=p * m, min_pixels=bounds[0], max_pixels=bounds[1])
    frames = [f if f.size == (rw, rh) else f.resize((rw, rh), Image.BICUBIC) for f in frames]
    x = torch.from_numpy(np.stack([np.asarray(f.convert("RGB"), dtype=np.uint8) for f in frames]))
    x = x.permute(0, 3, 1, 2).to(torch.float32)
    mean = torch.tensor(ip.image_mean) * (1.0 / ip.rescale_factor)
    std = torch.tensor(ip.image_std) * (1.0 / ip.rescale_factor)
    x = (x - mean[:, None, None]) / std[:, None, None]
    if pad := -x.shape[0] % tp:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    c = x.shape[1]
    gt, gh, gw = x.shape[0] // tp, rh // p, rw // p
    x = x.view(gt, tp, c, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)
