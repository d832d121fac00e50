"""Data sources: manifests, Alpaca and LLaVA files (random access) and webdataset shards (streamed).

Public API:

* :func:`open_source` ``(cfg: SourceConfig, *, default_root, where) -> Source``; a source's ``template``
  goes into its records (None leaves the run's ``data.template``).
* :class:`MapSource`: ``len(source)``, ``source.record(index, epoch, seed) -> Record | BadRecord``
  (a caption list gets a fresh choice per epoch, seeded by ``(seed, epoch, index)``), ``load_bad`` (entries
  that could not be parsed when the files were read).
* :class:`ShardSource`: ``shards`` (the expanded URLs), ``read(shard) -> Iterator[Record | BadRecord]`` and
  ``samples_per_epoch()`` (``num_samples`` when declared, else the sum of img2dataset's per-shard
  ``successes``; ConfigError naming ``num_samples`` when a shard has no stats file).
* Both: ``records() -> Iterator[Record | BadRecord]``, every record in file order (epoch 0, seed 0), and
  ``entries() -> Iterator[(Record | BadRecord, dict)]``, each with its raw entry (a map source's parsed
  entry: captions list, ``answers``, ``scene``, ...; ``{}`` for a shard source).
* :func:`detect_kind` ``(urls) -> kind``: webdataset for ``.tar`` shards, else decided by the first entry
  (``conversations`` -> llava, ``instruction`` + ``output`` -> alpaca, else a caption manifest).

Kinds (``SourceConfig.kind``): ``webdataset``, ``manifest`` (JSON/JSONL/CSV/TSV/parquet caption
manifests), ``alpaca``, ``llava``; ``auto`` detects. Options (``SourceConfig.options``): ``image_key``,
``caption_key``, ``prefix``, ``prefix_key`` (see :mod:`mmtune.data.sources.formats`).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

from mmtune.config import SourceConfig
from mmtune.data.badrecords import BadRecord
from mmtune.data.records import Record
from mmtune.data.sources.formats import ENTRY_READERS, EntryOptions, kind_of_entry
from mmtune.data.sources.paths import expand
from mmtune.data.sources.shards import read_shard, shard_successes, stats_url
from mmtune.data.sources.tables import Table, read_table
from mmtune.errors import ConfigError, DataError

TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")


@dataclass
class MapSource:
    """A source with random access to its entries (every kind but webdataset)."""

    name: str
    kind: str
    weight: float
    opts: EntryOptions
    tables: list[Table]
    offsets: list[int] = field(default_factory=list)
    exhausted: str = "stop"
    """``SourceConfig.exhausted`` (stream mode only)."""

    def __post_init__(self) -> None:
        self.offsets = [0]
        for table in self.tables:
            self.offsets.append(self.offsets[-1] + len(table))

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def load_bad(self) -> list[BadRecord]:
        """Entries that could not be parsed when the files were read."""
        return [bad for table in self.tables for bad in table.bad]

    def locate(self, index: int) -> tuple[Table, int]:
        """The table holding entry ``index`` and the index inside it."""
        t = bisect.bisect_right(self.offsets, index) - 1
        return self.tables[t], index - self.offsets[t]

    def record(self, index: int, epoch: int = 0, seed: int = 0) -> Union[Record, BadRecord]:
        """Entry ``index`` as a record (``extra["identity"]``: ``file:index in the file``), or a bad record
        with its location."""
        table, local = self.locate(index)
        location = table.location(local)
        rng = random.Random(f"{seed}:{epoch}:{self.name}:{index}")
        try:
            record = ENTRY_READERS[self.kind](table.entry(local), self.opts, location, rng)
        except DataError as exc:
            return BadRecord(self.name, location, str(exc).removeprefix(f"{location}: "))
        record.extra["identity"] = f"{table.path}:{local}"
        return record

    def records(self) -> Iterator[Union[Record, BadRecord]]:
        """Every entry as a record (or bad record), in file order."""
        return (self.record(index) for index in range(len(self)))

    def entries(self) -> Iterator[tuple[Union[Record, BadRecord], dict]]:
        """Every entry as a record (or bad record) with its raw entry dict, in file order."""
        for index in range(len(self)):
            table, local = self.locate(index)
            yield self.record(index), table.entry(local)


@dataclass
class ShardSource:
    """Webdataset shards, read as streams."""

    name: str
    weight: float
    opts: EntryOptions
    shards: list[str]
    num_samples: Optional[int] = None
    """The declared ``SourceConfig.num_samples``."""
    where: str = "data.sources[0]"
    """The config entry this source comes from (for errors)."""
    exhausted: str = "stop"
    """``SourceConfig.exhausted``."""

    def samples_per_epoch(self) -> int:
        """Samples in one pass over the shards: ``num_samples`` when declared, else the sum of the
        ``successes`` of img2dataset's ``{shard}_stats.json`` files; ConfigError when a shard has none."""
        if self.num_samples is not None:
            return self.num_samples
        total = 0
        for shard in self.shards:
            count = shard_successes(shard)
            if count is None:
                raise ConfigError(f"{self.where}.num_samples", None,
                                  f"the samples in one epoch of {self.name} ({stats_url(shard) or shard}, img2dataset's "
                                  "count of that shard, is missing), or set training.max_steps")
            total += count
        return total

    def read(self, shard: str) -> Iterator[Union[Record, BadRecord]]:
        """The samples of one shard, in order."""
        return read_shard(shard, self.opts)

    def records(self) -> Iterator[Union[Record, BadRecord]]:
        """The samples of every shard, shard after shard."""
        for shard in self.shards:
            yield from self.read(shard)

    def entries(self) -> Iterator[tuple[Union[Record, BadRecord], dict]]:
        """:meth:`records`, each with an empty raw entry (a shard sample has no entry dict)."""
        return ((record, {}) for record in self.records())


