"""A researcher's careless inputs get a clear answer, fast, and leave nothing behind.

Each test is one mistake seen with a real public cohort table: codes written 19.0, a
';'-separated or empty file, a misspelt column, a rare outcome class, a delta or an --out
that cannot work, a missing file, Ctrl-C, a failed start, and run folders inside a git
checkout. No test runs a federation except the last, which checks the signed release of a
tiny run beside the run folder's .gitignore.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsyn.cli.main import app
from fedsyn.client.policy import SitePolicy
from fedsyn.data.demo import demo_schema_path
from fedsyn.data.tables import DataFileError, read_table
from fedsyn.data.validation import validate_frame
from fedsyn.privacy.accounting import PrivacyLedger
from fedsyn.privacy.marginals import marginals_event

SCHEMA = str(demo_schema_path())
REPO = Path(__file__).resolve().parents[1]


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _said(result) -> str:
    """What the command printed, unwrapped (rich wraps long lines at 80 columns)."""
    return " ".join(result.output.split())


# -- 1. CSV hints ------------------------------------------------------------------------------

def test_codes_written_with_a_decimal_point_are_read_as_the_schemas_levels(tmp_path, demo_frame, demo_schema):
    """pandas writes a number column with gaps as '2.0'; a newcomer's draft, which read such a
    column as numbers and named its levels '0'-'7', was refused by validate on its own file.
    A whole number written with a decimal point is read as the level spelled without it; a
    code the schema does not list stays a problem."""
    frame = demo_frame.head(40).copy()
    frame["flc_grp"] = frame["flc_grp"].astype(str) + ".0"  # what pandas writes for a float column with gaps
    frame.loc[frame.index[0], "flc_grp"] = "11.0"
    frame.to_csv(tmp_path / "codes.csv", index=False)
    read = read_table(tmp_path / "codes.csv", demo_schema)
    assert read["flc_grp"].iloc[1:].tolist() == demo_frame["flc_grp"].head(40).astype(str).iloc[1:].tolist()
    (problem,) = validate_frame(read, demo_schema).problems
    assert problem.column == "flc_grp" and problem.rows == 1 and "11" not in problem.describe()


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
    unrelated = demo_frame.head(10).assign(ward="x")  # a column the schema does not list: left out, noted
    assert validate_frame(unrelated, demo_schema).ok
    # helper-95's site file named hemoglobin 'Hgb': an abbreviation, which no spelling likeness finds
    short = demo_frame.head(10).rename(columns={"creatinine": "Crt"}).assign(ward="x")
    said = {p.column: p.kind for p in validate_frame(short, demo_schema).problems}["creatinine"]
    assert "the file has 'Crt': if that is this column under a short name" in said and "ward" not in said
    assert "add it to the extract" in said  # the guess sits beside the advice, never instead of it
    # letters of the name in order, vowels among them: as likely another column (bilirubin's 'bun', helper-97)
    other = demo_frame.head(10).rename(columns={"creatinine": "cane"}).assign(ward="x")
    assert "'cane'" not in {p.column: p.kind for p in validate_frame(other, demo_schema).problems}["creatinine"]
    # A newcomer's `--outcome died` was asked "did you mean 'diabetes'?": a name that begins one column is that one
    from fedsyn.errors import closest_name

    assert closest_name("died", ["diabetes", "died_in_hospital", "age"]) == "died_in_hospital"
    assert closest_name("los", ["lost_to_followup", "length_of_stay"]) is None  # too short to begin anything surely


def test_simulate_warns_about_an_outcome_class_with_few_rows_at_a_site(tmp_path, demo_frame, no_federation):
    from fedsyn.server.record import FederationError

    no_federation["raising"] = FederationError("stopped by the test")
    dead = demo_frame[demo_frame["death"] == "dead"].head(9)
    alive = demo_frame[demo_frame["death"] == "alive"]
    (tmp_path / "a.csv").write_text(pd.concat([alive.head(300), dead]).to_csv(index=False))
    (tmp_path / "b.csv").write_text(pd.concat([alive.iloc[300:600], demo_frame[demo_frame["death"] == "dead"]
                                               .iloc[9:109]]).to_csv(index=False))
    result = _invoke("simulate", "--sites", tmp_path / "a.csv", "--sites", tmp_path / "b.csv", "--schema", SCHEMA,
                     "--out", tmp_path / "run")
    assert "outcome class 'dead' has fewer than 20 rows at a" in _said(result), result.output
    assert " 9 rows" not in _said(result)  # a small-cell count, never printed
    assert "at b" not in result.output and "'alive'" not in result.output


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
    for index in range(2):  # 1,050 rows train at each after the hold-out: 9.8e-4 is above 1/rows
        demo_frame.iloc[index * 1500:(index + 1) * 1500].to_csv(tmp_path / f"s{index}.csv", index=False)
    result = _invoke("simulate", "--sites", tmp_path / "s0.csv", "--sites", tmp_path / "s1.csv", "--schema", SCHEMA,
                     "--delta", "9.8e-4", "--out", out)
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


# -- simulate with its federation stubbed out -------------------------------------------------

@pytest.fixture()
def no_federation(monkeypatch):
    """simulate's federation replaced by a stub: it sets up one site as the real one does (a copy
    of real rows, a ledger), charges it if told, then raises what it is told to."""
    import fedsyn.simulations.workflow as workflow
    from fedsyn.files import make_run_folder

    told: dict[str, object] = {}

    def stub(simulation, on_round=None, on_stage=None):
        make_run_folder(simulation.out)
        site = simulation.out / "sites" / "site-0"
        site.mkdir(parents=True)
        (site / "data.parquet").write_bytes(b"real rows")
        ledger = PrivacyLedger.create(site / "ledger.json", 1e-5)
        if told.get("policy"):
            SitePolicy(site_id="site-0", data=Path("data.parquet"), schema=Path(SCHEMA), ledger=Path("ledger.json"),
                       max_epsilon=1.0, delta=1e-5).save(site / "policy.json")
        if told.get("charged"):
            ledger.charge(marginals_event(8.0), 1.0)
        (simulation.out / "keys").mkdir()
        (simulation.out / "keys" / "coordinator.key").write_text("private")
        raise told.get("raising", RuntimeError("stub federation"))

    monkeypatch.setattr(workflow, "simulate", stub)
    return told


# -- 4. Ctrl-C says what is left and how to clean it ---------------------------------------------

@pytest.mark.parametrize("policy", [True, False], ids=["with-policy", "policy-missing"])
def test_ctrl_c_after_a_charge_names_what_is_left_and_how_to_remove_it(tmp_path, cohort, no_federation, policy):
    no_federation.update(charged=True, raising=KeyboardInterrupt(), policy=policy)
    out = tmp_path / "run"
    result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--yes", "--out", out)
    text = _said(result)
    assert result.exit_code == 130, result.output
    assert "interrupted" in text and "sites/" in text and "keys/" in text and f"rm -rf {out}" in text
    # How much of the budget is gone, from the site's own ledger; of what, from its policy when it has one.
    spent = re.search(r"site-0 spent epsilon 0\.\d+( of 1)?", text)
    assert spent is not None and bool(spent.group(1)) == policy, text
    assert (out / "sites" / "site-0" / "ledger.json").is_file()  # a spent budget is never forgotten silently


def test_ctrl_c_before_any_charge_removes_what_the_start_wrote(tmp_path, cohort, no_federation):
    no_federation["raising"] = KeyboardInterrupt()
    out = tmp_path / "run"
    result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--yes", "--out", out)
    assert result.exit_code == 130 and "interrupted" in result.output and not out.exists(), result.output


# -- 5. a failed start leaves nothing behind ------------------------------------------------------

def test_a_failed_start_removes_the_out_folder_it_created(tmp_path, cohort, no_federation):
    from fedsyn.server.record import FederationError

    no_federation["raising"] = FederationError("a site refused before round 0")
    out = tmp_path / "new" / "run"
    result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--yes", "--out", out)
    assert result.exit_code == 2 and "a site refused before round 0" in _said(result)
    assert not out.exists() and (tmp_path / "new").exists()
    out.mkdir()  # a folder the researcher made: kept, and emptied of what the start wrote
    result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--yes", "--out", out)
    assert result.exit_code == 2 and out.is_dir() and list(out.iterdir()) == []


def test_overwrite_never_deletes_the_researchers_own_files(tmp_path, cohort, no_federation):
    """A newcomer's `--out proj --overwrite`, where proj held the data, the schema and notes,
    deleted them all and then failed (the run could not read its schema); `--out .` wiped the
    working folder. Only a folder holding nothing but an earlier simulation's is replaced."""
    project = tmp_path / "proj"
    project.mkdir()
    data, schema = project / "cohort.csv", project / "schema.json"
    shutil.copy(cohort, data)
    shutil.copy(SCHEMA, schema)
    (project / "my_notes.txt").write_text("mine")
    for overwrite in ((), ("--overwrite",)):
        result = _invoke("simulate", "--data", data, "--schema", schema, "--yes", "--out", project, *overwrite)
        assert result.exit_code == 2 and "not from an earlier `fedsyn simulate`" in _said(result), result.output
        assert sorted(p.name for p in project.iterdir()) == ["cohort.csv", "my_notes.txt", "schema.json"]
    earlier = tmp_path / "earlier"
    (earlier / "sites").mkdir(parents=True)
    shutil.copy(cohort, earlier / "sites" / "cohort.csv")
    (earlier / ".fedsyn-simulation").write_text("stamp")
    result = _invoke("simulate", "--data", earlier / "sites" / "cohort.csv", "--schema", SCHEMA, "--yes",
                     "--out", earlier, "--overwrite")
    assert result.exit_code == 2 and "lies inside --out" in _said(result)
    assert (earlier / "sites" / "cohort.csv").is_file()
    # Names a simulation writes are not enough: the user's own keys/ folder is kept (the review's case).
    own = tmp_path / "own"
    (own / "keys").mkdir(parents=True)
    (own / "keys" / "my-hospital.pem").write_text("mine")
    result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--yes", "--out", own, "--overwrite")
    assert result.exit_code == 2 and "not from an earlier `fedsyn simulate`" in _said(result)
    assert (own / "keys" / "my-hospital.pem").is_file()
    (tmp_path / "link").symlink_to(project)
    result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--yes", "--out", tmp_path / "link",
                     "--overwrite")
    assert result.exit_code == 2 and "is a link" in _said(result) and (project / "cohort.csv").is_file()


