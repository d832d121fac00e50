"""Map mode (every source has random access: manifests, Alpaca, LLaVA).

An epoch's global order comes from :func:`~mmtune.data.mixture.epoch_order` (seeded by ``(seed, epoch)``),
samples are encoded and packed in that order, and the rows form ONE global sequence, continuous from epoch
to epoch, that does not depend on the world size. Rows are taken in groups of ``W * micro``: rank ``r``
takes rows ``r*micro .. (r+1)*micro - 1`` of each group, so at every step the ranks together consume what
one process would. An iteration ends with the group holding the epoch's last row (the next epoch's first
rows may complete that group). The state is the global position ``(epoch, row)`` of the next group, the
same on every rank, so a state saved with W ranks resumes with any other number. Resuming re-encodes
(without decoding images) the rows of the epoch before that position.

Public API: :func:`map_rows` (the global row sequence), :func:`map_groups` (its groups of ``W * micro``
rows), :func:`until_last` (rows up to the epoch's last), :class:`MapStream` (this rank's micro-batches).
"""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import IterableDataset

from mmtune.data.batch import Batch
from mmtune.data.mixture import epoch_order
from mmtune.data.packing import Row
from mmtune.data.plan import Meta, Plan, worker_slot
from mmtune.data.stats import DataStats
from mmtune.errors import DataError


def _with_last(items: Iterator[Row]) -> Iterator[tuple[Row, bool]]:
    held = next(items, None)
    for item in items:
        yield held, False  # type: ignore[misc]
        held = item
    if held is not None:
        yield held, True


def map_rows(plan: Plan, epoch: int, stats: DataStats) -> Iterator[tuple[int, int, Row, bool]]:
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


def map_groups(plan: Plan, position: tuple[int, int], stats: DataStats
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


class MapStream(IterableDataset):
    """Map mode: this rank's micro-batches of one iteration (worker ``w`` makes every n-th)."""

    def __init__(self, plan: Plan, position: tuple[int, int]):
        self.plan, self.position = plan, position

    def __iter__(self) -> Iterator[tuple[Batch, Meta]]:
        w, n = worker_slot()
        stats = DataStats()
        lo, hi = self.plan.rank * self.plan.micro, (self.plan.rank + 1) * self.plan.micro
        for g, (group, ends, following) in enumerate(map_groups(self.plan, self.position, stats)):
            delta = stats.take()
            if g % n == w:
                batch = self.plan.collate(group[lo:hi], delta)
                yield batch, Meta(w, following, ends, delta)


def until_last(rows: Iterator[tuple[int, int, Row, bool]]) -> Iterator[tuple[int, int, Row, bool]]:
    """``rows`` up to and including the first one that ends an epoch."""
    for item in rows:
        yield item
        if item[3]:
            return
