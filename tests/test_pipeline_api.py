"""The offline pipeline as a user runs it (LMDeploy's ``pipeline`` shapes) on tiny random models.

Every input shape, streaming, multi-turn chat, logits/logprobs, sampling, stop conditions and
the pipeline's lifetime. Outputs are compared with each other (batch vs alone, stream vs
non-stream, URL vs PIL, ...) and, for a few prompts, with the transformers reference.

Greedy runs use ``ignore_eos=True`` and a fixed ``max_new_tokens`` so lengths are known.
Pipelines are module-scoped (one load per model); tests must not close them.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import shutil
import weakref

import pytest
import torch

import tiny_models as tm
from http_images import ImageServer, png_bytes
from seer import (ChatTemplateConfig, EngineConfig, GenerationConfig, Pipeline, PytorchEngineConfig, Response,
                  Session, TurbomindEngineConfig, VisionConfig, pipeline)
from seer.vl import load_image
from seer.vl.constants import IMAGE_TOKEN

N = 16  # max_new_tokens for the fixed-length greedy runs
GREEDY = GenerationConfig(max_new_tokens=N, ignore_eos=True)


def hot(seed: int, **kw) -> GenerationConfig:
    """A high-temperature, untruncated sampling config: outputs vary with the seed."""
    base = dict(max_new_tokens=N, ignore_eos=True, do_sample=True, temperature=1.5, top_k=0, top_p=1.0,
                random_seed=seed)
    base.update(kw)
    return GenerationConfig(**base)


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vl_pipe(tiny_llava):
    """The tiny LLaVA, loaded as the issue's example does."""
    pipe = pipeline(tiny_llava, backend_config=EngineConfig(session_len=8192),
                    vision_config=VisionConfig(max_batch_size=8))
    yield pipe
    pipe.close()


@pytest.fixture(scope="module")
def img1():
    return tm.make_image(1)


@pytest.fixture(scope="module")
def img2():
    return tm.make_image(2)


@pytest.fixture(scope="module")
def server(img1):
    with ImageServer() as srv:
        srv.add("/img1.png", png_bytes(img1))
        yield srv


