"""The Flower ServerApp: marginals round, training rounds, release bundle."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsyn.common.schema import Schema
from fedsyn.server.coordinator import Coordinator, FederationSettings, RoundCallback, RoundSummary
from fedsyn.server.release import write_release

log = logging.getLogger("fedsyn.server")


def run_federation(grid: Grid, schema: Schema, settings: FederationSettings, out: Path, rows: int,
                   on_round: RoundCallback | None = None, release_every: int = 0,
                   drop_rule_violations: bool = False) -> Coordinator:
    """The whole coordinator job on any Grid; returns the coordinator with its records.

    With ``release_every=K`` an interim bundle is also written every K rounds to
    ``out/round-NNN`` (the generator so far, the ledger so far).
    """
    coordinator = Coordinator(schema, settings)

    def after_round(summary: RoundSummary, sites: dict) -> None:
        if release_every and summary.round % release_every == 0 and summary.round < settings.rounds:
            write_release(coordinator, out / f"round-{summary.round:03d}", rows, drop_rule_violations)
        if on_round is not None:
            on_round(summary, sites)

    coordinator.collect_marginals(grid)
    coordinator.train(grid, after_round)
    write_release(coordinator, out, rows, drop_rule_violations)
    log.info("release written to %s", out)
    return coordinator


def make_server_app(schema: Schema, settings: FederationSettings, out: Path, rows: int,
                    on_round: RoundCallback | None = None, release_every: int = 0,
                    drop_rule_violations: bool = False) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, schema, settings, out, rows, on_round, release_every, drop_rule_violations)

    return app
