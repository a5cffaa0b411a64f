"""InternVL (1.5 / 2 / 2.5 / 3): both layouts, parity with transformers, tiling, prompts, batching.

Reference: transformers' own ``InternVLForConditionalGeneration`` with its ``InternVLProcessor``
(over ``GotOcr2ImageProcessorPil``) on tiny random checkpoints (``tests/tiny_internvl.py``):

- transformers layout: the checkpoint as transformers 5.23's ``save_pretrained`` writes it ("saved")
  and with the in-model tensor names ("internal"); the reference runs on "saved".
- original layout (``InternVLChatModel``): written from a transformers model by the test helpers'
  own inverse mapping; seer's ``convert_to_transformers`` must give back exactly the tensors it came
  from, and seer on the original folder must generate what transformers generates on the converted
  folder (whose prompt must also be the one the original ``chat`` builds).

Greedy, 32 new tokens, eos ignored on both sides.
"""

import os

import pytest
import torch
from safetensors.torch import load_file

import tiny_internvl as iv
import pipe_cache
import tiny_models as tm
from seer import EngineConfig, GenerationConfig, VisionConfig, pipeline
from seer.messages import to_conversation
from seer.models import internvl as siv

N = 32
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)
TEXT = "describe this image in a few words"
# (width, height): 1 tile; 2x1 tiles + thumbnail; 1x2 + thumbnail; 2x2 + thumbnail
SIZES = [(112, 56), (60, 130), (56, 56), (170, 120)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("internvl")
    saved = iv.build_hf(str(root / "hf"))
    out = {"saved": saved, "internal": iv.to_internal(saved, str(root / "hf_internal"))}
    for lm in iv.ORIGINAL_KINDS:
        orig = iv.build_original(str(root / f"orig_{lm}"), lm)
        out[lm] = orig
        out[lm + "_converted"] = siv.convert_to_transformers(orig, str(root / f"orig_{lm}_hf"))
    return out


_pipe, _close_pipes = pipe_cache.module_cache()


def _images(n):
    return [tm.make_image(20 + i, SIZES[i]) for i in range(n)]


def _prompt(images):
    return (TEXT, images) if images else TEXT


# ---- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_images", [0, 1, 2])
@pytest.mark.parametrize("layout", ["saved", "internal"])
def test_parity_transformers_layout(ckpts, layout, n_images):
    images = _images(n_images)
    inputs = iv.hf_inputs(ckpts["saved"], iv.messages(TEXT, n_images), images)
    expected = iv.hf_greedy(ckpts["saved"], inputs, N)
    pipe = _pipe(ckpts[layout])
    prompt = pipe.family.encode(to_conversation(_prompt(images)))
    assert prompt.token_ids == inputs["input_ids"][0].tolist()
    assert len(set(expected)) >= 5, "reference output too repetitive for a meaningful check"
    r = pipe(_prompt(images), gen_config=GEN)
    assert r.token_ids == expected
    assert r.finish_reason == "length" and r.generate_token_len == N


@pytest.mark.parametrize("n_images", [0, 1, 2])
@pytest.mark.parametrize("lm", list(iv.ORIGINAL_KINDS))
def test_parity_original_layout_with_transformers_on_the_conversion(ckpts, lm, n_images):
    """seer on the original folder == transformers on seer's conversion of it (its processor and chat
    template), and the prompt is the one the original ``InternVLChatModel.chat`` builds."""
    images = _images(n_images)
    converted = ckpts[lm + "_converted"]
    inputs = iv.hf_inputs(converted, iv.messages(TEXT, n_images), images)
    expected = iv.hf_greedy(converted, inputs, N)
    pipe = _pipe(ckpts[lm])
    fam = pipe.family
    prompt = fam.encode(to_conversation(_prompt(images)))
    assert prompt.token_ids == inputs["input_ids"][0].tolist()
    template = iv.ORIGINAL_KINDS[lm][1]
    tiles = [fam.num_tiles(*im.size) for im in images]
    original = iv.original_prompt(template, TEXT, tiles, iv.TOKENS_PER_TILE)
    assert prompt.token_ids == fam.tokenizer(original)["input_ids"]
    assert len(set(expected)) >= 5, "reference output too repetitive for a meaningful check"
    r = pipe(_prompt(images), gen_config=GEN)
    assert r.token_ids == expected


@pytest.mark.parametrize("lm", list(iv.ORIGINAL_KINDS))
def test_conversion_gives_back_the_exact_tensors(ckpts, lm):
    tm.assert_converted_tensors_equal(iv.source_path(ckpts[lm]), ckpts[lm + "_converted"])


def test_tied_embeddings(tmp_path):
    """A checkpoint without an LM head (tie_word_embeddings, as save_pretrained then writes it)."""
    from transformers import InternVLForConditionalGeneration

    path = iv.build_hf(str(tmp_path / "src"), seed=1)
    model = InternVLForConditionalGeneration.from_pretrained(path).eval()
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.language_model.embed_tokens.weight
    model.save_pretrained(str(tmp_path / "tied"))
    tied = str(tmp_path / "tied")
    for f in os.listdir(path):
        if not os.path.exists(os.path.join(tied, f)):
            os.link(os.path.join(path, f), os.path.join(tied, f))
    assert not any("lm_head" in k for k in load_file(os.path.join(tied, "model.safetensors")))
    images = _images(1)
    inputs = iv.hf_inputs(tied, iv.messages(TEXT, 1), images)
    expected = iv.hf_greedy(tied, inputs, N)
    with pipeline(tied) as pipe:
        assert pipe(_prompt(images), gen_config=GEN).token_ids == expected


# ---- tiling and image tokens -------------------------------------------------------------------

_TILING_SIZES = [(56, 56), (112, 56), (56, 112), (170, 120), (300, 40), (40, 300), (57, 91), (20, 30),
                 (140, 70), (70, 140), (200, 199), (112, 112), (168, 56), (1, 1), (500, 125)]


@pytest.mark.parametrize("max_tiles", [1, 4, 12])
def test_own_tiling_matches_transformers_image_processor(max_tiles):
    """``dynamic_preprocess`` + ``tiles_to_pixels`` (the original layout's path) == transformers'
    ``GotOcr2ImageProcessorPil`` with ``crop_to_patches``: same grids, bit-identical pixels."""
    from transformers import GotOcr2ImageProcessorPil
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    ip = GotOcr2ImageProcessorPil(size={"height": iv.TILE, "width": iv.TILE}, image_mean=iv.IMAGENET_MEAN,
                                  image_std=iv.IMAGENET_STD, max_patches=max_tiles, min_patches=1)
    for i, (w, h) in enumerate(_TILING_SIZES):
        assert siv.tile_grid(w, h, iv.TILE, 1, max_tiles) == get_optimal_tiled_canvas((h, w), (iv.TILE, iv.TILE), 1,
                                                                                     max_tiles)
        image = tm.make_image(50 + i, (w, h))
        want = ip(images=[image], crop_to_patches=True, return_tensors="pt")["pixel_values"]
        got = siv.tiles_to_pixels(siv.dynamic_preprocess(image, iv.TILE, 1, max_tiles, True))
        assert got.shape == want.shape and torch.equal(got, want), (w, h)
        assert got.shape[0] == siv.num_tiles(w, h, iv.TILE, 1, max_tiles, True)


@pytest.mark.parametrize("which", ["saved", "qwen2"])
def test_image_tokens_equal_the_processor_count(ckpts, which):
    fam = _pipe(ckpts[which]).family
    ref_dir = ckpts["saved"] if which == "saved" else ckpts["qwen2_converted"]
    proc = iv.hf_processor(ref_dir)
    for i, size in enumerate(_TILING_SIZES):
        image = tm.make_image(70 + i, size)
        n, tiles = fam.image_inputs(image)
        ref = iv.hf_inputs(ref_dir, iv.messages("x", 1), [image])
        assert n == int((ref["input_ids"] == proc.image_token_id).sum())
        assert n == tiles.shape[0] * iv.TOKENS_PER_TILE  # the published formula: 256 * tiles at 448 px
        assert tiles.shape[0] == fam.num_tiles(*size)
        assert torch.equal(tiles.float(), ref["pixel_values"])
        ids = ref["input_ids"][0].tolist()  # the processor's run: <img>, n image tokens, </img>
        first = ids.index(proc.image_token_id)
        assert ids[first - 1] == fam.img_start_id and ids[first + n] == fam.img_end_id
        prompt = fam.encode(to_conversation(("x", [image])))
        start = prompt.token_ids.index(fam.img_start_id)
        assert prompt.token_ids[start + 1 + n] == fam.img_end_id and prompt.mm_items[0].offset == start + 1


@pytest.mark.parametrize("which", ["saved", "qwen2"])
def test_max_dynamic_patch_per_engine_and_per_image(ckpts, which):
    """LMDeploy's ``max_dynamic_patch``: VisionConfig's over the checkpoint's, an image part's over
    both; each gives the tiles (and tokens) transformers' processor gives with that ``max_patches``."""
    ref_dir = ckpts["saved"] if which == "saved" else ckpts["qwen2_converted"]
    image = tm.make_image(5, (300, 100))  # wide: 3x1 tiles + thumbnail when 3 or more are allowed
    conv = lambda mdp=None: to_conversation([{"role": "user", "content": [  # noqa: E731
        {"type": "image_url", "image_url": {"url": image, **({"max_dynamic_patch": mdp} if mdp else {})}},
        {"type": "text", "text": "x"}]}])

    def n_tokens(prompt):
        return sum(m.length for m in prompt.mm_items)

    def reference(max_patches):
        proc = iv.hf_processor(ref_dir)
        proc.image_processor.max_patches = max_patches
        ref = proc(text=proc.apply_chat_template(iv.messages("x", 1), add_generation_prompt=True),
                   images=[image], return_tensors="pt")
        return int((ref["input_ids"] == proc.image_token_id).sum()), ref["pixel_values"]

    default = _pipe(ckpts[which]).family
    assert n_tokens(default.encode(conv())) == reference(iv.MAX_TILES)[0]
    with pipeline(ckpts[which], vision_config=VisionConfig(max_dynamic_patch=2)) as pipe:
        fam = pipe.family
        for mdp, expect in ((None, 2), (1, 1), (6, 6)):
            prompt = fam.encode(conv(mdp))
            n, pixels = reference(expect)
            assert n_tokens(prompt) == n
            assert torch.equal(prompt.mm_items[0].data.float(), pixels)
        # one image tiled two ways is two inputs: a batch of both gives each its own answer
        gen = GenerationConfig(max_new_tokens=8, ignore_eos=True)
        both = pipe([conv(1), conv(6)], gen_config=gen)
        assert [r.token_ids for r in both] == [pipe(c, gen_config=gen).token_ids for c in (conv(1), conv(6))]
    with pytest.raises(ValueError, match="max_dynamic_patch"):
        VisionConfig(max_dynamic_patch=0)
    with pytest.raises(ValueError, match="max_dynamic_patch"):
        default.encode(conv(-3))


def test_pixel_shuffle_matches_transformers_and_v1_is_transposed():
    from transformers.models.internvl.modeling_internvl import InternVLModel

    x = torch.randn(3, 8, 8, 5)
    v2 = siv.pixel_shuffle(x, 0.5, "v2")
    assert v2.shape == (3, 4, 4, 20)
    assert torch.equal(v2, InternVLModel.pixel_shuffle(None, x, 0.5))
    assert torch.equal(siv.pixel_shuffle(x, 0.5, "v1"), v2.permute(0, 2, 1, 3))


# ---- prompts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(iv.CONV_TEMPLATES))
def test_named_templates_render_as_the_original_conversation_templates(name):
    """seer's template for each ``template`` name == the original ``Conversation.get_prompt``."""
    t = siv.original_template(name)
    turns = ["what is this?", "a cat.", "and this?"]
    conv = [{"role": "user" if i % 2 == 0 else "assistant", "content": [{"type": "text", "text": m}]}
            for i, m in enumerate(turns)]
    assert t.render(conv, "<IMG_CONTEXT>") == iv.conv_prompt(name, turns + [None])
    system = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]
    assert t.render(system + conv, "<IMG_CONTEXT>") == iv.conv_prompt(name, turns + [None], system="Be brief.")


