"""A tiny random Phi-3.5-vision checkpoint in the published layout (``Phi3VForCausalLM``, as
microsoft/Phi-3.5-vision-instruct ships it: config.json keys, tensor names, preprocessor_config.json,
a tokenizer that adds BOS and the model's chat template).

Sizes are scaled down and described the same way: crops of 56 px for the CLIP tower (patch 7, so
8x8 patches per crop and 4x4 after the 2x2 merge), 3 CLIP layers of width 32, a 2-layer Phi-3
decoder of width 64 with LongRoPE (``original_max_position_embeddings`` 512 of 2048), ``num_crops``
4. The CLIP sizes sit in ``img_processor`` as ``CLIPVisionConfig`` keys (the published config only
names ViT-L/14-336).
"""

from __future__ import annotations

import json
import os

import torch

import tiny_models as tm

CROP, PATCH, CLIP_WIDTH, CLIP_LAYERS = 56, 7, 32, 3
MERGED = CROP // PATCH // 2  # 4 (12 for the published 336 px / 14 px)
NUM_CROPS = 4
PROJ_SCALE = 1.0  # image features ~40x the text embeddings (rms); greedy output varies
ORIGINAL_MAX, MAX_POS = 512, 2048
HEAD_DIM = tm.HIDDEN // tm.N_HEADS  # 16 -> 8 LongRoPE factors
SPECIAL = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
# microsoft/Phi-3.5-vision-instruct's chat template (tokenizer_config.json)
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + "
                 "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
                 "{{- '<|assistant|>\n' -}}{% endif %}")
SHORT_FACTOR = [1.0, 1.02, 1.05, 1.1, 1.3, 1.6, 2.1, 2.9]
LONG_FACTOR = [1.0, 1.3, 1.9, 2.8, 4.5, 7.0, 11.0, 16.0]


def make_tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tm._trained_tokenizer_json()), bos_token="<s>", eos_token="<|endoftext|>",
        unk_token="<unk>", pad_token="<|endoftext|>", add_bos_token=True, add_eos_token=False,
        clean_up_tokenization_spaces=False, model_max_length=MAX_POS)
    tok.add_special_tokens({"extra_special_tokens": SPECIAL}, replace_extra_special_tokens=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def published_config(tok, original_max: int = ORIGINAL_MAX, max_pos: int = MAX_POS) -> dict:
    return {
        "_name_or_path": "Phi-3.5-vision-instruct",
        "architectures": ["Phi3VForCausalLM"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                     "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"},
        "bos_token_id": tok.bos_token_id,
        "embd_layer": {"embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp",
                       "use_hd_transform": True, "with_learnable_separator": True},
        "embd_pdrop": 0.0,
        "eos_token_id": tok.convert_tokens_to_ids("</s>"),
        "hidden_act": "silu",
        "hidden_size": tm.HIDDEN,
        "img_processor": {"image_dim_out": CLIP_WIDTH, "model_name": "openai/clip-vit-large-patch14-336",
                          "name": "clip_vision_model", "num_img_tokens": MERGED * MERGED,
                          # seer: the tower's size (the published code hard-codes ViT-L/14-336)
                          "image_size": CROP, "patch_size": PATCH, "hidden_size": CLIP_WIDTH,
                          "intermediate_size": 64, "num_hidden_layers": CLIP_LAYERS, "num_attention_heads": 2,
                          "projection_dim": 32},
        "initializer_range": 0.02,
        "intermediate_size": tm.INTERMEDIATE,
        "max_position_embeddings": max_pos,
        "model_type": "phi3_v",
        "num_attention_heads": tm.N_HEADS,
        "num_hidden_layers": tm.N_LAYERS,
        "num_key_value_heads": tm.N_KV_HEADS,
        "original_max_position_embeddings": original_max,
        "pad_token_id": tok.pad_token_id,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-5,
        "rope_scaling": {"long_factor": LONG_FACTOR, "short_factor": SHORT_FACTOR, "type": "longrope"},
        "rope_theta": 10000.0,
        "sliding_window": max_pos,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.38.1",
        "use_cache": True,
        "vocab_size": len(tok),
        "_attn_implementation": "flash_attention_2",
    }


def text_config(raw: dict):
    """transformers' Phi3Config for the decoder of a published config.json (the reference side)."""
    from transformers import Phi3Config

    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "original_max_position_embeddings",
            "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings", "bos_token_id", "eos_token_id",
            "pad_token_id", "sliding_window")
    return Phi3Config(**{k: raw[k] for k in keep})


def vision_config(raw: dict):
    from transformers import CLIPVisionConfig

    p = raw["img_processor"]
    return CLIPVisionConfig(image_size=p["image_size"], patch_size=p["patch_size"], hidden_size=p["hidden_size"],
                            intermediate_size=p["intermediate_size"], num_hidden_layers=p["num_hidden_layers"],
                            num_attention_heads=p["num_attention_heads"], projection_dim=p["projection_dim"],
                            hidden_act="quick_gelu", layer_norm_eps=1e-5)


def build_phi3v(path: str, seed: int = 3, original_max: int = ORIGINAL_MAX, max_pos: int = MAX_POS) -> str:
    """The tiny checkpoint at ``path`` (model.safetensors with the published names). Returns ``path``."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel, Phi3ForCausalLM

    tok = make_tokenizer()
    raw = published_config(tok, original_max, max_pos)
    torch.manual_seed(seed + 31)
    lm = Phi3ForCausalLM(text_config(raw)).eval()
    tm._randomize(lm, seed + 31)
    tower = CLIPVisionModel(vision_config(raw)).eval()
    tm._randomize(tower, seed + 32)
    g = torch.Generator().manual_seed(seed + 33)
    dim = 4 * CLIP_WIDTH
    proj = torch.nn.Sequential(torch.nn.Linear(dim, tm.HIDDEN), torch.nn.GELU(), torch.nn.Linear(tm.HIDDEN, tm.HIDDEN))
    tm._randomize(proj, seed + 34, scale=PROJ_SCALE)
    tensors = {k: v for k, v in lm.state_dict().items()}
    tower_prefix = "model.vision_embed_tokens.img_processor.vision_model."  # the published (4.x CLIP) names
    tensors.update({tower_prefix + k: v for k, v in tower.state_dict().items()})
    tensors.update({"model.vision_embed_tokens.img_projection." + k: v for k, v in proj.state_dict().items()})
    tensors["model.vision_embed_tokens.glb_GN"] = torch.randn(1, 1, dim, generator=g)
    tensors["model.vision_embed_tokens.sub_GN"] = torch.randn(1, 1, 1, dim, generator=g)
    os.makedirs(path, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()},
              os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    eos = [tok.convert_tokens_to_ids(t) for t in ("</s>", "<|endoftext|>", "<|end|>")]
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": tok.bos_token_id, "eos_token_id": eos, "pad_token_id": tok.pad_token_id,
                   "transformers_version": "4.38.1"}, f, indent=2)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({"auto_map": {"AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor",
                                "AutoProcessor": "processing_phi3_v.Phi3VProcessor"},
                   "do_convert_rgb": True, "image_mean": list(tm.CLIP_MEAN), "image_std": list(tm.CLIP_STD),
                   "image_processor_type": "Phi3VImageProcessor", "num_crops": NUM_CROPS,
                   "processor_class": "Phi3VProcessor"}, f, indent=2)
    tok.save_pretrained(path)
    return path
