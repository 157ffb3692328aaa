"""What a site sent for each (run, round), kept so that asking again costs nothing.

A coordinator that restarts resumes its run at the round it had not finished, and asks the
sites for that round again. A site that already ran it, charged for it and sent its answer
returns the stored answer: a DP output sent twice is post-processing, so no budget is spent
twice. The answer is replayed only for the identical request (same run, round and
request digest: settings and global model); anything else is a new request, checked and
charged as usual. Stored next to the site's ledger; holds DP outputs and public values only.

Each answer also records where its charge sits in the ledger (the ledger's nonce and the
charge's position). So the store proves a lower bound on how many charges the ledger holds,
which a ledger and trail restored together from an older backup cannot hide
(:meth:`ReplyStore.charges_proven`). Every charged answer is stored, a request naming no run
included (under :data:`UNNAMED_RUN`, never replayed): the run id is the coordinator's word,
and one that named no run would otherwise leave its charges unproven.

Only a run's newest training rounds can be asked again (a resumed coordinator asks the round it
had not finished), so an older round's answer keeps its record (request digest, charge, event)
and drops its model update: a default 5-site simulation kept 140 MB of updates, a long-lived
site one per round forever. Asked again after all, such a round is a new request, charged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedsyn.files import write_atomically
from fedsyn.privacy.accounting import PrivacyEvent

log = logging.getLogger("fedsyn.client")

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
# Where the answers to requests naming no run are stored: a run id is ASCII letters, digits, '-'
# and '_' (fedsyn.federation.protocol), so no run a coordinator names has '@' in its name, and
# the name is used as it is (sanitised, it was '_unnamed-run', which a run could be named: the
# ninth review, F4).
UNNAMED_RUN = "@unnamed-run"
# Round 0 has two releases (fedsyn.privacy.pairs): the second is stored under this stage of the round.
PAIR_TABLES_STAGE = "pair-tables"
# Training rounds of a run whose answers are kept whole: the one a resumed coordinator asks
# again, and the one before it (its state may have been saved a round late).
KEPT_ROUNDS = 2
# What reading a stored reply raises when the file is truncated, foreign or not an answer.
UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def request_digest(config: Mapping[str, object], arrays: Mapping[str, np.ndarray] | None = None) -> str:
    """SHA-256 over a request's settings and (for training) the global model it carries."""
    digest = hashlib.sha256(json.dumps(dict(config), sort_keys=True, default=str).encode())
    for name in sorted(arrays or {}):
        value = np.ascontiguousarray((arrays or {})[name])
        digest.update(name.encode() + str(value.dtype).encode() + str(value.shape).encode() + value.tobytes())
    return digest.hexdigest()


