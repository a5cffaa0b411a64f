"""The scheduler decides, every step, which sequences run and how many of their tokens.

One step, stated once:
1. Running sequences, oldest first, each get what they still need: one token when
   decoding, the next chunk of their prompt when prefilling. Prompt chunks share a
   budget of ``max_prefill_token_num`` tokens per step (chunked prefill); single tokens
   always fit (a chunk never ends inside an image whose tokens attend both ways, Gemma 3's:
   it stops before it, or takes the whole image). When the pool cannot give a sequence the
   block it needs, the youngest
   running sequence is preempted: its blocks are freed and it goes back to the front of
   the waiting queue, to be recomputed later (the prefix cache usually keeps most of it).
2. If nothing was preempted, waiting sequences are admitted in arrival order while the
   prefill budget, ``max_batch_size`` and the pool allow. Each first attaches the longest
   cached prefix of its tokens.

``schedule()`` returns a ``SchedulerOutput``; the runner computes exactly those tokens;
``update()`` then advances every scheduled sequence. Pure Python, no torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .kv_cache import BlockManager
from .request import Sequence, SeqStatus


@dataclass
class SchedulerOutput:
    seqs: list[Sequence]  # what runs this step, in order
    num_new_tokens: list[int]  # tokens computed for each, from its num_computed_tokens on
    preempted: list[Sequence] = field(default_factory=list)  # preempted while scheduling this step
    failed: list[Sequence] = field(default_factory=list)  # can never fit in the pool; finished with an error

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_batch_size: int, max_prefill_tokens: int):
        self.blocks = block_manager
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        # Keep a few blocks back when admitting new work, so running sequences can grow.
        self.watermark = max(1, block_manager.num_blocks // 100)
        self.num_preemptions = 0

    # ---- queue management ------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove ``seq`` wherever it is and release its blocks."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = seq.finish_reason or reason

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step --------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput([], [])
        budget = self.max_prefill_tokens
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            n = seq.num_tokens - seq.num_computed_tokens
            if n > 1:
                n = self._chunk(seq, seq.num_computed_tokens, budget)
                if n == 0:
                    i += 1
                    continue
            if not self._make_room(seq, n, out):
                continue  # seq itself was preempted; the list shrank under it
            self._put(out, seq, n)
            budget -= n if n > 1 else 0
            i += 1

        if out.preempted:
            return out
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            if -(-seq.num_tokens // self.blocks.block_size) > self.blocks.num_blocks:
                self._fail_too_big(seq, out)
                continue
            if not self._admit(seq, budget, out):
                break
            self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            budget -= out.num_new_tokens[-1]
        return out

    def update(self, out: SchedulerOutput) -> None:
        """The runner has computed the scheduled tokens: advance and publish full blocks."""
        for seq, n in zip(out.seqs, out.num_new_tokens):
            seq.num_computed_tokens += n
            self.blocks.commit(seq)

    # ---- internals -------------------------------------------------------------
    @staticmethod
    def _chunk(seq: Sequence, start: int, budget: int) -> int:
        """How many tokens from ``start`` to prefill within ``budget``. A chunk never ends inside
        a bidirectional image: it stops before the image, or (when it starts at or inside
        one) runs to the image's end even past the budget."""
        if budget <= 0:
            return 0
        end = min(seq.num_tokens, start + budget)
        for item in seq.mm_items:
            if item.bidirectional and item.offset < end < item.end:
                end = item.offset if item.offset > start else item.end
                break
        return end - start

    def _put(self, out: SchedulerOutput, seq: Sequence, n: int) -> None:
        self.blocks.allocate(seq, seq.num_computed_tokens + n)
        out.seqs.append(seq)
        out.num_new_tokens.append(n)

    def _make_room(self, seq: Sequence, n: int, out: SchedulerOutput) -> bool:
        """Preempt the youngest running sequences until ``seq`` can grow by ``n`` tokens."""
        while not self.blocks.can_allocate(seq, seq.num_computed_tokens + n):
            victim = self.running[-1]
            if victim is seq and len(self.running) == 1:
                self._fail_too_big(seq, out)
                return False
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        out.preempted.append(seq)

    def _fail_too_big(self, seq: Sequence, out: SchedulerOutput) -> None:
        seq.error = (f"the KV cache ({self.blocks.num_blocks} blocks of {self.blocks.block_size} tokens) "
                     f"cannot hold this sequence of {seq.num_tokens} tokens; raise cache_max_entry_count "
                     f"or lower session_len")
        self.finish(seq, "error")
        out.failed.append(seq)

    def _admit(self, seq: Sequence, budget: int, out: SchedulerOutput) -> bool:
        """Attach the cached prefix and allocate the first chunk of a waiting sequence."""
        # A prompt whose logprobs are asked for is computed whole: cached blocks would skip rows.
        cached = 0 if seq.needs_prompt_rows else self.blocks.match_prefix(seq)
        n = self._chunk(seq, cached, budget)
        if n == 0:
            self.blocks.free(seq)
            return False
        reserve = self.watermark if self.running else 0
        if not self.blocks.can_allocate(seq, cached + n, reserve=reserve):
            self.blocks.free(seq)
            return False
        seq.num_computed_tokens = cached
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = cached
        self.blocks.prefix_hits += cached
        self._put(out, seq, n)
        return True
