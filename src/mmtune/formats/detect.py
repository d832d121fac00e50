"""Which format a model path holds, recognised from its files, and the :class:`Source` that reads it.

Every place that names a model (``training.init_from``, every ``--model`` option, ``mmtune export`` and
``mmtune convert auto``) goes through :func:`detect_format`; anything unrecognised gets one line naming
what was found and what is accepted. Training checkpoints are read with DCP (``training.checkpoint``);
every other format is opened as a :class:`~mmtune.formats.pipeline.Source` (tensors renamed to mmtune's
keys, read one at a time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from mmtune.errors import CheckpointError
from mmtune.formats.pipeline import Source, Tensors
from mmtune.formats.reading import read_json

FORMATS = {
    "saved": "an mmtune saved-model directory (config.json with \"format\": \"mmtune\")",
    "checkpoint": "an mmtune training run or checkpoint (checkpoints/step_N)",
    "meta": "Meta's LLaMA release (params.json + consolidated.NN.pth)",
    "hf": "a Hugging Face Llama / Mistral / Qwen2 directory (config.json + safetensors)",
    "llava": "a Hugging Face LlavaForConditionalGeneration directory (config.json + safetensors)",
    "accessory": "a LLaMA2-Accessory checkpoint (consolidated.NN-of-MM.model.pth)",
}
"""Every accepted format and how it is recognised."""

HF_DECODERS = ("llama", "mistral", "qwen2")
"""``model_type`` values of Hugging Face decoders read as ``hf``."""


def accepted() -> str:
    """The accepted formats in one short phrase (for error messages)."""
    return ("an mmtune saved model or training run, Meta's release, a Hugging Face Llama / Mistral / Qwen2 or "
            "LLaVA directory, or a LLaMA2-Accessory checkpoint (docs/checkpoints.md)")


def _found(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")
    return shown or "an empty directory"


def _hf_kind(path: Path) -> Optional[str]:
    data = read_json(path / "config.json", "config.json")
    if data.get("format") == "mmtune":
        return "saved"
    model_type = data.get("model_type")
    if model_type == "llava":
        return "llava"
    if model_type in HF_DECODERS:
        return "hf"
    raise CheckpointError(f"{path}: config.json has model_type {model_type!r}; accepted: {accepted()}")


def detect_format(path: str | Path) -> str:
    """The key of :data:`FORMATS` that ``path`` holds; CheckpointError naming what was found otherwise."""
    from mmtune.training.checkpoint import is_checkpoint, list_checkpoints

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory (accepted: {accepted()})")
    if not path.is_dir():
        raise CheckpointError(f"{path}: a file, not a model directory (accepted: {accepted()})")
    if is_checkpoint(path) or list_checkpoints(path):
        return "checkpoint"
    if any(path.glob("consolidated.*-of-*.model.pth")):
        return "accessory"
    if (path / "params.json").is_file() and any(path.glob("consolidated.*.pth")):
        return "meta"
    if (path / "config.json").is_file():
        return _hf_kind(path)
    raise CheckpointError(f"{path}: found {_found(path)}; accepted: {accepted()}")


def saved_source(directory: str | Path) -> Source:
    """A :class:`Source` over a saved-model directory (its keys are already mmtune's)."""
    from mmtune.models.io import read_sections
    from mmtune.models.weights import WeightsReader

    directory = Path(directory)
    model_cfg, vision_cfg, connector_cfg, _ = read_sections(directory)
    reader = WeightsReader.open(directory)

    def tensors(shapes: dict[str, torch.Size]) -> Tensors:
        yield from reader.tensors()

    return Source(model=model_cfg, vision=vision_cfg, connector=connector_cfg, tensors=tensors,
                  tokenizer=directory, description=f"mmtune saved model {directory}")


def open_source(path: str | Path, tokenizer: Optional[str | Path] = None) -> Source:
    """The :class:`Source` of any format but a training checkpoint (see :func:`detect_format`)."""
    from mmtune.formats.convert_accessory import accessory_source
    from mmtune.formats.convert_hf import hf_source
    from mmtune.formats.convert_meta import meta_source

    path = Path(path)
    kind = detect_format(path)
    if kind == "saved":
        return saved_source(path)
    if kind == "meta":
        return meta_source(path / "params.json", path, tokenizer)
    if kind == "hf":
        return hf_source(path)
    if kind == "accessory":
        return accessory_source(path, tokenizer=tokenizer)
    if kind == "llava":
        from mmtune.formats.convert_llava import llava_source

        return llava_source(path)
    raise CheckpointError(f"{path}: a training checkpoint; read it with training.checkpoint, not as a source")
