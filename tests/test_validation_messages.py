"""Out-of-domain problems say how to fix them, and never print a cell's value."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from fedsyn.data.schema import Column, Schema
from fedsyn.data.validation import validate_frame


def test_each_out_of_domain_problem_ends_with_its_fix_and_prints_no_value(demo_frame, demo_schema):
    """A newcomer read 'value outside the public bounds' and did not know whether to fix the rows or the schema."""
    frame = demo_frame.head(30).copy()
    frame["age"] = frame["age"].where(frame.index >= 2, 777)
    frame["sex"] = frame["sex"].astype(object).where(frame.index != 3, "Qx9")
    frame["kappa"] = frame["kappa"].where(frame.index != 4, np.nan)
    report = validate_frame(frame, demo_schema)
    lines = {problem.column: problem.describe() for problem in report.problems}
    assert lines["age"].endswith("correct those rows, or widen the schema's public bounds if such values are real")
    assert lines["sex"].endswith("correct those rows, or add the category to the schema's list if it is a real one")
    assert lines["kappa"].endswith("or mark the column nullable in the schema if values may really be missing")
    assert lines["age"].startswith("column 'age', 2 row(s) (e.g. line 2, line 3): value outside")
    assert "777" not in report.describe() and "Qx9" not in report.describe()  # patient values stay local


def test_values_finer_than_the_declared_precision_are_a_note_not_a_problem(demo_frame, demo_schema):
    """A site declared kappa to one decimal but two rows hold more: `fedsyn validate` says so
    (where, never the value) without failing the extract, and a site's record policy keeps them
    (the release rounds them to the declared step). A value at a continuous bound is not flagged."""
    from fedsyn.data.validation import screen_records

    column = demo_schema.column("kappa")
    schema = demo_schema.model_copy(update={"columns": [
        c.model_copy(update={"precision": 0.1}) if c.name == "kappa" else c for c in demo_schema.columns]})
    frame = demo_frame.head(30).copy()
    frame["kappa"] = np.round(frame["kappa"], 1).clip(column.lower, column.upper)
    frame.loc[[5, 7], "kappa"] = [1.2345, 2.3456]
    frame.loc[9, "kappa"] = column.lower  # the bound, 0.01: an atom, not a finer value
    report = validate_frame(frame, schema)
    # ... and the bound the frame now reaches, the assay's limit, is not pointed at: the schema says where it comes from
    # (creatinine, nullable, is empty in a few of these 30 rows: named apart, helper-123 F4)
    assert report.ok and [note.column for note in report.notes] == ["kappa", "(schema)"] and report.notes[0].rows == 2
    text = report.describe()
    assert ("note: column 'kappa', 2 row(s) (e.g. line 7, line 9): value recorded finer than the schema's "
            "precision") in text
    assert "1.2345" not in text and "2.3456" not in text
    assert len(screen_records(frame, schema, "drop").frame) == 30


def test_an_integer_columns_note_skips_its_bounds_missing_cells_and_values_already_a_problem():
    """An integer column recorded to the nearest 5 (bounds 1-99, no atoms): 7 and the bound 1 are
    noted; a missing cell, 120 (out of bounds) and 5.5 (not whole: a problem of its own) are not."""
    schema = Schema(name="doses", columns=[Column(name="dose", kind="integer", lower=1, upper=99, precision=5,
                                                  nullable=True)])
    frame = pd.DataFrame({"dose": pd.array([5, None, 7, 1, 120, 10], dtype="Int64")})
    report = validate_frame(frame, schema)
    assert [(note.column, note.rows) for note in report.notes] == [("dose", 2), ("(schema)", 1), ("(bounds)", 1)]
    assert report.notes[1].kind.startswith("dose (precision and nullable): each rests on a few")  # helper-123 F4
    assert [problem.rows for problem in report.problems] == [1]  # 120 only
    fractional = validate_frame(pd.DataFrame({"dose": [5.5, 10.0]}), schema)
    assert [p.rows for p in fractional.problems] == [1]
    assert [note.kind.split(":")[0] for note in fractional.notes] == ["dose (precision)"]  # 10 alone: helper-123 F4


def test_a_lone_misspelt_column_is_paired_and_non_numbers_say_how_to_fix_them(demo_frame, demo_schema):
    """A newcomer's schema said 'smoking' and the file 'smoker': no hint, because the names were
    not close enough for a general guess, though they were the only ones left unmatched."""
    frame = demo_frame.head(20).rename(columns={"creatinine": "creat_mgdl"})
    frame["age"] = frame["age"].astype(object).where(frame.index != 2, "<18")
    lines = {problem.column: problem.describe() for problem in validate_frame(frame, demo_schema).problems}
    assert "the file has 'creat_mgdl': misspelt?" in lines["creatinine"]
    assert "creat_mgdl" not in lines  # said once, at the schema's column (the file's is left out)
    assert "leave the cell empty and mark the column nullable" in lines["age"] and "<18" not in lines["age"]
    two_off = demo_frame.head(20).drop(columns=["mgus", "sex"]).assign(patient_id=1, ward="a")
    lines = {problem.column: problem.describe() for problem in validate_frame(two_off, demo_schema).problems}
    assert "misspelt" not in lines["mgus"] and "add it to the extract" in lines["mgus"]


def test_numbers_written_with_thousands_separators_are_named_as_such_never_by_value(demo_frame, demo_schema):
    """A newcomer's costs written '6,994.91' failed in every row as 'not a number', with a hint
    about detection limits and units and none about the separator."""
    frame = demo_frame.head(20).astype({"age": object})
    frame.loc[frame.index[:5], "age"] = ["1,050", "2,000.5", "n/a?", "38,1", "0,89"]
    problems = [p for p in validate_frame(frame, demo_schema).problems if p.column == "age"]
    grouped = next(p for p in problems if "thousands separators" in p.describe())
    comma = next(p for p in problems if "decimal comma" in p.describe())  # helper-102: only "not a number"
    other = next(p for p in problems if "not a number" in p.describe())
    assert grouped.rows == 2 and comma.rows == 2 and other.rows == 1
    assert not any(value in p.describe() for p in problems for value in ("1,050", "2,000.5", "n/a?", "38,1", "0,89"))


def test_a_drafts_outcome_typo_and_a_schemas_bad_column_name_the_column_never_a_value(demo_frame, tmp_path):
    """`fedsyn schema draft --outcome readmit` printed pydantic's error with a repr of the draft
    (bounds read off private rows); a bad kind was reported as 'columns.2.kind'."""
    import json

    import pytest

    from fedsyn.data.draft import draft_schema
    from fedsyn.data.schema import SchemaError

    frame = demo_frame.head(50).assign(age=demo_frame["age"].head(50) + 0.123)
    with pytest.raises(SchemaError) as caught:
        draft_schema(frame, outcome="deaht")
    assert "did you mean 'death'?" in str(caught.value) and "0.123" not in str(caught.value)
    raw = {"name": "t", "columns": [{"name": "sex", "kind": "categorical", "categories": [0, 1]},
                                    {"name": "crp", "kind": "lab value", "lower": 0, "upper": 300}]}
    (tmp_path / "s.json").write_text(json.dumps(raw))
    with pytest.raises(SchemaError) as caught:
        Schema.load(tmp_path / "s.json")
    assert "column 'crp': kind:" in str(caught.value) and "columns.1" not in str(caught.value)
    assert 'column \'sex\': categories.0: Input should be a valid string (write each category in quotes' \
        in str(caught.value)
    raw["columns"] = [{"name": "bnp", "kind": "continuous", "lower": 0, "upper": 5000, "transform": "log"}]
    (tmp_path / "s.json").write_text(json.dumps(raw))
    with pytest.raises(SchemaError) as caught:  # a newcomer read "column 'bnp': column 'bnp': ..."
        Schema.load(tmp_path / "s.json")
    assert str(caught.value).count("'bnp'") == 1 and "column 'bnp': a 'log' transform needs lower > 0" \
        in str(caught.value)


def test_a_file_without_a_header_line_never_prints_its_first_record(demo_frame, demo_schema, tmp_path):
    """Regression for the third review's F3: without a header line pandas took the first
    record for the column names, and every 'column not in the schema' printed one of its values."""
    from fedsyn.data.tables import read_table

    path = tmp_path / "no_header.csv"
    demo_frame.head(20).to_csv(path, index=False, header=False)
    first = [str(value) for value in demo_frame.iloc[0]]
    report = validate_frame(read_table(path), demo_schema)
    assert not report.ok and "first line name its columns" in report.describe()
    printed = set(re.findall(r"[\w.]+", report.describe()))
    assert not printed & {value for value in first if len(value) > 2}  # 1997, 5.7, 4.86, 1.7, dead
    from fedsyn.data.draft import draft_schema
    from fedsyn.data.schema import SchemaError

    for outcome in ("death", "outcome_col"):  # the draft's 'did you mean' and column list printed it too
        with pytest.raises(SchemaError) as caught:
            draft_schema(read_table(path), outcome=outcome)
        assert "header line" in str(caught.value)
        assert not set(re.findall(r"[\w.]+", str(caught.value))) & {value for value in first if len(value) > 2}


def test_a_headerless_first_record_of_words_and_empty_cells_is_not_printed(demo_frame, demo_schema, tmp_path):
    """helper-31: the first record's cells that looked like names were still printed ('MRN1693486',
    'Takotsubo cardiomyopathy', 'Unnamed: 42' for an empty lab value): one cell that looks like
    a value puts the whole line in doubt, and no name of it is shown."""
    from fedsyn.data.tables import read_table

    rows = demo_frame.head(20).astype(object)
    rows.iloc[0, 0], rows.iloc[0, 1], rows.iloc[0, 2] = "MRN1693486", "Takotsubo cardiomyopathy", None
    path = tmp_path / "no_header.csv"
    rows.assign(ward="Oncology 4B").to_csv(path, index=False, header=False)
    text = validate_frame(read_table(path), demo_schema).describe()
    assert "first line name its columns" in text
    for secret in ("MRN1693486", "Takotsubo", "Oncology", "Unnamed"):
        assert secret not in text
    assert "none of the schema's" in text and "column missing from the file" not in text  # one line, not 12


def test_a_header_in_capitals_is_paired_not_taken_for_a_missing_header_line(demo_frame, demo_schema, tmp_path):
    """helper-30: the headerless rule fired on AGE, SEX, ... and hid every name (the review of 42a1f65)."""
    from fedsyn.data.tables import read_table

    path = tmp_path / "upper.csv"
    demo_frame.head(20).rename(columns=str.upper).to_csv(path, index=False)
    text = validate_frame(read_table(path, demo_schema), demo_schema).describe()
    assert "the file has 'AGE': misspelt?" in text and "header line" not in text


def test_stray_spaces_around_a_category_are_read_as_it_and_another_letter_case_gets_a_hint(demo_frame, demo_schema,
                                                                                             tmp_path):
    """A spreadsheet export wrote 'F ' for 'F' in a third of the rows: every one of them failed
    validation, and a site's default policy would have dropped a third of its patients."""
    from fedsyn.data.tables import read_table

    frame = demo_frame.head(30).copy()
    frame["sex"] = frame["sex"].astype(str)
    frame.loc[::3, "sex"] = frame.loc[::3, "sex"] + " "
    for name in ("spaced.csv", "spaced.parquet"):
        (frame.to_csv if name.endswith("csv") else frame.to_parquet)(tmp_path / name, index=False)
        read = read_table(tmp_path / name, demo_schema)
        assert validate_frame(read, demo_schema).ok and set(read["sex"]) <= {"F", "M"}
    frame["sex"] = frame["sex"].str.strip().str.lower()
    frame.to_csv(tmp_path / "lower.csv", index=False)
    text = validate_frame(read_table(tmp_path / "lower.csv", demo_schema), demo_schema).describe()
    assert "in another letter case" in text and "'f'" not in text and "'m'" not in text


