"""An epoch of streamed webdataset shards: counted from img2dataset's stats files or a declared
``num_samples``, one row per sample (grouped / padded), ended by the first ``stop`` source to run out, and
one-line errors when it cannot be counted."""

from __future__ import annotations

import json
import math

import pytest

from data_factory import alpaca_items, config, write_json, write_shard_stats, write_shards
from mmtune.config import SourceConfig, load_config
from mmtune.data.images import ImageTransform
from mmtune.data.loader import build_loader
from mmtune.data.processor import Processor
from mmtune.data.sources.shards import shard_successes, stats_url
from mmtune.errors import ConfigError, DataError
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vision import ImageSettings
from mmtune.training.trainer import total_steps

SETTINGS = ImageSettings(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "center_crop", 10_000_000)


@pytest.fixture(scope="module")
def tok(llama_tokenizer_dir):
    return Tokenizer.from_path(llama_tokenizer_dir)


def _loader(cfg, tok, rank=0, world=1):
    processor = Processor(tok, 4, "placeholder", ImageTransform.from_settings(SETTINGS))
    return build_loader(cfg, processor, rank=rank, world_size=world, seed=0)


def _shards(tmp_path, shards=3, per_shard=4, stats=True, **source):
    write_shards(tmp_path / "shards", shards, per_shard, stats=stats)
    return SourceConfig(path=f"{tmp_path}/shards/{{00000..{shards - 1:05d}}}.tar", **source)


def test_stats_file_sits_next_to_its_shard():
    assert stats_url("/d/cc3m/00012.tar") == "/d/cc3m/00012_stats.json"
    assert stats_url("s3://b/laion/00012.tar.gz") == "s3://b/laion/00012_stats.json"
    assert stats_url("/d/x/00001.tgz") == "/d/x/00001_stats.json"
    assert stats_url("pipe:aws s3 cp s3://b/00012.tar -") is None
    assert shard_successes("/nowhere/00000.tar") is None


@pytest.mark.parametrize("batching", ["grouped", "padded"])
def test_an_epoch_of_shards_is_the_sum_of_img2dataset_successes_one_row_each(tmp_path, tok, batching):
    source = _shards(tmp_path)
    write_shard_stats(tmp_path / "shards/00001.tar", 4, failed=9)  # failures are not in the shard
    cfg = config([source], micro=2, batching=batching, template="caption")
    rows = 0
    for rank in range(2):
        loader = _loader(cfg, tok, rank=rank, world=2)
        assert loader.rows_per_epoch == 12
        rows += sum(b.input_ids.shape[0] for b in loader)  # one epoch of this rank
    assert rows == 12  # the counted epoch is what the ranks read together
    cfg.training.global_batch_size, cfg.training.epochs = 4, 2.0
    assert total_steps(cfg, _loader(cfg, tok)) == math.ceil(2.0 * 12 / 4)


def test_declared_num_samples_wins_over_stats_and_needs_none(tmp_path, tok):
    source = _shards(tmp_path, stats=False, num_samples=1000)
    assert _loader(config([source], template="caption"), tok).rows_per_epoch == 1000


def test_a_weighted_stream_epoch_ends_when_a_stop_source_runs_out(tmp_path, tok):
    alpaca = write_json(tmp_path / "mix/alpaca.json", alpaca_items(5))
    (tmp_path / "mix/mix.yaml").write_text(json.dumps({"sources": [
        {"path": str(tmp_path / "shards/{00000..00002}.tar"), "weight": 3.0},
        {"path": alpaca.name, "weight": 0.5, "template": "alpaca"}]}))
    write_shards(tmp_path / "shards", 3, 4, stats=True)
    cfg = config([], template="caption", mixture=str(tmp_path / "mix/mix.yaml"))
    loader = _loader(cfg, tok)
    assert loader.rows_per_epoch == 14  # 12 shard samples are 3/3.5 of an epoch
    keys = [k for b in loader for k in b.keys]
    assert len(keys) == len(set(keys)) < 17  # one source ran out: the other's rest is not read
    shard_keys = [k for k in keys if ".tar#" in k]
    assert len(shard_keys) == 12 or len(keys) - len(shard_keys) == 5


def test_an_epoch_of_restarting_sources_only_is_uncounted(tmp_path, tok):
    source = _shards(tmp_path, exhausted="restart")
    with pytest.raises(ConfigError, match=r"training\.max_steps.*exhausted: restart"):
        _ = _loader(config([source], template="caption"), tok).rows_per_epoch


def test_missing_stats_file_names_the_field_to_set(tmp_path, tok):
    source = _shards(tmp_path)
    (tmp_path / "shards/00002_stats.json").unlink()
    cfg = config([source], template="caption")
    with pytest.raises(ConfigError) as err:
        total_steps(cfg, _loader(cfg, tok))
    message = str(err.value)
    assert "data.sources[0].num_samples" in message and "00002_stats.json" in message
    assert "training.max_steps" in message and "\n" not in message
    cfg.training.max_steps = 7
    assert total_steps(cfg, _loader(cfg, tok)) == 7  # max_steps needs no count


def test_packed_batching_cannot_count_a_stream_epoch(tmp_path, tok):
    cfg = config([_shards(tmp_path)], batching="packed", template="caption")
    with pytest.raises(ConfigError, match=r"data\.batching.*grouped or padded.*training\.max_steps"):
        _ = _loader(cfg, tok).rows_per_epoch


def test_a_stats_file_that_is_not_img2dataset_json_is_a_data_error(tmp_path, tok):
    source = _shards(tmp_path)
    (tmp_path / "shards/00001_stats.json").write_text('{"count": 4}')
    with pytest.raises(DataError, match="00001_stats.json: no 'successes'"):
        _ = _loader(config([source], template="caption"), tok).rows_per_epoch
    (tmp_path / "shards/00001_stats.json").write_text("not json")
    with pytest.raises(DataError, match="00001_stats.json: not JSON"):
        _ = _loader(config([source], template="caption"), tok).rows_per_epoch


def test_num_samples_is_checked_and_only_for_shards(tmp_path, tok):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sources:\n    - {path: x.tar, num_samples: 0}\n")
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.num_samples"):
        load_config(path)
    alpaca = write_json(tmp_path / "alpaca.json", alpaca_items(3))
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.num_samples.*3 entries are counted"):
        _loader(config([SourceConfig(path=str(alpaca), num_samples=10)]), tok)