def test_an_unexpected_failure_before_any_charge_also_removes_the_start(tmp_path, cohort, no_federation):
    out = tmp_path / "run"
    result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--yes", "--out", out)
    assert isinstance(result.exception, RuntimeError) and not out.exists()


def test_a_failure_after_a_charge_keeps_the_ledgers(tmp_path, cohort, no_federation):
    from fedsyn.server.record import FederationError

    no_federation.update(charged=True, raising=FederationError("lost every site in round 2"))
    out = tmp_path / "run"
    result = _invoke("simulate", "--data", cohort, "--schema", SCHEMA, "--yes", "--out", out)
    assert result.exit_code == 2 and (out / "sites" / "site-0" / "ledger.json").is_file()


# -- 6. run folders hold real rows and keys: git ignores them --------------------------------------

def test_the_checkout_ignores_the_default_and_demo_run_folders():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for folder in ("demo-run", "fedsyn-simulation", "fedsyn-model"):
        assert subprocess.run(["git", "check-ignore", "-q", f"{folder}/keys/coordinator.key"], cwd=REPO).returncode == 0


def test_a_run_folder_is_ignored_by_any_git_checkout_it_is_made_in(tmp_path):
    from fedsyn.files import make_run_folder

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert make_run_folder(tmp_path / "runs" / "today") is True
    (tmp_path / "runs" / "today" / "sites").mkdir()
    (tmp_path / "runs" / "today" / "sites" / "data.parquet").write_text("real rows")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    assert status.stdout == ""
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    assert make_run_folder(mine) is False and not (mine / ".gitignore").exists()  # never in a folder it did not make


