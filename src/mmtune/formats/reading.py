"""Safe readers for foreign checkpoint files: ``torch.load(weights_only=True)``, JSON, numbered shards.

Every failure a user can cause (a missing file, a pickle that would run code, a truncated file, a gap in
numbered shards) becomes a :class:`CheckpointError` saying which file and what is wrong. Safetensors files
(saved models, Hugging Face directories) are read by :mod:`mmtune.models.weights`.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mmtune.errors import CheckpointError

log = logging.getLogger(__name__)


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
