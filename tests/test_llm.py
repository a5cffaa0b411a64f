"""The vLLM-shaped API: raw prompts with multi_modal_data, chat, precomputed embeddings, limits."""

import pytest
import torch

import tiny_models as tm
from seer import LLM, GenerationConfig, SamplingParams, pipeline
from seer.llm import Logprob

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
MSGS = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this"}]}]


@pytest.fixture(scope="module")
def llm(tiny_llava):
    model = LLM(model=tiny_llava, max_model_len=512, limit_mm_per_prompt={"image": 2})
    yield model
    model.close()


def _raw_prompt(path):
    return tm.render_chat(path, MSGS)  # "<s>USER: <image>\ndescribe this ASSISTANT:"


def test_raw_prompt_with_an_image_matches_transformers(llm, tiny_llava):
    img = tm.make_image(7)
    ref_inputs = tm.hf_inputs(tiny_llava, MSGS, [img])
    want = tm.hf_greedy(tiny_llava, ref_inputs, max_new_tokens=20, ignore_eos=True)
    out = llm.generate({"prompt": _raw_prompt(tiny_llava), "multi_modal_data": {"image": img}}, GREEDY)
    assert len(out) == 1 and out[0].outputs[0].token_ids == want
    assert out[0].prompt_token_ids == ref_inputs["input_ids"][0].tolist()
    assert out[0].outputs[0].finish_reason == "length"
    assert out[0].outputs[0].text == llm.get_tokenizer().decode(want, skip_special_tokens=True)


def test_a_list_of_two_images_matches_transformers(llm, tiny_llava):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
                                         {"type": "text", "text": "compare"}]}]
    imgs = [tm.make_image(3, size=(40, 56)), tm.make_image(4)]
    ref_inputs = tm.hf_inputs(tiny_llava, msgs, imgs)
    want = tm.hf_greedy(tiny_llava, ref_inputs, max_new_tokens=20, ignore_eos=True)
    out = llm.generate({"prompt": tm.render_chat(tiny_llava, msgs), "multi_modal_data": {"image": imgs}}, GREEDY)
    assert out[0].outputs[0].token_ids == want
    assert out[0].prompt_token_ids == ref_inputs["input_ids"][0].tolist()


def test_precomputed_embeddings_skip_the_vision_encoder(llm, tiny_llava):
    img = tm.make_image(8)
    prompt = {"prompt": _raw_prompt(tiny_llava), "multi_modal_data": {"image": img}}
    want = llm.generate(prompt, GREEDY)[0].outputs[0].token_ids
    fam = llm._pipe.family
    _, pixels = fam.image_inputs(img)
    with torch.inference_mode():
        embeds = fam.model.encode_images([pixels])[0]
    misses = llm._pipe.engine.runner.feature_misses
    got = llm.generate({"prompt": _raw_prompt(tiny_llava), "multi_modal_data": {"image": embeds.clone()}}, GREEDY)
    assert got[0].outputs[0].token_ids == want
    assert llm._pipe.engine.runner.feature_misses == misses


def test_chat_and_batches_keep_order_and_match_the_pipeline(llm, tiny_llava):
    imgs = [tm.make_image(s) for s in (1, 2, 3)]
    convs = [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": im}},
                                           {"type": "text", "text": f"question {i}"}]}]
             for i, im in enumerate(imgs)]
    outs = llm.chat(convs, GREEDY)
    with pipeline(tiny_llava) as pipe:
        from seer import GenerationConfig

        want = [pipe(c, gen_config=GenerationConfig(max_new_tokens=20, ignore_eos=True)).token_ids for c in convs]
    assert [o.outputs[0].token_ids for o in outs] == want
    single = llm.chat(convs[1], GREEDY)
    assert single[0].outputs[0].token_ids == want[1]


def test_stop_reason_names_the_stop_string_or_token(llm):
    full = llm.generate("a story", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    word = full.text.split()[1]
    by_word = llm.generate("a story", SamplingParams(temperature=0, max_tokens=12, stop=["never", word]))
    assert by_word[0].outputs[0].finish_reason == "stop" and by_word[0].outputs[0].stop_reason == word
    tok = full.token_ids[3]
    by_tok = llm.generate("a story", SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[tok]))
    assert by_tok[0].outputs[0].stop_reason == tok
    assert full.stop_reason is None and full.finish_reason == "length"


def test_sampling_params(llm):
    sp = SamplingParams(temperature=1.5, seed=3, max_tokens=12, ignore_eos=True, logprobs=2)
    a = llm.generate(["a story", "a story"], [sp, sp])
    assert a[0].outputs[0].token_ids == a[1].outputs[0].token_ids
    b = llm.generate("a story", SamplingParams(temperature=1.5, seed=4, max_tokens=12, ignore_eos=True))
    assert b[0].outputs[0].token_ids != a[0].outputs[0].token_ids
    o = a[0].outputs[0]
    assert len(o.logprobs) == 12 and o.cumulative_logprob == pytest.approx(
        sum(d[t].logprob for d, t in zip(o.logprobs, o.token_ids)))
    for d, t in zip(o.logprobs, o.token_ids):  # vLLM's Logprob objects: the drawn token and the top 2
        assert isinstance(d[t], Logprob) and d[t].decoded_token == llm.get_tokenizer().decode([t])
        higher = sum(x.logprob > d[t].logprob for x in d.values())
        # within the top 2 shown, the tokens above it are all there; outside, it ranks below both
        assert d[t].rank == 1 + higher if higher < 2 else d[t].rank >= 3
    default = llm.generate("a story")[0].outputs[0]
    assert len(default.token_ids) <= 16  # vLLM's default max_tokens


