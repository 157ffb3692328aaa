"""The coordinator's run: one noisy-marginals round, then federated DP-GAN training rounds.

Talks to sites only through a Flower :class:`~flwr.serverapp.Grid` (simulation, deployment
or the in-process grid used in tests). Every reply is decoded defensively; a bad reply is
dropped for that round with the reason in the report, never aborting the run. Sites are
averaged with equal weights, so no site's row count is needed or used.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsyn.data.schema import Schema
from fedsyn.errors import ConfigurationError, FedsynError
from fedsyn.federation import protocol
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.matching import release_misfit
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.accounting import PrivacyEvent, compute_epsilon
from fedsyn.privacy.budget import DP_SGD, SiteRunPlan, plan_site_run
from fedsyn.privacy.marginals import Marginals, marginals_event, received_marginals, table_shape
from fedsyn.privacy.pairs import check_pair_array, require_group_bounds
from fedsyn.privacy.randomness import torch_generator
from fedsyn.server.resume import SAVED, RunState, save_state
from fedsyn.server.settings import FederationSettings
from fedsyn.server.strategy import build_strategy
from fedsyn.trust.audit import AuditLog

log = logging.getLogger("fedsyn.server")


class FederationError(FedsynError, RuntimeError):
    """The run cannot continue (e.g. fewer sites than the configured minimum)."""


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
    # What the site said before round 0 (its ledger's epsilon and its max_epsilon), and the ledger
    # total this run may bring it to: the epsilon every request of the run carries to it.
    spent_before: float | None = None
    max_epsilon: float | None = None
    epsilon_cap: float | None = None
    # The training rounds of this run that fit the site's budget (None: all of them). With a
    # fixed noise multiplier the plan may fit fewer than the run's rounds; the site is not asked
    # past them, so its refusal cannot fail a round's quorum and leave the run without a release.
    rounds_planned: int | None = None

    @property
    def claim_outdated(self) -> bool:
        """True when the site may have spent more than its last claim says."""
        return any(r > max(self.rounds_accepted, default=-1) for r in self.unconfirmed)

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


@dataclass
class RoundSummary:
    round: int
    accepted: int
    dropped: int
    generator_loss: float
    seconds: float


RoundCallback = Callable[[RoundSummary, dict[int, SiteStatus]], None]


@dataclass
class ReleaseChoice:
    """The averaged generator the release samples from: of the rounds in the run's second half,
    the one whose rows sit closest to the noisy tables (:func:`release_misfit`). The last round
    is not always the best one (GAN training oscillates), and a seed's luck should not decide
    what a hospital gets for its budget; choosing by DP outputs only is post-processing."""

    round: int
    misfit: float
    sampler: dict[str, np.ndarray]


class Coordinator:
    """The run, round by round. With ``state_dir`` its state is saved after every completed
    round (:mod:`fedsyn.server.resume`), and :meth:`restore` continues a saved run; ``run_id``
    goes to the sites with every request, so they answer a repeated round from their store."""

    def __init__(self, schema: Schema, settings: FederationSettings, audit: AuditLog | None = None,
                 run_id: str = "", state_dir: Path | None = None):
        self.schema = schema
        self.settings = settings
        self.audit = audit
        self.run_id = run_id
        self.state_dir = state_dir
        self.completed_round: int | None = None  # None: not even the marginals round
        self._restored_model: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
        self.sites: dict[int, SiteStatus] = {}
        self.rounds: list[RoundSummary] = []
        self.marginals: Marginals | None = None
        # Each valid round-0 site's own noisy marginals (DP outputs), and its generator slot.
        self.site_marginals: dict[int, Marginals] = {}
        self.slots: dict[int, int] = {}
        # Nodes that connected after the budget query: not part of this run (see _note_late_sites).
        self.late_nodes: set[int] = set()
        self.trainer: GANTrainer | None = None
        self.strategy: Strategy | None = None
        self.release_choice: ReleaseChoice | None = None
        # Seeds the stream that rows for comparing rounds are drawn from (see _consider_for_release).
        self.misfit_seed = settings.seed if settings.seed is not None else secrets.randbits(63)

    # -- helpers --------------------------------------------------------------------------

    def wait_for_sites(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.settings.timeout
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.settings.min_sites:
                for node in nodes:
                    self.sites.setdefault(node, SiteStatus(node))
                return nodes
            if time.monotonic() > deadline:
                raise FederationError(f"only {len(nodes)} site(s) connected; at least {self.settings.min_sites} needed")
            time.sleep(1.0)

    def _exchange(self, grid: Grid, messages: list[Message], round_: int, charged: bool = True
                  ) -> list[tuple[SiteStatus, Message]]:
        """Send and wait; pair every reply with the site it answers for. A request that may be
        ``charged`` and got no reply is an unconfirmed charge (see :attr:`SiteStatus.unconfirmed`).

        A reply is matched through the message it answers, not its sender: when a node has
        gone away, the SuperLink itself answers with an error in the node's place.
        """
        replies = list(grid.send_and_receive(messages, timeout=self.settings.timeout))
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        paired = []
        for reply in replies:
            node = asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if node in self.sites:
                paired.append((self.sites[node], reply))
            else:
                log.warning("ignored a reply from unknown node %s", node)
        answered = {site.node_id for site, _ in paired}
        for node in asked.values():
            if node not in answered:
                if charged:
                    self.sites[node].unconfirmed.append(round_)
                self._drop(self.sites[node], round_,
                           f"no reply within {self.settings.timeout:g} s (site stopped or unreachable)")
        return paired

    def record(self, event: str, message: str | None = None, **fields: object) -> None:
        """Structured log line (``message``, or the event and its fields) and, when configured, a
        signed audit-trail entry."""
        if message is None:
            log.info("%s %s", event, fields, extra={"fedsyn": {"event": event, **fields}})
        else:
            log.info("%s", message, extra={"fedsyn": {"event": event, **fields}})
        if self.audit is not None:
            self.audit.append(event, **fields)

    def _drop(self, site: SiteStatus, round_: int, reason: str, refused: bool = False) -> None:
        log.warning("round %d: dropped %s: %s", round_, site.name, reason)
        site.dropped.append({"round": round_, "reason": reason})
        self.record("site_refused" if refused else "update_rejected", round=round_, node=site.node_id,
                    site=site.name, reason=reason)
        if refused:  # a policy refusal is final for this run: do not ask again
            site.active = False

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
        site.events.append(event)
        site.claimed_epsilon = claimed
        site.delta = delta
        site.label = label or site.label

    def _replies(self, replies: list[tuple[SiteStatus, Message]], round_: int, payload: str,
                 expected: Callable[[SiteStatus], PrivacyEvent],
                 shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]],
                 current: dict[str, np.ndarray] | None = None) -> list[Message]:
        """Decode replies; return the valid ones, recording why each invalid one was dropped
        (quarantined for this round). With ``current`` and ``max_update_norm`` set, an update
        that moves the model further than the bound is rejected too."""
        valid = []
        for site, reply in replies:
            if reply.has_error():
                reason = reply.error.reason or f"error code {reply.error.code}"
                if reply.error.code not in protocol.FINAL_CODES:  # the site may have been charged first
                    site.unconfirmed.append(round_)
                self._drop(site, round_, reason, refused=reply.error.code in protocol.FINAL_CODES)
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
            except protocol.ReplyError as exc:
                self._drop(site, round_, f"invalid reply: {exc}")
                continue
            site.rounds_accepted.append(round_)
            self.record("site_joined" if round_ == 0 else "update_accepted", round=round_, node=site.node_id,
                        site=site.name, epsilon_claimed=site.claimed_epsilon)
            if payload == protocol.ARRAYS:  # aggregate in float32 whatever the transport precision
                reply.content[payload] = protocol.to_array_record({k: v.astype(np.float32) for k, v in arrays.items()})
            valid.append(reply)
        return valid

    def _require_quorum(self, accepted: int, round_: int) -> None:
        if accepted < self.settings.min_sites:
            reasons = "; ".join(f"{s.name}: {s.dropped[-1]['reason']}" for s in self.sites.values()
                                if s.dropped and s.dropped[-1]["round"] == round_)
            raise FederationError(
                f"round {round_}: only {accepted} valid site update(s), fewer than the minimum "
                f"{self.settings.min_sites}. {reasons}")

    # -- the run --------------------------------------------------------------------------

    def check_run(self) -> None:
        """What the coordinator refuses on its own, before contacting any site."""
        settings = self.settings
        self.schema.require_reviewed(settings.allow_unreviewed_schema)
        if settings.site_column is not None and (settings.site_column not in self.schema.column_names
                                                 or not self.schema.column(settings.site_column).is_categorical
                                                 or settings.site_column == self.schema.outcome):
            raise ConfigurationError(f"site_column '{settings.site_column}' must be a categorical column of the "
                                     "schema other than the outcome")

    def plan_budgets(self, grid: Grid) -> dict[int, protocol.MarginalsQuery]:
        """Ask every site what it has spent and may spend (a query that charges nothing and reads
        no row), and plan its part of the run before anything is charged: the ledger total the run
        may bring it to (``settings.epsilon`` more than it has spent, never above its max_epsilon),
        the round-0 noise for that, and the training rounds that fit (:func:`plan_site_run`). Each
        site's plan is logged and recorded; a site with nothing usable left is asked nothing more.
        Returns each planned site's round-0 query."""
        nodes = self.wait_for_sites(grid)
        replies = self._exchange(grid, [Message(RecordDict(), dst_node_id=node, message_type=protocol.QUERY_BUDGET,
                                                group_id="budget") for node in nodes], 0, charged=False)
        fingerprint = protocol.schema_fingerprint(self.schema)
        queries = {}
        for site, reply in replies:
            if reply.has_error():
                self._drop(site, 0, reply.error.reason or f"error code {reply.error.code}",
                           refused=reply.error.code in protocol.FINAL_CODES)
                continue
            try:
                budget, label = protocol.decode_budget(reply.content)
            except protocol.ReplyError as exc:
                self._drop(site, 0, f"invalid budget reply: {exc}")
                continue
            site.label, site.delta = label or site.label, budget.delta
            site.spent_before, site.max_epsilon = budget.spent, budget.max_epsilon
            plan = plan_site_run(budget, self.settings)
            self._record_plan(site, plan)
            if not plan.usable or plan.marginals_noise is None:
                self._drop(site, 0, protocol.error_reason(protocol.ErrorCode.BUDGET_EXHAUSTED,
                                                          self._unusable(site, plan)), refused=True)
                continue
            site.epsilon_cap, site.rounds_planned = plan.cap, plan.rounds_fit
            queries[site.node_id] = protocol.MarginalsQuery(plan.marginals_noise, plan.cap, fingerprint, self.run_id,
                                                            self.settings.pairs_share)
        self._require_quorum(len(queries), 0)
        return queries

    def _unusable(self, site: SiteStatus, plan: SiteRunPlan) -> str:
        """Why a site with this plan is asked nothing, and what the operator can change."""
        budget = plan.budget
        if plan.marginals_noise is None:
            return (f"site '{site.name}' has spent {budget.spent:.4f} of its max_epsilon {budget.max_epsilon:g}: "
                    "too little is left for this run")
        return (f"site '{site.name}' may spend {plan.cost:.4f} in this run, and no training round fits that at "
                f"noise-multiplier {self.settings.noise_multiplier} after round 0: raise noise-multiplier (or "
                "leave it out so the site calibrates its own), or lower rounds or local-steps in [run]")

    def _record_plan(self, site: SiteStatus, plan: SiteRunPlan) -> None:
        """The operator's line for one site's plan, and its audit entry."""
        budget, rounds = plan.budget, self.settings.rounds
        fit = (f"this run may raise it to {plan.cap:.4f} (+{plan.cost:.4f}): round-0 noise {plan.marginals_noise:.3g}, "
               f"{plan.rounds_fit} of {rounds} training round(s) fit at noise {plan.training_noise:.3g}"
               if plan.usable and plan.training_noise is not None
               else f"it is asked nothing more: {self._unusable(site, plan)}")
        self.record("site_budget", f"budget of {site.name}: spent {budget.spent:.4f} of its max_epsilon "
                    f"{budget.max_epsilon:g}, {budget.remaining:.4f} left; {fit}", node=site.node_id, site=site.name,
                    epsilon_spent=budget.spent, max_epsilon=budget.max_epsilon, epsilon_cap=plan.cap,
                    rounds_fit=plan.rounds_fit, rounds=rounds)

    def collect_marginals(self, grid: Grid) -> Marginals:
        """Round 0: each planned site's noisy tables, at the noise its own budget allows."""
        settings = self.settings
        self.check_run()
        self.record("run_configured", settings=settings.public_dict(),
                    schema=self.schema.name)
        queries = self.plan_budgets(grid)
        replies = self._exchange(grid, [Message(RecordDict({protocol.CONFIG: query.to_record()}), dst_node_id=node,
                                                message_type=protocol.QUERY_MARGINALS, group_id="0")
                                        for node, query in queries.items()], 0)
        shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {
            c.name: (table_shape(self.schema, c), np.dtype(np.float64)) for c in self.schema.columns}
        valid = self._replies(replies, 0, protocol.MARGINALS,
                              lambda site: marginals_event(queries[site.node_id].noise_multiplier), shapes)
        self._require_quorum(len(valid), 0)
        answered = {id(reply): site.node_id for site, reply in replies}
        # Each site's tables carry the noise std of the release asked of it, never the site's word on it.
        asked = [queries[answered[id(r)]] for r in valid]
        parts = [received_marginals(dict(protocol.from_array_record(r.content.array_records[protocol.MARGINALS])),
                                    self.schema, query.noise_multiplier, query.pairs_share)
                 for r, query in zip(valid, asked)]
        self.site_marginals = {answered[id(r)]: part for r, part in zip(valid, parts)}
        # Public slots for the sites that answered validly, in node-id order.
        self.slots = {node: slot for slot, node in enumerate(sorted(self.site_marginals))}
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        if settings.marginals_noise_floor:  # the sum's cell std: the sites' variances added
            total = total.without_noise_floor(self.schema, settings.marginals_noise_floor)
        self.marginals = total
        self._save(0)
        return total

    def train(self, grid: Grid, on_round: RoundCallback | None = None) -> GANTrainer:
        settings = self.settings
        if self.marginals is None:
            raise ConfigurationError("no marginals yet: run collect_marginals() before train()")
        # The global model's initialisation and the release's sampling: public randomness of its own.
        gan_config = settings.gan_config
        if settings.site_conditional:
            gan_config = replace(gan_config, site_slots=len(self.slots))
        trainer = GANTrainer(TableEncoder(self.schema, self.marginals), gan_config,
                             rng=torch_generator(settings.seed, "coordinator", self.completed_round or 0))
        if self._restored_model is not None:
            model, sampler = self._restored_model
            trainer.load_state_arrays(model)
            trainer.load_sampler_arrays(sampler)
        per_slot = [self.site_marginals[node] for node in sorted(self.slots, key=self.slots.__getitem__)]
        if gan_config.site_slots:
            trainer.set_release_slots([m.total() for m in per_slot], per_slot, settings.site_column)
        self.trainer = trainer
        shapes = {k: (v.shape, v.dtype) for k, v in trainer.state_arrays().items()}
        wire_shapes = {k: (shape, np.dtype(settings.transport_dtype)) for k, (shape, _) in shapes.items()}
        slot_marginals = protocol.slot_marginals_record([m.arrays for m in per_slot])

        def node_config(node: int) -> dict[str, int | float]:
            """The site's own part of the instructions: its epsilon cap and, with site slots, its slot."""
            own: dict[str, int | float] = {"epsilon": self.sites[node].cap}
            if gan_config.site_slots:
                own[protocol.SITE_SLOT] = self.slots[node]
            return own

        self.strategy = build_strategy(
            protocol.to_array_record(self.marginals.tables),
            lambda: [s.node_id for s in self.sites.values() if s.active and self._trainable(s, gan_config)],
            node_config, len(self.sites), settings.delta, settings.site_noise_multiplier, settings.site_clipping_norm,
            settings.aggregation, slot_marginals)
        instructions = protocol.TrainInstructions(
            round=1, total_rounds=settings.rounds, local_steps=settings.local_steps,
            sample_rate=settings.sample_rate, epsilon=settings.epsilon,  # each site's cap replaces it (node_config)
            noise_multiplier=settings.noise_multiplier, gan_config=gan_config,
            schema_sha256=protocol.schema_fingerprint(self.schema), transport_dtype=settings.transport_dtype,
            run_id=self.run_id)
        # Sites may add noise but never less than asked; with none asked they calibrate their own.
        least_noise = settings.noise_multiplier or np.finfo(float).tiny
        expected = PrivacyEvent(DP_SGD, least_noise, settings.sample_rate, settings.local_steps)
        for round_ in range((self.completed_round or 0) + 1, settings.rounds + 1):
            started = time.monotonic()
            self._retire_finished_sites(round_)
            self._note_late_sites(grid, round_)
            if not any(s.active and self._trainable(s, gan_config) for s in self.sites.values()):
                self.record("training_stopped", f"no site has budget for round {round_}: training stops after "
                            f"round {round_ - 1} of {settings.rounds}, and the release uses what was trained",
                            round=round_ - 1, rounds=settings.rounds)
                break
            current = trainer.state_arrays()
            messages = list(self.strategy.configure_train(
                round_, protocol.to_array_record(current), replace(instructions, round=round_).to_record(), grid))
            self.record("round_started", round=round_, sites=len(messages))
            replies = self._exchange(grid, messages, round_)
            valid = self._replies(replies, round_, protocol.ARRAYS, lambda _: expected, wire_shapes, current)
            self._require_quorum(len(valid), round_)
            aggregated, _ = self.strategy.aggregate_train(round_, valid)
            if aggregated is None:
                raise FederationError(f"round {round_}: the strategy produced no aggregate from {len(valid)} "
                                      "update(s); with site-level DP every sampled site must reply validly")
            # The release samples from a moving average of the global generator over rounds,
            # on the same time scale (in local steps) as a single-site fit's average.
            decay = settings.gan_config.generator_ema ** settings.local_steps if round_ > 1 else 0.0
            trainer.load_state_arrays(protocol.from_array_record(aggregated, shapes), sampler_decay=decay)
            misfit = self._consider_for_release(trainer, round_)
            losses = [r.content.metric_records[protocol.METRICS]["generator_loss"] for r in valid]
            summary = RoundSummary(round_, len(valid), len(messages) - len(valid), float(np.mean(losses)),
                                   time.monotonic() - started)
            self.rounds.append(summary)
            misfit_field: dict[str, object] = {} if misfit is None else {"misfit": round(misfit, 4)}
            self.record("round_finished", None, round=round_, accepted=summary.accepted, dropped=summary.dropped,
                        **misfit_field)
            self._save(round_)
            if on_round is not None:
                on_round(summary, self.sites)
        if self.release_choice is not None:
            choice = self.release_choice
            trainer.load_sampler_arrays(choice.sampler)
            self.record("release_model_chosen", round=choice.round, misfit=round(choice.misfit, 4))
        return trainer

    def _retire_finished_sites(self, round_: int) -> None:
        """Sites whose planned rounds are done are asked no more in this run (see
        :attr:`SiteStatus.rounds_planned`); each is said once."""
        for site in self.sites.values():
            if site.active and site.rounds_planned is not None and round_ > site.rounds_planned:
                site.active = False
                self.record("site_finished", f"{site.name}: its budget for this run fits {site.rounds_planned} "
                            f"training round(s), all done; it is asked nothing more in this run",
                            node=site.node_id, site=site.name, rounds_planned=site.rounds_planned)

    def _note_late_sites(self, grid: Grid, round_: int) -> None:
        """A site that connected after the budget query was planned nothing, so it is not part of
        this run (it is asked nothing and charged nothing); the operator hears so, once per site,
        instead of wondering why it never trains."""
        for node in sorted(set(grid.get_node_ids()) - set(self.sites) - self.late_nodes):
            self.late_nodes.add(node)
            self.record("site_joined_late", f"node {node} connected after this run's budget query (round 0): it "
                        f"takes no part in this run and is charged nothing; it joins the next run. To wait for "
                        f"every site, set min-sites to the number of sites", round=round_, node=node)

    def _consider_for_release(self, trainer: GANTrainer, round_: int) -> float | None:
        """From the second half of the rounds on, the averaged generator's misfit; the best so far
        becomes the :class:`ReleaseChoice`. None for a round too early to be considered."""
        if round_ <= self.settings.rounds // 2:
            return None
        # The same public stream for every candidate round (post-processing randomness only).
        misfit = release_misfit(trainer, torch_generator(self.misfit_seed, "release-misfit"))
        if not math.isfinite(misfit):
            return None
        if self.release_choice is None or misfit < self.release_choice.misfit:
            self.release_choice = ReleaseChoice(round_, misfit, trainer.sampler_arrays())
        return misfit

    # -- saving and resuming ----------------------------------------------------------------

    def _save(self, round_: int) -> None:
        """Persist the run after ``round_`` (atomically), vouched for in the audit log."""
        self.completed_round = round_
        if self.state_dir is None or self.marginals is None:
            return
        model = sampler = None
        if self.trainer is not None:
            model = dict(self.trainer.state_arrays())
            sampler = self.trainer.sampler_arrays()
        state = RunState(
            run_id=self.run_id, round=round_, settings=self.settings.to_dict(),
            schema_sha256=protocol.schema_fingerprint(self.schema), marginals=self.marginals.tables,
            site_marginals={node: m.arrays for node, m in self.site_marginals.items()}, slots=dict(self.slots),
            sites=[asdict(site) for site in self.sites.values()], rounds=[asdict(r) for r in self.rounds],
            model=model, sampler=sampler,
            release_choice=None if self.release_choice is None else asdict(self.release_choice))
        digest = save_state(self.state_dir, state)
        self.record(SAVED, round=round_, path=str((self.state_dir / "state.pt").resolve()), sha256=digest)

    def restore(self, state: RunState) -> None:
        """Continue a saved run: same settings and schema, or nothing is resumed."""
        settings = self.settings.to_dict()
        if state.settings != settings:
            changed = sorted(k for k in state.settings if state.settings[k] != settings.get(k))
            raise ConfigurationError(f"the run's settings changed since its state was saved ({', '.join(changed)}); "
                                     "resume with the settings it started with")
        if state.schema_sha256 != protocol.schema_fingerprint(self.schema):
            raise ConfigurationError("the schema changed since the run's state was saved; resume with the same schema")
        if self.settings.site_noise_multiplier is not None:
            raise ConfigurationError("a run with site-level DP cannot be resumed: Flower's site-level accountant is "
                                     "not saved, so the report would understate it. Start a new run")
        self.run_id = state.run_id
        self.marginals = Marginals(state.marginals)
        self.site_marginals = {int(node): Marginals(tables) for node, tables in state.site_marginals.items()}
        self.slots = {int(node): slot for node, slot in state.slots.items()}
        # A run saved before per-site caps asked every site for the run's epsilon: its cap, kept so
        # that the same requests (and so the sites' stored answers) come again.
        self.sites = {int(raw["node_id"]): SiteStatus(**{"epsilon_cap": self.settings.epsilon, **raw,
                                                         "events": [PrivacyEvent(**e) for e in raw["events"]]})
                      for raw in state.sites}
        self.rounds = [RoundSummary(**raw) for raw in state.rounds]
        self.completed_round = state.round
        if state.model is not None and state.sampler is not None:
            self._restored_model = (state.model, state.sampler)
        if state.release_choice is not None:
            self.release_choice = ReleaseChoice(**state.release_choice)

    def _trainable(self, site: SiteStatus, gan_config: GANConfig) -> bool:
        """Only sites planned for this run (they have an epsilon cap), and with site slots only those
        that released valid round-0 marginals (they hold a slot)."""
        return site.epsilon_cap is not None and (not gan_config.site_slots or site.node_id in self.slots)

    def site_level_privacy(self) -> dict[str, float] | None:
        """Flower's accountant's (epsilon, delta) for site-level DP, if it was switched on."""
        spent = getattr(self.strategy, "privacy_spent", lambda: None)()
        if spent is None:
            return None
        return {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases,
                "noise_multiplier": self.settings.site_noise_multiplier,
                "clipping_norm": self.settings.site_clipping_norm}

    def epsilon_of(self, site: SiteStatus, events: list[PrivacyEvent] | None = None) -> float:
        """Epsilon of the site's events in this run (or of ``events``), at the delta the site keeps."""
        delta = site.delta if site.delta is not None else self.settings.delta
        return compute_epsilon(site.events if events is None else events, delta, self.settings.accountant)
