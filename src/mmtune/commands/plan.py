"""``mmtune plan``: predicted per-GPU memory of a full-parameter run and the cheapest layout that fits."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama2-13b", help="decoder preset (default: llama2-13b)")
    p.add_argument("--vision", default="blip2-vitg-qformer",
                   help="vision preset, or 'none' for a text-only model (default: blip2-vitg-qformer)")
    p.add_argument("--connector", choices=["mlp", "qformer"], default=None,
                   help="connector kind (default: qformer for a BLIP-2 tower, else mlp)")
    p.add_argument("--gpus", type=int, default=8, help="number of GPUs (default: 8)")
    p.add_argument("--seq", type=int, default=512, help="tokens per row, image positions included (default: 512)")
    p.add_argument("--micro-batch", type=int, default=4, help="rows per GPU per forward pass (default: 4)")
    p.add_argument("--tp", type=int, default=None, help="also report this tensor-parallel degree")
    p.add_argument("--checkpointing", action="store_true", help="report the asked layout with activation checkpointing")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="memory per GPU in GiB (default: 80)")
    p.add_argument("--frozen-llm", action="store_true", help="train only the connector (LLaVA-style stage 1)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _workload(args: argparse.Namespace):  # noqa: ANN202
    from mmtune.config import ConnectorConfig, ModelConfig, TrainableConfig, VisionConfig, build
    from mmtune.errors import ConfigError
    from mmtune.planning import Workload

    for name in ("gpus", "seq", "micro_batch"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}", getattr(args, name), "a positive integer")
    if args.gpu_mem <= 0:
        raise ConfigError("--gpu-mem", args.gpu_mem, "a positive number of GiB")
    model = build(ModelConfig, {"preset": args.model}, "model")
    vision = VisionConfig(kind="none") if args.vision == "none" else build(VisionConfig, {"preset": args.vision}, "vision")
    kind = args.connector or ("qformer" if vision.kind == "blip2" else "mlp")
    trainable = TrainableConfig(llm="frozen" if args.frozen_llm else "full")
    return Workload(model=model, vision=vision, connector=ConnectorConfig(kind=kind), trainable=trainable,
                    gpus=args.gpus, seq=args.seq, micro_batch=args.micro_batch, gpu_mem_gb=args.gpu_mem)


def _row(e) -> str:  # noqa: ANN001
    parts = "  ".join(f"{k} {v:6.2f}" for k, v in e.parts.items())
    ckpt = "ckpt" if e.layout.checkpointing else "    "
    return f"tp={e.layout.tp} {ckpt}  total {e.total:6.1f} GiB  {'fits' if e.fits else 'OOM '}  ({parts})"


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mmtune.errors import ConfigError
    from mmtune.planning import Layout, estimate, plan

    work = _workload(args)
    counts, estimates, best = plan(work)
    asked = None
    if args.tp is not None or args.checkpointing:
        tp = args.tp or 1
        if tp <= 0 or work.gpus % tp or work.model.n_heads % tp:
            raise ConfigError("--tp", tp, f"a divisor of --gpus={work.gpus} and of the {work.model.n_heads} heads")
        asked = estimate(work, counts, Layout(tp, args.checkpointing))
    if args.json:
        print(json.dumps({"parameters": {**asdict(counts), "total": counts.total},
                          "estimates": [asdict(e) for e in estimates],
                          "asked": asdict(asked) if asked else None,
                          "cheapest": asdict(best) if best else None}, indent=2))
        return 0 if best else 1
    print(f"parameters: llm {counts.llm:,}  vision {counts.vision:,}  connector {counts.connector:,}  "
          f"trainable {counts.trainable:,}")
    print(f"per GPU ({work.gpus} GPUs x {work.gpu_mem_gb:g} GiB, seq {work.seq}, micro-batch {work.micro_batch}):")
    for e in estimates:
        print("  " + _row(e))
    if asked is not None:
        print("asked:    " + _row(asked))
    if best is None:
        print("no layout fits: use more GPUs, a smaller micro-batch or shorter rows")
        return 1
    print(f"cheapest: {_row(best)}")
    return 0
