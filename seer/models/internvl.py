"""InternVL 1.5 / 2 / 2.5 / 3: an InternViT tower, pixel shuffle, an MLP projector and a Qwen2,
InternLM2 or Llama decoder. Two layouts:

- transformers (``InternVLForConditionalGeneration``, as OpenGVLab/InternVL3-1B-hf): the names
  transformers 5.23's ``save_pretrained`` writes (``language_model.model.*``,
  ``language_model.lm_head.*``, ``vision_tower.*``, ``multi_modal_projector.*``) or the names inside
  its model (``model.language_model.*``, ``model.vision_tower.*``, ``model.multi_modal_projector.*``,
  ``lm_head.*``).
- the original OpenGVLab repo (``InternVLChatModel``, as OpenGVLab/InternVL2_5-8B): a flat config
  with ``llm_config`` (``InternLM2ForCausalLM``, ``Qwen2ForCausalLM`` or ``LlamaForCausalLM``),
  ``vision_config`` (InternViT: ``qkv_bias``, ``qk_normalization``, ``norm_type``...),
  ``downsample_ratio``, ``select_layer``, ``ps_version``, ``template``, ``max_dynamic_patch``,
  ``min_dynamic_patch``, ``use_thumbnail``, ``force_image_size``; weights ``vision_model.*`` (fused
  ``attn.qkv``, layer scales ``ls1``/``ls2``), ``mlp1.{0,1,3}.*`` and ``language_model.*`` in the
  LM's own layout (InternLM2's packed ``wqkv``...). The checkpoint's Python code is never run: the
  config is mapped onto transformers' ``InternVLConfig`` and every tensor onto its transformers
  name (``transformers_config``, ``to_transformers``); ``convert_to_transformers`` writes that
  mapping out as a transformers-layout folder.

The model (both layouts): seer's decoder; transformers' ``InternVLVisionModel`` as the tower (it is
InternViT: q/k/v, optional qk RMS-norm over all heads, layer scales, layer or RMS norm); features of
layer ``vision_feature_layer`` / ``select_layer``, CLS dropped, ``pixel_shuffle`` (as the original:
``v2``, or the transposed ``v1`` of InternVL 1.5-era checkpoints) to ``(1 / downsample_ratio)^2``
times the channels, then LayerNorm -> Linear -> GELU -> Linear.

Images are cut into tiles (``dynamic_preprocess``, the published InternVL rule): the grid of 1 to
``max_dynamic_patch`` tiles whose aspect ratio is closest to the image's (ties go to more tiles
while the image is larger than half of them), the image resized onto it (bicubic) and cut, plus a
thumbnail of the whole image when there is more than one tile; ImageNet mean/std. Each tile gives
``(tile / patch)^2 * downsample_ratio^2`` features (256 for 448 px tiles of 14 px patches), and an
image fills ``<img>`` + ``<IMG_CONTEXT>`` * (that * tiles) + ``</img>`` in the prompt. The
transformers layout tiles with transformers' own image processor (``GotOcr2ImageProcessorPil``,
``crop_to_patches`` as ``InternVLProcessor`` turns it on); the original layout with this file's
``dynamic_preprocess``, which gives the same pixels.

Prompt: the chat template writes each image as ``<IMG_CONTEXT>`` (the -hf chat template writes
``<IMG_CONTEXT>\\n`` per image; built-in templates put the image placeholder, followed by a newline
when images lead the turn, as the original ``chat`` writes ``<image>\\n``); ``_expand_images`` turns
each into the image's ``<img>...</img>`` run. The original layout follows the conversation template
its ``template`` names (``internvl2_5``, ``internlm2-chat``, ``Hermes-2``; ``phi3-chat`` too, though
seer has no Phi-3 decoder), not the tokenizer's; a ``ChatTemplateConfig`` still overrides it.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Optional

import torch
from torch import nn

from ..chat_template import ChatTemplate, get_builtin
from ..engine.request import MMItem, PromptInputs
from ..vl import image_hash
from ..engine.parallel import SINGLE, TPGroup
from .base import (ModelFamily, _tensor_hash, checkpoint_names, checkpoint_tensors, decoder_tp_shape,
                   load_image_processor, read_config_json, text_tp_shape)
from .llama import LlamaForCausalLM, internlm2_to_llama_config
from .vlm import VisionLanguageModel

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Image tiling (the published InternVL preprocessing)
# --------------------------------------------------------------------------------------------

def target_ratios(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """Tile grids (columns, rows) with ``min_num..max_num`` tiles, fewest tiles first, in the
    order the published code builds them (a sorted set: ties keep the set's iteration order)."""
    ratios = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                 if min_num <= i * j <= max_num)
    return sorted(ratios, key=lambda x: x[0] * x[1])


