"""``seer serve gradio MODEL``: a chat page with image upload, in front of seer.

The user uploads images, types an instruction, presses Enter and watches the answer
stream in; the chat keeps its history until Reset. Sampling controls sit under the
chat (temperature 0 = greedy, seer's default); Stop ends the answer where it is and
aborts the request in the engine.

Two backends behind one small interface (``Backend.stream``):

* in-process (``seer serve gradio MODEL``): a ``seer.pipeline`` in this process,
  streamed with ``Pipeline.stream_infer``; stopping closes that generator, which
  aborts the request and frees its KV blocks.
* ``--api-url URL``: a running seer API server (or any OpenAI-compatible one),
  ``POST URL/v1/chat/completions`` with ``stream: true`` and images sent as
  ``data:image/png;base64,...`` ``image_url`` parts; stopping closes the stream,
  which the server sees as a disconnect and aborts.

What must stay true:
- An error (an unreadable upload, a prompt too long, a server that is down) shows as a
  message in the chat, the failed turn is not kept in the history, and the page keeps
  working.
- The history sent to the model holds the model's own answer text, not what the page
  renders.
- The page binds 127.0.0.1 unless ``--server-name`` says otherwise; port 6006 by default.
"""

import argparse
import base64
import functools
import html
import io
import os
import queue
import sys
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional

DEFAULT_PORT = 6006
DEFAULT_MAX_NEW_TOKENS = 512
STOPPED_MARK = " [stopped]"
ERROR_PREFIX = "Error: "


# ---- backends ---------------------------------------------------------------------------------
@dataclass
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS


class BackendError(Exception):
    """A request the backend could not serve; its message is shown in the chat."""