def data_uri(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def prompt_ids(pipe: Pipeline, prompt) -> list[int]:
    """The prompt token ids the pipeline builds (internal hook, for placement checks)."""
    return list(pipe.prepare(prompt).token_ids)


def vocab_size(model_dir: str) -> int:
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    return (cfg.get("text_config") or cfg)["vocab_size"]


def same_output(a: Response, b: Response) -> None:
    assert a.token_ids == b.token_ids
    assert a.text == b.text
    assert a.input_token_len == b.input_token_len
    assert a.generate_token_len == b.generate_token_len
    assert a.finish_reason == b.finish_reason


# ---- names and configs ----------------------------------------------------------------------

def test_lmdeploy_names_are_importable():
    import seer

    assert TurbomindEngineConfig is EngineConfig and PytorchEngineConfig is EngineConfig
    for name in ("pipeline", "GenerationConfig", "EngineConfig", "TurbomindEngineConfig", "PytorchEngineConfig",
                 "VisionConfig", "ChatTemplateConfig", "Response"):
        assert hasattr(seer, name), name
    assert isinstance(IMAGE_TOKEN, str) and IMAGE_TOKEN == "<IMAGE_TOKEN>"  # LMDeploy's value


def test_greedy_is_the_default_and_its_spellings():
    assert GenerationConfig().do_sample is False and GenerationConfig().greedy
    assert GenerationConfig(do_sample=True, top_k=1).greedy
    assert GenerationConfig(do_sample=True, temperature=0).greedy
    assert not GenerationConfig(do_sample=True).greedy


def test_turbomind_engine_config_loads_a_pipeline(tiny_llama):
    with pipeline(tiny_llama, backend_config=TurbomindEngineConfig(session_len=4096)) as pipe:
        r = pipe("Shanghai is", gen_config=GREEDY)
    assert r.generate_token_len == N and r.finish_reason == "length"


# ---- input shapes ---------------------------------------------------------------------------

def test_single_image_prompt_matches_transformers(vl_pipe, tiny_llava, img1, tmp_path):
    path = tmp_path / "img1.png"
    img1.save(path)
    image = load_image(str(path))
    r = vl_pipe(("describe this image", image), gen_config=GREEDY)

    assert isinstance(r, Response)
    assert isinstance(r.text, str) and r.text
    assert r.finish_reason == "length" and r.error is None
    assert r.generate_token_len == N == len(r.token_ids)
    assert r.input_token_len > tm.IMAGE_TOKENS_PER_IMAGE
    assert r.logprobs is None and r.logits is None
    assert isinstance(r.session_id, int) and r.index == 0
    assert r.text == vl_pipe.tokenizer.decode(r.token_ids, skip_special_tokens=True)

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this image"}]}]
    ref_inputs = tm.hf_inputs(tiny_llava, messages, [image])
    assert r.input_token_len == ref_inputs["input_ids"].shape[1]
    assert r.token_ids == tm.hf_greedy(tiny_llava, ref_inputs, max_new_tokens=N, ignore_eos=True)


def test_image_sources_in_a_tuple_give_the_same_output(vl_pipe, img1, server, tmp_path):
    """A tuple's image may be a PIL image, a path, a data URI or a URL: same pixels, same tokens."""
    path = tmp_path / "img1.png"
    img1.save(path)
    sources = [img1, load_image(img1), str(path), path, data_uri(img1), server.url("/img1.png")]
    rs = vl_pipe([("describe this image", s) for s in sources], gen_config=GREEDY)
    assert len(rs) == len(sources)
    for r in rs[1:]:
        same_output(r, rs[0])


def test_two_images_have_twice_the_image_tokens(vl_pipe, img1, img2):
    # Leading space: BPE splits the text the same with or without images before it (see
    # test_image_token_places_the_image).
    text = " describe these images"
    r0 = vl_pipe(text, gen_config=GREEDY)
    r1 = vl_pipe((text, img1), gen_config=GREEDY)
    r2 = vl_pipe((text, [img1, img2]), gen_config=GREEDY)
    per_image = r1.input_token_len - r0.input_token_len
    assert per_image >= tm.IMAGE_TOKENS_PER_IMAGE
    assert r2.input_token_len - r0.input_token_len == 2 * per_image
    image_id = vl_pipe.tokenizer.convert_tokens_to_ids(tm.IMAGE_TOKEN)
    assert prompt_ids(vl_pipe, (text, [img1, img2])).count(image_id) == 2 * tm.IMAGE_TOKENS_PER_IMAGE
    # Both images are seen, in order: swapping them changes the answer.
    swapped = vl_pipe((text, [img2, img1]), gen_config=GREEDY)
    assert swapped.input_token_len == r2.input_token_len
    assert swapped.token_ids != r2.token_ids
    assert r2.token_ids != r1.token_ids


def test_batch_of_image_prompts_matches_each_alone_in_order(vl_pipe, img1, img2):
    prompts = [("describe", img1), ("what colour?", img2)]
    batch = vl_pipe(prompts, gen_config=GREEDY)
    assert isinstance(batch, list) and len(batch) == 2
    assert all(isinstance(r, Response) for r in batch)
    assert [r.index for r in batch] == [0, 1]
    alone = [vl_pipe(p, gen_config=GREEDY) for p in prompts]
    for b, a in zip(batch, alone):
        same_output(b, a)
    assert batch[0].token_ids != batch[1].token_ids
    reversed_batch = vl_pipe(prompts[::-1], gen_config=GREEDY)
    for b, a in zip(reversed_batch, alone[::-1]):
        same_output(b, a)


def test_mixed_shape_batch_matches_each_alone(vl_pipe, img1, img2):
    prompts = [
        "Shanghai is",
        ("describe", img1),
        ("compare these", [img1, img2]),
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(img2)}},
                                      {"type": "text", "text": "what colour?"}]}],
        (f"look{IMAGE_TOKEN} here", img2),
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}],
    ]
    batch = vl_pipe(prompts, gen_config=GREEDY)
    assert len(batch) == len(prompts)
    for i, (p, b) in enumerate(zip(prompts, batch)):
        assert b.index == i
        same_output(b, vl_pipe(p, gen_config=GREEDY))


def test_text_prompts_on_a_text_model(text_pipe, tiny_llama):
    prompts = ["Hi, please introduce yourself", "Shanghai is"]
    batch = text_pipe(prompts, gen_config=GREEDY)
    assert isinstance(batch, list) and len(batch) == 2
    for p, b in zip(prompts, batch):
        same_output(b, text_pipe(p, gen_config=GREEDY))
    ref = tm.hf_inputs(tiny_llama, [{"role": "user", "content": "Shanghai is"}])
    assert batch[1].input_token_len == ref["input_ids"].shape[1]
    assert batch[1].token_ids == tm.hf_greedy(tiny_llama, ref, max_new_tokens=N, ignore_eos=True)


