"""Training metrics: ``metrics.jsonl``, TensorBoard, a progress bar with ETA, a loss-curve PNG, MFU.

Only rank 0 writes. ``metrics.jsonl`` holds one JSON object per optimizer step with at least ``step``
and ``loss`` (plus ``lr``, ``grad_norm``, ``tokens_per_s``, ``supervised_tokens_per_s``,
``samples_per_s``, ``step_time_s``, ``data_wait_fraction``, ``peak_memory_gb``, ``skipped`` and, on
GPU, ``mfu``); evaluation during training adds records with ``step`` and ``eval/...`` numbers and no
``loss``. ``loss``, ``grad_norm`` and ``supervised_tokens`` are the logged step's; the rates,
``step_time_s`` (the mean) and ``data_wait_fraction`` cover every step since the previous line
(``training.log_every``), so a logged step that is always the short one of a pattern cannot bias them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import nn

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device, by a substring of the CUDA device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                   "4090": 165e12, "3090": 71e12, "V100": 125e12}


def flops_per_token(model: nn.Module, seq_len: int, n_layers: int, dim: int) -> float:
    """Training FLOPs per token (torchtitan's estimate): ``6 * non-embedding parameters`` plus
    ``12 * layers * dim * seq_len`` for attention. Frozen parts are counted as trained (an upper bound)."""
    params = sum(p.numel() for p in model.parameters())
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return 6.0 * (params - embeddings) + 12.0 * n_layers * dim * seq_len


def peak_flops(device: torch.device) -> Optional[float]:
    """The device's dense bf16 peak, or None (CPU or an unknown card: no MFU is reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocator peak on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return host_peak_rss_gb()


def host_peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def seconds_since_launch() -> Optional[float]:
    """Seconds since this process started (from Linux's ``/proc``; None where that is not available)."""
    try:
        started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")


class MetricsLogger:
    """Writes per-step metrics on rank 0 (a no-op elsewhere); call :meth:`close` at the end."""

    def __init__(self, output_dir: str | Path, enabled: bool, total_steps: int, start_step: int = 0):
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.history: list[dict] = []
        self.writer = self.bar = self.file = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        self.writer = SummaryWriter(str(self.dir / "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        dynamic_ncols=True, file=sys.stderr)

    def log(self, record: dict) -> None:
        """Appends one step's ``record`` (needs ``step`` and ``loss``) to every sink."""
        if not self.enabled:
            return
        self.history.append(record)
        self._write(record, "train/")
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record.get('lr', 0):.2e}", refresh=False)
        self.bar.update(record["step"] - self.bar.n)

    def log_extra(self, record: dict) -> None:
        """Appends a record without a loss (evaluation metrics; needs ``step``) to the file and TensorBoard,
        each number under its own key (``eval/pope/accuracy``)."""
        if self.enabled:
            self._write(record, "")

    def _write(self, record: dict, prefix: str) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}{key}", value, record["step"])

    def close(self) -> None:
        """Flushes the sinks and draws ``loss.png`` from every record of this process's run."""
        if not self.enabled:
            return
        self.bar.close()
        self.writer.close()
        self.file.close()
        plot_loss(self.dir / "metrics.jsonl", self.dir / "loss.png")


def plot_loss(metrics_file: Path, png: Path) -> None:
    """Draws the per-step loss of ``metrics_file`` (the last record of each step wins; records without a
    loss, such as evaluation metrics, are skipped) to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_step: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and math.isfinite(record["loss"]):
            by_step[record["step"]] = record["loss"]
    steps = sorted(by_step)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [by_step[s] for s in steps], linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
