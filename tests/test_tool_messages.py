"""Chat histories as the OpenAI SDK writes them after a tool call: ``developer`` messages, an
assistant turn with ``content: null`` and ``tool_calls``, and ``tool`` messages.

With the model's own (jinja) template the prompt is token for token what transformers'
``apply_chat_template`` makes of the same messages; fixed-string templates write tool calls
as JSON lines and a tool's result as a user turn."""

from __future__ import annotations

import shutil

from transformers import AutoTokenizer

import tiny_models as tm
from seer import GenerationConfig, pipeline
from seer.chat_template import get_builtin
from seer.messages import to_conversation

# A minimal tool-aware template, in the manner of Qwen2.5's: tool calls and results are tagged.
TOOL_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'tool' -%}<tool_response id={{ m['tool_call_id'] }}>{{ m['content'] }}</tool_response>"
    "{%- else -%}<|{{ m['role'] }}|>{{ m['content'] if m['content'] is string else '' }}"
    "{%- for tc in m.get('tool_calls') or [] -%}"
    "<tool_call>{{ tc['function']['name'] }}({{ tc['function']['arguments'] }})</tool_call>"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
HISTORY = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather in Oslo?"},
           {"role": "assistant", "content": None, "tool_calls": [CALL]},
           {"role": "tool", "content": "12 C", "tool_call_id": "call_1"}]


def test_the_models_template_renders_tool_turns_as_transformers_does(tiny_llama, tmp_path):
    path = str(tmp_path / "tools")
    shutil.copytree(tiny_llama, path)
    tm.build_tokenizer(path, chat_template=TOOL_TEMPLATE)
    want = AutoTokenizer.from_pretrained(path).apply_chat_template(HISTORY, add_generation_prompt=True,
                                                                   tokenize=True, return_dict=False)
    with pipeline(path) as pipe:
        assert pipe.prepare(HISTORY).token_ids == list(want)
        developer = [{"role": "developer", "content": "be brief"}] + HISTORY[1:]
        assert pipe.prepare(developer).token_ids == list(want)  # developer is system
        gen = GenerationConfig(max_new_tokens=6, ignore_eos=True)
        assert pipe(developer, gen_config=gen).token_ids == pipe(HISTORY, gen_config=gen).token_ids


def test_fixed_templates_write_tool_calls_as_json_lines():
    conv = to_conversation(HISTORY[1:] + [{"role": "assistant", "content": "It is 12 C.", "tool_calls": [CALL]}])
    text = get_builtin("chatml").render(conv, "<image>", add_generation_prompt=False)
    call = '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}'
    assert text == ("<|im_start|>user\nweather in Oslo?<|im_end|>\n"
                    f"<|im_start|>assistant\n{call}<|im_end|>\n"
                    "<|im_start|>user\n12 C<|im_end|>\n"
                    f"<|im_start|>assistant\nIt is 12 C.\n{call}<|im_end|>\n")