Source = Union[MapSource, ShardSource]


def _is_tar(url: str) -> bool:
    return url.lower().endswith(TAR_SUFFIXES) or (url.startswith("pipe:") and ".tar" in url)


def detect_kind(urls: list[str], tables: Optional[list[Table]] = None) -> str:
    """The kind of the files ``urls`` (see the module docstring)."""
    if all(_is_tar(u) for u in urls):
        return "webdataset"
    if any(_is_tar(u) for u in urls):
        raise DataError(f"{urls[0]}: a source mixes tar shards with other files")
    first = next((t.entry(0) for t in tables or [] if len(t)), None)
    return kind_of_entry(first)


def _default_name(path: str) -> str:
    return path.split("::")[0].rstrip("/").rsplit("/", 1)[-1] or path


def open_source(cfg: SourceConfig, *, default_root: Optional[str] = None, where: str = "data.sources[0]"
                ) -> Source:
    """Opens one configured source; manifests are read now, shards are only listed."""
    name = cfg.name or _default_name(cfg.path)
    root = cfg.image_root if cfg.image_root is not None else default_root
    opts = EntryOptions.build(name, root, cfg.template, dict(cfg.options), where)
    urls = expand(cfg.path)
    kind = cfg.kind
    if kind == "webdataset" or (kind == "auto" and all(_is_tar(u) for u in urls)):
        return ShardSource(name, cfg.weight, opts, urls, cfg.num_samples, where, cfg.exhausted)
    tables = [read_table(u, name) for u in urls]
    if kind == "auto":
        kind = detect_kind(urls, tables)
    if kind not in ENTRY_READERS:
        raise ConfigError(f"{where}.kind", kind, "auto, webdataset, manifest, alpaca or llava")
    if cfg.num_samples is not None:
        raise ConfigError(f"{where}.num_samples", cfg.num_samples,
                          f"null for a {kind} source (its {sum(len(t) for t in tables)} entries are counted)")
    return MapSource(name, kind, cfg.weight, opts, tables, exhausted=cfg.exhausted)
