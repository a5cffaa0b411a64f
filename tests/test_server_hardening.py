"""`seer serve` against hostile or careless clients, over real HTTP to real server subprocesses.

One server serves most of the module (tiny random LLaVA, with API keys, a 1 MB body cap, a
1 s header timeout and at most 8 connections). The shutdown test and the open-file-limit
test start their own servers. Requests that must be malformed on the wire go through raw
sockets; the rest through httpx, with bodies serialized here (``json.dumps`` writes NaN,
Infinity and lone surrogates, which httpx refuses to send).
"""

from __future__ import annotations

import contextlib
import json
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from server_proc import ServerProcess

KEY = "k1"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 1_000_000
MAX_CONNECTIONS = 8
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_llava):
    srv = ServerProcess.start(tiny_llava, "--api-keys", KEY, "--max-request-body-bytes", str(MAX_BODY),
                              "--header-timeout", "1", "--max-connections", str(MAX_CONNECTIONS),
                              "--session-len", "256", "--model-name", MODEL)
    yield srv
    assert srv.stop() == 0, srv.log()


def _post(server, body, path="/v1/chat/completions", headers=AUTH):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers={"content-type": "application/json", **headers},
                      timeout=60)


def _chat(**over):
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0,
            **over}


def _assert_error(r: httpx.Response, status: int, type_: str = "invalid_request_error") -> dict:
    """An OpenAI-shaped error: {"error": {"message", "type", "param", "code"}}; returns the inner dict."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["type"] == type_ and err["code"] == status and err["message"], err
    return err


# ---- raw HTTP/1.1 -----------------------------------------------------------------------------------

def _connect(server, timeout=10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return s


def _read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    """One response off the socket: (status, headers with lower-case names, body by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"the server closed the connection without a full response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = s.recv(65536)
        assert chunk, "the server closed the connection within the body"
        body += chunk
    return status, headers, body


def _closed(s: socket.socket) -> bool:
    """True when the server has closed the connection (EOF or reset) and sends nothing more."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def _raw_error(status_headers_body, status: int) -> dict:
    got, headers, body = status_headers_body
    assert got == status, (got, headers, body)
    assert headers["content-type"].startswith("application/json")
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status, err
    return err


def _head(path: str, *extra: str, method: str = "POST") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]) + "\r\n\r\n").encode()


# ---- 1. auth comes first ------------------------------------------------------------------------------

def test_without_a_valid_key_every_v1_route_is_401_whatever_the_body(server):
    cases = [
        ("POST", "/v1/chat/completions", b"{not json", {}),  # was a 400 naming the JSON error
        ("POST", "/v1/chat/completions", json.dumps(_chat(max_tokens="x")).encode(), {}),  # was 400 too
        ("POST", "/v1/completions", json.dumps({"prompt": "hi"}).encode(), {"Authorization": "Bearer wrong"}),
        ("POST", "/v1/completions", json.dumps({"prompt": "hi"}).encode(), {"Authorization": "Basic azE6"}),
        ("GET", "/v1/models", b"", {"Authorization": f"Bearer {KEY}x"}),
        ("GET", "/v1/no-such-route", b"", {}),
    ]
    for method, path, body, headers in cases:
        r = httpx.request(method, server.url + path, content=body, headers={"content-type": "application/json",
                                                                            **headers}, timeout=30)
        err = _assert_error(r, 401, "authentication_error")
        assert "API key" in err["message"] and r.headers["www-authenticate"] == "Bearer", (path, err)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    # /health, /metrics and the schema stay open; a valid key gets through
    for path in ("/health", "/metrics", "/openapi.json"):
        assert httpx.get(server.url + path, timeout=10).status_code == 200, path
    assert _post(server, _chat()).status_code == 200


def test_401_comes_before_a_100_mb_body_is_read(server):
    with _connect(server) as s:
        # the headers and the start of the body; the rest never comes
        s.sendall(_head("/v1/chat/completions", "Content-Type: application/json", "Content-Length: 100000000")
                  + b'{"model": "' + b"x" * 10000)
        t0 = time.monotonic()
        status, headers, body = _read_response(s)
        assert time.monotonic() - t0 < 5
        err = _raw_error((status, headers, body), 401)
        assert err["type"] == "authentication_error"
        assert headers["connection"] == "close" and _closed(s)


# ---- 2. the body size cap -------------------------------------------------------------------------------

def test_a_content_length_over_the_cap_is_413_before_the_body(server):
    with _connect(server) as s:
        s.sendall(_head("/v1/chat/completions", "Authorization: Bearer k1", "Content-Type: application/json",
                        f"Content-Length: {MAX_BODY + 1}"))
        err = _raw_error(_read_response(s), 413)  # answered with no body byte sent
        assert "--max-request-body-bytes" in err["message"] and str(MAX_BODY) in err["message"]
        assert _closed(s)


def test_a_chunked_body_that_grows_past_the_cap_is_cut_with_413(server):
    half = MAX_BODY // 2 + 1
    with _connect(server) as s:
        s.sendall(_head("/v1/chat/completions", "Authorization: Bearer k1", "Content-Type: application/json",
                        "Transfer-Encoding: chunked"))
        for _ in range(2):  # two chunks of just over half the cap; no final 0-chunk
            s.sendall(b"%x\r\n%s\r\n" % (half, b" " * half))
        status, headers, body = _read_response(s)
        _raw_error((status, headers, body), 413)
        assert headers["connection"] == "close" and _closed(s)


def test_a_body_of_exactly_the_cap_is_served(server):
    body = _chat(user="")
    pad = MAX_BODY - len(json.dumps(body).encode())
    body["user"] = "u" * pad
    raw = json.dumps(body).encode()
    assert len(raw) == MAX_BODY
    r = _post(server, raw)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("length", "stop")


# ---- 3. strict types and ranges ---------------------------------------------------------------------------

def _raw_json(text: str) -> bytes:
    return text.encode()


def _msgs(n):
    return [{"role": "user", "content": "hi"}] * n


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
BAD_FIELDS = [
    # (id, path, body (dict or raw bytes), the param the error names)
    ("max_tokens a string", CHAT, _chat(max_tokens="4"), "max_tokens"),
    ("max_tokens 1.5", CHAT, _chat(max_tokens=1.5), "max_tokens"),
    ("max_tokens 0", CHAT, _chat(max_tokens=0), "max_tokens"),
    ("max_completion_tokens 0", CHAT, _chat(max_completion_tokens=0), "max_completion_tokens"),
    ("logprobs a string", CHAT, _chat(logprobs="yes"), "logprobs"),
    ("logprobs 1", CHAT, _chat(logprobs=1), "logprobs"),
    ("stream a string", CHAT, _chat(stream="true"), "stream"),
    ("include_usage a string", CHAT, _chat(stream=True, stream_options={"include_usage": "yes"}),
     "stream_options.include_usage"),
    ("temperature Infinity", CHAT, _chat(temperature=float("inf")), "temperature"),
    ("temperature NaN", CHAT, _chat(temperature=float("nan")), "temperature"),
    ("temperature a string", CHAT, _chat(temperature="0.5"), "temperature"),
    ("temperature > 2", CHAT, _chat(temperature=2.01), "temperature"),
    ("temperature < 0", CHAT, _chat(temperature=-0.1), "temperature"),
    ("top_p 0", CHAT, _chat(top_p=0), "top_p"),
    ("top_p > 1", CHAT, _chat(top_p=1.01), "top_p"),
    ("top_p -Infinity", CHAT, _chat(top_p=float("-inf")), "top_p"),
    ("n 0", CHAT, _chat(n=0), "n"),
    ("n 17", CHAT, _chat(n=17), "n"),
    ("presence_penalty > 2", CHAT, _chat(presence_penalty=2.5), "presence_penalty"),
    ("frequency_penalty < -2", CHAT, _chat(frequency_penalty=-2.5), "frequency_penalty"),
    ("frequency_penalty NaN", CHAT, _chat(frequency_penalty=float("nan")), "frequency_penalty"),
    ("top_logprobs 21", CHAT, _chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    ("top_logprobs -1", CHAT, _chat(logprobs=True, top_logprobs=-1), "top_logprobs"),
    ("min_tokens -1", CHAT, _chat(min_tokens=-1), "min_tokens"),
    ("top_k -2", CHAT, _chat(top_k=-2), "top_k"),
    ("min_p > 1", CHAT, _chat(min_p=1.5), "min_p"),
    ("repetition_penalty 5e-324", CHAT, _chat(repetition_penalty=5e-324), "repetition_penalty"),
    ("repetition_penalty 0", CHAT, _chat(repetition_penalty=0), "repetition_penalty"),
    ("repetition_penalty > 100", CHAT, _chat(repetition_penalty=100.5), "repetition_penalty"),
    ("repetition_penalty Infinity", CHAT, _chat(repetition_penalty=float("inf")), "repetition_penalty"),
    ("seed 2**64", CHAT, _chat(seed=2**64), "seed"),
    ("seed 2**63", CHAT, _chat(seed=2**63), "seed"),
    ("seed below int64", CHAT, _chat(seed=-2**63 - 1), "seed"),
    ("seed a string", CHAT, _chat(seed="7"), "seed"),
    ("17 stop strings", CHAT, _chat(stop=["x"] * 17), "stop"),
    ("a stop string of 1025 chars", CHAT, _chat(stop="x" * 1025), "stop"),
    ("a listed stop string of 1025 chars", CHAT, _chat(stop=["ok", "x" * 1025]), "stop.1"),
    ("an empty stop string", CHAT, _chat(stop=""), "stop"),
    ("65 stop_token_ids", CHAT, _chat(stop_token_ids=list(range(65))), "stop_token_ids"),
    ("a negative stop token id", CHAT, _chat(stop_token_ids=[3, -1]), "stop_token_ids.1"),
    ("1025 messages", CHAT, _chat(messages=_msgs(1025)), "messages"),
    ("ignore_eos 1", CHAT, _chat(ignore_eos=1), "ignore_eos"),
    ("completions: logprobs 21", COMPLETIONS, {"prompt": "hi", "logprobs": 21}, "logprobs"),
    ("completions: echo a string", COMPLETIONS, {"prompt": "hi", "echo": "yes"}, "echo"),
    ("completions: max_tokens a string", COMPLETIONS, {"prompt": "hi", "max_tokens": "16"}, "max_tokens"),
    ("completions: 65 prompts", COMPLETIONS, {"prompt": ["hi"] * 65}, "prompt"),
    ("completions: 65 token-id prompts", COMPLETIONS, {"prompt": [[1, 2]] * 65}, "prompt"),
    ("completions: a negative token id", COMPLETIONS, {"prompt": [1, -5]}, "prompt.1"),
    ("completions: an empty token-id prompt", COMPLETIONS, {"prompt": [[1], []]}, "prompt.1"),
    ("completions: prompt a number", COMPLETIONS, {"prompt": 5}, "prompt"),
    ("completions: Infinity in raw JSON", COMPLETIONS, _raw_json('{"prompt": "hi", "temperature": Infinity}'),
     "temperature"),
    ("completions: NaN in raw JSON", COMPLETIONS, _raw_json('{"prompt": "hi", "top_p": NaN}'), "top_p"),
]


@pytest.mark.parametrize("path,body,param", [row[1:] for row in BAD_FIELDS], ids=[row[0] for row in BAD_FIELDS])
def test_wrong_types_and_out_of_range_values_are_400(server, path, body, param):
    err = _assert_error(_post(server, body, path), 400)
    assert err["param"] == param, err
    assert err["message"].startswith("invalid request: ") and param.split(".")[0] in err["message"], err


LONE_SURROGATES = [
    # (id, path, body, the param the error names, what its message names)
    ("chat content string", CHAT, _chat(messages=[{"role": "user", "content": "hi \ud800"}]), "messages",
     "messages[0].content"),
    ("chat text part", CHAT, _chat(messages=[{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": [{"type": "text", "text": "ok"},
                                                                          {"type": "text", "text": "\udfff"}]}]),
     "messages", "messages[1].content[1].text"),
    ("stop string", CHAT, _chat(stop="\ud800"), "stop", "unicode"),
    ("stop list", CHAT, _chat(stop=["fine", "\udc00x"]), "stop.1", "unicode"),
    ("user", CHAT, _chat(user="\ud83d"), "user", "user is not valid text"),
    ("model", CHAT, _chat(model="tiny\ud800"), "model", "model is not valid text"),
    ("completions prompt", COMPLETIONS, {"prompt": "a\ud800b"}, "prompt", "prompt is not valid text"),
    ("completions prompt list", COMPLETIONS, {"prompt": ["ok", "\udbff"]}, "prompt", "prompt[1]"),
]


@pytest.mark.parametrize("path,body,param,words", [row[1:] for row in LONE_SURROGATES],
                         ids=[row[0] for row in LONE_SURROGATES])
def test_lone_surrogates_are_400_not_500(server, path, body, param, words):
    raw = json.dumps(body).encode()  # ASCII: the surrogate travels as a \\uXXXX escape
    assert b"\\ud" in raw
    err = _assert_error(_post(server, raw, path), 400)
    assert err["param"] == param and words in err["message"], err


def test_values_at_the_edges_of_the_ranges_are_served(server):
    """The bounds are inclusive where they say so, and the engine copes with every value they admit."""
    cases = [
        dict(temperature=2, seed=2**63 - 1, n=3), dict(temperature=0.0), dict(temperature=1, top_p=1e-9),
        dict(temperature=1, seed=-2**63, n=2), dict(repetition_penalty=0.01), dict(repetition_penalty=100),
        dict(presence_penalty=-2, frequency_penalty=2), dict(temperature=1, min_p=1, top_k=-1),
        dict(temperature=5e-324), dict(logprobs=True, top_logprobs=20), dict(stop=["x" * 1024] * 16),
        dict(stop_token_ids=list(range(64)), min_tokens=3), dict(max_tokens=3.0),
        dict(n=16, max_tokens=1),
    ]
    for fields in cases:
        r = _post(server, _chat(**fields))
        assert r.status_code == 200, (fields if len(str(fields)) < 200 else list(fields), r.text)
        assert len(r.json()["choices"]) == fields.get("n", 1)
    r = _post(server, {"model": MODEL, "prompt": ["hi"] * 64, "max_tokens": 1, "logprobs": 20}, COMPLETIONS)
    assert r.status_code == 200 and len(r.json()["choices"]) == 64, r.text
    err = _assert_error(_post(server, _chat(messages=_msgs(1024))), 400)  # 1024 messages pass validation;
    assert "session_len" in err["message"], err  # their tokens are more than this server's session holds


# ---- 4. the schema ------------------------------------------------------------------------------------------

def test_openapi_declares_the_ranges_and_400_not_422(server, tiny_llava):
    r = httpx.get(server.url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    schema = r.json()
    text = json.dumps(schema)
    assert '"422"' not in text and "HTTPValidationError" not in text
    comps = schema["components"]["schemas"]
    err = comps["ErrorResponse"]
    assert err["required"] == ["error"]
    detail = comps["ErrorDetail"]
    assert set(detail["properties"]) == {"message", "type", "param", "code"}
    assert set(detail["required"]) == {"message", "type"}
    for path in ("/v1/chat/completions", "/v1/completions"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "404", "413", "503"} <= set(responses), responses
        for status in ("400", "401", "404", "413", "503"):
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorResponse", (path, status)
        assert "text/event-stream" in responses["200"]["content"]
        assert schema["paths"][path]["post"]["security"] == [{"bearer": []}]
    assert "401" in schema["paths"]["/v1/models"]["get"]["responses"]
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}

    def field(model, name):
        prop = comps[model]["properties"][name]
        return next((s for s in prop.get("anyOf", [prop]) if s.get("type") != "null"), prop)

    chat = "ChatCompletionRequest"
    expect = {
        "temperature": {"minimum": 0, "maximum": 2}, "top_p": {"exclusiveMinimum": 0, "maximum": 1},
        "n": {"minimum": 1, "maximum": 16}, "presence_penalty": {"minimum": -2, "maximum": 2},
        "frequency_penalty": {"minimum": -2, "maximum": 2}, "top_logprobs": {"minimum": 0, "maximum": 20},
        "max_tokens": {"minimum": 1}, "max_completion_tokens": {"minimum": 1}, "min_tokens": {"minimum": 0},
        "top_k": {"minimum": -1}, "min_p": {"minimum": 0, "maximum": 1},
        "repetition_penalty": {"minimum": 0.01, "maximum": 100},
        "seed": {"minimum": -2**63, "maximum": 2**63 - 1, "type": "integer"},
        "messages": {"minItems": 1, "maxItems": 1024}, "stop_token_ids": {"maxItems": 64},
    }
    for name, bounds in expect.items():
        got = field(chat, name)
        assert {k: got.get(k) for k in bounds} == bounds, (name, got)
    assert field(chat, "stop_token_ids")["items"]["minimum"] == 0
    stop = comps[chat]["properties"]["stop"]
    assert {"type": "string", "minLength": 1, "maxLength": 1024} in [
        {k: s.get(k) for k in ("type", "minLength", "maxLength")} for s in stop["anyOf"]]
    listed = next(s for s in stop["anyOf"] if s.get("type") == "array")
    assert listed["maxItems"] == 16 and listed["items"]["maxLength"] == 1024
    assert "16" in stop["description"]
    assert set(comps[chat]["properties"]["model"]["anyOf"][0]["enum"]) == {MODEL, tiny_llava}
    logprobs = field("CompletionRequest", "logprobs")
    assert (logprobs["type"], logprobs["minimum"], logprobs["maximum"]) == ("integer", 0, 20)
    prompt = comps["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    assert [s.get("maxItems") for s in prompt if s.get("type") == "array"] == [64, None, 64]


# ---- 5. connections -------------------------------------------------------------------------------------------

def test_headers_that_trickle_in_are_cut_with_408(server):
    """--header-timeout 1: a request whose headers are not complete within 1 s gets 408 and the
    connection closes, however steadily its bytes come (slowloris); so does a silent connection."""
    with _connect(server) as slow, _connect(server) as silent:
        t0 = time.monotonic()
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        for i in range(40):  # a header line every 0.25 s, for up to 10 s, until the server answers
            slow.sendall(b"X-Slow: %d\r\n" % i)
            if select.select([slow], [], [], 0.25)[0]:
                break
        status, headers, body = _read_response(slow)
        elapsed = time.monotonic() - t0
        err = _raw_error((status, headers, body), 408)
        assert "--header-timeout" in err["message"] and 0.9 < elapsed < 5, elapsed
        assert _closed(slow)
        _raw_error(_read_response(silent), 408)
        assert _closed(silent)


def test_an_idle_keep_alive_connection_outlives_the_header_timeout(server):
    """The header clock starts at a request's first byte; between requests keep-alive (5 s) rules."""
    with _connect(server) as s:
        for _ in range(2):
            s.sendall(_head("/health", method="GET"))
            status, _, body = _read_response(s)
            assert (status, body) == (200, b"ok")
            time.sleep(1.5)


def test_connections_past_max_connections_are_closed_at_once(server):
    socks = []
    try:
        deadline = time.monotonic() + 10
        while len(socks) < MAX_CONNECTIONS:  # keep-alive connections, each after one request
            s = _connect(server)
            s.sendall(_head("/health", method="GET"))
            try:
                assert _read_response(s)[0] == 200
                socks.append(s)
            except (AssertionError, OSError):  # the server had not yet seen an earlier test's close
                s.close()
                assert time.monotonic() < deadline, "could not open the connections"
                time.sleep(0.1)
        with _connect(server) as extra:
            assert _closed(extra)  # closed with nothing sent (its header timeout would have sent a 408)
        socks[0].sendall(_head("/health", method="GET"))  # the open ones are still served
        assert _read_response(socks[0])[0] == 200
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 5
    while True:  # once they are gone, new connections are served again
        try:
            assert httpx.get(server.url + "/health", timeout=2).status_code == 200
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


@contextlib.contextmanager
def _open_file_limit(soft: int):
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_max_connections_is_kept_below_the_open_file_limit(tiny_llava):
    """Started with `ulimit -n 256`, --max-connections 100000 becomes 256 - 64 = 192, with a warning."""
    with _open_file_limit(256):
        srv = ServerProcess.start(tiny_llava, "--max-connections", "100000", "--header-timeout", "30")
    socks = []
    try:
        assert "over the open-file limit 256 minus 64; using 192" in srv.log()
        for _ in range(192):
            socks.append(_connect(srv))
        socks[0].sendall(_head("/health", method="GET"))
        assert _read_response(socks[0])[0] == 200  # all 192 are open and served
        with _connect(srv, timeout=2) as extra:
            assert _closed(extra)
        socks[-1].sendall(_head("/health", method="GET"))
        assert _read_response(socks[-1])[0] == 200
    finally:
        for s in socks:
            s.close()
        assert srv.stop() == 0, srv.log()


def test_limits_that_are_not_positive_are_refused_before_binding(tiny_llava):
    out = subprocess.run([sys.executable, "-m", "seer", "serve", tiny_llava, "--max-request-body-bytes", "0",
                          "--server-port", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--max-request-body-bytes 0 is invalid" in out.stderr, out.stderr


# ---- 6. shutdown ------------------------------------------------------------------------------------------------

def test_requests_cut_by_shutdown_end_with_an_openai_error(tiny_llava):
    """--shutdown-timeout 0.5 and two long requests: after SIGTERM the stream gets an SSE error event
    and [DONE], the plain request a 503 JSON error, and the server exits 0."""
    srv = ServerProcess.start(tiny_llava, "--shutdown-timeout", "0.5", "--session-len", "4096")
    try:
        body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 4000, "ignore_eos": True,
                "temperature": 0}
        plain = {}

        def send_plain():
            try:
                plain["r"] = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                plain["r"] = e

        thread = threading.Thread(target=send_plain)
        thread.start()
        events = []
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**body, "stream": True},
                          timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for line in lines:  # generating: the first token
                if '"content": "' in line and '"content": ""' not in line:
                    break
            deadline = time.monotonic() + 20
            while srv.metrics()["seer_num_requests_running"] < 2:  # the plain one generates too
                assert time.monotonic() < deadline, srv.metrics()
                time.sleep(0.05)
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            events = [line for line in lines if line]
        thread.join(60)
        assert time.monotonic() - t0 < 10  # cut after 0.5 s, not run to the end
        assert events[-1] == "data: [DONE]", events[-3:]
        err = json.loads(events[-2].removeprefix("data: "))["error"]
        assert err["type"] == "server_error" and err["code"] == 503 and "shutting down" in err["message"], err
        assert set(err) == {"message", "type", "param", "code"}
        assert not any('"finish_reason": "length"' in e for e in events)  # it was cut, not finished
        r = plain["r"]
        assert isinstance(r, httpx.Response), r
        assert _assert_error(r, 503, "server_error")["message"].startswith("the server is shutting down")
        assert r.headers["retry-after"] == "1"
        assert srv.proc.wait(30) == 0, srv.log()
    finally:
        srv.kill()


# ---- 7. schemathesis ---------------------------------------------------------------------------------------------

def test_schemathesis_finds_no_server_error(server, tmp_path):
    """Property-based requests from the served /openapi.json (valid and invalid), bounded: no 5xx."""
    pytest.importorskip("schemathesis")
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
           "--checks", "not_a_server_error", "--phases", "coverage,fuzzing", "--max-examples", "25",
           "--seed", "1", "--workers", "1", "--request-timeout", "60", "--generation-database", "none",
           "--header", f"Authorization: Bearer {KEY}", "--no-color"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-6000:]
    assert "passed" in report and "Server error" not in report, report[-6000:]