def test_a_tiny_run_ignores_itself_and_its_release_still_verifies(tmp_path, demo_frame):
    data = tmp_path / "cohort.csv"
    demo_frame.sample(600, random_state=3).to_csv(data, index=False)
    out = tmp_path / "run"
    result = _invoke("simulate", "--data", data, "--schema", SCHEMA, "--split", "2", "--rounds", "1",
                     "--local-steps", "1", "--rows", "50", "--no-compare", "--yes", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"
    assert not (out / "release" / ".gitignore").exists()
    verified = _invoke("verify", out / "release", "--key", out / "keys" / "coordinator.pub")
    assert verified.exit_code == 0 and "OK" in verified.output, verified.output


def test_a_validation_report_of_real_rows_is_ignored_by_git_wherever_it_is_written(tmp_path, demo_frame, demo_schema):
    """``fedsyn evaluate --out my-eval`` (and a fit's local report) wrote its report of real rows
    into a folder git would pick up; simulate's run folders already ignored themselves."""
    from fedsyn.evaluation.report import write_local_report

    rows = demo_frame.sample(400, random_state=5)
    out = tmp_path / "my-eval"
    write_local_report(rows.iloc[:200], rows.iloc[:200], rows.iloc[200:], demo_schema, out, None, 0)
    assert (out / "report.json").exists() and (out / ".gitignore").read_text().splitlines()[-1] == "*"
