"""Loading a saved-model directory for inference: model, tokenizer, image transform, prompt layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from mmtune.config import ConnectorConfig, VisionConfig, build
from mmtune.data.images import ImageTransform
from mmtune.errors import CheckpointError
from mmtune.models.vision import resolve_image_settings
from mmtune.serving.prompt import ImagePosition, PromptRenderer


def read_sections(model_dir: str | Path) -> tuple[VisionConfig, ConnectorConfig]:
    """The ``vision`` and ``connector`` sections of a saved model's ``config.json``."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no config.json; expected a saved-model directory")
    data = json.loads(path.read_text())
    return build(VisionConfig, data.get("vision") or {}, "vision"), build(ConnectorConfig, data.get("connector") or {}, "connector")


def image_position(connector: ConnectorConfig) -> ImagePosition:
    """``after_bos`` for the qformer connector (LLaMA2-Accessory), ``placeholder`` for mlp (LLaVA)."""
    return "after_bos" if connector.kind == "qformer" else "placeholder"


def load_for_serving(model_dir: str | Path, *, device: str = "cpu", dtype: Optional[torch.dtype] = None,
                     max_image_pixels: Optional[int] = None) -> tuple[Any, Any, Optional[ImageTransform], PromptRenderer]:
    """(model in eval mode, tokenizer, image transform or None for text-only models, prompt renderer)."""
    from mmtune.models.io import load_model, load_tokenizer

    vision, connector = read_sections(model_dir)
    model = load_model(model_dir, device=device, dtype=dtype).eval()
    tokenizer = load_tokenizer(model_dir)
    transform = None
    if vision.kind != "none":
        settings = resolve_image_settings(vision)
        transform = ImageTransform.from_settings(settings)
        if max_image_pixels is not None:
            transform = ImageTransform(transform.size, transform.mean, transform.std, transform.resize, max_image_pixels)
    renderer = PromptRenderer(tokenizer, int(getattr(model, "num_image_tokens", 0) or 0), image_position(connector))
    return model, tokenizer, transform, renderer
