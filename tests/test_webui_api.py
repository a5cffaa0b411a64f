"""The web UI's API, as Gradio users call it: ``gradio_client.Client(url).predict(..., api_name="/chat")``.

``/chat`` takes a message, images (``handle_file``), an earlier history and sampling values,
and returns the answer text, equal to the pipeline's for the same conversation; ``submit``
streams it; the page's own events are not in the API docs; a bad history, a bad value or a
path that was not uploaded is an error that names it, and the page goes on answering."""

from __future__ import annotations

import socket

import pytest

gradio_client = pytest.importorskip("gradio_client", reason="the ui extra (gradio) is not installed")

import tiny_models as tm  # noqa: E402
from seer import GenerationConfig, pipeline  # noqa: E402
from seer.serve.gradio_app import PipelineBackend, build_demo, launch  # noqa: E402

MAX_NEW = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tiny_llava):
    pipe = pipeline(tiny_llava)
    demo = build_demo(PipelineBackend(tiny_llava, pipe=pipe), max_new_tokens=MAX_NEW)
    port = _free_port()
    launch(demo, server_port=port, prevent_thread_lock=True)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False), pipe
    finally:
        demo.close()
        pipe.close()


def _want(pipe, conversation) -> str:
    return pipe(conversation, gen_config=GenerationConfig(max_new_tokens=MAX_NEW)).text


def test_chat_endpoint_answers_like_the_pipeline(ui, tmp_path):
    client, pipe = ui
    image = tm.make_image(4)
    path = tmp_path / "cat.png"
    image.save(path)
    got = client.predict("what is this?", [gradio_client.handle_file(str(path))], None, 0.0, 1.0, MAX_NEW,
                         api_name="/chat")
    first = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "what is this?"}]}]
    assert got == _want(pipe, first)
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]
    job = client.submit(message="and now?", history=history, api_name="/chat")
    parts = list(job)
    want = _want(pipe, history + [{"role": "user", "content": "and now?"}])
    assert job.result() == want and parts[-1] == want and all(want.startswith(p) for p in parts)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert list(api) == ["/chat"]


@pytest.mark.parametrize("kwargs, words", [
    (dict(message="x", history=[{"role": "robot", "content": "x"}]), "history[0] must be"),
    (dict(message="x", temperature=5.0), "temperature must be in"),
    (dict(message=""), "give a message or an image"),
])
def test_bad_calls_are_errors_and_the_page_goes_on(ui, kwargs, words):
    client, pipe = ui
    with pytest.raises(Exception) as err:
        client.predict(**kwargs, api_name="/chat")
    assert words in str(err.value)
    assert client.predict("hello", api_name="/chat") == _want(pipe, "hello")


def test_a_server_path_that_was_not_uploaded_is_refused(ui):
    """A raw call naming a file of the server (gradio_client would upload a local file instead)."""
    import httpx

    client, _ = ui
    base = client.src.rstrip("/")
    body = {"data": ["x", [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}], None, 0.0, 1.0, 4]}
    event = httpx.post(f"{base}/gradio_api/call/chat", json=body, timeout=30).json()["event_id"]
    answer = httpx.get(f"{base}/gradio_api/call/chat/{event}", timeout=30).text
    assert "event: error" in answer and "not uploaded by a user" in answer