def test_a_schema_files_outcome_typo_gets_a_guess_and_a_draft_makes_its_folder(demo_frame, demo_schema, tmp_path):
    """helper-31: an outcome typo in a schema file listed all 71 columns and guessed none, and a
    draft into a folder that did not exist yet failed with 'No such file or directory'."""
    from fedsyn.data.schema import Schema, SchemaError

    raw = json.loads(demo_schema.model_dump_json())
    raw["outcome"] = "deaht"
    (tmp_path / "typo.json").write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match="outcome 'deaht' is not a column of the schema .did you mean 'death'") \
            as caught:
        Schema.load(tmp_path / "typo.json")
    assert "kappa" not in str(caught.value)
    demo_schema.save(tmp_path / "new" / "folder" / "schema.json")
    assert Schema.load(tmp_path / "new" / "folder" / "schema.json").column_names == demo_schema.column_names


def test_bounds_left_as_the_draft_read_them_off_the_rows_are_pointed_at_by_name_never_by_value():
    """A newcomer set every needs_review of a drafted schema to false and changed nothing else:
    validate passed, simulate ran without a word, and the signed release's schema.json carried a
    CRP of 1567.9 and a BNP of 17234 as 'public' bounds. A bound that is exactly the extract's own
    smallest or largest value is named (not its value); a bound of 0 is not."""
    from fedsyn.data.draft import draft_schema

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"crp": np.round(rng.lognormal(3, 1, 300), 1), "visits": rng.integers(0, 40, 300),
                          "died": rng.choice(["yes", "no"], 300)})
    drafted = draft_schema(frame, outcome="died")
    lazy = drafted.model_copy(update={"columns": [c.model_copy(update={"needs_review": False})
                                                  for c in drafted.columns]})
    notes = validate_frame(frame, lazy).notes
    assert [(note.column, note.rows, note.counted) for note in notes] == [("(bounds)", 2, "column(s)")]
    assert notes[0].kind.startswith("crp (lower and upper), visits (upper): each is this extract's own")
    assert str(frame["crp"].max()) not in validate_frame(frame, lazy).describe()
    public = Schema(name="labs", outcome="died", columns=[
        Column(name="crp", kind="continuous", lower=0.1, upper=500, transform="log"),
        Column(name="visits", kind="integer", lower=0, upper=100),
        Column(name="died", kind="categorical", categories=["no", "yes"])])
    assert not validate_frame(frame.assign(crp=frame["crp"].clip(0.2, 499)), public).notes
    sourced = lazy.model_copy(update={"columns": [
        c.model_copy(update={"bounds_source": "the assay's reporting range"}) if c.name == "crp" else c
        for c in lazy.columns]})
    assert validate_frame(frame, sourced).notes[0].kind.startswith("visits (upper): each is")  # said where from
    with pytest.raises(ValueError, match="bounds_source"):
        Column(name="died", kind="categorical", categories=["no", "yes"], bounds_source="the protocol")
    with pytest.raises(ValueError, match="'bounds_source' is blank"):
        Column(name="crp", kind="continuous", lower=0.1, upper=500, bounds_source=" ")


