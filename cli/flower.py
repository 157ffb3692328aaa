"""Running Flower's own programs: once (a subcommand) or in place of this process (a daemon)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import typer

from fedsyn.cli.output import console

RUN_STARTED = re.compile(r"Successfully started run (\d+)")


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




def follow_run(command: list[str], env: dict[str, str] | None = None) -> str | None:
    """Run ``flwr run ... --stream``, echoing its log; return the run id Flower printed (None if
    no run started). Exits with Flower's code if ``flwr run`` itself failed."""
    console.print(f"[dim]$ {' '.join(command)}[/]")
    run_id = None
    with subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout or ():
            sys.stdout.write(line)
            started = RUN_STARTED.search(line)
            run_id = started.group(1) if started else run_id
    if process.returncode:
        raise typer.Exit(process.returncode)
    return run_id


def run_status(command: list[str], env: dict[str, str] | None = None) -> str:
    """The status Flower records for a run (``flwr ls --run-id ID --format json``), e.g.
    ``finished:completed`` or ``finished:failed``; ``unknown`` when it cannot be read."""
    result = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    try:
        runs = json.loads(result.stdout)["runs"]
        return str(runs[0]["status"]) if runs else "unknown"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "unknown"
