"""The offline pipeline: LMDeploy's ``pipeline`` face over seer's engine.

``Pipeline`` is a synchronous front over the engine thread: it turns each prompt
into a conversation, then into token ids and image inputs (in the caller's thread),
submits them all, and collects the engine's deltas. A prompt that cannot be
prepared (a bad image, too long) fails alone: in a batch it comes back as a
``Response`` with ``finish_reason="error"``; a single prompt raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence as Seq, Union

import torch

from .config import (ChatTemplateConfig, EngineConfig, GenerationConfig, VisionConfig,
                     engine_config_from)
from .engine.engine import Engine, kv_cache_blocks
from .engine.parallel import ranks_per_device, start_tp
from .engine.request import PromptInputs, RequestOutput
from .engine.runner import ModelRunner
from .messages import check_token_ids, split_batch, to_conversation
from .vl import MediaPolicy
from .models import base
from .models.base import ModelFamily, read_config_json
from .models.registry import family_for


CANCEL_POLL_S = 0.05  # how often a cancellable stream looks at its cancel event


@dataclass
class Response:
    """One prompt's result (or, from ``stream_infer``, one delta of it)."""

    text: str
    generate_token_len: int
    input_token_len: int
    finish_reason: Optional[str] = None  # "stop", "length", "abort", "error"; None while streaming
    token_ids: list[int] = field(default_factory=list)
    logprobs: Optional[list[dict[int, float]]] = None
    # [generated tokens, vocab] with output_logits="generation"; with "all", the prompt's positions
    # lead: [prompt tokens - 1 + generated tokens, vocab] (row i predicts token i + 1)
    logits: Optional[torch.Tensor] = None
    index: int = 0  # position of the prompt in its batch
    session_id: int = 0
    error: Optional[str] = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    # With GenerationConfig(prompt_logprobs=k): per prompt token, None for the first, else
    # {token: logprob, top-k alternatives...}
    prompt_logprobs: Optional[list[Optional[dict[int, float]]]] = None
    logprob_ranks: Optional[list[int]] = None  # with logprobs: each generated token's 1-based rank
    stop_reason: Optional[Union[int, str]] = None  # the stop string or stop_token_ids token that ended it

    def __repr__(self) -> str:
        return (f"Response(text={self.text!r}, generate_token_len={self.generate_token_len}, "
                f"input_token_len={self.input_token_len}, finish_reason={self.finish_reason!r})")

    def _add(self, out: RequestOutput) -> None:
        self.text += out.new_text
        self.token_ids.extend(out.new_token_ids)
        self.generate_token_len = out.num_output_tokens
        self.input_token_len = out.num_prompt_tokens
        self.num_cached_tokens = out.num_cached_tokens
        if out.new_logprobs is not None:
            self.logprobs = (self.logprobs or []) + out.new_logprobs
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.new_ranks is not None:
            self.logprob_ranks = (self.logprob_ranks or []) + out.new_ranks
        for rows in (out.prompt_logits, out.new_logits):  # output_logits="all": the prompt's rows lead
            if rows is not None:
                self.logits = rows if self.logits is None else torch.cat([self.logits, rows])
        if out.finished:
            self.finish_reason = out.finish_reason
            self.stop_reason = out.stop_reason
            self.error = out.error
            if out.error and not self.text:
                self.text = out.error


@dataclass
class Session:
    """A multi-turn chat: the conversation so far and the last response."""

    session_id: int
    history: list = field(default_factory=list)
    response: Optional[Response] = None


GenConfigs = Union[GenerationConfig, Seq[GenerationConfig], None]


