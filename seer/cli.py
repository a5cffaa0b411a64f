"""The ``seer`` command: ``run`` (one answer) and ``check-env`` (what a bug report needs).

``serve`` and ``chat`` come with the serving issue; until then they say so.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys


def _check_env(_args) -> int:
    import torch
    import transformers

    import seer
    from seer import kernels

    rows = [
        ("seer", seer.__version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("transformers", transformers.__version__),
        ("cpu threads", str(torch.get_num_threads())),
        ("cpu capability", torch.backends.cpu.get_cpu_capability()),
        ("native CPU kernels", "yes" if kernels.available() else "no (no C compiler or SEER_NATIVE_KERNELS=0)"),
        ("cuda available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        rows.append(("cuda", f"{torch.version.cuda}, {torch.cuda.device_count()} device(s)"))
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"  device {i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _run(args) -> int:
    from seer import EngineConfig, GenerationConfig, pipeline
    from seer.vl import load_image

    try:
        images = [load_image(x) for x in args.image]
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                               temperature=args.temperature, top_p=args.top_p, random_seed=args.seed)
        with pipeline(args.model, EngineConfig(session_len=args.session_len)) as pipe:
            print(f"[seer] loaded {args.model}", file=sys.stderr)
            prompt = (args.prompt, images) if images else args.prompt
            for delta in pipe.stream_infer(prompt, gen_config=gen):
                print(delta.text, end="", flush=True)
                if delta.finish_reason == "error":
                    print(f"\nseer: {delta.error}", file=sys.stderr)
                    return 1
            print()
    except ValueError as e:
        print(f"seer: {e}", file=sys.stderr)
        return 2
    return 0


def _not_yet(name: str):
    def run(_args) -> int:
        print(f"seer {name}: not available yet (it comes with the serving issue); "
              f"use `seer run MODEL [--image X] PROMPT` or the Python API", file=sys.stderr)
        return 2
    return run


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(prog="seer", description="Inference engine for VLMs and LLMs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check-env", help="print versions, devices and CPU features").set_defaults(fn=_check_env)
    r = sub.add_parser("run", help="answer one prompt and print it")
    r.add_argument("model", help="a local model folder (Hugging Face layout)")
    r.add_argument("prompt")
    r.add_argument("--image", action="append", default=[], help="a path, URL or data: URI (repeatable)")
    r.add_argument("--max-new-tokens", type=int, default=256)
    r.add_argument("--temperature", type=float, default=0.0)
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--session-len", type=int, default=None)
    r.set_defaults(fn=_run)
    for name in ("serve", "chat"):
        sub.add_parser(name, help="coming with the serving issue", add_help=False).set_defaults(fn=_not_yet(name))
    args, extra = ap.parse_known_args(argv)
    if extra and args.cmd not in ("serve", "chat"):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
