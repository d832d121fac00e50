"""Turn-by-turn tokenisation: a Record -> token ids with an exact loss mask and image positions.

Public API:

* :func:`encode_record` ``(record, tokenizer, template, *, num_image_tokens, image_position,
  max_seq_len, overflow="truncate", system_prompt=None) -> EncodedSample | Skipped``.
* :func:`encode_prompt`: the same for inference; ends with the assistant header of the last user turn.
* :class:`RecordEncoder`: those settings bundled into a callable (what loaders hold on to).
* :class:`EncodedSample` (``input_ids``, ``loss_mask``, ``images``, ``n_images``, ``num_image_tokens``,
  ``source``, ``key``, ``truncated``, ``labels()``), :class:`Skipped` (``reason``, ``source``, ``key``,
  ``kind``: length, unsupervised or images), :class:`ImageCountError` (a DataError: more than one
  ``<image>`` marker, or a marker without an image).
* :class:`TextTokenizer`: what is needed of :class:`mmtune.models.tokenizer.Tokenizer`.
* :func:`supervision_spans` ``(sample, decode) -> [(text, supervised), ...]``: the sample read back as
  runs of masked and supervised text, to show users exactly what is trained.

How ids are made. The template renders segments (:mod:`mmtune.data.templates`); each is tokenised on
its own, so the mask comes from the spans and never from re-tokenising string fragments: ``bos`` and
``eos`` become one id each, the image slot becomes ``num_image_tokens`` copies of ``image_token_id``,
and text is encoded with ``tokenizer.encode`` when it starts a run of text (right after BOS or an
image, where SentencePiece's dummy leading space belongs) and with ``encode(text, continuation=True)``
otherwise. A tokenizer without BOS (``bos_id`` None) gets none. ``loss_mask[t]`` is True when token
``t`` is a supervised target (answers and their EOS); BOS, system and user text and image positions
never are.

Images. ``placeholder`` (mlp connector) keeps the image where the template put it (the ``<image>``
marker, else the start of the first user turn / before the caption); ``after_bos`` (qformer) removes
markers and puts the run right after BOS. A record holds at most one image: more than one marker, or a
marker without an image, raises :class:`~mmtune.errors.DataError` (a malformed record), as does a
malformed conversation.

Length. A sample longer than ``max_seq_len`` is cut at the end of its text (``overflow="truncate"``,
``truncated=True``: its tail and final EOS are gone, which is reported, never silent) or skipped
(``"skip"``). Image positions are never cut: a sample whose image run would not fit is skipped. A sample
left with no supervised token is skipped too. Skips are values (:class:`Skipped`), for the loader to count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Protocol, Union

import torch

from mmtune.config import ImagePosition
from mmtune.data.records import ImageRef, Record
from mmtune.data.templates import Segment, Template, get_template
from mmtune.errors import ConfigError, DataError

Overflow = Literal["truncate", "skip"]
SkipKind = Literal["length", "unsupervised", "images"]
IGNORE_INDEX = -100
"""The label of a position without a target (prompts, images, padding); the only definition in mmtune."""


class TextTokenizer(Protocol):
    """The part of :class:`mmtune.models.tokenizer.Tokenizer` the encoder uses."""

    bos_id: Optional[int]
    eos_id: int
    image_token_id: int

    def encode(self, text: str, continuation: bool = False) -> list[int]:
        """Ids of ``text`` (no BOS/EOS); ``continuation`` adds no dummy leading space."""
        ...


@dataclass(frozen=True)
class EncodedSample:
    """One tokenised sample, not yet shifted or padded."""

    input_ids: torch.Tensor
    """Token ids ``[L]`` (long); image positions hold ``image_token_id``."""
    loss_mask: torch.Tensor
    """``[L]`` bool: True where the token is a supervised target (predicted from the token before)."""
    images: tuple[ImageRef, ...] = ()
    """The image references, in order of appearance."""
    num_image_tokens: int = 0
    """Placeholder positions per image."""
    source: str = ""
    key: str = ""
    truncated: bool = False
    """True when the sample was cut to fit ``max_seq_len`` (its end, EOS included, is missing)."""
    image_spans: tuple[tuple[int, int], ...] = field(default=())
    """``(start, end)`` of each image's run of positions."""
    identity: str = ""
    """The sample's stable identity (``<shard>#<key>``, ``<file>:<index>``; the record's key when its source
    gives none): what ``data.log_samples`` writes."""
    origin: Any = None
    """Where the loader read it (stream mode: its position in its shard); opaque to packing."""

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def n_images(self) -> int:
        """How many images the sample holds."""
        return len(self.images)

    @property
    def num_supervised(self) -> int:
        """How many tokens are supervised targets."""
        return int(self.loss_mask.sum())

    def labels(self) -> torch.Tensor:
        """Unshifted labels: the id where supervised, else -100."""
        return torch.where(self.loss_mask, self.input_ids, torch.full_like(self.input_ids, IGNORE_INDEX))


