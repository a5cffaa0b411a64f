"""Text-only decode throughput: a 110M-parameter Llama, fp32, 128 new tokens, batch 1/16/64.

The same shape as the reference figures in the project brief (transformers `generate`:
30 / 153 / ~200 tokens/s; llama.cpp: 72 / 319 / 382 on these 2-core machines). seer and
transformers `generate` run in the same invocation, each batch size in its own subprocess;
aggregate output tokens/s counts 128 tokens per request (eos ignored).

    python benchmarks/text_llm.py --write        # updates the "text" section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE, os.path.join(REPO, "tests")]

MODEL = os.path.join(REPO, ".bench", "llama-110m")
NEW = 128


def build(path: str = MODEL) -> str:
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import tiny_models

    tok = tiny_models.build_tokenizer(path, chat_template="chatml")
    cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def prompts(n: int) -> list[str]:
    return [f"Request {i}: tell me a story about a red circle and a blue square" for i in range(n)]


def child(engine: str, batch: int, device: str = "cpu", tp: int = 1) -> dict:
    """One engine at one batch size; on ``cuda`` both engines run in bf16, on ``cpu`` in fp32.
    ``tp`` > 1 (seer only): that many tensor-parallel ranks; the result adds each rank's RSS."""
    import torch

    torch.set_num_threads(2)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if engine == "seer":
        from seer import EngineConfig, GenerationConfig, pipeline

        pipe = pipeline(MODEL, EngineConfig(max_batch_size=max(batch, 1), num_gpu_blocks=batch * 12 + 8,
                                            device=device, dtype=str(dtype).split(".")[1], tp=tp),
                        chat_template_config=None)
        gen = GenerationConfig(max_new_tokens=NEW, ignore_eos=True)
        pipe("warm up", gen_config=GenerationConfig(max_new_tokens=4, ignore_eos=True))
        t = time.perf_counter()
        out = pipe(prompts(batch), gen_config=gen)
        _sync(device)
        dt = time.perf_counter() - t
        assert all(r.generate_token_len == NEW for r in out)
        if tp > 1:
            import psutil

            workers = pipe.engine.runner.workers.pids
            rss = [psutil.Process().memory_info().rss] + [psutil.Process(p).memory_info().rss for p in workers]
            return {"engine": f"seer tp={tp}", "batch": batch, "seconds": dt, "tok_s": batch * NEW / dt,
                    "rss_mib": [round(r / 2**20) for r in rss]}
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(MODEL)
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=dtype).to(device).eval()
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in prompts(batch)]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        kw = dict(do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=tok.pad_token_id)
        with torch.inference_mode():
            model.generate(**tok(texts[:1], return_tensors="pt", add_special_tokens=False).to(device),
                           do_sample=False, max_new_tokens=4, pad_token_id=tok.pad_token_id)
            _sync(device)
            t = time.perf_counter()
            model.generate(**enc, **kw)
            _sync(device)
            dt = time.perf_counter() - t
    return {"engine": engine, "batch": batch, "seconds": dt, "tok_s": batch * NEW / dt}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--engines", default="seer,transformers")
    ap.add_argument("--device", default="cpu", help="cpu (fp32) or cuda (bf16, both engines)")
    ap.add_argument("--tp", type=int, default=1, help="seer's tensor-parallel ranks")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md (cpu only)")
    ap.add_argument("--child", nargs=2, metavar=("ENGINE", "BATCH"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(a.child[0], int(a.child[1]), a.device, a.tp)))
        return 0
    build()
    rows = []
    for b in [int(x) for x in a.batches.split(",")]:
        for eng in a.engines.split(","):
            out = subprocess.run([sys.executable, __file__, "--device", a.device, "--tp", str(a.tp), "--child", eng,
                                  str(b)],
                                 capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(line[0][7:])
            rows.append(r)
            print(f"{r['engine']:>12} batch {b:>3}: {r['tok_s']:7.1f} tok/s ({r['seconds']:.1f} s)"
                  + (f", RSS per rank {r['rss_mib']} MiB" if "rss_mib" in r else ""), flush=True)
    if a.write and a.device == "cpu" and a.tp == 1:
        from offline import machine_info, write_section

        info = machine_info()
        by = {(r["engine"], r["batch"]): r for r in rows}
        lines = ["## Text LLM decode: 110M Llama, fp32, 128 new tokens", "",
                 f"Command: `python benchmarks/text_llm.py --write` ({time.strftime('%Y-%m-%d')}; "
                 f"{info.get('cpu', '')}, torch {info.get('torch', '')}, transformers {info.get('transformers', '')}).",
                 "", "Aggregate output tokens/s (higher is better). llama.cpp figures are the project brief's "
                 "reference measurements on the same machine type, not re-run here.", "",
                 "| batch | seer | transformers generate (same run) | seer / transformers | llama.cpp (brief) |",
                 "|---|---|---|---|---|"]
        cpp = {1: 72, 16: 319, 64: 382}
        for b in sorted({r["batch"] for r in rows}):
            s, t = by.get(("seer", b)), by.get(("transformers", b))
            ratio = f"{s['tok_s'] / t['tok_s']:.2f}x" if s and t else "-"
            lines.append(f"| {b} | {s['tok_s']:.1f} | {t['tok_s']:.1f} | {ratio} | {cpp.get(b, '-')} |"
                         if s and t else f"| {b} | - | - | - | - |")
        write_section(os.path.join(REPO, "BENCHMARKS.md"), "text", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
