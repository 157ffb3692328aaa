"""The coordinator's run: marginals round, training rounds and the release bundle (the Flower ServerApp that
runs it is :mod:`fedsyn.server.deploy`)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsyn.data.schema import Schema
from fedsyn.errors import ConfigurationError, failed_to_write, os_error_said
from fedsyn.logs import about, known
from fedsyn.server.audit_events import RELEASE_ARCHIVED, RELEASE_WRITTEN, RUN_FAILED, RUN_RESUMED, RUN_STARTED
from fedsyn.server.coordinator import Coordinator, RoundCallback
from fedsyn.server.record import FederationError, RoundSummary, SiteStatus
from fedsyn.server.release import archive_earlier_release, write_release
from fedsyn.server.resume import holding_run, load_state
from fedsyn.server.settings import FederationSettings
from fedsyn.trust.audit import AuditLog
from fedsyn.trust.signing import load_private_key

log = logging.getLogger("fedsyn.server")


@dataclass(frozen=True)
class ReleasePlan:
    """Where and how the coordinator publishes.

    ``every=K`` also writes an interim bundle every K rounds beside the release
    (:func:`interim_release_folder`), never inside it.
    ``signing_key`` (Ed25519, PEM) signs each bundle's manifest and the audit log's head.
    ``public_facts`` names anything published that was derived from private data and
    declared public by whoever set up the run (e.g. a simulation's smallest site size).
    ``state_dir`` keeps the run's state after every completed round and within round 0 (see
    :mod:`fedsyn.server.resume`).
    """

    out: Path
    rows: int
    every: int = 0
    drop_rule_violations: bool = False
    signing_key: Path | None = None
    audit_log: Path | None = None
    public_facts: dict[str, object] = field(default_factory=dict)
    state_dir: Path | None = None  # the run's state after every round, for ``--resume``


def interim_release_folder(out: Path, round_: int) -> Path:
    """Where the interim release after ``round_`` goes: ``OUT.round-NNN``, beside the release.
    Inside it, the final release's signed bundle carried every interim one, and the files' times
    told how long each stretch of rounds took, which grows with the sites' rows (helper-99 M1):
    a bundle holds the files of one release, written together."""
    return out.with_name(f"{out.name}.round-{round_:03d}")


def interim_release_folders(out: Path) -> list[Path]:
    """The interim releases beside ``out`` (:func:`interim_release_folder`), oldest round first."""
    name = re.compile(re.escape(out.name) + r"\.round-\d{3}")
    return sorted(path for path in out.parent.glob(f"{out.name}.round-*") if name.fullmatch(path.name))


def _written_by(audit: AuditLog | None, fedsyn_run: str) -> set[Path]:
    """The release folders run ``fedsyn_run`` wrote, by its audit entries (none without a log)."""
    if audit is None:
        return set()
    return {Path(str(entry["path"])).resolve() for entry in audit.entries()
            if entry.get("event") == RELEASE_WRITTEN and entry.get("run") == fedsyn_run}


def _staged(out: Path) -> Path:
    """Where the release bound for ``out`` is written whole first (:func:`_written_aside`)."""
    return out.with_name(f".{out.name}.writing")


def _written_aside(out: Path, write: Callable[[Path], dict[str, Any]], resumable: bool) -> dict[str, Any]:
    """The privacy report of the release ``write`` makes, written whole in a hidden folder beside
    ``out`` first (:func:`_staged`): only a release written whole takes the earlier one's place. A
    disk that filled while ``generator.pt`` was written had left a cut release at the published
    path, the good one moved aside, and the run said no release was written (helper-104 H1). A
    failure to write removes the partial folder and says what to do."""
    staged = _staged(out)
    shutil.rmtree(staged, ignore_errors=True)  # left by a coordinator killed while writing
    try:
        return write(staged)
    except (OSError, RuntimeError) as exc:
        if not failed_to_write(exc):
            raise
        shutil.rmtree(staged, ignore_errors=True)
        how = ("free space, then `fedsyn server run --resume`: it writes the release from the saved model and charges "
               "no site again" if resumable else "free space and run again (a new run charges every site again)")
        error = FederationError(f"the release could not be written beside {out} ({type(exc).__name__}"
                                f"{os_error_said(exc)}): is the disk full or read-only? The earlier release is where "
                                f"it was. {how}")
        error.resumable = resumable
        raise error from None


def _put_in_place(out: Path, resumable: bool) -> None:
    """Move the release written whole beside ``out`` (:func:`_staged`) to ``out``. Where the earlier release was
    moved aside, or none was there, the folder is renamed (one step). Where ``out`` stays (a
    symlink, a mount point, or a folder holding other files: helper-105 H1, where the rename
    failed after every site had paid), its files are moved into it one by one, as the release
    was written there before. A failure says where the new release and the earlier one are."""
    staged = _staged(out)
    try:
        if out.is_dir() and not out.is_symlink() and not os.path.ismount(out) and not any(out.iterdir()):
            out.rmdir()  # an empty plain folder: the release takes its place
        if not os.path.lexists(out):
            staged.rename(out)
            return
        for path in sorted(staged.iterdir()):
            shutil.move(str(path), str(out / path.name))
        staged.rmdir()
    except OSError as exc:
        error = FederationError(f"the release was written whole to {staged} but could not be moved to {out} "
                                f"({type(exc).__name__}{os_error_said(exc)}); an earlier release there was moved "
                                "aside first (OUT.replaced-<time>, in the audit log). Move the new one to "
                                + str(out) + " by hand, or fix the path and "
                                + ("`fedsyn server run --resume`" if resumable else "run again"))
        error.resumable = resumable
        raise error from None


def run_federation(grid: Grid, schema: Schema, settings: FederationSettings, plan: ReleasePlan,
                   on_round: RoundCallback | None = None, run_id: str | None = None,
                   resume: bool = False, plan_only: bool = False) -> Coordinator:
    """The whole coordinator job on any Grid; returns the coordinator with its records.

    Every audit entry names fedsyn's own run id (fresh, or the saved run's when resuming),
    so the entries of runs sharing one audit log stay apart; ``run_id`` (Flower's, in a
    deployment) is recorded when the run starts or resumes. With ``resume`` the run saved
    in ``plan.state_dir`` goes on after its last completed round (or within round 0, asking its
    saved queries again). With a state folder, only
    one coordinator process drives the run at a time (:func:`holding_run`). With ``plan_only``
    the sites are only asked for their budgets and each one's plan is logged
    (:meth:`Coordinator.plan_budgets`): nothing is charged or written but the audit entries,
    under a run id of the plan's own, so it takes no lock and can run beside a training run; too
    few sites able to take part raise :class:`~fedsyn.server.record.QuorumError`, the plan's answer."""
    with ExitStack() as stack:
        if plan.state_dir is not None and not plan_only:  # a plan writes no state: it need not wait for a run
            # a resumed run waits for the process it replaces to stop; a new one refuses at once
            stack.enter_context(holding_run(plan.state_dir, run_id, wait=120.0 if resume else 0.0))
        return _run(grid, schema, settings, plan, on_round, run_id, resume, plan_only)


