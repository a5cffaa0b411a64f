"""The Llama-style decoder: Llama, Mistral, Qwen2, Qwen3 and InternLM2 share this file.

Their differences are a few switches (attention bias, per-head q/k norm, tied
embeddings) and the weight names of the checkpoint. Projections are fused at load
time (q/k/v into one matmul, gate/up into another) so a step runs few, large matmuls
over all of its packed tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..engine.parallel import SINGLE, TPGroup
from ..layers.attention import AttentionMetadata, paged_attention
from ..layers.decode_stack import DecodeStack
from ..layers.linear import Linear
from ..layers.norm import RMSNorm
from ..layers.vocab import ParallelLMHead, VocabParallelEmbedding, finish_vocab
from ..layers.rotary import MRotaryEmbedding, RotaryEmbedding, apply_rotary, rope_inv_freq


# Model types whose q/k/v projections always carry a bias (Qwen2 and the Qwen2-VL decoders).
_QKV_BIAS = ("qwen2", "qwen2_vl_text", "qwen2_5_vl_text")


@dataclass
class DecoderSpec:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    qkv_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before rotary
    tie_word_embeddings: bool = False
    sliding_window: Optional[int] = None
    max_position_embeddings: int = 4096
    tp_rank: int = 0  # tensor parallelism: this rank holds its share of heads and MLP width
    tp_size: int = 1

    @property
    def local_heads(self) -> int:
        return self.num_heads // self.tp_size

    @property
    def local_kv_heads(self) -> int:
        """KV heads split over the ranks, or, when there are fewer than ranks, one each (replicated)."""
        return max(1, self.num_kv_heads // self.tp_size)

    @property
    def first_kv_head(self) -> int:
        return self.tp_rank * self.num_kv_heads // self.tp_size if self.num_kv_heads < self.tp_size \
            else self.tp_rank * self.local_kv_heads

    @property
    def local_intermediate(self) -> int:
        return self.intermediate_size // self.tp_size

    @classmethod
    def from_hf(cls, c) -> "DecoderSpec":
        heads = c.num_attention_heads
        model_type = getattr(c, "model_type", "")
        window = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", True) else None
        return cls(
            hidden_size=c.hidden_size,
            num_layers=c.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
            intermediate_size=c.intermediate_size,
            vocab_size=c.vocab_size,
            rms_norm_eps=c.rms_norm_eps,
            qkv_bias=bool(getattr(c, "attention_bias", False)) or model_type in _QKV_BIAS,
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
            sliding_window=window if model_type in ("mistral", "qwen2", "qwen3") else None,
            max_position_embeddings=getattr(c, "max_position_embeddings", 4096),
        )


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a fused gate/up projection's output (gate the first half)."""
    if gate_up.device.type == "cpu" and gate_up.dtype == torch.float32 and kernels.available():
        return kernels.silu_mul(gate_up.contiguous())  # the kernel the native decode step uses too
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class DecoderLayer(nn.Module):
    """One decoder layer; with ``tp`` ranks it holds this rank's heads and MLP columns, and the
    outputs of ``o_proj`` and ``down_proj`` (partial sums) are all-reduced."""

    def __init__(self, s: DecoderSpec, tp: TPGroup = SINGLE):
        super().__init__()
        self.s, self.tp = s, tp
        self.q_size, self.kv_size = s.local_heads * s.head_dim, s.local_kv_heads * s.head_dim
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.qkv_proj = Linear(s.hidden_size, self.q_size + 2 * self.kv_size, bias=s.qkv_bias)
        self.o_proj = Linear(self.q_size, s.hidden_size, bias=False)
        if s.qk_norm:
            self.q_norm = RMSNorm(s.head_dim, s.rms_norm_eps)
            self.k_norm = RMSNorm(s.head_dim, s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.gate_up_proj = Linear(s.hidden_size, 2 * s.local_intermediate, bias=False)
        self.down_proj = Linear(s.local_intermediate, s.hidden_size, bias=False)

    def shard(self, param: str, shard) -> tuple[int, int]:
        """Row range of a fused parameter that one checkpoint tensor fills."""
        if param.startswith("qkv_proj"):
            return {"q": (0, self.q_size), "k": (self.q_size, self.kv_size),
                    "v": (self.q_size + self.kv_size, self.kv_size)}[shard]
        n = self.s.local_intermediate
        return (0, n) if shard == 0 else (n, n)

    def forward(self, x, rope, kv_cache, meta: AttentionMetadata):
        s = self.s
        h = self.input_layernorm(x)
        q, k, v = self.qkv_proj(h).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, s.local_heads, s.head_dim)
        k = k.view(-1, s.local_kv_heads, s.head_dim)
        v = v.view(-1, s.local_kv_heads, s.head_dim)
        if s.qk_norm:  # over [tokens * heads, head_dim] rows: the native kernel's shape, as the decode step's
            q = self.q_norm(q.reshape(-1, s.head_dim)).view(q.shape)
            k = self.k_norm(k.reshape(-1, s.head_dim)).view(k.shape)
        q, k = apply_rotary(q, k, *rope)
        o = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, s.head_dim ** -0.5)
        x = x + self.tp.all_reduce(self.o_proj(o.view(-1, self.q_size)))
        return x + self.tp.all_reduce(self.down_proj(silu_mul(self.gate_up_proj(self.post_attention_layernorm(x)))))


