"""What the serving layer passes around: one chat request in, one completion out.

Every front end (``mmtune generate``, ``mmtune chat``, the web page, the OpenAI-compatible API) builds a
:class:`ChatRequest`; the engine turns it into prompt token ids and pixel values with the data layer's
templates, runs generation and answers with a :class:`Completion`. Both are plain picklable dataclasses,
so rank 0 can broadcast them to the other ranks under tensor parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from mmtune.data.records import Message


@dataclass
class ChatRequest:
    """A conversation to continue, with at most one image and the sampling settings."""

    messages: list[Message]
    """The conversation so far; the model answers after the last message (a user turn, or none for
    captioning). A user message may hold the ``<image>`` marker where the image goes."""
    image: Optional[bytes] = None
    """Encoded image file (PNG, JPEG, WebP, ...) or None for a text-only request."""
    prefix: Optional[str] = None
    """Text the answer must start with (e.g. "The author"); it conditions the answer and is echoed in it."""
    template: Optional[str] = None
    """Prompt template by name; None uses the engine's default."""
    system_prompt: Optional[str] = None
    """Replaces the template's default system prompt."""
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None


@dataclass
class Completion:
    """The answer to a :class:`ChatRequest`."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: Literal["stop", "length"] = "stop"

    @property
    def completion_tokens(self) -> int:
        """Generated tokens, the stop token included when one ended the answer."""
        return len(self.token_ids)
