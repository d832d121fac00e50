"""mmtune models -> Hugging Face: ``LlavaForConditionalGeneration`` (CLIP/SigLIP + ``mlp`` connector) or
the language part alone as ``LlamaForCausalLM``; and :func:`export`, the ``mmtune export`` entry point.

A LLaVA export is a directory transformers loads with ``from_pretrained``: ``config.json``, safetensors,
the tokenizer with ``<image>`` and a chat template, ``preprocessor_config.json`` (the CLIP/SigLIP image
processor with the model's size and normalisation), ``processor_config.json`` (``LlavaProcessor``) and a
model card. transformers embeds the image token before overwriting it, so the embedding and output
matrices grow to the tokenizer's size with mean rows (never the greedy choice: a mean logit is below the
maximum). The image processor does what the model's ``vision.resize`` did in training
(:mod:`mmtune.formats.hf_images`: centre crop, stretch, or LLaVA-1.5's pad to square with the mean colour).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

from mmtune.config import VisionConfig
from mmtune.errors import CheckpointError
from mmtune.formats.card import find_run_info, release_card
from mmtune.formats.hf_images import image_processor
from mmtune.formats.pipeline import check_absent, finish_output, fresh_output
from mmtune.models.weights import ShardedWriter, WeightsReader, read_model_config

log = logging.getLogger(__name__)

FORMATS = ("mmtune", "hf")
# The llava_v1 template (data/templates.py) as a Jinja chat template; message content may be a string
# with "<image>" markers or a list of {"type": "image"} / {"type": "text"} parts.
LLAVA_V1_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }} "
    "{% else %}A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. {% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} ASSISTANT:"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] if m['content'] is string else m['content'][0]['text'] }}"
    "{{ eos_token }}{% endif %}{% endfor %}")


def _write_weights(tensors: Iterable[tuple[str, torch.Tensor]], out: Path, tied: bool,
                   dtype: Optional[torch.dtype]) -> str:
    """Streams ``tensors`` into safetensors shards (cast to ``dtype`` when set); returns the dtype name
    written (for ``config.json``)."""
    writer = ShardedWriter(out, dtype=dtype)
    written = dtype
    for key, tensor in tensors:
        if tied and key == "lm_head.weight":
            continue  # transformers ties it to the embedding on load
        written = written or tensor.dtype
        writer.add(key, tensor)
    writer.close()
    return str(written or torch.float32).removeprefix("torch.")


def _saved_tensors(model_dir: str | Path, rename: Callable[[str, torch.Tensor], dict[str, torch.Tensor]]
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a saved model, one at a time, under the names ``rename`` gives them."""
    for key, tensor in WeightsReader.open(model_dir).tensors():
        yield from rename(key, tensor).items()


def _write_processor(vision_cfg: VisionConfig, tokenizer: Any, out: Path) -> None:
    from transformers import LlavaProcessor

    from mmtune.models.adapters.hf_llava import SELECT_STRATEGY
    from mmtune.models.vision import resolve_image_settings

    settings = resolve_image_settings(vision_cfg)
    images = image_processor(settings.resize, settings.size, settings.mean, settings.std)
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer.hf,
                               patch_size=vision_cfg.hf_config.get("patch_size"),
                               vision_feature_select_strategy=SELECT_STRATEGY[vision_cfg.kind],
                               num_additional_image_tokens=1 if vision_cfg.kind == "clip" else 0,
                               image_token="<image>", chat_template=LLAVA_V1_CHAT_TEMPLATE)
    processor.save_pretrained(str(out))
    # transformers 5 nests the image processor in processor_config.json; transformers 4, vLLM and the
    # Hugging Face LLaVA import read preprocessor_config.json
    images.save_pretrained(str(out))
    pre = out / "preprocessor_config.json"
    data = json.loads(pre.read_text())  # name the class transformers resolves with or without torchvision
    data["image_processor_type"] = data.get("image_processor_type", "").replace("Pil", "")
    pre.write_text(json.dumps(data, indent=2))


