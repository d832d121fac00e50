"""What the serving commands (generate, score, chat, serve) share: the engine and the request from their
command-line options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional

from mmtune.data.records import Message
from mmtune.errors import ConfigError, DataError
from mmtune.inference.engine import Engine
from mmtune.inference.request import ChatRequest

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def engine_from_args(args: argparse.Namespace, device: Optional[str] = None,
                     prepare: Optional[Callable[[Any], None]] = None) -> Engine:
    """Loads ``--model`` (any accepted format) on ``device`` (default ``--device``) in ``--dtype`` with
    ``--template`` as the default; ``prepare`` splits the meta-device model first (tensor parallel)."""
    import torch

    where = device or args.device
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bf16" if str(where).startswith("cuda") else "fp32"
    try:
        device = torch.device(where)
    except RuntimeError:
        raise ConfigError("--device", where, "a torch device such as cpu or cuda:0") from None
    return Engine.from_dir(args.model, device=str(device), dtype=getattr(torch, DTYPES[dtype]),
                           template=args.template or "alpaca",
                           max_image_pixels=getattr(args, "max_image_pixels", None), prepare=prepare)


def local_image(path: Optional[str]) -> Optional[bytes]:
    """The bytes of a local image file (no URL is ever fetched); None when no path is given."""
    if path is None:
        return None
    if "://" in path:
        raise DataError(f"--image takes a local file, not a URL: {path}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"image file not found: {path}")
    return file.read_bytes()


def request_from_args(args: argparse.Namespace, image: Optional[bytes], prompt: str = "", extra_input: str = "",
                      prefix: Optional[str] = None) -> ChatRequest:
    """A request from the sampling options; an empty prompt means plain captioning (no user message)."""
    messages = [Message("user", prompt, input=extra_input)] if prompt or extra_input else []
    return ChatRequest(messages=messages, image=image, prefix=prefix if prefix is not None else getattr(args, "prefix", None),
                       template=args.template, system_prompt=args.system_prompt,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       seed=args.seed)
