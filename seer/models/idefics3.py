"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``)
in transformers layout.

- A SigLIP-style vision model (transformers' own ``Idefics3VisionTransformer`` /
  ``SmolVLMVisionTransformer``, built from the checkpoint's ``vision_config``) encodes square
  tiles; the connector (here: ``Idefics3Connector``) folds each ``scale x scale`` block of patch
  features into one vector ("pixel shuffle") and projects it with one bias-free linear layer into
  the decoder, which is seer's Llama (``llama.py``).
- Image splitting: transformers' image processor (the PIL one; torchvision is not needed) resizes
  an image so its long side is ``size["longest_edge"]``, then up to multiples of the tile side
  ``max_image_size["longest_edge"]``, and cuts it into ``rows x cols`` tiles, row by row, plus one
  global view of the whole image resized to one tile (an image that already fits one tile is not
  split: ``rows = cols = 0``, one tile).
- The prompt: each ``<image>`` of the chat template becomes, as transformers' processors write it,
  per tile ``<fake_token_around_image><row_r_col_c>`` + ``image_seq_len`` x ``<image>``, a ``\\n``
  after each row, then ``\\n<fake_token_around_image><global-img>`` + ``image_seq_len`` x
  ``<image>`` + ``<fake_token_around_image>`` (without splitting: only the global part, without
  the leading ``\\n``). As in the processors, the chat template's text with these replacements is
  tokenized whole; a raw prompt's token ids (``LLM.generate``) get each image's text tokenized
  alone and spliced in, which gives the same ids (its ends are special tokens).
- Each tile is one ``MMItem`` (its run of ``image_seq_len`` ``<image>`` tokens, key: image hash,
  grid and tile index). Tiles of every image in a step go through the tower together; tiles of
  one size are stacked, sizes never mix in one forward, so a tile's features never depend on what
  it was batched with. transformers pads a batch of images to the largest with zero images and a
  ``pixel_attention_mask``, then drops the all-zero images and turns the mask into a patch mask
  for the tower; the processor's mask of each tile is kept and passed the same way (None when it
  covers the whole tile, the case for every tile the processor makes).

Weight names (transformers 5's ``save_pretrained`` and the published checkpoints, e.g.
HuggingFaceTB/SmolVLM-256M-Instruct, agree): ``model.vision_model.*``,
``model.connector.modality_projection.proj.weight``, ``model.text_model.*``, ``lm_head.weight``
(absent when the embeddings are tied).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
from torch import nn

from ..engine.parallel import SINGLE, TPGroup
from ..engine.request import MMItem, PromptInputs
from ..vl import image_hash
from .base import ModelFamily, decoder_tp_shape, load_image_processor
from .llama import LlamaForCausalLM
from .vlm import VisionLanguageModel

_VISION = ("model.vision_model.", "vision_model.")
_CONNECTOR = ("model.connector.modality_projection.", "connector.modality_projection.")
_LM = ("model.text_model.", "text_model.")


def _strip(name: str, prefixes) -> Optional[str]:
    for p in prefixes:
        if name.startswith(p):
            return name[len(p):]
    return None


def _tower_class(model_type: str):
    if model_type == "smolvlm":
        from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer

        return SmolVLMVisionTransformer
    from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionTransformer

    return Idefics3VisionTransformer


def pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``[n, side*side, d]`` patch features -> ``[n, (side/scale)^2, d*scale^2]``: each ``scale x scale``
    block of patches becomes one vector, in transformers' Idefics3 element order."""
    n, seq, d = x.shape
    side = int(round(seq ** 0.5))
    if side * side != seq or side % scale:
        raise ValueError(f"a tile of {seq} patches is not a square grid divisible by scale_factor={scale}")
    x = x.view(n, side, side // scale, d * scale)  # rows, groups of `scale` columns
    x = x.permute(0, 2, 1, 3).reshape(n, side // scale, side // scale, d * scale * scale)
    return x.permute(0, 2, 1, 3).reshape(n, seq // scale ** 2, d * scale * scale)


class Idefics3Connector(nn.Module):
    """Pixel shuffle, then ``proj`` (transformers' ``connector.modality_projection.proj``)."""

    def __init__(self, vision_hidden: int, text_hidden: int, scale: int):
        super().__init__()
        self.scale = scale
        self.proj = nn.Linear(vision_hidden * scale * scale, text_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_shuffle(x, self.scale))


class Idefics3ForConditionalGeneration(VisionLanguageModel):
    def __init__(self, hf_config, max_positions: int, tp: TPGroup = SINGLE):
        super().__init__()
        self.hf_config = hf_config
        self.language_model = LlamaForCausalLM(hf_config.text_config, max_positions, tp)
        # lm_head may be missing from the checkpoint (tied); decided after loading (load_weights).
        self.language_model.spec.tie_word_embeddings = True
        self.connector = Idefics3Connector(hf_config.vision_config.hidden_size, hf_config.text_config.hidden_size,
                                           hf_config.scale_factor)
        self.patch_size = hf_config.vision_config.patch_size
        self.vision_model = None  # built in finish_init, outside the meta device
        self._vision_state: dict[str, torch.Tensor] = {}

    def load_weights(self, weights) -> None:
        connector = {}
        seen_head = []

        def lm_weights():
            for name, w in weights:
                if (rest := _strip(name, _VISION)) is not None:
                    self._vision_state[rest] = w
                elif (rest := _strip(name, _CONNECTOR)) is not None:
                    connector[rest] = w
                elif (rest := _strip(name, _LM)) is not None:
                    yield "model." + rest, w
                elif name == "lm_head.weight":
                    seen_head.append(True)
                    yield name, w
                else:
                    raise ValueError(f"unexpected tensor {name!r} in an Idefics3 / SmolVLM checkpoint")

        self.language_model.load_weights(lm_weights())
        self.connector.load_state_dict(connector, strict=True)
        # As transformers: a checkpoint's lm_head is used as is; without one the head is the
        # embedding matrix, which the config must say.
        c = self.hf_config
        tied = bool(getattr(c, "tie_word_embeddings", False) or getattr(c.text_config, "tie_word_embeddings", False))
        if not seen_head and not tied:
            raise ValueError("checkpoint is missing weights: ['lm_head.weight'] (and tie_word_embeddings is false)")
        self.language_model.spec.tie_word_embeddings = not seen_head

    def finish_init(self) -> None:
        self.language_model.finish_init()
        ref = self.language_model.embed_tokens.weight
        cls = _tower_class(self.hf_config.model_type)
        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # pragma: no cover - older transformers
            from transformers.modeling_utils import no_init_weights
        with no_init_weights():  # every weight comes from the checkpoint
            tower = cls._from_config(self.hf_config.vision_config)
        missing, unexpected = tower.load_state_dict(self._vision_state, strict=False)
        if missing or unexpected:
            raise ValueError(f"the checkpoint's vision model does not match its vision_config: "
                             f"missing {missing[:8]}, unexpected {unexpected[:8]}")
        self.vision_model = tower.to(device=ref.device, dtype=ref.dtype).eval()
        self._vision_state = {}

    def encode_images(self, tiles: list) -> list[torch.Tensor]:
        """``tiles``: ``(pixels [3, H, W], pixel mask [H, W] bool or None)`` pairs; tiles of one size go
        through the tower together. Returns each tile's features ``[tokens, hidden]``."""
        ref = self.language_model.embed_tokens.weight
        out: list[Optional[torch.Tensor]] = [None] * len(tiles)
        groups: dict[tuple, list[int]] = {}
        for i, (pixels, _) in enumerate(tiles):
            groups.setdefault(tuple(pixels.shape), []).append(i)
        for idx in groups.values():
            pixels = torch.stack([tiles[i][0] for i in idx]).to(device=ref.device, dtype=ref.dtype)
            masks = [tiles[i][1] for i in idx]
            if all(m is None for m in masks):
                mask = None
            else:
                full = torch.ones(pixels.shape[-2:], dtype=torch.bool)
                mask = torch.stack([full if m is None else m for m in masks]).to(ref.device)
            for i, f in zip(idx, self.tile_features(pixels, mask)):
                out[i] = f
        return out

    def tile_features(self, pixels: torch.Tensor, pixel_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[n, 3, H, W]`` tiles (and their pixel masks, True where the image is) -> ``[n, tokens, hidden]``.
        A patch takes part when any of its pixels does, as in transformers."""
        p = self.patch_size
        if pixel_mask is None:
            patch_mask = torch.ones(pixels.shape[0], pixels.shape[2] // p, pixels.shape[3] // p,
                                    dtype=torch.bool, device=pixels.device)
        else:
            patch_mask = pixel_mask.unfold(1, p, p).unfold(2, p, p).sum(dim=(-1, -2)) > 0
        hidden = self.vision_model(pixel_values=pixels, patch_attention_mask=patch_mask).last_hidden_state
        return self.connector(hidden)


class Idefics3Family(ModelFamily):
    architectures = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    accepts_images = True
    image_placeholder = "<image>"  # for built-in chat templates

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return decoder_tp_shape(path)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_processor = self._load_image_processor()
        c = self.hf_config
        self.image_seq_len = self._image_seq_len()
        tile = self.image_processor.max_image_size["longest_edge"]
        per_tile = (tile // c.vision_config.patch_size) ** 2 // c.scale_factor ** 2
        if per_tile != self.image_seq_len:
            raise ValueError(f"image_seq_len={self.image_seq_len} (processor_config.json) but a {tile}px tile "
                             f"(max_image_size) gives {per_tile} features with patch_size="
                             f"{c.vision_config.patch_size} and scale_factor={c.scale_factor}")
        tok = self.tokenizer
        if c.model_type == "smolvlm":  # SmolVLMProcessor takes the names from the tokenizer when it has them
            self.marker = {k: getattr(tok, k, None) or d for k, d in (
                ("fake_image_token", "<fake_token_around_image>"), ("image_token", "<image>"),
                ("global_image_token", "<global-img>"))}
        else:
            self.marker = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                           "global_image_token": "<global-img>"}
        tokenizer_id = tok.convert_tokens_to_ids(self.marker["image_token"])
        if tokenizer_id != self.image_token_id:
            raise ValueError(f"config.json image_token_id={self.image_token_id} but the tokenizer has "
                             f"{self.marker['image_token']!r} as id {tokenizer_id}")
        self._expansions: dict[tuple[int, int], list[int]] = {}  # image prompt ids per split

    def _load_image_processor(self):
        from transformers import Idefics3ImageProcessorPil, SmolVLMImageProcessorPil

        cls = SmolVLMImageProcessorPil if self.hf_config.model_type == "smolvlm" else Idefics3ImageProcessorPil
        return load_image_processor(self.path, cls)

    def _image_seq_len(self) -> int:
        """``<image>`` tokens per tile: processor_config.json's ``image_seq_len``, else what the
        processors compute from the config."""
        file = os.path.join(self.path, "processor_config.json")
        if os.path.isfile(file):
            with open(file) as f:
                value = json.load(f).get("image_seq_len")
            if value:
                return int(value)
        v = self.hf_config.vision_config
        return int(((v.image_size // v.patch_size) ** 2) / (self.hf_config.scale_factor ** 2))

    def build_model(self):
        return Idefics3ForConditionalGeneration(self.hf_config, self.session_len, self.tp)

    # ---- images -> tiles and prompt text ---------------------------------------------------
    def image_inputs(self, image):
        """(placeholder tokens, (rows, cols, tiles)) for one image; ``tiles``: ``(pixels, mask)`` per
        tile, row by row, the global view last."""
        out = self.image_processor(images=[[image]], return_row_col_info=True, return_tensors="pt")
        rows, cols = int(out["rows"][0][0]), int(out["cols"][0][0])
        pixels = out["pixel_values"][0].to(self.dtype)
        masks = out["pixel_attention_mask"][0].bool() if "pixel_attention_mask" in out else [None] * len(pixels)
        n = rows * cols + 1 if rows or cols else 1
        if pixels.shape[0] != n:
            raise ValueError(f"the image processor made {pixels.shape[0]} tiles for a {rows}x{cols} split")
        tiles = [(px, None if m is None or bool(m.all()) else m) for px, m in zip(pixels, masks)]
        return n * self.image_seq_len, (rows, cols, tiles)

    def image_prompt(self, rows: int, cols: int) -> str:
        """The text transformers' processors put in place of one ``<image>``."""
        fake, img, glob = (self.marker[k] for k in ("fake_image_token", "image_token", "global_image_token"))
        image = img * self.image_seq_len
        if rows == 0 and cols == 0:
            return f"{fake}{glob}{image}{fake}"
        text = ""
        for r in range(rows):
            for c in range(cols):
                text += f"{fake}<row_{r + 1}_col_{c + 1}>{image}"
            text += "\n"
        return text + f"\n{fake}{glob}{image}{fake}"

    def _image(self, image) -> tuple[int, int, list, str]:
        """(rows, cols, tiles, key) of one image; precomputed embeddings are refused."""
        if isinstance(image, torch.Tensor):
            raise ValueError("precomputed image embeddings are not accepted by Idefics3 / SmolVLM models: the "
                             "prompt needs each image's split into tiles; pass the image itself")
        _, (rows, cols, tiles) = self.image_inputs(image)
        return rows, cols, tiles, f"{image_hash(image)}:{rows}x{cols}"

    def encode(self, conversation: list[dict], tools: Optional[list] = None) -> PromptInputs:
        """As the processors do: the chat template's text, each image token replaced by the image's
        prompt text, tokenized whole."""
        parts = [p for m in conversation for p in m["content"]]
        images = [p["image"] for p in parts if p["type"] == "image"]
        if not images or any(p["type"] == "video" for p in parts) or any(isinstance(i, torch.Tensor) for i in images):
            return super().encode(conversation, tools)  # text only, or refused there
        text = self.chat_template.render(conversation, self.image_placeholder, add_generation_prompt=True, tools=tools)
        pieces = text.split(self.marker["image_token"])
        if len(pieces) - 1 != len(images):
            raise ValueError(f"the prompt has {len(pieces) - 1} image placeholder(s) but {len(images)} image(s) "
                             f"were given")
        inputs = [self._image(img) for img in images]
        text = pieces[0] + "".join(self.image_prompt(rows, cols) + piece
                                   for (rows, cols, _, _), piece in zip(inputs, pieces[1:]))
        adds_bos = getattr(self.chat_template, "adds_bos", False)
        return self._with_tiles(self.tokenizer(text, add_special_tokens=not adds_bos)["input_ids"], inputs)

    def _expand_images(self, ids: list[int], images: list) -> PromptInputs:
        """Token ids with one image token per image (a raw prompt): each becomes the ids of the image's
        prompt text, tokenized alone (its ends are special tokens: the same ids as in context)."""
        tok = self.image_token_id
        found = ids.count(tok)
        if found != len(images):
            raise ValueError(f"the prompt has {found} image placeholder(s) but {len(images)} image(s) were given")
        inputs = [self._image(img) for img in images]
        out: list[int] = []
        it = iter(inputs)
        for t in ids:
            if t != tok:
                out.append(t)
                continue
            rows, cols, _, _ = next(it)
            if (rows, cols) not in self._expansions:
                self._expansions[(rows, cols)] = self.tokenizer(self.image_prompt(rows, cols),
                                                                add_special_tokens=False)["input_ids"]
            out.extend(self._expansions[(rows, cols)])
        return self._with_tiles(out, inputs)

    def _with_tiles(self, ids: list[int], inputs: list) -> PromptInputs:
        """One MMItem per tile: the runs of image tokens in ``ids``, in order, are the tiles of ``inputs``."""
        tok, n = self.image_token_id, self.image_seq_len
        starts = [i for i, t in enumerate(ids) if t == tok and (i == 0 or ids[i - 1] != tok)]
        tiles = [(key, j, tile) for _, _, ts, key in inputs for j, tile in enumerate(ts)]
        if len(starts) != len(tiles) or any(ids[s:s + n] != [tok] * n or ids[s + n:s + n + 1] == [tok] for s in starts):
            raise ValueError(f"the prompt's image tokens do not form {len(tiles)} runs of {n} (one per tile of its "
                             f"images); check the tokenizer's image tokens and the text around the images")
        items = [MMItem(s, n, f"{key}:{j}", tile) for s, (key, j, tile) in zip(starts, tiles)]
        return PromptInputs(ids, items)
