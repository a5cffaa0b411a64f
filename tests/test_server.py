"""The OpenAI-compatible server, over real HTTP: the `openai` client against `seer serve`.

One server subprocess serves the module (tiny random LLaVA, at most 2 images per prompt,
session_len 256); expected answers come from an in-process ``pipeline`` on the same
folder, greedy, so equality is exact.
"""

import base64
import json
import socket
import threading
import time

import httpx
import openai
import pytest

import tiny_models as tm
from http_images import ImageServer, closed_port_url, png_bytes
from seer import LLM, GenerationConfig, SamplingParams, pipeline
from server_proc import ServerProcess

SESSION_LEN = 256
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def images():
    with ImageServer() as srv:
        a, b = tm.make_image(11), tm.make_image(12, size=(80, 40))
        srv.add("/a.png", png_bytes(a))
        srv.add("/b.png", png_bytes(b))
        srv.add("/page.html", b"<html>not an image</html>", ctype="text/html")
        yield srv, a, b


@pytest.fixture(scope="module")
def server(tiny_llava):
    srv = ServerProcess.start(tiny_llava, "--limit-mm-per-prompt", "image=2", "--session-len", str(SESSION_LEN),
                              "--model-name", "tiny-llava")
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def pipe(tiny_llava):
    with pipeline(tiny_llava, dict(session_len=SESSION_LEN)) as p:
        yield p


def _data_uri(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def _user(text, *urls):
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in urls),
                                         {"type": "text", "text": text}]}]


def test_models(client, server, tiny_llava):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-llava"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_chat_with_one_image_by_url_equals_the_pipeline(client, pipe, images):
    srv, a, _ = images
    messages = _user("Describe the image.", srv.url("/a.png"))
    out = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=MAX_TOKENS,
                                         temperature=0)
    want = pipe(messages, gen_config=GenerationConfig(max_new_tokens=MAX_TOKENS))
    assert out.choices[0].message.content == want.text
    assert out.choices[0].finish_reason == want.finish_reason
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (want.input_token_len, want.generate_token_len)
    assert out.usage.total_tokens == want.input_token_len + want.generate_token_len


def test_streamed_chat_with_two_images_url_and_base64(client, pipe, images):
    srv, a, b = images
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Compare"},
                                             {"type": "image_url", "image_url": {"url": srv.url("/a.png")}},
                                             {"type": "text", "text": "with"},
                                             {"type": "image_url", "image_url": {"url": _data_uri(b)}}]}]
    stream = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    want = pipe(messages, gen_config=GenerationConfig(max_new_tokens=MAX_TOKENS))
    assert text == want.text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want.generate_token_len
    assert chunks[-1].usage.prompt_tokens == want.input_token_len


def test_plain_chat_with_two_images_and_streamed_chat_with_one(client, pipe, images):
    srv, a, b = images
    two = _user("Which is brighter?", _data_uri(a), srv.url("/b.png"))
    out = client.chat.completions.create(model="tiny-llava", messages=two, max_tokens=MAX_TOKENS, temperature=0)
    want = pipe(two, gen_config=GenerationConfig(max_new_tokens=MAX_TOKENS))
    assert out.choices[0].message.content == want.text
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (want.input_token_len, want.generate_token_len)
    one = _user("What is it?", _data_uri(b))
    chunks = list(client.chat.completions.create(model="tiny-llava", messages=one, max_tokens=MAX_TOKENS,
                                                 temperature=0, stream=True))
    want = pipe(one, gen_config=GenerationConfig(max_new_tokens=MAX_TOKENS))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert not [c for c in chunks if c.usage]  # usage only when stream_options.include_usage asks (OpenAI)


