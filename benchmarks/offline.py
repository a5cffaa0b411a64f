"""Offline batch throughput: seer vs transformers on a LLaVA-1.5-shaped ~100M model, fp32, CPU.

Workload: N requests (default 64), each one distinct 640x480 image and a short question, output
lengths evenly spaced over [--min-out, --max-out] and shuffled with a fixed seed, eos ignored so
every request produces exactly its length. Engines, each in its own subprocess (so peak RSS is
its own) with ``torch.set_num_threads(2)``:

* ``seer``: one ``pipeline(...)`` call with all N ``(text, image)`` prompts and one
  ``GenerationConfig(max_new_tokens=n_i, ignore_eos=True)`` per prompt.
* ``hf-generate``: ``LlavaForConditionalGeneration.generate`` on static batches in input order
  (processor-built inputs, left padding, attention mask); a batch runs to its longest request and
  only each request's own tokens count. One subprocess per ``--hf-batch-sizes`` entry.
* ``hf-generate-batch``: transformers' continuous batching (the ``generate_batch`` engine: a
  ``ContinuousBatchingManager``, used directly so each request gets its own ``max_new_tokens``).
  It takes token ids only (no ``pixel_values``), so it runs a text-only twin of the workload: the
  same lengths, each prompt made of text tokens to the same token count, on the LLaVA's language
  model saved as a plain ``LlamaForCausalLM``. seer runs that twin too (``seer (text)`` row).

Timing covers preprocessing (chat template, tokenizer, image processor) and generation, from the
first request submitted to the last one finished; model loading and one small warm-up request are
excluded. Counted tokens are the ones each request asked for. Correctness: the first ``--check``
requests' seer tokens are compared with transformers ``generate`` at batch size 1.

    python benchmarks/offline.py --write          # full run, updates BENCHMARKS.md
    python benchmarks/offline.py --quick          # smoke test: 8 requests, short outputs
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (REPO, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import models as bench_models  # noqa: E402  (benchmarks/models.py)

SECTION = "offline"
THREADS = 2
BLOCK_SIZE = 16  # seer's default EngineConfig.block_size
# transformers' default page_size is 256; with it the workload's KV (+10%) plus the [M, N+M] attention
# masks the manager preallocates exceed what it thinks it may use here (on CPU it caps memory at the NUMA
# node's MemTotal, 8.7 GiB on this VM, although /proc/meminfo has 23.5 GiB), and it raises MemoryError.
# Pages of 64 tokens waste less of each request's last page and fit.
CB_PAGE_SIZE = 64
MAX_BATCH_TOKENS = 4096  # seer's default max_prefill_token_num; the same budget for continuous batching
QUESTIONS = [
    "What is in this picture?", "Describe the image in detail.", "How many shapes can you see?",
    "What colour is the largest object?", "Where is the circle?", "Is there anything unusual here?",
    "Describe the scene.", "Which object is on the left?", "What is the background colour?",
    "Count the rectangles in the image.", "What do you see at the top?", "Write a caption for this image.",
    "What shapes are in the middle?", "Is the image bright or dark?", "List the colours you see.",
    "Tell me a story about this picture.",
]


# ------------------------------------------------------------------------------------------------
# Workload
# ------------------------------------------------------------------------------------------------

def output_lengths(n: int, lo: int, hi: int, seed: int) -> list[int]:
    """Evenly spaced over [lo, hi], then shuffled (fixed seed): static batches in input order mix lengths."""
    if n == 1:
        lens = [hi]
    else:
        lens = [round(lo + i * (hi - lo) / (n - 1)) for i in range(n)]
    random.Random(seed).shuffle(lens)
    return lens


def make_image(seed: int, size: tuple[int, int] = (640, 480)):
    """A deterministic RGB picture of 3-8 coloured rectangles and ellipses (the tests' generator)."""
    import tiny_models

    return tiny_models.make_image(seed, size, max_shapes=8)


def image_messages(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def build_spec(a) -> dict:
    """Everything the children need, computed once in the parent (deterministic)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    n = a.requests
    lens = output_lengths(n, a.min_out, a.max_out, a.seed)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    image_seeds = [a.seed * 100003 + i for i in range(n)]
    # Prompt token counts of the image requests: the template's text (with one "<image>") plus the
    # 575 more placeholders the processor expands it to.
    n_img = bench_models.IMAGE_TOKENS
    vl_prompt_lens = []
    for q in questions:
        text = tok.apply_chat_template(image_messages(q), add_generation_prompt=True, tokenize=False)
        vl_prompt_lens.append(len(tok(text, add_special_tokens=False)["input_ids"]) - 1 + n_img)
    # Text-only twin: filler words (in place of the image) + the same question, to the same length.
    rng = random.Random(a.seed + 1)
    words = [w for w in bench_models._ENGLISH if w.isalpha()]
    text_prompts, text_ids = [], []
    for q, target in zip(questions, vl_prompt_lens):
        filler: list[str] = []

        def encode(f):
            content = " ".join(f + [q])
            text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=False)
            return content, tok(text, add_special_tokens=False)["input_ids"]

        step = max(1, target // 2)
        while True:  # grow in big steps, then back off
            content, ids = encode(filler)
            if len(ids) >= target:
                break
            filler.extend(rng.choice(words) for _ in range(step))
        while len(ids) > target:
            filler.pop()
            content, ids = encode(filler)
        while len(ids) < target:  # " the" is one token of its own
            filler.append("the")
            content, ids = encode(filler)
        if len(ids) != target:
            raise RuntimeError(f"could not build a text prompt of {target} tokens (got {len(ids)})")
        text_prompts.append(content)
        text_ids.append(ids)
    return {
        "model": a.model, "lm_model": a.lm_model, "requests": n, "out_lens": lens, "questions": questions,
        "image_seeds": image_seeds, "vl_prompt_lens": vl_prompt_lens, "text_prompts": text_prompts,
        "text_ids": text_ids, "check": min(a.check, n), "check_tokens": a.check_tokens,
        "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
    }


def seer_blocks(prompt_lens: list[int], out_lens: list[int]) -> int:
    """KV blocks for the whole workload at once (no preemption), plus 10% and room for the warm-up."""
    need = sum(-(-(p + o) // BLOCK_SIZE) for p, o in zip(prompt_lens, out_lens))
    return math.ceil(need * 1.1) + 64


def cb_blocks(prompt_lens: list[int], out_lens: list[int]) -> int:
    need = sum(-(-(p + o) // CB_PAGE_SIZE) for p, o in zip(prompt_lens, out_lens))
    return math.ceil(need * 1.1) + 4


# ------------------------------------------------------------------------------------------------
# Children (one engine per process)
# ------------------------------------------------------------------------------------------------

def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _Timer:
    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0


def child_seer(spec: dict, text_only: bool, a) -> dict:
    import torch

    from seer import EngineConfig, GenerationConfig, pipeline

    n = spec["requests"]
    lens = spec["out_lens"]
    prompt_lens = spec["vl_prompt_lens"]  # the text twin has the same lengths
    blocks = a.seer_blocks or seer_blocks(prompt_lens, lens)
    cfg = EngineConfig(num_gpu_blocks=blocks, max_prefill_token_num=a.seer_prefill, tp=a.seer_tp)
    t = time.perf_counter()
    pipe = pipeline(spec["lm_model"] if text_only else spec["model"], backend_config=cfg)
    load_s = time.perf_counter() - t
    rss_loaded = _rss_now_mib()
    if text_only:
        prompts = list(spec["text_prompts"])
        warm = "Say something about the weather today."
    else:
        prompts = [(q, make_image(s)) for q, s in zip(spec["questions"], spec["image_seeds"])]
        warm = ("What is this?", make_image(-1))
    gens = [GenerationConfig(max_new_tokens=m, ignore_eos=True) for m in lens]
    t = time.perf_counter()
    pipe(warm, gen_config=GenerationConfig(max_new_tokens=4, ignore_eos=True))
    warm_s = time.perf_counter() - t
    steps0 = pipe.engine.stats["steps"]
    prof = None
    if a.profile:
        import threading

        prof = _start_thread_profile({"engine": pipe.engine._thread, "caller": threading.main_thread()})
    with _Timer() as tm:
        rs = pipe(prompts, gen_config=gens, use_tqdm=False)
    if prof is not None:
        _stop_thread_profile(prof, a.profile)
    errors = []
    for i, (r, m) in enumerate(zip(rs, lens)):
        if r.finish_reason != "length" or r.generate_token_len != m:
            errors.append(f"request {i}: finish_reason={r.finish_reason!r} tokens={r.generate_token_len}/{m}"
                          f" error={r.error!r}")
        if r.input_token_len != prompt_lens[i]:
            errors.append(f"request {i}: prompt has {r.input_token_len} tokens, expected {prompt_lens[i]}")
    eng = pipe.engine
    out = {
        "engine": "seer", "workload": "text" if text_only else "image",
        "setting": (f"EngineConfig(num_gpu_blocks={blocks}"
                    + (f", max_prefill_token_num={a.seer_prefill}" if a.seer_prefill != 4096 else "")
                    + (f", tp={a.seer_tp}" if a.seer_tp > 1 else "") + "), others default"),
        "wall_s": tm.wall, "cpu_s": tm.cpu, "out_tokens": sum(r.generate_token_len for r in rs), "requests": n,
        "load_s": load_s, "warmup_s": warm_s, "rss_loaded_mib": rss_loaded,
        "tokens": [r.token_ids for r in rs[: spec["check"]]], "errors": errors,
        "stats": {"steps": eng.stats["steps"] - steps0, "preemptions": eng.scheduler.num_preemptions,
                  "kv_blocks": blocks, "block_size": cfg.block_size, "max_batch_size": cfg.max_batch_size,
                  "max_prefill_token_num": cfg.max_prefill_token_num,
                  "threads": torch.get_num_threads()},
    }
    if a.seer_tp > 1:  # each worker rank's peak RSS (rank 0's is this process's, measured by the caller)
        out["worker_peak_rss_mib"] = [_peak_rss_mib(pid) for pid in eng.runner.workers.pids]
    pipe.close()
    return out


def _start_thread_profile(threads: dict):
    """Profile threads from the outside: a sampling thread reading their Python stacks every 5 ms.

    ``threads``: name -> threading.Thread. Per thread, counts how often each function is on the
    stack (inclusive) and which line is innermost (self; time inside a torch op shows as the
    Python line that called it, time waiting for the GIL as whatever line the thread was on).
    """
    import collections
    import threading

    frames = sys._current_frames
    stats = {name: (collections.Counter(), collections.Counter()) for name in threads}
    stop = threading.Event()

    def where(f, line: bool) -> str:
        name = os.path.relpath(f.f_code.co_filename, REPO)
        return f"{name}:{f.f_code.co_name}" + (f":{f.f_lineno}" if line else "")

    def sample():
        while not stop.is_set():
            now = frames()
            for name, th in threads.items():
                f = now.get(th.ident)
                if f is None:
                    continue
                inclusive, own = stats[name]
                own[where(f, True)] += 1
                seen = set()
                while f is not None:
                    key = where(f, False)
                    if key not in seen:
                        inclusive[key] += 1
                        seen.add(key)
                    f = f.f_back
            stop.wait(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    return {"thread": th, "stop": stop, "stats": stats, "t0": time.perf_counter()}


def _stop_thread_profile(prof, path: str) -> None:
    prof["stop"].set()
    prof["thread"].join()
    wall = time.perf_counter() - prof["t0"]
    with open(path, "w") as f:
        f.write(f"sampled for {wall:.1f}s, every 5 ms\n")
        for name, (inclusive, own) in prof["stats"].items():
            total = max(1, sum(own.values()))
            f.write(f"\n=== thread {name}: {total} samples\n\ninclusive (function on the stack), % of samples:\n")
            for k, v in inclusive.most_common(40):
                f.write(f"{100 * v / total:6.1f}%  {k}\n")
            f.write("\nself (innermost Python line), % of samples:\n")
            for k, v in own.most_common(25):
                f.write(f"{100 * v / total:6.1f}%  {k}\n")


def _hf_llava(spec: dict):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(spec["model"])
    proc.tokenizer.padding_side = "left"
    model = LlavaForConditionalGeneration.from_pretrained(spec["model"], dtype=torch.float32).eval()
    return proc, model


def _hf_batches(proc, model, spec, items, max_new):
    """Run ``generate`` over ``items`` = [(question, image, n_new)], one static batch; returns new tokens."""
    import torch

    texts = [proc.apply_chat_template(image_messages(q), add_generation_prompt=True) for q, _, _ in items]
    inputs = proc(text=texts, images=[img for _, img, _ in items], padding=True, add_special_tokens=False,
                  return_tensors="pt")
    never = spec["vocab_size"] + 12345  # an eos id that never matches: ignore_eos
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False, eos_token_id=never,
                             pad_token_id=spec["pad_token_id"])
    width = inputs["input_ids"].shape[1]
    return [out[j, width: width + m].tolist() for j, (_, _, m) in enumerate(items)], inputs


def child_hf_generate(spec: dict, batch_size: int, a) -> dict:
    import torch

    n, lens = spec["requests"], spec["out_lens"]
    t = time.perf_counter()
    proc, model = _hf_llava(spec)
    load_s = time.perf_counter() - t
    rss_loaded = _rss_now_mib()
    images = [make_image(s) for s in spec["image_seeds"]]
    t = time.perf_counter()
    _hf_batches(proc, model, spec, [("What is this?", make_image(-1), 4)], 4)
    warm_s = time.perf_counter() - t
    results: list[list[int]] = []
    errors = []
    with _Timer() as tm:
        for b0 in range(0, n, batch_size):
            idx = range(b0, min(n, b0 + batch_size))
            items = [(spec["questions"][i], images[i], lens[i]) for i in idx]
            toks, inputs = _hf_batches(proc, model, spec, items, max(lens[i] for i in idx))
            results.extend(toks)
    for i, (t_, m) in enumerate(zip(results, lens)):
        if len(t_) != m:
            errors.append(f"request {i}: {len(t_)}/{m} tokens")
    return {
        "engine": "hf-generate", "workload": "image",
        "setting": f"batch {batch_size}, static, input order", "batch_size": batch_size,
        "wall_s": tm.wall, "cpu_s": tm.cpu, "out_tokens": sum(len(t_) for t_ in results), "requests": n,
        "computed_tokens": sum(max(lens[i] for i in range(b0, min(n, b0 + batch_size))) * len(range(b0, min(n, b0 + batch_size)))
                               for b0 in range(0, n, batch_size)),
        "load_s": load_s, "warmup_s": warm_s, "rss_loaded_mib": rss_loaded,
        "tokens": results[: spec["check"]], "errors": errors,
        "stats": {"attn": model.config._attn_implementation, "threads": torch.get_num_threads()},
    }


def child_hf_ref(spec: dict, a) -> dict:
    """transformers generate at batch size 1 for the first ``check`` requests (up to check_tokens)."""
    k, cap = spec["check"], spec["check_tokens"]
    proc, model = _hf_llava(spec)
    toks = []
    with _Timer() as tm:
        for i in range(k):
            m = min(spec["out_lens"][i], cap)
            t, _ = _hf_batches(proc, model, spec, [(spec["questions"][i], make_image(spec["image_seeds"][i]), m)], m)
            toks.append(t[0])
    return {"engine": "hf-ref", "workload": "image", "setting": "batch 1", "wall_s": tm.wall, "tokens": toks}


def child_hf_cb(spec: dict, a) -> dict:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    n, lens, ids = spec["requests"], spec["out_lens"], spec["text_ids"]
    t = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(spec["lm_model"], dtype=torch.float32).eval()
    load_s = time.perf_counter() - t
    blocks = cb_blocks([len(x) for x in ids], lens)
    cbc = ContinuousBatchingConfig(num_blocks=blocks, max_batch_tokens=MAX_BATCH_TOKENS, page_size=CB_PAGE_SIZE,
                                   max_requests_per_batch=128)
    gen = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=spec["pad_token_id"],
                           max_new_tokens=max(lens))
    res: dict[str, object] = {}
    errors: list[str] = []
    with model.continuous_batching_context_manager(generation_config=gen, continuous_batching_config=cbc,
                                                   block=True, timeout=30) as man:
        rss_loaded = _rss_now_mib()

        def run(batch, max_new):
            rids = [man.add_request(x, max_new_tokens=m, eos_token_id=-1) for x, m in zip(batch, max_new)]
            done: dict = {}
            while len(done) < len(rids):
                r = man.get_result(timeout=1)
                if r is not None and r.is_finished():
                    done[r.request_id] = r
                elif r is None and not man.is_running():
                    raise RuntimeError("the continuous batching thread stopped")
            return [done[r] for r in rids]

        t = time.perf_counter()
        run([ids[0][:32]], [4])
        warm_s = time.perf_counter() - t
        with _Timer() as tm:
            outs = run(ids, lens)
    for i, (o, m) in enumerate(zip(outs, lens)):
        if o.error is not None or len(o.generated_tokens) != m:
            errors.append(f"request {i}: {len(o.generated_tokens)}/{m} tokens, error={o.error!r}")
    return {
        "engine": "hf-generate-batch", "workload": "text",
        "setting": f"continuous batching, num_blocks={blocks} x page {CB_PAGE_SIZE}, "
                   f"max_batch_tokens={MAX_BATCH_TOKENS}, max_requests_per_batch=128",
        "wall_s": tm.wall, "cpu_s": tm.cpu, "out_tokens": sum(len(o.generated_tokens) for o in outs),
        "requests": n, "load_s": load_s, "warmup_s": warm_s, "rss_loaded_mib": rss_loaded,
        "tokens": [list(o.generated_tokens) for o in outs[: spec["check"]]], "errors": errors,
        "stats": {"attn": model.config._attn_implementation, "threads": torch.get_num_threads()},
    }


def run_child(a) -> int:
    import torch

    torch.set_num_threads(THREADS)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass
    with open(a.spec) as f:
        spec = json.load(f)
    job = a.child
    if job == "seer":
        out = child_seer(spec, False, a)
    elif job == "seer-text":
        out = child_seer(spec, True, a)
    elif job == "hf-generate":
        out = child_hf_generate(spec, a.batch_size, a)
    elif job == "hf-ref":
        out = child_hf_ref(spec, a)
    elif job == "hf-generate-batch":
        out = child_hf_cb(spec, a)
    else:
        raise SystemExit(f"unknown child job {job!r}")
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(a.out, "w") as f:
        json.dump(out, f)
    return 0


# ------------------------------------------------------------------------------------------------
# Parent: orchestrate, compare, report
# ------------------------------------------------------------------------------------------------

def _spawn(job: str, spec_path: str, tmp: str, extra: list[str] = (), profile: str | None = None) -> dict:
    out = os.path.join(tmp, f"{job}{'-'.join([''] + list(extra))}.json".replace("--", "-"))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", job, "--spec", spec_path, "--out", out, *extra]
    if profile:
        cmd += ["--profile", profile]
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    print(f"[offline] running {job} {' '.join(extra)}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0 or not os.path.isfile(out):
        print(f"[offline] {job} {' '.join(extra)} FAILED (exit {proc.returncode})", file=sys.stderr, flush=True)
        return {"engine": job, "failed": f"exit code {proc.returncode}", "extra": list(extra)}
    with open(out) as f:
        res = json.load(f)
    res["process_s"] = time.perf_counter() - t
    print(f"[offline] {job} {' '.join(extra)}: {res['wall_s']:.1f}s timed, "
          f"{res.get('out_tokens', 0)} tokens, {res['process_s']:.0f}s process", file=sys.stderr, flush=True)
    return res


def _job_key(r: dict) -> str:
    if r.get("job"):
        return r["job"]
    e = r.get("engine")
    if e == "seer":
        return "seer-text" if r.get("workload") == "text" else "seer"
    if e == "hf-generate":
        return f"hf-generate:{r.get('batch_size')}"
    return e


def _load_resume(path: str, spec: dict) -> dict:
    """Successful results of an earlier ``--json`` dump of the same workload, by job key."""
    with open(path) as f:
        prev = json.load(f)
    for k in ("requests", "out_lens", "questions", "image_seeds", "vl_prompt_lens", "text_prompts"):
        if prev["spec"].get(k) != spec.get(k):
            raise SystemExit(f"--resume {path}: its workload differs from this one ({k}); not reusing it")
    done = {_job_key(r): r for r in prev["results"] if "failed" not in r}
    if prev.get("hf_ref"):
        done["hf-ref"] = prev["hf_ref"]
    fallback = {"started": prev.get("started", "?"), "argv": prev.get("argv", ["?"]),
                "commit": prev.get("machine", {}).get("commit", "?"),
                "load_avg": prev.get("machine", {}).get("load_avg", [])}
    for r in done.values():
        r.setdefault("run_info", fallback)
    return {"jobs": done, "prev": prev}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare(name_a: str, ta: list[list[int]], name_b: str, tb: list[list[int]]) -> list[str]:
    lines = []
    for i, (x, y) in enumerate(zip(ta, tb)):
        m = min(len(x), len(y))
        same = _common_prefix(x, y)
        verdict = "equal" if same == m else f"MISMATCH at token {same}"
        lines.append(f"request {i}: {name_a} vs {name_b}: {verdict} (first {m} tokens compared)")
    return lines


def machine_info() -> dict:
    import torch
    import transformers

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 1024 ** 2
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "seer"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "?", False
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "ram_gib": round(mem, 1),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "load_avg": os.getloadavg(),
            "commit": commit + ("+dirty seer/" if dirty else "")}


def _fmt_row(r: dict, ref: dict | None) -> list[str]:
    if "failed" in r:
        return [r["engine"], "", " ".join(r.get("extra", [])), "FAILED", "", "", "", "", r["failed"]]
    tok_s = r["out_tokens"] / r["wall_s"]
    req_s = r["requests"] / r["wall_s"]
    ratio = ""
    if ref is not None and "failed" not in ref:
        ratio = f"{(ref['out_tokens'] / ref['wall_s']) / tok_s:.2f}x"
    return [r["label"], r["workload"], r["setting"], f"{tok_s:.1f}", f"{req_s:.3f}", f"{r['wall_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}", f"{r['cpu_s'] / r['wall_s']:.2f}", ratio]


HEADER = ["engine", "workload", "setting", "out tok/s", "req/s", "wall s", "peak RSS MiB", "CPU cores busy",
          "seer ÷ this (tok/s)"]


def markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def report(a, spec: dict, results: list[dict], checks: list[str], info: dict, build: dict, started: str,
           prev: dict | None = None) -> str:
    vl = [r for r in results if r.get("workload") == "image" or (r.get("engine") in ("seer", "hf-generate")
                                                                    and "failed" in r)]
    txt = [r for r in results if r.get("workload") == "text" or (r.get("engine") in ("seer-text", "hf-generate-batch")
                                                                    and "failed" in r)]
    seer_vl = next((r for r in vl if r.get("engine") == "seer" and "failed" not in r), None)
    seer_txt = next((r for r in txt if r.get("engine") == "seer" and "failed" not in r), None)
    hf = [r for r in vl if r.get("engine") == "hf-generate" and "failed" not in r]
    best = max(hf, key=lambda r: r["out_tokens"] / r["wall_s"]) if hf else None
    rows = []
    for r in vl + txt:
        r.setdefault("label", r["engine"])
        if r is best:
            r["label"] = "hf-generate (best)"
        ref = seer_vl if r in vl else seer_txt
        rows.append(_fmt_row(r, ref))
    p = build["params"]
    lens = spec["out_lens"]
    pl = spec["vl_prompt_lens"]
    cmd = "python benchmarks/offline.py " + " ".join(a.argv)
    seer_any = seer_vl or seer_txt
    runs: list[dict] = []  # distinct runs the rows come from (several when --resume reused rows)
    for r in vl + txt:
        ri = r.get("run_info")
        if ri and all(ri["started"] != x["started"] for x in runs):
            runs.append(ri)
    runs.sort(key=lambda x: x["started"])
    if len(runs) > 1:
        tags = {ri["started"]: chr(ord("A") + i) for i, ri in enumerate(runs)}
        for row, r in zip(rows, vl + txt):
            row[0] += f" [{tags.get((r.get('run_info') or {}).get('started'), '?')}]"
        run_lines = ["Rows come from several runs of the same workload (`--resume` reuses the successful rows "
                     "of an earlier run's `--json` dump); the tag after the engine name says which:", ""]
        for ri in runs:
            run_lines.append(
                f"- [{tags[ri['started']]}] `python benchmarks/offline.py {' '.join(ri['argv'])}` at "
                f"{ri['started']} UTC, commit {ri['commit']}, load average at start "
                f"{', '.join(f'{x:.2f}' for x in ri['load_avg'])}")
        run_lines.append("")
    else:
        run_lines = [f"Command: `{cmd.strip()}`  ", f"Date: {started} (UTC); commit {info['commit']}  "]
    lines = [
        f"## Offline batch: {spec['requests']} image requests, LLaVA-1.5-shaped {p['total'] / 1e6:.0f}M, fp32, CPU"
        + (" (quick smoke run)" if a.quick else ""),
        "",
        *run_lines,
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM; torch {info['torch']}, "
        f"transformers {info['transformers']}, Python {info['python']}; {THREADS} torch threads per engine "
        f"(each engine in its own process, run one after another)."
        + ("" if len(runs) > 1 else f" Load average when the run started: "
           f"{', '.join(f'{x:.2f}' for x in info['load_avg'])}.")
        + " Other people's jobs share these 2 cores, and an engine that loses one to them runs up to ~1.6x "
        f"slower: the \"CPU cores busy\" column (process CPU time / wall time over the timed region) shows "
        f"it; about 2 means the engine had both cores, about 1 that it had one.",
        "",
        f"Model (`benchmarks/models.py`, random weights, built offline): LlavaForConditionalGeneration, "
        f"{p['total'] / 1e6:.1f}M parameters = language model {p['language_model'] / 1e6:.1f}M (Llama, hidden "
        f"640, 12 layers, 10 heads MHA of 64, MLP 1728, vocab 32000, untied head) + CLIP vision "
        f"{p['vision'] / 1e6:.1f}M (336px, patch 14 -> {bench_models.IMAGE_TOKENS} image tokens, hidden 384, "
        f"6 layers, 6 heads, MLP 1536, features from layer -2) + projector {p['projector'] / 1e6:.2f}M (gelu "
        f"MLP); byte-level BPE tokenizer of {build['tokenizer_vocab']} tokens, LLaVA-1.5 chat template.",
        "",
        f"Workload: {spec['requests']} requests, each a distinct 640x480 image + a short question "
        f"(prompt {min(pl)}-{max(pl)} tokens, {bench_models.IMAGE_TOKENS} of them image placeholders); "
        f"output lengths evenly spaced over {min(lens)}-{max(lens)} tokens and shuffled (seed {a.seed}), "
        f"{sum(lens)} output tokens in all, eos ignored, greedy. Time = from the first request submitted "
        f"to the last finished, preprocessing included, model load and a one-request warm-up excluded; "
        f"tok/s counts only the tokens each request asked for. Text rows: the same lengths with each image "
        f"replaced by text tokens (same prompt token counts), on the LLaVA's language model saved as a "
        f"plain LlamaForCausalLM (same weights), because transformers' continuous batching takes token ids "
        f"only.",
        "",
        markdown_table(rows),
        "",
        "Settings:",
        f"- seer: `pipeline(path, backend_config=EngineConfig(num_gpu_blocks=N))`, everything else default "
        f"(block_size {BLOCK_SIZE}, max_batch_size 128, max_prefill_token_num 4096, prefix caching on, fp32). "
        f"`num_gpu_blocks` is the whole workload's KV at once plus 10% ({seer_any['stats']['kv_blocks'] if seer_any else '?'} "
        f"blocks = {(seer_any['stats']['kv_blocks'] if seer_any else 0) * 16 * 12 * 2 * 640 * 4 / 2 ** 30:.2f} GiB), "
        f"instead of the default 0.8 x free RAM, so nothing is preempted and memory stays what the work needs. "
        f"One call with all prompts and a per-prompt `GenerationConfig(max_new_tokens=n, ignore_eos=True)`.",
        "- hf-generate: `LlavaForConditionalGeneration.generate(do_sample=False)` (sdpa attention) on static "
        "batches in input order; the LlavaProcessor builds each batch (chat template, left padding, "
        "attention mask, CLIP preprocessing); a batch runs to its longest request; eos disabled.",
        f"- hf-generate-batch: transformers' continuous batching (`ContinuousBatchingManager`, the engine "
        f"behind `generate_batch`, used directly so each request gets its own `max_new_tokens`), "
        f"`ContinuousBatchingConfig(num_blocks=<workload + 10%>, page_size={CB_PAGE_SIZE}, "
        f"max_batch_tokens={MAX_BATCH_TOKENS}, max_requests_per_batch=128)`; `eos_token_id=-1`. "
        f"max_batch_tokens matches seer's per-step token budget. page_size is {CB_PAGE_SIZE}, not the default "
        f"256: with 256 the manager refuses to start (`MemoryError: Memory footprint 5420840960 is more than "
        f"available memory 5390730854`) because on CPU it sizes against the NUMA node's MemTotal (8.7 GiB on "
        f"this VM; /proc/meminfo says 23.5 GiB) and preallocates [max_batch_tokens, cache tokens] attention "
        f"masks; smaller pages waste less KV per request and fit. Its cache and masks are allocated up front, "
        f"which is most of its peak RSS.",
        "",
    ]
    if checks:
        lines += ["Correctness (greedy tokens; reference = transformers `generate` at batch size 1, "
                  f"first {spec['check_tokens']} tokens):", ""]
        lines += [f"- {c}" for c in checks]
        lines.append("")
    if a.note:
        lines += ["Notes:", ""] + [f"- {n}" for n in a.note] + [""]
    errs = [f"{r['label']}: {e}" for r in results if "failed" not in r for e in r.get("errors", [])[:5]]
    if errs:
        lines += ["Errors reported by the engines:", ""] + [f"- {e}" for e in errs] + [""]
    extra = []
    for r in results:
        if "failed" in r:
            continue
        s = r.get("stats", {})
        bits = [f"load {r['load_s']:.1f}s", f"warm-up {r['warmup_s']:.1f}s", f"RSS after load {r['rss_loaded_mib']:.0f} MiB"]
        if "steps" in s:
            bits.append(f"{s['steps']} engine steps, {s['preemptions']} preemptions")
        if "computed_tokens" in r:
            bits.append(f"{r['computed_tokens']} tokens decoded incl. padding rows "
                        f"({100 * (1 - r['out_tokens'] / r['computed_tokens']):.0f}% wasted)")
        extra.append(f"- {r['label']} ({r['workload']}, {r['setting']}): " + "; ".join(bits))
    lines += ["Per-engine details:", ""] + extra + [""]
    return "\n".join(lines)


def write_section(md_path: str, section: str, body: str) -> None:
    begin, end = f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    if os.path.isfile(md_path):
        with open(md_path) as f:
            text = f.read()
    else:
        text = ("# Benchmarks\n\nSections between `<!-- bench:NAME:begin/end -->` markers are written by the "
                "scripts in `benchmarks/`; rerun them to update.\n\n")
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        post = post.lstrip("\n")
        text = pre + block + ("\n" + post if post else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(md_path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=None, help="number of requests (64; --quick: 8)")
    ap.add_argument("--min-out", type=int, default=None, help="shortest output (16; --quick: 4)")
    ap.add_argument("--max-out", type=int, default=None, help="longest output (256; --quick: 16)")
    ap.add_argument("--engines", default="seer,hf-generate,hf-generate-batch")
    ap.add_argument("--hf-batch-sizes", default=None, help="static batch sizes for hf-generate (8,16,32; --quick: 4,8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seer-blocks", type=int, default=0,
                    help="seer's KV pool in blocks of 16 tokens (0: the whole workload at once, no preemption)")
    ap.add_argument("--seer-prefill", type=int, default=4096, help="seer's max_prefill_token_num")
    ap.add_argument("--seer-tp", type=int, default=1, help="seer's tensor-parallel ranks (EngineConfig.tp)")
    ap.add_argument("--seer-mem-blocks", type=int, default=0,
                    help="also run seer with this KV pool (blocks) and max_prefill_token_num 2048, a pool small "
                         "enough that its peak RSS stays at or below transformers' best")
    ap.add_argument("--check", type=int, default=4, help="requests whose tokens are checked against HF batch 1")
    ap.add_argument("--check-tokens", type=int, default=None, help="tokens compared per checked request (64)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 8 requests, short outputs")
    ap.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    ap.add_argument("--md", default=os.path.join(REPO, "BENCHMARKS.md"))
    ap.add_argument("--model", default=bench_models.DEFAULT_LLAVA)
    ap.add_argument("--lm-model", default=bench_models.DEFAULT_LM)
    ap.add_argument("--profile", default=None,
                    help="(seer) write a sampled profile of the engine thread's timed region to this file")
    ap.add_argument("--json", default=None, help="also dump all raw results to this JSON file")
    ap.add_argument("--note", action="append", default=[],
                    help="a line for the Notes list of the written section (repeatable)")
    ap.add_argument("--resume", default=None,
                    help="a --json dump of an earlier run of the same workload: reuse its successful "
                         "engine results and run only the missing or failed ones")
    # child mode
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return run_child(a)
    a.argv = argv
    q = a.quick
    a.requests = a.requests or (8 if q else 64)
    a.min_out = a.min_out or (4 if q else 16)
    a.max_out = a.max_out or (16 if q else 256)
    a.check_tokens = a.check_tokens or (16 if q else 64)
    sizes = [int(x) for x in (a.hf_batch_sizes or ("4,8" if q else "8,16,32")).split(",") if x]
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    unknown = set(engines) - {"seer", "hf-generate", "hf-generate-batch"}
    if unknown:
        ap.error(f"unknown engine(s) {sorted(unknown)}; choose from seer, hf-generate, hf-generate-batch")
    if a.min_out < 1 or a.max_out < a.min_out:
        ap.error("need 1 <= --min-out <= --max-out")

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    info = machine_info()
    t0 = time.perf_counter()
    build = bench_models.build_llava_100m(a.model)
    if "hf-generate-batch" in engines or "seer" in engines:
        bench_models.build_llava_100m_lm(a.model, a.lm_model)
    print(f"[offline] model: {build['params']['total'] / 1e6:.1f}M parameters ({time.perf_counter() - t0:.0f}s to "
          f"build/check)", file=sys.stderr, flush=True)
    spec = build_spec(a)
    results: list[dict] = []
    checks: list[str] = []
    resume = _load_resume(a.resume, spec) if a.resume else {"jobs": {}, "prev": None}
    with tempfile.TemporaryDirectory(prefix="seer-bench-") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)

        def job(name: str, key: str, label: str, extra: list[str] = (), **kw) -> dict:
            if key in resume["jobs"]:
                print(f"[offline] {key}: reusing the result from {a.resume}", file=sys.stderr, flush=True)
                r = resume["jobs"][key]
            else:
                r = _spawn(name, spec_path, tmp, list(extra), **kw)
                r["run_info"] = {"started": started, "argv": list(argv), "commit": info["commit"],
                                 "load_avg": list(info["load_avg"])}
            r["job"], r["label"] = key, label
            return r

        seer_vl = hf_ref = None
        if "seer" in engines:
            tp = ["--seer-tp", str(a.seer_tp)] if a.seer_tp > 1 else []
            seer_vl = job("seer", "seer", "seer", tp, profile=a.profile)
            results.append(seer_vl)
            if a.seer_mem_blocks:
                results.append(job("seer", "seer-mem", "seer (memory-matched)",
                                   ["--seer-blocks", str(a.seer_mem_blocks), "--seer-prefill", "2048"]))
        if "hf-generate" in engines:
            for bs in sizes:
                results.append(job("hf-generate", f"hf-generate:{bs}", "hf-generate", ["--batch-size", str(bs)]))
        if "seer" in engines and spec["check"] > 0:
            hf_ref = job("hf-ref", "hf-ref", "hf-ref")
        if "hf-generate-batch" in engines:
            if "seer" in engines:
                results.append(job("seer-text", "seer-text", "seer"))
            results.append(job("hf-generate-batch", "hf-generate-batch", "hf-generate-batch"))
    # correctness
    if hf_ref and "failed" not in hf_ref and seer_vl and "failed" not in seer_vl:
        checks += compare("seer", seer_vl["tokens"], "hf-generate batch 1", hf_ref["tokens"])
        for r in results:
            if r.get("engine") == "hf-generate" and "failed" not in r:
                same = [_common_prefix(x, y) for x, y in zip(r["tokens"], hf_ref["tokens"])]
                checks.append(f"(for scale) hf-generate batch {r['batch_size']} vs batch 1: common prefix "
                              f"{same} of {[min(len(x), len(y)) for x, y in zip(r['tokens'], hf_ref['tokens'])]} tokens")
    st = next((r for r in results if r.get("engine") == "seer" and r.get("workload") == "text"), None)
    cb = next((r for r in results if r.get("engine") == "hf-generate-batch" and "failed" not in r), None)
    if st and cb and "failed" not in st:
        checks += compare("seer (text)", st["tokens"], "hf-generate-batch", cb["tokens"])
    for c in checks:
        print("[offline] " + c, file=sys.stderr)
    prev = resume["prev"]
    body = report(a, spec, results, checks, info, build, started, prev)
    print(body)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"spec": {k: v for k, v in spec.items() if k not in ("text_ids",)}, "results": results,
                       "hf_ref": hf_ref if hf_ref and "failed" not in hf_ref else None, "checks": checks,
                       "machine": info, "started": started, "argv": argv,
                       "resumed_from": (prev or {}).get("started")}, f, indent=1)
    if a.write:
        section = SECTION + ("-quick" if a.quick else "")
        write_section(a.md, section, body)
        print(f"[offline] wrote section '{section}' of {a.md}", file=sys.stderr)
    failed = [r for r in results if "failed" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
