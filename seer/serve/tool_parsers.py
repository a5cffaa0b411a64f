"""OpenAI-style tool calling: find the calls in generated text, stream them, force them by grammar.

One parser per chat-template family; they differ only in how a call is written:

- ``hermes``: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (Hermes, Qwen2.5, Qwen2-VL)
- ``llama3_json``: ``{"name": ..., "parameters": {...}}``, maybe after ``<|python_tag|>``, joined by ``;``
- ``mistral``: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``
- ``internlm``: ``<|action_start|><|plugin|>\\n{"name": ..., "parameters": {...}}<|action_end|>``
- ``json``: one ``{"name": ..., "arguments": {...}}`` per line (seer's fixed-string chat templates)

``extract`` runs the streamer over the whole text, so both paths give the same calls and content
by construction. Rules, for both: text before, between and after calls is content, except the
whitespace right before a call and the whitespace (and, for llama3_json, ``;``) right after one;
with calls, content that is all whitespace is None; without calls the content is the text as is.
A call whose JSON is malformed, or is not ``{"name": str, "arguments"|"parameters": object}``,
stays content. A call's arguments are re-serialised as ``json.dumps(obj, ensure_ascii=False)``
and streamed in one piece once the call is complete.

The markers must reach the parser as text: decode with ``skip_special_tokens=False`` (at least for
``parser.markers``). ``grammar`` writes Lark for llguidance (``%json`` for each tool's arguments);
markers that are single special tokens are written as ``<[id]>`` when ``special_tokens`` maps them.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_STRUCT = re.compile(r'["\\{}\[\]]')
_CALL_KEYS = {"name", "arguments", "parameters", "id", "type"}
# compact JSON as chat templates' tojson writes it; ``lenient`` ignores keywords llguidance lacks
_X_GUIDANCE = {"whitespace_flexible": False, "item_separator": ", ?", "key_separator": ": ?",
               "lenient": True}


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI sends it
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])
    type: str = "function"

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ExtractedCalls:
    content: Optional[str]
    calls: list = field(default_factory=list)  # list[ToolCall]


@dataclass
class Delta:
    """One streamed piece: ``content`` text, or ``tool_call`` shaped as OpenAI's
    ``choices[0].delta.tool_calls[k]``."""
    content: Optional[str] = None
    tool_call: Optional[dict] = None


def _match_json(text: str, i: int, memo: Optional[dict] = None) -> Optional[int]:
    """The end (exclusive) of the bracketed JSON value starting at ``text[i]``, or None while it is
    unclosed. ``memo`` keeps the scan's state per start, so a growing text is read once."""
    pos, depth, in_str = (memo or {}).get(i, (i, 0, False))
    while True:
        m = _STRUCT.search(text, pos)
        if m is None or (m.group() == "\\" and m.start() + 1 >= len(text)):
            if memo is not None:
                memo[i] = (len(text) if m is None else m.start(), depth, in_str)
            return None
        c, pos = m.group(), m.end()
        if c == "\\":
            pos += 1  # the escaped character
        elif c == '"':
            in_str = not in_str
        elif not in_str:
            depth += 1 if c in "{[" else -1
            if depth <= 0:
                return pos


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _loads(s: str) -> Any:
    try:
        return json.loads(s, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _starts(text: str, i: int, word: str) -> Optional[bool]:
    """Whether ``text[i:]`` starts with ``word``; None while it is a proper prefix of it."""
    rest = text[i:i + len(word)]
    return True if rest == word else (None if word.startswith(rest) else False)


class ToolParser:
    """Base: subclasses set the markers and ``_scan``/``_grammar_top`` for their format."""
    name = ""
    markers: tuple = ()  # strings that open a call wherever they appear
    tokens: tuple = ()  # the marker strings the grammar writes (each may be one token of a vocabulary)
    json_lines = False  # a ``{`` that starts a line (after spaces) opens a call
    args_key = "arguments"  # the key the grammar writes
    gap = ""  # characters dropped after a call besides whitespace

    def __init__(self, tool_names: Optional[Iterable[str]] = None):
        """``tool_names``: when given, a call to another name stays content."""
        self.tool_names = None if tool_names is None else set(tool_names)

    def extract(self, text: str) -> ExtractedCalls:
        s = self.streamer()
        s.feed(text)
        s.finish()
        return ExtractedCalls(s.content(), s.calls)

    def streamer(self) -> "ToolStreamer":
        return ToolStreamer(self)

    # ---- parsing -------------------------------------------------------------------------------
    def _call(self, obj: Any) -> Optional[ToolCall]:
        """A ToolCall from a decoded ``{"name": ..., "arguments": ...}``, or None if it is not one."""
        if not isinstance(obj, dict) or not obj.get("name") or not isinstance(obj["name"], str) \
                or not set(obj) <= _CALL_KEYS:
            return None
        args = obj.get("arguments", obj.get("parameters"))
        if isinstance(args, str):
            args = _loads(args)
        if not isinstance(args, dict) or (self.tool_names is not None and obj["name"] not in self.tool_names):
            return None
        return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))

    def _json_call(self, text: str, i: int, final: bool, memo: dict):
        """``_scan``'s answer for one JSON call object at ``text[i]`` (``{`` expected)."""
        if i >= len(text):
            return ("need", i, []) if not final else ("text", len(text), [])
        if text[i] != "{":
            return "text", i, []
        end = _match_json(text, i, memo)
        if end is None:
            return ("need", i, []) if not final else ("text", len(text), [])
        call = self._call(_loads(text[i:end]))
        return ("calls", end, [call]) if call else ("text", end, [])

    def _scan(self, text: str, i: int, final: bool, memo: dict):
        """At a call's start ``i``: ``("need", i, [])`` until more text decides it (never when
        ``final``); ``("calls", end, calls)``; or ``("text", end, [])`` for ``text[i:end]`` that stays
        content (``end > i``). A decided answer must not change as text is appended."""
        res = self._json_call(text, i, final, memo)
        return ("text", i + 1, []) if res[0] == "text" and res[1] == i else res

    def _starts_call(self, text: str, j: int, call_end: Optional[int]) -> bool:
        if not self.json_lines or text[j] != "{":
            return False
        line = text[text.rfind("\n", 0, j) + 1:j]
        after = call_end is not None and not text[call_end:j].strip(" \t\r\n" + self.gap)
        return not line.strip() or after

    # ---- grammar -------------------------------------------------------------------------------
    def special_tokens(self, added_vocab: Mapping[str, int]) -> dict:
        """``grammar``'s ``special_tokens`` from a tokenizer's added tokens (HF: ``get_added_vocab()``).
        llguidance treats an added token written ``<...>`` as special even when HF does not (Qwen2.5's
        ``<tool_call>``), so such markers must be passed here or the grammar cannot emit them."""
        return {m: added_vocab[m] for m in self.tokens if m in added_vocab}

    def grammar(self, tools: list, choice: Any, special_tokens: Optional[Mapping[str, int]] = None,
                parallel: bool = True) -> str:
        """A Lark grammar (llguidance) that forces calls: ``choice`` is ``"required"`` (one or more
        calls to any of ``tools``) or a function's name (or ``{"type": "function", "function":
        {"name": ...}}``): exactly one call to it. ``special_tokens``: marker text -> token id, for
        the markers that are one token of the model's tokenizer (see ``special_tokens``).
        ``tools`` must have passed ``check_tools``. ``parallel=False``: one call, even when required."""
        if isinstance(choice, dict):
            choice = choice.get("function", {}).get("name")
        funcs = [t["function"] for t in tools]
        if choice != "required":
            funcs = [f for f in funcs if f["name"] == choice]
            if not funcs:
                raise ValueError(f"tool_choice names {choice!r}, which is not among the tools")
        special = dict(special_tokens or {})

        def mark(s: str) -> str:
            return f"<[{special[s]}]>" if s in special else json.dumps(s)
        rules = []
        for k, f in enumerate(funcs):
            schema = dict(f.get("parameters") or {"type": "object"})
            schema.setdefault("type", "object")
            schema.setdefault("x-guidance", _X_GUIDANCE)
            head = json.dumps(f'{{"name": "{f["name"]}", "{self.args_key}": ')
            rules += [f'call_{k}: {head} args_{k} "}}"', f"args_{k}: %json {json.dumps(schema)}"]
        body = "body: " + " | ".join(f"call_{k}" for k in range(len(funcs)))
        return "\n".join([self._grammar_top(choice == "required" and parallel, mark), body] + rules) + "\n"

    def _grammar_top(self, many: bool, mark) -> str:
        return 'start: body ("\\n" body)*' if many else "start: body"


