"""LLaVA-1.6 / LLaVA-NeXT in transformers layout (``LlavaNextForConditionalGeneration``).

Same tower, projector and decoder as LLaVA-1.5 (``llava.py``); what differs is "anyres":

- The image processor picks the ``image_grid_pinpoints`` resolution that best fits the
  image, cuts the resized image into tower-sized tiles and adds one downscaled view of
  the whole image (the base tile first).
- Each tile is encoded alone; the tiles' feature maps are stitched back into one grid,
  the rows and columns that only cover padding are cut off (so the grid has the image's
  aspect ratio), and a learned ``image_newline`` vector ends every row.
- An image therefore fills ``base + rows * (cols + 1)`` placeholder tokens, which depends
  on its size: ``image_inputs`` computes it the same way the features are packed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.parallel import SINGLE, TPGroup
from .llava import LlavaFamily, LlavaForConditionalGeneration

_NEWLINE = ("model.image_newline", "image_newline")


def best_resolution(height: int, width: int, pinpoints) -> tuple[int, int]:
    """The pinpoint (h, w) that keeps the most image pixels, then wastes the fewest
    (LLaVA-NeXT's rule; ties keep the first)."""
    best, best_key = None, None
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        key = (kept, -(w * h - kept))
        if best_key is None or key > best_key:
            best, best_key = (h, w), key
    return best


def unpadded_size(orig_h: int, orig_w: int, cur_h: int, cur_w: int) -> tuple[int, int, int, int]:
    """The (top, bottom, left, right) bounds of the part of a ``cur_h x cur_w`` feature grid that
    covers an ``orig_h x orig_w`` image letterboxed into it (centred)."""
    if orig_w / orig_h > cur_w / cur_h:  # wider than the grid: padding above and below
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = int(round(orig_w * (cur_h / orig_h), 7))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


class LlavaNextForConditionalGeneration(LlavaForConditionalGeneration):
    def __init__(self, hf_config, max_positions: int, tp: TPGroup = SINGLE):
        super().__init__(hf_config, max_positions, tp)
        self.image_newline = nn.Parameter(torch.empty(hf_config.text_config.hidden_size))

    def load_weights(self, weights) -> None:
        def rest():
            for name, w in weights:
                if name in _NEWLINE:
                    with torch.no_grad():
                        self.image_newline.copy_(w)
                else:
                    yield name, w

        super().load_weights(rest())

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Tiles per column and per row for an image of this size."""
        tile = self.hf_config.vision_config.image_size
        h, w = best_resolution(height, width, self.hf_config.image_grid_pinpoints)
        return h // tile, w // tile

    def encode_images(self, images: list) -> list[torch.Tensor]:
        """``images``: ``(tiles [n, 3, S, S], (height, width))`` pairs; all tiles go through
        the tower in one forward."""
        ref = self.language_model.embed_tokens.weight
        tiles = torch.cat([t for t, _ in images]).to(ref.device)
        feats = self.image_features(tiles).split([t.shape[0] for t, _ in images])
        return [self._pack(f, size) for f, (_, size) in zip(feats, images)]

    def _pack(self, feats: torch.Tensor, size) -> torch.Tensor:
        """[tiles, side*side, D] -> [base + rows * (cols + 1), D]."""
        base, tiles = feats[0], feats[1:]
        if tiles.shape[0] == 0:
            return torch.cat([base, self.image_newline[None].to(base.dtype)])
        side = self.hf_config.vision_config.image_size // self.hf_config.vision_config.patch_size
        gh, gw = self.grid(*size)
        d = tiles.shape[-1]
        # [gh, gw, side, side, D] -> [gh*side, gw*side, D]: the tiles' maps stitched into one grid
        g = tiles.view(gh, gw, side, side, d).permute(0, 2, 1, 3, 4).reshape(gh * side, gw * side, d)
        top, bottom, left, right = unpadded_size(size[0], size[1], gh * side, gw * side)
        g = g[top:bottom, left:right]
        newline = self.image_newline.to(g.dtype).expand(g.shape[0], 1, d)
        return torch.cat([base, torch.cat([g, newline], dim=1).reshape(-1, d)])


class LlavaNextFamily(LlavaFamily):
    architectures = ("LlavaNextForConditionalGeneration",)

    def build_model(self):
        return LlavaNextForConditionalGeneration(self.hf_config, self.session_len, self.tp)

    def num_image_tokens(self, height: int, width: int) -> int:
        v = self.hf_config.vision_config
        side = v.image_size // v.patch_size
        gh, gw = self.model.grid(height, width)
        top, bottom, left, right = unpadded_size(height, width, gh * side, gw * side)
        return self.tokens_per_image + (bottom - top) * (right - left + 1)

    def image_inputs(self, image):
        out = self.image_processor(images=[image], return_tensors="pt")
        height, width = (int(x) for x in out["image_sizes"][0])
        tiles = out["pixel_values"][0].to(self.dtype)
        return self.num_image_tokens(height, width), (tiles, (height, width))
