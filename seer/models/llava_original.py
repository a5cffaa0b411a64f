"""LLaVA-1.5 and LLaVA-1.6 in the original LLaVA repository's layout
(``LlavaLlamaForCausalLM`` / ``LlavaMistralForCausalLM``, as liuhaotian/llava-v1.5-7b ships).

Such a folder is a Llama/Mistral checkpoint plus ``mm_*`` config keys and
``model.mm_projector.{0,2}`` (and, for 1.6, ``model.image_newline``) weights; the CLIP
tower is another folder, named by ``mm_vision_tower`` (a hub id). That folder is found,
in order, at ``VisionConfig.vision_tower_path``, at ``mm_vision_tower`` read as a path
(absolute or relative to the model), or in the local Hugging Face cache; it is never
downloaded.

The config is mapped onto transformers' ``LlavaConfig`` (``image_aspect_ratio: pad``)
or ``LlavaNextConfig`` (``anyres``) and the weights onto the names of that layout, so the
model itself is ``llava.py``'s or ``llava_next.py``'s. ``convert_to_transformers`` writes
the same mapping out as a transformers-layout folder.

Two things follow the original repo rather than transformers:
- ``pad``: an image is first padded to a square with the processor's mean colour
  (``expand2square``), as the original LLaVA-1.5 preprocessing does.
- The prompt is split at each ``<image>`` and the pieces tokenized separately (the vocab
  has no image token); the image's placeholder run holds a filler id that only marks
  the positions the image features replace.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Optional

import torch
from PIL import Image

from ..engine.request import PromptInputs
from .base import checkpoint_names, checkpoint_tensors, load_image_processor, text_tp_shape
from .llava import LlavaFamily, LlavaForConditionalGeneration
from .llava_next import LlavaNextFamily, LlavaNextForConditionalGeneration

IMAGE_TEXT = "<image>"
_SENTINEL = -200  # the original repo's IMAGE_TOKEN_INDEX; never reaches the model

# original name -> transformers (5.x) name
_RENAMES = (("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
            ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
            ("model.vision_tower.vision_tower.", "model.vision_tower."),
            ("model.image_newline", "model.image_newline"),
            ("model.", "model.language_model."),
            ("lm_head.", "lm_head."))


def to_transformers_name(name: str) -> str:
    for old, new in _RENAMES:
        if name.startswith(old):
            out = new + name[len(old):]
            return out.replace("model.vision_tower.vision_model.", "model.vision_tower.", 1)
    raise ValueError(f"unexpected tensor {name!r} in an original-layout LLaVA checkpoint")


def tower_tensors(tower: str):
    """The vision half of a CLIP folder (a full CLIPModel or a CLIPVisionModel), named as
    transformers-layout LLaVA names its tower."""
    for name, w in checkpoint_tensors(tower):
        if name.startswith(("text_model.", "text_projection", "visual_projection", "logit_scale")):
            continue
        yield "model.vision_tower." + name.removeprefix("vision_model."), w


def find_vision_tower(model_path: str, raw: dict, override: Optional[str] = None) -> str:
    """The local folder of the CLIP tower the checkpoint names (see the module docstring)."""
    name = raw.get("mm_vision_tower") or raw.get("vision_tower")
    tried = []
    candidates = [override] if override else []
    if name:
        candidates += [name, os.path.join(model_path, name)]
        hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
        snapshots = os.path.join(hub, "models--" + name.replace("/", "--"), "snapshots")
        ref = os.path.join(hub, "models--" + name.replace("/", "--"), "refs", "main")
        if os.path.isfile(ref):
            with open(ref) as f:
                candidates.append(os.path.join(snapshots, f.read().strip()))
        candidates += sorted(glob.glob(os.path.join(snapshots, "*")))
    for c in candidates:
        tried.append(c)
        if c and os.path.isfile(os.path.join(c, "config.json")):
            return c
    raise ValueError(f"the vision tower {name!r} named by this original-layout LLaVA checkpoint was not found "
                     f"locally (looked at: {', '.join(tried) or 'nothing'}); download it to the Hugging Face "
                     "cache, or pass its folder as VisionConfig(vision_tower_path=...)")


def text_config(raw: dict):
    """The decoder's transformers ``LlamaConfig`` / ``MistralConfig``: the original config less its
    ``mm_*`` and training keys."""
    from transformers import LlamaConfig, MistralConfig

    arch = (raw.get("architectures") or ["LlavaLlamaForCausalLM"])[0]
    text_cls = MistralConfig if "Mistral" in arch else LlamaConfig
    skip = {"architectures", "model_type", "transformers_version", "_name_or_path", "image_aspect_ratio",
            "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side", "freeze_mm_mlp_adapter",
            "tune_mm_mlp_adapter", "use_mm_proj", "unfreeze_mm_vision_tower", "mm_vision_tower_lr"}
    return text_cls(**{k: v for k, v in raw.items() if k not in skip and not k.startswith("mm_")})


def transformers_config(model_path: str, raw: dict, tower: str):
    """The transformers ``LlavaConfig`` / ``LlavaNextConfig`` equivalent of an original config."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaNextConfig

    projector = raw.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ValueError(f"mm_projector_type={projector!r} is not supported; supported: 'mlp2x_gelu'")
    merge = raw.get("mm_patch_merge_type", "flat")
    anyres = str(raw.get("image_aspect_ratio", "pad")).startswith("anyres")
    if anyres and merge != "spatial_unpad":
        raise ValueError(f"mm_patch_merge_type={merge!r} with anyres is not supported; supported: 'spatial_unpad'")
    text = text_config(raw)
    vision = CLIPVisionConfig.from_pretrained(tower)
    common = dict(vision_config=vision.to_dict(), text_config=text.to_dict(),
                  vision_feature_layer=raw.get("mm_vision_select_layer", -2),
                  vision_feature_select_strategy="default" if raw.get("mm_vision_select_feature", "patch") == "patch"
                  else "full",
                  projector_hidden_act="gelu", tie_word_embeddings=raw.get("tie_word_embeddings", False),
                  image_token_id=0)
    if anyres:
        return LlavaNextConfig(image_grid_pinpoints=raw["image_grid_pinpoints"], **common)
    return LlavaConfig(**common)


