"""Large manifests: a local JSONL file or JSON list is read through an index of byte offsets (entries read
on demand, in forked workers too), so memory does not hold the entries; scripts/bench_data_memory.py
measures it."""

from __future__ import annotations

import base64
import json
import multiprocessing
import pickle

import pytest

from data_factory import png_bytes
from mmtune.config import SourceConfig
from mmtune.data.badrecords import BadRecord
from mmtune.data.sources import open_source
from mmtune.data.sources.tables import OffsetIndex, read_table
from mmtune.errors import DataError


def _jsonl(path, n: int):
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    items = [{"image": image, "caption": f"caption {i} é"} for i in range(n)]
    lines = [json.dumps(item, ensure_ascii=False) for item in items]
    lines.insert(3, "{broken")
    lines.insert(5, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return items


def _entry(args):
    table, index = args
    return table.entry(index)


def test_a_local_jsonl_file_is_read_through_byte_offsets(tmp_path):
    items = _jsonl(tmp_path / "big.jsonl", 200)
    table = read_table(str(tmp_path / "big.jsonl"), "big")
    assert isinstance(table.entries, OffsetIndex) and len(table) == 200
    assert [table.entry(i) for i in range(200)] == items
    assert table.location(3) == f"{tmp_path}/big.jsonl:5" and table.location(4) == f"{tmp_path}/big.jsonl:7"
    assert [b.location for b in table.bad] == [f"{tmp_path}/big.jsonl:4"]
    copy = pickle.loads(pickle.dumps(table))
    assert copy.entry(150) == items[150]
    with multiprocessing.get_context("fork").Pool(2) as pool:  # forked workers each open the file
        assert pool.map(_entry, [(table, i) for i in range(199, -1, -1)]) == items[::-1]


def test_an_indexed_manifest_gives_the_same_records(tmp_path):
    _jsonl(tmp_path / "big.jsonl", 20)
    source = open_source(SourceConfig(path=str(tmp_path / "big.jsonl")))
    records = list(source.records())
    assert not any(isinstance(r, BadRecord) for r in records) and len(records) == 20
    assert records[7].messages[0].content == "caption 7 é" and records[7].extra["identity"].endswith("big.jsonl:7")
    assert [b.location for b in source.load_bad] == [f"{tmp_path}/big.jsonl:4"]


def test_a_local_json_list_is_indexed_and_a_remote_file_held_in_memory(tmp_path, monkeypatch):
    from http_factory import serve
    from mmtune.data.sources import tables

    items = _jsonl(tmp_path / "big.jsonl", 5)
    (tmp_path / "big.json").write_text(json.dumps([items[0], 7, *items[1:]], indent=1, ensure_ascii=False))
    monkeypatch.setattr(tables, "_CHUNK", 16)  # elements cut by chunk ends are read on
    table = read_table(str(tmp_path / "big.json"), "big")
    assert isinstance(table.entries, OffsetIndex) and [table.entry(i) for i in range(5)] == items
    assert [(b.location, b.reason) for b in table.bad] == [(f"{tmp_path}/big.json[1]", "a int, not an object")]
    (tmp_path / "cut.json").write_text(json.dumps(items)[:-30])
    with pytest.raises(DataError, match="cut.json: not valid JSON"):
        read_table(str(tmp_path / "cut.json"), "cut")
    with serve(tmp_path) as (url, _):
        remote = read_table(f"{url}/big.jsonl", "big")
    assert isinstance(remote.entries, list) and remote.entries == items
    assert remote.location(3) == f"{url}/big.jsonl:5"


def test_a_local_parquet_file_is_read_through_a_memory_mapped_arrow_copy(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rows = [{"jpg": png_bytes(i), "caption": f"caption {i}"} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "images.parquet", row_group_size=16)
    table = read_table(str(tmp_path / "images.parquet"), "images")
    copies = list((tmp_path / "cache" / "mmtune" / "arrow").glob("*.arrow"))
    assert len(copies) == 1 and [table.entry(i) for i in range(50)] == rows
    written = copies[0].stat().st_mtime_ns
    assert read_table(str(tmp_path / "images.parquet"), "images").entry(49) == rows[49]
    assert copies[0].stat().st_mtime_ns == written  # written once
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: cannot read parquet"):
        read_table(str(tmp_path / "junk.parquet"), "junk")
    assert not list((tmp_path / "cache" / "mmtune" / "arrow").glob("*.partial"))