def test_the_named_template_wins_over_the_tokenizers(ckpts):
    """The original folder's tokenizer ships a plain ChatML template; ``template`` decides."""
    fam = _pipe(ckpts["internlm2"]).family
    assert fam.chat_template.name == "internlm2-chat"
    assert fam.tokenizer.chat_template == tm.CHATML_CHAT_TEMPLATE
    assert fam.tokenizer.convert_tokens_to_ids("<|im_end|>") in fam.eos_token_ids
    from seer import ChatTemplateConfig

    custom = _pipe(ckpts["internlm2"], chat_template_config=ChatTemplateConfig(model_name="internvl2_5"))
    assert custom.family.chat_template.name == "internvl2_5"


def test_placeholders(ckpts):
    fam = _pipe(ckpts["saved"]).family
    with pytest.raises(ValueError, match="placeholder"):
        fam._expand_images(fam.tokenizer("a <IMG_CONTEXT> b")["input_ids"], [])
    image = _images(1)
    bare = fam._expand_images(fam.tokenizer("a <IMG_CONTEXT> b")["input_ids"], image)
    wrapped = fam._expand_images(fam.tokenizer("a <img><IMG_CONTEXT></img> b")["input_ids"], image)
    assert bare.token_ids == wrapped.token_ids  # <img>/</img> already there are not doubled
    assert bare.token_ids.count(fam.img_start_id) == bare.token_ids.count(fam.img_end_id) == 1


