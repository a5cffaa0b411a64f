"""`make demo`: seer's offline pipeline on its shipped demo model and a scene shipped in the repo.

The model (``seer/assets/demo-vlm``) is a 2.7M-parameter LLaVA-1.5-layout VLM that seer trained
itself on synthetic scenes of coloured shapes (``scripts/train_demo_model.py``); it loads through
the same code path as any LLaVA checkpoint. ``assets/demo.png`` is a held-out scene (never trained
on). The demo asks for a caption, streams one answer, then runs a batch of questions.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTIONS = ["How many shapes are there?", "What colour is the ring?", "Is the star on the left or the right?",
             "Which is bigger, the ring or the star?", "What shape is the orange object?"]


def main() -> None:
    from seer import GenerationConfig, pipeline
    from seer.assets import default_model_path
    from seer.vl import load_image

    model = default_model_path()
    image_path = os.path.join(ROOT, "assets", "demo.png")
    image = load_image(image_path)
    print(f"model: {model} (seer's demo VLM, trained on synthetic scenes)\nimage: {image_path}")
    t0 = time.time()
    gen = GenerationConfig(max_new_tokens=40)
    with pipeline(model) as pipe:
        r = pipe(("Describe the image.", image), gen_config=gen)
        print(f"\nQ: Describe the image.\nA: {r.text}")
        print(f"   ({r.input_token_len} prompt tokens incl. {pipe.family.tokens_per_image} image tokens, "
              f"{r.generate_token_len} generated, finish_reason={r.finish_reason})")
        print(f"\nQ: {QUESTIONS[0]} (streamed)\nA: ", end="", flush=True)
        for delta in pipe.stream_infer([(QUESTIONS[0], image)], gen_config=gen):
            print(delta.text, end="", flush=True)
        print("\n\nA batch of questions about the same image (its features are encoded once):")
        for q, b in zip(QUESTIONS[1:], pipe([(q, image) for q in QUESTIONS[1:]], gen_config=gen)):
            print(f"Q: {q}\nA: {b.text}")
    print(f"\ndone in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