def find_closest_aspect_ratio(aspect_ratio: float, ratios, width: int, height: int, tile: int) -> tuple[int, int]:
    best_diff, best = float("inf"), (1, 1)
    area = width * height
    for ratio in ratios:
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * tile * tile * ratio[0] * ratio[1]:
            best = ratio
    return best


def tile_grid(width: int, height: int, tile: int, min_num: int, max_num: int) -> tuple[int, int]:
    """(columns, rows) of tiles for an image of this size."""
    return find_closest_aspect_ratio(width / height, target_ratios(min_num, max_num), width, height, tile)


def num_tiles(width: int, height: int, tile: int, min_num: int, max_num: int, use_thumbnail: bool) -> int:
    cols, rows = tile_grid(width, height, tile, min_num, max_num)
    return cols * rows + (1 if use_thumbnail and cols * rows != 1 else 0)


def dynamic_preprocess(image, tile: int = 448, min_num: int = 1, max_num: int = 12, use_thumbnail: bool = True):
    """The image cut into tiles (PIL images of ``tile x tile``): InternVL's ``dynamic_preprocess``."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    cols, rows = tile_grid(width, height, tile, min_num, max_num)
    resized = image.resize((tile * cols, tile * rows), Image.BICUBIC)
    tiles = [resized.crop(((i % cols) * tile, (i // cols) * tile, (i % cols + 1) * tile, (i // cols + 1) * tile))
             for i in range(cols * rows)]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((tile, tile), Image.BICUBIC))
    return tiles


def tiles_to_pixels(tiles, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """PIL tiles -> ``[n, 3, S, S]`` float32: ``ToTensor`` (``/ 255``) then ``Normalize(mean, std)``."""
    import numpy as np

    x = torch.from_numpy(np.stack([np.asarray(t.convert("RGB"), dtype=np.uint8) for t in tiles]))
    x = x.permute(0, 3, 1, 2).to(torch.float32).div(255)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


def pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5, version: str = "v2") -> torch.Tensor:
    """InternVL's ``pixel_shuffle``: ``[n, w, h, c] -> [n, w*s, h*s, c/s^2]``; ``v1`` leaves the
    result transposed (as the InternVL 1.5-era checkpoints were trained)."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    if version != "v1":
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class InternVLProjector(nn.Module):
    """``mlp1`` / ``multi_modal_projector``: LayerNorm -> Linear -> GELU -> Linear."""

    def __init__(self, c):
        super().__init__()
        from transformers.activations import ACT2FN

        dim = c.vision_config.hidden_size * int(1 / c.downsample_ratio) ** 2
        hidden = c.text_config.hidden_size
        self.layer_norm = nn.LayerNorm(dim)
        self.linear_1 = nn.Linear(dim, hidden)
        self.act = ACT2FN[getattr(c, "projector_hidden_act", "gelu")]
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))


_VISION = "model.vision_tower."
_PROJECTOR = "model.multi_modal_projector."
_LM = "model.language_model."


