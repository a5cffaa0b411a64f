"""Incremental detokenization: new text per new token, never a broken character.

Each step decodes a short window twice (what was already shown, and the same with
the new tokens) and emits the difference. A few prompt tokens seed the window so
that tokenizers which drop a leading space at the start of a string still show it.
Text that ends in a partial UTF-8 character is held back until it completes.
"""

from __future__ import annotations

_CONTEXT = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True,
                 spaces_between_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.kwargs = {"skip_special_tokens": skip_special_tokens}
        if not spaces_between_special_tokens:
            self.kwargs["spaces_between_special_tokens"] = False
        self.ids = list(prompt_ids[-_CONTEXT:])
        self.prefix = 0  # start of the decode window
        self.read = len(self.ids)  # tokens before this are already shown

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, **self.kwargs)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is still held back (call once the sequence has finished)."""
        return self._advance(final=True) if self.read < len(self.ids) else ""

    def _advance(self, final: bool) -> str:
        shown = self._decode(self.ids[self.prefix:self.read])
        full = self._decode(self.ids[self.prefix:])
        if len(full) > len(shown) and (final or not full.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return full[len(shown):]
        return ""
