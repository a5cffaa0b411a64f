"""Training wordings of the seventh fine-tuning: a small grammar over each question type.

The sixth run's errors on the second held-out list (a development set since then) came in two
kinds: words training never used for a concept ("the little one", "takes up more space", "what
does it read", "what does the image contain") and constructions it never saw ("Which of the shapes
is red?" answered with a count, "... or not?" after a yes/no question, "Top half or bottom half:
where is ...?"). Adding the failing wordings one by one teaches those wordings; a new user's next
wording fails the same way. So this run draws its phrased questions from frames whose every slot
takes many words for its concept (size: bigger, larger, greater, huge, takes up more room, covers
more area; small, little, tiny, less space...; position: side, half, part, edge, hand side;
verbs: show, contain, depict, read, say, spell...), openers and tails, in question, imperative and
fragment forms, and yes/no questions with the tails people add ("or not", "right", "yes or no").

``expand(frame, rng)`` picks one alternative from each ``[a|b|c]`` group (``[a|]``: optional;
groups nest).
``grammar_wordings(seed)`` draws up to ``per_frame`` distinct wordings from each frame: a dict of
the ``scenes.Phraser`` keys to ``(template, answer style)`` lists, and ``"outside"`` to
out-of-scope questions (a ``{n}`` noun slot, filled from ``OOS_NOUNS7``). ``scenes`` drops any
that contains a held-out wording, as it does for the composed and the sixth run's wordings.
Written from a thesaurus of each concept, not from the third held-out list (which was written by
someone else, before this file, and never read while writing it).
"""

from __future__ import annotations

import random
import re

_GROUP = re.compile(r"\[([^\[\]]*)\]")


def expand(frame: str, rng: random.Random) -> str:
    """One wording of ``frame``: each ``[a|b|c]`` group replaced by one of its alternatives."""
    out, prev = frame, None
    while out != prev:  # innermost groups first, so groups nest
        prev, out = out, _GROUP.sub(lambda m: rng.choice(m.group(1).split("|")), out)
    out = re.sub(r" {2,}", " ", out)
    for a, b in ((" ?", "?"), (" ,", ","), (" .", "."), (" :", ":"), (" 's", "'s")):
        out = out.replace(a, b)
    return out.strip()


def each(prefix: str, group: str) -> str:
    """A group's alternatives, each after ``prefix``, without the brackets: ``each("in the ",
    "[image|photo]")`` is ``"in the image|in the photo"``."""
    return prefix + group[1:-1].replace("|", "|" + prefix)


OPEN = "[|||||Hey, |Quick one: |Question: |OK, |Okay so |Please, |Hi, |Now, |Just curious, |Looking at the picture, |In this image, |Tell me: |I wonder: |Q: ]"
IMG = "[image|picture|photo|pic|drawing|scene]"
OBJ = "[shape|object|thing|figure|item|one]"
OBJS = "[shapes|objects|things|figures|items]"
COL = "[colour|color]"
WHERE_IN = "[|" + each(" in the ", IMG) + "| here| in this picture| in this image]"
OF_IMG = "[|" + each(" of the ", IMG) + "]"
Q = "[?|?|?||.]"

# shape: "{colour}" -> the shape; styles: bare ("star"), article ("a star"), the ("the star")
SHAPE = [
    (OPEN + "[what|which] [shape|figure|form|kind of shape|type of shape|sort of shape|geometric shape] is [the |that |this |]{colour} [one|shape|object|thing|item|figure|]" + WHERE_IN + Q, "bare"),
    (OPEN + "[what's|what is|whats|what s] [the|that|this] {colour} [thing|object|item|one|figure]" + WHERE_IN + Q, "article"),
    (OPEN + "[what's|what is|whats] [the|that] {colour} shape" + WHERE_IN + Q, "bare"),
    (OPEN + "which [" + each("of the ", OBJS) + "|one of them|of them|one|of these|of those|of all the shapes] is {colour}" + WHERE_IN + Q, "the"),
    (OPEN + "which [shape|one|object|figure] [is drawn in|is painted|is coloured|is colored|comes in|is filled with|is done in|has the colour|has the color|is in] {colour}" + Q, "the"),
    (OPEN + "[name|identify|tell me|say|give me] the {colour} [shape|one|object|figure|thing][| please| for me]" + Q, "bare"),
    (OPEN + "the {colour} [one|shape|thing|object|figure][,| -|:|?] what [is it|shape is it|kind of shape is it|is that|shape is that]" + Q, "bare"),
    ("{colour} [shape|one|thing|object]" + Q, "bare"),
    (OPEN + "[what|which] shape [has|is in|comes in|uses] the [colour|color] {colour}" + Q, "bare"),
    (OPEN + "[shape|form|type] of the {colour} [one|object|thing|figure|shape]" + Q, "bare"),
    (OPEN + "is the {colour} [one|shape|thing|object] a {s1} or a {s2}" + Q, "article"),
    (OPEN + "[there's|there is|I see|I can see] [a|something|one] {colour}[| shape| thing]. what [is it|shape is it|is that]" + Q, "bare"),
    (OPEN + "what is [drawn|shown|painted|coloured|colored] in {colour}" + WHERE_IN + Q, "article"),
    (OPEN + "what [do you call|would you call|is the name of] the {colour} [shape|one|thing]" + Q, "bare"),
    (OPEN + "can you [tell me|say] what [shape|kind of shape] the {colour} [one|thing|object] is" + Q, "bare"),
]

