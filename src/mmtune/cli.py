"""The ``mmtune`` command: one entry point, a subcommand per job.

Each subcommand lives in ``mmtune/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; those modules import only the standard library at top level so that
``mmtune --help`` stays fast, and load torch inside ``run``. A command whose module sets
``ACCEPTS_OVERRIDES = True`` receives unrecognised ``--section.field value`` pairs as
``args.overrides``. User mistakes (:class:`mmtune.errors.MMTuneError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> one-line help; the module is mmtune.commands.<name with - as _>
COMMANDS: dict[str, str] = {
    "config": "Show a resolved config, or every config field with its documentation.",
    "init": "Build the model of a config with fresh seeded weights and save it as a model directory.",
    "train": "Train either stage (one process, or distributed under torchrun) with exact resume.",
    "generate": "Answer a prompt about an image (streamed), or a JSONL batch of them.",
    "score": "Per-token log-probabilities of an answer given an image and a prompt.",
    "chat": "Multi-turn terminal chat with a model; /image PATH attaches an image.",
    "serve": "Serve the web demo and the OpenAI-compatible API (tensor parallel under torchrun).",
    "data": "Data tools: convert LLaVA to single-turn, inspect the data of a config.",
    "bench": "Throughput benchmarks (train, generate, data) against baselines measured in the same run.",
    "plan": "Predict per-GPU memory of a full-parameter run and pick the cheapest layout that fits.",
    "convert": "Convert Meta, Hugging Face (Llama, LLaVA) or LLaMA2-Accessory weights into an mmtune model directory.",
    "export": "Export a training checkpoint or model as a release directory (mmtune or Hugging Face LLaVA/Llama).",
    "quickstart": "The embedded default: synthetic world -> stage 1 -> stage 2 -> evaluation -> answers.",
    "eval": "Score a model on VQAv2, TextVQA, GQA, POPE, MMBench, ScienceQA, COCO captions or the synthetic world.",
}


def _module(name: str):
    return importlib.import_module(f"mmtune.commands.{name.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmtune",
        description="Two-stage multimodal fine-tuning of LLaMA-family models, and serving them.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default: INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = _module(name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates ``--section.field value`` (or ``--section.field=value``) pairs from the rest."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            takes_next = "=" not in arg and i + 1 < len(argv)
            overrides.extend(argv[i:i + 1 + takes_next])
            i += 1 + takes_next
        else:
            rest.append(arg)
            i += 1
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    from mmtune.errors import MMTuneError

    parser = build_parser()
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(rest)
    if overrides and not getattr(args._module, "ACCEPTS_OVERRIDES", False):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    args.overrides = overrides
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return int(args._module.run(args) or 0)
    except MMTuneError as exc:
        print(f"mmtune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
