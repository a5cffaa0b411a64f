"""Structured output: the output follows the requested JSON schema, regex, choice or grammar.

On tiny random-weight models, whose unconstrained output is noise, so whatever shape the output
has comes from the grammar. Offline through LMDeploy's ``GenerationConfig(response_format=...)``
and vLLM's ``SamplingParams(structured_outputs=...)`` (and the older ``guided_decoding``); in the
server through the ``openai`` SDK (``chat.completions.parse`` with a pydantic model, over images)
and vLLM's ``guided_*`` extras. A constrained request gives the same tokens alone, in a batch with
unconstrained ones, with a warm prefix cache, chunked and preempted. Invalid schemas and regexes
are ``ValueError``s offline and 400s in the server, which stays healthy.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest

import tiny_models as tm
from http_images import png_bytes
from seer import (LLM, EngineConfig, GenerationConfig, GuidedDecodingParams, SamplingParams,
                  StructuredOutputsParams, pipeline)
from server_proc import ServerProcess

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["shape", "count", "big", "tags"],
          "properties": {"shape": {"enum": ["circle", "square", "star"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 9},
                         "big": {"type": "boolean"},
                         "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 6}}}}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "scene", "schema": SCHEMA}}
REGEX = r"[A-Z][a-z]{1,5} (left|right) [0-9]{2}"
CHOICES = ["left", "right", "top left", "nowhere"]
LARK = 'start: "(" NUM ("+" NUM)* ")"\nNUM: /[0-9]{1,2}/'
GBNF = 'root ::= "yes" | "no" | "maybe " [a-z]'


def _shapes(texts, kind):
    for text in texts:
        if kind == "json":
            jsonschema.validate(json.loads(text), SCHEMA)
        elif kind == "regex":
            assert re.fullmatch(REGEX, text), text
        elif kind == "choice":
            assert text in CHOICES, text
        elif kind == "lark":
            assert re.fullmatch(r"\(\d{1,2}(\+\d{1,2})*\)", text), text
        else:
            assert re.fullmatch(r"yes|no|maybe [a-z]", text), text


FORMATS = {"json": JSON_FORMAT, "regex": {"type": "regex_schema", "regex_schema": REGEX},
           "choice": {"type": "choice", "choice": CHOICES}, "lark": {"type": "grammar", "grammar": LARK},
           "gbnf": {"type": "grammar", "grammar": GBNF}}


@pytest.mark.parametrize("kind", FORMATS)
def test_lmdeploy_response_format_greedy_and_sampled(text_pipe, kind):
    prompts = [f"question number {i}" for i in range(6)]
    for gen in (GenerationConfig(max_new_tokens=80, response_format=FORMATS[kind]),
                GenerationConfig(max_new_tokens=80, do_sample=True, temperature=1.5, random_seed=3,
                                 response_format=FORMATS[kind])):
        out = text_pipe(prompts, gen_config=gen)
        assert all(r.finish_reason == "stop" for r in out), [(r.text, r.finish_reason) for r in out]
        _shapes([r.text for r in out], kind)
    unconstrained = text_pipe(prompts[:2], gen_config=GenerationConfig(max_new_tokens=20))
    assert all(r.finish_reason == "length" for r in unconstrained)  # noise without the grammar


def test_json_object_and_the_compiled_grammar_cache(text_pipe):
    before = text_pipe.engine.grammars.compiles
    gen = GenerationConfig(max_new_tokens=200, response_format={"type": "json_object"})
    out = text_pipe(["a", "b", "c"], gen_config=gen)
    for r in out:
        assert r.finish_reason in ("stop", "length")
        if r.finish_reason == "stop":
            assert isinstance(json.loads(r.text), dict)
    assert text_pipe.engine.grammars.compiles == before + 1  # one compile, three requests
    text_pipe("d", gen_config=gen)
    assert text_pipe.engine.grammars.compiles == before + 1


def test_a_schema_that_cannot_finish_in_max_tokens_ends_with_length(text_pipe):
    out = text_pipe("x", gen_config=GenerationConfig(max_new_tokens=3, response_format=JSON_FORMAT))
    assert out.finish_reason == "length" and len(out.token_ids) == 3 and out.text.startswith("{")


@pytest.mark.parametrize("bad,words", [
    ({"type": "regex_schema", "regex_schema": "(a|"}, "unclosed group"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}, "nope"),
    ({"type": "grammar", "grammar": "start: undefined_rule"}, "undefined_rule"),
    ({"type": "grammar", "grammar": "root ::= ("}, "GBNF"),
])
def test_an_invalid_grammar_is_a_value_error_and_fails_only_its_prompt(text_pipe, bad, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        text_pipe("x", gen_config=GenerationConfig(response_format=bad))
    good = GenerationConfig(max_new_tokens=40, response_format=FORMATS["choice"])
    out = text_pipe(["x", "y"], gen_config=[GenerationConfig(response_format=bad), good])
    assert out[0].finish_reason == "error" and words in out[0].error
    assert out[1].finish_reason == "stop" and out[1].text in CHOICES


@pytest.mark.parametrize("bad,words", [
    ({"type": "xml"}, "one of"), ({"type": "json_schema"}, "'schema'"), ({"type": "choice", "choice": []}, "1 to"),
    ({"type": "regex_schema", "regex_schema": ""}, "non-empty"),
    ({"type": "grammar", "grammar": "x" * 300_000}, "at most"),
])
def test_malformed_response_formats_are_refused_where_the_config_is_made(bad, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        GenerationConfig(response_format=bad)


def _run_invariance(path, cfg, gens, prompts):
    with pipeline(path, cfg) as pipe:
        out = [r.token_ids for r in pipe(prompts, gen_config=gens)]
        if cfg.num_gpu_blocks:  # the pool is too small for the batch: some request was preempted
            assert pipe.engine.scheduler.num_preemptions > 0
        return out


def test_batch_invariance_alone_batched_cached_chunked_preempted(tiny_llava):
    imgs = [tm.make_image(s) for s in range(3)]
    prompts = [("describe the picture with many words " * (i % 3) + f"item {i}", [imgs[i % 3]]) if i % 2 else
               f"tell me about thing {i} " * (1 + i % 4) for i in range(8)]
    plain = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    constrained = GenerationConfig(max_new_tokens=60, response_format=JSON_FORMAT)
    gens = [constrained if i % 3 == 0 else plain for i in range(8)]
    alone = []
    with pipeline(tiny_llava, EngineConfig(enable_prefix_caching=False)) as pipe:
        for p, g in zip(prompts, gens):
            alone.append(pipe(p, gen_config=g).token_ids)
    for cfg in (EngineConfig(enable_prefix_caching=False), EngineConfig(max_prefill_token_num=7, block_size=4),
                EngineConfig(num_gpu_blocks=40, block_size=4)):
        assert _run_invariance(tiny_llava, cfg, gens, prompts) == alone, cfg
    with pipeline(tiny_llava, EngineConfig(block_size=4)) as pipe:
        pipe(prompts, gen_config=gens)
        warm = pipe(prompts, gen_config=gens)
        assert [r.token_ids for r in warm] == alone and all(r.num_cached_tokens > 0 for r in warm)


def test_vllm_structured_outputs_and_guided_decoding(tiny_llama):
    llm = LLM(model=tiny_llama)
    try:
        params = [SamplingParams(max_tokens=80, structured_outputs=StructuredOutputsParams(json=SCHEMA)),
                  SamplingParams(max_tokens=80, structured_outputs=StructuredOutputsParams(regex=REGEX)),
                  SamplingParams(max_tokens=80, temperature=0.9, seed=1,
                                 guided_decoding=GuidedDecodingParams(choice=CHOICES)),
                  SamplingParams(max_tokens=80, structured_outputs=StructuredOutputsParams(grammar=LARK))]
        outs = llm.generate(["a", "b", "c", "d"], params)
        texts = [o.outputs[0].text for o in outs]
        for text, kind in zip(texts, ["json", "regex", "choice", "lark"]):
            _shapes([text], kind)
        for bad, words in [(StructuredOutputsParams(), "exactly one"),
                           (StructuredOutputsParams(regex="a", choice=["b"]), "exactly one"),
                           (StructuredOutputsParams(structural_tag="{}"), "structural_tag")]:
            with pytest.raises(ValueError, match=words):
                llm.generate("a", SamplingParams(structured_outputs=bad))
    finally:
        llm.close()


class Scene(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    shape: Literal["circle", "square", "star"]
    count: int = pydantic.Field(ge=0, le=9)
    colour: Literal["red", "green", "blue"]


@pytest.fixture(scope="module")
def server(tiny_llava):
    srv = ServerProcess.start(tiny_llava, "--model-name", "tiny", "--session-len", "512")
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _image_message(seed: int, text: str) -> list[dict]:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(tm.make_image(seed))).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": text}]}]


def test_openai_parse_with_a_pydantic_model_over_images(client):
    schema = Scene.model_json_schema()
    for i in range(30):
        done = client.chat.completions.parse(model="tiny", messages=_image_message(i, "Read the scene."),
                                             response_format=Scene, max_tokens=60, temperature=0.8, seed=i)
        choice = done.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, Scene)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_vllm_guided_extras_streamed_and_not(client):
    for extra, kind in [({"guided_choice": CHOICES}, "choice"), ({"guided_regex": REGEX}, "regex"),
                        ({"guided_json": SCHEMA}, "json"), ({"guided_grammar": GBNF}, "gbnf"),
                        ({"structured_outputs": {"regex": REGEX}}, "regex")]:
        whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=80, extra_body=extra, temperature=0)
        _shapes([whole.choices[0].message.content], kind)
        parts = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=80, extra_body=extra, stream=True,
                                               temperature=0)
        assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == \
            whole.choices[0].message.content
    done = client.completions.create(model="tiny", prompt="the answer:", max_tokens=80,
                                     extra_body={"guided_choice": CHOICES})
    _shapes([done.choices[0].text], "choice")
    obj = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "JSON please"}],
                                         max_tokens=120, response_format={"type": "json_object"})
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)


@pytest.mark.parametrize("extra,words", [
    ({"guided_regex": "(a|"}, "unclosed group"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "nope"),
    ({"response_format": {"type": "json_schema"}}, "schema"),
    ({"response_format": {"type": "structural_tag"}}, "not supported"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "at most one"),
    ({"structured_outputs": {"regexp": "a"}}, "regexp"),
    ({"guided_choice": []}, "guided_choice"),
])
def test_invalid_structured_output_is_a_400_and_the_server_stays_healthy(server, client, extra, words):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **extra}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert httpx.get(f"{server.url}/health").status_code == 200
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=40,
                                        extra_body={"guided_choice": CHOICES})
    assert ok.choices[0].message.content in CHOICES
