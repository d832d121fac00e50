"""Hostile checkpoints: truncated or forged safetensors, corrupt or code-running pickles, escaping indexes.

Each is refused with a :class:`CheckpointError` naming the file (the CLI prints it as one line, exit 2)
and nothing in it is executed. Already proved elsewhere: wrong shapes, missing and unexpected keys
(tests/test_io.py, tests/test_convert_*.py), a zeroed safetensors file (tests/test_io.py), a Meta
``.pth`` pickle that runs code (tests/test_convert_meta.py::test_pickle_that_runs_code_is_refused).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmtune.config import Config, build
from mmtune.errors import CheckpointError
from mmtune.formats.reading import load_torch
from mmtune.models.io import load_model, save_model
from mmtune.models.vlm import build_model
from mmtune.models.weights import read_weights, safetensors_files

TOKENIZER = Path(__file__).parent / "assets" / "llama-tokenizer"


class RunsCode:
    """Unpickling this creates ``target`` (the proof that code ran)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    """A tiny text-only saved-model directory."""
    cfg = build(Config, {"model": {"dim": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 64, "multiple_of": 16,
                                   "max_seq_len": 32}})
    return save_model(build_model(cfg, image_token_id=64), tmp_path / "model")


def forged_safetensors(path: Path, header: dict, data: bytes = b"") -> None:
    """A safetensors file with this header (``__metadata__`` allowed) and data section."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("damage", ["truncated data", "header length bomb", "offsets past the end",
                                    "overlapping tensors", "header not JSON"])
def test_forged_or_truncated_safetensors_are_refused(saved, damage):
    weights = saved / "model.safetensors"
    blob = weights.read_bytes()
    if damage == "truncated data":
        weights.write_bytes(blob[: len(blob) - 100])
    elif damage == "header length bomb":
        weights.write_bytes(struct.pack("<Q", 2**62) + blob[8:])
    elif damage == "offsets past the end":
        forged_safetensors(weights, {"llm.norm.weight": {"dtype": "F32", "shape": [1 << 20],
                                                         "data_offsets": [0, 4 << 20]}}, b"\0" * 64)
    elif damage == "overlapping tensors":
        forged_safetensors(weights, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                     "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24)
    else:
        weights.write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(saved)


@pytest.mark.parametrize("reader", ["saved model", "hugging face"])
@pytest.mark.parametrize("weight_map", [
    ["model.safetensors"],
    {"llm.norm.weight": 7},
    {"llm.norm.weight": "../elsewhere/model.safetensors"},
    {"llm.norm.weight": "ABSOLUTE"},
])
def test_an_index_naming_files_outside_the_directory_or_junk_is_refused(saved, tmp_path, weight_map, reader):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    save_file({"llm.norm.weight": torch.ones(32)}, str(elsewhere / "model.safetensors"))
    if isinstance(weight_map, dict) and weight_map["llm.norm.weight"] == "ABSOLUTE":
        weight_map = {"llm.norm.weight": str(elsewhere / "model.safetensors")}
    (saved / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json"):
        if reader == "saved model":
            read_weights(saved)
        else:
            safetensors_files(saved)


@pytest.mark.parametrize("damage", ["truncated zip", "random bytes", "legacy pickle running code",
                                    "zip pickle running code", "not a dict"])
def test_corrupt_or_code_running_torch_files_are_refused_and_nothing_runs(tmp_path, damage):
    path, marker = tmp_path / "consolidated.00.pth", tmp_path / "code-ran"
    state = {"tok_embeddings.weight": torch.randn(8, 4)}
    if damage == "truncated zip":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif damage == "legacy pickle running code":
        torch.save({**state, "x": RunsCode(str(marker))}, path, _use_new_zipfile_serialization=False)
    elif damage == "zip pickle running code":
        torch.save({**state, "x": RunsCode(str(marker))}, path)
    else:
        torch.save([torch.ones(1)], path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_torch(path)
    assert not marker.exists()


def test_random_bytes_are_refused_whatever_the_unpickler_trips_on(tmp_path):
    """Garbage makes torch's weights-only unpickler raise all kinds of errors (IndexError and KeyError
    among them, for about 1 seed in 12 here); each must become one CheckpointError naming the file."""
    path = tmp_path / "consolidated.00.pth"
    for seed in range(300):
        path.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CheckpointError, match=str(path)):
            load_torch(path)


def test_convert_accessory_refuses_a_code_running_shard(tmp_path, capsys):
    from mmtune.cli import main

    folder, marker = tmp_path / "ckpt", tmp_path / "code-ran"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"dim": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 64}))
    (folder / "meta.json").write_text(json.dumps({"llama_type": "llama_qformerv2"}))
    torch.save({"model": {"llma.norm.weight": torch.ones(32)}, "x": RunsCode(str(marker))},
               folder / "consolidated.00-of-01.model.pth")
    code = main(["convert", "accessory", "--ckpt-dir", str(folder), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not marker.exists()
    assert lines[-1].startswith("mmtune convert: error: ") and "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "out").exists()


def test_a_training_checkpoint_whose_metadata_runs_code_is_refused(tmp_path, capsys):
    from mmtune.cli import main

    step, marker = tmp_path / "run" / "checkpoints" / "step_00000001", tmp_path / "code-ran"
    step.mkdir(parents=True)
    (step / ".metadata").write_bytes(pickle.dumps(RunsCode(str(marker))))
    torch.save({"step": 1}, step / "trainer_state.pt")
    (step / "checkpoint.json").write_text(json.dumps({"world_size": 1, "image_token_id": 32000, "step": 1}))
    (step / "config.yaml").write_text(f"model: {{preset: debug, n_layers: 1}}\ntokenizer: {{path: {TOKENIZER}}}\n")
    code = main(["export", str(step), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert not marker.exists(), "unpickling the checkpoint metadata ran code"
    assert code == 2 and "refused" in err.strip().splitlines()[-1], err[-2000:]


def test_a_training_checkpoint_whose_trainer_state_runs_code_is_refused(tmp_path):
    from mmtune.training import checkpoint as ckpt
    from mmtune.training.state import RankState
    from test_train_support import tiny_config, train_in_process

    cfg = tiny_config(tmp_path, "--training.max_steps", "1", "--training.save_every", "0")
    last = train_in_process(cfg)
    marker = tmp_path / "code-ran"
    forged = {"rng": {"rank_0": ckpt.encode_state({"python": RunsCode(str(marker))})},  # inside an entry
              "loader": {"rank_0": RunsCode(str(marker))}}  # an entry itself
    for name, value in forged.items():
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.AdamW(model.parameters())
        bad = ckpt.save_checkpoint(tmp_path / name, 1, model, optimizer, {name: value}, {"world_size": 1},
                                   lambda d: None, 1, True)
        with pytest.raises(CheckpointError, match="refused"):
            ckpt.load_checkpoint(bad, model, optimizer, {name: RankState(name, dict, print, 0, 0)})
    torch.save({"step": 1, "rng": [RunsCode(str(marker))]}, last / "trainer_state.pt")  # the layout before
    with pytest.raises(CheckpointError, match="refused"):
        train_in_process(tiny_config(tmp_path / "again", "--training.max_steps", "2"), resume=last)
    assert not marker.exists(), "unpickling the trainer state ran code"
