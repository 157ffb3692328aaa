"""``prepare(SimulationRequest(...))``: the set-up of ``fedsyn simulate`` as a library call, so a
notebook gets the same checks, split and settings as the command line (tests/test_cli.py runs
the command itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsyn.errors import ConfigurationError
from fedsyn.simulations.request import SimulationRequest, prepare
from fedsyn.simulations.workflow import simulate


def test_the_demo_request_is_split_checked_and_planned_without_writing_anything(tmp_path):
    out = tmp_path / "run"
    prepared = prepare(SimulationRequest(split=2, rounds=1, local_steps=1, epsilon=20, sweep=(1.0,), out=out,
                                         seed=0))
    simulation = prepared.simulation
    assert len(simulation.tables) == 2 and simulation.test is not None and simulation.train is not None
    assert simulation.rows == len(simulation.train) == sum(len(t) for t in simulation.tables)
    assert simulation.settings.epsilon == 20 and simulation.sweep == (1.0,) and simulation.settings.rounds == 1
    assert prepared.site_names == ("site-0", "site-1") and simulation.site_names == ()
    assert [plan.site for plan in prepared.width_plans] == ["site-0", "site-1"] and prepared.usable
    assert any("little protection" in warning for warning in prepared.warnings)
    assert "total_site_rows" in simulation.public_facts
    assert simulation.settings.gan_config.numbers_as_measured  # the default; the request's option below
    assert not prepare(SimulationRequest(split=2, rounds=1, out=out, numbers_as_measured=False)
                       ).simulation.settings.gan_config.numbers_as_measured
    # The fourth review's F3: a sweep's releases come from the same rows, and each says so
    same_rows = simulation.public_facts["releases_from_the_same_rows"]["value"]
    assert same_rows == {"epsilon_per_release": [20, 1.0], "epsilon_if_all_published_at_most": 21.0,
                         "delta_if_all_published_at_most": 2 * simulation.settings.delta}
    assert not out.exists()


@pytest.mark.parametrize(("request_", "said"), [
    (dict(data=Path("rows.csv")), "need --schema"),
    (dict(engine="ray"), "choose inprocess or flower"),
    (dict(skew="age", dirichlet=0.5), "choose one"),
])
def test_inputs_that_cannot_go_together_are_refused_before_any_file_is_read(request_, said):
    with pytest.raises(ConfigurationError, match=said):
        SimulationRequest(**request_)


def test_a_delta_the_sites_would_refuse_is_refused_before_any_site_exists(tmp_path):
    with pytest.raises(ConfigurationError, match="1/rows"):
        prepare(SimulationRequest(split=3, delta=9e-4, out=tmp_path / "run"))


def _table_with_hospitals(tmp_path: Path) -> tuple[Path, Path]:
    """The demo's rows with a hospital column (A, B, C by row order) and its schema."""
    import json

    from fedsyn.data.demo import demo_data_path, demo_schema_path

    schema = json.loads(Path(demo_schema_path()).read_text())
    schema["columns"].append({"name": "hospital", "kind": "categorical", "categories": ["A", "B", "C"]})
    frame = __import__("pandas").read_csv(demo_data_path())
    frame["hospital"] = ["A", "B", "C"] * (len(frame) // 3) + ["A"] * (len(frame) % 3)
    (tmp_path / "rows.schema.json").write_text(json.dumps(schema))
    frame.to_csv(tmp_path / "rows.csv", index=False)
    return tmp_path / "rows.csv", tmp_path / "rows.schema.json"


def test_a_table_with_a_site_column_is_split_by_it_one_hospital_per_value(tmp_path):
    """``--data rows.csv --site-column hospital``: the hospitals are the column's values, each
    holding out its own share of rows, and the plan names them (a random split would mix them)."""
    data, schema = _table_with_hospitals(tmp_path)
    prepared = prepare(SimulationRequest(data=data, schema=schema, site_column="hospital", rounds=1, local_steps=1,
                                         out=tmp_path / "run", seed=0))
    simulation = prepared.simulation
    assert prepared.site_names == ("A", "B", "C") == simulation.site_names
    # which values hold a hospital's rows is published with their names (ninth review, F6)
    assert simulation.public_facts["site_names"]["value"] == ["A", "B", "C"]
    assert [set(table["hospital"]) for table in simulation.tables] == [{"A"}, {"B"}, {"C"}]
    assert [plan.site for plan in prepared.site_plans] == ["A", "B", "C"]
    assert set(simulation.test["hospital"]) == {"A", "B", "C"}
    assert simulation.settings.site_column == "hospital"
    report = simulate(simulation).local_report  # the local report compares each hospital with its own rows
    assert report is not None and [site["site"] for site in report["fidelity"]["sites"]] == ["A", "B", "C"]


@pytest.mark.parametrize(("request_", "said"), [
    (dict(split=4), "already splits the table"),
    (dict(skew="age"), "already splits the table"),
])
def test_a_site_column_split_refuses_another_split(tmp_path, request_, said):
    data, schema = _table_with_hospitals(tmp_path)
    with pytest.raises(ConfigurationError, match=said):
        SimulationRequest(data=data, schema=schema, site_column="hospital", **request_)


def test_a_misspelt_site_column_is_refused_with_a_guess_before_anything_is_planned(tmp_path):
    data, schema = _table_with_hospitals(tmp_path)
    with pytest.raises(ConfigurationError, match="did you mean 'hospital'"):
        prepare(SimulationRequest(data=data, schema=schema, site_column="hospitl", out=tmp_path / "run"))
    with pytest.raises(ConfigurationError, match="categorical column of the schema other than the outcome"):
        prepare(SimulationRequest(data=data, schema=schema, site_column="death", out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_site_column_with_unassigned_rows_or_a_tiny_hospital_is_refused_by_name(tmp_path):
    import json

    import pandas as pd

    data, schema = _table_with_hospitals(tmp_path)
    described = json.loads(schema.read_text())
    described["columns"][-1]["nullable"] = True  # a hospital column that may be empty
    schema.write_text(json.dumps(described))
    frame = pd.read_csv(data)
    frame.loc[:4, "hospital"] = None
    frame.to_csv(tmp_path / "unassigned.csv", index=False)
    with pytest.raises(ConfigurationError, match="some rows name no hospital"):
        prepare(SimulationRequest(data=tmp_path / "unassigned.csv", schema=schema, site_column="hospital",
                                  out=tmp_path / "run"))
    frame["hospital"] = ["A"] * (len(frame) - 3) + ["C"] * 3
    frame.to_csv(tmp_path / "tiny.csv", index=False)
    with pytest.raises(ConfigurationError, match="hospital 'C' has fewer than 20 rows"):
        prepare(SimulationRequest(data=tmp_path / "tiny.csv", schema=schema, site_column="hospital",
                                  out=tmp_path / "run"))


def test_an_unreviewed_schema_is_refused_before_any_row_is_read_or_plan_made(tmp_path):
    """A drafted schema still marked needs_review stops the run at once (it used to be refused only
    after the plan tables were printed), unless --allow-unreviewed-schema says otherwise."""
    import json

    data, schema = _table_with_hospitals(tmp_path)
    described = json.loads(schema.read_text())
    described["columns"][0]["needs_review"] = True
    schema.write_text(json.dumps(described))
    (tmp_path / "rows.csv").write_text("not,a,table\n")  # never read: the schema is refused first
    with pytest.raises(ConfigurationError, match="needs_review"):
        prepare(SimulationRequest(data=data, schema=schema, out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    # Allowed, the researcher is told what the release will publish (a newcomer found it silent).
    (tmp_path / "again").mkdir()
    data = _table_with_hospitals(tmp_path / "again")[0]
    prepared = prepare(SimulationRequest(data=data, schema=schema, out=tmp_path / "run", allow_unreviewed_schema=True))
    name = described["columns"][0]["name"]
    assert any(f"1 column(s) still need review ({name})" in warning and "without DP" in warning
               for warning in prepared.warnings)


def test_named_hospitals_folders_say_which_is_which(tmp_path, small_frame):
    """A newcomer's --site-column run showed east, north, south everywhere but wrote sites/site-0..2."""
    from fedsyn.data.demo import demo_schema_path
    from fedsyn.simulations.run import prepare_sites

    halves = [small_frame.iloc[:300], small_frame.iloc[300:]]
    plan = prepare_sites(halves, demo_schema_path(), tmp_path / "sites", 1.0, 1e-5, names=["east", "St. Mary's/ICU"])
    assert [p.parent.name for p in plan.policies] == ["site-0-east", "site-1-St._Mary_s_ICU"]
    unnamed = prepare_sites(halves, demo_schema_path(), tmp_path / "plain", 1.0, 1e-5)
    assert [p.parent.name for p in unnamed.policies] == ["site-0", "site-1"]


def test_a_table_with_a_held_out_file_or_share_holds_out_what_it_says(tmp_path):
    """A newcomer's --data could not take --held-out: 30 % was always held out of it."""
    import pandas as pd

    data, schema = _table_with_hospitals(tmp_path)
    rows = len(pd.read_csv(data))
    pd.read_csv(data).iloc[:200].to_csv(tmp_path / "later.csv", index=False)
    with_file = prepare(SimulationRequest(data=data, schema=schema, held_out=tmp_path / "later.csv",
                                          out=tmp_path / "run")).simulation
    assert len(with_file.train) == rows and len(with_file.test) == 200
    by_site = prepare(SimulationRequest(data=data, schema=schema, site_column="hospital", hold_out=0.5,
                                        out=tmp_path / "run", seed=0)).simulation
    assert len(by_site.test) == pytest.approx(rows / 2, abs=3) and set(by_site.test["hospital"]) == {"A", "B", "C"}
    every_row = prepare(SimulationRequest(data=data, schema=schema, hold_out=0, out=tmp_path / "run")).simulation
    assert every_row.test is None and len(every_row.train) == rows
    # helper-119 #3: hospitals' own files kept nothing for the report, and the run said so only after spending
    frame = pd.read_csv(data)
    files = []
    for value in ("A", "B", "C"):
        frame[frame["hospital"] == value].to_csv(tmp_path / f"{value}.csv", index=False)
        files.append(tmp_path / f"{value}.csv")
    per_file = prepare(SimulationRequest(sites=tuple(files), schema=schema, out=tmp_path / "run", seed=0)).simulation
    assert len(per_file.test) == pytest.approx(0.3 * rows, abs=4) and set(per_file.test["hospital"]) == {"A", "B", "C"}
    assert len(per_file.train) + len(per_file.test) == rows and per_file.site_names == ("A", "B", "C")
    whole_files = prepare(SimulationRequest(sites=tuple(files), schema=schema, hold_out=0, out=tmp_path / "run"))
    assert whole_files.simulation.test is None and len(whole_files.simulation.train) == rows


@pytest.mark.parametrize(("request_", "said"), [
    (dict(sites=(Path("a.csv"),), held_out=Path("b.csv"), hold_out=0.2), "the held-out rows are that file's"),
    (dict(data=Path("a.csv"), held_out=Path("b.csv"), hold_out=0.2), "the held-out rows are that file's"),
    (dict(data=Path("a.csv"), hold_out=1.0), "below 1"),
    (dict(held_out=Path("b.csv")), "goes with --data or --sites"),
    (dict(data=Path("a.csv"), out_of_domain="ignore"), "choose drop, clamp, blank or refuse"),
])
def test_held_out_rows_and_record_handling_that_cannot_be_meant_are_refused(request_, said):
    with pytest.raises(ConfigurationError, match=said):
        SimulationRequest(**({"schema": Path("s.json")} | request_))


def test_records_the_schema_does_not_allow_are_refused_by_default_or_handled_as_asked(tmp_path):
    """A newcomer's run was refused whole for 9 out-of-bound cells, with no way to drop them as a
    hospital's site does (policy out_of_domain)."""
    import pandas as pd

    data, schema = _table_with_hospitals(tmp_path)
    frame = pd.read_csv(data)
    frame.loc[:8, "age"] = 140  # above the public bound 105
    frame.loc[9, "sex"] = "X"  # no such category
    frame.to_csv(data, index=False)
    with pytest.raises(ConfigurationError, match="--out-of-domain drop") as refused:
        prepare(SimulationRequest(data=data, schema=schema, out=tmp_path / "run"))
    assert "140" not in str(refused.value)  # where to look, never what is there
    dropped = prepare(SimulationRequest(data=data, schema=schema, hold_out=0, out_of_domain="drop",
                                        out=tmp_path / "run"))
    assert len(dropped.simulation.train) == len(frame) - 10
    assert any("10 record(s) left out (--out-of-domain drop)" in note for note in dropped.warnings)
    clamped = prepare(SimulationRequest(data=data, schema=schema, hold_out=0, out_of_domain="clamp",
                                        out=tmp_path / "run"))
    assert len(clamped.simulation.train) == len(frame) - 1 and clamped.simulation.train["age"].max() == 105
    # the youngest age is the schema's lower bound, the clamped ones its upper: the schema says where both come
    # from (bounds_source: the cohort's inclusion criterion), so neither is pointed at
    assert not any("age (" in warning and "column(s)" in warning for warning in clamped.warnings)


def test_hospitals_given_as_files_are_named_by_their_site_column_value(tmp_path):
    """A newcomer's --sites with --site-column were named by their files (h1, h2) while the
    release's site column said north and south."""
    import pandas as pd

    data, schema = _table_with_hospitals(tmp_path)
    frame = pd.read_csv(data)
    for value in ("A", "B"):
        frame[frame["hospital"] == value].to_csv(tmp_path / f"export-{value}.csv", index=False)
    files = (tmp_path / "export-B.csv", tmp_path / "export-A.csv")
    named = prepare(SimulationRequest(sites=files, schema=schema, site_column="hospital", out=tmp_path / "run"))
    assert named.site_names == ("B", "A") == named.simulation.site_names
    by_file = prepare(SimulationRequest(sites=files, schema=schema, out=tmp_path / "run"))
    assert by_file.site_names == ("export-B", "export-A")
    # helper-72: one file holding two hospitals renamed every other hospital after its file
    frame[frame["hospital"] == "C"].to_csv(tmp_path / "export-C.csv", index=False)
    frame[frame["hospital"] != "C"].to_csv(tmp_path / "pooled.csv", index=False)
    pooled = prepare(SimulationRequest(sites=(tmp_path / "export-C.csv", tmp_path / "pooled.csv"), schema=schema,
                                       site_column="hospital", out=tmp_path / "run"))
    assert pooled.site_names == ("C", "pooled")


def test_a_held_out_split_that_cannot_be_made_says_so_without_a_class_count(tmp_path):
    """The fifth review's F2: scikit-learn's refusal, passed on, said 'The least populated classes
    in y have only 1 member' and named the class: a small-cell count, in a terminal's text."""
    import pandas as pd

    data, schema = _table_with_hospitals(tmp_path)
    frame = pd.read_csv(data)
    frame = pd.concat([frame[frame["death"] == "alive"].head(300), frame[frame["death"] == "dead"].head(1)])
    frame.to_csv(tmp_path / "tiny.csv", index=False)
    with pytest.raises(ConfigurationError, match="some class has too few rows to stratify") as refused:
        prepare(SimulationRequest(data=tmp_path / "tiny.csv", schema=schema, out=tmp_path / "run"))
    assert "member" not in str(refused.value) and "1" not in str(refused.value).replace("--hold-out 0", "")
    assert "--held-out FILE" in str(refused.value)


@pytest.mark.parametrize(("request_", "said"), [
    (dict(hold_out=0.0, compare=True), "--compare and --sweep-epsilon score releases on held-out rows"),
    (dict(hold_out=0.0, sweep=(2.0,)), "--compare and --sweep-epsilon score releases on held-out rows"),
])
def test_comparisons_without_held_out_rows_are_refused_not_skipped(tmp_path, request_, said):
    """The review of the change: --hold-out 0 silently skipped --compare and the sweep's curve."""
    data, schema = _table_with_hospitals(tmp_path)
    with pytest.raises(ConfigurationError, match=said):
        prepare(SimulationRequest(data=data, schema=schema, out=tmp_path / "run", **request_))


def test_the_extract_itself_is_refused_as_its_own_held_out_rows(tmp_path):
    data, schema = _table_with_hospitals(tmp_path)
    with pytest.raises(ConfigurationError, match="--held-out is --data itself"):
        SimulationRequest(data=data, schema=schema, held_out=tmp_path / "." / data.name)


def test_a_seeded_run_draws_the_same_noise_whichever_way_its_release_is_drawn(tmp_path):
    """helper-112: the stream nonce was bound to every public setting, --numbers-as-generated
    among them, so two runs that differed only in how the release is drawn from the trained model
    drew unrelated noise and could not be compared. That setting is post-processing of the same DP
    outputs and is left out of the binding; a setting that changes a mechanism (pairs_share) is not."""
    from dataclasses import replace

    from fedsyn.simulations.workflow import stream_inputs

    settings = prepare(SimulationRequest(split=2, rounds=1, out=tmp_path / "run", seed=0)).simulation.settings
    generated = settings.model_copy(update={"gan_config": replace(settings.gan_config, numbers_as_measured=False)})
    assert stream_inputs(generated) == stream_inputs(settings)
    assert stream_inputs(settings.model_copy(update={"pairs_share": 0.2})) != stream_inputs(settings)
    assert stream_inputs(settings.model_copy(update={"pairs_asked": ["age:kappa"]})) != stream_inputs(settings)


def test_a_hospitals_folder_keeps_its_name_in_any_script():
    """helper-114's 'Hôpital Nord' became site-0-H_pital_Nord; only what a path trips on is replaced."""
    from fedsyn.simulations.run import site_folder

    assert site_folder(0, "Hôpital Nord") == "site-0-Hôpital_Nord"
    assert site_folder(2, "St. Ōshima/../Clinic") == "site-2-St._Ōshima_.._Clinic"
    assert site_folder(1, None) == "site-1"


def test_rows_whose_outcome_is_not_recorded_are_held_out_like_the_others():
    """helper-122: a hospital's file with one blank cell in a nullable outcome stopped `simulate
    --sites` ('too few rows'), once --sites held out rows too; several blank ones are a stratum."""
    import pandas as pd

    from fedsyn.simulations.split import held_out_split

    frame = pd.DataFrame({"death": ["alive", "dead"] * 150, "age": range(300)})
    frame.loc[7, "death"] = None
    train, test = held_out_split(frame, 0.3, "death", seed=0)
    assert len(train) + len(test) == 300 and train["death"].isna().sum() + test["death"].isna().sum() == 1
    frame.loc[[9, 11, 13, 15], "death"] = None
    train, test = held_out_split(frame, 0.5, "death", seed=0)
    assert train["death"].isna().sum() + test["death"].isna().sum() == 5
    assert set(test["death"].dropna()) == {"alive", "dead"}