def test_precomputed_image_features(ckpts):
    """Features passed as a tensor (as ``encode_images`` gives them) skip the tower, same tokens."""
    pipe = _pipe(ckpts["qwen2"])
    images = _images(2)
    with torch.no_grad():
        feats = pipe.family.model.encode_images([pipe.family.image_inputs(im)[1] for im in images])
    want = pipe(_prompt(images), gen_config=GEN).token_ids
    assert pipe(_prompt([feats[0], images[1]]), gen_config=GEN).token_ids == want
    assert pipe(_prompt(feats), gen_config=GEN).token_ids == want


def test_pixel_shuffle_v1_checkpoints(ckpts, tmp_path):
    """InternVL 1.5-era ``ps_version: v1`` leaves each tile's token grid transposed; transformers cannot
    express it, so the conversion refuses it."""
    import json
    import shutil

    model = _pipe(ckpts["qwen2"]).family.model
    fam = _pipe(ckpts["qwen2"]).family
    tiles = fam.image_inputs(_images(2)[1])[1].to(fam.device, fam.dtype)
    with torch.no_grad():
        v2 = model.image_features(tiles)
        model.ps_version = "v1"
        try:
            v1 = model.image_features(tiles)
        finally:
            model.ps_version = "v2"
    side = int(v2.shape[1] ** 0.5)
    grid = (v2.shape[0], side, side, v2.shape[-1])
    assert not torch.equal(v1, v2)
    assert torch.equal(v1.view(grid), v2.view(grid).transpose(1, 2))
    src = tmp_path / "v1"
    shutil.copytree(ckpts["qwen2"], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["ps_version"] = "v1"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="ps_version"):
        siv.convert_to_transformers(str(src), str(tmp_path / "v1_hf"))
    with pipeline(str(src)) as pipe:
        assert pipe.family.model.ps_version == "v1"
        assert pipe(_prompt(_images(1)), gen_config=GenerationConfig(max_new_tokens=2)).generate_token_len == 2


