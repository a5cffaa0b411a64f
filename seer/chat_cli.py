"""``seer chat MODEL``: an interactive terminal chat (LMDeploy's ``lmdeploy chat``).

    >>> /image cat.jpg          attach an image (path, http(s) URL or data: URI) to the next turn
    >>> what is in the picture?  a user turn: the answer streams as it is generated
    >>> /reset                  forget the conversation and any pending images
    >>> /exit                   quit (so does Ctrl-D, or Ctrl-C at the prompt)

Ctrl-C while an answer streams stops that answer (the request is aborted in the engine)
and returns to the prompt; the part already printed stays in the history, as the user
saw it. A turn that fails (a bad prompt, one longer than ``--session-len``) prints
``seer: <message>`` and leaves the history as it was.

Lines are read with plain ``sys.stdin.readline()`` (no line editing): ``input()`` would
switch to GNU readline as soon as anything imports the ``readline`` module, and readline
takes the terminal over (raw mode, its own echo, bracketed-paste escapes around the
prompt), which makes the output depend on the environment.

When stdin is a terminal, Ctrl-C is made to work even if SIGINT was inherited as
ignored: a shell without job control starts ``cmd &`` with SIGINT ignored, the
ignore survives ``exec`` (into pytest, and from there into a pexpect-driven chat),
Python then installs no KeyboardInterrupt handler, and Ctrl-C would do nothing.
"""

from __future__ import annotations

import argparse
import signal
import sys

COMMANDS = "/image PATH_OR_URL (attach to the next turn), /reset, /exit (or Ctrl-D); Ctrl-C stops an answer"
PROMPT = ">>> "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cliargs import add_engine_arguments, add_model_argument

    add_model_argument(parser)
    parser.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per answer (default 512)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling cut (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument("--system", default=None, help="a system prompt, kept across /reset")
    add_engine_arguments(parser)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _read_line():
    """One line from stdin without its line ending, or None at end of input."""
    sys.stdout.write(PROMPT)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        return None
    return line.rstrip("\r\n")


class _Chat:
    """The conversation state and one turn's work; the loop lives in ``run``."""

    def __init__(self, pipe, gen_config, system=None):
        self.pipe = pipe
        self.gen_config = gen_config
        self.system = system
        self.history: list = []
        self.pending_images: list = []

    def reset(self) -> None:
        self.history = []
        self.pending_images = []

    def attach(self, src: str) -> None:
        from seer.vl import load_image

        try:
            self.pending_images.append(load_image(src))
        except ValueError as e:
            _err(f"seer: {e}")
            return
        n = len(self.pending_images)
        _err(f"[seer] image attached to the next turn ({n} pending)")

    def messages_for(self, text: str) -> tuple[list, dict]:
        parts = [{"type": "image", "image": img} for img in self.pending_images]
        parts.append({"type": "text", "text": text})
        turn = {"role": "user", "content": parts}
        system = [{"role": "system", "content": [{"type": "text", "text": self.system}]}] if self.system else []
        return system + self.history + [turn], turn

    def ask(self, text: str) -> None:
        """Stream one answer to stdout and, unless it failed, add the turn to the history."""
        messages, turn = self.messages_for(text)
        self.pending_images = []  # consumed by this turn, whatever becomes of it
        answer: list[str] = []
        stream = self.pipe.stream_infer(messages, gen_config=self.gen_config)
        try:
            for delta in stream:
                if delta.finish_reason == "error" or delta.error:  # also: the engine died mid-answer
                    if answer:
                        print(flush=True)
                    _err(f"seer: {delta.error or delta.text}")
                    return
                if delta.text:
                    print(delta.text, end="", flush=True)
                    answer.append(delta.text)  # after the print: history holds what was shown
        except ValueError as e:  # the prompt could not be prepared (raised on the first next())
            if answer:
                print(flush=True)
            _err(f"seer: {e}")
            if self.history and "session_len" in str(e):
                _err("[seer] the conversation has outgrown --session-len; /reset starts a new one")
            return
        except KeyboardInterrupt:
            # Ctrl-C: stop this answer. Closing the generator aborts the request in the engine
            # (its ``finally``); keep what was printed, as the user saw it.
            stream.close()
            print(flush=True)
            _err("[seer] answer stopped")
            if answer:
                self._remember(turn, "".join(answer))
            return
        finally:
            stream.close()
        print(flush=True)
        self._remember(turn, "".join(answer))

    def _remember(self, turn: dict, answer: str) -> None:
        self.history += [turn, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def _loop(chat: _Chat) -> int:
    while True:
        try:
            line = _read_line()
        except KeyboardInterrupt:  # Ctrl-C at the prompt: leave
            print(flush=True)
            return 0
        if line is None:  # Ctrl-D / end of input
            print(flush=True)
            return 0
        cmd = line.strip()
        if cmd in ("/exit", "/quit"):
            return 0
        try:
            _handle(chat, cmd)
        except KeyboardInterrupt:  # a Ctrl-C that missed the answer (an image fetch, the last token)
            print(flush=True)
            _err("[seer] interrupted")


def _handle(chat: _Chat, cmd: str) -> None:
    """One stripped input line: a command or a user turn."""
    if not cmd:
        return
    if cmd == "/reset":
        chat.reset()
        _err("[seer] conversation cleared")
    elif cmd == "/image" or cmd.startswith(("/image ", "/image\t")):
        src = cmd[len("/image"):].strip()
        if src:
            chat.attach(src)
        else:
            _err("seer: /image needs a path or URL")
    elif cmd.startswith("/") and len(cmd) > 1 and not any(c.isspace() for c in cmd):
        _err(f"seer: unknown command {cmd}; commands: {COMMANDS}")
    else:
        chat.ask(cmd)


def _enable_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt when a person is at the terminal, even if SIGINT came
    in ignored (see the module docstring)."""
    try:
        if sys.stdin.isatty() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no real stdin
        pass


def run(args) -> int:
    _enable_ctrl_c()
    from seer import GenerationConfig, pipeline
    from seer.cliargs import engine_configs, resolve_model
    from seer.engine.engine import EngineDeadError

    for stream in (sys.stdout, sys.stderr):  # model gibberish must never crash the terminal
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass
    try:
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                               temperature=args.temperature, top_p=args.top_p, random_seed=args.seed)
        model = resolve_model(args.model)
        ecfg, vcfg, tcfg = engine_configs(args)
        with pipeline(model, ecfg, vcfg, tcfg) as pipe:
            _err(f"[seer] loaded {model}; commands: {COMMANDS}")
            return _loop(_Chat(pipe, gen, args.system))
    except ValueError as e:
        _err(f"seer: {e}")
        return 2
    except EngineDeadError as e:
        _err(f"seer: {e}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C while loading
        print(file=sys.stderr)
        return 130
