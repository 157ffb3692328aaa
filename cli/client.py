"""Hospital commands: the SuperNode daemon and the site's privacy ledger."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedsyn.cli.output import console, fail, results, setup_logging

log = logging.getLogger("fedsyn.cli")
client_app = typer.Typer(help="Hospital: the SuperNode daemon next to the private extract.")
ledger_app = typer.Typer(help="Hospital: the site's privacy ledger (what it has spent, for ever).")
client_app.add_typer(ledger_app, name="ledger")


@client_app.command("start")
def client_start(config: Annotated[Path, typer.Option("--config", "-c")] = Path("site.json")) -> None:
    """Validate the local extract, then run this hospital's SuperNode (outbound TLS only).

    Exits non-zero when the SuperNode loses the coordinator (75 when it gave up reconnecting,
    e.g. over a TLS certificate it cannot verify), so the service manager restarts it; 73 when
    its local port is held by another process. The SuperNode ends with this command, however
    this command ends, and a SuperNode an earlier start left behind is stopped first."""
    from fedsyn.client.ops.launch import site_runtime, supernode_launch
    from fedsyn.client.ops.supervise import supervise, writability_problems
    from fedsyn.client.policy import PolicyError, SitePolicy
    from fedsyn.data.schema import SchemaError
    from fedsyn.data.tables import DataFileError
    from fedsyn.data.validation import DataValidationError
    from fedsyn.logs import RelayStream, known
    from fedsyn.privacy.accounting import LedgerError

    setup_logging(verbose=True)  # the site's progress (privacy charged, update sent) is what its operator watches
    try:
        policy = SitePolicy.load(config)
        known(site=policy.site_id)  # the SuperNode's lines and the supervisor's are this site's
        site = site_runtime(policy)
        problems = writability_problems(site.writes)
        if problems:  # every round would fail on them, after the coordinator has counted on this site
            fail("not joining: " + "; ".join(problems) + ". Each round writes the ledger, its lock, the stored "
                 "replies and the audit trail")
        launch = supernode_launch(config)
    except (PolicyError, SchemaError, DataFileError, DataValidationError, LedgerError) as exc:
        fail(f"not joining: {exc}")
    log.info("$ %s", " ".join(launch.command))
    # The SuperNode's lines and the site's own (its ClientApp writes JSON lines) through this command's handler.
    raise typer.Exit(supervise(launch.command, launch.environment, out=RelayStream(), site=site,
                               before_start=launch.install))


@client_app.command("status")
def client_status(config: Annotated[Path, typer.Option("--config", "-c")] = Path("site.json")) -> None:
    """What this site has spent and may spend, its last charge, reply and refusal, and whether its
    SuperNode runs: from the site's own files, no row read. Exits 1 when the site would refuse to
    spend (its ledger missing, or holding fewer charges than its trail or stored replies prove,
    its budget spent, its disk below disk_reserve_mib) or could not write what a round writes (a
    read-only state folder)."""
    from rich.table import Table

    from fedsyn.client.ops.launch import site_runtime
    from fedsyn.client.ops.status import site_view
    from fedsyn.client.ops.supervise import writability_problems
    from fedsyn.client.policy import PolicyError, SitePolicy

    try:
        policy = SitePolicy.load(config)
        view = site_view(policy)
    except PolicyError as exc:
        fail(str(exc))

    def said(entry: dict[str, object] | None, *fields: str) -> str:
        if entry is None:
            return "none"
        shown = ", ".join(f"{name} {entry[name]}" for name in fields if entry.get(name) is not None)
        return f"{entry.get('time', '?')}: {entry.get('event')}" + (f" ({shown})" if shown else "")

    table = Table(title=f"site {view.site_id}", show_header=False)
    spent = "unknown (no readable ledger)" if view.epsilon_spent is None else f"{view.epsilon_spent:.4f}"
    table.add_row("epsilon spent (all runs)", f"{spent} of {view.max_epsilon:g} (delta {view.delta:g})")
    table.add_row("most one request may cost", "no cap" if view.per_request is None else f"{view.per_request:g}")
    table.add_row("charges in the ledger", "?" if view.charges is None else str(view.charges))
    charge = view.last_charge
    privacy = charge.get("privacy") if charge is not None else None
    table.add_row("last charge", "none" if charge is None else f"{charge.get('time')}: "
                  + (f"{privacy.get('mechanism')} round {privacy.get('round')}" if isinstance(privacy, dict) else "")
                  + f", epsilon then {float(str(charge.get('epsilon_spent', 'nan'))):.4f}")
    table.add_row("last reply sent", said(view.last_sent, "round"))
    table.add_row("last refusal", said(view.last_refusal, "message_type", "code"))
    table.add_row("SuperNode", view.supernode)
    results.print(table)
    if view.note is not None:
        console.print(f"[bold yellow]note:[/] {escape(view.note)}", soft_wrap=True)
    if view.problem is not None:
        fail(f"this site refuses to spend: {view.problem}", code=1)
    unwritable = writability_problems(site_runtime(policy).writes)
    if unwritable:  # helper-116 M3: every request then failed at the site while status said all was well
        fail("every request fails at this site: " + "; ".join(unwritable) + ". Each round writes the ledger, its "
             "lock, the stored replies and the audit trail", code=1)


@ledger_app.command("move")
def ledger_move(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site policy file")] = Path("site.json"),
) -> None:
    """Carry the site's ledger, and all it has spent, to the extract the policy's `data` now names:
    the same patients' extract, moved to other storage or renamed. (Other patients: `ledger init
    --reset-reason`.)"""
    from fedsyn.client.policy import PolicyError, SitePolicy
    from fedsyn.client.site import move_ledger
    from fedsyn.privacy.accounting import LedgerError

    try:
        policy = SitePolicy.load(config)
        before, now = move_ledger(policy)
    except (PolicyError, LedgerError) as exc:
        fail(str(exc))
    console.print(f"ledger {policy.ledger} now protects {now} (was {before}); everything it has spent stays spent; "
                  f"recorded in {policy.audit_trail}")


@ledger_app.command("init")
def ledger_init(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site policy file")] = Path("site.json"),
    reset_reason: Annotated[str | None, typer.Option(
        help="start again at epsilon 0 although the site's audit trail records charges, or stored replies, a "
             "replaced ledger or the ledger's lock show it spent before (e.g. the extract now holds other "
             "patients); the reason is kept in the trail")] = None,
) -> None:
    """Create the site's empty ledger: once per extract, before the first run.

    The site refuses every request while its ledger is missing, so a lost or deleted ledger
    never silently restarts at epsilon 0; nor does deleting the ledger with its audit trail
    while stored replies, a replaced ledger or the ledger's lock remain.
    """
    from fedsyn.client.policy import PolicyError, SitePolicy
    from fedsyn.client.site import initialise_ledger
    from fedsyn.privacy.accounting import LedgerError

    try:
        policy = SitePolicy.load(config)
        ledger = initialise_ledger(policy, reset_reason)
    except (PolicyError, LedgerError) as exc:
        fail(str(exc))
    console.print(f"ledger {ledger.path} created for {ledger.protects} (delta {ledger.delta:g}, "
                  f"{ledger.accountant}); recorded in {policy.audit_trail}")


