"""``mmtune train CONFIG [--section.field value ...] [--resume auto|PATH]``: either training stage.

Runs in one process when started plainly, and distributed under
``torchrun --nproc-per-node N [--nnodes M ...] -m mmtune train CONFIG``.
"""

from __future__ import annotations

import argparse
import os

ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Registers the config file and ``--resume``."""
    p.add_argument("config", help="YAML file (presets live in configs/)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue from the newest complete checkpoint of the run (auto) or from PATH "
                        "(a checkpoint or run directory); any number of ranks")


def run(args: argparse.Namespace) -> int:
    """Loads the config with its overrides and trains."""
    from mmtune.config import load_config
    from mmtune.training.run import run_training

    cfg = load_config(args.config, args.overrides)
    last = run_training(cfg, args.resume)
    if last is not None and os.environ.get("RANK", "0") == "0":
        print(f"last checkpoint: {last}")
    return 0
