"""Running Flower's own programs: once (a subcommand) or in place of this process (a daemon)."""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from fedsyn.cli.output import console


def run_flower(command: list[str], env: dict[str, str] | None = None) -> None:
    console.print(f"[dim]$ {' '.join(command)}[/]")
    result = subprocess.run(command, env={**os.environ, **(env or {})})
    if result.returncode:
        raise typer.Exit(result.returncode)


def become_flower(command: list[str], env: dict[str, str] | None = None) -> None:
    """Replace this process with a long-running Flower daemon.

    A service manager's or container runtime's stop signal then reaches the SuperLink or
    SuperNode itself (which shuts down cleanly), instead of a parent that would die and
    leave the daemon running.
    """
    console.print(f"[dim]$ {' '.join(command)}[/]")
    sys.stdout.flush()
    os.execvpe(command[0], command, {**os.environ, **(env or {})})


