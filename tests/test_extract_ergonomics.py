"""A researcher's careless inputs get a clear answer, fast, and leave nothing behind.

Each test is one mistake seen with a real public cohort table: codes written 19.0, a
';'-separated or empty file, a misspelt column, a rare outcome class, a delta or an --out
that cannot work, a missing file, Ctrl-C, a failed start, and run folders inside a git
checkout. No test runs a federation except the last, which checks the signed release of a
tiny run beside the run folder's .gitignore.
"""

from __future__ import annotations

import subprocess
import sys
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


# -- 2. clear errors for a delta or an --out that cannot work, before anything is written -------

@pytest.fixture()
def cohort(tmp_path, demo_frame) -> Path:
    path = tmp_path / "cohort.csv"
    demo_frame.head(600).to_csv(path, index=False)
    return path


def test_a_delta_sites_refuse_is_a_clear_error_before_anything_is_written(tmp_path, cohort, demo_frame):
    out = tmp_path / "run"
    result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--delta", "0.1", "--out", out)
    assert result.exit_code == 2 and "--delta 0.1" in _said(result) and "unexpected" not in result.output
    assert not out.exists()
    for index in range(2):  # 1/1500 = 6.7e-4: below what sites accept, above 1/rows
        demo_frame.iloc[index * 1500:(index + 1) * 1500].to_csv(tmp_path / f"s{index}.csv", index=False)
    result = _invoke("simulate", "--sites", tmp_path / "s0.csv", "--sites", tmp_path / "s1.csv", "--schema", SCHEMA,
                     "--delta", "9e-4", "--out", out)
    assert result.exit_code == 2 and "1/rows" in _said(result) and not out.exists(), result.output


def test_an_out_that_cannot_be_a_folder_is_a_clear_error_before_anything_is_written(tmp_path, cohort):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out in (a_file, a_file / "run"):
        result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--out", out)
        assert result.exit_code == 2 and "unexpected" not in result.output, result.output
        assert "--out" in _said(result) and "not a folder" in _said(result)
    assert a_file.read_text() == "mine"


def test_a_system_error_is_shown_in_the_systems_words_and_any_other_is_withheld(monkeypatch, capsys, tmp_path):
    import fedsyn.cli.main as main

    for raised, code, shown in ((PermissionError(13, "Permission denied", str(tmp_path / "keys")), 74,
                                 f"Permission denied: {tmp_path / 'keys'}"),
                                (OSError("cell 123456 unreadable"), 70, "unexpected OSError")):
        def failing(raised=raised):
            raise raised

        monkeypatch.setattr(main, "app", failing)
        with pytest.raises(SystemExit) as exit_:
            main.main()
        said = " ".join(capsys.readouterr().err.split())
        assert exit_.value.code == code and shown in said and "123456" not in said


# -- 3. arguments and paths are checked before torch and Flower load ----------------------------

@pytest.mark.parametrize("command", [["simulate", "--data", "missing.csv", "--schema", SCHEMA],
                                     ["fit", "missing.csv", "--schema", SCHEMA]])
def test_a_missing_file_is_reported_before_heavy_libraries_load(tmp_path, command):
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom fedsyn.cli.main import app\n"
             f"result = CliRunner().invoke(app, {command!r})\n"
             "heavy = sorted(m for m in ('torch', 'flwr', 'opacus', 'sklearn') if m in sys.modules)\n"
             "print(result.exit_code, heavy, repr(result.output))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("2 [] "), done.stdout + done.stderr
    assert "file not found: missing.csv" in done.stdout