def test_text_prompt_on_the_vlm(vl_pipe, img1):
    r = vl_pipe("Shanghai is", gen_config=GREEDY)
    assert r.generate_token_len == N
    assert r.input_token_len < vl_pipe(("Shanghai is", img1), gen_config=GREEDY).input_token_len


def test_per_prompt_gen_configs(vl_pipe, img1):
    gens = [GenerationConfig(max_new_tokens=5, ignore_eos=True), GenerationConfig(max_new_tokens=9, ignore_eos=True)]
    rs = vl_pipe([("describe", img1), "Shanghai is"], gen_config=gens)
    assert [r.generate_token_len for r in rs] == [5, 9]
    assert rs[0].token_ids == vl_pipe(("describe", img1), gen_config=GREEDY).token_ids[:5]


def test_large_batch_with_progress_bar_matches_each_alone(vl_pipe, img1, img2):
    """40 prompts (the progress bar turns on at 32), mixed shapes and lengths, stay in order."""
    prompts = [(f"describe {i}", [img1, img2][i % 2]) if i % 3 else f"Tell me about {i}" for i in range(40)]
    gens = [GenerationConfig(max_new_tokens=2 + i % 5, ignore_eos=True) for i in range(40)]
    batch = vl_pipe(prompts, gen_config=gens)
    assert [r.index for r in batch] == list(range(40))
    for p, g, r in zip(prompts, gens, batch):
        same_output(r, vl_pipe(p, gen_config=g))


def test_batch_infer_always_returns_a_list(vl_pipe, img1):
    rs = vl_pipe.batch_infer(("describe", img1), gen_config=GREEDY)
    assert isinstance(rs, list) and len(rs) == 1
    same_output(rs[0], vl_pipe(("describe", img1), gen_config=GREEDY))


def test_image_token_places_the_image(vl_pipe, img1):
    """IMAGE_TOKEN puts the image where it stands; without it the image leads the text.

    The text starts with a space so that BPE splits it the same way wherever the image goes
    (with "describe..." the two prompts differ by 2 tokens because " describe" is one BPE
    token and "\\ndescribe" two; that is tokenization, not placement).
    """
    text = " describe this image"
    inline = (f"{text}{IMAGE_TOKEN}", img1)
    first = (text, img1)
    ids_inline, ids_first = prompt_ids(vl_pipe, inline), prompt_ids(vl_pipe, first)
    image_id = vl_pipe.tokenizer.convert_tokens_to_ids(tm.IMAGE_TOKEN)
    assert ids_inline != ids_first
    assert len(ids_inline) == len(ids_first)
    assert ids_inline.count(image_id) == ids_first.count(image_id) == tm.IMAGE_TOKENS_PER_IMAGE
    assert ids_first.index(image_id) < ids_inline.index(image_id)  # image after the text
    rendered = vl_pipe.tokenizer.decode(ids_inline)
    assert rendered.index("describe this image") < rendered.index(tm.IMAGE_TOKEN)
    r_inline, r_first = vl_pipe(inline, gen_config=GREEDY), vl_pipe(first, gen_config=GREEDY)
    assert r_inline.input_token_len == r_first.input_token_len == len(ids_first)
    assert r_inline.token_ids != r_first.token_ids


def test_image_token_in_the_middle_and_twice(vl_pipe, img1, img2):
    r = vl_pipe((f"first{IMAGE_TOKEN}then{IMAGE_TOKEN}done", [img1, img2]), gen_config=GREEDY)
    assert r.generate_token_len == N
    text = vl_pipe.tokenizer.decode(prompt_ids(vl_pipe, (f"first{IMAGE_TOKEN}then{IMAGE_TOKEN}done", [img1, img2])))
    a, b = text.index("first"), text.index("then")
    assert a < text.index(tm.IMAGE_TOKEN) < b < text.rindex(tm.IMAGE_TOKEN) < text.index("done")


# ---- OpenAI-style messages ------------------------------------------------------------------

