"""Attention over the paged KV cache, for a step's packed tokens.

A step's tokens are packed without padding: first one query token for each
decoding sequence, then the chunks of the sequences that are prefilling. The KV
cache of one layer is a pair of tensors ``[num_blocks, block_size, kv_heads, head_dim]``;
slot ``block * block_size + i`` is the i-th token of a block. ``AttentionMetadata``
is built once per step by the runner and shared by every layer.

Decode queries are answered in one call: on CPU in fp32 by the native kernel that
reads keys and values in place from their blocks (``seer.kernels``); elsewhere by one
batched SDPA call over contexts gathered block by block into a reused workspace
(padded to the longest context, masked).
Each prefill chunk gets its own call: with no cached prefix it attends to its own
fresh keys (``is_causal``); otherwise it gathers its context and uses a mask.

Gathering into a preallocated workspace matters on CPU: a fresh tensor of tens of
MB per layer costs more in page faults than the copy itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from .. import kernels


@dataclass
class PrefillSpan:
    start: int  # first row of this sequence's chunk in the packed tokens
    end: int
    blocks: Optional[torch.Tensor] = None  # [nblk] blocks of its context, or None: no cached prefix
    mask: Optional[torch.Tensor] = None  # [1, 1, n, nblk * block_size] bool; None: causal over the chunk


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] flat slot where each new token's K/V is written
    num_decode: int = 0  # rows [0, num_decode) are single-token decode queries
    decode_blocks: Optional[torch.Tensor] = None  # [B, nblk] blocks of each decode context (padded)
    decode_lens: Optional[torch.Tensor] = None  # [B] context length of each decode query
    decode_mask: Optional[torch.Tensor] = None  # [B, 1, 1, nblk * block_size]; None: use the native kernel
    prefills: list[PrefillSpan] = field(default_factory=list)
    workspace: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # two [N, block_size, Hkv, D] buffers
    local: Optional["AttentionMetadata"] = None  # the same step for sliding-window layers (Gemma 3)


def _gather(cache: torch.Tensor, blocks: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    buf = work[: blocks.numel()]
    torch.index_select(cache, 0, blocks, out=buf)
    return buf


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` -> ``[T, Hq, D]``; writes k/v into the cache first."""
    hkv, d = k.shape[1], k.shape[2]
    if k_cache.dtype != k.dtype:  # a cache of lower precision (kv_cache_dtype): attention sees what it holds
        k, v = k.to(k_cache.dtype), v.to(k_cache.dtype)
    k_cache.view(-1, hkv, d).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, hkv, d).index_copy_(0, meta.slot_mapping, v)
    gqa = q.shape[1] != hkv
    nd = meta.num_decode
    if nd == q.shape[0] and meta.decode_mask is None and not meta.prefills:  # a decode step: no copies
        return kernels.paged_decode(q.contiguous(), k_cache, v_cache, meta.decode_blocks, meta.decode_lens, scale)
    out = torch.empty_like(q)
    if nd and meta.decode_mask is None:
        out[:nd] = kernels.paged_decode(q[:nd].contiguous(), k_cache, v_cache, meta.decode_blocks,
                                        meta.decode_lens, scale)
    elif nd:
        wk, wv = meta.workspace
        blocks = meta.decode_blocks.view(-1)
        keys = _gather(k_cache, blocks, wk).view(nd, -1, hkv, d).transpose(1, 2).to(q.dtype)
        vals = _gather(v_cache, blocks, wv).view(nd, -1, hkv, d).transpose(1, 2).to(q.dtype)
        o = F.scaled_dot_product_attention(q[:nd].unsqueeze(2), keys, vals, attn_mask=meta.decode_mask,
                                           scale=scale, enable_gqa=gqa)
        out[:nd] = o.squeeze(2)
    for p in meta.prefills:
        qs = q[p.start:p.end].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
        if p.blocks is None:
            keys, vals = k[p.start:p.end], v[p.start:p.end]
        else:
            wk, wv = meta.workspace
            keys = _gather(k_cache, p.blocks, wk).view(-1, hkv, d)
            vals = _gather(v_cache, p.blocks, wv).view(-1, hkv, d)
        keys = keys.transpose(0, 1).unsqueeze(0).to(q.dtype)
        vals = vals.transpose(0, 1).unsqueeze(0).to(q.dtype)
        o = F.scaled_dot_product_attention(qs, keys, vals, attn_mask=p.mask, is_causal=p.mask is None,
                                           scale=scale, enable_gqa=gqa)
        out[p.start:p.end] = o[0].transpose(0, 1)
    return out
