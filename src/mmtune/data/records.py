"""The record every data source produces: a conversation, an optional image, where it came from.

Public API:

* :class:`Message` ``(role, content, input="")``: one turn; ``role`` is ``"system"``, ``"user"`` or
  ``"assistant"``. ``input`` is Alpaca's optional context of a user turn (``### Input:``).
* :class:`Record` ``(messages, image=None, prefix=None, source="", key="", template=None)``: one
  sample. ``<image>`` (:data:`IMAGE_MARKER`) inside a user message marks where the image goes. A caption
  sample is one assistant message (the caption) with an optional ``prefix`` (e.g. ``"The author"``)
  that conditions the caption but is not supervised. ``template`` names a template that overrides the
  run's default for this record.
* :data:`ROLES`, :data:`IMAGE_MARKER`, :data:`ImageRef`.

Records are plain frozen dataclasses; they hold image *references* (bytes, a path or a PIL image) and
are decoded only when a batch is collated (:mod:`mmtune.data.images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Union

from mmtune.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
IMAGE_MARKER = "<image>"
"""Where the image goes inside a user message (LLaVA's convention)."""

ImageRef = Union[bytes, str, Path, "Image.Image"]
"""Encoded image bytes, a file path, or an already opened PIL image."""


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: Role
    """``system``, ``user`` or ``assistant``."""
    content: str
    """The text of the turn; user turns may hold one ``<image>`` marker."""
    input: str = ""
    """Alpaca's optional ``input`` context of a user turn; other templates append it to the content."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise DataError(f"message role {self.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(self.content, str) or not isinstance(self.input, str):
            raise DataError(f"message content must be text, got {type(self.content).__name__}")


@dataclass(frozen=True)
class Record:
    """One training or inference sample before tokenisation."""

    messages: tuple[Message, ...]
    """The conversation: an optional system message first, then user/assistant turns."""
    image: Optional[ImageRef] = None
    """The sample's image (bytes, a path, or a PIL image), or None for text-only samples."""
    prefix: Optional[str] = None
    """Caption samples: text that conditions the caption but is not supervised (e.g. "The author")."""
    source: str = ""
    """Name of the data source, for logs and counts."""
    key: str = ""
    """Identifier of the sample inside its source."""
    template: Optional[str] = None
    """Template name overriding the run's default for this record."""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    """Anything else a source wants to carry along (never used for tokenisation)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        for i, message in enumerate(self.messages):
            if not isinstance(message, Message):
                raise DataError(f"record {self.key!r}: messages[{i}] is a {type(message).__name__}, "
                                "not a Message")
            if message.role == "system" and i != 0:
                raise DataError(f"record {self.key!r}: a system message may only come first (found at {i})")

    @property
    def has_image(self) -> bool:
        """Whether the record carries an image."""
        return self.image is not None

    def marker_count(self) -> int:
        """How many ``<image>`` markers the user messages hold."""
        return sum(m.content.count(IMAGE_MARKER) + m.input.count(IMAGE_MARKER)
                   for m in self.messages if m.role == "user")


def caption_record(caption: str, image: Optional[ImageRef] = None, *, prefix: Optional[str] = None,
                   source: str = "", key: str = "") -> Record:
    """A caption sample: one assistant message holding the caption."""
    return Record(messages=(Message("assistant", caption),), image=image, prefix=prefix, source=source,
                  key=key)


def chat_record(turns: list[tuple[str, str]], image: Optional[ImageRef] = None, *,
                system: Optional[str] = None, source: str = "", key: str = "") -> Record:
    """A conversation from ``(user, assistant)`` pairs, with an optional system message first."""
    messages = [Message("system", system)] if system else []
    for user, assistant in turns:
        messages += [Message("user", user), Message("assistant", assistant)]
    return Record(messages=tuple(messages), image=image, source=source, key=key)
