"""Streams tensors into safetensors shards, so converting a 70B model never holds it whole in memory.

The files follow the saved-model layout of ``docs/architecture.md``: one ``model.safetensors``, or
``model-0000N-of-0000M.safetensors`` plus ``model.safetensors.index.json`` (the Hugging Face index:
``metadata.total_size`` and ``weight_map``) when the tensors exceed one shard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from mmtune.checkpoints.reading import SAFETENSORS_INDEX

DEFAULT_SHARD_BYTES = 5 * 1024**3


class ShardedWriter:
    """Collects tensors with :meth:`add` and writes a shard each time ``max_shard_bytes`` is reached;
    :meth:`close` names the shards and writes the index. ``prefix`` is the file stem (``model``)."""

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 prefix: str = "model", dtype: Optional[torch.dtype] = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.prefix = prefix
        self.dtype = dtype
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queues ``tensor`` under ``name`` (cast to ``dtype`` for floating tensors when set)."""
        assert name not in self._pending, f"tensor {name} written twice"
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        tensor = tensor.detach().contiguous()
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.out_dir / f".{self.prefix}-part{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Writes what is left, renames the shards to their final names and returns them."""
        if self._pending or not self._shards:
            self._flush()
        total = len(self._shards)
        if total == 1:
            final = self.out_dir / f"{self.prefix}.safetensors"
            self._shards[0][0].replace(final)
            return [final.name]
        weight_map: dict[str, str] = {}
        names = []
        for i, (path, keys) in enumerate(self._shards, start=1):
            final = self.out_dir / f"{self.prefix}-{i:05d}-of-{total:05d}.safetensors"
            path.replace(final)
            names.append(final.name)
            weight_map.update({k: final.name for k in keys})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        index_name = SAFETENSORS_INDEX if self.prefix == "model" else f"{self.prefix}.safetensors.index.json"
        (self.out_dir / index_name).write_text(json.dumps(index, indent=2, sort_keys=True))
        return names
