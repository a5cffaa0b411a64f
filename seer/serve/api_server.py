"""``seer serve [api_server] MODEL``: an OpenAI-compatible HTTP server (FastAPI + uvicorn).

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (text and ``image_url`` parts,
SSE streaming), ``POST /v1/completions``, ``GET /health``, ``GET /metrics`` (Prometheus), and
vLLM's side endpoints (``side_routes.py``: ``/tokenize``, ``/detokenize``, ``/tokenizer_info``,
``/version``, ``/ping``).

How a request flows (one way): parse (pydantic, then ``GenerationConfig``) -> prepare
(image fetching, chat template, tokenization: in a worker thread, off the event loop)
-> one engine request per choice, whose deltas the engine thread hands to this event
loop through ``call_soon_threadsafe`` -> SSE chunks or one JSON body.

What must stay true:
- Client errors are 4xx with an OpenAI-style body (``{"error": {...}}``); a 500 is a bug.
- The API key and the body size are checked on the headers before any body byte is read
  (``http_edge.Gate``); a bad field is a 400 naming it; the OpenAPI schema says so.
- No local file is read unless ``--allowed-local-media-path`` names its folder; images and
  videos are loaded within ``self.media`` (``seer.vl.sources.MediaPolicy``: deadline, bytes,
  pixels), by worker threads of their own, so a slow host stalls only its own request.
- A client that goes away aborts its engine requests (their KV blocks are freed).
- Past ``max_queued_requests`` sequences waiting (choices x prompts, counted from the moment
  a request is accepted, media fetching included), new requests get 503 with Retry-After.
- The model loads in the background: ``/health`` is 503 until it is ready, and again
  if the engine dies. SIGTERM stops accepting, lets in-flight requests finish within
  ``--shutdown-timeout`` seconds, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import ChatTemplateConfig, EngineConfig, GenerationConfig, VisionConfig
from ..engine.request import PromptInputs, RequestOutput
from ..messages import check_text
from ..vl.constants import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_MEDIA_BYTES
from ..vl.sources import MediaPolicy
from .metrics import ServerMetrics
from .side_routes import add_side_routes
from .tool_calls import ToolPlan, chunk_deltas, parser_name
from .tool_parsers import PARSERS
from .http_edge import (DEFAULT_MAX_BODY, POST_RESPONSES, Gate, declare_errors, describe_validation, first_loc,
                        http_protocol, responses)
from .openai_protocol import (BadRequest, ChatCompletionRequest, CompletionRequest, chat_chunk, chat_logprobs,
                              chat_response, check_in_vocab, completion_logprobs, completion_response, error_body,
                              new_id, sse, usage)

log = logging.getLogger("seer.serve")

DEFAULT_PORT = 23333
DEFAULT_MAX_QUEUED = 1024
DEFAULT_MAX_CONNECTIONS = 512  # open connections (--max-connections): with FD_RESERVE, under 1024 fds
DEFAULT_KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection stays open (--keep-alive-timeout)
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds a request's headers may take to arrive (--header-timeout)
FD_RESERVE = 64  # file descriptors kept for the process itself (model files, image fetches, logs)
MEDIA_WORKERS = 16  # threads preparing requests whose media must be fetched or read


class ServerCore:
    """Everything the routes need: the pipeline, the policies and the metrics."""

    def __init__(self, model_path: str, model_name: Optional[str] = None,
                 engine_config: Optional[EngineConfig] = None, vision_config: Optional[VisionConfig] = None,
                 chat_template_config: Optional[ChatTemplateConfig] = None, api_keys=None,
                 limits: Optional[dict] = None, allowed_local_media_path: Optional[str] = None,
                 max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 tool_call_parser: Optional[str] = None):
        if tool_call_parser is not None and tool_call_parser not in PARSERS:
            raise ValueError(f"--tool-call-parser {tool_call_parser!r} is unknown; known parsers: {sorted(PARSERS)}")
        self.model_path = model_path
        self.model_name = model_name or model_path
        self.engine_config = engine_config or EngineConfig()
        self.vision_config = vision_config
        self.chat_template_config = chat_template_config
        self.api_keys = set(api_keys or ())
        self.limits = dict(limits or {})  # modality ("image", "video") -> max per prompt
        # No local file is read unless the operator named a folder; then only below it.
        self.media = MediaPolicy(allowed_local_media_path or None, max_media_bytes, max_image_pixels)
        self.media_limiter = None  # made on the event loop, on first use
        q = self.engine_config.max_queued_requests
        self.max_queued = DEFAULT_MAX_QUEUED if q is None else q
        self.pipe = None
        self.tool_parser = tool_call_parser  # resolved to the model's default once it is loaded
        self.load_error: Optional[str] = None
        self.active = 0  # HTTP requests accepted and not finished
        self.queued = 0  # sequences of those requests that have produced no token yet (preparing or waiting)
        self.metrics = ServerMetrics(self)
        self.created = int(time.time())

    # ---- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        from ..pipeline import Pipeline

        try:
            pipe = Pipeline(self.model_path, self.engine_config, self.vision_config, self.chat_template_config)
            self.tool_parser = parser_name(pipe, self.tool_parser)
            self.pipe = pipe
            log.warning("seer: serving %s as %r", self.model_path, self.model_name)
        except Exception as e:  # noqa: BLE001 - reported by /health and every request
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("seer: loading %s failed: %s", self.model_path, self.load_error)

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()

    @property
    def healthy(self) -> bool:
        return self.pipe is not None and self.pipe.engine is not None and self.pipe.engine.is_alive

    def ready_pipe(self):
        if self.load_error:
            raise BadRequest(f"the model failed to load: {self.load_error}", 503, type_="server_error")
        if not self.healthy:
            what = "is still loading" if self.pipe is None else "engine has stopped"
            raise BadRequest(f"the model {what}; retry shortly", 503, type_="server_error",
                             headers={"Retry-After": "1"})
        return self.pipe

    # ---- checks ------------------------------------------------------------------------------
    def check_key(self, authorization: Optional[str]) -> None:
        if not self.api_keys:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in self.api_keys:
            raise BadRequest("a valid API key is required: send 'Authorization: Bearer <key>'", 401,
                             type_="authentication_error")

    def check_model(self, name: Optional[str]) -> None:
        if name is not None and name not in (self.model_name, self.model_path):
            raise BadRequest(f"the model {name!r} does not exist; this server serves {self.model_name!r}",
                             404, param="model", type_="not_found_error")

    def check_queue(self, sequences: int = 1) -> None:
        """Sequences (choices of prompts), not HTTP requests, count against the bound."""
        if self.queued + sequences > self.max_queued:
            raise BadRequest(f"too many sequences are waiting ({self.queued} of at most {self.max_queued}; this "
                             f"request adds {sequences}); retry later", 503, type_="server_error",
                             headers={"Retry-After": "1"})

    def check_media(self, messages: list) -> int:
        """The number of images and videos, checked against the per-prompt limits. Which sources may
        be read, and what each may cost, the loader checks (``self.media``) on the value it uses."""
        counts = {"image": 0, "video": 0}
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if not isinstance(content, list):
                continue
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind.startswith(("image", "video")):
                    counts["video" if kind.startswith("video") else "image"] += 1
        for modality, n in counts.items():
            limit = self.limits.get(modality)
            if limit is not None and n > limit:
                raise BadRequest(f"the request has {n} {modality}s but this server allows {limit} per prompt "
                                 "(--limit-mm-per-prompt)")
        return sum(counts.values())

    # ---- preparation (worker threads) -------------------------------------------------------
    async def prepare(self, fn, *args, remote_media: bool = False):
        """``fn(*args)`` in a worker thread. Requests that fetch media take their threads from a
        pool of their own (``MEDIA_WORKERS``), so slow image hosts never hold the threads that
        text-only requests (and tokenization) need."""
        return await anyio.to_thread.run_sync(lambda: fn(*args), limiter=self._limiter(remote_media))

    def _limiter(self, remote_media: bool):
        if not remote_media:
            return None  # anyio's default pool
        if self.media_limiter is None:
            self.media_limiter = anyio.CapacityLimiter(MEDIA_WORKERS)
        return self.media_limiter

    def prepare_chat(self, messages: list, tools: Optional[list] = None) -> PromptInputs:
        return self.pipe.prepare(messages, self.media, tools)

    def prepare_completion(self, prompt) -> PromptInputs:
        if isinstance(prompt, str):
            ids = self.pipe.tokenizer(check_text(prompt, "prompt"), add_special_tokens=True)["input_ids"]
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            check_in_vocab(prompt, len(self.pipe.tokenizer), "prompt token ids")
            ids = list(prompt)
        else:
            raise BadRequest("prompt must be a string, a list of strings, or a list of token ids", param="prompt")
        return PromptInputs(ids)

    async def compile_formats(self, gens: list[GenerationConfig]) -> None:
        """Compile the requests' structured-output grammars in a worker thread (a hostile schema
        must not hold the event loop); the engine then finds them in its cache. A ValueError
        names what does not compile."""
        formats = {json.dumps(g.response_format, sort_keys=True): g.response_format for g in gens if g.response_format}
        for rf in formats.values():
            await anyio.to_thread.run_sync(self.pipe.engine.compile_format, rf)

    def generation_configs(self, req, n_prompt_tokens: int) -> list[GenerationConfig]:
        """One config per choice; with a seed, choice i samples with seed + i."""
        pipe = self.pipe
        room = pipe.session_len - n_prompt_tokens
        want = req.max_new_tokens()
        if want is not None and want < 1:
            raise BadRequest(f"max_tokens={want} is invalid: an integer >= 1", param="max_tokens")
        if want is not None and want > room >= 1:  # as OpenAI and vLLM answer, rather than cut it short
            raise BadRequest(f"max_tokens={want} is more than the context window leaves: the prompt has "
                             f"{n_prompt_tokens} tokens and session_len is {pipe.session_len}, so at most {room}",
                             param="max_tokens")
        # Without a cap a request may run to the end of its session (the engine stops it there).
        gen = req.generation_config(want if want is not None else max(room, 1), req.num_logprobs())
        check_in_vocab(gen.logit_bias or (), len(pipe.tokenizer), "logit_bias token ids", "logit_bias")
        gens = pipe.gen_configs(gen, 1) * req.n
        if req.seed is not None:
            gens = [g.replace(random_seed=req.seed + i) for i, g in enumerate(gens)]
        return gens


class _Job:
    """The engine requests of one HTTP request (one per choice), read as an async stream.

    A job counts as active from creation to ``close()``, and its ``sequences`` as queued until
    its first delta arrives; ``close()`` aborts whatever is still pending (the client left or failed).
    """

    def __init__(self, core: ServerCore, sequences: int = 1):
        core.check_queue(sequences)
        self.sequences = sequences
        self.core, self.loop = core, asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[int] = []
        self.pending: set[int] = set()
        self.started = self.closed = False
        core.active += 1
        core.queued += sequences

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self.core.queued -= self.sequences

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.abort()
            self._start()
            self.core.active -= 1

    def submit(self, choices: list[tuple[PromptInputs, GenerationConfig]]) -> None:
        engine = self.core.pipe.engine
        put = self.queue.put_nowait
        for index, (inputs, gen) in enumerate(choices):
            def sink(out: RequestOutput, index=index):
                self.loop.call_soon_threadsafe(put, (index, out))
            try:
                rid = engine.add_request(inputs, gen, sink)
            except ValueError as e:
                self.abort(client_left=False)  # the choices already queued go too; not an abort by the client
                raise BadRequest(str(e)) from None
            self.ids.append(rid)
            self.pending.add(rid)
        self.core.metrics.on_submit(self.ids)

    async def deltas(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        while self.pending:
            index, out = await self.queue.get()
            self._start()
            self.core.metrics.on_delta(self.ids[index], out)
            if out.finished:
                self.pending.discard(out.request_id)
            yield index, out

    def abort(self, client_left: bool = True) -> None:
        if self.pending and self.core.pipe is not None and self.core.pipe.engine is not None:
            for rid in self.pending:
                self.core.pipe.engine.abort(rid)
            if client_left:
                self.core.metrics.on_abort(self.pending)
        self.pending.clear()


def build_app(core: ServerCore, load_in_background: bool = True, max_body: int = DEFAULT_MAX_BODY):
    """The FastAPI app. In front of the routes, ``Gate`` checks the API key and the body size on the
    headers, before any body byte is read (``max_body``: bytes a request body may have)."""
    @asynccontextmanager
    async def lifespan(app):
        if load_in_background:
            threading.Thread(target=core.load, name="seer-load", daemon=True).start()
        elif core.pipe is None:
            core.load()
        yield
        await run_in_threadpool(core.close)

    app = FastAPI(title="seer", lifespan=lifespan)
    app.add_middleware(Gate, core=core, max_body=max_body)
    declare_errors(app, bool(core.api_keys), [core.model_name, core.model_path])

    @app.exception_handler(BadRequest)
    async def _bad_request(_request, exc: BadRequest):
        return JSONResponse(error_body(str(exc), exc.type, exc.param, exc.status), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        return JSONResponse(error_body(describe_validation(exc.errors()), param=first_loc(exc.errors()),
                                       code=400), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), code=exc.status_code), exc.status_code)

    @app.exception_handler(ValueError)
    async def _value_error(_request, exc: ValueError):  # what seer's own checks raise on bad input
        return JSONResponse(error_body(str(exc), code=400), 400)

    @app.exception_handler(Exception)
    async def _bug(_request, exc: Exception):
        log.exception("internal error")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error", code=500),
                            500)

    def guard(request: Request, model: Optional[str] = None, check_model: bool = True):
        core.check_key(request.headers.get("authorization"))
        if check_model:
            core.check_model(model)
        return core.ready_pipe()

    @app.get("/health", response_class=PlainTextResponse,
             responses={503: {"description": "the model is loading, or the engine has stopped",
                              "content": {"text/plain": {}}}})
    async def health():
        if core.healthy:
            return PlainTextResponse("ok")
        why = core.load_error or ("loading" if core.pipe is None else "the engine has stopped")
        return PlainTextResponse(why, 503)

    add_side_routes(app, core, guard, POST_RESPONSES)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        body, content_type = core.metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    @app.get("/v1/models", responses=responses(401))
    async def models(request: Request):
        core.check_key(request.headers.get("authorization"))
        entry = {"id": core.model_name, "object": "model", "created": core.created, "owned_by": "seer",
                 "root": core.model_path}
        if core.pipe is not None:
            entry["max_model_len"] = core.pipe.session_len
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", responses=POST_RESPONSES)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        pipe = guard(request, req.model)
        req.num_logprobs()  # validate before doing any work
        tools = ToolPlan.of(req, pipe, core.tool_parser)  # None: the answer is not parsed for calls
        media = core.check_media(req.messages)
        job = _Job(core, req.n)
        try:
            inputs = await core.prepare(core.prepare_chat, req.messages, req.tools, remote_media=media > 0)
            gens = core.generation_configs(req, len(inputs.token_ids))
            if tools is not None:
                gens = [tools.generation_config(g) for g in gens]
            await core.compile_formats(gens)
            job.submit([(inputs, g) for g in gens])
        except BaseException:
            job.close()
            raise
        rid, model = new_id("chatcmpl"), core.model_name
        if req.stream:
            return StreamingResponse(_closing(job, _chat_stream(job, req, rid, model, pipe.tokenizer, tools)),
                                     media_type="text/event-stream")
        results = await _collect(job, request, req.n)
        choices = []
        for i, r in enumerate(results):
            _raise_failed(r)
            message, called = (tools.message(r["text"]) if tools else
                               ({"role": "assistant", "content": r["text"]}, False))
            reason = "tool_calls" if called and r["reason"] == "stop" else _finish_reason(r["reason"])
            choice = {"index": i, "message": message, "finish_reason": reason, "logprobs": None}
            if req.logprobs:
                choice["logprobs"] = chat_logprobs(pipe.tokenizer, r["ids"], r["logprobs"], req.top_logprobs or 0)
            choices.append(choice)
        return chat_response(rid, model, choices, _usage(results, req.n))

    @app.post("/v1/completions", responses=POST_RESPONSES)
    async def completions(req: CompletionRequest, request: Request):
        pipe = guard(request, req.model)
        prompts = req.prompts()
        score_only = req.max_tokens == 0  # echo + max_tokens 0: the prompt's logprobs, nothing generated
        if req.stream and (score_only or req.prompt_logprobs() is not None):
            raise BadRequest("echo with logprobs (or max_tokens=0) is answered whole: send stream=false",
                             param="stream")
        job = _Job(core, len(prompts) * req.n)
        try:
            choices_in = []
            for p in prompts:
                inputs = await core.prepare(core.prepare_completion, p)
                choices_in += [(inputs, g) for g in core.generation_configs(req, len(inputs.token_ids))]
            await core.compile_formats([g for _, g in choices_in])
            job.submit(choices_in)
        except BaseException:
            job.close()
            raise
        echo = [pipe.tokenizer.decode(x.token_ids) if req.echo else "" for x, _ in choices_in]
        rid, model = new_id("cmpl"), core.model_name
        if req.stream:
            return StreamingResponse(_closing(job, _completion_stream(job, req, rid, model, echo, pipe.tokenizer)),
                                     media_type="text/event-stream")
        results = await _collect(job, request, len(choices_in))
        choices = []
        for i, r in enumerate(results):
            _raise_failed(r)
            if score_only:  # the one token computed is not part of the answer
                r.update(text="", ids=[], logprobs=[], output=0, reason="length")
            choice = {"index": i, "text": echo[i] + r["text"], "finish_reason": _finish_reason(r["reason"]),
                      "logprobs": None}
            if req.logprobs is not None:
                lp = completion_logprobs(pipe.tokenizer, r["ids"], r["logprobs"], req.logprobs, len(echo[i]))
                if r["prompt_lp"] is not None:  # echo: the prompt's tokens lead, the first one without a logprob
                    head = completion_logprobs(pipe.tokenizer, choices_in[i][0].token_ids, r["prompt_lp"],
                                               req.logprobs)
                    lp = {k: head[k] + lp[k] for k in lp}
                choice["logprobs"] = lp
            choices.append(choice)
        return completion_response(rid, model, choices, _usage(results, req.n))

    return app


# ---- collecting and streaming -----------------------------------------------------------------

def _new_result() -> dict:
    return {"text": "", "ids": [], "logprobs": [], "reason": None, "error": None, "prompt": 0, "output": 0,
            "cached": 0, "prompt_lp": None}


def _add(r: dict, out: RequestOutput) -> None:
    r["text"] += out.new_text
    r["ids"] += out.new_token_ids
    if out.new_logprobs:
        r["logprobs"] += out.new_logprobs
    if out.prompt_logprobs is not None:
        r["prompt_lp"] = out.prompt_logprobs
    r["prompt"], r["output"], r["cached"] = out.num_prompt_tokens, out.num_output_tokens, out.num_cached_tokens
    if out.finished:
        r["reason"], r["error"] = out.finish_reason, out.error


async def _collect(job: _Job, request, n: int) -> list[dict]:
    """Run a job to the end; if the client disconnects first, abort it."""

    async def watch():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.abort()
                return

    watcher = asyncio.ensure_future(watch())
    results = [_new_result() for _ in range(n)]
    try:
        async for index, out in job.deltas():
            _add(results[index], out)
    finally:
        watcher.cancel()
        job.close()
    return results


def _raise_failed(r: dict) -> None:
    if r["reason"] == "error" or r["error"]:
        raise RuntimeError(r["error"] or "the request failed in the engine")


def _finish_reason(reason: Optional[str]) -> Optional[str]:
    return {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}.get(reason, reason)


def _usage(results: list[dict], n: int) -> dict:
    """Usage of a request whose choices are ``n`` per prompt, prompt after prompt: each prompt
    counts once, every choice's output counts."""
    firsts = results[::n]
    return usage(sum(r["prompt"] for r in firsts), sum(r["output"] for r in results),
                 sum(r["cached"] for r in firsts))


