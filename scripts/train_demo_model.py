"""Train seer's demo VLM from scratch on synthetic scenes (``scripts/scenes.py``).

The model is LLaVA-1.5 in transformers layout (``LlavaForConditionalGeneration``: a small
CLIP vision tower, the two-layer projector, a small Llama decoder) with its own byte-level
BPE tokenizer and a ChatML-style chat template, so seer loads it through exactly the code
path of any LLaVA checkpoint. Training is plain torch: AdamW, loss on the answer tokens
only, every example formatted token for token as seer formats the same conversation at
inference (checked at start-up against ``pipe.family.encode``-equivalent rendering, and at
the end through ``seer.pipeline`` itself).

Each training example is one scene with 1-K question/answer turns (a multi-turn chat: the
image once, then several questions), so the image tokens are paid for once per several
answers; the first turn is always exactly a single-turn prompt.

Reproduce the shipped weights (the default output is ``seer/assets/demo-vlm``)::

    python scripts/train_demo_model.py --threads 2

The shipped weights come from seven runs (see DEMO_MODEL.md for the times; ``training.json``
records each, the run it started from under ``init``): the defaults with ``--threads 2`` trained
on the fixed question templates only (the first shipped model), then six fine-tunings of the
previous weights on the mix of fixed templates, people's phrasings (``scenes.PHRASINGS``,
``scenes.COMPOSED``, ``scenes.EXTRA_PHRASINGS`` with ``scenes.roughen``'s fillers and typos and,
in the last, ``scenes.GRAMMAR7``, wordings7.py's grammar), multi-turn chats and out-of-scope
questions, with the vision tower kept as it was, the last one::

    python scripts/train_demo_model.py --init seer/assets/demo-vlm --vision-steps 0 \
        --freeze-vision --aux-weight 0 --lr 6e-4 --warmup 30 --steps 540 --focus 1 \
        --later-focus 2 --upper-fraction 0.1 --extra-fraction 0.35 --grammar-fraction 0.5 \
        --rough-fraction 0.15 --eval-every 0

and its weights blended 0.75 with 0.25 of the ones it started from (``training.json``'s
``shipped_weights``).

Runs with ``--steps`` are seeded; the same seed, thread count, torch version and CPU give the
same weights. ``--minutes`` sets the step count from the measured speed, so such a run (like
the first five fine-tunings, on a shared machine) is not bit-reproducible.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import scenes  # noqa: E402

sys.path.insert(0, ROOT)
from seer._malloc import trim as trim_heap  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "seer", "assets", "demo-vlm")
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>", IMAGE_TOKEN]
# ChatML turns after a BOS; each image part is "<image>\n" (seer expands it to the image's tokens).
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}{{ '<image>\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + render(message['content']) + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# --------------------------------------------------------------------------------------------
# Tokenizer, processor, model
# --------------------------------------------------------------------------------------------

def build_tokenizer(vocab_size: int = 1024):
    """Byte-level BPE trained on every question/answer form of the scenes (any text still
    encodes: unknown words fall back to pieces and bytes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    lines = scenes.corpus() + ["user", "assistant", "system", "\n"] * 50
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, clean_up_tokenization_spaces=False,
        model_max_length=1024)
    fast.add_special_tokens({"extra_special_tokens": ["<|im_start|>"]}, replace_extra_special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_image_processor(image_size: int):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True, size={"shortest_edge": image_size}, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)


def build_model(tok, a):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        image_size=a.image_size, patch_size=a.patch_size, hidden_size=a.vision_hidden,
        num_hidden_layers=a.vision_layers, num_attention_heads=a.vision_heads,
        intermediate_size=a.vision_hidden * 4, projection_dim=a.vision_hidden, hidden_act="quick_gelu",
        layer_norm_eps=1e-5)
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        head_dim=a.hidden // a.heads, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        hidden_act="silu", rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    tokens = (a.image_size // a.patch_size) ** 2
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False, image_seq_length=tokens)
    torch.manual_seed(a.seed)
    model = LlavaForConditionalGeneration(cfg)
    return model, tokens


# --------------------------------------------------------------------------------------------
# Data: conversations rendered exactly as the chat template renders them
# --------------------------------------------------------------------------------------------

