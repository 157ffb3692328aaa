"""Hospital commands: the SuperNode daemon and the site's privacy ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsyn.cli.output import console, fail

client_app = typer.Typer(help="Hospital: the SuperNode daemon next to the private extract.")
ledger_app = typer.Typer(help="Hospital: the site's privacy ledger (what it has spent, for ever).")
client_app.add_typer(ledger_app, name="ledger")


@client_app.command("start")
def client_start(config: Annotated[Path, typer.Option("--config", "-c")] = Path("site.toml")) -> None:
    """Validate the local extract, then run this hospital's SuperNode (outbound TLS only).

    Exits non-zero when the SuperNode loses the coordinator (75 when it gave up reconnecting,
    e.g. over a TLS certificate it cannot verify), so the service manager restarts it."""
    from fedsyn.client.deploy import supernode_launch
    from fedsyn.client.policy import PolicyError
    from fedsyn.client.supervise import supervise
    from fedsyn.data.schema import SchemaError
    from fedsyn.data.tables import DataFileError
    from fedsyn.data.validation import DataValidationError
    from fedsyn.privacy.accounting import LedgerError

    try:
        launch = supernode_launch(config)
    except (PolicyError, SchemaError, DataFileError, DataValidationError, LedgerError) as exc:
        fail(f"not joining: {exc}")
    console.print(f"[dim]$ {' '.join(launch.command)}[/]")
    raise typer.Exit(supervise(launch.command, launch.environment))


@ledger_app.command("init")
def ledger_init(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site policy file")] = Path("site.toml"),
    reset_reason: Annotated[str | None, typer.Option(
        help="start again at epsilon 0 although the site's audit trail records charges (e.g. the extract now "
             "holds other patients); the reason is kept in the trail")] = None,
) -> None:
    """Create the site's empty ledger: once per extract, before the first run.

    The site refuses every request while its ledger is missing, so a lost or deleted ledger
    never silently restarts at epsilon 0.
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


