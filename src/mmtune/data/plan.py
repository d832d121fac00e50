"""What the loader's worker processes share: the picklable :class:`Plan` (sources, encoder, batching,
this rank's place) and the :class:`Meta` sent along with each micro-batch.

Public API: :class:`Plan`, :class:`Meta`, :func:`worker_slot` ``() -> (worker, workers)`` (``(0, 1)``
outside a DataLoader worker) and :func:`encode_counted` (encode one record read from a source, counting it).
Used by :mod:`mmtune.data.stream` (stream mode), :mod:`mmtune.data.mapped` (map mode) and
:mod:`mmtune.data.loader`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Union

from torch.utils.data import get_worker_info

from mmtune.data.badrecords import BadRecord
from mmtune.data.batch import Batch
from mmtune.data.encode import EncodedSample, RecordEncoder, Skipped
from mmtune.data.images import ImageTransform, LocatedImage, decode_row_images
from mmtune.data.packing import Packer, Row, collate
from mmtune.data.records import Record
from mmtune.data.sources import Source
from mmtune.data.stats import DataStats
from mmtune.errors import DataError


def encode_counted(encoder: RecordEncoder, item: Union[Record, BadRecord], stats: DataStats
                   ) -> Optional[EncodedSample]:
    """Encodes a record read from a source, counting it in ``stats``; None for bad or skipped records.

    The image is wrapped in a :class:`~mmtune.data.images.LocatedImage` so that a decoding failure
    later names where the record came from.
    """
    if isinstance(item, BadRecord):
        stats.add_bad(item)
        return None
    counts = stats.of(item.source)
    counts.read += 1
    location = item.extra.get("location", item.key)
    if item.image is not None:
        item = dataclasses.replace(item, image=LocatedImage(item.image, item.source, location))
    try:
        out = encoder(item)
    except DataError as exc:
        stats.add_bad(BadRecord(item.source, location, str(exc)), read=False)
        return None
    if isinstance(out, Skipped):
        counts.skipped += 1
        return None
    counts.samples += 1
    counts.truncated += int(out.truncated)
    return out


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