class Encoder:
    """Conversation -> (token ids, labels), token for token what seer's family.encode gives.

    The chat template's text is built from the same pieces here; each piece between special
    tokens is tokenized on its own (byte-level BPE never merges across a special token) and
    memoised. ``check`` compares against the real template + tokenizer."""

    def __init__(self, tok, tokens_per_image: int):
        self.tok = tok
        self.n_img = tokens_per_image
        self.sp = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    @functools.lru_cache(maxsize=200_000)
    def _text(self, s: str) -> tuple[int, ...]:
        return tuple(self.tok(s, add_special_tokens=False)["input_ids"]) if s else ()

    def encode(self, turns: list[tuple[str, str]], image: bool) -> tuple[list[int], list[int]]:
        """``turns``: [(question, answer), ...]; the image (if any) leads the first question."""
        ids, labels, _ = self.encode_split(turns, image)
        return ids, labels

    def encode_split(self, turns, image: bool) -> tuple[list[int], list[int], int]:
        """Also where the part shared by every conversation about the same image ends: after the
        image tokens (or after BOS without an image)."""
        sp = self.sp
        ids = [sp["<s>"]]
        labels = [-100]
        split = 1

        def add(toks, learn=False):
            ids.extend(toks)
            labels.extend(toks if learn else [-100] * len(toks))

        for i, (q, a) in enumerate(turns):
            add([sp["<|im_start|>"]])
            if i == 0 and image:
                add(self._text("user\n"))
                add([sp[IMAGE_TOKEN]] * self.n_img)
                split = len(ids)
                add(self._text("\n" + q))
            else:
                add(self._text("user\n" + q))
            add([sp["<|im_end|>"]])
            add(self._text("\n"))
            add([sp["<|im_start|>"]])
            add(self._text("assistant\n"))
            add(self._text(a), learn=True)
            add([sp["<|im_end|>"]], learn=True)
            add(self._text("\n"))
        return ids, labels, split

    def prompt(self, question: str, image: bool = True, history=()) -> list[int]:
        ids, labels = self.encode(list(history) + [(question, "")], image)
        return ids[: len(ids) - 2]  # drop "<|im_end|>\n" of the empty answer

    def messages(self, turns, image=True):
        msgs = []
        for i, (q, a) in enumerate(turns):
            content = ([{"type": "image"}] if i == 0 and image else []) + [{"type": "text", "text": q}]
            msgs += [{"role": "user", "content": content}, {"role": "assistant", "content": a}]
        return msgs

    def check(self, rng: random.Random, n: int = 200) -> None:
        """Our ids == chat template + tokenizer + image expansion, for random conversations."""
        img = self.sp[IMAGE_TOKEN]
        for _ in range(n):
            scene = scenes.make_scene(scenes.train_scene_seed(rng), size=32)
            qas = [(q, a) for _, q, a in scene.all_questions(rng)][: rng.randint(1, 5)]
            image = rng.random() < 0.9
            text = self.tok.apply_chat_template(self.messages(qas, image), tokenize=False)
            ref = []
            for t in self.tok(text, add_special_tokens=False)["input_ids"]:
                ref.extend([img] * self.n_img if t == img else [t])
            ids, _ = self.encode(qas, image)
            assert ids == ref, (text, ids, ref)
            # the generation prompt of the first turn
            gen = self.tok.apply_chat_template(self.messages(qas[:1], image)[:1], tokenize=False,
                                               add_generation_prompt=True)
            ref = []
            for t in self.tok(gen, add_special_tokens=False)["input_ids"]:
                ref.extend([img] * self.n_img if t == img else [t])
            assert self.prompt(qas[0][0], image) == ref, (gen, ref)