SIDE_AT = "[on|at|over on] the {side}[| side| part| edge| half]" + OF_IMG
SHAPE_AT = [
    (OPEN + "[what|which] [shape|figure|kind of shape|type of shape] [is|sits|appears|is drawn|is placed|is located|do you see|can you see|is there] " + SIDE_AT + Q, "bare"),
    (OPEN + "[what's|what is|whats|what do you see|what can you see|what is there|what sits|what appears] " + SIDE_AT + Q, "article"),
    (OPEN + "[name|identify|tell me|give me] the [shape|object|thing|figure] " + SIDE_AT + "[| please]" + Q, "bare"),
    (OPEN + "the [one|shape|thing|object] " + SIDE_AT + "[,|:| -] what [is it|shape is it|is that]" + Q, "bare"),
    (OPEN + "the {side} [one|shape|thing|object][,|:| -|] what [is it|shape is it]" + Q, "bare"),
    (OPEN + "[what|which] [shape|one] is the {side}[most|] [one|shape|object]" + Q, "bare"),
    ("{side} [shape|one|thing]" + Q, "bare"),
    (OPEN + "what [is|'s] the [thing|shape|object] " + SIDE_AT + Q, "article"),
]

# colour: "{sref}" -> the colour
COLOUR = [
    (OPEN + "[what|which] [" + COL[1:-1] + "|shade|hue] is [the|that|this] {sref}[| drawn in| painted| coloured| colored| filled with| done in| in]" + WHERE_IN + Q, "bare"),
    (OPEN + "what " + COL + " [does the {sref} have|has the {sref} got|is used for the {sref}|did they use for the {sref}|is the {sref} painted]" + Q, "bare"),
    (OPEN + "[the|that] {sref}[,| -|:|?] what " + COL + " [is it|is that|does it have]" + Q, "bare"),
    ("{sref} " + COL + Q, "bare"),
    ("[the |]{sref}[,|:| -] " + COL + Q, "bare"),
    (OPEN + "[is|would you say|do you think] the {sref} is red or blue" + Q, "bare"),
    (OPEN + "is [the|that] {sref} red or blue" + Q, "bare"),
    (OPEN + "red or blue[:|,|?] [the|that] {sref}" + Q, "bare"),
    (OPEN + "[tell me|give me|say|name] the " + COL + " of the {sref}[| please| for me]" + Q, "bare"),
    (OPEN + "how is the {sref} [coloured|colored|painted]" + Q, "bare"),
    (OPEN + "can you [see|tell me|say] what " + COL + " the {sref} is" + Q, "bare"),
    (OPEN + "what's the {sref}'s " + COL + Q, "bare"),
    (OPEN + COL + " of [the|that|this] {sref}" + Q, "bare"),
    (OPEN + "[in|with] what " + COL + " is the {sref}[ drawn| painted| filled|]" + Q, "bare"),
    (OPEN + "what " + COL + "'s the {sref}" + Q, "bare"),
    (OPEN + "the {sref} is [what|which] " + COL + Q, "bare"),
]
COLOUR_AT = [
    (OPEN + "what " + COL + " is the [thing|shape|one|object|figure] " + SIDE_AT + Q, "bare"),
    (OPEN + "the [shape|one|thing|object] " + SIDE_AT + "[:|,| -] what " + COL + " is it" + Q, "bare"),
    (OPEN + "[which|what] " + COL + " [does|has] the {side} [shape|one|thing|object] [have|got]" + Q, "bare"),
    (OPEN + COL + " of the {side} [shape|one|thing|object]" + Q, "bare"),
    (OPEN + "tell me what " + COL + " the [{side} one|one on the {side}|shape on the {side}|thing on the {side}] is" + Q, "bare"),
    (OPEN + "what " + COL + " is [whatever is|the stuff|everything] on the {side}" + Q, "bare"),
    (OPEN + "what " + COL + " is the {side}[most|] [one|shape]" + Q, "bare"),
]

