"""The resumable distributed loader: sources -> records -> encoded samples -> rows -> micro-batches.

API the trainer calls (stable)::

    loader = build_loader(cfg, processor, rank=r, world_size=W, seed=s)  # processor: data/processor.py
    for batch in loader: ...        # one epoch of this rank's micro-batches (Batch, docs/architecture.md)
    loader.state_dict() / loader.load_state_dict(state)
    loader.stats()                  # per-source samples, bad, truncated, skipped; padding fraction
    loader.epoch                    # the epoch the next row belongs to
    loader.rows_per_epoch           # rows of one epoch over all ranks (streams: see stream_rows)

Helpers: :func:`encode_counted` (encode one record
read from a source, counting it), :func:`map_rows` (the global row sequence of map mode).

Each :class:`~mmtune.data.batch.Batch` holds ``cfg.training.micro_batch_size`` rows plus the counts
:func:`~mmtune.data.packing.collate` adds (``num_samples``, ``num_supervised``, ``num_tokens``, ``num_padding``).

Map mode (every source has random access: manifests, Alpaca, LLaVA). An epoch's global order comes from
:func:`~mmtune.data.mixture.epoch_order` (seeded by ``(seed, epoch)``), samples are encoded and packed in
that order, and the rows form ONE global sequence, continuous from epoch to epoch, that does not depend
on the world size. Rows are taken in groups of ``W * micro``: rank ``r`` takes rows ``r*micro ..
(r+1)*micro - 1`` of each group, so at every step the ranks together consume what one process would. An
iteration ends with the group holding the epoch's last row (the next epoch's first rows may complete that
group). The state is the global position ``(epoch, row)`` of the next group, the same on every rank, so
a state saved with W ranks resumes with any other number. Resuming re-encodes (without decoding images)
the rows of the epoch before that position.

Stream mode (any webdataset source). Shards (and the entries of other sources) are split over ``rank x
worker`` readers after a per-epoch seeded shuffle, so no sample is read twice per epoch; each reader
interleaves its sources by weight, shuffles through a ``data.shuffle_buffer`` and packs its own rows.
Ranks may reach the end of an epoch at different steps. The state counts the micro-batches taken from
each worker; resuming with the same ranks and workers replays them. An epoch reads every sample of every
source once (weights change the order only), so its rows (:func:`stream_rows`) are known without
reading a shard when the shards' samples are counted (``SourceConfig.num_samples``, or img2dataset's
``{shard}_stats.json``) and each sample is a row (``grouped`` or ``padded`` batching).

Workers. With ``data.num_workers`` > 0 a torch DataLoader runs the pipeline in worker processes, worker
``w`` producing every ``num_workers``-th micro-batch; images are decoded there, only for the rows this rank
takes; on a machine with CUDA the batches come back in pinned memory, so the copy to the GPU overlaps
compute. A sample whose image cannot be decoded is blanked out of its row
(:func:`~mmtune.data.images.decode_row_images`). Bad records are counted per source; past
``data.max_bad_fraction`` the loader raises :class:`~mmtune.errors.DataError` naming the worst sources.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmtune.config import Config
from mmtune.data.badrecords import BadRecord
from mmtune.data.batch import Batch
from mmtune.data.encode import EncodedSample, RecordEncoder, Skipped
from mmtune.data.images import ImageTransform, LocatedImage, decode_row_images
from mmtune.data.mixture import epoch_order, interleave, open_sources
from mmtune.data.packing import Packer, Row, collate
from mmtune.data.processor import Processor
from mmtune.data.records import Record
from mmtune.data.sources import MapSource, ShardSource, Source
from mmtune.data.stats import DataStats
from mmtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)
STATE_VERSION = 1


def _identity(item: Any) -> Any:
    return item


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
class _Plan:
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
class _Meta:
    """What a worker sends along with each micro-batch."""

    worker: int
    position: tuple[int, int]
    """Map mode: (epoch, row) of the next group; stream mode: (epoch, micro-batches of this worker)."""
    ends_epoch: bool
    stats: DataStats


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _with_last(items: Iterator[Row]) -> Iterator[tuple[Row, bool]]:
    held = next(items, None)
    for item in items:
        yield held, False  # type: ignore[misc]
        held = item
    if held is not None:
        yield held, True


def map_rows(plan: _Plan, epoch: int, stats: DataStats) -> Iterator[tuple[int, int, Row, bool]]:
    """The global row sequence from the start of ``epoch`` on: (epoch, row index, row, last of epoch)."""
    sources = plan.sources
    while True:
        ids, indices = epoch_order([len(s) for s in sources], [s.weight for s in sources], plan.seed, epoch)
        items = (sources[s].record(i, epoch, plan.seed)  # type: ignore[union-attr]
                 for s, i in zip(ids.tolist(), indices.tolist()))
        count = 0
        for count, (row, last) in enumerate(_with_last(plan.rows(items, stats)), 1):
            yield epoch, count - 1, row, last
        if not count:
            raise DataError(f"epoch {epoch}: no source produced a usable sample (see the bad-record reports)")
        epoch += 1


def map_groups(plan: _Plan, position: tuple[int, int], stats: DataStats
               ) -> Iterator[tuple[list[Row], bool, tuple[int, int]]]:
    """Groups of ``world * micro`` rows from ``position`` to the group holding the epoch's last row."""
    epoch, skip = position
    rows = map_rows(plan, epoch, stats)
    for _ in range(skip):
        if next(rows)[3]:
            raise DataError(f"the saved loader position (epoch {epoch}, row {skip}) lies beyond the end of "
                            "that epoch: the data or its settings changed since it was saved")
    stats.take()
    size = plan.world * plan.micro
    group: list[Row] = []
    ends = False
    for e, i, row, last in rows:
        group.append(row)
        ends = ends or last
        if len(group) == size:
            yield group, ends, ((e + 1, 0) if last else (e, i + 1))
            if ends:
                return
            group, ends = [], False