class _OriginalMixin:
    """What the original layout changes in a LLaVA family: config, weights, prompt, padding."""

    def load_hf_config(self):
        override = getattr(self.vision_cfg, "vision_tower_path", None)
        self.tower_path = find_vision_tower(self.path, self.raw_config, override)
        self._tower_in_checkpoint = any(n.startswith("model.vision_tower.") for n in checkpoint_names(self.path))
        return transformers_config(self.path, self.raw_config, self.tower_path)

    def load_image_processor(self):
        proc = load_image_processor(self.tower_path)
        if getattr(self.hf_config, "image_grid_pinpoints", None):
            from transformers import LlavaNextImageProcessorPil

            d = proc.to_dict()
            keep = {k: d[k] for k in ("size", "crop_size", "image_mean", "image_std", "do_convert_rgb") if k in d}
            proc = LlavaNextImageProcessorPil(image_grid_pinpoints=self.hf_config.image_grid_pinpoints, **keep)
        return proc

    @property
    def image_token_id(self) -> int:
        return _SENTINEL

    @property
    def image_placeholder(self) -> str:
        return IMAGE_TEXT + "\n"

    def encode(self, conversation: list[dict], tools: Optional[list] = None) -> PromptInputs:
        images = [p["image"] for m in conversation for p in m["content"] if p["type"] == "image"]
        text = self.chat_template.render(conversation, self.image_placeholder, add_generation_prompt=True, tools=tools)
        adds_bos = getattr(self.chat_template, "adds_bos", False)
        ids: list[int] = []
        for i, piece in enumerate(text.split(IMAGE_TEXT)):
            if i:
                ids.append(_SENTINEL)
            if piece or i == 0:
                ids += self.tokenizer(piece, add_special_tokens=i == 0 and not adds_bos)["input_ids"]
        if not images and _SENTINEL not in ids:
            return PromptInputs(ids)
        out = self._expand_images(ids, images)
        filler = self.tokenizer.unk_token_id if self.tokenizer.unk_token_id is not None else 0
        out.token_ids = [filler if t == _SENTINEL else t for t in out.token_ids]
        return out

    def weights(self):
        for name, w in super().weights():
            yield to_transformers_name(name), w
        if not self._tower_in_checkpoint:
            yield from tower_tensors(self.tower_path)


class LlavaOriginalFamily(_OriginalMixin, LlavaFamily):
    architectures = ("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM")

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return text_tp_shape(text_config(raw))  # config.json is the decoder's, plus mm_* keys

    def build_model(self):
        if getattr(self.hf_config, "image_grid_pinpoints", None):
            return LlavaNextForConditionalGeneration(self.hf_config, self.session_len, self.tp)
        return LlavaForConditionalGeneration(self.hf_config, self.session_len, self.tp)

    def image_inputs(self, image):
        if getattr(self.hf_config, "image_grid_pinpoints", None):
            return LlavaNextFamily.image_inputs(self, image)
        mean = tuple(int(x * 255) for x in self.image_processor.image_mean)
        return super().image_inputs(expand2square(image, mean))

    def num_image_tokens(self, height: int, width: int) -> int:
        return LlavaNextFamily.num_image_tokens(self, height, width)


def expand2square(image: Image.Image, background) -> Image.Image:
    """Pad to a square, the image centred, with ``background`` (the original LLaVA-1.5 rule)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def convert_to_transformers(src: str, dst: str, vision_tower_path: Optional[str] = None) -> str:
    """Write an original-layout LLaVA folder out in transformers layout (config, weights with the
    tower's folded in, tokenizer files). Returns ``dst``."""
    import shutil

    from safetensors.torch import save_file

    from .base import read_config_json

    raw = read_config_json(src)
    tower = find_vision_tower(src, raw, vision_tower_path)
    cfg = transformers_config(src, raw, tower)
    cfg.architectures = ["LlavaNextForConditionalGeneration" if getattr(cfg, "image_grid_pinpoints", None)
                         else "LlavaForConditionalGeneration"]
    from transformers import AutoTokenizer

    os.makedirs(dst, exist_ok=True)
    tensors = {to_transformers_name(n): w.contiguous() for n, w in checkpoint_tensors(src)}
    for n, w in tower_tensors(tower):
        tensors.setdefault(n, w.contiguous())
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copy(os.path.join(src, name), dst)
    # transformers' LLaVA marks image positions with an <image> token; the original vocab has
    # none, so add one (its embedding rows are never used: image features replace them).
    tok = AutoTokenizer.from_pretrained(src)
    image_id = tok.convert_tokens_to_ids(IMAGE_TEXT)
    if image_id is None or image_id == tok.unk_token_id:
        tok.add_tokens([IMAGE_TEXT], special_tokens=True)
        tok.save_pretrained(dst)
        image_id = len(tok) - 1
        for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            w = tensors[key]
            if w.shape[0] <= image_id:
                tensors[key] = torch.cat([w, w.mean(0, keepdim=True).expand(image_id + 1 - w.shape[0], -1)])
        cfg.text_config.vocab_size = tensors["lm_head.weight"].shape[0]
    cfg.image_token_id = image_id
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    return dst
