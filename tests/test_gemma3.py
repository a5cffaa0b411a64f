"""Gemma 3 (transformers layout): greedy parity with transformers' generate on tiny random
checkpoints — text-only ``Gemma3ForCausalLM`` and ``Gemma3ForConditionalGeneration`` with zero,
one and two images — with prompts longer than the 12-token local window, so sliding and global
layers (each with its own rope) and the bidirectional attention inside images all matter.
"""

import pytest
import torch

import tiny_gemma3 as tg
import tiny_models as tm
from seer import EngineConfig, GenerationConfig, pipeline

N = 32
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)
TEXT = "please describe the red square and the blue circle in this picture in a few words"


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return tg.build_gemma3_text(str(tmp_path_factory.mktemp("tiny") / "gemma3_text"))


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return tg.build_gemma3(str(tmp_path_factory.mktemp("tiny") / "gemma3"))


@pytest.fixture(scope="module")
def vlm(vlm_dir):
    with pipeline(vlm_dir) as p:
        yield p


def _messages(n_images):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": TEXT}]}]


def test_text_model_parity(text_dir):
    ref = tm.hf_inputs(text_dir, _messages(0))
    expected = tm.hf_greedy(text_dir, ref, max_new_tokens=N, ignore_eos=True)
    with pipeline(text_dir) as pipe:
        r = pipe(TEXT, gen_config=GEN)
    assert r.input_token_len == ref["input_ids"].shape[1] > tg.WINDOW
    assert len(set(expected)) >= 3 and r.token_ids == expected


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_vlm_parity(vlm, vlm_dir, n_images):
    images = [tm.make_image(60 + i, size=(48 + 20 * i, 40)) for i in range(n_images)]
    ref = tm.hf_inputs(vlm_dir, _messages(n_images), images)
    expected = tm.hf_greedy(vlm_dir, ref, max_new_tokens=N, ignore_eos=True)
    r = vlm((TEXT, images) if images else TEXT, gen_config=GEN)
    assert r.input_token_len == ref["input_ids"].shape[1]
    assert len(set(expected)) >= 3 and r.token_ids == expected


def test_image_tokens_equal_the_processor_count(vlm, vlm_dir):
    proc = tm.load_processor(vlm_dir)
    ids = proc(text="<start_of_image>", images=[tm.make_image(1)], add_special_tokens=False)["input_ids"][0]
    assert list(ids).count(vlm.family.image_token_id) == tg.MM_TOKENS
    inputs = vlm.family.encode([{"role": "user", "content": [{"type": "image", "image": tm.make_image(1)},
                                                             {"type": "text", "text": "hi"}]}])
    assert [(it.length, it.bidirectional) for it in inputs.mm_items] == [(tg.MM_TOKENS, True)]


FIRST_LOGITS = GenerationConfig(max_new_tokens=1, output_logits="generation")


def test_image_tokens_attend_both_ways_as_in_transformers(vlm, vlm_dir):
    """Greedy tokens of a tiny model barely feel it, so compare the logits after the prompt:
    equal to transformers' with its image mask (token_type_ids), and clearly not equal to
    transformers' purely causal run."""
    images = [tm.make_image(60, size=(48, 40))]
    ref = tm.hf_inputs(vlm_dir, _messages(1), images)
    model = tm.load_hf_model(vlm_dir)
    with torch.no_grad():
        both_ways = model(**ref).logits[0, -1]
        causal = model(**{k: v for k, v in ref.items() if k != "token_type_ids"}).logits[0, -1]
    ours = vlm((TEXT, images), gen_config=FIRST_LOGITS).logits[0]
    assert torch.allclose(ours, both_ways, atol=1e-4)
    assert (ours - causal).abs().max() > 1e-2


def test_chunked_prefill_never_splits_an_image(vlm, vlm_dir):
    """A 3-token prefill budget would cut the 4-token images; the scheduler keeps each image whole,
    so the logits and tokens equal the unchunked run's."""
    images = [tm.make_image(70), tm.make_image(71, size=(30, 60))]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    want_tokens = vlm((TEXT, images), gen_config=gen).token_ids
    want_logits = vlm((TEXT, images), gen_config=FIRST_LOGITS).logits[0]
    with pipeline(vlm_dir, EngineConfig(max_prefill_token_num=3, enable_prefix_caching=False)) as pipe:
        assert pipe((TEXT, images), gen_config=gen).token_ids == want_tokens
        assert torch.allclose(pipe((TEXT, images), gen_config=FIRST_LOGITS).logits[0], want_logits, atol=1e-5)


def test_a_batch_equals_each_alone(vlm):
    prompts = [(TEXT, [tm.make_image(80)]), TEXT, (TEXT, [tm.make_image(81), tm.make_image(82)])]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    alone = [vlm(p, gen_config=gen).token_ids for p in prompts]
    vlm.engine.runner.features.clear()
    assert [r.token_ids for r in vlm(prompts, gen_config=gen)] == alone