@pytest.mark.parametrize("bad,words", [
    ({"prompt": "<image><image><image> three", "multi_modal_data": {"image": [tm.make_image(i) for i in range(3)]}},
     "limit_mm_per_prompt"),
    ({"prompt": "no placeholder here", "multi_modal_data": {"image": tm.make_image(1)}}, "placeholder"),
    ({"prompt": "<image> x", "multi_modal_data": {"video": [1]}}, "not supported"),
    ({"text": "wrong key"}, "prompt_token_ids"),
    ({"prompt_token_ids": [5, 10 ** 9]}, r"\[1000000000\] are outside the model's vocabulary \[0, \d+\)"),
    ({"prompt_token_ids": [-1]}, r"\[-1\] are outside"),  # one token: served by the native decode step
    ({"prompt_token_ids": [5, 1.5]}, "must hold ints, got float"),
    ({"prompt_token_ids": [True]}, "must hold ints, got bool"),
    ({"prompt_token_ids": "5 6"}, "must be a list of ints, got str"),
    ({"prompt": "<image> x", "multi_modal_data": {"image": torch.zeros(5, 3)}}, r"\[image tokens, \d+\]"),
    ({"prompt": "<image> x", "multi_modal_data": {"image": torch.zeros(5, 4, 3, 2)}}, r"\[image tokens, \d+\]"),
])
def test_bad_prompts(llm, bad, words):
    with pytest.raises(ValueError, match=words):
        llm.generate(bad, GREEDY)


def test_bad_sampling_params(llm):
    with pytest.raises(ValueError, match="n=0 is invalid"):
        llm.generate("x", SamplingParams(n=0))
    with pytest.raises(ValueError, match="top_p"):
        llm.generate("x", SamplingParams(top_p=0))


@pytest.mark.parametrize("kwargs,words", [
    ({"no_such_option": 1}, "no_such_option"),
    ({"mm_processor_kwargs": {"num_crops": 4}}, "num_crops"),
    ({"limit_mm_per_prompt": {"audio": 1}}, "audio"),
    ({"dtype": "int8"}, "dtype"),
])
def test_bad_engine_arguments_say_what_is_accepted(tiny_llava, kwargs, words):
    with pytest.raises(ValueError, match=words):
        LLM(model=tiny_llava, **kwargs)


def test_vllm_engine_arguments_map_onto_the_engine(tiny_llava):
    llm = LLM(model=tiny_llava, max_num_batched_tokens=64, block_size=8, max_num_seqs=3, enforce_eager=True,
              trust_remote_code=True)
    try:
        cfg = llm._pipe.engine_config
        assert (cfg.max_prefill_token_num, cfg.block_size, cfg.max_batch_size) == (64, 8, 3)
    finally:
        llm.close()


def test_vllm_sampling_fields_for_stops_words_and_prompts(llm):
    base = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    full = llm.generate("a story", base)[0].outputs[0]
    word = full.text.split()[1]
    kept = llm.generate("a story", SamplingParams(temperature=0, max_tokens=10, stop=[word],
                                                  include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text.endswith(word) and kept.stop_reason == word and full.text.startswith(kept.text)
    ids = list(range(5, 30))
    cut = llm.generate({"prompt_token_ids": ids}, SamplingParams(**{**base.__dict__, "truncate_prompt_tokens": 7}))
    assert cut[0].prompt_token_ids == ids[-7:]
    assert cut[0].outputs[0].token_ids == llm.generate({"prompt_token_ids": ids[-7:]}, base)[0].outputs[0].token_ids
    quiet = llm.generate("a story", SamplingParams(**{**base.__dict__, "detokenize": False}))[0].outputs[0]
    assert quiet.text == "" and quiet.token_ids == full.token_ids
    banned = llm.generate("a story", SamplingParams(**{**base.__dict__, "bad_words": [word]}))[0].outputs[0]
    tok = llm.get_tokenizer()
    for seq in (tok(word, add_special_tokens=False)["input_ids"], tok(" " + word, add_special_tokens=False)["input_ids"]):
        assert not any(banned.token_ids[i:i + len(seq)] == seq for i in range(len(banned.token_ids)))


def test_bad_words_ids_ban_the_last_token_after_the_rest(llm):
    pipe = llm._pipe
    gen = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    t = pipe("a story", gen_config=gen).token_ids
    assert pipe("a story", gen_config=gen.replace(bad_words_ids=[[t[0]]])).token_ids[0] != t[0]
    two = pipe("a story", gen_config=gen.replace(bad_words_ids=[[t[0], t[1]]])).token_ids
    assert two[0] == t[0] and two[1] != t[1]
