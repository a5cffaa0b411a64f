"""The HTTP edge of ``seer serve``: what is checked before a route runs, and how refusals read.

- ``Gate`` (pure ASGI, in front of every route): the API key and the body size are checked on the
  headers, before a body byte is read; requests cut by shutdown end with an OpenAI error.
- ``http_protocol``: uvicorn's h11 protocol with a header-read deadline (slowloris) and a cap on
  open connections.
- ``declare_errors`` / ``POST_RESPONSES``: the OpenAPI schema lists the statuses the server really
  answers (400, not FastAPI's 422) with the error body's schema.
- ``describe_validation``: pydantic's errors as one message naming each field and what was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

from fastapi import FastAPI
from starlette.datastructures import Headers

from .openai_protocol import BadRequest, ChatCompletionRequest, CompletionRequest, ErrorResponse, error_body, sse

log = logging.getLogger("seer.serve")

DEFAULT_MAX_BODY = 32 * 2**20  # bytes of one request body (--max-request-body-bytes)
SHUTDOWN_MESSAGE = "the server is shutting down and cut this request; retry it"


def _is_api(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


async def _send_error(send, status: int, message: str, type_: str = "invalid_request_error",
                      headers: Optional[list] = None, close: bool = False) -> None:
    body = json.dumps(error_body(message, type_, code=status)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *(headers or [])]
    if close:  # the body was not read: do not read (or wait for) it on this connection either
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Gate:
    """A pure ASGI middleware: what is refused is refused on the headers, before a body byte is read.

    - ``/v1/*`` without a valid API key (with ``--api-keys``): 401, whatever the body.
    - A ``Content-Length`` over ``max_body``: 413; a body (chunked) that grows past it is cut with 413.
      The body is read here, whole, and handed on; the routes read it from memory.
    - A request that uvicorn cancels at shutdown (still running when ``--shutdown-timeout`` ran out)
      ends with an OpenAI error: a 503 body, or, in a stream, an SSE error event and ``[DONE]``.
    """

    def __init__(self, app, core, max_body: int):
        self.app, self.core, self.max_body = app, core, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = {"started": False, "done": False, "sse": False}

        async def tracked(message):
            if message["type"] == "http.response.start":
                sent["started"] = True
                ctype = dict(message.get("headers") or ()).get(b"content-type", b"")
                sent["sse"] = ctype.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                sent["done"] = True
            await send(message)

        try:
            body = await self._admit(scope, receive, tracked)
            if body is None:
                return
            replayed = False

            async def replay():
                nonlocal replayed
                if replayed:
                    return await receive()  # http.disconnect, for the routes that watch for it
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, tracked)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when --shutdown-timeout is over; nothing awaits this
            # task any more, so the error is written (synchronously) and the task ends quietly.
            log.warning("seer: %s %s cut by shutdown", scope.get("method"), scope.get("path"))
            if not sent["started"]:
                await _send_error(send, 503, SHUTDOWN_MESSAGE, "server_error", [(b"retry-after", b"1")], close=True)
            elif sent["sse"] and not sent["done"]:
                event = sse(error_body(SHUTDOWN_MESSAGE, "server_error", code=503)) + "data: [DONE]\n\n"
                await send({"type": "http.response.body", "body": event.encode(), "more_body": False})

    async def _admit(self, scope, receive, send) -> Optional[bytes]:
        """The request's body, or None when it was refused (the answer is sent) or the client left."""
        headers = Headers(scope=scope)
        if self.core.api_keys and _is_api(scope["path"]):
            try:
                self.core.check_key(headers.get("authorization"))
            except BadRequest as e:
                await _send_error(send, e.status, str(e), e.type, [(b"www-authenticate", b"Bearer")], close=True)
                return None
        too_big = (f"the request body is over this server's limit of {self.max_body} bytes "
                   "(--max-request-body-bytes)")
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            await _send_error(send, 413, too_big, close=True)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client left
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _send_error(send, 413, too_big, close=True)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _error_response(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


_ERRORS = {
    400: "the request is invalid (its JSON, a field's type or range, a message's content); the message says "
         "which field and what is accepted",
    401: "no valid API key in 'Authorization: Bearer <key>' (only when the server runs with --api-keys)",
    404: "the model named is not the one this server serves",
    413: "the request body is over --max-request-body-bytes",
    503: "the model is loading, the engine has stopped, too many requests are waiting "
         "(--max-queued-requests), or the server is shutting down; retry later",
}


def responses(*statuses: int) -> dict:
    return {s: _error_response(_ERRORS[s]) for s in statuses}


POST_RESPONSES = {200: {"description": "the completion: JSON, or Server-Sent Events with stream=true",
                         "content": {"text/event-stream": {}}},
                   **responses(400, 401, 404, 413, 503)}


def declare_errors(app: FastAPI, api_keys: bool, model_names: list) -> None:
    """``app.openapi()`` as FastAPI builds it, less the 422 it adds to every route with a body: this
    server answers invalid requests with 400 (declared on the routes, with the error body's schema).
    The request's ``model`` lists the names this server answers to (others get 404)."""
    patched = {"schema": None}

    def openapi() -> dict:
        schema = FastAPI.openapi(app)
        if schema is not patched["schema"]:
            for path, ops in schema.get("paths", {}).items():
                for op in ops.values():
                    if isinstance(op, dict) and "responses" in op:
                        op["responses"].pop("422", None)
                        if api_keys and _is_api(path):
                            op["security"] = [{"bearer": []}]
            components = schema.setdefault("components", {})
            schemas = components.get("schemas", {})
            for name, request in (("ChatCompletionRequest", ChatCompletionRequest),
                                  ("CompletionRequest", CompletionRequest)):
                props = schemas.get(name, {}).get("properties", {})
                if "seed" in props:  # FastAPI writes bounds as floats: 2**63 - 1 would read 2**63
                    props["seed"] = request.model_json_schema()["properties"]["seed"]
                model = props.get("model")
                if model is not None:
                    model["anyOf"] = [{"type": "string", "enum": list(dict.fromkeys(model_names))},
                                      {"type": "null"}]
                    model["description"] = "the served model (GET /v1/models); none: the same"
            text = json.dumps(schema["paths"])
            for name in ("HTTPValidationError", "ValidationError"):
                if f"#/components/schemas/{name}" not in text:
                    schemas.pop(name, None)
            if api_keys:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            patched["schema"] = schema
        return schema

    app.openapi = openapi


def http_protocol(header_timeout: float, max_connections: int):
    """uvicorn's h11 protocol with two more bounds. A request's headers must be complete within
    ``header_timeout`` seconds of the connection opening, or of the first byte of a later request on
    it, else 408 and the connection closes (slowloris; idle keep-alive connections are uvicorn's
    ``timeout_keep_alive``'s). Past ``max_connections`` open connections a new one is closed at once
    (uvicorn's ``limit_concurrency`` counts idle connections but only refuses their requests)."""
    try:
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError as e:  # a uvicorn that moved it: serve without these two bounds
        log.warning("seer: --header-timeout and --max-connections are not enforced (%s)", e)
        return "auto"

    body = json.dumps(error_body(f"the request's headers did not arrive within {header_timeout:g} s "
                                 "(--header-timeout)", code=408)).encode()
    late = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body))

    class Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("seer: %d connections are open; closing a new one (--max-connections)",
                            max_connections)
                transport.close()
                return
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def data_received(self, data):
            if self._header_timer is None and self.conn.their_state is h11.IDLE:  # a request begins
                self._header_timer = self.loop.call_later(header_timeout, self._headers_late)
            super().data_received(data)
            if self._header_timer is not None and self.conn.their_state is not h11.IDLE:  # headers in
                self._header_timer.cancel()
                self._header_timer = None

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def _headers_late(self):
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(late)
                self.transport.close()

    return Protocol


# ---- validation messages ----------------------------------------------------------------------

def _union_tag(x) -> bool:
    """pydantic's name of a union member in an error's location ('str', 'list[constrained-int]')."""
    return isinstance(x, str) and (not x.isidentifier() or x in ("str", "int", "float", "bool", "list", "dict"))


def _relevant(errors) -> list[dict]:
    """The errors to show: locations without "body" or union member names; of a field whose value
    failed every member of a union, the range errors (the member it was meant for) when there are any."""
    groups: dict = {}
    for e in errors:
        loc = tuple(x for x in e.get("loc", ()) if x != "body" and not _union_tag(x))
        groups.setdefault(loc[:1], []).append({**e, "loc": loc})
    out = []
    for group in groups.values():
        specific = [e for e in group if not e.get("type", "").endswith("_type")]
        if specific:
            out += specific
        else:  # only type mismatches: one line naming every type accepted
            msgs = list(dict.fromkeys(e.get("msg", "") for e in group))
            out.append({**group[0], "msg": " or ".join(msgs)})
    return out


def _shown(value) -> str:
    """A short JSON rendering of what the client sent (so that "4" and 4 read differently)."""
    if isinstance(value, str):
        return json.dumps(value[:60]) + ("..." if len(value) > 60 else "")
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (bytes, bytearray)):  # the body, unparsed: its Content-Type was not JSON
        return "a body that is not JSON (send Content-Type: application/json)"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text[:60] + ("..." if len(text) > 60 else "")


def first_loc(errors) -> Optional[str]:
    for e in _relevant(errors):
        if e["loc"]:
            return ".".join(str(x) for x in e["loc"])
    return None


def describe_validation(errors) -> str:
    parts = []
    for e in _relevant(errors)[:5]:
        loc = ".".join(str(x) for x in e["loc"])
        msg = e.get("msg", "")
        if e.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', msg)})")
        elif e.get("type") == "missing":
            parts.append(f"{loc}: required field is missing")
        elif e.get("type") == "extra_forbidden":
            parts.append(f"{loc}: seer does not support this field (the README's server section lists the "
                         "fields it takes, and those it accepts with no effect)")
        elif e.get("type") == "value_error":  # our validators: the message says it all
            parts.append(f"{loc or 'body'}: {msg.removeprefix('Value error, ')}")
        else:
            got = f"{loc}={_shown(e.get('input'))}" if loc else _shown(e.get("input"))
            parts.append(f"{loc or 'body'}: {msg} (got {got})")
    return "invalid request: " + "; ".join(parts)
