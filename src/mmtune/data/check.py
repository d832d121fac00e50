"""The preflight check of a run's data (``mmtune data check``): every source read once, in parallel.

Every record goes through the loader's own path: :func:`~mmtune.data.plan.encode_counted` with the run's
:class:`~mmtune.data.encode.RecordEncoder` (from :class:`~mmtune.data.processor.Processor`), then the
sample's images through :func:`~mmtune.data.images.decode_row_images` with the processor's transform,
so what is counted here is what training would count.

Public API:

* :func:`check_sources` ``(sources, encoder, transform, *, processes, max_bad_fraction, progress) ->
  CheckReport``: the sources' work units (a shard, or a block of :data:`BLOCK` entries) are dealt over
  ``processes`` forked processes (1: in this process).
* :class:`Tally` (one source's counts: the loader's :class:`~mmtune.data.stats.SourceCounts` plus
  ``tokens``, ``with_image``, ``blanked`` and skips by kind), :class:`CheckReport` (tallies, shares,
  problems, seconds; ``ok``, ``samples_per_second``).
* :func:`realised_shares` ``(sources, usable) -> {name: share}``: map mode: each source's
  ``round(weight x size)`` draws times its usable fraction; stream mode: ``weight / sum(weights)``.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

from mmtune.data.badrecords import BadRecord
from mmtune.data.encode import EncodedSample, ImageCountError, RecordEncoder, Skipped
from mmtune.data.images import decode_row_images
from mmtune.data.packing import build_row
from mmtune.data.plan import encode_counted
from mmtune.data.records import Record
from mmtune.data.sources import MapSource, ShardSource, Source
from mmtune.data.stats import DataStats
from mmtune.errors import DataError

BLOCK = 2048
"""Entries of a source with random access read as one work unit."""

Unit = tuple[int, Any]
"""(source index, a shard URL or an entry range (start, stop))."""


@dataclass
class Tally:
    """What one source (or one work unit of it) holds."""

    stats: DataStats = field(default_factory=DataStats)
    """The loader's counts (read, samples, bad, truncated, skipped, first bad reports) under the source name."""
    tokens: int = 0
    """Tokens of the usable samples (after truncation)."""
    with_image: int = 0
    """Usable samples holding an image."""
    blanked: int = 0
    """Encoded samples whose image failed to decode (training blanks them out of their row)."""
    skips: Counter = field(default_factory=Counter)
    """Skipped or refused records by kind: ``length``, ``unsupervised``, ``images`` (image count not matching
    the placeholders)."""

    def add(self, other: "Tally") -> None:
        """Adds ``other``'s counts."""
        self.stats.merge(other.stats)
        self.tokens += other.tokens
        self.with_image += other.with_image
        self.blanked += other.blanked
        self.skips.update(other.skips)

    def usable(self, name: str) -> int:
        """Samples training would keep: encoded, with their image decoded."""
        return self.stats.of(name).samples - self.blanked


@dataclass
class _Classifying:
    """The run's encoder, counting why records are skipped or refused (the rules stay in encode.py)."""

    encoder: RecordEncoder
    skips: Counter

    def __call__(self, record: Record) -> Union[EncodedSample, Skipped]:
        try:
            out = self.encoder(record)
        except ImageCountError:
            self.skips["images"] += 1
            raise
        if isinstance(out, Skipped):
            self.skips[out.kind] += 1
        return out


def tally_items(items: Iterator[Union[Record, BadRecord]], encoder: RecordEncoder,
                transform: Optional[Callable], pad_id: int, image_token_id: int) -> Tally:
    """The counts of ``items`` read through the loader's encoding and image decoding."""
    tally = Tally()
    counting = _Classifying(encoder, tally.skips)
    for item in items:
        sample = encode_counted(counting, item, tally.stats)  # type: ignore[arg-type]
        if sample is None:
            continue
        if sample.images and transform is not None:
            row = decode_row_images(build_row([sample], pad_id), transform, image_token_id, tally.stats)
            if not row.num_samples:
                tally.blanked += 1
                continue
        tally.tokens += len(sample)
        tally.with_image += int(bool(sample.images))
    return tally


def _units(sources: list[Source]) -> list[Unit]:
    units: list[Unit] = []
    for s, source in enumerate(sources):
        if isinstance(source, ShardSource):
            units.extend((s, shard) for shard in source.shards)
        else:
            units.extend((s, (a, min(a + BLOCK, len(source)))) for a in range(0, len(source), BLOCK))
    return units


def _items(source: Source, unit: Any) -> Iterator[Union[Record, BadRecord]]:
    if isinstance(source, ShardSource):
        return source.read(unit)
    return (source.record(i) for i in range(*unit))


