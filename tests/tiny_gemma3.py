"""Tiny random Gemma 3 checkpoints in transformers layout: text-only (``Gemma3ForCausalLM``) and
with images (``Gemma3ForConditionalGeneration``: SigLIP 32px/8 -> 4x4 patches pooled to 4 tokens).

Six decoder layers with ``sliding_window_pattern`` 3 (layers 3 and 6 global) and a 12-token local
window, so prompts of a few dozen tokens exercise both layer types; a Gemma-style chat template.
"""

import os

import torch

import tiny_models as tm

IMAGE_SIZE, PATCH, MM_TOKENS = 32, 8, 4
WINDOW = 12
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tm._trained_tokenizer_json()), bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", pad_token="<pad>", clean_up_tokenization_spaces=False, model_max_length=tm.MAX_POS,
        extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                              "eoi_token": "<end_of_image>"})
    tok.add_special_tokens({"extra_special_tokens": ["<start_of_turn>", "<end_of_turn>"]},
                           replace_extra_special_tokens=False)
    tok.chat_template = TEMPLATE
    return tok


def _text_config(tok):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=tm.HIDDEN, intermediate_size=tm.INTERMEDIATE, num_hidden_layers=6,
        num_attention_heads=tm.N_HEADS, num_key_value_heads=tm.N_KV_HEADS, head_dim=tm.HEAD_DIM,
        max_position_embeddings=tm.MAX_POS, query_pre_attn_scalar=tm.HEAD_DIM, sliding_window=WINDOW,
        sliding_window_pattern=3, rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                   "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                      "rope_theta": 1_000_000.0}},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True, rms_norm_eps=1e-6)


def _save(model, tok, path):
    model.generation_config = tm._generation_config(tok)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def build_gemma3_text(path: str, seed: int = 0) -> str:
    from transformers import Gemma3ForCausalLM

    tok = _tokenizer()
    torch.manual_seed(seed + 31)
    model = Gemma3ForCausalLM(_text_config(tok)).eval()
    _randomize_gemma(model, seed + 31)
    _save(model, tok, path)
    return path


def build_gemma3(path: str, seed: int = 0) -> str:
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                              Gemma3Processor, SiglipVisionConfig)

    tok = _tokenizer()
    vision = SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64)
    ids = tok.convert_tokens_to_ids
    cfg = Gemma3Config(text_config=_text_config(tok).to_dict(), vision_config=vision.to_dict(),
                       mm_tokens_per_image=MM_TOKENS, boi_token_index=ids("<start_of_image>"),
                       eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"))
    torch.manual_seed(seed + 37)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    _randomize_gemma(model, seed + 37)
    _save(model, tok, path)
    image_proc = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3, do_pan_and_scan=False)
    proc = Gemma3Processor(image_processor=image_proc, tokenizer=tok, chat_template=TEMPLATE,
                           image_seq_length=MM_TOKENS)
    proc.save_pretrained(path)
    image_proc.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _randomize_gemma(model, seed: int) -> None:
    """Random weights, including the norms (zero-initialised in Gemma: ``1 + w``) and the projector."""
    tm._randomize(model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "mm_input_projection" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "norm" in name else 0.5))
