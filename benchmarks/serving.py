"""Online serving: seer's OpenAI server vs ``transformers serve``, Poisson arrivals, CPU, fp32.

Workload (the offline benchmark's, see ``benchmarks/offline.py``): N requests (default 64), each a
distinct 640x480 PNG image sent inline as a ``data:image/png;base64,...`` ``image_url`` part plus a
short question, to ``POST /v1/chat/completions`` with ``stream: true``, greedy (``temperature: 0``).
Output lengths are evenly spaced over [--min-out, --max-out] and shuffled with the seed, and eos is
ignored so every request produces exactly its length:

* seer takes ``ignore_eos: true`` (the vLLM/LMDeploy extra field).
* ``transformers serve`` rejects unknown fields (``ignore_eos``, ``min_tokens``: HTTP 422
  "Unexpected fields"); it takes a ``generation_config`` field (a JSON string of GenerationConfig
  fields) instead, and ``{"do_sample": false, "eos_token_id": <an id no token has>}`` there is the
  same thing. The script probes ``ignore_eos`` at warm-up and says what it found.

Requests arrive as a Poisson process at ``--rate`` requests/s (seeded; ``--rate inf``: all at once).
Per request the client (asyncio + httpx, in this process) measures TTFT (request sent -> first
non-empty content delta), ITL (gaps between consecutive content deltas as they arrive), TPOT
((last delta - first delta) / (output tokens - 1)) and E2E (sent -> stream end); output tokens are
the server's ``usage.completion_tokens`` (``stream_options.include_usage`` is asked for; both
servers also put usage on their last chunk). Aggregates: p50/p99 of each, requests/s and output
tokens/s over the run (first request sent -> last one finished).

Servers run one at a time, each in its own subprocess on a free port with 2 torch threads
(OMP_NUM_THREADS=2), waited for until ``/health`` is 200, given one small warm-up request (not
timed), then the workload, then SIGTERM. Peak RSS is the kernel's high-water mark for the server
process (``wait4``), with a psutil sample of the process tree every 50 ms as a fallback. "CPU
cores busy" = the server's CPU time / wall time over the timed run (2 = it had both cores).

Rows:

* image workload: ``seer serve LLAVA`` and ``transformers serve LLAVA`` (its plain path:
  ``model.generate`` one request at a time on one inference thread). ``transformers serve
  --continuous-batching`` is started too, but transformers only batches text-only models
  (``GenerationState.use_continuous_batching`` wants ``Modality.LLM``) and a LLaVA falls back to
  the same sequential path; the script reads that off the server's log and skips a duplicate run.
* text workload (a like-for-like twin, as offline.py's): the same lengths and arrivals, each image
  replaced by filler text to the same prompt token count, on the LLaVA's language model saved as a
  plain LlamaForCausalLM (``benchmarks/models.py``), served by seer, by ``transformers serve
  --continuous-batching`` (paged attention, ``--cb-block-size 64``, ``--cb-num-blocks`` = the
  workload's KV + 10%, ``--cb-max-batch-tokens 4096``) and by plain ``transformers serve``.

The first ``--check`` requests' texts are compared between seer and each transformers row.
The text model folder both servers load is ``.bench/llava-100m-lm-serve`` (symlinks to
``.bench/llava-100m-lm`` minus its tokenizer config's ``processor_class``, which would make
``transformers serve`` look for an image processor). ``--write`` replaces the ``serving`` section
of BENCHMARKS.md (``serving-quick`` with ``--quick``), as offline.py does.

    python benchmarks/serving.py --write                 # full run (64 requests, 1 req/s)
    python benchmarks/serving.py --rate inf --write      # all requests at once
    python benchmarks/serving.py --quick                 # smoke test: 6 requests, short outputs
    python benchmarks/serving.py --only seer --quick     # one server only
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import math
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types

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
import offline  # noqa: E402  (benchmarks/offline.py: the workload, machine info, BENCHMARKS.md writer)

SECTION = "serving"
THREADS = 2
CB_PAGE_SIZE = offline.CB_PAGE_SIZE  # transformers' default page size (256) does not fit here; see offline.py
MAX_BATCH_TOKENS = offline.MAX_BATCH_TOKENS
WARM_QUESTION = "What is this?"
WARM_TEXT = "Say something about the weather today."
HEALTH_TIMEOUT = 600.0


def log(msg: str) -> None:
    print(f"[serving] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Models and workload
# ------------------------------------------------------------------------------------------------

def build_lm_serve(lm_path: str, path: str) -> str:
    """The text twin's model folder for both servers: the LlamaForCausalLM of ``build_llava_100m_lm``
    (files symlinked) with a tokenizer_config.json that does not name ``LlavaProcessor``.

    ``transformers serve`` loads every model with ``AutoProcessor``; the LLaVA's tokenizer config
    says ``"processor_class": "LlavaProcessor"``, which then looks for an image processor the
    language-model folder does not have and fails to load.
    """
    src_stamp = os.path.join(lm_path, "bench_build.json")
    with open(src_stamp) as f:
        src = json.load(f)
    stamp_path = os.path.join(path, "bench_build.json")
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == src:
                return path
    if os.path.isdir(path):
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(lm_path):
        if name in ("tokenizer_config.json", "bench_build.json"):
            continue
        os.symlink(os.path.abspath(os.path.join(lm_path, name)), os.path.join(path, name))
    with open(os.path.join(lm_path, "tokenizer_config.json")) as f:
        tok_cfg = json.load(f)
    tok_cfg.pop("processor_class", None)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2)
    with open(stamp_path, "w") as f:
        json.dump(src, f, indent=2)
    return path


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Poisson process at ``rate`` requests/s (exponential gaps, seeded), shifted so the first is at 0."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed * 7919 + 17)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return [x - out[0] for x in out]


def png_data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build_workload(a) -> dict:
    ns = types.SimpleNamespace(model=a.model, lm_model=a.lm_serve, requests=a.n, min_out=a.min_out,
                               max_out=a.max_out, seed=a.seed, check=0, check_tokens=0)
    spec = offline.build_spec(ns)
    spec["arrivals"] = arrival_times(a.n, a.rate, a.seed)
    spec["rate"] = a.rate
    spec["image_urls"] = [png_data_url(offline.make_image(s)) for s in spec["image_seeds"]]
    spec["warm_image_url"] = png_data_url(offline.make_image(-1))
    return spec


def messages_for(spec: dict, workload: str, i: int | None) -> list[dict]:
    if workload == "image":
        url = spec["warm_image_url"] if i is None else spec["image_urls"][i]
        q = WARM_QUESTION if i is None else spec["questions"][i]
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": q}]}]
    return [{"role": "user", "content": WARM_TEXT if i is None else spec["text_prompts"][i]}]


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transformers_cli() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    if os.path.isfile(exe):
        return [exe]
    return [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())"]


class RssSampler:
    """Peak RSS of a process and its descendants, sampled every ``period`` seconds (psutil)."""

    def __init__(self, pid: int, period: float = 0.05):
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._period = period
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
                for c in self.proc.children(recursive=True):
                    try:
                        rss += c.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.last = rss
            self.peak = max(self.peak, rss)
            self._stop.wait(self._period)

    def cpu_seconds(self) -> float:
        import psutil

        try:
            t = self.proc.cpu_times()
            total = t.user + t.system
            for c in self.proc.children(recursive=True):
                try:
                    ct = c.cpu_times()
                    total += ct.user + ct.system
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return float("nan")

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=2)


class Server:
    """One server subprocess: output to a log file, never a pipe."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: str):
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), PYTHONUNBUFFERED="1")
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.sampler = RssSampler(self.proc.pid)
        self.maxrss_mib: float | None = None

    def wait_healthy(self, timeout: float) -> float:
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while loading:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not healthy within {timeout:.0f}s:\n{self.log_tail()}")

    def log_text(self) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; reap with wait4 to read the child's peak RSS."""
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            killed = False
            while True:
                try:
                    pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
                except ChildProcessError:  # already reaped
                    break
                if pid == self.proc.pid:
                    self.proc.returncode = os.waitstatus_to_exitcode(status)
                    self.maxrss_mib = ru.ru_maxrss / 1024
                    break
                if time.monotonic() > deadline and not killed:
                    self.proc.kill()
                    killed = True
                time.sleep(0.05)
        self.sampler.stop()
        self._log.close()
        return self.proc.returncode

    @property
    def peak_rss_mib(self) -> float:
        sampled = self.sampler.peak / 2 ** 20
        return max(sampled, self.maxrss_mib or 0.0)


