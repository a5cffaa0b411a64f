"""Phi-3-vision and Phi-3.5-vision in the published layout (``Phi3VForCausalLM``, model_type
``phi3_v``, as microsoft/Phi-3.5-vision-instruct ships it). The checkpoint's remote code is never
run; this module implements what it describes.

- Decoder: Phi-3 (fused ``qkv_proj`` and ``gate_up_proj``, RMSNorm, SiLU), which is seer's
  Llama-style decoder, the checkpoint's fused tensors read as their parts (so that tensor
  parallelism takes each rank's rows of q, k, v, gate and up). Rope is LongRoPE
  (``rope_scaling`` type ``longrope``/``su``): transformers' own init function gives the short
  and long inverse frequencies and the attention factor ``sqrt(1 + ln(s) / ln(original_max))``
  (``s = max_position_embeddings / original_max_position_embeddings``) that scales cos and sin.
  transformers (and the published code) pick the long factors for a whole forward once its
  highest position reaches ``original_max_position_embeddings``; here the table is per position:
  positions below it turn with the short factors, the others with the long ones. That is the same
  while the prompt fits in ``original_max_position_embeddings`` (decoding past it included); a
  longer prompt gets short-factor angles on its first positions where transformers would use the
  long ones everywhere.
- Vision: a CLIP ViT-L/14-336 (transformers' ``CLIPVisionModel``; the published code hard-codes
  its config, ``img_processor`` only names it). Keys of ``img_processor`` that are
  ``CLIPVisionConfig`` fields (``image_size``, ``patch_size``, ``hidden_size``, ...) override
  that config, which is how small test checkpoints describe their tower.
- The HD transform (Phi3VImageProcessor + Phi3ImageEmbedding): the image, transposed to
  landscape, is resized (bilinear) to ``scale`` crops wide, ``scale`` the largest with
  ``scale * ceil(scale / ratio) <= num_crops``, padded with white above and below to a multiple
  of the crop size, transposed back, normalised with the CLIP mean/std; a global view is the
  normalised image resized (bicubic) to one crop. Every crop and the global view go through CLIP;
  features of layer ``layer_idx`` (-2) without CLS are merged 2x2 (24x24x1024 -> 12x12x4096),
  the crops are laid out as the grid they came from with ``sub_GN`` ending each row, the global
  view likewise, ``glb_GN`` between them (``hd_transform_order`` ``sub_glb``: crops first), and
  ``img_projection`` (Linear-GELU-Linear) maps them to the decoder's width. An image of ``h x w``
  crops fills ``(h*w + 1)*144 + 1 + (h + 1)*12`` tokens (12 = merged side, 144 = its square).
- Prompt: ``<|image_N|>`` marks image N (1-based). Images of a conversation are numbered in order;
  the chat template output is split at them, each text piece tokenized on its own exactly as the
  published processor does (so each piece gets the tokenizer's BOS), and a run of placeholder
  tokens goes between the pieces.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..engine.parallel import SINGLE, TPGroup
from ..engine.request import PromptInputs
from .base import ModelFamily, processor_settings, text_tp_shape
from .llama import LlamaForCausalLM
from .vlm import VisionLanguageModel

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# the tower the published code builds for model_name "openai/clip-vit-large-patch14-336"
CLIP_VIT_L14_336 = dict(hidden_size=1024, image_size=336, intermediate_size=4096, layer_norm_eps=1e-5,
                        num_attention_heads=16, num_channels=3, num_hidden_layers=24, patch_size=14,
                        projection_dim=768, hidden_act="quick_gelu", attention_dropout=0.0, dropout=0.0)
_CLIP_NAME = "openai/clip-vit-large-patch14-336"
_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "original_max_position_embeddings",
              "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor",
              "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "sliding_window")
IMAGE_TAG = re.compile(r"<\|image_\d+\|>")  # the published processor's pattern
_MARK = "\ue000seer-image\ue000"  # where an image part renders; becomes <|image_N|>
_SENTINEL = -1  # the published processor marks image N's run with -N; never reaches the model

_VISION = "model.vision_embed_tokens."


@dataclass
class Phi3VConfig:
    """What seer reads from a ``phi3_v`` config.json."""

    text_config: object  # transformers Phi3Config
    vision_config: object  # transformers CLIPVisionConfig
    image_dim_out: int
    layer_idx: int = -2
    hd_transform_order: str = "sub_glb"
    architectures: list = field(default_factory=lambda: ["Phi3VForCausalLM"])
    model_type: str = "phi3_v"

    @property
    def crop_size(self) -> int:
        return self.vision_config.image_size

    @property
    def merged_side(self) -> int:
        """Side of a crop's feature map after the 2x2 merge (12 for CLIP-L/14 at 336 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size // 2


