"""The package layout of shared/STYLE.md: imports flow one way, and only jobs/ touches Ray/DeepSpeed."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"tokenizer", "transformer", "pipeline", "evaluation", "jobs"}
# Which of our packages each package may import (STYLE.md "The shape of the system").
ALLOWED = {
    "tokenizer": set(),
    "transformer": set(),
    "evaluation": set(),
    "pipeline": {"tokenizer"},
    "jobs": OURS - {"jobs"},
}
ONLY_IN_JOBS = {"ray", "deepspeed"}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_data_flow(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        imported = imported_top_levels(path)
        for name in sorted(imported & (OURS - {package} - ALLOWED[package])):
            offenders.append(f"{path.relative_to(ROOT)} imports {name}")
        if package != "jobs":
            for name in sorted(imported & ONLY_IN_JOBS):
                offenders.append(f"{path.relative_to(ROOT)} imports {name} (only jobs/ may)")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", sorted(OURS))
def test_top_level_packages_resolve_inside_the_repository(package):
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().parent == ROOT / package


def test_layout_check_sees_a_violation(tmp_path):
    # The checker itself must catch an upward import, or the tests above could pass vacuously.
    bad = tmp_path / "bad.py"
    bad.write_text("from pipeline.store import x\nimport ray.data\n")
    assert {"pipeline", "ray"} <= imported_top_levels(bad)
