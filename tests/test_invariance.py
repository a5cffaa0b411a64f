"""A request's greedy tokens do not depend on what else runs, nor on how the engine runs it.

16 requests of different lengths, with zero, one or two images (some images shared, some
prompts sharing long prefixes), are run: one at a time with prefix caching off (the
baseline), all together, together again with a warm prefix cache, with chunked prefill
forced by a tiny ``max_prefill_token_num``, and with a KV pool so small that preemption
must happen.
"""

import pytest

import tiny_models as tm
from seer import EngineConfig, GenerationConfig, pipeline
from seer.vl.constants import IMAGE_TOKEN

GEN = GenerationConfig(max_new_tokens=24, ignore_eos=True)
SYSTEM = "You are looking at a picture of shapes and colours. Answer briefly and precisely. "


def _requests():
    imgs = [tm.make_image(s) for s in range(5)]
    words = ["red", "blue", "circle", "square", "small", "big", "left", "right"]
    reqs = []
    for i in range(16):
        text = SYSTEM * (i % 3) + " ".join(words[: 1 + i % 8]) + f" question {i}?"
        images = [[], [imgs[i % 5]], [imgs[i % 5], imgs[(i + 1) % 5]]][i % 3]
        reqs.append((text, images) if images else text)
    return reqs


@pytest.fixture(scope="module")
def baseline(tiny_llava):
    with pipeline(tiny_llava, EngineConfig(enable_prefix_caching=False)) as pipe:
        return [pipe(r, gen_config=GEN).token_ids for r in _requests()]


def _batch(pipe):
    return [r.token_ids for r in pipe(_requests(), gen_config=GEN)]


def test_batch_equals_alone(tiny_llava, baseline):
    with pipeline(tiny_llava, EngineConfig(enable_prefix_caching=False)) as pipe:
        assert _batch(pipe) == baseline


def test_prefix_cache_on_equals_off(tiny_llava, baseline):
    with pipeline(tiny_llava, EngineConfig(enable_prefix_caching=True, block_size=4)) as pipe:
        assert _batch(pipe) == baseline
        hits_before = pipe.engine.blocks.prefix_hits
        second = pipe(_requests(), gen_config=GEN)
        assert [r.token_ids for r in second] == baseline
        assert pipe.engine.blocks.prefix_hits > hits_before
        assert all(r.num_cached_tokens > 0 for r in second)


def test_chunked_prefill(tiny_llava, baseline):
    with pipeline(tiny_llava, EngineConfig(max_prefill_token_num=7, block_size=4)) as pipe:
        assert _batch(pipe) == baseline


def test_preemption(tiny_llava, baseline):
    # 40 blocks of 4 tokens hold about two of these requests at once.
    with pipeline(tiny_llava, EngineConfig(num_gpu_blocks=40, block_size=4)) as pipe:
        assert _batch(pipe) == baseline
        assert pipe.engine.scheduler.num_preemptions > 0


def test_same_text_different_images_do_not_share(tiny_llava):
    text = SYSTEM * 2 + "what is in the picture?"
    a, b = tm.make_image(1), tm.make_image(2)
    with pipeline(tiny_llava, EngineConfig(enable_prefix_caching=False)) as ref:
        want_b = ref((text, b), gen_config=GEN).token_ids
    with pipeline(tiny_llava, EngineConfig(block_size=4)) as pipe:
        ra = pipe((text, a), gen_config=GEN)
        rb = pipe((text, b), gen_config=GEN)
        assert rb.token_ids == want_b
        assert rb.token_ids != ra.token_ids
        # Only the blocks before the image may be shared; the image comes first in this prompt.
        first_image_token = pipe.family.encode(
            __import__("seer.messages", fromlist=["to_conversation"]).to_conversation((text, b))
        ).mm_items[0].offset
        assert rb.num_cached_tokens <= first_image_token
        # The very same image again: the vision encoder is not run a second time.
        misses = pipe.engine.runner.feature_misses
        rc = pipe((text, b), gen_config=GEN)
        assert rc.token_ids == want_b
        assert pipe.engine.runner.feature_misses == misses
        assert rc.num_cached_tokens > first_image_token
        # The same image after a different text: the prefix cache cannot help, the feature cache does.
        rd = pipe((f"something else entirely {IMAGE_TOKEN}", b), gen_config=GEN)
        assert rd.num_cached_tokens < rd.input_token_len - 16
        assert pipe.engine.runner.feature_misses == misses
        assert pipe.engine.runner.feature_hits > 0
