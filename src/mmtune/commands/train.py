"""``mmtune train CONFIG [--section.field value ...] [--resume auto|PATH]``: either training stage.

Runs in one process when started plainly, and distributed under
``torchrun --nproc-per-node N [--nnodes M ...] -m mmtune train CONFIG``. With ``--dry-run`` it builds
the run on the meta device and prints what it found (:mod:`mmtune.dryrun`). ``training.eval`` tasks
run as step hooks (:mod:`mmtune.evaluation.during_training`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from mmtune.config import Config

ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Registers the config file and ``--resume``."""
    p.add_argument("config", help="YAML file (presets live in configs/)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue from the newest complete checkpoint of the run (auto) or from PATH "
                        "(a checkpoint or run directory); any number of ranks")
    p.add_argument("--dry-run", action="store_true",
                   help="build model, processor, data plan and parallel plan at full size on the meta device and "
                        "print parameters, batch, steps and predicted per-GPU memory; trains nothing, uses no GPU")
    p.add_argument("--nproc", "--world-size", type=int, default=None, metavar="N",
                   help="with --dry-run: the number of processes to plan for (default: WORLD_SIZE, else 1)")


def run(args: argparse.Namespace) -> int:
    """Loads the config with its overrides and trains."""
    from mmtune.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        return _dry_run(cfg, args)
    last = _train(cfg, args.resume)
    if last is not None and os.environ.get("RANK", "0") == "0":
        print(f"last checkpoint: {last}")
    return 0


def _dry_run(cfg: Config, args: argparse.Namespace) -> int:
    """Prints what :func:`mmtune.dryrun.dry_run` found for ``cfg``."""
    from mmtune.dryrun import describe, dry_run, world_size

    run = dry_run(cfg, world_size(args.nproc))
    print(f"dry run of {args.config}: built on the meta device; no GPU, no process group, no image or weight read")
    print("\n".join(describe(cfg, run)))
    return 0


def _train(cfg: Config, resume: Optional[str]) -> Optional[Path]:
    """``run_training(cfg, resume)``; a disk that is full, read-only or blocked (an OSError, which DCP
    wraps in a CheckpointException listing every rank's traceback) becomes one MMTuneError line."""
    from torch.distributed.checkpoint.api import CheckpointException

    from mmtune.errors import MMTuneError
    from mmtune.evaluation.during_training import build_hooks
    from mmtune.training.run import run_training

    hooks = build_hooks(cfg)  # reads training.eval's questions now: a bad file stops the run before it starts
    try:
        return run_training(cfg, resume, hooks)
    except (OSError, CheckpointException) as exc:
        failures = getattr(exc, "failures", None) or {}
        cause = next((e for e, _ in failures.values()), exc)
        raise MMTuneError(f"storage failure in {cfg.training.output_dir}: {cause}") from exc