def metrics_snapshot(url: str) -> dict[str, float]:
    """seer's unlabelled /metrics samples."""
    import httpx

    out = {}
    try:
        for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
    except (httpx.HTTPError, ValueError):
        pass
    return out


# ------------------------------------------------------------------------------------------------
# Client
# ------------------------------------------------------------------------------------------------

def request_body(job: dict, spec: dict, i: int | None, max_tokens: int, ignore_eos_field: bool) -> dict:
    body = {"model": job["model_field"], "messages": messages_for(spec, job["workload"], i), "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": max_tokens, "temperature": 0}
    if job["server"] == "seer" or ignore_eos_field:
        body["ignore_eos"] = True
    else:
        # transformers serve: a GenerationConfig in JSON; an eos id no token has = ignore eos.
        never = spec["vocab_size"] + 12345
        body["generation_config"] = json.dumps({"do_sample": False, "eos_token_id": never,
                                                "pad_token_id": spec["pad_token_id"]})
    return body


async def stream_one(client, url: str, payload: bytes, sched: float | None = None, t0: float | None = None) -> dict:
    """One streamed chat completion; times are perf_counter seconds."""
    rec: dict = {"content_times": [], "text": "", "usage": None, "finish_reason": None, "error": None,
                 "status": None}
    rec["sent"] = time.perf_counter()
    if sched is not None:
        rec["lag"] = rec["sent"] - (t0 + sched)
    try:
        async with client.stream("POST", url + "/v1/chat/completions", content=payload,
                                 headers={"content-type": "application/json"}) as r:
            rec["status"] = r.status_code
            if r.status_code != 200:
                rec["error"] = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:500]}"
                rec["done"] = time.perf_counter()
                return rec
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                try:
                    obj = json.loads(data)
                except json.JSONDecodeError:
                    rec["error"] = f"bad SSE data: {data[:200]}"
                    continue
                if "error" in obj:
                    rec["error"] = str(obj["error"])[:500]
                for ch in obj.get("choices") or []:
                    c = (ch.get("delta") or {}).get("content")
                    if c:
                        rec["content_times"].append(now)
                        rec["text"] += c
                    if ch.get("finish_reason"):
                        rec["finish_reason"] = ch["finish_reason"]
                if obj.get("usage"):
                    rec["usage"] = obj["usage"]
    except Exception as e:  # noqa: BLE001 - a failed request is a result
        rec["error"] = f"{type(e).__name__}: {e}"
    rec["done"] = time.perf_counter()
    return rec


