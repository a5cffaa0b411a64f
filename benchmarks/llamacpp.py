"""The llama.cpp side of the CPU speed comparison (issue 14): build, convert, quantise, run.

``build`` (idempotent; every step is skipped when its output exists):

1. ``pip download`` the pinned llama-cpp-python sdist into ``.bench/src`` and unpack its vendored
   llama.cpp into ``.bench/llama.cpp``;
2. build ``llama-batched-bench`` and ``llama-quantize`` there (``-DGGML_NATIVE=ON``, ``-j2``):
   about 8-9 minutes on the 2-core machines (9 min measured at nice 15 with another job running);
3. make ``.bench/llamacpp-venv`` (gguf-py from the same sdist, numpy, sentencepiece, safetensors,
   transformers, torch CPU), so the project's own venv and lock stay untouched;
4. convert the 110M Llama of ``benchmarks/text_llm.py`` (``.bench/llama-110m``) to GGUF f32 with
   llama.cpp's ``convert_hf_to_gguf.py``. That model's tiny byte-level BPE tokenizer does not
   convert (the converter's transformers 4.57 cannot load a tokenizer saved by transformers 5),
   so the GGUF is made from ``.bench/llama-110m-sp``:
   the same config.json and model.safetensors (symlinked) plus a sentencepiece ``tokenizer.model``
   (32000 pieces) trained on generated text. Token ids do not matter for speed: prompts are
   ``npp`` tokens and ``ntg`` tokens are generated whatever they are;
5. quantise to q8_0 and q4_0 with ``llama-quantize`` (its defaults: q4_0 keeps the tied
   embedding / LM head in Q6_K; norms stay f32).

``run`` calls ``llama-batched-bench`` (``-t 2 -c 16384``, ``-npp 32 -ntg 128 -npl 1,16,64`` for
decode, ``-npp 512 -ntg 1 -npl 1,8`` with ``--prefill``) and prints its table's rows as JSON
lines. Measure on an idle machine: two spinning threads on two busy cores stall badly.

    python benchmarks/llamacpp.py build
    python benchmarks/llamacpp.py run [--quant f32,q8_0,q4_0] [--prefill]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCH = os.path.join(REPO, ".bench")
VERSION = "0.3.36"  # llama-cpp-python sdist whose vendored llama.cpp is built
SRC = os.path.join(BENCH, "llama.cpp")
BIN = os.path.join(SRC, "build", "bin")
VENV = os.path.join(BENCH, "llamacpp-venv")
VPY = os.path.join(VENV, "bin", "python")
MODEL = os.path.join(BENCH, "llama-110m")  # written by benchmarks/text_llm.py build()
SP_MODEL = os.path.join(BENCH, "llama-110m-sp")
GGUF = os.path.join(BENCH, "llama-110m-{}.gguf")
QUANTS = ("f32", "q8_0", "q4_0")
THREADS = 2


def sh(*cmd: str, **kw) -> None:
    """Run ``cmd`` at low priority (nice 15), echoing it; raise on failure."""
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(["nice", "-n", "15", *cmd], check=True, **kw)


def fetch_source() -> None:
    if os.path.isfile(os.path.join(SRC, "CMakeLists.txt")):
        return
    dl = os.path.join(BENCH, "src")
    sdist = os.path.join(dl, f"llama_cpp_python-{VERSION}.tar.gz")
    if not os.path.isfile(sdist):
        sh(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={VERSION}", "-d", dl)
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and len(m.name) > len(prefix)]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(SRC, members=members, filter="data")


def build_binaries() -> None:
    if all(os.path.isfile(os.path.join(BIN, b)) for b in ("llama-batched-bench", "llama-quantize")):
        return
    sh("cmake", "-S", SRC, "-B", os.path.join(SRC, "build"), "-DCMAKE_BUILD_TYPE=Release",
       "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF")
    sh("cmake", "--build", os.path.join(SRC, "build"), "-j2", "--config", "Release",
       "--target", "llama-batched-bench", "llama-quantize")


def make_venv() -> None:
    if os.path.isfile(VPY) and subprocess.run([VPY, "-c", "import gguf, sentencepiece, torch, transformers"],
                                              capture_output=True).returncode == 0:
        return
    sh("python3", "-m", "venv", VENV)
    # transformers and torch as llama.cpp's requirements/requirements-convert_*.txt ask (torch: the
    # CPU wheel); gguf from the same sdist as the converter, so the two agree
    sh(VPY, "-m", "pip", "install", "-q", "numpy", "sentencepiece", "safetensors", "protobuf<5",
       "transformers==4.57.6", "torch==2.13.0", os.path.join(SRC, "gguf-py"))


def corpus(path: str, lines: int = 60000) -> None:
    """Pseudo-words from random syllables: enough distinct strings for 32000 BPE pieces."""
    rng = random.Random(0)
    syl = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + list("aeiouy")
    words = ["".join(rng.choices(syl, k=rng.randint(1, 5))) for _ in range(40000)]
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choices(words, k=rng.randint(5, 20))) + ".\n")


def sp_model() -> str:
    """``.bench/llama-110m-sp``: the benchmark weights with a sentencepiece tokenizer."""
    if os.path.isfile(os.path.join(SP_MODEL, "tokenizer.model")):
        return SP_MODEL
    if not os.path.isfile(os.path.join(MODEL, "model.safetensors")):
        code = f"import sys; sys.path.insert(0, {HERE!r}); import text_llm; text_llm.build()"
        sh(sys.executable, "-c", code)  # the project's venv (torch, transformers)
    os.makedirs(SP_MODEL, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        if not os.path.lexists(os.path.join(SP_MODEL, name)):
            os.symlink(os.path.join(MODEL, name), os.path.join(SP_MODEL, name))
    text = os.path.join(SP_MODEL, "corpus.txt")
    corpus(text)
    # bos/eos ids 1/2 as in config.json; hard_vocab_limit=False lets the trainer stop short of
    # 32000 (the converter pads the rest with unused [PADn] pieces)
    train = ("import sentencepiece as spm, sys; spm.SentencePieceTrainer.train(input=sys.argv[1], "
             "model_prefix=sys.argv[2], vocab_size=32000, model_type='bpe', character_coverage=1.0, "
             "hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2, "
             "minloglevel=1)")
    sh(VPY, "-c", train, text, os.path.join(SP_MODEL, "tokenizer"))
    os.remove(text)
    return SP_MODEL


def convert() -> None:
    if not os.path.isfile(GGUF.format("f32")):
        sh(VPY, os.path.join(SRC, "convert_hf_to_gguf.py"), sp_model(), "--outtype", "f32",
           "--outfile", GGUF.format("f32"))
    for q in QUANTS[1:]:
        if not os.path.isfile(GGUF.format(q)):
            sh(os.path.join(BIN, "llama-quantize"), GGUF.format("f32"), GGUF.format(q), q.upper(),
               str(THREADS))


def build() -> None:
    fetch_source()
    build_binaries()
    make_venv()
    convert()


# llama-batched-bench's table header -> row keys (tok_s: tokens per second over all B sequences)
KEYS = {"PP": "npp", "TG": "ntg", "B": "batch", "N_KV": "n_kv", "T_PP s": "pp_s", "S_PP t/s": "pp_tok_s",
        "T_TG s": "tg_s", "S_TG t/s": "tg_tok_s", "T s": "total_s", "S t/s": "total_tok_s"}


def parse(out: str) -> list[dict]:
    """The rows of llama-batched-bench's markdown table, keyed by KEYS, numbers as int or float."""
    rows, head = [], None
    for line in out.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-:"):
            continue
        if head is None:
            head = [KEYS.get(c, c) for c in cells]
            continue
        rows.append({k: float(v) if "." in v else int(v) for k, v in zip(head, cells)})
    return rows


