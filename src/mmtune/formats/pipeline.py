"""The path every format takes into mmtune: a :class:`Source` of renamed tensors, checked against the
shapes of a ``VisionLanguageModel`` built on the meta device, then written as a saved-model directory
(``models.weights.ShardedWriter``).

A source yields ``(mmtune key, tensor)`` pairs one at a time, so writing streams: at most one output
shard plus one tensor is in memory. Unknown keys, wrong shapes and missing keys are reported together
in one :class:`CheckpointError` per kind, naming the first few offenders and how many there are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig
from mmtune.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

Tensors = Iterator[tuple[str, torch.Tensor]]


@dataclass
class Source:
    """Weights in some format, renamed to mmtune's ``VisionLanguageModel`` keys.

    ``tensors(shapes)`` opens the source and yields ``(key, tensor)`` (``shapes`` is the target model's
    key -> shape map, for sources whose names depend on it); ``droppable`` says which keys the
    target may lack without it being an error (weights the model does not use, such as BLIP-2's text
    branch in old checkpoints); ``tokenizer`` is where the tokenizer files are (None: none shipped).
    """

    model: ModelConfig
    vision: VisionConfig
    connector: ConnectorConfig
    tensors: Callable[[dict[str, torch.Size]], Tensors]
    tokenizer: Optional[Path] = None
    description: str = ""
    droppable: Callable[[str], bool] = field(default=lambda key: False)


def renamed(pairs: Iterable[tuple[str, torch.Tensor]],
            rename: Callable[[str, torch.Tensor], dict[str, torch.Tensor]], tied: bool) -> Tensors:
    """Each ``(name, tensor)`` of a foreign checkpoint as the mmtune ``(key, tensor)`` pairs ``rename``
    gives (none, one, or two for an embedding that also fills a tied output); with ``tied`` a key already
    given is not given again (the output filled from the embedding, then ``lm_head`` itself)."""
    done: set[str] = set()
    for name, tensor in pairs:
        for key, value in rename(name, tensor).items():
            if tied and key in done:
                continue
            done.add(key)
            yield key, value


def _summary(items: list[str], limit: int = 5) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def expected_shapes(source: Source, image_token_id: int) -> dict[str, torch.Size]:
    """Every parameter key of the mmtune model ``source`` describes, with its shape (meta device)."""
    from mmtune.models.vlm import VisionLanguageModel

    with torch.device("meta"):
        model = VisionLanguageModel(source.model, source.vision, source.connector, image_token_id)
    return {k: v.shape for k, v in model.state_dict().items()}


def vision_prefix(shapes: dict[str, torch.Size]) -> str:
    """Where a BLIP-2 tower's transformers names start in the mmtune model (found via ``query_tokens``)."""
    hits = [k for k in shapes if k.endswith("query_tokens")]
    if len(hits) != 1:
        raise CheckpointError("the target model has no BLIP-2 tower (no query_tokens parameter)")
    return hits[0][: -len("query_tokens")]


def _same_but_singletons(have: torch.Size, want: torch.Size) -> bool:
    """Whether two shapes differ only by size-1 dimensions (Accessory's ``(1, 1, dim)`` tokens)."""
    return [d for d in have if d != 1] == [d for d in want if d != 1]


def checked(source: Source, shapes: dict[str, torch.Size], progress: bool = True, complete: bool = True) -> Tensors:
    """The source's tensors reshaped to the target's shapes, refusing unknown keys, mismatched shapes
    and (after the last tensor, when ``complete``) missing keys."""
    unknown: list[str] = []
    mismatched: list[str] = []
    seen: set[str] = set()
    for key, tensor in tqdm(source.tensors(shapes), total=len(shapes), desc="tensors", disable=not progress,
                            unit="t"):
        if key not in shapes:
            if source.droppable(key):
                log.info("dropped %s (not used by the model)", key)
            else:
                unknown.append(key)
            continue
        want = shapes[key]
        if tensor.shape != want:
            if _same_but_singletons(tensor.shape, want):
                tensor = tensor.reshape(want)
            else:
                mismatched.append(f"{key} {tuple(tensor.shape)} != {tuple(want)}")
                continue
        if key in seen:
            raise CheckpointError(f"tensor {key} appears twice in the checkpoint")
        seen.add(key)
        if not unknown and not mismatched:
            yield key, tensor
    if unknown:
        raise CheckpointError(f"unknown keys (not part of this model): {_summary(sorted(unknown))}")
    if mismatched:
        raise CheckpointError(f"shape mismatches (checkpoint != model): {_summary(mismatched)}")
    missing = sorted(set(shapes) - seen)
    if missing and complete:
        raise CheckpointError(f"missing keys (the model needs them): {_summary(missing)}")