def _message(text: str, image_part: dict, image_first: bool = False) -> list[dict]:
    parts = [image_part, {"type": "text", "text": text}] if image_first else [{"type": "text", "text": text},
                                                                           image_part]
    return [{"role": "user", "content": parts}]


def test_openai_message_is_one_prompt(vl_pipe, img1):
    r = vl_pipe(_message("describe", {"type": "image_url", "image_url": {"url": data_uri(img1)}}),
                gen_config=GREEDY)
    assert isinstance(r, Response) and r.generate_token_len == N
    rs = vl_pipe([_message("describe", {"type": "image_url", "image_url": {"url": data_uri(img1)}})] * 2,
                 gen_config=GREEDY)
    assert isinstance(rs, list) and len(rs) == 2
    same_output(rs[0], r)
    same_output(rs[1], r)


def test_openai_data_uri_and_http_url_equal_the_pil_image(vl_pipe, img1, server):
    url = server.url("/img1.png")
    hits = len(server.hits)
    pil = vl_pipe(_message("describe", {"type": "image", "image": img1}), gen_config=GREEDY)
    variants = [
        {"type": "image_url", "image_url": {"url": data_uri(img1)}},
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "image_url", "image_url": url},  # bare-string form
        {"type": "image_data", "image_data": {"data": img1}},
    ]
    for part in variants:
        same_output(vl_pipe(_message("describe", part), gen_config=GREEDY), pil)
    assert server.hits[hits:] == ["/img1.png", "/img1.png"]
    # Content order is kept: text then image is the IMAGE_TOKEN-after-text prompt ...
    same_output(pil, vl_pipe((f"describe{IMAGE_TOKEN}", img1), gen_config=GREEDY))
    # ... and image then text is the default (image-first) tuple prompt.
    first = vl_pipe(_message("describe", {"type": "image_url", "image_url": {"url": url}}, image_first=True),
                    gen_config=GREEDY)
    same_output(first, vl_pipe(("describe", img1), gen_config=GREEDY))


def test_openai_multi_turn_messages_mixing_part_lists_and_strings(vl_pipe, img1, server):
    """Regression: a first message in part-list form made the pipeline skip normalising the
    rest (string contents crashed with TypeError, 'image' parts holding a URL were never loaded)."""
    def convo(image, first_text_as_parts=True):
        first = ([{"type": "image", "image": image}, {"type": "text", "text": "describe"}] if image is not None
                 else ([{"type": "text", "text": "describe"}] if first_text_as_parts else "describe"))
        return [{"role": "user", "content": first},
                {"role": "assistant", "content": "a red square"},
                {"role": "user", "content": "what colour?"}]

    pil = vl_pipe(convo(img1), gen_config=GREEDY)
    assert pil.generate_token_len == N
    same_output(vl_pipe(convo(data_uri(img1)), gen_config=GREEDY), pil)
    same_output(vl_pipe(convo(server.url("/img1.png")), gen_config=GREEDY), pil)
    same_output(vl_pipe(convo(None), gen_config=GREEDY), vl_pipe(convo(None, False), gen_config=GREEDY))


# ---- streaming ------------------------------------------------------------------------------

def _collect(stream) -> dict[int, list[Response]]:
    deltas: dict[int, list[Response]] = {}
    for item in stream:
        assert isinstance(item, Response)
        deltas.setdefault(item.index, []).append(item)
    return deltas


def test_stream_infer_deltas_add_up_to_the_full_response(vl_pipe, img1, img2):
    prompts = [("describe", img1), "Shanghai is", ("compare", [img1, img2])]
    gens = [GREEDY, GenerationConfig(max_new_tokens=7, ignore_eos=True), GREEDY]
    full = vl_pipe(prompts, gen_config=gens)
    deltas = _collect(vl_pipe.stream_infer(prompts, gen_config=gens))
    assert sorted(deltas) == [0, 1, 2]
    for i, r in enumerate(full):
        ds = deltas[i]
        assert len(ds) > 1, "streaming must deliver more than one delta"
        assert "".join(d.text for d in ds) == r.text
        assert [t for d in ds for t in d.token_ids] == r.token_ids
        assert ds[-1].finish_reason == r.finish_reason == "length"
        assert all(d.finish_reason is None for d in ds[:-1])
        assert ds[-1].generate_token_len == r.generate_token_len
        assert ds[-1].input_token_len == r.input_token_len