def run(gguf_path: str, npl=(1, 16, 64), npp: int = 32, ntg: int = 128, threads: int = THREADS,
        ctx: int = 16384) -> list[dict]:
    """One llama-batched-bench call (its defaults otherwise: -b 2048 -ub 512, flash attention auto):
    ``npp``-token prompts and ``ntg`` generated tokens for each batch size in ``npl``. A row per
    batch: npp, ntg, batch, n_kv, the prompt phase (pp_s, pp_tok_s), the generation phase (tg_s,
    tg_tok_s: generated tokens/s over the batch's sequences) and both (total_s, total_tok_s)."""
    cmd = [os.path.join(BIN, "llama-batched-bench"), "-m", gguf_path, "-t", str(threads), "-c", str(ctx),
           "-npp", str(npp), "-ntg", str(ntg), "-npl", ",".join(map(str, npl))]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-4000:])
        res.check_returncode()
    rows = parse(res.stdout)
    if len(rows) != len(npl):
        raise RuntimeError(f"expected {len(npl)} rows from llama-batched-bench, got:\n{res.stdout}")
    return rows


def prefill(gguf_path: str, npl=(1, 8), npp: int = 512) -> list[dict]:
    """Prompt processing: ``npp``-token prompts, one generated token."""
    return run(gguf_path, npl=npl, npp=npp, ntg=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["build", "run"])
    ap.add_argument("--quant", default=",".join(QUANTS), help="comma list of f32,q8_0,q4_0")
    ap.add_argument("--prefill", action="store_true", help="-npp 512 -ntg 1 -npl 1,8 instead of decode")
    ap.add_argument("--npl", help="batch sizes, e.g. 1,16,64 (decode) or 1,8 (prefill)")
    ap.add_argument("--npp", type=int, help="prompt tokens (default 32; 512 with --prefill)")
    ap.add_argument("--ntg", type=int, default=128, help="generated tokens (decode)")
    args = ap.parse_args()
    if args.cmd == "build":
        build()
        return
    for q in args.quant.split(","):
        kw = {"npl": tuple(int(n) for n in args.npl.split(","))} if args.npl else {}
        if args.npp:
            kw["npp"] = args.npp
        rows = prefill(GGUF.format(q), **kw) if args.prefill else run(GGUF.format(q), ntg=args.ntg, **kw)
        mode = "prefill" if args.prefill else "decode"
        for r in rows:
            print(json.dumps({"engine": "llama.cpp", "quant": q, "mode": mode, **r}), flush=True)


if __name__ == "__main__":
    main()
