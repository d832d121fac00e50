"""Weights from any accepted format into a model built on the meta device, shard by shard.

Training (``training.init_from``), the inference engine (every ``--model``) and tensor-parallel serving
all start the same way: build the model on the meta device, apply the parallel plan, ``to_empty`` (each
rank allocates only its own shards), rebuild the non-persistent buffers, then :func:`fill_weights`:

1. the tensors of the named model, read one at a time in its own format (``formats.detect``), each rank
   keeping its piece (``distributed.materialize.copy_full``);
2. the tower from ``vision.path`` when the named model has none;
3. fresh weights (``models.init``, one unit at a time, seeded per unit) for what nobody provided, where
   fresh weights are allowed (a new connector in stage 1), and a CheckpointError where they are not.

A part (``llm``, ``vision``, ``connector``) that a source provides must be complete. Training checkpoints
are read with DCP instead (each rank reads its shards), see :func:`load_checkpoint_model`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from mmtune.distributed.materialize import copy_full, state_targets
from mmtune.errors import CheckpointError
from mmtune.formats.detect import detect_format, open_source
from mmtune.formats.pipeline import Source, checked, load_tokenizer_for

if TYPE_CHECKING:
    from mmtune.models.tokenizer import Tokenizer
    from mmtune.models.vlm import VisionLanguageModel

log = logging.getLogger(__name__)

Prepare = Callable[[nn.Module], None]
"""Applies a parallel plan to a model on the meta device (tensor parallel, FSDP), in place."""


def _part(key: str) -> str:
    return key.split(".", 1)[0]


def _aliases(targets: dict[str, torch.Tensor]) -> dict[str, str]:
    """Tied names -> the first name of the same tensor (``llm.output.weight`` -> the embedding)."""
    first: dict[int, str] = {}
    aliases = {}
    for key, value in targets.items():
        if first.setdefault(id(value), key) != key:
            aliases[key] = first[id(value)]
    return aliases


def _shapes(targets: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in targets.items()}  # a DTensor's shape is the full shape


def _load_source(targets: dict[str, torch.Tensor], source: Source, progress: bool) -> set[str]:
    """Copies every tensor of ``source`` into ``targets``; the keys loaded (tied names included)."""
    aliases = _aliases(targets)
    loaded = set()
    for key, tensor in checked(source, _shapes(targets), progress=progress, complete=False):
        copy_full(targets[key], tensor)
        loaded.add(aliases.get(key, key))
    loaded |= {alias for alias, first in aliases.items() if first in loaded}
    parts = {_part(k) for k in loaded}
    missing = sorted(k for k in targets if _part(k) in parts and k not in loaded)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"{source.description}: the {', '.join(sorted({_part(k) for k in missing}))} part is "
                              f"incomplete; missing {', '.join(missing[:5])}{more}")
    return loaded


def _load_tower(targets: dict[str, torch.Tensor], plain: "VisionLanguageModel", path: str) -> set[str]:
    """Copies the tower's weights from the transformers directory ``path`` (``vision.path``)."""
    assert plain.vision is not None
    wanted = {k for k in targets if _part(k) == "vision"}
    loaded = set()
    for name, tensor in plain.vision.pretrained_tensors(path):
        key = f"vision.{name}"
        if key not in wanted:
            raise CheckpointError(f"vision.path {path}: unexpected key {name}")
        if tensor.shape != targets[key].shape:
            raise CheckpointError(f"vision.path {path}: {name} has shape {list(tensor.shape)}, the tower "
                                  f"{list(targets[key].shape)}")
        copy_full(targets[key], tensor)
        loaded.add(key)
    if wanted - loaded:
        raise CheckpointError(f"vision.path {path}: missing tower weights {sorted(wanted - loaded)[:5]}")
    return loaded


def _fill_fresh(targets: dict[str, torch.Tensor], plain: "VisionLanguageModel", keys: set[str],
                seed: int) -> list[str]:
    """Fresh weights for the units holding ``keys``; returns the units."""
    from mmtune.models.init import fresh_unit, init_units, unit_of

    all_units = init_units(plain)
    units = sorted({unit_of(k, all_units) for k in keys}, key=all_units.index)
    for unit in units:
        for key, value in fresh_unit(plain, unit, seed).items():
            copy_full(targets[key], value)
    return units


