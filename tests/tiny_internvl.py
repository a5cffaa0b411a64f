"""Tiny random InternVL checkpoints, in both layouts, and the transformers reference side.

* ``build_hf(path)``: an ``InternVLForConditionalGeneration`` (Qwen2 decoder) as transformers 5's
  ``save_pretrained`` writes it (nested ``text_config``/``vision_config``; tensors under the names
  5.23 writes: ``language_model.model.*``, ``language_model.lm_head.*``, ``vision_tower.*``,
  ``multi_modal_projector.*``), with a Qwen-style tokenizer carrying InternVL's tokens (``<img>``,
  ``</img>``, ``<IMG_CONTEXT>`` as ``extra_special_tokens`` start/end/context image tokens, as
  OpenGVLab/InternVL3-1B-hf ships them), the chat template transformers' conversion script writes,
  and ``preprocessor_config.json`` / ``processor_config.json`` as the -hf hub repos ship them.
* ``to_internal(src, dst)``: the same checkpoint with transformers 5's in-model tensor names
  (``model.language_model.*``, ``model.vision_tower.*``, ``model.multi_modal_projector.*``).
* ``build_original(path, lm)``: the original OpenGVLab layout (``InternVLChatModel``): flat
  ``config.json`` with ``llm_config`` / ``vision_config`` (InternViT keys), ``template``,
  ``max_dynamic_patch``, ``ps_version``, ``select_layer``...; weights ``vision_model.*`` (fused
  ``attn.qkv``, ``ls1``/``ls2``), ``mlp1.{0,1,3}.*`` and ``language_model.*`` in the LM's own
  published layout. ``lm="qwen2"``: an InternVL2.5-1B / InternVL3-style checkpoint (Qwen2 LM,
  InternViT-300M-style layer-norm tower with qkv bias, template ``internvl2_5``);
  ``lm="internlm2"``: an InternVL2-8B-style one (InternLM2 LM with packed ``wqkv``, an
  InternViT-6B-style RMS-norm tower with qk-norm and no qkv bias, template ``internlm2-chat``,
  ``select_layer: -2``). It is written from a transformers ``InternVLForConditionalGeneration``
  by this file's own inverse mapping; that model's tensors are kept at ``path + "_source.safetensors"``
  for the round-trip check.
* ``hf_processor`` / ``hf_inputs`` / ``hf_greedy``: the reference: transformers' ``InternVLProcessor``
  (built without a video processor, which needs torchvision) over ``GotOcr2ImageProcessorPil``, and
  ``generate``.
* ``original_prompt``: the prompt the original ``InternVLChatModel.chat`` builds (its conversation
  templates' ``get_prompt``, then ``<image>`` -> ``<img>`` + ``<IMG_CONTEXT>`` * n + ``</img>``).

Sizes: LM hidden 64, 2 layers; InternViT width 32, 2 layers, 56 px tiles of 14 px patches
(16 patches, pixel-shuffled to 4 tokens per tile); up to ``MAX_TILES`` = 4 tiles plus a thumbnail.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional, Sequence

import torch

import tiny_models as tm

TILE, PATCH, MAX_TILES = 56, 14, 4
TOKENS_PER_TILE = (TILE // PATCH) ** 2 // 4  # downsample_ratio 0.5
HIDDEN, HEADS, KV_HEADS, LAYERS, INTERMEDIATE = 64, 4, 2, 2, 128
V_HIDDEN, V_HEADS, V_LAYERS, V_INTERMEDIATE = 32, 2, 2, 64
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGE_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + IMAGE_TOKENS + ["<video>"]
INTERNLM2_SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>",
                     "<|interpreter|>", "<|plugin|>"] + IMAGE_TOKENS
EXTRA_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>"}
_SEEDS = {"hf": 17, "qwen2": 19, "internlm2": 13}  # picked for varied greedy output

# What transformers' convert_internvl_weights_to_hf.py writes as the -hf checkpoints' chat template.
HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# The original repo's conversation templates (internvl/conversation.py), MPT separator style:
# (system_template, system_message, roles, sep).
_SYS_V2 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
CONV_TEMPLATES = {
    "internvl2_5": ("<|im_start|>system\n{system_message}",
                    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
                    ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>\n"),
    "internlm2-chat": ("<|im_start|>system\n{system_message}", _SYS_V2,
                       ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    "Hermes-2": ("<|im_start|>system\n{system_message}", _SYS_V2,
                 ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    "phi3-chat": ("<|system|>\n{system_message}", _SYS_V2, ("<|user|>\n", "<|assistant|>\n"), "<|end|>"),
}


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tokenizer_json(specials: tuple) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in specials else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=tm.VOCAB_TARGET, min_frequency=2, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = tm._corpus() + ["<|im_start|>user\nDescribe this image.<|im_end|>\n<|im_start|>assistant\n"] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def make_tokenizer(kind: str = "qwen", chat_template: Optional[str] = None, named: bool = True):
    """``kind="qwen"``: no BOS, eos ``<|im_end|>``, pad ``<|endoftext|>`` (Qwen2 / InternVL3);
    ``"internlm2"``: ``<s>`` prepended to every encoding, eos ``</s>`` (InternLM2's tokenizer).
    Both carry InternVL's image tokens as special tokens; ``named``: also as the -hf tokenizers name
    them (``extra_special_tokens`` start/end/context image token; the original repos have none)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "qwen":
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json(tuple(QWEN_SPECIAL))),
                                      eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      clean_up_tokenization_spaces=False, model_max_length=tm.MAX_POS,
                                      extra_special_tokens=dict(EXTRA_TOKENS) if named else None)
        tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:]}, replace_extra_special_tokens=False)
    elif kind == "internlm2":
        backend = Tokenizer.from_str(_tokenizer_json(tuple(INTERNLM2_SPECIAL)))
        bos = backend.token_to_id("<s>")
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                               special_tokens=[("<s>", bos)])
        extra = {k: v for k, v in EXTRA_TOKENS.items() if k != "video_token"} if named else None
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>", pad_token="</s>", clean_up_tokenization_spaces=False,
                                      model_max_length=tm.MAX_POS, extra_special_tokens=extra)
        tok.add_special_tokens({"additional_special_tokens": INTERNLM2_SPECIAL[3:]},
                               replace_extra_special_tokens=False)
    else:
        raise ValueError(f"kind={kind!r}")
    if chat_template:
        tok.chat_template = chat_template
    return tok


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

