"""The engine: a step loop in a background thread, fed by a thread-safe inbox.

One step is three calls: ``scheduler.schedule()`` -> ``runner.execute(StepInput)`` (plain
data, ``step.py``; the runner answers with logits) + sampling -> ``_update()``, which
appends the sampled tokens, detokenizes, checks the stop conditions, delivers a
``RequestOutput`` delta to each touched request's sink and finishes what is done. Requests
enter and leave only between steps, through the inbox, so the scheduler and block manager
are only ever touched by the loop thread.

A failing step is run again one sequence at a time, so that only the request that makes it
fail ends (finish_reason "error", with the exception's message); the others go on as if
nothing happened, and so does the loop. One bad request never takes the others down.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import queue
import threading
import traceback
import weakref
from typing import Optional

import torch

from .._malloc import trim as trim_heap
from ..config import EngineConfig, GenerationConfig
from .client import EngineStats
from .detokenizer import IncrementalDetokenizer
from .grammar import GrammarCompiler
from .kv_cache import BlockManager
from .request import PromptInputs, RequestOutput, Sequence, Sink
from .runner import ModelRunner
from .sampler import sample
from .scheduler import Scheduler, SchedulerOutput
from .step import make_step_input

log = logging.getLogger("seer.engine")


class EngineDeadError(RuntimeError):
    pass


class Engine:
    def __init__(self, runner: ModelRunner, num_blocks: int, cfg: EngineConfig, tokenizer,
                 eos_token_ids: set[int], session_len: int):
        self.runner = runner
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_token_ids)
        self.session_len = session_len
        self.blocks = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.grammars = GrammarCompiler(tokenizer, self.eos_ids)
        self.scheduler = Scheduler(self.blocks, cfg.max_batch_size, cfg.max_prefill_token_num)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._seqs: dict[int, Sequence] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.stats = {"steps": 0, "prompt_tokens": 0, "generation_tokens": 0, "finished": 0}
        self._snapshot = EngineStats()
        self._publish()
        self._thread = threading.Thread(target=self._loop, name="seer-engine", daemon=True)
        self._thread.start()
        # Stop the loop before the interpreter tears down torch under a running step.
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref().close(timeout=5.0))

    # ---- the public face (any thread) -----------------------------------------------------
    def add_request(self, inputs: PromptInputs, gen: GenerationConfig, sink: Sink) -> int:
        """Queue a request; its outputs go to ``sink`` from the engine thread. Returns its id."""
        if not self._thread.is_alive():
            raise EngineDeadError("the engine has stopped; create a new pipeline")
        n = len(inputs.token_ids)
        if n == 0:
            raise ValueError("the prompt is empty: it produced no tokens")
        if n >= self.session_len:
            raise ValueError(f"the prompt has {n} tokens, which does not leave room for output within "
                             f"session_len={self.session_len}; shorten it or raise EngineConfig.session_len")
        seq = Sequence(inputs, gen, self.session_len, sink)
        if gen.response_format is not None:  # compiled here, in the caller's thread: a ValueError is its own
            seq.grammar = self.grammars.matcher(gen.response_format)
        self.stats["prompt_tokens"] += n
        self._inbox.put(("add", seq))
        self._wake.set()
        return seq.request_id

    def abort(self, request_id: int) -> None:
        self._inbox.put(("abort", request_id))
        self._wake.set()

    def compile_format(self, response_format: dict) -> None:
        self.grammars.compile(response_format)

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.runner.close()  # the pool's memory goes back (and workers end) once nothing can touch them

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set() and self.runner.healthy

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def snapshot(self) -> EngineStats:
        """The stats as of the end of the engine thread's last loop turn (any thread)."""
        return dataclasses.replace(self._snapshot, prompt_tokens=self.stats["prompt_tokens"])

    def _publish(self) -> None:
        b, r, st = self.blocks, self.runner, self.stats
        self._snapshot = EngineStats(
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting), blocks_total=b.num_blocks,
            blocks_free=b.num_free_blocks, blocks_touched=b.num_touched, block_bytes=r.block_bytes,
            prefix_hit_tokens=b.prefix_hits, image_cache_hits=r.feature_hits, image_cache_misses=r.feature_misses,
            steps=st["steps"], prompt_tokens=st["prompt_tokens"], generation_tokens=st["generation_tokens"],
            finished=st["finished"], preemptions=self.scheduler.num_preemptions)

    # ---- the loop (engine thread) ---------------------------------------------------------
    def _loop(self) -> None:
        why = "the engine was closed"
        busy = False  # stepped since the last time the loop was idle
        try:
            while not self._stop.is_set():
                self._drain_inbox()
                self._publish()
                if not self.scheduler.has_work():
                    if busy:  # just went idle: give a burst's freed activations back to the system
                        busy = False
                        trim_heap()
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                busy = True
                self.step()
                self._publish()
        except BaseException:  # noqa: BLE001 - a dead loop must fail every waiter, not hang them
            log.error("engine loop died:\n%s", traceback.format_exc())
            why = "the engine died: " + traceback.format_exc().strip().splitlines()[-1]
        finally:
            self._drain_inbox()
            for seq in list(self._seqs.values()):
                seq.error = why
                self._finish(seq, "abort")

    def _drain_inbox(self) -> None:
        while True:
            try:
                op, arg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if op == "add":
                self._seqs[arg.request_id] = arg
                self.scheduler.add(arg)
            elif op == "abort" and arg in self._seqs:
                self._finish(self._seqs[arg], "abort")

    def step(self) -> None:
        sched = self.scheduler.schedule()
        for seq in sched.failed:
            self._emit(seq, [], "", None, None, error=seq.error)
        if not sched:
            return
        fresh = self.blocks.take_fresh()
        try:
            done = [(sched, self._compute(sched, fresh))]
        except Exception as e:  # noqa: BLE001
            if len(sched.seqs) == 1:
                log.exception("step failed")
                self._fail(sched.seqs[0], e, fresh)
                return
            # Find the request that fails it: each sequence again, alone. A step only writes the KV
            # slots of its own tokens and advances nothing until it succeeds, so running them again
            # computes the same; each carries the fresh blocks of its own block table, and those of
            # none (freed by a preemption) go back to be zeroed by the next step.
            log.exception("step of %d sequences failed; running them one at a time", len(sched.seqs))
            done, unowned = [], set(fresh)
            for seq, n in zip(sched.seqs, sched.num_new_tokens):
                one = SchedulerOutput([seq], [n])
                mine = set(seq.block_table)
                own = [b for b in fresh if b in mine]
                unowned -= mine
                try:
                    done.append((one, self._compute(one, own)))
                except Exception as e1:  # noqa: BLE001
                    self._fail(seq, e1, own)
            self.blocks.return_fresh([b for b in fresh if b in unowned])
        for part, (seqs, logits, sampled, prompt) in done:
            for rid, (lps, rows) in prompt.items():
                seq = self._seqs[rid]
                seq.prompt_rows_done += len(lps) if lps is not None else rows.shape[0]
                if lps is not None:
                    seq.prompt_logprobs.extend(lps)
                if rows is not None:
                    seq.prompt_logits.append(rows)
            self.scheduler.update(part)
            self.stats["steps"] += 1
            self._update(seqs, logits, sampled)

    def _compute(self, sched: SchedulerOutput, fresh: list[int]):
        """Run and sample ``sched`` without changing any sequence: (sequences that sample, logits,
        sampled tokens, prompt logprobs/logits by request id)."""
        step = make_step_input(sched, self.blocks.block_size, fresh)
        out = self.runner.execute(step)
        seqs = [self._seqs[rid] for rid in step.sampling_ids]
        return seqs, out.logits, sample(out.logits, seqs, self.eos_ids, self.grammars), out.prompt

    def _fail(self, seq: Sequence, e: Exception, fresh: list[int]) -> None:
        """``seq`` made its step fail: it ends with the error. Its fresh blocks may not have been
        zeroed; the next step zeroes them (they go back to the pool's never-written list)."""
        self.blocks.return_fresh(fresh)
        seq.error = f"{type(e).__name__}: {e}"
        self._finish(seq, "error")

    def _update(self, seqs: list[Sequence], logits, sampled) -> None:
        for i, seq in enumerate(seqs):
            if sampled.errors and sampled.errors[i]:
                seq.error = sampled.errors[i]
                self._finish(seq, "error")
                continue
            tok = sampled.token_ids[i]
            seq.token_ids.append(tok)
            self.stats["generation_tokens"] += 1
            g = seq.gen
            if (tok in self.eos_ids and not g.ignore_eos) or tok in (g.stop_token_ids or ()):
                # As in LMDeploy, the stop token itself is not part of the output.
                seq.hidden_tokens = 1
                if tok in (g.stop_token_ids or ()):
                    seq.stop_reason = tok
                text, _ = self._text(seq, "", final=True)
                self._emit(seq, [], text, None, None, reason="stop")
                continue
            done = seq.num_output_tokens >= g.max_new_tokens or seq.num_tokens >= seq.max_total_tokens
            complete = False  # the grammar allows nothing more: the request ends here
            if seq.grammar is not None:
                if not seq.grammar.consume_token(tok):
                    seq.error = f"the output left its response_format's grammar: {seq.grammar.get_error()}"
                    self._finish(seq, "error")
                    continue
                complete = seq.grammar.is_stopped()
            text, hit = self._text(seq, self._detok(seq).push(tok), final=done or complete)
            row = logits[i:i + 1].cpu() if g.output_logits else None
            lp = [sampled.logprobs[i]] if g.logprobs is not None else None
            self._emit(seq, [tok], text, lp, row, reason="stop" if hit or complete else "length" if done else None,
                       ranks=[sampled.ranks[i]] if lp else None)

    def _detok(self, seq: Sequence) -> IncrementalDetokenizer:
        if seq.detok is None:
            g = seq.gen
            seq.detok = IncrementalDetokenizer(self.tokenizer, seq.token_ids[:seq.num_prompt_tokens],
                                               g.skip_special_tokens, g.spaces_between_special_tokens)
        return seq.detok

    def _text(self, seq: Sequence, new: str, final: bool) -> tuple[str, bool]:
        """The text to show now, and whether a stop word was hit.

        ``seq.text`` is all decoded text, ``seq.shown`` how much of it was shown.
        A stop word ends the text just before it; while one might still be forming, the
        last ``len(longest stop word) - 1`` characters are held back.
        """
        detok = self._detok(seq)
        g = seq.gen
        full = seq.text + new + (detok.flush() if final else "")
        shown = seq.shown
        words = g.stop_words if g.stop_words and seq.num_output_tokens >= g.min_new_tokens else ()
        hits = [h for h in (full.find(w, shown) for w in words) if h >= 0]
        if hits:
            cut = min(hits)
            seq.stop_reason = next(w for w in words if full.find(w, shown) == cut)
            if g.include_stop_str_in_output:
                cut += len(seq.stop_reason)
            seq.text, seq.shown = full[:cut], cut
            return full[shown:cut], True
        hold = 0 if final or not words else max(len(w) for w in words) - 1
        end = max(shown, len(full) - hold)
        seq.text, seq.shown = full, end
        return full[shown:end], False

    def _finish(self, seq: Sequence, reason: str) -> None:
        self._emit(seq, [], "", None, None, reason=reason, error=seq.error)

    def _emit(self, seq: Sequence, toks, text, lp, logits, reason: Optional[str] = None,
              error: Optional[str] = None, ranks=None) -> None:
        """Deliver one delta; with a ``reason`` the request finishes here and leaves the engine."""
        if reason and not seq.is_finished:
            seq.finish_reason = reason
            self.scheduler.finish(seq, reason)
            self.stats["finished"] += 1
        if seq.is_finished:
            self._seqs.pop(seq.request_id, None)
        if seq.sink is None:
            return
        finished = seq.is_finished or error is not None
        prompt_lp = prompt_logits = None
        if not seq.needs_prompt_rows and not seq.prompt_sent:
            seq.prompt_sent = True  # with the first delta after the prompt is done
            if seq.prompt_logprobs is not None:
                prompt_lp = [None] + seq.prompt_logprobs
            if seq.prompt_logits:
                prompt_logits = torch.cat(seq.prompt_logits)
        out = RequestOutput(
            request_id=seq.request_id, new_token_ids=toks, new_text=text,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens - seq.hidden_tokens,
            finished=finished, finish_reason=seq.finish_reason or ("error" if error else None),
            error=error, new_logprobs=lp, new_logits=logits, num_cached_tokens=seq.num_cached_tokens,
            prompt_logprobs=prompt_lp, prompt_logits=prompt_logits, new_ranks=ranks,
            stop_reason=seq.stop_reason if finished else None)
        try:
            seq.sink(out)
        except Exception:  # noqa: BLE001 - a broken consumer must not stop the loop
            log.exception("request %d: output sink failed", seq.request_id)


def kv_cache_blocks(cfg: EngineConfig, bytes_per_block: int, session_len: int, device: torch.device,
                    sharing: int = 1) -> int:
    """How many KV blocks the pool gets: a share of free memory (split between ``sharing`` pools of
    ranks on the same device), capped by what can be used."""
    if cfg.num_gpu_blocks:
        return cfg.num_gpu_blocks
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_ram()
    n = int(free * cfg.cache_max_entry_count / sharing) // bytes_per_block
    cap = cfg.max_batch_size * -(-session_len // cfg.block_size) + 1
    n = min(n, cap)
    if n < -(-session_len // cfg.block_size):
        log.warning("the KV cache (%d blocks) cannot hold one sequence of session_len=%d", n, session_len)
    return max(n, 1)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30

