"""Built-in chat templates, the model's own template, and how one is chosen."""

import pytest
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from seer.chat_template import (BUILTIN_TEMPLATES, ChatTemplate, HFChatTemplate, get_builtin,
                                match_builtin, resolve_chat_template)
from seer.config import ChatTemplateConfig
from seer.messages import to_conversation
from seer.vl.constants import IMAGE_TOKEN

IMG = Image.new("RGB", (4, 4))
LLAVA_SYS = ("A chat between a curious human and an artificial intelligence assistant. The assistant "
             "gives helpful, detailed, and polite answers to the human's questions.")
MULTI = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
         {"role": "user", "content": "more"}]

# Image-aware template in the style of llava-hf: strings or parts, images as "<image>".
PARTS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m.role }}>"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}"
    "{% if p.type == 'image' %}<image>{% else %}{{ p.text }}{% endif %}{% endfor %}{% endif %}"
    "</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
# Text-only template: string concatenation fails on list content; no BOS, no images.
STRING_TEMPLATE = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}"
                   "{% endif %}{{ '#' + m.role + ': ' + m.content + '\n' }}{% endfor %}"
                   "{% if add_generation_prompt %}#assistant: {% endif %}")

# Parts-only template in the style of llava-hf: iterates content parts, images first.
LIST_ONLY_TEMPLATE = (
    "{% for m in messages %}{{ m.role.upper() }}: "
    "{% for c in m.content | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for c in m.content | selectattr('type', 'equalto', 'text') %}{{ c.text + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def _tokenizer(template=None):
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = template
    return tok


# ---- built-ins -----------------------------------------------------------------

def test_llava_v1_one_turn_with_image():
    text = get_builtin("llava-v1").render(to_conversation(("describe this image", IMG)), "<image>")
    assert text == LLAVA_SYS + " USER: <image>\ndescribe this image ASSISTANT:"


def test_chatml_one_turn_with_image():
    text = get_builtin("chatml").render(to_conversation(("describe this image", IMG)), "<image>")
    assert text == "<|im_start|>user\n<image>\ndescribe this image<|im_end|>\n<|im_start|>assistant\n"


def test_vicuna_multi_turn_matches_llava_conversation_format():
    text = get_builtin("vicuna").render(to_conversation(MULTI), "<image>")
    assert text.endswith(" USER: hi ASSISTANT: hello</s>USER: more ASSISTANT:")
    assert text.startswith("A chat between a curious user")


def test_qwen_default_system_and_override():
    qwen = get_builtin("qwen")
    assert qwen.render(to_conversation("hi"), "<image>") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    conv = to_conversation([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}])
    assert qwen.render(conv, "<image>").startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user")
    empty = to_conversation([{"role": "system", "content": ""}, {"role": "user", "content": "hi"}])
    assert qwen.render(empty, "<image>").startswith("<|im_start|>user\nhi")


def test_internlm2_and_internvl2_5():
    for name in ("internlm2", "internvl2_5"):
        tpl = get_builtin(name)
        text = tpl.render(to_conversation(MULTI), "<IMG>")
        assert text.startswith("<|im_start|>system\n") and "<|im_end|>" in tpl.stop_words
        assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
                             "<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n")
    assert "InternLM" in get_builtin("internlm2").system and "InternVL" in get_builtin("internvl2_5").system


