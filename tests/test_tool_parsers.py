"""Tool-call parsers (seer.serve.tool_parsers): extraction, streaming, grammars, request checks.

No model: grammars are driven by llguidance over a byte-level tokenizer built here, whose special
tokens are the parsers' markers.
"""

import json
import random

import pytest

from seer.serve.tool_parsers import (PARSERS, Delta, ExtractedCalls, HermesParser, check_tools,
                                     default_parser)

W = {"city": "Zürich", "unit": "°C", "note": "naïve ☃ 日本"}
NESTED = {"a": {"b": [1, 2, {"c": None, "d": [True, False]}], "e": "x}y{\"z"}, "f": -1.5e3}


def _c(name, args, key="arguments"):
    return json.dumps({"name": name, key: args}, ensure_ascii=False)


# (parser, text, content, [(name, arguments object)])
CASES = [
    ("hermes", "<tool_call>\n" + _c("get_weather", W) + "\n</tool_call>", None, [("get_weather", W)]),
    ("hermes", "Let me look.\n\n<tool_call>\n" + _c("a", NESTED) + "\n</tool_call>\n<tool_call>\n"
     + _c("b-2", {}) + "\n</tool_call>\n", "Let me look.", [("a", NESTED), ("b-2", {})]),
    ("hermes", "<tool_call>\n" + _c("a", {"x": 1}) + "</tool_call>Done.", "Done.", [("a", {"x": 1})]),
    ("hermes", "<tool_call>" + _c("a", {"x": 1}), None, [("a", {"x": 1})]),  # unclosed at the end
    ("hermes", "x <tool_call>\n{\"name\": \"a\", \"arguments\": \"{\\\"k\\\": 2}\"}\n</tool_call>", "x",
     [("a", {"k": 2})]),  # arguments given as a JSON string
    ("llama3_json", _c("get_weather", W, "parameters"), None, [("get_weather", W)]),
    ("llama3_json", "<|python_tag|>" + _c("a", NESTED, "parameters") + "; " + _c("b", {}, "parameters"),
     None, [("a", NESTED), ("b", {})]),
    ("llama3_json", "Calling.\n" + _c("a", {"q": "日本"}, "parameters") + ";\n" + _c("b", {"n": 2}, "parameters"),
     "Calling.", [("a", {"q": "日本"}), ("b", {"n": 2})]),
    ("mistral", "[TOOL_CALLS] [" + _c("a", W) + ", " + _c("b", NESTED) + "]", None, [("a", W), ("b", NESTED)]),
    ("mistral", "Sure![TOOL_CALLS][" + _c("a", {}) + "]", "Sure!", [("a", {})]),
    ("internlm", "I will search.<|action_start|><|plugin|>\n" + _c("search", W, "parameters") + "<|action_end|>\n",
     "I will search.", [("search", W)]),
    ("internlm", "<|action_start|><|plugin|>\n" + _c("a", NESTED, "parameters") + "<|action_end|>"
     "<|action_start|><|plugin|>\n" + _c("b", {}, "parameters") + "<|action_end|>", None, [("a", NESTED), ("b", {})]),
    ("json", _c("get_weather", W), None, [("get_weather", W)]),
    ("json", "Two calls:\n" + _c("a", NESTED) + "\n" + _c("b", {"s": "{"}) + "\n", "Two calls:",
     [("a", NESTED), ("b", {"s": "{"})]),
    ("json", _c("a", {"x": 1}) + " trailing", "trailing", [("a", {"x": 1})]),
    # a malformed call between good ones stays content; the whitespace around calls is dropped
    ("hermes", "<tool_call>\n" + _c("a", {}) + "\n</tool_call>\n<tool_call>\nnot json\n</tool_call>\n"
     "<tool_call>\n" + _c("b", {"y": [1]}) + "\n</tool_call>", "<tool_call>\nnot json\n</tool_call>",
     [("a", {}), ("b", {"y": [1]})]),
    ("json", "Hmm\n{\"x\": 1}\n" + _c("a", {}) + "\nbye  ", "Hmm\n{\"x\": 1}bye  ", [("a", {})]),
]

