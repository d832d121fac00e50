"""A rank whose micro-batches never hold an image (mixed text-only and image data under FSDP2):
``torchrun`` with 2 CPU processes stays in step with 1 process, where a sharded tower or an unused
connector would otherwise leave that rank out of a collective."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_support import ROOT, mixed_modality_config, read_metrics, train_in_process


def test_a_rank_without_images_stays_in_step(tmp_path):
    """Rank 1 only ever sees text-only rows (it never runs the tower nor touches the connector): the
    collectives still match and the losses equal one process's on the same rows."""
    train_in_process(mixed_modality_config(tmp_path / "one"), text_only_odd=True)
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", str(ROOT / "tests/test_train_support.py"),
           str(tmp_path / "two")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}"})
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = read_metrics(tmp_path / "one" / "run"), read_metrics(tmp_path / "two" / "run")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-5)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-4)
