"""Issue 23, "Logs": one handler for fedsyn's and Flower's lines (zone-aware times, no colour
codes, no line twice), ``--log-format json`` honoured by the long-running commands, progress
lines at the coordinator and the sites, an expired SuperLink certificate named, and a budget
refusal told in one line with its exit code instead of Flower's tracebacks."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from typer.testing import CliRunner

from fedsyn.client.app import make_client_app
from fedsyn.client.ops.clientapp_process import POLICY_VARIABLE
from fedsyn.data.demo import demo_schema_path
from fedsyn.errors import FedsynError
from fedsyn.logs import FIELDS, RUN_STOPPED, RelayStream, about, configure
from fedsyn.simulations.inprocess import InProcessGrid
from fedsyn.trust.certs import create_ca, create_server_certificate, create_site_keypair
from tests.helpers import expired_certificate, run_in_process

ZONED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d ")
# A hospital's ClientApp process, started by its launcher: what Flower's part does once the launcher hands
# over is played by `task` (Flower logs, Opacus is imported and adds a root handler, the site charges).
CHILD = """
import logging
from fedsyn.client.ops import clientapp_process

def task():
    from flwr.common.logger import log
    import opacus.utils.module_utils  # noqa: F401
    log(logging.INFO, "Start `flwr-clientapp` process")
    logging.getLogger("fedsyn.client").info("privacy charged: dp-sgd round 1, epsilon now 0.4100",
        extra={"fedsyn": {"event": "privacy_charged", "site": "site-0", "round": 1, "epsilon_spent": 0.41}})
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1/v1/runtime/push-logs")

