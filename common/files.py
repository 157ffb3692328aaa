"""Files that must never be left half-written (the privacy ledger, a site's stored replies,
the coordinator's run state), and folders no other user may read (real rows)."""

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
    that a power cut cannot bring back the old file (a site's ledger from before a charge). The
    file is its owner's only (0600, as :func:`tempfile.mkstemp` makes it), whatever the umask: what
    is written so is private (a ledger, a site's stored replies, a schema draft)."""
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


def private_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) readable by its owner only: it holds real rows or
    what was computed from them (a simulated site's extract, a validation report's held-out
    rows), which a newcomer found readable by every user of the machine (0644 in a 0755
    folder). Files written inside keep their mode; the folder's 0700 keeps others out."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


RUN_FOLDER_GITIGNORE = ("# Written by fedsyn: this folder holds real rows, or what was computed from them (a\n"
                        "# simulation's sites/ and local-report/, a validation report, a fitted model), and a\n"
                        "# simulation's private signing key (keys/). Keep it out of git.\n*\n")


def make_run_folder(out: Path) -> bool:
    """Create ``out`` (and its parents) for a simulation, a fit or a report; return whether
    this call created it.

    Such a folder holds real rows or what was computed from them, so a new or empty one gets a
    ``.gitignore`` of ``*``: any git checkout it lies in ignores it. A folder that already
    holds something is left as it is (it may be a folder of the user's own)."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if created or not any(out.iterdir()):
        (out / ".gitignore").write_text(RUN_FOLDER_GITIGNORE)
    return created
