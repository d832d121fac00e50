"""``mmtune generate``: answer one prompt about one image (streamed), or a JSONL batch with a progress bar."""

from __future__ import annotations

import argparse

from mmtune.commands import MODEL_HELP


def add_sampling_arguments(p: argparse.ArgumentParser, max_new_tokens: int = 128) -> None:
    """The model, template and sampling options shared by generate, chat and serve."""
    p.add_argument("--model", required=True, metavar="PATH", help=MODEL_HELP)
    p.add_argument("--template", default=None,
                   help="prompt template (alpaca, caption, plain, llava_v1, llama2_chat, none; default alpaca)")
    p.add_argument("--system-prompt", default=None, help="replaces the template's default system prompt")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"default {max_new_tokens}")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed; the same seed gives the same answer")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights dtype (auto: bf16 on GPU, fp32 on CPU)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p)
    p.add_argument("--image", default=None, metavar="PATH", help="local image file (no URLs)")
    p.add_argument("--prompt", default="", help="the question; may be empty for plain captioning")
    p.add_argument("--input", default="", help="optional Alpaca '### Input:' context")
    p.add_argument("--prefix", default=None, help="text the answer starts with (e.g. 'The author')")
    p.add_argument("--batch", default=None, metavar="FILE.jsonl",
                   help="one JSON object per line: prompt, image, prefix, input, id (all optional)")
    p.add_argument("--out", default=None, metavar="FILE.jsonl", help="where --batch writes its answers")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass with --batch (default 8)")


def run(args: argparse.Namespace) -> int:
    import sys

    from mmtune.commands.serving_options import engine_from_args, local_image, request_from_args
    from mmtune.errors import ConfigError

    if bool(args.batch) != bool(args.out):
        raise ConfigError("--batch/--out", args.batch or args.out, "both --batch FILE and --out FILE, or neither")
    engine = engine_from_args(args)
    if args.batch:
        from mmtune.serving.batch import run_batch_file

        count = run_batch_file(engine, request_from_args(args, None), args.batch, args.out, args.batch_size)
        print(f"wrote {count} answers to {args.out}", file=sys.stderr)
        return 0
    request = request_from_args(args, local_image(args.image), args.prompt, args.input)
    if request.prefix:  # the answer continues the prefix
        sys.stdout.write(request.prefix)
    engine.generate(request, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    sys.stdout.write("\n")
    return 0