COUNT = [
    (OPEN + "how many [" + OBJS[1:-1] + "|] [are there|can you see|do you see|are in the " + IMG[1:-1] + "|does the " + IMG[1:-1] + " [have|contain|show]|in [the|this] " + IMG[1:-1] + "|r there|are drawn|are visible|have been drawn|total|altogether|in total|are shown|can I see|do I see]" + Q, "bare"),
    (OPEN + "[count|please count|can you count|could you count] [the|all the|the number of|up the] " + OBJS + "[| for me| in the picture| in the image]" + Q, "bare"),
    (OPEN + "[what is|what's|give me|tell me|say] the [number|count|total number|total count|amount] of " + OBJS + WHERE_IN + Q, "bare"),
    (OPEN + "[number|count|total] of " + OBJS + Q, "bare"),
    (OPEN + "how many [of them|of those|of these|] are there" + WHERE_IN + Q, "bare"),
    (OPEN + "how many " + OBJS + " [does it have|does it contain|does it show|are in it|in it|here]" + Q, "bare"),
    (OPEN + "[what's|what is] the [shape|object] count" + Q, "bare"),
]

TAIL_YN = "[||| or not|, yes or no|, true|, correct|, is it| yes or no]"  # no ", right": a side word
TAIL_YNR = TAIL_YN[:-1] + "|, right]"
WHERE = [
    (OPEN + "where [is|'s|exactly is|can I find|do I find|can you see] the {ref}[| at| located| placed| positioned| drawn| sitting]" + WHERE_IN + Q, "where"),
    (OPEN + "[location|position|place] of the {ref}" + Q, "where"),
    (OPEN + "[what|which] [side|part|area|corner] [" + each("of the ", IMG) + "|] is the {ref} [on|in|at]" + Q, "where"),
    (OPEN + "[tell me|say|describe] where the {ref} is" + Q, "where"),
    (OPEN + "where [did they put|was] the {ref}[| put| drawn| placed]" + Q, "where"),
    (OPEN + "the {ref}[,|:| -] where [is it|is that|'s it]" + Q, "where"),
    ("{ref} [location|position|where]" + Q, "where"),
]
POSITION_X = [
    (OPEN + "is the {ref} [on the left or [on |]the right|left or right|more to the left or [more |]to the right|on the left side or the right side|in the left half or the right half|toward the left or the right|on the left or right side|leftish or rightish|left-hand or right-hand]" + WHERE_IN + Q, "bare"),
    (OPEN + "[left or right|left side or right side|which side, left or right|left half or right half|right or left][?|:|,| -] [where is|where's|what about] the {ref}" + Q, "bare"),
    (OPEN + "the {ref}[,|:| -] left or right" + Q, "bare"),
    (OPEN + "is the {ref} [on|over on|found on|drawn on|placed on|located on|in|at|to|towards] the left[| side| half| hand side| part| edge]" + OF_IMG + TAIL_YN + Q, "yesno_left"),
    (OPEN + "is the {ref} [on|over on|found on|drawn on|placed on|located on|in|at|to|towards] the right[| side| half| hand side| part| edge]" + OF_IMG + TAIL_YN + Q, "yesno_right"),
    (OPEN + "does the {ref} [sit|appear|lie|stand|show up|go] on the left" + TAIL_YN + Q, "yesno_left"),
    (OPEN + "does the {ref} [sit|appear|lie|stand|show up|go] on the right" + TAIL_YN + Q, "yesno_right"),
] + WHERE
POSITION_Y = [
    (OPEN + "is the {ref} [at the top or [at |]the bottom|top or bottom|in the top half or the bottom half|near the top or near the bottom|up top or down at the bottom|in the top part or the bottom part|higher up or lower down|at the top or at the bottom part|up or down]" + WHERE_IN + Q, "bare"),
    (OPEN + "[top or bottom|top half or bottom half|top part or bottom part|up or down|which half, top or bottom][?|:|,| -] [where is|where's|what about] the {ref}" + Q, "bare"),
    (OPEN + "the {ref}[,|:| -] top or bottom" + Q, "bare"),
    (OPEN + "is the {ref} [in the upper or [the |]lower [part|half]|upper or lower|in the upper half or the lower half]" + Q, "updown"),
    (OPEN + "is the {ref} [at|near|up at|in|on|toward|towards|placed at|found at|located at] the top[| half| part| edge| side]" + OF_IMG + TAIL_YNR + Q, "yesno_top"),
    (OPEN + "is the {ref} [at|near|down at|in|on|toward|towards|placed at|found at|located at] the bottom[| half| part| edge| side]" + OF_IMG + TAIL_YNR + Q, "yesno_bottom"),
    (OPEN + "is the {ref} [up high|high up|in the upper part|in the upper half]" + TAIL_YNR + Q, "yesno_top"),
    (OPEN + "is the {ref} [down low|low down|in the lower part|in the lower half]" + TAIL_YNR + Q, "yesno_bottom"),
] + WHERE