def test_stream_infer_single_prompt(vl_pipe, img1):
    full = vl_pipe(("describe", img1), gen_config=GREEDY)
    deltas = _collect(vl_pipe.stream_infer(("describe", img1), gen_config=GREEDY))
    assert list(deltas) == [0]
    assert "".join(d.text for d in deltas[0]) == full.text
    assert deltas[0][-1].finish_reason == "length"


def test_stream_infer_early_break_leaves_the_pipeline_usable(vl_pipe, img1):
    before = vl_pipe(("describe", img1), gen_config=GREEDY)
    stream = vl_pipe.stream_infer(["Shanghai is", ("describe", img1)],
                                  gen_config=GenerationConfig(max_new_tokens=200, ignore_eos=True))
    next(stream)
    stream.close()  # the caller stops reading: the rest is aborted
    same_output(vl_pipe(("describe", img1), gen_config=GREEDY), before)


# ---- multi-turn chat ------------------------------------------------------------------------

def test_chat_two_turns(vl_pipe, img1):
    sess = vl_pipe.chat(("describe this image", img1), gen_config=GREEDY)
    assert isinstance(sess, Session) and isinstance(sess.response, Response)
    first = sess.response
    assert first.generate_token_len == N and first.text
    assert first.session_id == sess.session_id
    same_output(first, vl_pipe(("describe this image", img1), gen_config=GREEDY))
    sid = sess.session_id

    sess2 = vl_pipe.chat("What is she doing?", session=sess, gen_config=GREEDY)
    second = sess2.response
    assert sess2.session_id == sid and second.session_id == sid
    assert second.input_token_len > first.input_token_len + first.generate_token_len  # holds turn 1 + answer
    # Turn 2's prompt is exactly: turn 1 (with its image), the first answer, the new question.
    history = [{"role": "user", "content": [{"type": "image", "image": img1},
                                            {"type": "text", "text": "describe this image"}]},
               {"role": "assistant", "content": first.text},
               {"role": "user", "content": "What is she doing?"}]
    same_output(second, vl_pipe(history, gen_config=GREEDY))


def test_new_chats_get_new_session_ids(vl_pipe):
    a = vl_pipe.chat("Hello", gen_config=GenerationConfig(max_new_tokens=2, ignore_eos=True))
    b = vl_pipe.chat("Hello", gen_config=GenerationConfig(max_new_tokens=2, ignore_eos=True))
    assert a.session_id != b.session_id
    assert a.response.token_ids == b.response.token_ids


# ---- logits and logprobs --------------------------------------------------------------------

def test_output_logits_rows_argmax_to_the_greedy_tokens(vl_pipe, tiny_llava, img1):
    greedy = vl_pipe(("describe", img1), gen_config=GREEDY)
    r = vl_pipe(("describe", img1), gen_config=GREEDY.replace(output_logits="generation"))
    assert r.token_ids == greedy.token_ids
    assert isinstance(r.logits, torch.Tensor)
    assert tuple(r.logits.shape) == (r.generate_token_len, vocab_size(tiny_llava))
    assert torch.isfinite(r.logits).all()
    assert r.logits.argmax(dim=-1).tolist() == r.token_ids


def test_output_logits_in_a_batch(vl_pipe, img1, img2):
    gen = GREEDY.replace(output_logits="generation")
    rs = vl_pipe([("describe", img1), ("what colour?", img2)], gen_config=gen)
    for r in rs:
        assert r.logits.shape[0] == N
        assert r.logits.argmax(dim=-1).tolist() == r.token_ids


def test_logprobs_top3_agree_with_the_logits(vl_pipe, img1):
    r = vl_pipe(("describe", img1), gen_config=GREEDY.replace(logprobs=3, output_logits="generation"))
    assert r.token_ids == vl_pipe(("describe", img1), gen_config=GREEDY).token_ids
    assert isinstance(r.logprobs, list) and len(r.logprobs) == r.generate_token_len
    for tok, lp, row in zip(r.token_ids, r.logprobs, r.logits):
        assert isinstance(lp, dict) and tok in lp
        ref = torch.log_softmax(row.float(), dim=-1)
        vals, ids = ref.topk(3)
        assert list(lp) == ids.tolist()  # greedy: the chosen token is the best; best first
        assert list(lp.values()) == sorted(lp.values(), reverse=True)
        for i, v in zip(ids.tolist(), vals.tolist()):
            assert lp[i] == pytest.approx(v, abs=1e-4)
        assert all(v <= 0 for v in lp.values())


