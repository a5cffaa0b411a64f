"""Tiny random-weight checkpoints and transformers reference helpers for tests.

Everything here is built offline in a second or two and is ~1 MB on disk:

* ``build_tokenizer(path)``: a byte-level BPE (vocab ~1000) with a LLaVA-1.5 style chat template.
* ``build_text_model(path, arch)``: Llama / Mistral / Qwen2 / Qwen3 causal LMs (transformers layout).
* ``build_internlm2(path)``: an InternLM2 checkpoint in the ORIGINAL published layout (packed
  ``wqkv``, ``tok_embeddings``, ``output``...) plus a transformers Llama holding the same weights
  (``path + "_llama_ref"``) to use as the reference.
* ``build_llava(path, lm)``: a LlavaForConditionalGeneration with a tiny CLIP tower, a saved
  CLIP image processor and a LlavaProcessor (16 image tokens per image).
* ``hf_inputs`` / ``hf_greedy`` / ``make_image``: reference-side helpers for parity tests.

Weights are random (fixed seed), then scaled (``WEIGHT_SCALE``) and norms/biases randomised so
greedy output varies from step to step and from prompt to prompt, and so an engine that drops a
norm weight or a bias gives different tokens.

Note on eos: the models are random, so greedy decoding can emit ``</s>`` at any point; parity
tests that want a fixed length should pass ``min_new_tokens`` (eos masked, as HF/LMDeploy do) or
compare only up to and including the first eos. ``hf_greedy`` returns the eos token when it
stopped on one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
from typing import Any, Optional, Sequence, Union

import torch

# Keep transformers quiet and offline whoever imports this module first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Tuned: at 3, greedy output of Qwen2/LLaVA mostly repeats one or two tokens; at 6 it varies
# (logit std ~1, so nothing saturates).
WEIGHT_SCALE = 6.0
HIDDEN = 64
INTERMEDIATE = 128
N_LAYERS = 2
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = HIDDEN // N_HEADS
MAX_POS = 2048
VOCAB_TARGET = 1000
IMAGE_TOKEN = "<image>"
# <unk>=0, <s>=1, </s>=2 as in Llama; the rest follow.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN, "<|im_start|>", "<|im_end|>"]

TEXT_ARCHS = ("llama", "mistral", "qwen2", "qwen3")

# content may be a string or a list of {"type": "text", "text": ...} / {"type": "image"} parts,
# rendered in order.
_RENDER_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}{{ '<image>\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
# LLaVA-1.5 (Vicuna v1) style: "<s>USER: <image>\nwhat is this? ASSISTANT:".
# System text is followed by a space; assistant turns end with "</s>".
LLAVA_CHAT_TEMPLATE = _RENDER_CONTENT + (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ render(message['content']) + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + render(message['content']) + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# InternLM2-chat's published template (ChatML after the bos token), extended to content parts.
CHATML_CHAT_TEMPLATE = _RENDER_CONTENT + (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + render(message['content']) + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

CHAT_TEMPLATES = {"llava": LLAVA_CHAT_TEMPLATE, "chatml": CHATML_CHAT_TEMPLATE}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey",
            "pink", "brown", "cyan", "magenta", "golden", "silver", "dark", "light"]
_SHAPES = ["circle", "square", "triangle", "rectangle", "ellipse", "star", "line", "dot",
           "hexagon", "cube", "sphere", "box", "ring", "arrow", "cross"]
_NOUNS = ["cat", "dog", "house", "tree", "car", "bird", "river", "mountain", "city", "garden",
          "table", "chair", "window", "door", "flower", "boat", "train", "person", "child", "sky",
          "picture", "photo", "image", "scene", "road", "book", "computer", "phone", "cup", "ball"]
_VERBS = ["see", "describe", "draw", "paint", "count", "find", "show", "explain", "compare",
          "name", "list", "tell", "write", "read", "look at", "answer", "think about"]
_ADJS = ["small", "large", "bright", "quiet", "happy", "old", "new", "tall", "short", "round",
         "sharp", "soft", "beautiful", "simple", "strange", "empty", "busy", "warm", "cold"]
_PLACES = ["on the left", "on the right", "in the middle", "at the top", "at the bottom",
           "in the corner", "near the edge", "behind the house", "next to the tree", "above the river"]
_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "twenty", "hundred", "first", "second", "third", "0", "1", "2", "3", "4", "5", "6",
            "7", "8", "9", "10", "12", "42", "100", "2024", "3.14"]
_WORDS = ("the of and to in is you that it he was for on are as with his they at be this have "
          "from or had by word but not what all were we when your can said there use an each which "
          "she do how their if will up other about out many then them these so some her would make "
          "like him into time has look two more write go see number no way could people my than "
          "water been call who oil its now long down day did get come made may part over new sound "
          "take only little work know place year live me back give most very after thing our just "
          "great where help through much before line right too mean old any same tell boy follow came "
          "want show also around form three small set put end does another well large must big even "
          "such because turn here why ask went men read need land different home us move try kind "
          "hand picture again change off play spell air away animal house point page letter mother "
          "answer found study still learn should world high every near add food between own below "
          "country plant last school father keep never start city earth eye light thought head under "
          "story saw left few while along might close something seem next hard open example begin "
          "life always those both paper together got group often run important until children side "
          "feet car mile night walk white sea began grow took river four carry state once book hear "
          "stop without second late miss idea enough eat face watch far really almost let above girl "
          "sometimes mountain cut young talk soon list song being leave family model engine token "
          "inference batch memory cache server request response stream vision language text prompt").split()
_QUESTIONS = ["What is this?", "What do you see in the image?", "Describe the image.",
              "How many shapes are there?", "What colour is the circle?", "Where is the square?",
              "Can you describe this picture in detail?", "Which shape is the largest?",
              "Is there a cat in the photo?", "What is the answer?", "Why is the sky blue?",
              "Tell me a story about a dog.", "Who are you?", "Hello, how are you?"]


def _corpus(n: int = 1500, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    c = lambda xs: rng.choice(xs)  # noqa: E731
    templates = [
        lambda: f"The {c(_ADJS)} {c(_COLOURS)} {c(_SHAPES)} is {c(_PLACES)}.",
        lambda: f"There are {c(_NUMBERS)} {c(_COLOURS)} {c(_SHAPES)}s and {c(_NUMBERS)} {c(_NOUNS)}s.",
        lambda: f"Please {c(_VERBS)} the {c(_NOUNS)} in the image.",
        lambda: f"I can {c(_VERBS)} a {c(_ADJS)} {c(_NOUNS)} {c(_PLACES)}.",
        lambda: f"USER: <image>\n{c(_QUESTIONS)} ASSISTANT: The image shows a {c(_COLOURS)} {c(_SHAPES)}.",
        lambda: f"USER: {c(_QUESTIONS)} ASSISTANT: It is a {c(_ADJS)} {c(_NOUNS)}.",
        lambda: f"Describe the {c(_COLOURS)} {c(_NOUNS)} next to the {c(_SHAPES)}.",
        lambda: f"In this picture, a {c(_NOUNS)} and a {c(_NOUNS)} are {c(_PLACES)}, {c(_NUMBERS)} times.",
        lambda: f"{c(_QUESTIONS)} {c(_QUESTIONS)}",
        lambda: f"<|im_start|>user\n{c(_QUESTIONS)}<|im_end|>\n<|im_start|>assistant\nA {c(_COLOURS)} {c(_NOUNS)}.",
        lambda: f"The number {c(_NUMBERS)} plus {c(_NUMBERS)} equals {rng.randint(0, 999)}.",
        lambda: f"My {c(_ADJS)} {c(_NOUNS)} likes {c(_COLOURS)} things, isn't it {c(_ADJS)}?",
        lambda: " ".join(c(_WORDS) for _ in range(rng.randint(5, 14))).capitalize() + c([".", "!", "?", ","]),
        lambda: f"{c(_WORDS).capitalize()} {c(_WORDS)} {c(_NOUNS)} {c(_WORDS)} {c(_COLOURS)} {c(_WORDS)}.",
    ]
    return [rng.choice(templates)() for _ in range(n)]


@functools.lru_cache(maxsize=None)
def _trained_tokenizer_json(vocab_size: int = VOCAB_TARGET) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def _make_tokenizer(chat_template: str = "llava"):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POS,
    )
    tok.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>"]},
                           replace_extra_special_tokens=False)
    tok.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
    return tok


def build_tokenizer(path: str, chat_template: str = "llava"):
    """Train (once per process) and save the byte-level BPE tokenizer to ``path``.

    ``chat_template`` is "llava" (default), "chatml", or a jinja template string.
    Returns the ``PreTrainedTokenizerFast``.
    """
    tok = _make_tokenizer(chat_template)
    os.makedirs(path, exist_ok=True)
    tok.save_pretrained(path)
    return tok


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int, scale: float = WEIGHT_SCALE,
               unscaled: tuple[str, ...] = ()) -> None:
    """Scale the (already randomly initialised) matrices by ``scale`` (except parameters whose
    name contains one of ``unscaled``); give norm weights and biases random values (HF inits
    them to 1 / 0, which would hide a dropped norm or bias)."""
    g = torch.Generator().manual_seed(seed + 1000)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            if not any(u in name for u in unscaled):
                p.mul_(scale)
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        else:  # RMSNorm / LayerNorm weights
            p.copy_(0.5 + torch.rand(p.shape, generator=g))


# rope_theta per arch, as their published checkpoints (so an engine that ignores it is caught).
ROPE_THETA = {"llama": 10000.0, "mistral": 1000000.0, "qwen2": 1000000.0, "qwen3": 1000000.0,
              "internlm2": 1000000.0}


# Raw torch seed for ``seed=0`` per model kind, picked so that greedy output for a handful of
# prompts is varied (at least 14 distinct tokens in 32, no run of one token longer than 3).
_BASE_SEED = {"llama": 0, "mistral": 5, "qwen2": 4, "qwen3": 5, "internlm2": 6,
              "llava-llama": 2, "llava-mistral": 6, "llava-next": 2}


def _seed_for(kind: str, seed: int) -> int:
    """Different kinds get different weights for the same ``seed`` (llama and mistral would
    otherwise be identical)."""
    return _BASE_SEED[kind] + 1000 * seed


def _text_config(arch: str, tok, num_layers: int = N_LAYERS, rope_theta: Optional[float] = None):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=num_layers,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POS,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_act="silu",
        rope_parameters={"rope_type": "default",
                         "rope_theta": ROPE_THETA[arch] if rope_theta is None else rope_theta},
    )
    if arch == "llama":
        return LlamaConfig(**common, rms_norm_eps=1e-5)
    if arch == "mistral":
        return MistralConfig(**common, rms_norm_eps=1e-5, sliding_window=None)
    if arch == "qwen2":  # q/k/v carry a bias
        return Qwen2Config(**common, rms_norm_eps=1e-6)
    if arch == "qwen3":  # per-head q/k RMSNorm
        return Qwen3Config(**common, rms_norm_eps=1e-6)
    raise ValueError(f"arch={arch!r}: expected one of {TEXT_ARCHS}")


def _causal_lm_class(arch: str):
    import transformers

    return {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
            "qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM}[arch]


def _generation_config(tok, eos: Union[int, list[int], None] = None):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id if eos is None else eos,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )


def _new_text_model(arch: str, tok, seed: int, rope_theta: Optional[float] = None):
    cfg = _text_config(arch, tok, rope_theta=rope_theta)
    torch.manual_seed(seed)
    model = _causal_lm_class(arch)(cfg).eval()
    _randomize(model, seed)
    return model


def build_text_model(path: str, arch: str, seed: int = 0) -> str:
    """A tiny random ``{Llama,Mistral,Qwen2,Qwen3}ForCausalLM`` saved (safetensors) with the
    tokenizer and a generation_config to ``path``. Returns ``path``."""
    if arch not in TEXT_ARCHS:
        raise ValueError(f"arch={arch!r}: expected one of {TEXT_ARCHS}")
    tok = build_tokenizer(path)
    model = _new_text_model(arch, tok, _seed_for(arch, seed))
    model.generation_config = _generation_config(tok)
    model.save_pretrained(path, safe_serialization=True)
    return path


# --------------------------------------------------------------------------------------------
# InternLM2 (original remote-code layout)
# --------------------------------------------------------------------------------------------

INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
}


def pack_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
              num_kv_heads: int) -> torch.Tensor:
    """Llama q/k/v projection weights -> InternLM2 ``wqkv`` ([(kv*(g+2))*d, hidden]).

    Per kv group: its ``g = num_heads // num_kv_heads`` query heads, then its k head, then v.
    """
    hidden = q.shape[1]
    d = q.shape[0] // num_heads
    g = num_heads // num_kv_heads
    qg = q.reshape(num_kv_heads, g, d, hidden)
    kg = k.reshape(num_kv_heads, 1, d, hidden)
    vg = v.reshape(num_kv_heads, 1, d, hidden)
    return torch.cat([qg, kg, vg], dim=1).reshape(num_kv_heads * (g + 2) * d, hidden).contiguous()


def unpack_wqkv(wqkv: torch.Tensor, num_heads: int, num_kv_heads: int,
                head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_wqkv` (what an engine loading InternLM2 must do)."""
    hidden = wqkv.shape[1]
    g = num_heads // num_kv_heads
    w = wqkv.reshape(num_kv_heads, g + 2, head_dim, hidden)
    q = w[:, :g].reshape(num_heads * head_dim, hidden)
    k = w[:, g].reshape(num_kv_heads * head_dim, hidden)
    v = w[:, g + 1].reshape(num_kv_heads * head_dim, hidden)
    return q, k, v