def _client(n: int):
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30.0),
                             limits=httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8))


async def _single(url: str, payload: bytes) -> dict:
    async with _client(1) as client:
        return await stream_one(client, url, payload)


async def run_workload(url: str, payloads: list[bytes], arrivals: list[float]) -> tuple[list[dict], float, float]:
    async with _client(len(payloads)) as client:
        t0 = time.perf_counter()

        async def fire(i: int) -> dict:
            delay = t0 + arrivals[i] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            return await stream_one(client, url, payloads[i], arrivals[i], t0)

        recs = await asyncio.gather(*(fire(i) for i in range(len(payloads))))
        return list(recs), t0, time.perf_counter()


# ------------------------------------------------------------------------------------------------
# One job: start a server, warm it up, run the workload, stop it
# ------------------------------------------------------------------------------------------------

def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(recs: list[dict], lens: list[int], prompt_lens: list[int], t_first: float, t_last: float) -> dict:
    ok = [r for r in recs if not r["error"] and r["content_times"]]
    ttft, tpot, itl, e2e = [], [], [], []
    out_tokens, mismatched, prompt_mismatch, no_usage = 0, [], [], 0
    for i, r in enumerate(recs):
        if r["error"] or not r["content_times"]:
            continue
        ct = r["content_times"]
        n_out = (r["usage"] or {}).get("completion_tokens")
        if n_out is None:
            no_usage += 1
            n_out = len(ct)
        r["out_tokens"] = n_out
        out_tokens += n_out
        if n_out != lens[i]:
            mismatched.append((i, n_out, lens[i]))
        p = (r["usage"] or {}).get("prompt_tokens")
        r["prompt_tokens"] = p
        if p is not None and p != prompt_lens[i]:
            prompt_mismatch.append((i, p, prompt_lens[i]))
        ttft.append(ct[0] - r["sent"])
        e2e.append(r["done"] - r["sent"])
        if n_out > 1:
            tpot.append((ct[-1] - ct[0]) / (n_out - 1))
        itl.extend(b - a for a, b in zip(ct, ct[1:]))
    dur = t_last - t_first
    ms = lambda xs, q: percentile(xs, q) * 1000  # noqa: E731
    return {
        "requests_ok": len(ok), "requests_failed": len(recs) - len(ok), "duration_s": dur,
        "req_s": len(ok) / dur if dur > 0 else float("nan"),
        "out_tokens": out_tokens, "out_tok_s": out_tokens / dur if dur > 0 else float("nan"),
        "ttft_ms": {"p50": ms(ttft, 50), "p99": ms(ttft, 99), "mean": 1000 * sum(ttft) / max(1, len(ttft))},
        "tpot_ms": {"p50": ms(tpot, 50), "p99": ms(tpot, 99), "mean": 1000 * sum(tpot) / max(1, len(tpot))},
        "itl_ms": {"p50": ms(itl, 50), "p99": ms(itl, 99), "mean": 1000 * sum(itl) / max(1, len(itl))},
        "e2e_s": {"p50": percentile(e2e, 50), "p99": percentile(e2e, 99), "mean": sum(e2e) / max(1, len(e2e))},
        "token_count_mismatches": mismatched, "prompt_token_mismatches": prompt_mismatch,
        "responses_without_usage": no_usage,
        "max_send_lag_ms": 1000 * max((r.get("lag", 0.0) for r in recs), default=0.0),
        "prompt_tokens": [r.get("prompt_tokens") for r in recs],
        "errors": [f"request {i}: {r['error']}" for i, r in enumerate(recs) if r["error"]][:10],
    }


