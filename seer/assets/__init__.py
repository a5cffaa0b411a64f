"""Files shipped inside the seer package.

``demo-vlm/`` is seer's own demo model: a small LLaVA-1.5-layout VLM (CLIP-style vision
tower, projector, Llama-style decoder, its own tokenizer and chat template) trained by
``scripts/train_demo_model.py`` on synthetic scenes of coloured shapes and short printed
words (``scripts/scenes.py``). It answers questions about such scenes (shapes, colours,
counts, positions, sizes, the printed text) and captions them; it knows nothing else.
``seer run``/``chat``/``serve`` and ``make demo`` use it when no model is given.
"""

from __future__ import annotations

import os

DEMO_MODEL_NAME = "seer-demo-vlm"
DEMO_MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo-vlm")


def default_model_path() -> str:
    """The folder of the shipped demo model (Hugging Face layout, loadable by ``seer.pipeline``)."""
    if not os.path.isfile(os.path.join(DEMO_MODEL_PATH, "config.json")):
        raise FileNotFoundError(
            f"seer's demo model is missing from {DEMO_MODEL_PATH}; reinstall seer, or rebuild it with "
            f"`python scripts/train_demo_model.py` from a source checkout")
    return DEMO_MODEL_PATH


__all__ = ["DEMO_MODEL_NAME", "DEMO_MODEL_PATH", "default_model_path"]
