"""The package's layers import downward only (docs/architecture.md): every ``import mmtune.X`` in a module,
at the top or inside a function, names a layer at or below the module's own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mmtune"
LAYERS = [  # lowest first; folders and modules of one row may import each other
    {"config", "config_values", "presets", "errors", "machine"},
    {"models"},
    {"data"},
    {"training", "distributed", "formats"},
    {"inference"},
    {"serving", "evaluation", "bench", "planning", "dryrun"},
    {"commands", "cli", "__main__", "__init__"},
]


def _layer(part: str) -> int:
    for rank, names in enumerate(LAYERS):
        if part in names:
            return rank
    raise AssertionError(f"mmtune.{part} belongs to no layer: add it to LAYERS and docs/architecture.md")


def _top(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _imported(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [n.split(".")[1] for n in names if n.startswith("mmtune.")]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_its_own(path):
    own = _layer(_top(path))
    above = sorted({name for name in _imported(ast.parse(path.read_text())) if _layer(name) > own})
    assert not above, f"{path.relative_to(PACKAGE)} (layer {own}) imports {above}"