def server_command(job: dict, port: int) -> list[str]:
    if job["server"] == "seer":
        return [sys.executable, "-m", "seer", "serve", job["model"], "--server-name", "127.0.0.1",
                "--server-port", str(port), *job["flags"]]
    return [*transformers_cli(), "serve", job["model"], "--host", "127.0.0.1", "--port", str(port), *job["flags"]]


def run_job(job: dict, spec: dict, tmp: str, a) -> dict:
    import httpx

    res: dict = {k: job[k] for k in ("key", "label", "server", "workload", "setting", "model", "flags")}
    port = free_port()
    cmd = server_command(job, port)
    res["command"] = " ".join(shlex.quote(os.path.relpath(c, REPO) if c.startswith(REPO) else c) for c in cmd)
    log(f"{job['label']} ({job['workload']}): starting {res['command']}")
    server = Server(job["label"], cmd, port, os.path.join(tmp, f"{job['key']}.log"))
    try:
        try:
            res["load_s"] = server.wait_healthy(HEALTH_TIMEOUT)
        except RuntimeError as e:
            res["failed"] = f"the server did not start: {str(e).splitlines()[0]}"
            res["log_tail"] = server.log_tail()
            return res
        res["rss_loaded_mib"] = server.sampler.last / 2 ** 20
        # Warm-up; for transformers serve, first see whether it takes ignore_eos.
        ignore_eos_field = False
        if job["server"] == "transformers":
            probe = request_body(job, spec, None, 2, True)
            r = asyncio.run(_single(server.url, json.dumps(probe).encode()))
            res["ignore_eos_probe"] = ("accepted" if not r["error"] else r["error"])
            ignore_eos_field = not r["error"]
        t = time.perf_counter()
        warm = asyncio.run(_single(server.url, json.dumps(request_body(job, spec, None, 4, ignore_eos_field)).encode()))
        res["warmup_s"] = time.perf_counter() - t
        if warm["error"] or not warm["content_times"]:
            res["failed"] = (f"the warm-up {job['workload']} request failed: "
                             f"{warm['error'] or 'no content in the stream'}")
            res["log_tail"] = server.log_tail()
            return res
        res["warmup_tokens"] = (warm["usage"] or {}).get("completion_tokens")
        if job["server"] == "transformers":
            cb = [ln.rsplit("CB:", 1)[1].strip() for ln in server.log_text().splitlines() if "CB:" in ln]
            res["cb_used"] = bool(cb) and cb[-1].startswith("True")
            if job.get("cb") and not res["cb_used"]:
                res["cb_fallback"] = True
                if job.get("skip_on_fallback"):
                    res["skipped"] = ("transformers serve --continuous-batching fell back to sequential "
                                      "model.generate for this model (its log: 'CB: False'; continuous batching "
                                      "is for text-only models only), the same path as the plain row: not run again")
                    log(f"{job['label']}: {res['skipped']}")
                    return res
        m0 = metrics_snapshot(server.url) if job["server"] == "seer" else {}
        payloads = [json.dumps(request_body(job, spec, i, spec["out_lens"][i], ignore_eos_field)).encode()
                    for i in range(spec["requests"])]
        cpu0 = server.sampler.cpu_seconds()
        how = "all at once" if math.isinf(spec["rate"]) else f"{spec['rate']:g} req/s (Poisson)"
        log(f"{job['label']} ({job['workload']}): {len(payloads)} requests, {how}")
        recs, t0, t1 = asyncio.run(run_workload(server.url, payloads, spec["arrivals"]))
        cpu1 = server.sampler.cpu_seconds()
        t_first = min(r["sent"] for r in recs)
        prompt_lens = spec["vl_prompt_lens"]
        res.update(summarize(recs, spec["out_lens"], prompt_lens, t_first, max(r["done"] for r in recs)))
        res["cpu_s"] = cpu1 - cpu0
        res["cpu_busy"] = (cpu1 - cpu0) / res["duration_s"] if res["duration_s"] > 0 else float("nan")
        res["texts"] = [r["text"] for r in recs]
        res["requests"] = [{"sent": r["sent"] - t0, "ttft": (r["content_times"][0] - r["sent"]) if r["content_times"] else None,
                            "e2e": r["done"] - r["sent"], "itl": [b - x for x, b in zip(r["content_times"], r["content_times"][1:])],
                            "out_tokens": r.get("out_tokens"), "prompt_tokens": r.get("prompt_tokens"),
                            "finish_reason": r["finish_reason"], "error": r["error"], "lag": r.get("lag")}
                           for r in recs]
        if job["server"] == "seer":
            m1 = metrics_snapshot(server.url)
            res["seer_metrics"] = {k: m1.get(k, 0) - m0.get(k, 0) for k in (
                "seer_prefix_cache_hit_tokens", "seer_image_cache_hits", "seer_generation_tokens",
                "seer_prompt_tokens")}
            res["seer_metrics"]["seer_kv_cache_blocks_total"] = m1.get("seer_kv_cache_blocks_total")
        log(f"{job['label']} ({job['workload']}): {res['requests_ok']}/{len(recs)} ok, {res['duration_s']:.1f}s, "
            f"{res['out_tok_s']:.1f} tok/s, TTFT p50 {res['ttft_ms']['p50']:.0f} ms, "
            f"TPOT p50 {res['tpot_ms']['p50']:.0f} ms")
        if res["requests_failed"]:
            res["log_tail"] = server.log_tail()
        return res
    except httpx.HTTPError as e:
        res["failed"] = f"{type(e).__name__}: {e}"
        res["log_tail"] = server.log_tail()
        return res
    finally:
        rc = server.stop()
        res["exit_code"] = rc
        res["peak_rss_mib"] = server.peak_rss_mib
        res["peak_rss_source"] = "wait4 ru_maxrss" if server.maxrss_mib else "psutil samples (50 ms)"
        if "log_tail" in res:
            log(f"{job['label']}: server log tail:\n{res['log_tail']}")