def test_values_crowded_into_a_few_bins_of_wide_public_bounds_are_noted_by_column_never_by_value():
    """A newcomer put LDH on its assay's range, 50-5,000 U/L: its patients (100-800) filled 6 of
    64 bins, and the release's median came back at 2,690 (real 221). Such a column is noted,
    by name; a count with a bin per value (visits 0-3 on 0-50) is not. helper-95's ALT of 2-51 U/L
    on 0-1,000 filled 12 of an integer grid's 63 bins (which grow with the value) and was not
    noted at a limit of 8 bins; the release's mean came back at 448 (real 25)."""
    rng = np.random.default_rng(3)
    ldh = rng.lognormal(5.4, 0.35, 400).round(1)
    frame = pd.DataFrame({"ldh": ldh, "visits": rng.integers(0, 4, 400), "alt": rng.integers(2, 52, 400),
                          "y": rng.choice(["a", "b"], 400)})
    schema = Schema(columns=[Column(name="ldh", kind="continuous", lower=50, upper=5000),
                             Column(name="visits", kind="integer", lower=0, upper=50),
                             Column(name="alt", kind="integer", lower=0, upper=1000),
                             Column(name="y", kind="categorical", categories=["a", "b"])], outcome="y")
    notes = [note.describe() for note in validate_frame(frame, schema).notes]
    crowded = [note for note in notes if "middle 98 %" in note]
    assert len(crowded) == 1 and "ldh, alt" in crowded[0] and "visits" not in crowded[0] and '"log"' in crowded[0]
    assert str(ldh[0]) not in crowded[0]
    narrowed = schema.model_copy(update={"columns": [Column(name="ldh", kind="continuous", lower=50, upper=1500,
                                                            transform="log"), schema.columns[1],
                                                     Column(name="alt", kind="integer", lower=0, upper=200),
                                                     schema.columns[3]]})
    assert not any("middle 98 %" in note.describe() for note in validate_frame(frame, narrowed).notes)