async def _closing(job: _Job, stream: AsyncIterator[str]) -> AsyncIterator[str]:
    """Wrap an SSE stream so that the job closes however it ends (a client that left aborts it)."""
    try:
        async for item in stream:
            yield item
    finally:
        job.close()


async def _stream_choices(job: _Job, results: list[dict], n: int, choice_of, chunk_of, include_usage: bool):
    """The SSE body after any preamble: one chunk per delta that shows something, then, as OpenAI
    sends it and only when asked (``stream_options.include_usage``), a chunk with the request's
    usage and no choices."""
    async for index, out in job.deltas():
        offset = len(results[index]["text"])  # of this choice's text before the delta
        _add(results[index], out)
        if out.error:
            yield sse(error_body(out.error, "server_error", code=500))
            continue
        if not out.new_text and not out.finished and not out.new_token_ids:
            continue
        for choice in choice_of(index, out, offset):
            yield sse(chunk_of([choice]))
    if include_usage:
        yield sse(chunk_of([], _usage(results, n)))
    yield "data: [DONE]\n\n"


def _finish_of(out: RequestOutput) -> Optional[str]:
    return _finish_reason(out.finish_reason) if out.finished else None


async def _chat_stream(job: _Job, req: ChatCompletionRequest, rid: str, model: str, tokenizer,
                       tools: Optional[ToolPlan]):
    created = int(time.time())
    streamers = [tools.parser.streamer() for _ in range(req.n)] if tools else None

    def chunk_of(choices, use=None):
        return chat_chunk(rid, model, created, choices, use)

    def choice_of(index, out, _offset):
        """The chunks of one engine delta: one, or with tools as many as the parser's deltas."""
        if streamers is None:
            deltas = [{"content": out.new_text}] if out.new_text else []
            finish = _finish_of(out)
        else:
            s = streamers[index]
            deltas = chunk_deltas(s.feed(out.new_text) + (s.finish() if out.finished else []))
            finish = "tool_calls" if out.finished and s.calls and out.finish_reason == "stop" else _finish_of(out)
        lp = None
        if req.logprobs and out.new_token_ids and out.new_logprobs:
            lp = chat_logprobs(tokenizer, out.new_token_ids, out.new_logprobs, req.top_logprobs or 0)
        if not deltas and finish is None and lp is None:
            return []  # the parser holds the text back (a call may be starting)
        choices = [{"index": index, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas or [{}]]
        choices[-1]["finish_reason"], choices[0]["logprobs"] = finish, lp
        return choices

    for i in range(req.n):
        yield sse(chunk_of([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]))
    include = bool(req.stream_options and req.stream_options.include_usage)
    async for event in _stream_choices(job, [_new_result() for _ in range(req.n)], req.n, choice_of, chunk_of,
                                       include):
        yield event


async def _completion_stream(job: _Job, req: CompletionRequest, rid: str, model: str, echo: list[str],
                             tokenizer):
    created = int(time.time())

    def chunk_of(choices, use=None):
        return completion_response(rid, model, choices, use, created=created)

    def choice_of(index, out, offset):
        choice = {"index": index, "text": out.new_text, "logprobs": None, "finish_reason": _finish_of(out)}
        if req.logprobs is not None and out.new_token_ids and out.new_logprobs:
            choice["logprobs"] = completion_logprobs(tokenizer, out.new_token_ids, out.new_logprobs, req.logprobs,
                                                     len(echo[index]) + offset)
        return [choice]

    for i, e in enumerate(echo):
        if e:
            yield sse(chunk_of([{"index": i, "text": e, "logprobs": None, "finish_reason": None}]))
    include = bool(req.stream_options and req.stream_options.include_usage)
    async for event in _stream_choices(job, [_new_result() for _ in echo], req.n, choice_of, chunk_of, include):
        yield event


# ---- the command --------------------------------------------------------------------------------

def add_arguments(ap: argparse.ArgumentParser) -> None:
    from ..cliargs import add_engine_arguments, add_model_argument

    add_model_argument(ap)
    ap.add_argument("--server-name", default="0.0.0.0", help="address to bind (default: all interfaces)")
    ap.add_argument("--server-port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--model-name", default=None, help="the name clients use (default: the model path)")
    ap.add_argument("--api-keys", nargs="+", default=None, help="accepted bearer tokens; none: no auth")
    ap.add_argument("--limit-mm-per-prompt", default=None, metavar="image=N",
                    help="max images / videos per request, e.g. image=2,video=1")
    ap.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                    help="read image/video file paths (and file:// URLs) only below DIR, checked on the resolved "
                         "path; without it no local file is read (default: off)")
    ap.add_argument("--max-media-bytes", type=int, default=DEFAULT_MAX_MEDIA_BYTES, metavar="N",
                    help="largest image or video file fetched or read: a larger Content-Length is refused before "
                         f"reading, a body growing past N is cut (default {DEFAULT_MAX_MEDIA_BYTES}, 64 MiB); "
                         "fetches also end after SEER_IMAGE_FETCH_TIMEOUT seconds in all (default 10)")
    ap.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                    help="largest image (width x height) decoded, checked from its header before decoding "
                         f"(default {DEFAULT_MAX_IMAGE_PIXELS}, 8192 x 8192)")
    ap.add_argument("--max-queued-requests", type=int, default=None,
                    help=f"sequences (prompts x n) waiting for their first token before new requests get 503 "
                         f"(default {DEFAULT_MAX_QUEUED})")
    ap.add_argument("--shutdown-timeout", type=float, default=30.0,
                    help="seconds in-flight requests get to finish after SIGTERM; those still running then "
                         "end with an error (503, or an error event in a stream) (default 30)")
    ap.add_argument("--max-request-body-bytes", type=int, default=DEFAULT_MAX_BODY, metavar="N",
                    help="largest request body accepted; a larger Content-Length gets 413 before the body is "
                         f"read, a chunked body is cut with 413 when it grows past N (default {DEFAULT_MAX_BODY}, "
                         "32 MiB)")
    ap.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                    help="open HTTP connections at most: a new one past N is closed at once (and past N requests "
                         "running, uvicorn answers 503); lowered, with a warning, to the open-file limit "
                         f"(ulimit -n) minus {FD_RESERVE} (default {DEFAULT_MAX_CONNECTIONS})")
    ap.add_argument("--keep-alive-timeout", type=float, default=DEFAULT_KEEP_ALIVE, metavar="S",
                    help=f"seconds an idle keep-alive connection stays open (default {DEFAULT_KEEP_ALIVE:g})")
    ap.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT, metavar="S",
                    help="seconds a request's headers may take to arrive, from the connection's start or the "
                         "request's first byte; then 408 and the connection closes (slowloris) (default "
                         f"{DEFAULT_HEADER_TIMEOUT:g})")
    ap.add_argument("--tool-call-parser", default=None, choices=sorted(PARSERS),
                    help="how tool calls are read from answers (default: the one the model's chat template "
                         "writes; 'json' for templates that get seer's tool description)")
    ap.add_argument("--enable-auto-tool-choice", action="store_true",
                    help="accepted for vLLM's command lines: tool_choice 'auto' is always on")
    ap.add_argument("--log-level", default="WARNING")
    add_engine_arguments(ap)


