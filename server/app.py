"""The Flower ServerApp: marginals round, training rounds, release bundle."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsyn.common.schema import Schema
from fedsyn.server.coordinator import Coordinator, FederationSettings, RoundCallback
from fedsyn.server.release import write_release

log = logging.getLogger("fedsyn.server")


def run_federation(grid: Grid, schema: Schema, settings: FederationSettings, out: Path, rows: int,
                   on_round: RoundCallback | None = None) -> Coordinator:
    """The whole coordinator job on any Grid; returns the coordinator with its records."""
    coordinator = Coordinator(schema, settings)
    coordinator.collect_marginals(grid)
    coordinator.train(grid, on_round)
    write_release(coordinator, out, rows)
    log.info("release written to %s", out)
    return coordinator


def make_server_app(schema: Schema, settings: FederationSettings, out: Path, rows: int,
                    on_round: RoundCallback | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, schema, settings, out, rows, on_round)

    return app
