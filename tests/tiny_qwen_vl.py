"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints and the transformers reference side.

* ``build_qwen_vl(path, kind)``: a ``Qwen2VLForConditionalGeneration`` (kind "qwen2_vl") or
  ``Qwen2_5_VLForConditionalGeneration`` (kind "qwen2_5_vl") saved by transformers 5's
  ``save_pretrained`` (nested ``text_config``/``vision_config``; transformers 5.23 writes the hub's
  tensor names ``model.*``, ``visual.*``, ``lm_head.*``), with a Qwen-style byte-level BPE tokenizer
  (``<|im_start|>``, ``<|vision_start|>``, ``<|image_pad|>``...), the published Qwen2-VL chat
  template, a ``preprocessor_config.json`` as the hub ships it (``min_pixels``/``max_pixels``) and a
  generation config.
* ``to_layout(src, dst, "hub")``: the same weights as the Qwen hub checkpoints publish them: flat
  ``config.json`` (text keys at the top, ``rope_scaling: {"type": "mrope"}``, ``in_chans``...);
  ``to_layout(src, dst, "internal")``: tensors named as inside transformers 5's model
  (``model.language_model.*``, ``model.visual.*``).
* ``hf_processor`` / ``hf_inputs`` / ``hf_greedy``: the reference: transformers' own
  ``Qwen2VLProcessor`` (built without a video processor, which needs torchvision) and ``generate``.

Sizes: LM hidden 64, 2 layers, head_dim 16 (mrope_section [2, 3, 3]); vision tower 2 blocks of
width 32, patch 14, merge 2; images are resized to multiples of 28 with at most
``MAX_PIXELS`` = 112*112 pixels, so a 56x56 image takes 4 tokens and a 112x84 one 12.
Qwen2.5-VL's windows are 56 px (2x2 merged tokens): block 0 is windowed, block 1 full.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional, Sequence

import torch

import tiny_models as tm

KINDS = ("qwen2_vl", "qwen2_5_vl")
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
PATCH, MERGE, TEMPORAL = 14, 2, 2
HIDDEN, HEADS, KV_HEADS, LAYERS, INTERMEDIATE = 64, 4, 2, 2, 128
MROPE_SECTION = [2, 3, 3]  # sums to head_dim / 2 = 8
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_SEEDS = {"qwen2_vl": 3, "qwen2_5_vl": 3}

