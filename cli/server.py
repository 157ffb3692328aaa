"""Coordinator commands: the SuperLink, registered hospitals, training runs."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from fedsyn.cli.flower import (
    STOP_SIGNALS,
    FollowedRun,
    RunInterrupted,
    SuperLinkLost,
    become_flower,
    flower_output,
    flower_quietly,
    follow_run,
    ignore_stop_signals,
    run_flower,
    run_status,
    stop_signals_caught,
)
from fedsyn.cli.output import EXIT_INTERRUPTED, console, fail, results, setup_logging
from fedsyn.errors import ConfigurationError

if TYPE_CHECKING:
    from fedsyn.server.ops.superlink import CoordinatorConfig

log = logging.getLogger("fedsyn.cli")
server_app = typer.Typer(help="Coordinator: SuperLink, registered hospitals, training runs.")
sites_app = typer.Typer(help="Hospitals allowed to join (their SuperNode public keys).")
server_app.add_typer(sites_app, name="sites")


def _server_config(config: Path) -> CoordinatorConfig:
    from fedsyn.server.ops.superlink import CoordinatorConfig

    try:
        return CoordinatorConfig.load(config)
    except ConfigurationError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot use {config}: {exc}")


@server_app.command("start")
def server_start(config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Start the SuperLink: TLS, only registered hospitals may join, state kept in a database."""
    setup_logging(verbose=True)  # e.g. the warning about an expired certificate
    server_config = _server_config(config)
    become_flower(server_config.superlink_command(), server_config.superlink_environment())


@server_app.command("run")
def server_run(config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml"),
               resume: Annotated[bool, typer.Option(help=(
                   "continue the run saved in the run config's 'state' folder after its last completed round (or "
                   "within round 0), instead of starting a new one; hospitals answer a round they already ran "
                   "without paying again"
               ))] = False) -> None:
    """Submit a training run to the SuperLink and follow it. The release lands where the run
    config says. Before round 0 each site's budget plan is logged (as `server plan` shows it).
    Ctrl-C, a hangup (SIGHUP) or SIGTERM stops Flower's run too and says how to resume it.
    Exits 0 when the run completed, 77 when the sites' budgets stopped it, 78 when the settings
    in server.toml are wrong (2 when it cannot be read), 130, 129 or 143 when stopped by Ctrl-C,
    a hangup or SIGTERM, 1 otherwise."""
    setup_logging(verbose=True)  # the run's progress is what this command is for
    server_config = _server_config(config)
    if resume and not server_config.run.get("state"):
        fail(f"--resume needs a 'state' folder in the [run] section of {config}, where the run saved its state")
    environment = server_config.flwr_environment()
    if resume:
        _stop_orphaned_coordinator(server_config, environment)
    run_id = _follow(server_config, server_config.run_command(resume=resume), environment, plan_only=False).run_id
    log.info("run %s completed", run_id, extra={"fedsyn": {"event": "run_completed", "flower_run": run_id}})