def _run(grid: Grid, schema: Schema, settings: FederationSettings, plan: ReleasePlan,
         on_round: RoundCallback | None, run_id: str | None, resume: bool, plan_only: bool) -> Coordinator:
    """:func:`run_federation`'s body, run while the run's lock is held."""
    key = load_private_key(plan.signing_key) if plan.signing_key else None
    state = None
    if resume:
        if plan.state_dir is None:
            raise ConfigurationError("--resume needs the run's state folder (run config 'state')")
        state = load_state(plan.state_dir, plan.audit_log, key.public_key() if key is not None else None)
    fedsyn_run = state.run_id if state is not None else uuid4().hex[:16]
    known(run=fedsyn_run)  # every line from here on is this run's, Flower's too
    audit = AuditLog(plan.audit_log, key, run_id=fedsyn_run) if plan.audit_log else None
    coordinator = Coordinator(schema, settings, audit, run_id=fedsyn_run, state_dir=plan.state_dir)

    published: list[Path] = []
    own_interims = _written_by(audit, fedsyn_run) if state is not None else set()
    if state is not None and plan.out.resolve() in own_interims:
        # helper-120 M5: a finished run resumed drew a second, different table under its run id
        raise ConfigurationError(f"run {fedsyn_run} finished and wrote its release to {plan.out}: there is nothing "
                                 "to resume. Start a new run (without --resume; its sites spend again) for another "
                                 "release")

    def resumable() -> bool:  # a state of this run's own is saved, so `--resume` continues it
        return coordinator.saved_state or state is not None

    def publish(out: Path) -> None:
        # The earlier release stays where pipelines and the dashboard find it until this run has
        # one of its own to put there: a refused or failed run leaves it in place. An earlier
        # run's interim releases beside it go aside at this run's first publication, so that the
        # interim folders beside the release are one run's (helper-100 M-3); a resumed run's own,
        # written before it stopped, stay.
        earlier_interims = [] if published else [folder for folder in interim_release_folders(plan.out)
                                                 if folder.resolve() not in own_interims]
        report = _written_aside(out, lambda folder: write_release(
            coordinator.run, coordinator.trainer, folder, plan.rows, plan.drop_rule_violations, key,
            plan.public_facts, coordinator.site_level_privacy()), resumable=resumable())
        for folder in dict.fromkeys([*earlier_interims, out]):
            earlier = archive_earlier_release(folder)
            if earlier is not None:
                coordinator.record(RELEASE_ARCHIVED, path=str(earlier), replaced_by_run=fedsyn_run)
        published.append(out)
        _put_in_place(out, resumable=resumable())
        coordinator.record(RELEASE_WRITTEN, path=str(out), rows=plan.rows, signed=key is not None,
                           max_epsilon=report["max_epsilon_any_site"])

    def after_round(summary: RoundSummary, sites: dict[int, SiteStatus]) -> None:
        _log_round(summary, settings.rounds, {site.name: coordinator.run.epsilon_of(site) for site in sites.values()},
                   {site.name: site.claimed_epsilon for site in sites.values()})
        if plan.every and summary.round % plan.every == 0 and summary.round < settings.rounds:
            publish(interim_release_folder(plan.out, summary.round))
        if on_round is not None:
            on_round(summary, sites)

    if plan_only:  # its answer is the ServerApp's to log (fedsyn.server.deploy), too few sites included
        coordinator.check_run()
        coordinator.plan_budgets(grid)
        return coordinator
    try:
        if state is None:
            coordinator.record(RUN_STARTED, flower_run=run_id)
            coordinator.collect_marginals(grid)
        else:
            coordinator.restore(state)
            within_round_zero = coordinator.run.marginals is None  # its queries are asked again word for word
            coordinator.record(RUN_RESUMED, flower_run=run_id,
                               after_round=None if within_round_zero else state.round,
                               within_round_zero=within_round_zero)
            if within_round_zero:
                coordinator.collect_marginals(grid)
            else:
                coordinator.wait_for_sites(grid)
        coordinator.train(grid, after_round)
        publish(plan.out)
    except FederationError as exc:
        exc.resumable = resumable()
        _record_stopped(coordinator, exc)
        raise
    log.info("run %s finished: release written to %s", fedsyn_run, plan.out,
             extra={"fedsyn": {"event": "run_finished", "run": fedsyn_run, "release": str(plan.out)}})
    return coordinator


