"""Mutation tests: break one privacy-relevant line of production code, the targeted tests must fail.

Opt-in (``python -m pytest -m mutation``, a few minutes). Each case copies the project into a
scratch folder, applies one textual mutation there, and runs the tests aimed at it against
the mutated copy (a ``fedsyn`` package assembled from the copy's folders, first on the path).
A control run first checks that every targeted test passes on the unmutated copy, so a red
mutation run means the tests caught the mutation, not that they were broken already.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .mutations import MUTATIONS, Mutation

pytestmark = pytest.mark.mutation

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("client", "server", "simulations", "cli")  # folders pyproject maps into the fedsyn package
PACKAGES = ("common", *MAPPED)


def _copy_project(destination: Path) -> Path:
    """A scratch copy of the code and tests, and an import root where ``fedsyn`` is that copy
    (``common/`` is the ``fedsyn`` package; the other folders are mapped into it, as in pyproject)."""
    for name in (*PACKAGES, "tests"):
        shutil.copytree(ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    for name in MAPPED:
        (destination / "common" / name).symlink_to(destination / name, target_is_directory=True)
    (destination / "import-root").mkdir()
    (destination / "import-root" / "fedsyn").symlink_to(destination / "common", target_is_directory=True)
    return destination


def _run_tests(project: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(project / "import-root"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=--import-mode=importlib",
         *tests], cwd=project, env=environment, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> None:
    """Every targeted test passes on the unmutated copy, run the same way."""
    project = _copy_project(tmp_path_factory.mktemp("control"))
    targets = tuple(sorted({test for mutation in MUTATIONS for test in mutation.tests}))
    result = _run_tests(project, targets)
    assert result.returncode == 0, result.stdout[-3000:]
    probe = subprocess.run([sys.executable, "-c", "import fedsyn.model.training as t; print(t.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(project / "import-root")}, capture_output=True,
                           text=True)
    assert str(project / "import-root") in probe.stdout, "the scratch copy is not the fedsyn under test"


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutation_is_caught(mutation: Mutation, control: None, tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    target = project / mutation.path
    source = target.read_text()
    assert source.count(mutation.original) == 1, f"the mutation's anchor is not unique in {mutation.path}"
    target.write_text(source.replace(mutation.original, mutation.mutated))
    result = _run_tests(project, mutation.tests)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    assert result.returncode == 1 and " failed" in summary, (
        f"'{mutation.name}' survived (or broke collection): {summary}")
