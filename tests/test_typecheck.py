"""mypy --strict over the whole package, as it installs: a typing mistake in the DP mechanisms,
the wire contract or the coordinator's privacy report costs privacy, and one elsewhere costs
the operator a traceback.

pyproject maps the card's folders into one package (common/ is fedsyn, client/ is
fedsyn.client, ...), which mypy cannot follow from the source tree, so the package is
assembled in a temporary folder first, exactly as it installs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("client", "server", "simulations", "cli")


def test_the_whole_package_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy", reason="mypy comes with the test extras")
    package = tmp_path / "fedsyn"
    shutil.copytree(ROOT / "common", package, ignore=shutil.ignore_patterns("__pycache__", "*.csv"))
    for name in MAPPED:
        shutil.copytree(ROOT / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports", "--follow-imports=silent",
               "--cache-dir", str(tmp_path / "cache")]
    command += ["-p", "fedsyn"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