# Every sampling field with a valid value: the server's answer is the pipeline's under the same config.
SAMPLING_CASES = [
    ({"top_k": 3, "temperature": 0.9, "seed": 5}, dict(do_sample=True, top_k=3, temperature=0.9, random_seed=5)),
    ({"top_p": 0.5, "temperature": 1.2, "seed": 6}, dict(do_sample=True, top_p=0.5, temperature=1.2, top_k=0,
                                                          random_seed=6)),
    ({"min_p": 0.2, "temperature": 1.0, "seed": 2}, dict(do_sample=True, min_p=0.2, temperature=1.0, top_k=0,
                                                          random_seed=2)),
    ({"presence_penalty": 1.5, "temperature": 0}, dict(presence_penalty=1.5)),
    ({"frequency_penalty": 1.2, "temperature": 0}, dict(frequency_penalty=1.2)),
    ({"repetition_penalty": 1.4, "temperature": 0}, dict(repetition_penalty=1.4)),
    ({"max_completion_tokens": 5, "temperature": 0}, dict(max_new_tokens=5)),
    ({"logit_bias": {"7": 100, "9": -5.5}, "temperature": 0}, dict(logit_bias={7: 100.0, 9: -5.5})),
]


@pytest.mark.parametrize("fields,gen", SAMPLING_CASES, ids=[",".join(f) for f, _ in SAMPLING_CASES])
def test_sampling_fields_equal_the_pipeline(server, pipe, fields, gen):
    messages = _user("Tell me a long story about shapes.")
    body = {"model": "tiny-llava", "messages": messages, "max_tokens": 16, **fields}
    r = _post(server, body)
    assert r.status_code == 200, r.text
    want = pipe(messages, gen_config=GenerationConfig(**{"max_new_tokens": 16, **gen}))
    assert r.json()["choices"][0]["message"]["content"] == want.text
    assert r.json()["usage"]["completion_tokens"] == want.generate_token_len


def test_stop_strings_end_the_answer_before_them(client, pipe):
    messages = _user("Tell me a long story about shapes.")
    full = pipe(messages, gen_config=GenerationConfig(max_new_tokens=24)).text
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    out = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=24, temperature=0,
                                         stop=[stop, "never-appears"])
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == full[:full.index(stop)]


def test_stop_token_ids_and_min_tokens(server, pipe):
    messages = _user("Tell me a long story about shapes.")
    full = pipe(messages, gen_config=GenerationConfig(max_new_tokens=16)).token_ids
    stop_id = full[3]
    first = full.index(stop_id)
    for extra, gen in (({}, {}), ({"min_tokens": first + 2}, {"min_new_tokens": first + 2})):
        body = {"model": "tiny-llava", "messages": messages, "max_tokens": 16, "temperature": 0,
                "stop_token_ids": [stop_id], **extra}
        r = _post(server, body)
        assert r.status_code == 200, r.text
        want = pipe(messages, gen_config=GenerationConfig(max_new_tokens=16, stop_token_ids=[stop_id], **gen))
        assert r.json()["choices"][0]["message"]["content"] == want.text
        assert r.json()["usage"]["completion_tokens"] == want.generate_token_len
        assert (want.generate_token_len == first) == (not extra)  # min_tokens holds the stop token back


def test_metrics_count_tokens_and_time(client, server):
    before = server.metrics()
    out = client.chat.completions.create(model="tiny-llava", messages=_user("Count."), max_tokens=6, temperature=0,
                                         extra_body={"ignore_eos": True})
    m = server.metrics()
    assert m["seer_prompt_tokens_total"] - before["seer_prompt_tokens_total"] == out.usage.prompt_tokens
    assert m["seer_generation_tokens_total"] - before["seer_generation_tokens_total"] == 6
    for hist in ("seer_time_to_first_token_seconds", "seer_time_per_output_token_seconds",
                 "seer_e2e_request_latency_seconds"):
        assert m[hist + "_count"] == before.get(hist + "_count", 0) + 1, hist
        assert m[hist + "_sum"] > before.get(hist + "_sum", 0), hist
    assert 0 <= m["seer_kv_cache_usage_perc"] <= 1 and m["seer_kv_cache_blocks_total"] > 0
    assert m["seer_kv_cache_blocks_touched"] > 0 and m["seer_kv_cache_block_bytes"] > 0