def _text_config(lm: str, tok):
    import transformers

    common = dict(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=tm.MAX_POS,
                  hidden_act="silu", tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    if lm == "qwen2":
        return transformers.Qwen2Config(**common, rms_norm_eps=1e-6, use_sliding_window=False)
    return transformers.LlamaConfig(**common, rms_norm_eps=1e-5)  # InternLM2, as transformers converts it


def _vision_config(style: str) -> dict:
    """``style="300m"``: InternViT-300M (layer norm, qkv bias); ``"6b"``: InternViT-6B (RMS norm, qk-norm)."""
    common = dict(hidden_size=V_HIDDEN, num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS,
                  intermediate_size=V_INTERMEDIATE, image_size=TILE, patch_size=PATCH, hidden_act="gelu",
                  layer_norm_eps=1e-6, use_absolute_position_embeddings=True)
    if style == "300m":
        return dict(common, norm_type="layer_norm", attention_bias=True, use_qk_norm=False)
    return dict(common, norm_type="rms_norm", attention_bias=False, use_qk_norm=True)


@torch.no_grad()
def _new_model(lm: str, tok, style: str, seed: int, vision_feature_layer: int = -1):
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    cfg = InternVLConfig(text_config=_text_config(lm, tok), vision_config=_vision_config(style),
                         image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=TOKENS_PER_TILE,
                         downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=vision_feature_layer,
                         vision_feature_select_strategy="default", tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(cfg).eval()
    # The projector's last layer unscaled: image features stay within ~10x the text embeddings.
    tm._randomize(model, seed, unscaled=("multi_modal_projector.linear_2", "embeddings.cls_token",
                                         "embeddings.position_embeddings"))
    g = torch.Generator().manual_seed(seed)
    emb = model.model.vision_tower.embeddings
    emb.cls_token.copy_(torch.randn(emb.cls_token.shape, generator=g))  # zeros at init
    emb.position_embeddings.copy_(torch.randn(emb.position_embeddings.shape, generator=g))
    return model


def _generation_config(tok, eos: list):
    from transformers import GenerationConfig

    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    return GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=pad, do_sample=False)


def preprocessor_config() -> dict:
    """``preprocessor_config.json`` as the -hf hub repos ship it (the processor turns tiling on)."""
    return {"crop_to_patches": False, "data_format": "channels_first", "default_to_square": True,
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": IMAGENET_MEAN, "image_processor_type": "GotOcr2ImageProcessorFast",
            "image_std": IMAGENET_STD, "max_patches": MAX_TILES, "min_patches": 1,
            "processor_class": "InternVLProcessor", "resample": 3, "rescale_factor": 1 / 255,
            "size": {"height": TILE, "width": TILE}}


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)


