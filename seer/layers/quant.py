"""Weight-only quantisation of the decoder's linear layers, made at load time.

``EngineConfig(quantization=...)`` replaces every ``seer.layers.linear.Linear`` (the decoder's
projections) by a quantised layer, and the LM head computes its logits from such a copy too
(its fp32 weight stays only where the embedding shares it). The vision tower and the embedding
stay as they are; activations stay fp32.

- ``"int8"``: ``Int8Linear``, the weight rounded to int8 with one fp32 scale per output row
  (symmetric, ``scale = max|row| / 127``): a quarter of fp32's bytes.
- ``"int4"``: ``Int4Linear``, 4 bits with one fp32 scale per group of 32 weights along the input
  (as llama.cpp's q4_0: values -8..7, the group's largest-magnitude weight at -8 exactly): an
  eighth of fp32's bytes plus the scales (5 bits a weight in all). A layer whose input width is not a multiple of
  32 gets int8 instead.

Up to ``MAX_KERNEL_ROWS`` rows on CPU (decode steps, small prefill chunks) go to the native
kernels, which stream the quantised weight once and convert it in registers; more rows (prefill)
and other devices multiply by the weight dequantised for that call. A row's result does not
depend on the other rows (the kernels compute each dot product alone, in one order), so a batch
gives each request what it gets alone.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from .linear import Linear
from .vocab import ParallelLMHead

QUANTIZATIONS = (None, "int8", "int4")
# Rows up to which the native kernels run; past it (long prefill chunks) the weight is dequantised
# for the call, a cost the many rows share. Decode batches stay on the kernels: dequantising every
# weight every step would cost more than the matmuls.
MAX_KERNEL_ROWS = 256
GROUP = 32  # int4: weights per scale
ROWS_PER_BLOCK = 2048  # rows quantised at a time


def _by_rows(weight: torch.Tensor, fn) -> list:
    """``fn`` over blocks of the weight's rows (as fp32), so that quantising a large matrix (the LM
    head) never holds more than a block's temporaries; the outputs, concatenated per position."""
    parts = [fn(weight[i:i + ROWS_PER_BLOCK].detach().float()) for i in range(0, weight.shape[0], ROWS_PER_BLOCK)]
    return [torch.cat(p).contiguous() for p in zip(*parts)]


def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _int4_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = w.shape
    w = w.reshape(n, k // GROUP, GROUP)
    # As q4_0: the group's largest-magnitude weight maps to -8 exactly, so all 16 levels serve.
    peak = w.gather(2, w.abs().argmax(dim=2, keepdim=True)).squeeze(2)
    tiny = torch.finfo(torch.float32).tiny
    scale = torch.where(peak.abs() < tiny, torch.full_like(peak, tiny), peak / -8.0)
    q = (torch.round(w / scale[..., None]).clamp(-8, 7) + 8).to(torch.uint8)
    packed = q[..., :GROUP // 2] | (q[..., GROUP // 2:] << 4)  # byte i: element i low, i + 16 high
    return packed.reshape(n, k // 2), scale


class _QuantLinear(nn.Module):
    kernel = None  # the native kernel: (x, weight, scales, bias) -> y
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
        if (x.dim() == 2 and x.shape[0] <= MAX_KERNEL_ROWS and x.dtype == torch.float32
                and x.device.type == "cpu" and kernels.available()):
            return type(self).kernel(x.contiguous(), self.qweight, self.scales, self.bias)
        return F.linear(x, self.dequantized().to(self.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Int8Linear(_QuantLinear):
    kernel = staticmethod(kernels.small_linear_q8)
    quantize_rows = staticmethod(_int8_rows)

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scales[:, None]


class Int4Linear(_QuantLinear):
    kernel = staticmethod(kernels.small_linear_q4)
    quantize_rows = staticmethod(_int4_rows)

    def dequantized(self) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        packed = self.qweight.reshape(n, k // GROUP, GROUP // 2)
        q = torch.cat([packed & 15, packed >> 4], dim=2).float() - 8
        return (q * self.scales[..., None]).reshape(n, k)


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
            head.weight = nn.Parameter(head.weight.new_empty(0), requires_grad=False)  # not tied: free it
        count += 1
    parents = [m for m in model.modules() if any(type(c) is Linear for c in m.children())]
    for parent in parents:  # each fp32 weight is freed as soon as its replacement exists
        for name, child in list(parent.named_children()):
            if type(child) is Linear:
                setattr(parent, name, _quantised(child, mode))
                count += 1
    return count
