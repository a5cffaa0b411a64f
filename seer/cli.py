"""The ``seer`` command.

    seer run [MODEL] PROMPT [--image X]    one answer, streamed to stdout
    seer chat [MODEL]                      interactive terminal chat (seer/chat_cli.py)
    seer serve [api_server] MODEL          OpenAI-compatible HTTP server (seer/serve/api_server.py)
    seer serve gradio MODEL                web UI (seer/serve/gradio_app.py)
    seer check-env                         what a bug report needs

Each subcommand module has ``add_arguments(parser)`` and ``run(args) -> int`` and is
imported only when used, so ``seer check-env`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from .cliargs import add_engine_arguments


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
    from seer import GenerationConfig, pipeline
    from seer.cliargs import engine_configs, resolve_model
    from seer.vl import load_image

    try:
        if args.prompt is None:  # `seer run PROMPT`: the one positional is the prompt
            args.model, args.prompt = None, args.model
        model = resolve_model(args.model)
        images = [load_image(x) for x in args.image]
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                               temperature=args.temperature, top_p=args.top_p, random_seed=args.seed)
        with pipeline(model, *engine_configs(args)) as pipe:
            print(f"[seer] loaded {model}", file=sys.stderr)
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


# subcommand -> module implementing add_arguments(parser) and run(args)
_MODULES = {
    "chat": ("seer.chat_cli", "interactive terminal chat with history, streaming and /image"),
    "serve api_server": ("seer.serve.api_server", "OpenAI-compatible HTTP server"),
    "serve gradio": ("seer.serve.gradio_app", "web UI: chat with image upload"),
}


def _subcommand(name: str, argv: list[str]) -> int:
    import importlib

    module_name, help_text = _MODULES[name]
    mod = importlib.import_module(module_name)
    ap = argparse.ArgumentParser(prog=f"seer {name}", description=help_text)
    mod.add_arguments(ap)
    return mod.run(ap.parse_intermixed_args(argv))  # the model may come after the options


def _add_run_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("model", help="a local model folder (default: seer's demo model)")
    r.add_argument("prompt", nargs="?", default=None)
    r.add_argument("--image", action="append", default=[], help="a path, URL or data: URI (repeatable)")
    r.add_argument("--max-new-tokens", type=int, default=256)
    r.add_argument("--temperature", type=float, default=0.0)
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=None)
    add_engine_arguments(r)


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chat"]:
        return _subcommand("chat", argv[1:])
    if argv[:1] == ["run"]:  # `seer run MODEL --image X "prompt"`: positionals around the options
        r = argparse.ArgumentParser(prog="seer run", description="answer one prompt and print it")
        _add_run_arguments(r)
        return _run(r.parse_intermixed_args(argv[1:]))
    if argv[:1] == ["serve"]:  # `seer serve MODEL` is `seer serve api_server MODEL`, as in lmdeploy
        mode = argv[1] if len(argv) > 1 and argv[1] in ("api_server", "gradio") else None
        return _subcommand(f"serve {mode or 'api_server'}", argv[2:] if mode else argv[1:])
    ap = argparse.ArgumentParser(prog="seer", description="Inference engine for VLMs and LLMs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check-env", help="print versions, devices and CPU features").set_defaults(fn=_check_env)
    sub.add_parser("run", help="answer one prompt and print it", add_help=False)
    for name, (_, help_text) in _MODULES.items():
        if " " not in name:
            sub.add_parser(name, help=help_text, add_help=False)
    sub.add_parser("serve", help="serve [api_server|gradio] MODEL: OpenAI-compatible server or web UI",
                   add_help=False)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
