"""Stream-mode positions: which samples of each (source, source epoch) have been trained on.

A streamed source's epoch is a list of *units*: its shards (webdataset) or blocks of
:data:`UNIT_ENTRIES` entries of a seeded permutation (a random-access source read in stream mode). Units
are taken in the order of a permutation seeded by ``(seed, source epoch, source)`` and dealt round-robin
to the readers (``rank x worker``). A sample's :data:`Origin` is ``(source, source epoch, unit, offset in
the unit, length)``, ``length`` being the unit's number of samples on its last sample and 0 before.

Public API:

* :class:`Positions` ``(units, seed)``: ``commit(origins)`` (samples taken into trained batches),
  ``dealt(s, e, reader, readers)`` (a reader's units, None when it gets none), ``done(s, e)``,
  ``taken(s, e, unit)`` (offsets to skip), ``first_epoch(s)``, ``state(names)`` (what was trained on),
  ``base_state(names)`` (the deal's base) and :meth:`Positions.merged` (the union of several readers'
  states, the base of a new deal).
* :func:`to_ranges` / :func:`from_ranges`: sets of ints as ``[[start, end), ...]``.

A unit is *done* once every one of its samples was committed; a partly read unit keeps the set of
offsets taken (the shuffle buffer takes samples out of order). After a resume the units of a source
epoch the saved state knows are dealt again over the new readers: partly read units first (each
continues at its offsets), then the units nobody started, in permutation order. Units of epochs the
state does not know are dealt as in a fresh run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from mmtune.errors import DataError

UNIT_ENTRIES = 16
"""Entries per unit of a random-access source read in stream mode."""

Origin = tuple[int, int, int, int, int]
"""(source, source epoch, unit, offset in the unit, the unit's length on its last sample else 0)."""


def to_ranges(values: Iterable[int]) -> list[list[int]]:
    """Sorted ``[start, end)`` runs of ``values``."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and runs[-1][1] == v:
            runs[-1][1] = v + 1
        else:
            runs.append([v, v + 1])
    return runs


def from_ranges(runs: Iterable[Sequence[int]]) -> set[int]:
    """The ints of ``[start, end)`` runs."""
    return {v for start, end in runs for v in range(int(start), int(end))}


@dataclass
class _Progress:
    """One (source, source epoch): units done, offsets taken of the units begun, lengths when known."""

    done: set[int] = field(default_factory=set)
    taken: dict[int, set[int]] = field(default_factory=dict)
    lengths: dict[int, int] = field(default_factory=dict)

    def add(self, unit: int, offset: int, length: int) -> None:
        if unit in self.done:
            return
        taken = self.taken.setdefault(unit, set())
        taken.add(offset)
        if length:
            self.lengths[unit] = length
        if unit in self.lengths and len(taken) >= self.lengths[unit]:
            self.done.add(unit)
            del self.taken[unit], self.lengths[unit]

    def update(self, other: "_Progress") -> None:
        for unit, offsets in other.taken.items():
            for offset in offsets:
                self.add(unit, offset, 0)
            if unit in other.lengths:
                self.add(unit, min(offsets), other.lengths[unit])
        self.done |= other.done
        for unit in self.done:
            self.taken.pop(unit, None)
            self.lengths.pop(unit, None)

    def state(self) -> list:
        return [to_ranges(self.done), [[u, self.lengths.get(u, 0), to_ranges(t)] for u, t in self.taken.items()]]

    @classmethod
    def from_state(cls, state: list) -> "_Progress":
        done, begun = state
        out = cls(from_ranges(done))
        for unit, length, runs in begun:
            out.taken[int(unit)] = from_ranges(runs)
            if length:
                out.lengths[int(unit)] = int(length)
        return out


def _state(progress: dict[tuple[int, int], _Progress], names: Sequence[str]) -> list:
    return [[names[s], e, *p.state()] for (s, e), p in sorted(progress.items())]


def unit_order(seed: int, source: int, epoch: int, units: int) -> list[int]:
    """The seeded order of a source epoch's units (the same permutation stream mode always used)."""
    return np.random.default_rng([seed, epoch, source]).permutation(units).tolist()


class Positions:
    """What has been trained on, per (source, source epoch) (see the module docstring)."""

    def __init__(self, units: Sequence[int], seed: int, base: Optional[dict[tuple[int, int], _Progress]] = None,
                 now: Optional[dict[tuple[int, int], _Progress]] = None):
        self.units, self.seed = list(units), seed
        self.base = base or {}
        self.now = copy.deepcopy(self.base) if now is None else now

    def commit(self, origins: Iterable[Origin]) -> None:
        """Marks these samples as trained on."""
        for s, e, unit, offset, length in origins:
            self.now.setdefault((s, e), _Progress()).add(unit, offset, length)

    def dealt(self, s: int, e: int, reader: int, readers: int) -> Optional[list[int]]:
        """The units of source ``s``'s epoch ``e`` dealt to reader ``reader``, in order (some may be
        :meth:`done`); None when the deal gives it none of a fresh epoch (so it never gets any of this source)."""
        order = unit_order(self.seed, s, e, self.units[s])
        base = self.base.get((s, e))
        if base is None:
            return order[reader::readers] or None
        begun = sorted(base.taken)
        return (begun + [u for u in order if u not in base.done and u not in base.taken])[reader::readers]

    def done(self, s: int, e: int) -> set[int]:
        """The units of source ``s``'s epoch ``e`` every sample of which was trained on."""
        progress = self.now.get((s, e))
        return progress.done if progress is not None else set()

    def taken(self, s: int, e: int, unit: int) -> set[int]:
        """Offsets of ``unit`` already trained on."""
        progress = self.now.get((s, e))
        return set(progress.taken.get(unit, ())) if progress is not None else set()

    def first_epoch(self, s: int) -> int:
        """The first epoch of source ``s`` with units left in the saved base (0 for a fresh run)."""
        epochs = sorted(e for (source, e) in self.base if source == s)
        left = [e for e in epochs if len(self.base[(s, e)].done) < self.units[s]]
        return left[0] if left else (epochs[-1] + 1 if epochs else 0)

    def state(self, names: Sequence[str]) -> list:
        """Plain values: ``[source name, source epoch, done runs, [[unit, length, taken runs], ...]]`` each."""
        return _state(self.now, names)

    def base_state(self, names: Sequence[str]) -> list:
        """:meth:`state` of the base the units were dealt from."""
        return _state(self.base, names)

    @classmethod
    def merged(cls, states: Iterable[list], names: Sequence[str], units: Sequence[int], seed: int,
               keep: Callable[[int, int], bool]) -> "Positions":
        """The union of readers' :meth:`state` s as the base of a new deal, with the (source, epoch) pairs
        ``keep`` holds; DataError when a state names a source this loader does not have."""
        base: dict[tuple[int, int], _Progress] = {}
        for state in states:
            for name, epoch, *progress in state:
                if name not in names:
                    raise DataError(f"the saved loader state names source {name!r}, which this run does not "
                                    f"have ({', '.join(names)}): were the sources changed?")
                key, saved = (names.index(name), int(epoch)), _Progress.from_state(progress)
                if any(u >= units[key[0]] for u in saved.done | set(saved.taken)):
                    raise DataError(f"the saved loader state names units of source {name!r} beyond its "
                                    f"{units[key[0]]}: were the sources changed?")
                base.setdefault(key, _Progress()).update(saved)
        return cls(units, seed, {key: p for key, p in base.items() if keep(*key)})
