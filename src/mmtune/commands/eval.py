"""``mmtune eval --model M --task NAME --data FILE ... [--out RESULT.json] [--predictions FILE.jsonl]``.

Standard benchmarks from their official release files (vqav2, textvqa, gqa, pope, mmbench, scienceqa,
coco-caption; docs/evaluation.md) with LLaVA-1.5's prompts and the official metrics, or the synthetic
world's ``caption`` / ``vqa`` tasks (BLEU-4, CIDEr-D, exact match, caption accuracy). Runs on the GPU
when there is one (bf16); under ``torchrun`` each rank answers its share and rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from mmtune.commands import MODEL_HELP

SYNTHETIC = ("caption", "vqa")
TASK_HELP = ("vqav2, textvqa, gqa, pope, mmbench, scienceqa, coco-caption (official files), or caption / vqa "
             "(the synthetic world, any supported data format)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Registers the model, task, files, output and decoding options."""
    from typing import get_args

    from mmtune.config import EvalTask

    p.add_argument("--model", required=True, metavar="PATH", help=MODEL_HELP)
    p.add_argument("--task", required=True, choices=get_args(EvalTask), metavar="NAME", help=TASK_HELP)
    p.add_argument("--data", required=True, nargs="+", metavar="FILE",
                   help="the question file (POPE: one per split; caption / vqa: any supported dataset)")
    p.add_argument("--annotations", default=None, metavar="FILE",
                   help="vqav2: the annotations JSON (without it: answers only, for --submission); "
                        "scienceqa: pid_splits.json")
    p.add_argument("--image-root", default=None, help="the image folder (default: the data file's folder)")
    p.add_argument("--split", default=None, help="scienceqa and Karpathy COCO: the split to read (default test)")
    p.add_argument("--prompt", default=None,
                   help="benchmarks: the instruction after each question (default: LLaVA-1.5's for the task; "
                        "'' for none); caption task: ask with this user message instead of the caption template")
    p.add_argument("--out", metavar="FILE.json", help="write the metrics, task, model, prompt and counts here")
    p.add_argument("--predictions", metavar="FILE.jsonl",
                   help="write one line per item: the benchmark's id field(s) and the model's raw answer")
    p.add_argument("--submission", metavar="FILE.json",
                   help="vqav2: write the evaluation server's results file (question_id, answer)")
    p.add_argument("--submission-questions", metavar="FILE",
                   help="vqav2: every question of this questions file (test2015) not answered gets an empty "
                        "answer in --submission, as the server wants for test-dev")
    p.add_argument("--template", default="alpaca",
                   help="prompt template the model was trained with (llava_v1 for LLaVA-1.5; default alpaca)")
    p.add_argument("--system-prompt", default=None,
                   help="the data.system_prompt the model was trained with (default: the template's own)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is a GPU, else cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights dtype (auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts decoded together (default 32)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="longest answer (default: 16 for short answers and letters, 64 for captions)")


def _check(args: argparse.Namespace) -> None:
    from mmtune.errors import ConfigError

    for name in ("batch_size", "max_new_tokens", "limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}", value, "a positive integer")
    if args.task in SYNTHETIC and len(args.data) != 1:
        raise ConfigError("--data", " ".join(args.data), f"one file for --task {args.task}")


def _device(args: argparse.Namespace) -> None:
    """Joins a ``torchrun`` job (each rank on its own GPU, or gloo on CPUs) and picks the default device."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from mmtune.distributed.env import init_distributed

        env = init_distributed()
        args.device = args.device or str(env.device)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _evaluate(args: argparse.Namespace) -> tuple[dict[str, Any], list]:
    from mmtune.commands.serving_options import engine_from_args
    from mmtune.evaluation.benchmarks.common import BenchFiles
    from mmtune.evaluation.runner import Predictor, evaluate
    from mmtune.evaluation.tasks import BENCHMARKS, evaluate_benchmark

    engine = engine_from_args(args)
    if args.task in SYNTHETIC:
        predictor = Predictor(engine, args.template, args.max_new_tokens or 64, args.system_prompt)
        return evaluate(predictor, args.data[0], args.task, prompt=args.prompt, batch_size=args.batch_size,
                        limit=args.limit, image_root=args.image_root), []
    bench = BENCHMARKS[args.task]
    predictor = Predictor(engine, args.template, args.max_new_tokens or bench.max_new_tokens, args.system_prompt)
    files = BenchFiles(args.data, args.annotations, args.image_root, args.split)
    return evaluate_benchmark(predictor, args.task, files, prompt=args.prompt, batch_size=args.batch_size,
                              limit=args.limit)


def _write(args: argparse.Namespace, result: dict[str, Any], items: list) -> None:
    from mmtune.errors import DataError
    from mmtune.evaluation.tasks import BENCHMARKS, fill_submission, prediction_lines

    def target(name: str) -> Path:
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    if args.out:
        target(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    if args.predictions:
        target(args.predictions).write_text("".join(json.dumps(line) + "\n" for line in prediction_lines(items)))
        print(f"wrote {args.predictions}")
    if args.submission:
        bench = BENCHMARKS.get(args.task)
        if bench is None or bench.submission is None:
            raise DataError(f"--submission: --task {args.task} has no evaluation-server file")
        rows = bench.submission(items)
        if args.submission_questions:
            rows = fill_submission(rows, args.submission_questions)
        target(args.submission).write_text(json.dumps(rows))
        print(f"wrote {args.submission}")


def _print(result: dict[str, Any], prefix: str = "") -> None:
    for key, value in result.items():
        if isinstance(value, dict):
            _print(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            print(f"{prefix + key:28s} {value:.4f}")


def run(args: argparse.Namespace) -> int:
    """Evaluates; rank 0 prints the scores (one line per metric) and writes the files."""
    from mmtune.distributed.env import shutdown

    _check(args)
    _device(args)
    ok = False
    try:
        result, items = _evaluate(args)
        result["model"] = args.model
        if int(os.environ.get("RANK", "0")) == 0:
            if "metrics" not in result and args.task not in SYNTHETIC:
                print(f"{args.task}: {result['count']} answers; the files hold no answers to score against")
            _print(result)
            _write(args, result, items)
        ok = True
    finally:
        shutdown(wait=ok)
    return 0
