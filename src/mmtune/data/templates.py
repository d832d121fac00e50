"""Prompt templates: a :class:`~mmtune.data.records.Record` rendered into supervised/unsupervised segments.

Public API:

* :class:`Segment` ``(kind, text="", supervised=False)``; ``kind`` is ``"text"``, ``"image"`` (the
  image slot), ``"bos"`` or ``"eos"``. Adjacent text segments with the same flag are merged.
* :class:`Template` with ``name``, ``default_system`` and
  ``render(record, *, system_prompt=None, inline_images=True, generation=False) -> list[Segment]``.
* :data:`TEMPLATES` (read-only registry by exact name), :func:`get_template`, :func:`template_names`.

A template never renders one string that is re-split later: it emits segments, and the encoder
(:mod:`mmtune.data.encode`) tokenises them one by one, so the loss mask comes from the spans.
Every rendering starts with a ``bos`` segment; every assistant turn is supervised and followed by a
supervised ``eos``; system and user text is never supervised.

Templates (exact names):

* ``alpaca``: LLaMA2-Accessory's Stanford-Alpaca prompt (with or without ``### Input:``), the answer
  concatenated directly after ``### Response:``; later turns continue with
  ``\\n\\n### Instruction:\\n...\\n\\n### Response:``. A system prompt replaces the intro sentence.
* ``caption``: empty prompt, optional unsupervised ``prefix``, the whole caption + EOS supervised. When the
  caption already starts with the prefix only the rest is supervised; otherwise the caption follows the
  prefix after one space. User messages are refused.
* ``plain``: LLaVA pretraining: image, then the caption (+ EOS; LLaVA ends with ``\\n`` instead).
  User messages are ignored, as LLaVA does.
* ``llava_v1``: LLaVA-1.5 (``conv_llava_v1``): ``{system} USER: {q} ASSISTANT: {a}</s>USER: ...``.
* ``llama2_chat``: ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] {a} </s><s>[INST] {q2} [/INST]``.
* ``none``: raw text: system, user and assistant contents concatenated as they are.

With ``inline_images`` (the ``placeholder`` image position), the image slot sits where a user message
holds ``<image>``, or, when no message does, at the start of the first user turn (before the caption
for caption templates). Without it (``after_bos``) the markers are removed and no slot is emitted; the
encoder then puts the image right after BOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping, Optional

from mmtune.data.records import IMAGE_MARKER, Message, Record
from mmtune.errors import ConfigError, DataError

SegmentKind = Literal["text", "image", "bos", "eos"]
Turn = tuple[Optional[Message], Optional[Message]]


@dataclass(frozen=True)
class Segment:
    """A span of a rendered sample: text, the image slot, or a BOS/EOS token."""

    kind: SegmentKind
    text: str = ""
    supervised: bool = False


class _Builder:
    """Collects segments, merging adjacent text with the same supervision flag."""

    def __init__(self) -> None:
        self.segments: list[Segment] = [Segment("bos")]

    def text(self, text: str, supervised: bool = False) -> None:
        if not text:
            return
        last = self.segments[-1]
        if last.kind == "text" and last.supervised == supervised:
            self.segments[-1] = Segment("text", last.text + text, supervised)
        else:
            self.segments.append(Segment("text", text, supervised))

    def image(self) -> None:
        self.segments.append(Segment("image"))

    def bos(self) -> None:
        self.segments.append(Segment("bos"))

    def eos(self, supervised: bool = True) -> None:
        self.segments.append(Segment("eos", supervised=supervised))

    def user(self, text: str, *, inline: bool, lead_image: bool) -> None:
        """User text, with the image slot at its ``<image>`` marker(s) or, if ``lead_image``, first."""
        if lead_image:
            self.image()
        if not inline:
            self.text(text.replace(IMAGE_MARKER, "").strip() if IMAGE_MARKER in text else text)
            return
        parts = text.split(IMAGE_MARKER)
        for i, part in enumerate(parts):
            if i:
                self.image()
            self.text(part)

    def answer(self, text: str) -> None:
        self.text(text, supervised=True)
        self.eos(supervised=True)


class Template:
    """Base class: splits system/turns and places the image; subclasses lay out the text."""

    name: str = ""
    default_system: Optional[str] = None
    allow_leading_assistant: bool = False

    def render(self, record: Record, *, system_prompt: Optional[str] = None, inline_images: bool = True,
               generation: bool = False) -> list[Segment]:
        """Renders ``record``; ``generation`` ends with the assistant header of a pending user turn."""
        system, turns = self._split(record, generation)
        if system is None:
            system = system_prompt if system_prompt is not None else self.default_system
        lead = inline_images and record.has_image and record.marker_count() == 0
        builder = _Builder()
        self._layout(builder, record, system, turns, inline=inline_images, lead_image=lead)
        return builder.segments

    def _layout(self, b: _Builder, record: Record, system: Optional[str], turns: list[Turn], *,
                inline: bool, lead_image: bool) -> None:
        raise NotImplementedError

    def _split(self, record: Record, generation: bool) -> tuple[Optional[str], list[Turn]]:
        messages = list(record.messages)
        system = messages.pop(0).content if messages and messages[0].role == "system" else None
        turns: list[Turn] = []
        for m in messages:
            if m.role == "user":
                if turns and turns[-1][1] is None:
                    raise DataError(f"record {record.key!r}: two user messages in a row")
                turns.append((m, None))
            elif turns and turns[-1][1] is None:
                turns[-1] = (turns[-1][0], m)
            elif not turns and self.allow_leading_assistant:
                turns.append((None, m))
            else:
                raise DataError(f"record {record.key!r}: an assistant message without a user message "
                                f"before it (template {self.name})")
        if turns and turns[-1][1] is None and not generation:
            raise DataError(f"record {record.key!r}: the conversation ends with a user message")
        return system, turns


def _with_input(message: Message) -> str:
    return f"{message.content}\n\n{message.input}" if message.input else message.content


class AlpacaTemplate(Template):
    """Stanford Alpaca exactly as LLaMA2-Accessory renders it (``data/system_prompt.py``)."""

    name = "alpaca"
    INTRO = ("Below is an instruction that describes a task. "
             "Write a response that appropriately completes the request.")
    INTRO_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                   "further context. Write a response that appropriately completes the request.")

    def _layout(self, b: _Builder, record: Record, system: Optional[str], turns: list[Turn], *,
                inline: bool, lead_image: bool) -> None:
        for i, (user, assistant) in enumerate(turns):
            assert user is not None
            if i == 0:
                intro = system if system is not None else (self.INTRO_INPUT if user.input else self.INTRO)
                b.text(f"{intro}\n\n### Instruction:\n")
            else:
                b.text("\n\n### Instruction:\n")
            b.user(user.content, inline=inline, lead_image=lead_image and i == 0)
            if user.input:
                b.text("\n\n### Input:\n")
                b.user(user.input, inline=inline, lead_image=False)
            b.text("\n\n### Response:")
            if assistant is not None:
                b.answer(assistant.content)


class CaptionTemplate(Template):
    """Caption samples: BOS, image, unsupervised prefix, supervised caption + EOS."""

    name = "caption"
    ignore_user = False

    def _split(self, record: Record, generation: bool) -> tuple[Optional[str], list[Turn]]:
        users = [m for m in record.messages if m.role == "user"]
        if users and not self.ignore_user:
            raise DataError(f"record {record.key!r}: template {self.name} takes one assistant message "
                            "(the caption), not user messages")
        captions = [m for m in record.messages if m.role == "assistant"]
        if len(captions) > 1 or (not captions and not generation):
            raise DataError(f"record {record.key!r}: template {self.name} needs exactly one assistant "
                            f"message (the caption), got {len(captions)}")
        return None, [(None, captions[0])] if captions else []

    def _layout(self, b: _Builder, record: Record, system: Optional[str], turns: list[Turn], *,
                inline: bool, lead_image: bool) -> None:
        if inline and record.has_image:
            b.image()
        prefix = record.prefix or ""
        b.text(prefix)
        if not turns:
            return
        caption = turns[0][1].content  # type: ignore[union-attr]
        if prefix and caption.startswith(prefix):
            caption = caption[len(prefix):]
        elif prefix and caption and not prefix[-1].isspace() and not caption[0].isspace():
            caption = " " + caption
        b.answer(caption)


class PlainTemplate(CaptionTemplate):
    """LLaVA pretraining (``conv_llava_plain``): image then caption; user text is dropped."""

    name = "plain"
    ignore_user = True


class LlavaV1Template(Template):
    """LLaVA-1.5's ``conv_llava_v1``: separators ``" "`` after user turns and ``</s>`` after answers."""

    name = "llava_v1"
    default_system = ("A chat between a curious human and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the human's questions.")

    def _layout(self, b: _Builder, record: Record, system: Optional[str], turns: list[Turn], *,
                inline: bool, lead_image: bool) -> None:
        if system:
            b.text(system + " ")
        for i, (user, assistant) in enumerate(turns):
            assert user is not None
            b.text("USER: ")
            b.user(_with_input(user), inline=inline, lead_image=lead_image and i == 0)
            b.text(" ASSISTANT:")
            if assistant is not None:
                b.answer(" " + assistant.content)