def branches_for(scene, rng: random.Random, a) -> list[list[tuple[str, str]]]:
    """The conversations trained on one image: shape and colour for every object, position for every
    object on each axis where it has a side, a size comparison, the count, the text and the caption;
    then a few multi-turn chats (and with ``--focus``, extra phrased questions of the kinds that
    people's wordings get wrong most often and a chat whose second turn refers back).

    Position questions are where a small model finds a shortcut: answering with the side that all
    the objects together lean to (right for single-object scenes, and for most objects of the
    others) instead of looking up the one asked about. Every question whose answer differs from
    that overall side is asked a second time (another phrasing), so the shortcut stops paying.

    Each single question is asked in one of the fixed templates (``scenes.QUESTIONS``) or, with
    probability ``--phrase-fraction``, in one of people's phrasings (``scenes.PHRASINGS`` with
    ``scenes.vary``'s case, punctuation, article and spelling changes), about the same object.
    Then ``--multi-turn`` chats of 2-4 turns: any kind in any phrasing, an out-of-scope question
    now and then, and follow-ups that refer back ("And the other one?")."""
    ph = scenes.Phraser(scene, extra=a.extra_fraction, grammar=a.grammar_fraction)

    def vary(q):  # scenes.vary (and scenes.roughen), and more all-capitals questions (whose byte pieces are rare)
        q = scenes.vary(q, rng)
        if a.rough_fraction and rng.random() < a.rough_fraction:
            q = scenes.roughen(q, rng)
        return q.upper() if a.upper_fraction and rng.random() < a.upper_fraction else q

    def phrased(kind, obj=None):
        r = ph.ask(kind, rng, obj=obj)
        return None if r is None else (vary(r[0]), r[1])

    def where_question():  # a phrased position question that asks "where" (answer: "at the top left", ...)
        for _ in range(10):
            r = ph.ask("position", rng)
            if r is None:
                return None
            if r[2]["style"] == "where":
                return vary(r[0]), r[1]
        return None

    def maybe_phrase(qa, kind, obj=None):
        if qa is None or rng.random() >= a.phrase_fraction:
            return qa
        return phrased(kind, obj) or qa

    convs = []
    for o in scene.objects:
        for kind in ("shape", "colour"):
            convs.append([maybe_phrase(scene.question(kind, rng, obj=o), kind, o)])
        for axis in ("x", "y"):
            side = scene.side(o, axis)
            if side is None:
                continue
            repeat = 2 if len(scene.objects) > 1 and side != scene.overall_side(axis) else 1
            convs += [[scene.position_question(o, axis, rng)] for _ in range(repeat)]
            if rng.random() < a.phrase_fraction:  # the same object in people's phrasings (any axis/form)
                convs.append([phrased("position", o)])
    convs.append([scene.question("colour", rng, obj=rng.choice(scene.objects))])  # the hardest lookup, again
    # captions of three or four objects, where a small model names one twice or skips one, twice
    captions = ("caption",) * (2 if len(scene.objects) >= 3 else 1)
    for kind in ("count", "bigger", "bigger", "text") + captions:
        qa = maybe_phrase(scene.question(kind, rng), kind)
        if qa:
            convs.append([qa])
    if rng.random() < a.oos_fraction:
        convs.append([phrased("outside")])
    if scene.text is None and rng.random() < 0.2:
        convs.append([phrased("text")])
    # --focus: extra phrased questions of the kinds people's wordings still get wrong most often
    # (colour, position, bigger, the one object on a side), and one chat whose second turn refers back
    for _ in range(a.focus):
        for kind in ("colour", "position", "bigger", rng.choice(("shape", "colour"))):
            qa = phrased(kind)
            if qa is not None:
                convs.append([qa])
        first = ph.ask(rng.choice(("shape", "colour", "position")), rng)
        fu = ph.follow_up(first[2], rng) if first is not None and first[2].get("obj") is not None else None
        if fu is not None:
            conv = [(vary(first[0]), first[1]), (vary(fu[0]), fu[1])]
            if rng.random() < 0.3:  # an earlier question of another kind first
                prev = phrased(rng.choice(("count", "caption", "bigger", "outside")))
                conv = ([prev] if prev else []) + conv
            convs.append(conv)
    # --later-focus: chats whose last question is of a kind that later turns still get wrong (after an
    # out-of-scope question a third of the time): captions, text, "how many", where/which side, size
    # and the one on a side, which the fourth model often answered with the out-of-scope reply or an
    # earlier answer; and one "where" question, whose answer names both sides when the object has both
    for _ in range(a.later_focus):
        conv = []
        for j in range(rng.choice((1, 1, 2))):
            k = "outside" if j == 0 and rng.random() < 0.35 else rng.choice(LATER_PREV_KINDS)
            qa = phrased(k) if k == "outside" or rng.random() < 0.8 else scene.question(k, rng)
            if qa is not None:
                conv.append(qa)
        k = rng.choices(LATER_FOCUS_KINDS, weights=LATER_FOCUS_WEIGHTS)[0]
        if k == "followup":
            first = ph.ask(rng.choice(("shape", "colour", "position")), rng)
            fu = ph.follow_up(first[2], rng) if first is not None and first[2].get("obj") is not None else None
            tail = [] if fu is None else [(vary(first[0]), first[1]), (vary(fu[0]), fu[1])]
        else:
            qa = where_question() if k == "where" else phrased(k)
            tail = [] if qa is None else [qa]
        if tail:
            convs.append(conv + tail)
    if a.later_focus:
        qa = where_question()
        if qa is not None:
            convs.append([qa])
    kinds = ("shape", "colour", "colour", "count", "position", "position", "bigger", "bigger", "text", "caption",
             "outside") if a.focus else ("shape", "colour", "count", "position", "position", "bigger", "text",
                                         "caption", "outside")
    for _ in range(a.multi_turn):
        conv, facts = [], None
        for _ in range(rng.choice((2, 2, 3, 4))):
            fu = ph.follow_up(facts, rng) if facts is not None and rng.random() < 0.5 else None
            if fu is not None:
                conv.append((vary(fu[0]), fu[1]))
                facts = fu[2]
                continue
            kind = rng.choice(kinds)
            if rng.random() < 0.3 and kind not in ("outside",):  # the fixed templates, in later turns too
                qa, facts = scene.question(kind, rng), None
            else:
                r = ph.ask(kind, rng)
                qa, facts = (None, None) if r is None else ((vary(r[0]), r[1]), r[2])
            if qa is not None:
                conv.append(qa)
        if conv:
            convs.append(conv)
    rng.shuffle(convs)
    return convs


