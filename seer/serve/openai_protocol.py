"""The OpenAI wire format: request bodies in, response and chunk dicts out.

Requests are validated by pydantic (shape and types) and then by ``GenerationConfig``
(values); both failures become ``BadRequest`` (HTTP 400) with a message that names the
field and what is accepted. Responses are plain dicts shaped like OpenAI's, built here
so the server module only moves data.

Beyond OpenAI's fields, the extra sampling fields vLLM and LMDeploy accept are taken:
``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``ignore_eos``,
``skip_special_tokens``, ``stop_token_ids``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..config import GenerationConfig


class BadRequest(ValueError):
    """A client error: becomes an OpenAI-style error body with this status."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None,
                 type_: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.param, self.type, self.headers = status, param, type_, headers


def error_body(message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[Union[int, str]] = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    n: int = 1
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_tokens: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    # vLLM / LMDeploy extras
    top_k: Optional[int] = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stop_token_ids: Optional[list[int]] = None

    def generation_config(self, max_new_tokens: int, logprobs: Optional[int]) -> GenerationConfig:
        """Our sampling settings; ``max_new_tokens`` is the request's cap (or the session's)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        top_k = self.top_k if self.top_k is not None else 0
        if top_k < -1:
            raise BadRequest(f"top_k={top_k} is invalid: -1 or 0 (no cut) or an integer >= 1", param="top_k")
        if self.n < 1 or self.n > 16:
            raise BadRequest(f"n={self.n} is invalid: an integer in [1, 16]", param="n")
        try:
            return GenerationConfig(
                max_new_tokens=max_new_tokens, min_new_tokens=self.min_tokens,
                do_sample=temperature > 0, temperature=temperature,
                top_p=1.0 if self.top_p is None else self.top_p, top_k=max(top_k, 0), min_p=self.min_p,
                repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty, ignore_eos=self.ignore_eos,
                random_seed=self.seed, stop_words=[self.stop] if isinstance(self.stop, str) else self.stop,
                stop_token_ids=self.stop_token_ids, skip_special_tokens=self.skip_special_tokens,
                logprobs=logprobs)
        except ValueError as e:
            raise BadRequest(str(e)) from None


class ChatCompletionRequest(_SamplingFields):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None

    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def num_logprobs(self) -> Optional[int]:
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequest("top_logprobs needs logprobs=true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: Optional[int] = None
    echo: bool = False
    max_tokens: Optional[int] = 16  # OpenAI's default for completions

    def max_new_tokens(self) -> Optional[int]:
        return self.max_tokens

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


def completion_logprobs(tokenizer, token_ids: list[int], logprobs: list[dict[int, float]], top: int,
                        offset: int = 0) -> dict:
    """The legacy completions ``logprobs``: parallel lists."""
    tokens, token_lps, tops, offsets = [], [], [], []
    for tok, d in zip(token_ids, logprobs):
        text = tokenizer.decode([tok])
        tokens.append(text)
        token_lps.append(d[tok])
        best = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        tops.append({tokenizer.decode([t]): lp for t, lp in best})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def _token_entry(tokenizer, tok: int, lp: float) -> dict:
    text = tokenizer.decode([tok])
    return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}


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
