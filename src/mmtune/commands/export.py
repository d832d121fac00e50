"""``mmtune export``: a training checkpoint or saved model -> a release directory (mmtune or Hugging Face)."""

from __future__ import annotations

import argparse

from mmtune.commands import WEIGHT_DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH",
                   help="the model in any accepted format (a training run directory: its newest checkpoint)")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--format", choices=["mmtune", "hf"], default="mmtune",
                   help="mmtune saved model, or Hugging Face: LlavaForConditionalGeneration (mlp connector) or a "
                        "trust_remote_code model (qformer connector) (default: mmtune)")
    p.add_argument("--dtype", choices=sorted(WEIGHT_DTYPES), default="keep",
                   help="cast floating weights (default: keep them: fp32 from a training checkpoint)")
    p.add_argument("--template", default=None,
                   help="with --format hf: the chat template (llava_v1 or alpaca; default: the run's data.template, "
                        "else alpaca for qformer and llava_v1 for mlp)")
    p.add_argument("--llm-only", action="store_true",
                   help="with --format hf: write only the language model as LlamaForCausalLM")


def run(args: argparse.Namespace) -> int:
    from mmtune.errors import ConfigError
    from mmtune.formats.export_hf import export

    if args.llm_only and args.format != "hf":
        raise ConfigError("--llm-only", True, "only together with --format hf")
    import torch

    dtype = getattr(torch, WEIGHT_DTYPES[args.dtype]) if WEIGHT_DTYPES[args.dtype] else None
    out = export(args.path, args.out, fmt=args.format, llm_only=args.llm_only, dtype=dtype, template=args.template)
    print(f"wrote {out}")
    return 0
