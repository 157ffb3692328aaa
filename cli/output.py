"""What the command line shows: one console for messages, refusals, and logging setup.

Progress and messages go to stderr so that results can be piped; a refusal names what is
wrong and how to fix it, then exits with code 2.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)  # progress, messages, refusals
results = Console()  # tables and verdicts, on stdout for pipelines


def print_verdict(verdict: dict, fail_below: float | None = None) -> None:
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


class _WithoutFlowerNoise(logging.Filter):
    """fedsyn turns federated evaluation off on purpose; Flower warns about it on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "fraction_evaluate is set to 0.0" not in record.getMessage()


class JsonLines(logging.Formatter):
    """One JSON object per line: time with zone, level, logger, message, and the structured
    fields fedsyn attaches (event, run, round, site, ...). No colour codes, ever."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, "fedsyn", {}))
        return json.dumps(entry, default=str)


LOG_FORMATS = ("text", "json")
log_format = "text"  # set by the root --log-format option


def setup_logging(verbose: bool) -> None:
    """Logs on stderr: readable text (rich, no colour when redirected) or JSON lines
    (``--log-format json``). Flower's lines go through the same handler, once; its per-round
    INFO lines only with --verbose."""
    level = logging.INFO if verbose else logging.WARNING
    if log_format == "json":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLines())
    else:
        handler = RichHandler(console=console, show_path=False, log_time_format="%Y-%m-%dT%H:%M:%S%z")
    logging.basicConfig(level=level, format="%(name)s %(message)s", handlers=[handler], force=True)
    flower = logging.getLogger("flwr")
    for own in list(flower.handlers):  # Flower prints through its own handler too: every line twice
        flower.removeHandler(own)
    flower.setLevel(level)
    flower.propagate = True
    flower.addFilter(_WithoutFlowerNoise())


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
    console.print(f"[bold red]error:[/] {message}")
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
