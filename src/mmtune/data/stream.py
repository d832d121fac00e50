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
the shuffle buffer, the packer or a prefetched batch are not counted. The state holds the commits, the
base the units were dealt from and, per worker, the snapshot of its reader after the last batch taken
(:mod:`mmtune.data.reader`). Resumed on the same ranks x workers, each reader is rebuilt from its
snapshot and the batches are exactly those of the uninterrupted run. On other ranks or workers, the
union of every rank's commits is the base of a new deal of the units left, and a partly read unit opens
at its first untaken sample. Either way, what is read again is at most the rest of the units begun.

Public API: :class:`StreamCursor` (the main process's side: position, state, the dataset of one epoch),
:class:`ShardStream` (one epoch of a reader's micro-batches), :func:`stream_rows`.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator, Optional

from torch.utils.data import IterableDataset

from mmtune.data.batch import Batch
from mmtune.data.packing import Row
from mmtune.data.plan import Meta, Plan, worker_slot
from mmtune.data.positions import UNIT_ENTRIES, Origin, Positions
from mmtune.data.reader import Reader
from mmtune.data.sources import ShardSource, Source
from mmtune.data.stats import DataStats
from mmtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)
STATE_VERSION = 2
"""Version 1 counted each worker's micro-batches (resumed by replaying them)."""


def units_of(source: Source) -> int:
    """How many units one epoch of ``source`` has."""
    return len(source.shards) if isinstance(source, ShardSource) else math.ceil(len(source) / UNIT_ENTRIES)


class ShardStream(IterableDataset):
    """Stream mode: the micro-batches of reader ``rank * workers + worker`` for one epoch, from the
    worker's ``snapshots`` entry when there is one (same ranks x workers: exactly where it stood); with
    ``replay`` (a version-1 state), the first ``replay[worker]`` micro-batches are made but not yielded."""

    def __init__(self, plan: Plan, epoch: int, positions: Positions, replay: tuple[int, ...] = (),
                 snapshots: tuple[Optional[dict], ...] = (), first: int = 0):
        self.plan, self.epoch, self.positions, self.replay = plan, epoch, positions, replay
        self.snapshots, self.first = snapshots, first

    def __iter__(self) -> Iterator[tuple[Batch, Meta]]:
        slot, n = worker_slot()
        w = (slot + self.first) % n  # the DataLoader asks its workers in turn from 0: start with ``first``
        snapshot = self.snapshots[w] if w < len(self.snapshots) else None
        reader = Reader(self.plan, self.positions, self.epoch, self.plan.rank * n + w, self.plan.world * n, snapshot)
        yield from self._batches(reader, w, snapshot["made"] if snapshot else 0)

    def _batches(self, reader: Reader, w: int, made: int) -> Iterator[tuple[Batch, Meta]]:
        stats, dropped, pending = DataStats(), [], []
        skip = self.replay[w] if w < len(self.replay) else 0
        chunk: list[Row] = []
        for row in reader.rows(stats, dropped):
            chunk.append(row)
            if len(chunk) < self.plan.micro:
                continue
            made += 1
            pending += dropped + [o for r in chunk for o in r.origins]
            dropped.clear()
            if made > skip:
                yield self._batch(chunk, stats, w, made, pending, reader)
                pending = []
            else:
                stats.take()
            chunk = []
        if chunk and made + 1 > skip:
            origins = pending + dropped + [o for r in chunk for o in r.origins]
            yield self._batch(chunk, stats, w, made + 1, origins, reader)

    def _batch(self, rows: list[Row], stats: DataStats, worker: int, made: int, origins: list[Origin],
               reader: Reader) -> tuple[Batch, Meta]:
        delta = stats.take()
        snapshot = {**reader.snapshot(), "made": made}
        return self.plan.collate(rows, delta), Meta(worker, (self.epoch, made), False, delta, tuple(origins), snapshot)


class StreamCursor:
    """The main process's side of stream mode: the epoch, what was trained on, the loader state."""

    def __init__(self, plan: Plan, workers: int):
        self.plan, self.workers = plan, workers
        self.names = [s.name for s in plan.sources]
        self.units = [units_of(s) for s in plan.sources]
        self.epoch = 0
        self.positions = Positions(self.units, plan.seed)
        self.replay: tuple[int, ...] = ()
        self.snapshots: list[Optional[dict]] = [None] * workers
        self._resume: tuple[Optional[dict], ...] = ()
        self._consumed = [0] * workers
        self._next = 0

    def dataset(self) -> ShardStream:
        """This rank's micro-batches of the current epoch, from the current position."""
        return ShardStream(self.plan, self.epoch, self.positions, self.replay, self._resume, self._next)

    def taken(self, meta: Meta) -> None:
        """The trainer took the batch ``meta`` came with."""
        self.positions.commit(meta.origins)
        self._consumed[meta.worker] = meta.position[1]
        self.snapshots[meta.worker] = meta.snapshot
        self._next = (meta.worker + 1) % self.workers

    def end_epoch(self) -> None:
        """This rank's readers finished the epoch."""
        self.epoch += 1
        self.replay, self._resume, self._next = (), (), 0
        self._consumed = [0] * self.workers
        self.snapshots = [None] * self.workers

    def state_dict(self) -> dict:
        """The epoch, this rank's committed positions, the base of the deal and each worker's reader
        snapshot, as plain values."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "positions": self.positions.state(self.names),
                "base": self.positions.base_state(self.names), "snapshots": list(self.snapshots), "next": self._next,
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

        def union(key: str) -> Positions:
            return Positions.merged([state[key] for state in states], self.names, self.units, self.plan.seed,
                                    keep=lambda s, e: not stops[s] or e >= self.epoch)

        now = union("positions")
        if all(state["split"] == [self.plan.world, self.workers] and "snapshots" in state for state in states):
            self.positions = Positions(self.units, self.plan.seed, union("base").base, now.base)
            self.epoch = int(states[own]["epoch"])
            self._resume = tuple(states[own]["snapshots"])  # the same readers: exactly where they stood
            self._next = int(states[own]["next"])
        else:
            self.positions = now  # other readers: what is left is dealt again

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

