"""What the coordinator's live view shows, read from public artefacts only.

Sources: the coordinator's hash-chained audit log (public facts by design), the latest
release's reports (published anyway) and, when it can be read, the SuperLink's node table
(which registered hospitals are online). No site data and no private key is ever opened.
Every reader tolerates a file that is missing or half-written, because the run writes them
while the view polls.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsyn.server.audit_events import (
    DROPS,
    JOINS,
    PAIR_TABLES_ACCEPTED,
    RELEASE_ARCHIVED,
    RELEASE_WRITTEN,
    ROUND_FINISHED,
    ROUND_STARTED,
    RUN_CONFIGURED,
    RUN_FAILED,
    RUN_RESUMED,
    SITE_BUDGET,
    SITE_FINISHED,
    SITE_JOINED_LATE,
    SITE_REFUSED,
    TRAINING_STOPPED,
    UPDATE_REJECTED,
)
from fedsyn.server.record import given_name, known_names
from fedsyn.trust.audit import read_entries, verify_log
from fedsyn.trust.signing import MANIFEST, VerificationError, load_public_key, verify_release

# Flower keeps its unsigned 64-bit node ids as signed SQLite integers; the audit log has the unsigned ones.
_UINT64 = 2**64
_INTERIM = re.compile(r"(?:.+\.)?round-\d+")  # OUT.round-NNN; an older run's OUT/round-NNN


@dataclass(frozen=True)
class Sources:
    """Where the view reads from; ``database`` is the SuperLink's SQLite state, if known."""

    audit_log: Path
    release_dir: Path
    public_key: Path | None = None
    database: Path | None = None


