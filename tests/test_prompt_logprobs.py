"""Prompt logprobs: each prompt token's log-probability given the tokens before it.

They equal transformers' log-softmax over the same prompt (fp32) for a text and an image
prompt, with the prefix cache cold and warm (a cached prefix is computed again, so it still
has its logprobs) and in 5-token prefill chunks; LMDeploy's ``get_ppl`` is transformers' loss;
vLLM's ``SamplingParams(prompt_logprobs=k)`` fills ``RequestOutput.prompt_logprobs``; the
server's legacy completions with ``echo`` + ``logprobs`` (and ``max_tokens: 0``, as lm-eval's
loglikelihood requests send them) return the prompt's logprobs."""

from __future__ import annotations

import httpx
import pytest
import torch

import tiny_models as tm
from seer import LLM, EngineConfig, GenerationConfig, SamplingParams, pipeline
from server_proc import ServerProcess

IDS = list(range(5, 41))


def _hf_logprobs(path, inputs) -> tuple[list[int], list[float]]:
    """transformers' log-probability of each prompt token after the first."""
    model = tm.load_hf_model(path)
    if not isinstance(inputs, dict):
        inputs = {"input_ids": torch.tensor([inputs])}
    with torch.no_grad():
        lp = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
    ids = inputs["input_ids"][0].tolist()
    return ids, [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


def _check(prompt_lp, ids, want, top):
    assert prompt_lp[0] is None and len(prompt_lp) == len(ids)
    got = [d[t] for d, t in zip(prompt_lp[1:], ids[1:])]
    assert got == pytest.approx(want, abs=1e-4)
    assert all(len(d) >= top and max(d.values()) >= d[t] - 1e-6 for d, t in zip(prompt_lp[1:], ids[1:]))


@pytest.mark.parametrize("cfg", [None, EngineConfig(max_prefill_token_num=5, block_size=4)],
                         ids=["whole", "5-token-chunks"])
def test_text_prompt_logprobs_equal_transformers_cold_and_warm(tiny_llama, cfg):
    ids, want = _hf_logprobs(tiny_llama, IDS)
    gen = GenerationConfig(max_new_tokens=2, prompt_logprobs=3)
    with pipeline(tiny_llama, cfg) as pipe:
        for _ in range(2):  # the second time, every block of the prompt is in the prefix cache
            r = pipe.run([ids], [gen], raise_errors=True, prepare=pipe.prepare_ids)[0]
            _check(r.prompt_logprobs, ids, want, 3)
            assert r.num_cached_tokens == 0
        assert pipe.get_ppl([ids, ids[:9]]) == pytest.approx(
            [-sum(want) / len(want), -sum(want[:8]) / 8], abs=1e-5)


def test_image_prompt_logprobs_equal_transformers(tiny_llava):
    image = tm.make_image(3)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}]
    inputs = tm.hf_inputs(tiny_llava, msgs, [image])
    ids, want = _hf_logprobs(tiny_llava, inputs)
    with pipeline(tiny_llava) as pipe:
        conv = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "what is this?"}]}]
        r = pipe(conv, gen_config=GenerationConfig(max_new_tokens=1, prompt_logprobs=0))
        assert pipe.prepare(conv).token_ids == ids
        _check(r.prompt_logprobs, ids, want, 0)


def test_vllm_prompt_logprobs(tiny_llama):
    ids, want = _hf_logprobs(tiny_llama, IDS)
    llm = LLM(tiny_llama)
    try:
        out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1, prompt_logprobs=2))[0]
        assert out.prompt_logprobs[1][ids[1]].decoded_token == llm.get_tokenizer().decode([ids[1]])
        _check([d and {t: x.logprob for t, x in d.items()} for d in out.prompt_logprobs], ids, want, 2)
    finally:
        llm.close()


def test_completions_echo_logprobs_score_the_prompt(tiny_llama):
    ids, want = _hf_logprobs(tiny_llama, IDS)
    server = ServerProcess.start(tiny_llama, "--model-name", "m")
    try:
        body = {"model": "m", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        choice, usage = r.json()["choices"][0], r.json()["usage"]
        lp = choice["logprobs"]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-4) and len(lp["tokens"]) == len(ids)
        assert usage["completion_tokens"] == 0 and usage["prompt_tokens"] == len(ids)
        # lm-eval's loglikelihood shape: max_tokens 1, the last entry is the generated token
        one = httpx.post(f"{server.url}/v1/completions", json={**body, "max_tokens": 1}, timeout=60).json()
        assert one["choices"][0]["logprobs"]["token_logprobs"][1:-1] == pytest.approx(want, abs=1e-4)
        for bad, words in [({"echo": False}, "max_tokens=0 is only accepted with echo"),
                           ({"stream": True}, "stream=false")]:
            r = httpx.post(f"{server.url}/v1/completions", json={**body, **bad}, timeout=60)
            assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    finally:
        server.stop()


@pytest.mark.parametrize("cfg", [None, EngineConfig(max_prefill_token_num=5, block_size=4)],
                         ids=["whole", "5-token-chunks"])
def test_get_logits_and_output_logits_all_equal_transformers(tiny_llama, cfg):
    model = tm.load_hf_model(tiny_llama)
    with torch.no_grad():
        want = [model(torch.tensor([ids])).logits[0].float() for ids in (IDS, IDS[:9])]
    with pipeline(tiny_llama, cfg) as pipe:
        got = pipe.get_logits([IDS, IDS[:9]])
        for g, w in zip(got, want):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
        r = pipe.run([IDS], [GenerationConfig(max_new_tokens=3, ignore_eos=True, output_logits="all")], True,
                     prepare=pipe.prepare_ids)[0]
        assert r.logits.shape == (len(IDS) - 1 + 3, want[0].shape[1])  # the prompt's rows, then each token's
        torch.testing.assert_close(r.logits[:len(IDS)], want[0], atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="get_logits takes token ids"):
            pipe.get_logits([[]])
        for bad in ([IDS[:3] + [-1]], [[pipe.family.model.spec.vocab_size]]):
            with pytest.raises(ValueError, match=r"get_logits: token ids \[-?\d+\] are outside the model's vocabulary"):
                pipe.get_logits(bad)
        with pytest.raises(ValueError, match=r"get_ppl: token ids \[99999999\] are outside"):
            pipe.get_ppl([5, 99999999])