@dataclass(frozen=True)
class Skipped:
    """A record that was dropped on purpose (too long, nothing supervised, ...), with why."""

    reason: str
    source: str = ""
    key: str = ""
    kind: SkipKind = field(default="length", compare=False)
    """Why, as a category: ``length`` (too long), ``unsupervised`` (nothing supervised) or ``images`` (the
    record's image does not fit the model's placeholders)."""


class ImageCountError(DataError):
    """A record whose ``<image>`` markers do not match its image (a bad record)."""


def _check_images(record: Record, num_image_tokens: int) -> Optional[str]:
    markers = record.marker_count()
    if markers > 1:
        raise ImageCountError(f"record {record.key!r}: {markers} <image> markers, but a record holds one image")
    if markers and not record.has_image:
        raise ImageCountError(f"record {record.key!r}: an <image> marker but no image")
    if record.has_image and num_image_tokens <= 0:
        return "record has an image but the model takes no image tokens"
    return None


def tokenize_segments(segments: list[Segment], tokenizer: TextTokenizer, num_image_tokens: int
                      ) -> tuple[list[int], list[bool], list[tuple[int, int]]]:
    """Ids, target mask and image spans of rendered segments (see the module docstring)."""
    ids: list[int] = []
    mask: list[bool] = []
    spans: list[tuple[int, int]] = []
    fresh = True
    for seg in segments:
        if seg.kind == "bos":
            piece, fresh = ([] if tokenizer.bos_id is None else [tokenizer.bos_id]), True
        elif seg.kind == "eos":
            piece, fresh = [tokenizer.eos_id], False
        elif seg.kind == "image":
            spans.append((len(ids), len(ids) + num_image_tokens))
            piece, fresh = [tokenizer.image_token_id] * num_image_tokens, True
        else:
            piece = tokenizer.encode(seg.text, continuation=not fresh)
            fresh = fresh and not piece
        supervised = seg.supervised and seg.kind in ("text", "eos")
        ids.extend(piece)
        mask.extend([supervised] * len(piece))
    return ids, mask, spans


def _render(record: Record, template: Union[str, Template], image_position: str,
            system_prompt: Optional[str], generation: bool) -> list[Segment]:
    if image_position not in ("after_bos", "placeholder"):
        raise ConfigError("image_position", image_position, "after_bos or placeholder")
    tmpl = get_template(record.template or template)
    inline = image_position == "placeholder"
    segments = tmpl.render(record, system_prompt=system_prompt, inline_images=inline, generation=generation)
    if record.has_image and not inline:
        segments = segments[:1] + [Segment("image")] + segments[1:]
    slots = sum(s.kind == "image" for s in segments)
    assert slots == int(record.has_image), f"template {tmpl.name} placed {slots} image slots"
    return segments


