"""What every vision-language model module shares: the runner's text interface.

A VLM here is a vision tower and a projector around a decoder held as
``self.language_model``; ``embed``, ``forward``, ``decode_logits`` and ``compute_logits`` go straight
to that decoder, and each family adds ``encode_images(list) -> list of features``.
"""

from __future__ import annotations

from torch import nn


class VisionLanguageModel(nn.Module):
    language_model: nn.Module

    @property
    def spec(self):
        return self.language_model.spec

    def embed(self, input_ids):
        return self.language_model.embed(input_ids)

    def forward(self, embeds, positions, kv_caches, meta):
        return self.language_model(embeds, positions, kv_caches, meta)

    def decode_logits(self, input_ids, positions, kv_caches, meta):
        return self.language_model.decode_logits(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden):
        return self.language_model.compute_logits(hidden)
