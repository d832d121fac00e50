"""Entries -> :class:`~mmtune.data.records.Record`: caption manifests, Alpaca, LLaVA, img2dataset samples.

Public API (every function raises :class:`~mmtune.errors.DataError` naming ``location`` on a malformed
entry; the caller counts it as a bad record):

* :class:`EntryOptions`: per-source options (``SourceConfig.options``) with the keys below.
* :func:`caption_entry` ``(entry, opts, location, rng) -> Record``: stage-1 captions. The image is a path
  (relative to ``image_root``), a ``data:image/...;base64,`` string, raw bytes, or a ``{"bytes": ...}``
  mapping (the Hugging Face datasets parquet layout); the caption a string or a list of strings (a
  JSON-list string in CSV/TSV), of which ``rng`` picks one. ``prefix`` (fixed text) or ``prefix_key``
  (a field) gives the unsupervised caption prefix.
* :func:`alpaca_entry`: ``instruction``, optional ``input``, ``output`` (and optional ``image``).
* :func:`llava_entry`: ``id``, optional ``image``, ``conversations`` of ``{"from": "human"|"gpt"|"system",
  "value": ...}`` (``user``/``assistant`` accepted too), multi-turn.
* :func:`kind_of_entry` ``(entry) -> "llava" | "alpaca" | "manifest"``: how ``kind: auto`` tells them apart.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from mmtune.data.records import Message, Record, caption_record
from mmtune.data.sources.paths import is_remote, resolve
from mmtune.errors import ConfigError, DataError

IMAGE_KEYS: tuple[str, ...] = ("image", "image_path", "img", "file_name", "path", "jpg", "png", "webp")
CAPTION_KEYS: tuple[str, ...] = ("caption", "captions", "text", "txt")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class EntryOptions:
    """How entries of one source are read."""

    source: str
    image_root: Optional[str] = None
    image_key: Optional[str] = None
    """Field holding the image path or bytes; None tries :data:`IMAGE_KEYS`."""
    caption_key: Optional[str] = None
    """Field holding the caption(s); None tries :data:`CAPTION_KEYS`."""
    prefix: Optional[str] = None
    """Fixed unsupervised caption prefix."""
    prefix_key: Optional[str] = None
    """Field holding a per-entry caption prefix."""
    template: Optional[str] = None

    @classmethod
    def build(cls, source: str, image_root: Optional[str], template: Optional[str], options: dict,
              where: str) -> "EntryOptions":
        """From ``SourceConfig.options``; unknown keys raise ConfigError naming ``where``."""
        known = {f.name for f in fields(cls)} - {"source", "image_root", "template"}
        extra = set(options) - known
        if extra:
            raise ConfigError(f"{where}.options", sorted(extra)[0], "one of " + ", ".join(sorted(known)))
        return cls(source, image_root, template=template, **{k: options[k] for k in options})


def _pick(entry: dict, key: Optional[str], defaults: tuple[str, ...]) -> tuple[Optional[str], Any]:
    for name in ((key,) if key else defaults):
        if name in entry and entry[name] not in (None, ""):
            return name, entry[name]
    return None, None


def image_ref(value: Any, opts: EntryOptions, location: str) -> Any:
    """A path (checked to exist when local) or bytes, from a manifest's image field."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise DataError(f"{location}: image field is a {type(value).__name__}, not a path or bytes")
    if value.startswith("data:"):
        try:
            return base64.b64decode(value.split(",", 1)[1], validate=True)
        except (ValueError, IndexError):
            raise DataError(f"{location}: malformed base64 image data") from None
    path = resolve(value, opts.image_root)
    if not is_remote(path) and not Path(path).is_file():
        raise DataError(f"{location}: image file not found: {path}")
    return path


def _captions(value: Any, location: str) -> list[str]:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{location}: caption must be a non-empty string or list of strings")
    return value


def caption_entry(entry: dict, opts: EntryOptions, location: str, rng: random.Random) -> Record:
    """A stage-1 caption record (see the module docstring)."""
    _, image = _pick(entry, opts.image_key, IMAGE_KEYS)
    if image is None:
        raise DataError(f"{location}: no image field ({opts.image_key or ', '.join(IMAGE_KEYS)})")
    _, caption = _pick(entry, opts.caption_key, CAPTION_KEYS)
    if caption is None:
        raise DataError(f"{location}: no caption field ({opts.caption_key or ', '.join(CAPTION_KEYS)})")
    captions = _captions(caption, location)
    prefix = opts.prefix if opts.prefix_key is None else entry.get(opts.prefix_key) or None
    record = caption_record(rng.choice(captions) if len(captions) > 1 else captions[0],
                            image_ref(image, opts, location), prefix=prefix, source=opts.source,
                            key=str(entry.get("key", entry.get("id", location))))
    return _finish(record, opts, location)


def _finish(record: Record, opts: EntryOptions, location: str) -> Record:
    return Record(record.messages, record.image, record.prefix, record.source, record.key, opts.template,
                  {"location": location})


def _text(entry: dict, key: str, location: str, required: bool = True) -> str:
    value = entry.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(f"{location}: field {key!r} must be a non-empty string")
    return value


def alpaca_entry(entry: dict, opts: EntryOptions, location: str, rng: random.Random) -> Record:
    """An Alpaca instruction record (``instruction``, optional ``input``, ``output``)."""
    messages = (Message("user", _text(entry, "instruction", location), _text(entry, "input", location, False)),
                Message("assistant", _text(entry, "output", location)))
    image = entry.get("image")
    ref = image_ref(image, opts, location) if image else None
    return _finish(Record(messages, ref, source=opts.source, key=str(entry.get("id", location))), opts, location)


def llava_entry(entry: dict, opts: EntryOptions, location: str, rng: random.Random) -> Record:
    """A LLaVA conversation record (multi-turn)."""
    turns = entry.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{location}: 'conversations' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
            raise DataError(f"{location}: conversations[{i}] needs 'from' (human, gpt or system) and a text 'value'")
        messages.append(Message(_ROLES[turn["from"]], turn["value"]))  # type: ignore[arg-type]
    image = entry.get("image")
    ref = image_ref(image, opts, location) if image else None
    key = str(entry.get("id", location))
    return _finish(Record(tuple(messages), ref, source=opts.source, key=key), opts, location)


def kind_of_entry(entry: Optional[dict]) -> str:
    """``llava`` (has conversations), ``alpaca`` (instruction + output) or ``manifest``."""
    if entry and "conversations" in entry:
        return "llava"
    if entry and "instruction" in entry and "output" in entry:
        return "alpaca"
    return "manifest"


ENTRY_READERS = {"manifest": caption_entry, "alpaca": alpaca_entry, "llava": llava_entry}
"""Source kind -> entry reader."""
