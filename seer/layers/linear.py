"""A linear layer whose few-row case (decode steps) streams its weight with a native kernel.

Parameter names and layout are ``nn.Linear``'s, so checkpoints load unchanged. Many rows
(prefill chunks) go to BLAS; up to ``kernels.SMALL_LINEAR_MAX_ROWS`` rows on CPU in fp32,
to ``kernels.small_linear``, which reads the weight once at memory speed where BLAS
repacks it on every call.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 2 and x.shape[0] <= kernels.SMALL_LINEAR_MAX_ROWS and x.dtype == torch.float32
                and x.device.type == "cpu" and kernels.available()):
            return kernels.small_linear(x.contiguous(), self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