def test_a_number_marker_a_numeric_column_could_really_hold_is_noted(demo_frame, demo_schema):
    """A newcomer's '999' for an unknown age also blanked two real BNP values of 999, without a
    word: every cell equal to a marker is read as missing, in every column. A marker within a
    numeric column's public bounds is noted (from the schema: the marker, never a value)."""
    marked = demo_schema.model_copy(update={"missing_values": ["999", "-1", "?", "25"]})
    notes = {note.column: note.describe() for note in validate_frame(demo_frame.head(50), marked).notes}
    assert "25" in notes["kappa"] and "lambda" in notes and "999" not in notes["kappa"]  # bounds 0.01-30
    assert "age" not in notes  # 50-105: neither 999, -1 nor 25
    assert "sex" not in notes and "creatinine" not in notes  # a category; bounds 0.2-15


def test_yes_and_no_written_another_way_get_a_hint_without_their_values():
    """A newcomer's eleven yes/no flags were written Y, yes, 1, No, N and 0: the letter-case hint
    covered the 'Yes' rows and said nothing of the other three quarters."""
    from fedsyn.data.schema import ColumnKind

    schema = Schema(name="flags", columns=[Column(name="diabetes", kind=ColumnKind.CATEGORICAL,
                                                  categories=["no", "yes"])])
    frame = pd.DataFrame({"diabetes": ["yes", "no", "Yes", "Y", "1", "N", "0", "no"]})
    text = validate_frame(frame, schema).describe()
    assert "in another letter case (some of them)" in text
    assert "yes or no written another way (some of them), as Y / N, 1 / 0 or true / false" in text
    assert "'Y'" not in text and "'1'" not in text


