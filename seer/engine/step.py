"""What the scheduler hands the model side for one step: plain data, no live ``Sequence``.

``StepInput`` says everything a runner needs to compute a step: the packed tokens, their
positions and KV slots, each sequence's chunk with its block table, the images whose
placeholder rows the step covers, and the blocks to zero first. It holds ints, lists and
the tensors the model family prepared (pixels, M-RoPE positions): it can be pickled to
another process (tensor-parallel ranks, Ray actors) or kept for replay (CUDA graphs). The
runner answers with the logits of the chunks that sample, in chunk order, and the logprobs
of the prompt tokens that chunks ask for; sampling, the detokenizer and the stop checks stay
with the engine, where the sequences live.

Built by ``make_step_input`` from a ``SchedulerOutput``, pure Python, no torch.

Packed order: chunks of one token (decodes) first, then prefill chunks, each group in
scheduling order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .scheduler import SchedulerOutput


@dataclass
class ImageSpan:
    """The rows of one image's features that this step's tokens take."""

    row: int  # first packed row they fill
    num_rows: int
    hash: str  # feature-cache key
    first_feature: int  # index of the image's first feature used
    num_features: int  # the image's placeholder count (what the encoder must give)
    kind: str  # "pixels": encode ``data``; "embeds": ``data`` are the features
    data: Any  # what the family prepared; a runner that has ``hash`` cached does not read it


@dataclass
class SeqChunk:
    """One sequence's share of the step: tokens ``[start, start + num_tokens)``."""

    request_id: int
    start: int  # tokens before the chunk, already in the KV cache
    num_tokens: int
    block_table: list[int]  # the blocks holding tokens [0, start + num_tokens)
    samples: bool  # the chunk ends at the sequence's last token: its last row's logits come back
    # (offset, end) of the prompt's images whose tokens attend both ways (Gemma 3) and begin
    # before the chunk's end; empty for everyone else.
    bidirectional: list[tuple[int, int]] = field(default_factory=list)
    mrope_positions: Any = None  # M-RoPE families: the chunk's [3, n] prompt positions, else None
    rope_delta: int = 0  # M-RoPE: position of a token past the prompt = index + rope_delta
    # Prompt logprobs / logits: the rows from position ``prompt_from`` on predict these prompt
    # tokens (the next token of each row); empty when none are asked for.
    prompt_from: int = 0
    prompt_targets: list[int] = field(default_factory=list)
    prompt_top: Optional[int] = None  # top alternatives per prompt token; None: no logprobs
    prompt_logits: bool = False  # the rows' logits come back too

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass
class StepInput:
    input_ids: list[int]  # the packed tokens
    positions: list[int]  # their token indices in their sequences
    slot_mapping: list[int]  # flat KV slot (block * block_size + offset) of each
    chunks: list[SeqChunk]  # in packed order
    images: list[ImageSpan] = field(default_factory=list)
    fresh_blocks: list[int] = field(default_factory=list)  # zeroed before the step writes them

    @property
    def sample_rows(self) -> list[int]:
        """Packed row of the last token of each chunk that samples."""
        rows, row = [], 0
        for c in self.chunks:
            row += c.num_tokens
            if c.samples:
                rows.append(row - 1)
        return rows

    @property
    def prompt_rows(self) -> list[tuple[int, SeqChunk]]:
        """(first packed row, chunk) of each chunk that wants prompt logprobs or logits."""
        out, row = [], 0
        for c in self.chunks:
            if c.prompt_targets:
                out.append((row + c.prompt_from - c.start, c))
            row += c.num_tokens
        return out

    @property
    def sampling_ids(self) -> list[int]:
        """Request ids of the chunks that sample, in the row order of the logits."""
        return [c.request_id for c in self.chunks if c.samples]


def make_step_input(sched: SchedulerOutput, block_size: int, fresh_blocks: Optional[list[int]] = None) -> StepInput:
    order = sorted(range(len(sched.seqs)), key=lambda i: sched.num_new_tokens[i] != 1)
    step = StepInput([], [], [], [], fresh_blocks=list(fresh_blocks or ()))
    for i in order:
        seq, n = sched.seqs[i], sched.num_new_tokens[i]
        start, row = seq.num_computed_tokens, len(step.input_ids)
        end = start + n
        table = seq.block_table[:-(-end // block_size)]
        step.input_ids.extend(seq.token_ids[start:end])
        step.positions.extend(range(start, end))
        step.slot_mapping.extend(table[p // block_size] * block_size + p % block_size for p in range(start, end))
        mrope = seq.mrope_positions
        step.chunks.append(SeqChunk(
            seq.request_id, start, n, table, samples=end == seq.num_tokens,
            bidirectional=[(it.offset, it.end) for it in seq.mm_items if it.bidirectional and it.offset < end],
            mrope_positions=mrope[:, start:end] if mrope is not None and start < mrope.shape[1] else None,
            rope_delta=seq.rope_delta))
        if seq.needs_prompt_rows:  # the rows of prompt positions not kept yet
            first = max(start, seq.prompt_rows_done)
            last = min(end, seq.num_prompt_tokens - 1)
            if first < last:
                c = step.chunks[-1]
                c.prompt_from, c.prompt_targets = first, seq.token_ids[first + 1:last + 1]
                c.prompt_top, c.prompt_logits = seq.gen.prompt_logprobs, seq.prompt_logits is not None
        for it in seq.mm_items:
            a, b = max(start, it.offset), min(end, it.end)
            if a < b:
                step.images.append(ImageSpan(row + a - start, b - a, it.hash, a - it.offset, it.length,
                                             it.kind, it.data))
    return step