clientapp_process.flwr_clientapp = task
clientapp_process.main()
"""


@pytest.fixture()
def captured():
    """Logging configured as a command configures it, into a buffer; restored afterwards."""
    root, flower = logging.getLogger(), logging.getLogger("flwr")
    saved = (root.handlers[:], root.level, flower.handlers[:], flower.level, flower.propagate)
    buffer = io.StringIO()

    def use(log_format: str) -> io.StringIO:
        configure(log_format, stream=buffer)
        return buffer

    yield use
    root.handlers[:], flower.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    flower.setLevel(saved[3])
    flower.propagate = saved[4]


def test_an_in_process_run_logs_progress_at_both_ends_as_json(plan, demo_schema, tmp_path, captured):
    lines = captured("json")
    run_in_process(plan, demo_schema, tmp_path)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]  # every line parses
    events = [record.get("event") for record in records]
    assert "run_started" in events
    rounds = [record for record in records if record.get("event") == "round_done"]
    assert [record["round"] for record in rounds] == [1, 2, 3]
    assert all(sorted(record["epsilon"]) == ["site-0", "site-1", "site-2"] for record in rounds)
    assert all(0 < value <= 1.0 for record in rounds for value in record["epsilon"].values())
    # helper-104 M8: each site's ledger (all runs) beside this run's alone, which read as overspending
    assert all(sorted(record["epsilon_ledger"]) == sorted(record["epsilon"]) for record in rounds)
    assert all(0 < value <= 1.0 for record in rounds for value in record["epsilon_ledger"].values())
    finished = [record for record in records if record.get("event") == "run_finished"]
    assert len(finished) == 1 and finished[0]["release"] == str(tmp_path / "release")
    charged = {record["site"] for record in records if record.get("event") == "privacy_charged"}
    assert charged == {"site-0", "site-1", "site-2"}
    assert all(record["time"].endswith("+00:00") for record in records)


def test_every_json_line_of_a_run_carries_the_fields_the_help_names_and_its_run(plan, demo_schema, tmp_path,
                                                                                 captured):
    """Operator finding L5: most lines (Flower's, fedsyn's warnings, the coordinator's progress) had
    no `run`, and many no `event`, `site` or `round`, though `--log-format`'s help promised them.
    Each is there on every line, null where the line has none; a run's lines name the run, a site's
    lines the site, as the ServerApp and the ClientApp set them up (fedsyn.logs.about)."""
    from fedsyn.cli.main import app

    lines = captured("json")
    logging.getLogger("fedsyn.cli").info("before any run")
    with about():
        run_in_process(plan, demo_schema, tmp_path)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert all(list(record)[4:8] == list(FIELDS) for record in records)  # after time, level, logger, message
    assert records[0]["run"] is None and records[0]["event"] is None
    [run_id] = {record["run"] for record in records if record.get("event") == "run_finished"}
    assert all(record["run"] == run_id for record in records[1:] if record["logger"] == "fedsyn.server")
    charged = [record for record in records if record.get("event") == "privacy_charged"]
    assert charged and all(record["run"] == run_id and record["site"] for record in charged)
    assert all(field in CliRunner().invoke(app, ["--help"]).output for field in FIELDS)


def test_a_site_message_s_lines_name_its_site_run_and_round_from_the_clientapp_alone(plan, captured):
    """helper-127 M3: in process the ClientApp ran inside the coordinator's scope, so its lines
    named the run even with the ClientApp's own scope removed. Here it answers one round-0 query in
    a context of its own, as in its own process: its lines must name site, run and round."""
    import contextvars

    from fedsyn.client.policy import SitePolicy
    from fedsyn.data.schema import Schema
    from fedsyn.federation import protocol
    from fedsyn.privacy.accounting import gaussian_noise_for_epsilon
    from tests.helpers import client_reply

    lines = captured("json")
    policy = plan.policies[0]
    schema = Schema.load(SitePolicy.load(policy).schema_path)
    query = protocol.MarginalsQuery(gaussian_noise_for_epsilon(0.5, 1e-5), 1.0, protocol.schema_fingerprint(schema),
                                    "run-m3")
    content = RecordDict({protocol.CONFIG: query.to_record()})
    reply = contextvars.Context().run(client_reply, policy, content, protocol.QUERY_MARGINALS)
    assert not reply.has_error()
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    site = [record for record in records if record["logger"] == "fedsyn.client"]
    assert site and all(record["site"] == "site-0" and record["run"] == "run-m3" and record["round"] == 0
                        for record in site), site


def test_a_site_child_process_reaches_the_supervisor_once_with_time_zone_and_no_colour(plan, captured):
    lines = captured("text")
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120,
                           env={**os.environ, POLICY_VARIABLE: str(plan.policies[0])})
    relayed = RelayStream()
    relayed.write(child.stdout + child.stderr)  # the supervisor reads the two merged
    text = lines.getvalue()
    assert text.count("privacy charged: dp-sgd round 1") == 1, text
    assert text.count("Start `flwr-clientapp` process") == 1, text
    assert "push-logs" not in text and "\x1b[" not in text
    assert all(ZONED.match(line) for line in text.splitlines()), text
    assert "INFO    fedsyn.client: privacy charged" in text


def test_flower_lines_are_read_as_flower_records_and_fedsyn_advice_as_fedsyn_s(captured):
    lines = captured("json")
    RelayStream().write("\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode\nINFO :      \n"
                        "fedsyn: the coordinator's TLS certificate has expired\n")
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [(r["logger"], r["level"], r["message"]) for r in records] == [
        ("flwr", "info", "Starting Flower SuperNode"),
        ("fedsyn", "warning", "the coordinator's TLS certificate has expired")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_client_start_with_json_logs_writes_only_json_lines_on_stderr(plan, tmp_path):
    """A light real process: `fedsyn --log-format json client start` that refuses at once (its local
    port is taken), so each line it wrote is checked without a SuperLink."""
    create_ca(tmp_path / "certs")
    policy_path = plan.policies[0]
    create_site_keypair(policy_path.parent)
    extract = policy_path.parent / "data.parquet"  # one patient at creatinine's upper bound: noted once, by name
    rows = pd.read_parquet(extract)
    rows.loc[rows.index[0], "creatinine"] = 15.0
    rows.to_parquet(extract)
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        policy = json.loads(policy_path.read_text())
        policy["coordinator"] = {"superlink": f"127.0.0.1:{_free_port()}", "auth_private_key": "auth.key",
                                 "root_certificates": str(tmp_path / "certs" / "ca.crt"), "local_port": port}
        policy_path.write_text(json.dumps(policy))
        fedsyn = str(Path(sys.executable).with_name("fedsyn"))
        result = subprocess.run([fedsyn, "--log-format", "json", "client", "start", "-c", str(policy_path)],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                                           f"{os.environ['PATH']}"})
    assert result.returncode == 73, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line parses
    # operator finding L5: every line carries the fields --log-format's help names, the site's name its own
    assert all(set(FIELDS) <= set(record) and record["site"] == "site-0" for record in records), records
    assert any(f"local port {port}" in record["message"] and record["level"] == "warning" for record in records)
    assert all(record["time"].endswith("+00:00") for record in records)
    bounds = [record["message"] for record in records if "bounds: " in record["message"]]
    said = bounds[0].replace(str(extract), "EXTRACT") if bounds else ""  # the temporary path may hold a 15
    assert len(bounds) == 1 and re.search(r"creatinine \((lower and )?upper\)", said) and "15" not in said
    assert "column(s)" not in said  # named, never counted (helper-73)


def test_starting_a_superlink_with_an_expired_certificate_says_so(tmp_path, caplog):
    from fedsyn.server.ops.superlink import CoordinatorConfig

    create_ca(tmp_path / "certs")
    create_server_certificate(tmp_path / "certs", ["localhost"])
    (tmp_path / "server.toml").write_text("")
    coordinator = CoordinatorConfig.load(tmp_path / "server.toml")
    with caplog.at_level(logging.WARNING, logger="fedsyn"):
        coordinator.superlink_command()
    assert not caplog.records  # a valid certificate: nothing to say
    expired = expired_certificate(tmp_path / "certs" / "server.crt")
    with caplog.at_level(logging.WARNING, logger="fedsyn"):
        coordinator.superlink_command()
    [warning] = caplog.records
    assert str(expired) in warning.getMessage() and "expired on" in warning.getMessage()
    assert warning.fedsyn["event"] == "certificate_expired"  # type: ignore[attr-defined]
    # helper-103 L5: a CA file holding an expired old CA before the valid one is no expired CA
    create_server_certificate(tmp_path / "certs", ["localhost"])
    ca = tmp_path / "certs" / "ca.crt"
    ca.write_bytes(expired_certificate(tmp_path / "old-ca.crt").read_bytes() + ca.read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedsyn"):
        coordinator.superlink_command()
    assert not caplog.records


def _spend_every_sites_budget(plan) -> None:
    """Each site spends some epsilon, then allows no more than that."""
    from fedsyn.client.policy import SitePolicy
    from fedsyn.client.site import Site
    from fedsyn.federation.protocol import schema_fingerprint

    for path in plan.policies:
        site = Site(SitePolicy.load(path))
        site.release_marginals(5.0, 1.0, schema_fingerprint(site.schema))
        site.policy.model_copy(update={"max_epsilon": site.ledger.epsilon()}).save(path)


def _served_context(tmp_path, **run_config: object) -> Context:
    """The run config `fedsyn server run` (or `server plan`) submits, over in-process sites."""
    return Context(run_id=7, node_id=0, state=RecordDict(), node_config={}, run_config={
        "schema": str(demo_schema_path()), "out": str(tmp_path / "release"), "rows": 100, "rounds": 1,
        "local-steps": 1, "sample-rate": 0.2, "min-sites": 2, "epsilon": 1.0, **run_config})


def _replayed(tmp_path, monkeypatch, served: str, status: str, *command: str):
    """`fedsyn server run` or `server plan` reading ``served`` from `flwr run --stream` (replayed by a
    stand-in process), Flower recording the run as ``status``."""
    from fedsyn.cli import server as server_cli
    from fedsyn.cli.main import app
    from fedsyn.server.ops.superlink import CoordinatorConfig

    replay = tmp_path / "stream.txt"
    replay.write_text("Successfully started run 7\n" + served)
    monkeypatch.setattr(CoordinatorConfig, "run_command", lambda self, resume=False, plan_only=False: [
        sys.executable, "-c", f"import sys; sys.stdout.write(open({str(replay)!r}).read())"])
    monkeypatch.setattr(server_cli, "run_status", lambda command, environment: status)
    (tmp_path / "server.toml").write_text("")
    return CliRunner().invoke(app, ["server", *command, "-c", str(tmp_path / "server.toml")])


def _refused_run(plan, tmp_path, capsys) -> str:
    """What the deployed ServerApp writes (its own entry point, over in-process sites) when every
    site has spent its whole max_epsilon, Flower's logging of the error included."""
    from fedsyn.server.deploy import main

    _spend_every_sites_budget(plan)
    grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies))
    capsys.readouterr()
    with pytest.raises(FedsynError) as stopped:
        main(grid, _served_context(tmp_path))
    logging.getLogger("flwr").error("ServerApp raised an exception", exc_info=stopped.value)  # as Flower does
    return capsys.readouterr().err