def test_repeated_image_hits_the_feature_cache(client, server, images):
    srv, _, _ = images
    before = server.metrics()["seer_image_cache_hits_total"]
    client.chat.completions.create(model="tiny-llava", messages=_user("Again.", srv.url("/a.png")), max_tokens=2,
                                   temperature=0)
    assert server.metrics()["seer_image_cache_hits_total"] > before


def test_chat_logprobs_match_the_pipeline(client, pipe):
    messages = _user("Count to three.")
    out = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=6, temperature=0,
                                         logprobs=True, top_logprobs=3)
    want = pipe(messages, gen_config=GenerationConfig(max_new_tokens=6, logprobs=3))
    content = out.choices[0].logprobs.content
    assert len(content) == len(want.token_ids) == 6
    for entry, tok, lp in zip(content, want.token_ids, want.logprobs):
        assert entry.logprob == pytest.approx(lp[tok], abs=1e-4)
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # greedy takes the best
        assert entry.token == pipe.tokenizer.decode([tok])


def test_logprob_bytes_are_the_tokens_own(client, pipe):
    """A token holding part of a UTF-8 character shows as U+FFFD, and its ``bytes`` are its own:
    the bytes of the tokens of "日" put together are the character's."""
    from seer.serve.openai_protocol import token_bytes

    tok = pipe.tokenizer
    ids = tok("日", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1 and all(tok.decode([i]) == "\ufffd" for i in ids)
    assert sum((token_bytes(tok, i, tok.decode([i])) for i in ids), []) == list("日".encode())
    out = client.chat.completions.create(model="tiny-llava", messages=_user("hi"), max_tokens=2, temperature=0,
                                         logprobs=True, logit_bias={str(ids[0]): 100})
    entry = out.choices[0].logprobs.content[0]
    assert entry.token == "\ufffd" and entry.bytes == list("日".encode())[:1]


def test_a_history_with_tool_calls_as_the_sdk_sends_it(client, pipe):
    """developer, an assistant turn with content null and tool_calls, and a tool message: the
    answer equals the pipeline's for the same messages."""
    messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12 C"}]
    out = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=6, temperature=0)
    assert out.choices[0].message.content == pipe(messages, gen_config=GenerationConfig(max_new_tokens=6)).text


def test_vllms_side_endpoints(server, pipe, images):
    """/tokenize (a prompt, or messages with an image through the chat template), /detokenize,
    /tokenizer_info, /version and /ping, in vLLM's shapes."""
    url, srv = server.url, images[0]
    text = "hello there, how are you?"
    r = httpx.post(f"{url}/tokenize", json={"model": "tiny-llava", "prompt": text}).json()
    want = pipe.tokenizer(text)["input_ids"]
    assert r == {"count": len(want), "max_model_len": SESSION_LEN, "tokens": want, "token_strs": None}
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": srv.url("/a.png")}},
                                             {"type": "text", "text": "what is this?"}]}]
    r = httpx.post(f"{url}/tokenize", json={"messages": messages}).json()
    assert r["tokens"] == pipe.prepare(messages).token_ids and r["count"] == len(r["tokens"])
    assert httpx.post(f"{url}/detokenize", json={"tokens": want}).json() == {"prompt": pipe.tokenizer.decode(want)}
    info = httpx.get(f"{url}/tokenizer_info").json()
    assert info["eos_token"] == pipe.tokenizer.eos_token and info["model_max_length"] == SESSION_LEN
    assert httpx.get(f"{url}/version").json()["version"]
    assert httpx.get(f"{url}/ping").status_code == httpx.post(f"{url}/ping").status_code == 200
    for path, body, words in [("/detokenize", {"tokens": [10 ** 9]}, "outside the vocabulary"),
                              ("/tokenize", {"prompt": "a", "messages": messages}, "exactly one"),
                              ("/tokenize", {}, "exactly one"),
                              ("/tokenize", {"prompt": "a", "model": "other"}, "model")]:
        r = httpx.post(f"{url}{path}", json=body)
        assert r.status_code in (400, 404) and words in r.json()["error"]["message"], (path, r.text)


