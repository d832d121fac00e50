"""Metrics: the FLOPs estimate behind MFU, the JSONL/TensorBoard/plot sinks, rank-0-only writing."""

from __future__ import annotations

import json
import math

import torch

from mmtune.config import ModelConfig
from mmtune.models.llama import Transformer
from mmtune.training.metrics import MetricsLogger, flops_per_token, peak_flops, peak_memory_gb


def test_flops_per_token_counts_non_embedding_parameters_and_attention():
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=100, multiple_of=16, max_seq_len=64)
    model = Transformer(cfg)
    params = sum(p.numel() for p in model.parameters())
    expected = 6 * (params - 100 * 32) + 12 * 2 * 32 * 128
    assert flops_per_token(model, seq_len=128, n_layers=2, dim=32) == expected
    assert peak_flops(torch.device("cpu")) is None  # no MFU on a CPU
    assert peak_memory_gb(torch.device("cpu")) > 0


def test_logger_writes_jsonl_tensorboard_and_a_plot_that_skips_nonfinite(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True, total_steps=3)
    for step, loss in ((1, 2.0), (2, float("nan")), (3, 1.5)):
        logger.log({"step": step, "loss": loss, "lr": 1e-3, "skipped": not math.isfinite(loss)})
    logger.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and math.isnan(lines[1]["loss"])
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "tensorboard").iterdir())


def test_other_ranks_write_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "rank1", enabled=False, total_steps=3)
    logger.log({"step": 1, "loss": 1.0})
    logger.close()
    assert not (tmp_path / "rank1").exists()
