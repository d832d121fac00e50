"""Storage faults at save time: a full disk, an unwritable file, a blocked path.

``mmtune train`` runs in this process (``mmtune.cli.main``), 4 steps with a checkpoint every 2; the
fault hits the step-4 save at the level a real one would: DCP's file creation raising ENOSPC, the
trainer-state file raising EACCES, or a regular file sitting where the checkpoint directory goes.
Each must end the run with one clear error line (exit code 2, no traceback) naming the cause, and leave
the step-2 checkpoint byte for byte as it was, still the one ``--resume auto`` picks.
tests/test_train_faults.py covers an exception raised by ``dcp.save`` itself (no half-written
checkpoint looks complete, and the run resumes).
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from helpers_reliability import fast_tokenizer, write_config, write_manifest
from mmtune.cli import main
from mmtune.training import checkpoint as ckpt

STEP4 = "step_00000004.tmp"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("storage")
    return {"manifest": write_manifest(tmp / "data", 24), "tokenizer": fast_tokenizer(tmp / "tokenizer")}


def digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_with_fault(tmp_path: Path, data: dict, monkeypatch, capsys, fault: str) -> tuple[int, str, dict]:
    """Trains with ``fault`` striking the step-4 save; returns (exit code, stderr, step-2 digest at the fault)."""
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "run.yaml", [{"path": str(data["manifest"]), "kind": "manifest"}], run,
                       data["tokenizer"], max_steps=4, save_every=2, keep_last=3)
    seen: dict = {}

    def strike(path: object) -> bool:
        if STEP4 not in str(path):
            return False
        seen.setdefault("step2", digest(ckpt.checkpoint_root(run) / "step_00000002"))
        return True

    if fault == "disk full":
        from torch.distributed.checkpoint.filesystem import FileSystem

        real_stream = FileSystem.create_stream

        def full_disk(self, path, mode):  # noqa: ANN001, ANN202
            if strike(path) and "w" in mode:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real_stream(self, path, mode)

        monkeypatch.setattr(FileSystem, "create_stream", full_disk)
    elif fault == "permission denied":  # the checkpoint.json written beside the DCP files
        real_write = Path.write_text

        def unwritable(self, *args, **kwargs):  # noqa: ANN001, ANN202
            if strike(self):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_write(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", unwritable)
    else:  # a regular file where the step-4 directory must be made: a real OS error, nothing patched
        real_barrier = ckpt.barrier

        def block_then_barrier() -> None:
            root = ckpt.checkpoint_root(run)
            if (root / "step_00000002").is_dir() and not (root / STEP4).exists():
                strike(root / STEP4)
                (root / STEP4).write_text("a file in the way")
            real_barrier()

        monkeypatch.setattr(ckpt, "barrier", block_then_barrier)
    capsys.readouterr()
    code = main(["train", str(cfg)])
    return code, capsys.readouterr().err, seen.get("step2", {})


@pytest.mark.parametrize("fault,needle", [
    ("disk full", "No space left on device"),
    ("permission denied", "Permission denied"),
    ("path blocked", STEP4),
])
def test_a_failed_save_is_one_clear_error_and_keeps_the_previous_checkpoint(tmp_path, data, monkeypatch, capsys,
                                                                            fault, needle):
    code, stderr, before = run_with_fault(tmp_path, data, monkeypatch, capsys, fault)
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert code == 2 and "Traceback" not in stderr, stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("mmtune train: error: ") and needle in errors[0], errors
    run = tmp_path / "run"
    assert before, "the fault never struck"
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002"]
    assert digest(ckpt.checkpoint_root(run) / "step_00000002") == before
    assert ckpt.resolve_resume("auto", run).name == "step_00000002"