def phi3v_config(raw: dict) -> Phi3VConfig:
    """The published config.json as transformers' ``Phi3Config`` + ``CLIPVisionConfig``."""
    from transformers import CLIPVisionConfig, Phi3Config

    text = {k: raw[k] for k in _TEXT_KEYS if k in raw}
    scaling = text.pop("rope_scaling", None) or text.pop("rope_parameters", None)
    if scaling:
        # Phi-3-vision names LongRoPE "su", Phi-3.5-vision "longrope"; transformers 5 only reads the latter.
        scaling = dict(scaling)
        kind = scaling.pop("type", None) or scaling.get("rope_type", "default")
        if kind not in ("su", "longrope", "default"):
            raise ValueError(f"rope_scaling type {kind!r} is not supported for Phi-3-vision; supported: longrope (su)")
        scaling["rope_type"] = "longrope" if kind == "su" else kind
        scaling.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
        if scaling["rope_type"] == "longrope":
            scaling.setdefault("original_max_position_embeddings",
                               raw.get("original_max_position_embeddings", raw.get("max_position_embeddings", 4096)))
        text["rope_parameters"] = scaling
    if text.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Phi-3-vision hidden_act={text['hidden_act']!r} is not supported; supported: 'silu'")
    text_config = Phi3Config(**text)
    rope = text_config.rope_parameters or {}
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"partial_rotary_factor={rope['partial_rotary_factor']} is not supported for Phi-3-vision")

    proc = raw.get("img_processor") or {}
    embd = raw.get("embd_layer") or {}
    if not isinstance(proc, dict) or proc.get("name", "clip_vision_model") != "clip_vision_model":
        raise ValueError(f"img_processor={proc!r} is not supported; supported: a 'clip_vision_model'")
    overrides = {k: v for k, v in proc.items() if k in CLIP_VIT_L14_336}
    if proc.get("model_name", _CLIP_NAME) != _CLIP_NAME and not overrides:
        raise ValueError(f"img_processor.model_name={proc.get('model_name')!r} is not supported; supported: "
                         f"{_CLIP_NAME!r} (or a tower described by CLIPVisionConfig keys in img_processor)")
    vision_config = CLIPVisionConfig(**{**CLIP_VIT_L14_336, **overrides})
    image_dim_out = proc.get("image_dim_out", vision_config.hidden_size)
    if image_dim_out != vision_config.hidden_size:
        raise ValueError(f"img_processor.image_dim_out={image_dim_out} differs from the CLIP tower's width "
                         f"{vision_config.hidden_size}")
    side = vision_config.image_size // vision_config.patch_size
    if vision_config.image_size % vision_config.patch_size or side % 2:
        raise ValueError(f"the CLIP tower's {vision_config.image_size}px / {vision_config.patch_size}px patches "
                         f"must give an even number of patches per side for the 2x2 merge")
    if proc.get("type_feature", "patch") != "patch":
        raise ValueError(f"img_processor.type_feature={proc['type_feature']!r} is not supported with the HD "
                         "transform; supported: 'patch'")
    wanted = {"embedding_cls": "image", "projection_cls": "mlp", "use_hd_transform": True,
              "with_learnable_separator": True}
    for key, value in wanted.items():  # the HD transform with the MLP projection (Phi-3-vision, Phi-3.5-vision)
        if embd.get(key) != value:
            raise ValueError(f"embd_layer.{key}={embd.get(key)!r} is not supported; supported: {value!r}")
    order = embd.get("hd_transform_order", "glb_sub")  # the published code's default
    if order not in ("sub_glb", "glb_sub"):
        raise ValueError(f"embd_layer.hd_transform_order={order!r} is not supported; supported: sub_glb, glb_sub")
    return Phi3VConfig(text_config, vision_config, image_dim_out, int(proc.get("layer_idx", -2)), order,
                       list(raw.get("architectures") or ["Phi3VForCausalLM"]))


# ---- image preprocessing (Phi3VImageProcessor) ----------------------------------------------------