# text with no call, or a malformed one: all of it is content
PLAIN = [
    ("hermes", "No tools needed. <tool_ call> <tool_call"),
    ("hermes", "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}\n</tool_call>"),  # missing brace
    ("hermes", "<tool_call>\n{\"arguments\": {}}\n</tool_call> rest"),  # no name
    ("hermes", "  \n"),
    ("llama3_json", "{\"city\": \"Paris\"}\nplain {\"name\": \"a\", \"parameters\": {}}"),
    ("llama3_json", "<|python_tag|>brave_search.call(query=\"x\")"),
    ("llama3_json", "{\"name\": \"a\", \"parameters\": {\"x\": 1}"),  # never closed
    ("mistral", "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {}},]"),
    ("mistral", "[TOOL_CALLS] nothing"),
    ("internlm", "<|action_start|><|interpreter|>\nprint(1)<|action_end|>"),
    ("internlm", "<|action_start|><|plugin|>\n{\"name\": 1, \"parameters\": {}}<|action_end|>"),
    ("json", "{\"name\": \"Bob\", \"age\": 3}\n{\"name\": \"a\", \"arguments\": [1]}"),
    ("json", ""),
    ("json", "{\"name\": \"a\", \"arguments\": {\"x\": NaN}}"),  # not JSON
    ("json", "{\"name\": \"\", \"arguments\": {}}"),  # empty name
    ("hermes", "<tool_call>" + "[" * 3000 + "]" * 3000 + "</tool_call>"),  # too deep for json.loads
]


def _splits(text, seed):
    if seed == "whole":
        return [text]
    if seed == "chars":
        return list(text)
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 12)
        out.append(text[i:i + n])
        i += n
    return out


def _stream(parser, chunks):
    s, deltas = parser.streamer(), []
    for chunk in chunks:
        deltas += s.feed(chunk)
    deltas += s.finish()
    content = "".join(d.content for d in deltas if d.content is not None)
    calls = {}
    for d in deltas:
        if d.tool_call is None:
            continue
        assert d.content is None
        tc = d.tool_call
        if "id" in tc:
            assert tc["index"] == len(calls) and tc["type"] == "function" and tc["id"].startswith("call_")
            assert tc["function"]["arguments"] == ""
            calls[tc["index"]] = [tc["function"]["name"], ""]
        else:
            assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
            calls[tc["index"]][1] += tc["function"]["arguments"]
    return content, [tuple(calls[i]) for i in range(len(calls))]


@pytest.mark.parametrize("name,text,content,calls", CASES)
def test_extract(name, text, content, calls):
    got = PARSERS[name]().extract(text)
    assert isinstance(got, ExtractedCalls)
    assert got.content == content
    assert [(c.name, json.loads(c.arguments)) for c in got.calls] == calls
    for c in got.calls:
        assert c.arguments == json.dumps(json.loads(c.arguments), ensure_ascii=False)
        assert c.id.startswith("call_") and int(c.id[5:], 16) >= 0 and c.type == "function"
        assert c.to_openai()["function"] == {"name": c.name, "arguments": c.arguments}
    assert len({c.id for c in got.calls}) == len(got.calls)


@pytest.mark.parametrize("name,text", PLAIN)
def test_no_call_is_content(name, text):
    got = PARSERS[name]().extract(text)
    assert got.calls == [] and got.content == text


@pytest.mark.parametrize("split", ["whole", "chars", 1, 2, 3, 4, 5])
@pytest.mark.parametrize("name,text", [(c[0], c[1]) for c in CASES] + PLAIN)
def test_stream_matches_extract(name, text, split):
    parser = PARSERS[name]()
    want = parser.extract(text)
    content, calls = _stream(parser, _splits(text, split))
    assert content == (want.content or "")
    assert [n for n, _ in calls] == [c.name for c in want.calls]
    assert [a for _, a in calls] == [c.arguments for c in want.calls]  # exact strings
    assert [json.loads(a) for _, a in calls] == [json.loads(c.arguments) for c in want.calls]


def test_partial_marker_is_held_back():
    s = HermesParser().streamer()
    assert s.feed("Hi <tool_") == [Delta(content="Hi")]
    assert s.feed("cal") == []
    assert s.feed("x") == [Delta(content=" <tool_calx")]
    assert s.feed(" <tool_call>\n{\"name\": \"f\", ") == []  # held: the call is not complete
    out = s.feed("\"arguments\": {}}\n</tool_call>")
    assert [d.tool_call["function"] for d in out] == [{"name": "f", "arguments": ""}, {"arguments": "{}"}]
    assert s.finish() == []


def test_trailing_text_without_call_is_released_at_finish():
    s = PARSERS["internlm"]().streamer()
    assert s.feed("ok <|action_st") == [Delta(content="ok")]
    assert s.finish() == [Delta(content=" <|action_st")]


