"""A tiny random DeepSeek-VL (transformers layout: SigLIP 32px/8 -> 16 tokens, aligner, Llama)."""

import os

import torch

import tiny_models as tm

IMAGE_SIZE, PATCH = 32, 8
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2


def build_deepseek_vl(path: str, seed: int = 0) -> str:
    from transformers import (DeepseekVLConfig, DeepseekVLForConditionalGeneration, DeepseekVLImageProcessorPil,
                              DeepseekVLProcessor, SiglipVisionConfig)

    tok = tm._make_tokenizer("llava")
    vision = SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64)
    cfg = DeepseekVLConfig(vision_config=vision.to_dict(), text_config=tm._text_config("llama", tok).to_dict(),
                           image_token_id=tok.image_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed + 17)
    model = DeepseekVLForConditionalGeneration(cfg).eval()
    tm._randomize(model, seed + 17, unscaled=("aligner.linear2",))
    image_proc = DeepseekVLImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                             min_size=8, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return _save(path, model, tok, image_proc, DeepseekVLProcessor, TOKENS_PER_IMAGE)


def _save(path: str, model, tok, image_proc, processor_cls, tokens: int) -> str:
    """A transformers-layout folder: weights, generation config, processor, tokenizer."""
    model.generation_config = tm._generation_config(tok)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    proc = processor_cls(image_processor=image_proc, tokenizer=tok, chat_template=tok.chat_template,
                         num_image_tokens=tokens)
    proc.save_pretrained(path)
    image_proc.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# The hybrid (7B layout): SAM-B's depth and heads (12 layers, 12 heads, global attention at 2, 5, 8,
