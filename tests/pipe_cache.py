"""Pipelines a test module opens once per (model, options) and closes when the module ends.

    _pipe, _close_pipes = pipe_cache.module_cache()   # _close_pipes: an autouse module fixture
    pipe = _pipe(path, vision_config=...)
"""

import pytest

from seer import pipeline


def module_cache():
    pipes: dict = {}

    def get(path, *args, **kwargs):
        key = (path, repr(args), repr(sorted(kwargs.items())))
        if key not in pipes:
            pipes[key] = pipeline(path, *args, **kwargs)
        return pipes[key]

    @pytest.fixture(scope="module", autouse=True)
    def close_all():
        yield
        for p in pipes.values():
            p.close()
        pipes.clear()

    return get, close_all


def check_batch_invariance(path, reqs, gen, baseline, preempt_blocks=None):
    """``baseline`` (each request's tokens alone) comes out again for ``reqs`` batched with the
    vision encoder taking up to 3 images a forward, with chunked prefill whose chunks cut through
    images, from a warm prefix cache, and (``preempt_blocks``: a pool that small, of 4-token
    blocks) through preemption and recompute."""
    from seer import EngineConfig, VisionConfig

    with pipeline(path, EngineConfig(enable_prefix_caching=False), VisionConfig(max_batch_size=3)) as pipe:
        assert [r.token_ids for r in pipe(reqs, gen_config=gen)] == baseline
    with pipeline(path, EngineConfig(block_size=4, max_prefill_token_num=7)) as pipe:
        assert [r.token_ids for r in pipe(reqs, gen_config=gen)] == baseline
        hits = pipe.engine.blocks.prefix_hits
        again = pipe(reqs, gen_config=gen)
        assert [r.token_ids for r in again] == baseline
        assert pipe.engine.blocks.prefix_hits > hits
        assert all(r.num_cached_tokens > 0 for r in again)
    if preempt_blocks:
        with pipeline(path, EngineConfig(num_gpu_blocks=preempt_blocks, block_size=4)) as pipe:
            assert [r.token_ids for r in pipe(reqs, gen_config=gen)] == baseline
            assert pipe.engine.scheduler.num_preemptions > 0
