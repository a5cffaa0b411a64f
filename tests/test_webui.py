"""The web UI (``seer serve gradio``) driven in a real browser: headless Debian chromium via
Playwright for Python (``executable_path``; browsers cannot be downloaded here).

* ``python -m seer serve gradio TINY_LLAVA`` runs as a subprocess; the page's answers must equal
  ``pipeline(TINY_LLAVA)``'s greedy answers for the same inputs, turn by turn (history included),
  compared exactly: the text is read with ``textContent`` of the bot message, which is what
  the page holds (``render_markdown=False``; ``innerText`` would drop the leading space that
  CSS collapses). Reset clears the chat; an unreadable upload shows an error in the chat and
  the next question is still answered.
* the same against a running seer API server (``--api-url``);
* Stop and Reset against an in-test page over a slow fake backend: the answer streams, Stop
  ends it and closes the backend stream (the request is aborted), Reset during an answer too;
* ``PipelineBackend``: closing the stream aborts the request in the engine; a prompt too long
  is a ``BackendError``.

Screenshots go to ``test-artifacts/webui/``. Skipped only when chromium is not installed
(``make test`` installs it with apt-get where apt is available).
"""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_IMAGE = os.path.join(REPO, "assets", "demo.png")
ARTIFACTS = os.path.join(REPO, "test-artifacts", "webui")
MAX_NEW = 24
CHROMIUM = next((p for p in (os.environ.get("SEER_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and os.path.isfile(p)), None)

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`make test` installs it with apt-get where "
                             "apt is available; or set SEER_CHROMIUM=/path/to/chromium): no browser to drive")

from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402  (the `test` extra)
from playwright.sync_api import sync_playwright  # noqa: E402

from seer.serve.gradio_app import STOPPED_MARK, Backend, BackendError, PipelineBackend, Sampling  # noqa: E402

Q1, Q2, Q3 = "What is in this image?", "And what colour is it?", "Describe the picture."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc, log_path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{open(log_path).read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} was not up within {timeout:.0f} s:\n{open(log_path).read()[-3000:]}")


def _start(args: list, log_path: str, tmp) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GRADIO_TEMP_DIR=str(tmp / "gradio"), GRADIO_ANALYTICS_ENABLED="False")
    return subprocess.Popen([sys.executable, "-m", "seer", *args], cwd=REPO, env=env,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def servers(tiny_llava, tmp_path_factory):
    """Start both servers at once (they load in parallel): the in-process page
    (``seer serve gradio MODEL``) and a seer API server (``seer serve MODEL``), plus, in this
    process, a page in front of the API server (what ``--api-url`` builds; ``run`` wiring is
    checked in ``test_command_line``). Returns {"ui": url, "api_ui": url}."""
    from seer.serve.gradio_app import OpenAIBackend, build_demo, launch

    tmp = tmp_path_factory.mktemp("webui")
    ui_port, api_port, api_ui_port = _free_port(), _free_port(), _free_port()
    procs = {
        "ui": _start(["serve", "gradio", tiny_llava, "--server-port", str(ui_port),
                      "--max-new-tokens", str(MAX_NEW)], str(tmp / "ui.log"), tmp),
        "api": _start(["serve", tiny_llava, "--server-name", "127.0.0.1", "--server-port", str(api_port)],
                      str(tmp / "api.log"), tmp),
    }
    demo = None
    try:
        demo = build_demo(OpenAIBackend(f"http://127.0.0.1:{api_port}"), max_new_tokens=MAX_NEW)
        launch(demo, "127.0.0.1", api_ui_port, prevent_thread_lock=True)
        _wait_http(f"http://127.0.0.1:{ui_port}/", procs["ui"], str(tmp / "ui.log"))
        _wait_http(f"http://127.0.0.1:{api_port}/health", procs["api"], str(tmp / "api.log"))
        yield {"ui": f"http://127.0.0.1:{ui_port}/", "api_ui": f"http://127.0.0.1:{api_ui_port}/"}
    finally:
        if demo is not None:
            demo.close()
        for p in procs.values():
            _stop(p)


@pytest.fixture(scope="module")
def pipe(tiny_llava):
    from seer import pipeline

    with pipeline(tiny_llava) as p:
        yield p


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1100, "height": 1100})
    pg = ctx.new_page()
    yield pg
    os.makedirs(ARTIFACTS, exist_ok=True)
    try:  # the last state of every test, passed or failed
        pg.screenshot(path=os.path.join(ARTIFACTS, f"{request.node.name}-end.png"), full_page=True)
    finally:
        ctx.close()


# ---- driving the page -------------------------------------------------------------------------
BOTS = "#seer-chat [data-testid=bot]"
USERS = "#seer-chat [data-testid=user]"
TEXTAREA = "#seer-input textarea"


def _open(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(TEXTAREA, timeout=30_000)


def _ask(page, text: str, files=(), timeout: float = 30_000) -> str:
    """Upload ``files``, type ``text``, press Enter, wait for the answer to finish; its text."""
    n = page.locator(BOTS).count()
    if files:  # as a user does: the upload button, then the file dialog
        with page.expect_file_chooser() as chooser:
            page.click("#seer-input [data-testid=upload-button]")
        chooser.value.set_files(list(files))
        page.wait_for_function("n => document.querySelectorAll('#seer-input .thumbnail-item').length === n",
                               arg=len(files), timeout=15_000)
    page.fill(TEXTAREA, text)
    page.press(TEXTAREA, "Enter")
    _wait_answer(page, n + 1, timeout)
    return page.locator(BOTS).nth(n).text_content()


def _wait_answer(page, n_bots: int, timeout: float = 30_000) -> None:
    # The first update of an answer adds the bot message and disables the input in one go; the
    # last one re-enables the input.
    try:
        page.wait_for_function(
            """n => document.querySelectorAll('#seer-chat [data-testid=bot]').length === n
                    && !document.querySelector('#seer-input textarea').disabled""", arg=n_bots, timeout=timeout)
    except PlaywrightTimeout:
        state = page.evaluate("""() => { const b = document.querySelectorAll('#seer-chat [data-testid=bot]');
            return {bots: b.length, last: b.length ? b[b.length - 1].textContent : null,
                    input_disabled: document.querySelector('#seer-input textarea').disabled}; }""")
        pytest.fail(f"no complete answer #{n_bots} within {timeout / 1000:.0f} s; page: {state}")


def _greedy(pipe, prompt, session=None, max_new_tokens=MAX_NEW):
    from seer import GenerationConfig

    return pipe.chat(prompt, session=session, gen_config=GenerationConfig(max_new_tokens=max_new_tokens))


# ---- the real model, in process and through the API server ---------------------------------------
def _expected(pipe):
    """Greedy answers of the pipeline: Q1 with the image, then Q2 in the same chat, then Q3 with
    the image again in that chat."""
    from seer.vl import load_image

    image = load_image(DEMO_IMAGE)
    sess = _greedy(pipe, (Q1, image))
    a1 = sess.response.text
    a2 = _greedy(pipe, Q2, session=sess).response.text
    a3 = _greedy(pipe, (Q3, image), session=sess).response.text
    assert a1 and a2 and a3
    return a1, a2, a3


def _second_image_png() -> bytes:
    import io

    import tiny_models as tm

    buf = io.BytesIO()
    tm.make_image(3, size=(90, 60)).save(buf, format="PNG")
    return buf.getvalue()


def _chat_session(page, url: str, pipe, tmp_path, name: str) -> None:
    from seer.vl import load_image

    a1, a2, a3 = _expected(pipe)
    _open(page, url)
    assert page.locator("#seer-temperature").count() and page.locator("#seer-max-new-tokens").count()

    assert _ask(page, Q1, [DEMO_IMAGE]) == a1
    assert page.locator(f"{USERS} img").count() == 1  # the upload is shown in the chat
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}-answer.png"), full_page=True)
    assert _ask(page, Q2) == a2  # the second turn: the history went to the model

    # errors show in the chat, and the failed turns stay out of the history
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"these bytes are not an image\n" * 4)
    error = _ask(page, Q3, [str(broken)])
    assert error.startswith("Error: ") and "broken.png" in error, error
    error = _ask(page, "hello " * 3000)  # a prompt too long
    assert error.startswith("Error: ") and "token" in error, error
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}-error.png"), full_page=True)
    assert _ask(page, Q3, [DEMO_IMAGE]) == a3  # the page keeps working
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}-after-errors.png"), full_page=True)

    page.click("#seer-reset")
    page.wait_for_function("() => document.querySelectorAll('#seer-chat [data-testid=bot]').length === 0",
                           timeout=10_000)
    assert page.locator(USERS).count() == 0
    assert _ask(page, Q1, [DEMO_IMAGE]) == a1  # a fresh chat after Reset

    # the sampling controls reach the backend: fewer new tokens
    box = page.locator("#seer-max-new-tokens input[type=number]")
    box.fill("7")
    box.press("Enter")
    image = load_image(DEMO_IMAGE)
    short = _greedy(pipe, (Q1, image), session=_greedy(pipe, (Q1, image)), max_new_tokens=7).response
    assert short.generate_token_len == 7 or short.finish_reason == "stop"
    assert _ask(page, Q1, [DEMO_IMAGE]) == short.text

    # several images in one turn, in a fresh chat
    page.click("#seer-reset")
    page.wait_for_function("() => document.querySelectorAll('#seer-chat [data-testid=bot]').length === 0",
                           timeout=10_000)
    second = tmp_path / "second.png"
    second.write_bytes(_second_image_png())
    both = _greedy(pipe, ("Compare the two pictures.", [image, load_image(str(second))]), max_new_tokens=7)
    assert _ask(page, "Compare the two pictures.", [DEMO_IMAGE, str(second)]) == both.response.text
    assert page.locator(f"{USERS} img").count() == 2


