"""Tamper-evident audit trail: JSON lines chained by SHA-256, head signed with Ed25519.

Each entry carries the hash of the previous one, so changing, removing or reordering any
entry breaks every later link; the signature over the newest entry's hash (``LOG.sig``)
stops someone from rewriting the whole tail. The coordinator signs its trail; a hospital
keeps its own chained trail of what it sent and spent.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedsyn.trust.signing import VerificationError, check_signature, sign

GENESIS = "0" * 64


def _digest(entry: dict[str, object]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AuditLog:
    """Append-only log at ``path``; with ``key`` the head is re-signed after every append.

    Appends hold an exclusive lock and re-read the newest entry under it, so two processes
    writing one log (two runs at once) extend one chain instead of forking it. With
    ``run_id`` every entry names the run that wrote it.
    """

    def __init__(self, path: str | Path, key: Ed25519PrivateKey | None = None, run_id: str | None = None):
        self.path = Path(path)
        self.key = key
        self.run_id = run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def signature_path(self) -> Path:
        return self.path.with_name(self.path.name + ".sig")

    def _lines(self) -> list[bytes]:
        """Every entry on disk as written, oldest first (parsed only where needed)."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as log:
            return log.read().splitlines()

    def entries(self) -> list[dict[str, object]]:
        """Every entry, oldest first, as written (check the chain with :func:`verify_log`)."""
        return [json.loads(line) for line in self._lines() if line.strip()]

    def append(self, event: str, /, **fields: object) -> dict[str, object]:
        """Append ``event`` with ``fields``; return the entry written."""
        entry = self._append(event, fields, None)
        assert entry is not None  # only a repeat is skipped, and only when asked to
        return entry

    def append_unless_repeated(self, event: str, /, *, since: str, same: Collection[str] | None = None,
                               **fields: object) -> dict[str, object] | None:
        """As :meth:`append`, but nothing is written (None) when this event with these fields
        (only those named in ``same``, if given) is already logged after the newest ``since``
        entry. Answers anyone may ask again at no cost (a budget report, a stored reply sent
        again, a refusal) then add one line per distinct answer between two ``since`` entries
        (charges), not one per request: repeating them cannot grow the log without limit. A
        field whose value the asker chooses freely (a refusal's reason) belongs outside ``same``."""
        return self._append(event, fields, (since, fields if same is None else {name: fields[name] for name in same}))

    def _append(self, event: str, fields: dict[str, object],
                unless: tuple[str, dict[str, object]] | None) -> dict[str, object] | None:
        """Append ``event`` with ``fields``, unless (``unless``: a ``since`` event and the fields
        that make a repeat) the same is logged after the newest ``since`` entry."""
        with open(self.path, "a") as out:  # the log is only ever appended to: it can be its own lock
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)
            try:
                lines = self._lines()
                if unless is not None and _logged_since(lines, unless[0], event, unless[1]):
                    return None
                newest = json.loads(lines[-1]) if lines else None
                head, seq = (GENESIS, 0) if newest is None else (newest["hash"], newest["seq"] + 1)
                run = {"run": self.run_id} if self.run_id is not None else {}
                entry = {"seq": seq, "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                         "event": event, **run, **fields, "prev": head}
                digest = _digest(entry)
                entry["hash"] = digest
                out.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
                out.flush()
                os.fsync(out.fileno())
                if self.key is not None:
                    self.signature_path.write_text(sign(self.key, digest.encode()) + "\n")
            finally:
                fcntl.flock(out.fileno(), fcntl.LOCK_UN)
        return entry


def _logged_since(lines: list[bytes], since: str, event: str, fields: dict[str, object]) -> bool:
    """Whether ``event`` with ``fields`` is among the entries after the newest ``since`` entry
    (parsed newest first, only back to that entry)."""
    wanted = json.loads(json.dumps(fields, sort_keys=True, default=str))  # as the log stores them
    for entry in map(json.loads, reversed(lines)):
        if entry["event"] == since:
            return False
        if entry["event"] == event and all(entry.get(k) == v for k, v in wanted.items()):
            return True
    return False


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Parsed audit entries, for a reader beside the writer (the dashboard, `client status`): a
    line being written right now (not yet valid JSON) is skipped."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def verify_log(path: str | Path, key: Ed25519PublicKey | None = None) -> int:
    """Check every link (and the signed head with ``key``); return the number of entries.

    Raises :class:`VerificationError` naming the first entry (line) that does not check out.
    """
    path = Path(path)
    previous = GENESIS
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise VerificationError(f"{path}:{number}: entry is not valid JSON") from None
        if entry.get("prev") != previous:
            raise VerificationError(f"{path}:{number}: entry does not follow the previous one (chain broken)")
        if entry.get("hash") != _digest(entry):
            raise VerificationError(f"{path}:{number}: entry content does not match its hash (altered)")
        previous = entry["hash"]
    if key is not None:
        signature = path.with_name(path.name + ".sig")
        if not signature.is_file():
            raise VerificationError(f"{signature} is missing: the log head is not signed")
        check_signature(key, previous.encode(), signature.read_text().strip(), f"{path} head (entry {len(lines)})")
    return len(lines)
