"""The embedding and the LM head split by vocabulary over tensor-parallel ranks.

Rank r holds rows ``[r * per, (r + 1) * per)`` of the ``vocab x hidden`` matrix, ``per`` the
vocabulary divided by the ranks and rounded up (the last rank's rows past the vocabulary are
zero). The embedding looks up the ids in its range, zeros the others, and all-reduces; the
head computes the logits of its rows and gathers every rank's on rank 0, which samples. With one rank
both are the plain ``nn.Embedding`` / ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..engine.parallel import SINGLE, TPGroup
from .linear import Linear, emptied


class VocabShard:
    """Which rows of the vocabulary this rank holds."""

    def __init__(self, vocab: int, tp: TPGroup):
        self.vocab, self.tp = vocab, tp
        self.per = -(-vocab // tp.size)
        self.start = tp.rank * self.per
        self.rows = max(0, min(self.per, vocab - self.start))  # rows that are real, not padding

    def slice(self, w: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a checkpoint's ``vocab x hidden`` matrix."""
        return w if self.tp.size == 1 else w.narrow(0, self.start, self.rows)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab: int, hidden: int, tp: TPGroup = SINGLE):
        super().__init__()
        self.shard = VocabShard(vocab, tp)
        self.weight = nn.Parameter(torch.empty(self.shard.per, hidden))
        self.packed = None  # the tied head's weight in panel layout, once packed (then ``weight`` is empty)

    def share_packed(self, packed: torch.Tensor) -> None:
        """Look rows up in the tied head's packed weight (``seer.layers.linear.pack_linears``) and free ours."""
        self.packed = packed
        self.weight = emptied(self.weight)

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.embedding(ids, self.weight)
        return self.packed[ids // kernels.PANEL, :, ids % kernels.PANEL]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        sh = self.shard
        if sh.tp.size == 1:
            return self._rows(ids)
        local = ids - sh.start
        outside = (local < 0) | (local >= sh.rows)
        x = self._rows(local.masked_fill(outside, 0))
        x.masked_fill_(outside[:, None], 0)
        return sh.tp.all_reduce(x)


class ParallelLMHead(Linear):
    def __init__(self, hidden: int, vocab: int, tp: TPGroup = SINGLE):
        self.shard = VocabShard(vocab, tp)
        super().__init__(hidden, self.shard.per, bias=False)
        self.quantized = None  # an Int8Linear of this rank's rows, once quantised (seer.layers.quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized(x) if self.quantized is not None else super().forward(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[rows, vocab]`` float logits on rank 0, every rank's columns gathered there (the
        other ranks, which do not sample, get their own columns)."""
        out = self(hidden).contiguous()
        sh = self.shard
        if sh.tp.size > 1:
            import torch.distributed as dist

            parts = [[torch.empty_like(out) for _ in range(sh.tp.size)]] if sh.tp.rank == 0 else []
            opts = dist.GatherOptions()
            opts.rootRank = 0
            sh.tp.pg.gather(parts, [out], opts).wait()
            if sh.tp.rank == 0:
                out = torch.cat(parts[0], dim=-1)[:, :sh.vocab]
        return out.float()


def finish_vocab(embed: VocabParallelEmbedding, head: ParallelLMHead, tie: bool) -> None:
    """After loading: tie the head to the embedding if asked, and zero the padding rows past the
    vocabulary (the last rank's; ``to_empty`` left them uninitialised)."""
    if tie:
        head.weight = embed.weight
    for m in (embed, head):
        m.weight.data[m.shard.rows:] = 0
