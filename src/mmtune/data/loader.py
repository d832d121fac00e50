"""The resumable distributed loader: sources -> records -> encoded samples -> rows -> micro-batches.

API the trainer calls (stable)::

    loader = build_loader(cfg, processor, rank=r, world_size=W, seed=s)  # processor: data/processor.py
    for batch in loader: ...        # one epoch of this rank's micro-batches (Batch, docs/architecture.md)
    loader.state_dict() / loader.load_state_dict(state)
    loader.stats()                  # per-source samples, bad, truncated, skipped; padding fraction
    loader.epoch                    # the epoch the next row belongs to
    loader.rows_per_epoch           # rows of one epoch over all ranks (streams: see stream_rows)

Modes: map mode (:mod:`mmtune.data.mapped`) when every source has random access, stream mode
(:mod:`mmtune.data.stream`) with any webdataset source; :mod:`mmtune.data.plan` holds what both share.

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
from typing import Any, Generator, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset

from mmtune.config import Config
from mmtune.data.batch import Batch
from mmtune.data.lengths import LengthStore
from mmtune.data.mapped import MapStream, map_rows, until_last
from mmtune.data.mixture import open_sources
from mmtune.data.plan import Meta, Plan, encode_counted
from mmtune.data.processor import Processor
from mmtune.data.sources import MapSource, ShardSource
from mmtune.data.stats import DataStats
from mmtune.data.stream import STATE_VERSION as STREAM_STATE_VERSION
from mmtune.data.stream import StreamCursor, stream_rows
from mmtune.errors import ConfigError, DataError

__all__ = ["Loader", "build_loader", "encode_counted", "stream_rows", "summary"]

log = logging.getLogger(__name__)
STATE_VERSION = 1
"""Map mode's state version (stream mode: :data:`mmtune.data.stream.STATE_VERSION`)."""


def _identity(item: Any) -> Any:
    return item


class Loader:
    """Iterable over this rank's micro-batches, one epoch per iteration (see the module docstring); the
    :class:`~mmtune.data.batch.BatchLoader` the trainer takes."""

    def __init__(self, plan: Plan, *, num_workers: int, max_bad_fraction: float):
        self._plan, self._num_workers, self._max_bad = plan, num_workers, max_bad_fraction
        self.streaming = any(isinstance(s, ShardSource) for s in plan.sources)
        self._stream = StreamCursor(plan, max(num_workers, 1)) if self.streaming else None
        self._position = (0, 0)
        self._stats = DataStats()
        self._rows: Optional[int] = None
        self._resumed = False
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
        return self._stream.epoch if self._stream is not None else self._position[0]

    @property
    def rows_per_epoch(self) -> Optional[int]:
        """Rows of one epoch over all ranks, counted once: map mode from the row plan of epoch 0 (lengths
        only), stream mode by :func:`stream_rows` (ConfigError when they cannot be counted)."""
        if self._rows is None and self.streaming:
            self._rows = stream_rows(self._plan.sources, self._plan.batching)
        elif self._rows is None:
            self._rows = 1 + max(i for e, i, _, last in until_last(map_rows(self._plan, 0, DataStats())))
        return self._rows

    def _log(self, reports: list[str]) -> None:
        if self._plan.rank == 0:
            for report in reports:
                log.warning("bad record skipped: %s", report)

    def _iterator(self) -> Iterator[tuple[Batch, Meta]]:
        if self._stream is not None:
            dataset: IterableDataset = self._stream.dataset()
        else:
            dataset = MapStream(self._plan, self._position)
        if self._num_workers == 0:
            return iter(dataset)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return iter(DataLoader(dataset, batch_size=None, num_workers=self._num_workers, collate_fn=_identity,
                               pin_memory=torch.cuda.is_available()))

    def __iter__(self) -> Iterator[Batch]:
        resumed, self._resumed = self._resumed, False
        if not (yield from self._epoch()) and resumed:
            yield from self._epoch()  # saved after the epoch's last batch: nothing was left of it

    def _epoch(self) -> Generator[Batch, None, int]:
        """One epoch of batches; returns how many there were."""
        epoch, count = self.epoch, 0
        for count, (batch, meta) in enumerate(self._iterator(), 1):
            if self._stream is not None:
                self._stream.taken(meta)
            else:
                self._position = meta.position
            self._log(self._stats.merge(meta.stats))
            self._stats.check(self._max_bad, self._sizes)
            yield dataclasses.replace(batch, epoch=epoch)
        self._end_epoch()
        return count

    def _end_epoch(self) -> None:
        if self._stream is not None:
            self._stream.end_epoch()
        self._stats.check(self._max_bad)
        if self._plan.rank == 0:
            log.info("data epoch done (next: %d): %s", self.epoch, summary(self.stats()))

    def stats(self) -> dict:
        """Per-source counts (read, samples, bad, truncated, skipped, first bad reports), each source's
        share of the samples (``shares``), rows, padding."""
        counts = self._stats.as_dict()
        total = sum(c["samples"] for c in counts["sources"].values())
        shares = {name: c["samples"] / total for name, c in counts["sources"].items()} if total else {}
        return {"epoch": self.epoch, **counts, "shares": shares}

    def state_dict(self) -> dict:
        """The position (see the module docstring) and the counts, as plain Python values."""
        state = {"mode": "stream" if self.streaming else "map", "stats": self._stats.state_dict(),
                 "seed": self._plan.seed}
        if self._stream is not None:
            return state | self._stream.state_dict()
        return state | {"version": STATE_VERSION, "epoch": self._position[0], "row": self._position[1]}

    def load_state_dict(self, state: dict) -> None:
        """Continues from :meth:`state_dict` (map mode: saved with any world size)."""
        self.load_state_dicts([state], 0)

    def load_state_dicts(self, states: list[dict], own: int) -> None:
        """Continues from the states every rank saved (``states[own]``: the one whose counts this rank
        takes). Map mode takes ``states[own]``; stream mode the union of all (any ranks x workers)."""
        state = states[own]
        mode = "stream" if self.streaming else "map"
        versions = (1, STREAM_STATE_VERSION) if self.streaming else (STATE_VERSION,)
        if state.get("version") not in versions or state.get("mode") != mode:
            raise DataError(f"loader state (version {state.get('version')}, {state.get('mode')} mode) does not "
                            f"fit this loader (version {versions[-1]}, {mode} mode): were the sources changed?")
        self._stats.load_state_dict(state["stats"])
        self._resumed = True
        if self._stream is not None:
            self._stream.load_state_dicts(states, own)
        else:
            self._position = (int(state["epoch"]), int(state["row"]))


