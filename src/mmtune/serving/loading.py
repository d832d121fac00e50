"""Loading a saved-model directory for inference: model, tokenizer, image transform, prompt layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from mmtune.config import ConnectorConfig
from mmtune.data.images import ImageTransform
from mmtune.models.vision import resolve_image_settings
from mmtune.serving.prompt import ImagePosition, PromptRenderer


def image_position(connector: ConnectorConfig) -> ImagePosition:
    """``after_bos`` for the qformer connector (LLaMA2-Accessory), ``placeholder`` for mlp (LLaVA)."""
    return "after_bos" if connector.kind == "qformer" else "placeholder"


def load_for_serving(model_dir: str | Path, *, device: str = "cpu", dtype: Optional[torch.dtype] = None,
                     max_image_pixels: Optional[int] = None) -> tuple[Any, Any, Optional[ImageTransform], PromptRenderer]:
    """(model in eval mode, tokenizer, image transform or None for text-only models, prompt renderer)."""
    from mmtune.models.io import load_model, load_tokenizer

    model = load_model(model_dir, device=device, dtype=dtype)
    tokenizer = load_tokenizer(model_dir)
    transform = None
    if model.vision is not None:
        settings = resolve_image_settings(model.vision_cfg)
        transform = ImageTransform.from_settings(settings)
        if max_image_pixels is not None:
            transform = ImageTransform(transform.size, transform.mean, transform.std, transform.resize,
                                       max_image_pixels)
    renderer = PromptRenderer(tokenizer, model.num_image_tokens, image_position(model.connector_cfg))
    return model, tokenizer, transform, renderer
