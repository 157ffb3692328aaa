"""Screening what sites reply: each reply is checked before anything in it is used, and a reply
that fails is dropped for that round with its reason, never aborting the run.

The privacy argument of each check:

- *Paired through the request it answers*, not its sender: when a node has gone away the
  SuperLink answers in its place, and an unknown node's reply is ignored. A request that may
  have been charged and got no usable answer is recorded as unconfirmed, so the release states
  an upper bound for that site's ledger instead of an understated claim. So is a reply that
  fails screening: a site sends content only after charging, and its claim is dropped with it.
- *The privacy event is the mechanism that was asked for* (same mechanism, sample rate and
  steps; no less noise; a delta that does not change within the run): the coordinator
  recomputes each site's epsilon from these events, so an event it did not ask for would make
  the published ledger wrong.
- *Shapes, dtypes and finiteness* of every array, each round-0 pair table and its group bounds
  (:func:`fedsyn.privacy.pairs.check_pair_array`, :func:`fedsyn.privacy.pairs.require_group_bounds`):
  a malformed or non-finite table would reach every site's training as the shared encoding. The
  counts of both round-0 replies (outcome tables, pair tables) lie within ``MAX_SITE_COUNT``
  too: every site refuses summed tables beyond :data:`fedsyn.privacy.marginals.MAX_COUNT`, and
  pooled pair tables of 1e308s crashed the coordinator, so one site's must not stop them all.
- *The reported steps equal the requested local steps*: updates are averaged unweighted through
  that metric, so no site's row count is used.
- *An update's norm* within ``max_update_norm`` when set: a hostile site cannot move the
  global model further than the bound in one round.
- *A quorum* of valid replies per round (``min_sites``): fewer, and the run stops with each
  dropped site's reason.

A policy refusal (a final error code) is final for the run: the site is asked nothing more.
What is recorded about a reply (its round, the site's name and reason, its epsilon claim) is
declared public (:data:`fedsyn.server.release.DECLARED_PUBLIC`); exception text of the site is
never received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
from flwr.app import Message, RecordDict

from fedsyn.data.schema import Schema
from fedsyn.errors import public_text
from fedsyn.federation import protocol
from fedsyn.privacy.accounting import PrivacyEvent
from fedsyn.privacy.budget import SiteBudget
from fedsyn.privacy.marginals import MAX_SITE_COUNT, Marginals, plausible_counts
from fedsyn.privacy.pairs import check_pair_array, require_group_bounds
from fedsyn.server.audit_events import (
    PAIR_TABLES_ACCEPTED,
    SITE_JOINED,
    SITE_REFUSED,
    UPDATE_ACCEPTED,
    UPDATE_REJECTED,
)
from fedsyn.server.record import QuorumError, SiteStatus
from fedsyn.server.settings import FederationSettings

# Round 0 is two releases (fedsyn.privacy.pairs); a site that fails only the second has joined with
# the first, so what is dropped there says so (and the dashboard does not count the site dropped).
PAIR_TABLES_DROP_STAGE = "pair tables"
CLAIM_TOLERANCE = 1e-6  # epsilon a ledger may read below an earlier claim of it (rounding in the record)

log = logging.getLogger("fedsyn.server")

Shapes = dict[str, tuple[tuple[int, ...], np.dtype[Any]]]


class Recorder(Protocol):
    """The coordinator's structured log line and audit entry (:meth:`Coordinator.record`)."""

    def __call__(self, event: str, message: str | None = None, /, **fields: object) -> None: ...


