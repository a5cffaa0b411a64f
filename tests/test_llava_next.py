"""LLaVA-NeXT (anyres) in transformers layout: parity with transformers, token counts, batching.

Reference: transformers' ``LlavaNextForConditionalGeneration`` on the same tiny random checkpoint,
with inputs built by its own ``LlavaNextProcessor``. Images of different sizes and aspect ratios
pick different tile grids and unpadded feature shapes.
"""

import pytest

import tiny_models as tm
from seer import GenerationConfig, pipeline

N = 32
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)
TEXT = "describe this image in a few words"
SIZES = [(120, 50), (40, 100), (64, 64), (200, 90), (30, 30)]  # (width, height)


@pytest.fixture(scope="module")
def pipe(tiny_llava_next):
    with pipeline(tiny_llava_next) as p:
        yield p


def _images(*which):
    return [tm.make_image(30 + i, size=SIZES[i]) for i in which]


@pytest.mark.parametrize("which", [(), (0,), (1, 3)], ids=["text", "one image", "two images"])
def test_greedy_parity_with_transformers(pipe, tiny_llava_next, which):
    images = _images(*which)
    messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": TEXT}]}]
    ref = tm.hf_inputs(tiny_llava_next, messages, images)
    expected = tm.hf_greedy(tiny_llava_next, ref, max_new_tokens=N, ignore_eos=True)
    r = pipe((TEXT, images) if images else TEXT, gen_config=GEN)
    assert r.input_token_len == ref["input_ids"].shape[1]
    assert len(set(expected)) >= 3
    assert r.token_ids == expected


def test_image_tokens_equal_the_processor_count(pipe, tiny_llava_next):
    proc = tm.load_processor(tiny_llava_next)
    image_id = pipe.family.image_token_id
    for i in range(len(SIZES)):
        img = _images(i)[0]
        ids = proc(text="<image>", images=[img], add_special_tokens=False)["input_ids"][0]
        n, _ = pipe.family.image_inputs(img)
        assert n == list(ids).count(image_id), SIZES[i]
    assert len({pipe.family.image_inputs(img)[0] for img in _images(0, 1, 2)}) == 3  # sizes matter


def test_a_batch_mixing_sizes_and_counts_equals_each_alone(pipe):
    prompts = [(TEXT, _images(0)), (TEXT, _images(1, 2)), TEXT, (TEXT, _images(3)), (TEXT, _images(4, 0))]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    alone = [pipe(p, gen_config=gen).token_ids for p in prompts]
    pipe.engine.runner.features.clear()  # encode them together this time
    batch = [r.token_ids for r in pipe(prompts, gen_config=gen)]
    assert batch == alone