@needs_chromium
def test_webui_in_process(servers, pipe, page, tmp_path):
    _chat_session(page, servers["ui"], pipe, tmp_path, "in-process")


@needs_chromium
def test_webui_in_front_of_the_api_server(servers, pipe, page, tmp_path):
    _chat_session(page, servers["api_ui"], pipe, tmp_path, "api-url")


# ---- Stop and Reset, on a slow fake backend --------------------------------------------------------
TRICKY = ("  leading spaces, **not bold**, <b>not a tag</b>, a_b_c & 1 < 2 &amp; <script>x()</script>\n"
          "second line\n\n  indented $x$ `code`")


class SlowBackend(Backend):
    name = "slow fake"

    def __init__(self):
        self.closed = threading.Event()
        self.seen: list = []  # the messages of every request

    def stream(self, messages, sampling: Sampling, cancel=None):
        self.seen.append(messages)
        if messages[-1]["content"][-1]["text"] == "echo":
            for i in range(0, len(TRICKY), 7):
                yield TRICKY[i:i + 7]
            return
        if messages[-1]["content"][-1]["text"] == "wait":  # no token until cancelled (a queued request)
            self.closed.clear()
            try:
                assert cancel is not None and cancel.wait(60), "the page never cancelled"
                return
            finally:
                self.closed.set()
        self.closed.clear()
        try:
            for _ in range(600):
                time.sleep(0.05)
                yield "tick "
        finally:
            self.closed.set()


