"""``training.eval``: benchmarks evaluated during training at their steps and at the end, on a full
copy of the (FSDP-sharded or tensor-parallel) model, spread over the ranks; metrics in ``metrics.jsonl`` and TensorBoard
beside the loss; bad entries and files stop the run before it starts, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench_factory as bf
from mmtune.cli import main
from test_train_golden import ROOT, _regen_module

CONFIG = str(ROOT / "configs" / "debug-stage2.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _regen_module().write_data(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def pope(tmp_path_factory):
    return bf.pope(tmp_path_factory.mktemp("pope"))


def _eval_spec(world: Path, pope: dict) -> str:
    files = ", ".join(f"'{p}'" for p in pope["data"])
    return (f"[{{task: pope, data: [{files}], image_root: '{pope['images']}', limit: 2, every: 2, "
            f"max_new_tokens: 2}}, {{task: vqa, data: ['{world}/heldout/vqa.json'], limit: 2, max_new_tokens: 3}}]")


def _args(world: Path, pope: dict, out: Path) -> list[str]:
    return [*_regen_module().overrides(2, world, out), "--training.global_batch_size", "4",
            "--training.micro_batch_size", "1", "--training.eval", _eval_spec(world, pope)]


def _records(out: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "loss" not in r]


def _tensorboard_tags(out: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_training_eval_logs_metrics_at_its_steps(world, pope, tmp_path):
    out = tmp_path / "one"
    assert main(["train", CONFIG, *_args(world, pope, out)]) == 0
    losses, evals = _records(out)
    assert [r["step"] for r in losses] == [1, 2, 3, 4]
    assert [r["step"] for r in evals] == [2, 4]  # pope every 2 steps; vqa only at the end
    assert "eval/vqa/exact_match" not in evals[0] and "eval/vqa/exact_match" in evals[1]
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio", "by_split/random/f1"):
        assert 0.0 <= evals[1][f"eval/pope/{key}"] <= 1.0
    assert evals[1]["eval/pope/count"] == 4  # 2 questions of each split
    tags = _tensorboard_tags(out)
    assert {"eval/pope/accuracy", "eval/vqa/exact_match", "train/loss"} <= tags
    assert (out / "loss.png").is_file()  # the loss plot skips the records without a loss


@pytest.mark.parametrize("parallel", [[], ["--parallel.tp", "2"]], ids=["fsdp", "tensor-parallel"])
def test_training_eval_on_two_ranks_equals_one(world, pope, tmp_path, parallel):
    assert main(["train", CONFIG, *_args(world, pope, tmp_path / "one")]) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "mmtune", "train", CONFIG,
           *_args(world, pope, tmp_path / "two"), *parallel]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    (_, one), (_, two) = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["step"] for r in two] == [2, 4]
    assert two == one


@pytest.mark.parametrize("spec, message", [
    ("[{task: mme, data: [x.json]}]", "'training.eval[0].task': got 'mme'"),
    ("[{task: pope, data: []}]", "'training.eval[0].data'"),
    ("[{task: pope, data: [x.json], limit: 0}]", "'training.eval[0].limit': got 0"),
    ("[{task: pope, data: [/nonexistent/coco_pope_random.json]}]", "/nonexistent/coco_pope_random.json"),
])
def test_bad_training_eval_stops_before_training(world, tmp_path, capsys, spec, message):
    out = tmp_path / "run"
    code = main(["train", CONFIG, *_regen_module().overrides(2, world, out), "--training.eval", spec])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "metrics.jsonl").exists()


def test_a_task_listed_twice_is_named_by_position(world, pope):
    from mmtune.config import load_config
    from mmtune.evaluation.during_training import build_hooks

    files = ", ".join(f"'{p}'" for p in pope["data"])
    spec = (f"[{{task: pope, data: [{files}], image_root: '{pope['images']}', limit: 1}}, "
            f"{{task: pope, data: [{files}], image_root: '{pope['images']}', limit: 2, every: 3}}, "
            f"{{task: vqa, data: ['{world}/heldout/vqa.json'], limit: 1}}]")
    cfg = load_config(CONFIG, [*_regen_module().overrides(2, world, world / "unused"), "--training.eval", spec])
    hooks = build_hooks(cfg)
    assert [h.name for h in hooks] == ["pope.0", "pope.1", "vqa"]
    assert [len(h.items) for h in hooks] == [2, 4, 1]
    assert [h.due(3, 10) for h in hooks] == [False, True, False] and all(h.due(10, 10) for h in hooks)


def test_model_card_reads_the_last_record_with_a_loss(tmp_path):
    from mmtune.formats.card import find_run_info

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 1.5}) + "\n"
                                            + json.dumps({"step": 4, "eval/pope/accuracy": 0.5}) + "\n")
    _, metrics = find_run_info(tmp_path)
    assert metrics["train.loss"] == 1.5 and "train.eval/pope/accuracy" not in metrics