# --later-focus: the kinds of the earlier turns, and of the last question (weighted)
LATER_PREV_KINDS = ("shape", "colour", "count", "position", "bigger", "caption")
LATER_FOCUS_KINDS = ("caption", "text", "count", "position", "where", "bigger", "shape", "colour", "followup", "outside")
LATER_FOCUS_WEIGHTS = (2.0, 1.5, 2.0, 1.5, 1.5, 2.0, 2.0, 1.0, 1.5, 0.5)


def make_batch(rng: random.Random, enc: Encoder, processor, a) -> dict:
    """``batch_size`` images; each row is one image's prefix (BOS ... image tokens) followed by
    several conversations about it, packed as branches: each branch attends to the prefix and
    to itself only and has the positions it would have alone, so every branch is exactly a
    single conversation as seer would run it (no answer can be copied from another)."""
    rows, images, scene_list = [], [], []
    for _ in range(a.batch_size):
        if rng.random() < a.chat_fraction:
            convs, image = [[(q, scenes.CHAT_REPLY)] for q in rng.sample(scenes.CHAT_PROMPTS, 3)], False
        else:
            scene = scenes.make_scene(scenes.train_scene_seed(rng))
            images.append(scene.image)
            scene_list.append(scene)
            convs, image = branches_for(scene, rng, a), True
        ids, labels, pos, owner = [], [], [], []  # owner: -1 prefix, else branch index
        for b, conv in enumerate(convs):
            cids, clabels, split = enc.encode_split(conv, image)
            if b == 0:
                ids += cids[:split]
                labels += clabels[:split]
                pos += list(range(split))
                owner += [-1] * split
            ids += cids[split:]
            labels += clabels[split:]
            pos += list(range(split, len(cids)))
            owner += [b] * (len(cids) - split)
        rows.append((ids, labels, pos, owner))
    n = max(len(r[0]) for r in rows)
    B = len(rows)
    ids = torch.full((B, n), enc.tok.pad_token_id, dtype=torch.long)
    labels = torch.full((B, n), -100, dtype=torch.long)
    pos = torch.zeros((B, n), dtype=torch.long)
    owner = torch.full((B, n), -2, dtype=torch.long)
    for i, (r_ids, r_labels, r_pos, r_owner) in enumerate(rows):
        k = len(r_ids)
        ids[i, :k] = torch.tensor(r_ids)
        labels[i, :k] = torch.tensor(r_labels)
        pos[i, :k] = torch.tensor(r_pos)
        owner[i, :k] = torch.tensor(r_owner)
    q, kv = owner[:, :, None], owner[:, None, :]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    mask = causal & ((kv == -1) | (kv == q))
    mask |= torch.eye(n, dtype=torch.bool)  # padding attends to itself (no empty rows)
    # Next-token targets stay inside a branch: a branch's first token is never a target.
    target = labels[:, 1:].clone()
    target[owner[:, 1:] != owner[:, :-1]] = -100
    # Each answer's tokens weigh 1/sqrt(answer length), at least 1/2: a one-word answer is not drowned
    # by captions, and a caption's words still count.
    weight = torch.zeros(target.shape)
    for i, (_, r_labels, _, r_owner) in enumerate(rows):
        lab = torch.tensor(r_labels[1:]) != -100
        own = torch.tensor(r_owner[1:])
        for b in own[lab].unique().tolist():
            sel = lab & (own == b)
            weight[i, : len(lab)][sel] = max(0.5, 1.0 / math.sqrt(int(sel.sum())))
    pixels = processor(images=images, return_tensors="pt")["pixel_values"] if images else None
    grid = a.image_size // a.patch_size
    targets = torch.from_numpy(np.stack([patch_targets(s, grid) for s in scene_list])) if scene_list else None
    return {"input_ids": ids, "targets": target, "weights": weight, "attention_mask": mask[:, None], "position_ids": pos,
            "pixel_values": pixels, "patch_targets": targets}


TEXT_CLASSES = scenes.WORDS + scenes.DIGITS
COLOUR_NAMES = tuple(scenes.COLOURS)
# aux targets per patch: colour (bg + colours), shape (bg + shapes + text), text (none + words/digits),
# centre (is an object's centre in this patch), and the patch's own column and row (so that the
# features keep where they are), and which side of the picture the patch's object is on (none, left,
# right; none, top, bottom), so that "left or right?" is read off the object's own patches
AUX_NAMES = ("colour", "shape", "text", "centre", "column", "row", "side_x", "side_y")
SIDES = {None: 0, "left": 1, "right": 2, "top": 1, "bottom": 2}


