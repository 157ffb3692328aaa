"""The one base of every error fedsyn raises on purpose, and the exit code each means.

Each error's text speaks to the person who can fix it (which file, column, setting) and
never quotes a patient value. The command line prints it and exits with ``exit_code``; any
other exception is a bug and is reported by type only (see :func:`fedsyn.cli.main.main`).
"""

from __future__ import annotations

import os
import traceback


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


def where_it_failed(exc: BaseException) -> str:
    """An unexpected error for a local log: its type and the code path (file, line, function,
    source line) that raised it, without its message or any variable, which may quote patient
    values. ``FEDSYN_DEBUG=1`` (a private terminal) adds the message."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    message = f": {exc}" if os.environ.get("FEDSYN_DEBUG") == "1" else " (message withheld: FEDSYN_DEBUG=1 shows it)"
    return f"Traceback (most recent call last):\n{frames}{type(exc).__name__}{message}"
