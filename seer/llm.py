"""vLLM's offline face: ``LLM``, ``SamplingParams`` and vLLM-shaped outputs, over seer's engine.

Code written for vLLM's VLM examples ports by changing the import:

    llm = LLM(model=path, max_model_len=4096, limit_mm_per_prompt={"image": 2})
    outs = llm.generate({"prompt": "USER: <image>\\nWhat is this? ASSISTANT:",
                         "multi_modal_data": {"image": pil_image}}, SamplingParams(max_tokens=64))
    outs[0].outputs[0].text, outs[0].prompt_token_ids

A raw ``prompt`` is tokenized as given (no chat template) and the model's own image
placeholder (``<image>`` for LLaVA) marks where each image goes; ``llm.chat`` applies the
chat template to OpenAI-style messages. An image may be a PIL image, anything
``load_image`` accepts, or precomputed embeddings ``[image tokens, hidden]`` (a 3-D
tensor is a batch of them), which skip the vision encoder.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from .config import EngineConfig, GenerationConfig, VisionConfig, known_fields
from .engine.request import PromptInputs
from .messages import check_text, check_token_ids, split_batch, to_conversation
from .pipeline import Pipeline
from .vl import load_image


@known_fields
@dataclass
class StructuredOutputsParams:
    """vLLM's structured output: set one of ``json`` (a JSON schema, dict or string), ``regex``,
    ``choice``, ``grammar`` (Lark or GBNF) or ``json_object=True``. The other fields are accepted
    with no effect (seer's one grammar engine is llguidance, its JSON compact); ``structural_tag``
    is not supported."""

    json: Optional[Union[str, dict]] = None
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None
    json_object: Optional[bool] = None
    backend: Optional[str] = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: Optional[str] = None
    structural_tag: Optional[str] = None

    def response_format(self) -> dict:
        """The same request as a ``GenerationConfig.response_format``."""
        if self.structural_tag is not None:
            raise ValueError("structural_tag is not supported; use json, regex, choice, grammar or json_object")
        given = [k for k in ("json", "regex", "choice", "grammar") if getattr(self, k) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError(f"structured outputs take exactly one of json, regex, choice, grammar or "
                             f"json_object=True; got {given or 'none'}")
        kind = given[0]
        if kind == "json":
            return {"type": "json_schema", "json_schema": {"name": "json", "schema": self.json}}
        if kind == "regex":
            return {"type": "regex_schema", "regex_schema": self.regex}
        return {"type": kind, kind: getattr(self, kind)} if kind != "json_object" else {"type": "json_object"}


GuidedDecodingParams = StructuredOutputsParams  # vLLM's older name


@known_fields
@dataclass
class SamplingParams:
    """vLLM's sampling settings (its defaults: temperature 1.0, 16 new tokens)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: no top-k cut
    min_p: float = 0.0
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    seed: Optional[int] = None
    stop: Optional[Union[str, Sequence[str]]] = None
    stop_token_ids: Optional[Sequence[int]] = None
    ignore_eos: bool = False
    logprobs: Optional[int] = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    skip_special_tokens: bool = True
    logit_bias: Optional[dict[int, float]] = None
    prompt_logprobs: Optional[int] = None  # RequestOutput.prompt_logprobs: each prompt token's logprob
    include_stop_str_in_output: bool = False
    # words never generated (each as the model tokenizes it, with and without a leading space)
    bad_words: Optional[list[str]] = None
    truncate_prompt_tokens: Optional[int] = None  # keep the last k prompt tokens (text-only prompts)
    detokenize: bool = True  # False: outputs carry token ids and no text
    structured_outputs: Optional[StructuredOutputsParams] = None  # the output's shape (JSON schema, regex, ...)
    guided_decoding: Optional[StructuredOutputsParams] = None  # vLLM's older name for structured_outputs

    def to_generation_config(self, default_max: int, tokenizer=None) -> GenerationConfig:
        if self.top_k < -1:
            raise ValueError(f"top_k={self.top_k} is invalid: -1 (no cut) or an integer >= 1")
        return GenerationConfig(
            n=self.n, max_new_tokens=self.max_tokens if self.max_tokens is not None else default_max,
            min_new_tokens=self.min_tokens, do_sample=self.temperature > 0, temperature=self.temperature,
            top_p=self.top_p, top_k=max(self.top_k, 0), min_p=self.min_p, random_seed=self.seed,
            stop_words=[self.stop] if isinstance(self.stop, str) else self.stop,
            stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos, logprobs=self.logprobs,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, skip_special_tokens=self.skip_special_tokens,
            logit_bias=self.logit_bias, prompt_logprobs=self.prompt_logprobs,
            include_stop_str_in_output=self.include_stop_str_in_output,
            bad_words_ids=_bad_words_ids(self.bad_words, tokenizer) if self.bad_words else None,
            response_format=self._response_format())

    def _response_format(self) -> Optional[dict]:
        if self.structured_outputs is not None and self.guided_decoding is not None:
            raise ValueError("give structured_outputs or guided_decoding (its older name), not both")
        spec = self.structured_outputs if self.structured_outputs is not None else self.guided_decoding
        if spec is None:
            return None
        if not isinstance(spec, StructuredOutputsParams):
            raise ValueError(f"structured_outputs={spec!r} is invalid: a StructuredOutputsParams")
        return spec.response_format()


@dataclass
class Logprob:
    """vLLM's: one token's log-probability, its 1-based rank in the distribution (None where not
    computed: prompt tokens) and its text."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[list[dict[int, Logprob]]]
    finish_reason: Optional[str]
    stop_reason: Optional[Union[int, str]] = None  # the stop string or stop token that ended it; None: eos


@dataclass
class RequestOutput:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True
    prompt_logprobs: Optional[list[Optional[dict[int, Logprob]]]] = None  # with SamplingParams(prompt_logprobs=k)


# vLLM engine arguments that change nothing here (accepted so that vLLM code runs unchanged).
_NO_EFFECT_ARGS = frozenset({
    "trust_remote_code", "enforce_eager", "tokenizer_mode", "swap_space", "disable_log_stats",
    "enable_chunked_prefill", "disable_mm_preprocessor_cache", "disable_custom_all_reduce",
    "max_seq_len_to_capture", "cpu_offload_gb", "revision", "tokenizer_revision", "download_dir",
    "load_format", "seed_everything", "compilation_config"})


class LLM:
    """vLLM's ``LLM``. Engine arguments with a meaning here: ``max_model_len``, ``dtype``,
    ``max_num_seqs``, ``max_num_batched_tokens``, ``block_size``, ``enable_prefix_caching``,
    ``gpu_memory_utilization``, ``tensor_parallel_size``, ``distributed_executor_backend`` ("mp" or "ray"),
    ``quantization`` (None, "int8" or "int4": made at load), ``kv_cache_dtype`` ("auto" or "bfloat16"),
    ``limit_mm_per_prompt``, ``seed``,
    ``mm_processor_kwargs`` (``min_pixels`` / ``max_pixels``); the others of ``_NO_EFFECT_ARGS``
    are accepted and ignored; anything else is a ``ValueError``."""

    def __init__(self, model: str, max_model_len: Optional[int] = None, limit_mm_per_prompt: Optional[dict] = None,
                 dtype: str = "auto", seed: Optional[int] = None, max_num_seqs: Optional[int] = None,
                 enable_prefix_caching: bool = True, gpu_memory_utilization: float = 0.8,
                 tensor_parallel_size: int = 1, max_num_batched_tokens: Optional[int] = None,
                 block_size: Optional[int] = None, mm_processor_kwargs: Optional[dict] = None,
                 distributed_executor_backend: Optional[str] = None, quantization: Optional[str] = None,
                 kv_cache_dtype: str = "auto", **kwargs):
        unknown = sorted(set(kwargs) - _NO_EFFECT_ARGS)
        if unknown:
            raise ValueError(f"LLM() got unsupported argument(s) {unknown}; accepted: max_model_len, dtype, seed, "
                             "max_num_seqs, max_num_batched_tokens, block_size, enable_prefix_caching, "
                             "gpu_memory_utilization, tensor_parallel_size, distributed_executor_backend, "
                             "quantization, kv_cache_dtype, limit_mm_per_prompt, "
                             f"mm_processor_kwargs, and (no effect here) {sorted(_NO_EFFECT_ARGS)}")
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={dtype!r} is invalid: one of 'auto', 'float32', 'bfloat16', 'float16'")
        extra = {}
        if max_num_seqs:
            extra["max_batch_size"] = max_num_seqs
        if max_num_batched_tokens:
            extra["max_prefill_token_num"] = max_num_batched_tokens
        if block_size:
            extra["block_size"] = block_size
        if distributed_executor_backend is not None:
            extra["distributed_executor_backend"] = distributed_executor_backend
        cfg = EngineConfig(session_len=max_model_len, dtype=dtype, enable_prefix_caching=enable_prefix_caching,
                           cache_max_entry_count=gpu_memory_utilization, tp=tensor_parallel_size,
                           quantization=quantization, kv_cache_dtype=kv_cache_dtype, **extra)
        mm = dict(mm_processor_kwargs or {})
        bad = sorted(set(mm) - {"min_pixels", "max_pixels"})
        if bad:
            raise ValueError(f"mm_processor_kwargs keys {bad} are not supported; accepted: min_pixels, max_pixels")
        unknown_mm = sorted(set(limit_mm_per_prompt or {}) - {"image", "video"})
        if unknown_mm:
            raise ValueError(f"limit_mm_per_prompt keys {unknown_mm} are not supported; accepted: image, video")
        self.limit_images = (limit_mm_per_prompt or {}).get("image")
        self.seed = seed
        self._pipe = Pipeline(model, cfg, vision_config=VisionConfig(**mm))
        self._ids = 0

    # ---- vLLM's calls --------------------------------------------------------------------
    def generate(self, prompts, sampling_params=None, use_tqdm: bool = False) -> list[RequestOutput]:
        """``prompts``: a str, a ``{"prompt" | "prompt_token_ids", "multi_modal_data"}`` dict, or a list."""
        items = prompts if isinstance(prompts, list) else [prompts]
        return self._run([self._encode_raw(p) for p in items], items, sampling_params, use_tqdm)

    def chat(self, messages, sampling_params=None, use_tqdm: bool = False, **kwargs) -> list[RequestOutput]:
        """``messages``: one OpenAI-style conversation, or a list of them."""
        convs, _ = split_batch(messages)
        return self._run([self._encode_conversation(c) for c in convs], [None] * len(convs), sampling_params,
                         use_tqdm)

    def get_tokenizer(self):
        return self._pipe.tokenizer

    def close(self) -> None:
        self._pipe.close()

    # ---- internals -------------------------------------------------------------------------
    def _check_images(self, n: int) -> None:
        if self.limit_images is not None and n > self.limit_images:
            raise ValueError(f"the prompt has {n} images but limit_mm_per_prompt allows {self.limit_images}")

    def _encode_conversation(self, conversation) -> PromptInputs:
        conv = to_conversation(conversation)
        self._check_images(sum(p["type"] == "image" for m in conv for p in m["content"]))
        return self._pipe.prepare(conv)

    def _encode_raw(self, prompt) -> PromptInputs:
        if isinstance(prompt, str):
            prompt = {"prompt": prompt}
        if not isinstance(prompt, dict) or not ({"prompt", "prompt_token_ids"} & set(prompt)):
            raise ValueError("a prompt is a str or a dict with 'prompt' (text) or 'prompt_token_ids', "
                             "and optionally 'multi_modal_data': {'image': ...}")
        if "prompt_token_ids" in prompt:
            ids = _token_ids(prompt["prompt_token_ids"], self._pipe.family.model.spec.vocab_size)
        else:
            if not isinstance(prompt["prompt"], str):
                raise ValueError(f"'prompt' must be a str, got {type(prompt['prompt']).__name__}")
            ids = self._pipe.tokenizer(check_text(prompt["prompt"], "prompt"), add_special_tokens=True)["input_ids"]
        images = _images_of(prompt.get("multi_modal_data") or {})
        self._check_images(len(images))
        return self._pipe.prepare_ids(ids, images)

    def _run(self, inputs: list[PromptInputs], raw, sampling_params, use_tqdm) -> list[RequestOutput]:
        n = len(inputs)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * n
        if len(params) != n:
            raise ValueError(f"got {len(params)} sampling_params for {n} prompts; pass one or one per prompt")
        gens = []
        params = [p or SamplingParams() for p in params]
        for i, p in enumerate(params):
            if p.seed is None and self.seed is not None:
                p = SamplingParams(**{**p.__dict__, "seed": self.seed})
            gens.append(p.to_generation_config(self._pipe.session_len, self._pipe.tokenizer))
            if p.truncate_prompt_tokens is not None:
                inputs[i] = _truncated(inputs[i], p.truncate_prompt_tokens)
        responses = self._pipe.run(inputs, gens, raise_errors=True, use_tqdm=use_tqdm, prepare=lambda x: x)
        samples: list[list] = [[] for _ in inputs]  # n per prompt, in order
        for r in responses:
            samples[r.index].append(r)
        tok = self._pipe.tokenizer
        outs = []
        for x, rs, p, sp in zip(inputs, samples, raw, params):
            self._ids += 1
            prompt_text = p if isinstance(p, str) else (p.get("prompt") if isinstance(p, dict) else None)
            prompt_lp = [d if d is None else _logprobs(d, t, None, tok)
                         for d, t in zip(rs[0].prompt_logprobs, x.token_ids)] if rs[0].prompt_logprobs else None
            outputs = [_completion(k, r, tok) for k, r in enumerate(rs)]
            if not sp.detokenize:
                for o in outputs:
                    o.text = ""
            outs.append(RequestOutput(str(self._ids), prompt_text, list(x.token_ids), outputs,
                                      prompt_logprobs=prompt_lp))
            failed = next((r.error for r in rs if r.error), None)
            if failed:
                raise RuntimeError(f"request {self._ids} failed: {failed}")
        return outs


def _bad_words_ids(words: list[str], tokenizer) -> list[list[int]]:
    """vLLM's bad_words as token sequences: each word as it tokenizes alone and after a space."""
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"bad_words={words!r} is invalid: a list of non-empty strings")
    out = []
    for w in words:
        for text in (w, " " + w.lstrip()):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids and ids not in out:
                out.append(ids)
    return out


