"""Model cards (``README.md``) for converted and exported models.

A release card states the architecture, parameter counts, where the weights came from, the training
recipe (the resolved ``config.yaml`` of the run: stage, trainable parts, data sources, schedule) and the
metrics found next to the model (``report.json`` from ``mmtune eval``, the last ``metrics.jsonl``
record of the run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import yaml

REPORT = "report.json"
METRICS = "metrics.jsonl"
RUN_CONFIG = "config.yaml"


def _architecture(config: dict[str, Any]) -> str:
    m, v, c = config["model"], config["vision"], config["connector"]
    text = (f"- decoder: LLaMA-family, dim {m['dim']}, {m['n_layers']} layers, {m['n_heads']} heads "
            f"({m.get('n_kv_heads') or m['n_heads']} key/value heads), vocabulary {m['vocab_size']}, "
            f"rope theta {m['rope_theta']:g}\n")
    if v.get("kind", "none") == "none":
        return text + "- text only (no vision tower)\n"
    return text + (f"- vision tower: {v['kind']} ({v.get('image_size')} px)\n"
                   f"- connector: {c['kind']}; image placeholder id {config['image_token_id']}\n")


def conversion_card(config: dict[str, Any], description: str, n_params: int) -> str:
    """The card of a directory written by ``mmtune convert``."""
    return (f"# mmtune model (converted)\n\n{description}\n\n## Architecture\n\n{_architecture(config)}"
            f"- parameters: {n_params:,}\n\n## Use\n\n```\nmmtune chat --model DIR\n```\n\n"
            "## License\n\nThe weights keep the license of the model they were converted from.\n")


def _flat_numbers(data: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flat_numbers(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        out[prefix.rstrip(".")] = float(data)
    return out


def _last_jsonl(path: Path) -> dict[str, Any]:
    """The last training record (one with a loss; evaluation records have none)."""
    last: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "loss" in record:
            last = record
    return last


def find_run_info(*places: Optional[Path]) -> tuple[Optional[dict[str, Any]], dict[str, float]]:
    """(resolved run config, metrics) from the first of ``places`` (directories) that hold them."""
    recipe: Optional[dict[str, Any]] = None
    metrics: dict[str, float] = {}
    for place in (p for p in places if p is not None and p.is_dir()):
        if recipe is None and (place / RUN_CONFIG).is_file():
            loaded = yaml.safe_load((place / RUN_CONFIG).read_text())
            recipe = loaded if isinstance(loaded, dict) else None
        if not metrics and (place / REPORT).is_file():
            metrics = _flat_numbers(json.loads((place / REPORT).read_text()))
        if (place / METRICS).is_file():
            last = {f"train.{k}": v for k, v in _flat_numbers(_last_jsonl(place / METRICS)).items()}
            metrics = {**last, **metrics}
    return recipe, metrics


def _recipe(recipe: dict[str, Any]) -> str:
    t, d, tr = recipe.get("training", {}), recipe.get("data", {}), recipe.get("trainable", {})
    lines = [f"- trainable: vision {tr.get('vision')}, connector {tr.get('connector')}, llm {tr.get('llm')}",
             f"- initialised from: {t.get('init_from') or 'random / tower checkpoint'}",
             f"- schedule: lr {t.get('lr')}, min lr {t.get('min_lr')}, warm-up {t.get('warmup_fraction')}, "
             f"global batch {t.get('global_batch_size')}, "
             + (f"{t['max_steps']} steps" if t.get("max_steps") else f"{t.get('epochs')} epoch(s)"),
             f"- rows: {d.get('max_seq_len')} tokens, {d.get('batching')}, template {d.get('template')}",
             "- data:"]
    for source in d.get("sources", []):
        lines.append(f"  - `{source.get('path')}` ({source.get('kind')}, weight {source.get('weight')})")
    return "\n".join(lines) + "\n"


def release_card(config: dict[str, Any], *, title: str, fmt: str, usage: str,
                 recipe: Optional[dict[str, Any]], metrics: dict[str, float],
                 export: Optional[dict[str, str]] = None) -> str:
    """The card of an exported model (``fmt``: mmtune, llava, qformer or llama) with recipe and metrics;
    ``export`` (image mode, chat template, dtype, the check) is listed under "Export"."""
    parts = [f"# {title}\n", f"Format: {fmt}.\n", "## Architecture\n", _architecture(config)]
    if export:
        parts += ["## Export\n", "".join(f"- {k}: {v}\n" for k, v in export.items())]
    if recipe:
        parts += ["## Training recipe\n", _recipe(recipe)]
    if metrics:
        rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items()))
        parts += ["## Metrics\n", f"| metric | value |\n|---|---|\n{rows}\n"]
    parts += ["## Use\n", f"```\n{usage}\n```\n",
              "## License\n", "The weights keep the license of the base model they were trained from.\n"]
    return "\n".join(parts)
