"""The engine as front ends see it: submit, abort, a stats snapshot, health, close.

``Pipeline``, ``LLM``, the OpenAI server, the web UI and ``/metrics`` use an engine through
these members and nothing else, so the engine behind them can be the in-process ``Engine``
today and, later, one that drives tensor-parallel workers or Ray actors. The model family's
prompt processing (chat template, tokenizer, image preprocessing) stays with the front end:
what crosses into the engine is ``PromptInputs`` and a ``GenerationConfig``; what comes back
is ``RequestOutput`` deltas, delivered to the request's sink from the engine's thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..config import GenerationConfig
from .request import PromptInputs, Sink


@dataclass(frozen=True)
class EngineStats:
    """A consistent snapshot, published by the engine's thread after every loop turn; any thread
    may read the latest one (the reference swap is atomic)."""

    running: int = 0  # sequences in the running batch
    waiting: int = 0  # sequences waiting to be scheduled
    blocks_total: int = 0  # KV-cache blocks in the pool
    blocks_free: int = 0
    blocks_touched: int = 0  # blocks that have held tokens at least once (on CPU: the resident share)
    block_bytes: int = 0  # bytes of one block, all layers, keys and values
    prefix_hit_tokens: int = 0  # prompt tokens served from the prefix cache
    image_cache_hits: int = 0  # images whose features came from the feature cache
    image_cache_misses: int = 0
    steps: int = 0
    prompt_tokens: int = 0  # submitted
    generation_tokens: int = 0
    finished: int = 0
    preemptions: int = 0

    @property
    def blocks_used(self) -> int:
        return self.blocks_total - self.blocks_free


class EngineClient(Protocol):
    def add_request(self, inputs: PromptInputs, gen: GenerationConfig, sink: Sink) -> int:
        """Queue a request; returns its id. A ``ValueError`` names what is wrong with it."""

    def abort(self, request_id: int) -> None:
        """End a request (finish_reason "abort"); unknown or finished ids are ignored."""

    def compile_format(self, response_format: dict) -> None:
        """Compile a ``response_format``'s grammar now, into the engine's cache (so a front end can
        do it off its event loop before submitting); a ``ValueError`` names what does not compile."""

    def snapshot(self) -> EngineStats:
        """The latest stats."""

    @property
    def is_alive(self) -> bool:
        """False once the engine was closed or died; requests then fail at once."""

    def close(self, timeout: float = 30.0) -> None:
        """Stop; every waiting request gets a final output (finish_reason "abort")."""