@dataclass(frozen=True)
class ReplyScreen:
    """The checks every reply passes, for one run's schema and settings; what is decided about
    a site (accepted rounds, events, drops, unconfirmed charges) is written to its
    :class:`SiteStatus`, and each decision to ``record``."""

    schema: Schema
    settings: FederationSettings
    record: Recorder

    def pair(self, sites: dict[int, SiteStatus], asked: list[Message], replies: Iterable[Message], round_: int,
             charged: bool = True) -> list[tuple[SiteStatus, Message]]:
        """Pair every reply with the site it answers for. A request that may be ``charged`` and got
        no reply is an unconfirmed charge (see :attr:`SiteStatus.unconfirmed`).

        A reply is matched through the message it answers, not its sender: when a node has
        gone away, the SuperLink itself answers with an error in the node's place. One reply per
        site asked: a second one (which would count its update twice in the aggregate) and one
        from a site not asked in this exchange are ignored.
        """
        nodes = {m.metadata.message_id: m.metadata.dst_node_id for m in asked}
        stage = PAIR_TABLES_DROP_STAGE if any(m.metadata.message_type == protocol.QUERY_PAIR_TABLES for m in asked) \
            else None
        paired = []
        answered: set[int] = set()
        for reply in replies:
            node = nodes.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if node not in sites or node not in nodes.values():
                log.warning("ignored a reply from node %s, which this request did not ask", node)
            elif node in answered:
                log.warning("ignored a second reply from %s in round %d", sites[node].name, round_)
            else:
                answered.add(node)
                paired.append((sites[node], reply))
        for node in nodes.values():
            if node not in answered:
                self.drop(sites[node], round_,
                          f"no reply within {self.settings.timeout:g} s (site stopped or unreachable)", stage=stage,
                          possibly_charged=charged)
        return paired

    def drop(self, site: SiteStatus, round_: int, reason: str, refused: bool = False,
             stage: str | None = None, possibly_charged: bool = False, code: int | None = None) -> None:
        """Quarantine the site for this round with ``reason``; a policy refusal for the whole run.
        ``stage`` names the part of the round that failed (round 0's :data:`PAIR_TABLES_DROP_STAGE`).
        ``possibly_charged``: the site may have been charged for it (:attr:`SiteStatus.unconfirmed`),
        said in the audit entry too, so that a resume from the round before still knows
        (:func:`unconfirmed_in_audit`). ``code``: the error code the site answered, or the
        coordinator's own refusal's (whether the run stopped for the sites' budgets reads it)."""
        reason = public_text(f"{stage}: {reason}" if stage else reason)  # a ReplyError may quote the site's names
        if refused:  # final for the run, not this round alone (a budget query's refusal is no dropped round)
            log.warning("round %d: left out of this run, asked nothing more: %s: %s", round_, site.shown, reason)
        else:
            log.warning("round %d: dropped %s: %s", round_, site.shown, reason)
        site.dropped.append({"round": round_, "reason": reason, **({"stage": stage} if stage else {}),
                             **({"code": int(code)} if code is not None else {})})
        if possibly_charged:
            site.unconfirmed.append(round_)
        extra: dict[str, object] = {**({"stage": stage} if stage else {}),
                                    **({"possibly_charged": True} if possibly_charged else {})}
        self.record(SITE_REFUSED if refused else UPDATE_REJECTED, round=round_, node=site.node_id,
                    site=site.name, reason=reason, **extra)
        if refused:  # a policy refusal is final for this run: do not ask again
            site.active = False

    def budgets(self, replies: list[tuple[SiteStatus, Message]]) -> Iterator[tuple[SiteStatus, SiteBudget]]:
        """The valid budget replies (before round 0), each site's name, delta and budget noted;
        one at a time, so that what the caller records of each stays in the sites' order."""
        for site, reply in replies:
            if reply.has_error():
                self.drop(site, 0, protocol.kept_reason(reply.error.code, reply.error.reason),
                          refused=reply.error.code in protocol.FINAL_CODES, code=reply.error.code)
                continue
            try:
                budget, label = protocol.decode_budget(reply.content)
            except protocol.ReplyError as exc:
                self.drop(site, 0, f"invalid budget reply: {exc}")
                continue
            site.label, site.delta = label or site.label, budget.delta
            site.spent_before, site.max_epsilon = budget.spent, budget.max_epsilon
            # its ledger as it says: its claim, also where it is then refused (helper-116: a refused site's
            # rounds logged 0.000 "all runs composed in its ledger", its ledger at 1.0773)
            site.claimed_epsilon = max(site.claimed_epsilon, budget.spent)
            yield site, budget

    def valid(self, replies: list[tuple[SiteStatus, Message]], round_: int, payload: str,
              expected: Callable[[SiteStatus], PrivacyEvent], shapes: Shapes,
              current: dict[str, np.ndarray] | None = None) -> list[Message]:
        """Decode replies; return the valid ones, recording why each invalid one was dropped
        (quarantined for this round). With ``current`` and ``max_update_norm`` set, an update
        that moves the model further than the bound is rejected too."""
        valid = []
        stage = PAIR_TABLES_DROP_STAGE if payload == protocol.PAIR_TABLES else None
        for site, reply in replies:
            if reply.has_error():
                reason = protocol.kept_reason(reply.error.code, reply.error.reason)
                self.drop(site, round_, reason, refused=reply.error.code in protocol.FINAL_CODES, stage=stage,
                          possibly_charged=protocol.possibly_charged(reply.error.code), code=reply.error.code)
                continue
            try:
                protocol.check_reply_records(reply.content, payload)
                pairs = partial(check_pair_array, self.schema) if payload == protocol.MARGINALS else None
                arrays = protocol.from_array_record(reply.content.array_records[payload], shapes, pairs)
                if payload == protocol.MARGINALS:
                    try:  # each array was checked as it was decoded; the bounds must come too
                        require_group_bounds(self.schema, Marginals(dict(arrays)))
                    except ValueError as exc:
                        raise protocol.ReplyError(str(exc)) from None
                if payload in (protocol.MARGINALS, protocol.PAIR_TABLES) and \
                        not all(plausible_counts(values, MAX_SITE_COUNT) for values in arrays.values()):
                    # every site refuses tables beyond MAX_COUNT, and pooling 1e308s crashed the
                    # coordinator: one site must not stop them all
                    raise protocol.ReplyError(f"noisy tables hold counts beyond {MAX_SITE_COUNT:g}")
                if payload == protocol.ARRAYS and reply.content.metric_records[protocol.METRICS].get("steps") != \
                        float(expected(site).steps):
                    raise protocol.ReplyError("reported steps differ from the requested local steps")
                if current is not None and self.settings.max_update_norm is not None:
                    norm = float(np.sqrt(sum(np.sum((arrays[k].astype(np.float64) - current[k]) ** 2)
                                             for k in current)))
                    if norm > self.settings.max_update_norm:
                        raise protocol.ReplyError(f"update norm {norm:.3g} exceeds the bound "
                                                  f"{self.settings.max_update_norm:g}")
                self._accept_event(site, reply.content, expected(site))
            except LedgerWentBack as exc:  # its budget is no longer enforced: nothing more is asked of it
                self.drop(site, round_, str(exc), refused=True, stage=stage, possibly_charged=True)
                continue
            except protocol.ReplyError as exc:  # a site sends content only after it has charged: its claim went too
                self.drop(site, round_, f"invalid reply: {exc}", stage=stage, possibly_charged=True)
                continue
            if stage is not None:  # round 0's second release: the site joined with its first
                self.record(PAIR_TABLES_ACCEPTED, round=round_, node=site.node_id, site=site.name,
                            epsilon_claimed=site.claimed_epsilon)
            else:
                site.rounds_accepted.append(round_)
                self.record(SITE_JOINED if round_ == 0 else UPDATE_ACCEPTED, round=round_, node=site.node_id,
                            site=site.name, epsilon_claimed=site.claimed_epsilon)
            if payload == protocol.ARRAYS:  # aggregate in float32 whatever the transport precision
                reply.content[payload] = protocol.to_array_record({k: v.astype(np.float32) for k, v in arrays.items()})
            valid.append(reply)
        return valid

    def require_quorum(self, sites: Iterable[SiteStatus], accepted: int, round_: int) -> None:
        """Stop the run when fewer than ``min_sites`` replies of ``round_`` were valid, saying why
        each dropped site was dropped."""
        if accepted < self.settings.min_sites:
            dropped = [(s.name, s.dropped[-1]) for s in sites if s.dropped and s.dropped[-1]["round"] == round_]
            lost = [(name, str(entry["reason"])) for name, entry in dropped]
            reasons = "; ".join(f"{name}: {reason}" for name, reason in lost)
            error = QuorumError(f"round {round_}: only {accepted} valid site update(s), fewer than the minimum "
                                f"{self.settings.min_sites}. {reasons}", accepted, self.settings.min_sites, lost)
            error.budget_spent = bool(dropped) and all(
                entry.get("code") == protocol.ErrorCode.BUDGET_EXHAUSTED for _, entry in dropped)
            raise error

    def _accept_event(self, site: SiteStatus, content: RecordDict, expected: PrivacyEvent) -> None:
        """Record the site's privacy event if it is the mechanism that was asked for.

        ``expected.noise_multiplier`` is the least noise acceptable (sites may add more).
        """
        event, claimed, delta, label = protocol.decode_event(content.config_records[protocol.PRIVACY])
        if (event.mechanism, event.sample_rate, event.steps) != (expected.mechanism, expected.sample_rate,
                                                                 expected.steps):
            raise protocol.ReplyError(f"privacy event {event} does not match the request {expected}")
        if event.noise_multiplier < expected.noise_multiplier:
            raise protocol.ReplyError(f"site used less noise ({event.noise_multiplier}) than asked")
        if site.delta is not None and delta != site.delta:
            raise protocol.ReplyError(f"site changed its delta from {site.delta:g} to {delta:g} within the run")
        went_back = ledger_went_back(site, claimed, max(site.claimed_epsilon, site.spent_before or 0.0),
                                     "it claimed before in this run (a state folder lost or restored from an old "
                                     "backup between a crash and the resume)")
        if went_back is not None:
            raise LedgerWentBack(went_back)
        site.events.append(event)
        site.claimed_epsilon = claimed
        site.delta = delta
        site.label = label or site.label


