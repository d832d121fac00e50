"""Sources: every manifest format, Alpaca, LLaVA, webdataset shards, brace patterns, mixtures."""

from __future__ import annotations

import base64
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_factory import alpaca_items, llava_items, png_bytes, write_images, write_json, write_shards
from mmtune.config import DataConfig, SourceConfig
from mmtune.data.badrecords import BadRecord
from mmtune.data.mixture import epoch_order, interleave, open_sources, read_mixture
from mmtune.data.records import Record
from mmtune.data.sources import MapSource, ShardSource, open_source
from mmtune.data.sources.paths import expand
from mmtune.errors import ConfigError, DataError


def _caption(record: Record) -> str:
    return record.messages[-1].content


def test_brace_patterns_globs_and_lists_expand_in_order(tmp_path):
    for name in ("00000.tar", "00001.tar", "00002.tar", "x.json"):
        (tmp_path / name).write_bytes(b"")
    assert expand(f"{tmp_path}/{{00000..00002}}.tar") == [str(tmp_path / f"0000{i}.tar") for i in range(3)]
    assert expand(f"{tmp_path}/*.tar") == [str(tmp_path / f"0000{i}.tar") for i in range(3)]
    assert expand(f"{tmp_path}/00002.tar::{tmp_path}/x.json") == [str(tmp_path / "00002.tar"), str(tmp_path / "x.json")]
    assert expand("pipe:cat a.tar::s3://bucket/{0..1}.tar") == ["pipe:cat a.tar", "s3://bucket/0.tar",
                                                                 "s3://bucket/1.tar"]
    with pytest.raises(DataError, match="data file not found"):
        expand(f"{tmp_path}/{{00003..00004}}.tar")


def _manifest_rows(names: list[str]) -> list[dict]:
    return [{"image": name, "caption": f"a picture number {i}"} for i, name in enumerate(names)]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".tsv", ".parquet"])
def test_caption_manifests_of_every_format_with_image_root(tmp_path, suffix):
    names = write_images(tmp_path / "imgs", 3)
    rows = _manifest_rows(names)
    path = tmp_path / f"m{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        path.write_text("image" + sep + "caption\n" + "".join(f"{r['image']}{sep}{r['caption']}\n" for r in rows))
    source = open_source(SourceConfig(path=str(path), image_root=str(tmp_path / "imgs")))
    assert isinstance(source, MapSource) and source.kind == "manifest" and len(source) == 3
    record = source.record(2)
    assert _caption(record) == "a picture number 2"
    assert record.image == str(tmp_path / "imgs" / "2.png")
    assert record.source == f"m{suffix}"
    assert record.extra["location"].startswith(str(path))


def test_caption_lists_are_chosen_afresh_per_epoch_and_seeded(tmp_path):
    captions = [f"caption {c}" for c in range(8)]
    path = write_json(tmp_path / "m.json", [{"image": "0.png", "captions": captions}])
    write_images(tmp_path, 1)
    source = open_source(SourceConfig(path=str(path), image_root=str(tmp_path)))
    chosen = [_caption(source.record(0, epoch=e, seed=3)) for e in range(8)]
    assert len(set(chosen)) > 1 and set(chosen) <= set(captions)
    assert chosen == [_caption(source.record(0, epoch=e, seed=3)) for e in range(8)]


def test_embedded_image_bytes_in_parquet_and_base64_in_jsonl(tmp_path):
    image = png_bytes(7)
    pq.write_table(pa.Table.from_pylist([{"jpg": image, "text": "bytes"}]), tmp_path / "b.parquet")
    parquet = open_source(SourceConfig(path=str(tmp_path / "b.parquet")))
    assert parquet.record(0).image == image and _caption(parquet.record(0)) == "bytes"
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    (tmp_path / "c.jsonl").write_text(json.dumps({"img": uri, "txt": "inline"}) + "\n")
    jsonl = open_source(SourceConfig(path=str(tmp_path / "c.jsonl")))
    assert jsonl.record(0).image == image and _caption(jsonl.record(0)) == "inline"


