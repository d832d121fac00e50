"""``mmtune train CONFIG --dry-run``: everything a run would build, built for real at its true size on the
meta device, then a summary; nothing is trained.

Each step calls what the trainer calls (``training/run.py``, ``training/trainer.py``):

1. the parallel plan: ``WORLD_SIZE`` processes as ``torchrun`` sets it (or ``--nproc``), ``parallel.tp``
   dividing them (:func:`~mmtune.distributed.env.check_world`) and the attention heads
   (:func:`~mmtune.distributed.parallelize.check_tensor_parallel`), and
   :func:`~mmtune.training.trainer.accumulation_steps` over the data-parallel ranks;
2. the processor (:meth:`~mmtune.data.processor.Processor.from_config`: ``tokenizer.path``, and the tower's
   shapes from ``vision.path``'s ``config.json``, never its weights);
3. the model: :func:`~mmtune.models.vlm.build_model` on the meta device, counted part by part;
4. the data: :func:`~mmtune.data.loader.build_loader` for the first data-parallel rank; sources are
   opened and counted (manifests read and their text tokenised, shards listed and counted from
   ``num_samples`` or img2dataset's stats files), no image is decoded and no shard is read;
5. the steps (:func:`~mmtune.training.trainer.total_steps`) and the per-GPU memory ``mmtune plan``
   predicts for the run's own layout (:func:`~mmtune.planning.estimate`).

No process group is created, no GPU is touched, ``training.init_from`` is not opened and nothing is
written. A problem is the one-line error the real start would give.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from torch import nn

from mmtune.config import Config
from mmtune.errors import ConfigError
from mmtune.planning import Estimate, Layout, ParamCounts, Workload, estimate

PARTS = ("llm", "vision", "connector")


@dataclass
class DryRun:
    """What a dry run found."""

    world: int
    tp: int
    accumulation: int
    params: dict[str, tuple[int, int]]
    """Part (llm, vision, connector) -> (parameters, trainable parameters)."""
    steps: int
    rows_per_epoch: Optional[int]
    """Rows of one epoch over all ranks; None when ``training.max_steps`` is set (not counted)."""
    memory: Estimate

    @property
    def dp(self) -> int:
        """Data-parallel ranks."""
        return self.world // self.tp

    @property
    def total(self) -> int:
        """All parameters."""
        return sum(n for n, _ in self.params.values())

    @property
    def trainable(self) -> int:
        """Parameters that train."""
        return sum(t for _, t in self.params.values())


def world_size(nproc: Optional[int] = None) -> int:
    """``nproc`` when given, else ``WORLD_SIZE`` (as ``torchrun`` sets it), else 1."""
    name, value = ("--nproc", nproc) if nproc is not None else ("WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))
    try:
        world = int(value)  # type: ignore[arg-type]
    except ValueError:
        world = 0
    if world < 1:
        raise ConfigError(name, value, "a positive number of processes")
    return world


def part_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(parameters, trainable parameters) of each part of a model (0 for a part it lacks)."""
    out = {}
    for name in PARTS:
        part = getattr(model, name, None)
        params = list(part.parameters()) if isinstance(part, nn.Module) else []
        out[name] = (sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))
    return out


def _memory(cfg: Config, model: nn.Module, params: dict[str, tuple[int, int]], world: int) -> Estimate:
    """``mmtune plan``'s per-GPU estimate for this run's layout, from the meta model's counts."""
    from mmtune.distributed.parallelize import decoder_blocks

    blocks = sum(p.numel() for p in decoder_blocks(model).parameters())
    counts = ParamCounts(llm=params["llm"][0], vision=params["vision"][0], connector=params["connector"][0],
                         llm_blocks=blocks, trainable=sum(t for _, t in params.values()))
    work = Workload(model=cfg.model, vision=cfg.vision, connector=cfg.connector, trainable=cfg.trainable,
                    gpus=world, seq=cfg.data.max_seq_len, micro_batch=cfg.training.micro_batch_size)
    return estimate(work, counts, Layout(cfg.parallel.tp, cfg.parallel.activation_checkpointing))


def dry_run(cfg: Config, world: int) -> DryRun:
    """Builds the run of ``cfg`` on ``world`` processes on the meta device (see the module docstring)."""
    from mmtune.data.loader import build_loader
    from mmtune.data.processor import Processor
    from mmtune.distributed.env import DistEnv, check_world
    from mmtune.distributed.parallelize import check_tensor_parallel
    from mmtune.models.vlm import build_model
    from mmtune.training.trainer import accumulation_steps, total_steps

    tp = cfg.parallel.tp
    check_world(world, tp)
    check_tensor_parallel(cfg.model.n_heads, cfg.model.n_kv_heads or cfg.model.n_heads, tp)
    env = DistEnv(world_size=world, tp=tp)  # no mesh, no process group
    accumulation = accumulation_steps(cfg.training.global_batch_size, cfg.training.micro_batch_size, env.dp_size)
    processor = Processor.from_config(cfg)
    model = build_model(cfg, processor.tokenizer.image_token_id, device="meta")
    params = part_counts(model)
    loader = build_loader(cfg, processor, rank=0, world_size=env.dp_size, seed=cfg.training.seed)
    steps = total_steps(cfg, loader)
    rows = loader.rows_per_epoch if cfg.training.max_steps is None else None
    return DryRun(world=world, tp=tp, accumulation=accumulation, params=params, steps=steps,
                  rows_per_epoch=rows, memory=_memory(cfg, model, params, world))


def describe(cfg: Config, run: DryRun) -> list[str]:
    """The lines ``mmtune train --dry-run`` prints."""
    t = cfg.training
    lines = [f"parameters: {run.total:,} total, {run.trainable:,} trainable"]
    lines += [f"  {name:<10} {n:>16,}  trainable {k:,}" for name, (n, k) in run.params.items()]
    lines.append(f"parallel: {run.world} processes = {run.dp} data-parallel x {run.tp} tensor-parallel")
    lines.append(f"batch: global {t.global_batch_size} rows = micro {t.micro_batch_size} x {run.dp} data-parallel "
                 f"x {run.accumulation} accumulation")
    if run.rows_per_epoch is None:
        lines.append(f"steps: {run.steps:,} (training.max_steps)")
    else:
        lines.append(f"steps: {run.steps:,} = ceil(epochs {t.epochs:g} x {run.rows_per_epoch:,} rows / "
                     f"{t.global_batch_size})")
    mem = run.memory
    ckpt = "with" if mem.layout.checkpointing else "without"
    parts = ", ".join(f"{k} {v:.1f}" for k, v in mem.parts.items())
    lines.append(f"memory per GPU (mmtune plan, tp={mem.layout.tp}, {ckpt} activation checkpointing): "
                 f"{mem.total:.1f} GiB ({parts})")
    weights = [f"{name} {value}" for name, value in (("training.init_from", t.init_from),
                                                     ("vision.path", cfg.vision.path)) if value]
    lines.append("weights not read: " + (", ".join(weights) if weights else "none named (fresh weights)"))
    return lines