def test_vllm_shaped_raw_prompt(ckpts):
    """``LLM.generate`` with a raw prompt carrying ``<IMG_CONTEXT>`` per image, as transformers'
    processor takes it: the same tokens as the chat path."""
    from seer import LLM, SamplingParams

    path = ckpts["saved"]
    images = _images(2)
    want = _pipe(path)(_prompt(images), gen_config=GEN).token_ids
    raw = iv.hf_processor(path).tokenizer.apply_chat_template(iv.messages(TEXT, 2), add_generation_prompt=True,
                                                              tokenize=False)
    llm = LLM(model=path)
    try:
        out = llm.generate({"prompt": raw, "multi_modal_data": {"image": images}},
                           SamplingParams(temperature=0, max_tokens=N, ignore_eos=True))
    finally:
        llm.close()
    assert out[0].outputs[0].token_ids == want


# ---- batching and caching ----------------------------------------------------------------------

def _mixed_requests():
    imgs = [tm.make_image(90 + i, s) for i, s in enumerate(SIZES)]
    return [TEXT, ("what is here?", imgs[3:4]), (TEXT, imgs[0:2]), ("compare", [imgs[2], imgs[3], imgs[1]]),
            ("and this one?", imgs[1:2])]


@pytest.mark.parametrize("which", ["saved", "internlm2"])
def test_batch_mixing_sizes_and_counts_equals_each_alone(ckpts, which):
    path = ckpts[which]
    gen = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    reqs = _mixed_requests()
    with pipeline(path, EngineConfig(enable_prefix_caching=False), VisionConfig(max_batch_size=1)) as alone:
        baseline = [alone(r, gen_config=gen).token_ids for r in reqs]
    pipe_cache.check_batch_invariance(path, reqs, gen, baseline)