class InternVLForConditionalGeneration(VisionLanguageModel):
    """Takes tensors under transformers 5's in-model names (``model.vision_tower.*``,
    ``model.multi_modal_projector.*``, ``model.language_model.*``, ``lm_head.*``)."""

    def __init__(self, hf_config, max_positions: int, tie_word_embeddings: bool = False, ps_version: str = "v2",
                 qk_norm_eps: Optional[float] = None, tp: TPGroup = SINGLE):
        super().__init__()
        self.hf_config = hf_config
        if getattr(hf_config, "vision_feature_select_strategy", "default") != "default":
            raise ValueError("vision_feature_select_strategy must be 'default' (the CLS token dropped) for InternVL")
        self.language_model = LlamaForCausalLM(hf_config.text_config, max_positions, tp)
        self.language_model.spec.tie_word_embeddings = tie_word_embeddings
        self.multi_modal_projector = InternVLProjector(hf_config)
        self.ps_version = ps_version
        self.qk_norm_eps = qk_norm_eps
        layer = hf_config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError(f"vision_feature_layer={layer!r}: InternVL takes one layer")
        self.feature_layer = layer
        self.vision_tower = None  # built in finish_init, outside the meta device
        self._vision_state: dict[str, torch.Tensor] = {}

    def load_weights(self, weights) -> None:
        projector = {}

        def lm_weights():
            for name, w in weights:
                if name.startswith(_VISION):
                    self._vision_state[name[len(_VISION):]] = w
                elif name.startswith(_PROJECTOR):
                    projector[name[len(_PROJECTOR):]] = w
                elif name.startswith(_LM):
                    yield "model." + name[len(_LM):], w
                elif name.startswith("lm_head."):
                    yield name, w
                else:
                    raise ValueError(f"unexpected tensor {name!r} in an InternVL checkpoint")

        self.language_model.load_weights(lm_weights())
        try:
            self.multi_modal_projector.load_state_dict(projector, strict=True)
        except RuntimeError as e:
            raise ValueError(f"the checkpoint's projector does not match the config: {e}") from e

    def finish_init(self) -> None:
        from transformers import InternVLVisionModel

        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # pragma: no cover - older transformers
            from transformers.modeling_utils import no_init_weights
        self.language_model.finish_init()
        ref = self.language_model.embed_tokens.weight
        with no_init_weights():  # every weight comes from the checkpoint
            tower = InternVLVisionModel._from_config(self.hf_config.vision_config)
        missing, unexpected = tower.load_state_dict(self._vision_state, strict=False)
        if missing or unexpected:
            raise ValueError(f"the checkpoint's vision tower does not match its vision_config: "
                             f"missing {missing[:8]}, unexpected {unexpected[:8]}")
        if self.qk_norm_eps is not None:  # the original InternViT's qk-norm uses layer_norm_eps
            for m in tower.modules():
                if type(m).__name__ == "InternVLVisionRMSNorm":
                    m.variance_epsilon = self.qk_norm_eps
        self.vision_tower = tower.to(device=ref.device, dtype=ref.dtype).eval()
        self._vision_state = {}

    def encode_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """``images``: each image's tiles ``[tiles, 3, S, S]``; all tiles go through the tower in one
        forward. Returns each image's features ``[tiles * tokens_per_tile, hidden]``."""
        ref = self.language_model.embed_tokens.weight
        tiles = torch.cat(images).to(device=ref.device, dtype=ref.dtype)
        feats = self.image_features(tiles)
        return [f.reshape(-1, f.shape[-1]) for f in feats.split([t.shape[0] for t in images])]

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[tiles, 3, S, S]`` -> ``[tiles, tokens_per_tile, hidden]``."""
        if self.feature_layer == -1:
            h = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        else:
            out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
            h = out.hidden_states[self.feature_layer]
        h = h[:, 1:]
        side = int(h.shape[1] ** 0.5)
        h = h.reshape(h.shape[0], side, side, -1)
        h = pixel_shuffle(h, self.hf_config.downsample_ratio, self.ps_version)
        return self.multi_modal_projector(h.reshape(h.shape[0], -1, h.shape[-1]))


# --------------------------------------------------------------------------------------------
# The transformers layout
# --------------------------------------------------------------------------------------------

# Names 5.x's save_pretrained writes (the 4.x layout) -> names inside transformers 5's model.
_SAVED = (("language_model.model.", _LM), ("language_model.lm_head.", "lm_head."),
          ("vision_tower.", _VISION), ("multi_modal_projector.", _PROJECTOR))


def internal_name(name: str) -> str:
    for old, new in _SAVED:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _has_lm_head(names) -> bool:
    return any(n.startswith(("lm_head.", "language_model.lm_head.", "language_model.output.")) for n in names)


class InternVLFamily(ModelFamily):
    """``InternVLForConditionalGeneration`` (transformers layout)."""

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return decoder_tp_shape(path)

    architectures = ("InternVLForConditionalGeneration",)
    accepts_images = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tile_size = self.setup_images()
        patch = self.hf_config.vision_config.patch_size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        # The published formula (the processors' image_seq_length): 256 for 448 px tiles, 14 px patches.
        self.tokens_per_tile = int((self.tile_size // patch) ** 2 * (self.hf_config.downsample_ratio ** 2))
        self.img_start_id = self._token_id(getattr(self.tokenizer, "start_image_token", None) or IMG_START)
        self.img_end_id = self._token_id(getattr(self.tokenizer, "end_image_token", None) or IMG_END)

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token!r} token, which InternVL prompts need")
        return tid

    def setup_images(self) -> int:
        """Load what tiles images; returns the tile side."""
        self.image_processor = load_image_processor(self.path)
        size = self.image_processor.size
        if not size.height or size.height != size.width:
            raise ValueError(f"preprocessor_config.json size {size.height}x{size.width} is not a square tile")
        self.default_max_tiles = int(self.image_processor.max_patches)
        return size.height

    def num_tiles(self, width: int, height: int, max_tiles: Optional[int] = None) -> int:
        return self.image_processor.get_number_of_image_patches(
            height, width, {"crop_to_patches": True, "max_patches": self.max_tiles_for(max_tiles)})

    @property
    def image_placeholder(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.image_token_id)

    def build_model(self):
        # transformers 5 ties the LM head to the embeddings unless the checkpoint has its own
        # (it keeps both when they differ); a checkpoint without one is tied.
        tie = not _has_lm_head(checkpoint_names(self.path))
        return InternVLForConditionalGeneration(self.hf_config, self.session_len, tie_word_embeddings=tie,
                                                **self.model_options(), tp=self.tp)

    def model_options(self) -> dict:
        return {}

    def weights(self):
        for name, w in super().weights():
            yield internal_name(name), w

    # ---- images --------------------------------------------------------------------------------
    def max_tiles_for(self, part_max: Optional[int] = None) -> int:
        """Tiles an image may take: its part's ``max_dynamic_patch``, else VisionConfig's, else the
        checkpoint's."""
        return part_max or self.vision_cfg.max_dynamic_patch or self.default_max_tiles

    def tiles(self, image, max_tiles: int) -> torch.Tensor:
        """The image's tiles ``[n, 3, S, S]`` (float32), thumbnail last."""
        out = self.image_processor(images=[image], crop_to_patches=True, max_patches=max_tiles,
                                   return_tensors="pt")
        return out["pixel_values"]

    def image_inputs(self, image, max_tiles: Optional[int] = None):
        tiles = self.tiles(image, self.max_tiles_for(max_tiles)).to(self.dtype)
        return tiles.shape[0] * self.tokens_per_tile, tiles

    def encode(self, conversation: list[dict], tools: Optional[list] = None) -> PromptInputs:
        parts = [p for m in conversation for p in m["content"] if p["type"] == "image"]
        if not parts or any(p["type"] == "video" for m in conversation for p in m["content"]):
            return super().encode(conversation, tools)
        return self._expand_images(self.prompt_ids(conversation, tools), [p["image"] for p in parts],
                                   [p.get("max_dynamic_patch") for p in parts])

    def _expand_images(self, ids: list[int], images: list, max_tiles: Optional[list] = None) -> PromptInputs:
        """Each ``<IMG_CONTEXT>`` -> ``<img>`` + ``<IMG_CONTEXT>`` * (tokens of its image) + ``</img>``
        (``<img>``/``</img>`` already around it are kept, not doubled). ``max_tiles``: per image, its
        part's ``max_dynamic_patch`` (or None)."""
        tok = self.image_token_id
        found = ids.count(tok)
        if found != len(images):
            raise ValueError(f"the prompt has {found} image placeholder(s) ({self.image_placeholder}) but "
                             f"{len(images)} image(s) were given")
        out: list[int] = []
        items: list[MMItem] = []
        it = iter(zip(images, max_tiles or [None] * len(images)))
        for i, t in enumerate(ids):
            if t != tok:
                out.append(t)
                continue
            img, img_max = next(it)
            if not (out and out[-1] == self.img_start_id):
                out.append(self.img_start_id)
            if isinstance(img, torch.Tensor):
                feats = img.to(self.dtype)
                item = MMItem(len(out), feats.shape[0], "embeds:" + _tensor_hash(feats), feats, "embeds")
            else:
                n, tiles = self.image_inputs(img, img_max)
                # The tiling is part of the key: one image tiled two ways is two inputs.
                key = f"{image_hash(img)}:{tiles.shape[0]}x{self.tile_size}:max{self.max_tiles_for(img_max)}"
                item = MMItem(len(out), n, key, tiles)
            items.append(item)
            out.extend([tok] * item.length)
            if not (i + 1 < len(ids) and ids[i + 1] == self.img_end_id):
                out.append(self.img_end_id)
        return PromptInputs(out, items)


