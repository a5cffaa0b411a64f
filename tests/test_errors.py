"""Bad input gets a clear error and nothing else breaks.

Model folders that cannot be served fail ``pipeline(...)`` with a ``ValueError`` saying why.
A bad prompt alone raises ``ValueError`` with a useful message; in a batch only that prompt
comes back with ``finish_reason="error"`` (message in ``.error`` and ``.text``) and the others
complete exactly as they would alone. Invalid configs raise ``ValueError`` naming the field.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time

import pytest

import tiny_models as tm
from http_images import ImageServer, closed_port_url, png_bytes
from seer import (ChatTemplateConfig, EngineConfig, GenerationConfig, Response, SamplingParams, VisionConfig,
                  pipeline)
from seer.vl.constants import IMAGE_FETCH_TIMEOUT_ENV, IMAGE_TOKEN

SESSION_LEN = 64  # small, so that a few images or a paragraph overflow it
GEN = GenerationConfig(max_new_tokens=8, ignore_eos=True)
TIMEOUT = 0.5
SLOW = 3.0  # seconds the slow route sleeps: far over TIMEOUT


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(tiny_llava):
    p = pipeline(tiny_llava, backend_config=EngineConfig(session_len=SESSION_LEN))
    yield p
    p.close()


@pytest.fixture(scope="module")
def img():
    return tm.make_image(3)


@pytest.fixture(scope="module")
def server(img):
    with ImageServer() as srv:
        srv.add("/ok.png", png_bytes(img))
        srv.add("/slow.png", png_bytes(img), delay=SLOW)
        srv.add("/page.html", b"<html>not an image</html>", ctype="text/html")
        yield srv


@pytest.fixture(scope="module")
def good(pipe, img):
    """Two good prompts and what each gives alone (computed before any error test runs)."""
    prompts = [("describe", img), "Shanghai is"]
    return prompts, [pipe(p, gen_config=GEN) for p in prompts]


def _copy_model(src: str, dst, keep=lambda name: True) -> str:
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if keep(name):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    return str(dst)


def _write_config(folder, config) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(config if isinstance(config, str) else json.dumps(config))
    return str(folder)


# ---- model folders --------------------------------------------------------------------------

def test_missing_model_folder(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(ValueError) as e:
        pipeline(missing)
    assert missing in str(e.value) and "folder" in str(e.value)


def test_model_path_is_a_file(tiny_llama):
    path = os.path.join(tiny_llama, "config.json")
    with pytest.raises(ValueError, match="not a folder"):
        pipeline(path)


def test_folder_without_config_json(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        pipeline(str(tmp_path))


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    folder = _write_config(tmp_path / "foo", {"architectures": ["FooForCausalLM"], "model_type": "foo"})
    with pytest.raises(ValueError) as e:
        pipeline(folder)
    msg = str(e.value)
    assert "FooForCausalLM" in msg and "not supported" in msg
    for arch in ("LlamaForCausalLM", "Qwen2ForCausalLM", "InternLM2ForCausalLM", "LlavaForConditionalGeneration"):
        assert arch in msg


def test_config_without_architectures_lists_the_supported_ones(tmp_path):
    folder = _write_config(tmp_path / "noarch", {"model_type": "llama"})
    with pytest.raises(ValueError) as e:
        pipeline(folder)
    assert "architectures" in str(e.value) and "LlamaForCausalLM" in str(e.value)


def test_config_json_but_no_weights(tiny_llama, tmp_path):
    folder = _copy_model(tiny_llama, tmp_path / "noweights", keep=lambda n: not n.endswith(".safetensors"))
    assert os.path.isfile(os.path.join(folder, "config.json"))
    with pytest.raises(ValueError) as e:
        pipeline(folder)
    msg = str(e.value)
    assert "no weights" in msg and "safetensors" in msg and folder in msg


def test_config_json_only_no_tokenizer(tiny_llama, tmp_path):
    folder = _copy_model(tiny_llama, tmp_path / "onlycfg", keep=lambda n: n == "config.json")
    with pytest.raises(ValueError, match="tokenizer"):
        pipeline(folder)


def test_corrupt_config_json_names_the_file(tmp_path):
    folder = _write_config(tmp_path / "badjson", "{not json")
    with pytest.raises(ValueError, match="config.json"):
        pipeline(folder)


def test_truncated_weights_file(tiny_llama, tmp_path):
    folder = _copy_model(tiny_llama, tmp_path / "trunc")
    (weights,) = glob.glob(os.path.join(folder, "*.safetensors"))
    with open(weights, "rb") as f:
        data = f.read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="safetensors"):
        pipeline(folder)


def test_sharded_checkpoint_missing_a_shard_names_it(tiny_llama, tmp_path):
    """A sharded checkpoint (``model.safetensors.index.json``) split in two, one shard removed."""
    from safetensors.torch import load_file, save_file

    folder = _copy_model(tiny_llama, tmp_path / "sharded", keep=lambda n: not n.endswith(".safetensors"))
    tensors = load_file(os.path.join(tiny_llama, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, os.path.join(folder, file))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": {n: file for file, part in shards.items() for n in part}}, f)
    with pipeline(folder) as pipe:  # whole: loads, and answers as the unsharded folder does
        sharded = pipe("hello", gen_config=GEN).token_ids
    with pipeline(tiny_llama) as pipe:
        assert pipe("hello", gen_config=GEN).token_ids == sharded
    os.remove(os.path.join(folder, "model-00002-of-00002.safetensors"))
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors"):
        pipeline(folder)


def test_vlm_image_processor_settings_in_either_file_and_neither_names_both(tiny_llava, tmp_path):
    """tiny_llava ships both layouts; each alone loads and answers alike; neither is a ValueError."""
    image = tm.make_image(3)
    with pipeline(tiny_llava) as pipe:
        want = pipe(("describe", image), gen_config=GEN).token_ids
    for only in ("preprocessor_config.json", "processor_config.json"):
        other = ({"preprocessor_config.json", "processor_config.json"} - {only}).pop()
        folder = _copy_model(tiny_llava, tmp_path / only, keep=lambda n, other=other: n != other)
        with pipeline(folder) as pipe:
            assert pipe(("describe", image), gen_config=GEN).token_ids == want, only
    folder = _copy_model(tiny_llava, tmp_path / "neither",
                         keep=lambda n: n not in ("preprocessor_config.json", "processor_config.json"))
    with pytest.raises(ValueError, match=r"neither preprocessor_config\.json nor .*processor_config\.json"):
        pipeline(folder)


def test_unknown_chat_template_name_lists_the_known_ones(tiny_llama):
    with pytest.raises(ValueError) as e:
        pipeline(tiny_llama, chat_template_config=ChatTemplateConfig(model_name="no-such-template"))
    msg = str(e.value)
    assert "no-such-template" in msg
    for name in ("vicuna", "llava-v1", "chatml", "qwen", "internlm2", "llama3", "mistral", "base"):
        assert repr(name) in msg


# ---- configs --------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("max_new_tokens", 0), ("max_new_tokens", 2.5), ("min_new_tokens", -1), ("temperature", -0.1),
    ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("top_k", 2.0), ("min_p", 1.5), ("min_p", -0.1),
    ("repetition_penalty", 0.0), ("presence_penalty", 3.0), ("frequency_penalty", -3.0),
    ("logprobs", -1), ("logprobs", 1000), ("output_logits", "prompt"), ("stop_words", [""]),
    ("stop_words", [3]), ("stop_token_ids", ["</s>"]), ("n", 0), ("n", 129),
    # values that once reached the sampler and failed a whole batch
    ("temperature", float("inf")), ("temperature", float("nan")), ("temperature", 1e9),
    ("repetition_penalty", 5e-324), ("repetition_penalty", float("inf")), ("top_p", float("nan")),
    ("min_p", float("nan")), ("presence_penalty", float("nan")), ("random_seed", 2**64),
    ("random_seed", -2**63 - 1), ("random_seed", 1.5), ("stop_token_ids", [-1]), ("stop_token_ids", [True]),
    ("stop_words", ["x" * 1025]), ("temperature", True),
])
def test_invalid_generation_config(field, value):
    with pytest.raises(ValueError) as e:
        GenerationConfig(**{field: value})
    assert field in str(e.value) and repr(value)[:40] in str(e.value)


def test_long_stop_lists_are_refused_and_named_briefly():
    with pytest.raises(ValueError) as e:
        GenerationConfig(stop_words=[f"w{i}" for i in range(100_000)])
    assert "at most 64" in str(e.value) and "(100000 items)" in str(e.value) and len(str(e.value)) < 400
    with pytest.raises(ValueError, match="at most 256"):
        GenerationConfig(stop_token_ids=list(range(257)))


def test_a_lone_surrogate_is_a_value_error_and_fails_only_its_prompt(text_pipe, tiny_llama):
    from seer import LLM

    with pytest.raises(ValueError, match="not valid Unicode"):
        text_pipe("bad \ud800 text", gen_config=GEN)
    out = text_pipe(["fine", [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}], "also fine"],
                    gen_config=GEN)
    assert [r.finish_reason for r in out] == ["length", "error", "length"] and "Unicode" in out[1].error
    llm = LLM(tiny_llama)
    try:
        with pytest.raises(ValueError, match="not valid Unicode"):
            llm.generate({"prompt": "x\ud800"})
    finally:
        llm.close()


def test_a_subnormal_temperature_is_greedy(text_pipe):
    gen = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    tiny = gen.replace(do_sample=True, temperature=1e-45, random_seed=3)
    assert tiny.greedy and text_pipe("hello", gen_config=tiny).token_ids == text_pipe("hello", gen_config=gen).token_ids


@pytest.mark.parametrize("field,value", [
    ("session_len", 8), ("max_batch_size", 0), ("cache_max_entry_count", 0.0), ("cache_max_entry_count", 1.5),
    ("block_size", 12), ("max_prefill_token_num", 0), ("dtype", "int8"), ("num_gpu_blocks", 0),
])
def test_invalid_engine_config(field, value):
    with pytest.raises(ValueError) as e:
        EngineConfig(**{field: value})
    assert field in str(e.value)


def test_tensor_parallel_needs_a_positive_integer():
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="tp"):
            EngineConfig(tp=bad)
    assert EngineConfig(tp=2).tp == 2  # tests/test_tensor_parallel.py runs it


@pytest.mark.parametrize("field,value", [("max_batch_size", 0), ("feature_cache_size", -1)])
def test_invalid_vision_config(field, value):
    with pytest.raises(ValueError, match=field):
        VisionConfig(**{field: value})


@pytest.mark.parametrize("cls", [GenerationConfig, EngineConfig, VisionConfig, ChatTemplateConfig, SamplingParams])
def test_an_unknown_config_field_is_a_value_error_listing_the_fields(cls):
    """A misspelt field names itself and the accepted ones; still a TypeError as a dataclass's is."""
    with pytest.raises(ValueError, match=r"no field 'max_new_token'; its fields are: .*\b(n|model_name|max_batch_size|session_len)\b") as e:
        cls(max_new_token=5)
    assert isinstance(e.value, TypeError)


