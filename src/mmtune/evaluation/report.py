"""The quickstart's report: metrics per stage, sample answers, as JSON, Markdown and a terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROWS: tuple[tuple[str, str, str], ...] = (
    ("stage1", "caption_accuracy", "stage 1 caption accuracy (all facts right)"),
    ("stage1", "cider", "stage 1 caption CIDEr-D"),
    ("stage2", "caption_accuracy", "stage 2 caption accuracy (asked in chat)"),
    ("stage2", "cider", "stage 2 caption CIDEr-D"),
    ("stage2", "bleu4", "stage 2 caption BLEU-4"),
    ("stage2", "vqa_accuracy", "stage 2 VQA accuracy (held-out images)"),
    ("stage2", "text_accuracy", "stage 2 text-only instruction accuracy"),
)


def metric_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, formatted value) for each headline metric the report has."""
    rows = []
    for stage, key, label in ROWS:
        value = report.get(stage, {}).get(key)
        if value is not None:
            rows.append((label, f"{value:.3f}"))
    rows.append(("wall time", f"{report['wall_seconds']:.0f} s"))
    return rows


def _machine_line(report: dict[str, Any]) -> str:
    """The CPU, cores, compute threads and torch version the figures were measured with."""
    m = report.get("machine", {})
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {report.get('threads', '?')} compute threads, "
            f"torch {m.get('torch', '?')}")


def to_markdown(report: dict[str, Any]) -> str:
    """A human-readable report: settings, the metric table, sample answers and the loss curves."""
    lines = [f"# mmtune quickstart ({report['connector']} connector)", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {_machine_line(report)}", "",
             f"World seed {report['seed']}; stage 1: {report['stage1']['steps']} steps, "
             f"stage 2: {report['stage2']['steps']} steps; evaluated on held-out images training never saw.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in metric_rows(report)]
    lines += ["", "## Answers on held-out images", "", "| model | image | prompt | answer | right |", "|---|---|---|---|---|"]
    for ex in report.get("examples", []):
        right = {True: "yes", False: "no", None: ""}[ex.get("correct")]
        lines.append(f"| {ex['model']} | {ex['image']} | {ex['prompt']} | {ex['answer']} | {right} |")
    lines += ["", "## Loss curves", "", "![stage 1](stage1_loss.png) ![stage 2](stage2_loss.png)", ""]
    return "\n".join(lines)


def terminal_table(report: dict[str, Any]) -> str:
    """The metric table and the sample answers as plain aligned text."""
    rows = metric_rows(report)
    width = max(len(label) for label, _ in rows)
    out = [f"{label:<{width}}  {value}" for label, value in rows]
    out.append("")
    for ex in report.get("examples", []):
        mark = {True: "[ok]", False: "[x]", None: ""}[ex.get("correct")]
        out.append(f"{ex['model']} | {ex['image']} | {ex['prompt']!r} -> {ex['answer']!r} {mark}".rstrip())
    return "\n".join(out)


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Writes ``report.json`` and ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(report, indent=1))
    md_path.write_text(to_markdown(report))
    return json_path, md_path