def _sample(record: Record, ids: list[int], mask: list[bool], spans: list[tuple[int, int]],
            truncated: bool = False) -> EncodedSample:
    images = (record.image,) if record.has_image else ()
    n = spans[0][1] - spans[0][0] if spans else 0
    return EncodedSample(torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool),
                         images, n, record.source, record.key, truncated, tuple(spans),
                         record.extra.get("identity", record.key))


def encode_record(record: Record, tokenizer: TextTokenizer, template: Union[str, Template], *,
                  num_image_tokens: int, image_position: ImagePosition = "placeholder", max_seq_len: int,
                  overflow: Overflow = "truncate", system_prompt: Optional[str] = None
                  ) -> Union[EncodedSample, Skipped]:
    """Tokenises a training record with its loss mask; see the module docstring for the rules."""
    if overflow not in ("truncate", "skip"):
        raise ConfigError("data.overflow", overflow, "truncate or skip")
    reason = _check_images(record, num_image_tokens)
    if reason:
        return Skipped(reason, record.source, record.key, "images")
    segments = _render(record, template, image_position, system_prompt, generation=False)
    ids, mask, spans = tokenize_segments(segments, tokenizer, num_image_tokens)
    truncated = len(ids) > max_seq_len
    if truncated:
        if overflow == "skip":
            return Skipped(f"{len(ids)} tokens exceed max_seq_len {max_seq_len}", record.source, record.key)
        if any(end > max_seq_len for _, end in spans):
            return Skipped(f"image positions end beyond max_seq_len {max_seq_len}", record.source, record.key)
        ids, mask = ids[:max_seq_len], mask[:max_seq_len]
    if not any(mask):
        return Skipped("no supervised tokens", record.source, record.key, "unsupervised")
    return _sample(record, ids, mask, spans, truncated)


def encode_prompt(record: Record, tokenizer: TextTokenizer, template: Union[str, Template], *,
                  num_image_tokens: int, image_position: ImagePosition = "placeholder",
                  system_prompt: Optional[str] = None) -> EncodedSample:
    """Tokenises a prompt for generation: the conversation so far plus the assistant header."""
    reason = _check_images(record, num_image_tokens)
    if reason:
        raise DataError(f"record {record.key!r}: {reason}")
    segments = _render(record, template, image_position, system_prompt, generation=True)
    ids, mask, spans = tokenize_segments(segments, tokenizer, num_image_tokens)
    return _sample(record, ids, mask, spans)


def supervision_spans(sample: EncodedSample, decode: Callable[[list[int]], str]) -> list[tuple[str, bool]]:
    """``sample`` as ``(text, supervised)`` runs, each decoded with ``decode`` (special tokens kept)."""
    mask = sample.loss_mask
    if not len(mask):
        return []
    bounds = ([0] + ((mask[1:] != mask[:-1]).nonzero().flatten() + 1).tolist() + [len(mask)])
    ids = sample.input_ids.tolist()
    return [(decode(ids[a:b]), bool(mask[a])) for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class RecordEncoder:
    """:func:`encode_record` with its settings bound: ``encoder(record) -> EncodedSample | Skipped``."""

    tokenizer: TextTokenizer
    template: Union[str, Template]
    num_image_tokens: int
    image_position: ImagePosition
    max_seq_len: int
    overflow: Overflow = "truncate"
    system_prompt: Optional[str] = None

    def __call__(self, record: Record) -> Union[EncodedSample, Skipped]:
        """Encodes one training record."""
        return encode_record(record, self.tokenizer, self.template, num_image_tokens=self.num_image_tokens,
                             image_position=self.image_position, max_seq_len=self.max_seq_len,
                             overflow=self.overflow, system_prompt=self.system_prompt)

    def prompt(self, record: Record) -> EncodedSample:
        """Encodes a prompt for generation."""
        return encode_prompt(record, self.tokenizer, self.template, num_image_tokens=self.num_image_tokens,
                             image_position=self.image_position, system_prompt=self.system_prompt)
