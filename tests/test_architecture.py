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
# Operations code (starting and watching daemons, the App-bundle check, the coordinator's live
# view) has a room of its own on each side; the privacy path beside it (on the coordinator's side:
# the run's loop, reply screening, the record, release, resume and strategies) and the simulations
# run without it, so never import it.
OPERATIONS = {"fedsyn.client.ops": ("client", "simulations"), "fedsyn.server.ops": ("server", "simulations")}


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, and for ``from a import b`` also ``a.b`` (b may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found |= {node.module or ""} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def _imported_subpackages(path: Path) -> set[str]:
    return {parts[1] for parts in (name.split(".") for name in _imported_modules(path))
            if len(parts) >= 2 and parts[0] == "fedsyn" and parts[1] in FOLDERS}


def test_sub_packages_import_only_downwards():
    violations = []
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for target in _imported_subpackages(path) - ALLOWED[package] - {package}:
                violations.append(f"{path.relative_to(ROOT)} imports fedsyn.{target}")
    assert violations == []


def test_the_privacy_path_imports_no_operations_code():
    violations = [f"{path.relative_to(ROOT)} imports {name}"
                  for ops, folders in OPERATIONS.items() for folder in folders
                  for path in sorted((ROOT / folder).glob("*.py"))
                  for name in sorted(_imported_modules(path)) if name == ops or name.startswith(ops + ".")]
    assert violations == []
