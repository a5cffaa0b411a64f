"""Chat templates: built-in prompt formats and the model's own (HF jinja) template.

Both kinds expose ``name``, ``stop_words``, ``adds_bos`` and
``render(conversation, image_placeholder, add_generation_prompt=True, tools=None) -> str``
over a ``seer.messages`` Conversation. ``tools`` (OpenAI's function tools) reach the model's own
template as its ``tools`` variable; a built-in template, or a model template that never reads
``tools``, gets them described in the system prompt with the format ``tools_prompt`` asks for
(one JSON object per call and line, what the ``json`` tool-call parser reads).

What must stay true:
- Built-in templates never emit a BOS token (``adds_bos`` is False); the engine
  adds BOS when tokenizing. ``HFChatTemplate.adds_bos`` is True when the model's
  template writes the BOS text itself, so the engine must not add another.
- A leading system message replaces the template's default system prompt; a
  system message anywhere else is rejected. Empty system text renders no block.
- ``add_generation_prompt=True`` opens an assistant reply, or, when the last
  message is from the assistant, leaves that reply open to be continued.
- In built-ins each image part renders as ``image_placeholder``; images that
  lead a turn (no text part before them) are followed by ``image_sep``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from seer.config import ChatTemplateConfig

_IM = "<|im_start|>{}\n"
_INTERNLM2_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI "
    "Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the "
    "user such as English and 中文.")
_INTERNVL2_5_SYSTEM = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位"
                       "联合开发的多模态大语言模型。")
_LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The "
                 "assistant gives helpful, detailed, and polite answers to the human's questions.")
_DEEPSEEK_VL_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                       "content that the user provides, and assist the user with a variety of tasks using natural "
                       "language.")
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
                  "assistant gives helpful, detailed, and polite answers to the user's questions.")


def render_parts(parts: list, image_placeholder: str, image_sep: str = "\n") -> str:
    """Text of one message: images become ``image_placeholder``, plus ``image_sep`` when they lead."""
    out, seen_text = [], False
    for part in parts:
        if part["type"] == "text":
            out.append(part["text"])
            seen_text = True
        else:
            out.append(image_placeholder if seen_text else image_placeholder + image_sep)
    return "".join(out)


@dataclass
class ChatTemplate:
    """A prompt format built from fixed strings.

    A rendered prompt is ``system_prefix + system + system_suffix`` (when there
    is a system prompt), then per user turn ``user + content + eoh``, per
    assistant turn ``assistant + content + eoa + separator``, then the reply
    prefix: ``assistant``, minus trailing spaces when ``trim_reply_space`` (the
    model emits that space itself, e.g. SentencePiece's "▁word").
    ``system_in_first_user`` puts the system block inside the first user turn.
    """

    name: str
    system: Optional[str] = None
    system_prefix: str = ""
    system_suffix: str = ""
    user: str = ""
    eoh: str = ""
    assistant: str = ""
    eoa: str = ""
    separator: str = ""
    stop_words: list = field(default_factory=list)
    image_sep: str = "\n"
    system_in_first_user: bool = False
    trim_reply_space: bool = False
    adds_bos = False  # class attribute, not a field: built-ins never write BOS

    @property
    def reply_prefix(self) -> str:
        return self.assistant.rstrip(" ") if self.trim_reply_space else self.assistant

    def _system_block(self, text: Optional[str]) -> str:
        return f"{self.system_prefix}{text}{self.system_suffix}" if text else ""

    def render(self, conversation: list, image_placeholder: str, add_generation_prompt: bool = True,
               tools: Optional[list] = None) -> str:
        text_of = lambda parts: render_parts(parts, image_placeholder, self.image_sep)  # noqa: E731
        system, turns = _split_system(with_tools_prompt(conversation, tools), self.system, text_of)
        pending = self._system_block(system) if self.system_in_first_user else ""
        out = [] if self.system_in_first_user else [self._system_block(system)]
        for i, message in enumerate(turns):
            body = _with_tool_calls(text_of(message["content"]), message)
            if message["role"] in ("user", "tool"):  # a tool's result is written as a user turn
                out.append(f"{self.user}{pending}{body}{self.eoh}")
                pending = ""
            elif add_generation_prompt and i == len(turns) - 1:
                out.append(f"{self.assistant}{body}")  # left open: the model continues it
            else:
                out.append(f"{self.assistant}{body}{self.eoa}{self.separator}")
        if pending:
            out.append(f"{self.user}{pending}{self.eoh}")
        if add_generation_prompt and not (turns and turns[-1]["role"] == "assistant"):
            out.append(self.reply_prefix)
        return "".join(out)


def _split_system(conversation: list, default: Optional[str], render_fn) -> tuple[Optional[str], list]:
    """``(system_text, other_messages)``: a leading system message overrides ``default``."""
    turns = list(conversation)
    lead = 1 if turns and turns[0]["role"] == "system" else 0
    system = render_fn(turns[0]["content"]) if lead else default
    for i, message in enumerate(turns[lead:], start=lead):
        if message["role"] not in ("user", "assistant", "tool"):
            raise ValueError(f"message #{i} has role {message['role']!r}: only the first message may be a "
                             "system message; the others must be 'user', 'assistant' or 'tool'")
    return system, turns[lead:]


def tools_prompt(tools: list) -> str:
    """The tools described for a template that has no way of its own: each function's JSON on a
    line, and the format of a call."""
    lines = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return ("You may call these functions:\n" + lines + "\nTo call one, answer with a JSON object on its own "
            'line: {"name": <the function\'s name>, "arguments": <its arguments as a JSON object>}; one line '
            "per call.")


def with_tools_prompt(conversation: list, tools: Optional[list]) -> list:
    """The conversation with ``tools_prompt`` at the end of its system message (one is added first
    when there is none)."""
    if not tools:
        return conversation
    block = {"type": "text", "text": tools_prompt(tools)}
    if conversation and conversation[0]["role"] == "system":
        first = conversation[0]
        joined = first["content"] + [{"type": "text", "text": "\n\n"}] if first["content"] else []
        return [{**first, "content": joined + [block]}, *conversation[1:]]
    return [{"role": "system", "content": [block]}, *conversation]


def _with_tool_calls(body: str, message: dict) -> str:
    """A message's text followed by its tool calls as fixed-string templates write them: one JSON
    object per call (``{"name": ..., "arguments": ...}``), each on its own line."""
    calls = [json.dumps({"name": c["function"]["name"], "arguments": c["function"].get("arguments", "")},
                        ensure_ascii=False) for c in message.get("tool_calls") or ()]
    return "\n".join(([body] if body else []) + calls)



def _im_template(name: str, system: Optional[str], stop_words: list) -> ChatTemplate:
    return ChatTemplate(name=name, system=system, system_prefix=_IM.format("system"),
                        system_suffix="<|im_end|>\n", user=_IM.format("user"), eoh="<|im_end|>\n",
                        assistant=_IM.format("assistant"), eoa="<|im_end|>", separator="\n",
                        stop_words=stop_words)


def _builtins() -> dict:
    vicuna = ChatTemplate(name="vicuna", system=_VICUNA_SYSTEM, system_suffix=" ", user="USER: ", eoh=" ",
                          assistant="ASSISTANT: ", eoa="</s>", stop_words=["</s>"], trim_reply_space=True)
    llama3_header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    templates = [
        vicuna,
        dataclasses.replace(vicuna, name="llava-v1", system=_LLAVA_SYSTEM),
        _im_template("chatml", None, ["<|im_end|>"]),
        _im_template("qwen", "You are a helpful assistant.", ["<|im_end|>", "<|endoftext|>"]),
        _im_template("internlm2", _INTERNLM2_SYSTEM, ["<|im_end|>", "<|action_end|>"]),
        _im_template("internvl2_5", _INTERNVL2_5_SYSTEM, ["<|im_end|>", "<|action_end|>"]),
        ChatTemplate(name="llama3", system_prefix=llama3_header.format("system"), system_suffix="<|eot_id|>",
                     user=llama3_header.format("user"), eoh="<|eot_id|>",
                     assistant=llama3_header.format("assistant"), eoa="<|eot_id|>",
                     stop_words=["<|eot_id|>", "<|end_of_text|>"]),
        ChatTemplate(name="mistral", system_suffix="\n\n", user="[INST] ", eoh=" [/INST]", assistant=" ",
                     eoa="</s>", stop_words=["</s>"], system_in_first_user=True, trim_reply_space=True),
        # DeepSeek-VL's "deepseek" conversation format: "User: q\n\nAssistant: a<eos>User: ..."
        ChatTemplate(name="deepseek-vl", system=_DEEPSEEK_VL_SYSTEM, system_suffix="\n\n", user="User: ",
                     eoh="\n\n", assistant="Assistant: ", eoa="<｜end▁of▁sentence｜>",
                     stop_words=["<｜end▁of▁sentence｜>"], image_sep="", trim_reply_space=True),
        ChatTemplate(name="base"),
    ]
    return {t.name: t for t in templates}


BUILTIN_TEMPLATES: dict = _builtins()


def get_builtin(name: str) -> ChatTemplate:
    """A fresh copy of the built-in template ``name``; unknown names raise ``ValueError``."""
    if name not in BUILTIN_TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known templates: {sorted(BUILTIN_TEMPLATES)}")
    return dataclasses.replace(BUILTIN_TEMPLATES[name], stop_words=list(BUILTIN_TEMPLATES[name].stop_words))


_TOOL_KEYS = ("tool_calls", "tool_call_id", "name")  # message fields the model's template may render


class HFChatTemplate:
    """The model's own jinja chat template, rendered by ``tokenizer.apply_chat_template``.

    Image parts go to the template as ``{"type": "image"}`` so it writes its own
    image markers; a template whose source never mentions images gets string
    content with ``image_placeholder`` in place of each image instead. A message
    without images goes as one plain string, unless a probe shows the template
    drops string content (templates that only iterate over parts).
    """

    name = "hf"
    image_sep = "\n"
    _PROBE = "seer-probe-text"

    def __init__(self, tokenizer, template: Optional[str] = None):
        self.tokenizer = tokenizer
        self.template = template  # None: the tokenizer's own chat_template
        source = template if template is not None else tokenizer.chat_template
        if isinstance(source, dict):
            source = "\n".join(str(v) for v in source.values())
        self.source = source  # the jinja text (a tokenizer's named templates joined)
        if not source:
            raise ValueError("HFChatTemplate needs a tokenizer with a chat_template (or a template string)")
        self.handles_images = "image" in source
        self.reads_tools = "tools" in source
        self.stop_words: list = []
        self.strings_ok = True  # text-only messages go as plain strings
        probe = self._probe()
        if probe is None or self._PROBE not in probe:
            self.strings_ok = False  # the template ignores string content: send parts
            probe = self._probe()
        bos = getattr(tokenizer, "bos_token", None)
        self.adds_bos = bool(bos) and (probe.startswith(bos) if probe is not None else "bos_token" in source)

    def _probe(self) -> Optional[str]:
        try:
            return self.render([{"role": "user", "content": [{"type": "text", "text": self._PROBE}]}], "<image>")
        except ValueError:
            return None

    def _hf_content(self, parts: list, image_placeholder: str):
        has_image = any(p["type"] != "text" for p in parts)
        if has_image and not self.handles_images:
            return render_parts(parts, image_placeholder, self.image_sep)
        if not has_image and self.strings_ok:
            return "".join(p["text"] for p in parts)
        return [{"type": "text", "text": p["text"]} if p["type"] == "text" else {"type": "image"} for p in parts]

    def render(self, conversation: list, image_placeholder: str, add_generation_prompt: bool = True,
               tools: Optional[list] = None) -> str:
        if tools and not self.reads_tools:
            conversation, tools = with_tools_prompt(conversation, tools), None
        messages = [{"role": m["role"], "content": self._hf_content(m["content"], image_placeholder),
                     **{k: m[k] for k in _TOOL_KEYS if k in m}} for m in conversation]
        continue_final = bool(add_generation_prompt and messages and messages[-1]["role"] == "assistant")
        kwargs = {"chat_template": self.template} if self.template is not None else {}
        if tools:
            kwargs["tools"] = tools
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt and not continue_final,
                continue_final_message=continue_final, **kwargs)
        except Exception as exc:  # jinja raise_exception, bad role order, ...
            raise ValueError(f"the model's chat template rejected the conversation: {exc}") from exc


def _template_from_files(model_path: str) -> Optional[str]:
    """A processor-level chat template shipped next to the weights, if any."""
    if not model_path or not os.path.isdir(model_path):
        return None
    jinja = os.path.join(model_path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read() or None
    path = os.path.join(model_path, "chat_template.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("chat_template")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is not a JSON object with a 'chat_template' string: {exc}") from None
    return value if isinstance(value, str) and value else None


def _cfg(cfg, key: str, default=None):
    """``key`` of a config object or dict (``default`` when absent or ``cfg`` is None)."""
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def _model_facts(hf_config, model_path: str) -> dict:
    text_cfg = _cfg(hf_config, "text_config") or _cfg(hf_config, "llm_config")
    archs = list(_cfg(hf_config, "architectures") or []) + list(_cfg(text_cfg, "architectures") or [])
    return {
        "type": str(_cfg(hf_config, "model_type") or "").lower(),
        "text_type": str(_cfg(text_cfg, "model_type") or "").lower(),
        "archs": " ".join(archs).lower(),
        "name": os.path.basename(os.path.normpath(model_path or "")).lower(),
        "vocab": _cfg(text_cfg, "vocab_size") or _cfg(hf_config, "vocab_size") or 0,
    }


def match_builtin(hf_config, model_path: str) -> str:
    """Name of the built-in template that fits the model's config and folder name (``base`` if none)."""
    f = _model_facts(hf_config, model_path)
    everything = " ".join((f["type"], f["text_type"], f["archs"], f["name"]))
    if "internvl" in everything:
        return "internvl2_5"
    if f["type"] in ("multi_modality", "deepseek_vl", "deepseek_vl_hybrid"):
        return "deepseek-vl"
    if "llava" in everything:
        if f["text_type"].startswith("qwen"):
            return "qwen"
        return "mistral" if "mistral" in f["name"] or f["text_type"] == "mistral" else "llava-v1"
    if "internlm2" in everything or "internlm3" in everything:
        return "internlm2"
    if "qwen" in everything:
        return "qwen"
    if "vicuna" in f["name"]:
        return "vicuna"
    llama3_name = any(k in f["name"] for k in ("llama-3", "llama3", "llama_3"))
    if llama3_name or ("llama" in (f["type"], f["text_type"]) and f["vocab"] >= 128000):
        return "llama3"
    if "mistral" in everything or "mixtral" in everything:
        return "mistral"
    return "base"


def _from_config(config: ChatTemplateConfig) -> ChatTemplate:
    """The named built-in with the config's non-None fields applied."""
    template = get_builtin(config.model_name)
    changes = {k: getattr(config, k) for k in ("system", "user", "eoh", "assistant", "eoa", "separator")
               if getattr(config, k) is not None}
    if config.eosys is not None:
        changes["system_suffix"] = config.eosys
    if config.stop_words is not None:
        changes["stop_words"] = [config.stop_words] if isinstance(config.stop_words, str) else list(config.stop_words)
    if config.meta_instruction is not None and config.system not in (None, config.meta_instruction):
        # LMDeploy spelling: ``system`` is the block's prefix, ``meta_instruction`` its text.
        changes.update(system_prefix=config.system, system=config.meta_instruction)
    return dataclasses.replace(template, **changes)


def resolve_chat_template(tokenizer, hf_config, model_path: str, config: Optional[ChatTemplateConfig] = None):
    """Pick the template: ``config``'s built-in, else the model's own, else a matched built-in."""
    if config is not None:
        if not isinstance(config, ChatTemplateConfig):
            raise ValueError(f"chat_template_config must be a ChatTemplateConfig, got {type(config).__name__}")
        return _from_config(config)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return HFChatTemplate(tokenizer)
    shipped = _template_from_files(model_path)
    if tokenizer is not None and shipped:
        return HFChatTemplate(tokenizer, template=shipped)
    return get_builtin(match_builtin(hf_config, model_path))


__all__ = ["ChatTemplate", "HFChatTemplate", "render_parts", "BUILTIN_TEMPLATES", "get_builtin", "match_builtin",
           "resolve_chat_template"]
