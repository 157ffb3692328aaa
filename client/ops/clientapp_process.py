"""A hospital's ``flwr-clientapp``: Flower's own ClientApp process, with the bundle check in front.

The SuperNode starts Flower's SuperExec, which starts one ``flwr-clientapp`` process per task and
finds it on ``PATH``. ``fedsyn client start`` puts a launcher for this module first on the
SuperNode's ``PATH`` (:func:`install_launcher`), so the process that would install and import
the coordinator's App bundle first runs :func:`~fedsyn.client.ops.trusted_app.check_app_bundle`.
A refused bundle is never unpacked: the coordinator gets Flower's error reply naming the reason,
and the refusal goes into the site's audit trail.

The check wraps ``install_from_fab`` inside Flower's runtime (pinned ``flwr==1.41``): it is the
one step that every bundle passes before its code could be imported, and it runs after the task
message is pulled, so Flower still answers the coordinator with an error reply. Flower then
loads the ClientApp from the folder the run's ``fab_id`` and ``fab_version`` name, so the pull
is wrapped too (:class:`RunNames`): a run naming another App than its bundle is refused.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
from flwr.supernode.runtime import run_clientapp as flower_runtime

from fedsyn.client.audit_events import APP_REFUSED, CHARGED
from fedsyn.client.ops.trusted_app import UntrustedAppError, check_app_bundle, check_run_names
from fedsyn.client.policy import PolicyError, SitePolicy
from fedsyn.federation.app_bundle import bundle_hash
from fedsyn.federation.flower_programs import NO_TELEMETRY
from fedsyn.logs import configure_child
from fedsyn.trust.audit import AuditLog

log = logging.getLogger("fedsyn.client")

POLICY_VARIABLE = "FEDSYN_SITE_POLICY"
FLOWER_COMMAND = "flwr-clientapp"


def checked_install(policy: SitePolicy, install: Callable[..., Path], run: RunNames) -> Callable[..., Path]:
    """``install`` (Flower's ``install_from_fab``) that first refuses bundles the site does not
    trust, and a ``run`` that names another App than its bundle."""

    def install_if_trusted(fab_file: bytes, *args: object, **kwargs: object) -> Path:
        try:
            check_app_bundle(fab_file, frozenset(policy.approved_apps))
            if run.names is None:
                raise UntrustedAppError("the run's App names were not seen before its bundle; refused")
            check_run_names(fab_file, *run.names)
        except UntrustedAppError as refusal:
            log.error("site %s refused the coordinator's App: %s", policy.site_id, refusal)
            try:  # a trail that cannot be written must not replace the refusal the coordinator hears
                AuditLog(policy.audit_trail).append_unless_repeated(  # once between charges: a bundle a push
                    APP_REFUSED, since=CHARGED, same=(), fab_hash=bundle_hash(fab_file), reason=str(refusal))
            except Exception as exc:  # noqa: BLE001 - a read-only or full disk, a corrupt last line
                log.error("the App refusal could not be written to the audit trail (%s)", type(exc).__name__)
            raise
        return install(fab_file, *args, **kwargs)

    return install_if_trusted


class RunNames:
    """The App names (``fab_id``, ``fab_version``) of the run this process pulled: Flower loads
    the ClientApp from the folder they name, so the install check holds them to the bundle's own
    (:func:`~fedsyn.client.ops.trusted_app.check_run_names`). Checked at the install, not at the
    pull: Flower answers the coordinator with an error reply only once the task is pulled."""

    def __init__(self) -> None:
        self.names: tuple[str, str] | None = None

    def recording(self, pull: Callable[..., tuple[Any, Any, Any, Any]]) -> Callable[..., tuple[Any, Any, Any, Any]]:
        """``pull`` (Flower's ``pull_task_input``) that keeps its run's App names."""

        def pull_recorded(*args: object, **kwargs: object) -> tuple[Any, Any, Any, Any]:
            message, context, run, fab = pull(*args, **kwargs)
            self.names = (run.fab_id, run.fab_version)
            return message, context, run, fab

        return pull_recorded


def guarded_install(policy_path: str, install: Callable[..., Path], run: RunNames) -> Callable[..., Path]:
    """:func:`checked_install` under the site's policy or, where the policy file cannot be read (an
    operator's edit broke it while the site runs), an install that refuses every bundle: Flower
    then answers the coordinator with an error at once. Loaded outside that path, the policy's
    error crashed each ClientApp with a traceback, no reply went back, and the coordinator waited
    its whole round timeout saying nothing (helper-98 M1)."""
    try:
        policy = SitePolicy.load(policy_path)
    except PolicyError as exc:
        log.error("%s: this site answers every request with an error until the file is fixed", exc)

        def refuse(*_: object, **__: object) -> Path:
            raise PolicyError("the site's policy file cannot be read; its operator sees why in the site's log")

        return refuse
    return checked_install(policy, install, run)


RUNTIME_INSTALL_FLAG = "--allow-runtime-dependency-installation"


def main() -> None:
    """Entry point of the launcher: the site policy path comes from the launcher, not the coordinator.
    The site's records (privacy charged, update sent, refusals) go out as JSON lines for ``fedsyn
    client start`` to relay: with nothing configured here, Python dropped every INFO record.

    Flower's runtime dependency install (``uv sync`` in the bundle's folder, which builds its
    project from whatever ``[build-system]`` it names) never runs here, whatever the SuperNode
    was started with: a fedsyn App needs nothing installed (helper-118 L2)."""
    configure_child()
    if RUNTIME_INSTALL_FLAG in sys.argv:
        log.warning("this site never installs an App's dependencies at run time: %s ignored", RUNTIME_INSTALL_FLAG)
        sys.argv = [argument for argument in sys.argv if argument != RUNTIME_INSTALL_FLAG]
    run = RunNames()
    flower_runtime.pull_task_input = run.recording(flower_runtime.pull_task_input)
    flower_runtime.install_from_fab = guarded_install(  # type: ignore[attr-defined]
        os.environ[POLICY_VARIABLE], flower_runtime.install_from_fab, run)  # type: ignore[attr-defined]
    flwr_clientapp()


def install_launcher(directory: Path, policy_path: Path) -> Path:
    """Write ``directory/flwr-clientapp`` running :func:`main` for ``policy_path``; return ``directory``.

    Put ``directory`` first on the SuperNode's ``PATH``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    launcher = directory / FLOWER_COMMAND
    launcher.write_text("#!/bin/sh\n"
                        + "".join(f"{name}={value} " for name, value in NO_TELEMETRY.items())
                        + f"{POLICY_VARIABLE}={shlex.quote(str(Path(policy_path).resolve()))} "
                        f'exec {shlex.quote(sys.executable)} -m fedsyn.client.ops.clientapp_process "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP)
    return directory


if __name__ == "__main__":
    main()
