"""Coordinator deployment: the ServerApp Flower runs, and the SuperLink / flwr commands.

The run's settings come from the Flower run config (``[tool.flwr.app.config]`` of the
Flower App in ``deploy/app``, overridden by ``fedsyn server run``); paths in it are on the
coordinator's machine.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from flwr.app import Context
from flwr.cli.build import build_fab_from_disk
from flwr.serverapp import Grid, ServerApp
from pydantic import BaseModel, Field

from fedsyn.data.schema import Schema
from fedsyn.errors import FedsynError, PrivacyRefusal
from fedsyn.federation.app_bundle import bundle_hash
from fedsyn.federation.flower_programs import flower_program, search_path
from fedsyn.federation.protocol import ErrorCode
from fedsyn.logs import RUN_STOPPED, configure_child
from fedsyn.server.app import ReleasePlan, run_federation
from fedsyn.server.settings import FederationSettings
from fedsyn.trust.certs import expired

CONNECTION = "fedsyn"
RUN_PATHS = ("schema", "out", "signing-key", "audit-log", "state")  # [run] settings that name files
APP_DIR = Path(__file__).resolve().parent / "flower_app"
BUDGET_FIX = ("`fedsyn server plan` shows what each site has left; a site with too little left is asked nothing. "
              "Run with the sites that have budget (a lower min-sites), or ask those hospitals whether they will "
              "raise max_epsilon in their site policy")
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
    should end with: 77 when sites refused because the run would exceed their privacy budget."""
    reason = str(exc)
    budget = ErrorCode.BUDGET_EXHAUSTED.name.lower() in reason
    fix = BUDGET_FIX if budget else ""
    code = PrivacyRefusal.exit_code if budget else exc.exit_code
    log.error("run stopped: %s", reason, extra={"fedsyn": {
        "event": RUN_STOPPED, "error": type(exc).__name__, "reason": reason, "fix": fix, "exit_code": code}})


def app_bundle_hash() -> str:
    """SHA-256 of the App bundle ``fedsyn server run`` submits; hospitals may pin it (``approved_apps``).

    Flower builds bundles deterministically, so the hash depends only on the installed fedsyn version.
    """
    return bundle_hash(build_fab_from_disk(APP_DIR))


class CoordinatorConfig(BaseModel):
    """``server.toml``: the SuperLink's address, TLS files and state; paths relative to the file."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    database: Path = Path("state/superlink.db")
    certificate: Path = Path("certs/server.crt")
    private_key: Path = Path("certs/server.key")
    ca_certificate: Path = Path("certs/ca.crt")
    flwr_home: Path = Path("state/flwr-home")
    run: dict[str, str | int | float] = Field(default_factory=dict, description="run config overrides")

    @classmethod
    def load(cls, path: Path) -> CoordinatorConfig:
        """Read ``server.toml``; every relative path in it, the ``[run]`` ones included, is
        relative to the file (the ServerApp runs elsewhere and needs absolute paths)."""
        config = cls.model_validate(tomllib.loads(Path(path).read_text()))
        base = Path(path).resolve().parent
        run = {key: str(base / str(value)) if key in RUN_PATHS and value and not Path(str(value)).is_absolute()
               else value for key, value in config.run.items()}
        return config.model_copy(update={**{name: base / getattr(config, name) for name in
                                            ("database", "certificate", "private_key", "ca_certificate", "flwr_home")},
                                         "run": run})

    def superlink_command(self) -> list[str]:
        self._warn_if_expired()
        self.database.parent.mkdir(parents=True, exist_ok=True)
        return [flower_program("flower-superlink"),
                "--ssl-certfile", str(self.certificate), "--ssl-keyfile", str(self.private_key),
                "--ssl-ca-certfile", str(self.ca_certificate), "--enable-supernode-auth",
                "--database", str(self.database), "--host", self.host, "--port", str(self.port),
                "--disable-runtime-dependency-installation"]

    def _warn_if_expired(self) -> None:
        """Say so when the SuperLink's certificate or its CA has expired: the SuperLink would start,
        and every hospital's TLS handshake would fail on it."""
        for what, path in (("server certificate", self.certificate), ("CA certificate", self.ca_certificate)):
            try:
                when = expired(path)
            except (OSError, ValueError):
                continue  # missing or unreadable: Flower's own error names it
            if when is not None:
                log.warning("the SuperLink's %s %s expired on %s: no hospital can connect until it is renewed "
                            "(`fedsyn certs init` issues a new CA and server certificate; hospitals then need "
                            "the new ca.crt)", what, path, when.isoformat(),
                            extra={"fedsyn": {"event": "certificate_expired", "path": str(path),
                                              "expired": when.isoformat()}})

    def superlink_environment(self) -> dict[str, str]:
        """The SuperLink starts SuperExec and ``flwr-serverapp`` by name: it needs Flower's programs on PATH."""
        return {"PATH": search_path()}

    def flwr_environment(self) -> dict[str, str]:
        """FLWR_HOME with a connection named 'fedsyn' to this SuperLink over TLS."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        address = f"{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n'
            f'root-certificates = "{self.ca_certificate}"\n')
        return {"FLWR_HOME": str(self.flwr_home)}

    def flwr_command(self, *arguments: str) -> list[str]:
        return [flower_program("flwr"), *arguments]

    def supernode_command(self, action: str, *arguments: str) -> list[str]:
        """``flwr supernode ACTION ARGUMENTS`` against this SuperLink (register, list, unregister)."""
        return self.flwr_command("supernode", action, *arguments, CONNECTION)

    def run_command(self, resume: bool = False, plan_only: bool = False) -> list[str]:
        """``flwr run`` of fedsyn's App with the [run] settings; ``plan_only`` asks the sites for their
        budgets and stops there (``fedsyn server plan``)."""
        overrides = " ".join(f"{key}={_toml_value(value)}"
                             for key, value in {**self.run, "resume": resume, "plan-only": plan_only}.items())
        return self.flwr_command("run", str(APP_DIR), CONNECTION, *(["--run-config", overrides] if overrides else []))


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)
