"""``mmtune serve``: the web demo and the OpenAI-compatible API in one process.

Under ``torchrun --nproc-per-node N -m mmtune serve ...`` the model is split over the N ranks (tensor
parallel); rank 0 serves HTTP and the other ranks follow each request.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmtune.serving.api import ServerSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mmtune.commands.generate import add_sampling_arguments

    add_sampling_arguments(p, max_new_tokens=256)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: the MMTUNE_API_KEY variable, else none)")
    p.add_argument("--name", default=None, help="model id shown by /v1/models (default: the model folder's name)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body in MiB (default 20)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="largest image in pixels (default: the model's vision.max_image_pixels)")
    p.add_argument("--max-pending", type=int, default=8,
                   help="requests queued or running before new ones get 503 (default 8)")
    p.add_argument("--image-first", action="store_true",
                   help="put a request's image at the start of its message, then a newline (LLaVA-1.5's "
                        "'<image>\\n{question}'), wherever the client put the image part (lmms-eval sends it last)")


def check_limits(args: argparse.Namespace) -> None:
    """Refuses a port, body limit, pixel limit or queue length no server can run with (before any loading)."""
    from mmtune.errors import ConfigError

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", args.port, "a TCP port in 0..65535")
    if args.max_body_mb <= 0:
        raise ConfigError("--max-body-mb", args.max_body_mb, "a positive number of MiB")
    if args.max_pending < 1:
        raise ConfigError("--max-pending", args.max_pending, "a positive integer")
    if args.max_image_pixels is not None and args.max_image_pixels <= 0:
        raise ConfigError("--max-image-pixels", args.max_image_pixels, "a positive integer")


def settings_from_args(args: argparse.Namespace) -> "ServerSettings":
    """The server settings of the command line (the API key falls back to ``MMTUNE_API_KEY``)."""
    import os
    from pathlib import Path

    from mmtune.serving.api import ServerSettings

    return ServerSettings(model_name=args.name or Path(args.model).resolve().name,
                          api_key=args.api_key or os.environ.get("MMTUNE_API_KEY") or None,
                          max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pending=args.max_pending,
                          default_max_tokens=args.max_new_tokens, image_first=args.image_first)


def run(args: argparse.Namespace) -> int:
    from mmtune.commands.serving_options import engine_from_args
    from mmtune.serving.launch import serve

    check_limits(args)
    return serve(lambda device, prepare: engine_from_args(args, device, prepare), settings_from_args(args),
                 args.host, args.port, args.model)