def load_tokenizer_for(source: Source, tokenizer_path: Optional[str | Path] = None):  # noqa: ANN201
    """The tokenizer of ``source`` (or ``tokenizer_path``), checked to fit the decoder's vocabulary:
    it may exceed it only by ``<image>``."""
    from mmtune.models.tokenizer import Tokenizer

    path = tokenizer_path or source.tokenizer
    if path is None:
        raise CheckpointError("no tokenizer: pass the tokenizer.model / tokenizer directory of this model")
    tokenizer = Tokenizer.from_path(path)
    try:
        tokenizer.check_fits(source.model.vocab_size)
    except ConfigError:
        raise CheckpointError(f"vocabulary mismatch: the tokenizer at {path} has {len(tokenizer)} tokens but the "
                              f"checkpoint embeds {source.model.vocab_size}") from None
    return tokenizer


def _saved_config(source: Source, image_token_id: int) -> dict:
    """The ``config.json`` of the saved-model directory (the tower is built on the meta device for its
    resolved transformers config)."""
    from mmtune.models.io import saved_config
    from mmtune.models.vision import build_tower

    with torch.device("meta"):
        tower = build_tower(source.vision)
    return saved_config(source.model, source.vision, source.connector, image_token_id, tower)


def check_absent(out: str | Path) -> Path:
    """``out`` as a path, refused when it exists and is not an empty directory."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"output directory {out} exists and is not empty")
    return out


def fresh_output(out: str | Path) -> tuple[Path, Path]:
    """(final directory, temporary directory) for writing ``out``; an existing non-empty ``out`` is
    refused, and a stale temporary directory from an interrupted run is cleared."""
    import shutil

    out = check_absent(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return out, tmp


def finish_output(tmp: Path, out: Path) -> Path:
    """Moves the completed temporary directory into place."""
    if out.exists():
        out.rmdir()
    tmp.replace(out)
    return out


def write_saved_model(source: Source, out: str | Path, tokenizer_path: Optional[str | Path] = None,
                      dtype: Optional[torch.dtype] = None, max_shard_bytes: Optional[int] = None,
                      card: Optional[str] = None) -> Path:
    """Converts ``source`` into the saved-model directory ``out`` (written aside, moved in when complete).

    ``dtype`` casts floating tensors (None keeps the checkpoint's); the weights stream into shards of
    ``max_shard_bytes`` (default 5 GiB).
    """
    from mmtune.formats.card import conversion_card
    from mmtune.models.io import TIED_OUTPUT
    from mmtune.models.weights import DEFAULT_SHARD_BYTES, ShardedWriter, write_model_config

    out, tmp = fresh_output(out)
    tokenizer = load_tokenizer_for(source, tokenizer_path)
    shapes = expected_shapes(source, tokenizer.image_token_id)
    writer = ShardedWriter(tmp, max_shard_bytes or DEFAULT_SHARD_BYTES, dtype=dtype)
    tied = TIED_OUTPUT if source.model.tie_embeddings else None
    n_params = 0
    for key, tensor in checked(source, shapes):
        if key != tied:
            n_params += tensor.numel()
            writer.add(key, tensor)
    writer.close()
    config = _saved_config(source, tokenizer.image_token_id)
    write_model_config(tmp, config)
    tokenizer.save(tmp)
    (tmp / "README.md").write_text(card or conversion_card(config, source.description, n_params))
    log.info("wrote %s (%s parameters)", out, f"{n_params:,}")
    return finish_output(tmp, out)
