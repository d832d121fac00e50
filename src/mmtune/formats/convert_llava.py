"""Hugging Face ``LlavaForConditionalGeneration`` directories -> mmtune (CLIP / SigLIP tower, ``mlp`` connector).

A directory holds ``config.json`` (``model_type: llava``), ``model.safetensors`` or shards named by
``model.safetensors.index.json``, the tokenizer, ``preprocessor_config.json`` and a chat template. Both
key layouts are read: transformers 4 as the ``llava-hf`` Hub releases were saved
(``language_model.model.*``, ``language_model.lm_head.*``, ``vision_tower.vision_model.*``,
``multi_modal_projector.*``) and transformers 5 (``model.language_model.*``, ``model.vision_tower.*``,
``model.multi_modal_projector.*``, ``lm_head.*``), including what transformers 5's ``save_pretrained``
writes (4's decoder names, ``vision_tower.*``). Tensors are renamed one at a time by
:func:`mmtune.models.adapters.hf_llava.from_llava_tensor` (q/k rows un-permuted as for Hugging Face Llama).

Vocabulary and the image token: transformers looks the image token up in the embedding, so LLaVA
releases pad the embedding and ``lm_head`` (llava-1.5: 32000 text tokens + ``<image>`` 32000 + ``<pad>``
32001, padded to 32064 rows). The import keeps every row: the decoder's ``vocab_size`` is the
checkpoint's embedding rows, so mmtune's logits are transformers' logits, row for row. mmtune's
``Tokenizer`` uses the tokenizer's own ``<image>`` when it has one and otherwise appends it at
``len(tokenizer)``; either way that id must be the config's ``image_token_index`` (checked here, a
``CheckpointError`` otherwise), so placeholder ids mean the same in both programs. mmtune never looks
that id up (its positions are overwritten by image features), so the row it has there is unused.

Image settings come from ``preprocessor_config.json`` (:func:`mmtune.formats.hf_images.image_settings`) and the chat template is
matched against LLaVA-1.5's ``USER: <image>\\n... ASSISTANT:`` format (:func:`chat_template_name`);
whatever cannot be represented is a ``CheckpointError`` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Optional

import torch

from mmtune.errors import CheckpointError
from mmtune.formats.hf_images import image_settings
from mmtune.formats.pipeline import Source, Tensors, renamed
from mmtune.formats.reading import read_json
from mmtune.models.adapters.hf_llava import from_llava_config, from_llava_tensor, to_hf5_name
from mmtune.models.weights import WeightsReader, iter_safetensors, safetensors_files

log = logging.getLogger(__name__)

EMBEDDING = "model.language_model.embed_tokens.weight"
# Tower weights LLaVA never uses (it reads hidden states): SigLIP's pooling head, and the text side of a full
# CLIP / SigLIP model (a vision_config of model_type clip / siglip).
_UNUSED_TOWER = re.compile(r"^vision\.vision_model\.(head\.|text_model\.|text_projection\.|visual_projection\.|logit_)")
_PROBE = re.compile(r"(?:.*\S )?USER: <image>\nQ ?ASSISTANT:", re.S)


def find_chat_template(model_dir: str | Path) -> Optional[str]:
    """The directory's chat template: ``chat_template.jinja``, ``chat_template.json``, then the
    ``chat_template`` of ``tokenizer_config.json`` / ``processor_config.json``."""
    model_dir = Path(model_dir)
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "tokenizer_config.json", "processor_config.json"):
        if (model_dir / name).is_file():
            found = read_json(model_dir / name, name).get("chat_template")
            if isinstance(found, list):  # named templates: [{"name": ..., "template": ...}]
                found = next((t.get("template") for t in found if t.get("name") == "default"), None)
            if isinstance(found, str):
                return found
    return None


def _renders(template: str) -> list[str]:
    """The template rendered for one user turn (an image, then "Q") with the generation prompt, with the
    content as a list of parts and as a string (a template written for the other shape fails or renders
    nonsense)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    out = []
    for content in ([{"type": "image"}, {"type": "text", "text": "Q"}], "<image>\nQ"):
        try:
            text = _compile_jinja_template(template).render(
                messages=[{"role": "user", "content": content}], add_generation_prompt=True,
                bos_token="<s>", eos_token="</s>")
        except Exception:  # any template error means "not written for this shape"
            continue
        out.append(text.removeprefix("<s>").strip())
    return out


