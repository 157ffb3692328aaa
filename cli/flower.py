"""Running Flower's own programs: once (a subcommand) or in place of this process (a daemon)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import typer

from fedsyn.cli.output import console
from fedsyn.logs import PLAN_FINISHED, RUN_STOPPED, known, relay

RUN_STARTED = re.compile(r"Successfully started run (\d+)")
SERVERAPP_STARTED = "Start `flwr-serverapp` process"  # the SuperLink's SuperExec, streamed with the run
# A SuperLink frozen for minutes came back with its SuperExec dead: it took runs and started no
# ServerApp, and `server run` followed an empty log for ever (helper-108 H2). A ServerApp starts
# within seconds, so a run without one after this long is said to have none.
SERVERAPP_START_S = 120.0
log = logging.getLogger("fedsyn.cli")


def run_flower(command: list[str], env: dict[str, str] | None = None) -> None:
    console.print(f"[dim]$ {' '.join(command)}[/]")
    result = subprocess.run(command, env={**os.environ, **(env or {})})
    if result.returncode:
        raise typer.Exit(result.returncode)


# How long `flwr stop` may take once `server run` is ending: a SuperLink that does not answer
# leaves the operator the command to give by hand instead of a command that never ends.
FLOWER_QUIETLY_S = 60.0


def flower_quietly(command: list[str], env: dict[str, str] | None = None) -> bool:
    """Whether a short Flower command succeeded within ``FLOWER_QUIETLY_S``, run with its output
    kept off this terminal, which may be gone (a hangup stops `server run`: echoing the command
    there failed before it ran). It runs in a session of its own: the terminal's hangup, sent to
    its whole process group, would otherwise kill it halfway (helper-127 H1)."""
    try:
        return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True,
                              start_new_session=True, timeout=FLOWER_QUIETLY_S).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def flower_output(command: list[str], env: dict[str, str] | None = None) -> str:
    """What a short Flower command printed, for fedsyn to read; when it fails, what it printed
    (its own error) is shown and its exit code kept."""
    console.print(f"[dim]$ {' '.join(command)}[/]")
    result = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if result.returncode:
        console.print(result.stdout + result.stderr, markup=False, highlight=False)
        raise typer.Exit(result.returncode)
    return result.stdout


def become_flower(command: list[str], env: dict[str, str] | None = None) -> None:
    """Replace this process with a long-running Flower daemon.

    A service manager's or container runtime's stop signal then reaches the SuperLink or
    SuperNode itself (which shuts down cleanly), instead of a parent that would die and
    leave the daemon running.
    """
    console.print(f"[dim]$ {' '.join(command)}[/]")
    sys.stdout.flush()
    os.execvpe(command[0], command, {**os.environ, **(env or {})})


@dataclass
class FollowedRun:
    """What ``flwr run --stream`` showed: the run id Flower printed (None if no run started),
    when the coordinator stopped the run on a fedsyn error, that error's structured record, and a
    budget plan's answer (its record)."""

    run_id: str | None = None
    stopped: dict[str, object] = field(default_factory=dict)
    planned: dict[str, object] = field(default_factory=dict)
    superlink_lost: bool = False  # Flower said the SuperLink stopped answering


class FollowingEnded(Exception):
    """``flwr run --stream`` ended before the run did; ``run_id`` is the run Flower had named (None
    if none had started)."""

    def __init__(self, run_id: str | None):
        super().__init__(run_id)
        self.run_id = run_id


class RunInterrupted(FollowingEnded):
    """Ctrl-C, or a stop signal (``signal_number``), while a run was followed: Flower's run goes on
    at the SuperLink until it is stopped."""

    def __init__(self, run_id: str | None, signal_number: int | None = None):
        super().__init__(run_id)
        self.signal_number = signal_number


# Signals that end `server run` as Ctrl-C does, the run at the SuperLink stopped with it, and what
# each means to the operator. Left to Python's default, a hangup ended the command with 129 and no
# word while the run went on unwatched (operator finding L9). A signal ignored when the command
# started (``nohup``) stays ignored.
STOP_SIGNALS = {
    signal.SIGHUP: "a hangup (SIGHUP: the terminal it ran in closed; to keep a run going without one, start "
                   "`fedsyn server run` under nohup, tmux or screen)",
    signal.SIGTERM: "a stop request (SIGTERM: a service manager, a container's stop, `kill`)",
}


class _StopSignal(BaseException):
    """Raised in the main thread by a stop signal, as Python raises KeyboardInterrupt for SIGINT."""

    def __init__(self, number: int):
        super().__init__(number)
        self.number = number


