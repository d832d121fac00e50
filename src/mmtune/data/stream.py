"""Stream mode (any webdataset source): positions, elastic resume, weights that hold.

Each source's epoch is a list of units (its shards; blocks of entries for a random-access source), dealt
over the ``rank x worker`` readers after a seeded shuffle (:mod:`mmtune.data.positions`). Each reader
interleaves its sources by weight, so a source of weight ``w`` supplies ``w / sum(weights)`` of the
samples; a source that runs out either ends the run's epoch (``exhausted: stop``, the default) or starts
its own next epoch (``exhausted: restart``, counted per source). The reader then shuffles through
``data.shuffle_buffer`` samples and packs its own rows. Ranks may reach the end of an epoch at different
steps.

Every sample carries its origin (source, source epoch, unit, offset); a batch's origins (and those of the
bad or skipped samples read before it) are committed when the trainer takes the batch, so samples held in
the shuffle buffer, the packer or a prefetched batch are not counted. The state is the union of the
commits; resuming deals the units left over the readers there are now (any ranks x workers) and opens a
partly read unit at its first untaken sample: what is read again is at most the rest of the units begun.

Public API: :class:`StreamCursor` (the main process's side: position, state, the dataset of one epoch),
:class:`ShardStream` (one epoch of a reader's micro-batches), :func:`stream_rows`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterator

import numpy as np
from torch.utils.data import IterableDataset

from mmtune.data.batch import Batch
from mmtune.data.mixture import interleave
from mmtune.data.packing import Row
from mmtune.data.plan import Meta, Plan, worker_slot
from mmtune.data.positions import UNIT_ENTRIES, Origin, Positions
from mmtune.data.sources import ShardSource, Source
from mmtune.data.stats import DataStats
from mmtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)
STATE_VERSION = 2
"""Version 1 counted each worker's micro-batches (resumed by replaying them)."""


def units_of(source: Source) -> int:
    """How many units one epoch of ``source`` has."""
    return len(source.shards) if isinstance(source, ShardSource) else math.ceil(len(source) / UNIT_ENTRIES)


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


def _unit_items(plan: Plan, s: int, e: int, unit: int) -> Iterator[Any]:
    source = plan.sources[s]
    if isinstance(source, ShardSource):
        return source.read(source.shards[unit])
    entries = np.random.default_rng([plan.seed, e, s, 1]).permutation(len(source))
    block = entries[unit * UNIT_ENTRIES:(unit + 1) * UNIT_ENTRIES].tolist()
    return (source.record(i, e, plan.seed) for i in block)


def read_unit(plan: Plan, s: int, e: int, unit: int, taken: set[int]) -> Iterator[tuple[Any, Origin]]:
    """The samples of one unit not in ``taken``, each with its origin (the last one carries the length)."""
    items = _unit_items(plan, s, e, unit)
    held, offset = next(items, None), 0
    while held is not None:
        following = next(items, None)
        if offset not in taken:
            yield held, (s, e, unit, offset, offset + 1 if following is None else 0)
        held, offset = following, offset + 1


def source_items(plan: Plan, positions: Positions, s: int, epoch: int, reader: int, readers: int
                 ) -> Iterator[tuple[Any, Origin]]:
    """A reader's samples of source ``s``: its units of run epoch ``epoch`` (``stop``), or of one source
    epoch after the other (``restart``)."""
    restart = plan.sources[s].exhausted == "restart"
    e = positions.first_epoch(s) if restart else epoch
    while True:
        units = positions.assigned(s, e, reader, readers)
        if units is None:
            return
        for unit in units:
            yield from read_unit(plan, s, e, unit, positions.taken(s, e, unit))
        if not restart:
            return
        e += 1