# --------------------------------------------------------------------------------------------
# The original layout
# --------------------------------------------------------------------------------------------

_LLM_ARCHS = ("InternLM2ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM")
_LLM_SKIP = {"_name_or_path", "_attn_implementation_autoset", "_commit_hash", "auto_map", "architectures",
             "attn_implementation", "use_bfloat16", "torch_dtype", "transformers_version", "moe_config",
             "use_flash_attn", "bias", "use_cache"}
# InternVisionConfig's defaults (configuration_intern_vit.py), for keys a config leaves out.
_VIT_DEFAULTS = {"num_channels": 3, "patch_size": 14, "image_size": 224, "qkv_bias": False, "hidden_size": 3200,
                 "num_attention_heads": 25, "intermediate_size": 12800, "qk_normalization": True,
                 "num_hidden_layers": 48, "hidden_act": "gelu", "norm_type": "rms_norm", "layer_norm_eps": 1e-6}


def _text_config(llm: dict):
    import transformers

    arch = (llm.get("architectures") or ["?"])[0]
    if arch == "InternLM2ForCausalLM":
        return internlm2_to_llama_config(llm)
    if arch not in _LLM_ARCHS:
        raise ValueError(f"llm_config architecture {arch!r} is not supported for InternVL; "
                         f"supported: {', '.join(_LLM_ARCHS)}")
    cls = transformers.Qwen2Config if arch == "Qwen2ForCausalLM" else transformers.LlamaConfig
    return cls(**{k: v for k, v in llm.items() if k not in _LLM_SKIP and k != "model_type"})