@pytest.fixture(scope="module")
def slow_page_url():
    from seer.serve.gradio_app import build_demo, launch

    backend = SlowBackend()
    demo = build_demo(backend, max_new_tokens=MAX_NEW)
    port = _free_port()
    launch(demo, "127.0.0.1", port, prevent_thread_lock=True)
    try:
        yield f"http://127.0.0.1:{port}/", backend
    finally:
        demo.close()


def _bot_text(page, i: int = -1) -> str:
    bots = page.locator(BOTS)
    return bots.nth(i if i >= 0 else bots.count() + i).text_content()


@needs_chromium
def test_stop_and_reset_abort_the_answer(slow_page_url, page):
    url, backend = slow_page_url
    _open(page, url)

    # shown verbatim: no markdown, no HTML, spaces and line breaks kept
    assert _ask(page, "echo") == TRICKY
    assert page.locator(BOTS).last.inner_text().splitlines()[1:] == ["second line", "", "indented $x$ `code`"]

    page.fill(TEXTAREA, "go")
    page.press(TEXTAREA, "Enter")
    page.wait_for_function("() => { const b = document.querySelectorAll('#seer-chat [data-testid=bot]');"
                           " return b.length === 2 && b[1].textContent.includes('tick tick tick'); }",
                           timeout=15_000)  # it streams
    assert page.locator(TEXTAREA).is_disabled()
    page.click("#seer-stop")
    _wait_answer(page, 2, timeout=10_000)
    stopped = _bot_text(page)
    assert stopped.endswith(STOPPED_MARK) and stopped.count("tick") < 600, stopped
    assert backend.closed.wait(5), "Stop did not close the backend stream"

    # the partial answer (without the mark) is in the history of the next turn
    assert _ask(page, "echo") == TRICKY
    history = backend.seen[-1]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant", "user"]
    assert history[3]["content"] == stopped[: -len(STOPPED_MARK)]

    # Reset during an answer: the chat empties, the stream is closed, the next turn starts afresh
    page.fill(TEXTAREA, "go")
    page.press(TEXTAREA, "Enter")
    page.wait_for_function("() => { const b = document.querySelectorAll('#seer-chat [data-testid=bot]');"
                           " return b.length === 4 && b[3].textContent.includes('tick'); }", timeout=15_000)
    page.click("#seer-reset")
    page.wait_for_function("() => document.querySelectorAll('#seer-chat [data-testid=bot]').length === 0",
                           timeout=10_000)
    assert backend.closed.wait(10), "Reset did not close the backend stream"
    time.sleep(0.5)  # a late update of the cancelled answer must not bring the chat back
    assert page.locator(BOTS).count() == 0
    assert _ask(page, "echo") == TRICKY
    assert len(backend.seen[-1]) == 1

    # Stop before the first token (a request still queued, or in a long prefill) ends it too
    page.fill(TEXTAREA, "wait")
    page.press(TEXTAREA, "Enter")
    page.wait_for_function("() => document.querySelector('#seer-input textarea').disabled", timeout=10_000)
    time.sleep(0.3)
    page.click("#seer-stop")
    _wait_answer(page, 2, timeout=10_000)
    assert _bot_text(page).strip() == STOPPED_MARK.strip()
    assert backend.closed.wait(5), "Stop did not end the waiting request"