def aux_sizes(grid: int) -> tuple[int, ...]:
    return (1 + len(COLOUR_NAMES), 2 + len(scenes.SHAPES), 1 + len(TEXT_CLASSES), 2, grid, grid, 3, 3)


def patch_targets(scene, grid: int) -> np.ndarray:
    """[8, grid*grid] int64 targets for the auxiliary per-patch heads (-100: ignored)."""
    m = np.asarray(scene.mask).astype(np.int64)
    m[m == 255] = 5
    p = scene.size // grid
    counts = np.zeros((grid, grid, 6), np.int64)
    onehot = np.eye(6, dtype=np.int64)[m]  # [size, size, 6]
    counts = onehot.reshape(grid, p, grid, p, 6).sum((1, 3))
    fg = counts[..., 1:].argmax(-1) + 1
    label = np.where(counts[..., 1:].max(-1) >= 0.15 * p * p, fg, 0).reshape(-1)
    colour = np.zeros(grid * grid, np.int64)
    shape = np.zeros(grid * grid, np.int64)
    text = np.zeros(grid * grid, np.int64)
    centre = np.zeros(grid * grid, np.int64)
    # every patch says which side its object is on; background and text patches say "none", so
    # that attention spread past the object asked about does not read a side off them
    side_x = np.zeros(grid * grid, np.int64)
    side_y = np.zeros(grid * grid, np.int64)
    for i, o in enumerate(scene.objects):
        side_x[label == i + 1] = SIDES[scene.side_x(o)]
        side_y[label == i + 1] = SIDES[scene.side_y(o)]
        colour[label == i + 1] = 1 + COLOUR_NAMES.index(o.colour)
        shape[label == i + 1] = 1 + scenes.SHAPES.index(o.shape)
        gx = min(grid - 1, int(o.cx / p))
        gy = min(grid - 1, int(o.cy / p))
        centre[gy * grid + gx] = 1
    is_text = label == 5
    colour[is_text] = -100
    shape[is_text] = 1 + len(scenes.SHAPES)
    if scene.text is not None:
        text[is_text] = 1 + TEXT_CLASSES.index(scene.text)
    column = np.tile(np.arange(grid), grid)
    row = np.repeat(np.arange(grid), grid)
    return np.stack([colour, shape, text, centre, column, row, side_x, side_y])


def forward_hidden(model, batch):
    """What ``model.model(input_ids, pixel_values, attention_mask)`` computes, keeping the vision
    features for the auxiliary heads: (last hidden state, vision features or None)."""
    lm = model.model
    emb = lm.get_input_embeddings()(batch["input_ids"])
    feats = None
    if batch["pixel_values"] is not None:
        vt = lm.vision_tower(batch["pixel_values"], output_hidden_states=True)
        feats = vt.hidden_states[model.config.vision_feature_layer][:, 1:]  # as vision_features()
        img = lm.multi_modal_projector(feats)
        where = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1).expand_as(emb)
        emb = emb.masked_scatter(where, img.reshape(-1, img.shape[-1]).to(emb.dtype))
    out = lm.language_model(inputs_embeds=emb, attention_mask=batch["attention_mask"],
                            position_ids=batch.get("position_ids"))
    return out.last_hidden_state, feats


# text patches are rare: their loss counts more; shapes are what colour questions look objects up by
AUX_WEIGHTS = (1.0, 2.0, 3.0, 1.0, 0.5, 0.5, 1.0, 1.0)


def aux_split(aux_head, feats) -> tuple[torch.Tensor, ...]:
    grid = int(round(feats.shape[1] ** 0.5))
    return aux_head(feats).float().split(aux_sizes(grid), dim=-1)


def aux_loss_fn(aux_head, feats, targets) -> torch.Tensor:
    loss = torch.zeros(())
    for i, part in enumerate(aux_split(aux_head, feats)):
        loss = loss + AUX_WEIGHTS[i] * F.cross_entropy(part.reshape(-1, part.shape[-1]),
                                                        targets[:, i].reshape(-1), ignore_index=-100)
    return loss


def vision_batch(rng: random.Random, processor, a) -> tuple[torch.Tensor, torch.Tensor]:
    grid = a.image_size // a.patch_size
    batch = [scenes.make_scene(scenes.train_scene_seed(rng)) for _ in range(a.vision_batch)]
    pixels = processor(images=[s.image for s in batch], return_tensors="pt")["pixel_values"]
    return pixels, torch.from_numpy(np.stack([patch_targets(s, grid) for s in batch]))


