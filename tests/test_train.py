"""The trainer in one process on the debug model: files and metrics, frozen parts, exact resume, export,
and stage 2 starting from stage 1 (its export or its training checkpoint)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmtune.errors import CheckpointError
from mmtune.models.io import load_model
from mmtune.models.vlm import build_model
from mmtune.training import checkpoint as ckpt
from mmtune.training.loss import token_loss_sum
from test_train_support import IMAGE_ID, SyntheticLoader, read_metrics, tiny_config, train_in_process

METRIC_KEYS = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "supervised_tokens_per_s", "samples_per_s",
               "step_time_s", "data_wait_fraction", "peak_memory_gb", "skipped", "skipped_total"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 4-step stage-1 run (connector trains; tower and decoder frozen)."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(tmp)
    train_in_process(cfg)
    return cfg


def test_run_writes_metrics_checkpoints_and_config(reference):
    run = reference.training.output_dir
    records = read_metrics(Path(run))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(METRIC_KEYS <= set(r) and math.isfinite(r["loss"]) for r in records)
    assert records[0]["lr"] == pytest.approx(1e-3)  # warm-up 0.25 of 4 steps = 1 step, then cosine
    assert records[-1]["lr"] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
    found = ckpt.list_checkpoints(run)
    assert [p.name for p in found] == ["step_00000002", "step_00000004"]
    info = json.loads((found[-1] / "checkpoint.json").read_text())
    assert info == {"world_size": 1, "image_token_id": IMAGE_ID, "step": 4}
    for name in ("config.yaml", "loss.png", "tensorboard"):
        assert (found[-1].parent.parent / name).exists(), name
    assert (found[-1] / "config.yaml").is_file()


def test_metrics_lines_average_rates_over_every_step_since_the_last_line(reference, tmp_path):
    per_step = read_metrics(Path(reference.training.output_dir))
    assert per_step[0]["supervised_tokens"] != per_step[1]["supervised_tokens"]
    cfg = tiny_config(tmp_path, "--training.log_every", "2", "--training.save_every", "0")
    train_in_process(cfg)
    lines = read_metrics(tmp_path / "run")
    assert [r["step"] for r in lines] == [2, 4]
    for line, pair in zip(lines, (per_step[:2], per_step[2:])):
        mean = sum(r["supervised_tokens"] for r in pair) / 2
        assert line["supervised_tokens_per_s"] * line["step_time_s"] == pytest.approx(mean)
        assert line["supervised_tokens"] == pair[1]["supervised_tokens"] and line["loss"] == pair[1]["loss"]


def test_stage1_leaves_frozen_parts_bit_identical(reference):
    torch.manual_seed(reference.training.seed)
    initial = build_model(reference, IMAGE_ID, device="cpu").state_dict()
    trained = build_model(reference, IMAGE_ID, device="cpu")
    ckpt.load_plain(ckpt.list_checkpoints(reference.training.output_dir)[-1], trained)
    changed = {k for k, v in trained.state_dict().items() if not torch.equal(v, initial[k])}
    assert changed, "nothing trained"
    assert all(k.startswith("connector.") for k in changed), sorted(changed)[:5]
    assert {k.split(".")[0] for k in initial} == {"llm", "vision", "connector"}


def test_resume_continues_exactly(reference, tmp_path):
    cfg = tiny_config(tmp_path)
    step2 = ckpt.list_checkpoints(reference.training.output_dir)[0]
    train_in_process(cfg, resume=step2)
    resumed = read_metrics(tmp_path / "run")
    uninterrupted = read_metrics(Path(reference.training.output_dir))
    assert [r["step"] for r in resumed] == [3, 4]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in uninterrupted[2:]]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in uninterrupted[2:]]


def _first_step_loss(model: torch.nn.Module, cfg) -> float:
    """The loss the trainer reports at step 1, computed directly: rows 0 and 1 of the stream."""
    loader = SyntheticLoader(cfg, IMAGE_ID, model.num_image_tokens)
    total, count = 0.0, 0
    with torch.no_grad():
        for r in (0, 1):
            row = {k: v.unsqueeze(0) if k != "pixel_values" else v for k, v in loader.row(r).items()}
            logits = model(row["input_ids"], row["pixel_values"], positions=row["positions"],
                           sample_ids=row["sample_ids"])
            total += float(token_loss_sum(logits, row["labels"]))
            count += int((row["labels"] != -100).sum())
    return total / count


def test_export_then_stage2_starts_from_stage1(reference, tmp_path):
    last = ckpt.list_checkpoints(reference.training.output_dir)[-1]
    exported = ckpt.export_checkpoint(last, tmp_path / "stage1-model")
    model = load_model(exported)
    plain = build_model(reference, IMAGE_ID, device="cpu")
    ckpt.load_plain(last, plain)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in plain.state_dict().items())
    expected = _first_step_loss(model, reference)
    for name, source in (("from-export", exported), ("from-checkpoint", reference.training.output_dir)):
        cfg = tiny_config(tmp_path / name, "--trainable.llm", "full", "--training.init_from", str(source),
                          "--training.max_steps", "1", "--training.save_every", "0")
        train_in_process(cfg)
        (first,) = read_metrics(tmp_path / name / "run")
        assert first["loss"] == pytest.approx(expected, rel=1e-6), name


def test_plain_load_names_weights_of_another_shape(reference, tmp_path):
    other = build_model(tiny_config(tmp_path, "--model.dim", "32"), IMAGE_ID, device="cpu")
    with pytest.raises(CheckpointError, match=r"weights missing or shaped differently \(llm\.tok_embeddings"):
        ckpt.load_plain(ckpt.list_checkpoints(reference.training.output_dir)[-1], other)
