"""The ``fedsyn`` command: one module per command group, assembled here.

Heavy libraries (torch, Flower, Opacus) load inside the commands that need them, so that
``fedsyn --help`` answers at once.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from fedsyn import logs
from fedsyn.cli import client, data, output, research, server, trust
from fedsyn.cli.output import console
from fedsyn.federation.flower_programs import NO_TELEMETRY

# Tracebacks are off: rich's would print local variables (patient rows); see main().
app = typer.Typer(help="Federated, differentially private synthetic health records.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


def _version(show: bool) -> None:
    if show:
        from fedsyn import __version__

        print(f"fedsyn {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the installed fedsyn version and exit"),
    log_format: str = typer.Option("text", "--log-format", help="logs on stderr as readable text or as json lines "
                                   f"(time with zone, level, logger, message, {', '.join(logs.FIELDS)}: each null "
                                   "where a line has none, e.g. before a run exists)"),
) -> None:
    """Federated, differentially private synthetic health records."""
    if log_format not in output.LOG_FORMATS:
        output.fail(f"--log-format {log_format}: choose text or json")
    output.use_log_format(log_format)


def _inputs_first(command: Callable[..., Any], files: dict[str, str], out: str | None = None) -> Callable[..., Any]:
    """``command`` with its input files (parameter: what to call it) and its output folder checked
    first, so that a mistyped path is answered at once, not after torch and Flower have loaded."""

    @functools.wraps(command)  # Typer reads the options off the wrapped command's signature
    def checked(**params: Any) -> Any:
        for name, label in files.items():
            path = params.get(name)
            if path is not None and not Path(path).is_file():
                output.fail(f"{label} file not found: {path}")
        if out is not None and params.get(out) is not None:
            output.check_out_folder(Path(params[out]))
        return command(**params)

    return checked


app.add_typer(data.schema_app, name="schema")
app.command()(data.validate)
app.command()(_inputs_first(research.fit, {"data": "data", "schema": "schema", "held_out": "held-out"}, out="out"))
app.command()(research.simulate)
app.command()(research.evaluate)
app.command()(trust.verify)
app.add_typer(trust.keys_app, name="keys")
app.add_typer(trust.audit_app, name="audit")
app.add_typer(trust.certs_app, name="certs")
app.add_typer(server.server_app, name="server")
app.add_typer(client.client_app, name="client")


def main() -> None:
    """Console entry point. fedsyn's own errors print their message and exit with their code;
    an operating-system error prints its own words and path (exit 74); any other error prints
    its type, never its text or a traceback with local variables, since either may quote
    patient rows (FEDSYN_DEBUG=1 re-raises it)."""
    from fedsyn.errors import FedsynError

    if not sys.stdout.isatty():  # help piped or captured: keep option names whole (Typer's default is 80 columns)
        os.environ.setdefault("TERMINAL_WIDTH", "120")
    os.environ.update(NO_TELEMETRY)  # before Flower loads (it reads this once), here and in every process it starts
    with logs.about():  # the command's lines carry the run or site it comes to know (logs.known)
        try:
            app()
        except FedsynError as exc:  # fedsyn's own errors speak to the user and quote no patient value
            console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)  # "[run]" is text, not markup
            sys.exit(exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for private values
            if os.environ.get("FEDSYN_DEBUG") == "1":
                raise
            if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
                # The operating system's own words and the path it names (a disk full, a folder one may
                # not write in): no cell of any table, so they are shown.
                where = f": {exc.filename}" if exc.filename else ""
                console.print(f"[bold red]error:[/] {exc.strerror}{where}", soft_wrap=True)
                sys.exit(74)  # EX_IOERR
            console.print(f"[bold red]error:[/] fedsyn stopped on an unexpected {type(exc).__name__}. Its details "
                          "are withheld because they may quote private data; rerun with FEDSYN_DEBUG=1 in a private "
                          "terminal to see them.")
            sys.exit(70)
