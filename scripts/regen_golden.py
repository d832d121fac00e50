"""Regenerates the golden per-step losses of the debug presets (tests/golden/debug-stage{1,2}.json).

Run it only when a change is meant to alter training numerics, and say so in the commit:

    .venv/bin/python scripts/regen_golden.py

It writes a small synthetic world (``mmtune.data.synth``) into a temporary directory, trains
``configs/debug-stage1.yaml`` on its webdataset shards, then ``configs/debug-stage2.yaml`` on its LLaVA
and Alpaca files starting from the stage-1 run, both in one CPU process, and stores every step's loss.
``tests/test_train_golden.py`` imports :func:`golden_losses` from here, so both run the same thing.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = ROOT / "tests" / "golden"
STEPS = 4


def write_data(world: Path) -> Path:
    """A tiny synthetic world: 2 stage-1 shards of 16 captions, 24 conversations, 12 text instructions."""
    from mmtune.data.synth import WorldSizes, write_world

    sizes = WorldSizes(stage1_images=32, stage2_images=24, stage2_text=12, heldout_images=2, heldout_text=2,
                       shard_size=16)
    return write_world(world, seed=0, image_size=32, sizes=sizes)


def overrides(stage: int, world: Path, output_dir: Path, init_from: str | None = None) -> list[str]:
    """The command-line overrides that point a debug preset at ``world`` and ``output_dir``."""
    if stage == 1:
        sources = f"[{{path: '{world}/stage1/{{00000..00001}}.tar', kind: webdataset}}]"
    else:
        sources = (f"[{{path: '{world}/stage2/llava.json', kind: llava, image_root: '{world}/images'}}, "
                   f"{{path: '{world}/stage2/alpaca.json', kind: alpaca}}]")
    return ["--data.sources", sources, "--training.output_dir", str(output_dir),
            "--training.max_steps", str(STEPS), "--training.init_from", str(init_from),
            "--tokenizer.path", str(ROOT / "tests/assets/llama-tokenizer")]


def losses(run_dir: Path) -> list[float]:
    """The per-step losses in ``run_dir/metrics.jsonl``."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def golden_losses(work: Path) -> dict[str, list[float]]:
    """Trains both debug presets in this process under ``work``; returns their per-step losses."""
    from mmtune.cli import main

    world = write_data(work / "world")
    runs = {}
    for stage, init_from in ((1, None), (2, work / "debug-stage1")):
        name = f"debug-stage{stage}"
        args = overrides(stage, world, work / name, str(init_from) if init_from else None)
        if main(["train", str(ROOT / "configs" / f"{name}.yaml"), *args]) != 0:
            raise SystemExit(f"{name} failed")
        runs[name] = losses(work / name)
    return runs


def main() -> int:
    """Writes tests/golden/<preset>.json for both debug presets."""
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, values in golden_losses(Path(tmp)).items():
            path = GOLDEN_DIR / f"{name}.json"
            path.write_text(json.dumps({"preset": f"configs/{name}.yaml", "steps": len(values),
                                        "losses": values}, indent=2) + "\n")
            print(f"wrote {path}: {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