def test_tool_names_filter():
    text = "<tool_call>\n" + _c("a", {}) + "\n</tool_call>\n<tool_call>\n" + _c("zz", {}) + "\n</tool_call>"
    got = HermesParser(tool_names=["a"]).extract(text)
    assert [c.name for c in got.calls] == ["a"]
    assert got.content == "<tool_call>\n" + _c("zz", {}) + "\n</tool_call>"


def test_long_call_streams_in_linear_time():
    args = {"k%d" % i: "v\\\"{[" * 3 for i in range(3000)}
    text = "<|python_tag|>" + _c("f", args, "parameters")
    content, calls = _stream(PARSERS["llama3_json"](), _splits(text, 7))
    assert content == "" and json.loads(calls[0][1]) == args


@pytest.mark.parametrize("template,model_type,want", [
    ("{% if tools %}<tool_call>\n{{ tool_call | tojson }}\n</tool_call>{% endif %}", None, "hermes"),
    ("{{- '<|python_tag|>' }}", "llama", "llama3_json"),
    ("{%- if message.role == 'ipython' %}", None, "llama3_json"),
    ("{{ '[TOOL_CALLS] [' }}", None, "mistral"),
    ("<|action_start|><|plugin|>", None, "internlm"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}", None, "json"),
    (None, "qwen2_vl", "hermes"),
    (None, "internlm2", "internlm"),
    (None, "llava", "json"),
    (None, None, "json"),
])
def test_default_parser(template, model_type, want):
    assert default_parser(template, model_type) == want
    assert want in PARSERS


def _tool(name, params="absent", **fn):
    f = {"name": name, **fn}
    if params != "absent":
        f["parameters"] = params
    return {"type": "function", "function": f}


GOOD_TOOLS = [_tool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}, description="Weather"), _tool("noop-2")]


@pytest.mark.parametrize("tools,choice", [
    (None, None), (None, "none"), (GOOD_TOOLS, None), (GOOD_TOOLS, "auto"), (GOOD_TOOLS, "required"),
    (GOOD_TOOLS, "none"), (GOOD_TOOLS, {"type": "function", "function": {"name": "noop-2"}}),
    ([_tool("x" * 64, {})], None), ([_tool("t%d" % i) for i in range(128)], "required"),
])
def test_check_tools_accepts(tools, choice):
    check_tools(tools, choice)


@pytest.mark.parametrize("tools,choice,match", [
    (None, "auto", "needs 'tools'"),
    (None, {"type": "function", "function": {"name": "a"}}, "needs 'tools'"),
    ({"type": "function"}, None, "must be a list"),
    ([], None, "1 to 128"),
    ([_tool("t%d" % i) for i in range(129)], None, "1 to 128"),
    (["get_weather"], None, r"tools\[0\] must be"),
    ([{"type": "code", "function": {"name": "a"}}], None, r"tools\[0\] must be"),
    ([{"type": "function", "name": "a"}], None, r"tools\[0\] must be"),
    ([_tool("bad name")], None, r"tools\[0\].function.name must be"),
    ([_tool("x" * 65)], None, "1 to 64"),
    ([_tool("")], None, "1 to 64"),
    ([_tool(None)], None, "1 to 64"),
    ([_tool("a"), _tool("a")], None, r"tools\[1\].function.name 'a' repeats"),
    ([_tool("a", ["x"])], None, "parameters must be a JSON schema of an object"),
    ([_tool("a", {"type": "string"})], None, "parameters must be a JSON schema of an object"),
    ([_tool("a", description=3)], None, "description must be a string"),
    (GOOD_TOOLS, "sometimes", "tool_choice must be 'none', 'auto', 'required'"),
    (GOOD_TOOLS, {"type": "function", "function": {"name": "nope"}}, "not among the tools"),
    (GOOD_TOOLS, {"type": "function", "name": "get_weather"}, "tool_choice must be"),
])
def test_check_tools_rejects(tools, choice, match):
    with pytest.raises(ValueError, match=match):
        check_tools(tools, choice)


# ---- grammars ----------------------------------------------------------------------------------

llguidance = pytest.importorskip("llguidance")

MARKERS = ["<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "<|action_start|>", "<|plugin|>",
           "<|action_end|>"]

