"""The researcher's main job, `fedsyn simulate`, through the real command line (small settings)."""

import json
import re

from typer.testing import CliRunner

from fedsyn.cli.main import app
from fedsyn.data.demo import demo_schema_path
from fedsyn.trust.signing import load_public_key, verify_release


def test_simulate_writes_a_signed_release_with_report_and_passes_gan_options(tmp_path, demo_frame):
    data = tmp_path / "cohort.csv"
    demo_frame.sample(900, random_state=0).to_csv(data, index=False)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "simulate", "--data", str(data), "--schema", str(demo_schema_path()), "--split", "3",
        "--rounds", "3", "--local-steps", "2", "--rows", "300", "--epsilon", "1.0",
        "--generator-ema", "0.99", "--no-compare", "--drop-rule-violations", "--yes", "--out", str(out)])
    assert result.exit_code == 0, result.output
    release = out / "release"
    verify_release(release, load_public_key(out / "keys" / "coordinator.pub"))
    config = json.loads((release / "run_config.json").read_text())
    assert config["settings"]["gan_config"]["generator_ema"] == 0.99
    # which pairs the relations rest on, said where the researcher reads (helper-112)
    measured = json.loads((release / "quality_report.json").read_text())["total_variation_per_pair_table"]
    said = " ".join(result.stdout.split())
    readme = " ".join((release / "README.md").read_text().split())
    assert "Pairs of columns the sites measured together: " in said  # the README's words, in one home
    assert all("`{}` × `{}`".format(*key.split("|")) in said and "`{}` × `{}`".format(*key.split("|")) in readme
               for key in measured)
    # a newcomer's rule replaced 81 of 659 rows, said only in run_config.json
    dropped = config["dropped_rule_violations"]
    assert dropped is not None and (not dropped or f"{dropped} generated rows" in " ".join(result.output.split()))
    # Nothing computed from real rows without DP is in the release: the validation report is local only.
    assert {p.name for p in release.iterdir()} == {
        "synthetic.csv", "synthetic.parquet", "privacy_report.json", "quality_report.json", "generator.pt",
        "run_config.json", "schema.json", "README.md", "manifest.json", "manifest.sig"}
    report = json.loads((out / "local-report" / "report.json").read_text())
    assert report["rows"]["synthetic"] == 300
    assert report["verdict"]["level"] in ("green", "amber", "red") and report["settings"]["rounds"] == 3
    assert f"verdict: {report['verdict']['level'].upper()}" in result.stdout  # results on stdout
    assert "release signed" in result.stdout and "report.html" in result.stdout  # and where they are
    first_round, second_round = result.output.split("round 1/3:")[1].split("round 2/3:")
    assert "left" not in first_round  # the warm-up round alone says nothing of the others
    assert re.search(r"about\s+\d+\s+(s|min)\s+left", second_round.split("round 3/3")[0])  # when the release will come
    rounds = [line for line in result.output.splitlines() if line.startswith("round ")]
    assert len(rounds) == 3 and all(line.endswith(("s", "left")) for line in rounds)  # one line each, unwrapped
    assert (out / "local-report" / "held_out.parquet").is_file()
    # real rows and what was computed from them: their folders kept from other users (a newcomer
    # found every site's extract and the held-out rows readable by all, 0644 in 0755 folders)
    private = [out / "local-report", *(out / "sites").iterdir()]
    assert len(private) == 4 and all(folder.stat().st_mode & 0o777 == 0o700 for folder in private)
    privacy = json.loads((release / "privacy_report.json").read_text())
    assert len(privacy["sites"]) == 3 and all(site["epsilon_cumulative"] <= 1.0 + 1e-9 for site in privacy["sites"])
    assert privacy["public_facts"]["smallest_site_rows"] == "at most 256"  # what the published rate discloses


