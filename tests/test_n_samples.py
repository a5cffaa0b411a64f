"""Several samples per prompt offline: LMDeploy's ``GenerationConfig(n=k)`` (k Responses per prompt,
in prompt order) and vLLM's ``SamplingParams(n=k)`` (k outputs in one RequestOutput).

Sample i draws with ``random_seed + i``, so it equals a single request seeded so; the later
samples find the prompt's KV blocks in the prefix cache; greedy samples are all alike."""

from __future__ import annotations

import pytest

from seer import LLM, EngineConfig, GenerationConfig, SamplingParams, pipeline

PROMPT = "a long story about red circles, blue squares and green stars, told slowly"


@pytest.fixture(scope="module")
def pipe(tiny_llama):
    with pipeline(tiny_llama, EngineConfig(block_size=4)) as p:
        yield p


def test_n_samples_are_the_seeded_singles_and_share_the_prompt(pipe):
    gen = GenerationConfig(do_sample=True, temperature=1.3, top_k=0, random_seed=11, max_new_tokens=8,
                           ignore_eos=True)
    singles = [pipe(PROMPT, gen_config=gen.replace(random_seed=11 + i)).token_ids for i in range(3)]
    pipe.engine.blocks.reset_prefix_cache()
    hits = pipe.engine.snapshot().prefix_hit_tokens
    out = pipe(PROMPT, gen_config=gen.replace(n=3))
    assert [r.token_ids for r in out] == singles and len(set(map(tuple, singles))) > 1
    assert all(r.index == 0 for r in out)
    cached = (out[0].input_token_len - 1) // 4 * 4  # every full block (one token is always computed)
    assert [r.num_cached_tokens for r in out] == [0, cached, cached] and cached >= 12
    assert pipe.engine.snapshot().prefix_hit_tokens - hits == 2 * cached


def test_a_batch_with_n_gives_n_responses_per_prompt_in_order(pipe):
    gen = GenerationConfig(max_new_tokens=5, ignore_eos=True, n=2)
    out = pipe(["hello", "there, friend", "x"], gen_config=gen)
    assert [r.index for r in out] == [0, 0, 1, 1, 2, 2]
    for a, b in zip(out[::2], out[1::2]):  # greedy: the samples are alike
        assert a.token_ids == b.token_ids and a.finish_reason == "length"
    with pytest.raises(ValueError, match="n=1 only"):
        list(pipe.stream_infer("hello", gen_config=gen))
    with pytest.raises(ValueError, match=r"n=0 is invalid"):
        GenerationConfig(n=0)


def test_vllm_n(tiny_llama):
    llm = LLM(tiny_llama)
    try:
        sp = SamplingParams(n=3, temperature=1.2, seed=5, max_tokens=6, ignore_eos=True, logprobs=1)
        out = llm.generate([PROMPT, "hello"], sp)
        assert [len(o.outputs) for o in out] == [3, 3] and [c.index for c in out[0].outputs] == [0, 1, 2]
        one = llm.generate(PROMPT, SamplingParams(temperature=1.2, seed=6, max_tokens=6, ignore_eos=True))
        assert out[0].outputs[1].token_ids == one[0].outputs[0].token_ids  # sample 1 draws with seed + 1
        assert all(c.cumulative_logprob is not None for c in out[1].outputs)
    finally:
        llm.close()