def vision_features(model, pixels):
    out = model.model.vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def loss_fn(model, batch, aux_head=None) -> tuple[torch.Tensor, torch.Tensor]:
    h, feats = forward_hidden(model, batch)
    h = h[:, :-1]
    target = batch["targets"]
    keep = target != -100
    logits = model.lm_head(h[keep])
    w = batch["weights"][keep]
    lm_loss = (F.cross_entropy(logits.float(), target[keep], reduction="none") * w).sum() / w.sum()
    aux = torch.zeros(())
    if aux_head is not None and feats is not None:
        aux = aux_loss_fn(aux_head, feats, batch["patch_targets"])
    return lm_loss, aux


# --------------------------------------------------------------------------------------------
# Quick greedy check (plain torch, no cache) used for progress logging
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def quick_eval(model, enc: Encoder, processor, n: int = 60, max_new: int = 36) -> dict:
    model.eval()
    res = {}
    for kind in scenes.KINDS:
        items = scenes.eval_items(kind, n, start=scenes.EVAL_SEED_START + 500_000_000)
        pixels = processor(images=[s.image for s, _, _ in items], return_tensors="pt")["pixel_values"]
        prompts = [enc.prompt(q) for _, q, _ in items]
        outs = greedy_batch(model, prompts, pixels, enc.tok.eos_token_id, enc.tok.pad_token_id, max_new)
        texts = [enc.tok.decode(o, skip_special_tokens=True).strip() for o in outs]
        if kind == "caption":
            ok = [caption_names_all(t, s) for t, (s, _, _) in zip(texts, items)]
        else:
            ok = [t == ans for t, (_, _, ans) in zip(texts, items)]
        res[kind] = sum(ok) / len(ok)
        if kind == "position":  # the shortcut's failures: the answer is not the side all objects lean to
            hard = [k for k, (s, q, ans) in enumerate(items) if against_overall(s, q, ans)]
            res["position_against_overall"] = sum(ok[k] for k in hard) / max(1, len(hard))
    # held-out phrasings, first turn and later turn (scenes of their own, away from the final eval's)
    for later in (False, True):
        for kind in scenes.PHRASED_KINDS:
            if kind == "followup" and not later:
                continue
            items = scenes.phrased_eval_items(kind, n // 2, later=later,
                                              start=scenes.PHRASED_SEED_START + 500_000_000)
            pixels = processor(images=[s.image for s, _, _, _ in items], return_tensors="pt")["pixel_values"]
            prompts = [enc.prompt(q, history=h) for _, h, q, _ in items]
            outs = greedy_batch(model, prompts, pixels, enc.tok.eos_token_id, enc.tok.pad_token_id, max_new)
            texts = [enc.tok.decode(o, skip_special_tokens=True).strip() for o in outs]
            ok = [scenes.phrased_correct(kind, t, ans, s) for t, (s, _, _, ans) in zip(texts, items)]
            res[("later_" if later else "ho_") + kind] = sum(ok) / len(ok)
    model.train()
    return res


def against_overall(scene, question: str, answer: str) -> bool:
    """A position question about one of several objects whose side is not the objects' overall side."""
    axis = "x" if answer in ("left", "right") else "y"
    return len(scene.objects) > 1 and answer != scene.overall_side(axis)


def caption_names_all(text: str, scene) -> bool:
    words = text.replace(",", " ").split()
    phrases = [" ".join(words[i:i + 2]) for i in range(len(words) - 1)]
    return all(o.name in phrases for o in scene.objects)


