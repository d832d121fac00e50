"""Turning generated token ids into text, piece by piece, exactly as the whole answer decodes.

SentencePiece drops the leading space of the first piece it decodes and a multi-byte character may be
split over several byte tokens, so decoding token by token gives wrong text. :class:`TextStream`
decodes everything so far after an anchor token (the last prompt token), emits only the new suffix,
and holds back an incomplete character (U+FFFD at the end) until its last byte arrives.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence


class Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


class TextStream:
    """Feed token ids with :meth:`push`; read the text with :attr:`text`; ``on_text`` gets each new piece."""

    def __init__(self, tokenizer: Decoder, anchor: int, keep_leading_space: bool = False,
                 on_text: Optional[Callable[[str], None]] = None):
        self.tokenizer, self.anchor = tokenizer, anchor
        self.keep_leading_space = keep_leading_space
        self.on_text = on_text
        self.ids: list[int] = []
        self._anchor_text = tokenizer.decode([anchor])
        self._emitted = ""

    def _decoded(self) -> str:
        full = self.tokenizer.decode([self.anchor, *self.ids])
        text = full[len(self._anchor_text):] if full.startswith(self._anchor_text) \
            else self.tokenizer.decode(self.ids)
        return text if self.keep_leading_space else text.lstrip()

    def push(self, token_id: int) -> None:
        """Adds one token and emits whatever text became final."""
        self.ids.append(token_id)
        text = self._decoded()
        if text.endswith("\ufffd") or not text.startswith(self._emitted):
            return
        self._emit(text)

    def _emit(self, text: str) -> None:
        piece = text[len(self._emitted):]
        self._emitted = text
        if piece and self.on_text is not None:
            self.on_text(piece)

    def finish(self) -> str:
        """Flushes any held-back text and returns the whole answer."""
        text = self._decoded()
        if text.startswith(self._emitted):
            self._emit(text)
        return text

    @property
    def text(self) -> str:
        """The whole answer so far."""
        return self._decoded()