def test_llama3_exact():
    conv = to_conversation([{"role": "system", "content": "S"}] + MULTI)
    assert get_builtin("llama3").render(conv, "<image>") == (
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nhello<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nmore<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_mistral_system_goes_into_first_user_turn():
    conv = to_conversation([{"role": "system", "content": "S"}] + MULTI)
    assert get_builtin("mistral").render(conv, "<image>") == "[INST] S\n\nhi [/INST] hello</s>[INST] more [/INST]"


def test_base_is_plain_concatenation():
    assert get_builtin("base").render(to_conversation("The capital of France is"), "<image>") == \
        "The capital of France is"


def test_inline_images_get_no_separator():
    conv = to_conversation((f"{IMAGE_TOKEN}left vs right{IMAGE_TOKEN}", [IMG, IMG]))
    assert get_builtin("chatml").render(conv, "<i>") == \
        "<|im_start|>user\n<i>left vs right<i><|im_end|>\n<|im_start|>assistant\n"
    two_first = to_conversation(("x", [IMG, IMG]))
    assert "user\n<i>\n<i>\nx<|im_end|>" in get_builtin("chatml").render(two_first, "<i>")


def test_generation_prompt_flag_and_continuation():
    chatml = get_builtin("chatml")
    closed = chatml.render(to_conversation(MULTI[:2]), "<i>", add_generation_prompt=False)
    assert closed == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    assert chatml.render(to_conversation(MULTI[:2]), "<i>").endswith("assistant\nhello")
    assert get_builtin("llava-v1").render(to_conversation(MULTI[:2]), "<i>").endswith("ASSISTANT: hello")


def test_system_message_must_come_first():
    conv = to_conversation(MULTI + [{"role": "system", "content": "late"}])
    with pytest.raises(ValueError, match="only the first message may be a system message"):
        get_builtin("chatml").render(conv, "<i>")


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtins_write_no_bos(name):
    tpl = get_builtin(name)
    text = tpl.render(to_conversation(("q", IMG)), "<image>")
    assert not text.startswith(("<s>", "<|begin_of_text|>", "<|endoftext|>"))
    assert tpl.adds_bos is False and isinstance(tpl.stop_words, list) and "<image>" in text


def test_get_builtin_returns_independent_copies():
    get_builtin("qwen").stop_words.append("X")
    assert "X" not in get_builtin("qwen").stop_words


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown chat template 'nope'.*llava-v1"):
        resolve_chat_template(None, None, "/m", ChatTemplateConfig(model_name="nope"))


# ---- HF templates ---------------------------------------------------------------

def test_hf_template_gets_image_parts_and_writes_bos():
    tpl = HFChatTemplate(_tokenizer(PARTS_TEMPLATE))
    assert tpl.name == "hf" and tpl.stop_words == [] and tpl.adds_bos is True
    text = tpl.render(to_conversation((f"a{IMAGE_TOKEN}b", IMG)), "<ignored>")
    assert text == "<s><user>a<image>b</user><assistant>"


def test_hf_string_only_template_gets_strings_and_placeholders():
    tpl = HFChatTemplate(_tokenizer(STRING_TEMPLATE))
    assert tpl.adds_bos is False
    assert tpl.render(to_conversation(MULTI), "<i>") == "#user: hi\n#assistant: hello\n#user: more\n#assistant: "
    assert tpl.render(to_conversation(("q", IMG)), "<i>") == "#user: <i>\nq\n#assistant: "


def test_hf_parts_only_template_gets_parts_for_text_messages():
    tpl = HFChatTemplate(_tokenizer(LIST_ONLY_TEMPLATE))
    assert tpl.strings_ok is False and tpl.adds_bos is False
    assert tpl.render(to_conversation(("describe", IMG)), "<x>") == "USER: <image>\ndescribe ASSISTANT:"
    assert tpl.render(to_conversation(MULTI), "<x>") == "USER: hi ASSISTANT: hello USER: more ASSISTANT:"


def test_hf_template_errors_become_value_errors():
    tpl = HFChatTemplate(_tokenizer(STRING_TEMPLATE))
    with pytest.raises(ValueError, match="rejected the conversation: no system"):
        tpl.render(to_conversation([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]), "<i>")


def test_hf_template_continues_final_assistant_message():
    tpl = HFChatTemplate(_tokenizer(PARTS_TEMPLATE))
    assert tpl.render(to_conversation(MULTI[:2]), "<i>").endswith("<assistant>hello")
    assert tpl.render(to_conversation(MULTI[:2]), "<i>", add_generation_prompt=False).endswith("hello</assistant>")


# ---- resolution ---------------------------------------------------------------------

def test_config_wins_over_model_template_and_applies_overrides():
    cfg = ChatTemplateConfig(model_name="chatml", system="S", stop_words=["<stop>"], user="<u>", eoh="</u>")
    tpl = resolve_chat_template(_tokenizer(PARTS_TEMPLATE), {"model_type": "qwen2"}, "/m/qwen", cfg)
    assert isinstance(tpl, ChatTemplate) and tpl.stop_words == ["<stop>"]
    assert tpl.render(to_conversation("hi"), "<i>") == \
        "<|im_start|>system\nS<|im_end|>\n<u>hi</u><|im_start|>assistant\n"
    assert get_builtin("chatml").user == "<|im_start|>user\n"  # the registry is untouched


def test_config_meta_instruction_aliases():
    tpl = resolve_chat_template(None, None, "/m", ChatTemplateConfig(model_name="qwen", meta_instruction="M"))
    assert tpl.system == "M"
    lmdeploy_style = ChatTemplateConfig(model_name="qwen", system="<sys>", meta_instruction="M")
    tpl = resolve_chat_template(None, None, "/m", lmdeploy_style)
    assert tpl.render(to_conversation("hi"), "<i>").startswith("<sys>M<|im_end|>\n")


def test_model_template_used_without_config():
    assert isinstance(resolve_chat_template(_tokenizer(PARTS_TEMPLATE), {"model_type": "llava"}, "/m", None),
                      HFChatTemplate)


def test_bad_shipped_chat_template_json(tmp_path):
    (tmp_path / "chat_template.json").write_text("not json")
    with pytest.raises(ValueError, match="chat_template.json"):
        resolve_chat_template(_tokenizer(None), None, str(tmp_path), None)


def test_shipped_chat_template_file_is_used(tmp_path):
    (tmp_path / "chat_template.json").write_text('{"chat_template": "%s"}' % "{{ 'X' }}")
    tpl = resolve_chat_template(_tokenizer(None), {"model_type": "llava"}, str(tmp_path), None)
    assert isinstance(tpl, HFChatTemplate) and tpl.render(to_conversation("hi"), "<i>") == "X"


@pytest.mark.parametrize("config, path, expected", [
    ({"model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"]}, "/models/whatever", "llava-v1"),
    ({"model_type": "llama"}, "/models/llava-v1.5-7b", "llava-v1"),
    ({"model_type": "llava", "text_config": {"model_type": "mistral"}}, "/m/x", "mistral"),
    ({"model_type": "llava", "text_config": {"model_type": "qwen2"}}, "/m/llava-onevision", "qwen"),
    ({"model_type": "qwen2"}, "/models/Qwen2-0.5B-Instruct", "qwen"),
    ({"model_type": "internlm2"}, "/m/x", "internlm2"),
    ({"model_type": "internvl_chat", "llm_config": {"model_type": "internlm2"}}, "/m/x", "internvl2_5"),
    ({"model_type": "llama", "vocab_size": 32000}, "/models/Meta-Llama-3-8B-Instruct", "llama3"),
    ({"model_type": "llama", "vocab_size": 128256}, "/models/my-finetune", "llama3"),
    ({"model_type": "llama", "vocab_size": 32000}, "/models/vicuna-7b-v1.5", "vicuna"),
    ({"model_type": "mistral"}, "/models/m", "mistral"),
    ({"model_type": "llama", "vocab_size": 32000}, "/models/tiny-llama", "base"),
    (None, "", "base"),
])
def test_matching_builtins(config, path, expected):
    assert match_builtin(config, path) == expected
    tpl = resolve_chat_template(_tokenizer(None), config, path, None)
    assert isinstance(tpl, ChatTemplate) and tpl.name == expected


def test_matching_accepts_config_objects():
    class Cfg:
        model_type = "qwen2_vl"
        architectures = ["Qwen2VLForConditionalGeneration"]

    assert match_builtin(Cfg(), "/m/model") == "qwen"