# The chat template Qwen2-VL-*-Instruct and Qwen2.5-VL-*-Instruct publish (chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --------------------------------------------------------------------------------------------
# Tokenizer and processor files
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=tm.VOCAB_TARGET, min_frequency=2, special_tokens=QWEN_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = tm._corpus() + ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                             "<|im_start|>user\nDescribe this image.<|im_end|>\n<|im_start|>assistant\n"] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def make_tokenizer():
    """Qwen-like: no BOS, eos ``<|im_end|>``, pad ``<|endoftext|>``, the published chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  clean_up_tokenization_spaces=False, model_max_length=tm.MAX_POS)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:]})
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tok


def preprocessor_config(kind: str) -> dict:
    """``preprocessor_config.json`` as Qwen2-VL / Qwen2.5-VL checkpoints ship it."""
    return {
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": PATCH,
        "temporal_patch_size": TEMPORAL, "merge_size": MERGE, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor" if kind == "qwen2_vl" else "Qwen2_5_VLProcessor",
    }


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

def _config(kind: str, tok, tie: bool = False):
    import transformers

    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    text = dict(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                max_position_embeddings=tm.MAX_POS, rms_norm_eps=1e-6, hidden_act="silu",
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], use_sliding_window=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": MROPE_SECTION})
    common = dict(text_config=text, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                  tie_word_embeddings=tie)
    if kind == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=HIDDEN, hidden_act="quick_gelu", mlp_ratio=2,
                      num_heads=2, in_channels=3, patch_size=PATCH, spatial_merge_size=MERGE,
                      temporal_patch_size=TEMPORAL)
        return transformers.Qwen2VLConfig(vision_config=vision, **common)
    vision = dict(depth=2, hidden_size=32, out_hidden_size=HIDDEN, hidden_act="silu", intermediate_size=64,
                  num_heads=2, in_channels=3, patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_patch_size=TEMPORAL, tokens_per_second=2, window_size=56, fullatt_block_indexes=[1])
    return transformers.Qwen2_5_VLConfig(vision_config=vision, **common)


def _model_class(kind: str):
    import transformers

    return {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
            "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[kind]


def build_qwen_vl(path: str, kind: str = "qwen2_vl", seed: int = 0, tie: bool = False) -> str:
    """A tiny random checkpoint of ``kind`` in transformers 5 layout at ``path``; ``tie``: the LM head
    is the embedding matrix (as in Qwen2-VL-2B; no ``lm_head`` tensor is saved). Returns ``path``."""
    from transformers import GenerationConfig

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    tok = make_tokenizer()
    cfg = _config(kind, tok, tie)
    seed = _SEEDS[kind] + 1000 * seed
    torch.manual_seed(seed)
    model = _model_class(kind)(cfg).eval()
    # The merger's last layer unscaled: image features stay within ~10x the text embeddings.
    tm._randomize(model, seed, unscaled=("merger.mlp.2",))
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(bos_token_id=eos[1], eos_token_id=eos,
                                               pad_token_id=eos[1], do_sample=False)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    _write_json(os.path.join(path, "preprocessor_config.json"), preprocessor_config(kind))
    _write_json(os.path.join(path, "chat_template.json"), {"chat_template": QWEN2_VL_CHAT_TEMPLATE})
    return path


def published_config(cfg: dict) -> dict:
    """A transformers-5 ``config.json`` dict -> the flat form the Qwen hub checkpoints publish."""
    text = cfg["text_config"]
    rope = dict(text.get("rope_parameters") or {})
    out = {
        "architectures": cfg["architectures"], "attention_dropout": 0.0,
        "bos_token_id": text["bos_token_id"], "eos_token_id": text["eos_token_id"],
        "vision_start_token_id": cfg["vision_start_token_id"], "vision_end_token_id": cfg["vision_end_token_id"],
        "vision_token_id": cfg["vision_start_token_id"] + 2, "image_token_id": cfg["image_token_id"],
        "video_token_id": cfg["video_token_id"], "hidden_act": "silu", "hidden_size": text["hidden_size"],
        "initializer_range": 0.02, "intermediate_size": text["intermediate_size"],
        "max_position_embeddings": text["max_position_embeddings"], "max_window_layers": text["num_hidden_layers"],
        "model_type": cfg["model_type"], "num_attention_heads": text["num_attention_heads"],
        "num_hidden_layers": text["num_hidden_layers"], "num_key_value_heads": text["num_key_value_heads"],
        "rms_norm_eps": text["rms_norm_eps"], "rope_theta": rope["rope_theta"], "sliding_window": 32768,
        "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.41.2",
        "use_cache": True, "use_sliding_window": False,
        "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
        "vocab_size": text["vocab_size"],
    }
    v = cfg["vision_config"]
    if cfg["model_type"] == "qwen2_vl":
        keys = ("depth", "embed_dim", "mlp_ratio", "num_heads", "hidden_size", "patch_size",
                "spatial_merge_size", "temporal_patch_size")
    else:
        keys = ("depth", "hidden_act", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size",
                "patch_size", "spatial_merge_size", "window_size", "fullatt_block_indexes",
                "tokens_per_second", "temporal_patch_size")
    out["vision_config"] = {k: v[k] for k in keys}
    out["vision_config"].update(in_chans=v.get("in_channels", 3), spatial_patch_size=v["patch_size"])
    return out


def internal_name(name: str) -> str:
    """Hub tensor name -> the name inside transformers 5's model (``model.language_model.*``,
    ``model.visual.*``), which some tools write as is."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model.") and not name.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + name[len("model."):]
    return name