# size: the bigger ("bare") or the smaller ("small") of {a} and {b}; yes/no; "bigger or smaller?"
BIG = ("[bigger|larger|greater|the bigger one|the larger one|the big one|the large one|the biggest|the largest|"
       "greater in size|bigger in size|larger in size|huger|the giant one|the huge one|the bigger shape|the larger shape|"
       "the bigger of the two|the larger of the two|more big|wider|heavier looking]")
BIG_V = ("[takes up more space|takes up more room|covers more area|occupies more space|has more area|is drawn larger|"
         "looks bigger|appears larger|seems bigger|is drawn bigger|looks larger|appears bigger|has the bigger size|"
         "fills more of the picture|is of greater size|is more huge]")
SMALL = ("[smaller|tinier|littler|the smaller one|the small one|the little one|the tiny one|the smallest|the tiniest|"
         "smaller in size|less big|the smaller shape|the littlest|the little shape|the mini one|the smaller of the two|"
         "the less big one|more tiny|narrower]")
SMALL_V = ("[takes up less space|takes up less room|covers less area|occupies less space|has less area|is drawn smaller|"
           "looks smaller|appears smaller|seems tinier|looks tinier|appears littler|has the smaller size|"
           "fills less of the picture|is of lesser size|looks little]")
WHICH = "[which|which one|which of the two|which of them|which of these|which shape|who|what]"
PAIR = "[the {a} or the {b}|{a} or {b}|the {a} or {b}]"
IS_BIG = "[" + each("is ", BIG) + "|" + BIG_V[1:-1] + "]"  # "is bigger", "takes up more room", ...
IS_SMALL = "[" + each("is ", SMALL) + "|" + SMALL_V[1:-1] + "]"
CMP_BIG = "[bigger|larger|greater|huger|wider|more big|larger in size|bigger in size|greater in size]"
CMP_SMALL = "[smaller|tinier|littler|less big|smaller in size|narrower|less large]"
BIGGER = [
    (OPEN + WHICH + " [is|'s] " + BIG + "[,|:] " + PAIR + Q, "bare"),
    (OPEN + WHICH + " " + BIG_V + "[,|:] " + PAIR + Q, "bare"),
    (OPEN + PAIR + "[:|,|?|-] " + WHICH + " " + IS_BIG + Q, "bare"),
    (OPEN + "[between|of] the {a} and the {b}, " + WHICH + " " + IS_BIG + Q, "bare"),
    (OPEN + "is the {a} or the {b} [the bigger|the larger|the big|the large|the huge|the biggest|the largest] [shape|one|object|thing]" + Q, "bare"),
    (OPEN + WHICH + " [is|'s] " + SMALL + "[,|:] " + PAIR + Q, "small"),
    (OPEN + WHICH + " " + SMALL_V + "[,|:] " + PAIR + Q, "small"),
    (OPEN + PAIR + "[:|,|?|-] " + WHICH + " " + IS_SMALL + Q, "small"),
    (OPEN + "[between|of] the {a} and the {b}, " + WHICH + " " + IS_SMALL + Q, "small"),
    (OPEN + "is the {a} or the {b} [the smaller|the small|the little|the tiny|the smallest|the tiniest|the littler] [shape|one|object|thing]" + Q, "small"),
    (OPEN + "is the {a} " + CMP_BIG + " than the {b}" + TAIL_YNR + Q, "yesno_big"),
    (OPEN + "[does|would you say] the {a} [take up more space|take up more room|look bigger|cover more area|appear larger|look larger|seem bigger] than the {b}" + TAIL_YNR + Q, "yesno_big"),
    (OPEN + "is the {a} " + CMP_SMALL + " than the {b}" + TAIL_YNR + Q, "yesno_small"),
    (OPEN + "[does|would you say] the {a} [take up less space|take up less room|look smaller|cover less area|appear smaller|look tinier|seem smaller] than the {b}" + TAIL_YNR + Q, "yesno_small"),
    (OPEN + "is the {a} [bigger or smaller|bigger than the {b} or smaller|bigger or smaller compared to the {b}|smaller or bigger] [than the {b}|compared to the {b}|next to the {b}|]" + Q, "bigsmall"),
    (OPEN + "is the {a} [larger or smaller|larger than the {b} or smaller|smaller or larger] [than the {b}|compared to the {b}|next to the {b}|]" + Q, "bigsmall"),
    (OPEN + "[compared to|next to|against] the {b}, is the {a} [bigger or smaller|larger or smaller|smaller or bigger]" + Q, "bigsmall"),
]

