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


def test_a_checkpoint_written_before_stateful_states_resumes(tmp_path):
    """``tests/fixtures/checkpoint_v1`` (``trainer_state.pt`` beside the DCP files) resumes with the same
    step, scheduler, losses and final weights as the uninterrupted run of the code that wrote it."""
    import json

    from mmtune.models.vlm import build_model
    from test_train_support import IMAGE_ID, read_metrics, tiny_config, train_in_process

    fixture = ROOT / "tests/fixtures/checkpoint_v1"
    expected = json.loads((fixture / "expected.json").read_text())
    old = fixture / expected["resume_from"]
    assert ckpt.is_checkpoint(old) and (old / ckpt.STATE_FILE).is_file()
    cfg = tiny_config(tmp_path, *expected["overrides"])
    last = train_in_process(cfg, resume=old)
    resumed = read_metrics(tmp_path / "run")
    want = expected["metrics"][2:]
    assert [r["step"] for r in resumed] == [r["step"] for r in want] == [3, 4]
    for key in ("loss", "lr", "grad_norm", "skipped_total"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in want], rel=1e-6), key
    model = build_model(cfg, IMAGE_ID, device="cpu")
    ckpt.load_plain(last, model)
    sums = {k: float(v.double().sum()) for k, v in model.state_dict().items() if k.startswith("connector.")}
    assert sums == pytest.approx(expected["final_connector_sums"], rel=1e-6)
    assert not (last / ckpt.STATE_FILE).exists() and ckpt.read_info(last)["step"] == 4
