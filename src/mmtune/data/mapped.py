"""Map mode (every source has random access: manifests, Alpaca, LLaVA).

An epoch's global order comes from :func:`~mmtune.data.mixture.epoch_order` (seeded by ``(seed, epoch)``),
samples are packed in that order, and the rows form ONE global sequence, continuous from epoch to epoch,
that does not depend on the world size. The sequence is planned from the entries' lengths alone
(:mod:`mmtune.data.lengths`: a lengths pass, cached): a planned row is the (source, entry) handles of its
samples, and only the rank and worker that take a row read, encode and lay out its samples
(:func:`build_rows`), with the packer's own row layout. Rows are taken in groups of ``W * micro``: rank ``r``
takes rows ``r*micro .. (r+1)*micro - 1`` of each group, so at every step the ranks together consume what
one process would. An iteration ends with the group holding the epoch's last row (the next epoch's first
rows may complete that group). The state is the global position ``(epoch, row)`` of the next group, the
same on every rank, so a state saved with W ranks resumes with any other number. Resuming plans (reads
nothing) the rows of the epoch before that position. The counts of the records read are made from the plan
(:func:`~mmtune.data.plan.count`), so every rank counts the whole sequence, as before.

Public API: :func:`map_rows` (the global row sequence of handles), :func:`map_groups` (its groups of
``W * micro`` rows), :func:`rank_rows` (a group's rows per rank, in order or balanced by cost with
``data.balance``), :func:`row_cost`, :func:`build_rows` (planned rows -> rows), :func:`until_last` (rows up to the epoch's
last), :class:`MapStream` (this rank's micro-batches).
"""

from __future__ import annotations

from typing import Iterator, Union

from torch.utils.data import IterableDataset

from mmtune.data.badrecords import BadRecord
from mmtune.data.batch import Batch
from mmtune.data.encode import EncodedSample, Skipped
from mmtune.data.lengths import Planned
from mmtune.data.mixture import epoch_order
from mmtune.data.packing import Packer, Row
from mmtune.data.plan import Meta, Plan, count, located, worker_slot
from mmtune.data.stats import DataStats
from mmtune.errors import DataError


def _with_last(items: Iterator[Row]) -> Iterator[tuple[Row, bool]]:
    held = next(items, None)
    for item in items:
        yield held, False  # type: ignore[misc]
        held = item
    if held is not None:
        yield held, True


class _PlanPacker(Packer):
    """The configured packer deciding on lengths alone: a finished row is the handles of its samples."""

    def _emit(self, samples: list) -> list:  # type: ignore[override]
        return [s.handle for s in samples]


def _planned(plan: Plan, epoch: int, stats: DataStats) -> Iterator[Union[Planned, Skipped, BadRecord]]:
    sources, store = plan.sources, plan.lengths
    assert store is not None, "map mode plans rows from a LengthStore"
    ids, indices = epoch_order([len(s) for s in sources], [s.weight for s in sources], plan.seed, epoch)
    for s, i in zip(ids.tolist(), indices.tolist()):
        outcome = count(stats, sources[s].name, store.get(s, epoch).outcome(i, sources[s].name, (s, i)))
        if outcome is not None:
            yield outcome


def map_rows(plan: Plan, epoch: int, stats: DataStats) -> Iterator[tuple[int, int, list, bool]]:
    """The global row sequence from the start of ``epoch`` on, planned from the sources' lengths (no entry
    is read): (epoch, row index, the row's (source, entry) handles, last of epoch)."""
    while True:
        packer = _PlanPacker(plan.encoder.max_seq_len, plan.pad_id, plan.batching)  # type: ignore[arg-type]
        count_rows = 0
        for count_rows, (row, last) in enumerate(_with_last(iter(packer.pack(_planned(plan, epoch, stats)))), 1):
            yield epoch, count_rows - 1, row, last
        if not count_rows:
            raise DataError(f"epoch {epoch}: no source produced a usable sample (see the bad-record reports)")
        epoch += 1


