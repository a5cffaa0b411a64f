"""The shipped demo model (``seer/assets/demo-vlm``): it loads through ``seer.pipeline`` like
any LLaVA checkpoint, answers questions about held-out synthetic scenes correctly, and its
greedy tokens equal transformers' ``generate`` on the same weights."""

import os
import random
import sys

import pytest

import tiny_models as tm
from seer import GenerationConfig, pipeline
from seer.assets import DEMO_MODEL_PATH, default_model_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import scenes  # noqa: E402

# Held-out scenes (never trained on): 1, 2, 3 and 4 objects, with and without text.
SEEDS = [scenes.EVAL_SEED_START + s for s in (0, 1, 2, 3, 5)]
GEN = GenerationConfig(max_new_tokens=40)


@pytest.fixture(scope="module")
def demo_pipe():
    with pipeline(default_model_path()) as pipe:
        yield pipe


def test_shipped_files():
    names = set(os.listdir(DEMO_MODEL_PATH))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "generation_config.json"} <= names
    assert os.path.getsize(os.path.join(DEMO_MODEL_PATH, "model.safetensors")) < 25 * 2 ** 20


def test_answers_on_fixed_scenes(demo_pipe):
    prompts, expected = [], []
    for seed in SEEDS:
        scene = scenes.make_scene(seed)
        rng = random.Random(seed)
        for kind in ("shape", "colour", "count", "position", "bigger", "text"):
            qa = scene.question(kind, rng)
            if qa is None:  # e.g. no text in this scene
                continue
            prompts.append((qa[0], scene.image))
            expected.append(qa[1])
    got = [r.text.strip() for r in demo_pipe(prompts, gen_config=GEN)]
    assert got == expected


def test_captions_name_every_object(demo_pipe):
    scene_list = [scenes.make_scene(seed) for seed in SEEDS]
    for scene, r in zip(scene_list, demo_pipe([("Describe the image.", s.image) for s in scene_list], gen_config=GEN)):
        assert r.finish_reason == "stop"
        for o in scene.objects:
            assert o.name in r.text, (scene.seed, r.text)


@pytest.mark.parametrize("kind", ["caption", "colour"])
def test_greedy_parity_with_transformers(demo_pipe, kind):
    scene = scenes.make_scene(SEEDS[2])
    question, _ = scene.question(kind, random.Random(1))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    ref_inputs = tm.hf_inputs(DEMO_MODEL_PATH, messages, [scene.image])
    expected = tm.hf_greedy(DEMO_MODEL_PATH, ref_inputs, max_new_tokens=40)
    r = demo_pipe((question, scene.image), gen_config=GEN)
    assert r.input_token_len == ref_inputs["input_ids"].shape[1]
    # transformers stopped on eos and returns it; seer leaves the stop token out (as LMDeploy)
    assert expected[-1] == demo_pipe.tokenizer.eos_token_id
    assert r.token_ids == expected[:-1]
    assert r.finish_reason == "stop"


# ---- questions as people phrase them (issue 17) ----

def test_heldout_phrasings_never_trained_on():
    # scenes asserts this at import; the issue's own questions are part of the held-out set
    scenes._check_disjoint()
    held = {t for v in scenes.HELDOUT_PHRASINGS.values() for t, _ in v}
    assert {"Where is the {ref}?", "What shape is at the {side}?", "describe this image"} <= held
    assert scenes.normalize_answer("On the left.") == scenes.normalize_answer("left")
    assert scenes.normalize_answer("There are 3") == "3"