def test_a_levels_declared_spellings_are_read_as_it_in_csv_and_parquet(tmp_path):
    """Two newcomers rewrote every extract whose test results read 'pos', '+' and 'Positive': the
    schema now says a level's other spellings once, and every reading of an extract maps them."""
    from fedsyn.data.tables import read_table

    schema = Schema(name="tests", columns=[
        Column(name="result", kind="categorical", categories=["negative", "positive"],
               spellings={"positive": ["pos", "+", "positive"], "negative": ["neg", "-"]}),
        Column(name="sex", kind="categorical", categories=["F", "M"])])
    frame = pd.DataFrame({"result": ["pos", " + ", "POSITIVE", "Neg", "-", "negative", "positive", "negativ"],
                          "sex": ["F", "M", "F", "M", "F", "M", "F", "f"]})
    for name in ("tests.csv", "tests.parquet"):
        (frame.to_csv if name.endswith("csv") else frame.to_parquet)(tmp_path / name, index=False)
        read = read_table(tmp_path / name, schema)
        assert list(read["result"]) == ["positive", "positive", "positive", "negative", "negative", "negative",
                                        "positive", "negativ"]
        report = validate_frame(read, schema)
        assert {problem.column for problem in report.problems} == {"result", "sex"}  # 'negativ': a typo, refused
    text = validate_frame(read, schema).describe()
    assert "under the column's 'spellings'" in text and "'f'" not in text