def test_completions_take_the_raw_prompt(client, tiny_llava):
    prompt = "USER: hello there ASSISTANT:"
    out = client.completions.create(model="tiny-llava", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                    logprobs=2)
    llm = LLM(tiny_llava, max_model_len=SESSION_LEN)
    try:
        want = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))[0]
    finally:
        llm.close()
    assert out.choices[0].text == want.outputs[0].text
    assert out.usage.prompt_tokens == len(want.prompt_token_ids)
    assert len(out.choices[0].logprobs.tokens) == len(want.outputs[0].token_ids)
    stream = client.completions.create(model="tiny-llava", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == want.outputs[0].text


def test_completions_of_several_prompts_count_each_prompt_once(client, server):
    out = client.completions.create(model="tiny-llava", prompt=["one two", "three four five"], n=2, max_tokens=3,
                                    temperature=0, extra_body={"ignore_eos": True})
    assert len(out.choices) == 4 and out.usage.completion_tokens == 12
    single = [client.completions.create(model="tiny-llava", prompt=p, max_tokens=1).usage.prompt_tokens
              for p in ("one two", "three four five")]
    assert out.usage.prompt_tokens == sum(single)
    assert out.choices[0].text == out.choices[1].text  # greedy: both choices of a prompt agree


def test_n_choices_and_seeded_sampling(client):
    kw = dict(model="tiny-llava", messages=_user("Say something."), max_tokens=8, temperature=1.0, seed=7)
    one = client.chat.completions.create(n=3, **kw)
    two = client.chat.completions.create(n=3, **kw)
    assert [c.index for c in one.choices] == [0, 1, 2]
    assert [c.message.content for c in one.choices] == [c.message.content for c in two.choices]
    assert len({c.message.content for c in one.choices}) > 1  # choice i samples with seed + i
    assert one.usage.completion_tokens == 24


def _post(server, body, path="/v1/chat/completions", **kw):
    if isinstance(body, (dict, list)):
        return httpx.post(server.url + path, json=body, timeout=60, **kw)
    return httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=60)


def _chat(**over):
    return {"model": "tiny-llava", "messages": _user("hi"), "max_tokens": 4, "temperature": 0, **over}


