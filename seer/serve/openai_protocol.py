"""The OpenAI wire format: request bodies in, response and chunk dicts out.

Requests are validated by pydantic (shape and types) and then by ``GenerationConfig``
(values); both failures become ``BadRequest`` (HTTP 400) with a message that names the
field and what is accepted. Responses are plain dicts shaped like OpenAI's, built here
so the server module only moves data.

Beyond OpenAI's fields, the extra sampling fields vLLM and LMDeploy accept are taken:
``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``ignore_eos``,
``skip_special_tokens``, ``stop_token_ids``; and OpenAI's ``logit_bias`` is applied.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import GenerationConfig
from ..engine.grammar import check_response_format
from ..llm import StructuredOutputsParams
from .tool_parsers import MAX_TOOLS


class BadRequest(ValueError):
    """A client error: becomes an OpenAI-style error body with this status."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None,
                 type_: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.param, self.type, self.headers = status, param, type_, headers


def check_in_vocab(ids, vocab: int, what: str, param: Optional[str] = None) -> None:
    """A ``BadRequest`` naming the first few of ``ids`` that are not token ids of a ``vocab``-token
    vocabulary."""
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise BadRequest(f"{what} {bad[:5]} are outside the vocabulary [0, {vocab})", param=param)


def error_body(message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[Union[int, str]] = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# Bounds on one request, carried by the schema (``/openapi.json``) as well as enforced here.
MAX_N = 16  # choices per prompt
MAX_STOP = 16  # stop strings (OpenAI allows 4)
MAX_STOP_CHARS = 1024  # characters per stop string
MAX_STOP_TOKEN_IDS = 64
MAX_PROMPTS = 64  # prompts in one completions request
MAX_MESSAGES = 1024  # messages in one chat request
MAX_LOGPROBS = 20  # top alternatives per token
MAX_LOGIT_BIAS = 300  # biased token ids per request (OpenAI's bound)
INT64 = (-2**63, 2**63 - 1)

# Every field strictly typed: "4" is not an integer, "yes" not a boolean, and no number is
# Infinity or NaN (Python's JSON reader accepts both literals). A field seer does not know is a
# 400, not silently ignored (a client that asks for best_of, suffix or logit_bias_type must not
# get an answer that quietly lacks them); the fields it accepts with no effect are declared.
_STRICT = ConfigDict(extra="forbid", strict=True)
NO_EFFECT_FIELDS = ("user", "store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier",
                    "guided_decoding_backend")
# The fields that ask for structured output (at most one per request): OpenAI's and vLLM's.
STRUCTURED_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                     "guided_grammar")


def _number(default, description: str, **bounds):
    return Field(default, allow_inf_nan=False, description=description, **bounds)


_StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
_TokenId = Annotated[int, Field(ge=0)]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Union[int, str]] = None


class ErrorResponse(BaseModel):
    """What every 4xx and 5xx of the API carries (OpenAI's shape)."""

    error: ErrorDetail


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool = False


def _valid_text(value: Any, field: str) -> Any:
    """``value`` if all its strings are valid text (a field validator's body), else a ``ValueError``."""
    bad = _bad_text(value, field)
    if bad:
        raise ValueError(f"{bad} is not valid text: it holds a lone surrogate (such as \\ud800), "
                         "which cannot be encoded as UTF-8")
    return value


