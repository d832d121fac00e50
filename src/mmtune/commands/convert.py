"""``mmtune convert meta|hf|llava|accessory|auto``: released weights -> an mmtune saved-model directory.

``auto PATH`` recognises the format with :func:`mmtune.formats.detect.detect_format`; a training
checkpoint is refused (``mmtune export`` turns those into saved models).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Optional

from mmtune.commands import WEIGHT_DTYPES

if TYPE_CHECKING:
    from mmtune.formats.pipeline import Source



def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="source", metavar="FORMAT", required=True)
    m = sub.add_parser("meta", help="Meta's LLaMA release: params.json + consolidated.NN.pth shards")
    m.add_argument("--params", required=True, help="params.json of the release")
    m.add_argument("--ckpt-dir", required=True, help="directory with consolidated.NN.pth")
    m.add_argument("--tokenizer", help="tokenizer.model (default: next to the shards or params.json)")
    m.add_argument("--max-seq-len", type=int, default=4096, help="context the model is built for (default: 4096)")
    h = sub.add_parser("hf", help="Hugging Face Llama / Mistral / Qwen2 directory (safetensors)")
    h.add_argument("--model", required=True, help="directory with config.json, safetensors and tokenizer")
    v = sub.add_parser("llava", help="Hugging Face LlavaForConditionalGeneration directory (transformers 4 or 5 layout)")
    v.add_argument("--model", required=True, help="directory with config.json, safetensors, tokenizer and "
                                                  "preprocessor_config.json")
    u = sub.add_parser("auto", help="any of the above, recognised from its files (not training checkpoints)")
    u.add_argument("path", help="the model directory")
    u.add_argument("--tokenizer", help="tokenizer.model / directory when the format needs one (meta, accessory)")
    a = sub.add_parser("accessory", help="LLaMA2-Accessory llama_qformerv2 checkpoint (consolidated.NN-of-MM.model.pth)")
    a.add_argument("--ckpt-dir", required=True, help="the Accessory checkpoint directory")
    a.add_argument("--blip2", help="local Hugging Face BLIP-2 directory (weights when the checkpoint lacks them, "
                                   "and the tower config)")
    a.add_argument("--params", help="params.json when the directory has no config.json (e.g. 13B_params.json)")
    a.add_argument("--tokenizer", help="tokenizer.model (default: the one in the checkpoint directory)")
    for parser in (m, h, v, u, a):
        parser.add_argument("--out", required=True, help="output saved-model directory (must not exist)")
        parser.add_argument("--dtype", choices=sorted(WEIGHT_DTYPES), default="keep",
                            help="cast floating weights (default: keep the checkpoint's)")


def _auto_source(path: str, tokenizer: Optional[str]) -> "Source":
    from mmtune.errors import CheckpointError
    from mmtune.formats.detect import detect_format, open_source

    if detect_format(path) == "checkpoint":
        raise CheckpointError(f"{path}: a training checkpoint; convert reads released weights, "
                              f"turn a checkpoint into a saved model with: mmtune export {path} --out OUT")
    return open_source(path, tokenizer)


def run(args: argparse.Namespace) -> int:
    import torch

    from mmtune.formats.convert_accessory import accessory_source
    from mmtune.formats.convert_hf import hf_source
    from mmtune.formats.convert_llava import llava_source
    from mmtune.formats.convert_meta import meta_source
    from mmtune.formats.pipeline import write_saved_model

    tokenizer = getattr(args, "tokenizer", None)
    if args.source == "meta":
        source = meta_source(args.params, args.ckpt_dir, tokenizer, args.max_seq_len)
    elif args.source == "hf":
        source = hf_source(args.model)
    elif args.source == "llava":
        source = llava_source(args.model)
    elif args.source == "auto":
        source = _auto_source(args.path, tokenizer)
    else:
        source = accessory_source(args.ckpt_dir, blip2=args.blip2, params=args.params, tokenizer=tokenizer)
    dtype = getattr(torch, WEIGHT_DTYPES[args.dtype]) if WEIGHT_DTYPES[args.dtype] else None
    out = write_saved_model(source, args.out, dtype=dtype)
    print(f"wrote {out}")
    return 0
