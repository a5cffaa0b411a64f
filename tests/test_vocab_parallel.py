"""Vocabulary-split embedding and LM head (seer/layers/vocab.py) on a real gloo group of two
ranks (threads of this process): with a vocabulary that the ranks do not divide (7 rows over 2
ranks: 4 + 3 and a zero padding row) the lookups and the logits gathered on rank 0 equal the
whole matrix's."""

from __future__ import annotations

import threading

import torch

from seer.engine.parallel import _group, _store
from seer.layers.vocab import ParallelLMHead, VocabParallelEmbedding

VOCAB, HIDDEN = 7, 5


def _rank(rank, store, full, ids, hidden, out):
    tp = _group(store, rank, 2, torch.device("cpu"))
    emb, head = VocabParallelEmbedding(VOCAB, HIDDEN, tp), ParallelLMHead(HIDDEN, VOCAB, tp)
    for m in (emb, head):
        m.weight.data.zero_()
        m.weight.data[:m.shard.rows] = m.shard.slice(full)
    with torch.no_grad():
        out[rank] = (emb.shard.rows, emb(ids), head.logits(hidden))


def test_split_vocabulary_equals_the_whole():
    torch.manual_seed(0)
    full = torch.randn(VOCAB, HIDDEN)
    ids = torch.tensor([0, 3, 4, 6, 6, 1])
    hidden = torch.randn(3, HIDDEN)
    out = {}
    master = _store()
    t = threading.Thread(target=_rank, args=(1, _store(master.port), full, ids, hidden, out))
    t.start()
    _rank(0, master, full, ids, hidden, out)
    t.join(30)
    assert (out[0][0], out[1][0]) == (4, 3)
    for rank in (0, 1):
        torch.testing.assert_close(out[rank][1], full[ids])
    torch.testing.assert_close(out[0][2], hidden @ full.T)  # rank 0 samples: it gets every column
    torch.testing.assert_close(out[1][2], hidden @ torch.cat([full[4:], torch.zeros(1, HIDDEN)]).T)
