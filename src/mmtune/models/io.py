"""The saved-model directory every ``--model DIR`` option takes.

Layout: ``config.json`` (``format``, ``format_version``, the ``model`` / ``vision`` / ``connector``
sections with the tower's resolved transformers config so no other directory is needed, and
``image_token_id``), ``model.safetensors`` or ``model-0000N-of-0000M.safetensors`` shards plus
``model.safetensors.index.json`` (the Hugging Face layout), the tokenizer files and a ``README.md``
model card. Weights are only ever read from safetensors (never pickles).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmtune.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig
    from mmtune.models.tokenizer import Tokenizer
    from mmtune.models.vlm import VisionLanguageModel

log = logging.getLogger(__name__)

FORMAT = "mmtune"
FORMAT_VERSION = 1
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3
_TIED_OUTPUT = "llm.output.weight"


def read_weights(directory: str | Path, select: Optional[Callable[[str], bool]] = None) -> dict[str, torch.Tensor]:
    """All tensors of a directory's ``model.safetensors`` or indexed shards (only keys ``select`` keeps)."""
    directory = Path(directory)
    if (directory / INDEX_FILE).is_file():
        files = index_shard_names(directory / INDEX_FILE)
    elif (directory / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} found")
    out: dict[str, torch.Tensor] = {}
    for name in files:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: shard {name} named in the index is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                out.update((k, f.get_tensor(k)) for k in f.keys() if select is None or select(k))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return out


def index_shard_names(index: Path) -> list[str]:
    """The shard file names a ``*.safetensors.index.json`` maps weights to, sorted; CheckpointError for
    an unreadable index or a name that is not a plain file name beside it (``../x``, ``/abs/x``)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: weight_map is not a mapping of weight names to shard files")
    bad = sorted({repr(v) for v in weight_map.values()
                  if not isinstance(v, str) or not v or Path(v).name != v or v in (".", "..")})
    if bad:
        raise CheckpointError(f"{index}: shard names must be plain file names in the same directory, got {bad[:3]}")
    return sorted(set(weight_map.values()))


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Splits ``state`` in key order into groups of at most ``max_bytes`` (a larger tensor stands alone)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def _write_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> None:
    for stale in list(directory.glob("model-*-of-*.safetensors")) + [directory / SINGLE_FILE, directory / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    shards = _shards(state, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))


def _default_card(model: "VisionLanguageModel") -> str:
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


def save_model(model: "VisionLanguageModel", directory: str | Path, tokenizer: Optional["Tokenizer"] = None,
               card: Optional[str] = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
               state_dict: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Writes ``model`` as a saved-model directory and returns its path.

    ``state_dict`` replaces ``model.state_dict()`` when given (a full state dict gathered from a sharded
    model on rank 0); ``card`` replaces the generated README.md.
    """
    from mmtune.models.vision import saved_vision_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(model.state_dict() if state_dict is None else state_dict)
    if model.model_cfg.tie_embeddings:
        state.pop(_TIED_OUTPUT, None)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    _write_weights(state, directory, max_shard_bytes)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "image_token_id": model.image_token_id,
              "model": asdict(model.model_cfg), "vision": saved_vision_config(model.vision_cfg, model.vision),
              "connector": asdict(model.connector_cfg)}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save(directory)
    (directory / "README.md").write_text(card if card is not None else _default_card(model))
    log.info("saved model to %s", directory)
    return directory


def read_model_config(directory: str | Path) -> dict:
    """The parsed and checked ``config.json`` of a saved-model directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (not an mmtune saved-model directory)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mmtune saved-model config (format {FORMAT!r} missing)")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {data['format_version']} is newer than this mmtune "
                              f"reads ({FORMAT_VERSION})")
    for key in ("model", "vision", "connector", "image_token_id"):
        if key not in data:
            raise CheckpointError(f"{path}: the {key!r} entry is missing")
    return data


def read_sections(directory: str | Path) -> tuple["ModelConfig", "VisionConfig", "ConnectorConfig", int]:
    """The checked ``model``, ``vision`` and ``connector`` sections and ``image_token_id`` of a saved-model
    directory's ``config.json`` (no weights are read)."""
    from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig, build

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
               dtype: Optional[torch.dtype] = None) -> "VisionLanguageModel":
    """Reads a saved-model directory into a :class:`VisionLanguageModel` in eval mode.

    The decoder is built on the meta device and takes the saved tensors directly; the tower and
    connector are built normally (their non-persistent buffers need real values). ``dtype`` None keeps
    the saved dtype.
    """
    from mmtune.models.connectors import build_connector
    from mmtune.models.vision import build_tower, check_state_dict
    from mmtune.models.vlm import VisionLanguageModel

    *cfgs, image_token_id = read_sections(directory)
    with torch.device("meta"):
        model = VisionLanguageModel(*cfgs, image_token_id=image_token_id)
    if model.vision is not None:
        model.vision = build_tower(cfgs[1])
        model.connector = build_connector(cfgs[2], cfgs[1].kind, model.vision.hidden_size, cfgs[0].dim,
                                          model.vision.num_tokens)
    weights = read_weights(directory)
    tied = (_TIED_OUTPUT,) if cfgs[0].tie_embeddings else ()
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
