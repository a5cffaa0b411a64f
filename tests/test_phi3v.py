"""Phi-3.5-vision in the published layout (``Phi3VForCausalLM``): greedy parity, image token counts,
mixed batches, LongRoPE.

transformers has no Phi-3-vision class (the checkpoint's own code is remote code, never run), so the
reference is written here, plainly and apart from seer's code, from the published architecture:

- text: transformers' ``Phi3ForCausalLM`` built from the checkpoint's config and loaded with its
  ``model.*`` / ``lm_head`` tensors, driven by transformers' ``generate`` (so rope, LongRoPE
  included, attention and sampling are transformers' own);
- images: Phi3VImageProcessor's steps (transpose to landscape, the crop-count loop, bilinear resize,
  white padding to whole crops, CLIP mean/std, a bicubic global view) with PIL, numpy and torch,
  transformers' ``CLIPVisionModel`` for the tower (hidden state -2, CLS dropped), and the HD layout
  (2x2 merge, crops row by row each row closed by ``sub_GN``, ``glb_GN``, the global view)
  assembled token by token in Python loops, then ``img_projection`` (Linear-GELU-Linear);
- prompt: the published processor's rule (split the chat template's output at ``<|image_N|>``,
  tokenize each piece on its own with the tokenizer's special tokens, runs of ``-N`` between them;
  the runs' embeddings are replaced by image N's features in order).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import load_file

import tiny_models as tm
import tiny_phi3v as tp
from seer import GenerationConfig, pipeline

N = 32
TEXT = "describe this image in a few words"
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)


# ---- the reference ---------------------------------------------------------------------------

class Reference:
    def __init__(self, model_dir: str):
        from transformers import AutoTokenizer, CLIPVisionModel, Phi3ForCausalLM

        with open(os.path.join(model_dir, "config.json")) as f:
            self.raw = json.load(f)
        with open(os.path.join(model_dir, "preprocessor_config.json")) as f:
            self.proc = json.load(f)
        text_cfg = tp.text_config(self.raw)
        self.tok = AutoTokenizer.from_pretrained(model_dir, config=text_cfg)
        sd = load_file(os.path.join(model_dir, "model.safetensors"))
        vision = "model.vision_embed_tokens."
        self.lm = Phi3ForCausalLM(text_cfg).eval()
        self.lm.load_state_dict({k: v for k, v in sd.items() if not k.startswith(vision)}, strict=True)
        self.clip = CLIPVisionModel(tp.vision_config(self.raw)).eval()
        tower = {k[len(vision + "img_processor.vision_model."):]: v for k, v in sd.items()
                 if k.startswith(vision + "img_processor.")}
        self.clip.load_state_dict(tower, strict=True)
        self.glb_GN = sd[vision + "glb_GN"].reshape(-1)
        self.sub_GN = sd[vision + "sub_GN"].reshape(-1)
        self.proj = [(sd[f"{vision}img_projection.{i}.weight"], sd[f"{vision}img_projection.{i}.bias"]) for i in (0, 2)]
        self.crop = self.raw["img_processor"]["image_size"]
        self.num_crops = self.proc["num_crops"]

    # Phi3VImageProcessor, step by step
    def hd_image(self, img: Image.Image, num_crops=None) -> Image.Image:
        num_crops = num_crops or self.num_crops
        c = self.crop
        img = img.convert("RGB")
        width, height = img.size
        trans = False
        if width < height:
            img = img.transpose(Image.TRANSPOSE)
            trans = True
            width, height = img.size
        ratio = width / height
        scale = 1
        while scale * np.ceil(scale / ratio) <= num_crops:
            scale += 1
        scale -= 1
        new_w = int(scale * c)
        new_h = int(new_w / ratio)
        img = img.resize((new_w, new_h), Image.BILINEAR)  # torchvision's resize of a PIL image
        tar = int(np.ceil(new_h / c) * c)
        top = int((tar - new_h) / 2)
        img = ImageOps.expand(img, border=(0, top, 0, tar - new_h - top), fill=(255, 255, 255))
        if trans:
            img = img.transpose(Image.TRANSPOSE)
        return img

    def pixels(self, img: Image.Image):
        c = self.crop
        hd = self.hd_image(img)
        x = torch.from_numpy(np.array(hd)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # ToTensor
        mean = torch.tensor(self.proc["image_mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.proc["image_std"], dtype=torch.float32).view(-1, 1, 1)
        x = (x - mean) / std  # Normalize
        glb = F.interpolate(x.unsqueeze(0), size=(c, c), mode="bicubic")[0]
        h, w = x.shape[1] // c, x.shape[2] // c
        crops = [x[:, i * c:(i + 1) * c, j * c:(j + 1) * c] for i in range(h) for j in range(w)]
        return torch.stack([glb] + crops), (h, w)

    @torch.no_grad()
    def image_embeds(self, img: Image.Image) -> torch.Tensor:
        px, (h, w) = self.pixels(img)
        feats = self.clip(px, output_hidden_states=True).hidden_states[-2][:, 1:]
        side = int(feats.shape[1] ** 0.5)
        s = side // 2

        def merged(k, y, x):  # the 2x2 block at (y, x) of crop k, channels (dy, dx, C)
            g = feats[k].view(side, side, -1)
            return torch.cat([g[2 * y, 2 * x], g[2 * y, 2 * x + 1], g[2 * y + 1, 2 * x], g[2 * y + 1, 2 * x + 1]])

        tokens = []
        for row in range(h * s):  # the crops (1 + i*w + j), laid out as the image
            i, y = divmod(row, s)
            for j in range(w):
                for x in range(s):
                    tokens.append(merged(1 + i * w + j, y, x))
            tokens.append(self.sub_GN)
        tokens.append(self.glb_GN)
        for y in range(s):  # the global view
            for x in range(s):
                tokens.append(merged(0, y, x))
            tokens.append(self.sub_GN)
        t = torch.stack(tokens)
        (w0, b0), (w2, b2) = self.proj
        return F.linear(F.gelu(F.linear(t, w0, b0)), w2, b2)

    def prompt(self, n_images: int, text: str = TEXT) -> str:
        content = "".join(f"<|image_{i}|>\n" for i in range(1, n_images + 1)) + text
        return self.tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                            add_generation_prompt=True)

    def input_ids(self, prompt: str, token_counts: list[int]) -> list[int]:
        pattern = r"<\|image_\d+\|>"
        chunks = [self.tok(chunk).input_ids for chunk in re.split(pattern, prompt)]
        tags = [int(s.split("|")[1].split("_")[-1]) for s in re.findall(pattern, prompt)]
        ids = list(chunks[0])
        for tag, chunk in zip(tags, chunks[1:]):
            ids += [-tag] * token_counts[tag - 1] + chunk
        return ids

    @torch.no_grad()
    def greedy(self, images: list, n: int = N, text: str = TEXT) -> tuple[list[int], list[int]]:
        """(prompt ids with image runs as -N, greedy new tokens)."""
        feats = [self.image_embeds(img) for img in images]
        ids = self.input_ids(self.prompt(len(images), text), [f.shape[0] for f in feats])
        t = torch.tensor([ids])
        embeds = self.lm.model.embed_tokens(t.clamp(min=0))
        starts = [k for k, v in enumerate(ids) if v < 0 and (k == 0 or ids[k - 1] != v)]
        for start, f in zip(starts, feats):
            embeds[0, start:start + f.shape[0]] = f
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(t), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, eos_token_id=self.lm.config.vocab_size + 12345,
                               pad_token_id=self.tok.pad_token_id)
        return ids, out[0].tolist()[-n:]


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tp.build_phi3v(str(tmp_path_factory.mktemp("tiny") / "phi3v"))


@pytest.fixture(scope="module")
def ref(model_dir):
    return Reference(model_dir)


@pytest.fixture(scope="module")
def pipe(model_dir):
    with pipeline(model_dir) as p:
        yield p


def _images(*sizes):
    return [tm.make_image(60 + i, size=s) for i, s in enumerate(sizes)]


# ---- tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [(), ((100, 40),), ((90, 60), (40, 150))], ids=["text", "one image", "two images"])
def test_greedy_parity_with_the_reference(pipe, ref, sizes):
    images = _images(*sizes)
    ids, expected = ref.greedy(images)
    r = pipe((TEXT, images) if images else TEXT, gen_config=GEN)
    assert r.input_token_len == len(ids)
    assert len(set(expected)) >= 6, expected  # the check means something: the output varies
    assert r.token_ids == expected


def test_prompt_tokens_follow_the_published_processor(pipe, ref):
    images = _images((100, 40), (40, 150))
    parts = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": TEXT}]
    conv = [{"role": "user", "content": parts}]
    got = pipe.family.encode(conv)
    counts = [ref.image_embeds(im).shape[0] for im in images]
    want = ref.input_ids(ref.prompt(2), counts)
    assert got.token_ids == [max(t, 0) for t in want]
    assert [(it.offset, it.length) for it in got.mm_items] == [
        (k, counts[-want[k] - 1]) for k in range(len(want)) if want[k] < 0 and (k == 0 or want[k - 1] != want[k])]
    bos = ref.tok.bos_token_id
    assert got.token_ids.count(bos) == 3  # each text piece gets its own BOS, as the published processor gives it


@pytest.mark.parametrize("size", [(100, 40), (40, 100), (56, 56), (57, 56), (300, 20), (20, 300), (113, 111),
                                  (1000, 999), (168, 56), (5, 5)])
def test_image_token_count_is_the_formula(pipe, ref, size):
    img = tm.make_image(7, size=size)
    px, (h, w) = ref.pixels(img)
    s = tp.MERGED
    formula = (h * w + 1) * s * s + 1 + (h + 1) * s
    n, (pixels, grid) = pipe.family.image_inputs(img)
    assert n == formula == ref.image_embeds(img).shape[0] == pipe.family.num_image_tokens(size[1], size[0])
    assert grid == (h, w) and torch.equal(pixels, px)
    assert pipe.family.model.encode_images([(pixels, grid)])[0].shape[0] == n


@pytest.mark.parametrize("num_crops", [1, 4, 9, 16])
def test_hd_transform_size_for_other_crop_budgets(ref, num_crops):
    from seer.models.phi3v import hd_size, hd_transform

    for size in [(100, 40), (40, 100), (56, 56), (333, 20), (20, 333), (250, 249), (999, 1000)]:
        want = ref.hd_image(tm.make_image(3, size=size), num_crops)
        got = hd_transform(tm.make_image(3, size=size), num_crops, tp.CROP)
        assert got.size == want.size == hd_size(*size, num_crops, tp.CROP)
        assert (want.size[0] // tp.CROP) * (want.size[1] // tp.CROP) <= num_crops
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_white_padding(pipe):
    from seer.models.phi3v import hd_transform

    img = Image.new("RGB", (100, 40), (0, 0, 0))
    out = hd_transform(img, 4, tp.CROP)  # 112 x 44 resized, padded to 112 x 56: 6 rows above, 6 below
    assert out.size == (112, 56)
    a = np.asarray(out)
    assert (a[:6] == 255).all() and (a[-6:] == 255).all() and (a[6:50] == 0).all()


def test_a_batch_mixing_images_equals_each_alone(pipe):
    prompts = [(TEXT, _images((100, 40))), TEXT, (TEXT, _images((90, 60), (40, 150))), (TEXT, _images((20, 20)))]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    alone = [pipe(p, gen_config=gen).token_ids for p in prompts]
    pipe.engine.runner.features.clear()
    assert [r.token_ids for r in pipe(prompts, gen_config=gen)] == alone


def test_precomputed_image_embeddings_give_the_same_tokens(pipe, ref):
    images = _images((100, 40))
    embeds = ref.image_embeds(images[0])
    assert pipe((TEXT, [embeds]), gen_config=GEN).token_ids == pipe((TEXT, images), gen_config=GEN).token_ids


def test_written_image_tags_are_refused(pipe):
    with pytest.raises(ValueError, match="image_N"):
        pipe(("<|image_1|>\ndescribe", _images((30, 30))), gen_config=GenerationConfig(max_new_tokens=2))


# ---- LongRoPE ----------------------------------------------------------------------------------

def test_rope_tables_equal_transformers_longrope(pipe, ref):
    """Short factors below original_max_position_embeddings, long ones from it on, and the attention
    factor sqrt(1 + ln(max/original) / ln(original)) on both, as transformers' Phi3RotaryEmbedding."""
    import math

    rotary = pipe.family.model.language_model.rotary
    rotary = type("Tables", (), {"cos": rotary.cos.float().cpu(), "sin": rotary.sin.float().cpu()})
    hf = ref.lm.model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32)
    short = torch.arange(tp.ORIGINAL_MAX)[None]
    cos, sin = hf(x, short)
    assert torch.allclose(rotary.cos[:tp.ORIGINAL_MAX], cos[0], atol=1e-6)
    assert torch.allclose(rotary.sin[:tp.ORIGINAL_MAX], sin[0], atol=1e-6)
    for p in (tp.ORIGINAL_MAX, tp.ORIGINAL_MAX + 1, 1000, tp.MAX_POS - 1):  # a step past the original length
        cos, sin = hf(x, torch.tensor([[p]]))
        assert torch.allclose(rotary.cos[p], cos[0, 0], atol=1e-5)
        assert torch.allclose(rotary.sin[p], sin[0, 0], atol=1e-5)
    factor = math.sqrt(1 + math.log(tp.MAX_POS / tp.ORIGINAL_MAX) / math.log(tp.ORIGINAL_MAX))
    assert hf.attention_scaling == pytest.approx(factor) and rotary.cos[0, 0].item() == pytest.approx(factor)
    # and the two regimes differ there, so the check above tells them apart
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    short_inv, _ = ROPE_INIT_FUNCTIONS["longrope"](ref.lm.config, "cpu")
    assert not torch.allclose(rotary.cos[1000], torch.cos(1000 * short_inv).repeat(2) * factor, atol=1e-2)


def test_decoding_past_the_original_length_matches_transformers(tmp_path):
    """original_max_position_embeddings 24: the prompt fits in it, decoding runs ~30 tokens past it,
    where transformers switches to the long factors step by step as seer's table does."""
    model_dir = tp.build_phi3v(str(tmp_path / "phi3v_short"), original_max=24, max_pos=256)
    ref = Reference(model_dir)
    ids, expected = ref.greedy([], n=48, text="hi")
    assert len(ids) < 24 < len(ids) + 48
    with pipeline(model_dir) as pipe:
        r = pipe("hi", gen_config=GenerationConfig(max_new_tokens=48, ignore_eos=True))
    assert r.input_token_len == len(ids)
    assert r.token_ids == expected


def test_su_rope_scaling_reads_as_longrope(model_dir):
    from seer.models.phi3v import phi3v_config

    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    su = dict(raw, rope_scaling=dict(raw["rope_scaling"], type="su"))  # Phi-3-vision-128k's spelling
    assert phi3v_config(su).text_config.rope_parameters == phi3v_config(raw).text_config.rope_parameters
    assert phi3v_config(raw).text_config.rope_parameters["rope_type"] == "longrope"
