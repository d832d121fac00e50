"""``torchrun`` with 2 CPU processes (gloo): the same per-step losses as 1 process at the same global
batch (FSDP2 over two ranks against the bare module on one), every process exits 0, and a 2-rank
checkpoint resumes on 1 rank with the uninterrupted losses.

Runs ``configs/debug-stage2.yaml`` (map-style LLaVA + Alpaca sources, activation checkpointing) on a
small synthetic world, with 4 rows per step: 4 micro-batches on 1 rank, 2 per rank on 2 ranks.
With ``data.balance`` (2 rows per micro-batch) the 2-rank losses stay the 1-rank ones and
``token_spread`` falls below that of in-order dealing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmtune.cli import main
from mmtune.distributed.env import DistEnv, cpu_threads, cpu_threads_for
from mmtune.distributed.parallelize import needs_fsdp
from mmtune.training import checkpoint as ckpt
from test_train_golden import ROOT, _regen_module

CONFIG = str(ROOT / "configs" / "debug-stage2.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _regen_module().write_data(tmp_path_factory.mktemp("world"))


def _args(world: Path, out: Path) -> list[str]:
    return [*_regen_module().overrides(2, world, out), "--training.save_every", "2",
            "--training.global_batch_size", "4", "--training.micro_batch_size", "1"]


def _torchrun_two(world: Path, out: Path, *extra: str) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "mmtune", "train", CONFIG,
           *_args(world, out), *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr[-3000:]


def _spreads(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["token_spread"] for r in records if "loss" in r]


def test_two_ranks_match_one_rank_and_resume_on_one(world, tmp_path):
    regen = _regen_module()
    assert main(["train", CONFIG, *_args(world, tmp_path / "one")]) == 0
    one = regen.losses(tmp_path / "one")

    _torchrun_two(world, tmp_path / "two")
    two = regen.losses(tmp_path / "two")
    assert len(one) == len(two) == regen.STEPS
    assert two == pytest.approx(one, abs=1e-5)

    # balanced steps (data.balance): the same rows per step dealt by cost, so the same losses, less spread
    pair = ("--training.micro_batch_size", "2")  # one group of 4 rows a step: 2 per rank to deal
    _torchrun_two(world, tmp_path / "in_order", *pair)
    _torchrun_two(world, tmp_path / "balanced", *pair, "--data.balance", "true", "--data.image_cost", "16")
    assert regen.losses(tmp_path / "balanced") == pytest.approx(one, abs=1e-5)
    plain, balanced = _spreads(tmp_path / "in_order"), _spreads(tmp_path / "balanced")
    assert all(1.0 <= b <= p for b, p in zip(balanced, plain)) and sum(balanced) < sum(plain), (plain, balanced)

    saved = ckpt.list_checkpoints(tmp_path / "two")
    assert [ckpt.read_info(p)["world_size"] for p in saved] == [2, 2]
    resumed_dir = tmp_path / "resumed"
    assert main(["train", CONFIG, *_args(world, resumed_dir), "--resume", str(saved[0])]) == 0
    resumed = regen.losses(resumed_dir)
    assert resumed == pytest.approx(one[2:], abs=1e-5)


@pytest.mark.parametrize("dp, tp, dtype, expected", [
    (1, False, torch.float32, False),   # one fp32 rank trains the bare module
    (2, False, torch.float32, True),    # sharding over data-parallel ranks
    (1, True, torch.float32, True),     # composing with tensor parallel
    (1, False, torch.bfloat16, True),   # mixed precision is FSDP2's cast
])
def test_fsdp_wraps_only_where_it_does_something(dp, tp, dtype, expected):
    assert needs_fsdp(dp, tp, dtype) is expected


@pytest.mark.parametrize("configured, workers, local_ranks, cores, expected", [
    (0, 0, 1, 2, 2),    # all cores to the one rank
    (0, 1, 1, 2, 1),    # one core decodes, one trains
    (0, 2, 1, 2, 1),    # never below one
    (0, 2, 4, 64, 14),  # 16 cores per rank, 2 of them for its loader workers
    (3, 2, 1, 2, 3),    # an explicit count wins
])
def test_cpu_threads_share_the_cores(configured, workers, local_ranks, cores, expected):
    assert cpu_threads(configured, workers, local_ranks, cores) == expected


def test_cpu_threads_apply_inside_only_and_respect_omp_num_threads(monkeypatch):
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with cpu_threads_for(env, before + 1, 0):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with cpu_threads_for(env, 0, 0):  # automatic choice keeps what the user (or torchrun) set
        assert torch.get_num_threads() == before
    with cpu_threads_for(env, before + 1, 0):  # an explicit count still applies
        assert torch.get_num_threads() == before + 1
