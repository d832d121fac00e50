"""``mmtune init``: build the model of a config with fresh, seeded weights and save it as a model directory.

The decoder and connector are initialised with ``training.seed``; the vision tower is loaded from
``vision.path`` when the config names one (else it keeps transformers' random initialisation).
"""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``CONFIG --out DIR [--tokenizer PATH] [--max-shard-mb N]`` plus ``--section.field value`` overrides."""
    p.add_argument("config", help="YAML config (model / vision / connector / tokenizer sections are used)")
    p.add_argument("--out", required=True, help="directory to write the saved model to")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory or tokenizer.model file (default: the config's tokenizer.path)")
    p.add_argument("--max-shard-mb", type=int, default=5120, help="largest safetensors file before sharding")


def run(args: argparse.Namespace) -> int:
    """Builds, initialises and saves the model; prints the output directory."""
    import logging

    import torch

    from mmtune.config import load_config
    from mmtune.errors import ConfigError
    from mmtune.models.io import save_model
    from mmtune.models.tokenizer import Tokenizer
    from mmtune.models.vlm import build_model

    cfg = load_config(args.config, args.overrides)
    tokenizer_path = args.tokenizer or cfg.tokenizer.path
    if not tokenizer_path:
        raise ConfigError("tokenizer.path", None, "a tokenizer directory or file (or pass --tokenizer PATH)")
    tokenizer = Tokenizer.from_path(tokenizer_path)
    tokenizer.check_fits(cfg.model.vocab_size)
    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg, tokenizer.image_token_id)
    out = save_model(model, args.out, tokenizer=tokenizer, max_shard_bytes=args.max_shard_mb * 1024 * 1024)
    n_params = sum(p.numel() for p in model.parameters())
    logging.getLogger(__name__).info("initialised %s parameters (seed %d)", f"{n_params:,}", cfg.training.seed)
    print(out)
    return 0
