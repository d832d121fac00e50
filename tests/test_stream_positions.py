"""Stream mode: positions instead of replay, elastic resume, weights that hold, old states, sample keys.

(The same over real ``torchrun`` processes killed with SIGKILL: tests/test_stream_elastic.py.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

import mmtune.data.sources as sources_module
from data_factory import alpaca_items, caption_loader, config, write_json, write_shards
from http_factory import serve
from mmtune.config import SourceConfig, load_config
from mmtune.data.loader import summary
from mmtune.data.positions import Positions, from_ranges, to_ranges
from mmtune.errors import ConfigError, DataError
from mmtune.models.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok(llama_tokenizer_dir):
    return Tokenizer.from_path(llama_tokenizer_dir)


def _shards(tmp_path, shards, per_shard, **source):
    write_shards(tmp_path / "shards", shards, per_shard)
    return SourceConfig(path=f"{tmp_path}/shards/{{00000..{shards - 1:05d}}}.tar", num_samples=shards * per_shard,
                        **source)


def _keys(batches):
    return [k for b in batches for k in b.keys]


def test_ranges_round_trip_and_positions_merge_begun_units_first():
    assert to_ranges([5, 1, 2, 3, 9]) == [[1, 4], [5, 6], [9, 10]]
    assert from_ranges(to_ranges({0, 7, 8})) == {0, 7, 8}
    a, b = Positions([6], seed=0), Positions([6], seed=0)
    a.commit([(0, 0, 2, 0, 0), (0, 0, 2, 1, 2)])  # unit 2: both samples -> done
    b.commit([(0, 0, 4, 3, 0)])  # unit 4 begun at offset 3 (a shuffle buffer took it first)
    merged = Positions.merged([a.state(["s"]), b.state(["s"])], ["s"], [6], 0, keep=lambda s, e: True)
    assert merged.now[(0, 0)].done == {2} and merged.taken(0, 0, 4) == {3}
    dealt = [merged.dealt(0, 0, r, 2) for r in range(2)]
    assert dealt[0][0] == 4 and sorted(dealt[0] + dealt[1]) == [0, 1, 3, 4, 5]
    assert Positions([1], seed=0).dealt(0, 0, 1, 2) is None  # a fresh epoch with nothing for reader 1
    with pytest.raises(DataError, match="source 's'.*were the sources changed"):
        Positions.merged([a.state(["s"])], ["t"], [6], 0, keep=lambda s, e: True)
    with pytest.raises(DataError, match="units of source 's' beyond its 2: were the sources changed"):
        Positions.merged([a.state(["s"])], ["s"], [2], 0, keep=lambda s, e: True)


@pytest.mark.parametrize("saved, resumed", [((2, 2), (1, 3)), ((1, 1), (3, 1)), ((2, 1), (2, 2))])
def test_elastic_resume_trains_every_sample_of_the_epoch_exactly_once(tmp_path, tok, saved, resumed):
    """Saved with R ranks x W workers after a few batches each, resumed on R' x W' (workers in processes)."""
    cfg = config([_shards(tmp_path, 10, 7)], micro=2, template="caption", shuffle_buffer=5, workers=saved[1])
    trained, states = [], []
    for rank in range(saved[0]):
        loader = caption_loader(cfg, tok, rank, saved[0])
        it = iter(loader)
        trained += _keys(next(it) for _ in range(3 + rank))
        states.append(loader.state_dict())
        del it
    cfg.data.num_workers = resumed[1]
    for rank in range(resumed[0]):
        loader = caption_loader(cfg, tok, rank, resumed[0])
        loader.load_state_dicts(states, 0)
        trained += _keys(loader)
        assert loader.epoch == 1
    assert sorted(trained) == sorted(f"{tmp_path}/shards/{s:05d}.tar#{n:09d}" for s in range(10)
                                     for n in range(s * 7, s * 7 + 7))


@pytest.mark.parametrize("batching, workers", [("padded", 0), ("grouped", 2), ("packed", 0)])
def test_resume_on_the_same_ranks_and_workers_gives_exactly_the_uninterrupted_batches(tmp_path, tok, batching,
                                                                                      workers):
    """Readers rebuilt from their snapshots: shuffle buffer, packer and RNGs as they stood."""
    text = write_json(tmp_path / "alpaca.json", alpaca_items(40))
    sources = [_shards(tmp_path, 6, 7), SourceConfig(path=str(text), template="alpaca", exhausted="restart")]
    cfg = config(sources, micro=2, template="caption", shuffle_buffer=5, workers=workers, batching=batching)
    cfg.data.max_seq_len = 96
    reference = list(caption_loader(cfg, tok))
    first = caption_loader(cfg, tok)
    it = iter(first)
    taken = [next(it) for _ in range(5)]
    resumed = caption_loader(cfg, tok)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # plain values
    rest = list(resumed)
    assert [b.keys for b in taken + rest] == [b.keys for b in reference]
    for a, b in zip(taken + rest, reference):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert (a.pixel_values is None) == (b.pixel_values is None)
        assert a.pixel_values is None or torch.equal(a.pixel_values, b.pixel_values)


@pytest.fixture
def counted_reads(monkeypatch):
    """Counts the samples read out of shards (in this process: workers=0)."""
    spec = importlib.util.spec_from_file_location("bench_resume", ROOT / "scripts" / "bench_resume.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    count = [0]
    monkeypatch.setattr(sources_module, "read_shard", bench.counting(sources_module.read_shard, count))
    return count


@pytest.mark.parametrize("where", ["local", "http"])
def test_resume_reads_the_same_bounded_number_of_samples_at_10_and_90_percent(tmp_path, tok, counted_reads, where):
    """Counted on local shards and on shards served over HTTP (there also the shards downloaded again)."""
    shards, per_shard, buffer = 40, 10, 8
    source = _shards(tmp_path, shards, per_shard)
    requests: list = []  # what the server served (stays empty for local shards)
    with contextlib.ExitStack() as stack:
        if where == "http":
            url, behaviour = stack.enter_context(serve(tmp_path / "shards"))
            source.path, requests = f"{url}/{{00000..{shards - 1:05d}}}.tar", behaviour.requests
        cfg = config([source], micro=2, template="caption", shuffle_buffer=buffer)
        reads, fetched = {}, {}
        for share in (0.1, 0.9):
            first = caption_loader(cfg, tok)
            it = iter(first)
            for _ in range(int(share * shards * per_shard) // 2):
                next(it)
            resumed = caption_loader(cfg, tok)
            resumed.load_state_dict(first.state_dict())
            counted_reads[0] = 0
            served = len(requests)
            next(iter(resumed))
            reads[share] = counted_reads[0]
            fetched[share] = len(requests) - served
    # the buffer and a row, plus the rest of the shards begun (no more than the buffer's worth of them)
    bound = buffer + 2 + (buffer + 1) * per_shard
    assert 0 < reads[0.1] <= bound and 0 < reads[0.9] <= bound, reads
    assert 0.9 * shards * per_shard > 3 * bound  # replaying would have read far more
    assert fetched[0.1] <= buffer + 1 and fetched[0.9] <= buffer + 1, fetched  # shards downloaded again


def test_stream_shares_hold_the_weights_and_a_restarting_source_counts_its_epochs(tmp_path, tok):
    text = write_json(tmp_path / "alpaca.json", [{"instruction": "q", "output": f"a{i}"} for i in range(3750)])
    small = _shards(tmp_path, 2, 25, weight=1.0, exhausted="restart", name="small")
    cfg = config([SourceConfig(path=str(text), weight=3.0, template="plain", name="text"), small],
                 micro=50, template="caption", max_seq_len=32, shuffle_buffer=1)
    loader = caption_loader(cfg, tok)
    keys = _keys(loader)
    assert 4900 < len(keys) < 5100 and len([k for k in keys if ":" in k and "#" not in k]) == 3750
    shares = loader.stats()["shares"]
    assert shares["text"] == pytest.approx(0.75, abs=0.02) and shares["small"] == pytest.approx(0.25, abs=0.02)
    assert f"skipped, {100 * shares['text']:.1f}% of the samples" in summary(loader.stats())  # the epoch's log line
    small_keys = [k for k in keys if "#" in k]
    for start in range(0, len(small_keys) - 50, 50):  # each of its epochs reads its 50 samples once
        assert len(set(small_keys[start:start + 50])) == 50


def test_version_1_state_still_resumes_by_replay(tmp_path, tok, caplog):
    cfg = config([_shards(tmp_path, 4, 5)], micro=2, template="caption", shuffle_buffer=6)
    reference = _keys(caption_loader(cfg, tok))
    old = {"version": 1, "mode": "stream", "epoch": 0, "stats": caption_loader(cfg, tok).state_dict()["stats"],
           "seed": 0, "consumed": [3], "split": [1, 1]}
    resumed = caption_loader(cfg, tok)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(old)
    assert "loader state version 1" in caplog.text and "replaying [3]" in caplog.text
    assert _keys(resumed) == reference[6:] and resumed.epoch == 1
    other = caption_loader(cfg, tok)
    other.load_state_dict(dict(old, split=[2, 1]))
    assert sorted(_keys(other)) == sorted(reference)  # another split: the epoch restarts, as before


def test_sample_keys_name_the_shard_and_key_or_the_file_and_index(tmp_path, tok):
    shards = _shards(tmp_path, 1, 2)
    text = write_json(tmp_path / "alpaca.json", alpaca_items(2))
    stream = _keys(caption_loader(config([shards], template="caption"), tok))
    assert sorted(stream) == [f"{tmp_path}/shards/00000.tar#00000000{n}" for n in range(2)]
    mapped = _keys(caption_loader(config([SourceConfig(path=str(text), template="alpaca")]), tok))
    assert sorted(mapped) == [f"{text}:0", f"{text}:1"]


def test_exhausted_is_checked_with_one_line_naming_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sources:\n    - {path: x.tar, exhausted: loop}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "data.sources[0].exhausted" in str(err.value) and "stop or restart" in str(err.value)
    assert "\n" not in str(err.value)


def test_samples_log_is_off_by_default_and_writes_one_line_per_step_and_epoch(tmp_path):
    from mmtune.config import DataConfig
    from mmtune.data.batch import Batch
    from mmtune.training.samples import SamplesLog

    assert DataConfig().log_samples is False
    SamplesLog(tmp_path / "off", 0, False).write(1, [])
    assert not (tmp_path / "off").exists()
    assert SamplesLog(tmp_path, 3, True, tp=2).path is None  # its tensor-parallel peer, rank 2, writes
    log = SamplesLog(tmp_path, 3, True)
    empty = Batch.from_tensors(*[torch.zeros(1, 1, dtype=torch.long)] * 4)
    log.write(7, [dataclasses.replace(empty, keys=("a", "b"), epoch=0),
                  dataclasses.replace(empty, keys=("c",), epoch=1)])
    log.write(8, [dataclasses.replace(empty, keys=("d",), epoch=1)])
    lines = [json.loads(line) for line in (tmp_path / "samples/rank3.jsonl").read_text().splitlines()]
    assert lines == [{"step": 7, "epoch": 0, "keys": ["a", "b"]}, {"step": 7, "epoch": 1, "keys": ["c"]},
                     {"step": 8, "epoch": 1, "keys": ["d"]}]


def test_map_mode_the_last_group_of_an_epoch_carries_the_next_epochs_first_rows_under_its_epoch(tmp_path, tok):
    text = write_json(tmp_path / "alpaca.json", alpaca_items(5))
    loader = caption_loader(config([SourceConfig(path=str(text), template="alpaca")], micro=2), tok)
    batches = list(loader)
    assert [b.epoch for b in batches] == [0, 0, 0] and len(_keys(batches)) == 6
    assert len(set(_keys(batches))) == 5 and loader.epoch == 1


def test_a_stream_saved_after_the_last_batch_of_an_epoch_resumes_into_the_next_epoch(tmp_path, tok):
    cfg = config([_shards(tmp_path, 4, 5)], micro=2, template="caption", shuffle_buffer=6)
    first = caption_loader(cfg, tok)
    it = iter(first)
    epoch0 = _keys(next(it) for _ in range(10))  # all 20 samples; the iteration has not noticed its end yet
    resumed = caption_loader(cfg, tok)
    resumed.load_state_dict(first.state_dict())
    batches = list(resumed)
    assert batches and {b.epoch for b in batches} == {1} and sorted(_keys(batches)) == sorted(epoch0)


def test_bad_and_skipped_samples_count_as_taken_with_the_next_batch(tmp_path, tok):
    write_shards(tmp_path / "shards", 2, 5, no_caption_keys=("000000001", "000000007"))
    source = SourceConfig(path=f"{tmp_path}/shards/{{00000..00001}}.tar", num_samples=10)
    loader = caption_loader(config([source], micro=2, template="caption", max_bad_fraction=0.5), tok)
    assert len(_keys(loader)) == 8
    (name, epoch, done, begun), = loader.state_dict()["positions"]
    assert (epoch, done, begun) == (0, [[0, 2]], [])  # both shards done: their bad samples were counted


def test_elastic_resume_with_a_restarting_source_keeps_the_stop_source_exactly_once(tmp_path, tok):
    text = write_json(tmp_path / "alpaca.json", alpaca_items(30))
    sources = [_shards(tmp_path, 8, 6), SourceConfig(path=str(text), template="alpaca", exhausted="restart")]
    cfg = config(sources, micro=2, template="caption", shuffle_buffer=4)
    trained, states = [], []
    for rank in range(2):
        loader = caption_loader(cfg, tok, rank, 2)
        it = iter(loader)
        trained += _keys(next(it) for _ in range(4))
        states.append(loader.state_dict())
    cfg.data.num_workers = 2
    loader = caption_loader(cfg, tok)
    loader.load_state_dicts(states, 0)
    trained += _keys(loader)
    shards = [k for k in trained if "#" in k]
    assert sorted(shards) == sorted(f"{tmp_path}/shards/{s:05d}.tar#{n:09d}" for s in range(8)
                                    for n in range(s * 6, s * 6 + 6))
    counts = Counter(k for k in trained if "#" not in k)
    assert max(counts.values()) - min(counts.values()) <= 1  # its epochs each read every entry once
