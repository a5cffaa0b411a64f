"""Synthetic scenes for seer's demo VLM: images drawn with PIL, a caption and exact QA pairs.

A scene is 1-4 shapes (distinct shapes, distinct colours) of varied sizes and positions on
a plain, gradient or noisy background, and in some scenes a short printed word or digit.
Everything is a pure function of the seed (``make_scene(seed)``), so training
(``TRAIN_SEEDS``) and evaluation (``EVAL_SEED_START`` onwards) never share a scene seed.

The language is small and regular on purpose (a word-level task for a tiny model):

=========  ==========================================  =====================================
kind       question (one of a few templates)            answer
=========  ==========================================  =====================================
shape      What shape is the red object?                circle
colour     What colour is the circle?                   red
count      How many shapes are there?                   3
position   Is the red circle on the left or the right?  left      (also top / bottom)
bigger     Which is bigger, the circle or the star?     circle    (size ratio >= 1.5 only)
text       What does the text say?                      cat       (scenes with text only)
caption    Describe the image.                          a red circle and a blue star with the word cat
=========  ==========================================  =====================================

Captions name the shapes left to right. Position questions are only asked when the object
is clearly on one side (its centre at least 12% of the width/height from the middle).

Run ``python scripts/scenes.py OUT_DIR [N]`` to write a few scenes with their QA as PNG + text.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 128  # rendered size (pixels); the model's image processor resizes to its own input size

COLOURS = {  # name -> base RGB; each object gets a small jitter around it
    "red": (215, 30, 30),
    "orange": (250, 135, 10),
    "yellow": (240, 215, 20),
    "green": (30, 155, 50),
    "blue": (30, 70, 215),
    "purple": (125, 40, 175),
    "pink": (250, 110, 185),
    "brown": (125, 75, 30),
    "black": (20, 20, 20),
    "white": (248, 248, 248),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "ring", "hexagon")
WORDS = ("cat", "dog", "sun", "car", "hat", "cup", "bus", "pen", "map", "key", "egg", "fox")
DIGITS = tuple("0123456789")
KINDS = ("shape", "colour", "count", "position", "bigger", "text", "caption")
NUMBER_WORDS = {1: "1", 2: "2", 3: "3", 4: "4"}

TRAIN_SEEDS = (0, 1_000_000_000)  # [start, stop) of scene seeds used for training
EVAL_SEED_START = 2_000_000_000  # held-out scenes: seeds from here on

POSITION_MARGIN = 0.12  # a side is only asked about when the centre is this far from the middle
BIGGER_RATIO = 1.5  # "which is bigger" only when the radii differ by this factor

QUESTIONS = {
    "shape": ("What shape is the {colour} object?", "What is the {colour} shape?"),
    "colour": ("What colour is the {shape}?", "What is the colour of the {shape}?"),
    "count": ("How many shapes are there?", "How many objects are in the image?"),
    "position_x": ("Is the {ref} on the left or the right?", "Is the {ref} on the right or the left?"),
    "position_y": ("Is the {ref} at the top or the bottom?", "Is the {ref} at the bottom or the top?"),
    "bigger": ("Which is bigger, the {a} or the {b}?", "Which shape is bigger, the {a} or the {b}?"),
    "text": ("What does the text say?", "What is written in the image?", "Read the text."),
    "caption": ("Describe the image.", "What is in the image?", "Describe this picture."),
}
# Text-only prompts (no image): the model answers with one fixed line.
CHAT_PROMPTS = ("Hello!", "Hi", "Who are you?", "What can you do?", "Hello, who are you?",
                "What is this?", "Help")
CHAT_REPLY = "I am a small vision model. Show me an image of shapes and ask about it."


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass
class Obj:
    shape: str
    colour: str
    cx: float
    cy: float
    r: float  # radius of the shape's bounding circle

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    seed: int
    image: Image.Image
    objects: list[Obj]
    text: Optional[str] = None  # the printed word or digit, if any
    background: str = ""
    size: int = SIZE
    mask: Optional[Image.Image] = None  # "L": 0 background, i+1 for objects[i], 255 for text glyphs

    # ---- language --------------------------------------------------------------------------
    def caption(self) -> str:
        names = [f"{article(o.colour)} {o.name}" for o in sorted(self.objects, key=lambda o: o.cx)]
        text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        if self.text is not None:
            text += f" with the {'number' if self.text.isdigit() else 'word'} {self.text}"
        return text

    def side(self, o: Obj, axis: str) -> Optional[str]:
        return self.side_x(o) if axis == "x" else self.side_y(o)

    def overall_side(self, axis: str) -> str:
        """The side the objects together lean to along ``axis`` (their area-weighted centre)."""
        w = sum(o.r ** 2 for o in self.objects)
        c = sum((o.cx if axis == "x" else o.cy) * o.r ** 2 for o in self.objects) / w
        return ("left", "right")[c >= self.size / 2] if axis == "x" else ("top", "bottom")[c >= self.size / 2]

    def position_question(self, o: Obj, axis: str, rng: random.Random) -> tuple[str, str]:
        """Where ``o`` is along ``axis`` (which must be one where it has a side)."""
        ref = o.shape if rng.random() < 0.5 else o.name
        return rng.choice(QUESTIONS["position_" + axis]).format(ref=ref), self.side(o, axis)

    def side_x(self, o: Obj) -> Optional[str]:
        d = (o.cx - self.size / 2) / self.size
        return None if abs(d) < POSITION_MARGIN else ("left" if d < 0 else "right")

    def side_y(self, o: Obj) -> Optional[str]:
        d = (o.cy - self.size / 2) / self.size
        return None if abs(d) < POSITION_MARGIN else ("top" if d < 0 else "bottom")

    def can_ask(self, kind: str) -> bool:
        if kind == "text":
            return self.text is not None
        if kind == "bigger":
            return bool(self._bigger_pairs())
        if kind == "position":
            return any(self.side_x(o) or self.side_y(o) for o in self.objects)
        return True

    def _bigger_pairs(self) -> list[tuple[Obj, Obj]]:
        return [(a, b) for i, a in enumerate(self.objects) for b in self.objects[i + 1:]
                if max(a.r, b.r) >= BIGGER_RATIO * min(a.r, b.r)]

    def question(self, kind: str, rng: random.Random, obj: Optional[Obj] = None) -> Optional[tuple[str, str]]:
        """One ``(question, answer)`` of ``kind``, or None when the scene cannot ask it.
        ``obj`` picks the object that shape, colour and position questions ask about."""
        if not self.can_ask(kind):
            return None
        pick = rng.choice
        if kind == "shape":
            o = obj or pick(self.objects)
            return pick(QUESTIONS["shape"]).format(colour=o.colour), o.shape
        if kind == "colour":
            o = obj or pick(self.objects)
            return pick(QUESTIONS["colour"]).format(shape=o.shape), o.colour
        if kind == "count":
            return pick(QUESTIONS["count"]), NUMBER_WORDS[len(self.objects)]
        if kind == "position":
            options = [(o, axis) for o in ([obj] if obj else self.objects) for axis in "xy" if self.side(o, axis)]
            if not options:
                return None
            o, axis = pick(options)
            return self.position_question(o, axis, rng)
        if kind == "bigger":
            a, b = pick(self._bigger_pairs())
            if rng.random() < 0.5:
                a, b = b, a
            big = a if a.r > b.r else b
            return pick(QUESTIONS["bigger"]).format(a=a.shape, b=b.shape), big.shape
        if kind == "text":
            return pick(QUESTIONS["text"]), self.text
        if kind == "caption":
            return pick(QUESTIONS["caption"]), self.caption()
        raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")

    def all_questions(self, rng: random.Random) -> list[tuple[str, str, str]]:
        """``(kind, question, answer)`` for every kind the scene can ask, in random order."""
        out = []
        for kind in KINDS:
            qa = self.question(kind, rng)
            if qa is not None:
                out.append((kind, *qa))
        rng.shuffle(out)
        return out


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

def _poly(cx, cy, r, n, start_deg, radii=None):
    pts = []
    for i in range(n):
        a = math.radians(start_deg + 360.0 * i / n)
        rr = r if radii is None else radii[i % len(radii)]
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.78
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        draw.polygon(_poly(cx, cy + r * 0.15, r * 1.05, 3, -90), fill=fill)
    elif shape == "star":
        draw.polygon(_poly(cx, cy + r * 0.08, r, 10, -90, radii=(r, r * 0.45)), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
    elif shape == "cross":
        t = r * 0.36
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, round(r * 0.42)))
    elif shape == "hexagon":
        draw.polygon(_poly(cx, cy, r, 6, 0), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _dist(a, b) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _background(rng: random.Random, size: int) -> tuple[Image.Image, tuple, str]:
    """A background image, its mean colour and a short description."""
    dark = rng.random() < 0.25
    lo, hi = (0, 75) if dark else (175, 255)
    c1 = tuple(rng.randint(lo, hi) for _ in range(3))
    kind = rng.choice(("plain", "plain", "gradient", "noise"))
    if kind == "plain":
        img = Image.new("RGB", (size, size), c1)
        mean = c1
    elif kind == "gradient":
        c2 = tuple(min(hi, max(lo, v + rng.randint(-45, 45))) for v in c1)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        ramp = t[None, :, None] if rng.random() < 0.5 else t[:, None, None]
        arr = np.asarray(c1, np.float32) * (1 - ramp) + np.asarray(c2, np.float32) * ramp
        arr = np.broadcast_to(arr, (size, size, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        mean = tuple((a + b) / 2 for a, b in zip(c1, c2))
    else:
        g = np.random.default_rng(rng.getrandbits(32))
        arr = np.asarray(c1, np.float32) + g.normal(0, 12, (size, size, 1)).astype(np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        mean = c1
    return img, mean, f"{'dark' if dark else 'light'} {kind}"


def make_scene(seed: int, size: int = SIZE, n_objects: Optional[int] = None,
               with_text: Optional[bool] = None) -> Scene:
    """The scene of ``seed`` (deterministic). ``n_objects``/``with_text`` force those choices."""
    rng = random.Random(seed)
    img, bg_mean, bg_desc = _background(rng, size)
    draw = ImageDraw.Draw(img)
    n = n_objects or rng.randint(1, 4)
    text = None
    if with_text if with_text is not None else rng.random() < 0.5:
        text = rng.choice(WORDS) if rng.random() < 0.6 else rng.choice(DIGITS)

    colours = [c for c, rgb in COLOURS.items() if _dist(rgb, bg_mean) > 120]
    shapes = rng.sample(SHAPES, n)
    cols = rng.sample(colours, n)
    placed: list[tuple[float, float, float]] = []  # circles (cx, cy, r) that must not overlap
    margin = 0.03 * size

    text_box = None
    if text is not None:
        font = ImageFont.load_default(size=round(0.24 * size))
        x0, y0, x1, y1 = font.getbbox(text, stroke_width=max(1, size // 128))
        tw, th = x1 - x0, y1 - y0
        text_box = (rng.uniform(margin, size - margin - tw), rng.uniform(margin, size - margin - th), tw, th)
        tcx, tcy = text_box[0] + tw / 2, text_box[1] + th / 2
        placed.append((tcx, tcy, math.hypot(tw, th) / 2))

    objects: list[Obj] = []
    for shape, colour in zip(shapes, cols):
        for attempt in range(500):
            r_hi = 0.19 if attempt < 300 else 0.13
            r = rng.uniform(0.095, r_hi) * size
            cx = rng.uniform(r + margin, size - r - margin)
            cy = rng.uniform(r + margin, size - r - margin)
            if all(math.hypot(cx - x, cy - y) > r + rr + margin for x, y, rr in placed):
                break
        else:  # no room left: fewer objects (rare)
            continue
        placed.append((cx, cy, r))
        objects.append(Obj(shape, colour, cx, cy, r))

    mask = Image.new("L", (size, size), 0)
    mdraw = ImageDraw.Draw(mask)
    mdraw.fontmode = "1"  # no antialiasing: labels stay exact
    for i, o in enumerate(objects):
        base = COLOURS[o.colour]
        fill = tuple(min(255, max(0, v + rng.randint(-18, 18))) for v in base)
        draw_shape(draw, o.shape, o.cx, o.cy, o.r, fill)
        draw_shape(mdraw, o.shape, o.cx, o.cy, o.r, i + 1)
    if text is not None:
        ink = (245, 245, 245) if sum(bg_mean) / 3 < 128 else (15, 15, 15)
        x0, y0, _, _ = font.getbbox(text, stroke_width=max(1, size // 128))
        draw.text((text_box[0] - x0, text_box[1] - y0), text, fill=ink, font=font,
                  stroke_width=max(1, size // 128), stroke_fill=ink)
        tx, ty, tw, th = text_box
        mdraw.rectangle([tx, ty, tx + tw, ty + th], fill=255)  # the text's box
    return Scene(seed, img, objects, text, bg_desc, size, mask)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

def train_scene_seed(rng: random.Random) -> int:
    return rng.randrange(*TRAIN_SEEDS)


def eval_items(kind: str, n: int, size: int = SIZE, start: int = EVAL_SEED_START):
    """``n`` held-out ``(scene, question, answer)`` of ``kind``: seeds ``start``, ``start+1``, ...
    (scenes that cannot ask ``kind`` are skipped). Each kind walks its own seed stream."""
    offset = KINDS.index(kind) * 10_000_000
    out, seed = [], start + offset
    while len(out) < n:
        scene = make_scene(seed, size)
        qa = scene.question(kind, random.Random(seed ^ 0x5EED))
        if qa is not None:
            out.append((scene, *qa))
        seed += 1
    return out


def corpus(n_scenes: int = 3000, seed: int = 7) -> list[str]:
    """Every question and answer form (for training the tokenizer)."""
    rng = random.Random(seed)
    lines = list(CHAT_PROMPTS) + [CHAT_REPLY]
    for colour in COLOURS:
        for shape in SHAPES:
            lines.append(f"{article(colour)} {colour} {shape}")
    for i in range(n_scenes):
        scene = make_scene(rng.randrange(*TRAIN_SEEDS), size=32)
        for _, q, a in scene.all_questions(rng):
            lines += [q, a]
    lines += list(WORDS) + list(DIGITS) + ["left", "right", "top", "bottom", "number", "word"]
    return lines


def _main() -> None:
    import os
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "scenes-preview"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    os.makedirs(out, exist_ok=True)
    for seed in range(n):
        scene = make_scene(EVAL_SEED_START + seed)
        scene.image.save(os.path.join(out, f"scene{seed:03d}.png"))
        rng = random.Random(seed)
        with open(os.path.join(out, f"scene{seed:03d}.txt"), "w") as f:
            f.write(f"background: {scene.background}\ncaption: {scene.caption()}\n")
            for kind, q, a in scene.all_questions(rng):
                f.write(f"{kind}: {q} -> {a}\n")
    print(f"wrote {n} scenes to {out}/")


if __name__ == "__main__":
    _main()