def test_simulate_refuses_a_plan_whose_tables_cannot_resolve_the_columns_unless_told(tmp_path, demo_frame):
    """Three sites of about 100 rows at epsilon 1: every round-0 cell is mostly noise. The plan
    says so, names the costliest columns and gives the command that would work."""
    data = tmp_path / "cohort.csv"
    demo_frame.sample(430, random_state=0).to_csv(data, index=False)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", "--data", str(data), "--schema", str(demo_schema_path()),
                                      "--out", str(out)])
    assert result.exit_code == 2 and "--yes" in result.output and not out.exists()
    assert "noise per cell" in result.output and ("merge categories of" in result.output or "drop " in result.output)
    assert "(red: " in result.output  # the red columns are named, not only counted
    suggested = " ".join(result.output.split("the weakest columns may stay red):")[1].split("at epsilon")[0].split())
    assert "--epsilon" in suggested
    assert "--batch-size" in suggested  # the command carries the batch size the site plans advised (a newcomer's
    said = " ".join(result.output.split())  # paste of it left that out)
    assert "--batch-size changes DP-SGD only" in said  # a newcomer lowered it and was refused again
    # a newcomer's paste was refused: it named this run's own --out, which the run had filled
    assert suggested.count("--out") == 1 and f"--out {out}-epsilon-" in suggested
    assert "that site's row count, batch size / rate, is public too" in said  # what following the advice publishes


