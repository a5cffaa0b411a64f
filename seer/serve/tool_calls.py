"""Tool calling in the chat route: the parser, the grammar that forces a call, the answer.

A chat request with ``tools`` shows them to the model through its chat template (its own
``tools`` variable, or seer's description in the system prompt: ``chat_template.tools_prompt``).
With ``tool_choice`` ``"auto"`` (the default) the answer is parsed: calls the model wrote in its
template's format become ``message.tool_calls`` (finish_reason ``"tool_calls"``) and the rest is
content. ``"required"`` and a named function are enforced with a grammar built from the tools'
parameter schemas (``ToolParser.grammar``), so the answer always parses into calls with valid
arguments (one call when ``parallel_tool_calls`` is false; a call cut by ``max_tokens`` ends
with "length" and stays text). ``"none"`` shows the tools and parses nothing.

The parser is ``--tool-call-parser`` when given, else the one that fits the model's template
(``tool_parsers.default_parser``); ``"json"`` for templates that get seer's description.
"""

from __future__ import annotations

from typing import Optional

from ..chat_template import HFChatTemplate
from ..config import GenerationConfig
from .openai_protocol import BadRequest
from .tool_parsers import PARSERS, ToolParser, check_tools, default_parser


def parser_name(pipe, requested: Optional[str] = None) -> str:
    """The tool-call parser for a pipeline's model: ``requested`` (checked), else the default."""
    if requested is not None:
        if requested not in PARSERS:
            raise ValueError(f"--tool-call-parser {requested!r} is unknown; known parsers: {sorted(PARSERS)}")
        return requested
    template = pipe.family.chat_template
    if not (isinstance(template, HFChatTemplate) and template.reads_tools):
        return "json"  # the tools are described by seer, with its format
    model_type = getattr(pipe.family.text_config(), "model_type", None)
    return default_parser(template.source, model_type)


class ToolPlan:
    """What one chat request's tools ask of the engine and of the answer."""

    def __init__(self, tools: list, parser: ToolParser, grammar: Optional[str]):
        self.tools, self.parser, self.grammar = tools, parser, grammar

    @classmethod
    def of(cls, req, pipe, name: str) -> Optional["ToolPlan"]:
        """None when the answer is not parsed (no tools, or tool_choice "none")."""
        try:
            check_tools(req.tools, req.tool_choice)
        except ValueError as e:
            raise BadRequest(str(e), param="tool_choice" if str(e).startswith("tool_choice") else "tools") from None
        choice = req.tool_choice if req.tool_choice is not None else "auto"
        if req.tools is None or choice == "none":
            return None
        parser = PARSERS[name]([t["function"]["name"] for t in req.tools])
        grammar = None
        if choice != "auto":
            if req.structured_format() is not None:
                raise BadRequest("a forced tool_choice ('required' or a named function) sets the answer's format; "
                                 "it cannot be combined with response_format or guided decoding",
                                 param="tool_choice")
            grammar = parser.grammar(req.tools, choice, parser.special_tokens(pipe.tokenizer.get_added_vocab()),
                                     parallel=req.parallel_tool_calls is not False)
        return cls(req.tools, parser, grammar)

    def generation_config(self, gen: GenerationConfig) -> GenerationConfig:
        """The markers must reach the parser as text; a forced choice adds its grammar."""
        changes = {"skip_special_tokens": False}
        if self.grammar is not None:
            changes["response_format"] = {"type": "grammar", "grammar": self.grammar}
        return gen.replace(**changes)

    def message(self, text: str) -> tuple[dict, bool]:
        """The assistant message for a whole answer, and whether it holds calls."""
        found = self.parser.extract(text)
        message = {"role": "assistant", "content": found.content}
        if found.calls:
            message["tool_calls"] = [c.to_openai() for c in found.calls]
        return message, bool(found.calls)


def chunk_deltas(deltas: list) -> list[dict]:
    """``ToolStreamer`` output as the ``delta`` objects of chat chunks."""
    out = []
    for d in deltas:
        if d.tool_call is not None:
            out.append({"tool_calls": [d.tool_call]})
        elif d.content:
            out.append({"content": d.content})
    return out