BAD_INPUTS = [
    # (name, body or builder(images), path, status, words in the message)
    ("malformed JSON", b'{"model": "tiny-llava", "messages": [', None, 400, "JSON"),
    ("body not an object", b'[1, 2]', None, 400, "body"),
    ("no messages", {"model": "tiny-llava"}, None, 400, "messages"),
    ("empty messages", _chat(messages=[]), None, 400, "messages"),
    ("unknown model", _chat(model="gpt-9"), None, 404, "does not exist"),
    ("unknown role", _chat(messages=[{"role": "robot", "content": "hi"}]), None, 400, "role"),
    ("logit_bias key not a token id", _chat(logit_bias={"abc": 1}), None, 400, "logit_bias"),
    ("logit_bias value out of range", _chat(logit_bias={"3": 101}), None, 400, "logit_bias"),
    ("logit_bias past the vocabulary", _chat(logit_bias={"99999999": 1}), None, 400, "outside the vocabulary"),
    ("image part without url", _chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), None, 400,
     "url"),
    ("unreachable image URL", lambda im: _chat(messages=_user("x", closed_port_url())), None, 400, "image"),
    ("URL that is not an image", lambda im: _chat(messages=_user("x", im[0].url("/page.html"))), None, 400,
     "image"),
    ("image URL 404", lambda im: _chat(messages=_user("x", im[0].url("/missing.png"))), None, 400, "404"),
    ("local file without the flag", _chat(messages=_user("x", "/etc/hostname")), None, 400, "local files"),
    ("local video file without the flag",
     _chat(messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "file:///etc/hostname"}}]}]),
     None, 400, "local files"),
    ("video frames with a local path",
     _chat(messages=[{"role": "user", "content": [{"type": "video", "video": ["/etc/hostname"]}]}]), None, 400,
     "local files"),
    ("corrupt base64 image", _chat(messages=_user("x", "data:image/png;base64,AAAA")), None, 400, "image"),
    ("too many images", lambda im: _chat(messages=_user("x", *[im[0].url("/a.png")] * 3)), None, 400,
     "allows 2"),
    ("prompt longer than session_len", _chat(messages=_user("hello " * 400)), None, 400, "session_len"),
    ("max_tokens past the context window", _chat(max_tokens=10 ** 9), None, 400, "context window"),
    ("temperature < 0", _chat(temperature=-1), None, 400, "temperature"),
    ("temperature not a number", _chat(temperature="hot"), None, 400, "temperature"),
    ("top_p = 0", _chat(top_p=0), None, 400, "top_p"),
    ("max_tokens = 0", _chat(max_tokens=0), None, 400, "max_tokens"),
    ("n = 0", _chat(n=0), None, 400, "n=0"),
    ("presence_penalty out of range", _chat(presence_penalty=5), None, 400, "presence_penalty"),
    ("frequency_penalty out of range", _chat(frequency_penalty=-3), None, 400, "frequency_penalty"),
    ("top_k negative", _chat(top_k=-5), None, 400, "top_k"),
    ("seed not an integer", _chat(seed="abc"), None, 400, "seed"),
    ("repetition_penalty = 0", _chat(repetition_penalty=0), None, 400, "repetition_penalty"),
    ("top_logprobs without logprobs", _chat(top_logprobs=2), None, 400, "logprobs"),
    ("top_logprobs too many", _chat(logprobs=True, top_logprobs=50), None, 400, "logprobs"),
    ("stop not a string", _chat(stop=[""]), None, 400, "stop"),
    ("completion without prompt", {"model": "tiny-llava"}, "/v1/completions", 400, "prompt"),
    ("completion token id out of vocabulary", {"model": "tiny-llava", "prompt": [1, 10**9]}, "/v1/completions",
     400, "vocabulary"),
    ("completion unknown model", {"model": "nope", "prompt": "hi"}, "/v1/completions", 404, "does not exist"),
    ("a field seer does not implement", {"model": "tiny-llava", "prompt": "hi", "suffix": "!", "best_of": 2},
     "/v1/completions", 400, "seer does not support this field"),
    ("OpenAI's legacy functions field", _chat(functions=[{"name": "f"}]), None, 400,
     "functions: seer does not support"),
]


