"""Structured output: a request's grammar, and the tokens it allows at each step.

A request asks for a shape with ``GenerationConfig.response_format``, in LMDeploy's form
(``{"type": "json_schema", "json_schema": {"schema": {...}}}``, ``{"type": "json_object"}``,
``{"type": "regex_schema", "regex_schema": "..."}``) or in two more that vLLM's guided decoding
needs (``{"type": "choice", "choice": [...]}``, ``{"type": "grammar", "grammar": "<Lark or
GBNF>"}``). ``check_response_format`` checks its structure and bounds where the config is made;
``GrammarCompiler.matcher`` compiles it for the model's tokenizer when the request enters the
engine (a ``ValueError`` naming the error: a 400 in the server) and gives the request its own
matcher, copied from a compiled one cached by the grammar's source.

The grammar engine is llguidance (an Earley parser over a lazily built lexer, in Rust): it
computes a row's allowed-token bitmask without the GIL, for all constrained rows of a step at
once, and advances with each sampled token. The engine asks it for masks (``allowed_tokens``),
the sampler applies them to the constrained rows only, and ``_update`` feeds each sampled token
back; a grammar that is complete ends its request with finish_reason "stop".
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Optional

import torch

MAX_SOURCE_CHARS = 256 * 1024  # a schema (as JSON), regex or grammar
MAX_CHOICES = 1024
MAX_CHOICE_CHARS = 4096
FORMAT_TYPES = ("text", "json_object", "json_schema", "regex_schema", "choice", "grammar")
# Compact JSON, as json.dumps writes it: a model may not pad its output with endless whitespace.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def check_response_format(rf: Any) -> Optional[dict]:
    """The response format with its structure checked (no grammar compiled): a dict, or None for
    none / ``{"type": "text"}``. Raises ``ValueError`` naming what is wrong and what is accepted."""
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in FORMAT_TYPES:
        raise ValueError(f"response_format={_brief(rf)} is invalid: a dict whose 'type' is one of {FORMAT_TYPES}")
    kind = rf["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": kind}
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise ValueError(f"response_format json_schema.schema is not valid JSON: {e}") from None
        if not isinstance(schema, (dict, bool)):
            raise ValueError("response_format of type 'json_schema' needs 'json_schema': {'name': ..., "
                             "'schema': <a JSON schema object>}")
        _bounded(json.dumps(schema), "json_schema.schema")
        return {"type": kind, "json_schema": {**spec, "schema": schema}}
    if kind == "choice":
        choice = rf.get("choice")
        if not (isinstance(choice, (list, tuple)) and 0 < len(choice) <= MAX_CHOICES
                and all(isinstance(c, str) and 0 < len(c) <= MAX_CHOICE_CHARS for c in choice)):
            raise ValueError(f"choice={_brief(choice)} is invalid: 1 to {MAX_CHOICES} non-empty strings of at "
                             f"most {MAX_CHOICE_CHARS} characters")
        return {"type": kind, "choice": list(choice)}
    source = rf.get(kind)  # regex_schema / grammar: the source text under the type's own key
    if not isinstance(source, str) or not source:
        raise ValueError(f"response_format of type {kind!r} needs {kind!r}: a non-empty string")
    _bounded(source, kind)
    return {"type": kind, kind: source}


def _bounded(text: str, what: str) -> None:
    if len(text) > MAX_SOURCE_CHARS:
        raise ValueError(f"{what} has {len(text)} characters; at most {MAX_SOURCE_CHARS} are accepted")


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def grammar_source(rf: dict) -> str:
    """The llguidance grammar for a checked response format."""
    import llguidance

    kind = rf["type"]
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    if kind == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(rf["json_schema"]["schema"], defaults=JSON_OPTIONS)
    if kind == "regex_schema":
        return llguidance.LLMatcher.grammar_from_regex(rf["regex_schema"])
    if kind == "choice":  # Lark string literals take JSON's escapes
        return llguidance.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in rf["choice"]))
    source = rf["grammar"]
    if "::=" in source:  # GBNF (llama.cpp's, and vLLM's EBNF examples)
        from llguidance.gbnf_to_lark import gbnf_to_lark

        try:
            source = gbnf_to_lark(source)
        except Exception as e:  # noqa: BLE001 - its parse errors are of several types
            raise ValueError(f"grammar is not valid GBNF: {e}") from None
    return llguidance.LLMatcher.grammar_from_lark(source)


class GrammarCompiler:
    """Compiles response formats for one tokenizer; keeps the last ``cache_size`` compiled
    grammars by source. Thread-safe: requests are added from any thread."""

    def __init__(self, tokenizer, eos_token_ids, cache_size: int = 64):
        self.tokenizer, self.eos = tokenizer, sorted(eos_token_ids)
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._lltok = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self.compiles = 0  # grammars compiled (cache misses), for tests and benchmarks
        self._executor = None

    def _tokenizer(self):
        if self._lltok is None:
            import llguidance.hf

            try:
                self._lltok = llguidance.hf.from_tokenizer(self.tokenizer, eos_token=self.eos or None)
            except Exception as e:  # noqa: BLE001 - a tokenizer llguidance cannot read
                raise ValueError(f"structured output is not available for this model's tokenizer "
                                 f"({type(self.tokenizer).__name__}): {e}") from None
        return self._lltok

    def matcher(self, rf: dict):
        """A fresh matcher at the start of the grammar of ``rf`` (checked by check_response_format)."""
        return self.compile(rf).deep_copy()

    def compile(self, rf: dict):
        """The cached compiled grammar of ``rf`` (compiled now if it is not cached): a ``ValueError``
        names what does not compile. Never advance it; ``matcher`` gives a request its own copy."""
        import llguidance

        source = grammar_source(rf)
        with self._lock:
            compiled = self._compiled.get(source)
            if compiled is not None:
                self._compiled.move_to_end(source)
                return compiled
            compiled = llguidance.LLMatcher(self._tokenizer(), source, log_level=0)
            if compiled.is_error():
                raise ValueError(f"response_format ({rf['type']}) cannot be compiled: {compiled.get_error()}")
            self.compiles += 1
            self._compiled[source] = compiled
            while len(self._compiled) > self.cache_size:
                self._compiled.popitem(last=False)
            return compiled

    def allowed_tokens(self, matchers: list, width: int) -> torch.Tensor:
        """Bool ``[len(matchers), width]``: the tokens each matcher allows next, computed for all
        rows at once on llguidance's threads (without the GIL). Logit columns past the tokenizer's
        vocabulary are never allowed."""
        import llguidance

        if self._executor is None:
            self._executor = llguidance.LLExecutor(num_threads=max(1, min(4, torch.get_num_threads())))
        vocab = self._tokenizer().vocab_size
        words = (vocab + 31) // 32
        bits = torch.empty(len(matchers), words, dtype=torch.int32)  # 32 tokens a word, low bit first
        self._executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], bits.data_ptr(),
                                               words * 4, len(matchers))
        allowed = ((bits.unsqueeze(-1) >> _SHIFTS) & 1).bool().flatten(1)[:, :min(vocab, width)]
        if width > allowed.shape[1]:
            allowed = torch.nn.functional.pad(allowed, (0, width - allowed.shape[1]), value=False)
        return allowed


_SHIFTS = torch.arange(32, dtype=torch.int32)
