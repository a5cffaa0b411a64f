"""Text-only families on the Llama-style decoder."""

from __future__ import annotations

from .base import ModelFamily
from .llama import InternLM2ForCausalLM, LlamaForCausalLM, internlm2_to_llama_config


class _LlamaSplits:
    """The decoder splits over tensor-parallel ranks (see ``seer.engine.parallel``)."""

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        heads = raw["num_attention_heads"]
        return heads, raw.get("num_key_value_heads") or heads, raw["intermediate_size"]


class LlamaFamily(_LlamaSplits, ModelFamily):
    """Llama, Mistral, Qwen2 and Qwen3 in transformers layout."""

    architectures = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
    def build_model(self):
        return LlamaForCausalLM(self.hf_config, self.session_len, self.tp)


class InternLM2Family(_LlamaSplits, ModelFamily):
    """InternLM2 in its published layout (remote-code checkpoints; their code is never run)."""

    architectures = ("InternLM2ForCausalLM",)

    def load_hf_config(self):
        return internlm2_to_llama_config(self.raw_config)

    def build_model(self):
        return InternLM2ForCausalLM(self.hf_config, self.session_len, self.tp)
