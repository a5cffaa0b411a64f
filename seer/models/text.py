"""Text-only families on the Llama-style decoder."""

from __future__ import annotations

from .base import ModelFamily
from .llama import InternLM2ForCausalLM, LlamaForCausalLM, internlm2_to_llama_config


class LlamaFamily(ModelFamily):
    """Llama, Mistral, Qwen2 and Qwen3 in transformers layout."""

    architectures = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")

    def build_model(self):
        return LlamaForCausalLM(self.hf_config, self.session_len)


class InternLM2Family(ModelFamily):
    """InternLM2 in its published layout (remote-code checkpoints; their code is never run)."""

    architectures = ("InternLM2ForCausalLM",)

    def load_hf_config(self):
        return internlm2_to_llama_config(self.raw_config)

    def build_model(self):
        return InternLM2ForCausalLM(self.hf_config, self.session_len)
