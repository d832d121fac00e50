"""``torchrun --nproc-per-node 2 -m mmtune eval`` (gloo, CPU): each rank answers its share of the items,
rank 0 writes the results, and the metrics and predictions equal one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bench_factory as bf
from mmtune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_two_rank_eval_equals_one_rank(tmp_path):
    model = bf.tiny_model(tmp_path / "model")
    made = bf.pope(tmp_path / "pope")
    args = ["--model", str(model), "--task", "pope", "--data", *map(str, made["data"]),
            "--image-root", str(made["images"]), "--device", "cpu", "--max-new-tokens", "3", "--batch-size", "2"]

    def outputs(name: str) -> list[str]:
        return ["--out", str(tmp_path / f"{name}.json"), "--predictions", str(tmp_path / f"{name}.jsonl")]

    assert main(["eval", *args, *outputs("one")]) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "mmtune", "eval", *args, *outputs("two")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["count"] == one["count"] == 6 and two["metrics"] == one["metrics"]
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert done.stdout.count("wrote") == 2  # rank 0 alone writes