def test_a_budget_refusal_is_one_line_naming_the_site_and_the_fix_with_exit_code_77(plan, tmp_path, capsys,
                                                                                     captured, monkeypatch):
    captured("text")  # restores the logging configuration the ServerApp and the command replace
    served = _refused_run(plan, tmp_path, capsys)
    records = [json.loads(line) for line in served.splitlines()]  # the ServerApp writes JSON lines only
    assert "Traceback" not in served
    [stopped] = [record for record in records if record.get("event") == RUN_STOPPED]
    assert stopped["exit_code"] == 77 and "site 'site-0'" in str(stopped["reason"])

    result = _replayed(tmp_path, monkeypatch, served, "finished:failed", "run")
    assert result.exit_code == 77, result.output
    assert "Traceback" not in result.stderr
    [refusal] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert refusal.startswith("error: run 7 stopped") and "site 'site-0'" in refusal and "max_epsilon" in refusal
    assert "fedsyn server plan" in refusal


def test_a_budget_plan_that_finds_too_few_sites_says_so_as_its_answer_with_exit_code_77(plan, tmp_path, capsys,
                                                                                        captured, monkeypatch):
    """Operator finding L2: a plan whose sites have no budget left was logged as a dropped round 0 and
    a stopped run, then Flower's "Exit Code: 201 ... unhandled exception occurred in the ServerApp".
    Too few sites is the plan's answer: the ServerApp ends normally, and `server plan` names each
    site, why, and what to do, with the documented 77."""
    from fedsyn.server.deploy import main

    captured("text")  # restores the logging configuration the ServerApp and the command replace
    _spend_every_sites_budget(plan)
    capsys.readouterr()
    main(InProcessGrid(make_client_app(plan.site_policy), len(plan.policies)), _served_context(
        tmp_path, **{"plan-only": True}))  # no exception: Flower records the plan completed and adds nothing
    served = capsys.readouterr().err
    records = [json.loads(line) for line in served.splitlines()]
    [answer] = [record for record in records if record.get("event") == "plan_finished"]
    assert answer["exit_code"] == 77 and "site 'site-0'" in answer["reason"] and "max_epsilon" in answer["fix"]
    assert not any(record.get("event") == RUN_STOPPED or "dropped" in record["message"] for record in records)

    ended = '{"time": "2026-12-07T22:51:33.786+00:00", "level": "info", "logger": "flwr", "message": ""}\n'
    result = _replayed(tmp_path, monkeypatch, served + ended, "finished:completed", "plan")  # Flower's exit(0)
    assert result.exit_code == 77, result.output
    assert not any(line.rstrip().endswith("flwr:") for line in result.stderr.splitlines()), result.stderr
    [refusal] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert refusal.startswith("error: budget plan 7: a run now would stop before round 0: 0 site(s) can take part, "
                              "fewer than min-sites 2") and "site 'site-1'" in refusal, refusal
    assert "raise max_epsilon in their site policy" in refusal and refusal.endswith("Nothing was charged")


