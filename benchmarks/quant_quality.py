"""What quantised weights and a bf16 KV cache cost in answers, against fp32.

1. The 110M Llama of ``text_llm.py`` (random weights): 16 prompts, the first 32 greedy tokens;
   the share equal to fp32's at the same position, and the share of requests whose 32 tokens are
   all equal; teacher-forced (every position scored on the same tokens), the share of positions
   whose argmax is fp32's.
2. The shipped demo model (trained): held-out scenes, ``--demo`` questions per type (shape,
   colour, count, position), the share answered exactly right, as ``tests/test_quantization.py``
   scores them.

    python benchmarks/quant_quality.py --write     # the "quality" section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE, os.path.join(REPO, "scripts")]

from text_llm import MODEL, build  # noqa: E402

MODES = {"fp32": {}, "int8": {"quantization": "int8"}, "int4": {"quantization": "int4"},
         "fp32, bf16 KV": {"kv_cache_dtype": "bfloat16"}, "int8, bf16 KV": {"quantization": "int8",
                                                                           "kv_cache_dtype": "bfloat16"}}


def llama_scores(cfg: dict, prompts, ids) -> tuple[list, list]:
    from seer import LLM, SamplingParams

    llm = LLM(model=MODEL, **cfg)
    try:
        outs = llm.generate(prompts, SamplingParams(max_tokens=32, temperature=0, ignore_eos=True), use_tqdm=False)
        logits = llm._pipe.get_logits(ids)
    finally:
        llm.close()
    return [list(o.outputs[0].token_ids) for o in outs], [lg.argmax(-1) for lg in logits]


def demo_scores(cfg: dict, n: int) -> dict:
    import scenes

    from seer import EngineConfig, GenerationConfig, pipeline
    from seer.assets import default_model_path

    items = {k: scenes.eval_items(k, n) for k in ("shape", "colour", "count", "position")}
    with pipeline(default_model_path(), EngineConfig(**cfg)) as pipe:
        out = {}
        for kind, its in items.items():
            answers = pipe([(q, s.image) for s, q, _ in its], gen_config=GenerationConfig(max_new_tokens=8))
            out[kind] = sum(o.text.strip() == a for o, (_, _, a) in zip(answers, its)) / len(its)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=int, default=200, help="held-out questions per type for the demo model")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    build()
    prompts = [{"prompt_token_ids": [(7 * i + 13 * t) % 900 + 50 for t in range(32)]} for i in range(16)]
    ids = [[(11 * i + 5 * t) % 900 + 60 for t in range(64)] for i in range(8)]
    ref_tokens, ref_argmax = llama_scores({}, prompts, ids)
    ref_demo = demo_scores({}, args.demo)
    rows = []
    for name, cfg in MODES.items():
        tokens, argmax = (ref_tokens, ref_argmax) if not cfg else llama_scores(cfg, prompts, ids)
        demo = ref_demo if not cfg else demo_scores(cfg, args.demo)
        same = sum(a == b for t, r in zip(tokens, ref_tokens) for a, b in zip(t, r)) / sum(map(len, ref_tokens))
        whole = sum(t == r for t, r in zip(tokens, ref_tokens)) / len(ref_tokens)
        agree = float(torch.cat([(a == b).float() for a, b in zip(argmax, ref_argmax)]).mean())
        cells = " | ".join(f"{100 * demo[k]:.1f}" for k in ("shape", "colour", "count", "position"))
        rows.append(f"| {name} | {100 * same:.1f}% | {100 * whole:.0f}% | {100 * agree:.1f}% | {cells} |")
        print(rows[-1], flush=True)
    lines = ["## Quantised weights and a bf16 KV cache: answers against fp32", "",
             f"Command: `python benchmarks/quant_quality.py --write`. 110M Llama (random weights): 16 prompts of 32 "
             f"tokens, 32 greedy tokens each; teacher-forced argmax over 8 x 64 tokens. Demo model: {args.demo} "
             "held-out scenes per question type, exact answers (%).", "",
             "| weights | greedy tokens equal to fp32 | requests all 32 equal | teacher-forced argmax equal | "
             "demo shape | demo colour | demo count | demo position |",
             "|---|---|---|---|---|---|---|---|", *rows]
    print("\n".join(lines))
    if args.write:
        from offline import write_section

        write_section(os.path.join(REPO, "BENCHMARKS.md"), "quality", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