@server_app.command("plan")
def server_plan(config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Ask each connected hospital what it has spent and may still spend (nothing is charged, no
    row is read) and show, per site, this run's cost and the training rounds that fit. Exits 77
    when fewer than min-sites have budget left for the run (1 when some of the sites missing
    failed or refused for another reason), naming each site that cannot take part and why; 78
    when the settings in server.toml are wrong (2 when it cannot be read); 130, 129 or 143 when
    stopped by Ctrl-C, a hangup or SIGTERM (Flower's plan stopped too)."""
    setup_logging(verbose=True)
    server_config = _server_config(config)
    followed = _follow(server_config, server_config.run_command(plan_only=True), server_config.flwr_environment(),
                       plan_only=True)
    answer = followed.planned
    if not answer:
        fail(f"the answer of budget plan {followed.run_id} did not reach this command; nothing was charged. `flwr log "
             f"{followed.run_id}` on the SuperLink shows the plan's lines", code=1)
    code = answer.get("exit_code")
    if code:
        fix = f" {answer['fix']}." if answer.get("fix") else ""
        fail(f"budget plan {followed.run_id}: {str(answer.get('reason')).rstrip('.')}.{fix} Nothing was charged",
             code=code if isinstance(code, int) else 1)


def _follow(server_config: CoordinatorConfig, command: list[str], environment: dict[str, str],
            plan_only: bool) -> FollowedRun:
    """Submit ``command`` (a ``flwr run``), relay its lines, and return what it showed, its run id
    set, once the run completed; otherwise exit with the one line saying why (:func:`_run_failed`)."""
    from fedsyn.server.ops.superlink import CONNECTION

    with stop_signals_caught():
        try:
            followed = follow_run(command + ["--stream"], environment)
        except RunInterrupted as interrupted:
            ignore_stop_signals()
            _stop_interrupted(server_config, environment, interrupted, plan_only)
        except SuperLinkLost as lost:
            _superlink_lost(server_config, lost.run_id, plan_only)
    run_id = followed.run_id
    if run_id is None:
        fail("Flower started no run: see its message above", code=1)
    status = run_status(server_config.flwr_command("ls", CONNECTION, "--run-id", run_id, "--format", "json"),
                        environment)
    if status != "finished:completed":
        _run_failed(run_id, status, followed.stopped)
    return followed


def _stop_interrupted(server_config: CoordinatorConfig, environment: dict[str, str], interrupted: RunInterrupted,
                      plan_only: bool) -> NoReturn:
    """Ctrl-C, a hangup or a stop request: stop Flower's run too, then say so and how to go on.
    Left running, it trained, charged every hospital and published a release with no terminal
    attached and nothing saying so (helper-98 M2; a hangup, operator finding L9). The run is
    stopped before a word is written: after a hangup the terminal may be gone."""
    from fedsyn.server.ops.superlink import CONNECTION

    run_id, number = interrupted.run_id, interrupted.signal_number
    code = EXIT_INTERRUPTED if number is None else 128 + number  # a shell's code for a command a signal ended
    cause = "your Ctrl-C" if number is None else STOP_SIGNALS[signal.Signals(number)]
    if run_id is None:
        fail(f"stopped at {cause} before Flower said it started a run: `flwr ls` on the SuperLink shows whether one "
             "did (`flwr stop RUN_ID` stops it)", code=code)
    left = f"run {run_id} may go on at the SuperLink: stop it with `flwr stop {run_id} {CONNECTION}`"
    try:
        stopped = flower_quietly(server_config.flwr_command("stop", run_id, CONNECTION), environment)
    except KeyboardInterrupt:  # a second Ctrl-C while Flower was stopping it
        fail(f"interrupted again while Flower stopped it: {left}", code=code)
    if not stopped:
        fail(f"stopped at {cause}; Flower did not stop run {run_id} (it may have ended already). If not, {left}",
             code=code)
    if plan_only:
        fail(f"budget plan {run_id} stopped at {cause}; it charged nothing", code=code)
    resume = ("`fedsyn server run --resume` continues it after its last completed round"
              if server_config.run.get("state") else
              "with no 'state' folder in [run] it cannot be resumed: a new run starts over")
    fail(f"run {run_id} stopped at {cause}, its final release unwritten; each hospital's ledger holds what it "
         f"spent, and {resume}", code=code)


def _superlink_lost(server_config: CoordinatorConfig, run_id: str | None, plan_only: bool) -> NoReturn:
    """The SuperLink stopped answering mid-run: say how to go on (helper-104 M2: Flower's box about
    the connection was all the operator saw)."""
    start = "start the SuperLink again (`fedsyn server start`)"
    if run_id is None:  # it never answered: nothing was submitted (helper-105 M2)
        fail("Flower could not reach the SuperLink, so no run was submitted and nothing was charged: check that it "
             "runs (`fedsyn server start`) and that server.toml's superlink address is its own", code=1)
    if plan_only:
        fail(f"the SuperLink stopped answering; the budget plan charged nothing: {start} and plan again", code=1)
    which = f"run {run_id}" if run_id else "the run"
    resume = ("then `fedsyn server run --resume` continues it after its last completed round; a hospital answers a "
              "round it already ran from its store, paying nothing again" if server_config.run.get("state") else
              "then run again: with no 'state' folder in [run] the run cannot be resumed, and a new run charges "
              "every hospital again")
    fail(f"the SuperLink stopped answering, and {which} stopped with it, its release unwritten: {start}, {resume}",
         code=1)


def _run_failed(run_id: str, status: str, stopped: dict[str, object]) -> NoReturn:
    """One line saying why the run stopped and what to do, with the stopping error's exit code
    (77 for a privacy refusal); Flower's traceback of it is not shown (see :mod:`fedsyn.logs`)."""
    if stopped:
        fix = f" {stopped['fix']}" if stopped.get("fix") else ""
        code = stopped.get("exit_code")
        reason = str(stopped.get("reason")).rstrip(".")  # a reason may end with a sentence's own '.'
        fail(f"run {run_id} stopped: {reason}.{fix}", code=code if isinstance(code, int) else 1)
    fail(f"run {run_id} ended as {status}: no release was written by it. Each hospital's ledger holds what "
         "it spent; the log above says why the run stopped", code=1)


def _stop_orphaned_coordinator(server_config: CoordinatorConfig, environment: dict[str, str]) -> None:
    """A ServerApp cut off by a SuperLink crash comes back when the SuperLink restarts and
    would train beside the resumed run: ask Flower to stop its run (the resumed ServerApp
    waits for the run's lock until it has)."""
    from fedsyn.server.ops.superlink import CONNECTION
    from fedsyn.server.resume import lock_holder

    holder = lock_holder(Path(str(server_config.run["state"])))
    if holder is None:
        return
    flower_run = holder.get("flower_run")
    console.print(f"[yellow]a coordinator process of this run is still alive (pid {holder.get('pid')}, Flower run "
                  f"{flower_run}): stopping that run before resuming[/]")
    if flower_run:
        try:
            run_flower(server_config.flwr_command("stop", str(flower_run), CONNECTION), environment)
        except typer.Exit:
            console.print(f"[yellow]Flower could not stop run {flower_run}; the resumed run waits for its lock[/]")


@server_app.command("app-hash")
def server_app_hash() -> None:
    """Print the SHA-256 of the App `server run` submits; hospitals may list it in approved_apps."""
    from fedsyn.server.ops.superlink import app_bundle_hash

    print(app_bundle_hash())


@sites_app.command("add")
def sites_add(public_key: Path, config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Register a hospital's auth.pub so its SuperNode may join."""
    server_config = _server_config(config)
    run_flower(server_config.supernode_command("register", str(public_key)), server_config.flwr_environment())


@sites_app.command("list")
def sites_list(config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Registered hospitals, whether they are online, and the name each gave its site (its policy's
    site_id, from the audit log of [run]): Flower knows a SuperNode by its node id alone."""
    import json

    from rich.table import Table
    from rich.text import Text

    from fedsyn.server.record import known_names
    from fedsyn.trust.audit import read_entries

    server_config = _server_config(config)
    printed = flower_output(server_config.supernode_command("list", "--format", "json"),
                            server_config.flwr_environment())
    try:
        listed = json.loads(printed)
    except json.JSONDecodeError:  # not the JSON flwr 1.41 prints: show it as it came
        results.print(printed, markup=False, highlight=False)
        return
    if not isinstance(listed, dict) or listed.get("success") is not True:  # flwr's errors exit 0 in JSON
        why = listed.get("error-message") if isinstance(listed, dict) else listed
        fail(f"flwr could not list the SuperNodes: {why}")
    audit = server_config.run.get("audit-log")
    names = known_names(read_entries(Path(str(audit)))) if audit else {}
    unseen = Text("(not seen in a run yet)", style="dim") if audit else Text("")
    table = Table("node id", "site", "status", "online since")
    table.columns[0].no_wrap = True  # whole, however narrow the terminal or pipe: `sites remove` takes it
    table.columns[0].min_width = max((len(str(node.get("node-id"))) for node in listed.get("nodes", [])), default=7)
    for node in listed.get("nodes", []):
        node_id = str(node.get("node-id"))  # every cell as plain text: a site names itself
        table.add_row(node_id, Text(names[node_id]) if node_id in names else unseen, str(node.get("status")),
                      str(node.get("online-at") or ""))
    results.print(table)  # on stdout, for a pipeline (helper-104: it went to stderr)
    if not audit:
        console.print(f"[dim]{config} has no [run] audit-log: site names are read from it[/]")


@sites_app.command("remove")
def sites_remove(node_id: str, config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Unregister a hospital's SuperNode by its node id (see `sites list`)."""
    server_config = _server_config(config)
    run_flower(server_config.supernode_command("unregister", node_id), server_config.flwr_environment())


@server_app.command("dashboard")
def server_dashboard(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml"),
    host: Annotated[str, typer.Option(help="address to listen on; anything but loopback needs a token")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8050,
    token: Annotated[str | None, typer.Option(help="required from every request (generated when bound "
                                                   "beyond loopback)")] = None,
    key: Annotated[Path | None, typer.Option(help="coordinator.pub, to check the audit log's signed head and the "
                                                  "release (default: the .pub beside the run's signing-key)")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="another name browsers reach the view by (its Host header), e.g. the machine's DNS "
                               "name; the bind address, and localhost/127.0.0.1/[::1] on loopback, always work")
    ] = None,
) -> None:
    """Live, read-only web view of the run: sites, epsilon vs budget, rounds, audit chain, latest release."""
    import secrets

    import uvicorn

    from fedsyn.server.ops.dashboard import create_app, needs_token

    setup_logging(verbose=False)  # its problems only: a line per request would bury them
    server_config = _server_config(config)
    run = server_config.run
    if "audit-log" not in run or "out" not in run:
        fail(f"{config}: [run] needs audit-log and out for the dashboard to read")
    base = config.parent
    signing_key = run.get("signing-key")
    if key is None and signing_key:
        beside = (base / str(signing_key)).with_suffix(".pub")
        key = beside if beside.is_file() else None
    if token is None and needs_token(host):
        token = secrets.token_urlsafe(24)
        print(f"Bound to {host}: every request needs this token (Authorization: Bearer, or ?token=): {token}")
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/" + (f"?token={token}" if token else "")
    print(f"fedsyn dashboard on {address}")
    app = create_app(base / str(run["audit-log"]), base / str(run["out"]), key, token, server_config.database,
                     host=host, extra_hosts=allowed_host or ())
    # uvicorn's own logging setup would add its handlers beside fedsyn's, ignoring --log-format.
    uvicorn.run(app, host=host, port=port, log_level="warning", log_config=None)
