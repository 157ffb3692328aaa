"""The ServerApp Flower runs on the coordinator's machine: the whole run, from its run config.

Its import path, ``fedsyn.server.deploy:app``, is the ServerApp component of the App bundle the
coordinator submits (``server/flower_app``), whose hash hospitals pin, so the path stays put. The
run's settings come from the Flower run config (``[tool.flwr.app.config]`` of that App,
overridden by ``fedsyn server run``); paths in it are on the coordinator's machine. Starting the
SuperLink and submitting runs to it is operations code (:mod:`fedsyn.server.ops.superlink`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsyn.data.schema import Schema
from fedsyn.errors import FedsynError, PrivacyRefusal
from fedsyn.logs import PLAN_FINISHED, RUN_STOPPED, about, configure_child
from fedsyn.server.app import ReleasePlan, run_federation
from fedsyn.server.record import FederationError, QuorumError
from fedsyn.server.settings import FederationSettings

BUDGET_WAYS = ("Run with the sites that have budget (a lower min-sites in [run]), or ask those hospitals whether "
               "they will raise max_epsilon in their site policy")
BUDGET_FIX = ("`fedsyn server plan` shows what each site has left; a site with too little left is asked nothing. "
              + BUDGET_WAYS)
RESUME_FIX = ("Bring the sites back (each hospital's log says why it did not answer), then `fedsyn server run "
              "--resume` continues after the last completed round: a site answers a round it already ran without "
              "paying again")
log = logging.getLogger("fedsyn.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    configure_child()  # JSON lines that `fedsyn server run` relays, in the operator's format
    with about():  # the run stopped and the plan's answer carry the run id too (logs.known)
        _serve(grid, context)


def _serve(grid: Grid, context: Context) -> None:
    """The run (or budget plan) the run config describes, and the line saying how it ended."""
    config = dict(context.run_config)
    settings = FederationSettings.from_run_config(config)  # unset keys keep the tuned defaults
    plan = ReleasePlan(out=Path(str(config["out"])), rows=int(config["rows"]),
                       signing_key=Path(str(config["signing-key"])) if config.get("signing-key") else None,
                       audit_log=Path(str(config["audit-log"])) if config.get("audit-log") else None,
                       state_dir=Path(str(config["state"])) if config.get("state") else None)
    plan_only = bool(config.get("plan-only", False))
    try:
        run_federation(grid, Schema.load(str(config["schema"])), settings, plan, run_id=str(context.run_id),
                       resume=bool(config.get("resume", False)), plan_only=plan_only)
    except FedsynError as exc:
        if plan_only and isinstance(exc, QuorumError):
            _log_plan(exc)
            return  # the plan's answer: Flower records it completed, with no "unhandled exception" of its own
        _log_stopped(exc)
        raise  # Flower marks the run failed; the handler leaves out its traceback of a fedsyn error
    if plan_only:
        _log_plan(None)


def _budget_spent(exc: FedsynError) -> bool:
    """Whether every site the run lost refused for its privacy budget."""
    return isinstance(exc, FederationError) and exc.budget_spent


def _exit_code(exc: FedsynError) -> int:
    """The code `fedsyn server run` or `server plan` ends with for ``exc``: 77 when every site the
    run lost refused for its privacy budget, else the error's own."""
    return PrivacyRefusal.exit_code if _budget_spent(exc) else exc.exit_code


def _log_plan(short: QuorumError | None) -> None:
    """The budget plan's answer, for `fedsyn server plan` to end with (its ``exit_code``): whether
    a run now would start, and if not, which sites could not take part and why. Too few sites is
    what a plan is for finding out: it was logged as a dropped round and a stopped run, Flower's
    "unhandled exception occurred in the ServerApp" after it (operator finding L2)."""
    if short is None:
        log.info("budget plan done: enough sites can take part in a run; nothing was charged",
                 extra={"fedsyn": {"event": PLAN_FINISHED, "exit_code": 0}})
        return
    lost = "; ".join(f"{name}: {reason}" for name, reason in short.lost)
    reason = (f"a run now would stop before round 0: {short.accepted} site(s) can take part, fewer than min-sites "
              f"{short.needed}. {lost}")
    fix = BUDGET_WAYS if short.budget_spent else ""
    log.warning("budget plan: %s", reason, extra={"fedsyn": {
        "event": PLAN_FINISHED, "reason": reason, "fix": fix, "exit_code": _exit_code(short)}})


def _log_stopped(exc: FedsynError) -> None:
    """One record saying why the run stopped, what to do and the exit code `fedsyn server run`
    should end with: 77 when sites refused because the run would exceed their privacy budget; a
    run that saved a state of its own and then lost its quorum is told how to go on (helper-98: it was
    not; helper-100: a run stopped before it saved anything must not be told to resume another's)."""
    reason = str(exc)
    fix = BUDGET_FIX if _budget_spent(exc) else RESUME_FIX if isinstance(exc, FederationError) and exc.resumable else ""
    log.error("run stopped: %s", reason, extra={"fedsyn": {
        "event": RUN_STOPPED, "error": type(exc).__name__, "reason": reason, "fix": fix, "exit_code": _exit_code(exc)}})
