"""Where a decode step's time goes: inclusive time of the engine's and the model's main calls.

The 110M Llama of ``text_llm.py``, 32-token prompts, 64 new tokens, fp32 (or ``--quantization``).
Each function named in ``POINTS`` is wrapped with a timer (inclusive: a layer's time includes
its linears'); the share is of the whole ``generate`` call. Nested shares overlap, so they do
not add up to 100%.

    python benchmarks/profile_decode.py --batch 1 16 64 [--quantization int8]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE]

from text_llm import MODEL, build  # noqa: E402


def _points():
    import seer.engine.engine as E
    import seer.engine.runner as R
    import seer.engine.scheduler as SC
    import seer.kernels as K
    import seer.layers.linear as L
    import seer.layers.norm as N
    import seer.layers.quant as Q
    import seer.layers.vocab as V
    import seer.models.llama as LL

    return [(R.ModelRunner, "execute"), (E, "sample"), (E.Engine, "_update"), (E, "make_step_input"),
            (SC.Scheduler, "schedule"), (LL.LlamaForCausalLM, "forward"), (LL.DecoderLayer, "forward"),
            (L.Linear, "forward"), (Q._QuantLinear, "forward"), (V.ParallelLMHead, "logits"),
            (N.RMSNorm, "forward"), (K, "paged_decode"), (K, "panel_linear"), (K, "decode_layers")]


def instrument() -> tuple[collections.Counter, collections.Counter]:
    spent, calls = collections.Counter(), collections.Counter()
    for owner, name in _points():
        fn = getattr(owner, name)
        label = f"{getattr(owner, '__name__', owner)}.{name}"

        @functools.wraps(fn)
        def timed(*a, _fn=fn, _label=label, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                spent[_label] += time.perf_counter() - t
                calls[_label] += 1
        setattr(owner, name, timed)
    return spent, calls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--quantization", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    build()
    spent, calls = instrument()
    from seer import LLM, SamplingParams

    for b in a.batch:
        llm = LLM(model=MODEL, max_num_seqs=b, max_model_len=200, quantization=a.quantization)
        prompts = [{"prompt_token_ids": [(7 * i + 13 * t) % 900 + 50 for t in range(32)]} for i in range(b)]
        llm.generate(prompts, SamplingParams(max_tokens=4, ignore_eos=True, temperature=0))
        spent.clear()
        calls.clear()
        t = time.perf_counter()
        llm.generate(prompts, SamplingParams(max_tokens=64, ignore_eos=True, temperature=0))
        dt = time.perf_counter() - t
        llm.close()
        print(f"batch {b} ({a.quantization or 'fp32'}): {b * 64 / dt:.1f} tok/s, {dt * 1000 / 64:.1f} ms per step "
              f"(prefill included)")
        for label, s in spent.most_common():
            print(f"  {label:36s} {s / dt * 100:5.1f}%  {s / calls[label] * 1e6:9.1f} us/call  x{calls[label]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
