"""Prompt shapes → batch split → internal Conversation."""

import base64
import io

import pytest
import torch
from PIL import Image

from seer.messages import (append_turn, count_images, images_of, split_batch, text_of,
                           to_conversation)
from seer.vl.constants import IMAGE_TOKEN


def _img(color=(1, 2, 3)):
    return Image.new("RGB", (4, 4), color)


def _data_uri(color=(9, 9, 9)):
    buf = io.BytesIO()
    _img(color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


MESSAGES = [{"role": "user", "content": "hi"}]


# ---- split_batch -------------------------------------------------------------

@pytest.mark.parametrize("single", ["hello", ("describe", _img()), ("describe", [_img(), _img()]), MESSAGES])
def test_single_prompts(single):
    prompts, is_batch = split_batch(single)
    assert prompts == [single] and is_batch is False


@pytest.mark.parametrize("batch", [
    ["a", "b"],
    [("a", _img()), ("b", [_img()])],
    [MESSAGES, MESSAGES],
    ["a", ("b", _img()), MESSAGES],
])
def test_batches(batch):
    prompts, is_batch = split_batch(batch)
    assert prompts == batch and is_batch is True


@pytest.mark.parametrize("bad, words", [
    (42, "int"),
    (None, "NoneType"),
    ([], "empty list"),
    ({"role": "user", "content": "hi"}, "wrap a message in a list"),
    (("a", _img(), "extra"), "length 3"),
    ((_img(), "text"), "first item"),
    ([{"content": "no role"}], "no 'role'"),
    ([{"role": "user", "content": "x"}, "str"], "mixing"),
    (["ok", 3], "prompt #1"),
    ([["a", "b"]], "prompt #0"),
])
def test_bad_shapes(bad, words):
    with pytest.raises(ValueError, match="accepted") as err:
        split_batch(bad)
    assert words in str(err.value)


# ---- to_conversation: str and tuple --------------------------------------------

def test_str_prompt():
    assert to_conversation("hello") == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]


def test_tuple_images_go_first_without_token():
    conv = to_conversation(("describe", [_img(), _data_uri()]))
    parts = conv[0]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    assert parts[1]["image"].getpixel((0, 0)) == (9, 9, 9)
    assert count_images(conv) == 2


def test_tuple_single_image_not_in_list_and_no_images():
    assert count_images(to_conversation(("x", _img()))) == 1
    assert to_conversation(("x", [])) == to_conversation("x")
    assert to_conversation(("x", None)) == to_conversation("x")


def test_tuple_image_token_positions():
    a, b = _img((1, 1, 1)), _img((2, 2, 2))
    conv = to_conversation((f"compare {IMAGE_TOKEN} with{IMAGE_TOKEN}, please", [a, b]))
    parts = conv[0]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    assert [p.get("text") for p in parts if p["type"] == "text"] == ["compare ", " with", ", please"]
    assert [p["image"].getpixel((0, 0)) for p in parts if p["type"] == "image"] == [(1, 1, 1), (2, 2, 2)]


def test_tuple_leading_token_keeps_empty_text_marker():
    parts = to_conversation((f"{IMAGE_TOKEN}describe", _img()))[0]["content"]
    assert parts[0] == {"type": "text", "text": ""} and parts[1]["type"] == "image"


def test_tuple_token_count_mismatch():
    with pytest.raises(ValueError, match="2 time.*1 image"):
        to_conversation((f"{IMAGE_TOKEN}{IMAGE_TOKEN}", [_img()]))


def test_tuple_bad_image_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        to_conversation(("x", str(tmp_path / "missing.png")))


def test_tensor_embeddings_pass_through():
    emb = torch.zeros(5, 8)
    conv = to_conversation(("x", emb))
    assert conv[0]["content"][0]["image"] is emb
    conv = to_conversation([{"role": "user", "content": [{"type": "image_embeds", "image_embeds": emb}]}])
    assert images_of(conv) == [emb]


# ---- to_conversation: OpenAI messages -----------------------------------------

def test_openai_messages_all_part_kinds():
    pil = _img((5, 5, 5))
    prompt = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "look:"},
            {"type": "image_url", "image_url": {"url": _data_uri((7, 7, 7)), "max_dynamic_patch": 6}},
            {"type": "image_url", "image_url": _data_uri((8, 8, 8))},
            {"type": "image", "image": pil},
            {"type": "image_data", "image_data": {"data": pil}},
        ]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]
    conv = to_conversation(prompt)
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user"]
    assert conv[0]["content"] == [{"type": "text", "text": "be brief"}]
    colors = [img.getpixel((0, 0)) for img in images_of(conv)]
    assert colors == [(7, 7, 7), (8, 8, 8), (5, 5, 5), (5, 5, 5)]
    assert text_of(conv[1]) == "look:" and text_of(conv[3]) == "again"


def test_messages_as_the_sdks_send_them():
    """developer is system; an assistant turn that only called tools has content null; a tool
    message answers it. The tool fields pass through (checked) for the chat template."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    conv = to_conversation([{"role": "developer", "content": "be brief"}, {"role": "user", "content": "weather?"},
                            {"role": "assistant", "content": None, "tool_calls": [call]},
                            {"role": "tool", "content": "12 C", "tool_call_id": "call_1"}])
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "tool"]
    assert conv[2] == {"role": "assistant", "content": [], "tool_calls": [call]}
    assert conv[3] == {"role": "tool", "content": [{"type": "text", "text": "12 C"}], "tool_call_id": "call_1"}
    assert to_conversation(conv) == conv


def test_conversion_is_idempotent():
    conv = to_conversation([{"role": "user", "content": [{"type": "image", "image": _img()},
                                                          {"type": "text", "text": "x"}]}])
    assert to_conversation(conv) == conv


@pytest.mark.parametrize("prompt, words", [
    ([{"role": "robot", "content": "x"}], "role 'robot'"),
    ([{"role": "user", "content": None}], "'content' must be a str or a list"),
    ([{"role": "assistant", "content": None}], "or null in an assistant message with tool_calls"),
    ([{"role": "user", "content": "x", "tool_calls": []}], "only accepted in assistant messages"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}],
     "tool_calls[0] must be"),
    ([{"role": "assistant", "content": None, "tool_calls": "get_weather"}], "must be a list"),
    ([{"role": "tool", "content": "x", "tool_call_id": 7}], "tool_call_id must be a string"),
    ([{"role": "user", "content": [{"type": "audio", "audio": "x"}]}], "unknown content part type 'audio'"),
    ([{"role": "user", "content": [{"text": "no type"}]}], "is not a dict with a 'type'"),
    ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "'text' as a str"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "carries no image"),
    ([{"role": "assistant", "content": [{"type": "image", "image": _img()}]}], "only accepted in user"),
    ([{"role": "user", "content": [{"type": "image_embeds", "image_embeds": [1, 2]}]}], "torch.Tensor"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,xx"}}]}],
     "invalid base64"),
])
def test_bad_messages(prompt, words):
    with pytest.raises(ValueError) as err:
        to_conversation(prompt)
    assert words in str(err.value)


def test_to_conversation_rejects_batches():
    with pytest.raises(ValueError, match="accepted"):
        to_conversation(["a", "b"])


def test_append_turn_does_not_mutate():
    conv = to_conversation("hi")
    longer = append_turn(append_turn(conv, "assistant", "hello"), "user", "more")
    assert len(conv) == 1 and [m["role"] for m in longer] == ["user", "assistant", "user"]
    assert text_of(longer[-1]) == "more"
    with pytest.raises(ValueError, match="accepted roles"):
        append_turn(conv, "bot", "x")
