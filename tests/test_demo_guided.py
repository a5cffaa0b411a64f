"""Structured output on the shipped demo model: guided choice keeps what the model knows.

Position questions on held-out scenes, asked greedy and free, then with the answer held to the
two sides of the question's axis (``{"type": "choice"}``, vLLM's ``guided_choice``): every guided
answer is one of the two, and the guided accuracy is at least the free one (a grammar that only
removes tokens the model would not have chosen changes nothing; where the free answer strays,
the choice can only help)."""

import os
import sys

from seer import GenerationConfig, pipeline
from seer.assets import default_model_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import scenes  # noqa: E402

N = 60


def test_guided_choice_on_position_questions_keeps_or_beats_the_free_accuracy():
    items = scenes.eval_items("position", N)
    prompts = [(question, scene.image) for scene, question, _ in items]
    sides = [["left", "right"] if answer in ("left", "right") else ["top", "bottom"] for _, _, answer in items]
    with pipeline(default_model_path()) as pipe:
        free = pipe(prompts, gen_config=GenerationConfig(max_new_tokens=8))
        guided = pipe(prompts, gen_config=[GenerationConfig(max_new_tokens=8, response_format={
            "type": "choice", "choice": s}) for s in sides])
    want = [answer for _, _, answer in items]
    assert all(g.text in s and g.finish_reason == "stop" for g, s in zip(guided, sides))
    free_acc = sum(r.text.strip() == a for r, a in zip(free, want)) / N
    guided_acc = sum(r.text == a for r, a in zip(guided, want)) / N
    print(f"position accuracy: free {free_acc:.2f}, guided {guided_acc:.2f}")
    assert guided_acc >= free_acc and guided_acc >= 0.85, (free_acc, guided_acc)
