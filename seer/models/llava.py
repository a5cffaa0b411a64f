"""LLaVA-1.5 in transformers layout: a CLIP-style vision tower, a two-layer projector
and a Llama or Mistral decoder.

The vision tower is transformers' own module (built from the checkpoint's
``vision_config``); features are taken from ``vision_feature_layer`` (one layer or a
list, concatenated), the CLS token dropped under the "default" strategy, then
projected. Each image fills ``(image_size / patch_size)^2`` placeholder tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.parallel import SINGLE, TPGroup
from .base import ModelFamily, decoder_tp_shape, load_image_processor
from .vlm import VisionLanguageModel
from .llama import LlamaForCausalLM

# Checkpoint prefixes: transformers 5 layout first, then the 4.x layout of llava-hf checkpoints.
_VISION = ("model.vision_tower.", "vision_tower.")
_PROJECTOR = ("model.multi_modal_projector.", "multi_modal_projector.")
_LM = (("model.language_model.", "model."), ("language_model.model.", "model."),
       ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."))


def _strip(name: str, prefixes) -> str | None:
    for p in prefixes:
        if name.startswith(p):
            return name[len(p):]
    return None


class LlavaProjector(nn.Module):
    def __init__(self, c):
        super().__init__()
        from transformers.activations import ACT2FN

        layers = 1 if isinstance(c.vision_feature_layer, int) else len(c.vision_feature_layer)
        bias = getattr(c, "multimodal_projector_bias", True)
        hidden = c.text_config.hidden_size
        self.linear_1 = nn.Linear(c.vision_config.hidden_size * layers, hidden, bias=bias)
        self.act = ACT2FN[c.projector_hidden_act]
        self.linear_2 = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaForConditionalGeneration(VisionLanguageModel):
    def __init__(self, hf_config, max_positions: int, tp: TPGroup = SINGLE):
        super().__init__()
        self.hf_config = hf_config
        self.language_model = LlamaForCausalLM(hf_config.text_config, max_positions, tp)
        self.multi_modal_projector = LlavaProjector(hf_config)
        self.vision_tower = None  # built in finish_init, outside the meta device
        self._vision_state: dict[str, torch.Tensor] = {}

    def load_weights(self, weights) -> None:
        projector = {}

        def lm_weights():
            for name, w in weights:
                if (rest := _strip(name, _VISION)) is not None:
                    # hub CLIP checkpoints nest the tower under vision_model.; transformers 5 does not
                    self._vision_state[rest.removeprefix("vision_model.")] = w
                elif (rest := _strip(name, _PROJECTOR)) is not None:
                    projector[rest] = w
                else:
                    for old, new in _LM:
                        if name.startswith(old):
                            yield new + name[len(old):], w
                            break
                    else:
                        raise ValueError(f"unexpected tensor {name!r} in a LLaVA checkpoint")

        self.language_model.load_weights(lm_weights())
        self.multi_modal_projector.load_state_dict(projector, strict=True)

    def finish_init(self) -> None:
        from transformers import AutoModel

        self.language_model.finish_init()
        ref = self.language_model.embed_tokens.weight
        tower = AutoModel.from_config(self.hf_config.vision_config)
        missing, unexpected = tower.load_state_dict(self._vision_state, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing:
            raise ValueError(f"the checkpoint's vision tower misses weights: {missing[:8]}")
        self.vision_tower = tower.to(device=ref.device, dtype=ref.dtype).eval()
        self._vision_state = {}

    # ---- the runner's interface ------------------------------------------------------------
    def encode_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Features of a batch of images (pixel tensors of one shape): one tensor per image."""
        ref = self.language_model.embed_tokens.weight
        return list(self.image_features(torch.stack(images).to(ref.device)))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, 3, H, W] -> projected features [images, tokens, hidden]."""
        c = self.hf_config
        out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        layers = [c.vision_feature_layer] if isinstance(c.vision_feature_layer, int) else c.vision_feature_layer
        hs = [out.hidden_states[i] for i in layers]
        if c.vision_feature_select_strategy == "default":
            hs = [h[:, 1:] for h in hs]
        return self.multi_modal_projector(torch.cat(hs, dim=-1))


class LlavaFamily(ModelFamily):
    architectures = ("LlavaForConditionalGeneration",)
    accepts_images = True

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return decoder_tp_shape(path)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_processor = self.load_image_processor()
        self.tokens_per_image = self.image_tokens()

    def image_tokens(self) -> int:
        """Placeholder tokens per image (per tile, for tiling families)."""
        v = self.hf_config.vision_config
        full = self.hf_config.vision_feature_select_strategy == "full"
        return (v.image_size // v.patch_size) ** 2 + (1 if full else 0)

    def load_image_processor(self):
        return load_image_processor(self.path)

    @property
    def image_token_id(self) -> int:
        c = self.hf_config
        return getattr(c, "image_token_id", None) or getattr(c, "image_token_index")

    @property
    def image_placeholder(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.image_token_id) + "\n"

    def build_model(self):
        return LlavaForConditionalGeneration(self.hf_config, self.session_len, self.tp)

    def image_inputs(self, image):
        pixels = self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return self.tokens_per_image, pixels
