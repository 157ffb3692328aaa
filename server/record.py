"""The run's record: what the coordinator has established so far, as one value that the release
and the saved state are written from.

Everything in it is public, a DP output or the coordinator's own timing, so it may be saved
after every round and a release may be written from it: the public settings and schema; per
site, what it declared public (that it took part and in which rounds, its name, the parameters
of its privacy events, its delta and its own epsilon claims, its budget before round 0) and
what the coordinator decided from those (its epsilon cap, the rounds it was planned for, why a
reply was dropped); each round's reply counts, mean generator loss and duration (the
coordinator's local timing: it grows with the sites' row counts, so a release leaves it out,
see ``PUBLIC_ROUND_FIELDS``); the sites' noisy round-0 tables (DP outputs) and their public
slots, and while round 0 is under way its queries (public) and first releases (DP outputs); and
the release choice (post-processing of DP outputs). A release publishes only what
:mod:`fedsyn.server.release` lists. The state file (:mod:`fedsyn.server.resume`) holds this
record and the global model, and :meth:`RunRecord.to_state` / :meth:`RunRecord.from_state` are
the one place the two forms are mapped.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedsyn.data.schema import Schema
from fedsyn.errors import ConfigurationError, FedsynError
from fedsyn.federation import protocol
from fedsyn.privacy.accounting import PrivacyEvent, compute_epsilon
from fedsyn.privacy.marginals import Marginals
from fedsyn.server.audit_events import DROPS
from fedsyn.server.resume import IN_ROUND_ZERO, RunState
from fedsyn.server.settings import FederationSettings


class FederationError(FedsynError, RuntimeError):
    """The run cannot continue (e.g. fewer sites than the configured minimum). ``resumable``: the
    run had saved a state of its own before it stopped, so ``--resume`` continues it (set by
    :func:`fedsyn.server.app.run_federation`; a run stopped before it saved anything would resume
    an earlier run's state instead). ``budget_spent``: it stopped because every site it lost in
    the round refused for its privacy budget, which no resume restores (set by the quorum check)."""

    resumable: bool = False
    budget_spent: bool = False


class QuorumError(FederationError):
    """Fewer than ``needed`` (min-sites) sites gave a valid answer in a round: ``accepted`` did,
    and ``lost`` names each site lost in it with its reason. Found by the budget query, it is
    what a budget plan answers (:mod:`fedsyn.server.deploy`), not a failure of the plan."""

    def __init__(self, message: str, accepted: int, needed: int, lost: list[tuple[str, str]]):
        super().__init__(message)
        self.accepted, self.needed, self.lost = accepted, needed, lost


@dataclass
class SiteStatus:
    """The coordinator's view of one site: what it spent (recomputed here) and what happened."""

    node_id: int
    label: str = ""
    events: list[PrivacyEvent] = field(default_factory=list)
    claimed_epsilon: float = 0.0
    delta: float | None = None
    rounds_accepted: list[int] = field(default_factory=list)
    dropped: list[dict[str, object]] = field(default_factory=list)
    active: bool = True
    # Rounds whose request may have been charged at the site with no claim reaching us: no
    # reply, a site failure (possibly after the charge) or an error from Flower in its place.
    unconfirmed: list[int] = field(default_factory=list)
    # Rounds of this run whose charge the audit log calls possible before a resume (the run was
    # saved as of the round before): the resumed run asked them again, and the site either
    # replayed that charge or charged anew (its own claim counts both). Only this run's
    # recomputed epsilon may then be short: a lower bound, never raising the cumulative figure.
    charged_before_resume: list[int] = field(default_factory=list)
    # What the site said before round 0 (its ledger's epsilon and its max_epsilon), and the ledger
    # total this run may bring it to: the epsilon every request of the run carries to it.
    spent_before: float | None = None
    max_epsilon: float | None = None
    epsilon_cap: float | None = None
    # The training rounds of this run that fit the site's budget (None: all of them). With a
    # fixed noise multiplier the plan may fit fewer than the run's rounds; the site is not asked
    # past them, so its refusal cannot fail a round's quorum and leave the run without a release.
    rounds_planned: int | None = None
    # The name this node last gave in this coordinator's audit log, for the operator's messages
    # only (never a claim's key): a site refusing before it names itself was logged as node-ID
    # while `sites list` and the audit log knew it (helper-120 M6).
    last_known: str = ""

    @property
    def shown(self) -> str:
        """:attr:`name`, and for a node that has not named itself in this run, its last name."""
        return f"{self.name} (last named '{self.last_known}')" if not self.label and self.last_known else self.name

    @property
    def claim_outdated(self) -> bool:
        """True when the site may have spent more than its last claim says: a charge unconfirmed
        in its last accepted round or after it (a round is asked once, but round 0 twice: its
        second release may be lost after the first was accepted)."""
        return any(r >= max(self.rounds_accepted, default=-1) for r in self.unconfirmed)

    @property
    def cap(self) -> float:
        """The ledger total this run may bring the site to; only a planned site is asked to spend."""
        if self.epsilon_cap is None:
            raise FederationError(f"{self.name} has no budget planned for this run: it answered no budget query")
        return self.epsilon_cap

    @property
    def name(self) -> str:
        """The name the site publishes in its replies, else its Flower node id."""
        return self.label or f"node-{self.node_id}"


_FALLBACK_LABEL = re.compile(r"node-\d+")  # the coordinator's label for a site that never named itself
# A site's refusal names the site in its own words: "site 'hospital-b' allows at most ...".
_NAMED_IN_REASON = re.compile(r"\bsite '([^']{1,200})'")


def given_name(entry: dict[str, Any]) -> str:
    """The name a site gave in this entry ('' for none, or for the coordinator's ``node-ID`` stand-in)."""
    name = str(entry.get("site") or "")
    return "" if _FALLBACK_LABEL.fullmatch(name) else name


def known_names(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Node id (as text) -> the newest name that node gave in any entry of any run of the log.

    A site that refuses at round 0 never sends a privacy record, so the coordinator labels it
    ``node-ID``; the name it gave in an earlier round or run still identifies it (in the
    dashboard, and in a release that lists a site which answered nothing). Failing that, a
    refusal that quotes the site's own name (``site 'NAME' allows ...``) does.
    """
    names: dict[str, str] = {}
    quoted: dict[str, str] = {}
    for entry in entries:
        if "node" not in entry:
            continue
        node = str(entry["node"])
        if given_name(entry):
            names[node] = given_name(entry)
        elif entry.get("event") in DROPS:
            found = _NAMED_IN_REASON.search(str(entry.get("reason", "")))
            if found:
                quoted[node] = found.group(1)
    return {**quoted, **names}


@dataclass
class RoundSummary:
    round: int
    accepted: int
    dropped: int
    generator_loss: float
    seconds: float


@dataclass
class ReleaseChoice:
    """The averaged generator the release samples from: of the rounds in the run's second half,
    the one whose rows sit closest to the noisy tables (:func:`fedsyn.model.matching.release_misfit`).
    The last round is not always the best one (GAN training oscillates), and a seed's luck should
    not decide what a hospital gets for its budget; choosing by DP outputs only is post-processing."""

    round: int
    misfit: float
    sampler: dict[str, np.ndarray]


@dataclass
class RoundZeroProgress:
    """Round 0 under way, kept so that a restarted coordinator asks it again word for word.

    ``queries`` is each planned site's first-release query: a site keeps its answer under the
    query's digest (:mod:`fedsyn.client.replies`), so the same query is answered from its store
    at no cost, where planning again (the sites' ledgers have moved) would ask a new one that
    each site charges again. ``first_releases`` holds the valid ones once they came (DP
    outputs): the pair tables asked next follow from them alone
    (:meth:`fedsyn.server.coordinator.Coordinator.collect_marginals`), so that query comes
    again word for word too."""

    queries: dict[int, protocol.MarginalsQuery]
    first_releases: dict[int, dict[str, np.ndarray]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"queries": {node: asdict(query) for node, query in self.queries.items()},
                "first_releases": self.first_releases}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RoundZeroProgress:
        first = raw.get("first_releases")
        return cls({int(node): protocol.MarginalsQuery(**query) for node, query in raw["queries"].items()},
                   None if first is None else {int(node): dict(arrays) for node, arrays in first.items()})


@dataclass
class RunRecord:
    """What the run has established, round by round (see the module docstring for why all of it
    is public or a DP output). The coordinator keeps it; the release and the saved state are
    written from it."""

    run_id: str
    schema: Schema
    settings: FederationSettings
    completed_round: int | None = None  # None: not even the marginals round
    sites: dict[int, SiteStatus] = field(default_factory=dict)
    rounds: list[RoundSummary] = field(default_factory=list)
    marginals: Marginals | None = None  # the sum of the sites' noisy outcome tables
    # Each valid round-0 site's noisy marginals drawn toward the sum (post-processing of DP outputs), and its slot.
    site_marginals: dict[int, Marginals] = field(default_factory=dict)
    slots: dict[int, int] = field(default_factory=dict)
    release_choice: ReleaseChoice | None = None
    # Nodes that connected after the budget query: not part of this run, each said once (saved,
    # so a restarted coordinator does not say it again).
    late_nodes: set[int] = field(default_factory=set)
    round_zero: RoundZeroProgress | None = None  # while round 0 is under way

    def epsilon_of(self, site: SiteStatus, events: list[PrivacyEvent] | None = None) -> float:
        """Epsilon of the site's events in this run (or of ``events``), at the delta the site keeps."""
        delta = site.delta if site.delta is not None else self.settings.delta
        return compute_epsilon(site.events if events is None else events, delta, self.settings.accountant)

    def to_state(self, model: dict[str, np.ndarray] | None, sampler: dict[str, np.ndarray] | None) -> RunState:
        """The saved form after the completed round, with the global model and its average; or,
        while round 0 is under way, its progress (round :data:`IN_ROUND_ZERO`)."""
        under_way = self.marginals is None
        if (self.round_zero if under_way else self.completed_round) is None:
            raise ConfigurationError("nothing to save before round 0 was planned")
        return RunState(
            run_id=self.run_id, round=IN_ROUND_ZERO if under_way else int(self.completed_round or 0),
            settings=self.settings.to_dict(), schema_sha256=protocol.schema_fingerprint(self.schema),
            marginals={} if self.marginals is None else self.marginals.tables,
            site_marginals={node: m.arrays for node, m in self.site_marginals.items()}, slots=dict(self.slots),
            sites=[asdict(site) for site in self.sites.values()], rounds=[asdict(r) for r in self.rounds],
            model=model, sampler=sampler,
            release_choice=None if self.release_choice is None else asdict(self.release_choice),
            late_nodes=sorted(self.late_nodes),
            table_noise_std=None if self.marginals is None else self.marginals.cell_std,
            round_zero=self.round_zero.to_dict() if under_way and self.round_zero else None)

    @classmethod
    def from_state(cls, state: RunState, schema: Schema, settings: FederationSettings) -> RunRecord:
        """The record a saved state holds, if it was saved by a run of the same settings and schema.

        The summed tables come back with the cell noise std the coordinator computed from its own
        queries (saved with them; None in a state saved before it was), which the release reads
        (:mod:`fedsyn.model.calibration`). The sites' tables come back
        without theirs (``cell_std`` None: unknown): it cannot be rebuilt from the state (a site's
        std is that of the query the coordinator sent,
        :func:`fedsyn.privacy.marginals.received_marginals`, which is not saved, and the site's own
        event would be its word on its noise), and nothing after round 0 reads it."""
        saved = settings.to_dict()
        # A setting added since the state was saved ran at its default (a new setting's default
        # keeps the earlier behaviour), so a missing key is compared as that default.
        defaults = type(settings)().to_dict()
        recorded = {key: state.settings.get(key, defaults.get(key)) for key in saved.keys() | state.settings.keys()}
        if recorded != saved:
            changed = sorted(k for k in recorded if recorded[k] != saved.get(k))
            raise ConfigurationError(f"the run's settings changed since its state was saved ({', '.join(changed)}); "
                                     "resume with the settings it started with")
        if state.schema_sha256 != protocol.schema_fingerprint(schema):
            raise ConfigurationError("the schema changed since the run's state was saved; resume with the same schema")
        if settings.site_noise_multiplier is not None:
            raise ConfigurationError("a run with site-level DP cannot be resumed: Flower's site-level accountant is "
                                     "not saved, so the report would understate it. Start a new run")
        under_way = state.round == IN_ROUND_ZERO
        if under_way and not state.round_zero:
            raise ConfigurationError("the saved state is within round 0 but holds no round-0 queries: it cannot be "
                                     "resumed without every site paying round 0 again. Start a new run")
        return cls(
            run_id=state.run_id, schema=schema, settings=settings, completed_round=None if under_way else state.round,
            # A run saved before per-site caps asked every site for the run's epsilon: its cap, kept so
            # that the same requests (and so the sites' stored answers) come again.
            sites={int(raw["node_id"]): _site(raw, settings.epsilon) for raw in state.sites},
            rounds=[RoundSummary(**raw) for raw in state.rounds],
            marginals=None if under_way else Marginals(state.marginals, cell_std=state.table_noise_std),
            site_marginals={int(node): Marginals(tables) for node, tables in state.site_marginals.items()},
            slots={int(node): slot for node, slot in state.slots.items()},
            release_choice=None if state.release_choice is None else ReleaseChoice(**state.release_choice),
            late_nodes={int(node) for node in state.late_nodes},
            round_zero=RoundZeroProgress.from_dict(state.round_zero) if under_way and state.round_zero else None)


def _site(raw: dict[str, Any], run_epsilon: float) -> SiteStatus:
    """A saved site's status; one saved before per-site caps gets the run's epsilon as its cap."""
    return SiteStatus(**{"epsilon_cap": run_epsilon, **raw, "events": [PrivacyEvent(**e) for e in raw["events"]]})
