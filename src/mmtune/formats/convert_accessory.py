"""LLaMA2-Accessory's released ``llama_qformerv2`` models -> mmtune (``qformer`` connector, BLIP-2 tower).

A checkpoint directory holds ``consolidated.NN-of-MM.model.pth`` files (``{"model": state_dict}`` with
``llma.*`` keys, decoder tensors split fairscale-style, the rest replicated), ``config.json``
(``dataclasses.asdict(ModelArgs)``), ``meta.json`` (``{"llama_type": ...}``) and the tokenizer. The
BLIP-2 weights (``llma.qformer.*``) are taken from the checkpoint when present, else from a local
Hugging Face BLIP-2 directory (``blip2``). The released models' vocabulary is 32000; mmtune's tokenizer
adds ``<image>`` after it, which the model never looks up, so ``vocab_size`` stays 32000.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

import torch

from mmtune.config import ConnectorConfig, VisionConfig, build
from mmtune.errors import CheckpointError
from mmtune.formats.convert_meta import embedding_rows, merged_tensors
from mmtune.formats.pipeline import Source, Tensors, vision_prefix
from mmtune.formats.reading import load_torch, numbered_shards, read_json, tensors_of
from mmtune.models.adapters import accessory
from mmtune.models.weights import iter_safetensors, safetensors_files

log = logging.getLogger(__name__)

ACCESSORY_SHARDS = r"consolidated\.(\d+)-of-(\d+)\.model\.pth"
BLIP2_PRESET = "blip2-vitg-qformer"
# BLIP-2 weights that transformers no longer builds (the Q-Former's text branch, saved by older
# versions) or that are buffers, not weights.
_UNUSED_BLIP2 = re.compile(r"(^|\.)qformer\.encoder\.layer\.\d+\.(intermediate|output)\.|position_ids$")


def _model_state(path: Path) -> dict[str, torch.Tensor]:
    data = load_torch(path)
    if "model" not in data or not isinstance(data["model"], dict):
        raise CheckpointError(f"{path}: expected LLaMA2-Accessory's {{'model': state_dict}} layout")
    return tensors_of(data["model"], path)


def _model_args(ckpt_dir: Path, params: Optional[str | Path]) -> dict[str, Any]:
    if params is not None:
        return read_json(params, "params.json")
    if not (ckpt_dir / "config.json").is_file():
        raise CheckpointError(f"{ckpt_dir}: no config.json; pass the model's params.json (e.g. 13B_params.json)")
    return read_json(ckpt_dir / "config.json", "config.json")


def blip2_vision_config(blip2_dir: Optional[str | Path]) -> VisionConfig:
    """The BLIP-2 tower config: from a Hugging Face BLIP-2 directory's ``config.json`` when given, else
    the ``blip2-vitg-qformer`` preset (the tower of ``Salesforce/blip2-opt-2.7b``)."""
    values: dict[str, Any] = {"preset": BLIP2_PRESET}
    if blip2_dir is not None:
        cfg = read_json(Path(blip2_dir) / "config.json", "BLIP-2 config.json")
        values["hf_config"] = {k: cfg[k] for k in ("vision_config", "qformer_config", "num_query_tokens") if k in cfg}
    return build(VisionConfig, values, "vision")


def _find_tokenizer(ckpt_dir: Path, tokenizer: Optional[str | Path]) -> Optional[Path]:
    if tokenizer is not None:
        return Path(tokenizer)
    if (ckpt_dir / "tokenizer.json").is_file():
        return ckpt_dir
    return ckpt_dir / "tokenizer.model" if (ckpt_dir / "tokenizer.model").is_file() else None


def accessory_source(ckpt_dir: str | Path, blip2: Optional[str | Path] = None,
                     params: Optional[str | Path] = None, tokenizer: Optional[str | Path] = None,
                     vision: Optional[VisionConfig] = None) -> Source:
    """A :class:`Source` over a LLaMA2-Accessory checkpoint directory.

    ``params`` replaces a missing ``config.json``; ``vision`` overrides the tower config (default: from
    ``blip2`` or the ``blip2-vitg-qformer`` preset).
    """
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.model-diff.pth")):
        raise CheckpointError(f"{ckpt_dir}: holds Accessory diff checkpoints; add them to their base model first")
    paths = numbered_shards(ckpt_dir, ACCESSORY_SHARDS)
    kind = accessory.check_llama_type(read_json(ckpt_dir / "meta.json", "meta.json")
                                      if (ckpt_dir / "meta.json").is_file() else {})
    first = _model_state(paths[0])
    cfg = accessory.config_from_accessory(_model_args(ckpt_dir, params),
                                          embedding_rows(first, accessory.PREFIX + "tok_embeddings.weight", paths[0]))
    has_tower = any(k.startswith(accessory.PREFIX + "qformer.") for k in first)
    multimodal = kind == "llama_qformerv2"
    if multimodal and not has_tower and blip2 is None:
        raise CheckpointError(f"{ckpt_dir}: the BLIP-2 weights are not in the checkpoint; pass --blip2 DIR "
                              "(a local Salesforce/blip2-opt-2.7b directory)")
    if multimodal and has_tower and blip2 is not None:
        log.info("BLIP-2 weights come from the checkpoint; %s only supplies the tower config", blip2)
    blip2_files = safetensors_files(blip2) if multimodal and not has_tower else []

    def tensors(shapes: dict[str, torch.Size]) -> Tensors:
        prefix = vision_prefix(shapes) if multimodal else "vision."
        shards = [first] + [_model_state(p) for p in paths[1:]]
        yield from merged_tensors(shards, paths, lambda k: accessory.from_accessory_key(k, prefix),
                                  accessory.is_ignored)
        for name, tensor in iter_safetensors(blip2_files):
            key = accessory.blip2_tower_key(name, prefix)
            if key is not None:
                yield key, tensor

    if multimodal:
        vision = vision or blip2_vision_config(blip2)
        connector = ConnectorConfig(kind="qformer")
    else:
        vision, connector = VisionConfig(kind="none"), ConnectorConfig()
    return Source(model=cfg, vision=vision, connector=connector, tensors=tensors,
                  tokenizer=_find_tokenizer(ckpt_dir, tokenizer),
                  description=f"LLaMA2-Accessory {kind} ({len(paths)} model-parallel shard(s)) from {ckpt_dir}",
                  droppable=lambda key: bool(_UNUSED_BLIP2.search(key)))
