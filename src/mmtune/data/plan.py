"""What the loader's worker processes share: the picklable :class:`Plan` (sources, encoder, batching,
this rank's place) and the :class:`Meta` sent along with each micro-batch.

Public API: :class:`Plan`, :class:`Meta`, :func:`worker_slot` ``() -> (worker, workers)`` (``(0, 1)``
outside a DataLoader worker), :func:`encode_counted` (encode one record read from a source, counting it),
:func:`count` (the counting rule alone) and :func:`located`.
Used by :mod:`mmtune.data.stream` (stream mode), :mod:`mmtune.data.mapped` (map mode) and
:mod:`mmtune.data.loader`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Union

from torch.utils.data import get_worker_info

from mmtune.data.badrecords import BadRecord
from mmtune.data.batch import Batch
from mmtune.data.encode import EncodedSample, RecordEncoder, Skipped
from mmtune.data.images import ImageTransform, LocatedImage, decode_row_images
from mmtune.data.lengths import LengthStore
from mmtune.data.packing import Packer, Row, collate
from mmtune.data.records import Record
from mmtune.data.sources import Source
from mmtune.data.stats import DataStats
from mmtune.errors import DataError


def located(item: Record) -> Record:
    """``item`` with its image wrapped in a :class:`~mmtune.data.images.LocatedImage`, so that a decoding
    failure later names where the record came from."""
    if item.image is None:
        return item
    return dataclasses.replace(item, image=LocatedImage(item.image, item.source, item.extra.get("location", item.key)))


def count(stats: DataStats, source: str, outcome: Union[EncodedSample, Skipped, BadRecord, Any]) -> Optional[Any]:
    """Counts what one record read from ``source`` became (a sample, a skip or a bad record) in ``stats``;
    the sample, or None. The one counting rule of the loader, the lengths plan and the data check."""
    counts = stats.of(source)
    counts.read += 1
    if isinstance(outcome, BadRecord):
        stats.add_bad(outcome, read=False)
        return None
    if isinstance(outcome, Skipped):
        counts.skipped += 1
        return None
    counts.samples += 1
    counts.truncated += int(outcome.truncated)
    return outcome


def encode_counted(encoder: RecordEncoder, item: Union[Record, BadRecord], stats: DataStats
                   ) -> Optional[EncodedSample]:
    """Encodes a record read from a source (:func:`located`), counting it in ``stats`` (:func:`count`);
    None for bad or skipped records."""
    if isinstance(item, BadRecord):
        return count(stats, item.source, item)
    item = located(item)
    try:
        out: Union[EncodedSample, Skipped, BadRecord] = encoder(item)
    except DataError as exc:
        out = BadRecord(item.source, item.extra.get("location", item.key), str(exc))
    return count(stats, item.source, out)


@dataclass
class Plan:
    """Everything a worker needs to turn sources into this rank's micro-batches (picklable)."""

    sources: list[Source]
    encoder: RecordEncoder
    batching: str
    pad_id: int
    image_token_id: int
    transform: Optional[ImageTransform]
    micro: int
    rank: int
    world: int
    seed: int
    shuffle_buffer: int
    lengths: Optional[LengthStore] = None
    """Map mode: the cached lengths pass the row plan is made from (:mod:`mmtune.data.lengths`)."""
    balance: Optional[int] = None
    """Map mode: None deals each group's rows over the ranks in order; else by cost, this being the extra
    cost of one image in tokens (:func:`mmtune.data.mapped.rank_rows`)."""

    def encode(self, item: Union[Record, BadRecord], stats: DataStats) -> Optional[EncodedSample]:
        """Encodes one record (counting it); None for bad or skipped records."""
        return encode_counted(self.encoder, item, stats)

    def packer(self) -> Packer:
        """A fresh packer for the configured batching."""
        return Packer(self.encoder.max_seq_len, self.pad_id, self.batching)  # type: ignore[arg-type]

    def rows(self, items: Iterable[Union[Record, BadRecord]], stats: DataStats) -> Iterator[Row]:
        """Rows of ``items`` in order, flushing the packer at the end."""
        packer = self.packer()
        for item in items:
            sample = self.encode(item, stats)
            if sample is not None:
                yield from packer.push(sample)
        yield from packer.flush()

    def collate(self, rows: list[Row], stats: DataStats) -> Batch:
        """Decodes the rows' images and stacks them into a batch (counting rows and padding)."""
        if self.transform is not None:
            rows = [decode_row_images(r, self.transform, self.image_token_id, stats) for r in rows]
        batch = collate(rows)
        stats.rows += len(rows)
        stats.tokens += batch.num_tokens
        stats.padding += batch.num_padding
        return batch


@dataclass
class Meta:
    """What a worker sends along with each micro-batch."""

    worker: int
    position: tuple[int, int]
    """Map mode: (epoch, row) of the next group; stream mode: (epoch, micro-batches of this worker)."""
    ends_epoch: bool
    stats: DataStats
    origins: tuple = ()
    """Stream mode: where the batch's samples (and the bad or skipped ones read before them) were read."""
    snapshot: Optional[dict] = None
    """Stream mode: the reader's state right after this batch (:meth:`mmtune.data.reader.Reader.snapshot`)."""


def worker_slot() -> tuple[int, int]:
    """(this DataLoader worker's id, the number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