class _MapStream(IterableDataset):
    """Map mode: this rank's micro-batches of one iteration (worker ``w`` makes every n-th)."""

    def __init__(self, plan: _Plan, position: tuple[int, int]):
        self.plan, self.position = plan, position

    def __iter__(self) -> Iterator[tuple[Batch, _Meta]]:
        w, n = _worker()
        stats = DataStats()
        lo, hi = self.plan.rank * self.plan.micro, (self.plan.rank + 1) * self.plan.micro
        for g, (group, ends, following) in enumerate(map_groups(self.plan, self.position, stats)):
            delta = stats.take()
            if g % n == w:
                batch = self.plan.collate(group[lo:hi], delta)
                yield batch, _Meta(w, following, ends, delta)


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


def _reader_items(plan: _Plan, source_id: int, epoch: int, reader: int, readers: int) -> Iterator[Any]:
    source = plan.sources[source_id]
    rng = np.random.default_rng([plan.seed, epoch, source_id])
    if isinstance(source, ShardSource):
        order = rng.permutation(len(source.shards))[reader::readers]
        for k in order.tolist():
            yield from source.read(source.shards[k])
    else:
        for i in rng.permutation(len(source))[reader::readers].tolist():
            yield source.record(i, epoch, plan.seed)


class _ShardStream(IterableDataset):
    """Stream mode: the micro-batches of reader ``rank * workers + worker`` for one epoch."""

    def __init__(self, plan: _Plan, epoch: int, skip: tuple[int, ...]):
        self.plan, self.epoch, self.skip = plan, epoch, skip

    def __iter__(self) -> Iterator[tuple[Batch, _Meta]]:
        w, n = _worker()
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

    def _batch(self, rows: list[Row], stats: DataStats, worker: int, made: int) -> tuple[Batch, _Meta]:
        delta = stats.take()
        return self.plan.collate(rows, delta), _Meta(worker, (self.epoch, made), False, delta)