class ReplyStore:
    """One file per (run, round, stage) under ``directory``, written atomically after the answer
    is made; ``stage`` names a round's second release (round 0's pair tables), "" its first."""

    def __init__(self, directory: Path):
        self.directory = directory

    @staticmethod
    def _prefix(run_id: str) -> str:
        """The start of every stored file name of ``run_id``."""
        return f"{_SAFE.sub('_', run_id) if run_id else UNNAMED_RUN}-round-"

    def _path(self, run_id: str, round_: int, stage: str = "") -> Path:
        suffix = f"-{stage}" if stage else ""
        return self.directory / f"{self._prefix(run_id)}{round_:05d}{suffix}.npz"

    def get(self, run_id: str, round_: int, digest: str, nonce: str | None, stage: str = ""
            ) -> tuple[dict[str, np.ndarray], dict[str, float], PrivacyEvent] | None:
        """The stored answer to exactly this request, charged to the ledger with ``nonce``, or
        None. An answer charged to an earlier ledger (reset for another cohort) is that cohort's,
        not this one's (helper-101 L3). A file that cannot be read is no answer: the request is
        charged again, which over-counts and never under-counts (helper-101 L2: it failed every
        request, budget queries included)."""
        path = self._path(run_id, round_, stage)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                meta = json.loads(str(stored["meta"]))
                if (meta["digest"] != digest or meta.get("slimmed")
                        or (meta.get("ledger") or {}).get("nonce") != nonce):
                    return None
                arrays = {name: stored[f"a{index}"] for index, name in enumerate(meta["names"])}
            return arrays, meta["metrics"], PrivacyEvent(**meta["event"])
        except UNREADABLE as exc:
            _unreadable(path, exc)
            return None

    def put(self, run_id: str, round_: int, digest: str, arrays: Mapping[str, np.ndarray],
            metrics: Mapping[str, float], event: PrivacyEvent, charge: tuple[str | None, int], stage: str = "") -> None:
        """Store an answer and its ``charge``: the ledger's nonce and the charge's position in it."""
        names = list(arrays)  # column names may be anything: stored by position, named in the meta
        nonce, position = charge
        meta = json.dumps({"digest": digest, "names": names, "metrics": dict(metrics), "event": asdict(event),
                           "ledger": {"nonce": nonce, "position": position}})
        stored = {f"a{index}": arrays[name] for index, name in enumerate(names)}
        write_atomically(self._path(run_id, round_, stage),
                         lambda out: np.savez(out, meta=np.array(meta), **stored))  # type: ignore[arg-type]
        if not stage:
            self._slim_before(run_id, round_ - KEPT_ROUNDS + 1)

    def _slim_before(self, run_id: str, round_: int) -> None:
        """Drop the model updates of ``run_id``'s training rounds before ``round_`` (round 0's
        tables are kept whole: a coordinator stopped before round 1 asks for them again).
        Best effort: the answer was stored after its charge, and a file that cannot be slimmed
        (moved away, foreign, unreadable) is left as it is rather than failing that answer."""
        own = re.compile(re.escape(self._prefix(run_id)) + r"(\d+)\.npz")
        for path in self.directory.glob("*-round-*.npz"):
            match = own.fullmatch(path.name)
            if match is None or not 0 < int(match.group(1)) < round_:
                continue
            try:
                with np.load(path, allow_pickle=False) as stored:
                    meta = json.loads(str(stored["meta"]))
                if meta.get("slimmed"):
                    continue
                written = path.stat()
                slim = json.dumps({**meta, "names": [], "slimmed": True})
                write_atomically(path, lambda out, text=slim: np.savez(out, meta=np.array(text)))  # type: ignore[misc]
                # Its time stays that of its charge: charges_proven reads the newest files.
                os.utime(path, ns=(written.st_atime_ns, written.st_mtime_ns))
            except UNREADABLE:
                log.warning("a stored reply could not be slimmed; it is kept whole",
                            extra={"fedsyn": {"event": "reply_not_slimmed", "file": path.name}})

    def stored_bytes(self) -> int:
        """The bytes the stored answers take on disk: their sizes are what the coordinator's
        requests chose (the site's disk check counts them as free, see ``Site._check_room``)."""
        if not self.directory.is_dir():
            return 0
        return sum(path.stat().st_size for path in self.directory.glob("*-round-*.npz") if path.is_file())

    def charges_proven(self, nonce: str | None, newest: int = 8) -> int:
        """How many charges the ledger with ``nonce`` must hold at least: one more than the
        highest position of a stored answer charged to it (0 when none is stored). Answers are
        stored right after their charge, so the ``newest`` files (by modification time) hold the
        highest positions; a site asks on every message, and a long-lived store holds hundreds."""
        proven = 0
        stored_files = sorted(self.directory.glob("*-round-*.npz"), key=_modified, reverse=True) \
            if self.directory.is_dir() else []
        for path in stored_files[:newest]:
            try:
                with np.load(path, allow_pickle=False) as stored:
                    ledger = json.loads(str(stored["meta"])).get("ledger") or {}
            except FileNotFoundError:  # moved away meanwhile: it proves nothing here
                continue
            except UNREADABLE as exc:  # proves nothing either; the ledger and trail checks still hold
                _unreadable(path, exc)
                continue
            if nonce is not None and ledger.get("nonce") == nonce:
                proven = max(proven, int(ledger.get("position", -1)) + 1)
        return proven


def _unreadable(path: Path, exc: BaseException) -> None:
    """Say which stored reply could not be read, and why, in the site's own log."""
    log.warning("stored reply %s cannot be read (%s): it is ignored, and a request it answered is charged "
                "again. Move it out of %s if it stays unreadable", path.name, type(exc).__name__, path.parent,
                extra={"fedsyn": {"event": "reply_unreadable", "file": path.name}})


def _modified(path: Path) -> float:
    """When ``path`` was last written (0 for a file gone since it was listed)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
