"""OpenAI's ``logit_bias``: added to the logits before sampling, per request.

A +100 bias makes greedy decoding pick that token every step; a -100 bias on the token an
unbiased run picks first moves the first pick elsewhere; a biased request batched with an
unbiased one leaves the latter's tokens alone; vLLM's ``SamplingParams(logit_bias=...)`` and
the server's field (string keys) do the same; bad keys and values are errors that say what
is accepted."""

from __future__ import annotations

import pytest

from seer import LLM, GenerationConfig, SamplingParams, pipeline

GEN = GenerationConfig(max_new_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def pipe(tiny_llama):
    with pipeline(tiny_llama) as p:
        yield p


def test_bias_steers_greedy_decoding_and_stays_in_its_row(pipe):
    plain = pipe("hello there", gen_config=GEN).token_ids
    forced = pipe("hello there", gen_config=GEN.replace(logit_bias={7: 100.0})).token_ids
    assert forced == [7] * 6
    banned = pipe("hello there", gen_config=GEN.replace(logit_bias={plain[0]: -100.0})).token_ids
    assert banned[0] != plain[0]
    mixed = pipe(["hello there", "hello there"], gen_config=[GEN.replace(logit_bias={7: 100.0}), GEN])
    assert [r.token_ids for r in mixed] == [forced, plain]


def test_vllm_sampling_params_take_logit_bias(tiny_llama):
    llm = LLM(tiny_llama)
    try:
        out = llm.generate({"prompt_token_ids": [1, 5, 9]},
                           SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logit_bias={11: 100}))
        assert list(out[0].outputs[0].token_ids) == [11] * 4
    finally:
        llm.close()


@pytest.mark.parametrize("bias", [{-1: 1.0}, {3: 101}, {3: float("nan")}, {"3": 1.0}, [3]])
def test_bad_bias_is_a_value_error_naming_it(bias):
    with pytest.raises(ValueError) as err:
        GenerationConfig(logit_bias=bias)
    assert f"logit_bias={bias!r} is invalid" in str(err.value)
    assert "token ids (integers >= 0) to biases in [-100, 100]" in str(err.value)


def test_a_token_past_the_vocabulary_fails_only_its_request(pipe):
    out = pipe(["hello", "hello"], gen_config=[GEN.replace(logit_bias={10 ** 9: 1.0}), GEN])
    assert out[0].finish_reason == "error" and "outside the vocabulary" in out[0].error
    assert out[1].token_ids == pipe("hello", gen_config=GEN).token_ids
