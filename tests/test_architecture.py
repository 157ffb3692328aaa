"""The sub-packages import only downwards, as the README's architecture picture shows."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"data": "common/data", "privacy": "common/privacy", "model": "common/model",
           "evaluation": "common/evaluation", "trust": "common/trust", "federation": "common/federation",
           "client": "client", "server": "server", "simulations": "simulations", "cli": "cli"}
# What each sub-package may import besides itself.
ALLOWED = {
    "data": set(),
    "privacy": {"data"},
    "model": {"privacy", "data"},
    "evaluation": {"privacy", "data"},
    "trust": set(),
    "federation": {"model", "privacy", "data"},
    "client": {"federation", "model", "privacy", "data", "trust"},
    "server": {"federation", "model", "privacy", "data", "trust"},
    "simulations": {"server", "client", "federation", "model", "evaluation", "privacy", "data", "trust"},
    "cli": set(FOLDERS) - {"cli"},
}


def _imported_subpackages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if len(parts) >= 2 and parts[0] == "fedsyn" and parts[1] in FOLDERS:
                found.add(parts[1])
    return found


def test_sub_packages_import_only_downwards():
    violations = []
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            for target in _imported_subpackages(path) - ALLOWED[package] - {package}:
                violations.append(f"{path.relative_to(ROOT)} imports fedsyn.{target}")
    assert violations == []