# 11) at 128 px, all narrow; SigLIP at 64/16 (16 tokens) in transformers layout, and at 384/16 in the
# original layout (the 24x24 grid the original code's 96x96 resize of the SAM features assumes; 576
# tokens: too many for the tiny decoder to say much, so its tests compare features too).
HYBRID_LOW, ORIG_HYBRID_LOW, HYBRID_HIGH = 64, 384, 128
HYBRID_TOKENS, ORIG_HYBRID_TOKENS = (HYBRID_LOW // 16) ** 2, (ORIG_HYBRID_LOW // 16) ** 2
SIGLIP_HEADS, SAM_HEADS = 16, 12


def hybrid_configs(low: int = HYBRID_LOW):
    from transformers import SamVisionConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(image_size=low, patch_size=16, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=SIGLIP_HEADS, intermediate_size=128, hidden_act="gelu",
                                vision_use_head=False)
    sam = SamVisionConfig(image_size=HYBRID_HIGH, patch_size=16, hidden_size=24, num_hidden_layers=12,
                          num_attention_heads=SAM_HEADS, mlp_dim=96, window_size=14, global_attn_indexes=[2, 5, 8, 11],
                          output_channels=16)
    return vision, sam


def build_deepseek_vl_hybrid(path: str, seed: int = 0) -> str:
    from transformers import DeepseekVLHybridImageProcessorPil, DeepseekVLHybridProcessor

    tok = tm._make_tokenizer("llava")
    model = new_model(True, tok, seed + 23, low=HYBRID_LOW, image_token_id=tok.image_token_id)
    image_proc = DeepseekVLHybridImageProcessorPil(
        size={"height": HYBRID_LOW, "width": HYBRID_LOW}, high_res_size={"height": HYBRID_HIGH, "width": HYBRID_HIGH},
        min_size=8, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return _save(path, model, tok, image_proc, DeepseekVLHybridProcessor, HYBRID_TOKENS)


def noise_image(seed: int, size: tuple[int, int]):
    """Random pixels: every patch differs (flat shapes, upsampled to 384 px, give 576 near-equal tokens)."""
    import numpy as np
    from PIL import Image

    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# The original layout (MultiModalityCausalLM, deepseek-ai/deepseek-vl-{1.3b,7b}-chat): written from a
# transformers-layout model by this file's own inverse mapping, following the published names
# (timm SigLIP ``blocks.N.attn.qkv``, SAM ``blocks.N.mlp.lin1``, ``neck.0..3``, ``neck_hd``,
# ``downsamples``, ``hd_alpha_downsamples``; ``MlpProjector`` ``layers.*`` / ``high_up_proj`` /
# ``low_up_proj``).
# --------------------------------------------------------------------------------------------
ORIG_IMAGE_SIZE = 64  # the 1.3B layout's SigLIP: 64/16 -> 16 tokens
ORIG_TOKENS = (ORIG_IMAGE_SIZE // 16) ** 2
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def original_tokenizer():
    tok = tm._make_tokenizer("llava")
    tok.add_special_tokens({"additional_special_tokens": ["<image_placeholder>"]})
    tok.chat_template = None  # as published: the prompt format lives in the original code
    return tok


def _siglip_to_original(rest: str, w, out: dict, prefix: str) -> None:
    """transformers SigLIP (``rest`` after ``model.vision_model.``) -> timm names."""
    if rest == "embeddings.position_embedding.weight":
        out[prefix + "pos_embed"] = w[None]
    elif rest.startswith("embeddings.patch_embedding."):
        out[prefix + "patch_embed.proj." + rest.split(".")[-1]] = w
    elif rest.startswith("post_layernorm."):
        out[prefix + "norm." + rest.split(".")[-1]] = w
    elif rest.startswith("head."):
        pass
    else:
        _, _, i, sub = rest.split(".", 3)  # encoder.layers.i.sub
        block = f"{prefix}blocks.{i}."
        if sub.startswith("self_attn.") and sub.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            kind = sub.split(".")[-1]
            key = block + "attn.qkv." + kind
            parts = out.setdefault(("qkv", key), {})
            parts[sub.split(".")[1][0]] = w
            if len(parts) == 3:
                out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
                del out[("qkv", key)]
        else:
            for new, old in (("norm1.", "layer_norm1."), ("norm2.", "layer_norm2."),
                             ("attn.proj.", "self_attn.out_proj."), ("mlp.", "mlp.")):
                if sub.startswith(old):
                    out[block + new + sub[len(old):]] = w
                    break
            else:
                raise KeyError(rest)


_NECK = {"conv1": "0", "layer_norm1": "1", "conv2": "2", "layer_norm2": "3"}


def _sam_to_original(name: str, w, out: dict, prefix: str) -> None:
    enc = "model.high_res_vision_model.vision_encoder."
    if name.startswith(enc):
        rest = name[len(enc):]
        if rest.startswith("patch_embed.projection."):
            out[prefix + "patch_embed.proj." + rest.split(".")[-1]] = w
        elif rest.startswith("neck."):
            part, kind = rest[len("neck."):].split(".")
            out[f"{prefix}neck.{_NECK[part]}.{kind}"] = w
        elif rest.startswith("layers."):
            _, i, sub = rest.split(".", 2)
            sub = sub.replace("layer_norm1.", "norm1.").replace("layer_norm2.", "norm2.")
            out[f"{prefix}blocks.{i}.{sub}"] = w
        else:
            out[prefix + rest] = w  # pos_embed
    elif name.startswith("model.high_res_vision_neck."):
        part, kind = name[len("model.high_res_vision_neck."):].split(".")
        out[f"{prefix}neck_hd.{_NECK[part]}.{kind}"] = w
    elif name.startswith("model.high_res_vision_proj.conv"):
        i = int(name[len("model.high_res_vision_proj.conv")]) - 1
        out[f"{prefix}downsamples.{i}.weight"] = w
    elif name == "model.high_res_vision_alpha":
        out[prefix + "hd_alpha_downsamples"] = w
    else:
        raise KeyError(name)


def to_original_state_dict(sd: dict, hybrid: bool) -> dict:
    out: dict = {}
    low = "vision_model.vision_tower_low.vision_tower." if hybrid else "vision_model.vision_tower."
    aligner = ({"high_res_vision_proj.": "high_up_proj.", "vision_proj.": "low_up_proj.", "proj.": "layers.1."}
               if hybrid else {"linear1.": "layers.0.", "linear2.": "layers.2."})
    for name, w in sd.items():
        if name.startswith("model.language_model."):
            out["language_model.model." + name[len("model.language_model."):]] = w
        elif name == "lm_head.weight":
            out["language_model.lm_head.weight"] = w
        elif name.startswith("model.aligner."):
            rest = name[len("model.aligner."):]
            old = next(k for k in aligner if rest.startswith(k))
            out["aligner." + aligner[old] + rest[len(old):]] = w
        elif name.startswith("model.vision_model."):
            _siglip_to_original(name[len("model.vision_model."):], w, out, low)
        else:
            _sam_to_original(name, w, out, "vision_model.vision_tower_high.vision_tower.")
    assert not any(isinstance(k, tuple) for k in out), "a q/k/v triple was left incomplete"
    # tensors the published checkpoints carry that the original forward never uses
    g = torch.Generator().manual_seed(5)
    width = out[low + "pos_embed"].shape[-1]
    out[low + "attn_pool.latent"] = torch.randn(1, 1, width, generator=g)
    out[low + "attn_pool.q.weight"] = torch.randn(width, width, generator=g)
    if hybrid:
        for side in ("high_layer_norm", "low_layer_norm"):
            out[f"vision_model.{side}.weight"] = torch.randn(1024, generator=g)
            out[f"vision_model.{side}.bias"] = torch.randn(1024, generator=g)
    return {k: v.contiguous() for k, v in out.items()}


def new_model(hybrid: bool, tok, seed: int, low: int = ORIG_HYBRID_LOW, image_token_id: int = 0):
    """A random transformers-layout DeepSeek-VL: the hybrid, or the 1.3B in the shape the original
    layout's tiny checkpoint has."""
    from transformers import (DeepseekVLConfig, DeepseekVLForConditionalGeneration, DeepseekVLHybridConfig,
                              DeepseekVLHybridForConditionalGeneration, SiglipVisionConfig)

    text = tm._text_config("llama", tok).to_dict()
    if hybrid:
        vision, sam = hybrid_configs(low)
        cfg = DeepseekVLHybridConfig(vision_config=vision.to_dict(), high_res_vision_config=sam.to_dict(),
                                     text_config=text, image_token_id=image_token_id, tie_word_embeddings=False)
        cls = DeepseekVLHybridForConditionalGeneration
    else:
        vision = SiglipVisionConfig(image_size=ORIG_IMAGE_SIZE, patch_size=16, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=SIGLIP_HEADS, intermediate_size=128, hidden_act="gelu",
                                    vision_use_head=False)
        cfg = DeepseekVLConfig(vision_config=vision.to_dict(), text_config=text, image_token_id=image_token_id,
                               tie_word_embeddings=False)
        cls = DeepseekVLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    tm._randomize(model, seed, unscaled=() if hybrid else ("aligner.linear2",))
    if hybrid:
        with torch.no_grad():
            model.model.high_res_vision_alpha.fill_(0.7)  # published init is 0: the global branch would not count
            # SAM's features come out ~100x larger than SigLIP's: scale them and the aligner's biases
            # down so that the image tokens do not drown the tiny decoder in one constant vector
            aligner = model.model.aligner
            aligner.high_res_vision_proj.weight.mul_(0.02)
            for layer in (aligner.high_res_vision_proj, aligner.vision_proj, aligner.proj):
                layer.bias.mul_(0.05)
    return model


def build_original(path: str, hybrid: bool = False, seed: int = 0) -> str:
    """A tiny random checkpoint as deepseek-ai publishes DeepSeek-VL (1.3B layout, or 7B with ``hybrid``)."""
    from safetensors.torch import save_file

    tok = original_tokenizer()
    model = new_model(hybrid, tok, 31 + seed + (7 if hybrid else 0))
    sd = model.state_dict()
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items() if ".head." not in k}, source_path(path),
              metadata={"format": "pt"})
    save_file(to_original_state_dict(sd, hybrid), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    t = model.config.text_config
    text = {"architectures": ["LlamaForCausalLM"], "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "hidden_act": "silu", "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings, "model_type": "llama",
            "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads, "pad_token_id": tok.pad_token_id,
            "head_dim": t.head_dim, "rms_norm_eps": t.rms_norm_eps, "rope_theta": t.rope_parameters["rope_theta"],
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": t.vocab_size}
    v = model.config.vision_config
    siglip = {"image_size": v.image_size, "model_name": "siglip_large_patch16_384", "select_feature": "same",
              "select_layer": -1}
    if hybrid:
        high = model.config.high_res_vision_config
        vision = {"cls": "HybridVisionTower", "model_type": "vision", "params": {
            "concat_type": "tuple", "freeze_high": True, "freeze_low": True,
            "high_res_cfg": {"image_size": high.image_size, "model_name": "sam_b_downsample", "output_dim": 1024,
                             "pixel_mean": CLIP_MEAN, "pixel_std": CLIP_STD, "select_feature": "same",
                             "select_layer": -1},
            "low_res_cfg": {**siglip, "output_dim": 1024, "pixel_mean": [0.5] * 3, "pixel_std": [0.5] * 3}}}
        projector = "low_high_hybrid_split_mlp_gelu"
        image = {"do_normalize": False, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "image_size": high.image_size}
    else:
        vision = {"cls": "CLIPVisionTower", "model_type": "vision", "params": siglip}
        projector = "mlp_gelu"
        image = {"do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "image_size": v.image_size}
    config = {"aligner_config": {"cls": "MlpProjector", "model_type": "aligner", "params": {
                  "depth": 2, "input_dim": v.hidden_size, "n_embed": t.hidden_size, "projector_type": projector}},
              "architectures": ["MultiModalityCausalLM"], "language_config": text, "model_type": "multi_modality",
              "torch_dtype": "bfloat16", "transformers_version": "4.38.2", "vision_config": vision}
    tokens = (v.image_size // v.patch_size) ** 2
    _write_json(os.path.join(path, "config.json"), config)
    _write_json(os.path.join(path, "preprocessor_config.json"), {
        "background_color": [127, 127, 127], "image_processor_type": "VLMImageProcessor", "min_size": 14,
        "processor_class": "VLChatProcessor", "rescale_factor": 0.00392156862745098, **image})
    _write_json(os.path.join(path, "processor_config.json"), {
        "add_special_token": False, "ignore_id": -100, "image_tag": "<image_placeholder>", "mask_prompt": True,
        "num_image_tokens": tokens, "processor_class": "VLChatProcessor", "sft_format": "deepseek"})
    tm._generation_config(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def source_path(path: str) -> str:
    """Where ``build_original`` keeps the transformers-layout tensors the checkpoint was written from."""
    return os.path.normpath(path) + "_source.safetensors"


def _write_json(path: str, obj) -> None:
    import json

    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that the "
          "user provides, and assist the user with a variety of tasks using natural language.")


def original_prompt(text: str, n_images: int) -> str:
    """The prompt DeepSeek-VL's ``VLChatProcessor`` builds (``sft_format: deepseek``), image tags unexpanded."""
    return f"{SYSTEM}\n\nUser: {'<image_placeholder>' * n_images}{text}\n\nAssistant:"
