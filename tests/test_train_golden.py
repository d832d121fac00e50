"""Golden per-step losses of the debug presets (stage 1 on shards, then stage 2 from stage 1).

The numbers live in tests/golden/; ``scripts/regen_golden.py`` regenerates them deliberately (this test
runs exactly what that script runs). A change that moves them is a change in training numerics.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _regen_module():
    spec = importlib.util.spec_from_file_location("regen_golden", ROOT / "scripts" / "regen_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_debug_presets_reproduce_golden_losses(tmp_path):
    regen = _regen_module()
    got = regen.golden_losses(tmp_path)
    for name, values in got.items():
        golden = json.loads((regen.GOLDEN_DIR / f"{name}.json").read_text())
        assert len(values) == golden["steps"] == regen.STEPS
        assert values == pytest.approx(golden["losses"], rel=1e-5, abs=1e-5), name
    first_stage2 = got["debug-stage2"]
    assert first_stage2[-1] < first_stage2[0], "stage 2 should lower the loss in 4 steps"
