"""What a hospital's IT sees of its site with ``fedsyn client status``: the budget, the last
charge and refusal, and whether its SuperNode runs. Read from the site's own files (policy,
ledger, audit trail, ``supernode.json``); no row of the extract is read.

The checks a request runs first (ledger against trail and stored replies) run here too, so a
site that would refuse to spend says so before the coordinator asks (helper-104 M6: the
operator had no view of the site but its log)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fedsyn.client.audit_events import CHARGED, REQUEST_REFUSED, SENT
from fedsyn.client.ops.launch import site_runtime
from fedsyn.client.ops.supervise import RECORD, NodeRecord, process_alive
from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site, last_refusal
from fedsyn.data.schema import SchemaError
from fedsyn.privacy.accounting import LedgerError, PrivacyLedger
from fedsyn.trust.audit import read_entries


@dataclass
class SiteView:
    """One site as its operator sees it: every figure local, none computed from the rows."""

    site_id: str
    epsilon_spent: float | None
    max_epsilon: float
    per_request: float | None
    delta: float
    charges: int | None
    last_charge: dict[str, Any] | None = None
    last_sent: dict[str, Any] | None = None
    last_refusal: dict[str, Any] | None = None
    problem: str | None = None  # why the site refuses to spend, if it does
    note: str | None = None  # what the operator may have meant that the site does not do
    supernode: str = "not started by `fedsyn client start` here"


SPENT_TOLERANCE = 1e-9  # a ledger at its max_epsilon up to rounding has nothing left to spend
SUMMARY_TOLERANCE = 1e-6  # relative: a ledger summary off by more was edited, or composed by another accountant


def site_view(policy: SitePolicy) -> SiteView:
    """The site's state from its files; a ledger the site would refuse is named, not raised."""
    problem, ledger, site = None, None, None
    try:
        site = Site(policy)
        ledger = site.ledger  # the same checks every request runs before anything is charged
    except (LedgerError, SchemaError) as exc:
        problem = str(exc)
        try:
            ledger = PrivacyLedger.load(policy.ledger)  # what it holds, refused or not
        except LedgerError:
            pass
    spent = ledger.epsilon() if ledger is not None else None  # composed over every event: once
    if problem is None and spent is not None and spent >= policy.max_epsilon - SPENT_TOLERANCE:
        # Spent all, or past a max_epsilon lowered since (helper-108 L3): it showed '0.4828 of 0.4', exit 0
        how = "more than" if spent > policy.max_epsilon + SPENT_TOLERANCE else "all of"
        problem = (f"it has spent epsilon {spent:.4f}, {how} its max_epsilon {policy.max_epsilon:g}: it "
                   "refuses every request that would spend until the policy allows more (it still answers budget "
                   "queries and replays answers it paid for)")
    if problem is None and site is not None:
        try:
            free = site.free_bytes()
        except OSError:
            free = None
        if free is not None and free < policy.disk_reserve_mib * 2**20:  # helper-120 M3: status said nothing
            problem = (f"{free / 2**20:.0f} MiB free on its state folder's disk (its stored answers counted), "
                       f"below the policy's disk_reserve_mib {policy.disk_reserve_mib}: it refuses every request "
                       "that would spend until space is freed")
    entries = read_entries(policy.audit_trail)
    view = SiteView(policy.site_id, spent, policy.max_epsilon,
                    policy.max_epsilon_per_request, policy.delta, len(ledger.events) if ledger is not None else None,
                    problem=problem)
    if ledger is not None and ledger.stated_epsilon is not None and spent is not None \
            and abs(ledger.stated_epsilon - spent) > SUMMARY_TOLERANCE * max(spent, 1.0):
        # helper-116 L3: an operator set the field to 0 to give the site its budget back, and status was silent
        view.note = (f"the ledger's `epsilon` field says {ledger.stated_epsilon:g}, but its {len(ledger.events)} "
                     f"charge(s) compose to {spent:.4f} (edited by hand, or written by another version's "
                     "accountant): the field is a summary rewritten at every charge and never read, so it changes "
                     "nothing. Spent privacy is never given back; to allow more, raise max_epsilon in the site "
                     "policy")
    view.last_charge = next((e for e in reversed(entries) if e.get("event") == CHARGED), None)
    view.last_sent = next((e for e in reversed(entries) if e.get("event") in SENT), None)
    # The trail keeps only the first refusal of a kind between charges; the newest is kept beside the ledger
    # (unless that note could not be written: then the trail's may be the newer).
    noted = [note for note in (last_refusal(policy.ledger),
                               next((e for e in reversed(entries) if e.get("event") == REQUEST_REFUSED), None))
             if note is not None]
    view.last_refusal = max(noted, key=_when, default=None)
    view.supernode = _supernode(policy)
    return view


def _supernode(policy: SitePolicy) -> str:
    """Whether a SuperNode this site's `client start` runs is alive, its node id and last sign of life."""
    record = NodeRecord(site_runtime(policy)).data  # {} where unreadable
    if not isinstance(record, dict) or not record:
        return f"not started by `fedsyn client start` here (no readable {RECORD})"
    group = record.get("group")
    running = isinstance(group, dict) and process_alive(group.get("supervisor"), group.get("supervisor_started"))
    node = f"node {record['node_id']}" if record.get("node_id") else "no node id yet"
    last = record.get("last_alive")
    seen = f", last connected {time.time() - last:.0f} s ago" if isinstance(last, (int, float)) else ""
    return f"{'running' if running else 'stopped'} ({node}{seen})"


def _when(entry: dict[str, Any]) -> datetime:
    """An entry's time (the trail's and the refusal note's ISO times, with their offsets); the
    earliest time where it has none or it cannot be read."""
    try:
        return datetime.fromisoformat(str(entry.get("time")))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