class ToolStreamer:
    """Incremental ``parser`` over a growing text: ``feed`` each new piece, ``finish`` at the end;
    each returns the new ``Delta`` s. Text that may start a call is held back until decided."""

    def __init__(self, parser: ToolParser):
        self.p, self.buf, self.pos = parser, "", 0
        self.calls: list = []
        self._content: list = []
        self._held_ws, self._after_call, self._call_end = "", False, None
        self._memo: dict = {}

    def content(self) -> Optional[str]:
        text = "".join(self._content)
        return (text if text.strip() else None) if self.calls else text

    def feed(self, delta_text: str) -> list:
        self.buf += delta_text
        return self._run(final=False)

    def finish(self) -> list:
        out = self._run(final=True)
        held, self._held_ws = self._held_ws, ""
        return out + (self._emit(held, release=True) if held else [])

    def _next_start(self) -> tuple:
        """(index of the next call start at or after ``pos``, or of a held partial marker; is full)."""
        buf, best = self.buf, len(self.buf)
        for m in self.p.markers:
            j = buf.find(m, self.pos)
            if j >= 0:
                best = min(best, j)
        j = buf.find("{", self.pos)
        while 0 <= j < best:
            if self.p._starts_call(buf, j, self._call_end):
                best = j
                break
            j = buf.find("{", j + 1)
        if best < len(buf):
            return best, True
        for m in self.p.markers:  # a suffix of buf that may grow into a marker
            for n in range(min(len(m) - 1, len(buf) - self.pos), 0, -1):
                if m.startswith(buf[-n:]):
                    best = min(best, len(buf) - n)
                    break
        return best, False

    def _run(self, final: bool) -> list:
        out = []
        while self.pos < len(self.buf):
            j, full = self._next_start()
            if j > self.pos:
                out += self._emit(self.buf[self.pos:j])
                self.pos = j
            if not full:
                if final:
                    out += self._emit(self.buf[self.pos:])
                    self.pos = len(self.buf)
                break
            kind, end, calls = self.p._scan(self.buf, j, final, self._memo)
            if kind == "need":
                break
            if kind == "text":
                out += self._emit(self.buf[j:end])
            for call in calls:
                out += self._emit_call(call)
            self.pos = end
            if calls:
                self._call_end = end
        return out

    def _emit(self, text: str, release: bool = False) -> list:
        if self._after_call:
            text = text.lstrip(" \t\r\n" + self.p.gap)
            if not text:
                return []
            self._after_call = False
        text = self._held_ws + text
        body = text if release else text.rstrip()
        self._held_ws = text[len(body):]
        if body:
            self._content.append(body)
            return [Delta(content=body)]
        return []

    def _emit_call(self, call: ToolCall) -> list:
        self._held_ws, self._after_call = "", True
        i = len(self.calls)
        self.calls.append(call)
        return [Delta(tool_call={"index": i, "id": call.id, "type": "function",
                                 "function": {"name": call.name, "arguments": ""}}),
                Delta(tool_call={"index": i, "function": {"arguments": call.arguments}})]


