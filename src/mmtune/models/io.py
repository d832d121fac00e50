"""The saved-model directory every ``--model DIR`` option takes.

Layout: ``config.json`` (``format``, ``format_version``, the ``model`` / ``vision`` / ``connector``
sections with the tower's resolved transformers config so no other directory is needed, and
``image_token_id``), ``model.safetensors`` or ``model-0000N-of-0000M.safetensors`` shards plus
``model.safetensors.index.json`` (the Hugging Face layout), the tokenizer files and a ``README.md``
model card. The files are read and written by :mod:`mmtune.models.weights` (safetensors only, never
pickles); this module builds and fills the model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig, build
from mmtune.errors import CheckpointError, ConfigError
from mmtune.models.connectors import build_connector
from mmtune.models.vision import VisionTower, build_tower, saved_vision_config
from mmtune.models.vlm import VisionLanguageModel
from mmtune.models.weights import (
    DEFAULT_SHARD_BYTES,
    ShardedWriter,
    check_state_dict,
    model_config_dict,
    read_model_config,
    read_weights,
    write_model_config,
)

if TYPE_CHECKING:
    from mmtune.models.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TIED_OUTPUT = "llm.output.weight"
"""The output matrix a model with ``tie_embeddings`` shares with its embedding (never saved)."""


def saved_config(model_cfg: ModelConfig, vision_cfg: VisionConfig, connector_cfg: ConnectorConfig,
                 image_token_id: int, tower: Optional[VisionTower]) -> dict[str, Any]:
    """The ``config.json`` of a saved-model directory for these configs; ``tower`` (built from
    ``vision_cfg``, on any device, None for text-only) supplies the resolved transformers config."""
    return model_config_dict(image_token_id, asdict(model_cfg), saved_vision_config(vision_cfg, tower),
                             asdict(connector_cfg))


def _default_card(model: VisionLanguageModel) -> str:
    parts = {name: getattr(model, name) for name in ("llm", "vision", "connector")}
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items() if m is not None}
    rows = "\n".join(f"| {name} | {n:,} |" for name, n in counts.items())
    cfg = model.model_cfg
    return (f"# mmtune model\n\nA LLaMA-family decoder (dim {cfg.dim}, {cfg.n_layers} layers, vocabulary "
            f"{cfg.vocab_size}) with vision tower `{model.vision_cfg.kind}` and connector "
            f"`{model.connector_cfg.kind if model.vision is not None else 'none'}`; "
            f"{model.num_image_tokens} positions per image (placeholder id {model.image_token_id}).\n\n"
            f"| part | parameters |\n|---|---|\n{rows}\n\n"
            "Load it with `mmtune.load_model(DIR)` and `mmtune.load_tokenizer(DIR)`, or chat with "
            "`mmtune chat --model DIR`.\n")


def save_model(model: VisionLanguageModel, directory: str | Path, tokenizer: Optional["Tokenizer"] = None,
               card: Optional[str] = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
               state_dict: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Writes ``model`` as a saved-model directory and returns its path.

    ``state_dict`` replaces ``model.state_dict()`` when given (a full state dict gathered from a sharded
    model on rank 0); ``card`` replaces the generated README.md.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tied = TIED_OUTPUT if model.model_cfg.tie_embeddings else None
    writer = ShardedWriter(directory, max_shard_bytes, sorted_index=False)
    for key, tensor in (model.state_dict() if state_dict is None else state_dict).items():
        if key != tied:
            writer.add(key, tensor)
    writer.close()
    write_model_config(directory, saved_config(model.model_cfg, model.vision_cfg, model.connector_cfg,
                                               model.image_token_id, model.vision))
    if tokenizer is not None:
        tokenizer.save(directory)
    (directory / "README.md").write_text(card if card is not None else _default_card(model))
    log.info("saved model to %s", directory)
    return directory


def read_sections(directory: str | Path) -> tuple[ModelConfig, VisionConfig, ConnectorConfig, int]:
    """The checked ``model``, ``vision`` and ``connector`` sections and ``image_token_id`` of a saved-model
    directory's ``config.json`` (no weights are read)."""
    data = read_model_config(directory)
    try:
        model_cfg, vision_cfg, connector_cfg = (build(cls, data[key], key) for cls, key in
                                                ((ModelConfig, "model"), (VisionConfig, "vision"),
                                                 (ConnectorConfig, "connector")))
        model_cfg.check("model")
        vision_cfg.check("vision")
        connector_cfg.check("connector")
    except ConfigError as exc:
        raise CheckpointError(f"{Path(directory) / 'config.json'}: {exc}") from None
    return model_cfg, vision_cfg, connector_cfg, int(data["image_token_id"])


def load_model(directory: str | Path, device: torch.device | str = "cpu",
               dtype: Optional[torch.dtype] = None) -> VisionLanguageModel:
    """Reads a saved-model directory into a :class:`VisionLanguageModel` in eval mode.

    The decoder is built on the meta device and takes the saved tensors directly; the tower and
    connector are built normally (their non-persistent buffers need real values). ``dtype`` None keeps
    the saved dtype.
    """
    *cfgs, image_token_id = read_sections(directory)
    with torch.device("meta"):
        model = VisionLanguageModel(*cfgs, image_token_id=image_token_id)
    if model.vision is not None:
        model.vision = build_tower(cfgs[1])
        model.connector = build_connector(cfgs[2], cfgs[1].kind, model.vision.hidden_size, cfgs[0].dim,
                                          model.vision.num_tokens)
    weights = read_weights(directory)
    tied = (TIED_OUTPUT,) if cfgs[0].tie_embeddings else ()
    check_state_dict(model, weights, str(directory), allowed_missing=tied)
    model.load_state_dict(weights, strict=False, assign=True)
    if tied:
        model.llm.output.weight = model.llm.tok_embeddings.weight
    model.llm.init_buffers(torch.device("cpu"))
    model.to(device=device, dtype=dtype)
    return model.eval()


def load_tokenizer(directory: str | Path) -> "Tokenizer":
    """The tokenizer saved in a model directory (or any tokenizer directory)."""
    from mmtune.models.tokenizer import Tokenizer

    return Tokenizer.from_path(directory)
