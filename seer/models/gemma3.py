"""Gemma 3 in transformers layout: ``Gemma3ForCausalLM`` (text) and
``Gemma3ForConditionalGeneration`` (SigLIP tower + pooled projector + the same decoder).

What differs from the Llama-style decoder (``llama.py``):
- RMSNorm scales by ``1 + weight``; every layer has four norms (before and after attention
  and MLP) and per-head q/k norms; the attention scale is ``query_pre_attn_scalar ** -0.5``;
  the MLP is GELU(tanh)-gated; embeddings are multiplied by ``sqrt(hidden_size)``.
- Layers are "sliding_attention" (a local window, its own rope base) or "full_attention"
  (global rope, possibly scaled); sliding layers read the step's ``meta.local`` metadata
  (the runner builds it from ``local_window``). The KV cache still keeps every token.
- An image is ``mm_tokens_per_image`` soft tokens (the tower's patch grid average-pooled),
  wrapped as ``\\n\\n<start_of_image>...<end_of_image>\\n\\n``; its tokens attend to each other
  both ways (``MMItem.bidirectional``: the scheduler keeps an image in one prefill chunk and
  the runner's prefill masks open the block), as transformers' masks do.
- Tensor parallelism splits the layers as ``llama.DecoderLayer`` does (heads, KV heads, MLP
  width; the q/k norms are per head, so each rank norms its own heads); the partial sums of
  ``o_proj`` and ``down_proj`` are all-reduced before their post-norms. The embedding and the LM
  head are split by vocabulary as the Llama-style decoder's (``layers/vocab.py``; the embedding
  is scaled after its all-reduce, the logits soft-capped once gathered); the vision tower is
  whole on every rank.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.parallel import SINGLE, TPGroup
from ..engine.request import PromptInputs
from ..layers.attention import AttentionMetadata, paged_attention
from ..layers.linear import Linear
from ..layers.rotary import RotaryEmbedding, apply_rotary
from ..layers.vocab import ParallelLMHead, VocabParallelEmbedding, finish_vocab
from .base import ModelFamily, decoder_tp_shape, load_image_processor
from .llama import DecoderSpec, LlamaForCausalLM
from .vlm import VisionLanguageModel


class GemmaRMSNorm(nn.Module):
    """RMSNorm with a ``1 + weight`` scale, computed in fp32 and cast back (transformers' order)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps, self.shape = eps, (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(x.float(), self.shape, None, self.eps) * (1.0 + self.weight.float())
        return out.type_as(x)


def rope_for_layer_type(c, layer_type: str, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention scaling of one layer type, as transformers computes them."""
    params = c.rope_parameters[layer_type]
    kind = params.get("rope_type", "default")
    if kind == "default":
        base = params["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv, scaling = ROPE_INIT_FUNCTIONS[kind](c, "cpu", layer_type=layer_type)
    return inv.float(), float(scaling)


class Gemma3DecoderLayer(nn.Module):
    """One Gemma 3 layer; with ``tp`` ranks it holds this rank's heads (its KV heads, replicated
    when there are fewer than ranks) and MLP columns, as ``llama.DecoderLayer`` does: the partial
    sums of ``o_proj`` and ``down_proj`` are all-reduced before their post-norms."""

    def __init__(self, c, sliding: bool, s: DecoderSpec, tp: TPGroup = SINGLE):
        super().__init__()
        self.sliding, self.tp = sliding, tp
        self.heads, self.kv_heads = s.local_heads, s.local_kv_heads
        self.head_dim = s.head_dim
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.scale = c.query_pre_attn_scalar ** -0.5
        self.inter = s.local_intermediate
        eps = c.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(c.hidden_size, eps)
        self.qkv_proj = Linear(c.hidden_size, self.q_size + 2 * self.kv_size, bias=c.attention_bias)
        self.o_proj = Linear(self.q_size, c.hidden_size, bias=c.attention_bias)
        self.q_norm = GemmaRMSNorm(self.head_dim, eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, eps)
        self.post_attention_layernorm = GemmaRMSNorm(c.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(c.hidden_size, eps)
        self.gate_up_proj = Linear(c.hidden_size, 2 * self.inter, bias=False)
        self.down_proj = Linear(self.inter, c.hidden_size, bias=False)
        self.post_feedforward_layernorm = GemmaRMSNorm(c.hidden_size, eps)

    def shard(self, param: str, shard) -> tuple[int, int]:
        if param.startswith("qkv_proj"):
            return {"q": (0, self.q_size), "k": (self.q_size, self.kv_size),
                    "v": (self.q_size + self.kv_size, self.kv_size)}[shard]
        return (0, self.inter) if shard == 0 else (self.inter, self.inter)

    def _reduced(self, proj: Linear, x: torch.Tensor) -> torch.Tensor:
        """``proj(x)`` summed over the ranks (each holds some input columns); a bias is added once."""
        if self.tp.size == 1 or proj.bias is None:
            return self.tp.all_reduce(proj(x))
        return self.tp.all_reduce(proj(x, add_bias=False)) + proj.bias

    def forward(self, x, rope, kv_cache, meta: AttentionMetadata):
        h = self.input_layernorm(x)
        q, k, v = self.qkv_proj(h).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.view(-1, self.heads, self.head_dim))
        k = self.k_norm(k.view(-1, self.kv_heads, self.head_dim))
        q, k = apply_rotary(q, k, *rope)
        o = paged_attention(q, k, v.view(-1, self.kv_heads, self.head_dim), kv_cache[0], kv_cache[1],
                            meta.local if self.sliding else meta, self.scale)
        x = x + self.post_attention_layernorm(self._reduced(self.o_proj, o.view(-1, self.q_size)))
        gate, up = self.gate_up_proj(self.pre_feedforward_layernorm(x)).chunk(2, dim=-1)
        mlp = self._reduced(self.down_proj, F.gelu(gate, approximate="tanh") * up)
        return x + self.post_feedforward_layernorm(mlp)


class Gemma3TextModel(LlamaForCausalLM):
    """The Gemma 3 decoder. Weight loading (fusing q/k/v and gate/up, and with ``tp`` ranks taking
    this rank's rows and columns, and its rows of the vocabulary) is ``LlamaForCausalLM``'s."""

    def __init__(self, c, max_positions: int, tp: TPGroup = SINGLE):
        nn.Module.__init__(self)
        if getattr(c, "attn_logit_softcapping", None):
            raise ValueError("attn_logit_softcapping is not supported (Gemma 2 style); Gemma 3 has none")
        self.spec = dataclasses.replace(DecoderSpec.from_hf(c), tp_rank=tp.rank, tp_size=tp.size)
        self.spec.tie_word_embeddings = bool(getattr(c, "tie_word_embeddings", True))
        self.hf_text_config = c
        self.max_positions = max_positions
        self.mrope_section = None
        self.layer_types = list(c.layer_types)
        self.local_window = c.sliding_window if "sliding_attention" in self.layer_types else None
        self.embed_tokens = VocabParallelEmbedding(c.vocab_size, c.hidden_size, tp)
        self.layers = nn.ModuleList(Gemma3DecoderLayer(c, t == "sliding_attention", self.spec, tp)
                                    for t in self.layer_types)
        self.norm = GemmaRMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = ParallelLMHead(c.hidden_size, c.vocab_size, tp)
        self.softcap = getattr(c, "final_logit_softcapping", None)
        self.rotary: dict[str, RotaryEmbedding] = {}

    def finish_init(self) -> None:
        finish_vocab(self.embed_tokens, self.lm_head, self.spec.tie_word_embeddings)
        device = self.embed_tokens.weight.device
        for t in set(self.layer_types):
            inv, scaling = rope_for_layer_type(self.hf_text_config, t, self.spec.head_dim)
            self.rotary[t] = RotaryEmbedding(inv, scaling, self.max_positions).to(device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.masked_fill(input_ids >= self.spec.vocab_size, 0)  # image placeholders past the vocab
        return self.embed_tokens(ids) * torch.tensor(self.spec.hidden_size ** 0.5, dtype=self.embed_tokens.weight.dtype)

    def forward(self, embeds, positions, kv_caches, meta: AttentionMetadata):
        x = embeds
        ropes = {t: r(positions, x.dtype) for t, r in self.rotary.items()}
        for layer, t, kv in zip(self.layers, self.layer_types, kv_caches):
            x = layer(x, ropes[t], kv, meta)
        return self.norm(x)

    def decode_logits(self, input_ids, positions, kv_caches, meta) -> None:
        """No whole native step here (scaled embeddings, two rotary tables, soft-capped logits):
        the runner takes ``forward``."""
        return None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head.logits(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def map_weight(self, name: str, w: torch.Tensor):
        if name.startswith("model."):
            name = name[len("model."):]
        for proj, shard in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
            if f".self_attn.{proj}." in name:
                return [(name.replace(f"self_attn.{proj}", "qkv_proj"), shard, w)]
        for proj, shard in (("gate_proj", 0), ("up_proj", 1)):
            if f".mlp.{proj}." in name:
                return [(name.replace(f"mlp.{proj}", "gate_up_proj"), shard, w)]
        return [(name.replace("self_attn.", "").replace("mlp.", ""), None, w)]


class Gemma3Projector(nn.Module):
    """Patch grid -> ``mm_tokens_per_image`` tokens: average pooling, soft-embedding norm, projection."""

    def __init__(self, c):
        super().__init__()
        v = c.vision_config
        self.mm_input_projection_weight = nn.Parameter(torch.empty(v.hidden_size, c.text_config.hidden_size))
        self.mm_soft_emb_norm = GemmaRMSNorm(v.hidden_size, v.layer_norm_eps)
        self.side = v.image_size // v.patch_size
        self.kernel = self.side // int(c.mm_tokens_per_image ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d = x.shape
        grid = x.transpose(1, 2).reshape(b, d, self.side, self.side)
        pooled = F.avg_pool2d(grid, self.kernel, self.kernel).flatten(2).transpose(1, 2)
        return (self.mm_soft_emb_norm(pooled) @ self.mm_input_projection_weight).type_as(x)


# checkpoint prefix -> ours (transformers 5 names, then 4.x names)
_PREFIXES = (("model.language_model.", "lm"), ("language_model.model.", "lm"), ("lm_head.", "head"),
             ("language_model.lm_head.", "head"), ("model.vision_tower.", "vision"), ("vision_tower.", "vision"),
             ("model.multi_modal_projector.", "projector"), ("multi_modal_projector.", "projector"))


class Gemma3ForConditionalGeneration(VisionLanguageModel):
    def __init__(self, hf_config, max_positions: int, tp: TPGroup = SINGLE):
        super().__init__()
        self.hf_config = hf_config
        self.language_model = Gemma3TextModel(hf_config.text_config, max_positions, tp)
        self.local_window = self.language_model.local_window
        self.multi_modal_projector = Gemma3Projector(hf_config)
        self.vision_tower = None  # built in finish_init, outside the meta device
        self._vision_state: dict[str, torch.Tensor] = {}

    def load_weights(self, weights) -> None:
        projector = {}

        def lm_weights():
            for name, w in weights:
                for old, kind in _PREFIXES:
                    if name.startswith(old):
                        rest = name[len(old):]
                        break
                else:
                    raise ValueError(f"unexpected tensor {name!r} in a Gemma 3 checkpoint")
                if kind == "vision":
                    self._vision_state[rest.removeprefix("vision_model.")] = w
                elif kind == "projector":
                    projector[rest] = w
                else:
                    yield ("lm_head." if kind == "head" else "model.") + rest, w

        self.language_model.load_weights(lm_weights())
        self.multi_modal_projector.load_state_dict(projector, strict=True)

    def finish_init(self) -> None:
        from transformers import AutoModel

        self.language_model.finish_init()
        ref = self.language_model.embed_tokens.weight
        tower = AutoModel.from_config(self.hf_config.vision_config)
        missing, unexpected = tower.load_state_dict(self._vision_state, strict=False)
        missing = [m for m in missing if not m.startswith("head.")]  # SigLIP's pooling head is unused
        if missing:
            raise ValueError(f"the checkpoint's vision tower misses weights: {missing[:8]}")
        self.vision_tower = tower.to(device=ref.device, dtype=ref.dtype).eval()
        self._vision_state = {}

    def encode_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        ref = self.language_model.embed_tokens.weight
        hidden = self.vision_tower(pixel_values=torch.stack(images).to(ref.device)).last_hidden_state
        return list(self.multi_modal_projector(hidden))


class Gemma3TextFamily(ModelFamily):
    architectures = ("Gemma3ForCausalLM",)

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return decoder_tp_shape(path)

    def build_model(self):
        return Gemma3TextModel(self.hf_config, self.session_len, self.tp)


class Gemma3Family(ModelFamily):
    architectures = ("Gemma3ForConditionalGeneration",)
    accepts_images = True

    @classmethod
    def tp_shape(cls, path: str, raw: dict, tp: int) -> tuple[int, int, int]:
        return decoder_tp_shape(path)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_processor = load_image_processor(self.path)
        tok = self.tokenizer
        self.boi, self.eoi = tok.convert_ids_to_tokens(self.hf_config.boi_token_id), \
            tok.convert_ids_to_tokens(self.hf_config.eoi_token_id)
        self.tokens_per_image = self.hf_config.mm_tokens_per_image

    @property
    def image_placeholder(self) -> str:
        return self.boi

    def build_model(self):
        return Gemma3ForConditionalGeneration(self.hf_config, self.session_len, self.tp)

    def image_inputs(self, image):
        pixels = self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return self.tokens_per_image, pixels

    def encode(self, conversation: list[dict], tools: Optional[list] = None) -> PromptInputs:
        """Each ``<start_of_image>`` the template writes becomes the processor's full image sequence
        (one image token here, expanded to the image's run by ``_expand_images``)."""
        images = [p["image"] for m in conversation for p in m["content"] if p["type"] == "image"]
        text = self.chat_template.render(conversation, self.image_placeholder, add_generation_prompt=True, tools=tools)
        image_text = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        text = text.replace(self.boi, f"\n\n{self.boi}{image_text}{self.eoi}\n\n")
        adds_bos = getattr(self.chat_template, "adds_bos", False)
        ids = self.tokenizer(text, add_special_tokens=not adds_bos)["input_ids"]
        if not images and self.image_token_id not in ids:
            return PromptInputs(ids)
        out = self._expand_images(ids, images)
        for item in out.mm_items:
            item.bidirectional = True
        return out