def summary(stats: dict) -> str:
    """One line of counts (and share of the samples) per source plus the padding fraction."""
    shares = stats.get("shares", {})
    parts = [f"{name}: {c['samples']} samples, {c['bad']} bad, {c['truncated']} truncated, {c['skipped']} skipped, "
             f"{100 * shares.get(name, 0.0):.1f}% of the samples" for name, c in stats["sources"].items()]
    return "; ".join(parts) + f"; padding {100 * stats['padding_fraction']:.1f}% of {stats['rows']} rows"


def build_loader(cfg: Config, processor: Processor, *, rank: int, world_size: int, seed: int) -> Loader:
    """The loader of ``cfg.data`` for rank ``rank`` of ``world_size`` (see the module docstring)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError("rank", rank, f"0 <= rank < world_size = {world_size}")
    data = cfg.data
    tokenizer, transform, encoder = processor.tokenizer, processor.image_transform, processor.encoder(data)
    sources = open_sources(data)
    lengths = None
    if not any(isinstance(s, ShardSource) for s in sources):
        lengths = LengthStore(sources, encoder, seed, data.cache_dir)
        for s in range(len(sources)):
            lengths.get(s, 0)  # the lengths pass (or its cache) before the workers fork
    plan = Plan(sources, encoder, data.batching, tokenizer.pad_id, tokenizer.image_token_id,
                transform, cfg.training.micro_batch_size, rank, world_size, seed, max(data.shuffle_buffer, 1),
                lengths, data.image_cost if data.balance else None)
    loader = Loader(plan, num_workers=data.num_workers, max_bad_fraction=data.max_bad_fraction)
    if loader.streaming and rank == 0:
        shards = sum(len(s.shards) for s in plan.sources if isinstance(s, ShardSource))
        readers = world_size * max(data.num_workers, 1)
        if shards < readers:
            log.warning("%d shards for %d readers (ranks x workers): some read nothing", shards, readers)
    return loader
