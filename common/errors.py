"""The one base of every error fedsyn raises on purpose, and the exit code each means.

Each error's text speaks to the person who can fix it (which file, column, setting) and
never quotes a patient value. The command line prints it and exits with ``exit_code``; any
other exception is a bug and is reported by type only (see :func:`fedsyn.cli.main.main`).
"""

from __future__ import annotations

import difflib
import errno
import os
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails


class FedsynError(Exception):
    """Base of fedsyn's own errors. ``exit_code`` follows sysexits: 65 bad input data,
    66 missing input, 77 refused by privacy policy or budget, 78 bad configuration."""

    exit_code = 1


class InputDataError(FedsynError):
    """A data file cannot be used (missing, unreadable, not matching the schema)."""

    exit_code = 65


class ConfigurationError(FedsynError):
    """A schema, policy or settings file is invalid, or a call was made in the wrong order."""

    exit_code = 78


class PrivacyRefusal(FedsynError):
    """Running this would break the privacy guarantee or budget; nothing was spent."""

    exit_code = 77


PUBLIC_TEXT_CHARS = 400  # the most of a reason a site sends, logs or writes to its trail


def public_text(text: str) -> str:
    """A reason as it may leave a site, or enter its log and audit trail: one line of printable
    characters, at most :data:`PUBLIC_TEXT_CHARS`. Some reasons quote the coordinator's own
    values (a transport dtype, a decoding error, an App bundle's component): a coordinator that
    wrote a megabyte there grew the site's trail and log by as much a request, charging
    nothing, so filling the disk to read the extract's size off the free-space refusal; one
    that wrote a newline forged a line of the site's log (helper-88)."""
    line = printable(text)
    return line if len(line) <= PUBLIC_TEXT_CHARS else line[:PUBLIC_TEXT_CHARS - 3] + "..."


def printable(text: str, keep: str = "") -> str:
    """``text`` with each character that is not printable (a newline, an escape, a right-to-left
    override) shown as '?', but those in ``keep`` (a log's traceback keeps its newlines)."""
    return "".join(character if character.isprintable() or character in keep else "?" for character in text)


NAME_CHARS = 64  # the most of a site's name the coordinator shows
NOT_IN_NAMES = "|<>`\\"  # a Markdown table's cell, an HTML comment or tag, code


def public_name(name: object) -> str:
    """A site's self-given name as the coordinator shows it (log, terminal, the signed release's
    README): printable, without :data:`NOT_IN_NAMES`, at most :data:`NAME_CHARS`. A name
    holding '|' and '<!--' added a forged row to the README's privacy table and hid the real
    one, and control characters moved the coordinator's cursor (helper-88). A site's policy
    takes only names this leaves as they are."""
    return "".join("?" if character in NOT_IN_NAMES else character
                   for character in printable(str(name).strip()))[:NAME_CHARS]


def os_error_said(exc: BaseException) -> str:
    """' (EROFS on /path)' for an OSError on the program's own files: its error number and the
    path the program itself gave, never the message's other text (helper-78's full disk logged
    only 'OSError'); '' for anything else."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return ""
    return f" ({errno.errorcode.get(exc.errno, exc.errno)}" + (f" on {exc.filename})" if exc.filename is not None
                                                                else ")")


def failed_to_write(exc: BaseException) -> bool:
    """Whether ``exc`` is a file the program could not write: an OSError, or torch's
    RuntimeError for a file it could not finish (its writer on a full disk says
    'inline_container', not ENOSPC)."""
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "inline_container" in str(exc))


def where_it_failed(exc: BaseException) -> str:
    """An unexpected error for a local log: its type and the code path (file, line, function,
    source line) that raised it, without its message or any variable, which may quote patient
    values. ``FEDSYN_DEBUG=1`` (a private terminal) adds the message."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    message = f": {exc}" if os.environ.get("FEDSYN_DEBUG") == "1" else " (message withheld: FEDSYN_DEBUG=1 shows it)"
    return f"Traceback (most recent call last):\n{frames}{type(exc).__name__}{message}"


def closest_name(name: str, candidates: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The candidate ``name`` is most likely a misspelling of (letter case ignored), if any is
    at least ``cutoff`` alike: the one home of "did you mean" for columns, settings and files.
    A name that begins exactly one candidate is that one: 'died' is 'died_in_hospital', which
    spelling likeness alone ranked below 'diabetes'."""
    lowered = {candidate.lower(): candidate for candidate in candidates}
    begun = [candidate for candidate in lowered if len(name) >= 4 and candidate.startswith(name.lower())]
    if len(begun) == 1:
        return lowered[begun[0]]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[close[0]] if close else None


def did_you_mean(name: str, candidates: Sequence[str], cutoff: float = 0.6) -> str:
    """The end of an "unknown column" message: the likely intended name, else every one there is.
    ``candidates`` must be public (a schema's columns, never a private file's values)."""
    guess = closest_name(name, candidates, cutoff)
    return f" (did you mean '{guess}'?)" if guess else f"; the columns are {', '.join(candidates)}"


# A key no field reads: said plainly, since a misspelled key left unread is a setting never applied.
EXTRA_KEY = "not a known setting: check its spelling (a key nothing reads is never applied)"


def validation_problems(exc: ValidationError, place: Callable[[tuple[int | str, ...]], str] | None = None,
                        hint: Callable[[ErrorDetails], str] | None = None) -> str:
    """A pydantic validation error as one line for a person: each problem's place (``place``
    of its location, by default the dotted path) and pydantic's message, never the offending
    input, whose repr may quote values read off private rows (a drafted schema's bounds)."""

    def one(error: ErrorDetails) -> str:
        loc = tuple(error["loc"])
        where = place(loc) if place is not None else ".".join(str(part) for part in loc)
        message = EXTRA_KEY if error["type"] == "extra_forbidden" else str(error["msg"]).removeprefix("Value error, ")
        message += hint(error) if hint is not None else ""
        return f"{where}: {message}" if where else message

    return "; ".join(one(error) for error in exc.errors())