@pytest.mark.parametrize("ho", [2, 3])
def test_later_heldout_lists_are_fresh(ho):
    """The second and third held-out lists (written before the fifth and the seventh fine-tunings)
    cover every kind, share nothing with an earlier list, and no training wording (the seventh
    run's grammar included) equals or contains one of their wordings."""
    scenes._check_disjoint()
    phr = scenes.HELDOUT_SETS[ho][0]
    assert set(phr) == set(scenes.HELDOUT_PHRASINGS)
    c = scenes._core
    train = [f" {c(t)} " for v in (*scenes.PHRASINGS.values(), *scenes.COMPOSED.values(),
                                    *scenes.EXTRA_PHRASINGS.values(),
                                    *(v for k, v in scenes.GRAMMAR7.items() if k != "outside")) for t, _ in v]
    earlier = {c(t) for h in range(1, ho) for v in scenes.HELDOUT_SETS[h][0].values() for t, _ in v}
    for v in phr.values():
        for t, _ in v:
            assert not any(f" {c(t)} " in x for x in train), t
            assert c(t) not in earlier, t
    for kind in scenes.PHRASED_KINDS:
        items = scenes.phrased_eval_items(kind, 3, later=True, heldout=ho)
        assert len(items) == 3 and all(q for _, _, q, _ in items)


def test_grammar_wordings():
    """The seventh run's grammar: nested groups expand, every wording is filled in, none is or
    contains a held-out wording, and no held-out noun or out-of-scope question is drawn."""
    import random

    import wordings7

    rng = random.Random(0)
    assert {wordings7.expand("[a|b [c|d]] e[| f]?", rng) for _ in range(200)} == {
        "a e?", "a e f?", "b c e?", "b c e f?", "b d e?", "b d e f?"}
    assert wordings7.expand("what [is|'s] it ?", random.Random(1)) in ("what is it?", "what's it?")
    g = scenes.GRAMMAR7
    assert set(g) == set(scenes.HELDOUT_PHRASINGS) | {"outside"}
    c = scenes._core
    held = {c(t) for phr, *_ in scenes.HELDOUT_SETS.values() for v in phr.values() for t, _ in v}
    for key, v in g.items():
        assert len(v) > 100, key
        for t in (x if key == "outside" else x[0] for x in v):
            assert "[" not in t and "]" not in t and "  " not in t, t
            assert c(t) not in held and not scenes._contains_held(t), t
    held_nouns = {n for _, _, nouns, _ in scenes.HELDOUT_SETS.values() for n in nouns}
    assert scenes.GRAMMAR7_NOUNS and not held_nouns & set(scenes.GRAMMAR7_NOUNS)
    # a training Phraser with grammar=1 draws every phrased question from the grammar
    rng = random.Random(1)
    ph = scenes.Phraser(scenes.make_scene(5), grammar=1.0)
    for kind in ("count", "text", "caption"):
        for _ in range(20):
            q, _, _ = ph.ask(kind, rng)
            assert q in {t for t, _ in g[kind]}, q


def test_extra_wordings_and_roughen():
    """The sixth fine-tuning's wordings contain no held-out wording (of three words or more), and
    roughen's noise never touches a word that carries the answer."""
    import random

    c = scenes._core
    held = {c(t) for ph, *_ in scenes.HELDOUT_SETS.values() for v in ph.values() for t, _ in v}
    for v in scenes.EXTRA_PHRASINGS.values():
        for t, _ in v:
            assert not any(len(h.split()) >= 3 and f" {h} " in f" {c(t)} " for h in held), t
    import re

    rng = random.Random(0)
    for _ in range(300):
        q = scenes.roughen("Is the red star bigger than the blue ring on the left?", rng)
        words = re.findall(r"\w+", q.lower())
        assert all(w in words for w in ("red", "star", "bigger", "blue", "ring", "left")), q


def _chat(scene, *turns):
    """Messages: the image with the first question, then each (answer, question) pair."""
    msgs = [{"role": "user", "content": [{"type": "image", "image": scene.image}, {"type": "text", "text": turns[0]}]}]
    for answer, question in zip(turns[1::2], turns[2::2]):
        msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": question}]
    return msgs


