"""mypy --strict where a typing mistake costs privacy: the DP mechanisms and accounting
(fedsyn.privacy), the wire contract (fedsyn.federation), the error base (fedsyn.errors), the
site (fedsyn.client), the model and encoder (fedsyn.model), the data contract (fedsyn.data),
signing and the audit trail (fedsyn.trust), atomic files (fedsyn.files), the evaluation and
verdict (fedsyn.evaluation), simulations and the CLI: every module the privacy-critical lines
in tests/PRIVACY_CRITICAL.md live in, but the coordinator's.

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
STRICT = ("fedsyn.privacy", "fedsyn.federation", "fedsyn.errors", "fedsyn.files", "fedsyn.client", "fedsyn.model",
          "fedsyn.data", "fedsyn.trust", "fedsyn.evaluation", "fedsyn.simulations", "fedsyn.cli")


def test_privacy_and_wire_contract_pass_mypy_strict(tmp_path):
    pytest.importorskip("mypy", reason="mypy comes with the test extras")
    package = tmp_path / "fedsyn"
    shutil.copytree(ROOT / "common", package, ignore=shutil.ignore_patterns("__pycache__", "*.csv"))
    for name in MAPPED:
        shutil.copytree(ROOT / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports", "--follow-imports=silent",
               "--cache-dir", str(tmp_path / "cache")]
    command += [arg for module in STRICT for arg in ("-p", module)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
