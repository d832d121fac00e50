"""One stream-mode reader (``rank x worker``) for one epoch, with its state at every batch boundary.

The pipeline: each source's units, unit after unit (:class:`SourceUnits`) -> a weighted interleaving
(:func:`~mmtune.data.mixture.interleave`) -> a shuffle buffer -> encoding -> the packer -> rows
(:class:`Reader`). Between two batches :meth:`Reader.snapshot` gives its whole state as plain values:
the two RNG states, the sources still drawn, each source's cursor (source epoch, unit, next offset) and
the origins of the samples waiting in the shuffle buffer, the packer and the rows made but not batched.
A reader built from a snapshot reads those samples again (from their units: at most the rest of the units
begun) and goes on exactly as the saved one would have.

Public API: :class:`Reader`, :class:`SourceUnits`, :func:`read_unit`, :func:`fetch`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from mmtune.data.encode import EncodedSample
from mmtune.data.mixture import interleave
from mmtune.data.packing import PackingStats, Row
from mmtune.data.plan import Plan
from mmtune.data.positions import UNIT_ENTRIES, Origin, Positions
from mmtune.data.sources import ShardSource
from mmtune.data.stats import DataStats


def _unit_items(plan: Plan, s: int, e: int, unit: int) -> Iterator[Any]:
    source = plan.sources[s]
    if isinstance(source, ShardSource):
        return source.read(source.shards[unit])
    entries = np.random.default_rng([plan.seed, e, s, 1]).permutation(len(source))
    block = entries[unit * UNIT_ENTRIES:(unit + 1) * UNIT_ENTRIES].tolist()
    return (source.record(i, e, plan.seed) for i in block)


def read_unit(plan: Plan, s: int, e: int, unit: int, skip: set[int]) -> Iterator[tuple[Any, Origin]]:
    """The samples of one unit not in ``skip``, each with its origin (the last one carries the length)."""
    items = _unit_items(plan, s, e, unit)
    held, offset = next(items, None), 0
    while held is not None:
        following = next(items, None)
        if offset not in skip:
            yield held, (s, e, unit, offset, offset + 1 if following is None else 0)
        held, offset = following, offset + 1


def fetch(plan: Plan, origins: Iterable[Origin]) -> dict[Origin, Any]:
    """The records at ``origins``, read again from their units."""
    wanted: dict[tuple[int, int, int], set[Origin]] = defaultdict(set)
    for origin in origins:
        wanted[tuple(origin[:3])].add(tuple(origin))  # type: ignore[index]
    found: dict[Origin, Any] = {}
    for (s, e, unit), keys in wanted.items():
        for item, origin in read_unit(plan, s, e, unit, set()):
            if origin in keys:
                found[origin] = item
    return found


class SourceUnits:
    """A reader's samples of one source: its units of run epoch ``epoch`` (``exhausted: stop``) or of one
    source epoch after the other (``restart``), from ``cursor`` ([source epoch, unit, next offset]) on."""

    def __init__(self, plan: Plan, positions: Positions, s: int, epoch: int, reader: int, readers: int,
                 cursor: Optional[list[int]] = None):
        self.cursor = cursor
        restart = plan.sources[s].exhausted == "restart"
        self._items = self._generate(plan, positions, s, epoch, reader, readers, restart)

    def __iter__(self) -> "SourceUnits":
        return self

    def __next__(self) -> tuple[Any, Origin]:
        item, origin = next(self._items)
        self.cursor = [origin[1], origin[2], origin[3] + 1]
        return item, origin

    def _generate(self, plan: Plan, positions: Positions, s: int, epoch: int, reader: int, readers: int,
                  restart: bool) -> Iterator[tuple[Any, Origin]]:
        at = self.cursor
        e = at[0] if at else (positions.first_epoch(s) if restart else epoch)
        while True:
            dealt = positions.dealt(s, e, reader, readers)
            if dealt is None:
                return
            if at and at[1] in dealt:
                dealt = dealt[dealt.index(at[1]):]
            for unit in dealt:
                if unit in positions.done(s, e):
                    continue
                skip = positions.taken(s, e, unit)
                if at is not None and unit == at[1]:
                    skip |= set(range(at[2]))  # read before the snapshot: in the buffer, packer or trained on
                yield from read_unit(plan, s, e, unit, skip)
            at = None
            if not restart:
                return
            e += 1


class Reader:
    """The rows of one reader for one epoch (see the module docstring); ``snapshot`` to resume exactly."""

    def __init__(self, plan: Plan, positions: Positions, epoch: int, reader: int, readers: int,
                 snapshot: Optional[dict] = None):
        self.plan = plan
        self.mix_rng = np.random.default_rng([plan.seed, epoch, reader, 1])
        self.shuffle_rng = np.random.default_rng([plan.seed, epoch, reader, 2])
        self.live = list(range(len(plan.sources)))
        self.buffer: list[Any] = []
        self.buffered: list[Origin] = []  # the origins of ``buffer``'s items, kept beside it (cheap snapshots)
        self.flushing = False
        self.packer = plan.packer()
        self.ready: list[Row] = []
        cursors = snapshot["cursors"] if snapshot else [None] * len(plan.sources)
        if snapshot:
            self._restore(snapshot)
        self.units = [SourceUnits(plan, positions, s, epoch, reader, readers, cursors[s])
                      for s in range(len(plan.sources))]

    def rows(self, stats: DataStats, dropped: list[Origin]) -> Iterator[Row]:
        """The rows, in order; bad or skipped samples' origins go to ``dropped``."""
        mixed = interleave(self.units, [s.weight for s in self.plan.sources], self.mix_rng,
                           [s.exhausted == "stop" for s in self.plan.sources], self.live)
        items = self._shuffled(mixed)
        ended = False
        while True:
            while self.ready:
                yield self.ready.pop(0)
            if ended:
                return
            pulled = next(items, None)
            if pulled is None:
                ended = True
                self.ready += self.packer.flush()
                continue
            sample = self.plan.encode(pulled[0], stats)
            if sample is None:
                dropped.append(pulled[1])
            else:
                self.ready += self.packer.push(dataclasses.replace(sample, origin=pulled[1]))

    def _shuffled(self, items: Iterator[tuple[Any, Origin]]) -> Iterator[tuple[Any, Origin]]:
        size, buffer, buffered = self.plan.shuffle_buffer, self.buffer, self.buffered
        if not self.flushing:
            for item, origin in items:
                if len(buffer) < size:
                    buffer.append(item)
                    buffered.append(origin)
                    continue
                k = int(self.shuffle_rng.integers(len(buffer)))
                out = buffer[k], buffered[k]
                buffer[k], buffered[k] = item, origin
                yield out
            pairs = list(zip(buffer, buffered))
            self.shuffle_rng.shuffle(pairs)  # type: ignore[arg-type]
            buffer[:], buffered[:] = [p[0] for p in pairs[::-1]], [p[1] for p in pairs[::-1]]
            self.flushing = True
        while buffer:
            yield buffer.pop(), buffered.pop()

    def snapshot(self) -> dict:
        """The reader's state between two batches, as plain values."""
        packer = self.packer.state_dict()
        return {"mix_rng": self.mix_rng.bit_generator.state, "shuffle_rng": self.shuffle_rng.bit_generator.state,
                "live": list(self.live), "flushing": self.flushing, "cursors": [u.cursor for u in self.units],
                "buffer": list(self.buffered),
                "bins": [[s.origin for s in samples] for samples in packer["bins"]],
                "grouped": [s.origin for s in packer["buffer"]], "ready": [list(r.origins) for r in self.ready]}

    def _restore(self, snap: dict) -> None:
        self.mix_rng.bit_generator.state = snap["mix_rng"]
        self.shuffle_rng.bit_generator.state = snap["shuffle_rng"]
        self.live[:] = snap["live"]
        self.flushing = snap["flushing"]
        held = [*snap["buffer"], *(o for b in snap["bins"] for o in b), *snap["grouped"],
                *(o for r in snap["ready"] for o in r)]
        items = fetch(self.plan, held)
        self.buffered = [tuple(o) for o in snap["buffer"]]  # type: ignore[misc]
        self.buffer = [items[o] for o in self.buffered]

        def encoded(origin: list) -> EncodedSample:
            sample = self.plan.encode(items[tuple(origin)], DataStats())
            assert sample is not None, f"sample at {origin} encoded before, not now"
            return dataclasses.replace(sample, origin=tuple(origin))

        self.packer.load_state_dict({"bins": [[encoded(o) for o in b] for b in snap["bins"]],
                                     "buffer": [encoded(o) for o in snap["grouped"]],
                                     "stats": vars(PackingStats())})
        self.ready = [self.packer.row([encoded(o) for o in r]) for r in snap["ready"]]
