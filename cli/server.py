"""Coordinator commands: the SuperLink, registered hospitals, training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsyn.cli.flower import become_flower, run_flower
from fedsyn.cli.output import fail

server_app = typer.Typer(help="Coordinator: SuperLink, registered hospitals, training runs.")
sites_app = typer.Typer(help="Hospitals allowed to join (their SuperNode public keys).")
server_app.add_typer(sites_app, name="sites")


def _coordinator(config: Path):
    from fedsyn.server.deploy import CoordinatorConfig

    try:
        return CoordinatorConfig.load(config)
    except (OSError, ValueError) as exc:
        fail(f"cannot use {config}: {exc}")


@server_app.command("start")
def server_start(config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Start the SuperLink: TLS, only registered hospitals may join, state kept in a database."""
    coordinator = _coordinator(config)
    become_flower(coordinator.superlink_command(), coordinator.superlink_environment())


@server_app.command("run")
def server_run(config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Submit a training run to the SuperLink; the release lands where the run config says."""
    coordinator = _coordinator(config)
    run_flower(coordinator.run_command() + ["--stream"], coordinator.flwr_environment())


@server_app.command("app-hash")
def server_app_hash() -> None:
    """Print the SHA-256 of the App `server run` submits; hospitals may list it in approved_apps."""
    from fedsyn.server.deploy import app_bundle_hash

    print(app_bundle_hash())


@sites_app.command("add")
def sites_add(public_key: Path, config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Register a hospital's auth.pub so its SuperNode may join."""
    coordinator = _coordinator(config)
    run_flower(coordinator.supernode_command("register", str(public_key)), coordinator.flwr_environment())


@sites_app.command("list")
def sites_list(config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Registered hospitals and whether they are online."""
    coordinator = _coordinator(config)
    run_flower(coordinator.supernode_command("list"), coordinator.flwr_environment())


@sites_app.command("remove")
def sites_remove(node_id: str, config: Annotated[Path, typer.Option("--config", "-c")] = Path("server.toml")) -> None:
    """Unregister a hospital's SuperNode by its node id (see `sites list`)."""
    coordinator = _coordinator(config)
    run_flower(coordinator.supernode_command("unregister", node_id), coordinator.flwr_environment())


