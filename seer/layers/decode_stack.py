"""A decode step through all of a Llama-style decoder's layers in one native call (CPU, fp32).

At batch 1 a decoder layer is a dozen small operations, and dispatching each from Python costs
about as much as reading the layer's int8 weights. ``DecodeStack`` describes the layers once
(the addresses of their weights, their KV caches and their kinds of linear layer) to
``kernels.decode_layers``, which runs the same kernels the Python path runs, in the same order,
for a whole step. A decode row gets bitwise the result of the layer-by-layer forward.

It applies to a pure decode step (one token per sequence, attention without a sliding-window
mask) of ``seer.models.llama.DecoderLayer``s on one rank, in fp32 on CPU, whose linear layers
are packed fp32 ``Linear``s (``seer.layers.linear.pack_linears``) or ``Int8Linear``/``Int4Linear``
(the native kernels' layouts). Anything else uses the Python path.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from .. import kernels
from .attention import AttentionMetadata
from .linear import Linear
from .quant import Int4Linear, Int8Linear
from .rotary import RotaryEmbedding
from .vocab import ParallelLMHead


class _Lin(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int64), ("w", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("K", ctypes.c_int64), ("N", ctypes.c_int64)]


class _Layer(ctypes.Structure):
    _fields_ = [("ln1", ctypes.c_void_p), ("ln2", ctypes.c_void_p), ("qn", ctypes.c_void_p),
                ("kn", ctypes.c_void_p), ("qkv", _Lin), ("o", _Lin), ("gate_up", _Lin), ("down", _Lin),
                ("kc", ctypes.c_void_p), ("vc", ctypes.c_void_p)]  # as seer_layer_t in decode_stack.c


class _Ends(ctypes.Structure):
    _fields_ = [("embed", ctypes.c_void_p), ("vocab", ctypes.c_int64), ("embed_panels", ctypes.c_int64),
                ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p), ("positions", ctypes.c_int64),
                ("norm", ctypes.c_void_p), ("head", _Lin)]  # as seer_ends_t in decode_stack.c


class _Dims(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int64) for f in ("hidden", "heads", "kv_heads", "head_dim", "inter", "block_size",
                                              "max_blocks", "bf16", "threads")] + [
        ("eps", ctypes.c_double), ("scale", ctypes.c_double)]


# LIN_* in decode_stack.c; an LM head not quantised is a Linear (its forward, then)
_KINDS = {Linear: 0, ParallelLMHead: 0, Int8Linear: 1, Int4Linear: 2}


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _lin(m) -> Optional[_Lin]:
    kind = _KINDS.get(type(m))
    if kind is None or (m.bias is not None and (m.bias.dtype != torch.float32 or not m.bias.is_contiguous())):
        return None
    if kind == 0:
        return None if m.packed is None else _Lin(0, m.packed.data_ptr(), None, _ptr(m.bias), m.in_features,
                                                  m.out_features)
    if m.in_features > kernels.INT_LINEAR_MAX_K or m.qweight.device.type != "cpu":
        return None
    return _Lin(kind, m.qweight.data_ptr(), m.scales.data_ptr(), _ptr(m.bias), m.in_features, m.out_features)


def _cache_key(kv_caches) -> list:
    return [(t.data_ptr(), t.shape, t.dtype) for pair in kv_caches for t in pair]


class DecodeStack:
    """The native description of ``layers`` over ``kv_caches``; ``build`` returns None where the
    native step does not apply to these layers at all."""

    def __init__(self, layers, spec, kv_caches, structs, ends: Optional[_Ends] = None, owners=()):
        self.nlayers = len(layers)
        self.structs = structs
        self.ends = ends  # the embedding, rotary tables, final norm and head, where the whole step applies
        self.vocab = ends.head.N if ends is not None else 0
        self._owners = owners  # keep the tensors ``ends`` points into alive
        self.kv_key = _cache_key(kv_caches)
        self._kv_list = kv_caches  # the runner's list: replaced, never changed in place, for a new pool
        k = kv_caches[0][0]  # the step's shapes; max_blocks and threads are set per call
        self.dims = _Dims(spec.hidden_size, spec.local_heads, spec.local_kv_heads, spec.head_dim,
                          spec.local_intermediate, k.shape[1], 0, int(k.dtype == torch.bfloat16), 0,
                          spec.rms_norm_eps, spec.head_dim ** -0.5)
        self._layers = layers  # the weights' addresses above stay valid while these live (the caches'
        # are checked by ``fits`` before every step: a new pool means a new description)

    @classmethod
    def build(cls, layers, spec, kv_caches, ends=None) -> Optional["DecodeStack"]:
        """``ends``: (embedding, rotary, final norm, LM head) modules, to describe a whole step from
        token ids to logits too, where they are of kinds the native step knows."""
        if (not kernels.available() or spec.tp_size != 1 or len(kv_caches) != len(layers)
                or not layers):
            return None
        dtypes = {t.dtype for pair in kv_caches for t in pair}
        if not dtypes <= {torch.float32, torch.bfloat16} or len(dtypes) != 1:
            return None
        structs = (_Layer * len(layers))()
        for s, layer, (kc, vc) in zip(structs, layers, kv_caches):
            norms = [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
            if spec.qk_norm:
                norms += [layer.q_norm.weight, layer.k_norm.weight]
            if any(w.dtype != torch.float32 or w.device.type != "cpu" or not w.is_contiguous() for w in norms):
                return None
            lins = [_lin(getattr(layer, n)) for n in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")]
            if any(x is None for x in lins) or kc.device.type != "cpu":
                return None
            s.ln1, s.ln2 = norms[0].data_ptr(), norms[1].data_ptr()
            if spec.qk_norm:
                s.qn, s.kn = norms[2].data_ptr(), norms[3].data_ptr()
            s.qkv, s.o, s.gate_up, s.down = lins
            s.kc, s.vc = kc.data_ptr(), vc.data_ptr()
        described = _ends(*ends, spec.head_dim) if ends is not None else None
        return cls(layers, spec, kv_caches, structs, *(described or (None, ())))

    def fits(self, kv_caches) -> bool:
        """Whether this description is of these caches (a new pool means a new description)."""
        return kv_caches is self._kv_list or _cache_key(kv_caches) == self.kv_key

    def applies(self, x: torch.Tensor, meta: AttentionMetadata) -> bool:
        """Whether this step is one the native call serves."""
        return x.dtype == torch.float32 and x.device.type == "cpu" and self.applies_to(x.shape[0], meta)

    @staticmethod
    def applies_to(rows: int, meta: AttentionMetadata) -> bool:
        """Whether a step of ``rows`` tokens with ``meta`` is a pure decode step without masks."""
        return (meta.num_decode == rows > 0 and not meta.prefills and meta.decode_mask is None
                and meta.local is None)

    def _for_step(self, meta: AttentionMetadata):
        """The dimensions, with this step's block-table width and thread count."""
        self.dims.max_blocks, self.dims.threads = meta.decode_blocks.shape[1], torch.get_num_threads()
        return self.dims

    def __call__(self, x: torch.Tensor, rope, meta: AttentionMetadata) -> torch.Tensor:
        return kernels.decode_layers(self.structs, self.nlayers, self._for_step(meta), x, *rope, meta)

    def logits(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """The whole step, token ids to logits, in one call (``self.ends`` must be set). After the
        weights stream through the caches every torch call costs tens of microseconds, so at
        batch 1 the embedding, rotary, norm and head calls this saves are a tenth of an int4 step."""
        return kernels.decode_step(self.structs, self.nlayers, self._for_step(meta), self.ends, ids, positions, meta,
                                   self.vocab)


def _ends(embed, rotary, norm, head, head_dim: int) -> Optional[tuple[_Ends, tuple]]:
    """The native description of a step's ends, and the tensors it points into; None where one of
    them is of a kind the native step does not know (the step then starts from embeddings)."""
    if type(rotary) is not RotaryEmbedding or embed.shard.tp.size != 1 or rotary.cos.shape[1] != head_dim:
        return None  # (the kernel reads head_dim values of each table row)
    lin = _lin(head.quantized if head.quantized is not None else head)
    table = embed.packed if embed.packed is not None else embed.weight
    tensors = (table, rotary.cos, rotary.sin, norm.weight)
    if lin is None or any(t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return None
    ends = _Ends(table.data_ptr(), embed.shard.rows, int(embed.packed is not None), rotary.cos.data_ptr(),
                 rotary.sin.data_ptr(), rotary.cos.shape[0], norm.weight.data_ptr(), lin)
    return ends, tensors
