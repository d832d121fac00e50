"""Mixtures: which sources a stage reads, and in what seeded order.

Public API:

* :func:`read_mixture` ``(path) -> list[SourceConfig]``: a YAML file holding a list of sources (or a
  mapping with a ``sources`` list), with the fields of ``data.sources``; relative ``path`` and
  ``image_root`` values resolve against the YAML file's folder.
* :func:`open_sources` ``(data_cfg) -> list[Source]``: ``data.sources`` plus the mixture, opened, with
  unique names (a repeated name gets ``#2``, ``#3``, ...).
* :func:`epoch_order` ``(sizes, weights, seed, epoch) -> (source_ids, indices)``: the global order of one
  epoch over sources of known size. ``weight`` multiplies a source's share: each epoch draws
  ``round(weight * size)`` of its entries (all of them once for 1.0, a fresh random half for 0.5, every
  entry twice for 2.0), and all draws are shuffled together with an RNG seeded by ``(seed, epoch)``.
* :func:`interleave` ``(streams, weights, rng, stops=None, live=None)``: for streamed sources: the next item comes
  from a source drawn with probability proportional to its weight among the sources not yet exhausted;
  the interleaving ends when a stream marked in ``stops`` runs out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Optional, Sequence, TypeVar

import numpy as np
import yaml

from mmtune.config import DataConfig, SourceConfig, build
from mmtune.data.sources import Source, open_source
from mmtune.data.sources.paths import is_remote
from mmtune.errors import ConfigError

T = TypeVar("T")


def _resolve(value: str, folder: Path) -> str:
    return value if is_remote(value) or Path(value).is_absolute() else str(folder / value)


def read_mixture(path: str | Path) -> list[SourceConfig]:
    """The sources listed in mixture file ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("data.mixture", str(path), "an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError("data.mixture", str(path), "valid YAML") from None
    if isinstance(data, dict):
        data = data.get("sources")
    if not isinstance(data, list) or not data:
        raise ConfigError("data.mixture", str(path), "a YAML list of sources (or a mapping with 'sources')")
    out = []
    for i, item in enumerate(data):
        where = f"data.mixture[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, item, "a mapping of source fields")
        source = build(SourceConfig, item, where)
        source.check(where)
        source.path = "::".join(_resolve(p, path.parent) for p in source.path.split("::"))
        if source.image_root is not None:
            source.image_root = _resolve(source.image_root, path.parent)
        out.append(source)
    return out


def open_sources(data: DataConfig) -> list[Source]:
    """Every source of the stage, opened (see the module docstring)."""
    configs = [(f"data.sources[{i}]", s) for i, s in enumerate(data.sources)]
    if data.mixture:
        configs += [(f"data.mixture[{i}]", s) for i, s in enumerate(read_mixture(data.mixture))]
    if not configs:
        raise ConfigError("data.sources", [], "at least one source (or a data.mixture file)")
    sources: list[Source] = []
    seen: dict[str, int] = {}
    for where, cfg in configs:
        source = open_source(cfg, default_root=data.image_root, where=where)
        seen[source.name] = seen.get(source.name, 0) + 1
        if seen[source.name] > 1:
            source.name = f"{source.name}#{seen[source.name]}"
            source.opts = dataclasses.replace(source.opts, source=source.name)
        sources.append(source)
    return sources


def _draws(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` entries of ``range(size)``: whole permutations, then a random part of one more."""
    full, rest = divmod(count, size)
    parts = [rng.permutation(size) for _ in range(full)]
    parts.append(rng.permutation(size)[:rest])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def epoch_order(sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(source id, entry index) of every sample of ``epoch``, in order (see the module docstring)."""
    rng = np.random.default_rng([seed, epoch])
    ids, indices = [], []
    for s, (size, weight) in enumerate(zip(sizes, weights)):
        if size == 0:
            continue
        picked = _draws(size, max(1, round(weight * size)), rng)
        ids.append(np.full(len(picked), s, dtype=np.int64))
        indices.append(picked)
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    source_ids, entry_ids = np.concatenate(ids), np.concatenate(indices)
    perm = rng.permutation(len(source_ids))
    return source_ids[perm], entry_ids[perm]


def interleave(streams: Sequence[Iterator[T]], weights: Sequence[float], rng: np.random.Generator,
               stops: Optional[Sequence[bool]] = None, live: Optional[list[int]] = None) -> Iterator[T]:
    """Items of ``streams``, each next one from a live stream drawn by weight (see the module docstring);
    when a stream marked in ``stops`` runs out, the interleaving ends. ``live``: the streams still drawn
    (updated in place; default: all)."""
    live = list(range(len(streams))) if live is None else live
    while live:
        w = np.array([weights[i] for i in live], dtype=np.float64)
        pick = live[int(rng.choice(len(live), p=w / w.sum()))]
        try:
            yield next(streams[pick])
        except StopIteration:
            if stops is not None and stops[pick]:
                return
            live.remove(pick)
