"""Crash and resume: real ``mmtune train`` processes killed with SIGKILL, then restarted with ``--resume auto``.

The run is the debug stage-1 model on a caption manifest (map mode, so the data order does not depend
on the number of ranks): 6 optimizer steps, a checkpoint every 2. The uninterrupted reference, and the
1-rank restart, run in this process (one thread, as the children). After any kill, every ``step_N`` directory
must be a complete checkpoint (a partial
write only ever exists as ``step_N.tmp``), and the restarted run must reproduce the reference losses
exactly from the resume point on (1 rank; 2 ranks reproduce their own replayed steps exactly and the
1-rank losses to float rounding). tests/test_train_faults.py covers an exception (not a kill) mid-save.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers_reliability import (
    alive,
    fast_tokenizer,
    kill_when,
    losses_by_step,
    mmtune,
    read_metrics,
    start,
    write_config,
    write_manifest,
)
from mmtune.training import checkpoint as ckpt

STEPS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The data, a config writer and the uninterrupted reference losses (one rank, one thread)."""
    tmp = tmp_path_factory.mktemp("crash")
    manifest = write_manifest(tmp / "data", 40)
    tokenizer = fast_tokenizer(tmp / "tokenizer")

    def config(name: str) -> Path:
        return write_config(tmp / f"{name}.yaml", [{"path": str(manifest), "kind": "manifest"}], tmp / name,
                            tokenizer, max_steps=STEPS, save_every=2, keep_last=5)

    assert train_here(str(config("reference"))) == 0
    reference = read_metrics(tmp / "reference")
    assert [r["step"] for r in reference] == list(range(1, STEPS + 1))
    return {"tmp": tmp, "config": config, "reference": reference}


def train_here(*args: str) -> int:
    """``mmtune train ARGS`` in this process, on one thread as in the child processes (OMP_NUM_THREADS=1)."""
    from mmtune.cli import main

    threads, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # else the run picks its own thread count (distributed.env.cpu_threads_for)
    try:
        return main(["train", *args])
    finally:
        torch.set_num_threads(threads)
        if variable is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = variable


def assert_no_partial_checkpoint(run: Path) -> list[str]:
    """Every ``step_N`` directory is complete; returns their names."""
    root = ckpt.checkpoint_root(run)
    named = sorted(p.name for p in root.iterdir() if not p.name.endswith(".tmp")) if root.is_dir() else []
    assert all(ckpt.is_checkpoint(root / name) for name in named), named
    return named


def test_sigkill_mid_save_then_resume_auto_reproduces_the_losses(setup):
    cfg, run = setup["config"]("one-rank"), setup["tmp"] / "one-rank"
    tmp_dir = ckpt.checkpoint_root(run) / f"step_{STEPS:08d}.tmp"
    first = start("train", str(cfg), log=setup["tmp"] / "one-rank-1.log")
    killed = kill_when(first, tmp_dir.exists)
    assert killed, f"the run ended before the step-{STEPS} save began"
    assert not any(alive(pid) for pid in killed)
    assert tmp_dir.exists() and assert_no_partial_checkpoint(run) == ["step_00000002"]
    assert ckpt.resolve_resume("auto", run).name == "step_00000002"

    assert train_here(str(cfg), "--resume", "auto") == 0
    assert assert_no_partial_checkpoint(run) == ["step_00000002", f"step_{STEPS:08d}"]
    assert not tmp_dir.exists()
    reference = losses_by_step(setup["reference"])
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 3, 4]  # the killed run logged step 4 before saving it
    # every record, first run and replay alike, equals the uninterrupted run's bit for bit
    assert [r["loss"] for r in records] == [reference[r["step"]] for r in records]


def test_two_ranks_killed_mid_run_resume_auto_with_the_same_losses(setup):
    cfg, run = setup["config"]("two-ranks"), setup["tmp"] / "two-ranks"
    first = start("train", str(cfg), nproc=2, log=setup["tmp"] / "two-ranks-1.log")
    killed = kill_when(first, lambda: len(read_metrics(run)) >= 3, timeout=300)
    assert len(killed) >= 3, f"expected torchrun and 2 workers, killed {killed}"
    assert not any(alive(pid) for pid in killed)
    before = read_metrics(run)
    resumed_from = ckpt.resolve_resume("auto", run)
    assert resumed_from is not None and assert_no_partial_checkpoint(run)[-1] == resumed_from.name

    done = mmtune("train", str(cfg), "--resume", "auto", nproc=2, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = read_metrics(run)[len(before):]
    start_step = int(resumed_from.name.split("_")[1]) + 1
    assert [r["step"] for r in after] == list(range(start_step, STEPS + 1))
    replayed = {r["step"]: r["loss"] for r in before if r["step"] >= start_step}
    assert replayed and all(losses_by_step(after)[s] == loss for s, loss in replayed.items())
    reference = losses_by_step(setup["reference"])
    for record in after:
        assert record["loss"] == pytest.approx(reference[record["step"]], rel=1e-5)