TOOLS = [
    _tool("get_weather", {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"], "additionalProperties": False}),
    _tool("noargs"),
    _tool("empty_params", {}),
    _tool("nested", {"type": "object", "$defs": {"pt": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["x"], "additionalProperties": False}},
        "properties": {"pts": {"type": "array", "items": {"$ref": "#/$defs/pt"}, "maxItems": 3},
                       "flag": {"type": "boolean"}},
        "required": ["pts", "flag"], "additionalProperties": False}),
]


_TOKS = {}


def _tok(markers):
    """A byte-level tokenizer (every byte one token) plus ``<eos>``; ``markers``: "special" adds the
    parsers' markers as special tokens, "added" as plain added tokens (as Qwen2.5's ``<tool_call>``),
    "none" leaves them to be spelled in bytes."""
    if markers not in _TOKS:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
        vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
        t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        t.decoder = decoders.ByteLevel()
        t.add_special_tokens([AddedToken("<eos>", special=True)])
        if markers != "none":
            t.add_tokens([AddedToken(m, special=markers == "special") for m in MARKERS])
        _TOKS[markers] = t, llguidance.LLTokenizer(t.to_str(), eos_token=t.token_to_id("<eos>"))
    return _TOKS[markers]


def _generate(tok, grammar, seed, max_steps=4000):
    """Drive a matcher with random allowed tokens (biased towards closing strings and containers)."""
    hf, llt = tok
    m = llguidance.LLMatcher(llt, grammar)
    assert not m.is_error(), m.get_error()
    rng, out = random.Random(seed), []
    closers = {hf.token_to_id(c) for c in '"}]'}
    for _ in range(max_steps):
        if m.is_accepting() and rng.random() < 0.6:
            return hf.decode(out, skip_special_tokens=False)
        ff = m.compute_ff_tokens()
        if ff:
            assert m.consume_tokens(ff), m.get_error()
            out += ff
            continue
        bias = m.compute_logit_bias()
        allowed = [i for i, b in enumerate(bias) if b and i != llt.eos_token]
        if not allowed:
            assert m.is_accepting()
            return hf.decode(out, skip_special_tokens=False)
        pref = [i for i in allowed if i in closers]
        t = rng.choice(pref if pref and rng.random() < 0.7 else allowed)
        assert m.consume_token(t), m.get_error()
        out.append(t)
    raise AssertionError("no accepting state reached: " + hf.decode(out, skip_special_tokens=False))


def _valid(args, tool):
    schema = tool["function"].get("parameters") or {"type": "object"}
    try:
        import jsonschema
    except ImportError:
        assert isinstance(args, dict) and set(schema.get("required", [])) <= set(args)
    else:
        jsonschema.validate(args, schema)


@pytest.mark.parametrize("markers", ["special", "added", "none"])
@pytest.mark.parametrize("name", sorted(PARSERS))
def test_grammar_output_parses_back(name, markers):
    tok = _tok(markers)
    hf, llt = tok
    parser = PARSERS[name]()
    ids = parser.special_tokens(hf.get_added_tokens_decoder() and {
        t.content: i for i, t in hf.get_added_tokens_decoder().items()})
    assert set(ids) == (set(parser.tokens) if markers != "none" else set())
    by_name = {t["function"]["name"]: t for t in TOOLS}
    for choice in ["required"] + list(by_name):
        lark = parser.grammar(TOOLS, choice, special_tokens=ids)
        g = llguidance.LLMatcher.grammar_from_lark(lark)
        assert llguidance.LLMatcher.validate_grammar(g, llt) == "", lark
        assert llguidance.LLMatcher.validate_grammar(g) == "", lark
        seen = set()
        for seed in range(6):
            text = _generate(tok, g, seed)
            got = parser.extract(text)
            assert got.content is None and got.calls, (lark, text)
            if choice != "required":
                assert [c.name for c in got.calls] == [choice], text
            for c in got.calls:
                _valid(json.loads(c.arguments), by_name[c.name])
                seen.add(c.name)
            content, calls = _stream(parser, _splits(text, seed))
            assert content == "" and [n for n, _ in calls] == [c.name for c in got.calls]
            assert [a for _, a in calls] == [c.arguments for c in got.calls]
        if choice == "required":
            assert len(seen) > 1  # the walk reaches more than one tool


def test_grammar_dict_choice_and_unknown_name():
    p = PARSERS["hermes"]()
    lark = p.grammar(TOOLS, {"type": "function", "function": {"name": "noargs"}})
    assert '"{\\"name\\": \\"noargs\\"' in lark and "get_weather" not in lark
    with pytest.raises(ValueError, match="not among the tools"):
        p.grammar(TOOLS, "missing")


def test_grammar_bad_schema_is_reported_by_llguidance():
    lark = PARSERS["json"]().grammar([_tool("a", {"type": "object", "properties": {"x": {"type": "bogus"}}})],
                                     "required")
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark)) != ""
