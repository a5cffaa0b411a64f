"""`make demo`: run the offline pipeline on an image shipped in the repo.

Until seer ships its own trained demo model, this builds a tiny LLaVA-1.5-layout
checkpoint with RANDOM weights (the same builder the tests use), so the text it
prints is gibberish: what the demo shows is the whole path working end to end —
image loading, chat template, vision encoder, paged-KV engine, streaming.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    import tiny_models

    from seer import GenerationConfig, pipeline
    from seer.vl import load_image

    model_dir = os.path.join(ROOT, ".demo-model")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        tiny_models.build_llava(model_dir, lm="llama")
    image = load_image(os.path.join(ROOT, "assets", "demo.png"))
    print(f"model: {model_dir} (tiny LLaVA layout, RANDOM weights: expect gibberish text)")
    t0 = time.time()
    with pipeline(model_dir) as pipe:
        gen = GenerationConfig(max_new_tokens=24)
        r = pipe(("Describe this image.", image), gen_config=gen)
        print(f"\nQ: Describe this image.\nA: {r.text!r}")
        print(f"   ({r.input_token_len} prompt tokens incl. {pipe.family.tokens_per_image} image tokens, "
              f"{r.generate_token_len} generated, finish_reason={r.finish_reason})")
        print("\nQ: What colour is the circle? (streamed)\nA: ", end="", flush=True)
        for delta in pipe.stream_infer([("What colour is the circle?", image)], gen_config=gen):
            print(delta.text, end="", flush=True)
        print()
        batch = pipe([("What shapes are there?", image), "Hello, who are you?"], gen_config=gen)
        print(f"\nbatch of {len(batch)}: " + ", ".join(f"{b.generate_token_len} tokens ({b.finish_reason})"
                                                      for b in batch))
    print(f"\ndone in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
