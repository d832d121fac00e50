"""``mmtune convert meta|hf|accessory``: released weights -> an mmtune saved-model directory."""

from __future__ import annotations

import argparse

_DTYPES = {"keep": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="source", metavar="FORMAT", required=True)
    m = sub.add_parser("meta", help="Meta's LLaMA release: params.json + consolidated.NN.pth shards")
    m.add_argument("--params", required=True, help="params.json of the release")
    m.add_argument("--ckpt-dir", required=True, help="directory with consolidated.NN.pth")
    m.add_argument("--tokenizer", help="tokenizer.model (default: next to the shards or params.json)")
    m.add_argument("--max-seq-len", type=int, default=4096, help="context the model is built for (default: 4096)")
    h = sub.add_parser("hf", help="Hugging Face Llama / Mistral / Qwen2 directory (safetensors)")
    h.add_argument("--model", required=True, help="directory with config.json, safetensors and tokenizer")
    a = sub.add_parser("accessory", help="LLaMA2-Accessory llama_qformerv2 checkpoint (consolidated.NN-of-MM.model.pth)")
    a.add_argument("--ckpt-dir", required=True, help="the Accessory checkpoint directory")
    a.add_argument("--blip2", help="local Hugging Face BLIP-2 directory (weights when the checkpoint lacks them, "
                                   "and the tower config)")
    a.add_argument("--params", help="params.json when the directory has no config.json (e.g. 13B_params.json)")
    a.add_argument("--tokenizer", help="tokenizer.model (default: the one in the checkpoint directory)")
    for parser in (m, h, a):
        parser.add_argument("--out", required=True, help="output saved-model directory (must not exist)")
        parser.add_argument("--dtype", choices=sorted(_DTYPES), default="keep",
                            help="cast floating weights (default: keep the checkpoint's)")


def run(args: argparse.Namespace) -> int:
    import torch

    from mmtune.formats.convert_accessory import accessory_source
    from mmtune.formats.convert_hf import hf_source
    from mmtune.formats.convert_meta import meta_source
    from mmtune.formats.pipeline import write_saved_model

    tokenizer = getattr(args, "tokenizer", None)
    if args.source == "meta":
        source = meta_source(args.params, args.ckpt_dir, tokenizer, args.max_seq_len)
    elif args.source == "hf":
        source = hf_source(args.model)
    else:
        source = accessory_source(args.ckpt_dir, blip2=args.blip2, params=args.params, tokenizer=tokenizer)
    dtype = getattr(torch, _DTYPES[args.dtype]) if _DTYPES[args.dtype] else None
    out = write_saved_model(source, args.out, dtype=dtype)
    print(f"wrote {out}")
    return 0
