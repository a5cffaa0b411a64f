"""Checkpoints as the hub publishes them, where that differs from what transformers 5 saves.

transformers 5's ``save_pretrained`` writes LLaVA, LLaVA-NeXT and Gemma 3 with the legacy top-level
names (``language_model.model.*``, ``multi_modal_projector.*``, ``image_token_index``) but the
vision tower without the ``vision_model.`` level that the published checkpoints have
(llava-hf/llava-1.5-7b-hf, llava-hf/llava-v1.6-mistral-7b-hf, google/gemma-3-4b-it:
``vision_tower.vision_model.encoder.layers.0...``). Here each tiny checkpoint is rewritten with
the published names and must give transformers' greedy tokens (reference: transformers on the
folder it saved itself), text only and with an image.
"""

import json
import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

import tiny_gemma3 as tg
import tiny_models as tm
from seer import GenerationConfig, pipeline

N = 32
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)
TEXT = "please describe the red square and the blue circle in this picture in a few words"
BUILDERS = {"llava": tm.build_llava, "llava_next": tm.build_llava_next, "gemma3": tg.build_gemma3}


def published_copy(src: str, dst: str) -> str:
    """``src`` with the vision tower's tensors under ``vision_tower.vision_model.``."""
    shutil.copytree(src, dst)
    weights = os.path.join(dst, "model.safetensors")
    tensors = load_file(weights)
    assert not any(n.startswith("vision_tower.vision_model.") for n in tensors)
    renamed = {("vision_tower.vision_model." + n[len("vision_tower."):] if n.startswith("vision_tower.") else n): w
               for n, w in tensors.items()}
    save_file(renamed, weights, metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json")) as f:
        assert "image_token_index" in json.load(f)  # the published configs' key
    return dst


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def folders(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_" + request.param)
    saved = BUILDERS[request.param](str(root / "saved"))
    return saved, published_copy(saved, str(root / "published"))


@pytest.mark.parametrize("n_images", [0, 1])
def test_published_names_give_transformers_tokens(folders, n_images):
    saved, published = folders
    images = [tm.make_image(60, size=(48, 40))][:n_images]
    messages = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": TEXT}]}]
    ref = tm.hf_inputs(saved, messages, images)
    expected = tm.hf_greedy(saved, ref, max_new_tokens=N, ignore_eos=True)
    with pipeline(published) as pipe:
        r = pipe((TEXT, images) if images else TEXT, gen_config=GEN)
    assert r.input_token_len == ref["input_ids"].shape[1]
    assert len(set(expected)) >= 3 and r.token_ids == expected
