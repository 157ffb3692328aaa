"""What the command line shows: one console for messages, refusals, and logging setup.

Progress and messages go to stderr so that results can be piped; a refusal names what is
wrong and how to fix it, then exits with code 2.
"""

from __future__ import annotations

import logging
import statistics
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from fedsyn import logs

console = Console(stderr=True)  # progress, messages, refusals
EXIT_INTERRUPTED = 130  # a shell's code for a command ended by Ctrl-C
results = Console()  # tables and verdicts, on stdout for pipelines


def print_verdict(verdict: dict[str, Any], fail_below: float | None = None) -> None:
    """The report's verdict, coloured; exits 3 when its score is below ``fail_below``."""
    colour = {"green": "green", "amber": "yellow", "red": "red"}
    level = verdict["level"]
    results.print(f"[bold {colour[level]}]verdict: {level.upper()}[/] (score {verdict['score']:.2f} of 1): "
                  f"{verdict['summary']}", soft_wrap=True)
    for flag in verdict["flags"]:
        results.print(f"  [{colour[flag['level']]}]{flag['level']}[/] {flag['area']}: {flag['message']}",
                      soft_wrap=True)
    if fail_below is not None and verdict["score"] < fail_below:
        fail(f"verdict score {verdict['score']:.2f} is below --fail-below {fail_below:g}", code=3)


def time_left(round_seconds: list[float], rounds_left: int) -> str:
    """', about 4 min left' for a progress line: the median of the last five rounds' seconds
    times the rounds left (rounds took 3-75 s on a newcomer's loaded machine, so a plain count of
    rounds said nothing of when the release would come); '' when none is left. The first round
    warms up (torch, the engine) and is left out, so there is no estimate until a second has
    ended: a newcomer's took 91 s and said 'about 36 min left' of a run that ended 96 s later.
    The median keeps one slow round from swinging the estimate."""
    timed = round_seconds[1:]
    if rounds_left <= 0 or not timed:
        return ""
    left = round(rounds_left * statistics.median(timed[-5:]))
    return f", about {max(left, 1)} s left" if left < 90 else f", about {round(left / 60)} min left"


LOG_FORMATS = logs.LOG_FORMATS
log_format = "text"  # set by the root --log-format option


def use_log_format(chosen: str) -> None:
    """Honour the root ``--log-format``. With json, every line on stderr is a JSON object from
    the first one on: the console's messages and refusals are relayed as log records too (one
    per line, unwrapped), so a log collector never meets a line it cannot parse."""
    global log_format
    log_format = chosen
    json_lines = chosen == "json"
    console.file = logs.RelayStream("fedsyn.cli") if json_lines else None  # type: ignore[assignment]
    console.soft_wrap = json_lines
    if json_lines:
        logs.configure("json", logging.WARNING)


def setup_logging(verbose: bool) -> None:
    """Logs on stderr through one handler, as text or JSON lines (``--log-format``); Flower's
    lines go through it too, once. INFO records (Flower's per-round lines, fedsyn's progress)
    only with ``verbose``: long-running commands pass True."""
    logs.configure(log_format, logging.INFO if verbose else logging.WARNING)


def program() -> str:
    """How to type this command again: ``fedsyn`` when that is what the shell finds, else the path
    it was run by (e.g. ``.venv/bin/fedsyn`` from an environment that is not activated)."""
    import shutil

    invoked = Path(sys.argv[0])
    found = shutil.which("fedsyn")
    if found is not None and Path(found).resolve() == invoked.resolve():
        return "fedsyn"
    return str(invoked) if invoked.name == "fedsyn" else "fedsyn"


def fail(message: str, code: int = 2) -> NoReturn:
    """Refuse in one line, whatever the terminal's width (a log collector or grep sees it whole).
    A terminal that is gone (its hangup stopped the command) takes no line; the code still says it."""
    try:
        console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # "[run]" is text, not markup
    except OSError:
        pass
    raise typer.Exit(code)


def check_out_folder(out: Path) -> None:
    """Refuse, before anything is read or written, an output folder that cannot be made: a file,
    a path under a file, or a folder this user may not write in. A path on one's own disk is no
    patient data, so the refusal names it."""
    import os

    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder: name a folder for the output")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        fail(f"--out {out}: {existing} is a file, not a folder, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"--out {out}: this user may not write in {existing}")
