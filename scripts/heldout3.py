"""A third held-out list of phrasings for the demo VLM (see ``scenes.HELDOUT_PHRASINGS`` and
``scenes.HELDOUT2_PHRASINGS`` for the first two, which have since been used to guide training).

How this list was written: by hand, on 2026-12-05, before the seventh fine-tuning, from how a new
user would type questions into a chat box, varying everything: questions and imperatives, short
fragments ("{side} shape: colour?", "no. of shapes?"), informal/texting style ("can u describe
this", "whats", "pic", "pls"), polite long forms ("Would you mind telling me ...", "I'd like to
know ..."), different verbs and nouns ("identify", "spot", "tally up", "transcribe", "shade",
"headcount", "tinier"), word order (object first, question last) and British/American spelling.
The wordings were written WITHOUT consulting the training wordings (``PHRASINGS``, ``QUESTIONS``,
``COMPOSED``, ``EXTRA_PHRASINGS``, the training out-of-scope lists) or any model's answers; only
the two earlier held-out lists and the ``Phraser`` code (for slots and styles) were read. One
caveat, for the record: while locating the held-out lists, two short stretches of training text
were shown on screen by accident before writing (the last ~15 lines of the training
caption/follow-up wordings just above ``HELDOUT_PHRASINGS``, and the training out-of-scope
``OOS_TEMPLATES``/``OOS_NOUNS``/``OOS_PLAIN``); no wording here was taken from them, and the
out-of-scope topics below were chosen away from them. After the whole list was written it was
checked mechanically (``_core``: lower case, no punctuation or articles, colour = color) against
every training wording (not equal to one, not inside one) and against lists 1-2 (not equal), and
the out-of-scope templates/plain questions/nouns against the training and earlier held-out
out-of-scope lists. Wordings replaced because of a collision: 24 (``REPLACED_AFTER_CHECK``): 23 of
the first draft (22 phrasings that equalled or sat inside a training wording, and one out-of-scope
template that equalled a training one), then 1 of those replacements that again equalled a training
wording. Each was replaced by a different wording written by hand, seeing only which of these
wordings collided, never the training wording it collided with. Nothing collided with lists 1-2.

Slots and styles are those ``scenes.Phraser`` fills/accepts for each key: shape {colour} (and the
either-or {s1}/{s2}), shape_at/colour_at {side}, colour {sref} (and the either-or "red or blue"),
position_x/position_y {ref}, bigger {a}/{b}, followup {ref}; count/text/caption take no slot.
"""

REPLACED_AFTER_CHECK = 24