def test_a_plan_no_epsilon_resolves_says_so_instead_of_pointing_at_an_epsilon(tmp_path, demo_frame):
    """A newcomer was told to 'raise --epsilon as it suggests' where the plan suggested none."""
    data = tmp_path / "cohort.csv"
    demo_frame.sample(60, random_state=0).to_csv(data, index=False)
    result = CliRunner().invoke(app, ["simulate", "--data", str(data), "--schema", str(demo_schema_path()),
                                      "--split", "3", "--out", str(tmp_path / "run")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "no epsilon up to 20 per site resolves this width" in said
    assert "as it suggests" not in said and "--epsilon 20" not in said
    # 20 rows a site: no count of columns resolves either, and the plan says so instead of a count
    assert "keeping fewer of this schema's columns resolves none of them at" in said


def test_the_suggested_command_checks_the_plan_again(monkeypatch):
    """A newcomer ran a red plan with --yes; the suggested command copied it, so pasting it would
    have skipped the check at the new epsilon too."""
    from fedsyn.cli.research import _command_with

    monkeypatch.setattr("sys.argv", ["fedsyn", "simulate", "--data", "x.csv", "--yes", "--epsilon", "1", "--out", "r"])
    assert _command_with(("--epsilon", "3"), ("--out", "r-epsilon-3")) == \
        "fedsyn simulate --data x.csv --epsilon 3 --out r-epsilon-3"


def test_simulate_names_the_problem_when_the_data_does_not_fit_the_schema(tmp_path, demo_frame):
    data = tmp_path / "cohort.csv"
    demo_frame.drop(columns=["age"]).head(50).to_csv(data, index=False)
    result = CliRunner().invoke(app, ["simulate", "--data", str(data), "--schema", str(demo_schema_path()),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "age" in result.output


def test_simulate_refuses_inconsistent_options_before_writing_anything(tmp_path, demo_frame):
    data = tmp_path / "cohort.csv"
    demo_frame.head(100).to_csv(data, index=False)
    schema = str(demo_schema_path())
    out = tmp_path / "run"
    for args, message in (
        (["--data", str(data)], "need --schema"),
        (["--data", str(data), "--schema", schema, "--skew", "age", "--dirichlet", "0.5"], "choose one"),
        (["--data", str(data), "--schema", schema, "--dirichlet", "0"], "must be positive"),
        (["--data", str(data), "--schema", schema, "--engine", "foo"], "inprocess or flower"),
        (["--data", str(data), "--schema", schema, "--epsilon", "-1"], "epsilon -1.0: a privacy budget is a positive"),
        (["--data", str(data), "--schema", schema, "--delta", "1.5"], "delta=1.5 must be in"),
        (["--data", str(data), "--schema", schema, "--transport-dtype", "float8"], "transport_dtype"),
    ):
        result = CliRunner().invoke(app, ["simulate", *args, "--out", str(out)])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert not out.exists()


def test_simulate_refuses_to_reuse_an_output_folder_unless_told(tmp_path, demo_frame):
    out = tmp_path / "run"
    out.mkdir()
    (out / "sites").mkdir()
    result = CliRunner().invoke(app, ["simulate", "--out", str(out), "--rounds", "1", "--local-steps", "1"])
    assert result.exit_code == 2 and "--overwrite" in result.output and (out / "sites").exists()


def test_overwrite_says_it_replaced_the_earlier_runs_spent_ledgers(tmp_path):
    """helper-95: after a killed run had spent 0.91 of each site's budget, --overwrite replaced
    its ledgers without a word at run time. It now says so, and that publishing both spends both."""
    out = tmp_path / "run"
    (out / "sites" / "site-0-a").mkdir(parents=True)
    (out / "sites" / "site-0-a" / "ledger.json").write_text('{"events": [{"mechanism": "dp-sgd"}]}')
    (out / ".fedsyn-simulation").write_text("written by fedsyn simulate\n")
    result = CliRunner().invoke(app, ["simulate", "--out", str(out), "--rounds", "1", "--local-steps", "1",
                                      "--rows", "50", "--yes", "--overwrite"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "replaced" in said and "the budget its sites had spent" in said \
        and "their sum" in said, said


def test_json_logs_carry_time_with_zone_and_fedsyn_events(tmp_path, demo_frame):
    data = tmp_path / "cohort.csv"
    demo_frame.sample(600, random_state=1).to_csv(data, index=False)
    result = CliRunner().invoke(app, [
        "--log-format", "json", "simulate", "--data", str(data), "--schema", str(demo_schema_path()),
        "--rounds", "1", "--local-steps", "1", "--rows", "50", "--verbose", "--yes", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    events = {line.get("event") for line in lines}
    assert {"run_configured", "round_finished", "release_written", "privacy_charged"} <= events
    assert all(line["time"].endswith("+00:00") for line in lines)
    assert "\x1b[" not in result.stderr


def test_simulate_with_site_files_and_a_held_out_file_writes_the_local_report(tmp_path, demo_frame):
    rows = demo_frame.sample(900, random_state=2)
    files = []
    for index in range(2):
        files += ["--sites", str(tmp_path / f"site{index}.csv")]
        rows.iloc[index * 300:(index + 1) * 300].to_csv(tmp_path / f"site{index}.csv", index=False)
    rows.iloc[600:].to_csv(tmp_path / "held_out.csv", index=False)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", *files, "--held-out", str(tmp_path / "held_out.csv"),
                                      "--schema", str(demo_schema_path()), "--rounds", "1", "--local-steps", "1",
                                      "--rows", "100", "--yes", "--out", str(out)])  # 300 rows a site: the plan is red
    assert result.exit_code == 0, result.output
    assert json.loads((out / "local-report" / "report.json").read_text())["rows"]["real_test"] == 300
    report = json.loads((out / "release" / "privacy_report.json").read_text())
    assert sorted(site["site"] for site in report["sites"]) == ["site0", "site1"]  # named after their files


def test_a_pipelines_gate_without_held_out_rows_is_refused_not_passed(tmp_path):
    """The review of the change: with --hold-out 0 there is no verdict, and --fail-below let the
    pipeline pass without checking anything."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", "--hold-out", "0", "--fail-below", "0.5", "--out", str(out)])
    assert result.exit_code == 2 and "--fail-below needs the verdict of held-out rows" in " ".join(
        result.output.split()) and not out.exists()


def test_the_time_left_leaves_out_the_warm_up_round_and_one_slow_round():
    """A newcomer's first round took 91 s and the line said 'about 36 min left' of a run that
    ended 96 s later; the first round warms up, and a single slow round must not swing the rest."""
    from fedsyn.cli.output import time_left

    assert time_left([90.6], 23) == ""  # no estimate from the warm-up alone
    assert time_left([90.6, 4.0], 22) == ", about 88 s left"
    assert time_left([90.6, 4.0, 4.2, 60.0, 3.9], 20) == ", about 82 s left"  # the median of 4.0, 4.2, 60, 3.9
    assert time_left([5.0, 4.0], 0) == ""