def chat_template_name(model_dir: str | Path) -> Optional[str]:
    """``llava_v1`` when the directory's chat template renders LLaVA-1.5's ``[system ]USER: <image>\nQ
    ASSISTANT:``; None otherwise. Which template to use, and why, is logged either way."""
    template = find_chat_template(model_dir)
    if template is None:
        log.warning("%s: no chat template; choose one with --template (mmtune's default is alpaca)", model_dir)
        return None
    renders = _renders(template)
    match = next((r for r in renders if _PROBE.fullmatch(r)), None)
    if match is not None:
        log.info("%s: the chat template is LLaVA-1.5's (renders %r): use --template llava_v1", model_dir, match)
        return "llava_v1"
    log.warning("%s: the chat template is not LLaVA-1.5's USER/ASSISTANT format (renders %r); no mmtune template "
                "matches it, choose one with --template (mmtune's default is alpaca)", model_dir,
                renders[-1] if renders else "nothing: it fails to render")
    return None


def _check_image_token(model_dir: Path, image_token_index: int) -> None:
    from mmtune.models.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_path(model_dir)
    if tokenizer.image_token_id != image_token_index:
        raise CheckpointError(f"{model_dir}: the tokenizer's <image> is id {tokenizer.image_token_id} but config.json "
                              f"has image_token_index {image_token_index}")


def _embedding_rows(files: list[Path], model_dir: Path) -> int:
    for name, shape in WeightsReader(files).shapes().items():
        if to_hf5_name(name) == EMBEDDING:
            return int(shape[0])
    raise CheckpointError(f"{model_dir}: no language-model embedding (model.language_model.embed_tokens.weight "
                          "or language_model.model.embed_tokens.weight)")


def llava_source(model_dir: str | Path) -> Source:
    """A :class:`Source` over a Hugging Face ``LlavaForConditionalGeneration`` directory (see the module
    docstring for what is mapped and what is refused)."""
    model_dir = Path(model_dir)
    config = read_json(model_dir / "config.json", "Hugging Face config.json")
    if config.get("model_type") != "llava":
        raise CheckpointError(f"{model_dir}: config.json has model_type {config.get('model_type')!r}, not 'llava'")
    files = safetensors_files(model_dir)
    model_cfg, vision_cfg, connector_cfg = from_llava_config(config, _embedding_rows(files, model_dir))
    vision_cfg = dataclasses.replace(vision_cfg, **image_settings(model_dir, vision_cfg.hf_config.get("image_size", 224)))
    _check_image_token(model_dir, int(config.get("image_token_index", config.get("image_token_id", 32000))))
    template = chat_template_name(model_dir)

    def tensors(shapes: dict[str, torch.Size]) -> Tensors:
        yield from renamed(iter_safetensors(files), lambda n, t: from_llava_tensor(n, t, model_cfg),
                           model_cfg.tie_embeddings)

    settings = json.dumps({k: getattr(vision_cfg, k) for k in ("image_size", "resize", "image_mean", "image_std")})
    return Source(model=model_cfg, vision=vision_cfg, connector=connector_cfg, tensors=tensors, tokenizer=model_dir,
                  description=f"Hugging Face LLaVA ({vision_cfg.kind} tower, {model_cfg.n_layers}-layer decoder) from "
                              f"{model_dir}; images {settings}; chat template: {template or 'not recognised'}",
                  droppable=lambda key: bool(_UNUSED_TOWER.match(key)))
