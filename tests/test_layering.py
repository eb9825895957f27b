"""Imports flow one way: the low-level modules never import the stages built on them.

Read from the source (``ast``), so lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "covidct"

#: module file -> packages it must not import (at any depth, lazily or not).
RULES: dict[str, tuple[str, ...]] = {
    "bundle.py": (
        "covidct.classify",
        "covidct.segment",
        "covidct.infer",
        "covidct.diagnose",
        "covidct.pipeline",
    ),
    "registry.py": ("covidct",),
    "errors.py": ("covidct",),
    "decide.py": ("covidct.classify", "covidct.segment", "covidct.diagnose", "covidct.serve", "covidct.cli"),
}


def imported_modules(path: Path) -> set[str]:
    """Every ``covidct...`` module that ``path`` imports, top-level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m == "covidct" or m.startswith("covidct.")}


def test_imported_modules_sees_lazy_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "import os\n\ndef g():\n    from covidct.classify.inference import X\n    import covidct.segment\n"
    )
    assert imported_modules(f) == {"covidct.classify.inference", "covidct.segment"}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("module", sorted(RULES))
def test_low_level_modules_do_not_import_the_stages(module: str) -> None:
    bad = sorted(m for m in imported_modules(SRC / module) if any(_within(m, p) for p in RULES[module]))
    assert not bad, f"covidct/{module} imports {bad}: move that code to a module above it"


def test_the_rule_catches_an_import(tmp_path: Path) -> None:
    f = tmp_path / "bundle.py"
    f.write_text("def load():\n    from covidct.classify.inference import SliceClassifier\n")
    assert any(_within(m, "covidct.classify") for m in imported_modules(f))