def hd_size(width: int, height: int, num_crops: int, crop: int) -> tuple[int, int]:
    """(width, height) of an image after the HD transform: a multiple of ``crop`` on both sides."""
    trans = width < height
    if trans:
        width, height = height, width
    new_w, new_h = _hd_resize(width, height, num_crops, crop)
    padded_h = math.ceil(new_h / crop) * crop
    return (padded_h, new_w) if trans else (new_w, padded_h)


def _hd_resize(width: int, height: int, num_crops: int, crop: int) -> tuple[int, int]:
    """The landscape (width >= height) image's size before padding."""
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * crop)
    return new_w, max(1, int(new_w / ratio))


def hd_transform(image: Image.Image, num_crops: int, crop: int) -> Image.Image:
    """Resize (bilinear, as torchvision's resize of a PIL image) and pad with white to crops."""
    trans = image.width < image.height
    if trans:
        image = image.transpose(Image.TRANSPOSE)
    new_w, new_h = _hd_resize(image.width, image.height, num_crops, crop)
    image = image.resize((new_w, new_h), Image.BILINEAR)
    target = math.ceil(new_h / crop) * crop
    top = (target - new_h) // 2
    padded = Image.new("RGB", (new_w, target), (255, 255, 255))
    padded.paste(image, (0, top))
    return padded.transpose(Image.TRANSPOSE) if trans else padded


def num_image_tokens(crops_h: int, crops_w: int, merged_side: int = 12) -> int:
    """Placeholder tokens of an image cut into ``crops_h x crops_w`` crops."""
    return (crops_h * crops_w + 1) * merged_side ** 2 + 1 + (crops_h + 1) * merged_side


