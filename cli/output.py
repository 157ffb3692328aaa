"""What the command line shows: one console for messages, refusals, and logging setup.

Progress and messages go to stderr so that results can be piped; a refusal names what is
wrong and how to fix it, then exits with code 2.
"""

from __future__ import annotations

import logging
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
                  f"{verdict['summary']}")
    for flag in verdict["flags"]:
        results.print(f"  [{colour[flag['level']]}]{flag['level']}[/] {flag['area']}: {flag['message']}")
    if fail_below is not None and verdict["score"] < fail_below:
        fail(f"verdict score {verdict['score']:.2f} is below --fail-below {fail_below:g}", code=3)


class _WithoutFlowerNoise(logging.Filter):
    """fedsyn turns federated evaluation off on purpose; Flower warns about it on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "fraction_evaluate is set to 0.0" not in record.getMessage()


def setup_logging(verbose: bool) -> None:
    """Structured logs through rich; Flower's per-round INFO lines only with --verbose."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(name)s %(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    flower = logging.getLogger("flwr")
    flower.setLevel(level)
    flower.addFilter(_WithoutFlowerNoise())


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
