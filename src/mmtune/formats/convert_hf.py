"""Hugging Face Llama / Mistral / Qwen2 directories (``config.json`` + safetensors) -> mmtune.

One ``model.safetensors`` or shards named by ``model.safetensors.index.json``; tensors are read one
at a time, renamed and un-permuted (q/k rows back to Meta's interleaved RoPE pairs) by
:mod:`mmtune.models.adapters.hf_llama`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmtune.config import ConnectorConfig, VisionConfig
from mmtune.formats.pipeline import Source, Tensors, renamed
from mmtune.formats.reading import read_json
from mmtune.models.adapters.hf_llama import from_hf_config, from_hf_state_dict
from mmtune.models.weights import iter_safetensors, safetensors_files


def hf_source(model_dir: str | Path) -> Source:
    """A :class:`Source` over a Hugging Face Llama-family directory (tokenizer files included)."""
    model_dir = Path(model_dir)
    cfg = from_hf_config(read_json(model_dir / "config.json", "Hugging Face config.json"))
    files = safetensors_files(model_dir)

    def llm_keys(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"llm." + k: v for k, v in from_hf_state_dict({name: tensor}, cfg).items()}

    def tensors(shapes: dict[str, torch.Size]) -> Tensors:
        yield from renamed(iter_safetensors(files), llm_keys, cfg.tie_embeddings)

    return Source(model=cfg, vision=VisionConfig(kind="none"), connector=ConnectorConfig(),
                  tensors=tensors, tokenizer=model_dir,
                  description=f"Hugging Face {cfg.n_layers}-layer decoder from {model_dir}")