class Pipeline:
    def __init__(self, model_path: str, backend_config=None, vision_config: Optional[VisionConfig] = None,
                 chat_template_config: Optional[ChatTemplateConfig] = None):
        self.engine_config = engine_config_from(backend_config)
        self.vision_config = vision_config or VisionConfig()
        raw = read_config_json(str(model_path))
        family_cls = family_for(raw)
        build = (str(model_path), raw, self.engine_config, self.vision_config, chat_template_config)
        workers = tp = None
        device, dtype = base.resolve_device(self.engine_config)
        if self.engine_config.tp > 1:  # checked before any process starts
            # The workers get the device and dtype resolved here, so that every rank computes alike.
            resolved = dataclasses.replace(self.engine_config, device=device.type, dtype=str(dtype).split(".")[1])
            workers = start_tp(self.engine_config.tp, (build[0], build[1], resolved, *build[3:]),
                               family_cls.tp_shape(str(model_path), raw, self.engine_config.tp),
                               self.engine_config.distributed_executor_backend)
        try:
            if workers is not None:
                tp = workers.group(device)
            self.family: ModelFamily = family_cls(*build, tp=tp)
            self.engine = _build_engine(self.family, self.engine_config, self.vision_config, workers)
        except BaseException:
            if workers is not None:
                workers.close()
            raise
        self.tokenizer = self.family.tokenizer
        self._session_ids = itertools.count(1)
        self._closed = False

    # ---- LMDeploy's calls ------------------------------------------------------------------
    def __call__(self, prompts, gen_config: GenConfigs = None, use_tqdm: Optional[bool] = None, **kwargs):
        singles, is_batch = split_batch(prompts)
        responses = self._run(singles, gen_config, is_batch, use_tqdm)
        return responses if is_batch or len(responses) != 1 else responses[0]  # n > 1: the n samples

    def batch_infer(self, prompts, gen_config: GenConfigs = None, **kwargs) -> list[Response]:
        singles, _ = split_batch(prompts)
        return self._run(singles, gen_config, True, kwargs.get("use_tqdm"))

    def infer(self, prompts, gen_config: GenConfigs = None, **kwargs):
        return self(prompts, gen_config, **kwargs)

    def stream_infer(self, prompts, gen_config: GenConfigs = None, cancel: Optional[threading.Event] = None,
                     **kwargs) -> Iterator[Response]:
        """Yield deltas as they come: ``Response`` objects whose ``text`` is the new text and
        ``index`` the prompt's position; the last delta of a prompt carries its finish_reason.

        Closing the generator aborts what is still running. ``cancel`` (seer's own) does the same
        from another thread: once it is set, the generator aborts the rest and ends within
        ``CANCEL_POLL_S``, also while a request still waits for its first token."""
        singles, is_batch = split_batch(prompts)
        gens = self.gen_configs(gen_config, len(singles))
        if any(g.n > 1 for g in gens):
            raise ValueError("stream_infer takes n=1 only; for several samples per prompt call the pipeline "
                             "(pipe(prompts, gen_config=GenerationConfig(n=...)))")
        q: queue.Queue = queue.Queue()
        ids, failed, _ = self._submit(singles, gens, q, raise_errors=not is_batch)
        for place in sorted(failed):
            yield failed[place]
        pending = {rid for rid in ids if rid is not None}
        index = {rid: i for i, rid in enumerate(ids)}
        try:
            while pending:
                try:
                    rid, out = q.get(timeout=None if cancel is None else CANCEL_POLL_S)
                except queue.Empty:
                    if cancel.is_set():
                        return
                    continue
                delta = Response("", 0, 0, index=index[rid])
                delta._add(out)
                if out.finished:
                    pending.discard(rid)
                yield delta
                if cancel is not None and cancel.is_set():
                    return
        finally:
            for rid in pending:
                self.engine.abort(rid)

    def chat(self, prompt, session: Optional[Session] = None, gen_config: Optional[GenerationConfig] = None,
             stream_response: bool = False, **kwargs) -> Session:
        """One turn of a multi-turn chat; the returned session carries the history."""
        if gen_config is not None and gen_config.n > 1:
            raise ValueError("chat continues one conversation: n=1 only; call the pipeline for several samples")
        if session is None:
            session = Session(next(self._session_ids))
        conversation = session.history + to_conversation(prompt)
        response = self._run([conversation], gen_config, False, False)[0]
        response.session_id = session.session_id
        session.history = conversation + [{"role": "assistant", "content": [{"type": "text", "text": response.text}]}]
        session.response = response
        return session

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.engine.close()
        self.engine = None
        self.family.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ---------------------------------------------------------------------------
    def gen_configs(self, gen_config: GenConfigs, n: int) -> list[GenerationConfig]:
        """One config per prompt, with the chat template's end-of-turn words added as stop words."""
        if gen_config is None:
            gens = [GenerationConfig()] * n
        elif isinstance(gen_config, GenerationConfig):
            gens = [gen_config] * n
        else:
            gens = list(gen_config)
            if len(gens) != n or not all(isinstance(g, GenerationConfig) for g in gens):
                raise ValueError(f"gen_config must be a GenerationConfig or a list of {n} of them "
                                 f"(one per prompt), got {len(gens)} item(s)")
        extra = [w for w in self.family.stop_words()
                 if self.tokenizer.convert_tokens_to_ids(w) not in self.family.eos_token_ids]
        if extra:
            gens = [g.replace(stop_words=list(g.stop_words or []) + extra) for g in gens]
        return gens

    def prepare(self, prompt, policy: Optional[MediaPolicy] = None, tools: Optional[list] = None) -> PromptInputs:
        """A prompt (any accepted shape) as the engine takes it: chat template, token ids, image
        inputs; images and videos load within ``policy`` (default: ``MediaPolicy()``). ``tools``:
        OpenAI function tools the chat template shows the model."""
        if self._closed:
            raise RuntimeError("this pipeline is closed")
        # Always normalise: to_conversation is idempotent (chat history passes through) and loads
        # every image and string content, whatever the first message looks like.
        return self.family.encode(to_conversation(prompt, policy), tools)

    def get_ppl(self, input_ids) -> list[float]:
        """LMDeploy's ``get_ppl``: for each sequence of token ids (one list, or a list of lists), the
        mean negative log-likelihood of its tokens after the first, each given those before it
        (the cross-entropy loss; ``exp`` of it is the perplexity). The whole sequence is computed:
        none of it comes from the prefix cache."""
        batch = _token_batch(input_ids, "get_ppl", 2, self.family.model.spec.vocab_size)
        responses = self._score(batch, GenerationConfig(max_new_tokens=1, prompt_logprobs=0), "get_ppl")
        return [-sum(d[t] for d, t in zip(r.prompt_logprobs[1:], ids[1:])) / (len(ids) - 1)
                for ids, r in zip(batch, responses)]

    def get_logits(self, input_ids) -> list[torch.Tensor]:
        """LMDeploy's ``get_logits``: for each sequence of token ids (one list, or a list of lists),
        the logits of every position, ``[len(ids), vocab]`` fp32 on the CPU (row i scores the token
        after the first i + 1). Computed whole, not from the prefix cache."""
        batch = _token_batch(input_ids, "get_logits", 1, self.family.model.spec.vocab_size)
        return [r.logits for r in self._score(batch, GenerationConfig(max_new_tokens=1, output_logits="all"),
                                              "get_logits")]

    def _score(self, batch: list, gen: GenerationConfig, what: str) -> list[Response]:
        """Token-id sequences run as they are with ``gen``; any failure is a ``RuntimeError``."""
        responses = self.run(batch, [gen] * len(batch), raise_errors=True, prepare=self.prepare_ids)
        failed = next((r.error for r in responses if r.error), None)
        if failed:
            raise RuntimeError(f"{what} failed: {failed}")
        return responses

    def prepare_ids(self, ids: list[int], images: Seq = ()) -> PromptInputs:
        """Token ids as they are (vLLM's raw prompts: no chat template), each image placeholder
        token among them expanded to the run its image fills."""
        if self._closed:
            raise RuntimeError("this pipeline is closed")
        if not images:
            return PromptInputs(list(ids))
        if not self.family.accepts_images:
            raise ValueError(f"this model ({type(self.family).__name__}) is text-only and does not accept images")
        return self.family._expand_images(list(ids), list(images))

    @property
    def session_len(self) -> int:
        return self.family.session_len

    def _submit(self, singles, gens, q: queue.Queue, raise_errors: bool, prepare=None):
        """Prepare and queue every prompt; failures become error responses (or raise).

        Returns ``(ids, failed, groups)``: one request id per sample in order (a prompt whose
        config has ``n`` > 1 takes n consecutive places; None where it failed or is yet to
        start), the error ``Response`` of each failed place, and the ``_Samples`` of each prompt
        with n > 1 by its first request id. Its first sample goes now, the others once the first
        has computed the prompt, so that they find its KV blocks in the prefix cache."""
        prepare = prepare or self.prepare
        ids, failed, groups = [], {}, {}
        for i, (prompt, gen) in enumerate(zip(singles, gens)):
            place = len(ids)
            ids.extend([None] * gen.n)
            try:
                inputs = prepare(prompt)
                group = _Samples(self.engine, q, inputs, gen, place) if gen.n > 1 else None
                sink = group.on_first if group else (lambda out: q.put((out.request_id, out)))
                rid = self.engine.add_request(inputs, _sample(gen, 0), sink)
            except ValueError as e:
                if raise_errors:
                    raise
                failed.update((place + k, Response(str(e), 0, 0, finish_reason="error", index=i, error=str(e)))
                              for k in range(gen.n))
                continue
            ids[place] = rid
            if group:
                groups[rid] = group
        return ids, failed, groups

    def _run(self, singles, gen_config, is_batch: bool, use_tqdm) -> list[Response]:
        gens = self.gen_configs(gen_config, len(singles))
        return self.run(singles, gens, raise_errors=not is_batch, use_tqdm=use_tqdm)

    def run(self, singles, gens: list[GenerationConfig], raise_errors: bool, use_tqdm=None,
            prepare=None) -> list[Response]:
        """Run prompts to completion, one ``Response`` each in order. ``prepare`` turns a prompt
        into ``PromptInputs`` (default: conversation + chat template)."""
        q: queue.Queue = queue.Queue()
        ids, failed, groups = self._submit(singles, gens, q, raise_errors, prepare)
        prompt_of = [i for i, g in enumerate(gens) for _ in range(g.n)]
        results: list[Optional[Response]] = [failed.get(place) for place in range(len(ids))]
        by_id = {}
        for place, rid in enumerate(ids):
            if rid is not None:
                results[place] = by_id[rid] = Response("", 0, 0, index=prompt_of[place])
        unstarted = sum(g.gen.n - 1 for g in groups.values())  # later samples, announced on q
        bar = _progress(len(ids), use_tqdm)
        pending = set(by_id)
        try:
            while pending or unstarted:
                rid, out = q.get()
                if rid == _Samples.STARTED:
                    rid, place = out
                    results[place] = by_id[rid] = Response("", 0, 0, index=prompt_of[place])
                    pending.add(rid)
                    unstarted -= 1
                    continue
                if rid == _Samples.FAILED:
                    place, why = out
                    results[place] = Response(why, 0, 0, "error", index=prompt_of[place], error=why)
                    unstarted -= 1
                    continue
                by_id[rid]._add(out)
                if out.finished:
                    pending.discard(rid)
                    if rid in groups and not groups[rid].started:  # aborted first: the rest never start
                        unstarted -= groups[rid].gen.n - 1
                        for k in range(1, groups[rid].gen.n):
                            results[groups[rid].place + k] = Response(out.error or "", 0, 0, "abort",
                                                                      index=by_id[rid].index, error=out.error)
                    if bar is not None:
                        bar.update(1)
        finally:
            for rid in pending:
                self.engine.abort(rid)
            if bar is not None:
                bar.close()
        return results


