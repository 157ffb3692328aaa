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

console = Console(stderr=True)


def setup_logging(verbose: bool) -> None:
    """Structured logs through rich; Flower's per-round INFO lines only with --verbose."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(name)s %(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("flwr").setLevel(level)


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
