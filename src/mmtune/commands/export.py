"""``mmtune export``: a training checkpoint or saved model -> a release directory (mmtune or Hugging Face)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH",
                   help="the model in any accepted format (a training run directory: its newest checkpoint)")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--format", choices=["mmtune", "hf"], default="mmtune",
                   help="mmtune saved model, or Hugging Face LlavaForConditionalGeneration (default: mmtune)")
    p.add_argument("--llm-only", action="store_true",
                   help="with --format hf: write only the language model as LlamaForCausalLM")


def run(args: argparse.Namespace) -> int:
    from mmtune.errors import ConfigError
    from mmtune.formats.export_hf import export

    if args.llm_only and args.format != "hf":
        raise ConfigError("--llm-only", True, "only together with --format hf")
    out = export(args.path, args.out, fmt=args.format, llm_only=args.llm_only)
    print(f"wrote {out}")
    return 0
