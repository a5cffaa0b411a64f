"""Qwen2-VL and Qwen2.5-VL: parity with transformers, dynamic resolution, M-RoPE, batching, caching.

Reference: transformers' own ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration``
with its ``Qwen2VLProcessor`` on the same tiny random checkpoints (``tests/tiny_qwen_vl.py``).
Greedy, 32 new tokens, eos ignored on both sides.
"""

import pytest
import torch

import pipe_cache
import tiny_models as tm
import tiny_qwen_vl as q
from seer import EngineConfig, GenerationConfig, VisionConfig, pipeline
from seer.messages import to_conversation

N = 32
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)
TEXT = "describe this image in a few words"
SIZES = [(56, 56), (112, 84)]  # (width, height): 4 and 12 image tokens


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """kind -> {layout -> path}: as ``save_pretrained`` wrote it ("saved"), in the published hub
    form (flat config.json; "hub") and with transformers 5's in-model tensor names ("internal")."""
    root = tmp_path_factory.mktemp("qwen_vl")
    out = {}
    for kind in q.KINDS:
        saved = q.build_qwen_vl(str(root / kind), kind)
        out[kind] = {"saved": saved,
                     "hub": q.to_layout(saved, str(root / f"{kind}_hub"), "hub"),
                     "internal": q.to_layout(saved, str(root / f"{kind}_internal"), "internal")}
    return out


_pipe, _close_pipes = pipe_cache.module_cache()


def _images(n):
    return [tm.make_image(10 + i, SIZES[i % 2]) for i in range(n)]


def _reference(path, n_images, text=TEXT, **images_kwargs):
    images = _images(n_images)
    inputs = q.hf_inputs(path, q.messages(text, n_images), images, **images_kwargs)
    return images, inputs, q.hf_greedy(path, inputs, N)


# ---- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["saved", "hub", "internal"])
@pytest.mark.parametrize("kind", q.KINDS)
@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_parity(ckpts, kind, layout, n_images):
    path = ckpts[kind][layout]
    images, inputs, expected = _reference(ckpts[kind]["saved"], n_images)
    pipe = _pipe(path)
    prompt = pipe.family.encode(to_conversation((TEXT, images) if images else TEXT))
    assert prompt.token_ids == inputs["input_ids"][0].tolist()
    r = pipe((TEXT, images) if images else TEXT, gen_config=GEN)
    assert len(set(expected)) >= 5, "reference output too repetitive for a meaningful check"
    assert r.token_ids == expected
    assert r.finish_reason == "length" and r.generate_token_len == N


