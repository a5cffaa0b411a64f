"""Tiny random Idefics3 / SmolVLM checkpoints and the transformers reference side.

* ``build_idefics3(path, kind)``: an ``Idefics3ForConditionalGeneration`` (kind "idefics3") or a
  ``SmolVLMForConditionalGeneration`` (kind "smolvlm") saved by transformers' ``save_pretrained``
  (nested ``text_config``/``vision_config``; tensors ``model.vision_model.*``, ``model.connector.*``,
  ``model.text_model.*``, ``lm_head.*``), with a byte-level BPE tokenizer built with ``tokenizers``
  that carries the family's special tokens (``<fake_token_around_image>``, ``<image>``,
  ``<global-img>``, ``<row_r_col_c>``, ``<end_of_utterance>``), SmolVLM's published chat template
  (``chat_template.json``), ``preprocessor_config.json`` and ``processor_config.json``
  (``image_seq_len``) as the hub checkpoints ship them, and a generation config.
* ``to_hub_layout(src, dst)``: the same checkpoint as HuggingFaceTB/SmolVLM-256M-Instruct publishes
  its files: a transformers-4.x ``config.json`` (flat ``rope_theta``, the processor's sizes inside
  ``vision_config``, ...) and a tokenizer without a chat template (only ``chat_template.json``).
* ``hf_processor`` / ``hf_inputs`` / ``hf_greedy``: the reference: transformers' own
  ``Idefics3Processor`` / ``SmolVLMProcessor`` (built without a video processor, which needs
  torchvision) and ``generate``.

Sizes (per kind): LM hidden 64, 2 layers; vision tower width 32, 2 layers, patch 8.
Idefics3: 48 px tiles, scale factor 2 -> 9 ``<image>`` per tile, images resized to a long side of
144 px (up to 3x3 tiles + the global view). SmolVLM: 64 px tiles, scale factor 4 -> 4 per tile, long
side 128 px (up to 2x2 tiles + global).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Optional, Sequence

import torch

import tiny_models as tm

KINDS = ("idefics3", "smolvlm")
ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
           "<end_of_utterance>", "<global-img>"] + ROW_COL
PATCH = 8
# kind -> (tile side = max_image_size, scale_factor, longest_edge of the first resize)
SIZES = {"idefics3": (48, 2, 144), "smolvlm": (64, 4, 128)}
_SEEDS = {"idefics3": 13, "smolvlm": 12}

# The chat template HuggingFaceTB/SmolVLM-*-Instruct publish (chat_template.json).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def image_seq_len(kind: str) -> int:
    side, scale, _ = SIZES[kind]
    return (side // PATCH) ** 2 // scale ** 2


# --------------------------------------------------------------------------------------------
# Tokenizer and processor files
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=tm.VOCAB_TARGET, min_frequency=2, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    chat = ["<|im_start|>User:<image>Can you describe this image?<end_of_utterance>\nAssistant: A red circle.",
            "<|im_start|>User: What is this?<end_of_utterance>\nAssistant: It is a dog.<end_of_utterance>\n",
            "The first line.\n\nThe second paragraph.\n\n"]
    tok.train_from_iterator(tm._corpus() + chat * 20, trainer=trainer)
    return tok.to_str()


def make_tokenizer():
    """SmolVLM-like: bos ``<|im_start|>`` (written by the chat template), eos ``<end_of_utterance>``,
    pad ``<|im_end|>``; the image tokens named as the hub tokenizer names them."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()), bos_token="<|im_start|>",
        eos_token="<end_of_utterance>", pad_token="<|im_end|>", unk_token="<|endoftext|>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
        clean_up_tokenization_spaces=False, model_max_length=tm.MAX_POS)
    tok.chat_template = SMOLVLM_CHAT_TEMPLATE
    return tok


def _image_processor(kind: str):
    from transformers import Idefics3ImageProcessorPil, SmolVLMImageProcessorPil

    side, _, longest = SIZES[kind]
    cls = Idefics3ImageProcessorPil if kind == "idefics3" else SmolVLMImageProcessorPil
    return cls(size={"longest_edge": longest}, max_image_size={"longest_edge": side}, do_image_splitting=True,
               image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=1)