@dataclass
class FillReport:
    """Where a model's weights came from."""

    loaded: set[str]
    """Keys read from the named model."""
    tower: set[str]
    """Keys read from ``vision.path``."""
    fresh_units: list[str]
    """Units initialised fresh (``models.init``)."""

    def summary(self) -> str:
        parts = sorted({_part(k) for k in self.loaded})
        fresh = sorted({_part(u) for u in self.fresh_units})
        return (f"read: {', '.join(parts) or 'nothing'}; tower from vision.path: {'yes' if self.tower else 'no'}; "
                f"fresh: {', '.join(fresh) or 'nothing'}")


def fill_weights(model: nn.Module, plain: "VisionLanguageModel", *, source: Optional[Source] = None,
                 vision_path: Optional[str] = None, seed: int = 0, allow_fresh: bool = True,
                 progress: bool = True) -> FillReport:
    """Fills ``model`` (parallelised and ``to_empty``-ed; ``plain`` is the same architecture unsharded,
    on any device, the meta device included) as the module docstring describes."""
    targets = state_targets(model)
    loaded = _load_source(targets, source, progress) if source is not None else set()
    tower: set[str] = set()
    if vision_path and plain.vision is not None and not any(_part(k) == "vision" for k in loaded):
        tower = _load_tower(targets, plain, vision_path)
    rest = set(targets) - loaded - tower
    if rest and not allow_fresh:
        where = source.description if source is not None else "the model"
        raise CheckpointError(f"{where}: holds no weights for {', '.join(sorted({_part(k) for k in rest}))}")
    return FillReport(loaded, tower, _fill_fresh(targets, plain, rest, seed) if rest else [])


# ---------------------------------------------------------------------- whole models, for inference


@dataclass
class LoadedModel:
    """A model read from any format, with its tokenizer and where it came from."""

    model: "VisionLanguageModel"
    tokenizer: Optional["Tokenizer"]
    format: str


def _meta_model(model_cfg, vision_cfg, connector_cfg, image_token_id: int,  # noqa: ANN001
                dtype: Optional[torch.dtype]) -> "VisionLanguageModel":
    from mmtune.models.vlm import VisionLanguageModel

    with torch.device("meta"):
        model = VisionLanguageModel(model_cfg, vision_cfg, connector_cfg, image_token_id)
    return model.to(dtype=dtype) if dtype is not None else model


def _materialised(model: "VisionLanguageModel", device: torch.device | str, prepare: Optional[Prepare]) -> None:
    if prepare is not None:
        prepare(model)
    model.to_empty(device=device)
    model.init_buffers(device)


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None,
                          prepare: Optional[Prepare] = None) -> LoadedModel:
    """The model of a training checkpoint (or a run directory's newest one), read with DCP."""
    from mmtune.config import load_config
    from mmtune.training import checkpoint as ckpt

    found = ckpt.resolve_resume(str(path), path)
    assert found is not None
    cfg = load_config(found / "config.yaml")
    tokenizer = ckpt.checkpoint_tokenizer(found, cfg)
    model = _meta_model(cfg.model, cfg.vision, cfg.connector, ckpt.read_info(found)["image_token_id"], dtype)
    _materialised(model, device, prepare)
    if prepare is None:
        ckpt.load_plain(found, model)
    else:
        ckpt.load_model_weights(found, model)
    return LoadedModel(model.eval(), tokenizer, "checkpoint")


def load_any(path: str | Path, device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None,
             prepare: Optional[Prepare] = None, progress: bool = False, tokenizer: bool = True) -> LoadedModel:
    """The model at ``path`` in any accepted format (``formats.detect.FORMATS``), built on the meta
    device, parallelised by ``prepare`` (None: one process), then filled tensor by tensor on ``device``
    in ``dtype`` (None keeps fp32). ``tokenizer`` False lets a saved model without tokenizer files load
    (``LoadedModel.tokenizer`` is then None)."""
    kind = detect_format(path)
    if kind == "checkpoint":
        return load_checkpoint_model(path, device, dtype, prepare)
    source = open_source(path)
    if kind == "saved":
        from mmtune.models.io import read_sections

        image_token_id = read_sections(path)[3]
        text = load_tokenizer_for(source) if tokenizer else None
    else:
        text = load_tokenizer_for(source)
        image_token_id = text.image_token_id
    model = _meta_model(source.model, source.vision, source.connector, image_token_id, dtype)
    plain = _meta_model(source.model, source.vision, source.connector, image_token_id, None)
    _materialised(model, device, prepare)
    fill_weights(model, plain, source=source, allow_fresh=False, progress=progress)
    log.info("loaded %s (%s)", path, source.description)
    return LoadedModel(model.eval(), text, kind)
