"""``training.init_from``: weights from any supported format, detected from the directory's files.

:func:`load_pretrained` returns the state dict under ``VisionLanguageModel`` keys (``llm.*``,
``vision.*``, ``connector.*``) and the config sections the weights fix (``model`` always; ``vision``
and ``connector`` for multimodal formats). The caller builds its model from its own config, checks the
sections agree, and loads the state dict (``strict=False`` for a decoder-only source: the tower and
connector then keep their own initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmtune.checkpoints.pipeline import collect, load_tokenizer_for
from mmtune.checkpoints.reading import read_json
from mmtune.errors import CheckpointError

FORMAT_NAMES = ("mmtune", "training-checkpoint", "meta", "hf", "accessory")


@dataclass
class Pretrained:
    """Weights to start from and what they fix about the model."""

    state_dict: dict[str, torch.Tensor]
    sections: dict[str, Any] = field(default_factory=dict)
    """``model`` (:class:`ModelConfig`), and ``vision`` / ``connector`` when the source has them."""
    format: str = ""
    """One of :data:`FORMAT_NAMES`."""
    image_token_id: int = -1


def detect_format(path: Path) -> str:
    """Which format directory ``path`` holds (see :data:`FORMAT_NAMES`)."""
    from mmtune.training.checkpoint import is_checkpoint, list_checkpoints

    if not path.is_dir():
        raise CheckpointError(f"init_from {path}: not a directory")
    config = path / "config.json"
    if config.is_file() and read_json(config).get("format") == "mmtune":
        return "mmtune"
    if is_checkpoint(path) or list_checkpoints(path):
        return "training-checkpoint"
    if any(path.glob("consolidated.*-of-*.model.pth")):
        return "accessory"
    if any(path.glob("consolidated.*.pth")) and (path / "params.json").is_file():
        return "meta"
    if config.is_file() and any(path.glob("*.safetensors")):
        return "hf"
    raise CheckpointError(f"init_from {path}: not an mmtune model, training checkpoint, Meta release "
                          "(params.json + consolidated.NN.pth), LLaMA2-Accessory checkpoint or Hugging Face directory")


def _from_model(directory: Path, kind: str) -> Pretrained:
    from mmtune.models.io import load_model

    model = load_model(directory)
    sections = {"model": model.model_cfg, "vision": model.vision_cfg, "connector": model.connector_cfg}
    return Pretrained(dict(model.state_dict()), sections, kind, model.image_token_id)


def load_pretrained(path: str | Path) -> Pretrained:
    """Reads weights from a saved-model directory, a training checkpoint (or run directory), Meta's
    release, a LLaMA2-Accessory checkpoint or a Hugging Face Llama/Mistral/Qwen2 directory."""
    import tempfile

    from mmtune.checkpoints.convert_accessory import accessory_source
    from mmtune.checkpoints.convert_hf import hf_source
    from mmtune.checkpoints.convert_meta import meta_source
    from mmtune.training.checkpoint import export_checkpoint

    path = Path(path)
    kind = detect_format(path)
    if kind == "mmtune":
        return _from_model(path, kind)
    if kind == "training-checkpoint":
        with tempfile.TemporaryDirectory() as tmp:
            return _from_model(export_checkpoint(path, Path(tmp) / "model"), kind)
    if kind == "meta":
        source = meta_source(path / "params.json", path)
    elif kind == "hf":
        source = hf_source(path)
    else:
        source = accessory_source(path)
    image_token_id = load_tokenizer_for(source).image_token_id if source.tokenizer else source.model.vocab_size
    sections: dict[str, Any] = {"model": source.model}
    if source.vision.kind != "none":
        sections.update(vision=source.vision, connector=source.connector)
    return Pretrained(collect(source, image_token_id), sections, kind, image_token_id)
