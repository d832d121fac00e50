"""``mmtune bench``: throughput benchmarks, each against a baseline measured in the same run.

``bench generate --model DIR``, ``bench train --config CONFIG``, ``bench data --config CONFIG`` (the
last two take ``--section.field value`` overrides), ``bench attention`` (packed-row attention paths) and
``bench gpu`` (the GPU check: :mod:`mmtune.bench.gpu`).
The table shows each side's figures with the ratio to the baseline (the last row) for throughputs.
"""

from __future__ import annotations

import argparse
import json

from mmtune.commands import MODEL_HELP

ACCEPTS_OVERRIDES = True

RATIO_KEYS = ("prefill_tokens_per_s", "decode_tokens_per_s", "tokens_per_s", "supervised_tokens_per_s",
              "samples_per_s", "images_per_s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Registers the ``generate``, ``train`` and ``data`` benchmarks and their options."""
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    g = sub.add_parser("generate", help="prefill/decode tokens/s vs transformers' generate on the same weights")
    g.add_argument("--model", required=True, help=MODEL_HELP)
    g.add_argument("--batch", type=int, default=1, help="prompts decoded together (default 1)")
    g.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per row (default 128)")
    g.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row (default 64)")
    g.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median counts (default 3)")
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")
    t = sub.add_parser("train", help="training throughput, packed and padded, vs a LLaVA-1.5-style transformers "
                                     "pipeline on the same synthetic mixture and weights")
    t.add_argument("--config", required=True, help="YAML config (model, vision, connector, data, training)")
    t.add_argument("--steps", type=int, default=8, help="timed optimizer steps per side (default 8)")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    t.add_argument("--sides", default="packed,padded,transformers",
                   help="comma-separated sides (default packed,padded,transformers; the last is the baseline)")
    t.add_argument("--json", action="store_true", help="print JSON (with every step's loss) instead of a table")
    d = sub.add_parser("data", help="images/s decoded and transformed per worker, from files and shards, vs "
                                    "transformers' CLIP image processor")
    d.add_argument("--config", required=True, help="YAML config (vision settings, data.num_workers)")
    d.add_argument("--images", type=int, default=64, help="photos per pass (default 64)")
    d.add_argument("--size", default="640x480", help="photo size WIDTHxHEIGHT (default 640x480, COCO-like)")
    d.add_argument("--repeats", type=int, default=3, help="timed passes; the median counts (default 3)")
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = sub.add_parser("attention", help="packed rows: one masked attention call vs the loop over samples, "
                                         "forward + backward, per row length")
    a.add_argument("--lengths", default="128,256,512,1024,2048", help="row lengths (default 128,...,2048)")
    a.add_argument("--positions", type=int, default=2048, help="positions per batch (default 2048)")
    a.add_argument("--sample-len", type=int, default=50, help="typical sample length (default 50)")
    a.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    a.add_argument("--head-dim", type=int, default=32, help="head size (default 32)")
    a.add_argument("--repeats", type=int, default=5, help="timed repetitions; the median counts (default 5)")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c = sub.add_parser("gpu", help="the GPU check on one H100/H200: stage-2 step (MFU, peak vs plan), packed "
                                   "attention paths, decoding vs transformers; JSON + markdown report")
    c.add_argument("--out", default="gpu-report", help="folder for gpu-report.json/.md (default gpu-report)")
    c.add_argument("--tiny", action="store_true", help="toy sizes on CPU in seconds (CUDA-only parts skipped)")


def _cell(key: str, value: object, base: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
        if key in RATIO_KEYS and isinstance(base, float) and base > 0:
            text += f" ({value / base:.2f}x)"
        return text
    return str(value)


def _table(rows: list[dict], baseline: dict) -> str:
    keys = [k for k in rows[0] if k not in ("name", "losses")]
    lines = ["| side | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in rows:
        cells = [_cell(k, row[k], baseline[k]) for k in keys]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _positive(args: argparse.Namespace, *names: str) -> None:
    from mmtune.errors import ConfigError

    for name in names:
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}", getattr(args, name), "a positive integer")


def _generate(args: argparse.Namespace) -> list:
    from mmtune.bench.generate import run_generate_bench
    from mmtune.errors import ConfigError
    from mmtune.formats.loading import load_any

    if args.overrides:
        raise ConfigError("bench generate", " ".join(args.overrides), "no --section.field overrides")
    _positive(args, "batch", "prompt_len", "new_tokens", "repeats")
    model = load_any(args.model, tokenizer=False).model
    try:
        return run_generate_bench(model.llm, batch=args.batch, prompt_len=args.prompt_len,
                                  new_tokens=args.new_tokens, repeats=args.repeats)
    except ValueError as exc:
        raise ConfigError("bench generate", args.model, str(exc)) from None


def _train(args: argparse.Namespace) -> list:
    from mmtune.bench.train import run_train_bench
    from mmtune.config import load_config

    cfg = load_config(args.config, args.overrides)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    return run_train_bench(cfg, steps=args.steps, warmup=args.warmup, sides=sides, seed=cfg.training.seed)


def _data(args: argparse.Namespace) -> list:
    import tempfile
    from pathlib import Path

    from mmtune.bench.data import run_data_bench
    from mmtune.config import load_config
    from mmtune.data.images import ImageTransform
    from mmtune.errors import ConfigError

    _positive(args, "images", "repeats")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        if min(width, height) < 64:
            raise ValueError(args.size)
    except ValueError:
        raise ConfigError("--size", args.size, "WIDTHxHEIGHT of at least 64x64, e.g. 640x480") from None
    cfg = load_config(args.config, args.overrides)
    transform = ImageTransform.from_vision(cfg.vision)
    with tempfile.TemporaryDirectory() as folder:
        return run_data_bench(transform, Path(folder), images=args.images, width=width, height=height,
                              workers=cfg.data.num_workers, repeats=args.repeats, seed=cfg.training.seed)


def _attention(args: argparse.Namespace) -> list:
    from mmtune.bench.attention import run_attention_bench
    from mmtune.errors import ConfigError

    if args.overrides:
        raise ConfigError("bench attention", " ".join(args.overrides), "no --section.field overrides")
    _positive(args, "positions", "sample_len", "heads", "head_dim", "repeats")
    try:
        lengths = [int(v) for v in args.lengths.split(",")]
        if min(lengths) < 4:
            raise ValueError(args.lengths)
    except ValueError:
        raise ConfigError("--lengths", args.lengths, "comma-separated row lengths of at least 4") from None
    return run_attention_bench(lengths, positions=args.positions, sample_len=args.sample_len, heads=args.heads,
                               head_dim=args.head_dim, repeats=args.repeats, seed=0)


def _gpu(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmtune.bench.gpu import markdown, run_gpu_bench
    from mmtune.errors import ConfigError

    if args.overrides:
        raise ConfigError("bench gpu", " ".join(args.overrides), "no --section.field overrides")
    report = run_gpu_bench(Path(args.out), tiny=args.tiny)
    print(markdown(report), end="")
    return 1 if report["errors"] else 0


def run(args: argparse.Namespace) -> int:
    """Runs the chosen benchmark and prints its table (or JSON)."""
    from dataclasses import asdict

    if args.bench == "gpu":
        return _gpu(args)
    benches = {"generate": _generate, "train": _train, "data": _data, "attention": _attention}
    results = benches[args.bench](args)
    rows = [asdict(r) for r in results]
    print(json.dumps(rows, indent=2) if args.json else _table(rows, rows[-1]))
    return 0
