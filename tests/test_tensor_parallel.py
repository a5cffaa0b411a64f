"""Tensor parallelism on the CPU (gloo): ``EngineConfig(tp=N)`` runs N ranks, one process each.

Greedy tokens at tp=2 equal tp=1 (and transformers) for each text decoder family and each VLM
family (transformers and original layouts; text, one-image and two-image prompts), inside
batches with prefix-cache hits, chunked prefill and preemption; KV heads fewer than the
ranks are replicated (tp=4 over 2 KV heads); a tp that does not divide the model is a
ValueError before any process starts; close() leaves no worker behind; a worker that dies
fails the next step with a message naming its rank, and nothing hangs.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

import tiny_deepseek_vl as tds
import tiny_gemma3 as tg
import tiny_idefics3 as ti
import tiny_internvl as tiv
import tiny_llava_original as tlo
import tiny_models as tm
import tiny_phi3v as tpv
import tiny_qwen_vl as tq
from seer import EngineConfig, GenerationConfig, TurbomindEngineConfig, pipeline

GEN = GenerationConfig(max_new_tokens=12, ignore_eos=True)
PROMPTS = ["hello there", "a longer prompt about red circles, blue squares and green stars", "x",
           "hello there, and more"]  # the last shares a prefix with the first


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _tokens(path, cfg=None, prompts=PROMPTS, gen=GEN):
    with pipeline(path, cfg) as pipe:
        return [r.token_ids for r in pipe(prompts, gen_config=gen)]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "internlm2"])
def test_tp2_gives_the_tokens_of_tp1(arch, request, tmp_path_factory):
    path = request.getfixturevalue("tiny_internlm2")[0] if arch == "internlm2" else \
        request.getfixturevalue(f"tiny_{arch}")
    want = _tokens(path)
    before = _children()
    assert _tokens(path, EngineConfig(tp=2)) == want
    assert _children() <= before  # the worker is gone after close()


def test_gemma3_text_at_tp2_gives_the_tokens_of_tp1(tmp_path):
    """Gemma 3's own layer (per-head q/k norms, post-norms after the all-reduced projections,
    sliding layers with a 12-token window that the longer prompts pass)."""
    path = tg.build_gemma3_text(str(tmp_path / "gemma3_text"))
    assert _tokens(path, EngineConfig(tp=2)) == _tokens(path)


def test_tp2_equals_transformers(tiny_llama):
    msgs = [{"role": "user", "content": "hello there"}]
    want = tm.hf_greedy(tiny_llama, tm.hf_inputs(tiny_llama, msgs), max_new_tokens=12, ignore_eos=True)
    with pipeline(tiny_llama, EngineConfig(tp=2)) as pipe:
        assert pipe(msgs, gen_config=GEN).token_ids == want


def test_tp2_batches_are_invariant(tiny_llama):
    """Alone at tp=1 vs one tp=2 batch with a warm prefix cache, 7-token prefill chunks and a pool
    small enough that sequences are preempted."""
    alone = [_tokens(tiny_llama, prompts=[p])[0] for p in PROMPTS]
    cfg = EngineConfig(tp=2, max_prefill_token_num=7, num_gpu_blocks=12, block_size=4)
    with pipeline(tiny_llama, cfg) as pipe:
        pipe(PROMPTS[:1], gen_config=GEN)  # warms the prefix cache
        got = [r.token_ids for r in pipe(PROMPTS * 2, gen_config=GEN.replace(max_new_tokens=12))]
        assert pipe.engine.scheduler.num_preemptions > 0
        assert pipe.engine.snapshot().prefix_hit_tokens > 0
    assert got == alone * 2


# VLM families whose decoder splits (the vision tower runs whole on every rank: it is small next to
# the decoder, and each rank then has the features it scatters without a broadcast); "*_original":
# the published (remote-code) layouts, whose shapes are read from config.json's own keys
VLMS = {
    "llava": tm.build_llava,
    "llava_next": tm.build_llava_next,
    "qwen2_vl": lambda p: tq.build_qwen_vl(p, "qwen2_vl"),
    "qwen2_5_vl": lambda p: tq.build_qwen_vl(p, "qwen2_5_vl"),
    "internvl": tiv.build_hf,
    "deepseek_vl": tds.build_deepseek_vl,
    "idefics3": lambda p: ti.build_idefics3(p, "idefics3"),
    "gemma3": tg.build_gemma3,
    "phi3v": tpv.build_phi3v,  # packed qkv_proj / gate_up_proj
    "llava_original": lambda p: tlo.write_original_layout(tm.build_llava(p + "_hf"), p, os.environ["HF_HUB_CACHE"]),
    "deepseek_vl_original": tds.build_original,
    "internvl_original": lambda p: tiv.build_original(p, "internlm2"),  # InternLM2's packed wqkv
}


@pytest.mark.parametrize("family", VLMS)
def test_vlm_decoders_at_tp2_give_the_tokens_of_tp1(family, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # where original-layout LLaVA finds its tower
    path = VLMS[family](str(tmp_path / family))
    images = [tm.make_image(i, (56 + 28 * i, 84)) for i in range(2)]
    prompts = ["plain text", ("one image", images[:1]), ("two images", images)]
    assert _tokens(path, EngineConfig(tp=2), prompts) == _tokens(path, prompts=prompts)


def test_kv_heads_fewer_than_ranks_are_replicated(tiny_llama):
    """tp=4 over 2 KV heads: each KV head is held by two ranks."""
    assert _tokens(tiny_llama, EngineConfig(tp=4), prompts=PROMPTS[:2]) == _tokens(tiny_llama, prompts=PROMPTS[:2])


def test_a_tp_that_does_not_divide_is_refused_before_any_process(tiny_llama, tmp_path):
    tiny_phi3v = tpv.build_phi3v(str(tmp_path / "phi3v"))  # shape read from an original layout's config.json
    before = _children()
    for path in (tiny_llama, tiny_phi3v):
        with pytest.raises(ValueError, match=r"tp=3 does not divide .*num_attention_heads=4"):
            pipeline(path, EngineConfig(tp=3))
    assert _children() == before


def test_lmdeploy_example_runs(tiny_llama):
    with pipeline(tiny_llama, backend_config=TurbomindEngineConfig(tp=2, session_len=8192)) as pipe:
        r = pipe("hello there", gen_config=GEN)
        assert r.generate_token_len == 12 and pipe.session_len == 8192


def test_a_dead_rank_fails_the_step_and_names_it(tiny_llama):
    pipe = pipeline(tiny_llama, EngineConfig(tp=2))
    try:
        (worker,) = pipe.engine.runner.workers.pids
        os.kill(worker, signal.SIGKILL)
        psutil.Process(worker).wait(10)
        t = time.monotonic()
        r = pipe(["hello", "there"], gen_config=GEN)
        assert time.monotonic() - t < 10
        assert all(x.finish_reason == "error" and "rank 1" in x.error for x in r)
        assert not pipe.engine.is_alive  # what /health reports
    finally:
        pipe.close()
    assert worker not in _children()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_serve_tp2_leaves_no_worker_behind(tiny_llama, sig):
    """``seer serve --tp 2`` answers; after SIGTERM or Ctrl-C (SIGINT), or even SIGKILL of the
    server, whose workers then see their socket close, no worker process is left."""
    import httpx

    from server_proc import ServerProcess

    server = ServerProcess.start(tiny_llama, "--tp", "2", "--model-name", "m", timeout=120)
    try:
        workers = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                   if "seer.engine.tp_worker" in " ".join(p.cmdline())]
        assert len(workers) == 1
        r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
            "ignore_eos": True})  # the default temperature samples; an early end of sequence is no failure here
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        server.proc.send_signal(sig)
        server.proc.wait(60)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, [p.pid for p in alive]
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_prompt_logprobs_at_tp2_equal_tp1(tiny_llama):
    """Prompt logprobs gather every rank's vocabulary share, slice by slice, as the sampled rows do."""
    gen = GenerationConfig(max_new_tokens=2, prompt_logprobs=2)
    lps = []
    for cfg in (None, EngineConfig(tp=2)):
        with pipeline(tiny_llama, cfg) as pipe:
            lps.append(pipe("a longer prompt about red circles and blue squares", gen_config=gen).prompt_logprobs)
    assert lps[0][0] is None and lps[1][0] is None and len(lps[0]) == len(lps[1])
    for a, b in zip(lps[0][1:], lps[1][1:]):
        assert a.keys() == b.keys() and list(a.values()) == pytest.approx(list(b.values()), abs=1e-4)
