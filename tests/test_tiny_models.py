"""Sanity checks of the tiny random checkpoints and the transformers reference helpers."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import tiny_models as tm

PROMPTS = ["What is this?", "Describe the image in detail.", "Tell me a story about a red dog."]
TEXT_FIXTURES = {"llama": "tiny_llama", "mistral": "tiny_mistral", "qwen2": "tiny_qwen2",
                 "qwen3": "tiny_qwen3"}


def _user(text, n_images=0):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def _assert_varied(outputs):
    """Each output has several distinct tokens and no two prompts give the same output."""
    for out in outputs:
        assert len(out) == 32
        assert len(set(out)) >= 4, out
    assert len({tuple(o) for o in outputs}) == len(outputs), outputs


# ------------------------------------------------------------------------------------- tokenizer

def test_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tm.build_tokenizer(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert 900 <= len(tok) <= 1000
    ids = {t: tok.convert_tokens_to_ids(t) for t in tm.SPECIAL_TOKENS}
    assert ids == {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<image>": 4,
                   "<|im_start|>": 5, "<|im_end|>": 6}
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 3, 0)
    assert tok.image_token == "<image>" and tok.image_token_id == 4

    text = tok.apply_chat_template(_user("what is this?", 1), add_generation_prompt=True, tokenize=False)
    assert text == "<s>USER: <image>\nwhat is this? ASSISTANT:"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            {"role": "user", "content": "bye"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == \
        "<s>Be brief. USER: hi ASSISTANT: hello</s>USER: bye "
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False).endswith(
        "USER: bye ASSISTANT:")

    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == 1 and ids.count(4) == 1
    s = "Describe the image: 3 red circles, 42 blue squares. Ünïcödé ✓"
    assert tok.decode(tok(s, add_special_tokens=False).input_ids) == s  # byte-level: no <unk>
    assert 0 not in tok(s, add_special_tokens=False).input_ids


def test_tokenizer_deterministic():
    a = json.loads(tm._trained_tokenizer_json.__wrapped__())
    b = json.loads(tm._trained_tokenizer_json())
    assert a["model"]["vocab"] == b["model"]["vocab"] and a["model"]["merges"] == b["model"]["merges"]


# ----------------------------------------------------------------------------------- text models

@pytest.mark.parametrize("arch", tm.TEXT_ARCHS)
def test_text_model(arch, request):
    path = request.getfixturevalue(TEXT_FIXTURES[arch])
    model = tm.load_hf_model(path)
    cfg = model.config
    assert cfg.model_type == arch and cfg.architectures == [type(model).__name__]
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 4, 2, 16)
    assert cfg.vocab_size == len(tm.load_tokenizer(path)) and not cfg.tie_word_embeddings
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    names = dict(model.named_parameters())
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == (arch == "qwen2")
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == (arch == "qwen3")
    # norms and biases are randomised (a dropped norm weight or bias must change the output)
    assert names["model.norm.weight"].std() > 0.1
    if arch == "qwen2":
        assert names["model.layers.0.self_attn.q_proj.bias"].abs().mean() > 0.05

    outs = [tm.hf_greedy(path, tm.hf_inputs(path, _user(p)), 32, ignore_eos=True) for p in PROMPTS]
    _assert_varied(outs)


def test_hf_greedy_inputs(tiny_llama):
    inp = tm.hf_inputs(tiny_llama, [{"role": "user", "content": "Hello"}])
    assert set(inp) == {"input_ids", "attention_mask"}
    assert inp["input_ids"][0, 0].item() == 1  # bos from the template only (no double bos)
    ids = inp["input_ids"][0].tolist()
    a = tm.hf_greedy(tiny_llama, inp, 12, min_new_tokens=12)
    assert a == tm.hf_greedy(tiny_llama, ids, 12, min_new_tokens=12)  # plain list of ids
    assert len(a) == 12 and 2 not in a  # min_new_tokens masks eos
    assert tm.hf_greedy(tiny_llama, ids, 5, ignore_eos=True) == \
        tm.hf_greedy(tiny_llama, ids, 12, ignore_eos=True)[:5]
    # ignore_eos + min_new_tokens: eos masked first, then selectable but never stopping
    c = tm.hf_greedy(tiny_llama, ids, 12, min_new_tokens=12, ignore_eos=True)
    assert c == a


def test_models_differ(tiny_llama, tiny_mistral):
    ids = tm.hf_inputs(tiny_llama, _user(PROMPTS[0]))["input_ids"][0].tolist()
    assert tm.hf_greedy(tiny_llama, ids, 16, ignore_eos=True) != \
        tm.hf_greedy(tiny_mistral, ids, 16, ignore_eos=True)


# ------------------------------------------------------------------------------------- InternLM2

def test_internlm2_layout(tiny_internlm2):
    path, ref = tiny_internlm2
    assert ref == os.path.normpath(path) + "_llama_ref"
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["InternLM2ForCausalLM"] and cfg["model_type"] == "internlm2"
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_internlm2.InternLM2ForCausalLM"
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "rms_norm_eps", "rope_theta", "rope_scaling", "bias",
                "vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id",
                "pad_token_id", "tie_word_embeddings", "torch_dtype"):
        assert key in cfg, key
    assert cfg["bias"] is False and cfg["rope_scaling"] is None and cfg["tie_word_embeddings"] is False
    h, nh, nkv, L = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
                     cfg["num_hidden_layers"])
    d = h // nh

    sd = load_file(os.path.join(path, "model.safetensors"))
    expected = {"model.tok_embeddings.weight", "model.norm.weight", "output.weight"}
    for i in range(L):
        expected |= {f"model.layers.{i}.{n}.weight" for n in (
            "attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
            "feed_forward.w3", "attention_norm", "ffn_norm")}
    assert set(sd) == expected
    assert sd["model.layers.0.attention.wqkv.weight"].shape == ((nh + 2 * nkv) * d, h)

    ref_sd = load_file(os.path.join(ref, "model.safetensors"))
    with open(os.path.join(ref, "config.json")) as f:
        ref_cfg = json.load(f)
    assert ref_cfg["rope_parameters"]["rope_theta"] == cfg["rope_theta"]
    assert torch.equal(sd["model.tok_embeddings.weight"], ref_sd["model.embed_tokens.weight"])
    assert torch.equal(sd["output.weight"], ref_sd["lm_head.weight"])
    for i in range(L):
        p = f"model.layers.{i}."
        wqkv = sd[p + "attention.wqkv.weight"]
        q, k, v = tm.unpack_wqkv(wqkv, nh, nkv, d)
        assert torch.equal(q, ref_sd[p + "self_attn.q_proj.weight"])
        assert torch.equal(k, ref_sd[p + "self_attn.k_proj.weight"])
        assert torch.equal(v, ref_sd[p + "self_attn.v_proj.weight"])
        # the published modeling code's view: [kv, q_per_kv + 2, d, hidden]
        g = wqkv.view(nkv, nh // nkv + 2, d, h)
        assert torch.equal(g[1, 0], ref_sd[p + "self_attn.q_proj.weight"].view(nh, d, h)[nh // nkv])
        assert torch.equal(g[1, -2], ref_sd[p + "self_attn.k_proj.weight"].view(nkv, d, h)[1])
        for a, b in (("attention.wo", "self_attn.o_proj"), ("feed_forward.w1", "mlp.gate_proj"),
                     ("feed_forward.w3", "mlp.up_proj"), ("feed_forward.w2", "mlp.down_proj"),
                     ("attention_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            assert torch.equal(sd[p + a + ".weight"], ref_sd[p + b + ".weight"])


def test_internlm2_reference(tiny_internlm2):
    from transformers import PreTrainedTokenizerFast

    path, ref = tiny_internlm2
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False) == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with open(os.path.join(path, "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == [2, 6]
    outs = [tm.hf_greedy(path, tm.hf_inputs(path, _user(p)), 32, ignore_eos=True) for p in PROMPTS]
    _assert_varied(outs)
    assert type(tm.load_hf_model(path)).__name__ == "LlamaForCausalLM"  # served by the twin


# ----------------------------------------------------------------------------------------- LLaVA

def test_llava_processor(tiny_llava):
    from transformers import AutoImageProcessor, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_llava)
    assert type(proc).__name__ == "LlavaProcessor"
    ip = AutoImageProcessor.from_pretrained(tiny_llava)
    assert ip.crop_size["height"] == ip.crop_size["width"] == 56

    msgs = _user("compare these", 2)
    assert tm.render_chat(tiny_llava, msgs) == "<s>USER: <image>\n<image>\ncompare these ASSISTANT:"
    inp = tm.hf_inputs(tiny_llava, msgs, [tm.make_image(1), tm.make_image(2, (30, 90))])
    assert inp["pixel_values"].shape == (2, 3, 56, 56)
    ids = inp["input_ids"][0].tolist()
    assert ids.count(tm.load_tokenizer(tiny_llava).image_token_id) == 2 * tm.IMAGE_TOKENS_PER_IMAGE == 32
    assert ids[0] == 1 and ids.count(1) == 1

    cfg = tm.load_hf_model(tiny_llava).config
    assert cfg.image_token_id == 4 and cfg.vision_feature_layer == -2
    assert cfg.vision_feature_select_strategy == "default"
    assert (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 == 16


def test_llava_greedy(tiny_llava):
    one = [tm.hf_greedy(tiny_llava, tm.hf_inputs(tiny_llava, _user(p, 1), [tm.make_image(i)]), 32,
                        ignore_eos=True) for i, p in enumerate(PROMPTS)]
    _assert_varied(one)
    # the image matters: same text, different images -> different output
    same_text = [tm.hf_greedy(tiny_llava, tm.hf_inputs(tiny_llava, _user(PROMPTS[0], 1),
                                                       [tm.make_image(s)]), 16, ignore_eos=True)
                 for s in (10, 11, 12)]
    assert len({tuple(o) for o in same_text}) == 3
    two = tm.hf_inputs(tiny_llava, _user("compare", 2), [tm.make_image(3), tm.make_image(4)])
    out = tm.hf_greedy(tiny_llava, two, 16, min_new_tokens=16)
    assert len(out) == 16
    swapped = tm.hf_inputs(tiny_llava, _user("compare", 2), [tm.make_image(4), tm.make_image(3)])
    assert tm.hf_greedy(tiny_llava, swapped, 16, min_new_tokens=16) != out


def test_llava_mistral(tiny_llava_mistral, tiny_llava):
    model = tm.load_hf_model(tiny_llava_mistral)
    assert model.config.text_config.model_type == "mistral"
    inp = tm.hf_inputs(tiny_llava_mistral, _user("What is this?", 1), [tm.make_image(0)])
    out = tm.hf_greedy(tiny_llava_mistral, inp, 32, ignore_eos=True)
    assert len(set(out)) >= 4
    assert out != tm.hf_greedy(tiny_llava, tm.hf_inputs(tiny_llava, _user("What is this?", 1),
                                                        [tm.make_image(0)]), 32, ignore_eos=True)


def test_text_model_rejects_images(tiny_llama):
    with pytest.raises(ValueError):
        tm.hf_inputs(tiny_llama, _user("x", 1), [tm.make_image(0)])


def test_make_image():
    a, b = tm.make_image(0), tm.make_image(1)
    assert a.size == (64, 48) and a.mode == "RGB"
    assert a.tobytes() == tm.make_image(0).tobytes()
    assert a.tobytes() != b.tobytes()
    assert tm.make_image(5, (100, 20)).size == (100, 20)
