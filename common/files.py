"""Files that must never be left half-written: the privacy ledger, a site's stored replies,
the coordinator's run state."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write`` into a temporary file beside it, flushed to disk, then
    renamed over it: a crash leaves the old file or the new one, never half of either, and a
    failed write leaves no temporary file behind. The folder is flushed after the rename too, so
    that a power cut cannot bring back the old file (a site's ledger from before a charge)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _flush_folder(path.parent)


def _flush_folder(folder: Path) -> None:
    """fsync a folder's entry list (where the platform lets a folder be opened: not Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on a folder: the rename is then as durable as they make it
        pass
    finally:
        os.close(descriptor)
