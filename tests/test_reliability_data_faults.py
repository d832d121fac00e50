"""Data faults in a real run: ``mmtune train`` (in this process) on webdataset shards with corrupt images.

With ``data.max_bad_fraction`` 0.1, shards with 5% corrupt JPEGs train to the end and the per-source
counts are reported (each bad sample located by shard and key); a source with 20% corrupt images stops
the run with one error line naming it (counts, first bad shard and key) and leaving the clean one out. The
loader-level rules (counting, blanking a bad sample out of a packed row, the abort rule on manifests)
are proved by tests/test_loader.py and tests/test_sources.py.
"""

from __future__ import annotations

import logging
import re

import pytest

from helpers_reliability import fast_tokenizer, write_config, write_shards
from mmtune.cli import main


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return fast_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def train(tmp_path, tokenizer, sources: list[dict], capsys, caplog, steps: int) -> tuple[int, str, str]:
    cfg = write_config(tmp_path / "run.yaml", sources, tmp_path / "run", tokenizer, max_steps=steps, save_every=0)
    text = cfg.read_text().replace("num_workers: 0", "num_workers: 0\n  max_bad_fraction: 0.1")
    cfg.write_text(text)
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="mmtune.data"):
        code = main(["train", str(cfg)])
    return code, capsys.readouterr().err, caplog.text


def test_five_percent_corrupt_images_train_to_the_end_with_counts(tmp_path, tokenizer, capsys, caplog):
    bad = [n for n in range(60) if n % 20 == 7]  # 3 of 60
    pattern = write_shards(tmp_path / "shards", 3, 20, bad)
    code, stderr, logs = train(tmp_path, tokenizer, [{"path": pattern, "kind": "webdataset", "name": "photos"}],
                               capsys, caplog, steps=6)
    assert code == 0, stderr[-2000:]
    # "samples" counts encoded records; the 3 whose image failed were blanked out of their rows afterwards
    assert "photos: 60 samples, 3 bad, 0 truncated, 0 skipped" in logs
    located = re.findall(r"bad record skipped: photos: \S+/(\d{5})\.tar:(\d{9}): cannot decode image", logs)
    assert sorted(int(key) for _, key in located) == bad
    assert {int(shard) for shard, key in located} == {int(key) // 20 for _, key in located}


def test_twenty_percent_corrupt_images_abort_naming_the_worst_source(tmp_path, tokenizer, capsys, caplog):
    sources = [
        {"path": write_shards(tmp_path / "clean", 3, 20), "kind": "webdataset", "name": "clean"},
        {"path": write_shards(tmp_path / "bad", 3, 20, [n for n in range(60) if n % 5 == 0]), "kind": "webdataset",
         "name": "bad"},
    ]
    code, stderr, _ = train(tmp_path, tokenizer, sources, capsys, caplog, steps=40)
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("mmtune train: error: too much bad data"), errors
    found = re.search(r"source 'bad': (\d+) of (\d+) records unreadable \((\d+\.\d)%\); "
                      r"first: \S+/bad/\d{5}\.tar:(\d{9}): cannot decode image", errors[0])
    assert found and "clean" not in errors[0], errors[0]
    bad, read = int(found[1]), int(found[2])
    assert read >= 50 and 0.1 < bad / read < 0.3 and int(found[4]) % 5 == 0
    assert not list((tmp_path / "run").glob("checkpoints/step_*"))
