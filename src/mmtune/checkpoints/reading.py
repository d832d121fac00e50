"""Safe readers for checkpoint files: ``torch.load(weights_only=True)``, safetensors, JSON.

Every failure a user can cause (a missing file, a pickle that would run code, a truncated file, a
sharded safetensors index naming absent files) becomes a :class:`CheckpointError` saying which file
and what is wrong.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mmtune.errors import CheckpointError
from mmtune.models.io import index_shard_names

log = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"


def read_json(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """Reads a JSON object, or raises :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {path} does not hold a JSON object")
    return data


def load_torch(path: str | Path) -> dict[str, Any]:
    """Loads a ``torch.save`` file with ``weights_only=True`` (memory-mapped when the file allows).

    A pickle that references anything but tensors and plain containers is refused without running
    it. Memory mapping means a tensor's bytes are read only when it is used, so shards of a 70B model
    can be opened together and merged tensor by tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    mmap = zipfile.is_zipfile(path)
    if not mmap:
        log.warning("%s uses torch's legacy format: it is read into memory instead of memory-mapped", path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        raise CheckpointError(f"{path}: refused to load, it holds more than tensors (weights_only): {first}") from None
    except Exception as exc:  # damaged bytes trip the unpickler anywhere (IndexError, KeyError, ...)
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint: "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def tensors_of(data: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded state dict; any non-tensor value is a :class:`CheckpointError`."""
    bad = sorted(k for k, v in data.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]}")
    return data


def numbered_shards(directory: str | Path, pattern: str) -> list[Path]:
    """The files of ``directory`` matching ``pattern`` (a regex whose group 1 is the shard number and
    optional group 2 the shard count), sorted, checked to be complete: ``0..n-1`` with no gaps."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    found: dict[int, Path] = {}
    totals: set[int] = set()
    regex = re.compile(pattern)
    for path in directory.iterdir():
        match = regex.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
            if regex.groups >= 2 and match.group(2) is not None:
                totals.add(int(match.group(2)))
    if not found:
        raise CheckpointError(f"{directory}: no files named like {pattern!r}")
    if len(totals) > 1:
        raise CheckpointError(f"{directory}: shards disagree on their count: {sorted(totals)}")
    expected = totals.pop() if totals else max(found) + 1
    missing = [i for i in range(expected) if i not in found]
    if missing or len(found) != expected:
        raise CheckpointError(f"{directory}: missing shards {missing} of {expected}")
    return [found[i] for i in range(expected)]


def safetensors_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a Hugging Face-style directory: one ``model.safetensors`` or the
    files named by ``model.safetensors.index.json`` (all of which must exist)."""
    directory = Path(directory)
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        names = index_shard_names(index)
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: missing shards named by the index: {missing}")
        return [directory / n for n in names]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(directory.glob("*.safetensors"))
    if len(others) == 1:
        return others
    raise CheckpointError(f"{directory}: no model.safetensors (nor an index of shards)")


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields ``(name, tensor)`` from safetensors ``files`` one tensor at a time (memory-mapped)."""
    from safetensors import SafetensorError, safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: cannot be read as safetensors: {exc}") from None
