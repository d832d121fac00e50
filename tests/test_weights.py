"""The weights layer (models/weights.py): lazy reading, the streaming sharded writer, its imports."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from mmtune.errors import CheckpointError
from mmtune.models import weights
from mmtune.models.weights import INDEX_FILE, SINGLE_FILE, ShardedWriter, WeightsReader, read_weights

SRC = Path(weights.__file__).resolve().parents[1]


def tensors() -> dict[str, torch.Tensor]:
    """Five float32 tensors of 400 bytes each, in an order that is not sorted."""
    return {name: torch.randn(10, 10) for name in ("b.weight", "a.weight", "d.weight", "c.weight", "e.bias")}


def write(directory: Path, state: dict[str, torch.Tensor], **kwargs: object) -> list[str]:
    writer = ShardedWriter(directory, **kwargs)  # type: ignore[arg-type]
    for key, tensor in state.items():
        writer.add(key, tensor)
    return writer.close()


def test_small_state_is_one_file_and_nothing_is_left_aside(tmp_path: Path) -> None:
    state = tensors()
    assert write(tmp_path, state) == [SINGLE_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SINGLE_FILE]
    loaded = read_weights(tmp_path)
    assert list(loaded) == sorted(state) and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("sorted_index", [True, False])
def test_writer_shards_in_order_and_writes_the_index(tmp_path: Path, sorted_index: bool) -> None:
    state = tensors()
    names = write(tmp_path, state, max_shard_bytes=900, sorted_index=sorted_index)
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, INDEX_FILE])
    text = (tmp_path / INDEX_FILE).read_text()
    index = json.loads(text)
    assert index["metadata"] == {"total_size": 5 * 400}
    assert index["weight_map"] == {"b.weight": names[0], "a.weight": names[0], "d.weight": names[1],
                                   "c.weight": names[1], "e.bias": names[2]}
    assert list(index["weight_map"]) == (sorted(state) if sorted_index else list(state))
    assert text == json.dumps(index, indent=2, sort_keys=sorted_index)
    assert all(torch.equal(read_weights(tmp_path)[k], state[k]) for k in state)


def test_a_later_save_replaces_the_files_of_an_earlier_one(tmp_path: Path) -> None:
    write(tmp_path, tensors(), max_shard_bytes=900)
    (tmp_path / "other.txt").write_text("kept")
    write(tmp_path, {"x": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [SINGLE_FILE, "other.txt"]
    write(tmp_path, tensors(), max_shard_bytes=900)
    assert not (tmp_path / SINGLE_FILE).exists() and (tmp_path / INDEX_FILE).is_file()


def test_writer_casts_floating_tensors_only(tmp_path: Path) -> None:
    write(tmp_path, {"f": torch.randn(4), "i": torch.arange(4)}, dtype=torch.bfloat16)
    loaded = read_weights(tmp_path)
    assert loaded["f"].dtype == torch.bfloat16 and loaded["i"].dtype == torch.int64


class _Spy:
    """Wraps safetensors' ``safe_open`` and counts the tensors read through it."""

    def __init__(self, real: object):
        self.real, self.reads = real, 0

    def __call__(self, *args: object, **kwargs: object) -> "_Spy":
        self.handle = self.real(*args, **kwargs)  # type: ignore[operator]
        return self

    def __enter__(self) -> "_Spy":
        self.opened = self.handle.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.__exit__(*exc)

    def keys(self) -> list[str]:
        return self.opened.keys()

    def get_slice(self, key: str) -> object:
        return self.opened.get_slice(key)

    def get_tensor(self, key: str) -> torch.Tensor:
        self.reads += 1
        return self.opened.get_tensor(key)


def test_reader_lists_keys_and_shapes_without_reading_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = {**tensors(), "e.bias": torch.zeros(7, 2, 3)}
    names = write(tmp_path, state, max_shard_bytes=900)
    spy = _Spy(weights.safe_open)
    monkeypatch.setattr(weights, "safe_open", spy)
    reader = WeightsReader.open(tmp_path)
    assert reader.files == [tmp_path / n for n in names]
    assert reader.keys() == ["a.weight", "b.weight", "c.weight", "d.weight", "e.bias"]
    assert reader.shapes() == {**{k: torch.Size([10, 10]) for k in tensors() if k != "e.bias"},
                               "e.bias": torch.Size([7, 2, 3])}
    assert spy.reads == 0
    assert torch.equal(reader.get("d.weight"), state["d.weight"]) and spy.reads == 1
    assert [k for k, _ in reader.tensors(select=lambda k: k.endswith("bias"))] == ["e.bias"] and spy.reads == 2
    with pytest.raises(KeyError):
        reader.get("absent")


def test_reader_reports_missing_shards_and_damaged_files(tmp_path: Path) -> None:
    names = write(tmp_path, tensors(), max_shard_bytes=900)
    (tmp_path / names[1]).unlink()
    reader = WeightsReader.open(tmp_path)
    with pytest.raises(CheckpointError, match=f"{tmp_path}: shard {names[1]} named in the index is missing"):
        reader.keys()
    (tmp_path / names[1]).write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match=f"{names[1]}: not a readable safetensors file"):
        reader.shapes()
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        list(weights.iter_safetensors([tmp_path / names[1]]))
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json found"):
        WeightsReader.open(tmp_path / "absent")


def test_model_config_dict_keeps_the_saved_layout(tmp_path: Path) -> None:
    config = weights.model_config_dict(7, {"dim": 8}, {"kind": "none"}, {"kind": "mlp"})
    assert list(config) == ["format", "format_version", "image_token_id", "model", "vision", "connector"]
    weights.write_model_config(tmp_path, config)
    assert weights.read_model_config(tmp_path) == config
    assert (tmp_path / "config.json").read_text() == json.dumps(config, indent=2)


def _mmtune_imports(path: Path) -> set[str]:
    """Every mmtune module a source file imports, at any depth (functions and TYPE_CHECKING included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mmtune")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmtune":
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.add("relative import")
    return found


def test_weights_imports_only_errors_and_vision_imports_no_io_or_vlm() -> None:
    assert _mmtune_imports(SRC / "models" / "weights.py") == {"mmtune.errors", "mmtune.errors.CheckpointError"}
    vision = _mmtune_imports(SRC / "models" / "vision.py")
    assert vision and not {i for i in vision for bad in ("mmtune.models.io", "mmtune.models.vlm") if i.startswith(bad)}
