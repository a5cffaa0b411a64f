"""Picks the next token of every sequence that samples this step.

Rows are independent: a row's result depends only on its own logits, its own
settings and its own random generator (seeded from ``random_seed``), never on the
other rows of the batch. The all-greedy batch without penalties or logprobs, the
common case, is one ``argmax``.

A row whose settings fail at run time fails alone: its ``errors`` entry says why and
the engine ends that request with an error; the other rows keep their tokens.

Order of processing: ``logit_bias`` added to the raw logits (as OpenAI does), then, as in
transformers, penalties and the min-new-tokens EOS mask; then the tokens a row's grammar does not
allow (structured output, ``grammar.py``: the masks of all constrained rows are computed in one
call); then greedy argmax, or temperature, top-k, top-p and min-p followed by a draw. Reported
logprobs are those of the raw model distribution.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import torch

from .request import Sequence


@dataclass
class SampleResult:
    token_ids: list[int]  # -1 where the row failed
    logprobs: list[Optional[dict[int, float]]]  # per row; None where not asked for
    errors: Optional[list[Optional[str]]] = None  # per row, when some row failed: why
    ranks: Optional[list[Optional[int]]] = None  # per row with logprobs: the chosen token's 1-based rank


def _needs_processing(seq: Sequence, eos_ids: frozenset) -> bool:
    g = seq.gen
    return (g.repetition_penalty != 1.0 or g.presence_penalty != 0.0 or g.frequency_penalty != 0.0 or g.logit_bias
            or g.bad_words_ids
            or (g.min_new_tokens > seq.num_output_tokens and bool(eos_ids or g.stop_token_ids)))


def _apply_penalties(row: torch.Tensor, seq: Sequence, eos_ids: frozenset) -> torch.Tensor:
    g = seq.gen
    row = row.clone()
    if g.logit_bias:
        far = [t for t in g.logit_bias if t >= row.numel()]
        if far:
            raise ValueError(f"logit_bias token ids {far[:5]} are outside the vocabulary [0, {row.numel()})")
        ids = torch.tensor(list(g.logit_bias), device=row.device)
        row[ids] += torch.tensor(list(g.logit_bias.values()), dtype=row.dtype, device=row.device)
    if g.repetition_penalty != 1.0:
        ids = torch.tensor(sorted(set(seq.token_ids)), device=row.device)
        vals = row[ids]
        row[ids] = torch.where(vals < 0, vals * g.repetition_penalty, vals / g.repetition_penalty)
    if (g.presence_penalty or g.frequency_penalty) and seq.num_output_tokens:
        out = torch.tensor(seq.output_token_ids, device=row.device)
        counts = torch.zeros_like(row).index_add_(0, out, torch.ones_like(out, dtype=row.dtype))
        row -= g.frequency_penalty * counts + g.presence_penalty * (counts > 0).to(row.dtype)
    if g.bad_words_ids:  # a bad word's last token, where the output ends with the rest of it
        out = seq.output_token_ids
        banned = {w[-1] for w in g.bad_words_ids if w[-1] < row.numel()
                  and (len(w) == 1 or (len(out) >= len(w) - 1 and list(out[len(out) - len(w) + 1:]) == list(w[:-1])))}
        if banned:
            row[torch.tensor(sorted(banned), device=row.device)] = float("-inf")
    if g.min_new_tokens > seq.num_output_tokens:
        banned = set(g.stop_token_ids or ()) | (set() if g.ignore_eos else set(eos_ids))
        banned = {t for t in banned if t < row.numel()}  # ids past the vocabulary are never drawn anyway
        if banned:
            row[torch.tensor(sorted(banned), device=row.device)] = float("-inf")
    return row


def _draw(row: torch.Tensor, seq: Sequence) -> int:
    g = seq.gen
    row = row / g.temperature
    if 0 < g.top_k < row.numel():
        kth = torch.topk(row, g.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if g.top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        cum = sorted_p.cumsum(0)
        drop = (cum - sorted_p) > g.top_p  # keep the smallest prefix whose mass reaches top_p
        probs = probs.scatter(0, idx, sorted_p.masked_fill(drop, 0.0))
    if g.min_p > 0:
        probs = probs.masked_fill(probs < g.min_p * probs.max(), 0.0)
    if seq.generator is None:
        seed = g.random_seed if g.random_seed is not None else random.randrange(2**63)
        seq.generator = torch.Generator(device=row.device).manual_seed(seed)
    return int(torch.multinomial(probs, 1, generator=seq.generator))


def _top_logprobs(raw: torch.Tensor, token: int, n: int) -> tuple[dict[int, float], int]:
    """``{token: logprob, top-n alternatives...}`` and the token's 1-based rank in the distribution."""
    lp = torch.log_softmax(raw, dim=-1)
    out = {token: float(lp[token])}
    if n:
        vals, ids = lp.topk(n)
        for v, i in zip(vals.tolist(), ids.tolist()):
            out.setdefault(i, v)
    return out, int((lp > lp[token]).sum()) + 1


def sample(logits: torch.Tensor, seqs: list[Sequence], eos_ids: frozenset, grammars=None) -> SampleResult:
    """``logits`` ``[len(seqs), vocab]`` fp32 -> one token per row. ``grammars``: the engine's
    ``GrammarCompiler``, which computes the masks of the rows whose sequence has a grammar."""
    simple = all(s.gen.greedy and s.gen.logprobs is None and s.grammar is None and not _needs_processing(s, eos_ids)
                 for s in seqs)
    if simple:
        return SampleResult(logits.argmax(dim=-1).tolist(), [None] * len(seqs))
    tokens, logprobs, ranks, errors = [], [], [], [None] * len(seqs)
    constrained = [i for i, s in enumerate(seqs) if s.grammar is not None]
    allowed = dict(zip(constrained, grammars.allowed_tokens([seqs[i].grammar for i in constrained],
                                                            logits.shape[1]))) if constrained else {}
    for i, seq in enumerate(seqs):
        lp = rank = None
        try:
            tok = _sample_row(logits[i], seq, eos_ids, allowed.get(i))
            if seq.gen.logprobs is not None:
                lp, rank = _top_logprobs(logits[i], tok, seq.gen.logprobs)
        except Exception as e:  # noqa: BLE001 - this row's request fails, not the batch
            tok, errors[i] = -1, f"sampling failed: {type(e).__name__}: {e}"
        tokens.append(tok)
        logprobs.append(lp)
        ranks.append(rank)
    return SampleResult(tokens, logprobs, errors if any(errors) else None, ranks)


def _sample_row(raw: torch.Tensor, seq: Sequence, eos_ids: frozenset, allowed: Optional[torch.Tensor]) -> int:
    row = _apply_penalties(raw, seq, eos_ids) if _needs_processing(seq, eos_ids) else raw
    if allowed is not None:
        if seq.grammar.is_error():  # e.g. llguidance's per-step limits ran out on this grammar
            raise ValueError(f"the response_format's grammar failed: {seq.grammar.get_error()}")
        row = row.masked_fill(~allowed.to(row.device), float("-inf"))
        if not bool(torch.isfinite(row).any()):
            raise ValueError("no token is left that its response_format allows (min_tokens, bad_words or "
                             "logit_bias removed every one)")
    return int(row.argmax()) if seq.gen.greedy else _draw(row, seq)
