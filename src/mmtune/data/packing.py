"""Encoded samples -> token rows (packed, grouped or padded) -> the training :class:`~mmtune.data.batch.Batch`.

Public API:

* :class:`Row`: one row of a batch (``input_ids``, ``labels``, ``positions``, ``sample_ids``,
  ``images``, ``num_samples``, ``pad_id``, the samples' ``keys`` and ``origins``; ``num_padding``,
  ``num_supervised``, ``num_tokens``).
* :func:`build_row` ``(samples, pad_id, length=None) -> Row``: lays samples side by side, shifts labels,
  restarts positions per sample, pads to ``length``.
* :class:`Packer` ``(max_seq_len, pad_id, mode="packed", *, open_rows=4, group_size=64,
  pad_to_max=True)``: a streaming packer: ``push(sample) -> finished rows``, ``flush() -> the rest``,
  ``stats`` (:class:`PackingStats`, with ``padding_fraction``), ``state_dict``/``load_state_dict``,
  ``row(samples)`` (the row it makes of them).
* :func:`collate` ``(rows, image_transform=None) -> Batch``: the Batch of docs/architecture.md, with the
  rows' sample ``keys``. A row's images are references (decoded with ``image_transform``) or tensors
  already decoded (taken as they are).

Modes. ``packed``: several samples per row of exactly ``max_seq_len`` tokens, placed best-fit into up to
``open_rows`` open rows (when none fits and all are open, the fullest is finished). ``grouped``: one
sample per row; ``group_size`` samples are buffered and released sorted by length (longest first), so
consecutive rows, batched together, have similar lengths and :func:`collate` pads only to the batch's
longest. ``padded``: one sample per row, padded to ``max_seq_len`` (``pad_to_max``) or, unpadded, to the
batch's longest by :func:`collate`. Everything is deterministic in the order samples are pushed.

Row layout. ``labels[t]`` is the target of position ``t``: the next token when it is supervised, else
-100; the last token of every sample, prompts, image positions and padding are -100. ``positions``
restart at 0 per sample (0 on padding); ``sample_ids`` are 0, 1, ... per sample and -1 on padding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Optional, Sequence

import torch

from mmtune.data.batch import Batch
from mmtune.data.encode import IGNORE_INDEX, EncodedSample
from mmtune.data.records import ImageRef
from mmtune.errors import ConfigError, DataError

Batching = Literal["packed", "grouped", "padded"]
BATCHING_MODES: tuple[str, ...] = ("packed", "grouped", "padded")


@dataclass(frozen=True)
class Row:
    """One row of a batch, possibly shorter than the batch (``collate`` pads it)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    sample_ids: torch.Tensor
    images: tuple[ImageRef, ...]
    num_samples: int
    pad_id: int
    keys: tuple[str, ...] = ()
    """The identities of the row's samples (:attr:`~mmtune.data.encode.EncodedSample.identity`), in order."""
    origins: tuple = ()
    """Where the loader read each sample (:attr:`~mmtune.data.encode.EncodedSample.origin`), in order."""

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_padding(self) -> int:
        """Padding positions in the row."""
        return int((self.sample_ids < 0).sum())

    @property
    def num_tokens(self) -> int:
        """Non-padding positions in the row."""
        return len(self) - self.num_padding

    @property
    def num_supervised(self) -> int:
        """Positions with a target."""
        return int((self.labels != IGNORE_INDEX).sum())

    def padded(self, length: int) -> "Row":
        """This row padded on the right to ``length`` positions."""
        extra = length - len(self)
        assert extra >= 0, f"row of {len(self)} tokens cannot be padded to {length}"
        if not extra:
            return self

        def pad(t: torch.Tensor, value: int) -> torch.Tensor:
            return torch.cat([t, torch.full((extra,), value, dtype=t.dtype)])

        return Row(pad(self.input_ids, self.pad_id), pad(self.labels, IGNORE_INDEX), pad(self.positions, 0),
                   pad(self.sample_ids, -1), self.images, self.num_samples, self.pad_id, self.keys, self.origins)


def build_row(samples: Sequence[EncodedSample], pad_id: int, length: Optional[int] = None) -> Row:
    """Lays ``samples`` side by side (shifted labels, per-sample positions), padded to ``length``."""
    assert samples, "a row needs at least one sample"
    lengths = torch.tensor([len(s) for s in samples], dtype=torch.long)
    ids = torch.cat([s.input_ids for s in samples])
    mask = torch.cat([s.loss_mask for s in samples])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:-1] = torch.where(mask[1:], ids[1:], labels[1:])
    ends = torch.cumsum(lengths, 0)
    labels[ends - 1] = IGNORE_INDEX
    starts = torch.repeat_interleave(ends - lengths, lengths)
    positions = torch.arange(ids.numel(), dtype=torch.long) - starts
    sample_ids = torch.repeat_interleave(torch.arange(len(samples), dtype=torch.long), lengths)
    images = tuple(ref for s in samples for ref in s.images)
    row = Row(ids, labels, positions, sample_ids, images, len(samples), pad_id,
              tuple(s.identity for s in samples), tuple(s.origin for s in samples))
    return row.padded(length) if length is not None else row


