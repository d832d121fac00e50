"""Shared pieces for the training tests (no tests here): a tiny config, and a deterministic loader.

:class:`SyntheticLoader` yields :class:`~mmtune.data.batch.Batch` es (``docs/architecture.md``) for the debug
VisionLanguageModel (BLIP-2 tower + qformer connector: BOS, image positions, text), with a global
row order that does not depend on the number of ranks and a state that resumes on any number of
ranks. ``nan_steps`` puts NaN pixels into the batches of those (1-based) optimizer steps, the way a
corrupt image would poison a loss; ``text_only_odd`` leaves odd rows without an image.

Run as a script (``python tests/test_train_support.py OUT_DIR``, under torchrun too) it trains the
connector and decoder for 3 steps with text-only odd rows into ``OUT_DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from mmtune.config import Config, load_config
from mmtune.data.batch import Batch
from mmtune.distributed.env import init_distributed, shutdown
from mmtune.models.vlm import build_model
from mmtune.training.trainer import RunParts, Trainer

ROOT = Path(__file__).resolve().parents[1]
SEQ = 24
IMAGE_ID = 32000  # <image> of the LLaMA tokenizer asset


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    """``configs/debug-stage1.yaml`` with its output in ``tmp_path/run``: 4 steps of 2 rows of 1 row."""
    base = ["--training.output_dir", str(tmp_path / "run"), "--training.global_batch_size", "2",
            "--training.micro_batch_size", "1", "--training.max_steps", "4", "--training.save_every", "2",
            "--training.keep_last", "3", "--data.max_seq_len", str(SEQ),
            "--tokenizer.path", str(ROOT / "tests/assets/llama-tokenizer")]
    return load_config(ROOT / "configs/debug-stage1.yaml", base + list(overrides))


class SyntheticLoader:
    """Rows ``r = 0, 1, ...`` of a fixed random stream; micro-batch ``j`` of data rank ``k`` holds rows
    ``(j * world + k) * micro ...``, so every optimizer step covers the same rows on any world size."""

    def __init__(self, cfg: Config, image_token_id: int, num_image_tokens: int, rank: int = 0,
                 world_size: int = 1, nan_steps: tuple[int, ...] = (), text_only_odd: bool = False):
        self.cfg, self.image_id, self.n_img = cfg, image_token_id, num_image_tokens
        self.rank, self.world = rank, world_size
        self.micro = cfg.training.micro_batch_size
        self.nan_steps = set(nan_steps)
        self.text_only_odd = text_only_odd
        self.rows_done = 0  # global rows consumed, identical on every rank

    @property
    def rows_per_epoch(self) -> int:
        """Rows in one pass (large: the stream never ends in a test)."""
        return 10_000

    def state_dict(self) -> dict:
        """How many global rows have been consumed."""
        return {"rows": self.rows_done}

    def load_state_dict(self, state: dict) -> None:
        """Continues after ``state["rows"]`` global rows."""
        self.rows_done = state["rows"]

    def row(self, r: int) -> dict:
        """Global row ``r``: one image after BOS, random text, a random supervised tail, padding."""
        g = torch.Generator().manual_seed(10_000 + r)
        length = int(torch.randint(self.n_img + 4, SEQ + 1, (1,), generator=g))
        ids = torch.randint(3, 500, (SEQ,), generator=g)
        ids[0] = 1
        ids[1:1 + self.n_img] = self.image_id
        labels = torch.full((SEQ,), -100)
        start = self.n_img + 1 + int(torch.randint(0, 3, (1,), generator=g))
        labels[start:length - 1] = ids[start + 1:length]
        sample_ids = torch.where(torch.arange(SEQ) < length, 0, -1)
        pixels = torch.randn(1, 3, 32, 32, generator=g)
        if self.text_only_odd and r % 2:
            ids[1:1 + self.n_img] = 7
            pixels = pixels[:0]
        return {"input_ids": ids, "labels": labels, "positions": torch.arange(SEQ), "sample_ids": sample_ids,
                "pixel_values": pixels}

    def __iter__(self) -> Iterator[Batch]:
        per_step = self.cfg.training.global_batch_size
        while True:
            step = self.rows_done // per_step + 1
            base = self.rows_done + self.rank * self.micro
            rows = [self.row(base + i) for i in range(self.micro)]
            self.rows_done += self.micro * self.world
            tensors = [torch.stack([r[k] for r in rows]) for k in ("input_ids", "labels", "positions", "sample_ids")]
            pixels: torch.Tensor | None = torch.cat([r["pixel_values"] for r in rows])
            if not len(pixels):
                pixels = None
            elif step in self.nan_steps:
                pixels = torch.full_like(pixels, float("nan"))
            yield Batch.from_tensors(*tensors, pixel_values=pixels)


def train_in_process(cfg: Config, resume: Path | None = None, nan_steps: tuple[int, ...] = (),
                     text_only_odd: bool = False) -> Path | None:
    """Trains ``cfg`` in this process (one rank of a torchrun job, or alone) on :class:`SyntheticLoader`
    data; returns the last checkpoint."""
    env = init_distributed(cfg.parallel.tp)

    def build(device: str) -> torch.nn.Module:
        return build_model(cfg, IMAGE_ID, device=device)

    loader = SyntheticLoader(cfg, IMAGE_ID, build("meta").num_image_tokens, env.dp_rank, env.dp_size,
                             nan_steps=nan_steps, text_only_odd=text_only_odd)
    holder: dict = {}
    ok = False
    try:
        holder["trainer"] = Trainer(cfg, env, RunParts(build, loader, IMAGE_ID))
        last = holder["trainer"].fit(resume)
        ok = True
    finally:
        shutdown(holder, wait=ok)
    return last


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``."""
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def mixed_modality_config(out: Path) -> Config:
    """Connector and decoder train, 3 steps of 2 rows, no checkpoint before the end."""
    return tiny_config(out, "--trainable.llm", "full", "--training.max_steps", "3", "--training.save_every", "0")


if __name__ == "__main__":
    import sys

    train_in_process(mixed_modality_config(Path(sys.argv[1])), text_only_odd=True)
