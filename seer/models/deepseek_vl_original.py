"""DeepSeek-VL in its original layout (``MultiModalityCausalLM``, the deepseek-ai/deepseek-vl-*
checkpoints); their Python code is never run.

config.json has ``vision_config`` / ``aligner_config`` as ``{"cls": ..., "params": {...}}`` and a
Llama ``language_config``:

- 1.3B: ``CLIPVisionTower`` over a timm-style SigLIP (``model_name: siglip_large_patch16_384``)
  and an ``MlpProjector`` of type ``mlp_gelu``, depth 2.
- 7B: ``HybridVisionTower``: ``low_res_cfg`` (SigLIP, 384 px) and ``high_res_cfg`` (SAM-B with two
  downsampling convolutions, ``sam_b_downsample``, 1024 px), and a projector of type
  ``low_high_hybrid_split_mlp_gelu``.

The sizes the published code takes from ``model_name`` are read off the weights' shapes here
(width, depth, MLP width, patch size, SAM's neck channels); only the head counts and SAM's
global-attention layers come from the name. The config and weights map onto transformers'
``DeepseekVLForConditionalGeneration`` / ``DeepseekVLHybridForConditionalGeneration`` layouts
and run on seer's modules for those (``seer.models.deepseek_vl``); ``convert_to_transformers``
writes that conversion out.

Images, as the original ``VLMImageProcessor`` and towers do: resize the long side to
``image_size`` (bicubic; the short side at least ``min_size``), pad to a square with the mean
colour, rescale, normalize when ``do_normalize``. The hybrid then normalizes the 1024 px image
with the SAM tower's mean/std, and resizes it (bilinear, antialiased) to 384 px and normalizes
with the SigLIP tower's for the low-resolution branch. Prompts hold ``<image_placeholder>``
where an image goes (``processor_config.json``'s ``image_tag``); it expands to 576 tokens.
The chat format is the built-in ``deepseek-vl`` template unless the tokenizer ships one.
"""

from __future__ import annotations

import json
import os
import re
import torch

from .base import checkpoint_shapes, checkpoint_tensors, read_config_json, text_tp_shape
from .deepseek_vl import DeepseekVLFamily, DeepseekVLForConditionalGeneration

IMAGE_TAG = "<image_placeholder>"
# what the published code fixes per model_name and the weights do not say
SIGLIP_HEADS = {"siglip_large_patch16_384": 16, "siglip_so400m_patch14_384": 16, "siglip_so400m_patch14_224": 16}
SAM_MODELS = {"sam_b_downsample": {"heads": 12, "global_attn_indexes": [2, 5, 8, 11]}}
SAM_WINDOW = 14
_LOW_ORIG = "vision_model.vision_tower_low.vision_tower."
_HIGH_ORIG = "vision_model.vision_tower_high.vision_tower."
_SINGLE_ORIG = "vision_model.vision_tower."
_SIGLIP_HF = "model.vision_model."
_SAM_HF = "model.high_res_vision_model.vision_encoder."
_NECK = ("conv1", "layer_norm1", "conv2", "layer_norm2")  # nn.Sequential indices 0..3 of the original necks


def _is_hybrid(raw: dict) -> bool:
    return (raw.get("vision_config") or {}).get("cls") == "HybridVisionTower"


