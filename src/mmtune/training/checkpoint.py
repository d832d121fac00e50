"""Training checkpoints with ``torch.distributed.checkpoint`` (DCP): atomic, pruned, resharding.

A run directory holds ``checkpoints/step_00000010/`` etc. Each checkpoint holds the sharded model and
optimizer and, in the same DCP files, the trainer's other state (step, scheduler, skipped-step count,
each rank's data-loader and RNG states: the Stateful objects of :mod:`mmtune.training.state`), plus
``checkpoint.json`` (step, world size, ``image_token_id``), the resolved ``config.yaml`` and the
``tokenizer/``. A checkpoint written before that keeps the trainer state in ``trainer_state.pt``
(:data:`STATE_FILE`); :func:`load_checkpoint` still reads it. Everything is written under ``step_N.tmp`` and renamed only when
complete, so a crash mid-save never leaves a complete-looking partial checkpoint; the newest
``keep_last`` are kept. DCP reshards on load, so a checkpoint from N ranks resumes on M ranks.
:func:`export_checkpoint` turns one into a saved-model directory in a single process (no torchrun).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict

from mmtune.distributed.env import barrier
from mmtune.errors import CheckpointError

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"
"""Where checkpoints written before the trainer state moved into the DCP files kept it."""
INFO_FILE = "checkpoint.json"


def checkpoint_root(output_dir: str | Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(output_dir) / "checkpoints"


def is_checkpoint(path: Path) -> bool:
    """True for a complete checkpoint directory (renamed from its temporary name, all files there)."""
    return (STEP_DIR.match(path.name) is not None and (path / ".metadata").is_file()
            and (path / INFO_FILE).is_file())


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_checkpoint(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def resolve_resume(resume: Optional[str], output_dir: str | Path) -> Optional[Path]:
    """The checkpoint to resume from: None for a fresh run, ``auto`` for the newest complete one in
    ``output_dir`` (None if there is none), or a path to a checkpoint or run directory."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if is_checkpoint(path):
        return path
    found = list_checkpoints(path) if path.is_dir() else []
    if not found:
        raise CheckpointError(f"--resume {resume}: not a complete checkpoint nor a run directory holding one")
    return found[-1]


def save_checkpoint(output_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], info: dict, write_extras: Callable[[Path], None],
                    keep_last: int, is_main: bool) -> Path:
    """Writes checkpoint ``step`` atomically (collective: every rank calls it) and prunes old ones.

    ``trainer_state`` (Stateful objects or plain values, by top-level key) goes into the DCP files with
    the model and optimizer; rank 0 writes ``info`` and whatever ``write_extras(dir)`` writes (config,
    tokenizer) into the temporary directory before the rename.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd, **trainer_state}, checkpoint_id=str(tmp))
    if is_main:
        write_extras(tmp)
        (tmp / INFO_FILE).write_text(json.dumps({**info, "step": step}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        prune(output_dir, keep_last)
        log.info("saved checkpoint %s", final)
    barrier()
    return final


def prune(output_dir: str | Path, keep_last: int) -> None:
    """Deletes all but the newest ``keep_last`` complete checkpoints, and stale temporary ones."""
    root = checkpoint_root(output_dir)
    for stale in root.glob("step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


_METADATA_GLOBALS = {("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("torch", "Size"),
                     ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` allowing only DCP's own classes and torch sizes, dtypes, layouts."""

    def find_class(self, module: str, name: str) -> Any:
        kind = getattr(torch, name, None) if module == "torch" else None
        if (module.startswith("torch.distributed.checkpoint.") or (module, name) in _METADATA_GLOBALS
                or isinstance(kind, (torch.dtype, torch.layout, torch.memory_format))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


class _SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, but non-tensor entries must unpickle with ``weights_only=True``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        torch.load(io.BytesIO(value.getvalue()), weights_only=True)
        value.seek(0)
        super().load_bytes(read_item, value)


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Silences DCP's warning that it saves or loads in a single process: DCP goes single-process by
    itself when there is no process group, which is the intent of such a caller (a bare Trainer, an export)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _dcp_load(state: dict, path: Path) -> None:
    """``dcp.load`` of checkpoint ``path`` after checking that nothing in it unpickles into code;
    CheckpointError (nothing executed) otherwise. Training checkpoints may come from elsewhere."""
    read_metadata(path)
    try:
        dcp.load(state, checkpoint_id=str(path), planner=_SafeLoadPlanner())
    except (pickle.UnpicklingError, CheckpointException) as exc:
        refused = [f[0] for f in exc.failures.values()] if isinstance(exc, CheckpointException) else [exc]
        refused = [e for e in refused if isinstance(e, pickle.UnpicklingError)]
        if not refused:
            raise
        raise CheckpointError(f"{path}: refused to load, it holds more than tensors and plain values: "
                              f"{str(refused[0]).strip().splitlines()[-1][:200]}") from None


def read_metadata(path: Path) -> Any:
    """DCP's ``.metadata`` of checkpoint ``path``, unpickled with only DCP's own classes allowed."""
    try:
        with open(Path(path) / ".metadata", "rb") as f:
            return _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load, its metadata holds more than DCP's records: "
                              f"{str(exc).strip().splitlines()[-1][:200]}") from None


