"""Manifest files as random-access tables of entries: JSON, JSONL, CSV, TSV and parquet.

Public API:

* :class:`Table`: ``len(table)``, ``table.entry(i) -> dict``, ``table.location(i) -> str`` (``file:line``
  for line-based files, ``file[i]`` for JSON arrays and parquet), ``table.bad`` (entries that could not be
  parsed at all, as :class:`~mmtune.data.badrecords.BadRecord`).
* :func:`read_table` ``(path, source) -> Table``: picks the reader by extension (``.json``, ``.jsonl``,
  ``.csv``, ``.tsv``, ``.parquet``; ``.txt`` JSONL files too); remote URLs are streamed through
  :func:`~mmtune.data.sources.paths.open_binary`.

A JSON file must hold a list of objects; a JSONL line, CSV or TSV row that is not a valid entry is
skipped and reported with its line number. A local JSONL file is parsed once when opened (to find its bad
lines) and then read through an index of byte offsets (:class:`LineIndex`): an entry is read from the file
when it is asked for, so memory holds 8 bytes per entry plus its line number, not the entries. Parquet
columns stay in Arrow memory (image bytes are only copied out when an entry is read).
"""

from __future__ import annotations

import csv
import io
import json
import os
from array import array
from dataclasses import dataclass, field
from typing import IO, Any, Optional, Sequence

from mmtune.data.badrecords import BadRecord
from mmtune.data.sources.paths import is_remote, open_binary
from mmtune.errors import DataError

TABLE_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


def suffix_of(path: str) -> str:
    """The lower-case extension of ``path`` (``.jsonl`` for ``x.jsonl``)."""
    name = path.rsplit("/", 1)[-1].lower()
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


class LineIndex:
    """The entries of a local JSONL file, read on demand: only each entry's byte offset is kept (8 bytes per
    entry), so a loader worker's memory does not grow with the file. Picklable; each process opens the file
    itself (forked workers never share a file position)."""

    def __init__(self, path: str, offsets: array):
        self.path, self.offsets = path, offsets
        self._file: Optional[IO[bytes]] = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> dict:
        if self._pid != os.getpid():
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        assert self._file is not None
        self._file.seek(self.offsets[index])
        return json.loads(self._file.readline())

    def __getstate__(self) -> dict:
        return {"path": self.path, "offsets": self.offsets}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["offsets"])  # type: ignore[misc]


@dataclass
class Table:
    """Entries of one manifest file."""

    path: str
    entries: Any
    """A list of dicts, a :class:`LineIndex` (local JSONL) or a pyarrow Table."""
    lines: Optional[Sequence[int]] = None
    """Line number of each entry (line-based files)."""
    bad: list[BadRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries) if isinstance(self.entries, (list, LineIndex)) else self.entries.num_rows

    def entry(self, index: int) -> dict:
        """Entry ``index`` as a dict."""
        if isinstance(self.entries, (list, LineIndex)):
            return self.entries[index]
        return {name: self.entries.column(name)[index].as_py() for name in self.entries.column_names}

    def location(self, index: int) -> str:
        """Where entry ``index`` sits in its file."""
        return f"{self.path}:{self.lines[index]}" if self.lines is not None else f"{self.path}[{index}]"


def _read_json(path: str, source: str) -> Table:
    with open_binary(path) as f:
        try:
            data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, found a {type(data).__name__}")
    entries, bad = [], []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            entries.append(item)
        else:
            bad.append(BadRecord(source, f"{path}[{i}]", f"a {type(item).__name__}, not an object"))
    return Table(path, entries, None, bad)


def _read_jsonl(path: str, source: str) -> Table:
    """Every line is parsed once to find the bad ones; a local file keeps only the good lines' offsets."""
    local = not is_remote(path)
    entries: list = []
    offsets, lines, bad = array("q"), array("l"), []
    offset = 0
    with open_binary(path) as f:
        for number, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                bad.append(BadRecord(source, f"{path}:{number}", f"invalid JSON ({exc.args[0]})"))
                continue
            if not isinstance(item, dict):
                bad.append(BadRecord(source, f"{path}:{number}", f"a {type(item).__name__}, not an object"))
                continue
            offsets.append(start)
            lines.append(number)
            if not local:
                entries.append(item)
    return Table(path, LineIndex(path, offsets) if local else entries, lines, bad)


def _read_delimited(path: str, source: str, delimiter: str) -> Table:
    entries, lines, bad = [], [], []
    with open_binary(path) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""), delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file (a header row is needed)")
        for row in reader:
            number = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                bad.append(BadRecord(source, f"{path}:{number}",
                                     f"{len(row)} fields, the header has {len(header)}"))
                continue
            entries.append(dict(zip(header, row)))
            lines.append(number)
    return Table(path, entries, lines, bad)


def _read_parquet(path: str) -> Table:
    import pyarrow.parquet as pq

    try:
        with open_binary(path) as f:
            table = pq.read_table(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read parquet ({exc})") from None
    return Table(path, table.combine_chunks())


def read_table(path: str, source: str) -> Table:
    """Reads manifest ``path`` (see the module docstring)."""
    suffix = suffix_of(path)
    if suffix == ".json":
        return _read_json(path, source)
    if suffix in (".jsonl", ".txt"):
        return _read_jsonl(path, source)
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, source, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _read_parquet(path)
    raise DataError(f"{path}: unknown manifest type {suffix!r} (expected one of {', '.join(TABLE_SUFFIXES)})")

