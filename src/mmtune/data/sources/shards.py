"""Webdataset tar shards in img2dataset's layout, streamed member by member.

A sample is the run of consecutive tar members sharing a key (the member name up to the first dot of
its file name): ``{key}.jpg|jpeg|png|webp`` (the image), ``{key}.txt`` (the caption) and ``{key}.json``
(metadata; its ``caption`` field, or ``caption_key``, is used when there is no ``.txt``).

Public API:

* :func:`read_shard` ``(url, opts) -> Iterator[Record | BadRecord]``: the samples of one shard in order.
  A sample without an image or caption, or with an undecodable ``.json``/``.txt``, is a bad record
  located at ``shard:key``; a truncated or corrupt tar, or a remote shard whose connection dropped more
  often than :data:`~mmtune.data.sources.remote.RETRIES`, ends the shard with one bad record located at
  the first key not read, its reason naming the sample offset where the rest was skipped. Image bytes
  are kept encoded (decoded later, in the loader's workers). A record's ``extra["identity"]`` is
  ``shard#key``.
* :func:`stats_url` ``(url) -> str | None``: the ``{shard}_stats.json`` img2dataset writes next to shard
  ``{shard}.tar`` (None for a ``pipe:`` command); :func:`shard_successes` ``(url) -> int | None``: its
  ``successes`` field, the number of samples written into the shard (None when there is no such file).
"""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path
from typing import Iterator, Optional, Union

from mmtune.data.badrecords import BadRecord
from mmtune.data.records import Record
from mmtune.data.sources.formats import CAPTION_KEYS, EntryOptions, caption_entry
from mmtune.data.sources.paths import is_remote, open_binary
from mmtune.errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
STATS_SUFFIX = "_stats.json"


def split_name(name: str) -> tuple[str, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``); the extension is everything after the first dot."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _sample(url: str, key: str, parts: dict[str, bytes], opts: EntryOptions) -> Union[Record, BadRecord]:
    location = f"{url}:{key}"
    try:
        entry: dict = {}
        if "json" in parts:
            meta = json.loads(parts["json"])
            entry.update(meta if isinstance(meta, dict) else {})
        if "txt" in parts:
            entry["txt"] = parts["txt"].decode("utf-8")
        image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
        if image is None:
            return BadRecord(opts.source, location, "no image member (.jpg, .jpeg, .png or .webp)")
        entry["__image__"] = image
        entry.setdefault("key", key)
        caption_key = opts.caption_key or ("txt" if "txt" in entry else None)
        view = EntryOptions(opts.source, None, "__image__", caption_key or _caption_key(entry), opts.prefix,
                            opts.prefix_key, opts.template)
        record = caption_entry(entry, view, location, random.Random(0))
        record.extra["identity"] = f"{url}#{key}"
        return record
    except (DataError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return BadRecord(opts.source, location, str(exc).removeprefix(f"{location}: "))


def _caption_key(entry: dict) -> Optional[str]:
    return next((k for k in CAPTION_KEYS if k in entry), None)


def read_shard(url: str, opts: EntryOptions) -> Iterator[Union[Record, BadRecord]]:
    """The samples of shard ``url``, streamed (see the module docstring)."""
    key: Optional[str] = None
    parts: dict[str, bytes] = {}
    count = 0
    try:
        with open_binary(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = split_name(member.name)
                if key is not None and member_key != key:
                    yield _sample(url, key, parts, opts)
                    parts, count = {}, count + 1
                key = member_key
                handle = tar.extractfile(member)
                assert handle is not None, f"{member.name} is a file but has no data"
                parts[ext] = handle.read()
    except (tarfile.TarError, OSError, EOFError, DataError) as exc:
        where = f"{url}:{key}" if key is not None else url
        yield BadRecord(opts.source, where, f"unreadable tar data ({exc}); rest of the shard skipped from "
                                            f"sample {count}")
        return
    if key is not None:
        yield _sample(url, key, parts, opts)


def stats_url(url: str) -> Optional[str]:
    """``dir/00012.tar`` (or ``.tar.gz``, ``.tgz``) -> ``dir/00012_stats.json``; None for ``pipe:`` commands."""
    if url.startswith("pipe:"):
        return None
    stem = url.rpartition(".tgz")[0] if url.endswith(".tgz") else url.rpartition(".tar")[0]
    return (stem or url) + STATS_SUFFIX


def shard_successes(url: str) -> Optional[int]:
    """The ``successes`` of shard ``url``'s img2dataset stats file (samples written into the shard); None when
    there is no stats file; DataError when it is not img2dataset's JSON."""
    stats = stats_url(url)
    if stats is None or (not is_remote(stats) and not Path(stats.removeprefix("file://")).is_file()):
        return None
    try:
        with open_binary(stats) as stream:
            data = json.load(stream)
    except DataError:
        if is_remote(stats):
            return None  # not there (or not reachable): counted as missing
        raise
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{stats}: not JSON (expected img2dataset's shard stats)") from None
    successes = data.get("successes") if isinstance(data, dict) else None
    if not isinstance(successes, int) or isinstance(successes, bool) or successes < 0:
        raise DataError(f"{stats}: no 'successes' count (expected img2dataset's shard stats)")
    return successes