@pytest.mark.parametrize(("column", "error"), [
    ({"categories": ["no", "yes"], "spellings": {"maybe": ["m"]}}, "not among its categories"),
    ({"categories": ["no", "yes"], "spellings": {"yes": ["NO"]}}, "would read as both 'yes' and 'no'"),
    ({"categories": ["no", "yes"], "spellings": {"yes": ["x"], "no": ["X"]}}, "would read as both"),
    ({"categories": ["no", "yes"], "spellings": {"no": ["Y"]}}, "would read as both"),  # a flag's Y is its yes
    ({"categories": ["1", "2"], "spellings": {"1": ["2.0"]}}, "would read as both"),  # '2.0' is read as '2'
    ({"categories": ["no", "yes"], "spellings": {"no": ["N/A"]}}, "read as an empty cell"),  # pandas' NA
    ({"categories": ["no", "yes"], "spellings": {"yes": [" "]}}, "is empty"),
    ({"categories": ["no", "yes"], "spellings": {"yes": ["unk"]}, "missing_values": ["unk"]}, "missing_values"),
    ({"categories": ["a", "b"], "spellings": {"b": ["2"]}, "missing_values": ["2.0"]}, "missing_values"),  # blanks 2
    ({"kind": "integer", "lower": 0, "upper": 3, "spellings": {"1": ["one"]}}, "must not list"),
])
def test_a_spelling_reads_as_one_level_only(column, error):
    """A spelling that is another level, another level's spelling, a flag's other yes or no, a
    CSV reader's empty cell or a missing marker would make one cell two things, or never its
    level: the schema is refused, naming the column."""
    with pytest.raises(ValueError, match=error):
        Column(**{"name": "flag", "kind": "categorical", **column})


def test_a_spelling_the_schemas_markers_blank_is_refused_and_none_listed_is_none():
    with pytest.raises(ValueError, match="among the schema's missing_values"):
        Schema(name="t", missing_values=["?"], columns=[
            Column(name="flag", kind="categorical", categories=["no", "yes"], spellings={"no": ["?"]})])
    with pytest.raises(ValueError, match="among the schema's missing_values"):  # a number marker blanks a 2 too
        Schema(name="t", missing_values=["2.0"], columns=[
            Column(name="flag", kind="categorical", categories=["a", "b"], spellings={"b": ["2"]})])
    # a marker the column lists as a level is kept there exactly: in another letter case it is blanked
    with pytest.raises(ValueError, match="among the schema's missing_values"):
        Schema(name="t", missing_values=["unknown"], columns=[
            Column(name="smoking", kind="categorical", categories=["Never", "Unknown"],
                   spellings={"Unknown": ["Unknown"]})])
    # none listed: left out of a written schema, and so the same fingerprint
    for empty in ({}, {"no": []}):
        assert Column(name="flag", kind="categorical", categories=["no"], spellings=empty).spellings is None
    decimal = Column(name="grade", kind="categorical", categories=["1", "2", "high"], spellings={"high": ["3.0"]})
    assert decimal.spelled_levels() == {"3": "high"}  # a cell '3.0' or '3' is read as 'high'