class LlamaForCausalLM(nn.Module):
    """A decoder over packed tokens. Its parameter names follow transformers' minus ``model.``."""

    def __init__(self, hf_text_config, max_positions: int, tp: TPGroup = SINGLE):
        super().__init__()
        self.spec = s = dataclasses.replace(DecoderSpec.from_hf(hf_text_config), tp_rank=tp.rank, tp_size=tp.size)
        self.hf_text_config = hf_text_config
        self.max_positions = max_positions
        self.embed_tokens = VocabParallelEmbedding(s.vocab_size, s.hidden_size, tp)
        self.layers = nn.ModuleList(DecoderLayer(s, tp) for _ in range(s.num_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.lm_head = ParallelLMHead(s.hidden_size, s.vocab_size, tp)
        self.rotary: Optional[nn.Module] = None
        self._stack: Optional[DecodeStack] = None  # the native decode step's description, made on first use
        self._stack_tried = False
        params = getattr(hf_text_config, "rope_parameters", None) or {}
        self.mrope_section = params.get("mrope_section")  # M-RoPE (Qwen2-VL): positions are [3, T]

    def finish_init(self) -> None:
        """Build non-persistent state on the model's device; call after weights are loaded."""
        finish_vocab(self.embed_tokens, self.lm_head, self.spec.tie_word_embeddings)
        inv, scaling = rope_inv_freq(self.hf_text_config, self.spec.head_dim)
        device = self.embed_tokens.weight.device
        if self.mrope_section:
            self.rotary = MRotaryEmbedding(inv, scaling, self.mrope_section).to(device)
        else:
            self.rotary = RotaryEmbedding(inv, scaling, self.max_positions).to(device)

    # ---- forward -----------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, kv_caches, meta: AttentionMetadata):
        x = embeds
        rope = self.rotary(positions, x.dtype)
        stack = self._decode_stack(kv_caches) if x.device.type == "cpu" else None
        if stack is not None and stack.applies(x, meta):
            return self.norm(stack(x, rope, meta))
        for layer, kv in zip(self.layers, kv_caches):
            x = layer(x, rope, kv, meta)
        return self.norm(x)

    def _decode_stack(self, kv_caches) -> Optional[DecodeStack]:
        """The native decode step over these caches, where it applies to this model's layers."""
        if self._stack is not None and self._stack.fits(kv_caches):
            return self._stack
        if self._stack is None and self._stack_tried:
            return None
        self._stack_tried = True
        self._stack = DecodeStack.build(list(self.layers), self.spec, kv_caches,
                                        (self.embed_tokens, self.rotary, self.norm, self.lm_head)) \
            if all(type(m) is DecoderLayer for m in self.layers) else None
        return self._stack

    def decode_logits(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches,
                      meta: AttentionMetadata) -> Optional[torch.Tensor]:
        """The logits of a pure decode step straight from its token ids, in one native call
        (``DecodeStack.logits``), where that applies; None where the step needs ``forward``."""
        stack = self._decode_stack(kv_caches) if input_ids.device.type == "cpu" else None
        if stack is None or stack.ends is None or not stack.applies_to(input_ids.shape[0], meta):
            return None
        return stack.logits(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.logits(hidden)

    # ---- weights -------------------------------------------------------------------
    def map_weight(self, name: str, w: torch.Tensor):
        """transformers' name -> [(our parameter, shard or None, tensor)]; [] to skip."""
        if name.startswith("model."):
            name = name[len("model."):]
        if "rotary_emb" in name:
            return []
        for proj, shard in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
            if f".self_attn.{proj}." in name:
                return [(name.replace(f"self_attn.{proj}", "qkv_proj"), shard, w)]
        for proj, shard in (("gate_proj", 0), ("up_proj", 1)):
            if f".mlp.{proj}." in name:
                return [(name.replace(f"mlp.{proj}", "gate_up_proj"), shard, w)]
        name = name.replace("self_attn.", "").replace("mlp.", "")
        return [(name, None, w)]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.named_parameters())
        loaded = set()
        for ckpt_name, tensor in weights:
            for name, shard, w in self.map_weight(ckpt_name, tensor):
                if name not in params:
                    raise ValueError(f"checkpoint tensor {ckpt_name!r} maps to unknown parameter {name!r}")
                p = params[name]
                w = self._tp_slice(name, shard, w)
                if shard is None:
                    target = p.data.narrow(0, 0, w.shape[0]) if name in _VOCAB_PARAMS else p.data
                else:
                    layer = self.layers[int(name.split(".")[1])]
                    start, size = layer.shard(name.split(".")[2], shard)
                    target = p.data.narrow(0, start, size)
                if target.shape != w.shape:
                    raise ValueError(f"checkpoint tensor {ckpt_name!r} has shape {tuple(w.shape)}, "
                                     f"expected {tuple(target.shape)}")
                target.copy_(w)
                loaded.add((name, shard))
        names = {n for n, _ in loaded}
        missing = [n for n in params if n not in names and not (n == "lm_head.weight" and self.spec.tie_word_embeddings)]
        if missing:
            raise ValueError(f"checkpoint is missing weights: {missing[:8]}{' ...' if len(missing) > 8 else ''}")


    def _tp_slice(self, name: str, shard, w: torch.Tensor) -> torch.Tensor:
        """This rank's part of a checkpoint tensor: q/k/v and gate/up rows, o and down columns."""
        s = self.spec
        if s.tp_size == 1:
            return w
        hd, r = s.head_dim, s.tp_rank
        if shard == "q":
            return w.narrow(0, r * s.local_heads * hd, s.local_heads * hd)
        if shard in ("k", "v"):
            return w.narrow(0, s.first_kv_head * hd, s.local_kv_heads * hd)
        if shard in (0, 1):
            return w.narrow(0, r * s.local_intermediate, s.local_intermediate)
        if name.endswith("o_proj.weight"):
            return w.narrow(1, r * s.local_heads * hd, s.local_heads * hd)
        if name.endswith("down_proj.weight"):
            return w.narrow(1, r * s.local_intermediate, s.local_intermediate)
        if name in _VOCAB_PARAMS:
            return self.embed_tokens.shard.slice(w)
        return w


_VOCAB_PARAMS = ("embed_tokens.weight", "lm_head.weight")  # split by vocabulary rows (layers/vocab.py)


def internlm2_to_llama_config(raw: dict):
    """InternLM2's config.json (remote code, no transformers class) as a LlamaConfig."""
    from transformers import LlamaConfig

    rope_theta = raw.get("rope_theta", 10000.0)
    scaling = raw.get("rope_scaling") or None
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in ("linear", "dynamic"):
            raise ValueError(f"InternLM2 rope_scaling type {kind!r} is not supported; accepted: linear, dynamic")
        rope = {"rope_type": kind, "rope_theta": rope_theta, "factor": scaling["factor"]}
    return LlamaConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"], num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6), max_position_embeddings=raw.get("max_position_embeddings", 2048),
        rope_parameters=rope, attention_bias=bool(raw.get("bias", False)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id"), eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
    )


class InternLM2ForCausalLM(LlamaForCausalLM):
    """InternLM2 in its published layout: a Llama with packed ``wqkv`` and other names."""

    _RENAMES = (("tok_embeddings", "embed_tokens"), ("attention.wo", "o_proj"),
                ("feed_forward.w2", "down_proj"), ("attention_norm", "input_layernorm"),
                ("ffn_norm", "post_attention_layernorm"))

    def map_weight(self, name: str, w: torch.Tensor):
        if name.startswith("model."):
            name = name[len("model."):]
        if name == "output.weight":
            return [("lm_head.weight", None, w)]
        if "attention.wqkv" in name:
            s = self.spec
            group = s.num_heads // s.num_kv_heads
            packed = w.view(s.num_kv_heads, group + 2, s.head_dim, *w.shape[1:])
            target = name.replace("attention.wqkv", "qkv_proj")
            q = packed[:, :group].reshape(-1, *w.shape[1:])
            k = packed[:, group].reshape(-1, *w.shape[1:])
            v = packed[:, group + 1].reshape(-1, *w.shape[1:])
            return [(target, "q", q), (target, "k", k), (target, "v", v)]
        for proj, shard in (("feed_forward.w1", 0), ("feed_forward.w3", 1)):
            if proj in name:
                return [(name.replace(proj, "gate_up_proj"), shard, w)]
        for old, new in self._RENAMES:
            name = name.replace(old, new)
        return [(name, None, w)]