def _bad_text(value: Any, path: str) -> Optional[str]:
    """The path of the first string in ``value`` (strings, lists, dicts: keys and values) that is not
    encodable as UTF-8, i.e. holds a lone surrogate such as "\\ud800" that JSON escapes can carry."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = _bad_text(v, f"{path}[{i}]")
            if bad:
                return bad
    elif isinstance(value, dict):
        for k, v in value.items():
            bad = _bad_text(k, f"{path} (a key)") or _bad_text(v, f"{path}.{k}" if isinstance(k, str) else path)
            if bad:
                return bad
    return None


class _SamplingFields(BaseModel):
    model_config = _STRICT

    model: Optional[str] = None
    n: int = Field(1, ge=1, le=MAX_N, description=f"choices per prompt, in [1, {MAX_N}]")
    temperature: Optional[float] = _number(None, "in [0, 2]; 0 means greedy (default 1)", ge=0, le=2)
    top_p: Optional[float] = _number(None, "in (0, 1] (default 1)", gt=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1, description="at most this many new tokens (>= 1)")
    stop: Optional[Union[_StopString, Annotated[list[_StopString], Field(max_length=MAX_STOP)]]] = Field(
        None, description=f"a string or a list of at most {MAX_STOP} strings (OpenAI allows 4), each of 1 to "
                          f"{MAX_STOP_CHARS} characters: the answer ends before the first one it produces")
    seed: Optional[int] = Field(None, ge=INT64[0], le=INT64[1], description="a 64-bit signed integer; "
                                "choice i samples with seed + i")
    presence_penalty: float = _number(0.0, "in [-2, 2]", ge=-2, le=2)
    frequency_penalty: float = _number(0.0, "in [-2, 2]", ge=-2, le=2)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None  # these and the next: accepted, no effect here (NO_EFFECT_FIELDS)
    store: Optional[bool] = None
    metadata: Optional[dict[str, str]] = Field(None, max_length=16)
    service_tier: Optional[str] = Field(None, max_length=64)
    parallel_tool_calls: Optional[bool] = None  # false: a forced tool_choice makes exactly one call
    prompt_cache_key: Optional[str] = Field(None, max_length=1024)
    safety_identifier: Optional[str] = Field(None, max_length=1024)
    # vLLM / LMDeploy extras
    top_k: Optional[int] = Field(None, ge=-1, description="-1 or 0: no top-k cut; k >= 1: the k likeliest")
    min_p: float = _number(0.0, "in [0, 1]", ge=0, le=1)
    repetition_penalty: float = _number(1.0, "in [0.01, 100]; 1 means none", ge=0.01, le=100)
    min_tokens: int = Field(0, ge=0, description="no end of sequence before this many new tokens")
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stop_token_ids: Optional[Annotated[list[_TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)]] = Field(
        None, description=f"at most {MAX_STOP_TOKEN_IDS} token ids that end the answer")
    logit_bias: Optional[dict[str, Annotated[float, Field(ge=-100, le=100)]]] = Field(
        None, max_length=MAX_LOGIT_BIAS, description=f"at most {MAX_LOGIT_BIAS} token ids (as strings) mapped to a "
                                                      "bias in [-100, 100] added to their logits before sampling")
    # Structured output: OpenAI's response_format, vLLM's structured_outputs and guided_* (one of them)
    response_format: Optional[dict[str, Any]] = Field(
        None, description='{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": '
                          '{"name": ..., "schema": {...}, "strict": true}}')
    structured_outputs: Optional[dict[str, Any]] = Field(
        None, description="vLLM's: one of json (a schema), regex, choice, grammar (Lark or GBNF), json_object")
    guided_json: Optional[Union[dict[str, Any], str]] = Field(None, description="a JSON schema the output follows")
    guided_regex: Optional[str] = Field(None, description="a regular expression the output matches")
    guided_choice: Optional[Annotated[list[str], Field(min_length=1)]] = Field(
        None, description="the output is one of these strings")
    guided_grammar: Optional[str] = Field(None, description="a Lark or GBNF grammar the output follows")
    guided_decoding_backend: Optional[str] = Field(None, max_length=64)

    @field_validator("n", "max_tokens", "seed", "top_k", "min_tokens", "stop_token_ids", "max_completion_tokens",
                     "top_logprobs", "logprobs", "prompt", mode="before", check_fields=False)
    @classmethod
    def _integral(cls, value):
        """4.0 is the integer 4 (JSON Schema's integers include it); 4.5, "4" and true stay errors."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            return [cls._integral(v) for v in value]
        return value

    @field_validator("model", "user", "stop", "messages", "prompt", "tools", "tool_choice", *STRUCTURED_FIELDS,
                     check_fields=False)
    @classmethod
    def _utf8(cls, value, info):
        return _valid_text(value, info.field_name)

    def prompt_logprobs(self) -> Optional[int]:
        """Top alternatives wanted for each prompt token (None: no prompt logprobs)."""
        return None

    def token_bias(self) -> Optional[dict[int, float]]:
        """``logit_bias`` with its keys as token ids (JSON keys are strings)."""
        if not self.logit_bias:
            return None
        bad = [k for k in self.logit_bias if not (k.isascii() and k.isdigit() and len(k) <= 12)]
        if bad:
            raise BadRequest(f"logit_bias keys must be token ids written as decimal strings, got {bad[:3]}",
                             param="logit_bias")
        return {int(k): float(v) for k, v in self.logit_bias.items()}

    def structured_format(self) -> Optional[dict]:
        """The one structured-output field given, as a ``GenerationConfig.response_format``."""
        given = [f for f in STRUCTURED_FIELDS if getattr(self, f) is not None]
        if len(given) > 1:
            raise BadRequest(f"give at most one of {', '.join(STRUCTURED_FIELDS)}; got {', '.join(given)}",
                             param=given[1])
        if not given:
            return None
        field, value = given[0], getattr(self, given[0])
        try:
            if field == "response_format":
                if value.get("type") not in ("text", "json_object", "json_schema"):
                    raise ValueError(f"response_format type {value.get('type')!r} is not supported: "
                                     "'text', 'json_object' or 'json_schema'")
                return check_response_format(value)
            if field == "structured_outputs":
                return StructuredOutputsParams(**value).response_format()
            key = field.removeprefix("guided_")
            return StructuredOutputsParams(**{key: value}).response_format()
        except (TypeError, ValueError) as e:
            raise BadRequest(str(e), param=field) from None

    def generation_config(self, max_new_tokens: int, logprobs: Optional[int]) -> GenerationConfig:
        """Our sampling settings; ``max_new_tokens`` is the request's cap (or the session's)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        top_k = self.top_k if self.top_k is not None else 0  # the schema bounds it (and n) already
        try:
            return GenerationConfig(
                max_new_tokens=max_new_tokens, min_new_tokens=self.min_tokens,
                do_sample=temperature > 0, temperature=temperature,
                top_p=1.0 if self.top_p is None else self.top_p, top_k=max(top_k, 0), min_p=self.min_p,
                repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty, ignore_eos=self.ignore_eos,
                random_seed=self.seed, stop_words=[self.stop] if isinstance(self.stop, str) else self.stop,
                stop_token_ids=self.stop_token_ids, skip_special_tokens=self.skip_special_tokens,
                logit_bias=self.token_bias(),
                logprobs=logprobs, prompt_logprobs=self.prompt_logprobs(),
                response_format=self.structured_format())
        except ValueError as e:
            raise BadRequest(str(e)) from None


# What /openapi.json says a message is (the model takes any object and ``seer.messages`` checks it,
# with messages that name what is wrong): OpenAI's text and image parts; seer also takes ``video_url``,
# ``video`` and ``image`` parts (see ``seer.messages.PART_TYPES``).
_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
_IMAGE_PART = {"type": "object", "required": ["type", "image_url"],
               "properties": {"type": {"const": "image_url"},
                              "image_url": {"type": "object", "required": ["url"],
                                            "properties": {"url": {"type": "string",
                                                                   "description": "http(s) URL or data: URI"}}}}}
_TOOL_CALL = {"type": "object", "required": ["function"],
              "properties": {"id": {"type": "string"}, "type": {"const": "function"},
                             "function": {"type": "object", "required": ["name"],
                                          "properties": {"name": {"type": "string"},
                                                         "arguments": {"type": "string"}}}}}
_MESSAGE_SCHEMA = {"type": "object", "required": ["role"],
                   "properties": {"role": {"enum": ["system", "developer", "user", "assistant", "tool"],
                                           "description": "developer is taken as system"},
                                  "content": {"anyOf": [{"type": "string"},
                                                        {"type": "array",
                                                         "items": {"anyOf": [_TEXT_PART, _IMAGE_PART]}},
                                                        {"type": "null"}],
                                              "description": "null only in an assistant message with "
                                                             "tool_calls"},
                                  "tool_calls": {"type": "array", "items": _TOOL_CALL},
                                  "tool_call_id": {"type": "string"}, "name": {"type": "string"}}}


class ChatCompletionRequest(_SamplingFields):
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_MESSAGES,
                                           description=f"1 to {MAX_MESSAGES} messages; images in user messages "
                                                       "only", json_schema_extra={"items": _MESSAGE_SCHEMA})
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="at most this many new tokens (>= 1); "
                                                 "wins over max_tokens")
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                        description=f"alternatives per token, in [0, {MAX_LOGPROBS}]; "
                                                    "needs logprobs=true")
    tools: Optional[list[dict[str, Any]]] = Field(
        None, description=f'1 to {MAX_TOOLS} of {{"type": "function", "function": {{"name", "description", '
                          '"parameters": <JSON schema>}}}}, shown to the model through its chat template')
    tool_choice: Optional[Union[Literal["none", "auto", "required"], dict[str, Any]]] = Field(
        None, description='"auto" (default with tools: calls are parsed from the answer), "none", "required" or '
                          '{"type": "function", "function": {"name": ...}} (both enforced by a grammar)')

    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def num_logprobs(self) -> Optional[int]:
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequest("top_logprobs needs logprobs=true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


_TokenIds = Annotated[list[_TokenId], Field(min_length=1)]


class CompletionRequest(_SamplingFields):
    prompt: Union[str, Annotated[list[str], Field(max_length=MAX_PROMPTS)], _TokenIds,
                  Annotated[list[_TokenIds], Field(max_length=MAX_PROMPTS)]] = Field(
        description=f"a string, a list of at most {MAX_PROMPTS} strings, token ids, or a list of at most "
                    f"{MAX_PROMPTS} lists of token ids")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                    description=f"alternatives per token, in [0, {MAX_LOGPROBS}]")
    echo: bool = False
    max_tokens: Optional[int] = Field(16, ge=0, description="at most this many new tokens (OpenAI's default for "
                                      "completions: 16); 0 only with echo, to score the prompt (logprobs)")

    def max_new_tokens(self) -> Optional[int]:
        if self.max_tokens == 0:
            if not self.echo:
                raise BadRequest("max_tokens=0 is only accepted with echo=true (the prompt's logprobs, nothing "
                                 "generated); otherwise an integer >= 1", param="max_tokens")
            return 1  # one token is computed (the prompt's last logits are needed anyway) and dropped
        return self.max_tokens

    def prompt_logprobs(self) -> Optional[int]:
        """echo with logprobs scores the prompt too, as OpenAI's legacy API and vLLM do."""
        return self.logprobs if self.echo and self.logprobs is not None else None

    def num_logprobs(self) -> Optional[int]:
        return self.logprobs

    def prompts(self) -> list[Union[str, list[int]]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise BadRequest("prompt is empty: a string, a list of strings, or token ids", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


# ---- responses ------------------------------------------------------------------------------

def sse(obj: Any) -> str:
    """One Server-Sent Event carrying ``obj`` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def chat_logprobs(tokenizer, token_ids: list[int], logprobs: list[dict[int, float]], top: int) -> dict:
    """OpenAI's chat ``logprobs``: one entry per token with its ``top`` alternatives."""
    content = []
    for tok, d in zip(token_ids, logprobs):
        best = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        content.append({**_token_entry(tokenizer, tok, d[tok]),
                        "top_logprobs": [_token_entry(tokenizer, t, lp) for t, lp in best]})
    return {"content": content}


def completion_logprobs(tokenizer, token_ids: list[int], logprobs: list[Optional[dict[int, float]]], top: int,
                        offset: int = 0) -> dict:
    """The legacy completions ``logprobs``: parallel lists. An entry of ``logprobs`` may be None (a
    prompt's first token, which nothing predicts): its logprob and alternatives are null."""
    tokens, token_lps, tops, offsets = [], [], [], []
    for tok, d in zip(token_ids, logprobs):
        text = tokenizer.decode([tok])
        tokens.append(text)
        token_lps.append(None if d is None else d[tok])
        best = [] if d is None else sorted(d.items(), key=lambda kv: -kv[1])[:top]
        tops.append(None if d is None else {tokenizer.decode([t]): lp for t, lp in best})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def _token_entry(tokenizer, tok: int, lp: float) -> dict:
    text = tokenizer.decode([tok])
    return {"token": text, "logprob": lp, "bytes": token_bytes(tokenizer, tok, text)}


def token_bytes(tokenizer, tok: int, text: str) -> list[int]:
    """The token's own bytes, as OpenAI gives them: a token holding part of a UTF-8 character (its
    text is then U+FFFD) gives that part. Byte-level BPE vocabularies (GPT-2, Llama 3, Qwen) map
    each byte to a printable character; SentencePiece ones spell lone bytes ``<0xAB>``; other
    tokens are their text."""
    piece = tokenizer.convert_ids_to_tokens(tok)
    if isinstance(piece, str) and "\ufffd" in text:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return [int(piece[3:5], 16)]
            except ValueError:
                pass
        table = _byte_level_decoder()
        if all(c in table for c in piece):
            return [table[c] for c in piece]
    return list(text.encode("utf-8"))


@functools.lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table (GPT-2's)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def chat_response(rid: str, model: str, choices: list[dict], use: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": use}


def chat_chunk(rid: str, model: str, created: int, choices: list[dict], use: Optional[dict] = None) -> dict:
    out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": choices}
    if use is not None:
        out["usage"] = use
    return out


def completion_response(rid: str, model: str, choices: list[dict], use: dict,
                        object_: Literal["text_completion"] = "text_completion", created: Optional[int] = None
                        ) -> dict:
    out = {"id": rid, "object": object_, "created": created or int(time.time()), "model": model,
           "choices": choices}
    if use is not None:
        out["usage"] = use
    return out


# ---- vLLM's side endpoints ----------------------------------------------------------------------

class TokenizeRequest(BaseModel):
    """vLLM's ``POST /tokenize``: a ``prompt`` (raw text) or chat ``messages`` (through the chat
    template, images loaded and expanded to their placeholder runs)."""

    model_config = _STRICT

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[dict[str, Any]]] = Field(None, min_length=1, max_length=MAX_MESSAGES,
                                                     json_schema_extra={"items": _MESSAGE_SCHEMA})
    add_special_tokens: Optional[bool] = Field(None, description="default: true for a prompt; for messages "
                                               "the chat template writes them")
    add_generation_prompt: bool = True

    @field_validator("model", "prompt", "messages")
    @classmethod
    def _utf8(cls, value, info):
        return _valid_text(value, info.field_name)


class DetokenizeRequest(BaseModel):
    model_config = _STRICT

    model: Optional[str] = None
    tokens: list[_TokenId] = Field(max_length=1 << 20)
