"""The Flower ServerApp: marginals round, training rounds, release bundle."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsyn.data.schema import Schema
from fedsyn.server.coordinator import Coordinator, RoundCallback, RoundSummary
from fedsyn.server.release import write_release
from fedsyn.server.settings import FederationSettings
from fedsyn.trust.audit import AuditLog
from fedsyn.trust.signing import load_private_key

log = logging.getLogger("fedsyn.server")


@dataclass(frozen=True)
class ReleasePlan:
    """Where and how the coordinator publishes.

    ``every=K`` also writes an interim bundle every K rounds to ``out/round-NNN``.
    ``signing_key`` (Ed25519, PEM) signs each bundle's manifest and the audit log's head.
    ``public_facts`` names anything published that was derived from private data and
    declared public by whoever set up the run (e.g. a simulation's smallest site size).
    """

    out: Path
    rows: int
    every: int = 0
    drop_rule_violations: bool = False
    signing_key: Path | None = None
    audit_log: Path | None = None
    public_facts: dict[str, object] = field(default_factory=dict)


def run_federation(grid: Grid, schema: Schema, settings: FederationSettings, plan: ReleasePlan,
                   on_round: RoundCallback | None = None, run_id: str | None = None) -> Coordinator:
    """The whole coordinator job on any Grid; returns the coordinator with its records.

    ``run_id`` (Flower's, in a deployment; else a fresh one) tags every audit entry, so the
    entries of runs sharing one audit log stay apart."""
    key = load_private_key(plan.signing_key) if plan.signing_key else None
    audit = AuditLog(plan.audit_log, key, run_id=run_id or uuid4().hex[:16]) if plan.audit_log else None
    coordinator = Coordinator(schema, settings, audit)

    def publish(out: Path) -> None:
        write_release(coordinator, out, plan.rows, plan.drop_rule_violations, key, plan.public_facts)

    def after_round(summary: RoundSummary, sites: dict) -> None:
        if plan.every and summary.round % plan.every == 0 and summary.round < settings.rounds:
            publish(plan.out / f"round-{summary.round:03d}")
        if on_round is not None:
            on_round(summary, sites)

    coordinator.collect_marginals(grid)
    coordinator.train(grid, after_round)
    publish(plan.out)
    log.info("release written to %s", plan.out)
    return coordinator


def make_server_app(schema: Schema, settings: FederationSettings, plan: ReleasePlan,
                    on_round: RoundCallback | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, schema, settings, plan, on_round, run_id=str(context.run_id))

    return app
