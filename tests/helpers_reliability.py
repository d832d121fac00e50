"""Shared pieces for the reliability tests (no tests here): tiny datasets, run configs, subprocess runs.

Everything is written by the tests into ``tmp_path``: small PNG/JPEG images (a chosen few corrupt),
caption manifests (map mode: exact resume on any number of ranks), webdataset shards (stream mode),
and a run config inheriting ``configs/debug-stage1.yaml`` (debug decoder + debug BLIP-2 tower + qformer
connector, connector trains). :func:`mmtune` runs ``python -m mmtune ...`` (or ``torchrun``) in a
subprocess with a hard timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests/assets/llama-tokenizer"
BASE_CONFIG = ROOT / "configs/debug-stage1.yaml"
CORRUPT = b"\xff\xd8\xff\xe0 truncated jpeg"


def image_bytes(n: int, fmt: str = "PNG") -> bytes:
    """A small image whose colour depends on ``n``."""
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), ((37 * n) % 256, (11 * n) % 256, 90)).save(buf, format=fmt)
    return buf.getvalue()


def write_manifest(folder: Path, n: int, bad: Sequence[int] = ()) -> Path:
    """``folder/captions.jsonl`` with ``n`` entries ``{"image": "/abs/i.png", "caption": ...}`` next
    to the images; the images numbered in ``bad`` hold corrupt bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        (folder / f"{i}.png").write_bytes(CORRUPT if i in bad else image_bytes(i))
        lines.append(json.dumps({"image": str(folder / f"{i}.png"), "caption": f"a shape number {i} on a plain background"}))
    path = folder / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_shards(folder: Path, shards: int, per_shard: int, bad: Sequence[int] = ()) -> str:
    """Webdataset shards in img2dataset's layout; samples numbered in ``bad`` carry a corrupt JPEG.
    Returns the brace pattern naming them."""
    from webdataset import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for s in range(shards):
        with TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for _ in range(per_shard):
                jpg = CORRUPT if n in bad else image_bytes(n, "JPEG")
                sink.write({"__key__": f"{n:09d}", "jpg": jpg, "txt": f"caption {n}".encode()})
                n += 1
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def write_config(path: Path, sources: list[dict], output_dir: Path, tokenizer: Path = TOKENIZER,
                 **training: object) -> Path:
    """A run config inheriting ``configs/debug-stage1.yaml`` with these sources and training values."""
    data = {"inherit": str(BASE_CONFIG), "tokenizer": {"path": str(tokenizer)},
            "data": {"sources": sources, "max_seq_len": 48, "num_workers": 0, "batching": "packed"},
            "training": {"output_dir": str(output_dir), "global_batch_size": 4, "micro_batch_size": 2,
                         **training}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def env() -> dict:
    """The environment of a child process: this checkout's sources first, one thread, no hub."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), out.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    return out


def mmtune_argv(*args: str, nproc: int = 1) -> list[str]:
    """``python -m mmtune ARGS`` or, for ``nproc`` > 1, ``torchrun --standalone`` of the same."""
    if nproc == 1:
        return [sys.executable, "-m", "mmtune", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "mmtune", *args]


def mmtune(*args: str, nproc: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``mmtune ARGS`` to its end (text output captured); a run past ``timeout`` fails the test."""
    return subprocess.run(mmtune_argv(*args, nproc=nproc), capture_output=True, text=True, env=env(),
                          cwd=ROOT, timeout=timeout)


def start(*args: str, nproc: int = 1, log: Optional[Path] = None) -> subprocess.Popen:
    """Starts ``mmtune ARGS`` in its own process group (so a kill reaches every rank)."""
    sink = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(mmtune_argv(*args, nproc=nproc), stdout=sink, stderr=subprocess.STDOUT, env=env(),
                            cwd=ROOT, start_new_session=True)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (``torchrun`` starts its workers in sessions of their own, so a
    signal to its process group alone would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILLs ``proc`` and all its descendants at once (a machine dying); returns their pids."""
    tree = process_tree(proc.pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    return tree


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120,
              poll: float = 0.002) -> list[int]:
    """SIGKILLs ``proc``'s whole process tree as soon as ``ready()`` holds and returns the killed pids
    (empty if the run ended first); every process of the tree is gone when this returns."""
    deadline = time.monotonic() + timeout
    killed: list[int] = []
    try:
        while proc.poll() is None and not killed:
            if ready():
                killed = kill_tree(proc)
            elif time.monotonic() > deadline:
                raise TimeoutError("the condition to kill the run never came")
            time.sleep(poll)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` in file order (a resumed run appends)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def losses_by_step(records: list[dict]) -> dict[int, float]:
    """The loss of each step; the last record of a step wins (as ``loss.png`` draws it)."""
    return {r["step"]: r["loss"] for r in records}


def fast_tokenizer(folder: Path) -> Path:
    """The LLaMA tokenizer asset saved as ``tokenizer.json`` in ``folder`` (loads in a fraction of the time
    the SentencePiece conversion takes; same ids)."""
    from mmtune.models.tokenizer import Tokenizer

    if not (folder / "tokenizer.json").is_file():
        Tokenizer.from_path(TOKENIZER).save(folder)
    return folder


# ---------------------------------------------------------------- many CLI runs in one warm interpreter

WARM_IMPORTS = ("torch", "transformers", "mmtune.cli", "mmtune.models.io", "mmtune.models.tokenizer",
                "mmtune.inference.engine", "mmtune.training.run")


def run_cli_cases(cases: list[list[str]], timeout: float = 60) -> list[tuple[int, str]]:
    """Runs ``python -m mmtune ARGV`` for every argv of ``cases`` and returns ``(exit code, stderr)`` each.

    One driver process imports the heavy libraries once, then forks a child per case that runs the
    ``mmtune`` entry point (``runpy``, as ``python -m mmtune`` does) with its own stdout/stderr; an
    exception escaping the entry point is printed as the interpreter would (traceback, exit 1).
    """
    proc = subprocess.run([sys.executable, "-c", "import helpers_reliability as h; h.drive()"],
                          input=json.dumps({"cases": cases, "timeout": timeout}), capture_output=True, text=True,
                          env={**env(), "PYTHONPATH": env()["PYTHONPATH"] + os.pathsep + str(ROOT / "tests")},
                          cwd=ROOT, timeout=timeout * len(cases) + 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout.splitlines()[-1])]  # type: ignore[misc]


def drive() -> None:
    """The driver of :func:`run_cli_cases` (reads the cases as JSON on stdin)."""
    import importlib
    import tempfile

    request = json.loads(sys.stdin.read())
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, argv in enumerate(request["cases"]):
            err = Path(tmp) / f"{i}.err"
            started = time.monotonic()
            results.append((_fork_case(argv, err, request["timeout"]), err.read_text(errors="replace")))
            print(f"{time.monotonic() - started:6.2f}s  mmtune {' '.join(argv)}", file=sys.stderr)
    sys.stdout.write("\n" + json.dumps(results) + "\n")


def _fork_case(argv: list[str], err: Path, timeout: float) -> int:
    pid = os.fork()
    if pid == 0:  # the child: become `python -m mmtune ARGV`
        code = 1
        try:
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            code = _entry_point(argv)
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.01)


def _entry_point(argv: list[str]) -> int:
    import runpy
    import traceback

    sys.argv = ["mmtune", *argv]
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
    try:
        runpy.run_module("mmtune", run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        return 1
    finally:
        sys.stderr.flush()
