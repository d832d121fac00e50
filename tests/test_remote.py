"""Remote reading for real: webdataset shards (img2dataset's layout) and manifest images served over HTTP by
a server on 127.0.0.1 started in the test, brace patterns of URLs, connections dropped mid-shard (once:
resumed at the byte reached; always: the shard's rest is one bad record with its location), fsspec and
``pipe:`` URLs, and a tiny training run reading HTTP shards."""

from __future__ import annotations

import json
import logging

import pytest

from data_factory import caption_loader, config, write_images, write_shards
from helpers_reliability import fast_tokenizer, write_config
from helpers_reliability import write_shards as write_numbered_shards
from http_factory import serve
from mmtune.cli import main
from mmtune.config import SourceConfig
from mmtune.data.badrecords import BadRecord
from mmtune.data.images import load_image
from mmtune.data.sources import MapSource, ShardSource, open_source
from mmtune.data.sources.remote import RETRIES, _opener
from mmtune.models.tokenizer import Tokenizer


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "shards", 3, 5, stats=True)
    return tmp_path / "shards"


def _captions(items) -> list[str]:
    return [r.messages[0].content for r in items if not isinstance(r, BadRecord)]


def test_brace_patterns_of_http_urls_expand_and_read_like_local_shards(shards):
    local = open_source(SourceConfig(path=str(shards / "{00000..00002}.tar")))
    with serve(shards) as (url, _):
        source = open_source(SourceConfig(path=url + "/{00000..00002}.tar"))
        assert isinstance(source, ShardSource)
        assert source.shards == [f"{url}/{i:05d}.tar" for i in range(3)]
        assert source.samples_per_epoch() == 15  # img2dataset's stats files, read over HTTP too
        remote = list(source.records())
    assert _captions(remote) == _captions(local.records()) == [f"caption {n}" for n in range(15)]
    assert remote[0].extra["identity"] == f"{url}/00000.tar#000000000"
    assert remote[0].image == list(local.records())[0].image