@dataclass
class _Job:
    """What every checking process holds (inherited through fork, never pickled)."""

    sources: list[Source]
    encoder: RecordEncoder
    transform: Optional[Callable]
    pad_id: int
    image_token_id: int

    def run(self, unit: Unit) -> tuple[int, Tally, int]:
        """(source index, tally, unit size in samples read) of one unit."""
        s, what = unit
        tally = tally_items(_items(self.sources[s], what), self.encoder, self.transform, self.pad_id,
                            self.image_token_id)
        return s, tally, sum(c.read for c in tally.stats.sources.values())

    def serve(self, units: list[tuple[int, Unit]], queue: Any) -> None:
        """Runs the numbered ``units`` in a forked process, sending each ``(number, result)`` (or the
        error) to ``queue``."""
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            for number, unit in units:
                queue.put((number, self.run(unit)))
        except Exception as exc:  # noqa: BLE001 (reported by the parent as one line)
            queue.put(("error", f"{type(exc).__name__}: {exc}", 0))
        queue.put(None)


def _results(job: _Job, units: list[Unit], processes: int) -> Iterator[tuple[int, Tally, int]]:
    """The result of every unit, in the order of ``units`` whatever the processes' pace (so the first bad
    records reported are the first in the sources, the same on every run)."""
    if processes <= 1:
        yield from map(job.run, units)
        return
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    numbered = list(enumerate(units))
    workers = [context.Process(target=job.serve, args=(numbered[p::processes], queue), daemon=True)
               for p in range(processes)]
    for worker in workers:
        worker.start()
    running, waiting, following = processes, {}, 0
    try:
        while running:
            item = queue.get()
            if item is None:
                running -= 1
            elif item[0] == "error":
                raise DataError(f"data check: a checking process failed: {item[1]}")
            else:
                waiting[item[0]] = item[1]
            while following in waiting:
                yield waiting.pop(following)
                following += 1
    finally:
        for worker in workers:
            worker.join(timeout=1)
            if worker.is_alive():
                worker.terminate()


def realised_shares(sources: list[Source], usable: dict[str, int]) -> dict[str, float]:
    """The share of an epoch's samples each source supplies (see the module docstring)."""
    if any(isinstance(s, ShardSource) for s in sources):
        weights = {s.name: s.weight for s in sources}
    else:
        weights = {s.name: round(s.weight * len(s)) * usable.get(s.name, 0) / max(len(s), 1)
                   for s in sources if isinstance(s, MapSource)}
    total = sum(weights.values())
    return {name: w / total if total else 0.0 for name, w in weights.items()}


@dataclass
class CheckReport:
    """What :func:`check_sources` found."""

    tallies: dict[str, Tally]
    """Per source name, in the config's order."""
    shares: dict[str, float]
    """:func:`realised_shares` of the usable samples."""
    problems: list[str]
    """What would stop training: bad data above ``data.max_bad_fraction``, a source without a usable sample."""
    seconds: float
    processes: int

    @property
    def ok(self) -> bool:
        """True when nothing would stop training."""
        return not self.problems

    @property
    def read(self) -> int:
        """Records read over all sources."""
        return sum(c.read for t in self.tallies.values() for c in t.stats.sources.values())

    @property
    def samples_per_second(self) -> float:
        """Records read per second of the check."""
        return self.read / self.seconds if self.seconds > 0 else 0.0


def _problems(tallies: dict[str, Tally], max_bad_fraction: float) -> list[str]:
    problems = []
    for name, tally in tallies.items():
        try:
            tally.stats.check(max_bad_fraction, {n: c.read for n, c in tally.stats.sources.items()})
        except DataError as exc:
            problems.append(str(exc))
        if not tally.usable(name):
            problems.append(f"source {name!r} has no usable sample")
    return problems


def check_sources(sources: list[Source], encoder: RecordEncoder, transform: Optional[Callable], *,
                  pad_id: int, image_token_id: int, processes: int, max_bad_fraction: float,
                  progress: bool = True) -> CheckReport:
    """Reads every record of ``sources`` once (see the module docstring)."""
    from tqdm import tqdm

    start = time.perf_counter()
    tallies = {s.name: Tally() for s in sources}
    for source in sources:
        for bad in getattr(source, "load_bad", []):
            tallies[source.name].stats.add_bad(bad)
    units = _units(sources)
    processes = max(1, min(processes, len(units)))
    job = _Job(sources, encoder, transform, pad_id, image_token_id)
    done = 0
    with tqdm(total=len(units), desc="data check", unit="unit", disable=not progress) as bar:
        for s, tally, read in _results(job, units, processes):
            tallies[sources[s].name].add(tally)
            done += read
            bar.update(1)
            bar.set_postfix(records=done, refresh=False)
    shares = realised_shares(sources, {name: t.usable(name) for name, t in tallies.items()})
    return CheckReport(tallies, shares, _problems(tallies, max_bad_fraction), time.perf_counter() - start,
                       processes)