class Llama2ChatTemplate(Template):
    """Meta's LLaMA-2 chat format: each turn ``<s>[INST] {q} [/INST] {a} </s>``, system in ``<<SYS>>``."""

    name = "llama2_chat"

    def _layout(self, b: _Builder, record: Record, system: Optional[str], turns: list[Turn], *,
                inline: bool, lead_image: bool) -> None:
        for i, (user, assistant) in enumerate(turns):
            assert user is not None
            if i:
                b.bos()
            b.text("[INST] ")
            if i == 0 and system:
                b.text(f"<<SYS>>\n{system}\n<</SYS>>\n\n")
            b.user(_with_input(user).strip(), inline=inline, lead_image=lead_image and i == 0)
            b.text(" [/INST]")
            if assistant is not None:
                b.answer(f" {assistant.content.strip()} ")


class RawTemplate(Template):
    """No template: the contents concatenated as they are (system and user masked)."""

    name = "none"
    allow_leading_assistant = True

    def _layout(self, b: _Builder, record: Record, system: Optional[str], turns: list[Turn], *,
                inline: bool, lead_image: bool) -> None:
        if system:
            b.text(system)
        if lead_image and (not turns or turns[0][0] is None):
            b.image()
            lead_image = False
        for i, (user, assistant) in enumerate(turns):
            if user is not None:
                b.user(_with_input(user), inline=inline, lead_image=lead_image and i == 0)
            if assistant is not None:
                b.answer(assistant.content)


TEMPLATES: Mapping[str, Template] = MappingProxyType({
    t.name: t for t in (AlpacaTemplate(), CaptionTemplate(), PlainTemplate(), LlavaV1Template(),
                        Llama2ChatTemplate(), RawTemplate())
})
"""Every template by its exact name."""


def template_names() -> list[str]:
    """The registered template names, sorted."""
    return sorted(TEMPLATES)


def get_template(name: str | Template) -> Template:
    """The template called ``name`` (a :class:`Template` passes through); ConfigError when unknown."""
    if isinstance(name, Template):
        return name
    if name not in TEMPLATES:
        raise ConfigError("data.template", name, "one of " + ", ".join(template_names()))
    return TEMPLATES[name]