def test_logprobs_with_sampling_contain_the_sampled_token(vl_pipe, img1):
    r = vl_pipe(("describe", img1), gen_config=hot(7, logprobs=2, output_logits="generation"))
    assert len(r.logprobs) == r.generate_token_len
    for tok, lp, row in zip(r.token_ids, r.logprobs, r.logits):
        ref = torch.log_softmax(row.float(), dim=-1)
        assert tok in lp and lp[tok] == pytest.approx(float(ref[tok]), abs=1e-4)
        for i in ref.topk(2).indices.tolist():
            assert i in lp
        assert len(lp) <= 3


# ---- sampling -------------------------------------------------------------------------------

def test_same_seed_same_output_different_seed_different_output(vl_pipe, img1):
    prompt = ("describe", img1)
    a = vl_pipe(prompt, gen_config=hot(1234))
    b = vl_pipe(prompt, gen_config=hot(1234))
    c = vl_pipe(prompt, gen_config=hot(4321))
    same_output(a, b)
    assert a.token_ids != c.token_ids
    assert a.token_ids != vl_pipe(prompt, gen_config=GREEDY).token_ids


def test_unseeded_sampling_varies(vl_pipe, img1):
    outs = {tuple(vl_pipe(("describe", img1), gen_config=hot(None)).token_ids) for _ in range(3)}
    assert len(outs) > 1


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(temperature=0.0), dict(top_p=1e-6), dict(min_p=1.0)],
                         ids=["top_k=1", "temperature=0", "tiny_top_p", "min_p=1"])
def test_degenerate_sampling_equals_greedy(vl_pipe, img1, kw):
    greedy = vl_pipe(("describe", img1), gen_config=GREEDY)
    sampled = vl_pipe(("describe", img1), gen_config=hot(99, **kw))
    assert sampled.token_ids == greedy.token_ids


def test_seeded_sample_is_the_same_alone_and_in_a_batch(vl_pipe, img1, img2):
    target = ("describe", img1)
    alone = vl_pipe(target, gen_config=hot(5))
    prompts = ["Shanghai is", target, ("what colour?", img2), target]
    gens = [GREEDY, hot(5), hot(6), hot(8)]
    batch = vl_pipe(prompts, gen_config=gens)
    same_output(batch[1], alone)
    assert batch[3].token_ids != alone.token_ids  # another seed in the same batch: its own stream
    same_output(batch[0], vl_pipe("Shanghai is", gen_config=GREEDY))


def test_repetition_penalty_matches_transformers(text_pipe, tiny_llama):
    ref_inputs = tm.hf_inputs(tiny_llama, [{"role": "user", "content": "Shanghai is"}])
    model = tm.load_hf_model(tiny_llama)
    with torch.no_grad():
        out = model.generate(**ref_inputs, do_sample=False, max_new_tokens=N, min_new_tokens=N,
                             repetition_penalty=1.5, pad_token_id=model.generation_config.pad_token_id)
    expected = out[0, ref_inputs["input_ids"].shape[1]:].tolist()
    r = text_pipe("Shanghai is", gen_config=GenerationConfig(max_new_tokens=N, min_new_tokens=N,
                                                             repetition_penalty=1.5))
    assert r.token_ids == expected
    assert r.token_ids != text_pipe("Shanghai is", gen_config=GREEDY).token_ids


# ---- stop conditions ------------------------------------------------------------------------

def _stop_word_case(tokenizer, ids: list[int], text: str, span_two_tokens: bool):
    """A stop word taken from greedy ``text``: (word, text before its first occurrence, k).

    The word starts where token k's text starts, occurs nowhere earlier, and is either that
    token's text alone or reaches two characters into the next token's text.
    """
    for k in range(2, len(ids) - 2):
        before, one, two = (tokenizer.decode(ids[:j], skip_special_tokens=True) for j in (k, k + 1, k + 2))
        if not (one.startswith(before) and two.startswith(one) and text.startswith(two)):
            continue  # a multi-byte character split across tokens
        piece, nxt = one[len(before):], two[len(one):]
        word = piece + nxt[:2] if span_two_tokens else piece
        if (len(piece.strip()) < 2 or "\ufffd" in word or (span_two_tokens and not nxt.strip())
                or text.find(word) != len(before)):
            continue
        return word, before, k
    raise AssertionError(f"no usable stop word in the greedy text {text!r}")