def _raise_stop(number: int, _frame: object) -> None:
    """The first stop signal ends following the run; any later one is ignored while the command
    stops Flower's run and says so, which it could otherwise kill halfway (closing a terminal
    sends two hangups: the shell's to its jobs, the kernel's to the foreground group;
    helper-127 H1)."""
    ignore_stop_signals()
    raise _StopSignal(number)


def ignore_stop_signals() -> None:
    """Ignore the stop signals from now until :func:`stop_signals_caught` ends: the command is
    ending (a Ctrl-C or a first stop signal came) and stops Flower's run first."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)


@contextmanager
def stop_signals_caught() -> Iterator[None]:
    """Within it, a stop signal ends :func:`follow_run` as Ctrl-C does (:class:`RunInterrupted`),
    and later ones are ignored, so that the caller can stop Flower's run and say so; the
    handlers before it come back when it ends. A signal ignored when the command started
    (``nohup``) stays ignored."""
    caught: dict[int, Any] = {}
    try:
        caught.update({number: signal.signal(number, _raise_stop) for number in STOP_SIGNALS
                       if signal.getsignal(number) is not signal.SIG_IGN})
        yield
    finally:
        for number, handler in caught.items():
            signal.signal(number, handler)


SUPERLINK_LOST = "Connection to the SuperLink is unavailable"  # what `flwr run` says when it stops answering


class SuperLinkLost(FollowingEnded):
    """The SuperLink stopped answering (killed, restarted, its machine down), and the run with it;
    with no ``run_id`` it never answered (not started, or a wrong address)."""


def follow_run(command: list[str], env: dict[str, str] | None = None) -> FollowedRun:
    """Run ``flwr run ... --stream`` and log its lines here (the ServerApp's JSON lines with their
    own time and fields, Flower's as Flower records). Exits with Flower's code if ``flwr run``
    itself failed; raises :class:`RunInterrupted` on Ctrl-C (and, within
    :func:`stop_signals_caught`, on a stop signal) and :class:`SuperLinkLost` when the SuperLink
    stopped answering."""
    followed = FollowedRun()
    no_serverapp: threading.Timer | None = None
    try:
        log.info("$ %s", " ".join(command))
        with subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as process, _ended_with(process):
            for line in process.stdout or ():
                started = RUN_STARTED.search(line)
                followed.run_id = started.group(1) if started else followed.run_id  # before a stop can come
                record = relay(line)
                if started and no_serverapp is None:
                    no_serverapp = threading.Timer(SERVERAPP_START_S, _say_no_serverapp, (started.group(1),))
                    no_serverapp.daemon = True
                    no_serverapp.start()
                if no_serverapp is not None and SERVERAPP_STARTED in line:
                    no_serverapp.cancel()
                fields = getattr(record, "fedsyn", {})
                if fields.get("run"):  # the coordinator's run id: this command's own lines are that run's too
                    known(run=fields["run"])
                if fields.get("event") == RUN_STOPPED:
                    followed.stopped = fields
                if fields.get("event") == PLAN_FINISHED:
                    followed.planned = fields
                followed.superlink_lost = followed.superlink_lost or SUPERLINK_LOST in line
    except KeyboardInterrupt:
        raise RunInterrupted(followed.run_id) from None
    except _StopSignal as stopped:
        raise RunInterrupted(followed.run_id, stopped.number) from None
    finally:
        if no_serverapp is not None:
            no_serverapp.cancel()
    if process.returncode and followed.superlink_lost:
        raise SuperLinkLost(followed.run_id)
    if process.returncode:
        raise typer.Exit(process.returncode)
    return followed


@contextmanager
def _ended_with(process: subprocess.Popen[str]) -> Iterator[None]:
    """End ``flwr run --stream`` when following it ends early: a stop signal reaches this process
    alone, and leaving the ``with`` would wait for a stream that lasts as long as the run."""
    try:
        yield
    except BaseException:
        process.terminate()
        raise


def _say_no_serverapp(run_id: str) -> None:
    log.warning("the SuperLink took run %s but has started no ServerApp for it in %.0f s: its SuperExec may have "
                "stopped (a SuperLink frozen or short of memory keeps taking runs without one). Press Ctrl-C, "
                "restart the SuperLink (`fedsyn server start`) and give the same command again (`server run` "
                "takes --resume to go on with a run saved in the state folder): this run has asked no site anything",
                run_id, SERVERAPP_START_S)


def run_status(command: list[str], env: dict[str, str] | None = None) -> str:
    """The status Flower records for a run (``flwr ls --run-id ID --format json``), e.g.
    ``finished:completed`` or ``finished:failed``; ``unknown`` when it cannot be read."""
    result = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    try:
        runs = json.loads(result.stdout)["runs"]
        return str(runs[0]["status"]) if runs else "unknown"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "unknown"
