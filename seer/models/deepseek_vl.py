"""DeepSeek-VL (1.3B layout) in transformers layout (``DeepseekVLForConditionalGeneration``).

A SigLIP vision model (transformers' own module, built from ``vision_config``) whose last
hidden state goes through a two-layer GELU aligner into a Llama decoder. Images are
resized so the long side is the tower's size, padded to a square with the mean colour
(the processor does this), and each fills ``(image_size / patch_size)^2`` placeholders.
"""

from __future__ import annotations

import torch
from torch import nn

from .llama import LlamaForCausalLM
from .llava import LlavaFamily
from .vlm import VisionLanguageModel

# checkpoint prefix -> ours; transformers 5 names first, then the 4.x ones
_PREFIXES = (("model.language_model.", "lm."), ("language_model.model.", "lm."), ("lm_head.", "lm_head."),
             ("language_model.lm_head.", "lm_head."), ("model.vision_model.", "vision."),
             ("vision_model.", "vision."), ("model.aligner.", "aligner."), ("aligner.", "aligner."))


class DeepseekVLAligner(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(vision_hidden, text_hidden)
        self.linear2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, x):
        return self.linear2(nn.functional.gelu(self.linear1(x)))


class DeepseekVLForConditionalGeneration(VisionLanguageModel):
    def __init__(self, hf_config, max_positions: int):
        super().__init__()
        self.hf_config = hf_config
        text = hf_config.text_config
        if getattr(hf_config, "tie_word_embeddings", False):
            text.tie_word_embeddings = True
        self.language_model = LlamaForCausalLM(text, max_positions)
        self.aligner = DeepseekVLAligner(hf_config.vision_config.hidden_size, text.hidden_size)
        self.vision_model = None  # built in finish_init, outside the meta device
        self._vision_state: dict[str, torch.Tensor] = {}

    def load_weights(self, weights) -> None:
        aligner = {}

        def lm_weights():
            for name, w in weights:
                for old, new in _PREFIXES:
                    if name.startswith(old):
                        rest = name[len(old):]
                        break
                else:
                    raise ValueError(f"unexpected tensor {name!r} in a DeepSeek-VL checkpoint")
                if new == "vision.":
                    self._vision_state[rest] = w
                elif new == "aligner.":
                    aligner[rest] = w
                elif new == "lm_head.":
                    yield "lm_head." + rest, w
                else:
                    yield "model." + rest, w

        self.language_model.load_weights(lm_weights())
        self.aligner.load_state_dict(aligner, strict=True)

    def finish_init(self) -> None:
        from transformers import AutoModel

        self.language_model.finish_init()
        ref = self.language_model.embed_tokens.weight
        tower = AutoModel.from_config(self.hf_config.vision_config)
        missing, unexpected = tower.load_state_dict(self._vision_state, strict=False)
        if missing or unexpected:
            raise ValueError(f"the checkpoint's vision model does not match its vision_config: "
                             f"missing {missing[:8]}, unexpected {unexpected[:8]}")
        self.vision_model = tower.to(device=ref.device, dtype=ref.dtype).eval()
        self._vision_state = {}

    def encode_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        ref = self.language_model.embed_tokens.weight
        hidden = self.vision_model(torch.stack(images).to(ref.device), return_dict=True).last_hidden_state
        return list(self.aligner(hidden))


class DeepseekVLFamily(LlavaFamily):
    architectures = ("DeepseekVLForConditionalGeneration",)

    def image_tokens(self) -> int:
        v = self.hf_config.vision_config
        return (v.image_size // v.patch_size) ** 2

    def build_model(self):
        return DeepseekVLForConditionalGeneration(self.hf_config, self.session_len)