def latest_run(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of the newest run: one log holds every run, each opening with ``run_configured``
    and naming its run in every entry. Entries of another run written since (a budget plan,
    ``fedsyn server plan``, which charges nothing) are not this run's."""
    starts = [i for i, entry in enumerate(entries) if entry.get("event") == RUN_CONFIGURED]
    if not starts:
        return entries
    run = entries[starts[-1]].get("run")
    return [entry for entry in entries[starts[-1]:] if run is None or entry.get("run") in (run, None)]


def _is_quarantined(entry: dict[str, Any]) -> bool:
    """The coordinator words every decoded-but-rejected update as 'invalid reply: ...', after
    the part of the round it was for when that is named ('pair tables: invalid reply: ...')."""
    stage = entry.get("stage")
    reason = str(entry.get("reason", ""))
    return (reason.removeprefix(f"{stage}: ") if stage else reason).startswith("invalid reply")


def _rounds_text(rounds: list[Any]) -> str:
    """2, 3, 4, 7 -> '2-4, 7' (rounds of one repeated reason, compact however many)."""
    numbers = sorted({r for r in rounds if isinstance(r, int)})
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    parts = [str(a) if a == b else f"{a}\u2013{b}" for a, b in spans]
    if len(numbers) < len(rounds) and any(not isinstance(r, int) for r in rounds):
        parts.append("?")  # an entry without a round number
    return ", ".join(parts)


def collapse(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Identical reasons as one line each (first-seen order) with the rounds they hit and a count."""
    grouped: dict[str, dict[str, Any]] = {}
    for item in items:
        line = grouped.setdefault(item["reason"], {**item, "rounds": [], "count": 0})
        line["rounds"].append(item.get("round"))
        line["count"] += 1
    for line in grouped.values():
        line.pop("round", None)
        line["rounds_text"] = _rounds_text(line["rounds"])
    return list(grouped.values())


def site_views(entries: list[dict[str, Any]], names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Per site (by node id): accepted rounds, drops with reasons (identical ones collapsed),
    refusals, last claim and last entry time. ``names`` (see :func:`known_names`) name a site
    whose entries in this run do not. Node ids are text: JavaScript's numbers would round
    Flower's 64-bit ids, and the id shown must be the one ``fedsyn server sites remove`` takes."""
    names = names or {}
    sites: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if "node" not in entry:
            continue
        node = str(entry["node"])
        site = sites.setdefault(node, {"node_id": node, "name": "", "rounds_accepted": [], "dropped": [],
                                       "refused": [], "notes": [], "epsilon_claimed": None, "max_epsilon": None,
                                       "last_seen": None})
        site["name"] = given_name(entry) or site["name"]
        site["last_seen"] = entry.get("time")
        event = entry.get("event")
        if event == SITE_BUDGET:  # before round 0: its ledger so far, and the most it will ever spend
            site["epsilon_claimed"], site["max_epsilon"] = entry.get("epsilon_spent"), entry.get("max_epsilon")
        elif event in JOINS:
            if entry.get("round") not in site["rounds_accepted"]:  # a round in flight at a crash, again on resume
                site["rounds_accepted"].append(entry.get("round"))
            site["epsilon_claimed"] = entry.get("epsilon_claimed")
        elif event == PAIR_TABLES_ACCEPTED:  # round 0's second release: charged, its claim went up (helper-116)
            site["epsilon_claimed"] = entry.get("epsilon_claimed")
        elif event == UPDATE_REJECTED:
            reason = str(entry.get("reason", ""))
            site["dropped"].append({"round": entry.get("round"), "reason": reason,
                                    "quarantined": _is_quarantined(entry)})
        elif event == SITE_REFUSED:
            site["refused"].append({"round": entry.get("round"), "reason": str(entry.get("reason", ""))})
        elif event == SITE_FINISHED:
            site["notes"].append(f"its budget fit {entry.get('rounds_planned')} training round(s): asked no more")
        elif event == SITE_JOINED_LATE:
            site["notes"].append("connected after the budget query: not part of this run")
    for node, site in sites.items():
        site["name"] = site["name"] or names.get(node) or f"node-{node}"
        site["dropped_reasons"] = collapse(site["dropped"])
        site["refused_reasons"] = collapse(site["refused"])
    return sorted(sites.values(), key=lambda s: (s["name"], s["node_id"]))


_ROUND_EVENTS = frozenset({ROUND_STARTED, ROUND_FINISHED, *JOINS, *DROPS})


def round_views(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round 0 (marginals) and every training round: when it started and finished, and who made it."""
    rounds: dict[int, dict[str, Any]] = {}

    def of(number: int) -> dict[str, Any]:
        return rounds.setdefault(number, {"round": number, "started": None, "finished": None, "sites_asked": None,
                                          "accepted": 0, "dropped": 0, "quarantined": [], "refused": 0})

    for entry in entries:
        event, number = entry.get("event"), entry.get("round")
        if number is None or event not in _ROUND_EVENTS:  # e.g. a late site names the round it missed
            continue
        current = of(number)
        if event == ROUND_STARTED:
            current.update(started=entry.get("time"), sites_asked=entry.get("sites"))
        elif event == ROUND_FINISHED:
            current.update(finished=entry.get("time"), accepted=entry.get("accepted"), dropped=entry.get("dropped"))
        elif event in JOINS and number == 0:
            current["accepted"] += 1
        elif event in DROPS:
            if number == 0 and not entry.get("stage"):  # a later part of round 0 (its pair tables): joined
                current["dropped"] += 1
            if event == SITE_REFUSED:
                current["refused"] += 1
            elif _is_quarantined(entry):
                current["quarantined"].append({"site": entry.get("site"), "reason": entry.get("reason")})
    return [rounds[number] for number in sorted(rounds)]


def run_summary(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest run's public settings that frame the page: rounds, budget asked, minimum sites."""
    configured = next((e for e in entries if e.get("event") == RUN_CONFIGURED), None)
    if configured is None:
        return None
    settings = configured.get("settings", {})
    stopped = next((e for e in entries if e.get("event") == TRAINING_STOPPED), None)
    # the newest failure, unless the run was resumed since (helper-105 M1: a resumed run showed as stopped)
    failed = next((e for e in reversed(entries) if e.get("event") in (RUN_FAILED, RUN_RESUMED)), None)
    failed = failed if failed is not None and failed.get("event") == RUN_FAILED else None
    return {"started": configured.get("time"), "run": configured.get("run"), "schema": configured.get("schema"),
            "rounds": settings.get("rounds"), "epsilon": settings.get("epsilon"), "delta": settings.get("delta"),
            "min_sites": settings.get("min_sites"), "aggregation": settings.get("aggregation"),
            # Sites' budgets fitted fewer rounds than asked: the release holds the rounds trained.
            "stopped_after": None if stopped is None else stopped.get("round"),
            "finished": any(e.get("event") == RELEASE_WRITTEN and not _interim(e.get("path")) for e in entries),
            # The run stopped on an error (its quorum lost, its release unwritten): why, and whether it resumes.
            "failed": None if failed is None else {"reason": failed.get("reason"),
                                                   "resumable": failed.get("resumable")}}


def _interim(path: object) -> bool:
    """A per-round snapshot (``OUT.round-NNN``, ``--release-every``) rather than the run's release."""
    return _INTERIM.fullmatch(Path(str(path or "")).name) is not None


def _same_place(recorded: object, folder: Path) -> bool:
    """Whether a path the coordinator recorded is ``folder``. The coordinator may have written it
    relative to another directory, so the folder's name and its parent's name decide."""
    path = Path(str(recorded or ""))
    return path == folder or (path.name == folder.name and path.parent.name == folder.parent.name)


class _StatCache:
    """Recompute an expensive check only when the files it reads have changed (size, mtime)."""

    def __init__(self, check: Callable[[], dict[str, Any]]):
        self._check = check
        self._key: tuple[Any, ...] | None = None
        self._value: dict[str, Any] = {}

    def get(self, paths: list[Path]) -> dict[str, Any]:
        key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else (str(p),) for p in paths)
        if key != self._key:
            self._value, self._key = self._check(), key
        return self._value


def audit_status(sources: Sources) -> dict[str, Any]:
    """verify_log over the whole file; with the public key also the signed head.

    The head signature is rewritten just after each append, so a check that races an append
    is retried once before the chain is reported broken.
    """
    log = sources.audit_log
    if not log.is_file():
        return {"ok": None, "entries": 0, "signed_head_checked": False, "message": f"{log} does not exist yet"}
    key = load_public_key(sources.public_key) if sources.public_key else None
    for attempt in range(2):
        try:
            count = verify_log(log, key)
            return {"ok": True, "entries": count, "signed_head_checked": key is not None,
                    "message": "chain intact" + (", head signature valid" if key else " (no public key: head "
                                                 "signature not checked)")}
        except VerificationError as exc:
            error = str(exc)
            if attempt == 0:
                time.sleep(0.2)
    return {"ok": False, "entries": None, "signed_head_checked": key is not None, "message": error}


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def release_candidates(out: Path) -> list[Path]:
    """The run's release folder, then the releases moved aside from it (``OUT.replaced-<UTC
    time>``, see :func:`fedsyn.server.release.archive_earlier_release`), newest first."""
    archived = sorted((p for p in out.parent.glob(out.name + ".replaced-*") if p.is_dir()),
                      key=lambda p: p.name, reverse=True) if out.parent.is_dir() else []
    return [out, *archived]


def _one_release(folder: Path, public_key: Path | None) -> dict[str, Any] | None:
    """One release folder's public reports and signature status; None without a readable privacy report."""
    privacy = _read_json(folder / "privacy_report.json")
    if privacy is None:
        return None
    quality = _read_json(folder / "quality_report.json") or {}
    config = _read_json(folder / "run_config.json") or {}
    signed = (folder / MANIFEST).is_file()
    signature = "not signed"
    if signed and public_key:
        try:
            verify_release(folder, load_public_key(public_key))
            signature = "verified"
        except VerificationError as exc:
            signature = f"does not verify: {exc}"
    elif signed:
        signature = "manifest present (no public key: not verified)"
    return {"path": str(folder), "rows": config.get("rows"), "signed": signed, "signature": signature,
            "mean_total_variation": quality.get("mean_total_variation"),
            "max_epsilon_any_site": privacy.get("max_epsilon_any_site"),
            "sites": [{key: site.get(key) for key in ("site", "epsilon_cumulative", "epsilon_this_run",
                                                       "epsilon_this_run_is_lower_bound",
                                                       "delta", "max_epsilon", "budget_epsilon_asked", "within_budget")}
                      | {"node_id": str(site.get("node_id")),
                         "rounds_accepted": len(site.get("rounds_accepted", [])),
                         "dropped": len(site.get("dropped", []))}
                      for site in privacy.get("sites", [])]}


def release_view(sources: Sources) -> dict[str, Any] | None:
    """The newest good release: the release folder's public reports if they are complete (and,
    with the public key, verify), else the newest release moved aside from it that is.

    A run that failed after publishing a per-round snapshot, or while writing its release, has
    already moved the earlier release aside (``OUT.replaced-...``) and left ``OUT`` without a
    complete one; the view then shows that earlier release and says why, rather than none.
    ``passed_over`` lists each newer folder skipped, with the reason.
    """
    passed_over: list[dict[str, Any]] = []
    fallback: dict[str, Any] | None = None
    for folder in release_candidates(sources.release_dir):
        if not folder.is_dir():
            passed_over.append({"path": str(folder), "why": "does not exist"})
            continue
        view = _one_release(folder, sources.public_key)
        if view is None:
            passed_over.append({"path": str(folder), "why": "no complete release (no readable privacy_report.json)"})
            continue
        if sources.public_key is None or view["signature"] == "verified":
            return {**view, "passed_over": passed_over}
        fallback = fallback or {**view, "passed_over": list[Any](passed_over)}
        passed_over.append({"path": str(folder), "why": view["signature"]})
    return fallback


def release_origin(entries: list[dict[str, Any]], path: str, out: Path) -> str | None:
    """The run that wrote the release now at ``path``: the last run to write ``out`` before
    the release there was moved to ``path`` (or, for ``out`` itself, the last run to write it)."""
    writer = None
    for entry in entries:
        if entry.get("event") == RELEASE_WRITTEN and _same_place(entry.get("path"), out):
            writer = entry.get("run")
        elif entry.get("event") == RELEASE_ARCHIVED and _same_place(entry.get("path"), Path(path)):
            return writer
    return writer if Path(path) == out else None


def registry_view(database: Path | None) -> dict[str, Any]:
    """Registered hospitals and whether they are online, from the SuperLink's ``node`` table.

    Read-only (``mode=ro``) and only public columns. The table is Flower's internal schema
    (checked on Flower 1.41), so any surprise is reported as 'unavailable' instead of guessed at.
    ``online`` also needs ``online_until`` in the future: Flower updates ``status`` lazily.
    """
    if database is None:
        return {"available": False, "message": "no SuperLink database configured"}
    if not database.is_file():
        return {"available": False, "message": f"{database} does not exist"}
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1.0) as connection:
            rows = connection.execute("SELECT node_id, status, registered_at, last_activated_at, online_until "
                                      "FROM node").fetchall()
    except sqlite3.Error as exc:
        return {"available": False, "message": f"cannot read the SuperLink's node table: {exc}"}
    now = time.time()
    nodes = [{"node_id": str(node_id % _UINT64), "status": status, "registered_at": registered,
              "last_activated_at": activated,
              "online": status == "online" and online_until is not None and online_until > now}
             for node_id, status, registered, activated, online_until in rows]
    return {"available": True, "message": f"read from {database}", "nodes": nodes}


class StateReader:
    """Builds the JSON the page polls; the expensive checks are cached on the files' stat."""

    def __init__(self, sources: Sources):
        self.sources = sources
        self._audit = _StatCache(lambda: audit_status(sources))
        self._release = _StatCache(lambda: {"release": release_view(sources)})

    def _release_files(self) -> list[Path]:
        """The release folder's files and the folders moved aside from it (which never change)."""
        out, *archived = release_candidates(self.sources.release_dir)
        return (sorted(out.iterdir()) if out.is_dir() else [out]) + archived

    def state(self) -> dict[str, Any]:
        log = self.sources.audit_log
        every_run = read_entries(log)
        entries = latest_run(every_run)
        audit = self._audit.get([log, log.with_name(log.name + ".sig")])
        release = self._release.get(self._release_files())["release"]
        if release is not None:
            out = self.sources.release_dir
            run = run_summary(entries)
            release = {**release, "run": release_origin(every_run, release["path"], out),
                       "current": release["path"] == str(out)}
            if run is not None and not run["finished"]:
                release["note"] = ("the newest run has written no release (still running, or it failed or was "
                                   "refused): this is the latest release before it")
        return {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "audit_log": str(log), "run": run_summary(entries), "audit": audit,
                "sites": site_views(entries, known_names(every_run)), "rounds": round_views(entries),
                "registry": registry_view(self.sources.database), "release": release}
