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
from fedsyn.logs import RUN_STOPPED, configure_child
from fedsyn.server.app import ReleasePlan, run_federation
from fedsyn.server.record import FederationError
from fedsyn.server.settings import FederationSettings

BUDGET_FIX = ("`fedsyn server plan` shows what each site has left; a site with too little left is asked nothing. "
              "Run with the sites that have budget (a lower min-sites), or ask those hospitals whether they will "
              "raise max_epsilon in their site policy")
RESUME_FIX = ("Bring the sites back (each hospital's log says why it did not answer), then `fedsyn server run "
              "--resume` continues after the last completed round: a site answers a round it already ran without "
              "paying again")
log = logging.getLogger("fedsyn.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    configure_child()  # JSON lines that `fedsyn server run` relays, in the operator's format
    config = dict(context.run_config)
    settings = FederationSettings.from_run_config(config)  # unset keys keep the tuned defaults
    plan = ReleasePlan(out=Path(str(config["out"])), rows=int(config["rows"]),
                       signing_key=Path(str(config["signing-key"])) if config.get("signing-key") else None,
                       audit_log=Path(str(config["audit-log"])) if config.get("audit-log") else None,
                       state_dir=Path(str(config["state"])) if config.get("state") else None)
    try:
        run_federation(grid, Schema.load(str(config["schema"])), settings, plan, run_id=str(context.run_id),
                       resume=bool(config.get("resume", False)), plan_only=bool(config.get("plan-only", False)))
    except FedsynError as exc:
        _log_stopped(exc)
        raise  # Flower marks the run failed; the handler leaves out its traceback of a fedsyn error


def _log_stopped(exc: FedsynError) -> None:
    """One record saying why the run stopped, what to do and the exit code `fedsyn server run`
    should end with: 77 when sites refused because the run would exceed their privacy budget; a
    run that saved a state of its own and then lost its quorum is told how to go on (helper-98: it was
    not; helper-100: a run stopped before it saved anything must not be told to resume another's)."""
    reason = str(exc)
    budget = isinstance(exc, FederationError) and exc.budget_spent
    fix = BUDGET_FIX if budget else RESUME_FIX if isinstance(exc, FederationError) and exc.resumable else ""
    code = PrivacyRefusal.exit_code if budget else exc.exit_code
    log.error("run stopped: %s", reason, extra={"fedsyn": {
        "event": RUN_STOPPED, "error": type(exc).__name__, "reason": reason, "fix": fix, "exit_code": code}})