def _blocks(shapes: dict, prefix: str) -> int:
    found = {int(m.group(1)) for n in shapes if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", n))}
    return max(found) + 1 if found else 0


def _need(shapes: dict, name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise ValueError(f"the checkpoint has no tensor {name!r}, which DeepSeek-VL's original layout needs")
    return shapes[name]


def _siglip_config(params: dict, shapes: dict, prefix: str):
    from transformers import SiglipVisionConfig

    name = params.get("model_name", "")
    if name not in SIGLIP_HEADS:
        raise ValueError(f"vision tower {name!r} is not supported; supported: {', '.join(sorted(SIGLIP_HEADS))}")
    width = _need(shapes, prefix + "pos_embed")[-1]
    patch = _need(shapes, prefix + "patch_embed.proj.weight")[-1]
    size = int(params.get("image_size", 384))
    positions = shapes[prefix + "pos_embed"][1]
    if (size // patch) ** 2 != positions:
        raise ValueError(f"vision tower {name!r}: image_size {size} with patch {patch} gives {(size // patch) ** 2} "
                         f"positions, the weights have {positions}")
    return SiglipVisionConfig(hidden_size=width, intermediate_size=_need(shapes, prefix + "blocks.0.mlp.fc1.weight")[0],
                              num_hidden_layers=_blocks(shapes, prefix), num_attention_heads=SIGLIP_HEADS[name],
                              image_size=size, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6,
                              vision_use_head=False)


def _sam_config(params: dict, shapes: dict, prefix: str):
    from transformers import SamVisionConfig

    name = params.get("model_name", "")
    if name not in SAM_MODELS:
        raise ValueError(f"high-resolution tower {name!r} is not supported; supported: {', '.join(sorted(SAM_MODELS))}")
    out = _need(shapes, prefix + "neck.0.weight")[0]
    down = (_need(shapes, prefix + "downsamples.0.weight")[0], _need(shapes, prefix + "downsamples.1.weight")[0])
    if down != (2 * out, 4 * out):
        raise ValueError(f"SAM downsampling channels {down} for a {out}-channel neck are not supported; "
                         f"supported: ({2 * out}, {4 * out})")
    return SamVisionConfig(hidden_size=_need(shapes, prefix + "pos_embed")[-1],
                           num_hidden_layers=_blocks(shapes, prefix), num_attention_heads=SAM_MODELS[name]["heads"],
                           mlp_dim=_need(shapes, prefix + "blocks.0.mlp.lin1.weight")[0],
                           image_size=int(params.get("image_size", 1024)),
                           patch_size=_need(shapes, prefix + "patch_embed.proj.weight")[-1], window_size=SAM_WINDOW,
                           global_attn_indexes=list(SAM_MODELS[name]["global_attn_indexes"]), output_channels=out,
                           use_rel_pos=True, use_abs_pos=True, layer_norm_eps=1e-6, qkv_bias=True)


def language_config(raw: dict):
    """The decoder's ``LlamaConfig``: config.json's ``language_config``."""
    from transformers import LlamaConfig

    return LlamaConfig(**{k: v for k, v in (raw.get("language_config") or {}).items() if k != "architectures"})


def transformers_config(raw: dict, shapes: dict, image_token_id: int = 0):
    """The transformers config (DeepseekVL or DeepseekVLHybrid) of an original config.json."""
    from transformers import DeepseekVLConfig, DeepseekVLHybridConfig

    vision, aligner = raw.get("vision_config") or {}, raw.get("aligner_config") or {}
    params, a_params = vision.get("params") or {}, aligner.get("params") or {}
    text = language_config(raw)
    tied = bool(raw.get("tie_word_embeddings", getattr(text, "tie_word_embeddings", False)))
    want = "low_high_hybrid_split_mlp_gelu" if _is_hybrid(raw) else "mlp_gelu"
    if a_params.get("projector_type") != want or int(a_params.get("depth", 1)) != 2:
        raise ValueError(f"aligner {a_params.get('projector_type')!r} of depth {a_params.get('depth')} is not "
                         f"supported with {vision.get('cls')!r}; supported: {want!r} of depth 2")
    if vision.get("cls") == "CLIPVisionTower":
        return DeepseekVLConfig(text_config=text.to_dict(), image_token_id=image_token_id, tie_word_embeddings=tied,
                                vision_config=_siglip_config(params, shapes, _SINGLE_ORIG).to_dict())
    if _is_hybrid(raw):
        low = _siglip_config(params.get("low_res_cfg") or {}, shapes, _LOW_ORIG)
        if low.image_size // low.patch_size != 24:
            raise ValueError("the hybrid tower's original code resizes SAM's features to 96x96, which needs a 24x24 "
                             f"SigLIP grid; this one is {low.image_size // low.patch_size}x{low.image_size // low.patch_size}")
        high = _sam_config(params.get("high_res_cfg") or {}, shapes, _HIGH_ORIG)
        return DeepseekVLHybridConfig(text_config=text.to_dict(), vision_config=low.to_dict(),
                                      high_res_vision_config=high.to_dict(), image_token_id=image_token_id,
                                      tie_word_embeddings=tied)
    raise ValueError(f"vision tower class {vision.get('cls')!r} is not supported; supported: 'CLIPVisionTower', "
                     "'HybridVisionTower'")


def _siglip_name(rest: str, w: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """timm SigLIP names -> transformers' (``rest`` follows the tower prefix)."""
    if rest == "pos_embed":
        return [("embeddings.position_embedding.weight", w[0])]
    if rest.startswith("patch_embed.proj."):
        return [("embeddings.patch_embedding." + rest.split(".")[-1], w)]
    if rest.startswith("norm."):
        return [("post_layernorm." + rest.split(".")[-1], w)]
    if rest.startswith(("attn_pool.", "head.", "fc_norm.")):
        return []  # the pooling head: the original code never runs it
    m = re.match(r"blocks\.(\d+)\.(.+)$", rest)
    if m is None:
        raise ValueError(f"unexpected SigLIP tensor {rest!r}")
    layer, sub = f"encoder.layers.{m.group(1)}.", m.group(2)
    if sub.startswith("attn.qkv."):
        kind = sub.split(".")[-1]
        return [(f"{layer}self_attn.{p}_proj.{kind}", t) for p, t in zip("qkv", w.chunk(3, dim=0))]
    table = {"norm1.": "layer_norm1.", "norm2.": "layer_norm2.", "attn.proj.": "self_attn.out_proj.", "mlp.": "mlp."}
    for old, new in table.items():
        if sub.startswith(old):
            return [(layer + new + sub[len(old):], w)]
    raise ValueError(f"unexpected SigLIP tensor {rest!r}")


def _neck(rest: str) -> str:
    index, kind = rest.split(".")
    return f"{_NECK[int(index)]}.{kind}"


def _sam_name(rest: str, w: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The original SAM encoder's names -> transformers' (full names)."""
    if rest == "pos_embed":
        return [(_SAM_HF + "pos_embed", w)]
    if rest.startswith("patch_embed.proj."):
        return [(_SAM_HF + "patch_embed.projection." + rest.split(".")[-1], w)]
    if rest.startswith("neck."):
        return [(_SAM_HF + "neck." + _neck(rest[len("neck."):]), w)]
    if rest.startswith("neck_hd."):
        return [("model.high_res_vision_neck." + _neck(rest[len("neck_hd."):]), w)]
    if rest.startswith("downsamples."):
        index, kind = rest[len("downsamples."):].split(".")
        return [(f"model.high_res_vision_proj.conv{int(index) + 1}.{kind}", w)]
    if rest == "hd_alpha_downsamples":
        return [("model.high_res_vision_alpha", w)]
    m = re.match(r"blocks\.(\d+)\.(norm1|norm2|attn|mlp)\.(.+)$", rest)
    if m is None:
        raise ValueError(f"unexpected SAM tensor {rest!r}")
    part = {"norm1": "layer_norm1", "norm2": "layer_norm2"}.get(m.group(2), m.group(2))
    return [(f"{_SAM_HF}layers.{m.group(1)}.{part}.{m.group(3)}", w)]


_ALIGNER = {False: {"layers.0.": "linear1.", "layers.2.": "linear2."},  # mlp_gelu: Linear, GELU, Linear
            True: {"high_up_proj.": "high_res_vision_proj.", "low_up_proj.": "vision_proj.",
                   "layers.1.": "proj."}}  # the hybrid's: two up-projections, then GELU, Linear


def to_transformers(name: str, w: torch.Tensor, hybrid: bool) -> list[tuple[str, torch.Tensor]]:
    """One original tensor -> its transformers-layout name(s) and tensor(s) (none if unused)."""
    if name.startswith("language_model.model."):
        return [("model.language_model." + name[len("language_model.model."):], w)]
    if name.startswith("language_model.lm_head."):
        return [("lm_head." + name[len("language_model.lm_head."):], w)]
    if name.startswith("aligner."):
        rest = name[len("aligner."):]
        for old, new in _ALIGNER[hybrid].items():
            if rest.startswith(old):
                return [("model.aligner." + new + rest[len(old):], w)]
    for prefix in ((_LOW_ORIG, _HIGH_ORIG) if hybrid else (_SINGLE_ORIG,)):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if prefix == _HIGH_ORIG:
                return _sam_name(rest, w)
            return [(_SIGLIP_HF + n, t) for n, t in _siglip_name(rest, w)]
    if hybrid and name.startswith(("vision_model.high_layer_norm.", "vision_model.low_layer_norm.")):
        return []  # built by HybridVisionTower but not used in its forward
    raise ValueError(f"unexpected tensor {name!r} in a DeepSeek-VL checkpoint (MultiModalityCausalLM)")


def _processor_config(path: str) -> dict:
    file = os.path.join(path, "processor_config.json")
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        return json.load(f)


def _image_token_id(tokenizer, path: str) -> int:
    tag = _processor_config(path).get("image_tag", IMAGE_TAG)
    tid = tokenizer.convert_tokens_to_ids(tag)
    if not isinstance(tid, int) or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {tag!r} token, which DeepSeek-VL's prompts use for images")
    return tid


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    from .internvl import _quiet_config_warning

    with _quiet_config_warning():  # AutoTokenizer reads config.json: multi_modality is no transformers type
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


# ---- images ----------------------------------------------------------------------------------
class OriginalImageProcessor:
    """The original ``VLMImageProcessor`` and the towers' own normalization (see the module docstring)."""

    def __init__(self, path: str, raw: dict):
        file = os.path.join(path, "preprocessor_config.json")
        if not os.path.isfile(file):
            raise ValueError(f"model folder {path!r} has no preprocessor_config.json (DeepSeek-VL's VLMImageProcessor "
                             "settings: image_size, image_mean, image_std, ...)")
        with open(file) as f:
            c = json.load(f)
        self.size = int(c["image_size"])
        self.min_size = int(c.get("min_size", 14))
        mean = c.get("image_mean")
        self.background = (127, 127, 127) if mean is None else tuple(int(x * 255) for x in mean)
        self.rescale = float(c.get("rescale_factor", 1 / 255))
        self.norm = (mean, c.get("image_std")) if c.get("do_normalize", True) and mean is not None else None
        params = raw["vision_config"].get("params") or {}
        self.hybrid = _is_hybrid(raw)
        towers = (params.get("high_res_cfg") or {}, params.get("low_res_cfg") or {}) if self.hybrid else (params,)
        self.tower_norms = [(t["pixel_mean"], t["pixel_std"]) if t.get("pixel_mean") and t.get("pixel_std") else None
                            for t in towers]
        self.low_size = int(towers[-1].get("image_size", 384))

    @staticmethod
    def _normalize(x: torch.Tensor, norm) -> torch.Tensor:
        if norm is None:
            return x
        mean, std = (torch.tensor(v, dtype=x.dtype)[:, None, None] for v in norm)
        return (x - mean) / std

    def __call__(self, image):
        import numpy as np
        from PIL import Image

        image = image.convert("RGB")
        w, h = image.size
        longest = max(w, h)
        nw, nh = max(int(w / longest * self.size), self.min_size), max(int(h / longest * self.size), self.min_size)
        image = image.resize((nw, nh), Image.BICUBIC)
        if nw != nh:
            side = max(nw, nh)
            square = Image.new("RGB", (side, side), self.background)
            square.paste(image, ((side - nw) // 2, (side - nh) // 2))
            image = square
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy()) * self.rescale
        x = self._normalize(x, self.norm)
        if not self.hybrid:
            return self._normalize(x, self.tower_norms[0])
        low = torch.nn.functional.interpolate(x[None], size=(self.low_size, self.low_size), mode="bilinear",
                                              align_corners=False, antialias=True)[0]
        return self._normalize(low, self.tower_norms[1]), self._normalize(x, self.tower_norms[0])


class DeepseekVLOriginalFamily(DeepseekVLFamily):
    """``MultiModalityCausalLM``: the original layout on the transformers-layout modules."""

    architectures = ("MultiModalityCausalLM",)

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return text_tp_shape(language_config(raw))

    def load_hf_config(self):
        return transformers_config(self.raw_config, checkpoint_shapes(self.path))

    def load_tokenizer(self):
        try:
            return _load_tokenizer(self.path)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"could not load the tokenizer from {self.path!r}: {e}") from e

    def load_image_processor(self):
        return OriginalImageProcessor(self.path, self.raw_config)

    def image_tokens(self) -> int:
        n = super().image_tokens()
        declared = _processor_config(self.path).get("num_image_tokens")
        if declared is not None and int(declared) != n:
            raise ValueError(f"processor_config.json says num_image_tokens={declared}, but the vision tower gives {n}")
        return n

    @property
    def image_token_id(self) -> int:
        return _image_token_id(self.tokenizer, self.path)

    @property
    def image_placeholder(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.image_token_id)

    def weights(self):
        hybrid = _is_hybrid(self.raw_config)
        for name, w in checkpoint_tensors(self.path):
            yield from to_transformers(name, w, hybrid)

    def build_model(self):
        self.hf_config.image_token_id = self.image_token_id
        return DeepseekVLForConditionalGeneration(self.hf_config, self.session_len, self.tp)

    def image_inputs(self, image):
        pixels = self.image_processor(image)
        if isinstance(pixels, tuple):
            return self.tokens_per_image, tuple(p.to(self.dtype) for p in pixels)
        return self.tokens_per_image, pixels


def convert_to_transformers(src: str, dst: str) -> str:
    """Write an original-layout DeepSeek-VL folder out in transformers layout (config, weights under
    transformers 5's names, tokenizer files with the chat template seer uses). Returns ``dst``.
    Images: transformers' DeepSeek-VL processors are not written (their hybrid low-resolution
    resize differs in detail); feed the conversion the pixels seer's ``image_inputs`` makes."""
    import shutil

    from safetensors.torch import save_file

    raw = read_config_json(src)
    hybrid = _is_hybrid(raw)
    cfg = transformers_config(raw, checkpoint_shapes(src), _image_token_id(_load_tokenizer(src), src))
    cfg.architectures = ["DeepseekVLHybridForConditionalGeneration" if hybrid else "DeepseekVLForConditionalGeneration"]
    tensors = {}
    for name, w in checkpoint_tensors(src):
        for new, t in to_transformers(name, w, hybrid):
            tensors[new] = t.contiguous()
    os.makedirs(dst, exist_ok=True)
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens", "generation_config", "added_tokens")):
            shutil.copy(os.path.join(src, name), dst)
    return dst
