"""Runs the quickstart over seeds x thread counts and tabulates min / median / max of every figure.

    python scripts/quickstart_matrix.py --connector mlp [--seeds 0 1 2] [--threads 1 2] [--out runs/matrix]
    python scripts/quickstart_matrix.py --connector mlp --summarize-only     # tables from reports already there

Each run is ``mmtune quickstart --connector C --seed S --threads T --out OUT/C-sS-tT`` in a process of its
own (run them on an otherwise idle machine: the wall time is one of the figures). Writes
``OUT/C-matrix.md`` (one row per run with its command, then min / median / max) and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

FIGURES = (("stage1", "caption_accuracy", "stage-1 captions"), ("stage2", "caption_accuracy", "stage-2 captions"),
           ("stage2", "vqa_accuracy", "VQA"), ("stage2", "text_accuracy", "text"))
THRESHOLD = 0.92


def run_one(connector: str, seed: int, threads: int, out: Path) -> dict:
    """One quickstart run in a fresh process (skipped when its report is already there)."""
    report = out / "report.json"
    if not report.is_file():
        command = [sys.executable, "-m", "mmtune.cli", "quickstart", "--connector", connector, "--seed", str(seed),
                   "--threads", str(threads), "--out", str(out)]
        subprocess.run(command, check=True)
    return json.loads(report.read_text())


def table(connector: str, reports: list[dict]) -> str:
    """Per-run rows, then min / median / max of each figure and of the wall time."""
    names = [label for _, _, label in FIGURES]
    lines = [f"| seed | threads | {' | '.join(names)} | wall | command |", "|---" * (len(names) + 4) + "|"]
    for r in reports:
        values = " | ".join(f"{r[stage][key]:.3f}" for stage, key, _ in FIGURES)
        lines.append(f"| {r['seed']} | {r['threads']} | {values} | {r['wall_seconds']:.0f} s | `{r['command']}` |")
    lines += ["", f"| {connector} | min | median | max |", "|---|---|---|---|"]
    for stage, key, label in FIGURES:
        xs = [r[stage][key] for r in reports]
        lines.append(f"| {label} | {min(xs):.3f} | {statistics.median(xs):.3f} | {max(xs):.3f} |")
    walls = [r["wall_seconds"] for r in reports]
    lines.append(f"| wall | {min(walls):.0f} s | {statistics.median(walls):.0f} s | {max(walls):.0f} s |")
    failing = [f"seed {r['seed']} / {r['threads']} threads: {label} {r[stage][key]:.3f}"
               for r in reports for stage, key, label in FIGURES if r[stage][key] < THRESHOLD]
    lines += ["", f"below {THRESHOLD}: " + ("; ".join(failing) if failing else "none")]
    machine = reports[0].get("machine", {}) if reports else {}
    lines += ["", f"machine: {machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connector", choices=("mlp", "qformer"), default="mlp")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/matrix"))
    p.add_argument("--summarize-only", action="store_true", help="tabulate the reports already written")
    args = p.parse_args()
    reports = []
    for seed in args.seeds:
        for threads in args.threads:
            out = args.out / f"{args.connector}-s{seed}-t{threads}"
            if args.summarize_only:
                if (out / "report.json").is_file():
                    reports.append(json.loads((out / "report.json").read_text()))
                continue
            reports.append(run_one(args.connector, seed, threads, out))
    text = table(args.connector, reports)
    (args.out / f"{args.connector}-matrix.md").parent.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.connector}-matrix.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
