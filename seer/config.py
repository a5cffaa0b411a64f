"""User-facing configuration: frozen-by-convention dataclasses validated once.

Every check raises ``ValueError`` naming the field, the bad value and what is
accepted, so a user can act on it. Names follow LMDeploy (``GenerationConfig``,
``TurbomindEngineConfig``/``PytorchEngineConfig``, ``VisionConfig``,
``ChatTemplateConfig``) so code written for it ports by changing the import.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .engine.grammar import check_response_format

OUTPUT_LOGITS = (None, "generation", "all")  # "all": the prompt's logits too
# Below this temperature sampling is greedy (as in vLLM): dividing logits by a subnormal
# temperature overflows them to inf and the draw to NaN.
GREEDY_TEMPERATURE = 1e-5
# Bounds on what one request may ask the engine to check every step.
MAX_STOP_WORDS = 64
MAX_STOP_WORD_CHARS = 1024
MAX_STOP_TOKEN_IDS = 256
MAX_N = 128  # samples per prompt
MAX_LOGIT_BIAS = 300  # token ids one request may bias (OpenAI's bound)
SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.Generator.manual_seed takes


class UnknownFieldError(TypeError, ValueError):
    """A config built with a field it does not have. A TypeError as a dataclass raises it, and a
    ValueError like every other bad value, naming the fields that are accepted."""


def known_fields(cls):
    """Class decorator for a config dataclass: an unknown keyword names the accepted fields."""
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    def __init__(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise UnknownFieldError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}; "
                                    f"its fields are: {', '.join(names)}")
        init(self, *args, **kwargs)

    __init__.__doc__, __init__.__wrapped__ = init.__doc__, init
    cls.__init__ = __init__
    return cls


def _check(ok: bool, name: str, value, accepted: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: {accepted}")


def _real(v) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(values, limit: int = 5):
    """A long list shown by its first items and its length, for error messages."""
    if isinstance(values, (list, tuple)) and len(values) > limit:
        return f"[{', '.join(repr(v)[:40] for v in values[:limit])}, ... ({len(values)} items)]"
    return values


@known_fields
@dataclass
class GenerationConfig:
    """How to sample one request.

    Greedy decoding unless ``do_sample=True`` (LMDeploy's default); ``top_k=1``
    or ``temperature=0`` also mean greedy.
    """

    n: int = 1
    max_new_tokens: int = 512
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 50
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    random_seed: Optional[int] = None
    stop_words: Optional[Sequence[str]] = None
    stop_token_ids: Optional[Sequence[int]] = None
    include_stop_str_in_output: bool = False  # keep the stop string that ended the answer (vLLM's)
    # token sequences never completed: a sequence's last token is banned once the output ends with the rest
    bad_words_ids: Optional[Sequence[Sequence[int]]] = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logprobs: Optional[int] = None
    output_logits: Optional[str] = None
    logit_bias: Optional[dict] = None  # token id -> value added to its logit before sampling (OpenAI's)
    # Log-probabilities of the prompt's tokens (each given the tokens before it) with this many top
    # alternatives (0: the token's own only); None: not computed. The prompt is then computed
    # whole, not taken from the prefix cache.
    prompt_logprobs: Optional[int] = None
    # Structured output (LMDeploy's): {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}},
    # {"type": "json_object"}, {"type": "regex_schema", "regex_schema": "..."}, and for vLLM's guided
    # decoding {"type": "choice", "choice": [...]} and {"type": "grammar", "grammar": "<Lark or GBNF>"}.
    response_format: Optional[dict] = None

    def __post_init__(self):
        self.response_format = check_response_format(self.response_format)
        _check(_int(self.n) and 1 <= self.n <= MAX_N, "n", self.n,
               f"an integer in [1, {MAX_N}]: samples per prompt (each a Response, in prompt order)")
        _check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
               "max_new_tokens", self.max_new_tokens, "an integer >= 1")
        _check(isinstance(self.min_new_tokens, int) and 0 <= self.min_new_tokens,
               "min_new_tokens", self.min_new_tokens, "an integer >= 0")
        _check(_real(self.temperature) and 0 <= self.temperature <= 100, "temperature", self.temperature,
               "a finite number in [0, 100] (0 means greedy)")
        _check(_real(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "a number in (0, 1]")
        _check(_int(self.top_k) and self.top_k >= 0, "top_k", self.top_k,
               "an integer >= 0 (0 means no top-k cut)")
        _check(_real(self.min_p) and 0 <= self.min_p <= 1, "min_p", self.min_p, "a number in [0, 1]")
        _check(_real(self.repetition_penalty) and 0.01 <= self.repetition_penalty <= 100, "repetition_penalty",
               self.repetition_penalty, "a number in [0.01, 100] (1.0 means none)")
        _check(_real(self.presence_penalty) and -2 <= self.presence_penalty <= 2, "presence_penalty",
               self.presence_penalty, "a number in [-2, 2]")
        _check(_real(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2, "frequency_penalty",
               self.frequency_penalty, "a number in [-2, 2]")
        _check(self.random_seed is None or (_int(self.random_seed)
                                            and SEED_RANGE[0] <= self.random_seed <= SEED_RANGE[1]),
               "random_seed", self.random_seed, "None or an integer in [-2**63, 2**64 - 1]")
        _check(self.logprobs is None or (_int(self.logprobs) and 0 <= self.logprobs <= 20),
               "logprobs", self.logprobs, "None or an integer in [0, 20]")
        _check(self.prompt_logprobs is None or (_int(self.prompt_logprobs) and 0 <= self.prompt_logprobs <= 20),
               "prompt_logprobs", self.prompt_logprobs, "None or an integer in [0, 20]")
        _check(self.output_logits in OUTPUT_LOGITS, "output_logits", self.output_logits,
               f"one of {OUTPUT_LOGITS}")
        if isinstance(self.stop_words, str):
            self.stop_words = [self.stop_words]
        _check(self.stop_words is None or (len(self.stop_words) <= MAX_STOP_WORDS and all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_WORD_CHARS for s in self.stop_words)),
               "stop_words", _short(self.stop_words),
               f"at most {MAX_STOP_WORDS} non-empty strings of at most {MAX_STOP_WORD_CHARS} characters")
        _check(self.stop_token_ids is None or (len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS and all(
            _int(t) and t >= 0 for t in self.stop_token_ids)),
               "stop_token_ids", _short(self.stop_token_ids),
               f"at most {MAX_STOP_TOKEN_IDS} token ids (integers >= 0)")
        _check(self.bad_words_ids is None or (len(self.bad_words_ids) <= MAX_STOP_WORDS and all(
            isinstance(w, (list, tuple)) and 0 < len(w) <= 64 and all(_int(t) and t >= 0 for t in w)
            for w in self.bad_words_ids)), "bad_words_ids", _short(self.bad_words_ids),
               f"at most {MAX_STOP_WORDS} non-empty lists of at most 64 token ids")
        _check(self.logit_bias is None or (isinstance(self.logit_bias, dict) and len(self.logit_bias) <= MAX_LOGIT_BIAS
                                           and all(_int(t) and t >= 0 and _real(b) and -100 <= b <= 100
                                                   for t, b in self.logit_bias.items())),
               "logit_bias", self.logit_bias if not isinstance(self.logit_bias, dict) or len(self.logit_bias) < 6
               else f"{{... {len(self.logit_bias)} entries}}",
               f"None or a dict of at most {MAX_LOGIT_BIAS} token ids (integers >= 0) to biases in [-100, 100]")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.top_k == 1 or self.temperature < GREEDY_TEMPERATURE

    def replace(self, **changes) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)


@known_fields
@dataclass
class EngineConfig:
    """How the engine runs: memory, batching, caching and placement."""

    session_len: Optional[int] = None  # max prompt+output tokens; None: the model's max positions
    max_batch_size: int = 128  # max sequences in one step
    cache_max_entry_count: float = 0.8  # share of free memory for the KV cache once weights are loaded
    block_size: int = 16  # tokens per KV-cache block
    enable_prefix_caching: bool = True
    max_prefill_token_num: int = 4096  # max tokens in one step (chunked prefill splits longer prompts)
    dtype: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16"
    device: Optional[str] = None  # None: cuda when available, else cpu
    tp: int = 1  # tensor-parallel ranks, one process each (seer.engine.parallel; families: ModelFamily.tp_shape)
    distributed_executor_backend: str = "mp"  # ranks 1..tp-1 as local processes ("mp") or Ray actors ("ray")
    num_gpu_blocks: Optional[int] = None  # fix the pool size instead of deriving it from memory
    max_queued_requests: Optional[int] = None  # reserved for the server's back-pressure
    # Quantised weights made at load from the fp32/bf16 checkpoint (seer.layers.quant) for the decoder's
    # linear layers and the LM head: "int8" (a scale per output row), "int4" (a scale per 32 weights);
    # on CPU the layers' inputs are rounded to int8 per row too (integer kernels); None: the checkpoint's dtype.
    quantization: Optional[str] = None
    # What the KV cache stores: "auto" (the model's dtype) or "bfloat16" (half the bytes of fp32: decode
    # attention, which reads the whole cache every step, reads half as much; keys and values are
    # rounded to bf16 wherever attention reads them, so chunking and batching still agree).
    kv_cache_dtype: str = "auto"
    # LMDeploy's other fields: mapped where they mean something here, accepted with their
    # do-nothing values where they do not, refused (ValueError) where the feature is missing.
    device_type: Optional[str] = None  # "cuda" or "cpu": what ``device`` says (when device is None)
    cache_block_seq_len: Optional[int] = None  # TurboMind's name for block_size
    eager_mode: bool = False  # no effect: seer runs eagerly (no CUDA graphs yet)
    thread_safe: bool = False  # no effect: the engine takes requests from any thread
    model_format: Optional[str] = None  # "hf" (or None); quantised checkpoints (awq, gptq) are not supported
    quant_policy: int = 0  # 0 only: KV-cache quantisation (4, 8) is not supported
    rope_scaling_factor: float = 0.0  # 0 only: the checkpoint's own rope_scaling applies
    dp: int = 1  # 1 only: data parallelism is replicas behind a router, not one engine
    download_dir: Optional[str] = None  # no effect: seer loads local folders only
    revision: Optional[str] = None  # no effect: seer loads local folders only

    def __post_init__(self):
        _check(self.session_len is None or (isinstance(self.session_len, int) and self.session_len >= 16),
               "session_len", self.session_len, "None or an integer >= 16")
        _check(isinstance(self.max_batch_size, int) and self.max_batch_size >= 1,
               "max_batch_size", self.max_batch_size, "an integer >= 1")
        _check(0 < self.cache_max_entry_count <= 1, "cache_max_entry_count",
               self.cache_max_entry_count, "a share in (0, 1]")
        _check(isinstance(self.block_size, int) and self.block_size >= 1
               and self.block_size & (self.block_size - 1) == 0,
               "block_size", self.block_size, "a power of two")
        _check(isinstance(self.max_prefill_token_num, int) and self.max_prefill_token_num >= 1,
               "max_prefill_token_num", self.max_prefill_token_num, "an integer >= 1")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", self.dtype,
               "one of 'auto', 'float32', 'bfloat16', 'float16'")
        _check(_int(self.tp) and self.tp >= 1, "tp", self.tp, "an integer >= 1")
        _check(self.distributed_executor_backend in ("mp", "ray"), "distributed_executor_backend",
               self.distributed_executor_backend, "'mp' (local processes) or 'ray' (Ray actors)")
        _check(self.quantization in (None, "int8", "int4"), "quantization", self.quantization,
               "None, 'int8' or 'int4' (quantised at load; quantised checkpoints are not supported)")
        if self.kv_cache_dtype == "bf16":
            self.kv_cache_dtype = "bfloat16"
        _check(self.kv_cache_dtype in ("auto", "bfloat16"), "kv_cache_dtype", self.kv_cache_dtype,
               "'auto' (the model's dtype) or 'bfloat16' ('bf16')")
        _check(self.num_gpu_blocks is None or self.num_gpu_blocks >= 1, "num_gpu_blocks",
               self.num_gpu_blocks, "None or an integer >= 1")
        _check(self.device_type in (None, "cuda", "cpu"), "device_type", self.device_type,
               "None, 'cuda' or 'cpu' (seer runs on CUDA and on the CPU)")
        if self.device is None and self.device_type is not None:
            self.device = self.device_type
        if self.cache_block_seq_len is not None:
            _check(_int(self.cache_block_seq_len) and self.cache_block_seq_len >= 1
                   and self.cache_block_seq_len & (self.cache_block_seq_len - 1) == 0,
                   "cache_block_seq_len", self.cache_block_seq_len, "a power of two (seer's block_size)")
            self.block_size = self.cache_block_seq_len
        _check(self.model_format in (None, "hf"), "model_format", self.model_format,
               "None or 'hf': quantised checkpoints (awq, gptq, fp8) are not supported")
        _check(self.quant_policy == 0, "quant_policy", self.quant_policy,
               "0: KV-cache quantisation (4, 8) is not supported")
        _check(self.rope_scaling_factor in (0, 0.0, None), "rope_scaling_factor", self.rope_scaling_factor,
               "0: seer uses the checkpoint's rope_scaling; edit config.json to change it")
        _check(self.dp == 1, "dp", self.dp, "1: run replicas behind a load balancer for data parallelism")


# LMDeploy's two engine configs map to ours; their extra fields are accepted where harmless.
TurbomindEngineConfig = EngineConfig
PytorchEngineConfig = EngineConfig


def check_pixel_bounds(min_pixels, max_pixels, where: str = "") -> None:
    """``min_pixels`` / ``max_pixels``: None or integers >= 1, min <= max."""
    for name, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        _check(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), where + name, v,
               "None or an integer >= 1 (a number of pixels)")
    if min_pixels is not None and max_pixels is not None:
        _check(min_pixels <= max_pixels, where + "min_pixels", min_pixels,
               f"it must not exceed max_pixels={max_pixels}")


def check_max_tiles(max_dynamic_patch, where: str = "") -> None:
    v = max_dynamic_patch
    _check(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), where + "max_dynamic_patch",
           v, "None or an integer >= 1 (tiles per image)")


@known_fields
@dataclass
class VisionConfig:
    """How images are encoded."""

    max_batch_size: int = 8  # images per vision-encoder forward
    thread_safe: bool = False  # accepted for LMDeploy compatibility; unused
    feature_cache_size: int = 256  # images whose features stay cached (by content hash)
    vision_tower_path: Optional[str] = None  # original-layout LLaVA: the CLIP folder its config names
    # Dynamic-resolution families (Qwen2-VL, Qwen2.5-VL): each image is resized, keeping its aspect
    # ratio, to between min_pixels and max_pixels pixels; None: the model's preprocessor_config.json.
    # A request overrides them per image with an image part's "min_pixels" / "max_pixels" keys.
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    # Tiling families (InternVL): at most this many tiles per image (besides the thumbnail); None:
    # the checkpoint's ``max_dynamic_patch``. An image part's "max_dynamic_patch" key overrides it.
    max_dynamic_patch: Optional[int] = None

    def __post_init__(self):
        _check(isinstance(self.max_batch_size, int) and self.max_batch_size >= 1,
               "max_batch_size", self.max_batch_size, "an integer >= 1")
        _check(isinstance(self.feature_cache_size, int) and self.feature_cache_size >= 0,
               "feature_cache_size", self.feature_cache_size, "an integer >= 0")
        check_pixel_bounds(self.min_pixels, self.max_pixels, "VisionConfig.")
        check_max_tiles(self.max_dynamic_patch, "VisionConfig.")


@known_fields
@dataclass
class ChatTemplateConfig:
    """Which chat template renders conversations into a prompt.

    ``model_name`` picks a built-in template by name; the other fields override
    parts of it. Without a ``ChatTemplateConfig``, the model's own template is used
    when it ships one, otherwise a built-in matched from the model's config.
    """

    model_name: str
    system: Optional[str] = None  # replaces the template's default system prompt
    meta_instruction: Optional[str] = None  # LMDeploy's name for the same thing
    stop_words: Optional[Sequence[str]] = None  # replaces the template's stop words
    user: Optional[str] = None
    eoh: Optional[str] = None
    assistant: Optional[str] = None
    eoa: Optional[str] = None
    separator: Optional[str] = None
    eosys: Optional[str] = None  # LMDeploy's end-of-system marker (the system block's suffix)

    def __post_init__(self):
        _check(isinstance(self.model_name, str) and self.model_name, "model_name",
               self.model_name, "a template name (see seer.chat_template.BUILTIN_TEMPLATES)")
        if self.system is None:
            self.system = self.meta_instruction


_ENGINE_FIELDS = {f.name for f in dataclasses.fields(EngineConfig)}


def engine_config_from(obj) -> EngineConfig:
    """Accept our EngineConfig, None, a dict, or a foreign config object with like-named fields."""
    if obj is None:
        return EngineConfig()
    if isinstance(obj, EngineConfig):
        return obj
    if isinstance(obj, dict):
        items = obj
    else:
        items = {k: v for k, v in vars(obj).items() if k in _ENGINE_FIELDS}
    unknown = set(items) - _ENGINE_FIELDS
    if unknown:
        raise ValueError(f"unknown engine option(s) {sorted(unknown)}; accepted: {sorted(_ENGINE_FIELDS)}")
    return EngineConfig(**items)


__all__ = [
    "GenerationConfig", "EngineConfig", "TurbomindEngineConfig", "PytorchEngineConfig",
    "VisionConfig", "ChatTemplateConfig", "engine_config_from",
]