class HermesParser(ToolParser):
    name, markers, tokens = "hermes", ("<tool_call>",), ("<tool_call>", "</tool_call>")
    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def _scan(self, text, i, final, memo):
        start = i + len(self.OPEN)
        end = text.find(self.CLOSE, start)
        if end < 0 and not final:
            return "need", i, []
        inner, stop = (text[start:], len(text)) if end < 0 else (text[start:end], end + len(self.CLOSE))
        call = self._call(_loads(inner))
        return ("calls", stop, [call]) if call else ("text", stop, [])

    def _grammar_top(self, many, mark):
        call = f'call: {mark(self.OPEN)} "\\n" body "\\n" {mark(self.CLOSE)}'
        return ('start: call ("\\n" call)*' if many else "start: call") + "\n" + call


class Llama3JsonParser(ToolParser):
    name, markers, json_lines, args_key, gap = "llama3_json", ("<|python_tag|>",), True, "parameters", ";"
    TAG = "<|python_tag|>"

    def _scan(self, text, i, final, memo):
        if text.startswith(self.TAG, i):
            res = self._json_call(text, _skip_ws(text, i + len(self.TAG)), final, memo)
            if res[0] == "text":  # not JSON after the tag: the tag alone is content
                return "text", i + len(self.TAG), []
            return res if res[0] == "calls" else ("need", i, [])
        return super()._scan(text, i, final, memo)

    def _grammar_top(self, many, mark):
        return 'start: body ("; " body)*' if many else "start: body"


