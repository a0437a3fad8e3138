"""The layout shows the architecture: lower layers import nothing above them, files stay small,
and the search space's defaults are written once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hwsbs", "cost_models", "hardware_profiles")
MAX_LINES = 400


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"), [("hardware_profiles", ("hwsbs", "cost_models")), ("cost_models", ("hwsbs",))]
)
def test_lower_layers_import_nothing_above_them(package, forbidden):
    offenders = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in _sources(package)
        for m in _imported_modules(p)
        if m.split(".")[0] in forbidden
    ]
    assert not offenders, offenders


def test_no_package_source_file_over_the_size_guide():
    long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for pkg in PACKAGES
        for p in _sources(pkg)
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not long, long


def test_default_candidate_bits_are_written_once():
    pattern = re.compile(r"[(\[]2, 4, 8[)\]]")
    places = [
        f"{p.relative_to(ROOT)}:{i}"
        for pkg in PACKAGES
        for p in _sources(pkg)
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line.split("#")[0]) and "group_size" not in line and "expected bit widths" not in line
    ]
    assert len(places) == 1 and places[0].startswith("hwsbs/defaults.py:"), places


def test_importing_cost_models_does_not_import_hwsbs():
    import subprocess
    import sys

    code = "import cost_models, hardware_profiles, sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'hwsbs'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