@pytest.mark.parametrize("name,body,path,status,words", BAD_INPUTS, ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_a_4xx_with_an_openai_error(server, images, name, body, path, status, words):
    if callable(body):
        body = body(images)
    r = _post(server, body, path or "/v1/chat/completions")
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words.lower() in err["message"].lower(), err
    assert {"message", "type", "param", "code"} <= set(err)


def test_bad_input_through_the_openai_client(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny-llava", messages=_user("hi"), temperature=-3)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=_user("hi"))
    # ...and the server is still fine
    assert client.chat.completions.create(model="tiny-llava", messages=_user("hi"), max_tokens=2).choices


def test_a_non_streaming_client_that_leaves_aborts_its_request(server):
    before = server.metrics()["seer_requests_aborted_total"]
    body = json.dumps(_chat(max_tokens=SESSION_LEN // 2, ignore_eos=True, messages=_user("go on"))).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # send the request, then hang up
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    _wait_for(lambda: server.metrics()["seer_requests_aborted_total"] == before + 1)
    _wait_for(lambda: server.metrics()["seer_kv_cache_blocks_used"] == 0)


def _wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# ---- policies: API keys, the queue bound, local files --------------------------------------------

@pytest.fixture(scope="module")
def strict_server(tiny_llava, tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    tm.make_image(3).save(media / "ok.png")
    srv = ServerProcess.start(tiny_llava, "--api-keys", "k1", "k2", "--max-batch-size", "1",
                              "--max-queued-requests", "1", "--allowed-local-media-path", str(media))
    srv.media = media
    yield srv
    assert srv.stop() == 0, srv.log()


def test_api_keys(strict_server, tiny_llava):
    body = _chat(model=tiny_llava, max_tokens=2)
    assert _post(strict_server, body).status_code == 401
    assert _post(strict_server, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = _post(strict_server, body, headers={"Authorization": "Bearer k2"})
    assert r.status_code == 200, r.text
    assert httpx.get(strict_server.url + "/v1/models").status_code == 401
    client = openai.OpenAI(base_url=strict_server.url + "/v1", api_key="k1", max_retries=0)
    assert client.models.list().data[0].id == tiny_llava
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=strict_server.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_local_files_only_under_the_allowed_folder(strict_server, tiny_llava):
    auth = {"Authorization": "Bearer k1"}
    ok = _post(strict_server, _chat(model=tiny_llava, messages=_user("x", str(strict_server.media / "ok.png"))),
               headers=auth)
    assert ok.status_code == 200, ok.text
    outside = _post(strict_server, _chat(model=tiny_llava, messages=_user("x", "file:///etc/hostname")),
                    headers=auth)
    assert outside.status_code == 400 and "only below" in outside.json()["error"]["message"]


def test_past_the_queue_bound_requests_get_503(strict_server, tiny_llava):
    """max_batch_size=1 and max_queued_requests=1: one runs, one waits, the third is refused."""
    auth = {"Authorization": "Bearer k1"}
    long = _chat(model=tiny_llava, max_tokens=1900, ignore_eos=True, stream=True)  # seconds of work
    with httpx.Client(base_url=strict_server.url, headers=auth, timeout=60) as http:
        streams = []
        for _ in range(2):
            cm = http.stream("POST", "/v1/chat/completions", json=long)
            resp = cm.__enter__()
            assert resp.status_code == 200
            lines = resp.iter_lines()
            if not streams:  # the first one generates; the second one waits
                next(line for line in lines if '"content": "' in line and '"content": ""' not in line)
            streams.append((cm, lines))  # (a dropped line iterator would close its response)
        _wait_for(lambda: strict_server.metrics()["seer_num_requests_waiting"] == 1)
        refused = http.post("/v1/chat/completions", json=_chat(model=tiny_llava))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "retry" in refused.json()["error"]["message"]
        for cm, _ in streams:
            cm.__exit__(None, None, None)  # disconnect: both are aborted
    _wait_for(lambda: strict_server.metrics()["seer_num_requests_active"] == 0)
    m = strict_server.metrics()
    assert m["seer_kv_cache_blocks_used"] == 0 and m["seer_requests_aborted_total"] == 2
    assert _post(strict_server, _chat(model=tiny_llava), headers=auth).status_code == 200


# ---- in-process: /health while loading and after the engine dies ----------------------------------

def test_health_is_503_while_loading_and_after_the_engine_dies(tiny_llava):
    from starlette.testclient import TestClient

    from seer.serve.api_server import ServerCore, build_app

    gate = threading.Event()

    class SlowCore(ServerCore):
        def load(self):
            gate.wait(30)
            super().load()

    core = SlowCore(tiny_llava)
    with TestClient(build_app(core)) as http:
        assert http.get("/health").status_code == 503
        r = http.post("/v1/chat/completions", json=_chat(model=tiny_llava))
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        gate.set()
        _wait_for(lambda: http.get("/health").status_code == 200)
        assert http.post("/v1/chat/completions", json=_chat(model=tiny_llava)).status_code == 200
        core.pipe.engine.close()
        assert http.get("/health").status_code == 503
        assert http.post("/v1/chat/completions", json=_chat(model=tiny_llava)).status_code == 503