class Backend:
    """Streams one answer. ``messages`` is the conversation in the page's form: a list of
    ``{"role", "content"}`` where user content is a list of ``{"type": "text", "text"}`` and
    ``{"type": "image", "path"}`` parts and assistant content a str. ``stream`` yields text
    deltas and raises ``BackendError``; closing the generator early aborts the request, and so
    does setting ``cancel`` (from any thread): the generator then ends soon, even before the
    first token (a request still queued or in a long prefill)."""

    name = "backend"

    def stream(self, messages: list[dict], sampling: Sampling,
               cancel: Optional[threading.Event] = None) -> Iterator[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class PipelineBackend(Backend):
    """The engine in this process."""

    def __init__(self, model: str, configs=(), pipe=None):
        if pipe is None:
            from seer import pipeline

            pipe = pipeline(model, *configs)
        self.pipe = pipe
        self.name = os.path.basename(os.path.normpath(model)) or model

    @staticmethod
    def to_seer(messages: list[dict]) -> list[dict]:
        out = []
        for m in messages:
            if isinstance(m["content"], str):
                out.append({"role": m["role"], "content": m["content"]})
                continue
            parts = [{"type": "image", "image": p["path"]} if p["type"] == "image" else p for p in m["content"]]
            out.append({"role": m["role"], "content": parts})
        return out

    def stream(self, messages: list[dict], sampling: Sampling,
               cancel: Optional[threading.Event] = None) -> Iterator[str]:
        from seer import GenerationConfig

        try:
            gen = GenerationConfig(max_new_tokens=int(sampling.max_new_tokens),
                                   do_sample=sampling.temperature > 0,
                                   temperature=float(sampling.temperature) if sampling.temperature > 0 else 1.0,
                                   top_p=float(sampling.top_p))
            deltas = self.pipe.stream_infer(self.to_seer(messages), gen_config=gen, cancel=cancel)
        except ValueError as e:
            raise BackendError(str(e)) from None
        try:
            while True:
                try:
                    delta = next(deltas)
                except StopIteration:
                    return
                except ValueError as e:  # the prompt could not be prepared (bad image, too long)
                    raise BackendError(str(e)) from None
                if delta.finish_reason == "error":
                    raise BackendError(delta.error or delta.text or "the engine failed this request")
                if delta.text:
                    yield delta.text
        finally:
            deltas.close()  # aborts the request in the engine if it is still running

    def close(self) -> None:
        self.pipe.close()


@functools.lru_cache(maxsize=64)
def _png_data_uri(path: str, mtime: float, size: int) -> str:
    """``path`` decoded as seer decodes it (RGB, transparency on white), sent as PNG: the server
    sees exactly the pixels the in-process backend would."""
    from seer.vl import load_image

    buf = io.BytesIO()
    load_image(path).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_data_uri(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise BackendError(f"cannot read the uploaded image {os.path.basename(path)!r}: {e}") from None
    try:
        return _png_data_uri(path, st.st_mtime, st.st_size)
    except ValueError as e:
        raise BackendError(str(e)) from None


class OpenAIBackend(Backend):
    """A running OpenAI-compatible server (``seer serve MODEL``), through the ``openai`` client."""

    def __init__(self, api_url: str, model: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: float = 600.0):
        try:
            import openai
        except ImportError:
            raise SystemExit("seer serve gradio --api-url needs the openai package: pip install openai")
        self._openai = openai
        base = api_url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.client = openai.OpenAI(base_url=base, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                                    timeout=timeout, max_retries=0)
        self.model = model
        self.name = f"{api_url}"

    def _model(self) -> str:
        if self.model is None:
            try:
                models = self.client.models.list().data
            except self._openai.OpenAIError as e:
                raise BackendError(f"cannot reach the API server at {self.client.base_url}: {_api_message(e)}") from None
            if not models:
                raise BackendError(f"the API server at {self.client.base_url} serves no model")
            self.model = models[0].id
        return self.model

    @staticmethod
    def to_openai(messages: list[dict]) -> list[dict]:
        out = []
        for m in messages:
            if isinstance(m["content"], str):
                out.append({"role": m["role"], "content": m["content"]})
                continue
            parts = []
            for p in m["content"]:
                if p["type"] == "image":
                    parts.append({"type": "image_url", "image_url": {"url": image_data_uri(p["path"])}})
                else:
                    parts.append({"type": "text", "text": p["text"]})
            out.append({"role": m["role"], "content": parts})
        return out

    def stream(self, messages: list[dict], sampling: Sampling,
               cancel: Optional[threading.Event] = None) -> Iterator[str]:
        """The HTTP stream is read by a thread of its own, so that this generator can end on
        ``cancel`` while the server has not answered yet; that thread closes the stream (the
        server sees a disconnect and aborts) as soon as its pending read returns."""
        payload = self.to_openai(messages)
        model = self._model()
        done = threading.Event()  # this generator is over: the reader stops
        deltas: queue.Queue = queue.Queue()
        reader = threading.Thread(target=self._read, args=(model, payload, sampling, deltas, done), daemon=True)
        reader.start()
        try:
            while True:
                try:
                    kind, item = deltas.get(timeout=0.05)
                except queue.Empty:
                    if cancel is not None and cancel.is_set():
                        return
                    continue
                if kind == "end":
                    return
                if kind == "error":
                    raise BackendError(item)
                yield item
        finally:
            done.set()  # the reader stops at its next chunk and closes the stream

    def _read(self, model, payload, sampling: Sampling, deltas: queue.Queue, done: threading.Event) -> None:
        openai = self._openai
        try:
            stream = self.client.chat.completions.create(
                model=model, messages=payload, stream=True, temperature=float(sampling.temperature),
                top_p=float(sampling.top_p), max_tokens=int(sampling.max_new_tokens))
            try:
                for chunk in stream:
                    if done.is_set():
                        return
                    for choice in chunk.choices or []:
                        text = choice.delta.content if choice.delta is not None else None
                        if text:
                            deltas.put(("text", text))
                        if choice.finish_reason == "error":
                            deltas.put(("error", "the server failed this request"))
                            return
            finally:
                stream.close()
            deltas.put(("end", None))
        except openai.OpenAIError as e:
            deltas.put(("error", _api_message(e)))
        except Exception as e:  # noqa: BLE001 - reported in the chat, never lost in this thread
            deltas.put(("error", f"{type(e).__name__}: {e}"))


def _api_message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(getattr(e, "message", None) or e)


# ---- the page ---------------------------------------------------------------------------------
def _user_display(parts: list[dict]) -> list[dict]:
    shown = []
    for p in parts:
        if p["type"] == "image":
            shown.append({"path": p["path"]})
        elif p["text"]:
            shown.extend(_text(p["text"]))
    return shown


def _text(text: str) -> list[dict]:
    """A chat message part that the page shows exactly as ``text`` (markdown rendering is off).

    The page puts message text into the DOM as HTML (sanitised), so ``<b>`` would turn bold and
    ``<div>`` vanish: escaped, every character shows as itself. A dict part is shown as given; a
    bare str would go through ``inspect.cleandoc`` (gradio strips and dedents it)."""
    return [{"type": "text", "text": html.escape(text, quote=False)}]


def _api_history(history) -> list[dict]:
    """The /chat endpoint's ``history`` as the backend's messages: text turns of the user and the
    assistant (a system turn first, if any); anything else is a ``gradio.Error`` saying so."""
    import gradio as gr

    out = []
    for i, turn in enumerate(history or []):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise gr.Error(f"history[{i}] must be {{'role': 'user' | 'assistant' | 'system', 'content': str}}")
        out.append({"role": role, "content": content if role == "assistant" else [{"type": "text", "text": content}]})
    return out


def _file_path(f) -> Optional[str]:
    if isinstance(f, str):
        return f
    if isinstance(f, dict):
        return f.get("path")
    return getattr(f, "path", None)


def launch(demo, server_name: str = "127.0.0.1", server_port: int = DEFAULT_PORT, **kwargs):
    """Start the page's server (blocks unless ``prevent_thread_lock=True``)."""
    kwargs = {"quiet": True, "show_error": True, "inbrowser": False, "share": False, "ssr_mode": False,
              **kwargs}
    return demo.queue(default_concurrency_limit=None).launch(server_name=server_name, server_port=server_port,
                                                             **kwargs)


@dataclass
class _Control:
    stop: threading.Event = field(default_factory=threading.Event)
    reset: threading.Event = field(default_factory=threading.Event)
    busy: threading.Event = field(default_factory=threading.Event)  # an answer is streaming
    cancel: threading.Event = field(default_factory=threading.Event)  # Stop or Reset: end the answer now


def build_demo(backend: Backend, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               max_new_tokens_limit: Optional[int] = None):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local page
    import gradio as gr

    limit = max(max_new_tokens_limit or 4096, max_new_tokens)
    controls: dict[str, _Control] = {}  # per browser session: what Stop and Reset asked for
    controls_lock = threading.Lock()

    def control(request) -> "_Control":
        key = getattr(request, "session_hash", None) or "-"
        with controls_lock:
            return controls.setdefault(key, _Control())

    def respond(message, chat, history, temperature, top_p, max_new, request: gr.Request):
        ctl = control(request)
        try:
            yield from answer_turn(ctl, message, chat, history, temperature, top_p, max_new)
        finally:  # also when gradio closes this generator (the page went away)
            ctl.busy.clear()

    def answer_turn(ctl, message, chat, history, temperature, top_p, max_new):
        chat, history = list(chat or []), list(history or [])
        message = message or {}
        text = (message.get("text") or "").strip()
        paths = [p for p in (_file_path(f) for f in message.get("files") or []) if p]
        if not text and not paths:
            yield gr.skip(), gr.skip(), gr.skip()
            return
        ctl.stop.clear()
        ctl.reset.clear()
        ctl.cancel.clear()
        ctl.busy.set()
        user = {"role": "user", "content": [{"type": "image", "path": p} for p in paths]
                + [{"type": "text", "text": text}]}
        chat.append({"role": "user", "content": _user_display(user["content"])})
        n_shown = len(chat)
        # Updates are ordered: the input is disabled before the answer's message appears, and the
        # answer is complete before the input is enabled again (a page, or a test, that waits for
        # "answer shown and input enabled" sees the whole answer).
        yield gr.MultimodalTextbox(value=None, interactive=False), chat, history

        def show(text: str) -> None:
            del chat[n_shown:]
            chat.append({"role": "assistant", "content": _text(text)})

        answer, shown = "", ""
        sampling = Sampling(float(temperature), float(top_p), int(max_new))
        deltas = None
        try:
            deltas = backend.stream(history + [user], sampling, ctl.cancel)
            for delta in deltas:
                answer += delta
                if ctl.stop.is_set() or ctl.reset.is_set():
                    break
                show(answer)
                yield gr.skip(), chat, gr.skip()
            shown = answer + (STOPPED_MARK if ctl.stop.is_set() else "")
            history = history + [user, {"role": "assistant", "content": answer}]
        except BackendError as e:
            shown = ERROR_PREFIX + str(e)
        except Exception as e:  # keep the page alive whatever happens; say what it was
            print(f"[seer] web UI: {type(e).__name__}: {e}", file=sys.stderr)
            shown = f"{ERROR_PREFIX}{type(e).__name__}: {e}"
        finally:
            if deltas is not None:
                deltas.close()  # Stop, Reset: aborts the request (in the engine, or by closing the HTTP stream)
        if ctl.reset.is_set():
            # Reset already cleared the page; this answer's last word clears it again, so that
            # an update of it still on its way cannot bring the old chat back.
            chat, history = [], []
        else:
            show(shown)
        ctl.stop.clear()
        ctl.reset.clear()
        ctl.busy.clear()
        yield gr.skip(), chat, history
        yield gr.MultimodalTextbox(value=None, interactive=True), gr.skip(), gr.skip()

    def chat(message: str, images: Optional[list[gr.FileData]] = None, history: Optional[list[dict]] = None,
             temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = max_new_tokens) -> Iterator[str]:
        """One answer, for gradio_client: ``message`` (text), ``images`` (files: gradio_client's
        ``handle_file``), ``history`` (earlier turns as ``[{"role": "user" | "assistant", "content":
        str}]``); yields the answer so far (``Client.predict`` returns the whole, ``submit``
        streams it). Errors are ``gradio.Error``s naming what was wrong."""
        turns = _api_history(history)
        paths = [p for p in (_file_path(f) for f in images or []) if p]
        if not (message or "").strip() and not paths:
            raise gr.Error("give a message or an image")
        try:
            sampling = Sampling(float(temperature), float(top_p), int(max_new_tokens))
        except (TypeError, ValueError) as e:
            raise gr.Error(f"bad sampling value: {e}") from None
        if not (0 <= sampling.temperature <= 2 and 0 < sampling.top_p <= 1 and 1 <= sampling.max_new_tokens <= limit):
            raise gr.Error(f"temperature must be in [0, 2], top_p in (0, 1], max_new_tokens in [1, {limit}]")
        user = {"role": "user", "content": [{"type": "image", "path": p} for p in paths]
                + [{"type": "text", "text": message or ""}]}
        cancel, answer = threading.Event(), ""
        deltas = backend.stream(turns + [user], sampling, cancel)
        try:
            for delta in deltas:
                answer += delta
                yield answer
        except BackendError as e:
            raise gr.Error(str(e)) from None
        finally:
            cancel.set()
            deltas.close()
        yield answer

    def on_stop(request: gr.Request):
        ctl = control(request)
        ctl.stop.set()
        ctl.cancel.set()

    def on_reset(request: gr.Request):
        ctl = control(request)
        if ctl.busy.is_set():  # the answer stops now, clears the page and frees the input
            ctl.reset.set()
            ctl.cancel.set()
            return [], [], gr.skip()
        return [], [], gr.MultimodalTextbox(value=None, interactive=True)

    def on_unload(request: gr.Request):
        with controls_lock:
            controls.pop(getattr(request, "session_hash", None) or "-", None)

    with gr.Blocks(title="seer") as demo:
        gr.Markdown(f"### seer · {backend.name}")
        chatbot = gr.Chatbot(label="chat", elem_id="seer-chat", height=520, render_markdown=False,
                             sanitize_html=True, feedback_options=None, group_consecutive_messages=False)
        history = gr.State([])
        box = gr.MultimodalTextbox(elem_id="seer-input", file_types=["image"], file_count="multiple",
                                   placeholder="Upload images, type an instruction, press Enter",
                                   show_label=False, autofocus=True)
        with gr.Row():
            stop_btn = gr.Button("Stop", elem_id="seer-stop", variant="stop")
            reset_btn = gr.Button("Reset", elem_id="seer-reset")
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)",
                                    elem_id="seer-temperature")
            top_p = gr.Slider(0.01, 1.0, value=1.0, step=0.01, label="top_p", elem_id="seer-top-p")
            max_new = gr.Slider(1, limit, value=max_new_tokens, step=1, label="max new tokens",
                                elem_id="seer-max-new-tokens")
        # The page's own events are not the API (they answer with page updates): /chat is.
        box.submit(respond, [box, chatbot, history, temperature, top_p, max_new],
                                [box, chatbot, history], concurrency_limit=None, show_progress="minimal",
                                api_visibility="undocumented")
        stop_btn.click(on_stop, None, None, queue=False, api_visibility="undocumented")
        reset_btn.click(on_reset, None, [chatbot, history, box], queue=False, api_visibility="undocumented")
        demo.unload(on_unload)
        gr.api(chat, api_name="chat", concurrency_limit=None)
    return demo


