"""``mmtune chat``: a multi-turn terminal chat; ``/image PATH`` attaches an image, ``/reset`` clears."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mmtune.commands.generate import add_sampling_arguments

    add_sampling_arguments(p, max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    from mmtune.commands.serving_options import engine_from_args, request_from_args
    from mmtune.serving.chat import chat_loop

    engine = engine_from_args(args)
    chat_loop(engine.generate, request_from_args(args, None, prefix=None))
    return 0
