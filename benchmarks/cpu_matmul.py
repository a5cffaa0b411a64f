"""The fp32 decode matmul on this CPU: seer's ``small_linear`` against torch's BLAS (MKL), by rows.

The weight shapes of the 110M Llama of ``text_llm.py`` (q/k/v 2304x768, o 768x768, gate/up 4096x768,
down 768x2048, the LM head 32000x768), as many copies of each as make ~200 MB, so every call reads
its weight from memory as a decode step does. Prints GFLOP/s per shape and for a whole step (12
layers and the head), best of ``--repeats``; ``kernels.SMALL_LINEAR_MAX_ROWS`` is set from such runs.

    python benchmarks/cpu_matmul.py --rows 1 16 64 128 256
"""

from __future__ import annotations

import argparse
import sys
import time

SHAPES = [(2304, 768), (768, 768), (4096, 768), (768, 2048), (32000, 768)]  # (N, K); the last is the head
LAYERS = 12


def measure(fn, ws, x, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for w in ws:
            fn(x, w)
        best = min(best, (time.perf_counter() - t) / len(ws))
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64, 128, 256])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from seer import kernels

    torch.set_num_threads(2)
    if not kernels.available():
        print("no native kernels (no C compiler?)")
        return 1
    engines = {"small_linear": lambda x, w: kernels.small_linear(x, w, None), "BLAS": F.linear}
    print("| rows | " + " | ".join(f"{n}x{k}" for n, k in SHAPES) + " | whole step |")
    print("|---|" + "---|" * (len(SHAPES) + 1))
    for m in a.rows:
        for name, fn in engines.items():
            cells, flops, secs = [], 0.0, 0.0
            for n, k in SHAPES:
                ws = [torch.randn(n, k) for _ in range(max(1, 200_000_000 // (n * k * 4)))]
                s = measure(fn, ws, torch.randn(m, k), a.repeats)
                times = 1 if n == 32000 else LAYERS
                flops, secs = flops + 2 * m * n * k * times, secs + s * times
                cells.append(f"{2 * m * n * k / s / 1e9:.0f}")
            print(f"| {m} {name} | " + " | ".join(cells) + f" | {flops / secs / 1e9:.0f} GFLOP/s, "
                  f"{secs * 1e3:.1f} ms |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
