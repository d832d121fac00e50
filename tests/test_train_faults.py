"""Faults during training: non-finite losses (skipped, counted, K in a row stop the run keeping the last
good checkpoint) and a crash in the middle of a save (no complete-looking partial checkpoint)."""

from __future__ import annotations

import math

import pytest

from mmtune.errors import MMTuneError
from mmtune.training import checkpoint as ckpt
from test_train_support import read_metrics, tiny_config, train_in_process


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    cfg = tiny_config(tmp_path, "--training.max_steps", "3", "--training.save_every", "0")
    train_in_process(cfg, nan_steps=(2,))
    records = read_metrics(tmp_path / "run")
    assert [r["skipped"] for r in records] == [False, True, False]
    assert math.isnan(records[1]["loss"]) and math.isfinite(records[2]["loss"])
    assert [r["skipped_total"] for r in records] == [0, 1, 1]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000003"]


def test_bad_steps_in_a_row_stop_and_keep_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, "--training.max_steps", "6", "--training.max_bad_steps", "2")
    with pytest.raises(MMTuneError, match=r"stopped at step 4: 2 non-finite losses in a row .*step_00000002"):
        train_in_process(cfg, nan_steps=(3, 4))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000002"]
    assert [r["skipped_total"] for r in read_metrics(tmp_path / "run")] == [0, 0, 1, 2]


def test_crash_during_save_leaves_no_complete_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    real_save = ckpt.dcp.save
    calls = []

    def crashing_save(state, checkpoint_id):
        calls.append(checkpoint_id)
        if len(calls) == 2:  # the step-4 save dies half-way through writing
            real_save(state, checkpoint_id=checkpoint_id)
            raise OSError("No space left on device")
        return real_save(state, checkpoint_id=checkpoint_id)

    monkeypatch.setattr(ckpt.dcp, "save", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        train_in_process(cfg)
    root = ckpt.checkpoint_root(tmp_path / "run")
    assert (root / "step_00000004.tmp" / ".metadata").is_file()  # the partial write is there ...
    assert not ckpt.is_checkpoint(root / "step_00000004.tmp")  # ... but never looks complete
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000002"]
    assert ckpt.resolve_resume("auto", tmp_path / "run").name == "step_00000002"

    monkeypatch.setattr(ckpt.dcp, "save", real_save)
    train_in_process(cfg, resume=ckpt.resolve_resume("auto", tmp_path / "run"))
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000004"]
