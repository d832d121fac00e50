"""The lengths pass of map mode: what every entry of a source becomes once encoded (its length in tokens,
or bad, or skipped), computed once and cached on disk, so the packing plan of the global row sequence
needs no tokenisation on the ranks (see :mod:`mmtune.data.mapped`).

Public API:

* :class:`Lengths` (``lengths``: int32 per entry, :data:`BAD` or :data:`SKIPPED` for records that give
  no sample; ``truncated``; ``images``; ``bad``: entry -> (location, reason); ``outcome(index, source)``).
* :class:`LengthStore` ``(sources, encoder, seed, cache_dir)``: ``store.get(s, epoch) -> Lengths`` for
  source ``s``; computed with the run's own encoder (:func:`lengths_pass`, a progress bar) the first time,
  then read from ``{cache_dir}/{key}.npz``. The key hashes the source's files (their bytes; a URL by its
  name), its kind and options, the encoder's settings and the tokenizer's fingerprint; for caption
  manifests (whose caption lists give a fresh choice every epoch) the epoch and seed too. Processes that
  need the same lengths at the same time compute them once (a lock file). ``store.computed`` counts the
  passes this process ran.
* :func:`default_cache_dir` ``()``: ``$XDG_CACHE_HOME/mmtune/lengths`` (``~/.cache/mmtune/lengths``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from mmtune.data.badrecords import BadRecord
from mmtune.data.encode import RecordEncoder, Skipped
from mmtune.data.sources import MapSource
from mmtune.data.sources.paths import cache_root, is_remote
from mmtune.errors import DataError

BAD = -2
"""Length code of an entry that is a bad record."""
SKIPPED = -1
"""Length code of an entry the encoder skips (too long, nothing supervised, image without a tower)."""
VERSION = 2


def default_cache_dir() -> str:
    """Where lengths are cached when ``data.cache_dir`` is unset."""
    return str(cache_root() / "lengths")


@dataclass(frozen=True)
class Planned:
    """An entry as the packer sees it when planning: its length, whether it was cut, and which it is."""

    length: int
    truncated: bool
    handle: tuple[int, int]
    """(source id, entry index)."""
    key: str = ""

    def __len__(self) -> int:
        return self.length


@dataclass
class Lengths:
    """What every entry of one source becomes (see the module docstring)."""

    lengths: np.ndarray
    truncated: np.ndarray
    images: np.ndarray
    """Images per entry (what a sample costs the vision tower)."""
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)

    def outcome(self, index: int, source: str, handle: tuple[int, int]) -> Union[Planned, Skipped, BadRecord]:
        """Entry ``index`` as the planner counts it."""
        n = int(self.lengths[index])
        if n == BAD:
            return BadRecord(source, *self.bad[index])
        if n == SKIPPED:
            return Skipped("", source)
        return Planned(n, bool(self.truncated[index]), handle)


def lengths_pass(source: MapSource, encoder: RecordEncoder, epoch: int, seed: int, progress: bool = True) -> Lengths:
    """Encodes every entry of ``source`` once (images are not read), keeping only the outcome."""
    from tqdm import tqdm

    lengths = np.zeros(len(source), dtype=np.int32)
    truncated = np.zeros(len(source), dtype=bool)
    images = np.zeros(len(source), dtype=np.int8)
    bad: dict[int, tuple[str, str]] = {}
    for i in tqdm(range(len(source)), desc=f"lengths of {source.name}", unit="entry", disable=not progress,
                  leave=False):
        item = source.record(i, epoch, seed)
        if isinstance(item, BadRecord):
            lengths[i], bad[i] = BAD, (item.location, item.reason)
            continue
        try:
            out = encoder(item)
        except DataError as exc:
            lengths[i], bad[i] = BAD, (item.extra.get("location", item.key), str(exc))
            continue
        if isinstance(out, Skipped):
            lengths[i] = SKIPPED
        else:
            lengths[i], truncated[i], images[i] = len(out), out.truncated, out.n_images
    return Lengths(lengths, truncated, images, bad)


def _file_hash(path: str) -> str:
    if is_remote(path):
        return path
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _encoder_key(encoder: RecordEncoder) -> dict:
    tokenizer = encoder.tokenizer
    fingerprint = tokenizer.fingerprint() if hasattr(tokenizer, "fingerprint") else repr(tokenizer)
    settings = {f.name: repr(getattr(encoder, f.name)) for f in dataclasses.fields(encoder) if f.name != "tokenizer"}
    return settings | {"tokenizer": fingerprint}


class LengthStore:
    """The lengths of every source of a plan, per epoch where they depend on it (see the module docstring)."""

    def __init__(self, sources: list, encoder: RecordEncoder, seed: int, cache_dir: Optional[str] = None):
        self.sources, self.encoder, self.seed = sources, encoder, seed
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.computed = 0
        """Lengths passes this process ran (the others were read from the cache)."""
        self._keys: dict[int, str] = {}
        self._held: dict[tuple[int, int], Lengths] = {}

    def _varies(self, s: int) -> bool:
        return self.sources[s].kind == "manifest"  # a caption list gives a fresh choice every epoch

    def _base_key(self, s: int) -> str:
        if s not in self._keys:
            source: MapSource = self.sources[s]
            parts = {"version": VERSION, "kind": source.kind, "options": repr(source.opts),
                     "files": [_file_hash(t.path) for t in source.tables], "encoder": _encoder_key(self.encoder)}
            self._keys[s] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
        return self._keys[s]

    def get(self, s: int, epoch: int) -> Lengths:
        """The lengths of source ``s`` in ``epoch``."""
        epoch, seed = (epoch, self.seed) if self._varies(s) else (0, 0)
        if (s, epoch) not in self._held:
            self._held = {k: v for k, v in self._held.items() if k[1] >= epoch}  # keep at most the epochs ahead
            self._held[(s, epoch)] = self._load_or_compute(s, epoch, seed)
        return self._held[(s, epoch)]

    def _load_or_compute(self, s: int, epoch: int, seed: int) -> Lengths:
        key = self._base_key(s) + (f"-e{epoch}-s{seed}" if self._varies(s) else "")
        path = self.cache_dir / f"{key}.npz"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process computes, the others wait and read
            if path.is_file():
                return _read(path)
            lengths = lengths_pass(self.sources[s], self.encoder, epoch, seed)
            self.computed += 1
            _write(path, lengths)
            return lengths


def _write(path: Path, lengths: Lengths) -> None:
    bad = json.dumps({str(k): v for k, v in lengths.bad.items()})
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, lengths=lengths.lengths, truncated=lengths.truncated, images=lengths.images,
             bad=np.array(bad))
    partial.replace(path)


def _read(path: Path) -> Lengths:
    with np.load(path) as data:
        bad = {int(k): tuple(v) for k, v in json.loads(str(data["bad"])).items()}
        return Lengths(data["lengths"], data["truncated"], data["images"], bad)  # type: ignore[arg-type]
