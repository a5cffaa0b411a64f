"""Rotary position embedding with a precomputed cos/sin table.

The inverse frequencies come from transformers' own rope functions, so every
rope type the reference supports (default, linear, llama3, yarn, ...) gives the
same angles. Positions are ``[T]`` for plain rope; M-RoPE families (Qwen2-VL) pass
``[3, T]`` (temporal, height, width) positions to ``MRotaryEmbedding``, whose section split
says which of the three drives each frequency.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels


def rope_inv_freq(hf_text_config, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the attention scaling factor, exactly as transformers computes them."""
    params = getattr(hf_text_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(hf_text_config, "rope_theta", 10000.0))
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return inv, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"rope_type {rope_type!r} is not supported; known: default, {sorted(ROPE_INIT_FUNCTIONS)}")
    inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_text_config, "cpu")
    return inv.float(), float(scaling)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, inv_freq: torch.Tensor, scaling: float, max_positions: int):
        super().__init__()
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos and sin for ``positions`` ``[T]``, shaped ``[T, 1, D]`` to broadcast over heads.

        Looked up once per step and shared by every layer.
        """
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


class MRotaryEmbedding(nn.Module):
    """Multimodal rope (Qwen2-VL): frequency ``i`` of the ``head_dim / 2`` turns with the temporal,
    height or width position as ``mrope_section`` says (sections taken in t, h, w order, cycling).

    Angles are computed per step in fp32 from the positions (no table: a video's temporal
    positions may run past the session length), exactly as transformers does.
    """

    def __init__(self, inv_freq: torch.Tensor, scaling: float, mrope_section):
        super().__init__()
        if sum(mrope_section) != inv_freq.numel():
            raise ValueError(f"mrope_section {list(mrope_section)} must sum to head_dim / 2 = {inv_freq.numel()}")
        axis = torch.cat([torch.full((n,), i % 3, dtype=torch.long) for i, n in enumerate(mrope_section)])
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.register_buffer("axis", axis, persistent=False)
        self.scaling = scaling

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos and sin ``[T, 1, D]`` for positions ``[3, T]`` (or ``[T]``: the same on all axes)."""
        if positions.dim() == 1:
            freqs = positions[:, None].float() * self.inv_freq
        else:
            freqs = positions.t()[:, self.axis].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q ``[T, Hq, D]``, k ``[T, Hk, D]``; returns both rotated. On CPU in fp32, one native call
    each (bitwise the same as the operators)."""
    if q.device.type == "cpu" and q.dtype == torch.float32 and q.numel() and kernels.available():
        qr, kr = kernels.rotary(q, cos, sin), kernels.rotary(k, cos, sin)
        if qr is not None and kr is not None:
            return qr, kr
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