def test_tied_embeddings(tmp_path):
    """Qwen2-VL-2B style: tie_word_embeddings, no lm_head tensor in the checkpoint."""
    from safetensors import safe_open

    path = q.build_qwen_vl(str(tmp_path / "tied"), "qwen2_vl", seed=1, tie=True)
    with safe_open(f"{path}/model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
    images, inputs, expected = _reference(path, 1)
    with pipeline(path) as pipe:
        assert pipe((TEXT, images), gen_config=GEN).token_ids == expected


def test_mrope_matters(ckpts):
    """The image prompt's positions are really 3-D, and 1-D positions would give other tokens."""
    pipe = _pipe(ckpts["qwen2_vl"]["saved"])
    prompt = pipe.family.encode(to_conversation((TEXT, _images(2))))
    assert prompt.rope_delta < 0
    assert not torch.equal(prompt.mrope_positions[0], prompt.mrope_positions[2])
    flat = type(prompt)(prompt.token_ids, prompt.mm_items)  # same tokens and images, positions = index
    import queue

    def run(inputs):
        out, box = [], queue.Queue()
        pipe.engine.add_request(inputs, GEN, box.put)
        while not (o := box.get()).finished:
            out += o.new_token_ids
        return out + o.new_token_ids

    assert run(prompt) == pipe((TEXT, _images(2)), gen_config=GEN).token_ids
    assert run(flat) != run(prompt)


def test_mrotary_matches_transformers(ckpts):
    """cos/sin of ``MRotaryEmbedding`` for [3, T] positions equal transformers' Qwen2-VL rotary."""
    from seer.layers.rotary import MRotaryEmbedding, rope_inv_freq

    text = q.hf_model(ckpts["qwen2_vl"]["saved"]).config.text_config
    ref = q.hf_model(ckpts["qwen2_vl"]["saved"]).model.language_model.rotary_emb
    head_dim = text.hidden_size // text.num_attention_heads
    ours = MRotaryEmbedding(*rope_inv_freq(text, head_dim), text.rope_parameters["mrope_section"])
    pos = torch.randint(0, 5000, (3, 40))
    cos, sin = ours(pos, torch.float32)
    want_cos, want_sin = ref(torch.zeros(1, dtype=torch.float32), pos[:, None, :])
    assert torch.equal(cos[:, 0], want_cos[0]) and torch.equal(sin[:, 0], want_sin[0])


@pytest.mark.parametrize("kind", q.KINDS)
def test_rope_index_matches_transformers(ckpts, kind):
    """``mrope_positions`` against transformers' ``get_rope_index``, videos (temporal spacing) included."""
    from seer.models.qwen2_vl import mrope_positions

    model = q.hf_model(ckpts[kind]["saved"]).model
    tokens_per_second = model.config.vision_config.tokens_per_second if kind == "qwen2_5_vl" else 0
    grids = [((1, 4, 6), 1, 1.0), ((3, 4, 4), 2, 0.75), ((1, 8, 2), 1, 1.0)]  # (grid, type, seconds/grid)
    ids, types, items = [], [], []
    for (t, h, w), kind_id, secs in grids:
        ids += [5] * 3
        types += [0] * 3
        items.append((len(ids), (t, h, w), tokens_per_second * secs if kind_id == 2 else 1))
        ids += [9] * (t * h * w // 4)
        types += [kind_id] * (t * h * w // 4)
    ids += [5] * 4
    types += [0] * 4
    kwargs = dict(image_grid_thw=torch.tensor([g for g, k, _ in grids if k == 1]),
                  video_grid_thw=torch.tensor([g for g, k, _ in grids if k == 2]))
    if kind == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([s for _, k, s in grids if k == 2])
    else:
        items = [(o, g, 1) for o, g, _ in items]  # Qwen2-VL has no temporal spacing
    want, want_delta = model.get_rope_index(torch.tensor([ids]), torch.tensor([types]), **kwargs)
    got, delta = mrope_positions(len(ids), items, 2)
    assert torch.equal(got, want[:, 0])
    assert delta == int(want_delta)


# ---- dynamic resolution ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [(56, 56), (112, 84), (57, 91), (300, 40), (200, 150), (20, 30)])
@pytest.mark.parametrize("bounds", [None, {"max_pixels": 56 * 56}, {"min_pixels": 112 * 112, "max_pixels": 224 * 224}])
def test_image_tokens_match_processor(ckpts, size, bounds):
    path = ckpts["qwen2_vl"]["saved"]
    fam = _pipe(path).family
    image = tm.make_image(3, size)
    kwargs = {}
    if bounds:
        kwargs["size"] = {"shortest_edge": bounds.get("min_pixels", q.MIN_PIXELS),
                          "longest_edge": bounds.get("max_pixels", q.MAX_PIXELS)}
    ref = q.hf_inputs(path, q.messages("x", 1), [image], **kwargs)
    n, (pixels, grid) = fam.image_inputs(image, bounds)
    assert n == int((ref["input_ids"] == fam.image_token_id).sum())
    assert list(grid) == ref["image_grid_thw"][0].tolist()
    assert torch.equal(pixels, ref["pixel_values"])


@pytest.mark.parametrize("kind", q.KINDS)
def test_per_request_and_engine_pixel_bounds(ckpts, kind):
    """``max_pixels`` on an image part, or in VisionConfig: fewer image tokens, still parity."""
    path = ckpts[kind]["saved"]
    bounds = {"shortest_edge": q.MIN_PIXELS, "longest_edge": 56 * 56}
    images, inputs, expected = _reference(path, 2, size=bounds)
    content = [{"type": "image", "image": images[0], "max_pixels": 56 * 56},
               {"type": "image_url", "image_url": {"url": images[1], "max_pixels": 56 * 56}},
               {"type": "text", "text": TEXT}]
    pipe = _pipe(path)
    r = pipe([{"role": "user", "content": content}], gen_config=GEN)
    assert r.input_token_len == inputs["input_ids"].shape[1] < pipe((TEXT, images), gen_config=GEN).input_token_len
    assert r.token_ids == expected
    engine_wide = _pipe(path, vision_config=VisionConfig(max_pixels=56 * 56))
    assert engine_wide((TEXT, images), gen_config=GEN).token_ids == expected


def test_bad_pixel_bounds_are_rejected(ckpts):
    pipe = _pipe(ckpts["qwen2_vl"]["saved"])
    with pytest.raises(ValueError, match="max_pixels"):
        pipe([{"role": "user", "content": [{"type": "image", "image": _images(1)[0], "max_pixels": 0}]}])
    with pytest.raises(ValueError, match="min_pixels"):
        VisionConfig(min_pixels=5000, max_pixels=4000)
    with pytest.raises(ValueError, match="embeddings"):
        pipe(("describe", torch.zeros(4, 64)))


def test_qwen2_5_window_attention_is_exercised(ckpts):
    """The test images span several 56-px windows, and not every vision block is a full-attention one."""
    from transformers.vision_utils import get_vision_window_index

    cfg = q.hf_model(ckpts["qwen2_5_vl"]["saved"]).config.vision_config
    assert set(cfg.fullatt_block_indexes) != set(range(cfg.depth))
    grid = torch.tensor([[1, h // 14, w // 14] for w, h in SIZES])
    _, cu = get_vision_window_index(grid, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)
    assert len(cu) - 1 > 2 * len(SIZES)  # more windows than images: attention is really windowed
    pipe = _pipe(ckpts["qwen2_5_vl"]["saved"])
    assert type(pipe.family.model.visual).__name__ == "Qwen2_5_VisionTransformerPretrainedModel"


# ---- the engine: batching and caches ---------------------------------------------------------

def _mixed_requests():
    imgs = [tm.make_image(20 + i, s) for i, s in enumerate([(56, 56), (112, 84), (84, 112), (140, 56), (70, 70)])]
    reqs = []
    for i in range(10):
        text = "You see shapes. " * (i % 3) + f"question {i}: what colour is the {['circle', 'square'][i % 2]}?"
        chosen = [[], [imgs[i % 5]], [imgs[i % 5], imgs[(i + 2) % 5]]][i % 3]
        reqs.append((text, chosen) if chosen else text)
    frames = [tm.make_image(40 + i, (84, 56)) for i in range(5)]
    reqs.append(_video_message(frames[:3], "what moves?"))
    reqs.append(_video_message(frames, "what moves?", images=imgs[1:2]))
    return reqs


@pytest.mark.parametrize("kind", q.KINDS)
def test_batch_equals_alone(ckpts, kind):
    path = ckpts[kind]["saved"]
    gen = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    reqs = _mixed_requests()
    with pipeline(path, EngineConfig(enable_prefix_caching=False)) as alone:
        baseline = [alone(r, gen_config=gen).token_ids for r in reqs]
    # (chunks cut through videos too) A pool of 40 blocks of 4 tokens holds about two of these at once.
    pipe_cache.check_batch_invariance(path, reqs, gen, baseline, preempt_blocks=40)


def test_prefix_cache_repeat_and_resolution(ckpts):
    """A repeated request is served from the prefix cache with the same tokens; the same image at
    another resolution is a different input (no block or feature reuse)."""
    path = ckpts["qwen2_vl"]["saved"]
    images = _images(2)
    small = [{"role": "user", "content": [{"type": "image", "image": images[1], "max_pixels": 56 * 56},
                                          {"type": "text", "text": TEXT}]}]
    with pipeline(path, EngineConfig(enable_prefix_caching=False)) as ref:
        want_full = ref((TEXT, images[1:]), gen_config=GEN).token_ids
        want_small = ref(small, gen_config=GEN).token_ids
    assert want_full != want_small
    with pipeline(path, EngineConfig(block_size=4)) as pipe:
        first = pipe((TEXT, images[1:]), gen_config=GEN)
        second = pipe((TEXT, images[1:]), gen_config=GEN)
        assert first.token_ids == second.token_ids == want_full
        assert second.num_cached_tokens >= second.input_token_len - 4
        misses = pipe.engine.runner.feature_misses
        r = pipe(small, gen_config=GEN)
        assert r.token_ids == want_small
        assert pipe.engine.runner.feature_misses == misses + 1


# ---- video ---------------------------------------------------------------------------------------

def _frames(n, size=(84, 56), seed=30):
    return [tm.make_image(seed + i, size) for i in range(n)]


def _video_message(video, text=TEXT, images=(), **options):
    content = [{"type": "image", "image": im} for im in images]
    return [{"role": "user", "content": content + [{"type": "video", "video": video, **options},
                                                   {"type": "text", "text": text}]}]


@pytest.mark.parametrize("size", [(112, 84), (100, 70)])
def test_video_patches_follow_the_image_layout(ckpts, size):
    """Two frames make one temporal patch whose halves are each frame's patches as transformers'
    image processor cuts them (it repeats a lone image along the temporal axis)."""
    from seer.models.qwen2_vl import video_patches

    ip = q.hf_processor(ckpts["qwen2_vl"]["saved"]).image_processor
    frames = _frames(2, size)
    patches, grid = video_patches(frames, ip, (q.MIN_PIXELS, q.MAX_PIXELS))
    shape = (-1, 3, 2, 14, 14)
    for i, frame in enumerate(frames):
        ref = ip(images=[frame], return_tensors="pt")
        assert [1, *grid[1:]] == ref["image_grid_thw"][0].tolist()
        torch.testing.assert_close(patches.view(shape)[:, :, i], ref["pixel_values"].view(shape)[:, :, 0],
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", q.KINDS)
@pytest.mark.parametrize("fps", [None, 4.0])
def test_video_parity(ckpts, kind, fps):
    """A video as a list of frames (3: padded to 4 with the last), after an image, against transformers."""
    path = ckpts[kind]["saved"]
    frames, images = _frames(3), _images(1)
    inputs = q.hf_video_inputs(path, TEXT, frames, fps, images=images)
    expected = q.hf_greedy(path, inputs, N)
    assert len(set(expected)) >= 5
    pipe = _pipe(path)
    msgs = _video_message(frames, images=images, **({"fps": fps} if fps else {}))
    assert pipe.family.encode(to_conversation(msgs)).token_ids == inputs["input_ids"][0].tolist()
    assert pipe(msgs, gen_config=GEN).token_ids == expected


@pytest.mark.parametrize("kind", q.KINDS)
def test_video_file(ckpts, tmp_path, kind):
    """A video file decoded with PyAV, sampled at 2 fps, gives transformers' tokens for those frames."""
    av = pytest.importorskip("av")
    from seer.vl.video import sample_indices

    path = ckpts[kind]["saved"]
    file = q.write_video(str(tmp_path / "clip.mp4"), _frames(12), fps=6)
    with av.open(file) as container:
        decoded = [f.to_image() for f in container.decode(video=0)]
    keep = sample_indices(12, 6.0)
    assert keep == [0, 4, 7, 11]  # 12 frames at 6 fps, 2 per second: 4 frames, rate 2
    inputs = q.hf_video_inputs(path, TEXT, [decoded[i] for i in keep], fps=2.0)
    expected = q.hf_greedy(path, inputs, N)
    pipe = _pipe(path)
    r = pipe(_video_message(file), gen_config=GEN)
    assert r.input_token_len == inputs["input_ids"].shape[1]
    assert r.token_ids == expected
    as_url = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{file}", "nframes": 6}},
                                           {"type": "text", "text": TEXT}]}]
    six = pipe.family.encode(to_conversation(as_url))
    assert six.token_ids.count(pipe.family.hf_config.video_token_id) == 3 * 6  # 6 frames: t=3, 2x3 merged


def test_video_errors(ckpts, tiny_llama, tmp_path):
    pipe = _pipe(ckpts["qwen2_vl"]["saved"])
    with pytest.raises(ValueError, match="one size"):
        pipe(_video_message([tm.make_image(1, (56, 56)), tm.make_image(2, (84, 56))]))
    with pytest.raises(ValueError, match="does not exist"):
        pipe(_video_message(str(tmp_path / "missing.mp4")))
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="could not be decoded"):
        pipe(_video_message(str(tmp_path / "junk.mp4")))
    with pipeline(tiny_llama) as text_only:
        with pytest.raises(ValueError, match="does not accept videos"):
            text_only(_video_message(_frames(2)))


def test_vllm_shaped_raw_prompt(ckpts):
    """``LLM.generate`` with Qwen's own markers in a raw prompt: the same tokens as the chat path."""
    from seer import LLM, SamplingParams

    path = ckpts["qwen2_5_vl"]["saved"]
    images = _images(2)
    want = _pipe(path)((TEXT, images), gen_config=GEN).token_ids
    raw = q.hf_processor(path).tokenizer.apply_chat_template(q.messages(TEXT, 2), add_generation_prompt=True,
                                                             tokenize=False)
    llm = LLM(model=path)
    try:
        out = llm.generate({"prompt": raw, "multi_modal_data": {"image": images}},
                           SamplingParams(temperature=0, max_tokens=N, ignore_eos=True))
    finally:
        llm.close()
    assert out[0].outputs[0].token_ids == want
