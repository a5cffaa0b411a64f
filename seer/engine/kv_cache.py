"""Paged KV-cache bookkeeping and the prefix cache. Pure Python.

The pool holds ``num_blocks`` blocks of ``block_size`` token slots each; the
tensors live in the runner, this class only hands out block ids.

Prefix caching: a full block is named by a chained hash of (the previous
block's hash, its token ids, the content hashes of the images whose
placeholder tokens it holds). Two prompts share a block only when everything
before and inside it is the same, pixels included. A block whose last user
leaves keeps its hash and stays findable until the pool needs it back; blocks
are then reused least-recently-freed first.

Invariants:
- a block is in exactly one of: ``_free`` (no hash, unused), ``_evictable``
  (hashed, unused, still findable) or in use (``ref_count > 0``);
- ``_cached[h]`` is a block whose content is exactly what hash ``h`` names.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque

from .request import Sequence


def block_hash(parent: bytes, tokens: list[int], extra: tuple[str, ...]) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(b"".join(t.to_bytes(4, "little", signed=True) for t in tokens))
    for e in extra:
        h.update(e.encode())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))  # low ids first: touched memory stays small
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._cached: dict[bytes, int] = {}
        self._used = [False] * num_blocks
        self._fresh: list[int] = []  # blocks handed out for the first time, not yet zeroed
        self.num_touched = 0  # blocks ever handed out: on CPU, the pool's resident share
        self.prefix_hits = 0  # tokens served from the prefix cache, for metrics

    # ---- queries -------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    # ---- hashing ---------------------------------------------------------------
    def _extend_hashes(self, seq: Sequence, upto_tokens: int) -> None:
        """Compute the chained hashes of the full blocks among the first ``upto_tokens`` tokens."""
        bs = self.block_size
        while (len(seq.block_hashes) + 1) * bs <= upto_tokens:
            i = len(seq.block_hashes)
            lo, hi = i * bs, (i + 1) * bs
            extra = tuple(m.hash for m in seq.mm_items if m.offset < hi and m.end > lo)
            parent = seq.block_hashes[-1] if seq.block_hashes else b""
            seq.block_hashes.append(block_hash(parent, seq.token_ids[lo:hi], extra))

    # ---- allocation ------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks for the longest cached prefix of a sequence that holds no blocks.

        Returns the number of tokens found; at least one token is always left to compute,
        so that the step that finishes the prompt has logits to sample from.
        """
        assert not seq.block_table
        if not self.enable_prefix_caching:
            return 0
        self._extend_hashes(seq, seq.num_tokens - 1)
        for h in seq.block_hashes:
            b = self._cached.get(h)
            if b is None:
                break
            self._take(b)
            seq.block_table.append(b)
        seq.num_committed_blocks = len(seq.block_table)
        return len(seq.block_table) * self.block_size

    def can_allocate(self, seq: Sequence, num_tokens: int, reserve: int = 0) -> bool:
        return self.blocks_needed(seq, num_tokens) + reserve <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Grow the block table to hold ``num_tokens`` tokens. Call ``can_allocate`` first."""
        for _ in range(self.blocks_needed(seq, num_tokens)):
            seq.block_table.append(self._pop_free())

    def commit(self, seq: Sequence) -> None:
        """Publish the now-computed full blocks of ``seq`` in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        self._extend_hashes(seq, seq.num_computed_tokens)
        full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for i in range(seq.num_committed_blocks, full):
            b, h = seq.block_table[i], seq.block_hashes[i]
            if self.hash_of[b] is None and h not in self._cached:
                self.hash_of[b] = h
                self._cached[h] = b
        seq.num_committed_blocks = max(seq.num_committed_blocks, full)

    def free(self, seq: Sequence) -> None:
        """Release every block of ``seq``; hashed blocks stay findable until reused."""
        # Tail blocks first, so they are evicted before the shared heads.
        for b in reversed(seq.block_table):
            self.ref_count[b] -= 1
            if self.ref_count[b] == 0:
                if self.hash_of[b] is not None:
                    self._evictable[b] = None
                else:
                    self._free.appendleft(b)
        seq.block_table = []
        seq.num_committed_blocks = 0

    def take_fresh(self) -> list[int]:
        """Blocks handed out for the first time since the last call.

        Their memory has never been written and may hold anything, NaN included; masked
        attention still multiplies it by zero, so the runner zeroes them before use.
        """
        fresh, self._fresh = self._fresh, []
        return fresh

    def return_fresh(self, blocks: list[int]) -> None:
        """Blocks from ``take_fresh`` that a failed step may not have zeroed: the next one zeroes them."""
        self._fresh.extend(blocks)

    def reset_prefix_cache(self) -> None:
        for b in list(self._evictable):
            self._forget(b)
            self._free.appendleft(b)
        self._evictable.clear()

    # ---- internals -------------------------------------------------------------
    def _take(self, b: int) -> None:
        if self.ref_count[b] == 0:
            self._evictable.pop(b, None)
        self.ref_count[b] += 1

    def _pop_free(self) -> int:
        if self._free:
            b = self._free.popleft()
        else:
            b, _ = self._evictable.popitem(last=False)
            self._forget(b)
        self.ref_count[b] = 1
        if not self._used[b]:
            self._used[b] = True
            self._fresh.append(b)
            self.num_touched += 1
        return b

    def _forget(self, b: int) -> None:
        h = self.hash_of[b]
        if h is not None and self._cached.get(h) == b:
            del self._cached[h]
        self.hash_of[b] = None