def preprocess(image: Image.Image, num_crops: int, crop: int, mean, std) -> tuple[torch.Tensor, tuple[int, int]]:
    """``([1 + h*w, 3, crop, crop]`` pixels: the global view then the crops row by row, ``(h, w)`` crops)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    hd = hd_transform(image, num_crops, crop)
    x = torch.from_numpy(np.array(hd, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    x = x.sub(mean).div(torch.tensor(std, dtype=torch.float32)[:, None, None])
    glb = F.interpolate(x[None], size=(crop, crop), mode="bicubic")
    h, w = x.shape[1] // crop, x.shape[2] // crop
    crops = x.view(3, h, crop, w, crop).permute(1, 3, 0, 2, 4).reshape(h * w, 3, crop, crop)
    return torch.cat([glb, crops]), (h, w)


# ---- the model ----------------------------------------------------------------------------------

class Phi3ForCausalLM(LlamaForCausalLM):
    """Phi-3's decoder: the Llama-style one with LongRoPE's long factors from
    ``original_max_position_embeddings`` on and its sliding window. The checkpoint's fused
    ``qkv_proj`` and ``gate_up_proj`` are read as their q, k, v and gate, up parts, so that with
    ``tp`` ranks each takes its rows of every part (``LlamaForCausalLM._tp_slice``)."""

    def __init__(self, hf_text_config, max_positions: int, tp: TPGroup = SINGLE):
        super().__init__(hf_text_config, max_positions, tp)
        window = getattr(hf_text_config, "sliding_window", None)
        if window is not None and window < max_positions:
            self.spec.sliding_window = window

    def map_weight(self, name: str, w: torch.Tensor):
        if ".self_attn.qkv_proj." in name:
            s = self.spec
            q, k, v = w.split([s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.num_kv_heads * s.head_dim])
            target = name.removeprefix("model.").replace("self_attn.", "")
            return [(target, "q", q), (target, "k", k), (target, "v", v)]
        if ".mlp.gate_up_proj." in name:
            gate, up = w.chunk(2)
            target = name.removeprefix("model.").replace("mlp.", "")
            return [(target, 0, gate), (target, 1, up)]
        return super().map_weight(name, w)

    def finish_init(self) -> None:
        super().finish_init()  # short factors (transformers' init without a sequence length)
        params = self.hf_text_config.rope_parameters or {}
        if params.get("rope_type") != "longrope":
            return
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        start = params["original_max_position_embeddings"]
        if self.max_positions <= start:
            return
        inv, scaling = ROPE_INIT_FUNCTIONS["longrope"](self.hf_text_config, "cpu", seq_len=start + 1)
        # the rows from ``start`` on, computed as RotaryEmbedding computes its whole table
        freqs = torch.outer(torch.arange(self.max_positions, dtype=torch.float32)[start:], inv.float())
        emb = torch.cat((freqs, freqs), dim=-1)
        device = self.rotary.cos.device
        self.rotary.cos[start:] = (emb.cos() * float(scaling)).to(device)
        self.rotary.sin[start:] = (emb.sin() * float(scaling)).to(device)


class Phi3VForCausalLM(VisionLanguageModel):
    CROPS_PER_FORWARD = 32  # CLIP forwards are split so a batch of many-crop images stays bounded

    def __init__(self, cfg: Phi3VConfig, max_positions: int, tp: TPGroup = SINGLE):
        super().__init__()
        self.cfg = cfg
        self.language_model = Phi3ForCausalLM(cfg.text_config, max_positions, tp)
        dim = cfg.image_dim_out * 4
        hidden = cfg.text_config.hidden_size
        self.glb_GN = nn.Parameter(torch.empty(1, 1, dim))
        self.sub_GN = nn.Parameter(torch.empty(1, 1, 1, dim))
        self.img_projection = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.img_processor = None  # CLIPVisionModel, built in finish_init outside the meta device
        self._vision_state: dict[str, torch.Tensor] = {}
        self._feature_layer = 0

    def load_weights(self, weights) -> None:
        own: dict[str, torch.Tensor] = {}

        def lm_weights():
            for name, w in weights:
                if not name.startswith(_VISION):
                    yield name, w
                    continue
                rest = name[len(_VISION):]
                if rest.startswith("img_processor."):
                    # published names nest the tower under vision_model.; transformers 5's CLIPVisionModel does not
                    self._vision_state[rest[len("img_processor."):].removeprefix("vision_model.")] = w
                elif rest == "wte.weight":  # the decoder's embedding, saved again under the image embedder
                    yield "model.embed_tokens.weight", w
                elif rest in ("glb_GN", "sub_GN") or rest.startswith("img_projection."):
                    own[rest] = w
                else:
                    raise ValueError(f"unexpected tensor {name!r} in a Phi-3-vision checkpoint")

        self.language_model.load_weights(lm_weights())
        expected = {n for n, _ in self.named_parameters() if not n.startswith("language_model.")}
        if set(own) != expected:
            raise ValueError(f"the checkpoint's image embedder does not match the config: missing "
                             f"{sorted(expected - set(own))}, unexpected {sorted(set(own) - expected)}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for n, w in own.items():
                if params[n].shape != w.shape:
                    raise ValueError(f"checkpoint tensor {_VISION + n!r} has shape {tuple(w.shape)}, "
                                     f"expected {tuple(params[n].shape)}")
                params[n].copy_(w)

    def finish_init(self) -> None:
        from transformers import CLIPVisionModel

        self.language_model.finish_init()
        ref = self.language_model.embed_tokens.weight
        tower = CLIPVisionModel(self.cfg.vision_config)
        missing, _ = tower.load_state_dict(self._vision_state, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing:
            raise ValueError(f"the checkpoint's CLIP tower misses weights: {missing[:8]}")
        # Layers after the one whose output is used never run.
        layers = tower.encoder.layers
        n = self.cfg.layer_idx % (len(layers) + 1)  # index into hidden_states (0: the embeddings)
        tower.encoder.layers = layers[:n]
        self._feature_layer = n
        self.img_processor = tower.to(device=ref.device, dtype=ref.dtype).eval()
        self._vision_state = {}

    def crop_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[crops, 3, S, S] -> [crops, side, side, 4C]: CLIP features without CLS, merged 2x2."""
        out = self.img_processor(pixels, output_hidden_states=True, return_dict=True)
        f = out.hidden_states[self._feature_layer][:, 1:]
        n, tokens, c = f.shape
        s = self.cfg.merged_side
        return f.reshape(n, s, 2, s, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, s, s, 4 * c)

    def layout(self, feats: torch.Tensor, crops_h: int, crops_w: int) -> torch.Tensor:
        """[1 + h*w, s, s, 4C] (global view first) -> [tokens, 4C] in the HD transform's order."""
        s, d = self.cfg.merged_side, feats.shape[-1]
        sep = self.sub_GN.to(feats.dtype).reshape(1, 1, d)
        glb = torch.cat([feats[0], sep.expand(s, 1, d)], dim=1).reshape(-1, d)
        sub = feats[1:].reshape(crops_h, crops_w, s, s, d).permute(0, 2, 1, 3, 4).reshape(crops_h * s, crops_w * s, d)
        sub = torch.cat([sub, sep.expand(crops_h * s, 1, d)], dim=1).reshape(-1, d)
        mid = self.glb_GN.to(feats.dtype).reshape(1, d)
        parts = [sub, mid, glb] if self.cfg.hd_transform_order == "sub_glb" else [glb, mid, sub]
        return torch.cat(parts)

    def encode_images(self, images: list) -> list[torch.Tensor]:
        """``images``: ``(pixels [1 + h*w, 3, S, S], (h, w))`` pairs; their crops share CLIP forwards."""
        ref = self.language_model.embed_tokens.weight
        pixels = torch.cat([p for p, _ in images]).to(device=ref.device, dtype=ref.dtype)
        feats = torch.cat([self.crop_features(chunk) for chunk in pixels.split(self.CROPS_PER_FORWARD)])
        out = []
        for f, (_, (h, w)) in zip(feats.split([p.shape[0] for p, _ in images]), images):
            out.append(self.img_projection(self.layout(f, h, w)))
        return out


