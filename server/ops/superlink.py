"""The coordinator's SuperLink and the ``flwr`` commands that drive it, from ``server.toml``.

Operations code: it starts Flower's daemons and submits the App bundle (``server/flower_app``,
whose ServerApp is :mod:`fedsyn.server.deploy`); it handles TLS files and addresses, never a
site's data or a DP output, and the privacy path never imports it.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from pydantic import BaseModel, Field, ValidationError

from fedsyn.data.schema import Schema
from fedsyn.errors import ConfigurationError, validation_problems
from fedsyn.federation.app_bundle import bundle_hash
from fedsyn.federation.flower_programs import NO_TELEMETRY, flower_program, search_path
from fedsyn.server.settings import FederationSettings, check_against_schema, refuse_seed_in_run_config
from fedsyn.trust.certs import expired

CONNECTION = "fedsyn"
RUN_PATHS = ("schema", "out", "signing-key", "audit-log", "state")  # [run] settings that name files
COMMAND_RUN_KEYS = frozenset({"resume", "plan-only"})  # the App's run keys `fedsyn server` sets itself
APP_DIR = Path(__file__).resolve().parents[1] / "flower_app"
log = logging.getLogger("fedsyn.server")


def app_run_keys() -> frozenset[str]:
    """The settings a run takes: the App's own run config (``[tool.flwr.app.config]``)."""
    app = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    return frozenset(app["tool"]["flwr"]["app"]["config"])


def check_run_config(run: dict[str, str | int | float], where: str) -> None:
    """``server.toml``'s ``[run]`` checked on the coordinator's machine before a run is submitted:
    no seed, no key the App does not take, and values the settings accept. Unchecked, Flower
    answered a misspelled key with "Invalid run configuration" and no name, and a bad value
    started a run that stopped in the ServerApp with nothing said of why (helper-98 M3)."""
    refuse_seed_in_run_config(run, where)
    set_by_the_command = sorted(set(run) & COMMAND_RUN_KEYS)
    if set_by_the_command:
        raise ConfigurationError(f"{where}: {', '.join(set_by_the_command)} is set by the command (`fedsyn server run "
                                 "--resume`, `fedsyn server plan`), never in [run]: remove it")
    known = app_run_keys() - COMMAND_RUN_KEYS
    unknown = sorted(set(run) - known)
    if unknown:
        raise ConfigurationError(f"{where}: no setting {', '.join(map(repr, unknown))}: the run's settings are "
                                 f"{', '.join(sorted(known))} (docs/coordinator.md)")
    try:
        settings = FederationSettings.from_run_config(run)
        schema = Path(str(run.get("schema", "")))
        if run.get("schema") and schema.is_file():  # a missing schema file is the ServerApp's to name
            check_against_schema(settings, Schema.load(schema))
    except ConfigurationError as exc:  # a SchemaError is one
        raise ConfigurationError(f"{where}: {exc}") from None
    if "rows" in run and not (isinstance(run["rows"], int) and run["rows"] > 0):
        raise ConfigurationError(f"{where}: rows = {run['rows']!r} is not a whole number of rows above 0")


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

    model_config = {"extra": "forbid"}  # a misspelled 'database' would start an empty registry

    @classmethod
    def load(cls, path: Path) -> CoordinatorConfig:
        """Read ``server.toml``; every relative path in it, the ``[run]`` ones included, is
        relative to the file (the ServerApp runs elsewhere and needs absolute paths)."""
        try:
            raw = tomllib.loads(Path(path).read_text())
            run = raw.get("run")
            if isinstance(run, dict) and isinstance(run.get("pairs-asked"), list):  # Flower's run config holds
                # no list: a TOML list of pairs was refused in pydantic's words (helper-116 M5)
                run["pairs-asked"] = ",".join(str(pair) for pair in run["pairs-asked"])
            config = cls.model_validate(raw)
        except FileNotFoundError:
            raise ConfigurationError(f"coordinator config not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"coordinator config {path} cannot be parsed: {exc}") from None
        except ValidationError as exc:
            raise ConfigurationError(f"coordinator config {path} is invalid: {validation_problems(exc)}") from None
        refuse_seed_in_run_config(config.run, f"coordinator config {path} [run]")
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
            try:  # a CA file may hold the old and the new CA while they rotate: expired only when all are
                when = expired(path, bundle=what == "CA certificate")
            except (OSError, ValueError):
                continue  # missing or unreadable: Flower's own error names it
            if when is not None:
                renew = ("`fedsyn certs init --renew-server` issues a new one with the same CA: hospitals change "
                         "nothing" if what == "server certificate" else
                         "`fedsyn certs init --force` issues a new CA and server certificate; hospitals then need "
                         "the new ca.crt")
                log.warning("the SuperLink's %s %s expired on %s: no hospital can connect until it is renewed "
                            "(%s)", what, path, when.isoformat(), renew,
                            extra={"fedsyn": {"event": "certificate_expired", "path": str(path),
                                              "expired": when.isoformat()}})

    def superlink_environment(self) -> dict[str, str]:
        """The SuperLink starts SuperExec and ``flwr-serverapp`` by name: it needs Flower's programs on PATH."""
        return {"PATH": search_path(), **NO_TELEMETRY}

    def flwr_environment(self) -> dict[str, str]:
        """FLWR_HOME with a connection named 'fedsyn' to this SuperLink over TLS."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        address = f"{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n'
            f'root-certificates = "{self.ca_certificate}"\n')
        return {"FLWR_HOME": str(self.flwr_home), **NO_TELEMETRY}

    def flwr_command(self, *arguments: str) -> list[str]:
        return [flower_program("flwr"), *arguments]

    def supernode_command(self, action: str, *arguments: str) -> list[str]:
        """``flwr supernode ACTION ARGUMENTS`` against this SuperLink (register, list, unregister)."""
        return self.flwr_command("supernode", action, *arguments, CONNECTION)

    def run_command(self, resume: bool = False, plan_only: bool = False) -> list[str]:
        """``flwr run`` of fedsyn's App with the [run] settings, checked first (:func:`check_run_config`:
        here, not when the file is read, so that a [run] mistake never keeps the SuperLink or the
        site list down); ``plan_only`` asks the sites for their budgets and stops there (``fedsyn
        server plan``)."""
        check_run_config(self.run, "the coordinator config's [run]")
        overrides = " ".join(f"{key}={_toml_value(value)}"
                             for key, value in {**self.run, "resume": resume, "plan-only": plan_only}.items())
        return self.flwr_command("run", str(APP_DIR), CONNECTION, *(["--run-config", overrides] if overrides else []))


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)
