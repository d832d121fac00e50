"""``mmtune eval --model DIR --data FILE --task caption|vqa [--out FILE.json]``: score a saved model.

Captioning: BLEU-4, CIDEr-D and exact match against every reference caption of an entry (and, for the
synthetic world's held-out files, caption accuracy: all stated facts right). VQA: exact match and the
VQAv2 soft accuracy, for every assistant turn of LLaVA / Alpaca conversations.
"""

from __future__ import annotations

import argparse

from mmtune.commands import MODEL_HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Registers the model, data, task and decoding options."""
    p.add_argument("--model", required=True, metavar="PATH", help=MODEL_HELP)
    p.add_argument("--data", required=True, metavar="FILE",
                   help="dataset in any supported format (manifest, webdataset shards, LLaVA or Alpaca JSON)")
    p.add_argument("--task", required=True, choices=["caption", "vqa"], help="what to score")
    p.add_argument("--out", metavar="FILE.json", help="write the scores (and a few samples) as JSON here")
    p.add_argument("--template", default="alpaca",
                   help="prompt template the model was trained with (caption for stage-1 models; default alpaca)")
    p.add_argument("--system-prompt", default=None,
                   help="the data.system_prompt the model was trained with (default: the template's own)")
    p.add_argument("--prompt", default=None,
                   help="caption task: ask with this user message (for chat-tuned models) instead of the "
                        "bare caption template")
    p.add_argument("--image-root", default=None, help="directory relative image paths resolve against "
                                                       "(default: the data file's directory)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts decoded together (default 32)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N items")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer (default 64)")


def run(args: argparse.Namespace) -> int:
    """Evaluates and prints the scores (one line per metric)."""
    import json
    from pathlib import Path

    from mmtune.errors import ConfigError
    from mmtune.evaluation.runner import evaluate

    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}", getattr(args, name), "a positive integer")
    if args.limit is not None and args.limit <= 0:
        raise ConfigError("--limit", args.limit, "a positive integer")
    result = evaluate(args.model, args.data, args.task, template=args.template, prompt=args.prompt,
                      system_prompt=args.system_prompt, batch_size=args.batch_size, limit=args.limit,
                      max_new_tokens=args.max_new_tokens,
                      image_root=args.image_root)
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:18s} {value:.4f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0