def test_hf_image_mapping_prefix_options_and_custom_keys(tmp_path):
    image = png_bytes(9)
    pq.write_table(pa.Table.from_pylist([{"picture": {"bytes": image, "path": "x.png"}, "alt": "a cat",
                                          "lead": "The author"}]), tmp_path / "h.parquet")
    fixed = open_source(SourceConfig(path=str(tmp_path / "h.parquet"),
                                     options={"image_key": "picture", "caption_key": "alt", "prefix": "Photo:"}))
    record = fixed.record(0)
    assert record.image == image and _caption(record) == "a cat" and record.prefix == "Photo:"
    per_entry = open_source(SourceConfig(path=str(tmp_path / "h.parquet"),
                                         options={"image_key": "picture", "caption_key": "alt", "prefix_key": "lead"}))
    assert per_entry.record(0).prefix == "The author"
    with pytest.raises(ConfigError, match="options"):
        open_source(SourceConfig(path=str(tmp_path / "h.parquet"), options={"captoin_key": "alt"}))


def test_alpaca_records_are_detected_and_converted(tmp_path):
    path = write_json(tmp_path / "alpaca_gpt4_data.json", alpaca_items(3))
    source = open_source(SourceConfig(path=str(path), template="alpaca"))
    assert source.kind == "alpaca"
    user, answer = source.record(0).messages
    assert (user.role, user.content, user.input) == ("user", "Say 0", "loudly")
    assert (answer.role, answer.content) == ("assistant", "number 0")
    assert source.record(1).messages[0].input == "" and source.record(0).template == "alpaca"
    assert source.record(0).image is None


def test_llava_records_multi_turn_with_image_root_and_text_only(tmp_path):
    names = write_images(tmp_path / "coco", 2)
    items = llava_items(2, names, turns=2) + llava_items(1)
    path = write_json(tmp_path / "llava_instruct_150k.json", items)
    source = open_source(SourceConfig(path=str(path)), default_root=str(tmp_path / "coco"))
    assert source.kind == "llava" and len(source) == 3
    record = source.record(1)
    assert [m.role for m in record.messages] == ["user", "assistant", "user", "assistant"]
    assert record.messages[0].content == "<image>\nWhat is this?" and record.key == "r1"
    assert record.image == str(tmp_path / "coco" / "1.png")
    assert source.record(2).image is None