# ---- the family ---------------------------------------------------------------------------------

class Phi3VFamily(ModelFamily):
    architectures = ("Phi3VForCausalLM",)
    accepts_images = True
    image_placeholder = _MARK

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        proc = processor_settings(self.path, "image_processor") or {}
        self.num_crops = int(proc.get("num_crops", 4))
        self.image_mean = tuple(proc.get("image_mean") or OPENAI_CLIP_MEAN)
        self.image_std = tuple(proc.get("image_std") or OPENAI_CLIP_STD)

    def load_hf_config(self):
        return phi3v_config(self.raw_config)

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        # With a config given, transformers does not read config.json (its phi3_v rope_scaling
        # trips the generic config class); the class comes from tokenizer_config.json.
        try:
            return AutoTokenizer.from_pretrained(self.path, config=self.hf_config.text_config, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"could not load the tokenizer from {self.path!r}: {e}") from e

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return text_tp_shape(phi3v_config(raw).text_config)

    def build_model(self):
        return Phi3VForCausalLM(self.hf_config, self.session_len, self.tp)

    @property
    def image_token_id(self) -> int:
        return _SENTINEL

    def num_image_tokens(self, height: int, width: int) -> int:
        """Placeholder tokens for an image of this size (Phi3VImageProcessor's count)."""
        crop = self.hf_config.crop_size
        w, h = hd_size(width, height, self.num_crops, crop)
        return num_image_tokens(h // crop, w // crop, self.hf_config.merged_side)

    def image_inputs(self, image):
        pixels, (h, w) = preprocess(image, self.num_crops, self.hf_config.crop_size, self.image_mean, self.image_std)
        return num_image_tokens(h, w, self.hf_config.merged_side), (pixels.to(self.dtype), (h, w))

    def encode(self, conversation: list[dict], tools: Optional[list] = None) -> PromptInputs:
        images = [p["image"] for m in conversation for p in m["content"] if p["type"] == "image"]
        if any(p["type"] == "video" for m in conversation for p in m["content"]):
            raise ValueError(f"this model ({type(self).__name__}) does not accept videos")
        text = self.chat_template.render(conversation, _MARK, add_generation_prompt=True, tools=tools)
        if images and IMAGE_TAG.search(text):  # (without images the processor leaves the text alone)
            raise ValueError("the prompt text contains an <|image_N|> tag; pass images as image parts (or mark "
                             "their places with IMAGE_TOKEN) and seer writes the tags")
        adds_bos = getattr(self.chat_template, "adds_bos", False)
        if not images:
            return PromptInputs(self.tokenizer(text, add_special_tokens=not adds_bos)["input_ids"])
        # As the published processor: split at the tags, tokenize every piece on its own.
        ids: list[int] = []
        for i, piece in enumerate(text.split(_MARK)):
            if i:
                ids.append(_SENTINEL)
            ids += self.tokenizer(piece, add_special_tokens=not adds_bos)["input_ids"]
        out = self._expand_images(ids, images)
        out.token_ids = [0 if t == _SENTINEL else t for t in out.token_ids]  # clamped to 0, as published
        return out
