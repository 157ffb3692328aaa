"""The coordinator's run: wait for sites, ask their budgets, one noisy-marginals round, then
federated DP-GAN training rounds, the choice of the round to release, a saved state after each.

Talks to sites only through a Flower :class:`~flwr.serverapp.Grid` (simulation, deployment
or the in-process grid used in tests). Every reply passes :class:`~fedsyn.server.screening.ReplyScreen`
before anything in it is used; a bad reply is dropped for that round with the reason in the
report, never aborting the run. What the run establishes is kept in its
:class:`~fedsyn.server.record.RunRecord` (public facts and DP outputs only), which the release and
the saved state are written from. Sites are averaged with equal weights, so no site's row count is
needed or used.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsyn.data.schema import Schema
from fedsyn.errors import ConfigurationError, failed_to_write, os_error_said, public_name
from fedsyn.federation import protocol
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.matching import release_misfit
from fedsyn.model.raking import pooled_pair_tables
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.accounting import PrivacyEvent
from fedsyn.privacy.budget import DP_SGD, SiteRunPlan, plan_site_run
from fedsyn.privacy.marginals import (
    Marginals,
    federation_tables,
    marginals_event,
    measured_columns,
    received_marginals,
    summed_tables,
    table_shape,
)
from fedsyn.privacy.pairs import (
    RoundZeroSplit,
    affordable_pairs,
    asked_pairs,
    bounds_arrays,
    chosen_pairs,
    group_bounds,
    pair_key,
    pair_shape,
)
from fedsyn.privacy.randomness import torch_generator
from fedsyn.server.audit_events import (
    GENERATOR_FITTED_TO_TABLES,
    PAIRS_CHOSEN,
    RELEASE_MODEL_CHOSEN,
    ROUND_FINISHED,
    ROUND_STARTED,
    RUN_CONFIGURED,
    SAVED,
    SITE_BUDGET,
    SITE_FINISHED,
    SITE_JOINED_LATE,
    SITE_RENAMED,
    TRAINING_STOPPED,
)
from fedsyn.server.record import (
    FederationError,
    ReleaseChoice,
    RoundSummary,
    RoundZeroProgress,
    RunRecord,
    SiteStatus,
    known_names,
)
from fedsyn.server.resume import IN_ROUND_ZERO, RunState, save_state
from fedsyn.server.screening import ReplyScreen, ledger_went_back, unconfirmed_in_audit
from fedsyn.server.settings import FederationSettings, check_against_schema
from fedsyn.server.strategy import SITE_LEVEL_SCOPE, build_strategy
from fedsyn.trust.audit import AuditLog

# What a caller of the run meets: the error that stops it, and what each round's callback is given.
__all__ = ["Coordinator", "RoundCallback"]

log = logging.getLogger("fedsyn.server")
WAITING_SAID_EVERY_S = 30.0  # how often a run waiting for its sites says how many it has

RoundCallback = Callable[[RoundSummary, dict[int, SiteStatus]], None]


class Coordinator:
    """The run, round by round; what it establishes is kept in :attr:`run`. With ``state_dir``
    its state is saved after every completed round and within round 0 (:mod:`fedsyn.server.resume`), and
    :meth:`restore` continues a saved run; ``run_id`` goes to the sites with every request, so
    they answer a repeated round from their store."""

    def __init__(self, schema: Schema, settings: FederationSettings, audit: AuditLog | None = None,
                 run_id: str = "", state_dir: Path | None = None):
        self.schema = schema
        self.settings = settings
        self.audit = audit
        self.state_dir = state_dir
        self.run = RunRecord(run_id, schema, settings)
        self.screen = ReplyScreen(schema, settings, self.record)
        self._restored_model: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
        self.saved_state = False  # whether this run saved a state of its own (what --resume would continue)
        self.trainer: GANTrainer | None = None
        self.strategy: Strategy | None = None
        # Seeds the stream that rows for comparing rounds are drawn from (see _consider_for_release).
        self.misfit_seed = settings.seed if settings.seed is not None else secrets.randbits(63)

    # -- helpers --------------------------------------------------------------------------

    def wait_for_sites(self, grid: Grid) -> list[int]:
        """Wait until ``min_sites`` of the run's sites are connected; return them. A new run's
        sites are every connected node. A resumed run waits for those of its budget query that
        the next round would ask (:meth:`_ready`, with a planned round left): a site that was
        refused or has trained every round its budget fits is asked nothing more, so counting
        it would start a round the quorum then stops, and the release would lose the rounds a
        site still on its way back could have trained. When fewer than ``min_sites`` can still
        train, there is nothing to wait for: training stops and the release is written. A node
        that connected since the budget query takes no part (:meth:`_note_late_sites` says so).
        A run resumed within round 0 waits for the sites it asks next: those it planned, or once
        their first releases are in, those whose release came."""
        progress = self.run.round_zero
        resumed = self.run.completed_round is not None or progress is not None
        next_round = (self.run.completed_round or 0) + 1
        known: set[int] | None = None
        if progress is not None:  # within round 0: the sites asked next (those whose first release came, once in)
            known = set(progress.queries if progress.first_releases is None else progress.first_releases)
        elif resumed:
            known = {node for node in self._ready(self.settings.site_conditional)
                     if (planned := self.run.sites[node].rounds_planned) is None or planned >= next_round}
        needed = self.settings.min_sites if known is None else min(self.settings.min_sites, len(known))
        started = time.monotonic()
        deadline, said = started + self.settings.timeout, started
        while True:
            nodes = [node for node in sorted(grid.get_node_ids()) if known is None or node in known]
            if len(nodes) >= needed:
                for node in nodes:
                    self.run.sites.setdefault(node, SiteStatus(node))
                return nodes
            if time.monotonic() - said >= WAITING_SAID_EVERY_S:  # a plan waited 5 minutes without a word
                said = time.monotonic()
                log.info("waiting for sites: %d of the %d needed connected, giving up in %d s (round-timeout)",
                         len(nodes), needed, max(0, round(deadline - said)),
                         extra={"fedsyn": {"event": "waiting_for_sites", "connected": len(nodes), "needed": needed}})
            if time.monotonic() > deadline:
                others = len(set(grid.get_node_ids()) - set(self.run.sites)) if resumed else 0
                strangers = (f"; {others} other node(s) are connected that took no part in this run's budget "
                             "query (new node ids, e.g. after the SuperLink lost its database): start a new run "
                             "for them" if others else "")
                which = ("the site(s) round 0 asks next" if progress is not None
                         else "the run's site(s) that can still train" if resumed else "the run's site(s)")
                raise FederationError(f"only {len(nodes)} of {which} connected; at least "
                                      f"{self.settings.min_sites} needed{strangers}")
            time.sleep(1.0)

    def _exchange(self, grid: Grid, messages: list[Message], round_: int, charged: bool = True
                  ) -> list[tuple[SiteStatus, Message]]:
        """Send and wait; every reply paired with the site it answers for (:meth:`ReplyScreen.pair`)."""
        replies = grid.send_and_receive(messages, timeout=self.settings.timeout)
        return self.screen.pair(self.run.sites, messages, replies, round_, charged)

    def record(self, event: str, message: str | None = None, /, **fields: object) -> None:
        """Structured log line (``message``, or the event and its fields) and, when configured, a
        signed audit-trail entry."""
        if message is None:
            log.info("%s %s", event, fields, extra={"fedsyn": {"event": event, **fields}})
        else:
            log.info("%s", message, extra={"fedsyn": {"event": event, **fields}})
        if self.audit is not None:
            self.audit.append(event, **fields)

    def _require_quorum(self, accepted: int, round_: int) -> None:
        self.screen.require_quorum(self.run.sites.values(), accepted, round_)

    # -- the run --------------------------------------------------------------------------

    def check_run(self) -> None:
        """What the coordinator refuses on its own, before contacting any site."""
        check_against_schema(self.settings, self.schema)

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
        queries: dict[int, protocol.MarginalsQuery] = {}
        entries = self._audit_entries()
        earlier = self._earlier_claims(entries)
        known = known_names(entries)
        for site in self.run.sites.values():  # for the operator's messages until the site names itself
            site.last_known = site.last_known or known.get(str(site.node_id), "")
        budgets = list(self.screen.budgets(replies))
        names = Counter(site.name for site, _ in budgets)
        self._say_renamed([site for site, _ in budgets], known)
        for site, budget in budgets:
            claimed = earlier.get(site.name, 0.0)
            if names[site.name] > 1:  # claims are kept by name: two ledgers under one would mix (helper-80)
                self.screen.drop(site, 0, protocol.error_reason(protocol.ErrorCode.POLICY_REFUSED, (
                    f"{names[site.name]} connected sites call themselves '{site.name}': each site's policy needs "
                    "its own site_id")), refused=True)
                continue
            went_back = ledger_went_back(site, budget.spent, claimed, "a site of this name claimed in an earlier run "
                                         "(this coordinator's audit log)")
            if went_back is not None:
                site.claimed_epsilon = max(site.claimed_epsilon, claimed)  # the report never says less
                self.screen.drop(site, 0, went_back, refused=True)
                continue
            plan = plan_site_run(budget, self.settings)
            self._record_plan(site, plan)
            if not plan.usable or plan.marginals_noise is None:
                self.screen.drop(site, 0, protocol.error_reason(protocol.ErrorCode.BUDGET_EXHAUSTED,
                                                                self._unusable(site, plan)), refused=True,
                                 code=protocol.ErrorCode.BUDGET_EXHAUSTED)
                continue
            site.epsilon_cap, site.rounds_planned = plan.cap, plan.rounds_fit
            queries[site.node_id] = protocol.MarginalsQuery(plan.marginals_noise, plan.cap, fingerprint,
                                                            self.run.run_id, self.settings.pairs_share)
        self._name_silent_sites(known, earlier)
        self._require_quorum(len(queries), 0)
        return {node: replace(query, sites=len(queries)) for node, query in queries.items()}

    def _say_renamed(self, sites: list[SiteStatus], known: dict[str, str]) -> None:
        """Say, and record, each node that now gives another name than it gave before: the same
        hospital renamed, or another one holding a copy of its key. Both were adopted in silence,
        and the release then named the new name for the registered node (helper-108 M4)."""
        for site in sites:
            before = known.get(str(site.node_id))
            if before and site.label and before != site.label:
                log.warning("node %s, which called itself '%s' in this coordinator's earlier entries, now calls "
                            "itself '%s': if that is not the same hospital (another holding a copy of its auth key), "
                            "stop the run and remove the node (`fedsyn server sites remove`); its ledger is its own "
                            "either way", site.node_id, before, site.label)
                self.record(SITE_RENAMED, node=site.node_id, site=site.label, before=before)

    def _audit_entries(self) -> list[dict[str, object]]:
        """Every entry of this coordinator's audit log, every run's; none without one."""
        return self.audit.entries() if self.audit is not None else []

    def _name_silent_sites(self, names: dict[str, str], earlier: dict[str, float]) -> None:
        """A site that answered no budget query (it failed, or its reply was lost) is named as it
        last named itself in this coordinator's audit log, and its claim is its largest there: the
        release had listed a site that had claimed 1.4 in an earlier run as ``node-ID`` at a
        cumulative epsilon of 0 (helper-98 M4). ``names``: each node id's last name there
        (:func:`known_names`)."""
        answering = {site.label for site in self.run.sites.values() if site.label}
        for site in self.run.sites.values():  # a site that answered under a new node keeps the name alone
            if not site.label and names.get(str(site.node_id), "") not in ("", *answering):
                site.label = names[str(site.node_id)]
                site.claimed_epsilon = max(site.claimed_epsilon, earlier.get(site.label, 0.0))

    @staticmethod
    def _earlier_claims(entries: list[dict[str, object]]) -> dict[str, float]:
        """The largest epsilon each site (by name) claimed or said it had spent in the audit
        log's ``entries``: a site whose state folder was lost, and whose ledger was initialised
        again, said 0 and would have spent its whole budget again unseen (helper-78)."""
        claims: dict[str, float] = {}
        for entry in entries:
            name, said = entry.get("site"), entry.get("epsilon_claimed", entry.get("epsilon_spent"))
            if isinstance(name, str) and isinstance(said, (int, float)):
                shown = public_name(name)  # as names are read now
                claims[shown] = max(claims.get(shown, 0.0), float(said))
        return claims

    def _unusable(self, site: SiteStatus, plan: SiteRunPlan) -> str:
        """Why a site with this plan is asked nothing, and what the operator can change."""
        budget = plan.budget
        if plan.marginals_noise is None:
            return (f"site '{site.name}' has spent {budget.spent:.4f} of its max_epsilon {budget.max_epsilon:g}: "
                    "too little is left for this run")
        return (f"site '{site.name}' may spend {plan.cost:.4f} in this run, and no training round fits that at "
                f"noise multiplier {self.settings.noise_multiplier} after round 0: raise the settings' "
                "noise_multiplier (or leave it unset so the site calibrates its own), or lower rounds or local-steps")

    def _record_plan(self, site: SiteStatus, plan: SiteRunPlan) -> None:
        """The operator's line for one site's plan, and its audit entry."""
        budget, rounds = plan.budget, self.settings.rounds
        fit = (f"this run may raise it to {plan.cap:.4f} (+{plan.cost:.4f}): round-0 noise {plan.marginals_noise:.3g}, "
               f"{plan.rounds_fit} of {rounds} training round(s) fit at noise {plan.training_noise:.3g}"
               if plan.usable and plan.training_noise is not None
               else f"it is asked nothing more: {self._unusable(site, plan)}")
        per_request = budget.max_epsilon_per_request
        each = f", at most {per_request:g} a request" if per_request is not None else ""
        self.record(SITE_BUDGET, f"budget of {site.name}: spent {budget.spent:.4f} of its max_epsilon "
                    f"{budget.max_epsilon:g}{each}, {budget.remaining:.4f} left; {fit}", node=site.node_id,
                    site=site.name, epsilon_spent=budget.spent, max_epsilon=budget.max_epsilon,
                    max_epsilon_per_request=per_request, epsilon_cap=plan.cap, rounds_fit=plan.rounds_fit,
                    rounds=rounds)

    def collect_marginals(self, grid: Grid) -> Marginals:
        """Round 0: each planned site's noisy tables and votes, at the noise its own budget
        allows, then the tables of the pairs the sites chose together (:meth:`_collect_pair_tables`).

        Its progress is saved twice (planned, then with the first releases in): a coordinator
        restarted within round 0 asks the same queries again and each site answers from its
        store, where planning again would ask new ones that every site charges again."""
        settings, run = self.settings, self.run
        progress = run.round_zero
        if progress is None:
            self.check_run()
            self.record(RUN_CONFIGURED, settings=settings.public_dict(), schema=self.schema.name)
            progress = run.round_zero = RoundZeroProgress(self.plan_budgets(grid))
            self._save(None)
        else:
            self.wait_for_sites(grid)
        queries = progress.queries
        if progress.first_releases is None:
            # At least the whole round 0's noise: a voting site charges its first release at more (its
            # pair tables are the second), a site on a PRV ledger votes none and charges exactly that.
            progress.first_releases = self._ask_round_zero(
                grid, queries, protocol.QUERY_MARGINALS, protocol.MARGINALS,
                {c.name: table_shape(self.schema, c) for c in self.schema.columns})
            self._require_quorum(len(progress.first_releases), 0)
            self._save(None)
        # Each site's tables carry the noise std of the release asked of it, never the site's word on it.
        parts = {node: received_marginals(arrays, self.schema, queries[node].noise_multiplier,
                                          queries[node].pairs_share)
                 for node, arrays in progress.first_releases.items()}
        # In node-id order, never the replies' order: the sums, and the release, are the same however they came.
        parts = dict(sorted(self._collect_pair_tables(grid, queries, parts).items()))
        total, per_site = federation_tables(self.schema, list(parts.values()), settings.marginals_noise_floor)
        run.marginals = total
        run.site_marginals = dict(zip(parts, pooled_pair_tables(self.schema, per_site)))
        # Public slots for the sites that answered validly, in node-id order.
        run.slots = {node: slot for slot, node in enumerate(sorted(run.site_marginals))}
        run.round_zero = None
        self._save(0)
        return total

    def _ask_round_zero(self, grid: Grid, queries: dict[int, Any], message_type: str, payload: str,
                        shapes: dict[str, tuple[int, ...]]) -> dict[int, dict[str, np.ndarray]]:
        """Send each site its round-0 query (either release), screen the replies (each charged
        at least the query's noise multiplier, float64 arrays of ``shapes``) and return each
        valid reply's arrays by node."""
        replies = self._exchange(grid, [Message(RecordDict({protocol.CONFIG: query.to_record()}), dst_node_id=node,
                                                message_type=message_type, group_id="0")
                                        for node, query in queries.items()], 0)
        valid = self.screen.valid(replies, 0, payload,
                                  lambda site: marginals_event(queries[site.node_id].noise_multiplier),
                                  {name: (shape, np.dtype(np.float64)) for name, shape in shapes.items()})
        answered = {id(reply): site.node_id for site, reply in replies}
        return {answered[id(r)]: dict(protocol.from_array_record(r.content.array_records[payload])) for r in valid}

    def _collect_pair_tables(self, grid: Grid, queries: dict[int, protocol.MarginalsQuery],
                             parts: dict[int, Marginals]) -> dict[int, Marginals]:
        """Round 0's second release (:mod:`fedsyn.privacy.pairs`): the pairs most sites voted
        for, as many as the federation's noisy total affords, numeric columns grouped at the
        quantiles of the summed noisy tables; each voting site measures them all. A site that
        fails here keeps its first release (the pooled tables reach it all the same,
        :func:`~fedsyn.model.raking.pooled_pair_tables`). Returns ``parts`` with each answering
        site's pair tables and the groups' bounds. Everything chosen is post-processing of the
        sites' DP outputs."""
        voters = {node: part for node, part in parts.items() if part.votes}
        if not voters:  # only the outcome tables: nothing else was asked of the first release
            return _outcome_tables_only(parts)
        splits = {node: RoundZeroSplit(queries[node].noise_multiplier, queries[node].pairs_share) for node in voters}
        summed = summed_tables(self.schema, list(parts.values()), 0.0)
        measured = measured_columns(self.schema)
        voting = summed_tables(self.schema, list(voters.values()), 0.0).total()  # the rows the pair tables count
        count = affordable_pairs(voting, [split.pair_tables for split in splits.values()], len(measured))
        study = asked_pairs(self.schema, self.settings.pairs_asked, self.settings.site_column)
        if len(study) > count:
            log.warning("%d pairs asked, and the sites' noisy totals afford %d pair table(s) at the noise a table is "
                        "worth measuring at: all are measured, each with more noise (it grows with the square root "
                        "of the number of tables); ask fewer pairs or a larger epsilon", len(study), count)
        chosen = chosen_pairs(study, [part.ranked_votes() for part in voters.values()], count,
                              self.settings.site_column)
        bounds = {c.name: group_bounds(c, summed) for c in measured if not c.is_categorical
                  and any(c.name in pair for pair in chosen)}
        self.record(PAIRS_CHOSEN, pairs=[list(pair) for pair in chosen], voters=len(voters))
        if not chosen:  # every vote named the site column: nothing to measure (a query of no pairs is malformed)
            return _outcome_tables_only(parts)
        fingerprint = protocol.schema_fingerprint(self.schema)
        asked = {node: protocol.PairTablesQuery(splits[node].pair_tables, queries[node].epsilon, fingerprint,
                                                tuple(chosen), {name: tuple(values.tolist())
                                                                for name, values in bounds.items()}, self.run.run_id)
                 for node in voters}
        tables = self._ask_round_zero(grid, asked, protocol.QUERY_PAIR_TABLES, protocol.PAIR_TABLES,
                                      {pair_key(pair): pair_shape(self.schema, pair) for pair in chosen})
        return {node: Marginals({**part.tables, **tables.get(node, {}), **bounds_arrays(chosen, bounds)},
                                cell_std=part.cell_std) for node, part in parts.items()}

    def train(self, grid: Grid, on_round: RoundCallback | None = None) -> GANTrainer:
        settings, run = self.settings, self.run
        if run.marginals is None:
            raise ConfigurationError("no marginals yet: run collect_marginals() before train()")
        # The global model's initialisation and the release's sampling: public randomness of its own.
        gan_config = settings.gan_config
        if settings.site_conditional:
            gan_config = replace(gan_config, site_slots=len(run.slots))
        trainer = GANTrainer(TableEncoder(self.schema, run.marginals), gan_config,
                             rng=torch_generator(settings.seed, "coordinator", run.completed_round or 0))
        if self._restored_model is not None:
            model, sampler = self._restored_model
            trainer.load_state_arrays(model)
            trainer.load_sampler_arrays(sampler)
        per_slot = [run.site_marginals[node] for node in sorted(run.slots, key=run.slots.__getitem__)]
        if gan_config.site_slots:
            trainer.set_release_slots([m.total() for m in per_slot], per_slot, settings.site_column,
                                      run.marginals.cell_std)
        if self._restored_model is None and settings.table_steps:
            trainer.fit_tables(settings.table_steps)
            self.record(GENERATOR_FITTED_TO_TABLES, steps=settings.table_steps)
        self.trainer = trainer
        if self._restored_model is None:
            # The model round 1 asks of the sites is saved before it is sent: a run resumed before
            # round 1 was aggregated asks it again, and a site that answered replays its stored answer.
            # Drawn afresh instead (an unseeded coordinator's new weights), the request was a new one
            # and every site paid round 1 twice (helper-98 H1).
            self._save(run.completed_round or 0)
        shapes = {k: (v.shape, v.dtype) for k, v in trainer.state_arrays().items()}
        wire_shapes = {k: (shape, np.dtype(settings.transport_dtype)) for k, (shape, _) in shapes.items()}
        slot_marginals = protocol.slot_marginals_record([m.arrays for m in per_slot])

        def node_config(node: int) -> dict[str, int | float]:
            """The site's own part of the instructions: its epsilon cap and, with site slots, its slot."""
            own: dict[str, int | float] = {"epsilon": run.sites[node].cap}
            if gan_config.site_slots:
                own[protocol.SITE_SLOT] = run.slots[node]
            return own

        self.strategy = build_strategy(
            protocol.to_array_record(run.marginals.tables),
            lambda: self._ready(bool(gan_config.site_slots)),
            node_config, len(run.sites), settings.delta, settings.site_noise_multiplier, settings.site_clipping_norm,
            settings.aggregation, slot_marginals)
        instructions = protocol.TrainInstructions(
            round=1, total_rounds=settings.rounds, local_steps=settings.local_steps,
            sample_rate=settings.sample_rate, epsilon=settings.epsilon,  # each site's cap replaces it (node_config)
            noise_multiplier=settings.noise_multiplier, gan_config=gan_config,
            schema_sha256=protocol.schema_fingerprint(self.schema), transport_dtype=settings.transport_dtype,
            run_id=run.run_id)
        # Sites may add noise but never less than asked; with none asked they calibrate their own.
        least_noise = settings.noise_multiplier or np.finfo(float).tiny
        expected = PrivacyEvent(DP_SGD, least_noise, settings.sample_rate, settings.local_steps)
        for round_ in range((run.completed_round or 0) + 1, settings.rounds + 1):
            started = time.monotonic()
            self._retire_finished_sites(round_)
            ready = len(self._ready(bool(gan_config.site_slots)))
            if ready < settings.min_sites and (run.rounds or not ready):
                # Sites whose planned rounds are done (or that refused) leave fewer than the quorum:
                # asking the rest would fail it and leave the trained rounds without a release.
                self.record(TRAINING_STOPPED, f"{ready} site(s) can train round {round_}, fewer than min-sites "
                            f"{settings.min_sites}: training stops after round {round_ - 1} of {settings.rounds}, "
                            "and the release uses what was trained", round=round_ - 1, rounds=settings.rounds,
                            sites_ready=ready)
                break
            current = trainer.state_arrays()
            messages = list(self.strategy.configure_train(
                round_, protocol.to_array_record(current), replace(instructions, round=round_).to_record(), grid))
            self.record(ROUND_STARTED, round=round_, sites=len(messages))
            replies = self._exchange(grid, messages, round_)
            valid = self.screen.valid(replies, round_, protocol.ARRAYS, lambda _: expected, wire_shapes, current)
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
            run.rounds.append(summary)
            misfit_field: dict[str, object] = {} if misfit is None else {"misfit": round(misfit, 4)}
            self.record(ROUND_FINISHED, None, round=round_, accepted=summary.accepted, dropped=summary.dropped,
                        **misfit_field)
            self._note_late_sites(grid, round_)
            self._save(round_)
            if on_round is not None:
                on_round(summary, run.sites)
        if run.release_choice is not None:
            choice = run.release_choice
            trainer.load_sampler_arrays(choice.sampler)
            self.record(RELEASE_MODEL_CHOSEN, round=choice.round, misfit=round(choice.misfit, 4))
        return trainer

    def _retire_finished_sites(self, round_: int) -> None:
        """Sites whose planned rounds are done are asked no more in this run (see
        :attr:`SiteStatus.rounds_planned`); each is said once."""
        for site in self.run.sites.values():
            if site.active and site.rounds_planned is not None and round_ > site.rounds_planned:
                site.active = False
                self.record(SITE_FINISHED, f"{site.name}: its budget for this run fits {site.rounds_planned} "
                            f"training round(s), and each has been asked of it: it is asked nothing more in this run",
                            node=site.node_id, site=site.name, rounds_planned=site.rounds_planned)

    def _note_late_sites(self, grid: Grid, round_: int) -> None:
        """A site that connected after the budget query was planned nothing, so it is not part of
        this run (it is asked nothing and charged nothing); the operator hears so, once per site,
        instead of wondering why it never trains. Said as a round ends, before its state is
        saved, so a restarted coordinator does not say it again."""
        for node in sorted(set(grid.get_node_ids()) - set(self.run.sites) - self.run.late_nodes):
            self.run.late_nodes.add(node)
            self.record(SITE_JOINED_LATE, f"node {node} connected after this run's budget query (round 0): it "
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
        if self.run.release_choice is None or misfit < self.run.release_choice.misfit:
            self.run.release_choice = ReleaseChoice(round_, misfit, trainer.sampler_arrays())
        return misfit

    # -- saving and resuming ----------------------------------------------------------------

    def _save(self, round_: int | None) -> None:
        """Persist the run after ``round_`` (None: round 0 under way) atomically, vouched for in
        the audit log."""
        if round_ is not None:
            self.run.completed_round = round_
        if self.state_dir is None or (self.run.marginals is None and self.run.round_zero is None):
            return
        model = sampler = None
        if self.trainer is not None:
            model = dict(self.trainer.state_arrays())
            sampler = self.trainer.sampler_arrays()
        try:
            digest = save_state(self.state_dir, self.run.to_state(model, sampler))
        except (OSError, RuntimeError) as exc:  # a full disk gave Flower a 40-line traceback (helper-108 M8)
            if not failed_to_write(exc):
                raise
            how = ("free space, then `fedsyn server run --resume`: it goes on after the last round whose state was "
                   "saved, and each site answers a round it already ran from its store, at no cost"
                   if self.saved_state else "free space and run again (a new run charges every site again)")
            raise FederationError(f"the run's state could not be saved in {self.state_dir} ({type(exc).__name__}"
                                  f"{os_error_said(exc)}): is the disk full or read-only? {how}") from None
        self.saved_state = True
        self.record(SAVED, round=IN_ROUND_ZERO if round_ is None else round_,
                    path=str((self.state_dir / "state.pt").resolve()), sha256=digest)

    def restore(self, state: RunState) -> None:
        """Continue a saved run: same settings and schema, or nothing is resumed
        (:meth:`RunRecord.from_state`)."""
        self.run = RunRecord.from_state(state, self.schema, self.settings)
        self.saved_state = True  # the state it continues is this run's own
        entries = self._audit_entries()
        for node, round_ in unconfirmed_in_audit(entries, self.run.run_id):
            site = self.run.sites.get(node)
            if site is not None and round_ not in site.unconfirmed + site.charged_before_resume:
                site.charged_before_resume.append(round_)  # a charge of a round the state came before
        earlier = self._earlier_claims(entries)
        for site in self.run.sites.values():  # claims made after the state was saved: every reply is held to them
            site.claimed_epsilon = max(site.claimed_epsilon, earlier.get(site.name, 0.0))
        if state.model is not None and state.sampler is not None:
            self._restored_model = (state.model, state.sampler)

    def _ready(self, slotted: bool) -> list[int]:
        """The sites a training round asks: active (neither refused nor done with their planned
        rounds), planned for this run (they have an epsilon cap), and in a run with site slots
        (``slotted``) only those that released valid round-0 marginals (they hold a slot)."""
        return [site.node_id for site in self.run.sites.values()
                if site.active and site.epsilon_cap is not None
                and (not slotted or site.node_id in self.run.slots)]

    def site_level_privacy(self) -> dict[str, float | str] | None:
        """Flower's accountant's (epsilon, delta) for site-level DP, if it was switched on, with
        its :data:`SITE_LEVEL_SCOPE`: the figure covers the averaged training updates only, and
        read without it, it claimed a hospital-level guarantee the release does not have."""
        spent = getattr(self.strategy, "privacy_spent", lambda: None)()
        if spent is None:
            return None
        return {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases,
                "noise_multiplier": self.settings.site_noise_multiplier,
                "clipping_norm": self.settings.site_clipping_norm, "scope": SITE_LEVEL_SCOPE}


def _outcome_tables_only(parts: dict[int, Marginals]) -> dict[int, Marginals]:
    """Each site's first round-0 release without its votes: what a round 0 that measured no pair
    table leaves."""
    return {node: Marginals(part.tables, cell_std=part.cell_std) for node, part in parts.items()}
