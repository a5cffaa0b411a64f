"""Tool calling through ``seer serve`` and the ``openai`` SDK.

Two tiny random-weight models: a LLaVA whose chat template knows nothing of tools (seer describes
them in the system prompt and reads calls with the ``json`` parser), and a Qwen2 whose template
renders them Hermes-style (``<tool_call>`` tags, read with the ``hermes`` parser, picked from the
template). A forced call (``"required"`` or a named function) always parses into arguments valid
for the function's schema, sampled or greedy, with images in the prompt; streamed tool-call
deltas add up to the non-streamed call; ``"auto"`` and ``"none"`` give text from a model that
writes no call; bad tools are 400s naming the problem.
"""

from __future__ import annotations

import base64
import json

import httpx
import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

import tiny_models as tm
from http_images import png_bytes
from seer import pipeline
from seer.serve.tool_calls import parser_name
from server_proc import ServerProcess

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}}}
ADD = {"type": "object", "additionalProperties": False, "required": ["a", "b"],
       "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                      "b": {"type": "integer", "minimum": -9, "maximum": 9}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}

HERMES = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You may call one or more functions to assist with the user query.

<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages if message.role != 'system' %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% if message.content %}{{ message.content }}
{% endif %}{% for tc in message.tool_calls %}<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def hermes_model(tmp_path_factory):
    path = tm.build_text_model(str(tmp_path_factory.mktemp("tiny") / "qwen2-hermes"), "qwen2")
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = HERMES
    tok.save_pretrained(path)
    return path


def _start(model):
    return ServerProcess.start(model, "--model-name", "tiny", "--session-len", "1024")


@pytest.fixture(scope="module")
def llava_server(tiny_llava):
    srv = _start(tiny_llava)
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def hermes_server(hermes_model):
    srv = _start(hermes_model)
    yield srv
    assert srv.stop() == 0, srv.log()


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(seed: int) -> list[dict]:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(tm.make_image(seed))).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": "What is the weather where this was taken?"}]}]


def _valid_calls(message, names):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return [(c.function.name, c.function.arguments) for c in message.tool_calls]


def test_the_template_decides_the_parser_and_shows_the_tools(tiny_llava, hermes_model):
    with pipeline(tiny_llava) as pipe:
        assert parser_name(pipe) == "json"  # the template ignores tools: seer describes them
        text = pipe.tokenizer.decode(pipe.prepare([{"role": "user", "content": "hi"}], tools=TOOLS).token_ids)
        assert '"name": "get_weather"' in text and "To call one" in text
    with pipeline(hermes_model) as pipe:
        assert parser_name(pipe) == "hermes"
        text = pipe.tokenizer.decode(pipe.prepare([{"role": "user", "content": "hi"}], tools=TOOLS).token_ids)
        assert "<tools>" in text and '"name": "add"' in text


def test_a_template_without_call_markers_falls_back_to_the_model_type(tmp_path):
    path = tm.build_text_model(str(tmp_path / "qwen2-plain"), "qwen2")
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = ("{% if tools %}{{ tools | tojson }}\n{% endif %}"
                         "{% for m in messages %}{{ m.content }}{% endfor %}")
    tok.save_pretrained(path)
    with pipeline(path) as pipe:
        assert parser_name(pipe) == "hermes"  # Qwen's format, from the config's model_type


@pytest.mark.parametrize("which", ["llava", "hermes"])
def test_forced_calls_always_parse_into_valid_arguments(which, llava_server, hermes_server):
    client = _client(llava_server if which == "llava" else hermes_server)
    for i in range(8):
        messages = _ask(i) if which == "llava" else [{"role": "user", "content": f"question {i}"}]
        r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=120, temperature=1.0, seed=i)
        assert r.choices[0].finish_reason == "tool_calls", r.choices[0]
        assert len(_valid_calls(r.choices[0].message, SCHEMAS)) == 1
        several = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=150,
                                                 tool_choice="required", temperature=1.0, seed=i).choices[0]
        if several.finish_reason == "tool_calls":  # else the calls went on until max_tokens cut one
            _valid_calls(several.message, SCHEMAS)
        named = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=120,
                                               tool_choice={"type": "function", "function": {"name": "add"}},
                                               temperature=1.0, seed=i)
        assert named.choices[0].finish_reason == "tool_calls"
        assert [n for n, _ in _valid_calls(named.choices[0].message, SCHEMAS)] == ["add"]


@pytest.mark.parametrize("which", ["llava", "hermes"])
@pytest.mark.parametrize("parallel", [False, True])
def test_streamed_tool_call_deltas_add_up_to_the_whole_call(which, parallel, llava_server, hermes_server):
    """Greedy, so both answers are the same tokens. With parallel calls a random model may go on
    calling until max_tokens cuts a call: then both end with "length" and that call is content."""
    client = _client(llava_server if which == "llava" else hermes_server)
    body = dict(model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
                tool_choice="required", parallel_tool_calls=parallel, max_tokens=160, temperature=0)
    whole = client.chat.completions.create(**body).choices[0]
    calls, finish, content = {}, None, ""
    for chunk in client.chat.completions.create(**body, stream=True):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        content += chunk.choices[0].delta.content or ""
        for d in chunk.choices[0].delta.tool_calls or ():
            slot = calls.setdefault(d.index, {"name": "", "arguments": "", "id": None})
            slot["id"] = slot["id"] or d.id
            slot["name"] += (d.function.name or "") if d.function else ""
            slot["arguments"] += (d.function.arguments or "") if d.function else ""
    assert finish == whole.finish_reason and (content or None) == whole.message.content
    if not parallel:
        assert finish == "tool_calls" and len(calls) == 1
    want = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or ()]
    assert want and [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == want
    assert all(c["id"].startswith("call_") for c in calls.values())
    if finish == "tool_calls":  # the SDK's own accumulator agrees (it refuses a cut answer)
        with client.chat.completions.stream(**body) as stream:
            final = stream.get_final_completion()
        assert [(c.function.name, c.function.arguments) for c in final.choices[0].message.tool_calls] == want


def test_auto_and_none_give_text_when_the_model_writes_no_call(llava_server):
    client = _client(llava_server)
    for choice in ("auto", "none"):
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           tools=TOOLS, tool_choice=choice, max_tokens=16, temperature=0)
        m = r.choices[0]
        assert m.message.tool_calls is None and m.message.content and m.finish_reason in ("stop", "length")


def test_a_history_with_calls_and_results_then_a_new_call(hermes_server):
    client = _client(hermes_server)
    messages = [{"role": "user", "content": "Add 2 and 3"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "5"},
                {"role": "user", "content": "And the weather?"}]
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=120,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert [n for n, _ in _valid_calls(r.choices[0].message, SCHEMAS)] == ["get_weather"]


@pytest.mark.parametrize("over,words", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "letters, digits"),
    ({"tools": TOOLS + TOOLS[:1]}, "repeats"),
    ({"tools": [{"type": "retrieval"}]}, "'tools' is"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among the tools"),
    ({"tools": None, "tool_choice": "required"}, "needs 'tools'"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "cannot be combined"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "object"),
])
def test_bad_tools_are_400s_and_the_server_stays_healthy(llava_server, over, words):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "max_tokens": 8,
            **over}
    body = {k: v for k, v in body.items() if v is not None}
    r = httpx.post(f"{llava_server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert httpx.get(f"{llava_server.url}/health").status_code == 200
