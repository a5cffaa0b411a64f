"""`seer chat MODEL` as a person uses it: a real process on a pseudo-terminal, driven by pexpect.

Every expect has a timeout, so a chat that stops answering fails the test instead of hanging it.
The printed answers must equal what the pipeline gives for the same messages (greedy).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

import tiny_models as tm
from server_proc import seer_dtype_flags
from seer import GenerationConfig, pipeline

REPO = Path(__file__).resolve().parents[1]
PROMPT = ">>> "
SHORT = 12  # max_new_tokens of the conversation tests
LONG = 2000  # long enough (about a second on CPU) that a Ctrl-C lands in the middle of the answer
TIMEOUT = 60  # per expect: model loading in a busy machine, never forever

TEXT1, TEXT2, STORY = "describe this", "and what else?", "tell me a long story"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONIOENCODING"] = "utf-8"
    env["OMP_NUM_THREADS"] = "2"  # the same thread count as this process (conftest), same numerics
    env.pop("PYTHONUNBUFFERED", None)  # the chat must flush its prompt by itself
    return env


def _spawn(model: str, max_new_tokens: int, **kwargs) -> pexpect.spawn:
    args = ["-m", "seer", "chat", model, "--max-new-tokens", str(max_new_tokens), "--temperature", "0",
            *seer_dtype_flags()]
    return pexpect.spawn(sys.executable, args, encoding="utf-8", timeout=TIMEOUT, echo=False,
                         cwd=str(REPO), env=_env(), dimensions=(24, 200), **kwargs)


def _tty(text: str) -> str:
    """``text`` as it reads back from a pty (output processing turns \\n into \\r\\n)."""
    return text.replace("\n", "\r\n")


def _turn(child: pexpect.spawn, line: str, timeout: float = TIMEOUT) -> str:
    """Send one line; return everything printed before the next prompt."""
    child.sendline(line)
    child.expect_exact(PROMPT, timeout=timeout)
    return child.before


def _user(text, images=()):
    return {"role": "user", "content": [{"type": "image", "image": im} for im in images]
            + [{"type": "text", "text": text}]}


def _assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "five.png"
    tm.make_image(5).save(path)
    return str(path)


@pytest.fixture(scope="module")
def chats(tiny_llava):
    """The three chat processes the tests drive, started together so that they load (about 5 s
    each, mostly imports) side by side and while this process computes the expected answers."""
    procs = {
        # a conversation: /image, two turns, /reset, /exit
        "conversation": _spawn(tiny_llava, SHORT),
        # SIGINT ignored, as a shell without job control leaves it for `pytest &`: Ctrl-C must still work
        "ctrl_c": _spawn(tiny_llava, LONG, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)),
        # not a terminal: lines from a pipe
        "piped": subprocess.Popen([sys.executable, "-m", "seer", "chat", tiny_llava, "--max-new-tokens",
                                   str(SHORT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, encoding="utf-8", cwd=str(REPO), env=_env()),
    }
    yield procs
    procs["conversation"].close(force=True)
    procs["ctrl_c"].close(force=True)
    procs["piped"].kill()
    procs["piped"].communicate()


@pytest.fixture(scope="module")
def expected(tiny_llava, chats):
    """The pipeline's greedy answers for every conversation the tests have."""
    img = tm.make_image(5)
    short, long = GenerationConfig(max_new_tokens=SHORT), GenerationConfig(max_new_tokens=LONG)
    with pipeline(tiny_llava) as pipe:
        a1 = pipe([_user(TEXT1, [img])], gen_config=short).text
        a2 = pipe([_user(TEXT1, [img]), _assistant(a1), _user(TEXT2)], gen_config=short).text
        fresh = pipe(TEXT1, gen_config=short).text
        story = pipe(STORY, gen_config=long)
    for text in (a1, a2, fresh, story.text):  # what the prompt-delimited comparison relies on
        assert PROMPT not in text
    assert story.finish_reason == "length"  # no early EOS: the Ctrl-C test has time to land
    return {"a1": a1, "a2": a2, "fresh": fresh, "story": story.text}


def test_help(capsys):
    from seer.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["chat", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: seer chat")
    for opt in ("model", "--max-new-tokens", "--temperature", "--top-p", "--seed", "--session-len", "--system"):
        assert opt in out


def test_conversation_with_image_history_reset_and_exit(chats, image_file, expected):
    child = chats["conversation"]
    try:
        child.expect_exact(PROMPT)
        assert "loaded" in child.before and "/image" in child.before and "/reset" in child.before

        bad = _turn(child, "/image /no/such/picture.png")  # reported; the loop goes on
        assert bad.startswith("seer: ") and "/no/such/picture.png" in bad

        assert "attached" in _turn(child, f"/image {image_file}")
        assert _turn(child, TEXT1) == _tty(expected["a1"]) + "\r\n"  # image + text
        assert _turn(child, TEXT2) == _tty(expected["a2"]) + "\r\n"  # on the history of turn 1

        assert "cleared" in _turn(child, "/reset")
        assert _turn(child, TEXT1) == _tty(expected["fresh"]) + "\r\n"  # no history, no image

        child.sendline("/exit")
        child.expect(pexpect.EOF)  # read to the end before waiting: a child with unread output never exits
        child.close()
        assert child.exitstatus == 0, child.before
    finally:
        child.close(force=True)


def test_ctrl_c_stops_an_answer_then_exits_at_the_prompt(chats, expected):
    child = chats["ctrl_c"]  # started with SIGINT ignored
    try:
        child.expect_exact(PROMPT)
        child.sendline(STORY)
        child.expect(".")  # the answer has started streaming
        child.sendintr()
        child.expect_exact(PROMPT)
        assert "answer stopped" in child.before

        # after the abort the engine (and its prefix cache, which saw this prompt) gives the full
        # answer, and the stopped turn went with /reset
        assert "cleared" in _turn(child, "/reset")
        assert _turn(child, STORY) == _tty(expected["story"]) + "\r\n"

        child.sendintr()  # Ctrl-C at the prompt leaves, status 0
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
    finally:
        child.close(force=True)


def test_piped_stdin_ends_at_eof(chats, expected):
    """Not a terminal: lines from a pipe, and end of input (Ctrl-D on a terminal) ends with status 0."""
    piped = chats["piped"]
    try:
        stdout, stderr = piped.communicate(input=f"{TEXT1}\n", timeout=TIMEOUT)
    finally:
        piped.kill()
    assert piped.returncode == 0, stderr
    assert stdout == f"{PROMPT}{expected['fresh']}\n{PROMPT}\n"
