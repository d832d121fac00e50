"""Tensor parallel under ``torchrun``: 2 CPU processes with ``--parallel.tp 2`` (a 2-D mesh of 1 data
replica x 2 tensor shards) reproduce the golden per-step losses of the one-process debug stage 1, and
both processes exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_golden import ROOT, _regen_module


def test_tensor_parallel_matches_the_one_process_golden_losses(tmp_path):
    regen = _regen_module()
    world = regen.write_data(tmp_path / "world")
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "mmtune", "train",
           str(ROOT / "configs" / "debug-stage1.yaml"), *regen.overrides(1, world, tmp_path / "tp"),
           "--parallel.tp", "2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr[-3000:]
    golden = json.loads((regen.GOLDEN_DIR / "debug-stage1.json").read_text())["losses"]
    assert regen.losses(tmp_path / "tp") == pytest.approx(golden, abs=1e-5)