@torch.no_grad()
def greedy_batch(model, prompts, pixels, eos, pad, max_new):
    """Left-padded batched greedy decoding with transformers' own cache."""
    n = max(map(len, prompts))
    ids = torch.full((len(prompts), n), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, n - len(p):] = torch.tensor(p)
        mask[i, n - len(p):] = 1
    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, do_sample=False,
                         max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad)
    res = []
    for row in out[:, n:].tolist():
        res.append(row[: row.index(eos)] if eos in row else row)
    return res


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the shipped run: 2)")
    ap.add_argument("--steps", type=int, default=1200,
                    help="optimizer steps of phase 2 (with phase 1, the defaults take about 50 minutes on 2 cores)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="instead of --steps: train for about this long (steps are estimated from the "
                         "speed of the first steps, so a run is NOT bit-reproducible this way)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--phrase-fraction", type=float, default=0.6,
                    help="share of single questions asked in people's phrasings instead of the fixed templates")
    ap.add_argument("--multi-turn", type=int, default=2, help="multi-turn chats per image (2-4 turns each)")
    ap.add_argument("--oos-fraction", type=float, default=0.5,
                    help="chance per image of an extra out-of-scope question (answered with scenes.OUT_OF_SCOPE_REPLY)")
    ap.add_argument("--focus", type=int, default=0,
                    help="rounds per image of extra phrased colour, position, bigger and shape/colour questions "
                         "and a two-turn chat with a follow-up (the fourth fine-tuning: 1)")
    ap.add_argument("--later-focus", type=int, default=0,
                    help="chats per image whose last turn is a phrased caption, text, count, position, where, size, "
                         "shape, colour or follow-up question after 1-2 earlier turns (often out of scope), plus "
                         "one 'where' question (the fifth fine-tuning: 2)")
    ap.add_argument("--upper-fraction", type=float, default=0.0,
                    help="share of phrased questions put in all capitals on top of scenes.vary's (fourth fine-tuning: 0.08)")
    ap.add_argument("--extra-fraction", type=float, default=0.0,
                    help="share of phrased questions in scenes.EXTRA_PHRASINGS' wordings (sixth fine-tuning: 0.35)")
    ap.add_argument("--grammar-fraction", type=float, default=0.0,
                    help="share of phrased questions drawn from scenes.GRAMMAR7 (wordings7.py's grammar; "
                         "seventh fine-tuning: 0.5)")
    ap.add_argument("--rough-fraction", type=float, default=0.0,
                    help="share of phrased questions given scenes.roughen's fillers and typos (sixth fine-tuning: 0.15)")
    ap.add_argument("--init", default=None,
                    help="start from this trained model folder (its weights and tokenizer) instead of from scratch; "
                         "use with --vision-steps 0")
    ap.add_argument("--freeze-vision", action="store_true",
                    help="keep the vision tower as it is (phase 2 trains the projector and the decoder)")
    ap.add_argument("--chat-fraction", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--vision-hidden", type=int, default=128)
    ap.add_argument("--vision-layers", type=int, default=3)
    ap.add_argument("--vision-heads", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=6)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast for the matmuls (about 2x faster on CPUs with AVX512-BF16/AMX); "
                         "the weights and optimizer state stay fp32")
    ap.add_argument("--vision-steps", type=int, default=3000, help="phase 1: vision tower alone")
    ap.add_argument("--vision-lr", type=float, default=2e-3)
    ap.add_argument("--vision-batch", type=int, default=32)
    ap.add_argument("--aux-weight", type=float, default=0.5, help="weight of the per-patch auxiliary losses")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=400, help="quick greedy eval every N steps (0: end only)")
    ap.add_argument("--bench", type=int, default=0, help="only time N steps and exit")
    return ap.parse_args(argv)


def make_optimizer(named, lr, weight_decay):
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))