def ledger_went_back(site: SiteStatus, said: float, earlier: float, when: str) -> str | None:
    """Why ``site`` is refused when its ledger says ``said``, less than the ``earlier`` claim of
    it (``when``: where that claim was made); None while it holds. A ledger only grows, so one
    below an earlier claim was started again, and the budget the site enforces no longer counts
    what it spent. Checked at the budget query against every run's claims in the audit log
    (:meth:`Coordinator.plan_budgets`) and at every reply against the run's own
    (:meth:`ReplyScreen._accept_event`): a site wiped between a crash and ``--resume`` is never
    asked that query again (helper-80)."""
    if said >= earlier - CLAIM_TOLERANCE:
        return None
    return protocol.error_reason(protocol.ErrorCode.LEDGER_UNAVAILABLE, (
        f"site '{site.name}' says its ledger holds epsilon {said:.4f}, less than the {earlier:.4f} {when}: its "
        "ledger was started again (a lost state folder, an old backup, or a reset), and what it spent before is "
        "not counted. Its operator restores the whole state folder (docs/site.md); a site whose ledger was reset "
        "for other patients joins under a new site_id"))


class LedgerWentBack(protocol.ReplyError):
    """A reply whose claim is below the site's earlier one (:func:`ledger_went_back`, the reason)."""


def unconfirmed_in_audit(entries: Iterable[dict[str, object]], run_id: str) -> set[tuple[int, int]]:
    """(node, round) of every charge of run ``run_id`` its audit entries call possibly made:
    a run that failed in a round is saved as of the round before, so its resume would report
    the site's failed round's charge as never made (helper-78: ε this run 1.49 where the site's
    ledger said 1.81, and not marked as a lower bound)."""
    return {(int(str(entry["node"])), int(str(entry["round"]))) for entry in entries
            if entry.get("run") == run_id and entry.get("possibly_charged") and "node" in entry and "round" in entry}