def test_malformed_entries_are_bad_records_with_locations(tmp_path):
    write_images(tmp_path, 1)
    lines = [json.dumps({"image": "0.png", "caption": "ok"}), "{not json", json.dumps({"image": "9.png", "caption": "x"}),
             json.dumps({"image": "0.png"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    source = open_source(SourceConfig(path=str(tmp_path / "m.jsonl"), image_root=str(tmp_path)))
    assert len(source) == 3
    assert source.load_bad == [BadRecord("m.jsonl", f"{tmp_path}/m.jsonl:2", source.load_bad[0].reason)]
    assert "invalid JSON" in source.load_bad[0].reason
    missing, no_caption = source.record(1), source.record(2)
    assert missing == BadRecord("m.jsonl", f"{tmp_path}/m.jsonl:3", f"image file not found: {tmp_path}/9.png")
    assert isinstance(no_caption, BadRecord) and no_caption.location.endswith("m.jsonl:4")
    assert "no caption field" in no_caption.reason
    llava = write_json(tmp_path / "l.json", [{"id": "a", "conversations": [{"from": "robot", "value": "x"}]}])
    bad = open_source(SourceConfig(path=str(llava), kind="llava")).record(0)
    assert isinstance(bad, BadRecord) and bad.location == f"{llava}[0]" and "conversations[0]" in bad.reason
    (tmp_path / "short.csv").write_text("image,caption\n0.png,fine\n0.png,too,many\n")
    assert open_source(SourceConfig(path=str(tmp_path / "short.csv"))).load_bad[0].location.endswith("short.csv:3")


def test_webdataset_shards_stream_in_img2dataset_layout(tmp_path):
    write_shards(tmp_path, 2, 3, no_caption_keys=("000000004",))
    source = open_source(SourceConfig(path=f"{tmp_path}/{{00000..00001}}.tar"))
    assert isinstance(source, ShardSource) and len(source.shards) == 2
    first = list(source.read(source.shards[0]))
    assert [_caption(r) for r in first] == ["caption 0", "caption 1", "caption 2"]
    assert first[0].image[:2] == b"\xff\xd8" and first[0].extra["location"].endswith("00000.tar:000000000")
    second = list(source.read(source.shards[1]))
    assert isinstance(second[1], BadRecord) and second[1].location.endswith("00001.tar:000000004")


def test_every_source_yields_its_records_and_raw_entries_in_file_order(tmp_path):
    write_shards(tmp_path / "shards", 2, 3, no_caption_keys=("000000004",))
    shards = open_source(SourceConfig(path=f"{tmp_path}/shards/{{00000..00001}}.tar"))
    records = list(shards.records())
    assert [_caption(r) for r in records if isinstance(r, Record)] == [f"caption {n}" for n in (0, 1, 2, 3, 5)]
    assert isinstance(records[4], BadRecord) and len(records) == 6
    assert [(type(r), e) for r, e in shards.entries()] == [(type(r), {}) for r in records]
    names = write_images(tmp_path / "imgs", 3)
    items = [{"image": n, "captions": [f"first {i}", f"second {i}"], "scene": i} for i, n in enumerate(names)]
    manifest = open_source(SourceConfig(path=str(write_json(tmp_path / "m.json", items)),
                                        image_root=str(tmp_path / "imgs")))
    assert [r.key for r in manifest.records()] == [manifest.record(i).key for i in range(3)]
    assert [(r.key, e) for r, e in manifest.entries()] == [(manifest.record(i).key, items[i]) for i in range(3)]


def test_truncated_tar_ends_the_shard_with_one_located_bad_record(tmp_path):
    (shard,) = write_shards(tmp_path, 1, 4)
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        third_image = [m for m in tar.getmembers() if m.name == "000000002.jpg"][0]
    shard.write_bytes(data[:third_image.offset_data + 10])
    items = list(open_source(SourceConfig(path=str(shard))).read(str(shard)))
    assert [_caption(r) for r in items[:2]] == ["caption 0", "caption 1"]
    assert len(items) == 3 and isinstance(items[2], BadRecord)
    assert items[2].location == f"{shard}:000000002" and "unreadable tar data" in items[2].reason


def test_mixture_yaml_resolves_paths_and_names_are_unique(tmp_path):
    write_json(tmp_path / "sub" / "a.json", alpaca_items(4))
    (tmp_path / "sub" / "mix.yaml").write_text(
        "sources:\n  - {path: a.json, weight: 2, template: alpaca}\n  - {path: a.json, image_root: imgs}\n")
    mixture = read_mixture(tmp_path / "sub" / "mix.yaml")
    assert mixture[0].path == str(tmp_path / "sub" / "a.json") and mixture[0].weight == 2
    assert mixture[1].image_root == str(tmp_path / "sub" / "imgs")
    sources = open_sources(DataConfig(mixture=str(tmp_path / "sub" / "mix.yaml")))
    assert [s.name for s in sources] == ["a.json", "a.json#2"]
    assert sources[1].record(0).source == "a.json#2"
    (tmp_path / "bad.yaml").write_text("- {path: a.json, weight: -1}\n")
    with pytest.raises(ConfigError, match="weight"):
        read_mixture(tmp_path / "bad.yaml")


def test_epoch_order_honours_weights_exactly_and_is_seeded():
    ids, idx = epoch_order([100, 40], [1.0, 2.5], seed=1, epoch=0)
    assert np.bincount(ids).tolist() == [100, 100]
    assert sorted(idx[ids == 0].tolist()) == list(range(100))
    assert sorted(np.bincount(idx[ids == 1], minlength=40).tolist()) == [2] * 20 + [3] * 20
    again = epoch_order([100, 40], [1.0, 2.5], seed=1, epoch=0)
    assert np.array_equal(ids, again[0]) and np.array_equal(idx, again[1])
    assert not np.array_equal(idx, epoch_order([100, 40], [1.0, 2.5], seed=1, epoch=1)[1])
    half = epoch_order([100], [0.5], seed=0, epoch=0)[1]
    assert len(half) == 50 and len(set(half.tolist())) == 50


def test_interleave_draws_by_weight_until_all_are_exhausted():
    rng = np.random.default_rng(0)
    out = list(interleave([iter(["a"] * 300), iter(["b"] * 300)], [3.0, 1.0], rng))
    assert sorted(out) == ["a"] * 300 + ["b"] * 300
    head = out[:200]
    assert 0.65 < head.count("a") / 200 < 0.85
