"""Random-weight checkpoints for benchmarks, built offline and cached under ``.bench/``.

``build_llava_100m(path)`` writes a LLaVA-1.5-shaped ``LlavaForConditionalGeneration`` of about
100M parameters (CLIP 336px/14 tower -> 576 image tokens, Llama decoder 640 x 12 layers, vocab 32000)
in transformers layout, with a byte-level BPE tokenizer (vocab 32000, ``<image>`` special token,
LLaVA-1.5 chat template), a CLIP image processor and a LlavaProcessor, so that both seer and
transformers load it from the folder. ``build_llava_100m_lm(llava_path, path)`` writes its language
model alone as a plain ``LlamaForCausalLM`` (same weights, same tokenizer) for text-only peers.

Weights are random: transformers' init, matrices scaled by ``WEIGHT_SCALE`` so greedy output is not
one repeated token. Only shapes matter for speed.

Run as a script to build (or reuse) the cached folders and print parameter counts:
    python benchmarks/models.py [--out .bench/llava-100m]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import torch  # noqa: E402

try:  # "Writing model shards" bars
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, ".bench")
DEFAULT_LLAVA = os.path.join(BENCH_DIR, "llava-100m")
DEFAULT_LM = os.path.join(BENCH_DIR, "llava-100m-lm")
BUILD_VERSION = 2  # bump when the recipe changes, so cached folders are rebuilt

VOCAB_SIZE = 32000
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
WEIGHT_SCALE = 3.0

VISION = dict(image_size=336, patch_size=14, hidden_size=384, num_hidden_layers=6,
              num_attention_heads=6, intermediate_size=1536, projection_dim=384,
              hidden_act="quick_gelu", layer_norm_eps=1e-5)
TEXT = dict(hidden_size=640, num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=10,
            head_dim=64, intermediate_size=1728, vocab_size=VOCAB_SIZE, max_position_embeddings=4096,
            rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
IMAGE_TOKENS = (VISION["image_size"] // VISION["patch_size"]) ** 2  # 576 ("default": CLS dropped)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

from tiny_models import LLAVA_CHAT_TEMPLATE  # noqa: E402  (tests/tiny_models.py: the same template)

_ENGLISH = ("the of and to in is you that it he was for on are as with his they at be this have from "
            "or had by word but not what all were we when your can said there use an each which she do "
            "how their if will up other about out many then them these so some her would make like him "
            "into time has look two more write go see number no way could people my than water been call "
            "who oil its now long down day did get come made may part over new sound take only little "
            "work know place year live me back give most very after thing our just great where help "
            "through much before line right too mean old any same tell boy follow came want show also "
            "around form three small set put end does another well large must big even such because "
            "turn here why ask went men read need land different home us move try kind hand picture "
            "again change off play spell air away animal house point page letter mother answer found "
            "study still learn should world high every near add food between own below country plant "
            "last school father keep never start city earth eye light thought head under story saw left "
            "image photo describe colour color shape circle square red green blue what where which how "
            "many is there a an in on of the picture scene detail object objects left right top bottom").split()
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "pl", "pr", "sc", "sh", "sk", "sl", "sp",
           "st", "str", "th", "tr", "wh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oa", "oo", "ou", "y"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "ng", "nd", "st", "ck", "x"]


def _pseudo_words(n: int, rng: random.Random) -> list[str]:
    words, seen = [], set()
    while len(words) < n:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                    for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def _corpus(seed: int = 0, lines: int = 60000) -> list[str]:
    """Lines of pseudo-random words (Zipf-ish frequencies), English glue words, numbers and chat
    markup: enough distinct frequent pieces for ~32k BPE merges."""
    rng = random.Random(seed)
    vocab = _ENGLISH + _pseudo_words(40000, rng)
    weights = [1.0 / (i + 10) ** 0.8 for i in range(len(vocab))]
    out = []
    for i in range(lines):
        n = rng.randint(8, 30)
        words = rng.choices(vocab, weights=weights, k=n)
        if rng.random() < 0.3:
            words[rng.randrange(n)] = str(rng.randint(0, 99999))
        line = " ".join(words)
        if rng.random() < 0.2:
            line = line.capitalize() + rng.choice([".", "?", "!", ","])
        if i % 10 == 0:
            line = f"USER: {IMAGE_TOKEN}\n{line} ASSISTANT: {line[::-1]}"
        out.append(line)
    return out


def build_tokenizer(path: str, seed: int = 0):
    """Train a byte-level BPE (vocab 32000) and save it, LLaVA-1.5 chat template included."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, clean_up_tokenization_spaces=False,
        model_max_length=TEXT["max_position_embeddings"], padding_side="left")
    fast.chat_template = LLAVA_CHAT_TEMPLATE
    os.makedirs(path, exist_ok=True)
    fast.save_pretrained(path)
    return fast


def _image_processor():
    from transformers import CLIPImageProcessorPil

    size = VISION["image_size"]
    return CLIPImageProcessorPil(
        do_resize=True, size={"shortest_edge": size}, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)


