"""A linear layer whose fp32 CPU case runs on the native kernels.

Parameter names and layout are ``nn.Linear``'s, so checkpoints load unchanged. Once loaded on
CPU in fp32, ``pack_linears`` moves each weight into ``kernels.panel_linear``'s layout and frees
it (the model holds one copy; an embedding tied to a head looks its rows up in the packed copy).
Every call, decode rows or a prefill chunk, then goes to that kernel, which is faster than BLAS
(MKL) on decoder shapes at every row count measured (BENCHMARKS.md) and gives a row the same
result whatever rows come with it. An unpacked layer is ``nn.Linear``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels


def emptied(p: nn.Parameter) -> nn.Parameter:
    """An empty parameter of ``p``'s dtype and device, to put in its place once its values live
    elsewhere (packed, quantised): the module keeps its attribute and the memory is freed."""
    return nn.Parameter(p.new_empty(0), requires_grad=False)


class Linear(nn.Linear):
    packed: Optional[torch.Tensor] = None  # the weight in panel_linear's layout, once packed

    def pack(self) -> None:
        """Move the weight into ``kernels.panel_linear``'s layout and free it (fp32, CPU)."""
        self.packed = kernels.pack_panels(self.weight.detach())
        self.weight = emptied(self.weight)

    def forward(self, x: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        bias = self.bias if add_bias else None
        if self.packed is not None:
            if x.dtype != torch.float32 or x.device.type != "cpu":  # as nn.Linear would (an error, mostly)
                return F.linear(x, kernels.unpack_panels(self.packed, self.out_features), bias)
            y = kernels.panel_linear(x.reshape(-1, self.in_features).contiguous(), self.packed, bias,
                                     self.out_features)
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, bias)


def pack_linears(model: nn.Module) -> int:
    """Pack every fp32 CPU ``Linear`` of ``model``; returns how many were packed. A weight shared
    with other modules (a head tied to the embedding) is packed only if each of them can use the
    packed copy (``share_packed``): the model then still holds one copy."""
    if not kernels.available():
        return 0
    holders: dict[int, list[nn.Module]] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                holders.setdefault(id(p), []).append(m)
    count = 0
    for m in model.modules():
        w = m.weight if isinstance(m, Linear) and m.packed is None else None
        if w is None or w.dtype != torch.float32 or w.device.type != "cpu" or w.dim() != 2:
            continue
        others = [o for o in holders[id(w)] if o is not m]
        if not all(hasattr(o, "share_packed") for o in others):
            continue
        m.pack()
        for o in others:
            o.share_packed(m.packed)
        count += 1
    return count