def hub_name(name: str) -> str:
    """Either naming -> the hub checkpoints' (``model.*``, ``visual.*``, ``lm_head.*``)."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def to_layout(src: str, dst: str, layout: str = "hub") -> str:
    """Copy the checkpoint at ``src`` to ``dst``: ``layout="hub"``: flat ``config.json`` and tensor
    names as the Qwen hub checkpoints publish them; ``"internal"``: transformers 5's nested config
    and its in-model names (``model.language_model.*``, ``model.visual.*``)."""
    import shutil

    from safetensors.torch import load_file, save_file

    rename = {"hub": hub_name, "internal": internal_name}[layout]
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if f not in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    sd = load_file(os.path.join(src, "model.safetensors"))
    save_file({rename(k): v.contiguous() for k, v in sd.items()},
              os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    _write_json(os.path.join(dst, "config.json"), published_config(cfg) if layout == "hub" else cfg)
    return dst


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def hf_processor(model_dir: str):
    """transformers' ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` for ``model_dir``, without a video
    processor (transformers' needs torchvision): the slot check is relaxed while building it."""
    from transformers import AutoImageProcessor, AutoTokenizer

    with open(os.path.join(model_dir, "config.json")) as f:
        kind = json.load(f)["model_type"]
    if kind == "qwen2_vl":
        from transformers import Qwen2VLProcessor as cls
    else:
        from transformers import Qwen2_5_VLProcessor as cls
    with tm.empty_video_slot():
        return cls(image_processor=AutoImageProcessor.from_pretrained(model_dir),
                   tokenizer=AutoTokenizer.from_pretrained(model_dir), video_processor=None,
                   chat_template=QWEN2_VL_CHAT_TEMPLATE)


@functools.lru_cache(maxsize=None)
def hf_model(model_dir: str):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_inputs(model_dir: str, messages: list[dict], images: Optional[Sequence] = None, **images_kwargs) -> dict:
    """Chat template, then the reference processor (``images_kwargs``: e.g. ``size=...``)."""
    proc = hf_processor(model_dir)
    text = proc.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = proc(text=[text], images=list(images) if images else None, return_tensors="pt",
               **images_kwargs)
    return dict(out)


@torch.no_grad()
def hf_greedy(model_dir: str, inputs: dict, max_new_tokens: int = 32) -> list[int]:
    """Greedy ``generate`` that never stops on eos; the new token ids."""
    model = hf_model(model_dir)
    never = model.config.get_text_config().vocab_size + 12345
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=0,
                         eos_token_id=never, pad_token_id=model.generation_config.pad_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def hf_video_inputs(model_dir: str, text: str, frames: list, fps: Optional[float] = None,
                    images: Sequence = (), bounds: tuple = (MIN_PIXELS, MAX_PIXELS)) -> dict:
    """Reference inputs for ``images`` (if any), then one video, then ``text``.

    transformers' video processor needs torchvision, so the video's pixels are seer's
    ``video_patches`` (checked against the image processor's layout in test_qwen2_vl); the rest is
    transformers': chat template, tokenizer, image processing, ``<|video_pad|>`` count
    ``t*h*w / merge^2``, ``mm_token_type_ids`` and, for Qwen2.5-VL, ``second_per_grid_ts =
    temporal_patch_size / fps`` (fps 24 when unknown, as transformers assumes for bare frames).
    """
    from seer.models.qwen2_vl import video_patches

    proc = hf_processor(model_dir)
    tok = proc.tokenizer
    content = [{"type": "image"} for _ in images] + [{"type": "video"}, {"type": "text", "text": text}]
    prompt = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                     tokenize=False)
    # The processor refuses a video token without a video: it goes in as <|vision_pad|>, swapped after.
    prompt = prompt.replace("<|video_pad|>", "<|vision_pad|>")
    out = dict(proc(text=[prompt], images=list(images) or None, return_tensors="pt"))
    patches, grid = video_patches(frames, proc.image_processor, bounds)
    ids = out["input_ids"][0].tolist()
    pad = tok.convert_tokens_to_ids("<|video_pad|>")
    i = ids.index(tok.convert_tokens_to_ids("<|vision_pad|>"))
    ids = ids[:i] + [pad] * (grid[0] * grid[1] * grid[2] // MERGE ** 2) + ids[i + 1:]
    kinds = {tok.convert_tokens_to_ids("<|image_pad|>"): 1, pad: 2}
    out.update(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
               mm_token_type_ids=torch.tensor([[kinds.get(t, 0) for t in ids]]),
               pixel_values_videos=patches, video_grid_thw=torch.tensor([grid]))
    with open(os.path.join(model_dir, "config.json")) as f:
        if json.load(f)["model_type"] == "qwen2_5_vl":
            out["second_per_grid_ts"] = torch.tensor([TEMPORAL / (fps or 24)])
    return out


def write_video(path: str, frames: list, fps: int) -> str:
    """An MPEG-4 file of ``frames`` (PIL images of one even size) at ``fps``, written with PyAV."""
    import av
    import numpy as np

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def messages(text: str, n_images: int) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


__all__ = ["build_qwen_vl", "to_layout", "hf_processor", "hf_model", "hf_inputs", "hf_greedy",
           "hf_video_inputs", "write_video", "messages", "make_tokenizer", "KINDS", "MIN_PIXELS", "MAX_PIXELS"]