def _vit(raw: dict) -> dict:
    return {**_VIT_DEFAULTS, **(raw.get("vision_config") or {})}


def transformers_config(raw: dict, image_token_id: Optional[int] = None):
    """The transformers ``InternVLConfig`` equivalent of an original ``InternVLChatModel`` config."""
    from transformers import InternVLConfig, InternVLVisionConfig

    llm = raw.get("llm_config") or {}
    v = _vit(raw)
    if v["norm_type"] not in ("layer_norm", "rms_norm"):
        raise ValueError(f"vision_config norm_type={v['norm_type']!r} is not supported; "
                         "supported: 'layer_norm', 'rms_norm'")
    vision = InternVLVisionConfig(
        hidden_size=v["hidden_size"], num_hidden_layers=v["num_hidden_layers"],
        num_attention_heads=v["num_attention_heads"], intermediate_size=v["intermediate_size"],
        hidden_act=v["hidden_act"], norm_type=v["norm_type"], layer_norm_eps=v["layer_norm_eps"],
        image_size=v["image_size"], patch_size=v["patch_size"], num_channels=v["num_channels"],
        attention_bias=bool(v["qkv_bias"]), use_qk_norm=bool(v["qk_normalization"]),
        use_absolute_position_embeddings=True, use_mean_pooling=True,
        layer_scale_init_value=v.get("initializer_factor", 0.1))
    ratio = raw.get("downsample_ratio", 0.5)
    tile = raw.get("force_image_size") or v["image_size"]
    tie = bool(llm.get("tie_word_embeddings", raw.get("tie_word_embeddings", False)))
    return InternVLConfig(
        text_config=_text_config(llm), vision_config=vision,
        image_token_id=image_token_id if image_token_id is not None else 0,
        image_seq_length=int((tile // v["patch_size"]) ** 2 * ratio ** 2), downsample_ratio=ratio,
        projector_hidden_act="gelu", vision_feature_layer=raw.get("select_layer", -1),
        vision_feature_select_strategy="default", tie_word_embeddings=tie)


def _unpack_wqkv(w: torch.Tensor, llm: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternLM2's packed ``wqkv`` (per kv group: its query heads, then k, then v) -> q, k, v."""
    heads = llm["num_attention_heads"]
    kv = llm.get("num_key_value_heads") or heads
    d = llm["hidden_size"] // heads
    g = heads // kv
    packed = w.view(kv, g + 2, d, *w.shape[1:])
    return (packed[:, :g].reshape(-1, *w.shape[1:]), packed[:, g].reshape(-1, *w.shape[1:]),
            packed[:, g + 1].reshape(-1, *w.shape[1:]))


_VIT_RENAMES = (("embeddings.class_embedding", "embeddings.cls_token"),
                ("embeddings.position_embedding", "embeddings.position_embeddings"),
                ("embeddings.patch_embedding", "embeddings.patch_embeddings.projection"),
                ("encoder.layers.", "encoder.layer."), (".attn.proj.", ".attention.projection_layer."),
                (".attn.", ".attention."), (".ls1", ".lambda_1"), (".ls2", ".lambda_2"),
                (".norm1.", ".layernorm_before."), (".norm2.", ".layernorm_after."))
_INTERNLM2_RENAMES = (("tok_embeddings", "embed_tokens"), ("attention.wo", "self_attn.o_proj"),
                      ("feed_forward.w1", "mlp.gate_proj"), ("feed_forward.w3", "mlp.up_proj"),
                      ("feed_forward.w2", "mlp.down_proj"), ("attention_norm", "input_layernorm"),
                      ("ffn_norm", "post_attention_layernorm"))
_MLP1 = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}


def to_transformers(name: str, w: torch.Tensor, raw: dict) -> list[tuple[str, torch.Tensor]]:
    """One tensor of an original InternVLChatModel checkpoint -> its transformers-layout tensor(s)
    (names inside transformers 5's model)."""
    llm = raw.get("llm_config") or {}
    if name.startswith("vision_model."):
        rest = name[len("vision_model."):]
        for old, new in _VIT_RENAMES:
            rest = rest.replace(old, new)
        if ".attention.qkv." in rest:
            q, k, v = w.chunk(3, dim=0)
            return [(_VISION + rest.replace(".qkv.", f".{p}_proj."), t) for p, t in zip("qkv", (q, k, v))]
        return [(_VISION + rest, w)]
    if name.startswith("mlp1."):
        _, idx, kind = name.split(".")
        if idx not in _MLP1:
            raise ValueError(f"unexpected tensor {name!r} in an InternVL checkpoint's mlp1")
        return [(f"{_PROJECTOR}{_MLP1[idx]}.{kind}", w)]
    if not name.startswith("language_model."):
        raise ValueError(f"unexpected tensor {name!r} in an original-layout InternVL checkpoint")
    rest = name[len("language_model."):]
    if rest in ("lm_head.weight", "output.weight"):
        return [("lm_head.weight", w)]
    if not rest.startswith("model."):
        raise ValueError(f"unexpected tensor {name!r} in an original-layout InternVL checkpoint")
    rest = rest[len("model."):]
    if (llm.get("architectures") or [""])[0] == "InternLM2ForCausalLM":
        if "attention.wqkv." in rest:
            return [(_LM + rest.replace("attention.wqkv", f"self_attn.{p}_proj"), t)
                    for p, t in zip("qkv", _unpack_wqkv(w, llm))]
        for old, new in _INTERNLM2_RENAMES:
            rest = rest.replace(old, new)
    return [(_LM + rest, w)]


_INTERNVL2_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"


def _mpt(name: str, sep: str, stop: list, system: str = _INTERNVL2_SYSTEM, tag: str = "<|im_start|>{}\n"):
    """An original conversation template of MPT style: ``system + sep``, ``user + q + sep``,
    ``assistant + a + sep``."""
    role = (lambda r: tag.format(r))
    return ChatTemplate(name=name, system=system, system_prefix=role("system"), system_suffix=sep,
                        user=role("user"), eoh=sep, assistant=role("assistant"), eoa=sep, separator="",
                        stop_words=stop)


def original_template(name: str) -> Optional[ChatTemplate]:
    """The conversation template an original checkpoint's ``template`` names (the definitions of the
    InternVL repo's ``conversation.py``), or None for one seer does not know."""
    if name == "internvl2_5":  # InternVL2.5 and InternVL3; seer's built-in is that template
        return get_builtin("internvl2_5")
    if name == "internlm2-chat":  # InternVL 1.5 / 2 with InternLM2
        return _mpt(name, "<|im_end|>", ["<|im_end|>"])
    if name == "Hermes-2":  # InternVL2 with Yi / Llama-3 (Hermes) decoders
        return _mpt(name, "<|im_end|>", ["<|im_end|>", "<|endoftext|>"])
    if name == "phi3-chat":
        return _mpt(name, "<|end|>", ["<|end|>"], tag="<|{}|>\n")
    return None


@contextlib.contextmanager
def _quiet_config_warning():
    import logging

    log = logging.getLogger("transformers.configuration_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class InternVLChatFamily(InternVLFamily):
    """``InternVLChatModel`` (the original OpenGVLab layout; its code is never run)."""

    architectures = ("InternVLChatModel",)

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return text_tp_shape(_text_config(raw.get("llm_config") or {}))  # InternLM2 / Qwen2 / Llama

    def __init__(self, path, raw_config, engine_cfg, vision_cfg, template_cfg, tp=None):
        super().__init__(path, raw_config, engine_cfg, vision_cfg, template_cfg, tp)
        # The original ``chat`` renders with the conversation template ``template`` names, whatever
        # chat template the tokenizer files carry.
        named = raw_config.get("template")
        if template_cfg is None and named:
            template = original_template(named)
            if template is None:
                import warnings

                warnings.warn(f"InternVL template {named!r} is not known to seer; using {self.chat_template.name!r}. "
                              "Pass a ChatTemplateConfig to choose one.", stacklevel=2)
            else:
                self.chat_template = template
                self.eos_token_ids = self._eos_ids()

    def load_tokenizer(self):
        with _quiet_config_warning():  # AutoTokenizer reads config.json: internvl_chat is no transformers type
            return super().load_tokenizer()

    def load_hf_config(self):
        raw = self.raw_config
        if raw.get("ps_version", "v1") not in ("v1", "v2"):
            raise ValueError(f"ps_version={raw.get('ps_version')!r} is not supported; supported: 'v1', 'v2'")
        return transformers_config(raw)

    @property
    def image_token_id(self) -> int:
        return self._token_id(IMG_CONTEXT)

    @property
    def image_placeholder(self) -> str:
        return IMG_CONTEXT

    def model_options(self) -> dict:
        return {"ps_version": self.raw_config.get("ps_version", "v1"),
                "qk_norm_eps": _vit(self.raw_config)["layer_norm_eps"]}

    def setup_images(self) -> int:
        raw = self.raw_config
        dynamic = bool(raw.get("dynamic_image_size", True))  # off: one tile per image
        self.dynamic = dynamic
        self.min_tiles = int(raw.get("min_dynamic_patch", 1)) if dynamic else 1
        self.default_max_tiles = int(raw.get("max_dynamic_patch", 12)) if dynamic else 1
        self.use_thumbnail = bool(raw.get("use_thumbnail", True))
        self.image_processor = None
        return int(raw.get("force_image_size") or _vit(raw)["image_size"])

    def max_tiles_for(self, part_max: Optional[int] = None) -> int:
        return super().max_tiles_for(part_max) if self.dynamic else 1  # dynamic_image_size off: one tile

    def num_tiles(self, width: int, height: int, max_tiles: Optional[int] = None) -> int:
        return num_tiles(width, height, self.tile_size, self.min_tiles, self.max_tiles_for(max_tiles),
                         self.use_thumbnail)

    def tiles(self, image, max_tiles: int) -> torch.Tensor:
        return tiles_to_pixels(dynamic_preprocess(image, self.tile_size, self.min_tiles, max_tiles,
                                                  self.use_thumbnail))

    def weights(self):
        for name, w in checkpoint_tensors(self.path):
            yield from to_transformers(name, w, self.raw_config)


# --------------------------------------------------------------------------------------------
# Original -> transformers layout
# --------------------------------------------------------------------------------------------

def _jinja_template(t: ChatTemplate) -> str:
    """A jinja chat template rendering like ``t`` (images as ``<IMG_CONTEXT>\\n``, the -hf way)."""
    q = json.dumps
    return (
        "{%- if messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
        "{%- set messages = messages[1:] -%}{%- else -%}{%- set system = " + q(t.system or "") + " -%}{%- endif -%}"
        "{%- if system -%}{{- " + q(t.system_prefix) + " + system + " + q(t.system_suffix) + " -}}{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{{- " + q(t.user) + " -}}{%- else -%}{{- " + q(t.assistant) + " -}}"
        "{%- endif -%}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}{%- else -%}"
        "{%- for content in message['content'] -%}{%- if content['type'] == 'image' -%}{{- '<IMG_CONTEXT>\\n' -}}"
        "{%- elif content['type'] == 'text' -%}{{- content['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- if message['role'] == 'user' -%}{{- " + q(t.eoh) + " -}}{%- else -%}{{- " + q(t.eoa + t.separator)
        + " -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + q(t.assistant) + " -}}{%- endif -%}"
    )


def convert_to_transformers(src: str, dst: str) -> str:
    """Write an original-layout InternVL folder (``InternVLChatModel``) out in transformers layout
    (``InternVLForConditionalGeneration``): config, weights (transformers 5's in-model names),
    tokenizer files with InternVL's image tokens named, the named conversation template as a jinja
    chat template, ``preprocessor_config.json`` / ``processor_config.json``. Returns ``dst``."""
    import shutil

    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    raw = read_config_json(src)
    if raw.get("ps_version", "v1") != "v2":
        raise ValueError(f"ps_version={raw.get('ps_version', 'v1')!r}: transformers' InternVL only implements "
                         "pixel shuffle 'v2'")
    if raw.get("use_thumbnail", True) is False and raw.get("dynamic_image_size", True):
        raise ValueError("use_thumbnail=False: transformers' InternVL image processor always adds the thumbnail")
    with _quiet_config_warning():
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    image_token_id = tok.convert_tokens_to_ids(IMG_CONTEXT)
    cfg = transformers_config(raw, image_token_id)
    cfg.architectures = ["InternVLForConditionalGeneration"]
    tensors = {}
    for name, w in checkpoint_tensors(src):
        for new, t in to_transformers(name, w, raw):
            tensors[new] = t.contiguous()
    if "lm_head.weight" not in tensors:
        cfg.tie_word_embeddings = True
    os.makedirs(dst, exist_ok=True)
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens", "generation_config", "added_tokens", "vocab", "merges")):
            shutil.copy(os.path.join(src, name), dst)
    template = original_template(raw.get("template") or "")
    if template is not None:
        tok.chat_template = _jinja_template(template)
    tok.save_pretrained(dst)
    # transformers' InternVLProcessor finds the image tokens by these names, and needs a video token
    # (``<video>``; when the vocabulary lacks it, loading adds it past the model's vocab_size, so a
    # prompt must not use it; seer does not take videos for InternVL).
    tok_cfg = os.path.join(dst, "tokenizer_config.json")
    with open(tok_cfg) as f:
        conf = json.load(f)
    conf.update(start_image_token=IMG_START, end_image_token=IMG_END, context_image_token=IMG_CONTEXT)
    conf.setdefault("video_token", "<video>")
    with open(tok_cfg, "w") as f:
        json.dump(conf, f, indent=2, ensure_ascii=False)
    tile = raw.get("force_image_size") or _vit(raw)["image_size"]
    dynamic = bool(raw.get("dynamic_image_size", True))
    with open(os.path.join(dst, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "GotOcr2ImageProcessor", "processor_class": "InternVLProcessor",
                   "crop_to_patches": dynamic, "min_patches": int(raw.get("min_dynamic_patch", 1)),
                   "max_patches": int(raw.get("max_dynamic_patch", 12)) if dynamic else 1,
                   "size": {"height": tile, "width": tile}, "do_resize": True, "resample": 3, "do_rescale": True,
                   "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(IMAGENET_MEAN),
                   "image_std": list(IMAGENET_STD), "do_convert_rgb": True}, f, indent=2)
    with open(os.path.join(dst, "processor_config.json"), "w") as f:
        json.dump({"image_seq_length": cfg.image_seq_length, "processor_class": "InternVLProcessor"}, f, indent=2)
    return dst


__all__ = ["InternVLFamily", "InternVLChatFamily", "InternVLForConditionalGeneration", "convert_to_transformers",
           "to_transformers", "transformers_config", "dynamic_preprocess", "tiles_to_pixels", "pixel_shuffle",
           "num_tiles", "tile_grid", "original_template"]