def _limits(spec: Optional[str]) -> dict:
    """``image=2,video=1`` (or JSON ``{"image": 2}``) -> ``{"image": 2, "video": 1}``."""
    if spec is None:
        return {}
    try:
        raw = json.loads(spec) if spec.strip().startswith("{") else dict(kv.split("=", 1) for kv in spec.split(","))
        unknown = set(raw) - {"image", "video"}
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)}")
        return {k: int(v) for k, v in raw.items()}
    except (ValueError, TypeError) as e:
        raise ValueError(f"--limit-mm-per-prompt {spec!r} is invalid ({e}); accepted: image=N[,video=M]") from None


def _connection_cap(wanted: int) -> int:
    """``wanted``, or less when the open-file limit would not hold it and the process's own files."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return wanted
    if soft == resource.RLIM_INFINITY or wanted <= soft - FD_RESERVE:
        return wanted
    cap = max(1, soft - FD_RESERVE)
    log.warning("seer: --max-connections %d is over the open-file limit %d minus %d; using %d "
                "(raise it with ulimit -n)", wanted, soft, FD_RESERVE, cap)
    return cap


def run(args) -> int:
    import uvicorn

    from ..cliargs import engine_configs, resolve_model
    from ..models.base import read_config_json
    from ..models.registry import family_for

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        model = resolve_model(args.model)
        family_for(read_config_json(model))  # fail fast on a wrong folder, before binding the port
        ecfg, vcfg, tcfg = engine_configs(args)
        name = args.model_name
        if name is None and not args.model:
            from ..assets import DEMO_MODEL_NAME

            name = DEMO_MODEL_NAME
        core = ServerCore(model, name, ecfg, vcfg, tcfg, args.api_keys,
                          _limits(args.limit_mm_per_prompt), args.allowed_local_media_path,
                          args.max_media_bytes, args.max_image_pixels, args.tool_call_parser)
    except ValueError as e:
        print(f"seer serve: {e}", file=sys.stderr)
        return 2
    for flag, value in (("--max-request-body-bytes", args.max_request_body_bytes),
                        ("--max-connections", args.max_connections), ("--keep-alive-timeout", args.keep_alive_timeout),
                        ("--header-timeout", args.header_timeout)):
        if not value > 0:
            print(f"seer serve: {flag} {value} is invalid: a number > 0", file=sys.stderr)
            return 2
    max_connections = _connection_cap(args.max_connections)
    app = build_app(core, max_body=args.max_request_body_bytes)
    # uvicorn's limit_concurrency answers 503 when connections or running requests reach it; our
    # protocol closes connections past max_connections at once, so +1 leaves those to it.
    config = uvicorn.Config(app, host=args.server_name, port=args.server_port, log_level=args.log_level.lower(),
                            timeout_graceful_shutdown=args.shutdown_timeout, access_log=False,
                            timeout_keep_alive=args.keep_alive_timeout, limit_concurrency=max_connections + 1,
                            http=http_protocol(args.header_timeout, max_connections))
    server = uvicorn.Server(config)
    print(f"[seer] serving {model} as {core.model_name!r} on http://{args.server_name}:{args.server_port} "
          "(the model loads in the background; GET /health says when it is ready)", file=sys.stderr, flush=True)
    # uvicorn handles SIGTERM/SIGINT (stop accepting, drain, shut down) and re-raises the signal
    # afterwards; these handlers turn that re-raise into a clean exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    server.run()
    return 1 if core.load_error else 0