def test_unknown_engine_option_in_a_dict(tiny_llama):
    with pytest.raises(ValueError, match="unknown engine option"):
        pipeline(tiny_llama, backend_config={"session_len": 128, "no_such_option": 1})


def test_wrong_number_of_gen_configs(pipe, img):
    with pytest.raises(ValueError, match="one per prompt"):
        pipe([("describe", img), "hi"], gen_config=[GEN])


# ---- bad prompts: the table ------------------------------------------------------------------
# Each case: (id, factory(img, server) -> prompt, words the message must contain).

def _truncated_png(img) -> bytes:
    data = png_bytes(img)
    return data[: len(data) // 2]


BAD_PROMPTS = [
    ("corrupt_bytes", lambda img, srv, tmp: ("describe", b"definitely not an image"), ["image", "not a recognised"]),
    ("png_header_garbage", lambda img, srv, tmp: ("describe", b"\x89PNG\r\n\x1a\n garbage"),
     ["image", "corrupt or truncated"]),
    ("truncated_png", lambda img, srv, tmp: ("describe", _truncated_png(img)), ["image", "corrupt or truncated"]),
    ("corrupt_file", lambda img, srv, tmp: ("describe", _bad_file(tmp)), ["broken.png", "not a recognised"]),
    ("missing_file", lambda img, srv, tmp: ("describe", str(tmp / "nope.png")), ["nope.png", "does not exist"]),
    ("bad_base64", lambda img, srv, tmp: ("describe", "data:image/png;base64,@@@not-base64@@@"), ["base64"]),
    ("unreachable_url", lambda img, srv, tmp: ("describe", closed_port_url("/cat.png")), ["cat.png", "unreachable"]),
    ("http_404", lambda img, srv, tmp: ("describe", srv.url("/missing.png")), ["missing.png", "404"]),
    ("not_an_image_url", lambda img, srv, tmp: ("describe", srv.url("/page.html")), ["page.html", "not a recognised"]),
    ("fetch_timeout", lambda img, srv, tmp: ("describe", srv.url("/slow.png")),
     ["slow.png", "timed out", IMAGE_FETCH_TIMEOUT_ENV]),
    ("openai_unreachable", lambda img, srv, tmp: [{"role": "user", "content": [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": closed_port_url("/dog.png")}}]}], ["dog.png", "unreachable"]),
    ("too_long_text", lambda img, srv, tmp: "word " * 200, ["session_len", str(SESSION_LEN), "tokens"]),
    ("too_long_images", lambda img, srv, tmp: ("describe", [img] * 4), ["session_len", str(SESSION_LEN)]),
    ("image_token_count", lambda img, srv, tmp: (f"a{IMAGE_TOKEN}b{IMAGE_TOKEN}", img), [IMAGE_TOKEN, "2", "1"]),
    ("unknown_part_type", lambda img, srv, tmp: [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}],
     ["audio", "accepted parts"]),
    ("image_in_assistant_turn", lambda img, srv, tmp: [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "image", "image": img}]},
        {"role": "user", "content": "and?"}], ["user messages", "assistant"]),
    ("unknown_role", lambda img, srv, tmp: [{"role": "robot", "content": "hi"}], ["robot", "accepted roles"]),
]


def _bad_file(tmp) -> str:
    path = tmp / "broken.png"
    path.write_bytes(b"this is not a png at all")
    return str(path)


@pytest.fixture
def fast_timeout(monkeypatch):
    monkeypatch.setenv(IMAGE_FETCH_TIMEOUT_ENV, str(TIMEOUT))


@pytest.mark.parametrize("case", BAD_PROMPTS, ids=[c[0] for c in BAD_PROMPTS])
def test_bad_prompt_alone_raises_value_error(pipe, img, server, tmp_path, fast_timeout, case):
    _, make, words = case
    prompt = make(img, server, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(ValueError) as e:
        pipe(prompt, gen_config=GEN)
    assert time.monotonic() - t0 < SLOW - 0.5, "the fetch timeout was not applied"
    msg = str(e.value)
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"


@pytest.mark.parametrize("case", BAD_PROMPTS, ids=[c[0] for c in BAD_PROMPTS])
def test_bad_prompt_in_a_batch_fails_alone(pipe, img, server, tmp_path, fast_timeout, good, case):
    _, make, words = case
    (good0, good1), (alone0, alone1) = good
    rs = pipe([good0, make(img, server, tmp_path), good1], gen_config=GEN)
    assert len(rs) == 3 and [r.index for r in rs] == [0, 1, 2]
    bad = rs[1]
    assert isinstance(bad, Response)
    assert bad.finish_reason == "error"
    assert bad.error and bad.text == bad.error
    for word in words:
        assert word in bad.error
    assert bad.token_ids == [] and bad.generate_token_len == 0
    for r, alone in zip((rs[0], rs[2]), (alone0, alone1)):
        assert r.finish_reason == "length" and r.error is None
        assert r.token_ids == alone.token_ids and r.text == alone.text
        assert r.input_token_len == alone.input_token_len


def test_several_bad_prompts_in_one_batch(pipe, img, server, tmp_path, good):
    (good0, good1), (alone0, alone1) = good
    rs = pipe([("a", b"garbage"), good0, ("b", closed_port_url()), good1, "word " * 200],
              gen_config=GEN)
    assert [r.finish_reason for r in rs] == ["error", "length", "error", "length", "error"]
    assert rs[1].token_ids == alone0.token_ids and rs[3].token_ids == alone1.token_ids


def test_bad_prompt_in_stream_infer(pipe, img, good):
    (good0, good1), (alone0, alone1) = good
    deltas: dict[int, list[Response]] = {}
    for d in pipe.stream_infer([good0, ("describe", b"garbage"), good1], gen_config=GEN):
        deltas.setdefault(d.index, []).append(d)
    assert sorted(deltas) == [0, 1, 2]
    (err,) = deltas[1]
    assert err.finish_reason == "error" and "not a recognised" in err.error
    assert [t for d in deltas[0] for t in d.token_ids] == alone0.token_ids
    assert "".join(d.text for d in deltas[2]) == alone1.text
    with pytest.raises(ValueError, match="not a recognised"):
        list(pipe.stream_infer(("describe", b"garbage"), gen_config=GEN))


def test_bad_turn_in_chat_leaves_the_session_usable(pipe, img):
    sess = pipe.chat(("describe", img), gen_config=GEN)
    history = list(sess.history)
    with pytest.raises(ValueError, match="unreachable"):
        pipe.chat(("and this?", closed_port_url()), session=sess, gen_config=GEN)
    assert sess.history == history
    sess = pipe.chat("and now?", session=sess, gen_config=GEN)
    assert sess.response.finish_reason == "length" and sess.response.generate_token_len == GEN.max_new_tokens


@pytest.mark.parametrize("prompt", [123, {"role": "user", "content": "hi"}, ("a", "b", "c"), [], None],
                         ids=["int", "bare_dict", "3_tuple", "empty_list", "none"])
def test_unsupported_prompt_shape(pipe, prompt):
    with pytest.raises(ValueError, match="accepted"):
        pipe(prompt, gen_config=GEN)


def test_unsupported_shape_inside_a_batch_names_its_position(pipe):
    with pytest.raises(ValueError, match="#1"):
        pipe(["fine", 42], gen_config=GEN)


def test_image_for_a_text_only_model(text_pipe, img):
    with pytest.raises(ValueError, match="text-only"):
        text_pipe(("describe", img), gen_config=GEN)
    rs = text_pipe(["Shanghai is", ("describe", img)], gen_config=GEN)
    assert rs[0].finish_reason == "length" and rs[1].finish_reason == "error" and "text-only" in rs[1].error


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_invalid_fetch_timeout_setting(pipe, server, monkeypatch, value):
    monkeypatch.setenv(IMAGE_FETCH_TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=IMAGE_FETCH_TIMEOUT_ENV):
        pipe(("describe", server.url("/ok.png")), gen_config=GEN)


def test_fetch_timeout_is_read_at_fetch_time(pipe, img, server, monkeypatch):
    """The slow image loads when the timeout allows it (and equals the same image as PIL)."""
    monkeypatch.setenv(IMAGE_FETCH_TIMEOUT_ENV, str(SLOW + 5))
    rs = pipe([("describe", server.url("/slow.png")), ("describe", img)], gen_config=GEN)
    assert rs[0].finish_reason == "length" and rs[0].token_ids == rs[1].token_ids


def test_prompt_at_the_session_len_limit(pipe):
    """Just under session_len still runs (and stops at session_len); at the limit it fails."""
    ids_of = lambda text: len(pipe.prepare(text).token_ids)  # noqa: E731
    text = "word"
    while ids_of(text + " word") < SESSION_LEN - 1:
        text += " word"
    n = ids_of(text)
    assert n < SESSION_LEN
    r = pipe(text, gen_config=GenerationConfig(max_new_tokens=50, ignore_eos=True))
    assert r.finish_reason == "length" and r.input_token_len == n
    assert r.input_token_len + r.generate_token_len == SESSION_LEN
    with pytest.raises(ValueError, match="session_len"):
        pipe(text + " word word", gen_config=GEN)


def test_nothing_else_broke(pipe, good):
    """After every error above, the same pipeline still gives the same answers."""
    prompts, before = good
    for r, b in zip(pipe(prompts, gen_config=GEN), before):
        assert r.token_ids == b.token_ids and r.text == b.text
    assert pipe.engine.num_running == 0 and pipe.engine.num_waiting == 0
