"""Greedy token parity with transformers' ``generate`` for every family of the engine issue.

Reference: transformers itself, on the same tiny random checkpoint (for InternLM2, whose
published layout has no transformers class, the reference is the transformers Llama twin
that the checkpoint was packed from). 32 new tokens, eos ignored on both sides.
"""

import pytest

import pipe_cache
import tiny_models as tm
from seer import GenerationConfig, pipeline

N = 32
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)
TEXT = "describe this image in a few words"


def _messages(n_images: int):
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": TEXT}]
    return [{"role": "user", "content": content}]


def _check(pipe, ref_dir, n_images):
    images = [tm.make_image(10 + i) for i in range(n_images)]
    ref_inputs = tm.hf_inputs(ref_dir, _messages(n_images), images)
    expected = tm.hf_greedy(ref_dir, ref_inputs, max_new_tokens=N, ignore_eos=True)
    r = pipe((TEXT, images) if images else TEXT, gen_config=GEN)
    assert r.input_token_len == ref_inputs["input_ids"].shape[1]
    assert len(set(expected)) >= 3, "reference output too repetitive for a meaningful check"
    assert r.token_ids == expected
    assert r.finish_reason == "length" and r.generate_token_len == N


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_mistral", "tiny_qwen2", "tiny_qwen3"])
def test_text_families(arch, request):
    path = request.getfixturevalue(arch)
    with pipeline(path) as pipe:
        _check(pipe, path, 0)


def test_internlm2_published_layout(tiny_internlm2):
    path, llama_ref = tiny_internlm2
    with pipeline(path) as pipe:
        _check(pipe, llama_ref, 0)


@pytest.mark.parametrize("arch", ["tiny_llava", "tiny_llava_mistral"])
@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_llava(arch, n_images, request):
    path = request.getfixturevalue(arch)
    _check(_pipe(path), path, n_images)


_pipe, _close_pipes = pipe_cache.module_cache()


def test_mistral_sliding_window(tiny_mistral, tmp_path):
    """A window shorter than the context: the masks must follow transformers' sliding window."""
    import json
    import shutil

    path = str(tmp_path / "mistral_window")
    shutil.copytree(tiny_mistral, path)
    with open(f"{path}/config.json") as f:
        cfg = json.load(f)
    cfg["sliding_window"] = 8
    with open(f"{path}/config.json", "w") as f:
        json.dump(cfg, f)
    msgs = [{"role": "user", "content": "describe a big red circle on the left of the picture please"}]
    inputs = tm.hf_inputs(path, msgs, [])
    assert inputs["input_ids"].shape[1] > 2 * 8
    expected = tm.hf_greedy(path, inputs, max_new_tokens=N, ignore_eos=True)
    with pipeline(path) as pipe:
        assert pipe.engine.runner.sliding_window == 8
        got = pipe(msgs, gen_config=GEN).token_ids
    with pipeline(tiny_mistral) as full:
        unwindowed = full(msgs, gen_config=GEN).token_ids
    assert got == expected
    assert got != unwindowed  # the window really changed the computation