TEXT = [
    (OPEN + "what does [it|the text|the word|the writing|the label|the sign|the lettering|the number] [say|read|spell|show]" + WHERE_IN + Q, "bare"),
    (OPEN + "what [is|'s] [written|printed|typed|shown as text][| on it| there| in the picture| in the image| here]" + Q, "bare"),
    (OPEN + "[read|read out|read me|can you read|could you read|please read] the [text|word|writing|letters|number|label][| in the picture| for me| in the image| out loud]" + Q, "bare"),
    (OPEN + "what [word|number|text|letters|writing] [is|are] [written|printed|shown|there|visible][| there| in the image| in the picture]" + Q, "bare"),
    (OPEN + "is there [any text|a word|writing|a number|text][?|,] what [does it say|is it|does it read]" + Q, "bare"),
    (OPEN + "what's the [word|text|number|writing|label][| in the picture| in the image| here]" + Q, "bare"),
    (OPEN + "[tell me|give me|say] the [word|text|number|writing] [in|on] the " + IMG + Q, "bare"),
    (OPEN + "[any|is there any] [text|words|writing|lettering][| in the picture| here]" + Q, "bare"),
    (OPEN + "what does it [say|read]" + Q, "bare"),
]

CAPTION = [
    (OPEN + "[describe|caption|summarize|summarise|explain|describe to me] [the|this|the whole] " + IMG + "[| for me| please| briefly| in a few words| in one sentence]" + Q, "caption"),
    (OPEN + "what [does|do] [the|this] " + IMG + " [show|contain|depict|have in it|include|consist of|have|display|portray]" + Q, "caption"),
    (OPEN + "what [is|'s|can you see|do you see|is there|is shown|is drawn|have we got] in [the|this] " + IMG + Q, "caption"),
    (OPEN + "[tell me|list|name|say] [everything|all the shapes|what you see|all the objects|what's there|what's in it|the objects|the shapes|what is drawn][| in the picture| in the image| here]" + Q, "caption"),
    (OPEN + "what [" + OBJS[1:-1] + "] [are there|do you see|are in it|are in the picture|are drawn|can you see|are shown]" + Q, "caption"),
    (OPEN + "[can|could] you [describe|caption|summarize|explain] [it|this|the picture|what you see|the image|what's in it]" + Q, "caption"),
    (OPEN + "[give|write] [me |]a [caption|description|short description|summary|quick description] [of|for] [this|the image|the picture|it]" + Q, "caption"),
    (OPEN + "[what am I looking at|what's this|what's in it|whats in the pic|what is this|what's shown|what's there|what's in the picture]" + Q, "caption"),
    (OPEN + "[describe|explain|list] what [is|'s] in [the|this] " + IMG + Q, "caption"),
]