@pytest.mark.parametrize("ranges", [True, False])
def test_a_connection_dropped_once_mid_shard_resumes_at_the_byte_reached(shards, ranges):
    size = (shards / "00001.tar").stat().st_size
    with serve(shards) as (url, behaviour):
        behaviour.ranges = ranges
        behaviour.drops["00001.tar"] = (size // 2, 1)
        items = list(open_source(SourceConfig(path=url + "/{00000..00002}.tar")).records())
    assert not [r for r in items if isinstance(r, BadRecord)]
    assert _captions(items) == [f"caption {n}" for n in range(15)]
    asked = [start for name, start in behaviour.requests if name == "00001.tar"]
    assert asked == ([0, size // 2] if ranges else [0, 0])  # with Range: the rest only


def test_a_connection_dropped_every_time_counts_the_shards_rest_as_bad_with_its_location(shards):
    size = (shards / "00001.tar").stat().st_size
    with serve(shards) as (url, behaviour):
        behaviour.drops["00001.tar"] = (size // 2, -1)
        items = list(open_source(SourceConfig(path=url + "/{00000..00002}.tar")).records())
    bad = [r for r in items if isinstance(r, BadRecord)]
    assert len(bad) == 1
    read = _captions(items)
    taken = len(read) - 10  # shards 0 and 2 are whole
    assert 0 < taken < 5 and read[5:5 + taken] == [f"caption {n}" for n in range(5, 5 + taken)]
    assert bad[0].location == f"{url}/00001.tar:{5 + taken:09d}"  # the first sample not read
    assert f"rest of the shard skipped from sample {taken}" in bad[0].reason
    assert f"after {RETRIES} retries" in bad[0].reason
    assert [s for n, s in behaviour.requests if n == "00001.tar"][1:] == [size // 2] * RETRIES


def test_the_loader_counts_a_lost_remote_shard_as_bad_data(shards, llama_tokenizer_dir):
    size = (shards / "00002.tar").stat().st_size
    tok = Tokenizer.from_path(llama_tokenizer_dir)
    with serve(shards) as (url, behaviour):
        behaviour.drops["00002.tar"] = (size // 2, -1)
        cfg = config([SourceConfig(path=url + "/{00000..00002}.tar")], template="caption", batching="padded",
                     max_bad_fraction=1.0)
        loader = caption_loader(cfg, tok)
        batches = list(loader)
    counts = loader.stats()["sources"]["{00000..00002}.tar"]
    assert counts["bad"] == 1 and counts["samples"] == sum(b.num_samples for b in batches)
    assert counts["reports"][0].startswith(f"{url}/00002.tar:0000000") and "skipped from sample" in counts["reports"][0]


def test_a_missing_remote_shard_is_one_bad_record_without_retries(shards):
    with serve(shards) as (url, behaviour):
        items = list(open_source(SourceConfig(path=f"{url}/00000.tar::{url}/00009.tar")).records())
    assert isinstance(items[-1], BadRecord) and "HTTP 404" in items[-1].reason
    assert [n for n, _ in behaviour.requests].count("00009.tar") == 1


def test_remote_image_urls_in_a_manifest_load_like_local_ones(tmp_path, llama_tokenizer_dir):
    names = write_images(tmp_path / "imgs", 4)
    with serve(tmp_path / "imgs") as (url, _):
        manifest = tmp_path / "captions.jsonl"
        manifest.write_text("".join(json.dumps({"image": f"{url}/{n}", "caption": f"shape {i}"}) + "\n"
                                    for i, n in enumerate(names)))
        source = open_source(SourceConfig(path=str(manifest)))
        assert isinstance(source, MapSource) and source.record(0).image == f"{url}/0.png"
        assert load_image(f"{url}/1.png").size == load_image(tmp_path / "imgs" / "1.png").size
        cfg = config([SourceConfig(path=str(manifest))], template="caption")
        loader = caption_loader(cfg, Tokenizer.from_path(llama_tokenizer_dir))
        batches = list(loader)
    assert sum(b.pixel_values.shape[0] for b in batches) == 4
    assert loader.stats()["sources"]["captions.jsonl"]["bad"] == 0


def test_fsspec_and_pipe_urls_read_shards(shards):
    import fsspec

    data = (shards / "00000.tar").read_bytes()
    with fsspec.open("memory://mmtune-test/00000.tar", "wb") as f:
        f.write(data)
    via_fsspec = list(open_source(SourceConfig(path="memory://mmtune-test/00000.tar")).records())
    via_pipe = list(open_source(SourceConfig(path=f"pipe:cat {shards}/00000.tar")).records())
    assert _captions(via_fsspec) == _captions(via_pipe) == [f"caption {n}" for n in range(5)]
    # reopened after a drop: fsspec seeks, a pipe: command runs again and skips to the byte reached
    assert _opener("memory://mmtune-test/00000.tar")("memory://mmtune-test/00000.tar", 700).read() == data[700:]
    pipe = f"pipe:cat {shards}/00000.tar"
    assert _opener(pipe)(pipe, 700).read() == data[700:]


@pytest.mark.slow
def test_a_tiny_training_run_reads_http_shards(tmp_path, capsys, caplog):
    tokenizer = fast_tokenizer(tmp_path / "tokenizer")
    write_numbered_shards(tmp_path / "shards", 3, 8)
    with serve(tmp_path / "shards") as (url, behaviour):
        behaviour.drops["00001.tar"] = ((tmp_path / "shards" / "00001.tar").stat().st_size // 2, 1)
        cfg = write_config(tmp_path / "run.yaml", [{"path": url + "/{00000..00002}.tar", "name": "web"}],
                           tmp_path / "run", tokenizer, max_steps=4, save_every=0)
        with caplog.at_level(logging.INFO, logger="mmtune.data"):
            code = main(["train", str(cfg)])
    assert code == 0, capsys.readouterr().err[-2000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m][-1] == 4
    assert metrics[-1]["token_spread"] == 1.0  # one rank: the busiest holds the mean
    assert {name for name, _ in behaviour.requests} >= {"00000.tar", "00001.tar", "00002.tar"}
    assert "bad record skipped" not in caplog.text