class ShardStream(IterableDataset):
    """Stream mode: the micro-batches of reader ``rank * workers + worker`` for one epoch; with
    ``replay`` (a version-1 state), the first ``replay[worker]`` micro-batches are made but not yielded."""

    def __init__(self, plan: Plan, epoch: int, positions: Positions, replay: tuple[int, ...] = ()):
        self.plan, self.epoch, self.positions, self.replay = plan, epoch, positions, replay

    def __iter__(self) -> Iterator[tuple[Batch, Meta]]:
        w, n = worker_slot()
        plan, reader, readers = self.plan, self.plan.rank * n + w, self.plan.world * n
        streams = [source_items(plan, self.positions, s, self.epoch, reader, readers)
                   for s in range(len(plan.sources))]
        mixed = interleave(streams, [s.weight for s in plan.sources],
                           np.random.default_rng([plan.seed, self.epoch, reader, 1]),
                           [s.exhausted == "stop" for s in plan.sources])
        items = _shuffled(mixed, plan.shuffle_buffer, np.random.default_rng([plan.seed, self.epoch, reader, 2]))
        yield from self._batches(items, w)

    def _rows(self, items: Iterator[tuple[Any, Origin]], stats: DataStats, dropped: list[Origin]) -> Iterator[Row]:
        packer = self.plan.packer()
        for item, origin in items:
            sample = self.plan.encode(item, stats)
            if sample is None:
                dropped.append(origin)
            else:
                yield from packer.push(dataclasses.replace(sample, origin=origin))
        yield from packer.flush()

    def _batches(self, items: Iterator[tuple[Any, Origin]], w: int) -> Iterator[tuple[Batch, Meta]]:
        stats, dropped, pending = DataStats(), [], []
        skip = self.replay[w] if w < len(self.replay) else 0
        chunk: list[Row] = []
        made = 0
        for row in self._rows(items, stats, dropped):
            chunk.append(row)
            if len(chunk) < self.plan.micro:
                continue
            made += 1
            pending += dropped + [o for r in chunk for o in r.origins]
            dropped.clear()
            if made > skip:
                yield self._batch(chunk, stats, w, made, pending)
                pending = []
            else:
                stats.take()
            chunk = []
        if chunk and made + 1 > skip:
            yield self._batch(chunk, stats, w, made + 1, pending + dropped + [o for r in chunk for o in r.origins])

    def _batch(self, rows: list[Row], stats: DataStats, worker: int, made: int, origins: list[Origin]
               ) -> tuple[Batch, Meta]:
        delta = stats.take()
        return self.plan.collate(rows, delta), Meta(worker, (self.epoch, made), False, delta, tuple(origins))


class StreamCursor:
    """The main process's side of stream mode: the epoch, what was trained on, the loader state."""

    def __init__(self, plan: Plan, workers: int):
        self.plan, self.workers = plan, workers
        self.names = [s.name for s in plan.sources]
        self.units = [units_of(s) for s in plan.sources]
        self.epoch = 0
        self.positions = Positions(self.units, plan.seed)
        self.replay: tuple[int, ...] = ()
        self._consumed = [0] * workers

    def dataset(self) -> ShardStream:
        """This rank's micro-batches of the current epoch, from the current position."""
        return ShardStream(self.plan, self.epoch, self.positions, self.replay)

    def taken(self, meta: Meta) -> None:
        """The trainer took the batch ``meta`` came with."""
        self.positions.commit(meta.origins)
        self._consumed[meta.worker] = meta.position[1]

    def end_epoch(self) -> None:
        """This rank's readers finished the epoch."""
        self.epoch += 1
        self.replay = ()
        self._consumed = [0] * self.workers

    def state_dict(self) -> dict:
        """The epoch and this rank's committed positions, as plain values."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "positions": self.positions.state(self.names),
                "split": [self.plan.world, self.workers]}

    def load_state_dicts(self, states: list[dict], own: int) -> None:
        """Continues from the states of every saved rank (``own``: the one this rank reads its counts from)."""
        if states[own].get("version") == 1:
            return self._load_version_1(states[own])
        if any(state.get("version") != STATE_VERSION for state in states):
            raise DataError(f"loader states of versions {sorted({str(s.get('version')) for s in states})} do not "
                            f"fit this loader (version {STATE_VERSION})")
        self.epoch = min(int(state["epoch"]) for state in states)
        stops = [s.exhausted == "stop" for s in self.plan.sources]
        self.positions = Positions.merged([state["positions"] for state in states], self.names, self.units,
                                          self.plan.seed, keep=lambda s, e: not stops[s] or e >= self.epoch)

    def _load_version_1(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        if state["split"] == [self.plan.world, self.workers]:
            self.replay = tuple(int(c) for c in state["consumed"])
            log.warning("loader state version 1 (micro-batches per worker): replaying %s micro-batches of "
                        "epoch %d to reach the saved position", list(self.replay), self.epoch)
        else:
            log.warning("stream state (version 1) was saved for %s ranks x workers, now %s: restarting epoch %d",
                        state["split"], [self.plan.world, self.workers], self.epoch)


def stream_rows(sources: list[Source], batching: str) -> int:
    """Rows of one epoch of a stream, one row per sample: the epoch ends when the first ``stop`` source
    runs out, so it holds about ``min(samples_s / share_s)`` over those sources (a source's samples: a
    webdataset source's ``samples_per_epoch()``, a map source's entries; its share: its weight over the
    sum). ConfigError with ``packed`` batching (how many samples share a row is unknown before they are
    read), uncounted shards, or no ``stop`` source (the epoch never ends); samples later found bad or
    skipped make the count an upper bound."""
    if batching == "packed":
        raise ConfigError("data.batching", batching, "grouped or padded to count an epoch of streamed shards "
                                                     "(a packed row holds an unknown number of samples), "
                                                     "or set training.max_steps")
    total = sum(s.weight for s in sources)
    ends = [(s.samples_per_epoch() if isinstance(s, ShardSource) else len(s)) * total / s.weight
            for s in sources if s.exhausted == "stop"]
    if not ends:
        raise ConfigError("training.max_steps", None, "a number of steps: every source has exhausted: restart, "
                                                      "so an epoch of the stream never ends")
    return int(round(min(ends)))

