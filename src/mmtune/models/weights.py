"""The weights layer: every safetensors file mmtune reads or writes, and the saved-model ``config.json``.

Files: one ``model.safetensors``, or ``model-0000N-of-0000M.safetensors`` shards plus
``model.safetensors.index.json`` (the Hugging Face index: ``metadata.total_size`` and ``weight_map``).
:class:`WeightsReader` reads such files lazily (keys and shapes from the headers, tensors one at a time);
:class:`ShardedWriter` streams tensors into them (written aside, renamed when complete). Weights are only
ever read from safetensors, never from pickles. The saved-model ``config.json`` is assembled by
:func:`model_config_dict` and checked by :func:`read_model_config`; :func:`check_state_dict` compares
weights with a module.

This module imports nothing from mmtune but :mod:`mmtune.errors`, so every layer can use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mmtune.errors import CheckpointError

FORMAT = "mmtune"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3
SAVED_UNREADABLE = "{path}: not a readable safetensors file ({exc})"
"""How :class:`WeightsReader` reports a damaged file by default (``path`` and ``exc`` are filled in)."""
FOREIGN_UNREADABLE = "{path}: cannot be read as safetensors: {exc}"
"""How :func:`iter_safetensors` reports a damaged file of a foreign (Hugging Face) checkpoint."""


def index_shard_names(index: Path) -> list[str]:
    """The shard file names a ``*.safetensors.index.json`` maps weights to, sorted; CheckpointError for
    an unreadable index or a name that is not a plain file name beside it (``../x``, ``/abs/x``)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: weight_map is not a mapping of weight names to shard files")
    bad = sorted({repr(v) for v in weight_map.values()
                  if not isinstance(v, str) or not v or Path(v).name != v or v in (".", "..")})
    if bad:
        raise CheckpointError(f"{index}: shard names must be plain file names in the same directory, got {bad[:3]}")
    return sorted(set(weight_map.values()))


