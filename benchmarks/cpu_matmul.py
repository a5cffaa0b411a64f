"""The fp32 matmul on this CPU: seer's ``panel_linear`` against torch's BLAS (MKL), by rows.

The weight shapes of the 110M Llama of ``text_llm.py`` (q/k/v 2304x768, o 768x768, gate/up 4096x768,
down 768x2048, the LM head 32000x768), as many copies of each as make ~200 MB, so every call reads
its weight from memory as a decode step does. Prints GFLOP/s per shape and for a whole step (12
layers and the head), best of ``--repeats``, the two alternating.

    python benchmarks/cpu_matmul.py --rows 1 16 64 128 256 512 4096
    python benchmarks/cpu_matmul.py --rows 1 16 --against 4k-pages --repeats 8   # 2 MB pages or not

``--against 4k-pages`` times ``panel_linear`` over the same packed weights copied to ordinary
memory (4 KB pages where transparent huge pages are "madvise", as here) instead of BLAS.
"""

from __future__ import annotations

import argparse
import sys
import time

SHAPES = [(2304, 768), (768, 768), (4096, 768), (768, 2048), (32000, 768)]  # (N, K); the last is the head
LAYERS = 12


def once(fn, ws, x) -> float:
    t = time.perf_counter()
    for w in ws:
        fn(x, w)
    return (time.perf_counter() - t) / len(ws)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64, 128, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--against", choices=["blas", "4k-pages"], default="blas")
    a = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from seer import kernels

    torch.set_num_threads(2)
    if not kernels.available():
        print("no native kernels (no C compiler?)")
        return 1
    print("| rows | " + " | ".join(f"{n}x{k}" for n, k in SHAPES) + " | whole step |")
    print("|---|" + "---|" * (len(SHAPES) + 1))
    for m in a.rows:
        other = "BLAS" if a.against == "blas" else "panel_linear, 4 KB pages"
        best = {"panel_linear": [], other: []}  # seconds per call, by shape
        for n, k in SHAPES:
            ws = [torch.randn(n, k) for _ in range(max(1, 200_000_000 // (n * k * 4)))]
            packed = [kernels.pack_panels(w) for w in ws]  # on 2 MB pages
            panel = lambda x, p, n=n: kernels.panel_linear(x, p, None, n)  # noqa: E731
            engines = {"panel_linear": (packed, panel),
                       other: (ws, F.linear) if a.against == "blas" else ([p.clone() for p in packed], panel)}
            x = torch.randn(m, k)
            secs = {name: float("inf") for name in engines}
            for _ in range(a.repeats):  # the two alternate
                for name, (weights, fn) in engines.items():
                    secs[name] = min(secs[name], once(fn, weights, x))
                    time.sleep(0.5)  # BLAS's OpenMP threads spin a while after a call, taking a core
            for name in engines:
                best[name].append(secs[name])
            del ws, engines
        for name, times in best.items():
            reps = [1 if n == 32000 else LAYERS for n, _ in SHAPES]
            flops = sum(2 * m * n * k * r for (n, k), r in zip(SHAPES, reps))
            step = sum(t * r for t, r in zip(times, reps))
            cells = [f"{2 * m * n * k / t / 1e9:.0f}" for (n, k), t in zip(SHAPES, times)]
            print(f"| {m} {name} | " + " | ".join(cells) + f" | {flops / step / 1e9:.0f} GFLOP/s, "
                  f"{step * 1e3:.1f} ms |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