# ------------------------------------------------------------------------------------------------
# Jobs, report
# ------------------------------------------------------------------------------------------------

def make_jobs(a, spec: dict) -> list[dict]:
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    tf_modes = [m.strip() for m in a.tf_modes.split(",") if m.strip()]
    prompt_lens, lens = spec["vl_prompt_lens"], spec["out_lens"]
    seer_blocks = a.seer_blocks or offline.seer_blocks(prompt_lens, lens)
    cb_blocks = offline.cb_blocks(prompt_lens, lens)
    seer_extra = shlex.split(a.seer_args or "")
    tf_extra = shlex.split(a.tf_args or "")
    jobs = []
    for w in workloads:
        model = a.model if w == "image" else a.lm_serve
        if a.only in (None, "seer"):
            flags = ["--num-gpu-blocks", str(seer_blocks), *seer_extra]
            jobs.append({"key": f"seer-{w}", "label": "seer", "server": "seer", "workload": w, "model": model,
                         "model_field": model, "flags": flags,
                         "setting": f"`seer serve --num-gpu-blocks {seer_blocks}`"
                                    + (f" {' '.join(seer_extra)}" if seer_extra else "") + ", others default"})
        if a.only in (None, "transformers"):
            base = ["--device", "cpu", *tf_extra]
            for mode in tf_modes:
                if mode == "generate":
                    jobs.append({"key": f"tf-generate-{w}", "label": "transformers serve", "server": "transformers",
                                 "workload": w, "model": model, "model_field": model, "flags": base,
                                 "setting": "`transformers serve --device cpu` (model.generate, one request at a time)"})
                elif mode == "cb":
                    cb_flags = ["--continuous-batching", "--cb-block-size", str(CB_PAGE_SIZE), "--cb-num-blocks",
                                str(cb_blocks), "--cb-max-batch-tokens", str(MAX_BATCH_TOKENS)]
                    jobs.append({"key": f"tf-cb-{w}", "label": "transformers serve (CB)", "server": "transformers",
                                 "workload": w, "model": model, "model_field": model, "flags": base + cb_flags,
                                 "cb": True, "skip_on_fallback": w == "image" and "generate" in tf_modes,
                                 "setting": f"`transformers serve --device cpu --continuous-batching "
                                            f"--cb-block-size {CB_PAGE_SIZE} --cb-num-blocks {cb_blocks} "
                                            f"--cb-max-batch-tokens {MAX_BATCH_TOKENS}`"})
    return jobs


def compare_texts(results: list[dict], k: int) -> list[str]:
    lines = []
    for w in ("image", "text"):
        ref = next((r for r in results if r["server"] == "seer" and r["workload"] == w and "texts" in r), None)
        if ref is None:
            continue
        for r in results:
            if r["server"] != "transformers" or r["workload"] != w or "texts" not in r:
                continue
            verdicts = []
            for i, (x, y) in enumerate(list(zip(ref["texts"], r["texts"]))[:k]):
                if x == y:
                    verdicts.append(f"{i}: equal ({len(x)} chars)")
                else:
                    same = offline._common_prefix(list(x), list(y))
                    verdicts.append(f"{i}: differ at char {same} of {min(len(x), len(y))}")
            lines.append(f"{w}: seer vs {r['label']}, greedy text of the first {len(verdicts)} requests: "
                         + "; ".join(verdicts))
    return lines


