"""DeepSeek-VL, every layout it is published in; tiny random checkpoints (``tests/tiny_deepseek_vl.py``).

References:
- transformers layouts (``DeepseekVLForConditionalGeneration``, 1.3B; ``DeepseekVLHybridForConditionalGeneration``,
  7B's SigLIP + SAM): transformers' own models and processors on the same folder.
- original layout (``MultiModalityCausalLM``, 1.3B and 7B): written from a transformers model by the test
  helpers' own inverse mapping of the published names; seer's ``convert_to_transformers`` must give back
  exactly those tensors, and seer on the original folder must generate what transformers generates on the
  conversion, fed the pixels seer makes (transformers has no processor for the original layout); the prompt
  must be the one the original ``VLChatProcessor`` builds.

Greedy, 32 new tokens, eos ignored on both sides.
"""

import os

import pytest
import torch

import pipe_cache
import tiny_deepseek_vl as tdv
import tiny_models as tm
from seer import EngineConfig, GenerationConfig, VisionConfig, pipeline
from seer.messages import to_conversation
from seer.models import deepseek_vl_original as sdo

N = 32
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)
TEXT = "describe this image in a few words"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepseek_vl")
    out = {"hf": tdv.build_deepseek_vl(str(root / "hf")), "hybrid": tdv.build_deepseek_vl_hybrid(str(root / "hybrid"))}
    for kind, hybrid in (("orig", False), ("orig_hybrid", True)):
        out[kind] = tdv.build_original(str(root / kind), hybrid=hybrid)
        out[kind + "_converted"] = sdo.convert_to_transformers(out[kind], str(root / (kind + "_hf")))
    return out


_pipe, _close_pipes = pipe_cache.module_cache()


def _images(kind, n):
    sizes = [(100, 40), (30, 70), (64, 48)][:n]
    if kind == "orig_hybrid":  # 576 tokens an image: flat shapes would all look alike
        return [tdv.noise_image(50 + i, s) for i, s in enumerate(sizes)]
    return [tm.make_image(50 + i, size=s) for i, s in enumerate(sizes)]


def _messages(n):
    return [{"role": "user", "content": [{"type": "image"} for _ in range(n)] + [{"type": "text", "text": TEXT}]}]


def _prompt(images):
    return (TEXT, images) if images else TEXT


@pytest.mark.parametrize("n_images", [0, 1, 2])
@pytest.mark.parametrize("kind", ["hf", "hybrid"])
def test_parity_transformers_layouts(ckpts, kind, n_images):
    path = ckpts[kind]
    images = _images(kind, n_images)
    ref = tm.hf_inputs(path, _messages(n_images), images)
    expected = tm.hf_greedy(path, ref, max_new_tokens=N, ignore_eos=True)
    r = _pipe(path)(_prompt(images), gen_config=GEN)
    assert r.input_token_len == ref["input_ids"].shape[1]
    assert len(set(expected)) >= 3, "reference output too repetitive for a meaningful check"
    assert r.token_ids == expected


@pytest.mark.parametrize("kind", ["hybrid", "orig_hybrid"])
def test_hybrid_image_features_equal_transformers(ckpts, kind):
    """The SigLIP + SAM features seer's model makes, against transformers' ``get_image_features`` (on the
    conversion, for the original layout) for the same pixels."""
    pipe = _pipe(ckpts[kind])
    images = _images(kind, 2)
    pixels = [pipe.family.image_inputs(im)[1] for im in images]
    low, high = torch.stack([p[0] for p in pixels]), torch.stack([p[1] for p in pixels])
    if kind == "hybrid":  # seer's pixels are transformers' processor's
        out = tm.load_processor(ckpts[kind]).image_processor(images=images, return_tensors="pt")
        assert torch.equal(out["pixel_values"], low) and torch.equal(out["high_res_pixel_values"], high)
    reference = ckpts[kind + "_converted"] if kind == "orig_hybrid" else ckpts[kind]
    with torch.no_grad():
        ref = tm.load_hf_model(reference).model.get_image_features(low, high, return_dict=True).pooler_output
        ours = [f.cpu() for f in pipe.engine.runner.model.encode_images(pixels)]  # (from the GPU too)
    assert torch.allclose(torch.stack(ours), ref, atol=1e-4, rtol=1e-4)
    assert (ours[0] - ours[1]).abs().max() > 0.1  # the two images differ


