"""Folders written by the installed transformers' own ``save_pretrained`` load in seer.

transformers 5 writes a processor's image settings inside ``processor_config.json`` (key
``image_processor``) and no ``preprocessor_config.json``; older checkpoints (and the builders
in tests/) have the separate file. For every family with a transformers layout, the tiny
checkpoint is loaded into transformers' model and processor classes and saved again with their
``save_pretrained`` (no JSON written here); the saved folder must answer exactly as the
builder's folder, whose parity with transformers each family's own tests check (LLaVA's is
checked against transformers here too). Video settings in either layout are checked on Qwen2-VL.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import tiny_deepseek_vl as tds
import tiny_gemma3 as tg
import tiny_idefics3 as ti
import tiny_internvl as tiv
import tiny_models as tm
import tiny_qwen_vl as tq
from seer import GenerationConfig, pipeline

GEN = GenerationConfig(max_new_tokens=12, ignore_eos=True)


def _auto_processor(path: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


# family -> (builder of the tiny checkpoint, its transformers processor)
FAMILIES = {
    "llava": (tm.build_llava, _auto_processor),
    "llava_next": (tm.build_llava_next, _auto_processor),
    "gemma3": (tg.build_gemma3, _auto_processor),
    "deepseek_vl": (tds.build_deepseek_vl, _auto_processor),
    "deepseek_vl_hybrid": (tds.build_deepseek_vl_hybrid, _auto_processor),
    "idefics3": (lambda p: ti.build_idefics3(p, "idefics3"), ti.hf_processor),
    "smolvlm": (lambda p: ti.build_idefics3(p, "smolvlm"), ti.hf_processor),
    "internvl": (tiv.build_hf, tiv.hf_processor),
    "qwen2_vl": (lambda p: tq.build_qwen_vl(p, "qwen2_vl"), tq.hf_processor),
    "qwen2_5_vl": (lambda p: tq.build_qwen_vl(p, "qwen2_5_vl"), tq.hf_processor),
}


def resave(src: str, dst: str, processor) -> str:
    """``src`` loaded into transformers' model and processor and saved to ``dst`` by them."""
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32).save_pretrained(dst)
    with tm.empty_video_slot():
        tm.save_processor(processor(src), dst)
    return dst


def _answer(path: str, prompt) -> list[int]:
    with pipeline(path) as pipe:
        return pipe(prompt, gen_config=GEN).token_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_a_folder_saved_by_transformers_answers_as_the_original(family, tmp_path):
    build, processor = FAMILIES[family]
    src = build(str(tmp_path / "src"))
    dst = resave(src, str(tmp_path / "saved"), processor)
    assert not os.path.exists(os.path.join(dst, "preprocessor_config.json"))
    with open(os.path.join(dst, "processor_config.json")) as f:
        assert "image_processor" in json.load(f)
    prompt = ("describe the picture", [tm.make_image(5, (56, 84))])
    got = _answer(dst, prompt)
    assert got == _answer(src, prompt)
    if family == "llava":  # and straight against transformers, its processor read from the saved folder
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt[0]}]}]
        want = tm.hf_greedy(dst, tm.hf_inputs(dst, msgs, prompt[1]), max_new_tokens=GEN.max_new_tokens,
                            ignore_eos=True)
        assert got == want


@pytest.mark.parametrize("layout", ["video_preprocessor_config.json", "processor_config.json"])
def test_qwen2_vl_video_settings_in_either_layout(layout, tmp_path):
    """The video processor's pixel bounds from its own file or nested in processor_config.json
    (transformers cannot build that processor without torchvision, so its entry is added here)."""
    from seer.models.qwen2_vl import _video_bounds

    dst = resave(tq.build_qwen_vl(str(tmp_path / "src")), str(tmp_path / "saved"), tq.hf_processor)
    image_bounds = (3136, 12845056)
    assert _video_bounds(dst, image_bounds) == image_bounds  # no video settings: the images'
    video = {"min_pixels": 4 * 784, "max_pixels": 16 * 784}
    file = os.path.join(dst, layout)
    if layout == "processor_config.json":
        with open(file) as f:
            video = {**json.load(f), "video_processor": video}
    with open(file, "w") as f:
        json.dump(video, f)
    assert _video_bounds(dst, image_bounds) == (4 * 784, 16 * 784)