FOLLOWUP = [
    ("[and|what about|how about|now|and what about|okay, and|ok and|and now|same for|same question for|same thing for|and for|then] [the|that|this] {ref}" + Q, "same"),
    ("[ok|okay|and|now|so|alright] the {ref}" + Q, "same"),
    ("[and|what about|how about|same for|same question for|now|then|and what about|ok and] the other [one|shape|object|thing][| then]" + Q, "other"),
    ("[the|that] other [one|shape][| then| now]" + Q, "other"),
    ("[and|what about] the [second|remaining|last|other] [one|shape|object]" + Q, "other"),
]

# out of scope: things the shapes model cannot know; {n}: a noun that is not a shape
OOS_NOUNS7 = ("dog", "man", "woman", "car", "tree", "house", "bird", "horse", "boy", "baby", "lady", "kid",
              "truck", "boat", "train", "phone", "laptop", "table", "chair", "lamp", "flower", "plant", "mountain",
              "river", "building", "bridge", "road", "sky", "cloud", "ball", "shoe", "shirt", "bottle", "book",
              "clock", "computer", "monkey", "lion", "tiger", "elephant", "sheep", "duck", "rabbit", "bear",
              "fish", "pizza", "apple", "banana", "cake", "player", "doctor", "police officer", "student", "chef")
OUTSIDE = [
    ("[what|which] [breed|kind|type|species|brand|model|make] of {n} is [this|that|it]" + Q, ""),
    ("[what|who] is the {n} [doing|holding|eating|looking at|wearing|thinking]" + Q, ""),
    ("[how old|how tall|how big|how heavy|how fast|how far away] is the {n}" + Q, ""),
    ("is the {n} [happy|sad|angry|hungry|asleep|real|alive|moving|old|new|friendly|dangerous|expensive]" + Q, ""),
    ("[where|when] [is|was|does] the {n} [going|made|from|live|come from|bought]" + Q, ""),
    ("what [colour|color] [is|are] the {n}'s [eyes|hair|shoes|coat|wheels|roof|leaves|hat]" + Q, ""),
    ("[what|who] [owns|made|built|drew] the {n}" + Q, ""),
    ("what is the {n}'s [name|age|job|price|brand|story]" + Q, ""),
    ("[is there|do you see|can you see|are there any] [a |an |]{n}[s|] [in the picture|here|]" + Q, ""),
    ("how many {n}s [are there|can you see|are in the picture]" + Q, ""),
    ("[what|which] [city|country|town|street|room|year|season|month|day|time] is [it|this|shown]" + Q, ""),
    ("[who|what] is the [president|artist|photographer|author|owner|celebrity|person]" + Q, ""),
    ("[is it|is this] [raining|sunny|night|day|indoors|outdoors|winter|summer|a real photo|a painting|dangerous|expensive]" + Q, ""),
    ("[what|how] does [this|the picture|it] [smell|sound|taste|feel] like" + Q, ""),
    ("[what's|what is] the [weather|temperature|date|time|mood|price|story|meaning|brand|name of the place]" + Q, ""),
    ("[translate|explain the joke in|what is the meaning of|what does it mean,] [the text|the word|this]" + Q, ""),
    ("[who|what] [lives|works|plays|sleeps] [here|there|in the house]" + Q, ""),
    ("[what should I|can I|how do I] [cook|buy|wear|eat|do] [with this|today|here]" + Q, ""),
]

KEYS = {"shape": SHAPE, "shape_at": SHAPE_AT, "colour": COLOUR, "colour_at": COLOUR_AT, "count": COUNT,
        "position_x": POSITION_X, "position_y": POSITION_Y, "bigger": BIGGER, "text": TEXT, "caption": CAPTION,
        "followup": FOLLOWUP, "outside": OUTSIDE}


def _case(t: str, rng: random.Random) -> str:
    """First letter upper case most of the time (``scenes.vary`` changes case further)."""
    return t[:1].upper() + t[1:] if rng.random() < 0.8 else t


def grammar_wordings(seed: int = 7, per_frame: int = 40) -> dict:
    """Up to ``per_frame`` distinct wordings of every frame, per key: ``(template, style)``."""
    rng = random.Random(seed)
    out = {}
    for key, frames in KEYS.items():
        seen, items = set(), []
        for frame, style in frames:
            got = 0
            for _ in range(per_frame * 8):
                t = _case(expand(frame, rng), rng)
                if t.lower() not in seen:
                    seen.add(t.lower())
                    items.append((t, style))
                    got += 1
                    if got == per_frame:
                        break
        out[key] = items
    return out