# ---- command line -----------------------------------------------------------------------------
def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("model", nargs="?", default=None,
                    help="a local model folder (Hugging Face layout); with --api-url, the served model's "
                         "name (default: the first one the server lists)")
    ap.add_argument("--api-url", default=None,
                    help="sit in front of a running seer API server (e.g. http://127.0.0.1:23333) "
                         "instead of loading the model in this process")
    ap.add_argument("--api-key", default=None, help="bearer token for --api-url (default: $OPENAI_API_KEY)")
    ap.add_argument("--server-name", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    ap.add_argument("--server-port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    ap.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                    help=f"default of the page's max-new-tokens control (default: {DEFAULT_MAX_NEW_TOKENS})")
    from ..cliargs import add_engine_arguments

    add_engine_arguments(ap)  # the in-process engine's


def run(args) -> int:
    if args.max_new_tokens < 1:
        print("seer serve gradio: --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("seer serve gradio needs gradio: pip install 'seer[ui]'", file=sys.stderr)
        return 2
    try:
        if args.api_url:
            backend: Backend = OpenAIBackend(args.api_url, args.model, args.api_key)
        else:
            from ..cliargs import engine_configs, resolve_model

            backend = PipelineBackend(resolve_model(args.model), engine_configs(args))
    except ValueError as e:
        print(f"seer: {e}", file=sys.stderr)
        return 2
    limit = None
    if isinstance(backend, PipelineBackend):
        limit = backend.pipe.session_len
    demo = build_demo(backend, args.max_new_tokens, limit)
    print(f"[seer] web UI for {backend.name} on http://{args.server_name}:{args.server_port}", file=sys.stderr,
          flush=True)
    try:
        launch(demo, args.server_name, args.server_port)
    except KeyboardInterrupt:
        pass
    finally:
        backend.close()
    return 0
