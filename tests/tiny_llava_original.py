"""Tiny LLaVA-1.5 / 1.6 checkpoints in the original LLaVA repo's layout (``LlavaLlamaForCausalLM``,
``LlavaMistralForCausalLM``), written from the transformers-layout tiny models: the published names
(``model.layers.*``, ``model.mm_projector.{0,2}``, ``model.image_newline``), ``mm_*`` config keys,
and the CLIP tower in its own folder in a stand-in Hugging Face cache (``mm_vision_tower`` is a
hub id, ``TOWER_ID``, as in liuhaotian/llava-v1.5-7b); seer finds it through ``HF_HUB_CACHE``.
"""

import json
import os
import shutil

from safetensors.torch import load_file, save_file

import tiny_models as tm

TOWER_ID = "tiny-org/clip-vit-tiny-test"

_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
              "max_position_embeddings", "rms_norm_eps", "vocab_size", "bos_token_id", "eos_token_id",
              "pad_token_id", "hidden_act", "tie_word_embeddings")


def write_original_layout(hf_dir: str, dst: str, hub_cache: str) -> str:
    """The original LLaVA repo's layout of a transformers-layout tiny LLaVA(-NeXT) folder."""
    from transformers import AutoConfig, CLIPVisionModel

    cfg = AutoConfig.from_pretrained(hf_dir)
    text = cfg.text_config
    raw = {k: getattr(text, k) for k in _TEXT_KEYS}
    mistral = text.model_type == "mistral"
    if mistral:  # as liuhaotian/llava-v1.6-mistral-7b ships
        raw["sliding_window"] = text.sliding_window
    raw.update(architectures=["LlavaMistralForCausalLM" if mistral else "LlavaLlamaForCausalLM"],
               model_type="llava_mistral" if mistral else "llava_llama", rope_theta=tm._rope_theta(text),
               mm_vision_tower=TOWER_ID, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
               mm_vision_select_feature="patch", mm_hidden_size=cfg.vision_config.hidden_size,
               mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad",
               mm_patch_merge_type="flat")
    if cfg.model_type == "llava_next":
        raw.update(image_aspect_ratio="anyres", image_grid_pinpoints=cfg.image_grid_pinpoints,
                   mm_patch_merge_type="spatial_unpad")
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(raw, f)
    published, tower = {}, {}
    for name, w in canonical(hf_dir).items():
        if name.startswith("model.vision_tower."):
            tower[name[len("model.vision_tower."):]] = w
        elif name.startswith("model.multi_modal_projector.linear_1."):
            published["model.mm_projector.0." + name.rsplit(".", 1)[1]] = w
        elif name.startswith("model.multi_modal_projector.linear_2."):
            published["model.mm_projector.2." + name.rsplit(".", 1)[1]] = w
        elif name.startswith("model.language_model."):
            published["model." + name[len("model.language_model."):]] = w
        else:
            published[name] = w  # lm_head.weight, model.image_newline
    save_file(published, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    for name in os.listdir(hf_dir):
        if name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy(os.path.join(hf_dir, name), dst)
    # the CLIP tower, in a stand-in hub cache: models--ORG--NAME/snapshots/REV + refs/main
    repo = os.path.join(hub_cache, "models--" + TOWER_ID.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", "0123abcd")
    tower_model = CLIPVisionModel(cfg.vision_config)
    tower_model.load_state_dict(tower, strict=False)
    tower_model.save_pretrained(snap)
    tm._image_processor().save_pretrained(snap)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write("0123abcd")
    return dst


_V4 = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
       ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."),
       ("image_newline", "model.image_newline"))


def canonical(folder: str) -> dict:
    """A transformers-layout LLaVA checkpoint's tensors under transformers 5 names, whichever
    naming the file uses (5.x saves the 4.x names)."""
    out = {}
    for name, w in load_file(os.path.join(folder, "model.safetensors")).items():
        for old, new in _V4:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name.replace("model.vision_tower.vision_model.", "model.vision_tower.")] = w
    return out