def test_a_budget_plan_whose_answer_never_came_is_no_success(tmp_path, monkeypatch):
    """A plan is a success only when its answer reached the command (a log line lost on the way
    must not read as "enough sites")."""
    result = _replayed(tmp_path, monkeypatch, "", "finished:completed", "plan")
    assert result.exit_code == 1 and "did not reach this command" in result.stderr


def test_flower_imported_after_the_handler_is_set_prints_each_line_once_without_colour(tmp_path):
    """Commands check their arguments before importing Flower, which on import adds its coloured
    console handler and sets its logger to DEBUG: ``fedsyn simulate`` printed every Flower line
    twice, once in colour, and its INFO lines without ``--verbose`` (WARNING) too."""
    code = ("import logging\nfrom fedsyn.logs import configure\nconfigure('text', logging.WARNING)\n"
            "from flwr.common.logger import log\nlog(logging.INFO, 'aggregate_train: hidden')\n"
            "log(logging.WARNING, 'aggregate_train: once')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if "aggregate_train" in line]
    assert len(lines) == 1 and "once" in lines[0] and ZONED.match(lines[0]) and "\x1b[" not in result.stderr, \
        result.stderr


def test_a_text_log_line_shows_control_characters_as_question_marks():
    """helper-88's F2 and F3: a site's self-chosen name or a coordinator's text with a cursor move,
    an erase or a title set reached the operator's terminal as it was."""
    from fedsyn.logs import TextLines

    record = logging.LogRecord("fedsyn.server", logging.INFO, __file__, 1, "site %s joined", ("h2\x1b]0;x\x07\x1b[1A",),
                               None)
    line = TextLines().format(record)
    assert "\x1b" not in line and "\x07" not in line and line.endswith("site h2?]0;x??[1A joined")


@pytest.mark.parametrize("resumable", [True, False])
def test_a_run_that_lost_its_quorum_is_told_how_to_go_on(caplog, resumable):
    """helper-98: 'run stopped: ... fewer than the minimum' said nothing of --resume."""
    from fedsyn.server.deploy import _log_stopped
    from fedsyn.server.record import FederationError

    stopped = FederationError("round 2: only 1 valid site update(s), fewer than the minimum 2.")
    stopped.resumable = resumable  # run_federation sets it where the run saved a state of its own
    with caplog.at_level(logging.ERROR, logger="fedsyn.server"):
        _log_stopped(stopped)
    [record] = [r for r in caplog.records if getattr(r, "fedsyn", {}).get("event") == RUN_STOPPED]
    assert ("fedsyn server run --resume" in record.fedsyn["fix"]) is resumable


def test_a_run_that_lost_one_site_to_its_budget_and_one_to_silence_is_told_to_resume(caplog, demo_schema):
    """helper-108 L1: any quorum failure whose reasons named budget_exhausted ended with exit 77 and
    the budget advice, even where the other lost site had only stopped answering and the run had
    saved a state that `--resume` continues. The budget advice is for a run every lost site
    refused for its budget."""
    from fedsyn.federation import protocol
    from fedsyn.server.deploy import _log_stopped
    from fedsyn.server.record import FederationError, SiteStatus
    from fedsyn.server.screening import ReplyScreen
    from fedsyn.server.settings import FederationSettings

    def stopped(*codes: int | None) -> FederationError:
        sites = [SiteStatus(node_id=i, label=f"site-{i}") for i in range(len(codes))]
        screen = ReplyScreen(demo_schema, FederationSettings(min_sites=2), record=lambda *args, **kwargs: None)
        for site, code in zip(sites, codes):
            reason = protocol.error_reason(protocol.ErrorCode(code), "spent") if code else "no reply within 60 s"
            screen.drop(site, 3, reason, code=code)
        with pytest.raises(FederationError) as raised:
            screen.require_quorum(sites, 0, 3)
        raised.value.resumable = True
        return raised.value

    for error, budget in ((stopped(protocol.ErrorCode.BUDGET_EXHAUSTED, None), False),
                          (stopped(protocol.ErrorCode.BUDGET_EXHAUSTED, protocol.ErrorCode.BUDGET_EXHAUSTED), True)):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="fedsyn.server"):
            _log_stopped(error)
        [record] = [r for r in caplog.records if getattr(r, "fedsyn", {}).get("event") == RUN_STOPPED]
        assert (record.fedsyn["exit_code"] == 77) is budget
        assert ("fedsyn server run --resume" in record.fedsyn["fix"]) is not budget
