"""A researcher's careless inputs get a clear answer, fast, and leave nothing behind.

Each test is one mistake seen with a real public cohort table: codes written 19.0, a
';'-separated or empty file, a misspelt column, a rare outcome class, a delta or an --out
that cannot work, a missing file, Ctrl-C, a failed start, and run folders inside a git
checkout. No test runs a federation except the last, which checks the signed release of a
tiny run beside the run folder's .gitignore.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsyn.cli.main import app
from fedsyn.data.demo import demo_schema_path
from fedsyn.data.tables import DataFileError, read_table
from fedsyn.data.validation import validate_frame

SCHEMA = str(demo_schema_path())
REPO = Path(__file__).resolve().parents[1]


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _said(result) -> str:
    """What the command printed, unwrapped (rich wraps long lines at 80 columns)."""
    return " ".join(result.output.split())


# -- 1. CSV hints ------------------------------------------------------------------------------

def test_codes_written_with_a_decimal_point_are_named_as_such(tmp_path, demo_frame, demo_schema):
    frame = demo_frame.head(40).copy()
    frame["flc_grp"] = frame["flc_grp"].astype(str) + ".0"  # what pandas writes for a float column with gaps
    frame.to_csv(tmp_path / "codes.csv", index=False)
    report = validate_frame(read_table(tmp_path / "codes.csv", demo_schema), demo_schema)
    (problem,) = report.problems
    assert problem.column == "flc_grp" and "decimal point" in problem.kind and "1.0 for '1'" in problem.kind
    result = _invoke("validate", tmp_path / "codes.csv", "--schema", SCHEMA)
    assert result.exit_code == 1 and "decimal point" in _said(result)


def test_an_unknown_category_that_is_not_a_decimal_code_gets_no_decimal_hint(demo_frame, demo_schema):
    frame = demo_frame.head(10).copy()
    frame["flc_grp"] = "11"
    (problem,) = validate_frame(frame, demo_schema).problems
    assert "decimal point" not in problem.kind


@pytest.mark.parametrize(("separator", "suffix", "said"), [
    (";", ".csv", "';'-separated"), ("\t", ".csv", "tab-separated"), (",", ".tsv", "comma-separated")])
def test_a_file_with_another_separator_is_named_once(tmp_path, demo_frame, demo_schema, separator, suffix, said):
    path = tmp_path / f"cohort{suffix}"
    demo_frame.head(30).to_csv(path, index=False, sep=separator)
    with pytest.raises(DataFileError, match=said):
        read_table(path, demo_schema)
    result = _invoke("validate", path, "--schema", SCHEMA)
    assert result.exit_code == 2 and said in _said(result) and "column missing" not in result.output


def test_an_empty_file_is_said_to_be_empty(tmp_path, demo_schema):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "blank.csv").write_text("\n\n")
    for name in ("empty.csv", "blank.csv"):
        with pytest.raises(DataFileError, match="the file is empty"):
            read_table(tmp_path / name, demo_schema)
        result = _invoke("validate", tmp_path / name, "--schema", SCHEMA)
        assert result.exit_code == 2 and "the file is empty" in _said(result)
        assert "EmptyDataError" not in result.output


def test_a_misspelt_column_gets_a_did_you_mean(demo_frame, demo_schema):
    frame = demo_frame.head(10).rename(columns={"creatinine": "creatinin", "sample_yr": "Sample_Yr"})
    problems = {p.column: p.kind for p in validate_frame(frame, demo_schema).problems}
    assert "'creatinin'" in problems["creatinine"] and "'Sample_Yr'" in problems["sample_yr"]
    assert "did you mean 'creatinine'" in problems["creatinin"]
    unrelated = demo_frame.head(10).assign(ward="x")
    assert "did you mean" not in {p.column: p.kind for p in validate_frame(unrelated, demo_schema).problems}["ward"]