def _safe_torch_load(source: Any, where: str) -> Any:
    """``torch.load`` with ``weights_only=True`` (NumPy's RNG state array allowed); CheckpointError
    naming ``where`` for anything else."""
    import numpy as np

    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np._core.multiarray._reconstruct]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{where}: refused to load, it holds more than tensors and plain "
                              f"values: {str(exc).strip().splitlines()[-1][:200]}") from None


def encode_state(value: Any) -> bytes:
    """``value`` (plain values, tensors, NumPy arrays) as one ``bytes`` entry of a checkpoint."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def decode_state(data: bytes, where: str) -> Any:
    """What :func:`encode_state` wrote, loaded with ``weights_only=True`` (CheckpointError otherwise)."""
    if not isinstance(data, bytes):
        raise CheckpointError(f"{where}: refused to load, a {type(data).__name__} where bytes belong")
    return _safe_torch_load(io.BytesIO(data), where)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    states: dict[str, Any]) -> Optional[dict]:
    """Loads model and optimizer shards and the Stateful ``states`` from ``path`` (any number of ranks).

    A checkpoint written before the trainer state moved into the DCP files leaves ``states`` alone and
    returns its ``trainer_state.pt`` (loaded with ``weights_only=True``); otherwise returns None.
    """
    model_sd, optim_sd = get_state_dict(model, optimizer)
    legacy = (Path(path) / STATE_FILE).is_file()
    state = {"model": model_sd, "optim": optim_sd, **({} if legacy else states)}
    with _single_process_quiet():
        _dcp_load(state, path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return _safe_torch_load(Path(path) / STATE_FILE, str(Path(path) / STATE_FILE)) if legacy else None


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Loads only the model weights of training checkpoint ``path`` into a (sharded) model."""
    model_sd = get_model_state_dict(model)
    state = {"model": model_sd}
    _dcp_load(state, path)
    set_model_state_dict(model, state["model"])


def read_info(path: Path) -> dict:
    """The ``checkpoint.json`` of a checkpoint (step, world size, image token id)."""
    if not is_checkpoint(path):
        raise CheckpointError(f"{path}: not a complete training checkpoint")
    return json.loads((path / INFO_FILE).read_text())


def check_loadable(path: Path, model: nn.Module) -> None:
    """CheckpointError naming the weights of ``model`` that checkpoint ``path`` lacks or holds in another
    shape (``model`` may live on the meta device)."""
    if not (Path(path) / ".metadata").is_file():
        raise CheckpointError(f"{path}: not a training checkpoint (no .metadata)")
    saved = read_metadata(path).state_dict_metadata
    wrong = [k for k, v in model.state_dict().items()
             if f"model.{k}" not in saved or tuple(getattr(saved[f"model.{k}"], "size", ())) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path}: cannot load into this model: {len(wrong)} weights missing or "
                              f"shaped differently ({', '.join(wrong[:5])})")


