"""``mmtune score``: per-token log-probabilities of an answer given an image and a prompt."""

from __future__ import annotations

import argparse

from mmtune.commands import MODEL_HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH", help=MODEL_HELP)
    p.add_argument("--image", default=None, metavar="PATH", help="local image file (no URLs)")
    p.add_argument("--prompt", default="", help="the question (may be empty)")
    p.add_argument("--answer", required=True, help="the answer to score")
    p.add_argument("--prefix", default=None, help="text the answer starts with (conditions, not scored)")
    p.add_argument("--template", default=None,
                   help="prompt template; 'none' feeds BOS + prompt + answer raw (default alpaca)")
    p.add_argument("--system-prompt", default=None, help="replaces the template's default system prompt")
    p.add_argument("--with-eos", action="store_true", help="also score the end-of-sequence token after the answer")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "bf16", "fp16"], help="weights dtype (default fp32)")


def run(args: argparse.Namespace) -> int:
    import json

    from mmtune.commands.serving_options import engine_from_args, local_image, request_from_args

    args.max_new_tokens, args.temperature, args.top_p, args.seed = 1, 0.0, 1.0, None
    engine = engine_from_args(args)
    request = request_from_args(args, local_image(args.image), args.prompt)
    score = engine.score(request, args.answer, with_eos=args.with_eos)
    tokens = [engine.tokenizer.decode([i]) for i in score.token_ids]
    result = score.as_dict(tokens)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    for token_id, token, logprob in zip(score.token_ids, tokens, score.logprobs):
        print(f"{token_id:>8}  {logprob:>10.4f}  {token!r}")
    print(f"total log-probability {result['total_logprob']:.4f} over {len(tokens)} tokens")
    return 0
