"""The one list of supported architectures: HF ``architectures[0]`` -> family.

Families are imported lazily, so loading one model never imports the others.
"""

from __future__ import annotations

import importlib

# architecture -> (module, family class)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("seer.models.text", "LlamaFamily"),
    "MistralForCausalLM": ("seer.models.text", "LlamaFamily"),
    "Qwen2ForCausalLM": ("seer.models.text", "LlamaFamily"),
    "Qwen3ForCausalLM": ("seer.models.text", "LlamaFamily"),
    "InternLM2ForCausalLM": ("seer.models.text", "InternLM2Family"),
    "LlavaForConditionalGeneration": ("seer.models.llava", "LlavaFamily"),
    "Qwen2VLForConditionalGeneration": ("seer.models.qwen2_vl", "Qwen2VLFamily"),
    "Qwen2_5_VLForConditionalGeneration": ("seer.models.qwen2_vl", "Qwen2VLFamily"),
    "LlavaNextForConditionalGeneration": ("seer.models.llava_next", "LlavaNextFamily"),
    "Gemma3ForCausalLM": ("seer.models.gemma3", "Gemma3TextFamily"),
    "Gemma3ForConditionalGeneration": ("seer.models.gemma3", "Gemma3Family"),
    "DeepseekVLForConditionalGeneration": ("seer.models.deepseek_vl", "DeepseekVLFamily"),
    "DeepseekVLHybridForConditionalGeneration": ("seer.models.deepseek_vl", "DeepseekVLFamily"),
    "MultiModalityCausalLM": ("seer.models.deepseek_vl_original", "DeepseekVLOriginalFamily"),
    "Idefics3ForConditionalGeneration": ("seer.models.idefics3", "Idefics3Family"),
    "SmolVLMForConditionalGeneration": ("seer.models.idefics3", "Idefics3Family"),
    "LlavaLlamaForCausalLM": ("seer.models.llava_original", "LlavaOriginalFamily"),
    "LlavaMistralForCausalLM": ("seer.models.llava_original", "LlavaOriginalFamily"),
    "Phi3VForCausalLM": ("seer.models.phi3v", "Phi3VFamily"),
    "InternVLForConditionalGeneration": ("seer.models.internvl", "InternVLFamily"),
    "InternVLChatModel": ("seer.models.internvl", "InternVLChatFamily"),
}


def supported() -> list[str]:
    return sorted(ARCHITECTURES)


def family_for(raw_config: dict):
    archs = raw_config.get("architectures") or []
    if not archs:
        raise ValueError(f"config.json names no 'architectures'; supported: {', '.join(supported())}")
    arch = archs[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} is not supported; supported: {', '.join(supported())}")
    module, cls = ARCHITECTURES[arch]
    return getattr(importlib.import_module(module), cls)
