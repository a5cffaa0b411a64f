"""Quantised weights for the decoder's linear layers, made at load time.

``EngineConfig(quantization=...)`` replaces every ``seer.layers.linear.Linear`` (the decoder's
projections) by a quantised layer, and the LM head computes its logits from such a copy too
(its fp32 weight stays only where the embedding shares it). The vision tower and the embedding
stay as they are.

- ``"int8"``: ``Int8Linear``, the weight rounded to int8 with one fp32 scale per output row
  (symmetric, ``scale = max|row| / 127``): a quarter of fp32's bytes.
- ``"int4"``: ``Int4Linear``, 4 bits with one fp16 scale per group of 32 weights along the input
  (as llama.cpp's q4_0: values -8..7, the group's largest-magnitude weight at -8, up to the
  scale's rounding): 4.5 bits a weight in all. A layer whose input width is not a multiple of 32
  gets int8 instead.

Both are stored in the kernels' own layout (blocks of 32 rows, see below). On CPU the native
kernels (``seer.kernels.int_linear_q8`` / ``_q4``) multiply in integers: each row of the input
is rounded to int8 with a scale of its own (dynamic per-token quantisation, as vLLM's W8A8 and
llama.cpp's q8_0 do), and the weight is streamed once and never converted to floats. Each row's
result comes from that row alone, so a batch gives every request what it gets alone, for prefill
and decode alike. Elsewhere (CUDA, no C compiler) the layer multiplies fp
activations by the weight dequantised for the call: that saves memory, not time.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from .linear import Linear, emptied
from .vocab import ParallelLMHead

QUANTIZATIONS = (None, "int8", "int4")
GROUP = 32  # int4: weights per scale
NB = 32  # rows per block of the kernels' layout (int_linear.c)
ROWS_PER_BLOCK = 2048  # rows quantised at a time (a multiple of NB)


def _by_rows(weight: torch.Tensor, fn) -> list:
    """``fn`` over blocks of the weight's rows (as fp32), so that quantising a large matrix (the LM
    head) never holds more than a block's temporaries; the outputs, concatenated per position."""
    parts = [fn(weight[i:i + ROWS_PER_BLOCK].detach().float()) for i in range(0, weight.shape[0], ROWS_PER_BLOCK)]
    return [torch.cat(p).contiguous() for p in zip(*parts)]


def _pad_rows(t: torch.Tensor, value) -> torch.Tensor:
    """``t`` with rows of ``value`` added up to a whole block of NB rows."""
    return F.pad(t, (0, 0) * (t.dim() - 1) + (0, -t.shape[0] % NB), value=value)


# The kernels' layout (int_linear.c): rows in blocks of NB; int8, within a block the NB rows' weights
# of 4 consecutive columns side by side; int4, per group of 32 columns, per pair of 4-column steps
# c, per half v of the block, row r and column t, the low nibble holds column 8c + t and the high
# one 8c + 4 + t. Tensors keep ``[rows, ...]`` shapes (so blocks concatenate) over those bytes.

