"""Stream mode (any webdataset source).

Shards (and the entries of other sources) are split over ``rank x worker`` readers after a per-epoch
seeded shuffle, so no sample is read twice per epoch; each reader interleaves its sources by weight,
shuffles through a ``data.shuffle_buffer`` and packs its own rows. Ranks may reach the end of an epoch at
different steps. The state counts the micro-batches taken from each worker; resuming with the same ranks
and workers replays them. An epoch reads every sample of every source once (weights change the order
only), so its rows (:func:`stream_rows`) are known without reading a shard when the shards' samples are
counted (``SourceConfig.num_samples``, or img2dataset's ``{shard}_stats.json``) and each sample is a row
(``grouped`` or ``padded`` batching).

Public API: :class:`ShardStream` (the micro-batches of one reader for one epoch), :func:`stream_rows`.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from torch.utils.data import IterableDataset

from mmtune.data.batch import Batch
from mmtune.data.mixture import interleave
from mmtune.data.packing import Row
from mmtune.data.plan import Meta, Plan, worker_slot
from mmtune.data.sources import ShardSource, Source
from mmtune.data.stats import DataStats
from mmtune.errors import ConfigError


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = int(rng.integers(len(buffer)))
        yield buffer[k]
        buffer[k] = item
    rng.shuffle(buffer)  # type: ignore[arg-type]
    yield from buffer


def _reader_items(plan: Plan, source_id: int, epoch: int, reader: int, readers: int) -> Iterator[Any]:
    source = plan.sources[source_id]
    rng = np.random.default_rng([plan.seed, epoch, source_id])
    if isinstance(source, ShardSource):
        order = rng.permutation(len(source.shards))[reader::readers]
        for k in order.tolist():
            yield from source.read(source.shards[k])
    else:
        for i in rng.permutation(len(source))[reader::readers].tolist():
            yield source.record(i, epoch, plan.seed)


class ShardStream(IterableDataset):
    """Stream mode: the micro-batches of reader ``rank * workers + worker`` for one epoch."""

    def __init__(self, plan: Plan, epoch: int, skip: tuple[int, ...]):
        self.plan, self.epoch, self.skip = plan, epoch, skip

    def __iter__(self) -> Iterator[tuple[Batch, Meta]]:
        w, n = worker_slot()
        plan, reader, readers = self.plan, self.plan.rank * n + w, self.plan.world * n
        streams = [_reader_items(plan, s, self.epoch, reader, readers) for s in range(len(plan.sources))]
        mixed = interleave(streams, [s.weight for s in plan.sources],
                           np.random.default_rng([plan.seed, self.epoch, reader, 1]))
        items = _shuffled(mixed, plan.shuffle_buffer, np.random.default_rng([plan.seed, self.epoch, reader, 2]))
        stats = DataStats()
        skip = self.skip[w] if w < len(self.skip) else 0
        chunk: list[Row] = []
        made = 0
        for row in plan.rows(items, stats):
            chunk.append(row)
            if len(chunk) == plan.micro:
                made += 1
                if made > skip:
                    yield self._batch(chunk, stats, w, made)
                else:
                    stats.take()
                chunk = []
        if chunk and made + 1 > skip:
            yield self._batch(chunk, stats, w, made + 1)

    def _batch(self, rows: list[Row], stats: DataStats, worker: int, made: int) -> tuple[Batch, Meta]:
        delta = stats.take()
        return self.plan.collate(rows, delta), Meta(worker, (self.epoch, made), False, delta)


def stream_rows(sources: list[Source], batching: str) -> int:
    """Rows of one epoch of a stream: each sample of each source once (a webdataset source's
    ``samples_per_epoch()``, a map source's entries), one row per sample. ConfigError with ``packed``
    batching (how many samples share a row is unknown before they are read) or uncounted shards; samples
    later found bad or skipped make the count an upper bound."""
    if batching == "packed":
        raise ConfigError("data.batching", batching, "grouped or padded to count an epoch of streamed shards "
                                                     "(a packed row holds an unknown number of samples), "
                                                     "or set training.max_steps")
    return sum(s.samples_per_epoch() if isinstance(s, ShardSource) else len(s) for s in sources)
