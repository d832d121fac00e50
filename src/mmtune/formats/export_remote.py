"""mmtune ``qformer`` models (LLaMA2-Accessory's ``llama_qformerv2``) -> a self-contained transformers model.

transformers has no class for this architecture, so the export carries its own:
``modeling_mmtune_qformer.py`` (package data, :mod:`mmtune.formats.remote`; it imports only torch and
transformers) is copied into the directory and named by ``auto_map`` in ``config.json`` (``AutoConfig``,
``AutoModelForCausalLM``) and ``processor_config.json`` (``AutoProcessor``). The directory holds:

- ``config.json``: the Llama decoder's config, ``model_type: mmtune_qformer``, ``blip2_config`` (the
  tower's ``vision_config``, ``qformer_config``, ``num_query_tokens``), ``image_token_id``, ``dtype``;
- safetensors: the decoder under transformers' Llama names (``model.*``, ``lm_head.weight``), the tower
  under BLIP-2's (``vision_model.*``, ``query_tokens``, ``qformer.*``), the connector as ``proj.*``,
  ``start_img``, ``end_img``; written tensor by tensor, cast to ``--dtype`` when given;
- the tokenizer with ``<image>`` and the chat template; ``preprocessor_config.json`` (the image processor
  of the model's ``vision.resize``, :mod:`mmtune.formats.hf_images`); ``processor_config.json``;
  ``generation_config.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from mmtune.errors import CheckpointError
from mmtune.formats.pipeline import finish_output, fresh_output

REMOTE = Path(__file__).parent / "remote" / "modeling_mmtune_qformer.py"
MODULE = REMOTE.stem


def _rename(cfg_model: object) -> object:
    """mmtune key -> the export's names (decoder through the Llama adapter)."""
    from mmtune.models.adapters.hf_llama import to_hf_state_dict

    def rename(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        part, _, rest = key.partition(".")
        if part == "llm":
            return to_hf_state_dict({rest: tensor}, cfg_model)  # type: ignore[arg-type]
        if part in ("vision", "connector"):
            return {rest: tensor}
        raise CheckpointError(f"unexpected tensor {key!r} in a qformer model")

    return rename


def export_qformer(model_dir: str | Path, out: str | Path, dtype: Optional[torch.dtype] = None,
                   template: str = "alpaca") -> Path:
    """Writes the saved ``qformer`` model ``model_dir`` as a transformers remote-code directory (see the
    module docstring), tensor by tensor; ``template`` is the chat template's mmtune template."""
    from mmtune.formats.chat_templates import chat_template
    from mmtune.formats.export_hf import saved_tensors, write_generation_config, write_image_processor, write_weights
    from mmtune.models.adapters.hf_llama import to_hf_config
    from mmtune.models.io import load_tokenizer, read_sections
    from mmtune.models.vlm import image_tokens_per_image

    model_cfg, vision_cfg, connector_cfg, image_token_id = read_sections(model_dir)
    if connector_cfg.kind != "qformer":
        raise CheckpointError(f"{model_dir}: connector {connector_cfg.kind!r} is not qformer")
    tokenizer = load_tokenizer(model_dir)
    template_text = chat_template(template)
    config = {**to_hf_config(model_cfg), "model_type": "mmtune_qformer", "architectures": ["MMTuneQFormerForCausalLM"],
              "auto_map": {"AutoConfig": f"{MODULE}.MMTuneQFormerConfig",
                           "AutoModelForCausalLM": f"{MODULE}.MMTuneQFormerForCausalLM"},
              "blip2_config": vision_cfg.hf_config, "image_token_id": image_token_id,
              "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    out, tmp = fresh_output(out)
    written = write_weights(saved_tensors(model_dir, _rename(model_cfg)), tmp, model_cfg.tie_embeddings, dtype)
    (tmp / "config.json").write_text(json.dumps({**config, "dtype": written}, indent=2))
    shutil.copy(REMOTE, tmp / REMOTE.name)
    tokenizer.hf.chat_template = template_text
    tokenizer.save(tmp)
    write_image_processor(vision_cfg, tmp)
    processor = {"processor_class": "MMTuneQFormerProcessor", "auto_map": {"AutoProcessor": f"{MODULE}.MMTuneQFormerProcessor"},
                 "num_image_tokens": image_tokens_per_image(vision_cfg, connector_cfg), "image_token": "<image>",
                 "chat_template": template_text}
    (tmp / "processor_config.json").write_text(json.dumps(processor, indent=2))
    write_generation_config(tokenizer, tmp)
    return finish_output(tmp, out)
