"""seer against llama.cpp on this CPU: decode and prefill, fp32 and quantised, in one run.

The 110M Llama of ``text_llm.py`` (hidden 768, 12 layers, vocab 32000), 2 threads. Decode:
32-token prompts (token ids), 128 new tokens, eos ignored, batch 1 / 16 / 64, aggregate output
tokens/s of generation alone, as llama-batched-bench's S_TG counts it: seer's prompts are first
prefilled by a ``generate`` of their own (the prefix cache is on, as by default), so the timed one
recomputes one prompt token per request before its 128 decode steps. Prefill: 512-token prompts,
one new token, batch 1 / 8, prompt tokens/s. seer runs through ``LLM.generate`` (fp32,
``quantization="int8"``, ``"int4"``), llama.cpp through ``llama-batched-bench`` (f32, q8_0, q4_0;
``benchmarks/llamacpp.py build`` makes it). Each measurement is its own process; the engines
alternate, ``--repeats`` rounds, best of each kept (the cores are shared: a single figure can be
off by 2x).

    python benchmarks/llamacpp.py build          # once: llama.cpp, the GGUF files (minutes)
    python benchmarks/cpu_speed.py --write       # the table into BENCHMARKS.md ("cpu" section)
    python benchmarks/cpu_speed.py --engines seer --quants f32,int8   # seer alone
    python benchmarks/cpu_speed.py --quants f32,int8,int4,int8+bf16kv  # + seer with a bf16 KV cache
    python benchmarks/cpu_speed.py --quants f32,int4 --batches 1 --no-prefill --repeats 5  # batch 1, round by round
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE]

from text_llm import MODEL, REPO, build  # noqa: E402

DECODE = dict(npp=32, ntg=128, batches=(1, 16, 64))
PREFILL = dict(npp=512, ntg=1, batches=(1, 8))
SEER_QUANT = {"f32": None, "int8": "int8", "int4": "int4"}  # row label -> EngineConfig.quantization
# A label may end in "+bf16kv": seer with kv_cache_dtype="bfloat16" (llama.cpp's cache is f16 by default);
# such rows reuse the llama.cpp figure of their weights.
KV_SUFFIX = "+bf16kv"
# llama.cpp's q4_0 file keeps its tied embedding / LM head in Q6_K (llama-quantize's default).
LLAMA_QUANT = {"f32": "f32", "int8": "q8_0", "int4": "q4_0"}


def seer_child(quant: str, batch: int, npp: int, ntg: int) -> dict:
    """One seer measurement: tokens/s of the output (decode) or of the prompts (prefill)."""
    import resource

    import torch

    from seer import LLM, SamplingParams

    torch.set_num_threads(2)
    llm = LLM(model=MODEL, quantization=SEER_QUANT[quant.removesuffix(KV_SUFFIX)],
              kv_cache_dtype="bfloat16" if quant.endswith(KV_SUFFIX) else "auto", max_num_seqs=max(batch, 1),
              max_num_batched_tokens=max(npp * batch, 512), max_model_len=npp + ntg + 8)
    prompts = [{"prompt_token_ids": [(7 * i + 13 * t) % 900 + 50 for t in range(npp)]} for i in range(batch)]
    params = SamplingParams(max_tokens=ntg, ignore_eos=True, temperature=0)
    if ntg > 1:  # decode: the prompts go through prefill first, so the timed run is generation (as S_TG)
        warm = prompts
    else:  # prefill: the warm-up shares no prefix with the prompts
        warm = [{"prompt_token_ids": [(11 * t) % 900 + 60 for t in range(npp)]}]
    llm.generate(warm, SamplingParams(max_tokens=4, ignore_eos=True, temperature=0), use_tqdm=False)
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t
    assert all(len(o.outputs[0].token_ids) == ntg for o in outs)
    from seer._malloc import trim

    trim()
    with open("/proc/self/statm") as f:  # resident now: weights + KV pool, after the run
        rss_now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    llm.close()
    tokens = batch * (ntg if ntg > 1 else npp)
    return {"tok_s": tokens / dt, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_mib": rss_now}


def measure(engine: str, quant: str, batch: int, npp: int, ntg: int) -> float:
    if engine == "seer":
        out = subprocess.run([sys.executable, __file__, "--child", quant, str(batch), str(npp), str(ntg)],
                             capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(line[0][7:])["tok_s"]
    import llamacpp

    rows = llamacpp.run(llamacpp.GGUF.format(LLAMA_QUANT[quant.removesuffix(KV_SUFFIX)]), npl=(batch,), npp=npp,
                        ntg=ntg)
    return rows[0]["tg_tok_s"] if ntg > 1 else rows[0]["pp_tok_s"]


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="seer,llama.cpp")
    ap.add_argument("--quants", default="f32,int8,int4")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--batches", type=int, nargs="+", help="decode batch sizes (default 1 16 64)")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        q, b, npp, ntg = a.child
        print("RESULT " + json.dumps(seer_child(q, int(b), int(npp), int(ntg))))
        return 0
    build()
    engines, quants = a.engines.split(","), a.quants.split(",")
    decode = dict(DECODE, batches=tuple(a.batches)) if a.batches else DECODE
    shapes = [("decode", decode)] + ([] if a.no_prefill else [("prefill", PREFILL)])
    best: dict = {}
    pairs: dict = {}  # (kind, batch, quant) -> seer / llama.cpp of each round: one timing is never trusted
    loads = [load_average()]
    this_round: dict = {}  # seer's figure of a row, until the llama.cpp run after it
    for _ in range(a.repeats):
        for kind, s in shapes:
            for b in s["batches"]:
                for q in quants:
                    for e in engines:  # alternate the engines on every row
                        if e == "llama.cpp" and q.endswith(KV_SUFFIX):
                            continue  # the same llama.cpp run as the row without the suffix
                        v = measure(e, q, b, s["npp"], s["ntg"])
                        key = (kind, b, q, e)
                        best[key] = max(best.get(key, 0.0), v)
                        print(f"{kind:>7} batch {b:>2} {q:>4} {e:>9}: {v:7.1f} tok/s", flush=True)
                        if e == "seer":
                            this_round[(kind, b, q)] = v
                        elif (kind, b, q) in this_round:  # seer's figure of this round, just before
                            pairs.setdefault((kind, b, q), []).append(this_round.pop((kind, b, q)) / v)
        loads.append(load_average())
    rows = []
    for kind, s in shapes:
        for b in s["batches"]:
            for q in quants:
                base = q.removesuffix(KV_SUFFIX)
                se, lc = best.get((kind, b, q, "seer")), best.get((kind, b, base, "llama.cpp"))
                ratio = f"{se / lc:.2f}x" if se and lc else "-"
                label = f"{base}, bf16 KV" if q != base else base
                rows.append(f"| {kind} | {b} | {label} / {LLAMA_QUANT[base]} | {se or 0:.1f} | {lc or 0:.1f} | {ratio} |")
    print("\n".join(rows))
    for (kind, b, q), rs in pairs.items():  # each round's seer against the llama.cpp run after it
        print(f"{kind} batch {b} {q}: rounds " + ", ".join(f"{r:.2f}x" for r in rs))
    if a.write:
        from offline import machine_info, write_section

        info = machine_info()
        lines = ["## CPU: seer against llama.cpp, 110M Llama, 2 threads", "",
                 f"Command: `python benchmarks/cpu_speed.py{'' if a.quants == 'f32,int8,int4' else ' --quants ' + a.quants}"
                 f" --write` ({time.strftime('%Y-%m-%d')}; {info.get('cpu', '')}, "
                 f"torch {info.get('torch', '')}; load average before and after each round: {', '.join(loads)}). "
                 f"Decode: 32-token prompts, 128 new tokens, output tokens/s of generation alone (seer's prompts "
                 f"prefilled by an earlier call, as llama-batched-bench's S_TG leaves prompt processing out); prefill: 512-token prompts, prompt "
                 f"tokens/s. Each figure the best of {a.repeats}, the engines alternating row by row.", "",
                 "| kind | batch | seer / llama.cpp weights | seer tok/s | llama.cpp tok/s | seer / llama.cpp |",
                 "|---|---|---|---|---|---|", *rows]
        write_section(os.path.join(REPO, "BENCHMARKS.md"), "cpu", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