def build_hf(path: str, seed: int = 0) -> str:
    """A tiny random InternVLForConditionalGeneration (Qwen2 LM) as save_pretrained writes it."""
    tok = make_tokenizer("qwen", HF_CHAT_TEMPLATE)
    model = _new_model("qwen2", tok, "300m", _SEEDS["hf"] + 1000 * seed)
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = _generation_config(tok, eos)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    _write_json(os.path.join(path, "preprocessor_config.json"), preprocessor_config())
    _write_json(os.path.join(path, "processor_config.json"),
                {"image_seq_length": TOKENS_PER_TILE, "processor_class": "InternVLProcessor"})
    return path


def internal_name(name: str) -> str:
    """A name as 5.23's save_pretrained writes it -> the name inside transformers 5's model."""
    for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                     ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def to_internal(src: str, dst: str) -> str:
    import shutil

    from safetensors.torch import load_file, save_file

    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if f != "model.safetensors":
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    sd = load_file(os.path.join(src, "model.safetensors"))
    save_file({internal_name(k): v.contiguous() for k, v in sd.items()}, os.path.join(dst, "model.safetensors"),
              metadata={"format": "pt"})
    return dst


# ---- the original layout ---------------------------------------------------------------------

def to_original_state_dict(sd: dict, lm: str, text_cfg) -> dict:
    """transformers' InternVLForConditionalGeneration tensors -> the original InternVLChatModel's
    (the inverse of transformers' convert_internvl_weights_to_hf.py)."""
    out, lm_sd = {}, {}
    for name, w in sd.items():
        if name.startswith("model.vision_tower."):
            rest = name[len("model.vision_tower."):]
            if ".attention.k_proj." in rest or ".attention.v_proj." in rest:
                continue
            if ".attention.q_proj." in rest:
                kind = rest.rsplit(".", 1)[1]
                pre = rest.split(".attention.")[0]
                w = torch.cat([sd[f"model.vision_tower.{pre}.attention.{p}_proj.{kind}"] for p in "qkv"])
                rest = f"{pre}.attention.qkv.{kind}"
            for old, new in (("embeddings.cls_token", "embeddings.class_embedding"),
                             ("embeddings.position_embeddings", "embeddings.position_embedding"),
                             ("embeddings.patch_embeddings.projection", "embeddings.patch_embedding"),
                             ("encoder.layer.", "encoder.layers."), (".attention.projection_layer.", ".attn.proj."),
                             (".attention.", ".attn."), (".lambda_1", ".ls1"), (".lambda_2", ".ls2"),
                             (".layernorm_before.", ".norm1."), (".layernorm_after.", ".norm2.")):
                rest = rest.replace(old, new)
            out["vision_model." + rest] = w
        elif name.startswith("model.multi_modal_projector."):
            rest = name[len("model.multi_modal_projector."):]
            for old, new in (("layer_norm.", "mlp1.0."), ("linear_1.", "mlp1.1."), ("linear_2.", "mlp1.3.")):
                if rest.startswith(old):
                    out[new + rest[len(old):]] = w
        elif name.startswith("model.language_model."):
            lm_sd["model." + name[len("model.language_model."):]] = w
        elif name == "lm_head.weight":
            lm_sd[name] = w
        else:
            raise ValueError(name)
    if lm == "internlm2":
        lm_sd = tm.llama_to_internlm2_state_dict(lm_sd, text_cfg.num_attention_heads, text_cfg.num_key_value_heads,
                                                 text_cfg.num_hidden_layers)
    out.update({"language_model." + k: v for k, v in lm_sd.items()})
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def _llm_config(lm: str, cfg, tok) -> dict:
    t = cfg.text_config
    if lm == "qwen2":  # as InternVL2.5-1B / InternVL3-1B publish it
        return {"_name_or_path": "./pretrained/Qwen2.5-0.5B-Instruct", "architectures": ["Qwen2ForCausalLM"],
                "attention_dropout": 0.0, "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
                "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"), "hidden_act": "silu",
                "hidden_size": t.hidden_size, "initializer_range": 0.02, "intermediate_size": t.intermediate_size,
                "max_position_embeddings": t.max_position_embeddings, "max_window_layers": t.num_hidden_layers,
                "model_type": "qwen2", "moe_config": None, "num_attention_heads": t.num_attention_heads,
                "num_hidden_layers": t.num_hidden_layers, "num_key_value_heads": t.num_key_value_heads,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_scaling": {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
                "torch_dtype": "bfloat16", "transformers_version": "4.37.2", "use_bfloat16": True,
                "use_cache": False, "use_sliding_window": False, "vocab_size": t.vocab_size}
    return {"_name_or_path": "internlm/internlm2_5-7b-chat", "architectures": ["InternLM2ForCausalLM"],
            "attn_implementation": "flash_attention_2", "auto_map": dict(tm.INTERNLM2_AUTO_MAP), "bias": False,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "hidden_act": "silu",
            "hidden_size": t.hidden_size, "initializer_range": 0.02, "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings, "model_type": "internlm2",
            "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads, "pad_token_id": tok.pad_token_id,
            "rms_norm_eps": t.rms_norm_eps, "rope_scaling": {"factor": 2.0, "type": "dynamic"},
            "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "transformers_version": "4.37.2", "use_bfloat16": True, "use_cache": True, "vocab_size": t.vocab_size}


def _vit_config(style: str, cfg) -> dict:
    v = cfg.vision_config
    out = {"architectures": ["InternVisionModel"], "attention_dropout": 0.0, "drop_path_rate": 0.1, "dropout": 0.0,
           "hidden_act": "gelu", "hidden_size": v.hidden_size, "image_size": TILE, "initializer_factor": 1.0,
           "initializer_range": 0.02, "intermediate_size": v.intermediate_size, "layer_norm_eps": v.layer_norm_eps,
           "model_type": "intern_vit_6b", "num_attention_heads": v.num_attention_heads, "num_channels": 3,
           "num_hidden_layers": v.num_hidden_layers, "patch_size": PATCH, "torch_dtype": "bfloat16",
           "use_bfloat16": True, "use_flash_attn": True}
    if style == "300m":
        out.update(norm_type="layer_norm", qk_normalization=False, qkv_bias=True)
    else:
        out.update(norm_type="rms_norm", qk_normalization=True, qkv_bias=False)
    return out


ORIGINAL_KINDS = {"qwen2": ("300m", "internvl2_5", -1), "internlm2": ("6b", "internlm2-chat", -2)}


def build_original(path: str, lm: str = "qwen2", seed: int = 0) -> str:
    """A tiny random checkpoint in the original OpenGVLab layout (see the module docstring)."""
    from safetensors.torch import save_file

    style, template, select_layer = ORIGINAL_KINDS[lm]
    tok = make_tokenizer("qwen" if lm == "qwen2" else "internlm2", named=False)
    model = _new_model(lm, tok, style, _SEEDS[lm] + 1000 * seed, vision_feature_layer=select_layer)
    cfg = model.config
    sd = {k: v for k, v in model.state_dict().items()}
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, source_path(path), metadata={"format": "pt"})
    save_file(to_original_state_dict(sd, lm, cfg.text_config), os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    config = {
        "_commit_hash": None, "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                     "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": TILE,
        "hidden_size": cfg.text_config.hidden_size, "llm_config": _llm_config(lm, cfg, tok),
        "max_dynamic_patch": MAX_TILES, "min_dynamic_patch": 1, "model_type": "internvl_chat", "pad2square": False,
        "ps_version": "v2", "select_layer": select_layer, "template": template, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": None, "use_backbone_lora": 0, "use_llm_lora": 0,
        "use_thumbnail": True, "vision_config": _vit_config(style, cfg),
    }
    _write_json(os.path.join(path, "config.json"), config)
    if lm == "qwen2":
        eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    else:
        eos = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    _write_json(os.path.join(path, "generation_config.json"), {"eos_token_id": eos, "transformers_version": "4.37.2"})
    # A tokenizer-level chat template that is NOT the one the checkpoint names (as several InternVL
    # repos ship): the engine must follow ``template``.
    tok.chat_template = tm.CHATML_CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


def source_path(path: str) -> str:
    """Where ``build_original`` keeps the transformers-layout tensors the checkpoint was written from."""
    return os.path.normpath(path) + "_source.safetensors"


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def hf_processor(model_dir: str, chat_template: Optional[str] = None):
    """transformers' ``InternVLProcessor`` for ``model_dir``, without a video processor (transformers'
    needs torchvision): the slot check is relaxed while building it."""
    from transformers import AutoImageProcessor, AutoTokenizer, InternVLProcessor

    with open(os.path.join(model_dir, "processor_config.json")) as f:
        seq = json.load(f)["image_seq_length"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    with tm.empty_video_slot():
        return InternVLProcessor(image_processor=AutoImageProcessor.from_pretrained(model_dir), tokenizer=tok,
                                 video_processor=None, image_seq_length=seq,
                                 chat_template=chat_template or tok.chat_template)


@functools.lru_cache(maxsize=None)
def hf_model(model_dir: str):
    from transformers import InternVLForConditionalGeneration

    return InternVLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


def messages(text: str, n_images: int) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def hf_inputs(model_dir: str, msgs: list[dict], images: Optional[Sequence] = None) -> dict:
    """The model folder's chat template, then the reference processor."""
    proc = hf_processor(model_dir)
    text = proc.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    out = proc(text=[text], images=list(images) if images else None, return_tensors="pt")
    return {k: v for k, v in dict(out).items() if k in ("input_ids", "attention_mask", "pixel_values")}


@torch.no_grad()
def hf_greedy(model_dir: str, inputs: dict, max_new_tokens: int = 32) -> list[int]:
    """Greedy ``generate`` that never stops on eos; the new token ids."""
    model = hf_model(model_dir)
    never = model.config.get_text_config().vocab_size + 12345
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=0,
                         eos_token_id=never, pad_token_id=0)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def conv_prompt(template: str, turns: list, system: Optional[str] = None) -> str:
    """The original ``Conversation.get_prompt`` (MPT style): ``turns`` alternate user / assistant
    messages, ``None`` for the reply being generated."""
    system_template, default, roles, sep = CONV_TEMPLATES[template]
    out = system_template.format(system_message=default if system is None else system) + sep
    for i, message in enumerate(turns):
        role = roles[i % 2]
        out += role + message + sep if message else role
    return out


def original_prompt(template: str, question: str, num_patches_list: Sequence[int], tokens_per_tile: int) -> str:
    """What ``InternVLChatModel.chat`` sends to the tokenizer for one question."""
    if num_patches_list and "<image>" not in question:
        question = "<image>\n" * len(num_patches_list) + question
    query = conv_prompt(template, [question, None])
    for n in num_patches_list:
        query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * tokens_per_tile * n + "</img>", 1)
    return query


__all__ = ["build_hf", "to_internal", "build_original", "source_path", "hf_processor", "hf_model", "hf_inputs",
           "hf_greedy", "messages", "conv_prompt", "original_prompt", "make_tokenizer", "TILE", "MAX_TILES",
           "TOKENS_PER_TILE", "ORIGINAL_KINDS", "CONV_TEMPLATES"]