def llama_to_internlm2_state_dict(sd: dict, num_heads: int, num_kv_heads: int,
                                  num_layers: int) -> dict:
    out = {
        "model.tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "model.norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    for i in range(num_layers):
        p, o = f"model.layers.{i}.", f"model.layers.{i}."
        out[o + "attention.wqkv.weight"] = pack_wqkv(
            sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"],
            sd[p + "self_attn.v_proj.weight"], num_heads, num_kv_heads)
        out[o + "attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[o + "feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[o + "feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        out[o + "feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        out[o + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[o + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def internlm2_ref_path(path: str) -> str:
    return os.path.normpath(path) + "_llama_ref"


def build_internlm2(path: str, seed: int = 0) -> tuple[str, str]:
    """An InternLM2 checkpoint in the published ``internlm/internlm2-chat-7b`` layout at ``path``
    and a transformers Llama with the same weights at ``path + "_llama_ref"``.

    Both carry the same tokenizer (ChatML chat template as InternLM2-chat) and a
    generation_config whose eos is ``[</s>, <|im_end|>]`` (as published).
    Returns ``(internlm2_path, llama_ref_path)``.
    """
    from safetensors.torch import save_file

    ref = internlm2_ref_path(path)
    tok = build_tokenizer(path, chat_template="chatml")
    build_tokenizer(ref, chat_template="chatml")
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]

    model = _new_text_model("llama", tok, _seed_for("internlm2", seed),
                            rope_theta=ROPE_THETA["internlm2"])
    model.generation_config = _generation_config(tok, eos)
    model.save_pretrained(ref, safe_serialization=True)

    cfg = model.config
    sd = llama_to_internlm2_state_dict(model.state_dict(), cfg.num_attention_heads,
                                       cfg.num_key_value_heads, cfg.num_hidden_layers)
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "attn_implementation": "eager",
        "auto_map": dict(INTERNLM2_AUTO_MAP),
        "bias": False,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "model_type": "internlm2",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads,
        "pad_token_id": tok.pad_token_id,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": float(_rope_theta(cfg)),
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": _tf_version(),
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    gen = {"bos_token_id": tok.bos_token_id, "eos_token_id": eos,
           "pad_token_id": tok.pad_token_id, "transformers_version": _tf_version()}
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    return path, ref


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def _rope_theta(cfg) -> float:
    rp = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rp, dict) and "rope_theta" in rp:
        return rp["rope_theta"]
    return getattr(cfg, "rope_theta", 10000.0)


# --------------------------------------------------------------------------------------------
# LLaVA
# --------------------------------------------------------------------------------------------

VISION_IMAGE_SIZE = 56
VISION_PATCH = 14
IMAGE_TOKENS_PER_IMAGE = (VISION_IMAGE_SIZE // VISION_PATCH) ** 2  # 16 ("default" drops CLS)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@contextlib.contextmanager
def empty_video_slot():
    """Processors with a video slot (Qwen2-VL, InternVL, SmolVLM) need torchvision to fill it; while
    this holds, the slot may be left ``None`` when one is built (``video_processor=None``)."""
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.check_argument_for_proper_class

    def lenient(self, name, arg):
        return None if arg is None else original(self, name, arg)

    ProcessorMixin.check_argument_for_proper_class = lenient
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = original


def save_processor(proc, path: str) -> None:
    """``proc.save_pretrained(path)``, skipping the slots left empty (see ``empty_video_slot``): what
    transformers writes, less the ``video_processor`` entry it cannot make without torchvision."""
    cls = type(proc)
    original = cls.__dict__.get("get_attributes")
    filled = [a for a in cls.get_attributes() if getattr(proc, a, None) is not None]
    cls.get_attributes = classmethod(lambda c: list(filled))
    try:
        proc.save_pretrained(path)
    finally:
        if original is None:
            del cls.get_attributes
        else:
            cls.get_attributes = original


def _image_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": VISION_IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )


def build_llava(path: str, lm: str = "llama", seed: int = 0) -> str:
    """A tiny random ``LlavaForConditionalGeneration`` (CLIP 56px/14 -> 16 tokens per image) with
    tokenizer, CLIP image processor and LlavaProcessor saved to ``path``. Returns ``path``."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava import LlavaProcessor

    if lm not in ("llama", "mistral"):
        raise ValueError(f"lm={lm!r}: expected 'llama' or 'mistral'")
    tok = _make_tokenizer("llava")
    vision = CLIPVisionConfig(
        image_size=VISION_IMAGE_SIZE, patch_size=VISION_PATCH, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, projection_dim=32,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    text = _text_config(lm, tok)
    seed = _seed_for("llava-" + lm, seed)
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", tie_word_embeddings=False,
        image_seq_length=IMAGE_TOKENS_PER_IMAGE,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    # Projector output layer at init scale: scaled too, image features came out ~80x the text
    # embeddings (rms); this way ~15x, closer to real LLaVA.
    _randomize(model, seed, unscaled=("multi_modal_projector.linear_2",))
    model.generation_config = _generation_config(tok)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)

    proc = LlavaProcessor(
        image_processor=_image_processor(), tokenizer=tok, patch_size=VISION_PATCH,
        vision_feature_select_strategy="default", chat_template=tok.chat_template,
        image_token=IMAGE_TOKEN, num_additional_image_tokens=1,
    )
    proc.save_pretrained(path)  # processor_config.json (nests the image processor), tokenizer
    # Also the classic preprocessor_config.json, as llava-hf checkpoints ship it, so that
    # AutoImageProcessor.from_pretrained(path) works on its own.
    proc.image_processor.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# LLaVA-NeXT: 56px tiles, pinpoints up to 2x2 tiles (so a 112x56 image takes 1x2 tiles).
NEXT_PINPOINTS = [[56, 112], [112, 56], [112, 112], [56, 168], [168, 56]]


def build_llava_next(path: str, seed: int = 0) -> str:
    """A tiny random ``LlavaNextForConditionalGeneration`` (CLIP 56px/14 tiles, anyres) with
    tokenizer, LlavaNextImageProcessorPil and LlavaNextProcessor saved to ``path``."""
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)

    tok = _make_tokenizer("llava")
    vision = CLIPVisionConfig(
        image_size=VISION_IMAGE_SIZE, patch_size=VISION_PATCH, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, projection_dim=32,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    seed = _seed_for("llava-next", seed)
    cfg = LlavaNextConfig(
        vision_config=vision, text_config=_text_config("llama", tok), image_token_id=tok.image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False, image_grid_pinpoints=NEXT_PINPOINTS, image_seq_length=IMAGE_TOKENS_PER_IMAGE,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    _randomize(model, seed, unscaled=("multi_modal_projector.linear_2",))
    with torch.no_grad():  # a visible newline vector, not init noise
        model.model.image_newline.normal_(0, 1.0)
    model.generation_config = _generation_config(tok)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    image_proc = LlavaNextImageProcessorPil(
        size={"shortest_edge": VISION_IMAGE_SIZE}, crop_size={"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE},
        image_grid_pinpoints=NEXT_PINPOINTS, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    proc = LlavaNextProcessor(image_processor=image_proc, tokenizer=tok, patch_size=VISION_PATCH,
                              vision_feature_select_strategy="default", chat_template=tok.chat_template,
                              image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    proc.save_pretrained(path)
    image_proc.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------
# Reference helpers
# --------------------------------------------------------------------------------------------

def _read_config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def _is_llava(model_dir: str) -> bool:
    return _read_config(model_dir).get("model_type") in ("llava", "llava_next", "deepseek_vl", "deepseek_vl_hybrid", "gemma3")


def _reference_dir(model_dir: str) -> str:
    """transformers can't load InternLM2 (remote code): use its Llama twin."""
    if _read_config(model_dir).get("model_type") == "internlm2":
        ref = internlm2_ref_path(model_dir)
        if not os.path.isdir(ref):
            raise FileNotFoundError(f"{model_dir} is InternLM2; its reference {ref} is missing")
        return ref
    return model_dir


@functools.lru_cache(maxsize=None)
def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    # InternLM2's config.json has an auto_map: AutoTokenizer on that folder asks on stdin whether
    # to run its (absent) remote code unless trust_remote_code=False, and then warns about the
    # unknown model type. Its Llama twin holds the same tokenizer files, so read those.
    return AutoTokenizer.from_pretrained(_reference_dir(model_dir), trust_remote_code=False)


@functools.lru_cache(maxsize=None)
def load_processor(model_dir: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir)


@functools.lru_cache(maxsize=None)
def load_hf_model(model_dir: str):
    """The transformers reference model (fp32, eval), cached per path."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    model_dir = _reference_dir(model_dir)
    cls = AutoModelForImageTextToText if _is_llava(model_dir) else AutoModelForCausalLM
    return cls.from_pretrained(model_dir, dtype=torch.float32).eval()


def render_chat(model_dir: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text the model's own chat template gives for ``messages``."""
    return load_tokenizer(model_dir).apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def hf_inputs(model_dir: str, messages: list[dict], images: Optional[Sequence[Any]] = None) -> dict:
    """Reference model inputs: chat template (generation prompt, untokenized), then the tokenizer
    (text models) or the saved LlavaProcessor (LLaVA), both with ``add_special_tokens=False``.
    Returns ``input_ids``, ``attention_mask`` and, with images, ``pixel_values`` (torch tensors)."""
    text = render_chat(model_dir, messages)
    images = list(images) if images else []
    if _is_llava(model_dir):
        proc = load_processor(model_dir)
        out = proc(text=text, images=images or None, add_special_tokens=False, return_tensors="pt")
    else:
        if images:
            raise ValueError(f"{model_dir} is a text-only model; got {len(images)} image(s)")
        out = load_tokenizer(model_dir)(text, add_special_tokens=False, return_tensors="pt")
    keep = ("input_ids", "attention_mask", "pixel_values", "image_sizes", "high_res_pixel_values")
    if _read_config(model_dir).get("model_type") == "gemma3":
        keep += ("token_type_ids",)  # marks image tokens: Gemma 3 attends within an image both ways
    return {k: v for k, v in dict(out).items() if k in keep}


@torch.no_grad()
def hf_greedy(model_dir: str, inputs: Union[dict, Sequence[int]], max_new_tokens: int = 32,
              min_new_tokens: int = 0, ignore_eos: bool = False) -> list[int]:
    """Greedy ``generate`` with the transformers reference; returns only the new token ids.

    ``inputs`` is a dict from :func:`hf_inputs` or a plain list of prompt token ids.
    ``min_new_tokens`` masks eos until that many tokens exist (as HF and LMDeploy do);
    ``ignore_eos`` keeps eos selectable (after ``min_new_tokens``) but never stops on it, so
    the output always has ``max_new_tokens`` tokens.
    The returned list ends with the eos id when generation stopped on one.
    """
    model = load_hf_model(model_dir)
    if not isinstance(inputs, dict):
        ids = torch.tensor([list(inputs)], dtype=torch.long)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    inputs = {k: (torch.as_tensor(v) if not torch.is_tensor(v) else v) for k, v in inputs.items()}
    if inputs["input_ids"].ndim == 1:
        inputs = {k: (v[None] if k not in ("pixel_values", "image_sizes") else v) for k, v in inputs.items()}
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError("hf_greedy takes one sequence")
    gen = model.generation_config
    kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                  pad_token_id=gen.pad_token_id)
    if ignore_eos:
        # An id outside the vocabulary never matches, so generation runs to max_new_tokens;
        # min_new_tokens then has to mask the real eos ids itself.
        kwargs["eos_token_id"] = model.config.get_text_config().vocab_size + 12345
        kwargs["min_new_tokens"] = 0
        if min_new_tokens:
            from transformers import LogitsProcessorList

            eos = gen.eos_token_id
            eos = [eos] if isinstance(eos, int) else list(eos or [])
            start = inputs["input_ids"].shape[1]

            def mask_eos(ids, scores):
                if ids.shape[1] - start < min_new_tokens and eos:
                    scores[:, eos] = float("-inf")
                return scores

            kwargs["logits_processor"] = LogitsProcessorList([mask_eos])
    out = model.generate(**inputs, **kwargs)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def make_image(seed: int, size: tuple[int, int] = (64, 48), max_shapes: int = 6):
    """A deterministic RGB image of a few coloured rectangles/ellipses on a coloured background."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    w, h = size
    col = lambda: (rng.randrange(256), rng.randrange(256), rng.randrange(256))  # noqa: E731
    img = Image.new("RGB", (w, h), col())
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, max_shapes)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = rng.randrange(w), rng.randrange(h)
        box = [min(x0, x1), min(y0, y1), max(x0, x1) + 2, max(y0, y1) + 2]
        if rng.random() < 0.5:
            draw.rectangle(box, fill=col())
        else:
            draw.ellipse(box, fill=col())
    return img


__all__ = [
    "build_tokenizer", "build_text_model", "build_internlm2", "build_llava",
    "hf_inputs", "hf_greedy", "make_image", "render_chat", "load_hf_model", "load_tokenizer",
    "load_processor", "pack_wqkv", "unpack_wqkv", "internlm2_ref_path",
    "IMAGE_TOKEN", "IMAGE_TOKENS_PER_IMAGE", "TEXT_ARCHS", "WEIGHT_SCALE",
]


def assert_converted_tensors_equal(source_file: str, converted_dir: str) -> None:
    """A conversion wrote exactly the tensors (names and values) an original checkpoint came from."""
    from safetensors.torch import load_file

    source = load_file(source_file)
    converted = load_file(os.path.join(converted_dir, "model.safetensors"))
    assert set(converted) == set(source)
    for name, w in source.items():
        assert torch.equal(converted[name], w), name