@pytest.mark.parametrize("span", [
    pytest.param(False, id="one_token_word"),
    pytest.param(True, id="word_across_two_tokens"),
])
def test_stop_word_ends_the_text_right_before_it(vl_pipe, img1, span):
    gen = GenerationConfig(max_new_tokens=48, ignore_eos=True)
    greedy = vl_pipe(("describe", img1), gen_config=gen)
    word, expected, k = _stop_word_case(vl_pipe.tokenizer, greedy.token_ids, greedy.text, span)
    r = vl_pipe(("describe", img1), gen_config=gen.replace(stop_words=[word]))
    assert r.finish_reason == "stop"
    assert r.text == expected, f"stop word {word!r}"
    assert word not in r.text
    assert r.token_ids == greedy.token_ids[:len(r.token_ids)]
    assert k < r.generate_token_len <= k + 2  # stops on the token that completes the word
    streamed = _collect(vl_pipe.stream_infer(("describe", img1), gen_config=gen.replace(stop_words=[word])))[0]
    assert "".join(d.text for d in streamed) == expected
    assert streamed[-1].finish_reason == "stop"


def _first_new_token(ids: list[int], start: int = 3) -> int:
    """Smallest k >= start whose token does not occur before position k."""
    for k in range(start, len(ids)):
        if ids[k] not in ids[:k]:
            return k
    raise AssertionError(f"every token of {ids} repeats an earlier one")


def test_stop_token_ids_stop_and_the_token_is_not_in_the_text(vl_pipe, img1):
    greedy = vl_pipe(("describe", img1), gen_config=GREEDY)
    k = _first_new_token(greedy.token_ids)
    stop = greedy.token_ids[k]
    r = vl_pipe(("describe", img1), gen_config=GREEDY.replace(stop_token_ids=[stop]))
    assert r.finish_reason == "stop"
    assert r.token_ids[:k] == greedy.token_ids[:k]
    assert r.text == vl_pipe.tokenizer.decode(greedy.token_ids[:k], skip_special_tokens=True)


def test_stop_token_is_not_in_the_token_ids(vl_pipe, img1):
    greedy = vl_pipe(("describe", img1), gen_config=GREEDY)
    k = _first_new_token(greedy.token_ids)
    r = vl_pipe(("describe", img1), gen_config=GREEDY.replace(stop_token_ids=[greedy.token_ids[k]]))
    assert r.token_ids == greedy.token_ids[:k]
    assert r.generate_token_len == k


def test_max_new_tokens_gives_length(vl_pipe, img1):
    for n in (1, 3):
        r = vl_pipe(("describe", img1), gen_config=GenerationConfig(max_new_tokens=n, ignore_eos=True))
        assert r.generate_token_len == n == len(r.token_ids)
        assert r.finish_reason == "length"


@pytest.fixture(scope="module")
def eos_model(tiny_llama, text_pipe, tmp_path_factory):
    """tiny_llama with a second eos id: a token greedy decoding emits early for PROMPT.

    Returns (path, greedy ids with ignore_eos, position k of that token's first occurrence, the token).
    """
    gen = GenerationConfig(max_new_tokens=32, ignore_eos=True)
    ids = text_pipe("Shanghai is", gen_config=gen).token_ids
    k = _first_new_token(ids)
    eos = ids[k]
    path = str(tmp_path_factory.mktemp("eos") / "llama_eos")
    shutil.copytree(tiny_llama, path)
    gen_file = os.path.join(path, "generation_config.json")
    with open(gen_file) as f:
        cfg = json.load(f)
    cfg["eos_token_id"] = [cfg["eos_token_id"], eos]
    with open(gen_file, "w") as f:
        json.dump(cfg, f)
    return path, ids, k, eos


@pytest.fixture(scope="module")
def eos_pipe(eos_model):
    pipe = pipeline(eos_model[0])
    yield pipe
    pipe.close()


def test_eos_stops_generation(eos_pipe, eos_model):
    _, ids, k, eos = eos_model
    r = eos_pipe("Shanghai is", gen_config=GenerationConfig(max_new_tokens=32))
    assert r.finish_reason == "stop"
    assert r.token_ids[:k] == ids[:k]
    assert r.generate_token_len in (k, k + 1)  # k+1 when the eos token is reported


