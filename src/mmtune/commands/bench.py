"""``mmtune bench``: throughput benchmarks, each against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    g = sub.add_parser("generate", help="prefill/decode tokens/s vs transformers' generate on the same weights")
    g.add_argument("--model", required=True, help="saved-model directory")
    g.add_argument("--batch", type=int, default=1, help="prompts decoded together (default 1)")
    g.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per row (default 128)")
    g.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row (default 64)")
    g.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median counts (default 3)")
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _table(rows: list[dict], baseline: dict) -> str:
    keys = [k for k in rows[0] if k != "name"]
    lines = ["| side | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in rows:
        cells = [f"{row[k]:.1f} ({row[k] / baseline[k]:.2f}x)" for k in keys]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mmtune.bench.generate import run_generate_bench
    from mmtune.errors import ConfigError
    from mmtune.models.io import load_model

    for name in ("batch", "prompt_len", "new_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}", getattr(args, name), "a positive integer")
    model = load_model(args.model)
    try:
        results = run_generate_bench(model.llm, batch=args.batch, prompt_len=args.prompt_len,
                                     new_tokens=args.new_tokens, repeats=args.repeats)
    except ValueError as exc:
        raise ConfigError("bench generate", args.model, str(exc)) from None
    rows = [asdict(r) for r in results]
    print(json.dumps(rows, indent=2) if args.json else _table(rows, rows[-1]))
    return 0
