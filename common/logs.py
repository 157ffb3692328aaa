"""fedsyn's one log handler, and the relay that brings its child processes' lines into it.

Every long-running command logs through one handler on the root logger: fedsyn's records and
Flower's (whose own console handler is removed, so no line appears twice), each with a
zone-aware time and never a colour code, as readable text or as JSON lines
(``--log-format json``).

The processes Flower starts for fedsyn (the coordinator's ServerApp, a hospital's ClientApp)
cannot know the operator's choice, so they always write JSON lines (:func:`configure_child`);
the command the operator runs (``fedsyn server run``, ``fedsyn client start``) reads its
children's output and hands every line to :func:`relay`, which turns it back into a record of
the process that wrote it, with its time and fields, and logs it here in the chosen format.
Lines from Flower's own programs (text, coloured) are read as Flower records.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

from fedsyn.errors import FedsynError, printable

LOG_FORMATS = ("text", "json")
FLOWER = "flwr"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Flower's console lines (``INFO :      message``, with a time under FLWR_LOG_LEVEL=DEBUG) and uvicorn's.
LEVELLED = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b[^:]*?:\s*(.*)$")
# fedsyn's own plain lines: the supervisor's advice (``fedsyn: ...``) and the CLI's refusals (``error: ...``).
SPEAKER = {"fedsyn: ": logging.WARNING, "error: ": logging.ERROR, "warning: ": logging.WARNING}
# Flower's lines that say nothing to an operator: fedsyn turns federated evaluation off on purpose.
FLOWER_NOISE = ("fraction_evaluate is set to 0.0",)
# The fields every JSON line carries after its time, level, logger and message: null where the line has
# none (a line before any run, one of a command that serves no site). `--log-format`'s help names these.
FIELDS = ("event", "run", "round", "site")
_ABOUT: ContextVar[dict[str, object] | None] = ContextVar("fedsyn_log_about", default=None)
RUN_STOPPED = "run_stopped"  # the event a fedsyn process logs when one of its own errors stops a run
PLAN_FINISHED = "plan_finished"  # the event of a budget plan's answer, with the exit code `server plan` ends with


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields = getattr(record, "fedsyn", {})
    return fields if isinstance(fields, dict) else {}


def _explained(record: logging.LogRecord) -> bool:
    """A fedsyn error says what happened and what to do in its own line; its traceback (which
    Flower logs when a ServerApp raises it) only repeats that, in code paths."""
    return record.exc_info is not None and isinstance(record.exc_info[1], FedsynError)


@contextmanager
def about() -> Iterator[None]:
    """A scope whose lines carry what :func:`known` says of it (the run, the site) in the
    :data:`FIELDS` they leave unset: most lines (Flower's, fedsyn's warnings) name no run or
    site, and only a few had said which they belonged to (operator finding L5)."""
    token = _ABOUT.set(dict(_ABOUT.get() or {}))  # within another scope: what that one knows, to begin with
    try:
        yield
    finally:
        _ABOUT.reset(token)


def known(**fields: object) -> None:
    """Say, within :func:`about`, what the lines from here on are about (e.g. ``run=``, once
    read); nothing outside one. A thread sees it when started in a copy of this context, and
    what the thread says is its own: each scope's fields are a new dict, never one shared
    between contexts and changed in place."""
    scope = _ABOUT.get()
    if scope is not None:
        _ABOUT.set({**scope, **fields})


class JsonLines(logging.Formatter):
    """One JSON object per line: time with zone, level, logger, message, every one of
    :data:`FIELDS` (the record's own, else what its scope is :func:`known` to be about, else
    null), then any other structured field fedsyn attaches. No colour codes, ever."""

    def format(self, record: logging.LogRecord) -> str:
        message = ANSI.sub("", record.getMessage())
        if record.exc_info and not _explained(record):
            message += "\n" + self.formatException(record.exc_info)
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": message}
        fields, scope = _fields(record), _ABOUT.get() or {}
        entry.update({name: fields[name] if fields.get(name) is not None else scope.get(name) for name in FIELDS})
        entry.update({name: value for name, value in fields.items() if name not in FIELDS})
        return json.dumps(entry, default=str)


class TextLines(logging.Formatter):
    """``2026-02-12T16:03:44.123+01:00 INFO    fedsyn.server: message``: the local time with its
    offset, so lines from machines in other zones line up; no colour codes."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")
        # Other control characters as '?': a cursor move, an erase or a title set from a site's
        # self-chosen name reached the coordinator's terminal as they were (helper-88).
        message = printable(ANSI.sub("", record.getMessage()), keep="\n\t")
        if record.exc_info and not _explained(record):
            message += "\n" + self.formatException(record.exc_info)
        return f"{when} {record.levelname:<7} {record.name}: {message}"