def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = w.shape[1]
    scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
    q = (torch.round(w / scale[:, None]).clamp(-127, 127) + 128).to(torch.uint8)  # + 128: unsigned operand
    q = _pad_rows(F.pad(q, (0, -k % 4), value=128), 128)
    packed = q.reshape(-1, NB, q.shape[1] // 4, 4).transpose(1, 2)  # [block, step, row, 4]
    return packed.reshape(q.shape), _pad_rows(scale, 0.0)


def _int8_unpack(qweight: torch.Tensor, n: int, k: int) -> torch.Tensor:
    rows, kp = qweight.shape
    return qweight.reshape(-1, kp // 4, NB, 4).transpose(1, 2).reshape(rows, kp)[:n, :k]


def _int4_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = w.shape
    g = k // GROUP
    w = w.reshape(n, g, GROUP)
    # As q4_0: the group's largest-magnitude weight maps to -8 (up to the fp16 scale's rounding),
    # so all 16 levels serve.
    peak = w.gather(2, w.abs().argmax(dim=2, keepdim=True)).squeeze(2)
    # The scale in fp16 (the kernel streams it with the weights: 4.5 bits a weight, not 5), and
    # the weights rounded against the scale as stored; one too small for fp16 becomes its least.
    half = torch.finfo(torch.float16)
    scale = (peak / -8.0).clamp(-half.max, half.max).half()
    scale = torch.where(scale == 0, torch.full_like(scale, 2.0 ** -24), scale)
    q = _pad_rows((torch.round(w / scale.float()[..., None]).clamp(-8, 7) + 8).to(torch.uint8), 8)
    q = q.reshape(-1, 2, NB // 2, g, 4, 2, 4)  # [block, v, r, group, c, low/high, t]
    packed = (q[..., 0, :] | (q[..., 1, :] << 4)).permute(0, 3, 4, 1, 2, 5)  # [block, group, c, v, r, t]
    scale = _pad_rows(scale, 0.0).reshape(-1, NB, g).transpose(1, 2)  # [block, group, row]
    return packed.reshape(-1, k // 2), scale.reshape(-1, g)


def _int4_unpack(qweight: torch.Tensor, scales: torch.Tensor, n: int, k: int) -> torch.Tensor:
    g = k // GROUP
    packed = qweight.reshape(-1, g, 4, 2, NB // 2, 4)  # [block, group, c, v, r, t]
    q = torch.stack([packed & 15, packed >> 4], dim=-2)  # [..., r, low/high, t]
    q = q.permute(0, 3, 4, 1, 2, 5, 6).reshape(-1, k)[:n].float() - 8  # [block, v, r, group, c, h, t]
    s = scales.reshape(-1, g, NB).transpose(1, 2).reshape(-1, g)[:n].float()
    return (q.reshape(n, g, GROUP) * s[..., None]).reshape(n, k)


class _QuantLinear(nn.Module):
    kernel = None  # the native kernel: (x, qweight, scales, bias, out_features) -> y
    quantize_rows = None  # fp32 rows -> (quantised rows, their scales)

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        self.dtype = linear.weight.dtype  # what the rest of the model computes in
        qweight, scales = _by_rows(linear.weight, type(self).quantize_rows)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)

    def dequantized(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu"
                and self.in_features <= kernels.INT_LINEAR_MAX_K and kernels.available()):
            return type(self).kernel(x.contiguous(), self.qweight, self.scales, self.bias, self.out_features)
        return F.linear(x, self.dequantized().to(self.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Int8Linear(_QuantLinear):
    kernel = staticmethod(kernels.int_linear_q8)
    quantize_rows = staticmethod(_int8_rows)

    def dequantized(self) -> torch.Tensor:
        n = self.out_features
        return (_int8_unpack(self.qweight, n, self.in_features).float() - 128) * self.scales[:n, None]


class Int4Linear(_QuantLinear):
    kernel = staticmethod(kernels.int_linear_q4)
    quantize_rows = staticmethod(_int4_rows)

    def dequantized(self) -> torch.Tensor:
        return _int4_unpack(self.qweight, self.scales, self.out_features, self.in_features)


def _quantised(linear: nn.Linear, mode: str) -> _QuantLinear:
    if mode == "int4" and linear.in_features % GROUP == 0:
        return Int4Linear(linear)
    return Int8Linear(linear)


def quantize(model: nn.Module, mode: Optional[str]) -> int:
    """Replace the decoder's ``Linear`` layers in place; returns how many were quantised."""
    if mode is None:
        return 0
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantization={mode!r} is invalid: one of {QUANTIZATIONS}")
    count = 0
    for head in [m for m in model.modules() if isinstance(m, ParallelLMHead)]:
        head.quantized = _quantised(head, mode)
        if sum(p is head.weight for _, p in model.named_parameters(remove_duplicate=False)) == 1:
            head.weight = emptied(head.weight)  # not tied: free it
        count += 1
    parents = [m for m in model.modules() if any(type(c) is Linear for c in m.children())]
    for parent in parents:  # each fp32 weight is freed as soon as its replacement exists
        for name, child in list(parent.named_children()):
            if type(child) is Linear:
                setattr(parent, name, _quantised(child, mode))
                count += 1
    return count