def _record_stopped(coordinator: Coordinator, exc: FederationError) -> None:
    """Say in the audit log that the run stopped, and why: without it the dashboard showed a run
    that had lost its quorum as in progress, its round running (helper-104 M3)."""
    coordinator.record(RUN_FAILED, reason=str(exc), resumable=exc.resumable)


def _log_round(summary: RoundSummary, rounds: int, epsilon: dict[str, float], ledgers: dict[str, float]) -> None:
    """The coordinator's progress line: the round, who took part, and each site's epsilon: its
    ledger's, all runs composed (what its budget caps, as the site last said), and this run's
    alone as the coordinator recomputes it from the accepted privacy events. This run's alone
    can be far above what it added to the ledger (a small budget left on top of earlier runs buys
    noise that is cheap composed, dear alone), and shown without the ledger's figure it read as
    overspending (helper-104 M8)."""
    spent = ", ".join(f"{site} {ledgers.get(site, 0.0):.3f} (this run alone {value:.3f})"
                      for site, value in sorted(epsilon.items()))
    log.info("round %d of %d done: %d site(s) accepted, %d dropped; epsilon per site, all runs composed in its "
             "ledger: %s", summary.round, rounds, summary.accepted, summary.dropped, spent,
             extra={"fedsyn": {"event": "round_done", "round": summary.round, "accepted": summary.accepted,
                               "dropped": summary.dropped, "epsilon": epsilon, "epsilon_ledger": ledgers}})


def make_server_app(schema: Schema, settings: FederationSettings, plan: ReleasePlan,
                    on_round: RoundCallback | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        with about():  # the run's lines carry its id (known in run_federation)
            run_federation(grid, schema, settings, plan, on_round, run_id=str(context.run_id),
                           resume=bool(context.run_config.get("resume", False)))

    return app