def load_plain(path: Path, model: nn.Module) -> None:
    """Loads the weights of checkpoint ``path`` into an unsharded model, in one process (no process
    group needed); raises CheckpointError naming weights the checkpoint lacks or has in another shape."""
    check_loadable(path, model)
    state = {"model": model.state_dict()}
    with _single_process_quiet():
        _dcp_load(state, path)
    model.load_state_dict(state["model"])


def checkpoint_tokenizer(path: Path, cfg: Any) -> Any:
    """The tokenizer a checkpoint carries (``tokenizer/``), else the run config's ``tokenizer.path``."""
    from mmtune.models.tokenizer import Tokenizer

    tok_dir = Path(path) / "tokenizer"
    return Tokenizer.from_path(str(tok_dir if tok_dir.is_dir() else cfg.tokenizer.path))


def export_checkpoint(ckpt_dir: str | Path, out_dir: str | Path, dtype: Optional[torch.dtype] = None) -> Path:
    """Turns training checkpoint ``ckpt_dir`` (or the newest one in a run directory) into a saved-model
    directory ``out_dir``; single process, CPU, one unit (embedding, decoder block, ...) read from DCP and
    written at a time, so it needs about one unit of memory, not the model. ``dtype`` casts floating
    weights (None keeps the checkpoint's fp32)."""
    from mmtune.config import load_config
    from mmtune.models.init import init_units, unit_of
    from mmtune.models.io import TIED_OUTPUT, saved_config
    from mmtune.models.vlm import build_model
    from mmtune.models.weights import ShardedWriter, write_model_config

    path = resolve_resume(str(ckpt_dir), ckpt_dir)
    assert path is not None
    info = read_info(path)
    cfg = load_config(path / "config.yaml")
    tokenizer = checkpoint_tokenizer(path, cfg)
    model = build_model(cfg, info["image_token_id"], device="meta")
    check_loadable(path, model)
    saved = read_metadata(path).state_dict_metadata
    units = init_units(model)
    keys = [k for k in model.state_dict() if not (cfg.model.tie_embeddings and k == TIED_OUTPUT)]
    out = Path(out_dir)
    writer = ShardedWriter(out, dtype=dtype, sorted_index=False)
    for unit in units:
        wanted = [k for k in keys if unit_of(k, units) == unit]
        state = {"model": {k: torch.empty(saved[f"model.{k}"].size, dtype=saved[f"model.{k}"].properties.dtype)
                           for k in wanted}}
        with _single_process_quiet():
            _dcp_load(state, path)
        for key in wanted:
            writer.add(key, state["model"][key])
    writer.close()
    write_model_config(out, saved_config(cfg.model, cfg.vision, cfg.connector, info["image_token_id"], model.vision))
    tokenizer.save(out)
    (out / "README.md").write_text(f"# mmtune model\n\nExported from training checkpoint {path.name}.\n")
    log.info("exported %s (step %d) to %s", path, info["step"], out_dir)
    return out


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch CPU and CUDA)."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    state.update(cuda_rng_state(torch.cuda))
    return state


def cuda_rng_state(cuda: Any) -> dict[str, torch.Tensor]:
    """``{"cuda": state}`` of the current CUDA device when ``cuda`` (the ``torch.cuda`` module) has one,
    else ``{}``: the one CUDA branch of saving RNG states."""
    return {"cuda": cuda.get_rng_state()} if cuda.is_available() else {}


def set_cuda_rng_state(cuda: Any, state: dict[str, Any]) -> bool:
    """Restores ``state["cuda"]`` through ``cuda`` (the ``torch.cuda`` module) when both exist; returns
    whether it did (a CPU run resuming a GPU checkpoint keeps its own): the one CUDA branch of restoring."""
    if "cuda" not in state or not cuda.is_available():
        return False
    cuda.set_rng_state(state["cuda"])
    return True


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned."""
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    set_cuda_rng_state(torch.cuda, state)