def test_heldout_phrasings_first_and_later_turns(demo_pipe):
    """A sample of the eval's held-out phrasings (scripts/eval_demo_model.py scores 500 per type).
    A regression guard below the shipped model's level (103 of these 108, 95%; the sixth model got
    99, the fourth 97, the weights before the fourth fine-tuning 88, 81%, before the composed
    wordings 82, 76%; the model before issue 17 about 40%), not issue 17's targets, which it does
    not reach in every type yet."""
    items = [(kind, it) for kind in scenes.PHRASED_KINDS for later in (False, True)
             for it in scenes.phrased_eval_items(kind, 6, later=later)]
    convs = []
    for _, (scene, history, q, _) in items:
        msgs = []
        for i, (hq, ha) in enumerate(history + [(q, None)]):
            content = ([{"type": "image", "image": scene.image}] if i == 0 else []) + [{"type": "text", "text": hq}]
            msgs.append({"role": "user", "content": content})
            if ha is not None:
                msgs.append({"role": "assistant", "content": ha})
        convs.append(msgs)
    got = [r.text.strip() for r in demo_pipe(convs, gen_config=GEN)]
    ok = [scenes.phrased_correct(kind, t, it[3], it[0]) for t, (kind, it) in zip(got, items)]
    assert sum(ok) >= 0.85 * len(ok), [(it[2], it[3], t) for good, t, (_, it) in zip(ok, got, items) if not good]


def test_out_of_scope_questions_get_the_fixed_reply(demo_pipe):
    scene = scenes.make_scene(SEEDS[3])
    questions = ["What breed is the dog?", "What is the weather like?", "Who took this photo?"]
    got = [r.text.strip() for r in demo_pipe([(q, scene.image) for q in questions], gen_config=GEN)]
    assert got == [scenes.OUT_OF_SCOPE_REPLY] * len(questions)


def test_later_turn_count(demo_pipe):
    """Issue 17: a second-turn count on a four-object scene answered "3"."""
    scene = next(s for s in map(scenes.make_scene, range(scenes.EVAL_SEED_START + 40, scenes.EVAL_SEED_START + 400))
                 if len(s.objects) == 4)
    colour_q = f"What colour is the {scene.objects[0].shape}?"
    r = demo_pipe(_chat(scene, colour_q, scene.objects[0].colour, "How many shapes are there?"), gen_config=GEN)
    assert scenes.normalize_answer(r.text) == "4"


# ---- `seer run`, `seer chat` and `seer serve` without a model: the demo model, and they say so ----

def _scene_file(tmp_path, seed=SEEDS[1]):
    scene = scenes.make_scene(seed)
    path = tmp_path / "scene.png"
    scene.image.save(path)
    question, answer = scene.question("colour", random.Random(seed))
    return str(path), question, answer


def test_seer_run_defaults_to_the_demo_model(tmp_path):
    import subprocess

    path, question, answer = _scene_file(tmp_path)
    out = subprocess.run([sys.executable, "-m", "seer", "run", question, "--image", path],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "using seer's demo model" in out.stderr and DEMO_MODEL_PATH in out.stderr
    assert out.stdout == answer + "\n"


def test_seer_chat_defaults_to_the_demo_model(tmp_path):
    import subprocess

    path, question, answer = _scene_file(tmp_path)
    out = subprocess.run([sys.executable, "-m", "seer", "chat"], input=f"/image {path}\n{question}\n/exit\n",
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "using seer's demo model" in out.stderr
    assert answer + "\n" in out.stdout


def test_seer_serve_defaults_to_the_demo_model(tmp_path):
    import base64

    import httpx
    from server_proc import ServerProcess

    path, question, answer = _scene_file(tmp_path)
    with open(path, "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    server = ServerProcess.start(None)
    try:
        assert "using seer's demo model" in server.log()
        models = httpx.get(server.url + "/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["seer-demo-vlm"]
        body = {"model": "seer-demo-vlm", "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}]}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == answer
    finally:
        assert server.stop() == 0
