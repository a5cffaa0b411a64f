"""Tensor parallelism with ``distributed_executor_backend="ray"``: ranks 1.. as Ray actors on a
local ``ray.init(num_cpus=2)``.

LLaVA and Qwen2-VL (M-RoPE) at tp=2 give the greedy tokens of tp=1 for a mixed batch of text,
one-image and two-image prompts, also with a warm prefix cache, chunked prefill and preemption
in the batch; vLLM's ``LLM(tensor_parallel_size=2, distributed_executor_backend="ray")`` runs;
an actor that dies fails the next step naming its rank, the engine turns unhealthy, and
nothing hangs.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

import tiny_models as tm
import tiny_qwen_vl as tq
from seer import LLM, EngineConfig, GenerationConfig, SamplingParams, pipeline

ray = pytest.importorskip("ray", reason="ray is not installed here (pip install 'seer[ray]')")

GEN = GenerationConfig(max_new_tokens=10, ignore_eos=True)
RAY = dict(tp=2, distributed_executor_backend="ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


BUILD = {"llava": tm.build_llava, "qwen2_vl": lambda p: tq.build_qwen_vl(p, "qwen2_vl")}


def _prompts():
    images = [tm.make_image(i, (56 + 28 * i, 84)) for i in range(2)]
    return ["plain text", ("one image", images[:1]), ("two images", images), ("one image, again", images[1:])]


def _tokens(path, cfg=None, prompts=None):
    with pipeline(path, cfg) as pipe:
        return [r.token_ids for r in pipe(prompts, gen_config=GEN)]


@pytest.mark.parametrize("family", BUILD)
def test_ray_tp2_gives_the_tokens_of_tp1(family, tmp_path):
    path = BUILD[family](str(tmp_path / family))
    prompts = _prompts()
    alone = [_tokens(path, prompts=[p])[0] for p in prompts]
    assert _tokens(path, EngineConfig(**RAY), prompts) == alone
    # one batch with a warm prefix cache, 16-token prefill chunks and a pool that forces preemption
    cfg = EngineConfig(**RAY, max_prefill_token_num=16, block_size=4, num_gpu_blocks=20)
    with pipeline(path, cfg) as pipe:
        pipe(prompts[1:2], gen_config=GEN)
        got = [r.token_ids for r in pipe(prompts * 2, gen_config=GEN)]
        assert pipe.engine.scheduler.num_preemptions > 0
        assert pipe.engine.snapshot().prefix_hit_tokens > 0
    assert got == alone * 2


def test_vllm_llm_with_ray(tmp_path):
    path = tq.build_qwen_vl(str(tmp_path / "qwen2_vl"), "qwen2_vl")
    image = tm.make_image(0, (56, 84))
    want = _tokens(path, prompts=[("what is this?", [image])])[0]
    llm = LLM(path, tensor_parallel_size=2, distributed_executor_backend="ray")
    try:
        prompt = llm.get_tokenizer().apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}],
            tokenize=False, add_generation_prompt=True)
        out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": image}},
                           SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
        assert list(out[0].outputs[0].token_ids) == want
    finally:
        llm.close()


def test_a_dead_actor_fails_the_step_and_names_it(tmp_path):
    path = tm.build_llava(str(tmp_path / "llava"))
    pipe = pipeline(path, EngineConfig(**RAY))
    try:
        (pid,) = pipe.engine.runner.workers.pids
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(10) if psutil.pid_exists(pid) else None
        t = time.monotonic()
        r = pipe(["hello", "there"], gen_config=GEN)
        assert time.monotonic() - t < 30
        assert all(x.finish_reason == "error" and "rank 1" in x.error for x in r), [x.error for x in r]
        assert not pipe.engine.is_alive  # what /health reports
    finally:
        pipe.close()