def pretrain_vision(model, aux_head, rng, processor, a) -> None:
    """Phase 1: the vision tower alone, on the per-patch targets (cheap: no decoder)."""
    named = [("v." + n, p) for n, p in model.model.vision_tower.named_parameters()]
    named += [("aux." + n, p) for n, p in aux_head.named_parameters()]
    opt = make_optimizer(named, a.vision_lr, a.weight_decay)
    t0, ema = time.time(), None
    for step in range(a.vision_steps):
        scale = min(1.0, (step + 1) / 100) * (0.55 + 0.45 * math.cos(math.pi * step / a.vision_steps))
        for g in opt.param_groups:
            g["lr"] = a.vision_lr * scale
        pixels, targets = vision_batch(rng, processor, a)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = aux_loss_fn(aux_head, vision_features(model, pixels), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % a.log_every == 0:
            print(f"vision step {step + 1}/{a.vision_steps} aux {ema:.3f} {time.time() - t0:.0f}s", flush=True)
    print(f"vision pretraining: {time.time() - t0:.0f}s; held-out patch accuracy "
          + " ".join(f"{k} {v:.2f}" for k, v in patch_accuracy(model, aux_head, processor, a).items()), flush=True)


@torch.no_grad()
def patch_accuracy(model, aux_head, processor, a, n: int = 200) -> dict:
    grid = a.image_size // a.patch_size
    batch = [scenes.make_scene(scenes.EVAL_SEED_START + 900_000_000 + i) for i in range(n)]
    pixels = processor(images=[s.image for s in batch], return_tensors="pt")["pixel_values"]
    t = torch.from_numpy(np.stack([patch_targets(s, grid) for s in batch]))
    res = {}
    for i, (name, part) in enumerate(zip(AUX_NAMES, aux_split(aux_head, vision_features(model, pixels)))):
        fg = t[:, i] > 0 if i < 4 else t[:, i] >= 0  # the others: every patch with a target
        res[name] = ((part.argmax(-1) == t[:, i]) & fg).sum().item() / max(1, fg.sum().item())
    return res


def save(model, tok, processor, out: str, a, meta: dict) -> None:
    from transformers import GenerationConfig
    from transformers.models.llava import LlavaProcessor

    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f != "__init__.py":
            os.remove(os.path.join(out, f))
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    proc = LlavaProcessor(image_processor=processor, tokenizer=tok, patch_size=a.patch_size,
                          vision_feature_select_strategy="default", chat_template=tok.chat_template,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    proc.save_pretrained(out)
    processor.save_pretrained(out)
    tok.save_pretrained(out)
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(meta, f, indent=2)


def main(argv=None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    processor = build_image_processor(a.image_size)
    if a.init:  # fine-tune a trained model: its tokenizer (unchanged) and weights
        from transformers import AutoTokenizer, LlavaForConditionalGeneration

        tok = AutoTokenizer.from_pretrained(a.init)
        tok.chat_template = CHAT_TEMPLATE
        model = LlavaForConditionalGeneration.from_pretrained(a.init, dtype=torch.float32)
        n_img = model.config.image_seq_length
        torch.manual_seed(a.seed)
    else:
        tok = build_tokenizer()
        model, n_img = build_model(tok, a)
    if a.freeze_vision:
        model.model.vision_tower.requires_grad_(False)
    enc = Encoder(tok, n_img)
    enc.check(random.Random(a.seed + 1))
    n_params = sum(p.numel() for p in model.parameters())
    n_vis = sum(p.numel() for p in model.model.vision_tower.parameters())
    print(f"vocab {len(tok)}, {n_img} image tokens, params {n_params / 1e6:.2f}M "
          f"(vision {n_vis / 1e6:.2f}M), threads {a.threads}", flush=True)

    # Auxiliary per-patch heads on the vision features (colour, shape, text, object centre, place): they
    # give the vision tower a direct signal; they are not part of the saved model.
    aux_head = torch.nn.Linear(a.vision_hidden, sum(aux_sizes(a.image_size // a.patch_size)))
    t0 = time.time()
    if a.vision_steps:
        pretrain_vision(model, aux_head, rng, processor, a)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    named += [("aux." + n, p) for n, p in aux_head.named_parameters()]
    opt = make_optimizer(named, a.lr, a.weight_decay)
    model.train()
    t1 = time.time()
    budget_s = None if a.minutes is None else a.minutes * 60 - (t1 - t0)
    steps = a.steps if budget_s is None else 10 ** 9
    ema = None
    step = 0
    while step < steps:
        if budget_s is not None and step >= 50 and step % 50 == 0:  # the step count from the measured speed
            per = (time.time() - t1) / step  # (re-estimated as it goes: a shared machine's speed varies)
            steps = max(step + 1, int(budget_s / per))
            print(f"{per:.3f} s/step -> {steps} steps", flush=True)
        lr_scale = min(1.0, (step + 1) / a.warmup)
        if budget_s is None or step >= 50:
            lr_scale *= 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))
        for g in opt.param_groups:
            g["lr"] = a.lr * lr_scale
        batch = make_batch(rng, enc, processor, a)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            lm_loss, aux_loss = loss_fn(model, batch, aux_head if a.aux_weight > 0 else None)
        loss = lm_loss + a.aux_weight * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            # every batch has its own shapes, and glibc serves their freed activations from a heap
            # that only grows (the seventh run reached 15 GB resident in 40 minutes; 3.7 GB trimmed)
            trim_heap()
        cur = (lm_loss.item(), aux_loss.item())
        ema = cur if ema is None else tuple(0.98 * e + 0.02 * c for e, c in zip(ema, cur))
        if a.bench and step >= a.bench:
            print(f"bench: {(time.time() - t1) / step:.3f} s/step, loss {ema[0]:.3f} aux {ema[1]:.3f}")
            return
        if step % a.log_every == 0:
            print(f"step {step}/{steps if steps < 10 ** 9 else '?'} loss {ema[0]:.4f} aux {ema[1]:.3f} "
                  f"lr {a.lr * lr_scale:.2e} {time.time() - t0:.0f}s", flush=True)
        if a.eval_every and step % a.eval_every == 0:
            r = quick_eval(model, enc, processor)
            print("  eval " + " ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    train_s = time.time() - t0
    r = quick_eval(model, enc, processor, n=200)
    print("final quick eval " + " ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    meta = {"seed": a.seed, "steps": step, "threads": a.threads, "train_seconds": round(train_s),
            "torch": torch.__version__, "args": vars(a), "quick_eval": r}
    if a.init:  # the run this one fine-tuned: its record stays part of the recipe
        try:
            with open(os.path.join(a.init, "training.json")) as f:
                meta["init"] = json.load(f)
        except OSError:
            pass
    save(model.eval(), tok, processor, a.out, a, meta)
    print(f"saved to {a.out} after {train_s / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
