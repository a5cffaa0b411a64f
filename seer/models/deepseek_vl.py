"""DeepSeek-VL in transformers layout: ``DeepseekVLForConditionalGeneration`` (1.3B: SigLIP)
and ``DeepseekVLHybridForConditionalGeneration`` (7B: SigLIP at 384 px plus SAM-B at 1024 px).

The vision side is transformers' own SigLIP (and SAM) modules, built from the checkpoint's
sub-configs; the decoder is seer's Llama. Images are resized so the long side is the tower's
size and padded to a square with the mean colour (the processor does this); each image fills
``(image_size / patch_size)^2`` placeholders of the SigLIP tower (576 for the published ones).

Hybrid features, per image: SigLIP's last hidden state, and SAM's: its neck output plus
``alpha`` times a second neck applied to the first global-attention layer's output, each
resized to ``4 * grid`` square and taken down by two stride-2 convolutions to the SigLIP grid.
The aligner projects each to half the LM width, concatenates (SAM first), GELU, a last linear.

``seer.models.deepseek_vl_original`` loads the original ``MultiModalityCausalLM`` layout by
mapping its config and weights onto these modules.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.parallel import SINGLE, TPGroup
from .llama import LlamaForCausalLM
from .llava import LlavaFamily
from .vlm import VisionLanguageModel

# checkpoint prefix -> the decoder's names; transformers 5 names first, then the 4.x ones
_LM = (("model.language_model.", "model."), ("language_model.model.", "model."), ("lm_head.", "lm_head."),
       ("language_model.lm_head.", "lm_head."))


class DeepseekVLAligner(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(vision_hidden, text_hidden)
        self.linear2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, x):
        return self.linear2(nn.functional.gelu(self.linear1(x)))


class DeepseekVLHybridAligner(nn.Module):
    def __init__(self, vision_hidden: int, high_res_hidden: int, text_hidden: int):
        super().__init__()
        self.vision_proj = nn.Linear(vision_hidden, text_hidden // 2)
        self.high_res_vision_proj = nn.Linear(high_res_hidden, text_hidden // 2)
        self.proj = nn.Linear(text_hidden, text_hidden)

    def forward(self, low, high):
        x = torch.cat([self.high_res_vision_proj(high), self.vision_proj(low)], dim=-1)
        return self.proj(nn.functional.gelu(x))


class DeepseekVLVision(nn.Module):
    """Everything before the decoder, named as in the transformers checkpoint (minus ``model.``)."""

    def __init__(self, hf_config):
        super().__init__()
        from transformers import AutoModel

        text_hidden = hf_config.text_config.hidden_size
        self.vision_model = AutoModel.from_config(hf_config.vision_config)
        high = getattr(hf_config, "high_res_vision_config", None)
        self.hybrid = high is not None
        if not self.hybrid:
            self.aligner = DeepseekVLAligner(hf_config.vision_config.hidden_size, text_hidden)
            return
        from transformers.models.deepseek_vl_hybrid.modeling_deepseek_vl_hybrid import (DeepseekVLSamVisionNeck,
                                                                                          DeepseekVLSamVisionProj)

        grid = hf_config.vision_config.image_size // hf_config.vision_config.patch_size
        self.global_layer = high.global_attn_indexes[0]
        self.high_res_vision_model = AutoModel.from_config(high)
        self.high_res_vision_neck = DeepseekVLSamVisionNeck(high)
        self.high_res_vision_proj = DeepseekVLSamVisionProj(high, output_size=grid)
        self.high_res_vision_alpha = nn.Parameter(torch.zeros(1))
        self.aligner = DeepseekVLHybridAligner(hf_config.vision_config.hidden_size, high.output_channels * 4,
                                               text_hidden)

    def forward(self, pixels: torch.Tensor, high_res: torch.Tensor = None) -> torch.Tensor:
        low = self.vision_model(pixels, return_dict=True).last_hidden_state
        if not self.hybrid:
            return self.aligner(low)
        out = self.high_res_vision_model(high_res, output_hidden_states=True, return_dict=True)
        x = self.high_res_vision_proj(out.last_hidden_state)
        first_global = self.high_res_vision_neck(out.hidden_states[self.global_layer + 1])  # [0]: the embeddings
        x = x + self.high_res_vision_proj(first_global) * self.high_res_vision_alpha
        return self.aligner(low, x.flatten(2).transpose(1, 2))


class DeepseekVLForConditionalGeneration(VisionLanguageModel):
    def __init__(self, hf_config, max_positions: int, tp: TPGroup = SINGLE):
        super().__init__()
        self.hf_config = hf_config
        text = hf_config.text_config
        if getattr(hf_config, "tie_word_embeddings", False):
            text.tie_word_embeddings = True
        self.language_model = LlamaForCausalLM(text, max_positions, tp)
        self.vision = None  # built in finish_init, outside the meta device
        self._vision_state: dict[str, torch.Tensor] = {}

    def load_weights(self, weights) -> None:
        def lm_weights():
            for name, w in weights:
                for old, new in _LM:
                    if name.startswith(old):
                        yield new + name[len(old):], w
                        break
                else:
                    self._vision_state[name.removeprefix("model.")] = w

        self.language_model.load_weights(lm_weights())

    def finish_init(self) -> None:
        self.language_model.finish_init()
        ref = self.language_model.embed_tokens.weight
        vision = DeepseekVLVision(self.hf_config)
        # SigLIP's pooling head is never used: not loaded, not required
        state = {k: v for k, v in self._vision_state.items() if not k.startswith("vision_model.head.")}
        missing, unexpected = vision.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("vision_model.head.")]
        if missing or unexpected:
            raise ValueError(f"the checkpoint's vision weights do not match its config: "
                             f"missing {missing[:8]}, unexpected {unexpected[:8]}")
        self.vision = vision.to(device=ref.device, dtype=ref.dtype).eval()
        self._vision_state = {}

    def encode_images(self, images: list) -> list[torch.Tensor]:
        device = self.language_model.embed_tokens.weight.device
        if self.vision.hybrid:
            low = torch.stack([low for low, _ in images]).to(device)
            return list(self.vision(low, torch.stack([high for _, high in images]).to(device)))
        return list(self.vision(torch.stack(images).to(device)))


class DeepseekVLFamily(LlavaFamily):
    architectures = ("DeepseekVLForConditionalGeneration", "DeepseekVLHybridForConditionalGeneration")

    def image_tokens(self) -> int:
        v = self.hf_config.vision_config
        return (v.image_size // v.patch_size) ** 2

    def build_model(self):
        return DeepseekVLForConditionalGeneration(self.hf_config, self.session_len, self.tp)

    def image_inputs(self, image):
        out = self.image_processor(images=[image], return_tensors="pt")
        if "high_res_pixel_values" in out:
            return self.tokens_per_image, (out["pixel_values"][0].to(self.dtype),
                                           out["high_res_pixel_values"][0].to(self.dtype))
        return self.tokens_per_image, out["pixel_values"][0]