def preprocessor_config(kind: str, do_image_splitting: bool = True) -> dict:
    """``preprocessor_config.json`` as the hub checkpoints ship it."""
    side, _, longest = SIZES[kind]
    name = "Idefics3" if kind == "idefics3" else "SmolVLM"
    return {"do_convert_rgb": True, "do_image_splitting": do_image_splitting, "do_normalize": True, "do_pad": True,
            "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
            "image_processor_type": f"{name}ImageProcessor", "max_image_size": {"longest_edge": side},
            "processor_class": f"{name}Processor", "resample": 1, "rescale_factor": 1 / 255,
            "size": {"longest_edge": longest}}


def _processor_class(kind: str) -> str:
    return "Idefics3Processor" if kind == "idefics3" else "SmolVLMProcessor"


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

def _config(kind: str, tok, tie: bool = False):
    import transformers

    side, scale, _ = SIZES[kind]
    text = tm._text_config("llama", tok).to_dict()
    text["tie_word_embeddings"] = tie
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=side, patch_size=PATCH, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    cls = transformers.Idefics3Config if kind == "idefics3" else transformers.SmolVLMConfig
    return cls(text_config=text, vision_config=vision, scale_factor=scale,
               image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=tie)


def _model_class(kind: str):
    import transformers

    return {"idefics3": transformers.Idefics3ForConditionalGeneration,
            "smolvlm": transformers.SmolVLMForConditionalGeneration}[kind]


def build_idefics3(path: str, kind: str = "idefics3", seed: int = 0, tie: bool = False) -> str:
    """A tiny random checkpoint of ``kind`` at ``path`` (``tie``: the LM head is the embedding matrix,
    no ``lm_head`` tensor saved). Returns ``path``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    tok = make_tokenizer()
    cfg = _config(kind, tok, tie)
    seed = _SEEDS[kind] + 1000 * seed
    torch.manual_seed(seed)
    model = _model_class(kind)(cfg).eval()
    # The connector at init scale: scaled too, image features dwarf the text embeddings and greedy
    # output repeats one token.
    tm._randomize(model, seed, unscaled=("modality_projection",))
    model.generation_config = tm._generation_config(tok)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    _write_json(os.path.join(path, "preprocessor_config.json"), preprocessor_config(kind))
    _write_json(os.path.join(path, "processor_config.json"),
                {"image_seq_len": image_seq_len(kind), "processor_class": _processor_class(kind)})
    _write_json(os.path.join(path, "chat_template.json"), {"chat_template": SMOLVLM_CHAT_TEMPLATE})
    return path


def hub_config(cfg: dict, kind: str) -> dict:
    """A transformers-5 ``config.json`` dict -> the form HuggingFaceTB/SmolVLM-256M-Instruct publishes
    (written by transformers 4.4x: flat ``rope_theta``, the processor sizes repeated in
    ``vision_config``, extra keys of the original training code)."""
    text = dict(cfg["text_config"])
    rope = text.pop("rope_parameters", None) or {}
    text.pop("rope_scaling", None)
    text.update(rope_theta=rope.get("rope_theta", 10000.0), rope_scaling=None, rope_interleaved=False,
                qk_layer_norms=False, use_resampler=False, pixel_shuffle_factor=cfg["scale_factor"],
                neftune_noise_alpha=0.0, is_llama_config=True, architectures=["VLlama3ForCausalLM"],
                torch_dtype="float32")
    side, _, longest = SIZES[kind]
    vision = dict(cfg["vision_config"])
    vision.update(max_image_size={"longest_edge": side}, size={"longest_edge": longest}, use_base_siglip=False,
                  tie_word_embeddings=False, model_type=f"{kind}_vision")
    out = {k: v for k, v in cfg.items() if k not in ("text_config", "vision_config", "dtype", "_pad_token_id")}
    out.update(text_config=text, vision_config=vision, torch_dtype="float32", transformers_version="4.47.1",
               use_cache=True, pad_token_id=128002, vocab_size=text["vocab_size"])
    return out


def to_hub_layout(src: str, dst: str, kind: str) -> str:
    """Copy ``src`` to ``dst`` with the hub's ``config.json`` and ``tokenizer_config.json`` (4.x keys,
    no chat template: that is only in ``chat_template.json``)."""
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if f not in ("config.json", "chat_template.jinja"):
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    with open(os.path.join(src, "config.json")) as f:
        _write_json(os.path.join(dst, "config.json"), hub_config(json.load(f), kind))
    tc_path = os.path.join(dst, "tokenizer_config.json")
    with open(tc_path) as f:
        tc = json.load(f)
    for k in ("chat_template", "backend", "extra_special_tokens"):
        tc.pop(k, None)
    tc.update(tokenizer_class="PreTrainedTokenizerFast", processor_class=_processor_class(kind),
              additional_special_tokens=["<fake_token_around_image>", "<image>", "<end_of_utterance>"])
    _write_json(tc_path, tc)
    return dst


def with_preprocessor(src: str, dst: str, kind: str, **changes) -> str:
    """A copy of ``src`` whose ``preprocessor_config.json`` has ``changes`` (e.g. no image splitting)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    _write_json(os.path.join(dst, "preprocessor_config.json"), {**preprocessor_config(kind), **changes})
    return dst


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------

