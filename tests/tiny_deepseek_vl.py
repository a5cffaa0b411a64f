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
    model.generation_config = tm._generation_config(tok)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    image_proc = DeepseekVLImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                             min_size=8, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = DeepseekVLProcessor(image_processor=image_proc, tokenizer=tok, chat_template=tok.chat_template,
                               num_image_tokens=TOKENS_PER_IMAGE)
    proc.save_pretrained(path)
    image_proc.save_pretrained(path)
    tok.save_pretrained(path)
    return path