class Loader:
    """Iterable over this rank's micro-batches, one epoch per iteration (see the module docstring); the
    :class:`~mmtune.data.batch.BatchLoader` the trainer takes."""

    def __init__(self, plan: _Plan, *, num_workers: int, max_bad_fraction: float):
        self._plan, self._num_workers, self._max_bad = plan, num_workers, max_bad_fraction
        self.streaming = any(isinstance(s, ShardSource) for s in plan.sources)
        self._position = (0, 0)
        self._consumed = [0] * max(num_workers, 1)
        self._stats = DataStats()
        self._rows: Optional[int] = None
        self._sizes = {s.name: len(s) for s in plan.sources if isinstance(s, MapSource)}
        self._count_load_errors()

    def _count_load_errors(self) -> None:
        whole = DataStats()
        for source in self._plan.sources:
            if isinstance(source, MapSource) and source.load_bad:
                for bad in source.load_bad:
                    self._stats.add_bad(bad)
                    whole.add_bad(bad)
                whole.of(source.name).read += len(source)
                self._log([f"{source.name}: {r}" for r in whole.of(source.name).reports])
        whole.check(self._max_bad, {name: c.read for name, c in whole.sources.items()})

    @property
    def epoch(self) -> int:
        """The epoch the next row belongs to."""
        return self._position[0]

    @property
    def rows_per_epoch(self) -> Optional[int]:
        """Rows of one epoch over all ranks, counted once: map mode by encoding epoch 0 (no image is read),
        stream mode by :func:`stream_rows` (ConfigError when they cannot be counted)."""
        if self._rows is None and self.streaming:
            self._rows = stream_rows(self._plan.sources, self._plan.batching)
        elif self._rows is None:
            self._rows = 1 + max(i for e, i, _, last in _until_last(map_rows(self._plan, 0, DataStats())))
        return self._rows

    def _log(self, reports: list[str]) -> None:
        if self._plan.rank == 0:
            for report in reports:
                log.warning("bad record skipped: %s", report)

    def _iterator(self) -> Iterator[tuple[Batch, _Meta]]:
        if self.streaming:
            dataset: IterableDataset = _ShardStream(self._plan, self._position[0], tuple(self._consumed))
        else:
            dataset = _MapStream(self._plan, self._position)
        if self._num_workers == 0:
            return iter(dataset)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return iter(DataLoader(dataset, batch_size=None, num_workers=self._num_workers, collate_fn=_identity,
                               pin_memory=torch.cuda.is_available()))

    def __iter__(self) -> Iterator[Batch]:
        for batch, meta in self._iterator():
            if self.streaming:
                self._consumed[meta.worker] = meta.position[1]
            else:
                self._position = meta.position
            self._log(self._stats.merge(meta.stats))
            self._stats.check(self._max_bad, self._sizes)
            yield batch
        if self.streaming:
            self._position = (self._position[0] + 1, 0)
            self._consumed = [0] * len(self._consumed)
        self._stats.check(self._max_bad)
        if self._plan.rank == 0:
            log.info("data epoch done (next: %d): %s", self.epoch, summary(self.stats()))

    def stats(self) -> dict:
        """Per-source counts (read, samples, bad, truncated, skipped, first bad reports), rows, padding."""
        return {"epoch": self.epoch, **self._stats.as_dict()}

    def state_dict(self) -> dict:
        """The position (see the module docstring) and the counts, as plain Python values."""
        state = {"version": STATE_VERSION, "mode": "stream" if self.streaming else "map",
                 "epoch": self._position[0], "stats": self._stats.state_dict(), "seed": self._plan.seed}
        if self.streaming:
            state.update(consumed=list(self._consumed), split=[self._plan.world, len(self._consumed)])
        else:
            state["row"] = self._position[1]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continues from :meth:`state_dict` (map mode: saved with any world size)."""
        mode = "stream" if self.streaming else "map"
        if state.get("version") != STATE_VERSION or state.get("mode") != mode:
            raise DataError(f"loader state (version {state.get('version')}, {state.get('mode')} mode) does not "
                            f"fit this loader (version {STATE_VERSION}, {mode} mode): were the sources changed?")
        self._stats.load_state_dict(state["stats"])
        if not self.streaming:
            self._position = (int(state["epoch"]), int(state["row"]))
            return
        self._position = (int(state["epoch"]), 0)
        if state["split"] == [self._plan.world, len(self._consumed)]:
            self._consumed = [int(c) for c in state["consumed"]]
        else:
            log.warning("stream state was saved for %s ranks x workers, now %s: restarting epoch %d",
                        state["split"], [self._plan.world, len(self._consumed)], self._position[0])


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


def _until_last(rows: Iterator[tuple[int, int, Row, bool]]) -> Iterator[tuple[int, int, Row, bool]]:
    for item in rows:
        yield item
        if item[3]:
            return


def summary(stats: dict) -> str:
    """One line of counts per source plus the padding fraction."""
    parts = [f"{name}: {c['samples']} samples, {c['bad']} bad, {c['truncated']} truncated, {c['skipped']} skipped"
             for name, c in stats["sources"].items()]
    return "; ".join(parts) + f"; padding {100 * stats['padding_fraction']:.1f}% of {stats['rows']} rows"


def build_loader(cfg: Config, processor: Processor, *, rank: int, world_size: int, seed: int) -> Loader:
    """The loader of ``cfg.data`` for rank ``rank`` of ``world_size`` (see the module docstring)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError("rank", rank, f"0 <= rank < world_size = {world_size}")
    data = cfg.data
    tokenizer, transform, encoder = processor.tokenizer, processor.image_transform, processor.encoder(data)
    plan = _Plan(open_sources(data), encoder, data.batching, tokenizer.pad_id, tokenizer.image_token_id,
                 transform, cfg.training.micro_batch_size, rank, world_size, seed, max(data.shuffle_buffer, 1))
    loader = Loader(plan, num_workers=data.num_workers, max_bad_fraction=data.max_bad_fraction)
    if loader.streaming and rank == 0:
        shards = sum(len(s.shards) for s in plan.sources if isinstance(s, ShardSource))
        readers = world_size * max(data.num_workers, 1)
        if shards < readers:
            log.warning("%d shards for %d readers (ranks x workers): some read nothing", shards, readers)
    return loader