def build_rows(plan: Plan, rows: list[tuple[int, list]]) -> list[Row]:
    """Reads, encodes and lays out the samples of planned rows ``(epoch, handles)``: the only place map mode
    tokenises, and only for the rows this rank and worker take."""
    packer, out = plan.packer(), []
    for epoch, handles in rows:
        samples = []
        for s, i in handles:
            record = plan.sources[s].record(i, epoch, plan.seed)  # type: ignore[union-attr]
            sample = None if isinstance(record, BadRecord) else plan.encoder(located(record))
            if not isinstance(sample, EncodedSample) or len(sample) != plan.lengths.get(s, epoch).lengths[i]:  # type: ignore[union-attr]
                raise DataError(f"{plan.sources[s].name} entry {i} no longer encodes as when its lengths were "
                                f"computed: the data changed; remove the lengths cache ({plan.lengths.cache_dir})")  # type: ignore[union-attr]
            samples.append(sample)
        out.append(packer.row(samples))
    return out


def map_groups(plan: Plan, position: tuple[int, int], stats: DataStats
               ) -> Iterator[tuple[list[tuple[int, list]], bool, tuple[int, int]]]:
    """Groups of ``world * micro`` rows from ``position`` to the group holding the epoch's last row."""
    epoch, skip = position
    rows = map_rows(plan, epoch, stats)
    for _ in range(skip):
        if next(rows)[3]:
            raise DataError(f"the saved loader position (epoch {epoch}, row {skip}) lies beyond the end of "
                            "that epoch: the data or its settings changed since it was saved")
    stats.take()
    size = plan.world * plan.micro
    group: list[tuple[int, list]] = []
    ends = False
    for e, i, row, last in rows:
        group.append((e, row))
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
        for g, (group, ends, following) in enumerate(map_groups(self.plan, self.position, stats)):
            delta = stats.take()
            if g % n == w:
                batch = self.plan.collate(build_rows(self.plan, rank_rows(self.plan, group)[self.plan.rank]), delta)
                yield batch, Meta(w, following, ends, delta)


def row_cost(plan: Plan, epoch: int, handles: list, image_cost: int) -> int:
    """A planned row's cost: its tokens plus ``image_cost`` per image."""
    assert plan.lengths is not None
    tables = [plan.lengths.get(s, epoch) for s, _ in handles]
    return sum(int(t.lengths[i]) + image_cost * int(t.images[i]) for t, (_, i) in zip(tables, handles))


def rank_rows(plan: Plan, group: list[tuple[int, list]]) -> list[list[tuple[int, list]]]:
    """Each rank's ``micro`` rows of a group. In order (rank r: rows ``r*micro ..``), or with
    ``plan.balance`` by cost: rows from the costliest down (ties: the earlier row), each to the rank
    with the least cost so far among those with room (ties: the lower rank), each rank's rows kept in
    group order. Deterministic, and the same on every rank."""
    micro = plan.micro
    if plan.balance is None:
        return [group[r * micro:(r + 1) * micro] for r in range(plan.world)]
    costs = [row_cost(plan, e, handles, plan.balance) for e, handles in group]
    loads = [0] * plan.world
    taken: list[list[int]] = [[] for _ in range(plan.world)]
    for j in sorted(range(len(group)), key=lambda j: (-costs[j], j)):
        r = min((r for r in range(plan.world) if len(taken[r]) < micro), key=lambda r: (loads[r], r))
        loads[r] += costs[j]
        taken[r].append(j)
    return [[group[j] for j in sorted(rows)] for rows in taken]


def until_last(rows: Iterator[tuple[int, int, list, bool]]) -> Iterator[tuple[int, int, list, bool]]:
    """``rows`` up to and including the first one that ends an epoch."""
    for item in rows:
        yield item
        if item[3]:
            return
