"""Meta's LLaMA release (``params.json`` + ``consolidated.NN.pth`` model-parallel shards) -> mmtune.

7B ships 1 shard, 13B 2, 70B 8. All shards are opened memory-mapped and merged one tensor at a time
(column-parallel along dim 0, row-parallel and the embedding along dim 1, norms replicated), so the
conversion needs about one output shard of memory, not twice the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

from mmtune.config import ConnectorConfig, VisionConfig
from mmtune.errors import CheckpointError
from mmtune.formats.pipeline import Source, Tensors
from mmtune.formats.reading import load_torch, numbered_shards, read_json, tensors_of
from mmtune.models.adapters import meta

log = logging.getLogger(__name__)

META_SHARDS = r"consolidated\.(\d+)\.pth"
EMBEDDING = "tok_embeddings.weight"


def merged_tensors(shards: list[dict[str, torch.Tensor]], paths: list[Path],
                   rename: Callable[[str], tuple[str, Optional[int]]],
                   ignored: Callable[[str], bool]) -> Tensors:
    """Yields ``(new name, merged tensor)`` for every key of model-parallel ``shards``.

    ``rename`` gives each key its new name and concat dimension (None: replicated); ``ignored`` keys are
    skipped. Every shard must hold the same keys.
    """
    keys = list(shards[0])
    for shard, path in zip(shards[1:], paths[1:]):
        extra, lacking = sorted(set(shard) - set(keys)), sorted(set(keys) - set(shard))
        if extra or lacking:
            raise CheckpointError(f"{path}: keys differ from {paths[0].name}: extra {extra[:5]}, missing {lacking[:5]}")
    for key in keys:
        if ignored(key):
            continue
        name, dim = rename(key)
        yield name, meta.merge_shards(key, [shard[key] for shard in shards], dim)


def embedding_rows(state: dict[str, Any], key: str, path: Path) -> int:
    """The vocabulary size of a (possibly model-parallel) checkpoint: rows of its embedding."""
    if key not in state:
        raise CheckpointError(f"{path}: no {key} (not a LLaMA checkpoint)")
    return int(state[key].shape[0])


def meta_source(params: str | Path, ckpt_dir: str | Path, tokenizer: Optional[str | Path] = None,
                max_seq_len: int = 4096) -> Source:
    """A :class:`Source` over Meta's ``params.json`` and the ``consolidated.NN.pth`` files in ``ckpt_dir``.

    ``tokenizer`` defaults to ``tokenizer.model`` next to the shards or next to ``params.json``.
    """
    params_dict = read_json(params, "params.json")
    paths = numbered_shards(ckpt_dir, META_SHARDS)
    first = tensors_of(load_torch(paths[0]), paths[0])
    cfg = meta.config_from_params(params_dict, embedding_rows(first, EMBEDDING, paths[0]), max_seq_len)

    def tensors(shapes: dict[str, torch.Size]) -> Tensors:
        shards = [first] + [tensors_of(load_torch(p), p) for p in paths[1:]]
        yield from merged_tensors(shards, paths, lambda k: ("llm." + k, meta.shard_dim(k)),
                                  lambda k: k in meta.IGNORED_KEYS)

    if tokenizer is None:
        candidates = [Path(ckpt_dir) / "tokenizer.model", Path(params).parent / "tokenizer.model"]
        tokenizer = next((c for c in candidates if c.is_file()), None)
    return Source(model=cfg, vision=VisionConfig(kind="none"), connector=ConnectorConfig(),
                  tensors=tensors, tokenizer=Path(tokenizer) if tokenizer else None,
                  description=f"Meta LLaMA release ({len(paths)} model-parallel shard(s)) from {ckpt_dir}")