HEADER = ["server", "workload", "req/s", "out tok/s", "TTFT p50 / p99 ms", "TPOT p50 / p99 ms",
          "ITL p50 / p99 ms", "E2E p50 / p99 s", "peak RSS MiB", "CPU cores busy", "seer ÷ this (tok/s)"]


def table(results: list[dict]) -> str:
    rows = []
    for r in results:
        if "failed" in r or "skipped" in r:
            why = r.get("failed") or "not run: the server fell back to sequential generate (no CB for VLMs), like the plain transformers serve row"
            rows.append([r["label"], r["workload"], "FAILED" if "failed" in r else "—", "", "", "", "", "", "", "",
                         why.replace("|", "/")])
            continue
        ref = next((x for x in results if x["server"] == "seer" and x["workload"] == r["workload"]
                    and "out_tok_s" in x), None)
        ratio = f"{ref['out_tok_s'] / r['out_tok_s']:.2f}x" if ref and r["out_tok_s"] > 0 else ""
        rows.append([
            r["label"], r["workload"], f"{r['req_s']:.3f}", f"{r['out_tok_s']:.1f}",
            f"{r['ttft_ms']['p50']:.0f} / {r['ttft_ms']['p99']:.0f}",
            f"{r['tpot_ms']['p50']:.1f} / {r['tpot_ms']['p99']:.1f}",
            f"{r['itl_ms']['p50']:.1f} / {r['itl_ms']['p99']:.1f}",
            f"{r['e2e_s']['p50']:.2f} / {r['e2e_s']['p99']:.2f}",
            f"{r['peak_rss_mib']:.0f}", f"{r['cpu_busy']:.2f}", ratio])
    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    out += ["| " + " | ".join(x) + " |" for x in rows]
    return "\n".join(out)


def capability_notes(results: list[dict]) -> list[str]:
    """What transformers serve did with this workload, as observed in this run."""
    notes = []
    tf = [r for r in results if r["server"] == "transformers"]
    img = [r for r in tf if r["workload"] == "image"]
    if img:
        ok = [r for r in img if "failed" not in r]
        ran = [r for r in ok if "prompt_token_mismatches" in r]
        if ran and not any(r["prompt_token_mismatches"] for r in ran):
            notes.append("Images: `transformers serve` ran the LLaVA (LlavaForConditionalGeneration, loaded through "
                         "AutoModelForMultimodalLM) with inline `data:image/png;base64` `image_url` parts; its "
                         f"usage.prompt_tokens match the workload's ({bench_models.IMAGE_TOKENS} image tokens "
                         "included), so the images were used.")
        elif ran:
            notes.append("Images: `transformers serve` answered the image requests but its prompt token counts differ "
                         "from the workload's (see the details): it may have dropped or re-expanded the images "
                         "(for a model it classes as text-only it silently drops image parts).")
        elif ok:
            notes.append("Images: `transformers serve` loaded the LLaVA and answered an image warm-up request.")
        else:
            notes.append("Images: `transformers serve` could NOT run the image workload on this LLaVA: "
                         + "; ".join(r["failed"] for r in img) + ". The text rows are the like-for-like comparison.")
    cbs = [r for r in tf if any(f == "--continuous-batching" for f in r["flags"])]
    for r in cbs:
        if "cb_used" not in r:
            continue
        if r["cb_used"]:
            notes.append(f"Continuous batching ({r['workload']}): used (server log 'CB: True').")
        else:
            notes.append(f"Continuous batching ({r['workload']}): NOT used although `--continuous-batching` was "
                         "given; the server fell back to sequential `model.generate` (log 'CB: False'): "
                         "transformers batches only text-only models (`use_continuous_batching` wants "
                         "Modality.LLM), so a VLM is served one request at a time.")
    probes = {r.get("ignore_eos_probe") for r in tf if r.get("ignore_eos_probe")}
    for p in probes:
        if p == "accepted":
            notes.append("`ignore_eos: true`: accepted by transformers serve.")
        else:
            notes.append(f"`ignore_eos: true`: rejected by transformers serve ({p[:160]}); instead each request "
                         "carries `generation_config: '{\"do_sample\": false, \"eos_token_id\": <vocab + 12345>, "
                         "\"pad_token_id\": 3}'` (eos that no token matches), so outputs still have exactly the "
                         "requested length (checked against usage.completion_tokens below).")
    if tf:
        notes.append("`stream_options.include_usage` is ignored by transformers serve (logged as unsupported), but "
                     "its last chunk carries usage anyway; it sends no `data: [DONE]`.")
    return notes