def _truncated(inputs: PromptInputs, k: int) -> PromptInputs:
    """The last ``k`` prompt tokens (vLLM's truncate_prompt_tokens); text-only prompts."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"truncate_prompt_tokens={k!r} is invalid: an integer >= 1")
    if inputs.mm_items and len(inputs.token_ids) > k:
        raise ValueError("truncate_prompt_tokens would cut a prompt with images; it applies to text-only prompts")
    return PromptInputs(inputs.token_ids[-k:], inputs.mm_items, inputs.mrope_positions, inputs.rope_delta)


def _completion(index: int, r, tokenizer) -> CompletionOutput:
    """One sample as vLLM shapes it."""
    lp = r.logprobs
    cum = sum(d[t] for d, t in zip(lp, r.token_ids)) if lp else None
    logprobs = [_logprobs(d, t, rank, tokenizer) for d, t, rank in zip(lp, r.token_ids, r.logprob_ranks)] \
        if lp else None
    return CompletionOutput(index, r.text, r.token_ids, cum, logprobs,
                            r.finish_reason if r.finish_reason != "error" else "abort", r.stop_reason)


def _logprobs(d: dict[int, float], token: int, rank: Optional[int], tokenizer) -> dict[int, Logprob]:
    """One position as vLLM gives it: the token (with its rank, when known) and the alternatives,
    ranked by their order."""
    out = {token: Logprob(d[token], rank, tokenizer.decode([token]))}
    for i, (t, v) in enumerate(sorted(d.items(), key=lambda kv: -kv[1]), 1):
        if t != token:
            out[t] = Logprob(v, i, tokenizer.decode([t]))
    return out


def _token_ids(ids, vocab: int) -> list[int]:
    """``prompt_token_ids`` as a list of ints in ``[0, vocab)``; else a ``ValueError`` naming what is wrong."""
    if isinstance(ids, (str, bytes, dict)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"'prompt_token_ids' must be a list of ints, got {type(ids).__name__}")
    out = []
    for t in ids:
        try:
            if isinstance(t, bool):
                raise TypeError
            out.append(operator.index(t))
        except TypeError:
            raise ValueError(f"'prompt_token_ids' must hold ints, got {type(t).__name__} {str(t)[:40]!r}") from None
    check_token_ids(out, vocab, "prompt_token_ids")
    return out


def _images_of(mm: dict) -> list:
    unknown = set(mm) - {"image"}
    if unknown:
        raise ValueError(f"multi_modal_data keys {sorted(unknown)} are not supported; accepted: 'image'")
    img = mm.get("image")
    if img is None:
        return []
    items = img if isinstance(img, (list, tuple)) else [img]
    out = []
    for it in items:
        if isinstance(it, torch.Tensor):
            out.extend(list(it) if it.dim() == 3 else [it])
        else:
            out.append(load_image(it))
    return out


__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob"]