def test_min_new_tokens_forbids_early_eos(eos_pipe, eos_model):
    _, ids, k, eos = eos_model
    m = k + 4
    r = eos_pipe("Shanghai is", gen_config=GenerationConfig(max_new_tokens=32, min_new_tokens=m))
    assert r.generate_token_len >= m
    assert eos not in r.token_ids[:m]
    assert r.token_ids[:k] == ids[:k]


def test_ignore_eos_runs_through_eos(eos_pipe, eos_model):
    _, ids, k, eos = eos_model
    r = eos_pipe("Shanghai is", gen_config=GenerationConfig(max_new_tokens=32, ignore_eos=True))
    assert r.finish_reason == "length" and r.token_ids == ids
    assert r.token_ids[k] == eos


def test_session_len_caps_prompt_plus_output(tiny_llama):
    with pipeline(tiny_llama, backend_config=EngineConfig(session_len=32)) as pipe:
        r = pipe("Shanghai is", gen_config=GenerationConfig(max_new_tokens=100, ignore_eos=True))
    assert r.finish_reason == "length"
    assert r.input_token_len + r.generate_token_len == 32


# ---- chat templates -------------------------------------------------------------------------

def test_chat_template_config_picks_a_builtin(tiny_llama):
    with pipeline(tiny_llama, chat_template_config=ChatTemplateConfig(model_name="chatml")) as pipe:
        text = pipe.tokenizer.decode(prompt_ids(pipe, "Shanghai is"))
        r = pipe("Shanghai is", gen_config=GREEDY)
    assert "<|im_start|>user\nShanghai is<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert r.generate_token_len == N


# ---- lifetime -------------------------------------------------------------------------------

def test_context_manager_closes_and_releases_the_kv_cache(tiny_llava, img1):
    with pipeline(tiny_llava) as pipe:
        r = pipe(("describe", img1), gen_config=GREEDY)
        assert r.generate_token_len == N
        kv = [weakref.ref(t) for pair in pipe.engine.runner.kv_caches for t in pair]
        weights = [weakref.ref(p) for p in pipe.family.model.parameters()][:3]
        assert kv and weights
    gc.collect()
    assert all(ref() is None for ref in kv), "KV cache tensors still alive after close"
    assert all(ref() is None for ref in weights), "model weights still alive after close"
    with pytest.raises(RuntimeError, match="closed"):
        pipe(("describe", img1), gen_config=GREEDY)
    with pytest.raises(RuntimeError, match="closed"):
        list(pipe.stream_infer("hi"))
    with pytest.raises(RuntimeError, match="closed"):
        pipe.chat("hi")
    pipe.close()  # idempotent


def test_close_then_a_new_pipeline_works(tiny_llama):
    pipe = pipeline(tiny_llama)
    first = pipe("Shanghai is", gen_config=GREEDY)
    pipe.close()
    with pytest.raises(RuntimeError, match="closed"):
        pipe(["Shanghai is", "Hi"], gen_config=GREEDY)
    with pipeline(tiny_llama) as again:
        same_output(again("Shanghai is", gen_config=GREEDY), first)


def test_lmdeploy_engine_fields_port_unchanged(tiny_llama):
    """LMDeploy's engine-config fields: mapped (device_type, cache_block_seq_len), accepted with no
    effect (eager_mode, thread_safe, download_dir...), or refused naming what is missing."""
    cfg = PytorchEngineConfig(device_type="cpu", eager_mode=True, thread_safe=True, cache_block_seq_len=32,
                              model_format="hf", quant_policy=0, rope_scaling_factor=0.0, download_dir="/nowhere")
    with pipeline(tiny_llama, backend_config=cfg) as pipe:
        assert pipe.engine.blocks.block_size == 32 and pipe.family.device.type == "cpu"
        assert pipe("hello", gen_config=GenerationConfig(max_new_tokens=3, ignore_eos=True)).generate_token_len == 3
    for bad, words in [(dict(device_type="ascend"), "'cuda' or 'cpu'"), (dict(quant_policy=8), "KV-cache quant"),
                       (dict(model_format="awq"), "quantised checkpoints"), (dict(dp=2), "replicas"),
                       (dict(rope_scaling_factor=2.0), "rope_scaling"), (dict(cache_block_seq_len=48), "power of two")]:
        with pytest.raises(ValueError, match=words):
            PytorchEngineConfig(**bad)