def _kind(model_dir: str) -> str:
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)["model_type"]


@functools.lru_cache(maxsize=None)
def hf_processor(model_dir: str):
    """transformers' ``Idefics3Processor`` / ``SmolVLMProcessor`` for ``model_dir``. SmolVLM's is built
    without a video processor (transformers' needs torchvision) and, when ``num2words`` (used for
    video prompts only) is not installed, with a stand-in for it."""
    from transformers import AutoImageProcessor, AutoTokenizer

    with open(os.path.join(model_dir, "processor_config.json")) as f:
        seq_len = json.load(f)["image_seq_len"]
    image_processor = AutoImageProcessor.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if _kind(model_dir) == "idefics3":
        from transformers import Idefics3Processor

        return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                                 chat_template=SMOLVLM_CHAT_TEMPLATE)
    from transformers.models.smolvlm import processing_smolvlm

    if processing_smolvlm.num2words is None:
        processing_smolvlm.num2words = str
    with tm.empty_video_slot():
        return processing_smolvlm.SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                                   video_processor=None, image_seq_len=seq_len,
                                                   chat_template=SMOLVLM_CHAT_TEMPLATE)


@functools.lru_cache(maxsize=None)
def hf_model(model_dir: str):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def messages(text: str, n_images: int) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def hf_inputs(model_dir: str, texts: Sequence[str], images: Optional[Sequence] = None, **kwargs) -> dict:
    """The reference processor over already templated ``texts`` (the template writes the bos token
    itself, so no special tokens are added); ``images``: one list per text."""
    proc = hf_processor(model_dir)
    imgs = [list(x) for x in images] if images and any(images) else None
    out = proc(text=list(texts), images=imgs, add_special_tokens=False, return_tensors="pt",
               padding=len(texts) > 1, **kwargs)
    return dict(out)


def render(model_dir: str, text: str, n_images: int) -> str:
    return hf_processor(model_dir).tokenizer.apply_chat_template(messages(text, n_images), add_generation_prompt=True,
                                                                 tokenize=False)


@torch.no_grad()
def hf_greedy(model_dir: str, inputs: dict, max_new_tokens: int = 32) -> list[int]:
    """Greedy ``generate`` that never stops on eos; the new token ids of the one sequence."""
    model = hf_model(model_dir)
    never = model.config.get_text_config().vocab_size + 12345
    inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "pixel_values",
                                                        "pixel_attention_mask")}
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=0,
                         eos_token_id=never, pad_token_id=model.generation_config.pad_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


__all__ = ["build_idefics3", "to_hub_layout", "with_preprocessor", "hf_processor", "hf_model", "hf_inputs",
           "hf_greedy", "render", "messages", "make_tokenizer", "image_seq_len", "KINDS", "SIZES"]
