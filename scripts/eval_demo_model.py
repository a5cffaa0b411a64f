"""Score seer's demo VLM through ``seer.pipeline`` on held-out synthetic scenes.

For every question kind of ``scripts/scenes.py`` (shape, colour, count, position, bigger,
text) it asks 500 held-out scenes (seeds from ``scenes.EVAL_SEED_START``, never used in
training), all in one batched greedy ``pipe(...)`` call per kind, and reports exact match
of the answer. Captions are scored by whether they name every object (colour and shape),
with the exact-caption rate beside it.

    python scripts/eval_demo_model.py                  # print the table
    python scripts/eval_demo_model.py --write-readme   # and put it into README.md

The README table sits between ``<!-- demo-eval:begin -->`` and ``<!-- demo-eval:end -->``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import scenes  # noqa: E402

BEGIN, END = "<!-- demo-eval:begin -->", "<!-- demo-eval:end -->"
TARGETS = {"shape": 0.95, "colour": 0.95, "count": 0.90, "position": 0.90, "caption": 1.0}


def caption_names_all(text: str, scene) -> bool:
    """Every object appears as "COLOUR SHAPE" in the caption."""
    words = text.replace(",", " ").split()
    pairs = {" ".join(words[i:i + 2]) for i in range(len(words) - 1)}
    return all(o.name in pairs for o in scene.objects)


def evaluate(model: str, n: int, threads: int, max_new_tokens: int = 40, show_errors: int = 0) -> dict:
    import torch

    from seer import EngineConfig, GenerationConfig, VisionConfig, pipeline

    torch.set_num_threads(threads)
    results = {}
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    with pipeline(model, backend_config=EngineConfig(max_batch_size=256),
                  vision_config=VisionConfig(max_batch_size=64)) as pipe:
        for kind in scenes.KINDS:
            t0 = time.time()
            items = scenes.eval_items(kind, n)
            responses = pipe([(q, scene.image) for scene, q, _ in items], gen_config=gen)
            texts = [r.text.strip() for r in responses]
            exact = [t == a for t, (_, _, a) in zip(texts, items)]
            if kind == "caption":
                named = [caption_names_all(t, s) for t, (s, _, _) in zip(texts, items)]
                score = sum(named) / n
            else:
                named = exact
                score = sum(exact) / n
            results[kind] = {"score": score, "exact": sum(exact) / n, "n": n,
                             "example": (items[0][1], items[0][2]), "seconds": time.time() - t0}
            print(f"{kind:9s} {score:6.1%}  (exact {sum(exact) / n:6.1%}, {time.time() - t0:.1f} s)", flush=True)
            wrong = [(s.seed, q, a, t) for ok, t, (s, q, a) in zip(named, texts, items) if not ok]
            for seed, q, a, t in wrong[:show_errors]:
                print(f"    seed {seed}: {q!r} expected {a!r} got {t!r}")
    return results


def table(results: dict, n: int) -> str:
    rows = ["| question type | example question | expected answer | score |",
            "|---|---|---|---|"]
    for kind, r in results.items():
        q, a = r["example"]
        if kind == "caption":
            score = f"{r['score']:.1%} name every object ({r['exact']:.1%} exact)"
        else:
            score = f"{r['score']:.1%} exact match"
        rows.append(f"| {kind} | {q} | {a} | {score} |")
    return (f"Scored by `python scripts/eval_demo_model.py` through `seer.pipeline` (batched, greedy) on "
            f"{n} held-out scenes per question type:\n\n" + "\n".join(rows))


def write_readme(text: str, path: str = os.path.join(ROOT, "README.md")) -> None:
    with open(path, encoding="utf-8") as f:
        readme = f.read()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"wrote the table into {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped demo model)")
    ap.add_argument("--n", type=int, default=500, help="held-out scenes per question type")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show-errors", type=int, default=0, help="print up to N wrong answers per type")
    ap.add_argument("--write-readme", action="store_true")
    a = ap.parse_args(argv)
    if a.model is None:
        from seer.assets import default_model_path

        a.model = default_model_path()
    print(f"model: {a.model}")
    results = evaluate(a.model, a.n, a.threads, show_errors=a.show_errors)
    text = table(results, a.n)
    print("\n" + text)
    missed = [k for k, t in TARGETS.items() if results[k]["score"] < t]
    if missed:
        print("\nbelow target: " + ", ".join(f"{k} ({results[k]['score']:.1%} < {TARGETS[k]:.0%})" for k in missed))
    if a.write_readme:
        write_readme(text)


if __name__ == "__main__":
    main()
