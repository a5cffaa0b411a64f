"""Structured output's cost: decode with a JSON schema against unconstrained, same model, same run.

The language model of the benchmark LLaVA (``models.py``: a ~100M Llama with a 32000-token
byte-level BPE, so the masks cover a realistic vocabulary; fp32, 2 threads), 128 new tokens per
request at batch 1 and 16.
The constrained run asks for ``{"story": <a string of at least 4000 characters>}``, so every
request runs its 128 tokens under the grammar (the mask of each row computed each step); the
unconstrained run ignores eos. The two alternate, ``--repeats`` times each; the best of each is
kept. Also: the time to wrap the tokenizer for llguidance, to compile a 20-field schema the
first time, and to get it again from the cache.

    python benchmarks/structured.py --write      # updates the "structured" section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE]

from models import DEFAULT_LM, build_llava_100m, build_llava_100m_lm  # noqa: E402
from text_llm import NEW, REPO, prompts  # noqa: E402

LONG = {"type": "json_schema", "json_schema": {"name": "story", "schema": {
    "type": "object", "required": ["story"], "additionalProperties": False,
    "properties": {"story": {"type": "string", "minLength": 4000}}}}}
KINDS = [{"type": "string", "maxLength": 32}, {"type": "integer", "minimum": 0, "maximum": 10**6},
         {"type": "number"}, {"type": "boolean"}, {"enum": ["red", "green", "blue", "yellow"]},
         {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
         {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4}$"}]
WIDE = {"type": "json_schema", "json_schema": {"name": "record", "schema": {
    "type": "object", "additionalProperties": False, "required": [f"field_{i}" for i in range(20)],
    "properties": {f"field_{i}": KINDS[i % len(KINDS)] for i in range(20)}}}}


def run(pipe, batch: int, constrained: bool) -> float:
    from seer import GenerationConfig

    gen = GenerationConfig(max_new_tokens=NEW, ignore_eos=True, response_format=LONG if constrained else None)
    t = time.perf_counter()
    out = pipe(prompts(batch), gen_config=gen)
    dt = time.perf_counter() - t
    assert all(r.generate_token_len == NEW for r in out), [(r.finish_reason, r.generate_token_len) for r in out]
    return batch * NEW / dt


def compile_times(pipe) -> dict:
    from seer.engine.grammar import GrammarCompiler, check_response_format

    fresh = GrammarCompiler(pipe.tokenizer, pipe.family.eos_token_ids)
    t0 = time.perf_counter()
    fresh._tokenizer()
    t1 = time.perf_counter()
    rf = check_response_format(WIDE)
    fresh.matcher(rf)
    t2 = time.perf_counter()
    fresh.matcher(rf)
    t3 = time.perf_counter()
    return {"tokenizer_ms": (t1 - t0) * 1e3, "first_ms": (t2 - t1) * 1e3, "cached_ms": (t3 - t2) * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    a = ap.parse_args(argv)
    import torch

    from seer import EngineConfig, GenerationConfig, pipeline

    torch.set_num_threads(2)
    build_llava_100m()
    build_llava_100m_lm()
    batches = [int(b) for b in a.batches.split(",")]
    pipe = pipeline(DEFAULT_LM, EngineConfig(max_batch_size=max(batches), num_gpu_blocks=max(batches) * 12 + 8))
    pipe("warm up", gen_config=GenerationConfig(max_new_tokens=4, ignore_eos=True, response_format=LONG))
    times = compile_times(pipe)
    print(f"llguidance tokenizer {times['tokenizer_ms']:.0f} ms; 20-field schema: first compile "
          f"{times['first_ms']:.1f} ms, cached {times['cached_ms']:.2f} ms", flush=True)
    best = {}
    for b in batches:
        for _ in range(a.repeats):
            for constrained in (False, True):
                tok_s = run(pipe, b, constrained)
                best[b, constrained] = max(best.get((b, constrained), 0.0), tok_s)
                print(f"batch {b:>2} {'json schema' if constrained else 'free':>11}: {tok_s:6.1f} tok/s", flush=True)
    pipe.close()
    rows = [(b, best[b, False], best[b, True]) for b in batches]
    for b, free, js in rows:
        print(f"batch {b}: free {free:.1f}, json schema {js:.1f} tok/s ({js / free - 1:+.1%})")
    if a.write:
        from offline import machine_info, write_section

        info = machine_info()
        lines = ["## Structured output: a JSON schema against free decoding, ~100M Llama (vocab 32000), fp32", "",
                 f"Command: `python benchmarks/structured.py --write` ({time.strftime('%Y-%m-%d')}; "
                 f"{info.get('cpu', '')}, torch {info.get('torch', '')}). 128 new tokens per request, all "
                 f"of them under the grammar (a string of >= 4000 characters inside a JSON object) or free "
                 f"(eos ignored); the two alternate, best of {a.repeats} each.", "",
                 "| batch | free tok/s | JSON schema tok/s | constrained vs free |", "|---|---|---|---|"]
        lines += [f"| {b} | {free:.1f} | {js:.1f} | {js / free - 1:+.1%} |" for b, free, js in rows]
        lines += ["", f"Grammar compile, 20-field schema (strings, integers, numbers, booleans, enums, arrays, a "
                      f"pattern): first {times['first_ms']:.1f} ms, from the cache {times['cached_ms']:.2f} ms; "
                      f"wrapping the tokenizer for llguidance once per engine: {times['tokenizer_ms']:.0f} ms."]
        write_section(os.path.join(REPO, "BENCHMARKS.md"), "structured", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
