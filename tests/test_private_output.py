"""No patient value in any output: failing commands on a table with distinctive values.

The real ``fedsyn`` program runs as a user would start it; everything it prints (stdout
and stderr) is searched for the table's distinctive cells, valid and invalid ones.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsyn.data.demo import demo_schema_path

# Distinctive values: two valid cells that must never be echoed, two invalid ones that are
# the cause of the failure and must be located by line and column, never quoted.
VALID_SECRETS = {"kappa": 2.71828, "lambda": 3.14159}
INVALID_SECRETS = {"age": 123456, "sex": "Zorglub"}


@pytest.fixture(scope="module")
def tables(demo_frame, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("private-output")
    good = demo_frame.sample(400, random_state=0).reset_index(drop=True)
    for column, value in VALID_SECRETS.items():
        good.loc[::7, column] = value
    bad = good.copy()
    for row, (column, value) in enumerate(INVALID_SECRETS.items(), start=3):
        bad[column] = bad[column].astype(object)
        bad.loc[row, column] = value
    good.to_csv(folder / "good.csv", index=False)
    bad.to_csv(folder / "bad.csv", index=False)
    return {"good": folder / "good.csv", "bad": folder / "bad.csv", "folder": folder}


def _fedsyn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    program = Path(sys.executable).with_name("fedsyn")
    return subprocess.run([str(program), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _commands(tables: dict[str, Path]) -> dict[str, list[str]]:
    schema = str(demo_schema_path())
    out = str(tables["folder"] / "out")
    return {
        "validate bad data": ["validate", str(tables["bad"]), "--schema", schema],
        "simulate bad data": ["simulate", "--data", str(tables["bad"]), "--schema", schema, "--out", out],
        "fit bad data": ["fit", str(tables["bad"]), "--schema", schema, "--out", out],
        "fit negative epsilon": ["fit", str(tables["good"]), "--schema", schema, "--epsilon", "-1", "--out", out],
        "simulate unknown aggregation": ["simulate", "--data", str(tables["good"]), "--schema", schema,
                                         "--aggregation", "foo", "--out", out],
    }


def test_failing_commands_print_no_patient_value_and_no_traceback(tables):
    outputs = {}
    for name, args in _commands(tables).items():
        result = _fedsyn(*args, cwd=tables["folder"])
        assert result.returncode != 0, f"{name} should fail"
        outputs[name] = result.stdout + result.stderr
    for name, text in outputs.items():
        assert "Traceback" not in text, f"{name} printed a traceback"
        for secret in [*VALID_SECRETS.values(), *INVALID_SECRETS.values()]:
            assert str(secret) not in text, f"{name} printed the patient value {secret!r}"
    located = outputs["validate bad data"]
    assert "age" in located and "sex" in located and "line 5" in located  # where to look, not what is there
    assert not (tables["folder"] / "out" / "sites").exists()  # refused before any site was set up


def test_a_missing_share_of_a_handful_of_rows_is_not_reported():
    """helper-31: the verdict printed 'missing in 43% of real rows with ethnicity = Pacific
    Islander', 3 of the 7 training patients of that group. A share is reported only for a group
    of at least ten rows; the verdict then speaks of the correlation instead."""
    from fedsyn.evaluation.metrics import _missing_share

    missing = np.zeros(200)
    missing[:3] = 1.0
    group = np.zeros(200)
    group[:7] = 1.0
    assert _missing_share(missing, group, 1.0) is None
    group[:10] = 1.0
    assert _missing_share(missing, group, 1.0) == pytest.approx(0.3)
