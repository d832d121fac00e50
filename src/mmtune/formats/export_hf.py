"""mmtune models -> Hugging Face: ``LlavaForConditionalGeneration`` (CLIP/SigLIP + ``mlp`` connector), a
remote-code model (``qformer``, :mod:`mmtune.formats.export_remote`) or the language part alone as
``LlamaForCausalLM``; and :func:`export`, the ``mmtune export`` entry point.

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


def write_weights(tensors: Iterable[tuple[str, torch.Tensor]], out: Path, tied: bool,
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


def saved_tensors(model_dir: str | Path, rename: Callable[[str, torch.Tensor], dict[str, torch.Tensor]]
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a saved model, one at a time, under the names ``rename`` gives them."""
    for key, tensor in WeightsReader.open(model_dir).tensors():
        yield from rename(key, tensor).items()


def write_image_processor(vision_cfg: VisionConfig, out: Path) -> Any:
    """Writes ``preprocessor_config.json``: the image processor doing the model's ``vision.resize`` (read by
    transformers 4, vLLM and the Hugging Face LLaVA import); returns the processor."""
    from mmtune.models.vision import resolve_image_settings

    settings = resolve_image_settings(vision_cfg)
    images = image_processor(settings.resize, settings.size, settings.mean, settings.std)
    images.save_pretrained(str(out))
    pre = out / "preprocessor_config.json"
    data = json.loads(pre.read_text())  # name the class transformers resolves with or without torchvision
    data["image_processor_type"] = data.get("image_processor_type", "").replace("Pil", "")
    pre.write_text(json.dumps(data, indent=2))
    return images


def write_generation_config(tokenizer: Any, out: Path) -> None:
    """``generation_config.json``: the tokenizer's BOS, EOS (where mmtune's engine stops) and padding ids."""
    config = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    (out / "generation_config.json").write_text(json.dumps(config, indent=2))


def _write_processor(vision_cfg: VisionConfig, tokenizer: Any, out: Path, template: str) -> None:
    from transformers import LlavaProcessor

    from mmtune.models.adapters.hf_llava import SELECT_STRATEGY

    processor = LlavaProcessor(image_processor=write_image_processor(vision_cfg, out), tokenizer=tokenizer.hf,
                               patch_size=vision_cfg.hf_config.get("patch_size"),
                               vision_feature_select_strategy=SELECT_STRATEGY[vision_cfg.kind],
                               num_additional_image_tokens=1 if vision_cfg.kind == "clip" else 0,
                               image_token="<image>", chat_template=template)
    processor.save_pretrained(str(out))  # transformers 5 nests the image processor here too


def export_llava(model_dir: str | Path, out: str | Path, dtype: Optional[torch.dtype] = None,
                 template: str = "llava_v1") -> Path:
    """Writes the saved model ``model_dir`` (CLIP/SigLIP tower, ``mlp`` connector) as a
    ``LlavaForConditionalGeneration`` directory, tensor by tensor (``dtype`` None keeps the saved one);
    ``template`` is the chat template's mmtune template."""
    from mmtune.formats.chat_templates import chat_template
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
    tensors = saved_tensors(model_dir, lambda k, t: to_llava_state_dict({k: t}, model_cfg, vocab_size=vocab))
    written = write_weights(tensors, tmp, model_cfg.tie_embeddings, dtype)
    (tmp / "config.json").write_text(json.dumps({**config, "dtype": written}, indent=2))
    tokenizer.hf.chat_template = chat_template(template)
    tokenizer.save(tmp)
    _write_processor(vision_cfg, tokenizer, tmp, tokenizer.hf.chat_template)
    write_generation_config(tokenizer, tmp)
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

    written = write_weights(saved_tensors(model_dir, rename), tmp, model_cfg.tie_embeddings, dtype)
    (tmp / "config.json").write_text(json.dumps({**config, "dtype": written}, indent=2))
    tokenizer.save(tmp)
    return finish_output(tmp, out)


_USAGE = {
    "mmtune": "mmtune chat --model {name}",
    "llava": "LlavaForConditionalGeneration.from_pretrained('{name}'); AutoProcessor.from_pretrained('{name}')",
    "qformer": "AutoModelForCausalLM.from_pretrained('{name}', trust_remote_code=True); "
               "AutoProcessor.from_pretrained('{name}', trust_remote_code=True)",
    "llama": "LlamaForCausalLM.from_pretrained('{name}'); AutoTokenizer.from_pretrained('{name}')"}


