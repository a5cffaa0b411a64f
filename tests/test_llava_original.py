"""LLaVA-1.5 / 1.6 in the original LLaVA repo's layout (``LlavaLlamaForCausalLM``, and
``LlavaMistralForCausalLM`` over the tiny Mistral).

The tiny original-layout checkpoints are written (``tiny_llava_original.py``) from the
transformers-layout tiny models, with the published names (``model.layers.*``,
``model.mm_projector.{0,2}``, ``model.image_newline``, ``mm_*`` config keys) and the CLIP tower in
its own folder, found through a stand-in Hugging Face cache (``mm_vision_tower`` is a hub id, as
in liuhaotian/llava-v1.5-7b). Reference: seer's own mapping converts the folder back to
transformers layout (which must give back the exact tensors it came from), and transformers'
``generate`` on that checkpoint is the reference.
"""

import json
import os

import pytest
import torch

import tiny_models as tm
from tiny_llava_original import TOWER_ID, canonical as _canonical, write_original_layout
from seer import GenerationConfig, VisionConfig, pipeline
from seer.models.llava_original import convert_to_transformers, expand2square

N = 32
GEN = GenerationConfig(max_new_tokens=N, ignore_eos=True)
TEXT = "describe this image in a few words"

@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hub"))
    old = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("HF_HUB_CACHE")
    else:
        os.environ["HF_HUB_CACHE"] = old


@pytest.fixture(scope="module", params=["1.5", "1.5-mistral", "1.6"])
def original(request, hub, tmp_path_factory):
    hf_dir = request.getfixturevalue({"1.5": "tiny_llava", "1.5-mistral": "tiny_llava_mistral",
                                      "1.6": "tiny_llava_next"}[request.param])
    root = tmp_path_factory.mktemp("orig")
    dst = write_original_layout(hf_dir, str(root / f"llava-v{request.param}"), hub)
    converted = convert_to_transformers(dst, str(root / f"llava-v{request.param}-hf"))
    with pipeline(dst) as pipe:
        yield request.param, hf_dir, dst, converted, pipe


def test_seer_mapping_converts_back_to_the_same_tensors(original):
    _, hf_dir, _, converted, _ = original
    back = _canonical(converted)
    want = {k: v for k, v in _canonical(hf_dir).items() if not k.endswith("position_ids")}
    assert set(back) == set(want)
    for k, v in want.items():
        assert torch.equal(back[k], v), k


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_greedy_parity_with_transformers_on_the_converted_checkpoint(original, n_images):
    version, hf_dir, _, converted, pipe = original
    # 1.5 pads images to a square before the CLIP processor (the original rule; transformers'
    # processor does not), so square images make the two preprocessings agree.
    sizes = [(48, 48), (60, 60)] if version.startswith("1.5") else [(120, 50), (40, 100)]
    images = [tm.make_image(40 + i, size=sizes[i]) for i in range(n_images)]
    messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": TEXT}]}]
    ref = tm.hf_inputs(hf_dir, messages, images)  # the processor the tiny model was built with
    expected = tm.hf_greedy(converted, ref, max_new_tokens=N, ignore_eos=True)  # transformers on seer's conversion
    r = pipe((TEXT, images) if images else TEXT, gen_config=GEN)
    assert r.input_token_len == ref["input_ids"].shape[1]
    assert r.token_ids == expected


def test_pad_preprocessing_pads_to_a_square_with_the_mean_colour(original):
    version, _, _, _, pipe = original
    if not version.startswith("1.5"):
        pytest.skip("anyres (1.6) tiles the image instead")
    img = tm.make_image(7, size=(90, 40))
    proc = pipe.family.image_processor
    square = expand2square(img, tuple(int(x * 255) for x in proc.image_mean))
    assert square.size == (90, 90) and square.getpixel((0, 0)) == tuple(int(x * 255) for x in proc.image_mean)
    _, pixels = pipe.family.image_inputs(img)
    assert torch.equal(pixels, proc(images=[square], return_tensors="pt")["pixel_values"][0])


def test_a_batch_equals_each_alone(original):
    """Text only, one and two images of different sizes, batched: each gets its tokens alone."""
    _, _, _, _, pipe = original
    images = [tm.make_image(50 + i, size=size) for i, size in enumerate([(48, 48), (90, 40), (40, 70)])]
    reqs = [TEXT, (TEXT, images[0]), ("compare these", images[1:]), ("and this", images[2])]
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    alone = [pipe(r, gen_config=gen).token_ids for r in reqs]
    assert [r.token_ids for r in pipe(reqs, gen_config=gen)] == alone


def test_without_a_chat_template_the_prompt_is_the_original_llava_v1(tiny_llava, hub, tmp_path):
    """liuhaotian/llava-v1.5-7b ships no chat template: the prompt is LLaVA's own conv_llava_v1
    (its system line, ``USER: <image>\n... ASSISTANT:``), as the original repo builds it."""
    from seer.messages import to_conversation

    dst = write_original_layout(tiny_llava, str(tmp_path / "llava-v1.5-7b"), hub)
    for name in os.listdir(dst):
        if name.startswith("chat_template"):
            os.remove(os.path.join(dst, name))
    cfg_file = os.path.join(dst, "tokenizer_config.json")
    with open(cfg_file) as f:
        cfg = json.load(f)
    cfg.pop("chat_template", None)
    with open(cfg_file, "w") as f:
        json.dump(cfg, f)
    system = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions.")
    with pipeline(dst) as pipe:
        fam = pipe.family
        assert fam.chat_template.name == "llava-v1"
        conv = to_conversation((TEXT, tm.make_image(3, size=(40, 40))))
        assert fam.chat_template.render(conv, "<image>", add_generation_prompt=True) == \
            f"{system} USER: <image>\n{TEXT} ASSISTANT:"
        r = pipe((TEXT, tm.make_image(3, size=(40, 40))), gen_config=GenerationConfig(max_new_tokens=4,
                                                                                      ignore_eos=True))
        assert r.generate_token_len == 4


def test_a_missing_vision_tower_names_what_to_do(tiny_llava, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    dst = write_original_layout(tiny_llava, str(tmp_path / "orig"), str(tmp_path / "other-hub"))
    with pytest.raises(ValueError, match="vision_tower_path"):
        pipeline(dst)
    tower = os.path.join(tmp_path, "other-hub", "models--" + TOWER_ID.replace("/", "--"), "snapshots", "0123abcd")
    with pipeline(dst, vision_config=VisionConfig(vision_tower_path=tower)) as pipe:
        assert pipe(("hi", tm.make_image(1, size=(30, 30))), gen_config=GenerationConfig(max_new_tokens=2)).text