def report(a, spec: dict, results: list[dict], checks: list[str], info: dict, build: dict, started: str) -> str:
    p = build["params"]
    lens, pl = spec["out_lens"], spec["vl_prompt_lens"]
    cmd = "python benchmarks/serving.py " + " ".join(shlex.quote(x) for x in a.argv)
    rate = "all at once (`--rate inf`)" if math.isinf(a.rate) else f"a Poisson process at {a.rate:g} requests/s"
    title_rate = "all at once" if math.isinf(a.rate) else f"Poisson arrivals at {a.rate:g} req/s"
    arr = spec["arrivals"]
    lines = [
        f"## Online serving: {spec['requests']} image requests, {title_rate}, LLaVA-1.5-shaped "
        f"{p['total'] / 1e6:.0f}M, fp32, CPU" + (" (quick smoke run)" if a.quick else ""),
        "",
        f"Command: `{cmd}`  ",
        f"Date: {started} (UTC); commit {info['commit']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in info['load_avg'])}  ",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM; torch {info['torch']}, "
        f"transformers {info['transformers']}, Python {info['python']}. Each server in its own process with "
        f"OMP_NUM_THREADS={THREADS}, one server at a time; the client (asyncio + httpx) runs on the same cores.",
        "",
        f"Model: the offline benchmark's (`benchmarks/models.py`, random weights): LlavaForConditionalGeneration "
        f"{p['total'] / 1e6:.1f}M (Llama 640 x 12 layers {p['language_model'] / 1e6:.1f}M + CLIP 336px/14 "
        f"{p['vision'] / 1e6:.1f}M, {bench_models.IMAGE_TOKENS} image tokens); text rows use its language model "
        f"alone as a LlamaForCausalLM (same weights).",
        "",
        f"Workload: {spec['requests']} requests to `/v1/chat/completions`, `stream: true`, greedy; each a distinct "
        f"640x480 PNG as a `data:` `image_url` + a short question (prompt {min(pl)}-{max(pl)} tokens, "
        f"{bench_models.IMAGE_TOKENS} of them image); output lengths evenly spaced over {min(lens)}-{max(lens)} "
        f"and shuffled (seed {a.seed}), {sum(lens)} tokens in all, eos ignored; arrivals {rate} (seed {a.seed}; "
        f"last arrival at {arr[-1]:.1f}s). Text rows: the same lengths and arrivals, each image replaced by "
        f"filler words to the same prompt token count. TTFT = sent -> first content delta; TPOT = (last delta - "
        f"first delta) / (tokens - 1); ITL = gaps between content deltas as received (all requests pooled); "
        f"E2E = sent -> end of stream; req/s and tok/s over first request sent -> last finished; tokens = "
        f"`usage.completion_tokens`; warm-up and load excluded.",
        "",
        table(results),
        "",
        "Settings:",
        "",
    ]
    seen = set()
    for r in results:
        if (r["label"], r["setting"]) in seen:
            continue
        seen.add((r["label"], r["setting"]))
        lines.append(f"- {r['label']}: {r['setting']}")
    lines.append("")
    notes = capability_notes(results)
    if notes:
        lines += ["What `transformers serve` supports here (observed in this run):", ""]
        lines += [f"- {n}" for n in notes] + [""]
    if checks:
        lines += ["Same greedy text? (differences can come from batched vs single-sequence numerics):", ""]
        lines += [f"- {c}" for c in checks] + [""]
    if a.note:
        lines += ["Notes:", ""] + [f"- {n}" for n in a.note] + [""]
    details = []
    for r in results:
        bits = []
        if "load_s" in r:
            bits.append(f"healthy after {r['load_s']:.1f}s")
        if "warmup_s" in r:
            bits.append(f"warm-up {r['warmup_s']:.1f}s")
        if r.get("rss_loaded_mib"):
            bits.append(f"RSS when healthy {r['rss_loaded_mib']:.0f} MiB")
        if r.get("peak_rss_mib"):
            bits.append(f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r.get('peak_rss_source')})")
        if "duration_s" in r:
            bits.append(f"{r['requests_ok']}/{r['requests_ok'] + r['requests_failed']} requests ok in "
                        f"{r['duration_s']:.1f}s, {r['out_tokens']} output tokens")
            mm = r["token_count_mismatches"]
            bits.append("every request got exactly its requested tokens" if not mm else
                        f"{len(mm)} requests got a different token count than requested, e.g. "
                        + ", ".join(f"#{i}: {got}/{want}" for i, got, want in mm[:4]))
            pm = r["prompt_token_mismatches"]
            if pm:
                bits.append(f"prompt token counts differ from the workload's for {len(pm)} requests, e.g. "
                            + ", ".join(f"#{i}: {got} vs {want}" for i, got, want in pm[:3]))
            if r["responses_without_usage"]:
                bits.append(f"{r['responses_without_usage']} responses without usage (counted content deltas)")
            bits.append(f"max client send lag {r['max_send_lag_ms']:.0f} ms")
            bits.append(f"E2E mean {r['e2e_s']['mean']:.2f}s, TTFT mean {r['ttft_ms']['mean']:.0f} ms")
        if r.get("seer_metrics"):
            m = r["seer_metrics"]
            bits.append(f"prefix-cache hit tokens {m['seer_prefix_cache_hit_tokens']:.0f}, image-feature cache hits "
                        f"{m['seer_image_cache_hits']:.0f}, KV pool {m['seer_kv_cache_blocks_total']:.0f} blocks")
        if r.get("errors"):
            bits.append("errors: " + "; ".join(r["errors"][:3]))
        if r.get("failed"):
            bits.append("FAILED: " + r["failed"])
        if r.get("skipped"):
            bits.append("skipped: " + r["skipped"])
        details.append(f"- {r['label']} ({r['workload']}): " + "; ".join(bits))
    lines += ["Per-server details:", ""] + details + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="number of requests (64; --quick: 6)")
    ap.add_argument("--rate", type=float, default=1.0,
                    help="Poisson arrival rate in requests/s; 'inf': all at once (default 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-out", type=int, default=None, help="shortest output (16; --quick: 4)")
    ap.add_argument("--max-out", type=int, default=None, help="longest output (128; --quick: 12)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 6 requests, short outputs")
    ap.add_argument("--only", choices=("seer", "transformers"), default=None, help="run one server only")
    ap.add_argument("--workloads", default="image,text", help="image, text or both (default image,text)")
    ap.add_argument("--tf-modes", default="generate,cb",
                    help="transformers serve variants: generate (plain), cb (--continuous-batching)")
    ap.add_argument("--seer-blocks", type=int, default=0,
                    help="seer's --num-gpu-blocks (0: the whole workload's KV + 10%%, as offline.py)")
    ap.add_argument("--seer-args", default="", help="extra flags for `seer serve` (one string)")
    ap.add_argument("--tf-args", default="", help="extra flags for `transformers serve` (one string)")
    ap.add_argument("--check", type=int, default=4, help="requests whose texts are compared across servers")
    ap.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    ap.add_argument("--md", default=os.path.join(REPO, "BENCHMARKS.md"))
    ap.add_argument("--model", default=bench_models.DEFAULT_LLAVA)
    ap.add_argument("--lm-model", default=bench_models.DEFAULT_LM)
    ap.add_argument("--json", default=None, help="also dump all raw results (per request) to this JSON file")
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes list (repeatable)")
    a = ap.parse_args(argv)
    a.argv = argv
    q = a.quick
    a.n = a.n or (6 if q else 64)
    a.min_out = a.min_out or (4 if q else 16)
    a.max_out = a.max_out or (12 if q else 128)
    if a.min_out < 1 or a.max_out < a.min_out:
        ap.error("need 1 <= --min-out <= --max-out")
    if not (a.rate > 0):
        ap.error("--rate must be > 0 (or inf)")
    bad = {w.strip() for w in a.workloads.split(",") if w.strip()} - {"image", "text"}
    bad |= {m.strip() for m in a.tf_modes.split(",") if m.strip()} - {"generate", "cb"}
    if bad:
        ap.error(f"unknown workload or transformers mode {sorted(bad)}")

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    info = offline.machine_info()
    t = time.perf_counter()
    build = bench_models.build_llava_100m(a.model)
    bench_models.build_llava_100m_lm(a.model, a.lm_model)
    a.lm_serve = build_lm_serve(a.lm_model, os.path.abspath(a.lm_model).rstrip("/") + "-serve")
    log(f"model: {build['params']['total'] / 1e6:.1f}M parameters ({time.perf_counter() - t:.0f}s to build/check)")
    spec = build_workload(a)
    jobs = make_jobs(a, spec)
    results = []
    with tempfile.TemporaryDirectory(prefix="seer-serving-") as tmp:
        for job in jobs:
            results.append(run_job(job, spec, tmp, a))
    checks = compare_texts(results, a.check)
    for c in checks:
        log(c)
    body = report(a, spec, results, checks, info, build, started)
    print(body)
    if a.json:
        keep = ("requests", "out_lens", "questions", "image_seeds", "vl_prompt_lens", "text_prompts", "arrivals",
                "rate")
        with open(a.json, "w") as f:
            json.dump({"spec": {k: spec[k] for k in keep}, "results": results, "checks": checks, "machine": info,
                       "started": started, "argv": argv}, f, indent=1, default=str)
    if a.write:
        section = SECTION + ("-quick" if a.quick else "")
        offline.write_section(a.md, section, body)
        log(f"wrote section '{section}' of {a.md}")
    failed = [r for r in results if "failed" in r and not (r["server"] == "transformers" and r["workload"] == "image")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
