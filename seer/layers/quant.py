"""Weight-only int8 quantisation of the decoder's linear layers, made at load time.

``EngineConfig(quantization="int8")`` replaces every ``seer.layers.linear.Linear`` (the
decoder's projections) by an ``Int8Linear``: the weight rounded to int8 with one fp32 scale per
output row (symmetric, ``scale = max|row| / 127``), a quarter of fp32's bytes; the LM head
computes its logits from such a copy too (its fp32 weight stays only where the embedding shares
it). The vision tower and the embedding stay as they are; activations stay fp32.

Up to ``MAX_KERNEL_ROWS`` rows on CPU (decode steps, small prefill chunks) go to the native
kernel, which streams the int8 weight once and converts it in registers; more rows (prefill)
and other devices multiply by the weight dequantised for that call. A row's result does not
depend on the other rows (the kernel computes each dot product alone), so a batch gives each
request what it gets alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from .linear import Linear
from .vocab import ParallelLMHead

QUANTIZATIONS = (None, "int8")
MAX_KERNEL_ROWS = 32  # rows up to which the native int8 kernel beats dequantise + BLAS here


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.contiguous())
        self.bias = linear.bias
        self.dtype = linear.weight.dtype  # what the rest of the model computes in

    def dequantized(self) -> torch.Tensor:
        return (self.qweight.to(torch.float32) * self.scales[:, None]).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 2 and x.shape[0] <= MAX_KERNEL_ROWS and x.dtype == torch.float32
                and x.device.type == "cpu" and kernels.available()):
            return kernels.small_linear_q8(x.contiguous(), self.qweight, self.scales, self.bias)
        return F.linear(x, self.dequantized(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize(model: nn.Module, mode: str | None) -> int:
    """Replace the decoder's ``Linear`` layers in place (``mode`` "int8"); returns how many."""
    if mode is None:
        return 0
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantization={mode!r} is invalid: one of {QUANTIZATIONS}")
    count = 0
    for head in [m for m in model.modules() if isinstance(m, ParallelLMHead)]:
        head.quantized = Int8Linear(head)
        if sum(p is head.weight for _, p in model.named_parameters(remove_duplicate=False)) == 1:
            head.weight = nn.Parameter(head.weight.new_empty(0), requires_grad=False)  # not tied: free it
        count += 1
    parents = [m for m in model.modules() if any(type(c) is Linear for c in m.children())]
    for parent in parents:  # each fp32 weight is freed as soon as its replacement exists
        for name, child in list(parent.named_children()):
            if type(child) is Linear:
                setattr(parent, name, Int8Linear(child))
                count += 1
    return count