# ---- the in-process backend ----------------------------------------------------------------------
def test_pipeline_backend_close_aborts_and_errors(pipe):
    backend = PipelineBackend("tiny", pipe=pipe)
    engine = pipe.engine
    stream = backend.stream([{"role": "user", "content": [{"type": "image", "path": DEMO_IMAGE},
                                                            {"type": "text", "text": Q1}]}],
                            Sampling(max_new_tokens=1500))
    next(stream)
    assert engine.num_running + engine.num_waiting == 1
    stream.close()
    deadline = time.monotonic() + 10
    while engine.num_running + engine.num_waiting and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.num_running + engine.num_waiting == 0, "closing the stream did not free the request"

    with pytest.raises(BackendError, match="token"):  # a prompt too long
        list(backend.stream([{"role": "user", "content": [{"type": "text", "text": "hello " * 3000}]}],
                            Sampling(max_new_tokens=8)))
    with pytest.raises(BackendError, match="image"):
        list(backend.stream([{"role": "user", "content": [{"type": "image", "path": __file__},
                                                            {"type": "text", "text": Q1}]}], Sampling()))


def test_cancel_ends_a_queued_request_and_frees_it(tiny_llava):
    """Stop while the request has no token yet (one running request fills a max_batch_size=1
    engine): the stream ends at once, the request leaves the engine, and the other one runs on."""
    from seer import EngineConfig, pipeline

    with pipeline(tiny_llava, EngineConfig(max_batch_size=1)) as p:
        backend, engine = PipelineBackend("tiny", pipe=p), p.engine
        first = backend.stream([{"role": "user", "content": [{"type": "text", "text": "go"}]}],
                               Sampling(max_new_tokens=1500))
        next(first)
        cancel, got = threading.Event(), []
        waiting = threading.Thread(target=lambda: got.extend(backend.stream(
            [{"role": "user", "content": [{"type": "text", "text": Q1}]}], Sampling(), cancel)))
        waiting.start()
        deadline = time.monotonic() + 10
        while engine.num_waiting != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.num_waiting == 1 and engine.num_running == 1
        cancel.set()
        waiting.join(2)
        assert not waiting.is_alive() and got == []
        deadline = time.monotonic() + 5
        while engine.num_waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.num_waiting == 0 and engine.num_running == 1
        assert next(first)  # the running one goes on
        first.close()


def test_command_line(monkeypatch, tmp_path):
    """``seer serve gradio`` wiring: defaults (127.0.0.1:6006), the backend each form builds."""
    import argparse

    import seer.serve.gradio_app as app

    launched = []
    monkeypatch.setattr(app, "launch", lambda demo, name, port, **kw: launched.append((demo, name, port)))
    ap = argparse.ArgumentParser()
    app.add_arguments(ap)
    args = ap.parse_args(["--api-url", "http://127.0.0.1:9/", "--max-new-tokens", "5"])
    assert (args.server_name, args.server_port) == ("127.0.0.1", 6006)
    assert app.run(args) == 0
    demo, name, port = launched[0]
    assert (name, port) == ("127.0.0.1", 6006)
    assert app.run(ap.parse_args([])) == 0  # neither a model nor --api-url: the bundled demo model
    assert len(launched) == 2
    assert app.run(ap.parse_args([str(tmp_path / "no-such-model")])) == 2
    assert len(launched) == 2
    assert app.run(ap.parse_args(["--api-url", "http://x", "--max-new-tokens", "0"])) == 2


def test_openai_messages(tmp_path):
    """What --api-url sends: image_url parts with PNG data URIs of the pixels seer would load."""
    import base64
    import io

    from PIL import Image

    from seer.serve.gradio_app import OpenAIBackend
    from seer.vl import load_image

    out = OpenAIBackend.to_openai([
        {"role": "user", "content": [{"type": "image", "path": DEMO_IMAGE}, {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "  answer"}])
    assert out[1] == {"role": "assistant", "content": "  answer"}
    part, text = out[0]["content"]
    assert text == {"type": "text", "text": "hi"}
    prefix = "data:image/png;base64,"
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith(prefix)
    sent = Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"][len(prefix):])))
    assert sent.tobytes() == load_image(DEMO_IMAGE).tobytes()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(BackendError, match="bad.png"):
        OpenAIBackend.to_openai([{"role": "user", "content": [{"type": "image", "path": str(bad)}]}])
