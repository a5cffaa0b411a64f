"""DeepSeek-VL (transformers layout, SigLIP + aligner + Llama): parity with transformers' generate
on the same tiny random checkpoint, token counts, and batching of different image sizes."""

import pytest

import tiny_deepseek_vl as tdv
import tiny_models as tm
from seer import GenerationConfig, pipeline

N = 32
TEXT = "describe this image in a few words"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tdv.build_deepseek_vl(str(tmp_path_factory.mktemp("tiny") / "deepseek_vl"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    with pipeline(model_dir) as p:
        yield p


def _images(*sizes):
    return [tm.make_image(50 + i, size=s) for i, s in enumerate(sizes)]


@pytest.mark.parametrize("sizes", [(), ((64, 48),), ((100, 40), (30, 70))], ids=["text", "one image", "two images"])
def test_greedy_parity_with_transformers(pipe, model_dir, sizes):
    images = _images(*sizes)
    messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": TEXT}]}]
    ref = tm.hf_inputs(model_dir, messages, images)
    expected = tm.hf_greedy(model_dir, ref, max_new_tokens=N, ignore_eos=True)
    r = pipe((TEXT, images) if images else TEXT, gen_config=GenerationConfig(max_new_tokens=N, ignore_eos=True))
    assert r.input_token_len == ref["input_ids"].shape[1]
    assert len(set(expected)) >= 3
    assert r.token_ids == expected


def test_image_tokens_equal_the_processor_count(pipe, model_dir):
    proc = tm.load_processor(model_dir)
    ids = proc(text="<image>", images=_images((90, 20)), add_special_tokens=False)["input_ids"][0]
    assert list(ids).count(pipe.family.image_token_id) == pipe.family.image_inputs(_images((90, 20))[0])[0] \
        == tdv.TOKENS_PER_IMAGE


def test_a_batch_mixing_images_equals_each_alone(pipe):
    prompts = [(TEXT, _images((64, 48))), TEXT, (TEXT, _images((100, 40), (30, 70))), (TEXT, _images((20, 20)))]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    alone = [pipe(p, gen_config=gen).token_ids for p in prompts]
    pipe.engine.runner.features.clear()
    assert [r.token_ids for r in pipe(prompts, gen_config=gen)] == alone