def _card(out: Path, fmt: str, model_dir: Path, places: list[Optional[Path]], source: Path,
          template: Optional[str]) -> None:
    dtype = json.loads((out / "config.json").read_text()).get("dtype")
    config = read_model_config(out if fmt == "mmtune" else model_dir)
    recipe, metrics = find_run_info(*places)
    export = None
    if template is not None:  # the exports with images
        from mmtune.formats.hf_images import PROCESSORS

        resize = config["vision"]["resize"]
        export = {"image mode": f"vision.resize {resize} (transformers {PROCESSORS[resize][0]})",
                  "chat template": f"mmtune's {template}", "dtype": str(dtype),
                  "check": f"mmtune generate --model {source} --template {template} --image IMAGE --prompt TEXT "
                           "gives the same greedy tokens as transformers on this directory with its processor and "
                           "chat template (logits within 1e-4 in fp32); mmtune's tests make this check: "
                           "pytest tests/test_export_modes.py tests/test_export_remote.py"}
    card = release_card(config, title=f"{out.name} (mmtune)", fmt=fmt, usage=_USAGE[fmt].format(name=out.name),
                        recipe=recipe, metrics=metrics, export=export)
    (out / "README.md").write_text(card)


def _default_template(requested: Optional[str], connector: str, places: list[Optional[Path]]) -> str:
    """``requested``, else the run's ``data.template`` when it has a chat template, else the connector's
    (``alpaca`` for qformer as LLaMA2-Accessory, ``llava_v1`` for mlp as LLaVA-1.5)."""
    from mmtune.formats.chat_templates import CHAT_TEMPLATES

    if requested is not None:
        return requested
    trained = ((find_run_info(*places)[0] or {}).get("data") or {}).get("template")
    return trained if trained in CHAT_TEMPLATES else "alpaca" if connector == "qformer" else "llava_v1"


def _stage(path: Path, kind: str, fmt: str, out: Path, scratch: Path, dtype: Optional[torch.dtype]
           ) -> tuple[Path, list[Optional[Path]]]:
    """(saved model to export from, places holding the run's recipe and metrics): ``path`` itself when it
    is a saved model, else ``path`` written as one (into ``out`` for the mmtune format)."""
    from mmtune.formats.detect import open_source
    from mmtune.formats.pipeline import write_saved_model
    from mmtune.training.checkpoint import export_checkpoint, resolve_resume

    if kind == "saved" and not (fmt == "mmtune" and dtype is not None):
        return path, [path, path.parent]
    model_dir = scratch / "model" if fmt == "hf" else out
    check_absent(model_dir)
    cast = dtype if fmt == "mmtune" else None  # the hf writers cast on their own
    if kind == "checkpoint":
        ckpt = resolve_resume(str(path), path)
        assert ckpt is not None
        export_checkpoint(ckpt, model_dir, cast)
        return model_dir, [model_dir, ckpt, ckpt.parent.parent]
    write_saved_model(open_source(path), model_dir, dtype=cast)
    return model_dir, [path, path.parent]


def export(path: str | Path, out: str | Path, fmt: str = "mmtune", llm_only: bool = False,
           dtype: Optional[torch.dtype] = None, template: Optional[str] = None) -> Path:
    """``mmtune export``: a model in any accepted format (``formats.detect.FORMATS``; a training run's newest
    checkpoint) -> ``out`` in ``fmt`` (mmtune or hf), with a card, written tensor by tensor; ``dtype`` casts
    the floating weights (None keeps them). Formats other than a saved model are first written as one.
    ``hf`` writes LLaVA (``mlp``), a remote-code model (``qformer``, :mod:`mmtune.formats.export_remote`) or,
    with ``llm_only``, Llama; ``template`` names the chat template (see :func:`_default_template`)."""
    from mmtune.formats.detect import detect_format
    from mmtune.formats.export_remote import export_qformer
    from mmtune.models.io import read_sections

    path, out = Path(path), Path(out)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    kind = detect_format(path)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir, places = _stage(path, kind, fmt, out, Path(scratch), dtype)
        card_fmt, used = "mmtune", None
        if fmt == "hf" and llm_only:
            export_llama(model_dir, out, dtype)
            card_fmt = "llama"
        elif fmt == "hf":
            connector = read_sections(model_dir)[2].kind
            used = _default_template(template, connector, places)
            card_fmt = "qformer" if connector == "qformer" else "llava"
            (export_qformer if connector == "qformer" else export_llava)(model_dir, out, dtype, used)
        elif model_dir != out:
            check_absent(out)
            shutil.copytree(model_dir, out, dirs_exist_ok=True)
        _card(out, card_fmt, model_dir, places, path, used)
    log.info("exported %s to %s (%s)", path, out, fmt)
    return out
