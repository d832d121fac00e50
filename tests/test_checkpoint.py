"""Checkpoint directories: what counts as complete, --resume resolution, pruning, RNG state, errors."""

from __future__ import annotations

import random

import pytest
import torch

from mmtune.cli import main
from mmtune.errors import CheckpointError
from mmtune.training import checkpoint as ckpt
from test_train_support import ROOT


def _fake(run, step, complete=True, suffix=""):
    path = ckpt.checkpoint_root(run) / f"step_{step:08d}{suffix}"
    path.mkdir(parents=True)
    names = [".metadata", ckpt.STATE_FILE, ckpt.INFO_FILE] if complete else [".metadata", ckpt.STATE_FILE]
    for name in names:
        (path / name).write_text("{}")
    return path


def test_only_complete_renamed_checkpoints_count(tmp_path):
    run = tmp_path / "run"
    assert ckpt.list_checkpoints(run) == [] and ckpt.resolve_resume("auto", run) is None
    two, ten = _fake(run, 2), _fake(run, 10)
    _fake(run, 12, suffix=".tmp")  # a save that never finished
    _fake(run, 11, complete=False)  # files missing
    assert ckpt.list_checkpoints(run) == [two, ten]
    assert ckpt.resolve_resume("auto", run) == ten
    assert ckpt.resolve_resume(str(two), run) == two
    assert ckpt.resolve_resume(str(run), tmp_path / "elsewhere") == ten
    assert ckpt.resolve_resume(None, run) is None


def test_resume_from_a_path_without_checkpoint_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not a complete checkpoint nor a run directory"):
        ckpt.resolve_resume(str(tmp_path), tmp_path)
    code = main(["train", str(ROOT / "configs/debug-stage1.yaml"), "--resume", str(tmp_path / "nothing")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a complete checkpoint" in err[0]


def test_prune_keeps_the_newest_and_drops_stale_temporaries(tmp_path):
    run = tmp_path / "run"
    paths = [_fake(run, s) for s in (2, 4, 6, 8)]
    stale = _fake(run, 10, suffix=".tmp")
    ckpt.prune(run, keep_last=2)
    assert ckpt.list_checkpoints(run) == paths[2:]
    assert not stale.exists() and not paths[0].exists()


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    first = (random.random(), torch.rand(3))
    ckpt.set_rng_state(state)
    again = (random.random(), torch.rand(3))
    assert first[0] == again[0] and torch.equal(first[1], again[1])


def test_read_info_and_plain_load_refuse_what_they_cannot_read(tmp_path):
    with pytest.raises(CheckpointError, match="not a complete training checkpoint"):
        ckpt.read_info(tmp_path)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        ckpt.load_plain(tmp_path, torch.nn.Linear(2, 2))