def export_llava(model_dir: str | Path, out: str | Path, dtype: Optional[torch.dtype] = None) -> Path:
    """Writes the saved model ``model_dir`` (CLIP/SigLIP tower, ``mlp`` connector) as a
    ``LlavaForConditionalGeneration`` directory, tensor by tensor (``dtype`` None keeps the saved one)."""
    from mmtune.models.adapters.hf_llava import to_llava_config, to_llava_state_dict
    from mmtune.models.io import load_tokenizer, read_sections

    model_cfg, vision_cfg, connector_cfg, _ = read_sections(model_dir)
    tokenizer = load_tokenizer(model_dir)
    if vision_cfg.kind == "none":
        raise CheckpointError(f"{model_dir}: a text-only model has no Llava form; use --llm-only")
    vocab = max(len(tokenizer), model_cfg.vocab_size)
    config = to_llava_config(model_cfg, vision_cfg, connector_cfg, vision_cfg.hf_config, tokenizer.image_token_id,
                             vocab_size=vocab)
    out, tmp = fresh_output(out)
    tensors = _saved_tensors(model_dir, lambda k, t: to_llava_state_dict({k: t}, model_cfg, vocab_size=vocab))
    written = _write_weights(tensors, tmp, model_cfg.tie_embeddings, dtype)
    (tmp / "config.json").write_text(json.dumps({**config, "dtype": written}, indent=2))
    tokenizer.hf.chat_template = LLAVA_V1_CHAT_TEMPLATE
    tokenizer.save(tmp)
    _write_processor(vision_cfg, tokenizer, tmp)
    return finish_output(tmp, out)


def export_llama(model_dir: str | Path, out: str | Path, dtype: Optional[torch.dtype] = None) -> Path:
    """Writes the language model of ``model_dir`` as a ``LlamaForCausalLM`` directory (any connector),
    tensor by tensor."""
    from mmtune.models.adapters.hf_llama import to_hf_config, to_hf_state_dict
    from mmtune.models.io import load_tokenizer, read_sections

    model_cfg = read_sections(model_dir)[0]
    tokenizer = load_tokenizer(model_dir)
    config = {**to_hf_config(model_cfg), "model_type": "llama", "architectures": ["LlamaForCausalLM"],
              "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
    out, tmp = fresh_output(out)

    def rename(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        return to_hf_state_dict({key[len("llm."):]: tensor}, model_cfg) if key.startswith("llm.") else {}

    written = _write_weights(_saved_tensors(model_dir, rename), tmp, model_cfg.tie_embeddings, dtype)
    (tmp / "config.json").write_text(json.dumps({**config, "dtype": written}, indent=2))
    tokenizer.save(tmp)
    return finish_output(tmp, out)


def _card(out: Path, fmt: str, places: list[Optional[Path]]) -> None:
    config = json.loads((out / "config.json").read_text())
    if "text_config" in config or "model" not in config:
        config = read_model_config(places[0])  # type: ignore[arg-type]
    recipe, metrics = find_run_info(*places)
    usage = {"mmtune": f"mmtune chat --model {out.name}",
             "llava": f"LlavaForConditionalGeneration.from_pretrained('{out.name}'); AutoProcessor.from_pretrained('{out.name}')",
             "llama": f"LlamaForCausalLM.from_pretrained('{out.name}'); AutoTokenizer.from_pretrained('{out.name}')"}[fmt]
    card = release_card(config, title=f"{out.name} (mmtune)", fmt=fmt, usage=usage, recipe=recipe, metrics=metrics)
    (out / "README.md").write_text(card)


def export(path: str | Path, out: str | Path, fmt: str = "mmtune", llm_only: bool = False,
           dtype: Optional[torch.dtype] = None) -> Path:
    """``mmtune export``: a model in any accepted format (``formats.detect.FORMATS``; a training run's newest
    checkpoint) -> ``out`` in ``fmt`` (mmtune or hf), with a card, written tensor by tensor; ``dtype`` casts
    the floating weights (None keeps them). Formats other than a saved model are first written as one."""
    from mmtune.formats.detect import detect_format, open_source
    from mmtune.formats.pipeline import write_saved_model
    from mmtune.training.checkpoint import export_checkpoint, resolve_resume

    path, out = Path(path), Path(out)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    kind = detect_format(path)
    with tempfile.TemporaryDirectory() as scratch:
        places: list[Optional[Path]] = [path, path.parent]
        model_dir = path
        if kind != "saved" or (fmt == "mmtune" and dtype is not None):
            model_dir = Path(scratch) / "model" if fmt == "hf" else out
            check_absent(model_dir)
            cast = dtype if fmt == "mmtune" else None  # the hf writer casts on its own
            if kind == "checkpoint":
                ckpt = resolve_resume(str(path), path)
                assert ckpt is not None
                export_checkpoint(ckpt, model_dir, cast)
                places = [model_dir, ckpt, ckpt.parent.parent]
            else:
                write_saved_model(open_source(path), model_dir, dtype=cast)
        if fmt == "hf":
            (export_llama if llm_only else export_llava)(model_dir, out, dtype)
        elif model_dir != out:
            check_absent(out)
            shutil.copytree(model_dir, out, dirs_exist_ok=True)
        _card(out, "llama" if llm_only and fmt == "hf" else "llava" if fmt == "hf" else "mmtune", places)
    log.info("exported %s to %s (%s)", path, out, fmt)
    return out