class MistralParser(ToolParser):
    name, markers, tokens = "mistral", ("[TOOL_CALLS]",), ("[TOOL_CALLS]",)
    TAG = "[TOOL_CALLS]"

    def _scan(self, text, i, final, memo):
        j = _skip_ws(text, i + len(self.TAG))
        if j >= len(text):
            return ("need", i, []) if not final else ("text", len(text), [])
        if text[j] == "{":  # one call, not in a list
            res = self._json_call(text, j, final, memo)
            return ("need", i, []) if res[0] == "need" else (res[0], max(res[1], i + len(self.TAG)), res[2])
        if text[j] != "[":
            return "text", i + len(self.TAG), []
        end = _match_json(text, j, memo)
        if end is None:
            return ("need", i, []) if not final else ("text", len(text), [])
        items = _loads(text[j:end])
        calls = [self._call(x) for x in items] if isinstance(items, list) and items else [None]
        return ("calls", end, calls) if all(calls) else ("text", end, [])

    def _grammar_top(self, many, mark):
        return f'start: {mark(self.TAG)} " "? "[" body' + (' (", " body)*' if many else "") + ' "]"'


class InternLMParser(ToolParser):
    name, markers, args_key = "internlm", ("<|action_start|>",), "parameters"
    tokens = ("<|action_start|>", "<|plugin|>", "<|action_end|>")
    START, PLUGIN, END = "<|action_start|>", "<|plugin|>", "<|action_end|>"

    def _scan(self, text, i, final, memo):
        j = _skip_ws(text, i + len(self.START))
        is_plugin = _starts(text, j, self.PLUGIN)
        if is_plugin is None and not final:
            return "need", i, []
        if not is_plugin:  # e.g. <|interpreter|>: not a function call
            return "text", i + len(self.START), []
        kind, end, calls = self._json_call(text, _skip_ws(text, j + len(self.PLUGIN)), final, memo)
        if kind != "calls":
            return ("need", i, []) if kind == "need" else ("text", max(end, i + len(self.START)), [])
        k = _skip_ws(text, end)
        closed = _starts(text, k, self.END)
        if closed is None and not final:
            return "need", i, []
        return "calls", k + len(self.END) if closed else end, calls

    def _grammar_top(self, many, mark):
        call = f'call: {mark(self.START)} {mark(self.PLUGIN)} "\\n" body {mark(self.END)}'
        return ('start: call ("\\n" call)*' if many else "start: call") + "\n" + call


class JsonLinesParser(ToolParser):
    name, json_lines = "json", True


PARSERS: dict = {c.name: c for c in (HermesParser, Llama3JsonParser, MistralParser, InternLMParser,
                                     JsonLinesParser)}


def default_parser(chat_template_text: Optional[str], model_type: Optional[str]) -> str:
    """The ``PARSERS`` key for a chat template (by the call markers its text uses), else by
    ``model_type``; ``"json"`` for seer's fixed-string templates and anything unknown."""
    t = chat_template_text or ""
    for needle, name in (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|plugin|>", "internlm"),
                         ("<|python_tag|>", "llama3_json"), ("ipython", "llama3_json")):
        if needle in t:
            return name
    mt = (model_type or "").lower()
    for prefix, name in (("qwen", "hermes"), ("internlm", "internlm"), ("mistral", "mistral"),
                         ("pixtral", "mistral")):
        if mt.startswith(prefix):
            return name
    return "json"


def check_tools(tools: Any, tool_choice: Any) -> None:
    """Raise ValueError naming what is wrong with a request's ``tools``/``tool_choice``."""
    if tools is None:
        if tool_choice not in (None, "none"):
            raise ValueError(f"tool_choice {tool_choice!r} needs 'tools'; without tools only 'none' is accepted")
        return
    shape = 'a list of {"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}'
    if not isinstance(tools, list) or not 1 <= len(tools) <= MAX_TOOLS:
        raise ValueError(f"'tools' must be {shape} with 1 to {MAX_TOOLS} entries")
    names = []
    for k, tool in enumerate(tools):
        where = f"tools[{k}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ValueError(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}; 'tools' is {shape}")
        f = tool["function"]
        name = f.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{where}.function.name must be a string of 1 to 64 letters, digits, '_' or '-' "
                             f"(^[A-Za-z0-9_-]{{1,64}}$); got {name!r:.80}")
        if name in names:
            raise ValueError(f"{where}.function.name {name!r} repeats an earlier tool's name; names must be unique")
        names.append(name)
        if f.get("description") is not None and not isinstance(f["description"], str):
            raise ValueError(f"{where}.function.description must be a string")
        params = f.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise ValueError(f"{where}.function.parameters must be a JSON schema of an object "
                             f"(a dict whose \"type\", if given, is \"object\"); got {json.dumps(params)[:80]}")
    if tool_choice in (None, "none", "auto", "required"):
        return
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function" \
            and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        if name in names:
            return
        raise ValueError(f"tool_choice names function {name!r:.80}, which is not among the tools {names[:10]}")
    raise ValueError("tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": "
                     f"{{\"name\": <one of the tools>}}}}; got {tool_choice!r:.80}")