class WeightsReader:
    """Safetensors ``files`` read lazily: :meth:`keys` and :meth:`shapes` read only the headers,
    :meth:`tensors` and :meth:`get` read one tensor at a time (memory-mapped).

    A file that is absent is reported as a shard missing from the index; one that safetensors cannot
    read as ``unreadable`` formatted with ``path`` and ``exc`` (a :class:`CheckpointError` either way).
    """

    def __init__(self, files: Sequence[Path], unreadable: str = SAVED_UNREADABLE):
        self.files = [Path(f) for f in files]
        self._unreadable = unreadable
        self._where: Optional[dict[str, Path]] = None

    @classmethod
    def open(cls, directory: str | Path) -> "WeightsReader":
        """The reader of a directory's ``model.safetensors`` or of the shards its index names."""
        directory = Path(directory)
        if (directory / INDEX_FILE).is_file():
            names = index_shard_names(directory / INDEX_FILE)
        elif (directory / SINGLE_FILE).is_file():
            names = [SINGLE_FILE]
        else:
            raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} found")
        return cls([directory / name for name in names])

    @contextmanager
    def _handle(self, path: Path) -> Iterator[Any]:
        if not path.is_file():
            raise CheckpointError(f"{path.parent}: shard {path.name} named in the index is missing")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                yield handle
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(self._unreadable.format(path=path, exc=exc)) from None

    def _locations(self) -> dict[str, Path]:
        if self._where is None:
            where: dict[str, Path] = {}
            for path in self.files:
                with self._handle(path) as handle:
                    where.update(dict.fromkeys(handle.keys(), path))
            self._where = where
        return self._where

    def keys(self) -> list[str]:
        """Every tensor name, file by file in the order of :attr:`files` (headers only)."""
        return list(self._locations())

    def shapes(self) -> dict[str, torch.Size]:
        """Every tensor's shape, read from the headers without reading any tensor."""
        out: dict[str, torch.Size] = {}
        for path in self.files:
            with self._handle(path) as handle:
                out.update((key, torch.Size(handle.get_slice(key).get_shape())) for key in handle.keys())
        return out

    def tensors(self, select: Optional[Callable[[str], bool]] = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yields ``(name, tensor)`` one tensor at a time, only names ``select`` keeps (all by default).

        Each tensor is read through its own short-lived memory map, so the pages of a file already read
        do not stay resident while the rest is read (a 5 GiB shard costs one tensor of memory, not 5 GiB).
        """
        for path in self.files:
            with self._handle(path) as handle:
                keys = list(handle.keys())
            for key in keys:
                if select is None or select(key):
                    with self._handle(path) as handle:
                        tensor = handle.get_tensor(key)
                    yield key, tensor

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` (KeyError when no file holds it)."""
        path = self._locations()[key]
        with self._handle(path) as handle:
            return handle.get_tensor(key)


def read_weights(directory: str | Path, select: Optional[Callable[[str], bool]] = None) -> dict[str, torch.Tensor]:
    """All tensors of a directory's ``model.safetensors`` or indexed shards (only keys ``select`` keeps)."""
    return dict(WeightsReader.open(directory).tensors(select))


def safetensors_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a Hugging Face-style directory: one ``model.safetensors`` or the
    files named by ``model.safetensors.index.json`` (all of which must exist)."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        names = index_shard_names(index)
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: missing shards named by the index: {missing}")
        return [directory / n for n in names]
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    others = sorted(directory.glob("*.safetensors"))
    if len(others) == 1:
        return others
    raise CheckpointError(f"{directory}: no model.safetensors (nor an index of shards)")


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields ``(name, tensor)`` from safetensors ``files`` one tensor at a time (memory-mapped)."""
    return WeightsReader(files, unreadable=FOREIGN_UNREADABLE).tensors()


class ShardedWriter:
    """Collects tensors with :meth:`add` and writes a shard each time ``max_shard_bytes`` is reached;
    :meth:`close` names the shards and writes the index. ``prefix`` is the file stem (``model``).

    Shards are written aside as ``.{prefix}-partNNNNN.safetensors``; :meth:`close` removes the files of
    an earlier save with the same prefix and renames the new ones into place. ``sorted_index`` writes the
    index's keys sorted (the conversion and export layout) rather than in the order they were added.
    """

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 prefix: str = "model", dtype: Optional[torch.dtype] = None, sorted_index: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.prefix = prefix
        self.dtype = dtype
        self.sorted_index = sorted_index
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queues ``tensor`` under ``name`` (cast to ``dtype`` for floating tensors when set)."""
        assert name not in self._pending, f"tensor {name} written twice"
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        tensor = tensor.detach().to("cpu").contiguous()
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

    def _index_name(self) -> str:
        return INDEX_FILE if self.prefix == "model" else f"{self.prefix}.safetensors.index.json"

    def _remove_stale(self) -> None:
        stale = list(self.out_dir.glob(f"{self.prefix}-*-of-*.safetensors"))
        for path in stale + [self.out_dir / f"{self.prefix}.safetensors", self.out_dir / self._index_name()]:
            path.unlink(missing_ok=True)

    def close(self) -> list[str]:
        """Writes what is left, renames the shards to their final names and returns them."""
        if self._pending or not self._shards:
            self._flush()
        self._remove_stale()
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
        (self.out_dir / self._index_name()).write_text(json.dumps(index, indent=2, sort_keys=self.sorted_index))
        return names


def model_config_dict(image_token_id: int, model: dict[str, Any], vision: dict[str, Any],
                      connector: dict[str, Any]) -> dict[str, Any]:
    """The saved-model ``config.json`` from its already-computed sections (``vision`` self-contained:
    the tower's resolved transformers config, no checkpoint path)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "image_token_id": image_token_id,
            "model": model, "vision": vision, "connector": connector}


def write_model_config(directory: str | Path, config: dict[str, Any]) -> None:
    """Writes ``config`` as the ``config.json`` of a saved-model directory."""
    (Path(directory) / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The parsed and checked ``config.json`` of a saved-model directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (not an mmtune saved-model directory)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mmtune saved-model config (format {FORMAT!r} missing)")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {data['format_version']} is newer than this mmtune "
                              f"reads ({FORMAT_VERSION})")
    for key in ("model", "vision", "connector", "image_token_id"):
        if key not in data:
            raise CheckpointError(f"{path}: the {key!r} entry is missing")
    return data


def check_state_dict(module: nn.Module, weights: dict[str, torch.Tensor], where: str,
                     allowed_missing: tuple[str, ...] = ()) -> None:
    """Raises :class:`CheckpointError` listing missing, unexpected and wrongly shaped keys."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(weights) - set(allowed_missing))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{k}: saved {list(weights[k].shape)} vs model {list(expected[k])}"
              for k in sorted(set(weights) & set(expected)) if weights[k].shape != expected[k]]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:10])}{more}")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))
