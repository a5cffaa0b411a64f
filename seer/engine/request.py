"""Request state shared by the scheduler, the runner and the output processor.

Pure Python: no torch here, so the scheduler and the block manager can be
tested alone. Tensors that ride along (pixel values, precomputed embeddings)
sit in ``MMItem.data`` and are only touched by the runner.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from ..config import GenerationConfig


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class MMItem:
    """One image in a prompt: the run of placeholder tokens it fills."""

    offset: int  # index of its first placeholder token in the prompt
    length: int  # how many placeholder tokens (= rows of its features)
    hash: str  # content hash: the feature-cache key and part of the prefix-cache key
    data: Any = None  # pixel values or precomputed features; read by the runner only
    kind: str = "pixels"  # "pixels": run the vision encoder on data; "embeds": data are the features
    # Its tokens attend to each other both ways (Gemma 3): a prefill chunk never ends inside it,
    # and the prefill masks let its tokens see the whole run.
    bidirectional: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class PromptInputs:
    """What a model family makes of one conversation."""

    token_ids: list[int]
    mm_items: list[MMItem] = field(default_factory=list)
    # M-RoPE families (Qwen2-VL) only: the prompt's (t, h, w) positions, an int64 tensor
    # [3, len(token_ids)], and the offset of every later token: position = index + rope_delta.
    # None for everyone else (and for text-only prompts): position = index.
    mrope_positions: Any = None
    rope_delta: int = 0


@dataclass
class RequestOutput:
    """One delta of a request, delivered to its sink after every step that touched it."""

    request_id: int
    new_token_ids: list[int]
    new_text: str
    num_prompt_tokens: int
    num_output_tokens: int
    finished: bool = False
    finish_reason: Optional[str] = None  # "stop", "length", "abort" or "error"
    error: Optional[str] = None
    new_logprobs: Optional[list[dict[int, float]]] = None
    new_ranks: Optional[list[int]] = None  # with new_logprobs: each new token's 1-based rank
    new_logits: Any = None  # tensor [new tokens, vocab] when output_logits is set
    num_cached_tokens: int = 0
    # With prompt_logprobs, on the first delta: one entry per prompt token, None for the first
    # (nothing precedes it), else {token: logprob, top alternatives...}.
    prompt_logprobs: Optional[list[Optional[dict[int, float]]]] = None
    # With output_logits="all", on the first delta: [prompt tokens - 1, vocab], the logits of each
    # prompt position but the last (whose logits are the first generated token's, in new_logits).
    prompt_logits: Any = None
    # On the last delta of a request that a stop string or a stop_token_ids token ended: which.
    stop_reason: Optional[Union[int, str]] = None


Sink = Callable[[RequestOutput], None]

_ids = itertools.count()


class Sequence:
    """A request as the engine sees it: tokens, progress and the KV blocks it holds.

    Invariants: ``num_computed_tokens <= len(token_ids)``; the KV of the first
    ``num_computed_tokens`` tokens is in the blocks of ``block_table``.
    """

    def __init__(self, inputs: PromptInputs, gen: GenerationConfig, max_total_tokens: int,
                 sink: Optional[Sink] = None):
        self.request_id = next(_ids)
        self.token_ids: list[int] = list(inputs.token_ids)
        self.num_prompt_tokens = len(inputs.token_ids)
        self.mm_items = inputs.mm_items
        self.mrope_positions = inputs.mrope_positions
        self.rope_delta = inputs.rope_delta
        self.gen = gen
        self.max_total_tokens = max_total_tokens  # prompt + output never exceeds this
        self.sink = sink
        self.status = SeqStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache on first admission
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # chained hashes of the full blocks of token_ids
        self.num_committed_blocks = 0  # leading blocks already published in the prefix cache
        self.finish_reason: Optional[str] = None
        self.error: Optional[str] = None
        self.num_preemptions = 0
        # What prompt positions 0.. gave so far (each predicts the next prompt token), when asked:
        # the logprobs (gen.prompt_logprobs) and the logits (gen.output_logits == "all").
        self.prompt_logprobs: Optional[list[dict[int, float]]] = [] if gen.prompt_logprobs is not None else None
        self.prompt_logits: Optional[list[Any]] = [] if gen.output_logits == "all" else None
        self.prompt_rows_done = 0  # prompt positions whose rows were kept
        # the output side, owned by the engine's _update/_text/_emit and the sampler
        self.detok: Any = None  # IncrementalDetokenizer, made at the first output token
        self.text = ""  # all text decoded so far (cut at a stop word)
        self.shown = 0  # how much of it was delivered; the rest may still become a stop word
        self.stop_reason: Any = None  # the stop token id or stop word that ended it
        self.hidden_tokens = 0  # output tokens not counted for the user (the stop token: 1)
        self.prompt_sent = False  # the prompt's logprobs/logits went out (with the first delta after it)
        self.generator: Any = None  # torch.Generator of a sampled request, seeded at its first draw
        self.grammar: Any = None  # gen.response_format's matcher (engine/grammar.py), advanced per token

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def needs_prompt_rows(self) -> bool:
        """Prompt logprobs or logits asked for and not all computed yet (the prefix cache is then skipped)."""
        return ((self.prompt_logprobs is not None or self.prompt_logits is not None)
                and self.prompt_rows_done < self.num_prompt_tokens - 1)

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def __repr__(self) -> str:
        return (f"Sequence(id={self.request_id}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, status={self.status.value})")