def _token_batch(input_ids, what: str, shortest: int, vocab: int) -> list:
    """``input_ids`` as a list of token-id lists (one list is a batch of one), each checked: ints
    in ``[0, vocab)``."""
    batch = [input_ids] if isinstance(input_ids, (list, tuple)) and input_ids and \
        isinstance(input_ids[0], int) else input_ids
    if not isinstance(batch, (list, tuple)) or not batch or not all(
            isinstance(ids, (list, tuple)) and len(ids) >= shortest
            and all(isinstance(t, int) and not isinstance(t, bool) for t in ids) for ids in batch):
        raise ValueError(f"{what} takes token ids: a list of at least {shortest} ints, or a list of such lists")
    for ids in batch:
        check_token_ids(ids, vocab, f"{what}: token ids")
    return list(batch)


class _Samples:
    """The samples of one prompt with ``n`` > 1: the first one's sink starts the others on its first
    output (the prompt's KV then sits in the prefix cache), announcing each on ``q`` as
    ``(STARTED, (request_id, place))`` before any output of it can arrive."""

    STARTED, FAILED = "started", "failed"

    def __init__(self, engine, q: queue.Queue, inputs: PromptInputs, gen: GenerationConfig, place: int):
        self.engine, self.q, self.inputs, self.gen, self.place = engine, q, inputs, gen, place
        self.started = False

    def on_first(self, out: RequestOutput) -> None:  # the engine thread
        if not self.started and out.finish_reason != "abort":
            self.started = True
            for k in range(1, self.gen.n):
                try:
                    rid = self.engine.add_request(self.inputs, _sample(self.gen, k),
                                                  lambda o: self.q.put((o.request_id, o)))
                except Exception as e:  # noqa: BLE001 - the engine stopped: this sample fails, not the caller
                    self.q.put((self.FAILED, (self.place + k, f"{type(e).__name__}: {e}")))
                    continue
                self.q.put((self.STARTED, (rid, self.place + k)))
        self.q.put((out.request_id, out))