@dataclass
class PackingStats:
    """Running counts of what the packer emitted."""

    rows: int = 0
    samples: int = 0
    tokens: int = 0
    padding: int = 0

    @property
    def padding_fraction(self) -> float:
        """Share of emitted positions that are padding (0 when nothing was emitted)."""
        total = self.tokens + self.padding
        return self.padding / total if total else 0.0


@dataclass(eq=False)  # bins are compared by identity: their samples hold tensors
class _Bin:
    samples: list[EncodedSample] = field(default_factory=list)
    used: int = 0


class Packer:
    """Streaming packer: push encoded samples, take finished rows (see the module docstring)."""

    def __init__(self, max_seq_len: int, pad_id: int, mode: Batching = "packed", *, open_rows: int = 4,
                 group_size: int = 64, pad_to_max: bool = True) -> None:
        if mode not in BATCHING_MODES:
            raise ConfigError("data.batching", mode, "one of " + ", ".join(BATCHING_MODES))
        if max_seq_len <= 0 or open_rows <= 0 or group_size <= 0:
            raise ConfigError("packer", (max_seq_len, open_rows, group_size), "positive sizes")
        self.max_seq_len, self.pad_id, self.mode = max_seq_len, pad_id, mode
        self.open_rows, self.group_size, self.pad_to_max = open_rows, group_size, pad_to_max
        self.stats = PackingStats()
        self._bins: list[_Bin] = []
        self._buffer: list[EncodedSample] = []

    def push(self, sample: EncodedSample) -> list[Row]:
        """Adds one sample; returns the rows it finished (often none)."""
        if len(sample) > self.max_seq_len:
            raise DataError(f"sample {sample.key!r} has {len(sample)} tokens, more than max_seq_len "
                            f"{self.max_seq_len}; encode with the same max_seq_len")
        if self.mode == "padded":
            return [self._emit([sample])]
        if self.mode == "grouped":
            self._buffer.append(sample)
            return self._release_group() if len(self._buffer) >= self.group_size else []
        return self._pack(sample)

    def flush(self) -> list[Row]:
        """Finishes every open row and buffered sample."""
        rows = [self._emit(b.samples) for b in self._bins]
        self._bins = []
        return rows + self._release_group()

    def pack(self, samples: Iterable[EncodedSample]) -> Iterator[Row]:
        """Every row of ``samples``, flushing at the end."""
        for sample in samples:
            yield from self.push(sample)
        yield from self.flush()

    def _pack(self, sample: EncodedSample) -> list[Row]:
        need = len(sample)
        fits = [b for b in self._bins if b.used + need <= self.max_seq_len]
        out: list[Row] = []
        if fits:
            target = max(fits, key=lambda b: b.used)
        else:
            if len(self._bins) >= self.open_rows:
                fullest = max(self._bins, key=lambda b: b.used)
                self._bins.remove(fullest)
                out.append(self._emit(fullest.samples))
            target = _Bin()
            self._bins.append(target)
        target.samples.append(sample)
        target.used += need
        if target.used == self.max_seq_len:
            self._bins.remove(target)
            out.append(self._emit(target.samples))
        return out

    def _release_group(self) -> list[Row]:
        group = sorted(self._buffer, key=len, reverse=True)
        self._buffer = []
        return [self._emit([s]) for s in group]

    def row(self, samples: list[EncodedSample]) -> Row:
        """The row this packer makes of ``samples`` (uncounted)."""
        fixed = self.mode == "packed" or (self.mode == "padded" and self.pad_to_max)
        return build_row(samples, self.pad_id, self.max_seq_len if fixed else None)

    def _emit(self, samples: list[EncodedSample]) -> Row:
        row = self.row(samples)
        self.stats.rows += 1
        self.stats.samples += len(samples)
        self.stats.tokens += row.num_tokens
        self.stats.padding += row.num_padding
        return row

    def state_dict(self) -> dict:
        """What is needed to resume: samples waiting in open rows or the group buffer, and the counts."""
        return {"bins": [list(b.samples) for b in self._bins], "buffer": list(self._buffer),
                "stats": vars(self.stats).copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`."""
        self._bins = [_Bin(list(samples), sum(len(s) for s in samples)) for samples in state["bins"]]
        self._buffer = list(state["buffer"])
        self.stats = PackingStats(**state["stats"])


def collate(rows: Sequence[Row], image_transform: Optional[Callable[[ImageRef], torch.Tensor]] = None) -> Batch:
    """Stacks rows (padded to the longest) into the :class:`~mmtune.data.batch.Batch` of
    docs/architecture.md, with its counts."""
    assert rows, "collate needs at least one row"
    length = max(len(r) for r in rows)
    rows = [r.padded(length) for r in rows]
    tensors = [torch.stack([getattr(r, name) for r in rows])
               for name in ("input_ids", "labels", "positions", "sample_ids")]
    refs = [ref for r in rows for ref in r.images]
    pixel_values = None
    if refs:
        pending = sum(not isinstance(ref, torch.Tensor) for ref in refs)
        if pending and image_transform is None:
            raise DataError(f"the batch holds {pending} undecoded images but no image transform was given")
        pixel_values = torch.stack([ref if isinstance(ref, torch.Tensor) else image_transform(ref)
                                    for ref in refs])
    batch = Batch.from_tensors(*tensors, pixel_values=pixel_values, num_samples=sum(r.num_samples for r in rows))
    return dataclasses.replace(batch, keys=tuple(k for r in rows for k in r.keys))
