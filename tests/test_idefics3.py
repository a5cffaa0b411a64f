"""Idefics3 and SmolVLM (transformers layout): parity with transformers, image splitting, batching.

Reference: transformers' own ``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration``
with its ``Idefics3Processor`` / ``SmolVLMProcessor`` on the same tiny random checkpoints
(``tests/tiny_idefics3.py``). Greedy, 32 new tokens, eos ignored on both sides. Images of different
sizes are split into different grids of tiles (1x3, 3x2, 2x1, ... plus the global view).
"""

import pytest
import torch

import tiny_idefics3 as ti
import pipe_cache
import tiny_models as tm
from seer import LLM, EngineConfig, GenerationConfig, SamplingParams, VisionConfig, pipeline
from seer.messages import to_conversation

N = 32
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)
TEXT = "describe this image in a few words"
SIZES = [(120, 50), (40, 100), (64, 64), (300, 40), (20, 30), (90, 90)]  # (width, height)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """kind -> {layout -> path}: as ``save_pretrained`` wrote it ("saved"), as the hub publishes it
    ("hub": transformers-4.x config.json, chat template only in chat_template.json), and with image
    splitting turned off in preprocessor_config.json ("no_split")."""
    root = tmp_path_factory.mktemp("idefics3")
    out = {}
    for kind in ti.KINDS:
        saved = ti.build_idefics3(str(root / kind), kind)
        out[kind] = {"saved": saved, "hub": ti.to_hub_layout(saved, str(root / f"{kind}_hub"), kind),
                     "no_split": ti.with_preprocessor(saved, str(root / f"{kind}_no_split"), kind,
                                                      do_image_splitting=False)}
    return out


_pipe, _close_pipes = pipe_cache.module_cache()


def _images(*which):
    return [tm.make_image(30 + i, size=SIZES[i]) for i in which]


def _reference(path, images, text=TEXT):
    inputs = ti.hf_inputs(path, [ti.render(path, text, len(images))], [images] if images else None)
    return inputs, ti.hf_greedy(path, inputs, N)


# ---- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ti.KINDS)
@pytest.mark.parametrize("which", [(), (0,), (1, 3)], ids=["text", "one image", "two images"])
def test_parity(ckpts, kind, which):
    path = ckpts[kind]["saved"]
    images = _images(*which)
    inputs, expected = _reference(path, images)
    pipe = _pipe(path)
    prompt = pipe.family.encode(to_conversation((TEXT, images) if images else TEXT))
    assert prompt.token_ids == inputs["input_ids"][0].tolist()
    if images:  # different sizes, different splits
        assert len({pipe.family.image_inputs(im)[1][:2] for im in images}) == len(images)
    assert len(set(expected)) >= 5, "reference output too repetitive for a meaningful check"
    r = pipe((TEXT, images) if images else TEXT, gen_config=GEN)
    assert r.token_ids == expected
    assert r.input_token_len == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("kind", ti.KINDS)
def test_hub_layout(ckpts, kind):
    """The files as HuggingFaceTB/SmolVLM-256M-Instruct publishes them give the same tokens."""
    images = _images(0, 2)
    inputs, expected = _reference(ckpts[kind]["saved"], images)
    pipe = _pipe(ckpts[kind]["hub"])
    assert pipe.family.encode(to_conversation((TEXT, images))).token_ids == inputs["input_ids"][0].tolist()
    assert pipe((TEXT, images), gen_config=GEN).token_ids == expected


@pytest.mark.parametrize("kind", ti.KINDS)
def test_without_image_splitting(ckpts, kind):
    """``do_image_splitting: false``: one tile per image, only the global-image prompt."""
    path = ckpts[kind]["no_split"]
    images = _images(0, 1)
    inputs, expected = _reference(path, images)
    pipe = _pipe(path)
    prompt = pipe.family.encode(to_conversation((TEXT, images)))
    assert prompt.token_ids == inputs["input_ids"][0].tolist()
    assert len(prompt.mm_items) == 2
    assert pipe((TEXT, images), gen_config=GEN).token_ids == expected


def test_tied_embeddings(tmp_path):
    """tie_word_embeddings: no lm_head tensor in the checkpoint, the head is the embedding matrix."""
    from safetensors import safe_open

    path = ti.build_idefics3(str(tmp_path / "tied"), "smolvlm", seed=1, tie=True)
    with safe_open(f"{path}/model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
    images = _images(0)
    _, expected = _reference(path, images)
    with pipeline(path) as pipe:
        assert pipe((TEXT, images), gen_config=GEN).token_ids == expected


# ---- image splitting and the prompt ------------------------------------------------------------

@pytest.mark.parametrize("kind", ti.KINDS)
def test_image_tokens_and_tiles_match_the_processor(ckpts, kind):
    path = ckpts[kind]["saved"]
    fam = _pipe(path).family
    proc = ti.hf_processor(path)
    counts, grids = set(), set()
    for i in range(len(SIZES)):
        image = _images(i)[0]
        ref = proc(text=["<image>"], images=[[image]], add_special_tokens=False, return_tensors="pt")
        n, (rows, cols, tiles) = fam.image_inputs(image)
        assert n == int((ref["input_ids"] == fam.image_token_id).sum()), SIZES[i]
        assert n == len(tiles) * ti.image_seq_len(kind)
        assert torch.equal(torch.stack([px for px, _ in tiles]), ref["pixel_values"][0])
        assert all(m is None for _, m in tiles) and bool(ref["pixel_attention_mask"].all())
        assert fam.encode(to_conversation(("x", [image]))).token_ids == \
            ti.hf_inputs(path, [ti.render(path, "x", 1)], [[image]])["input_ids"][0].tolist()
        counts.add(n)
        grids.add((rows, cols))
    assert len(grids) >= 3 and len(counts) >= 2  # sizes matter


@pytest.mark.parametrize("kind", ti.KINDS)
def test_features_equal_transformers_batched_with_padding(ckpts, kind):
    """transformers' processor pads a batch (prompts with 1 and 2 images, different tile counts) with
    all-zero images and a pixel_attention_mask; its features per prompt equal seer's, which encodes
    the tiles of all images mixed in one call (each tile as if alone)."""
    path = ckpts[kind]["saved"]
    pipe = _pipe(path)
    batch = [_images(3), _images(1, 4)]
    texts = [ti.render(path, TEXT, len(b)) for b in batch]
    ref = ti.hf_inputs(path, texts, batch)
    assert not bool(ref["pixel_attention_mask"].all())  # padding images are there
    with torch.no_grad():
        want = ti.hf_model(path).model.get_image_features(ref["pixel_values"],
                                                          ref["pixel_attention_mask"]).pooler_output
    tiles = [pipe.family.image_inputs(im)[1][2] for b in batch for im in b]
    flat = [t for ts in tiles for t in ts]
    order = list(reversed(range(len(flat))))  # any order, any company
    with torch.no_grad():
        got = [f.cpu() for f in pipe.family.model.encode_images([flat[i] for i in order])]
    got = [got[order.index(i)] for i in range(len(flat))]
    per_image = [len(ts) for ts in tiles]
    got_images = torch.cat(got).split([n * ti.image_seq_len(kind) for n in per_image])
    got_prompts = [torch.cat(got_images[:1]), torch.cat(got_images[1:])]
    for g, w in zip(got_prompts, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ti.KINDS)
def test_partial_pixel_mask_follows_transformers(ckpts, kind):
    """A tile whose pixel mask leaves out its bottom and right edges (as padding would): the patch mask
    and the tower's position ids follow transformers' ``get_image_features``."""
    path = ckpts[kind]["saved"]
    side = ti.SIZES[kind][0]
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, side, side)
    mask = torch.zeros(1, side, side, dtype=torch.bool)
    mask[:, :side - 12, :side - 20] = True
    pixels[:, :, side - 12:] = 0
    pixels[:, :, :, side - 20:] = 0
    model = _pipe(path).family.model
    with torch.no_grad():
        want = ti.hf_model(path).model.get_image_features(pixels[None], mask[None].long()).pooler_output[0]
        got = model.encode_images([(pixels[0], mask[0]), (torch.randn(3, side, side), None)])[0].cpu()
        full = model.encode_images([(pixels[0], None)])[0].cpu()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, full)


def test_embeddings_are_rejected(ckpts):
    pipe = _pipe(ckpts["smolvlm"]["saved"])
    with pytest.raises(ValueError, match="embeddings"):
        pipe(("describe", torch.zeros(4, 64)))


# ---- the engine: batching and caches ---------------------------------------------------------

@pytest.mark.parametrize("kind", ti.KINDS)
def test_a_batch_mixing_sizes_and_counts_equals_each_alone(ckpts, kind):
    path = ckpts[kind]["saved"]
    prompts = [(TEXT, _images(0)), (TEXT, _images(1, 2)), TEXT, (TEXT, _images(3)), (TEXT, _images(4, 0)),
               ("what colour is the square?", _images(5, 3, 1))]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    alone_pipe = _pipe(path, EngineConfig(enable_prefix_caching=False))
    alone = [alone_pipe(p, gen_config=gen).token_ids for p in prompts]
    assert len({tuple(a) for a in alone}) == len(prompts)
    # Tiles of several images in one vision forward, 3 at a time; chunks that cut through tiles;
    # then the same again from a warm prefix cache.
    pipe = _pipe(path, EngineConfig(block_size=4, max_prefill_token_num=7), VisionConfig(max_batch_size=3))
    assert [r.token_ids for r in pipe(prompts, gen_config=gen)] == alone
    again = pipe(prompts, gen_config=gen)
    assert [r.token_ids for r in again] == alone
    assert all(r.num_cached_tokens > 0 for r in again)


def test_vllm_shaped_raw_prompt(ckpts):
    """``LLM.generate`` with the chat template's text as a raw prompt: the same tokens as the chat path."""
    path = ckpts["idefics3"]["saved"]
    images = _images(0, 1)
    want = _pipe(path)((TEXT, images), gen_config=GEN).token_ids
    llm = LLM(model=path)
    try:
        out = llm.generate({"prompt": ti.render(path, TEXT, 2), "multi_modal_data": {"image": images}},
                           SamplingParams(temperature=0, max_tokens=N, ignore_eos=True))
    finally:
        llm.close()
    assert out[0].outputs[0].token_ids == want
