"""A run's starting weights: ``training.init_from`` in any accepted format, the tower from ``vision.path``,
fresh weights for the rest, each rank filling only its own shards (see :mod:`mmtune.formats.loading`).

A training checkpoint (a stage-1 run) is read with DCP, each rank reading its own shards. Any other
format is read tensor by tensor. The config describes the model; where the named model's own description
differs in a value that changes the numerics without changing a shape (RoPE base, norm epsilon, the
tower's feature layer), the run says so in a warning and uses the config's value.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING

from torch import nn

from mmtune.config import Config
from mmtune.errors import CheckpointError
from mmtune.formats.detect import detect_format, open_source
from mmtune.formats.loading import fill_weights
from mmtune.formats.pipeline import Source
from mmtune.training import checkpoint as ckpt

if TYPE_CHECKING:
    from mmtune.models.vlm import VisionLanguageModel

log = logging.getLogger(__name__)

COMPARED = {"model": ("norm_eps", "rope_theta", "rope_scaling", "qkv_bias", "tie_embeddings"),
            "vision": ("kind", "feature_layer"), "connector": ("kind",)}
"""Config fields compared with the named model's (shapes are checked tensor by tensor anyway)."""


def differences(cfg: Config, source: Source) -> list[str]:
    """``section.field (config X, checkpoint Y)`` for each :data:`COMPARED` field that differs; the
    tower and connector only when the named model has a tower."""
    found = []
    for section, fields in COMPARED.items():
        if section != "model" and source.vision.kind == "none":
            continue
        ours, theirs = asdict(getattr(cfg, section)), asdict(getattr(source, section))
        found += [f"{section}.{name} (config {ours[name]!r}, checkpoint {theirs[name]!r})"
                  for name in fields if ours[name] != theirs[name]]
    return found


def initial_weights(cfg: Config, model: nn.Module, plain: "VisionLanguageModel", progress: bool = True) -> None:
    """Fills ``model`` (parallelised, ``to_empty``-ed, buffers rebuilt) with the run's starting weights;
    ``plain`` is the same architecture built unsharded on the meta device."""
    init_from = cfg.training.init_from
    try:
        kind = detect_format(init_from) if init_from else None
    except CheckpointError as exc:
        raise CheckpointError(f"training.init_from: {exc}") from None
    if kind == "checkpoint":
        path = ckpt.resolve_resume(init_from, init_from)
        assert path is not None
        ckpt.load_model_weights(path, model)
        log.info("initialised from training checkpoint %s", path)
        return
    source = open_source(init_from) if init_from else None
    if source is not None:
        for line in differences(cfg, source):
            log.warning("training.init_from %s differs from the config in %s; the config's value is used",
                        init_from, line)
    report = fill_weights(model, plain, source=source, vision_path=cfg.vision.path, seed=cfg.training.seed,
                          progress=progress)
    log.info("initial weights%s: %s", f" from {init_from}" if init_from else "", report.summary())