HELDOUT3_PHRASINGS = {
    "shape": [
        ("Identify the {colour} shape for me.", "bare"), ("hey whats the {colour} one supposed to be", "article"),
        ("Would you mind telling me which shape is coloured {colour}?", "bare"),
        ("the {colour} one... what shape is that?", "bare"), ("Would you say the {colour} figure is a {s1} or a {s2}?", "bare"),
        ("What do you call the {colour} figure?", "bare"), ("Which shape here is the {colour} one?", "the"),
        ("Describe the shape of the {colour} item in one word.", "bare"),
    ],
    "shape_at": [
        ("What's over on the {side}?", "article"), ("Name the shape sitting on the {side}.", "bare"),
        ("on the {side} - which shape is that?", "bare"), ("Could you identify the object on the {side} side?", "bare"),
    ],
    "colour": [
        ("What shade has the {sref} been given?", "bare"), ("the {sref} is filled in what colour??", "bare"),
        ("I'm curious what colour the {sref} is painted.", "bare"), ("Identify the colour of the {sref}, please.", "bare"),
        ("what colour was the {sref} drawn with, do you know", "bare"), ("Is the {sref} red or blue, or some other colour?", "bare"),
        ("Which colour has been used for the {sref}?", "bare"), ("Give me the {sref}'s colour in one word.", "bare"),
    ],
    "colour_at": [
        ("What colour is whatever's on the {side}?", "bare"), ("{side} shape: colour?", "bare"),
        ("Could you tell me the color of the object on the {side} side?", "bare"),
        ("the thing on the {side} is what colour", "bare"),
    ],
    "count": [
        ("How many shapes can you spot?", "bare"), ("Give me a headcount of the shapes, please.", "bare"), ("no. of shapes?", "bare"),
        ("Please count the shapes in this image for me.", "bare"), ("what's the shape count", "bare"),
        ("Are there many shapes? How many exactly?", "bare"),
        ("I'd like to know how many figures are in the picture.", "number"), ("Tally up the objects.", "bare"),
    ],
    "position_x": [
        ("Is the {ref} closer to the left edge?", "yesno_left"), ("the {ref} - which side is it on, left or right?", "bare"),
        ("On which half does the {ref} sit, left or right?", "bare"), ("Where in the picture can I find the {ref}?", "where"),
        ("Where has the {ref} been put?", "where"), ("Would I find the {ref} on the right-hand side?", "yesno_right"),
        ("is the {ref} on the left side of the pic", "yesno_left"),
        ("I need to know if the {ref} is on the left or right, please.", "bare"),
    ],
    "position_y": [
        ("Is the {ref} closer to the top edge or the bottom edge?", "bare"), ("top or bottom for the {ref}?", "bare"),
        ("Is the {ref} towards the top of the picture?", "yesno_top"), ("Does the {ref} sit in the lower half?", "yesno_bottom"),
        ("Upper half or lower half - which is the {ref} in?", "updown"), ("Where can the {ref} be seen?", "where"),
        ("is the {ref} at the bottom of the pic", "yesno_bottom"),
        ("Please say whether the {ref} is at the top or the bottom.", "bare"),
    ],
    "bigger": [
        ("Of these two, the {a} and the {b}, which has the bigger size?", "bare"), ("{a} vs {b}: which one is larger?", "bare"),
        ("Would you say the {a} is smaller compared to the {b}?", "yesno_small"), ("is the {a} bigger than the {b} yes or no", "yesno_big"),
        ("Which is the tinier shape out of the {a} and the {b}?", "small"),
        ("Compare the {a} and the {b}: is the {a} bigger or smaller?", "bigsmall"),
        ("Out of the {a} and the {b}, which one is the biggest?", "the"),
        ("which is the smaller of the {a} and {b}", "small"),
    ],
    "text": [
        ("What word is on the image?", "bare"), ("Read the text for me, please.", "bare"),
        ("any text in there? what does it say", "bare"), ("What letters or numbers are printed?", "bare"),
        ("Transcribe the writing in the picture.", "bare"), ("Can you make out what's written there?", "bare"),
    ],
    "caption": [
        ("So what exactly am I looking at here?", "caption"), ("Give me a short description of this picture.", "caption"),
        ("Describe everything in the photo please", "caption"), ("can u describe this", "caption"),
        ("Summarise what the picture shows.", "caption"), ("I'd like a description of the image, please.", "caption"),
        ("Write a one-line caption for this pic.", "caption"), ("Walk me through what's in the picture.", "caption"),
    ],
    "followup": [
        ("What about the second shape then?", "other"), ("the other one pls", "other"), ("Same again for the {ref}, please.", "same"),
        ("Could you do the same for the {ref}?", "same"), ("What about the remaining shape?", "other"),
        ("ok now the {ref}", "same"),
    ],
}

HELDOUT3_OOS_TEMPLATES = ("Is the {n} young or old?", "Is the {n} looking at the camera?", "what's the {n} thinking about",
                          "Is the {n} moving or standing still?")
HELDOUT3_OOS_NOUNS = ("elephant", "nurse", "motorcycle", "rabbit")
HELDOUT3_OOS_PLAIN = ("What camera was this taken with?", "Is this a famous painting?", "How old is the photographer?",
                      "What song goes with this picture?", "What's the wifi password?",
                      "How far away is the horizon?")