def count_params(model: torch.nn.Module) -> dict:
    parts = {"vision": 0, "projector": 0, "language_model": 0}
    for name, p in model.named_parameters():
        key = ("vision" if "vision_tower" in name else "projector" if "multi_modal_projector" in name
               else "language_model")
        parts[key] += p.numel()
    parts["total"] = sum(parts.values())
    return parts


def _stamp(path: str) -> dict | None:
    f = os.path.join(path, "bench_build.json")
    if not os.path.isfile(f):
        return None
    with open(f) as fh:
        return json.load(fh)


def build_llava_100m(path: str = DEFAULT_LLAVA, seed: int = 0, force: bool = False) -> dict:
    """Build (or reuse, when an identical build is cached at ``path``) the ~100M LLaVA.

    Returns the build record: parameter counts per part, seed, recipe version.
    """
    stamp = _stamp(path)
    if stamp and not force and stamp.get("version") == BUILD_VERSION and stamp.get("seed") == seed:
        return stamp
    from transformers import (CLIPVisionConfig, GenerationConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)
    from transformers.models.llava import LlavaProcessor

    t0 = time.time()
    if os.path.isdir(path):
        shutil.rmtree(path)
    tok = build_tokenizer(path, seed)
    text = LlamaConfig(**TEXT, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**VISION), text_config=text,
                      image_token_id=tok.image_token_id, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      tie_word_embeddings=False, image_seq_length=IMAGE_TOKENS)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "multi_modal_projector.linear_2" not in name:
                p.mul_(WEIGHT_SCALE)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    model.save_pretrained(path, safe_serialization=True)
    proc = LlavaProcessor(image_processor=_image_processor(), tokenizer=tok, patch_size=VISION["patch_size"],
                          vision_feature_select_strategy="default", chat_template=tok.chat_template,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    proc.save_pretrained(path)
    proc.image_processor.save_pretrained(path)
    tok.save_pretrained(path)
    record = {"version": BUILD_VERSION, "seed": seed, "params": count_params(model),
              "tokenizer_vocab": len(tok), "image_tokens": IMAGE_TOKENS, "weight_scale": WEIGHT_SCALE,
              "vision": VISION, "text": {k: v for k, v in TEXT.items() if k != "rope_parameters"},
              "build_seconds": round(time.time() - t0, 1)}
    with open(os.path.join(path, "bench_build.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record


def build_llava_100m_lm(llava_path: str = DEFAULT_LLAVA, path: str = DEFAULT_LM, force: bool = False) -> dict:
    """The LLaVA's language model as a plain ``LlamaForCausalLM`` folder (same weights and tokenizer)."""
    src = _stamp(llava_path)
    if src is None:
        raise FileNotFoundError(f"{llava_path} is not a built benchmark LLaVA; run build_llava_100m first")
    stamp = _stamp(path)
    if stamp and not force and stamp.get("source") == src:
        return stamp
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlavaConfig

    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    cfg = LlavaConfig.from_pretrained(llava_path)
    sd = {}
    for f in sorted(os.listdir(llava_path)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(llava_path, f)))
    # transformers 5 may save either layout: "model.language_model.*" + "lm_head.*", or the
    # llava-hf 4.x one, "language_model.model.*" + "language_model.lm_head.*".
    prefixes = (("model.language_model.", "model."), ("language_model.model.", "model."),
                ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."))
    out = {}
    for name, w in sd.items():
        for old, new in prefixes:
            if name.startswith(old):
                out[new + name[len(old):]] = w
                break
    if "lm_head.weight" not in out or "model.embed_tokens.weight" not in out:
        raise ValueError(f"could not find the language model in {llava_path}: {sorted(sd)[:6]}...")
    save_file(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    text = cfg.text_config.to_dict()
    text["architectures"] = ["LlamaForCausalLM"]
    text["model_type"] = "llama"
    text["dtype"] = "float32"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(text, f, indent=2)
    shutil.copy(os.path.join(llava_path, "generation_config.json"), path)
    AutoTokenizer.from_pretrained(llava_path).save_pretrained(path)
    n = sum(w.numel() for w in out.values())
    record = {"source": src, "params": n}
    with open(os.path.join(path, "bench_build.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_LLAVA)
    ap.add_argument("--lm-out", default=DEFAULT_LM)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    a = ap.parse_args(argv)
    rec = build_llava_100m(a.out, a.seed, a.force)
    lm = build_llava_100m_lm(a.out, a.lm_out, a.force)
    p = rec["params"]
    print(f"{a.out}: {p['total'] / 1e6:.1f}M parameters (language model {p['language_model'] / 1e6:.1f}M, "
          f"vision {p['vision'] / 1e6:.1f}M, projector {p['projector'] / 1e6:.2f}M); "
          f"tokenizer vocab {rec['tokenizer_vocab']}; {rec['image_tokens']} image tokens")
    print(f"{a.lm_out}: {lm['params'] / 1e6:.1f}M parameters (LlamaForCausalLM, same weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
