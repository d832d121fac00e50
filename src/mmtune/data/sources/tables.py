"""Manifest files as random-access tables of entries: JSON, JSONL, CSV, TSV and parquet.

Public API:

* :class:`Table`: ``len(table)``, ``table.entry(i) -> dict``, ``table.location(i) -> str`` (``file:line``
  for line-based files, ``file[i]`` for JSON arrays and parquet), ``table.bad`` (entries that could not be
  parsed at all, as :class:`~mmtune.data.badrecords.BadRecord`).
* :func:`read_table` ``(path, source) -> Table``: picks the reader by extension (``.json``, ``.jsonl``,
  ``.csv``, ``.tsv``, ``.parquet``; ``.txt`` JSONL files too); remote URLs are streamed through
  :func:`~mmtune.data.sources.paths.open_binary`.

A JSON file must hold a list of objects; a JSONL line, CSV or TSV row that is not a valid entry is
skipped and reported with its line number. A local JSONL file or JSON list is parsed once when opened (to
find its bad entries; a JSON list chunk by chunk, :func:`json_array_elements`) and then read through an
index of byte spans (:class:`OffsetIndex`): an entry is read from the file when it is asked for, so memory
holds 16 bytes per entry (plus its line number), not the entries. A local parquet file is read through
a memory-mapped Arrow copy (:func:`arrow_copy`, written once): its columns (image bytes included) stay in
the page cache, shared by the processes, and an entry's values are copied out only when it is read.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Sequence

from mmtune.data.badrecords import BadRecord
from mmtune.data.sources.paths import cache_root, is_remote, open_binary
from mmtune.errors import DataError

TABLE_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


def suffix_of(path: str) -> str:
    """The lower-case extension of ``path`` (``.jsonl`` for ``x.jsonl``)."""
    name = path.rsplit("/", 1)[-1].lower()
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


class OffsetIndex:
    """The entries of a local JSONL file or JSON list, read on demand: only each entry's byte span is kept
    (16 bytes per entry), so a loader worker's memory does not grow with the file. Picklable; each process
    opens the file itself (forked workers never share a file position)."""

    def __init__(self, path: str, starts: array, stops: array):
        self.path, self.starts, self.stops = path, starts, stops
        self._file: Optional[IO[bytes]] = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict:
        if self._pid != os.getpid():
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        assert self._file is not None
        self._file.seek(self.starts[index])
        return json.loads(self._file.read(self.stops[index] - self.starts[index]))

    def __getstate__(self) -> dict:
        return {"path": self.path, "starts": self.starts, "stops": self.stops}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["starts"], state["stops"])  # type: ignore[misc]


_SPACE = re.compile(r"\s*")
_CHUNK = 1 << 24


class _JsonText:
    """A JSON file decoded chunk by chunk. ``text`` holds the decoded characters from ``mark`` (a character
    index, the start of the element being read) on; ``mark_byte`` is the byte offset of ``text[mark]``."""

    def __init__(self, f: IO[bytes]):
        self.f, self.text, self.mark, self.mark_byte, self.eof = f, "", 0, 0, False
        self._utf8 = codecs.getincrementaldecoder("utf-8")()

    def more(self) -> int:
        """Forgets the text before ``mark`` and appends the next chunk; returns how far indices moved back
        (-1 at the end of the file)."""
        if self.eof:
            return -1
        chunk = self.f.read(_CHUNK)
        self.eof = not chunk
        shift, self.mark = self.mark, 0
        self.text = self.text[shift:] + self._utf8.decode(chunk, final=self.eof)
        return shift

    def skip(self, i: int) -> int:
        """Index of the first non-space character from ``i`` (reading on as needed; len(text) at the end)."""
        while True:
            i = _SPACE.match(self.text, i).end()  # type: ignore[union-attr]
            if i < len(self.text):
                return i
            shift = self.more()
            if shift < 0:
                return i
            i -= shift

    def byte_of(self, i: int) -> int:
        """The byte offset of ``text[i]`` (``i`` never moves back); ``i`` becomes the mark."""
        self.mark_byte += len(self.text[self.mark:i].encode())
        self.mark = i
        return self.mark_byte


def json_array_elements(path: str) -> Iterator[tuple[int, int, Any]]:
    """(start byte, stop byte, parsed value) of every element of the JSON list in local file ``path``,
    read chunk by chunk (memory holds a chunk, not the file); DataError when it is not one JSON list."""
    decoder = json.JSONDecoder()
    with open(path, "rb") as f:
        text = _JsonText(f)
        i = text.skip(0)
        if text.text[i:i + 1] != "[":
            raise DataError(f"{path}: expected a JSON list of records")
        i, first = text.skip(i + 1), True
        while text.text[i:i + 1] != "]":
            if not first:
                if text.text[i:i + 1] != ",":
                    raise DataError(f"{path}: not valid JSON (expected ',' or ']' at byte {text.byte_of(i)})")
                i = text.skip(i + 1)
            start = text.byte_of(i)
            value, end, after = _element(text, decoder, path)
            yield start, start + len(text.text[text.mark:end].encode()), value
            i, first = after, False


def _element(text: _JsonText, decoder: json.JSONDecoder, path: str) -> tuple[Any, int, int]:
    """The value at ``text.mark``, where it ends, and the next non-space index after it (reading on until
    a separator follows, so a value cut by the chunk's end is never taken)."""
    while True:
        try:
            value, end = decoder.raw_decode(text.text, text.mark)
            after = _SPACE.match(text.text, end).end()  # type: ignore[union-attr]
            if after < len(text.text):
                return value, end, after
        except json.JSONDecodeError as exc:
            if text.eof:
                raise DataError(f"{path}: not valid JSON ({exc.msg} at character {exc.pos})") from None
        if text.more() < 0:
            raise DataError(f"{path}: not valid JSON (the list is not closed)")


@dataclass
class Table:
    """Entries of one manifest file."""

    path: str
    entries: Any
    """A list of dicts, an :class:`OffsetIndex` (local JSONL and JSON) or a pyarrow Table."""
    lines: Optional[Sequence[int]] = None
    """Line number of each entry (line-based files)."""
    bad: list[BadRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries) if isinstance(self.entries, (list, OffsetIndex)) else self.entries.num_rows

    def entry(self, index: int) -> dict:
        """Entry ``index`` as a dict."""
        if isinstance(self.entries, (list, OffsetIndex)):
            return self.entries[index]
        return {name: self.entries.column(name)[index].as_py() for name in self.entries.column_names}

    def location(self, index: int) -> str:
        """Where entry ``index`` sits in its file."""
        return f"{self.path}:{self.lines[index]}" if self.lines is not None else f"{self.path}[{index}]"


def _read_json(path: str, source: str) -> Table:
    """A local file is indexed (:func:`json_array_elements`, each element parsed once to find the bad
    ones); a remote one is held in memory."""
    if is_remote(path):
        return _load_json(path, source)
    starts, stops, bad = array("q"), array("q"), []
    for i, (start, stop, item) in enumerate(json_array_elements(path)):
        if isinstance(item, dict):
            starts.append(start)
            stops.append(stop)
        else:
            bad.append(BadRecord(source, f"{path}[{i}]", f"a {type(item).__name__}, not an object"))
    return Table(path, OffsetIndex(path, starts, stops), None, bad)


def _load_json(path: str, source: str) -> Table:
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
    starts, stops, lines, bad = array("q"), array("q"), array("l"), []
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
            starts.append(start)
            stops.append(offset)
            lines.append(number)
            if not local:
                entries.append(item)
    return Table(path, OffsetIndex(path, starts, stops) if local else entries, lines, bad)


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
    """A local file through its memory-mapped Arrow copy (:func:`arrow_copy`); a remote one in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if not is_remote(path):
            return Table(path, pa.ipc.open_file(pa.memory_map(str(arrow_copy(path)))).read_all())
        with open_binary(path) as f:
            table = pq.read_table(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read parquet ({exc})") from None
    return Table(path, table.combine_chunks())


def arrow_copy(path: str) -> Path:
    """An uncompressed Arrow IPC copy of local parquet file ``path``, written once (batch by batch) under
    ``cache_root()/arrow`` and keyed by the file's path, size and modification time. Read memory-mapped,
    its pages are the page cache's, shared by every process that reads it, not copies in each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{info.st_size}:{info.st_mtime_ns}".encode()).hexdigest()[:32]
    target = cache_root() / "arrow" / f"{key}.arrow"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    try:
        source = pq.ParquetFile(path)
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, source.schema_arrow) as writer:
            for batch in source.iter_batches(batch_size=1024):
                writer.write_batch(batch)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


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

