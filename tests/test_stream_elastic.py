"""Exactly once across a change of world size: ``torchrun`` with 2 ranks x 2 loader workers, killed with
SIGKILL mid-epoch after a checkpoint, resumed on 1 rank x 3 workers and run past the epoch; the
``samples/`` logs (``data.log_samples``) of both runs, the resumed one counted from its checkpoint on,
hold every sample of epoch 0 exactly once. Stream mode (webdataset shards) and map mode (a manifest). And
a stream resumed on the same 2 x 2 repeats the killed run's steps exactly."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from helpers_reliability import (
    fast_tokenizer,
    kill_when,
    mmtune,
    read_metrics,
    start,
    write_config,
    write_manifest,
    write_shards,
)
from mmtune.training import checkpoint as ckpt

SAVE_EVERY = 4


def _config(tmp: Path, name: str, sources: list[dict], workers: int, steps: int) -> Path:
    path = write_config(tmp / f"{name}.yaml", sources, tmp / "run", fast_tokenizer(tmp / "tokenizer"),
                        max_steps=steps, save_every=SAVE_EVERY, keep_last=10)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"].update(num_workers=workers, batching="padded", log_samples=True, shuffle_buffer=6)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _lines(path: Path, skip_bytes: int = 0) -> list[dict]:
    text = path.read_bytes()[skip_bytes:].decode() if path.is_file() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def _killed_and_resumed(tmp: Path, sources: list[dict], epoch_steps: int) -> tuple[Counter, int]:
    """Epoch-0 keys trained on by the killed 2 x 2 run (up to its checkpoint) and the resumed 1 x 3 run."""
    run, logs = tmp / "run", tmp / "run/samples"
    first = start("train", str(_config(tmp, "first", sources, 2, 3 * epoch_steps)), nproc=2, log=tmp / "first.log")
    killed = kill_when(first, lambda: ckpt.is_checkpoint(ckpt.checkpoint_root(run) / f"step_{SAVE_EVERY:08d}"),
                       timeout=300)
    assert killed, (tmp / "first.log").read_text()[-3000:]
    saved = ckpt.resolve_resume("auto", run)
    step = int(saved.name.split("_")[1])
    assert step < epoch_steps, "killed after the epoch: nothing to check"
    sizes = {p.name: p.stat().st_size for p in logs.glob("rank*.jsonl")}
    before = [r for p in logs.glob("rank*.jsonl") for r in _lines(p) if r["step"] <= step]
    done = mmtune("train", str(_config(tmp, "resumed", sources, 3, 2 * epoch_steps)), "--resume", "auto",
                  timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _lines(logs / "rank0.jsonl", sizes.get("rank0.jsonl", 0))
    assert after and after[0]["step"] == step + 1 and after[-1]["epoch"] >= 1  # ran past the epoch
    return Counter(k for r in before + after if r["epoch"] == 0 for k in r["keys"]), step


def test_stream_mode_two_by_two_killed_resumed_one_by_three_trains_each_sample_once(tmp_path):
    write_shards(tmp_path / "shards", 12, 8)
    sources = [{"path": str(tmp_path / "shards/{00000..00011}.tar"), "kind": "webdataset", "num_samples": 96}]
    counts, step = _killed_and_resumed(tmp_path, sources, epoch_steps=96 // 4)
    expected = {f"{tmp_path}/shards/{s:05d}.tar#{n:09d}" for s in range(12) for n in range(8 * s, 8 * s + 8)}
    assert set(counts) == expected and set(counts.values()) == {1}, (step, counts.most_common(3))


def test_map_mode_two_by_two_killed_resumed_one_by_three_trains_each_sample_once(tmp_path):
    manifest = write_manifest(tmp_path / "data", 40)
    counts, step = _killed_and_resumed(tmp_path, [{"path": str(manifest), "kind": "manifest"}], epoch_steps=40 // 4)
    assert set(counts) == {f"{manifest}:{i}" for i in range(40)} and set(counts.values()) == {1}, step


def test_stream_mode_killed_and_resumed_on_the_same_layout_repeats_the_killed_runs_steps(tmp_path):
    """2 x 2 killed after its step-4 checkpoint and two more steps, resumed on 2 x 2: every step the killed
    run took after its checkpoint trains on the same samples again, with the same loss."""
    write_shards(tmp_path / "shards", 12, 8)
    sources = [{"path": str(tmp_path / "shards/{00000..00011}.tar"), "kind": "webdataset", "num_samples": 96}]
    cfg, run, rank0 = _config(tmp_path, "same", sources, 2, 20), tmp_path / "run", tmp_path / "run/samples/rank0.jsonl"
    first = start("train", str(cfg), nproc=2, log=tmp_path / "first.log")
    saved = ckpt.checkpoint_root(run) / f"step_{SAVE_EVERY:08d}"
    killed = kill_when(first, lambda: ckpt.is_checkpoint(saved) and len(_lines(rank0)) >= SAVE_EVERY + 2, timeout=300)
    assert killed and ckpt.resolve_resume("auto", run) == saved, (tmp_path / "first.log").read_text()[-3000:]
    before = {p.name: _lines(p) for p in sorted((run / "samples").glob("rank*.jsonl"))}
    losses = {r["step"]: r["loss"] for r in read_metrics(run)}
    done = mmtune("train", str(cfg), "--resume", "auto", nproc=2, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, lines in before.items():
        again = {r["step"]: r for r in _lines(run / "samples" / name)[len(lines):]}
        repeated = [r for r in lines if r["step"] > SAVE_EVERY]
        assert repeated and all(again[r["step"]] == r for r in repeated), name
    after = {r["step"]: r["loss"] for r in read_metrics(run)[len(losses):]}
    assert all(after[step] == loss for step, loss in losses.items() if step > SAVE_EVERY)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