def _sample(gen: GenerationConfig, k: int) -> GenerationConfig:
    """Sample ``k`` of a config with ``n`` samples: one request, its seed moved by ``k``."""
    if gen.n == 1:
        return gen
    return gen.replace(n=1, random_seed=None if gen.random_seed is None else gen.random_seed + k)


def _progress(total: int, use_tqdm: Optional[bool]):
    if use_tqdm is False or (use_tqdm is None and total < 32):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="seer", unit="req")


def _build_engine(family: ModelFamily, cfg: EngineConfig, vcfg: VisionConfig, workers=None) -> Engine:
    kv = family.kv_spec()
    # Ranks that share one device (tp on the CPU, or on fewer GPUs than ranks) share its free memory.
    num_blocks = kv_cache_blocks(cfg, kv.bytes_per_block(cfg.block_size), family.session_len, family.device,
                                 ranks_per_device(family.device, family.tp.size))
    if workers is not None:
        workers.start(num_blocks)
    runner = ModelRunner.for_family(family, cfg, vcfg, num_blocks, workers)
    return Engine(runner, num_blocks, cfg, family.tokenizer, family.eos_token_ids, family.session_len)


def pipeline(model_path: str, backend_config=None, vision_config: Optional[VisionConfig] = None,
             chat_template_config: Optional[ChatTemplateConfig] = None, log_level: str = "WARNING",
             **kwargs) -> Pipeline:
    """Load a local model folder (Hugging Face layout) and return a ready pipeline."""
    import logging

    logging.getLogger("seer").setLevel(log_level)
    return Pipeline(model_path, backend_config, vision_config, chat_template_config)
