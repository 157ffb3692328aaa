"""Out-of-domain records follow the site's policy (drop by default, clamp, or refuse).

One impossible value (a BMI of 9.2 typed for 92) used to make a whole hospital refuse: a
signal decided by one record, outside any mechanism. Dropping or repairing each record on
its own keeps neighbouring extracts neighbours; the counts stay in the site's own log.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site, initialise_ledger
from fedsyn.data.demo import demo_schema_path
from fedsyn.data.schema import Schema, is_number
from fedsyn.data.tables import read_table, write_table
from fedsyn.data.validation import DataValidationError, screen_records
from fedsyn.federation import protocol
from fedsyn.simulations.run import prepare_sites
from fedsyn.trust.certs import create_ca


def _dirty(frame):
    bad = frame.copy()
    bad.loc[3, "kappa"] = 31337.25  # outside [0.01, 30]
    bad.loc[5, "sex"] = "X"  # not a category
    bad.loc[8, "age"] = 49.0  # below the study's lower bound 50
    return bad


def test_drop_removes_exactly_the_out_of_domain_records(small_frame, demo_schema):
    screening = screen_records(_dirty(small_frame), demo_schema, "drop")
    assert (screening.dropped, screening.clamped, len(screening.frame)) == (3, 0, len(small_frame) - 3)
    assert {p.column for p in screening.problems} == {"kappa", "sex", "age"}


def test_clamp_moves_numbers_to_the_bounds_and_drops_what_cannot_be_clamped(small_frame, demo_schema):
    screening = screen_records(_dirty(small_frame), demo_schema, "clamp")
    assert (screening.dropped, screening.clamped) == (1, 2)  # the unknown sex is dropped
    assert screening.frame["kappa"].max() == 30.0 and screening.frame["age"].min() >= 50


def test_refuse_and_file_level_problems_raise(small_frame, demo_schema):
    with pytest.raises(DataValidationError):
        screen_records(_dirty(small_frame), demo_schema, "refuse")
    for handling in ("drop", "clamp", "refuse"):
        with pytest.raises(DataValidationError):
            screen_records(small_frame.drop(columns=["kappa"]), demo_schema, handling)


def _site(folder, frame, extract=None) -> Site:
    """A seeded simulated site whose policy file, like a hospital's, does not mention
    out_of_domain (so the default applies). Its streams are bound to ``frame`` (a seeded
    simulation's are bound to its rows); ``extract``, when given, replaces the rows it reads, so
    two sites differing only in their extract share every stream."""
    path = prepare_sites([frame], demo_schema_path(), folder, epsilon=50.0, delta=1e-5, seed=4,
                         stream_nonce="4" * 32).policies[0]
    if extract is not None:
        write_table(extract, path.parent / "data.parquet")
    raw = json.loads(path.read_text())
    del raw["out_of_domain"]
    path.write_text(json.dumps(raw))
    return Site(SitePolicy.load(path))


def test_by_default_a_dirty_record_is_as_if_absent(tmp_path, small_frame, demo_schema, caplog):
    """The default policy answers with exactly what the clean extract would give (same seed):
    the bad records change nothing but the site's own log."""
    dirty, clean = _dirty(small_frame), small_frame.drop(index=[3, 5, 8]).reset_index(drop=True)
    fingerprint = protocol.schema_fingerprint(demo_schema)
    with caplog.at_level(logging.WARNING, logger="fedsyn.client"):
        released, _ = _site(tmp_path / "dirty", dirty).release_marginals(20.0, 50.0, fingerprint)
    expected, _ = _site(tmp_path / "clean", dirty, extract=clean).release_marginals(20.0, 50.0, fingerprint)
    for name in expected.tables:
        np.testing.assert_array_equal(released.tables[name], expected.tables[name])
    # Columns and kinds, never a count (a log line goes to a collector: "(1)" is one patient;
    # ninth review, F2), and never a value
    assert "column 'kappa': value outside the public bounds" in caplog.text and "record(s)" not in caplog.text
    assert "(1)" not in caplog.text and "31337" not in caplog.text


def test_a_hint_on_some_of_a_columns_bad_cells_logs_no_count(tmp_path, small_frame, demo_schema, caplog):
    """Tenth review, F1: the letter-case hint said "(1 of them)" inside the problem's kind, which
    the site logs: one patient's cell, in a log that goes to a collector."""
    dirty = small_frame.copy()
    dirty["sex"] = dirty["sex"].astype(object)
    dirty.loc[[2, 4, 6], "sex"] = "f"
    dirty.loc[5, "sex"] = "X"
    with caplog.at_level(logging.WARNING, logger="fedsyn.client"):
        _site(tmp_path / "dirty", dirty).release_marginals(20.0, 50.0, protocol.schema_fingerprint(demo_schema))
    assert "in another letter case (some of them)" in caplog.text and "of them)" in caplog.text
    assert not any(f"({count} of them)" in caplog.text for count in range(1, 10))


def test_a_column_the_schema_does_not_list_is_never_read_by_a_site(tmp_path, small_frame, demo_schema):
    """An extract that keeps an identifier (or a column dropped from the schema) answers exactly
    as the extract without it: the column is left out before any mechanism reads a row."""
    fingerprint = protocol.schema_fingerprint(demo_schema)
    with_id = small_frame.assign(mrn=[f"MRN{k}" for k in range(len(small_frame))])
    released, _ = _site(tmp_path / "with", small_frame, extract=with_id).release_marginals(20.0, 50.0, fingerprint)
    expected, _ = _site(tmp_path / "without", small_frame).release_marginals(20.0, 50.0, fingerprint)
    for name in expected.tables:
        np.testing.assert_array_equal(released.tables[name], expected.tables[name])


def test_what_a_site_logs_of_its_extract_names_columns_and_kinds_never_counts_or_lines():
    """helper-73: the launch logged every validation note whole, with its rows and line numbers."""
    import inspect

    from fedsyn.client.ops import launch
    from fedsyn.data.validation import Problem

    note = Problem("kappa", "value recorded finer than the schema's precision", 3, ["line 4", "line 9"])
    assert note.named() == "column 'kappa': value recorded finer than the schema's precision"
    assert "note.named()" in inspect.getsource(launch.supernode_launch)


def test_a_site_over_its_max_rows_logs_no_row_count(tmp_path, small_frame, demo_schema, caplog):
    """The ninth review's F2: the log line said 'holds 495 rows, more than max_rows 450'."""
    from fedsyn.client.site import PolicyRefusal

    path = prepare_sites([small_frame], demo_schema_path(), tmp_path, epsilon=50.0, delta=1e-5).policies[0]
    policy = SitePolicy.load(path)
    policy.model_copy(update={"max_rows": len(small_frame) - 7}).save(path)
    with caplog.at_level(logging.INFO, logger="fedsyn"), pytest.raises(PolicyRefusal):
        Site(SitePolicy.load(path)).release_marginals(20.0, 50.0, protocol.schema_fingerprint(demo_schema))
    assert f"max_rows {len(small_frame) - 7}" in caplog.text and str(len(small_frame)) not in caplog.text


def test_a_row_count_refusal_is_met_at_start_and_delta_is_checked_against_max_rows(tmp_path, small_frame):
    """helper-90 F2: each request checked δ·n < 1 and n <= max_rows on the private row count, so
    one more patient flipped the reply from tables to a refusal. `client start` now refuses such
    an extract before joining, and with ``max_rows`` the δ check is the policy's own, on public
    values: a policy whose δ is not below 1/max_rows does not load."""
    from fedsyn.client.ops.launch import supernode_launch
    from fedsyn.client.policy import CoordinatorConnection, PolicyError

    rows = pd.concat([small_frame, small_frame], ignore_index=True)  # 1,200: at least 1/δ for a δ of 9e-4
    connection = CoordinatorConnection(superlink="127.0.0.1:9092", root_certificates=create_ca(tmp_path / "ca")[0],
                                       auth_private_key=tmp_path / "auth.key")
    for delta, changes, why in ((9e-4, {}, "1/n"), (1e-5, {"max_rows": len(rows) - 1}, "max_rows")):
        path = prepare_sites([rows], demo_schema_path(), tmp_path / why, epsilon=5.0, delta=delta).policies[0]
        joining = SitePolicy.load(path).model_copy(update={"coordinator": connection})
        joining.model_copy(update=changes).save(path)
        with pytest.raises(PolicyError, match=why) as refused:
            supernode_launch(path)
        assert str(len(rows)) not in str(refused.value)
    joining.model_copy(update={"max_rows": len(rows)}).save(path)
    assert supernode_launch(path).command
    joining.model_copy(update={"max_rows": 5000, "delta": 5e-4}).save(path)  # δ·n < 1, but not δ·max_rows
    with pytest.raises(PolicyError, match="below 1/max_rows"):
        SitePolicy.load(path)


def test_delta_at_exactly_one_over_the_rows_is_refused_by_the_site_and_the_policy(tmp_path, small_frame):
    """delta = 1/n allows leaking one whole record of n with that probability: the rule is
    'below', at the boundary too (helper-110 S15: off by one and untested). 1/1024 is exact in
    floating point, so the product is exactly 1."""
    from fedsyn.client.policy import PolicyError
    from fedsyn.privacy.budget import delta_fits

    path = prepare_sites([small_frame], demo_schema_path(), tmp_path, epsilon=5.0, delta=1 / 1024).policies[0]
    site = Site(SitePolicy.load(path))
    assert site.row_count_refusal(1024) is not None and site.row_count_refusal(1023) is None
    assert not delta_fits(1 / 49, 49)  # (1/49) * 49 rounds to below 1: the quotient says no (helper-117)
    SitePolicy.load(path).model_copy(update={"max_rows": 1023}).save(path)
    assert SitePolicy.load(path).max_rows == 1023
    SitePolicy.load(path).model_copy(update={"max_rows": 1024}).save(path)
    with pytest.raises(PolicyError, match="below 1/max_rows"):
        SitePolicy.load(path)


def test_an_unexpected_site_failure_is_located_in_the_sites_log_and_never_in_the_reply(tmp_path, small_frame,
                                                                                     monkeypatch, caplog):
    """A crash inside a mechanism: the operator's log shows where (file, line, function); the
    exception's text, which may quote a cell, appears nowhere; the coordinator gets a fixed text."""
    from flwr.app import ConfigRecord, RecordDict

    from fedsyn.data.schema import Schema

    from .helpers import client_reply

    quoted = "cell value 31337.25 in row 8"  # what a library's message might quote

    def crash(*_args, **_kwargs):
        raise RuntimeError(quoted)

    monkeypatch.setattr("fedsyn.client.site.noisy_marginals", crash)
    monkeypatch.delenv("FEDSYN_DEBUG", raising=False)
    plan = prepare_sites([small_frame], demo_schema_path(), tmp_path, epsilon=50.0, delta=1e-5)
    config = ConfigRecord({"noise_multiplier": 5.0, "epsilon": 1.0,
                           protocol.SCHEMA_HASH: protocol.schema_fingerprint(Schema.load(demo_schema_path()))})
    with caplog.at_level(logging.ERROR, logger="fedsyn.client"):
        reply = client_reply(plan.policies[0], RecordDict({protocol.CONFIG: config}), protocol.QUERY_MARGINALS)
    assert reply.has_error() and reply.error.code == protocol.ErrorCode.SITE_FAILURE
    assert "31337" not in reply.error.reason and "31337" not in caplog.text
    assert "in release_marginals" in caplog.text and "RuntimeError (message withheld" in caplog.text

    def full(*_args, **_kwargs):  # helper-78's full disk logged 'OSError' alone
        raise OSError(28, f"No space left on device ({quoted})", str(tmp_path / "ledger-replies" / "r.json"))

    monkeypatch.setattr("fedsyn.client.site.noisy_marginals", full)
    caplog.clear()
    config["epsilon"] = 2.0  # the first request was charged before it failed: room for a second
    with caplog.at_level(logging.ERROR, logger="fedsyn.client"):
        client_reply(plan.policies[0], RecordDict({protocol.CONFIG: config}), protocol.QUERY_MARGINALS)
    assert f"OSError (ENOSPC on {tmp_path / 'ledger-replies' / 'r.json'})" in caplog.text
    assert "31337" not in caplog.text


def test_an_extract_the_site_cannot_encode_is_refused_before_round_zero_is_charged(tmp_path, small_frame,
                                                                                   monkeypatch, demo_schema):
    """A 50-column table crashed every site in round 1, after round 0 had charged 0.7 epsilon."""
    from fedsyn.client.site import SiteRefusal
    from fedsyn.model.encoder import TableEncoder
    from fedsyn.privacy.accounting import PrivacyLedger

    def overflow(*_args, **_kwargs):
        raise OverflowError("Python integer 130 out of bounds for int8")

    monkeypatch.setattr(TableEncoder, "encode", overflow)
    site = _site(tmp_path, small_frame)
    with pytest.raises(SiteRefusal) as refused:
        site.release_marginals(20.0, 50.0, protocol.schema_fingerprint(demo_schema))
    assert refused.value.code == protocol.ErrorCode.SITE_FAILURE
    assert PrivacyLedger.load(site.policy.ledger).events == []


def test_blank_empties_the_bad_cells_of_nullable_columns_and_drops_the_rest(small_frame, demo_schema):
    """An impossible value in a column that may be empty (an age of 999 for 'unknown') costs the
    record that cell, not the record: creatinine may be empty, so its bad cells are emptied and
    their records kept; kappa, sex and age may not, so those records are dropped."""
    dirty = _dirty(small_frame).astype({"creatinine": object})
    dirty.loc[11, "creatinine"] = 999.0  # outside [0.2, 15]
    dirty.loc[12, "creatinine"] = "n/d"  # not a number
    screening = screen_records(dirty, demo_schema, "blank")
    assert (screening.dropped, screening.clamped, screening.blanked) == (3, 0, 2)
    assert len(screening.frame) == len(small_frame) - 3 and screening.frame["creatinine"].max() <= 15
    kept = screening.frame.set_index(small_frame.drop(index=[3, 5, 8]).index)
    assert kept.loc[[11, 12], "creatinine"].isna().all() and kept.loc[11, "age"] == small_frame.loc[11, "age"]
    assert screening.changed == "3 record(s) left out, 2 cell(s) emptied"  # counts of what happened, no value
    dirty.loc[3, "creatinine"] = 999.0  # in a record left out for its kappa: left out, not emptied too
    assert screen_records(dirty, demo_schema, "blank").blanked == 2


def test_a_site_whose_column_changed_form_refuses_to_join_naming_it_and_no_value(tmp_path, small_frame):
    """helper-78's F4: a new export that wrote kappa with its unit left 90 % of the records out
    of domain, and `client start` joined with the rest. Now it refuses before joining (the
    coordinator sees a site that has not come, never a refusal), names the column and the kind,
    and leaves a few bad records to ``out_of_domain`` as before."""
    from fedsyn.client.ops.launch import supernode_launch
    from fedsyn.client.policy import CoordinatorConnection
    from fedsyn.data.validation import WidespreadProblems
    from fedsyn.privacy.accounting import PrivacyLedger

    kept = len(small_frame) // 20  # 5 %: below the default share of 10 %
    changed = small_frame.assign(kappa=[f"{value:.3f}" + (" mg/L" if row >= kept else "")
                                        for row, value in enumerate(small_frame["kappa"])])
    path = prepare_sites([changed], demo_schema_path(), tmp_path, epsilon=5.0, delta=1e-5).policies[0]
    connection = CoordinatorConnection(superlink="127.0.0.1:9092", root_certificates=create_ca(tmp_path / "ca")[0],
                                       auth_private_key=tmp_path / "auth.key")
    SitePolicy.load(path).model_copy(update={"coordinator": connection}).save(path)
    with pytest.raises(WidespreadProblems) as refused:
        supernode_launch(path)
    message = str(refused.value)
    assert "column 'kappa'" in message and "not a number" in message and "max_problem_share" in message
    assert "row(s)" not in message and "row 2" not in message  # a service log's line: no count, no row (helper-89)
    assert "mg/L" not in message and f"{small_frame.loc[kept, 'kappa']:.3f}" not in message
    assert not PrivacyLedger.load(SitePolicy.load(path).ledger).events

    SitePolicy.load(path).model_copy(update={"max_problem_share": 0.99}).save(path)
    assert supernode_launch(path).command  # the operator's choice: the records go to out_of_domain
    few = small_frame.assign(kappa=["n/a" if row < kept else f"{value:.3f}"  # 5 %: handled one by one, as before
                                    for row, value in enumerate(small_frame["kappa"])])
    write_table(few, SitePolicy.load(path).data)
    SitePolicy.load(path).model_copy(update={"max_problem_share": 0.1}).save(path)
    assert supernode_launch(path).command


@pytest.mark.parametrize("handling", ["drop", "clamp", "blank"])
def test_one_record_never_changes_how_the_others_are_read(tmp_path, small_frame, handling):
    """Reading is row-wise: an extract read with one more record is the extract read without it,
    plus (at most) that record. helper-106 F1: the schema's marker '99' matched a float export's
    '99.0' while the column was read as numbers, and one text cell anywhere in it (the marker
    '?', 'pending') made it text, where '99.0' no longer matched: 30 other records were then
    dropped or clamped, 15 times the tables' charged sensitivity."""
    schema = json.loads(demo_schema_path().read_text())
    schema["missing_values"] = ["?", "99"]
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    written = small_frame.astype(str).copy()
    written.loc[:29, "creatinine"] = "99.0"  # unknown, as a float export writes the marker

    def read(cells: pd.DataFrame, name: str) -> pd.DataFrame:
        path = prepare_sites([small_frame], tmp_path / "schema.json", tmp_path / name, epsilon=50.0,
                             delta=1e-5).policies[0]
        cells.to_csv(path.parent / "data.csv", index=False)
        raw = json.loads(path.read_text())
        raw.update(data="data.csv", out_of_domain=handling)
        path.write_text(json.dumps(raw))
        (path.parent / raw["ledger"]).unlink()  # no charge yet: a ledger for the CSV extract instead
        initialise_ledger(SitePolicy.load(path))
        return Site(SitePolicy.load(path)).load_data()

    alone = read(written, "alone")
    # '99.0' is the marker '99' written by a float export: read as an empty cell, as '' is
    pd.testing.assert_frame_equal(_values(alone), _values(read(written.replace({"creatinine": {"99.0": ""}}),
                                                               "empty")))
    for k, cell in enumerate(["?", "pending", "1,2", "099", " 99 ", "", "0.9 mg/dL"]):
        record = written.iloc[[200]].assign(creatinine=cell)
        beside = read(pd.concat([written, record], ignore_index=True), f"beside-{k}")
        assert len(beside) - len(alone) in (0, 1), cell
        pd.testing.assert_frame_equal(beside.iloc[:len(alone)].astype(str), alone.astype(str), obj=repr(cell))


def test_no_cell_in_any_column_changes_how_the_other_records_are_read(tmp_path, small_frame):
    """The property above for every column of the schema and cells of every kind a dirty export
    holds, through the two functions :meth:`Site.load_data` runs (read, then screen)."""
    schema_file = tmp_path / "schema.json"
    raw = json.loads(demo_schema_path().read_text())
    schema_file.write_text(json.dumps({**raw, "missing_values": ["?", "99", "-"]}))
    schema = Schema.load(schema_file)
    # No creatinine of the base needs a clamp: an added one that does must change no other record
    written = small_frame.assign(creatinine=small_frame["creatinine"].clip(0.2, 15.0)).astype(str)
    written.loc[:29, "creatinine"] = "99.0"
    written.loc[30:34, "creatinine"] = "pending"  # dirty cells already there, beside a record that needs a clamp
    written.loc[35:37, "age"] = ""
    path = tmp_path / "extract.csv"

    def read(cells: pd.DataFrame, handling: str) -> pd.DataFrame:
        cells.to_csv(path, index=False)
        return screen_records(read_table(path, schema), schema, handling).frame

    for handling in ("drop", "clamp", "blank"):
        alone = read(written, handling)
        for column in schema.column_names:
            for cell in ["?", "-", "pending", "1,2", "099", "99.00", "", "<0.01", "NA", "1e400", "F ", "2.5 mg/dL",
                         "1e5", ".5", "12345678901234567890", "TRUE"]:
                record = written.iloc[[7]].assign(**{column: cell})
                beside = read(pd.concat([written, record], ignore_index=True), handling)
                where = f"{handling}: {column} = {cell!r}"
                assert len(beside) - len(alone) in (0, 1), where
                pd.testing.assert_frame_equal(_values(beside.iloc[:len(alone)]), _values(alone), obj=where)


def _values(frame: pd.DataFrame) -> pd.DataFrame:
    """Each cell as the mechanisms read it (52, 52.0 and '52' alike: a column with an empty cell is
    read as floats, one with a text cell as text, and a table's bins take either as the number)."""
    return frame.map(lambda value: None if pd.isna(value) else float(value) if is_number(str(value))
                     else str(value)).astype(object)