@pytest.mark.parametrize("n_images", [0, 1, 2])
@pytest.mark.parametrize("kind", ["orig", "orig_hybrid"])
def test_parity_original_layout_with_transformers_on_the_conversion(ckpts, kind, n_images):
    pipe = _pipe(ckpts[kind])
    fam = pipe.family
    images = _images(kind, n_images)
    prompt = fam.encode(to_conversation(_prompt(images)))
    original = tdv.original_prompt(TEXT, n_images).replace("<image_placeholder>",
                                                            "<image_placeholder>" * fam.tokens_per_image)
    tok = fam.tokenizer
    assert prompt.token_ids == tok(original)["input_ids"]  # VLChatProcessor: tokenizer.encode(prompt)
    ref = {"input_ids": torch.tensor([prompt.token_ids])}
    ref["attention_mask"] = torch.ones_like(ref["input_ids"])
    if images:
        pixels = [fam.image_inputs(im)[1] for im in images]
        if kind == "orig_hybrid":
            ref["pixel_values"] = torch.stack([low for low, _ in pixels])
            ref["high_res_pixel_values"] = torch.stack([high for _, high in pixels])
        else:
            ref["pixel_values"] = torch.stack(pixels)
    expected = tm.hf_greedy(ckpts[kind + "_converted"], ref, max_new_tokens=N, ignore_eos=True)
    if kind == "orig" or not images:  # the hybrid's 576 image tokens: see its feature test
        assert len(set(expected)) >= 3, "reference output too repetitive for a meaningful check"
    assert pipe(_prompt(images), gen_config=GEN).token_ids == expected


@pytest.mark.parametrize("kind", ["orig", "orig_hybrid"])
def test_conversion_gives_back_the_exact_tensors(ckpts, kind):
    tm.assert_converted_tensors_equal(tdv.source_path(ckpts[kind]), ckpts[kind + "_converted"])


def test_original_image_processing(ckpts):
    """The original VLMImageProcessor's steps: long side to image_size (bicubic), centred on a square of
    the mean colour, /255, normalized; the hybrid's low-resolution branch is the full image resized
    (bilinear, antialiased) before the towers normalize each with their own mean and std."""
    import numpy as np
    from PIL import Image

    image = tm.make_image(3, size=(100, 40))
    proc = sdo.OriginalImageProcessor(ckpts["orig"], sdo.read_config_json(ckpts["orig"]))
    x = proc(image)
    side, h = tdv.ORIG_IMAGE_SIZE, int(40 / 100 * tdv.ORIG_IMAGE_SIZE)
    resized = torch.from_numpy(np.asarray(image.resize((side, h), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1))
    top = (side - h) // 2
    assert x.shape == (3, side, side)
    assert torch.allclose(x[:, top:top + h, :], resized / 255 * 2 - 1, atol=1e-6)
    assert torch.allclose(x[:, 0, 0], torch.full((3,), 127 / 255 * 2 - 1), atol=1e-6)  # the padding

    proc = sdo.OriginalImageProcessor(ckpts["orig_hybrid"], sdo.read_config_json(ckpts["orig_hybrid"]))
    low, high = proc(image)
    mean, std = (torch.tensor(v)[:, None, None] for v in (tdv.CLIP_MEAN, tdv.CLIP_STD))
    side = tdv.ORIG_HYBRID_LOW
    assert high.shape == (3, tdv.HYBRID_HIGH, tdv.HYBRID_HIGH) and low.shape == (3, side, side)
    full = high * std + mean  # do_normalize is False: the SAM tower normalized it
    expected = torch.nn.functional.interpolate(full[None], size=(side, side), mode="bilinear",
                                               antialias=True, align_corners=False)[0] * 2 - 1
    assert torch.allclose(low, expected, atol=1e-5)


@pytest.mark.parametrize("kind,tokens", [("hf", tdv.TOKENS_PER_IMAGE), ("hybrid", tdv.HYBRID_TOKENS),
                                         ("orig", tdv.ORIG_TOKENS), ("orig_hybrid", tdv.ORIG_HYBRID_TOKENS)])
def test_image_tokens_equal_the_processor_count(ckpts, kind, tokens):
    pipe = _pipe(ckpts[kind])
    image = _images(kind, 1)[0]
    assert pipe.family.image_inputs(image)[0] == tokens
    if kind in ("hf", "hybrid"):  # transformers' processor
        ids = tm.load_processor(ckpts[kind])(text="<image>", images=[image], add_special_tokens=False)["input_ids"][0]
        assert list(ids).count(pipe.family.image_token_id) == tokens
    else:  # the original processor_config.json's num_image_tokens
        assert sdo._processor_config(ckpts[kind])["num_image_tokens"] == tokens


def test_original_layout_errors(ckpts, tmp_path):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpts["orig"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vision_config"]["params"]["model_name"] = "eva_clip"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'eva_clip' is not supported; supported: siglip_large_patch16_384"):
        pipeline(str(bad))
    os.remove(bad / "preprocessor_config.json")
    cfg["vision_config"]["params"]["model_name"] = "siglip_large_patch16_384"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no preprocessor_config.json"):
        pipeline(str(bad))


@pytest.mark.parametrize("kind", ["hf", "hybrid", "orig_hybrid"])
def test_a_batch_mixing_images_equals_each_alone(ckpts, kind):
    imgs = _images(kind, 3)
    reqs = [(TEXT, imgs[:1]), TEXT, (TEXT, imgs[1:3]), ("and this one?", imgs[2:3])]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    with pipeline(ckpts[kind], EngineConfig(enable_prefix_caching=False), VisionConfig(max_batch_size=1)) as alone:
        baseline = [alone(r, gen_config=gen).token_ids for r in reqs]
    pipe_cache.check_batch_invariance(ckpts[kind], reqs, gen, baseline)