def _worth_showing(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if any(noise in message for noise in FLOWER_NOISE):
        return False
    return not (record.name == FLOWER and _explained(record))  # fedsyn logged that error in its own words


def configure(log_format: str, level: int = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Make one handler on ``stream`` (stderr) the only one: the root logger's, with Flower's
    logger passing its records to it instead of printing them itself (Opacus, on import, adds
    a root handler of its own; Flower keeps a coloured console handler: each doubled every line)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else TextLines())
    handler.addFilter(_worth_showing)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)  # other libraries: problems only
    logging.getLogger("fedsyn").setLevel(level)
    flower = _flower_logger()
    for own in list(flower.handlers):
        flower.removeHandler(own)
    if isinstance(flower, _RelayedLogger):
        flower.choose_level(level)
    else:
        flower.setLevel(level)
    flower.propagate = True
    return handler


class _RelayedLogger(logging.Logger):
    """Flower's logger when fedsyn made it first. Flower, the moment it is imported (which
    commands do after their arguments are checked), adds a coloured console handler and sets
    its logger to DEBUG: ``fedsyn simulate`` printed every Flower line twice, once in colour,
    and with or without ``--verbose``. Handlers that write to the console are refused (Flower's
    others, its log upload to the SuperLink, are kept), and the level fedsyn chose stays."""

    _chosen = False

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 - logging's own name
        if isinstance(hdlr, logging.StreamHandler) and hdlr.stream in (sys.stdout, sys.stderr):
            return
        super().addHandler(hdlr)

    def setLevel(self, level: int | str) -> None:  # noqa: N802 - logging's own name
        if not self._chosen:
            super().setLevel(level)

    def choose_level(self, level: int) -> None:
        """fedsyn's level for Flower's lines, which Flower's own setLevel no longer changes."""
        self._chosen = False
        self.setLevel(level)
        self._chosen = True


def _flower_logger() -> logging.Logger:
    """Flower's logger, made a :class:`_RelayedLogger` if Flower has not been imported yet."""
    if FLOWER not in logging.Logger.manager.loggerDict or isinstance(
            logging.Logger.manager.loggerDict[FLOWER], logging.PlaceHolder):
        default = logging.getLoggerClass()
        logging.setLoggerClass(_RelayedLogger)
        try:
            return logging.getLogger(FLOWER)
        finally:
            logging.setLoggerClass(default)
    return logging.getLogger(FLOWER)


def configure_child() -> None:
    """In a process Flower starts for fedsyn: JSON lines on stderr at INFO, for the fedsyn command
    that started the run to relay (a ClientApp's INFO records, "privacy charged" among them,
    were otherwise dropped: nothing had configured logging there)."""
    import flwr.supercore.logger  # noqa: F401 - Flower adds its console handler on import: remove it after

    configure("json", logging.INFO)


def _record(name: str, level: int, message: str, created: float | None = None,
            fields: dict[str, object] | None = None) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": name, "msg": message, "levelno": level,
                                    "levelname": logging.getLevelName(level), "fedsyn": fields or {}})
    if created is not None:  # the child's own time, not the time its line was read
        record.created, record.msecs = created, (created % 1) * 1000
    return record


def _from_json(text: str) -> logging.LogRecord | None:
    """A record a fedsyn child wrote with :class:`JsonLines`, with its own time and fields."""
    try:
        entry = json.loads(text)
        created = datetime.fromisoformat(entry.pop("time")).timestamp()
        level = logging.getLevelNamesMapping().get(str(entry.pop("level")).upper(), logging.INFO)
        return _record(str(entry.pop("logger")), level, str(entry.pop("message")), created, entry)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def parse(line: str, source: str) -> logging.LogRecord | None:
    """The record a child's output ``line`` stands for: a fedsyn child's JSON line, a line of
    Flower's (or uvicorn's) console, a fedsyn message (``fedsyn:``, ``error:``), else a plain line
    of ``source``. None for an empty line or message (Flower logs blank separators; a ServerApp
    that ends well logs an empty exit message)."""
    text = ANSI.sub("", line).rstrip()
    if not text.strip():
        return None
    record = _from_json(text) if text.startswith("{") else None
    if record is not None:  # Flower's blank separators come as JSON lines too, from a fedsyn child
        return record if record.getMessage().strip() else None
    levelled = LEVELLED.match(text)
    if levelled:
        message = levelled.group(2)
        return _record(FLOWER, logging.getLevelNamesMapping()[levelled.group(1)], message) if message else None
    for prefix, level in SPEAKER.items():
        if text.startswith(prefix):
            return _record("fedsyn" if source == FLOWER else source, level, text.removeprefix(prefix))
    return _record(source, logging.INFO, text)


def relay(line: str, source: str = FLOWER) -> logging.LogRecord | None:
    """Log a child's output ``line`` here (its level permitting); return the record it became."""
    record = parse(line, source)
    if record is None:
        return None
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
    return record


class RelayStream:
    """A text stream whose every line is :func:`relay`-ed: handed to code that writes a child's
    output, or its own messages, to a stream (the SuperNode supervisor, a rich console)."""

    def __init__(self, source: str = FLOWER):
        self.source = source
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            relay(line, self.source)
        return len(text)

    def flush(self) -> None:
        """Lines are relayed as they end; a partial line waits for its end."""

    def isatty(self) -> bool:
        return False
