"""One training run from a config: tokenizer, model builder, data loader, trainer, clean shutdown.

This is what ``mmtune train`` calls on every rank (one process, or each ``torchrun`` worker).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from torch import nn

from mmtune.config import Config
from mmtune.distributed.env import DistEnv, cpu_threads_for, init_distributed, return_large_frees_to_the_os, shutdown
from mmtune.errors import ConfigError
from mmtune.training.checkpoint import resolve_resume
from mmtune.training.hooks import StepHook
from mmtune.training.trainer import RunParts, Trainer

log = logging.getLogger(__name__)


def build_parts(cfg: Config, env: DistEnv, hooks: Sequence[StepHook] = ()) -> RunParts:
    """The processor's model builder and this rank's loader for ``cfg``, with ``hooks``."""
    from mmtune.data.loader import build_loader
    from mmtune.data.processor import Processor
    from mmtune.models.vlm import build_model

    processor = Processor.from_config(cfg)
    if not cfg.data.sources and not cfg.data.mixture:
        raise ConfigError("data.sources", [], "at least one source (or data.mixture)")
    image_token_id = processor.tokenizer.image_token_id

    def build(device: str) -> nn.Module:
        return build_model(cfg, image_token_id, device=device)

    loader = build_loader(cfg, processor, rank=env.dp_rank, world_size=env.dp_size, seed=cfg.training.seed)
    return RunParts(build_model=build, loader=loader, image_token_id=image_token_id,
                    write_extras=lambda path: processor.tokenizer.save(path / "tokenizer"), hooks=list(hooks))


def run_training(cfg: Config, resume: Optional[str] = None, hooks: Sequence[StepHook] = ()) -> Optional[Path]:
    """Trains ``cfg`` on this process's share of the job; returns the last checkpoint directory.
    ``hooks`` run at the steps they choose (evaluation during training, built by ``mmtune train``).

    Every rank releases model and optimizer before the process group goes (so every process exits 0).
    """
    resume_from = resolve_resume(resume, cfg.training.output_dir)
    return_large_frees_to_the_os()
    env = init_distributed(cfg.parallel.tp)
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    holder: dict = {}
    ok = False
    try:
        with cpu_threads_for(env, cfg.parallel.cpu_threads, cfg.data.num_workers):
            holder["parts"] = build_parts(cfg, env, hooks)
            holder["trainer"] = Trainer(cfg, env, holder["parts"], resuming=resume_from is not None)
            last = holder["trainer"].fit(resume_from)
        ok = True
    finally:
        shutdown(holder, wait=ok)
    return last
