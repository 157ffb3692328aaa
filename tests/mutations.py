"""The mutation catalogue: each privacy-relevant line of production code, how to break it, and
the tests that must then fail (run by ``pytest -m mutation``, tests/test_mutations.py).

This list is also the project's list of privacy-critical lines: ``python -m tests.mutations``
prints it as the table in tests/PRIVACY_CRITICAL.md (file, line, what breaking it means, the
tests that guard it), and tests/test_mutation_anchors.py, in the default suite, fails when an
anchor no longer occurs exactly once in the tree or the table is stale, so a refactor cannot
silently disarm a mutation.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "tests" / "PRIVACY_CRITICAL.md"
# What a mutation puts where a function reads released tables: the site's exact counts of its rows.
EXACT_COUNTS = "__import__('fedsyn.privacy.marginals', fromlist=['x']).exact_counts(frame, schema)"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]

    def where(self) -> str:
        """The function (or class, or module) holding the anchor in the current tree: stable
        across edits elsewhere in the file, unlike a line number."""
        source = (ROOT / self.path).read_text()
        line = source[:source.index(self.original)].count("\n") + 1
        found = "(module)"

        def visit(node: ast.AST, prefix: str) -> None:
            nonlocal found
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if child.lineno <= line <= (child.end_lineno or child.lineno):
                        found = name
                    visit(child, f"{name}.")

        visit(ast.parse(source), "")
        return found


PRIVACY = "tests/test_privacy_paths.py::"
PAIRS = "tests/test_pairs.py::"
TOTAL = "tests/test_clipping_totality.py::"
RANDOM = "tests/test_randomness.py::"


MUTATIONS = [
    Mutation("noise halved inside the training step", "common/model/training.py",
             "noise_multiplier=noise_multiplier, max_grad_norm=self.config.max_grad_norm,",
             "noise_multiplier=noise_multiplier / 2, max_grad_norm=self.config.max_grad_norm,",
             (PRIVACY + "test_training_step_noise_has_the_accountants_std",)),
    Mutation("clipping disabled inside private_gradient", "common/privacy/dp_sgd.py",
             "summed = clipped_sum(module, loss_of_one, inputs, max_grad_norm, present)",
             "summed = clipped_sum(module, loss_of_one, inputs, 1e12, present)",
             (PRIVACY + "test_one_record_moves_the_training_step_by_at_most_the_clip_norm",)),
    Mutation("fixed-size shuffled batches instead of Poisson sampling", "common/model/training.py",
             "picks = poisson_sample(data.shape[0], sample_rate, mechanism_rng, self.device)",
             "picks = torch.randperm(data.shape[0], generator=rng)[:round(sample_rate * data.shape[0])]",
             (PRIVACY + "test_training_step_uses_poisson_batches",)),
    Mutation("gradient normalised by the private expected batch q*n", "common/model/training.py",
             "normaliser = float(expected_batch or self.config.batch_size)",
             "normaliser = sample_rate * data.shape[0]",
             (PRIVACY + "test_nothing_in_the_step_depends_on_the_row_count",)),
    Mutation("the reported discriminator loss reads the real rows", "common/model/training.py",
             "return float(fake_loss.detach())",
             "return float(fake_loss.detach()) + float(F.softplus(-self.discriminator(data[:, :fake.shape[1]], "
             "self._slot_input(self.conditions.sample(data.shape[0], rng), slot))).mean())",
             (PRIVACY + "test_the_losses_a_training_reply_reports_read_no_record",)),
    Mutation("the site reports a loss its steps did not", "client/site.py",
             '"discriminator_fake_loss": float(np.mean([h.discriminator for h in history])),',
             '"discriminator_fake_loss": float(np.mean([h.discriminator for h in history])) '
             '+ float(len(frame)) * 1e-9,',
             (PRIVACY + "test_the_losses_a_training_reply_reports_read_no_record",)),
    Mutation("site normalises by its exact row count", "client/site.py",
             "request.sample_rate * local_marginals.total()", "request.sample_rate * len(frame)",
             (PRIVACY + "test_a_site_normalises_by_its_noisy_count_never_its_row_count",)),
    Mutation("site ledger charged after training instead of before", "client/site.py",
             "        position = self._charge(event, request.epsilon)  # before any step runs\n"
             "        stream = torch_generator(self.seed, self.ledger.stream_nonce, event.mechanism, position, "
             "device=trainer.device)\n"
             "        noise = mechanism_stream(self.seed, self.ledger.stream_nonce, event.mechanism, position)\n"
             "        history = trainer.train(data, request.local_steps, request.sample_rate, sigma, "
             "slot=request.site_slot,\n",
             "        stream = torch_generator(self.seed, self.ledger.stream_nonce, event.mechanism, 'late', "
             "device=trainer.device)\n"
             "        noise = mechanism_stream(self.seed, self.ledger.stream_nonce, event.mechanism, 'late')\n"
             "        history = trainer.train(data, request.local_steps, request.sample_rate, sigma, "
             "slot=request.site_slot,\n"
             "                                rng=stream, expected_batch=expected_batch, mechanism_rng=noise)\n"
             "        position = self._charge(event, request.epsilon)\n"
             "        _ = dict(\n",
             (PRIVACY + "test_the_ledger_is_charged_before_any_mechanism_runs",)),
    Mutation("single-site fit charged after training", "common/model/gan.py",
             "        if self.epsilon is not None and noise_multiplier is not None:\n"
             "            # Charged in full before the first step runs: a crash mid-training over-counts, never "
             "forgets.\n"
             "            ledger.charge(PrivacyEvent(DP_SGD, noise_multiplier, sample_rate, steps), self.epsilon)\n",
             "        trainer.train(data, steps, sample_rate, noise_multiplier, on_step)\n"
             "        if self.epsilon is not None and noise_multiplier is not None:\n"
             "            ledger.charge(PrivacyEvent(DP_SGD, noise_multiplier, sample_rate, steps), self.epsilon)\n",
             (PRIVACY + "test_single_site_fit_charges_before_its_first_step",)),
    Mutation("round 0 at any noise multiplier, charged, then failing in post-processing", "client/site.py",
             "if not (is_noise_multiplier(noise_multiplier) and is_budget(epsilon)",
             "if not (is_budget(noise_multiplier) and is_budget(epsilon)",
             (PRIVACY + "test_a_noise_multiplier_beyond_the_cap_is_refused_as_malformed_before_any_charge",)),
    Mutation("marginals noise cut to a quarter", "common/privacy/marginals.py",
             "return RoundZeroSplit(noise_multiplier, share).tables * math.sqrt(max(weight, 1.0))",
             "return RoundZeroSplit(noise_multiplier, share).tables * math.sqrt(max(weight, 1.0)) / 4",
             (PRIVACY + "test_marginals_noise_through_the_site_has_std_sigma_times_sensitivity",)),
    Mutation("marginals sensitivity 1 instead of sqrt(#tables)", "common/privacy/marginals.py",
             "return RoundZeroSplit(noise_multiplier, share).tables * math.sqrt(max(weight, 1.0))",
             "return RoundZeroSplit(noise_multiplier, share).tables",
             (PRIVACY + "test_marginals_noise_through_the_site_has_std_sigma_times_sensitivity",)),
    Mutation("marginals sensitivity under-counts one table", "common/privacy/marginals.py",
             "return RoundZeroSplit(noise_multiplier, share).tables * math.sqrt(max(weight, 1.0))",
             "return RoundZeroSplit(noise_multiplier, share).tables * math.sqrt(max(weight - 1, 1.0))",
             (PRIVACY + "test_marginals_noise_through_the_site_has_std_sigma_times_sensitivity",)),
    Mutation("a numeric column's runs measured without noise", "common/privacy/marginals.py",
             "measured_runs = gaussian_counts(counts, RUN_NOISE * std, rng)", "measured_runs = counts",
             (PRIVACY + "test_marginals_noise_through_the_site_has_std_sigma_times_sensitivity",
              PRIVACY + "test_each_table_of_runs_is_drawn_at_run_noise_times_the_cell_std")),
    Mutation("a numeric column's runs at a cell's noise, priced at RUN_NOISE times it", "common/privacy/marginals.py",
             "measured_runs = gaussian_counts(counts, RUN_NOISE * std, rng)",
             "measured_runs = gaussian_counts(counts, std, rng)",
             (PRIVACY + "test_marginals_noise_through_the_site_has_std_sigma_times_sensitivity",
              PRIVACY + "test_each_table_of_runs_is_drawn_at_run_noise_times_the_cell_std")),
    Mutation("a numeric column's bins folded with its runs off the noise grid", "common/privacy/marginals.py",
             "tables[name] = on_noise_grid(with_run_sums(tables[name], measured_runs, runs), std)",
             "tables[name] = with_run_sums(tables[name], measured_runs, runs)",
             (PRIVACY + "test_released_counts_lie_on_a_grid_of_their_noise_not_on_raw_floating_point_sums",)),
    Mutation("a numeric column's exact bins folded with its runs", "common/privacy/marginals.py",
             "tables[name] = on_noise_grid(with_run_sums(tables[name], measured_runs, runs), std)",
             "tables[name] = on_noise_grid(with_run_sums(exact.tables[name], measured_runs, runs), std)",
             (PRIVACY + "test_marginals_noise_through_the_site_has_std_sigma_times_sensitivity",)),
    Mutation("the runs' tables left out of the release's sensitivity", "common/privacy/marginals.py",
             "return len(measured_columns(schema)) + len(run_measured_columns(schema)) / RUN_NOISE ** 2",
             "return len(measured_columns(schema))",
             (PRIVACY + "test_marginals_noise_through_the_site_has_std_sigma_times_sensitivity",
              PRIVACY + "test_the_marginals_sensitivity_is_what_one_record_moves")),
    Mutation("outcome tables keep the whole multiplier beside pair tables", "common/privacy/marginals.py",
             "    share = pairs_share if weight >= 2 else 0.0\n", "    share = 0.0\n",
             (PAIRS + "test_round_zero_through_the_site_draws_each_part_at_its_noise",)),
    Mutation("pair tables' noise without sqrt(#pairs)", "common/privacy/pairs.py",
             "std = multiplier * math.sqrt(len(pairs))", "std = multiplier",
             (PAIRS + "test_round_zero_through_the_site_draws_each_part_at_its_noise",)),
    Mutation("pair groups' bounds read off exact counts", "common/privacy/pairs.py",
             "    bounds = own_group_bounds(columns, outcome_tables)\n",
             f"    bounds = own_group_bounds(columns, {EXACT_COUNTS})\n",
             (PAIRS + "test_what_round_zero_adds_besides_the_tables_follows_from_the_released_tables_alone",)),
    Mutation("number of votes from the exact row count", "common/privacy/marginals.py",
             "count = vote_count(outcome_tables.total(), split.pair_tables, len(measured), sites)",
             "count = vote_count(float(len(frame)), split.pair_tables, len(measured), sites)",
             (PAIRS + "test_what_round_zero_adds_besides_the_tables_follows_from_the_released_tables_alone",)),
    Mutation("number of a lone site's pairs from the exact row count", "common/privacy/pairs.py",
             "count = affordable_pairs(outcome_tables.total(), [split.pair_tables], len(columns))",
             "count = affordable_pairs(float(len(frame)), [split.pair_tables], len(columns))",
             (PAIRS + "test_what_round_zero_adds_besides_the_tables_follows_from_the_released_tables_alone",)),
    Mutation("first round-0 release charged without the votes' part", "common/privacy/pairs.py",
             "return self.noise_multiplier / math.sqrt(1.0 - self.pairs_share * (1.0 - SELECTION_PART))",
             "return self.noise_multiplier / math.sqrt(1.0 - self.pairs_share)",
             (PAIRS + "test_the_parts_of_round_zero_cost_exactly_one_gaussian",)),
    Mutation("pair tables' multiplier forgets the picks' part", "common/privacy/pairs.py",
             "return self.noise_multiplier / math.sqrt(self.pairs_share * (1.0 - SELECTION_PART))",
             "return self.noise_multiplier / math.sqrt(self.pairs_share)",
             (PAIRS + "test_the_parts_of_round_zero_cost_exactly_one_gaussian",)),
    Mutation("pair picks without the exponential mechanism's noise", "common/privacy/pairs.py",
             "+ rng.gumbel(0.0, 2.0 * SCORE_SENSITIVITY / epsilon,",
             "+ 0.0 * rng.gumbel(0.0, 2.0 * SCORE_SENSITIVITY / epsilon,",
             (PAIRS + "test_the_picks_are_random_as_the_exponential_mechanism_draws_them",)),
    Mutation("pair scores' sensitivity under-stated", "common/privacy/pairs.py",
             "SCORE_SENSITIVITY = 2.0", "SCORE_SENSITIVITY = 1.5",
             (PAIRS + "test_one_record_moves_a_misfit_score_by_at_most_its_sensitivity",)),
    Mutation("pair picks scored against a model of exact counts", "common/privacy/pairs.py",
             "model, forest = OutcomeModel(columns, outcome_tables, groups), Forest()",
             f"model, forest = OutcomeModel(columns, {EXACT_COUNTS}, groups), Forest()",
             (PAIRS + "test_the_picks_score_pairs_against_released_outputs_only",)),
    Mutation("a site measures whatever pairs and groups a coordinator names", "client/site.py",
             "            check_pair_request(self.schema, list(query.pairs), bounds)\n",
             "            pass\n",
             (PAIRS + "test_the_pair_tables_asked_are_checked_before_any_charge_and_answered_again_for_free",)),
    Mutation("a lost second round-0 release leaves the site's claim marked current", "server/record.py",
             "return any(r >= max(self.rounds_accepted, default=-1) for r in self.unconfirmed)",
             "return any(r > max(self.rounds_accepted, default=-1) for r in self.unconfirmed)",
             (PAIRS + "test_a_lost_second_release_marks_the_sites_claim_as_outdated",)),
    Mutation("a rejected reply leaves the site's claim marked current", "server/screening.py",
             'self.drop(site, round_, f"invalid reply: {exc}", stage=stage, possibly_charged=True)',
             'self.drop(site, round_, f"invalid reply: {exc}", stage=stage, possibly_charged=False)',
             ("tests/test_federation.py::"
              "test_a_site_charged_whose_reply_is_rejected_is_reported_at_least_at_its_ledger",)),
    Mutation("a site claiming less than it claimed before is accepted", "server/screening.py",
             "    if said >= earlier - CLAIM_TOLERANCE:",
             "    if True:",
             ("tests/test_resume.py::"
              "test_a_site_whose_ledger_went_back_between_a_crash_and_the_resume_is_refused",
              "tests/test_operator_budget.py::"
              "test_a_site_whose_ledger_went_back_since_an_earlier_run_is_asked_nothing")),
    Mutation("a site's claim of a NaN or negative ledger is taken into the report", "common/federation/protocol.py",
             "        if not (math.isfinite(claimed) and claimed >= 0):",
             "        if False:",
             ("tests/test_hostile_input.py::test_a_site_claim_of_no_usable_epsilon_is_a_reply_error",)),
    Mutation("a site takes the coordinator's count of sites unchecked", "client/site.py",
             "and isinstance(sites, int) and 1 <= sites <= MAX_SITES):", "and True):",
             (PAIRS + "test_a_pairs_share_too_small_to_pay_for_its_picks_is_refused_before_any_charge",)),
    Mutation("the pair tables asked again are charged again", "client/site.py",
             "        replayed = self._replayed(run_id, 0, digest, stage)\n",
             "        replayed = None\n",
             (PAIRS + "test_the_pair_tables_asked_are_checked_before_any_charge_and_answered_again_for_free",)),
    Mutation("a PRV site measures pairs", "client/site.py",
             "pairs_share = pairs_share if pairs_allowed(self.ledger.accountant) else 0.0",
             "pairs_share = pairs_share",
             (PAIRS + "test_a_prv_ledger_measures_no_pairs",)),
    Mutation("privacy-event decoding accepts undeclared fields", "common/federation/protocol.py",
             "    if unknown:\n        raise ReplyError", "    if False:\n        raise ReplyError",
             ("tests/test_hostile_input.py::test_privacy_event_with_an_undeclared_field_is_rejected",
              "tests/test_hostile_input.py::test_coordinator_decoding_of_privacy_events_only_raises_reply_errors")),
    Mutation("ledger's NaN-budget check removed", "common/privacy/accounting.py",
             "if not is_budget(budget):  # NaN", "if False:  # NaN",
             ("tests/test_accounting.py::test_nan_budget_or_parameters_are_refused_not_silently_passed",)),
    Mutation("site's NaN-epsilon check removed", "common/federation/protocol.py",
             "        if not is_budget(self.epsilon):\n            raise ReplyError(f\"epsilon=",
             "        if False:\n            raise ReplyError(f\"epsilon=",
             ("tests/test_hostile_input.py::test_site_decoding_of_coordinator_instructions_refuses_cleanly",)),
    Mutation("seeded site reuses one training stream every round", "client/site.py",
             "mechanism_stream(self.seed, self.ledger.stream_nonce, event.mechanism, position)",
             "mechanism_stream(self.seed, self.ledger.stream_nonce, event.mechanism, 0)",
             (PRIVACY + "test_a_seeded_site_never_reuses_noise_or_batches",)),
    Mutation("DP-SGD noise seeded from the PyTorch stream's seed (32 bits kept)", "client/site.py",
             "noise = mechanism_stream(self.seed, self.ledger.stream_nonce, event.mechanism, position)",
             "noise = __import__('numpy').random.default_rng(stream.initial_seed() & 0xFFFFFFFF)",
             (PRIVACY + "test_a_sites_dp_sgd_noise_has_128_bits_of_entropy",)),
    Mutation("Poisson sample joins below the rate itself, not its grid point", "common/privacy/dp_sgd.py",
             "mask = generator.random(n_rows) < inclusion_threshold(sample_rate)",
             "mask = generator.random(n_rows) < sample_rate",
             ("tests/test_dp_sgd.py::test_a_record_joins_with_at_most_the_charged_sample_rate",)),
    Mutation("DP noise drawn from a fresh stream, not the mechanism's", "common/privacy/dp_sgd.py",
             "stream = generator if generator is not None else np.random.default_rng()",
             "stream = np.random.default_rng()",
             ("tests/test_dp_sgd.py::test_the_sample_and_the_noise_come_from_the_mechanism_stream",)),
    Mutation("seeded site reuses one marginals stream", "client/site.py",
             "numpy_generator(self.seed, self.ledger.stream_nonce, event.mechanism, position)",
             "numpy_generator(self.seed, self.ledger.stream_nonce, event.mechanism, 0)",
             (PRIVACY + "test_a_seeded_site_never_reuses_noise_or_batches",)),
    Mutation("ledger not re-read under its lock", "common/privacy/accounting.py",
             "            self.events, self.protects = current.events, current.protects\n",
             "            self.protects = current.protects\n",
             ("tests/test_accounting.py::test_two_ledger_handles_compose_in_the_file_and_cannot_exceed_the_budget",
              PRIVACY + "test_two_sites_on_one_policy_share_one_budget")),
    Mutation("a charge writes though its lock was deleted under it", "common/privacy/accounting.py",
             "            self.check(event, budget, request_cap)\n            still_locked()\n",
             "            self.check(event, budget, request_cap)\n",
             ("tests/test_accounting.py::test_a_lock_file_deleted_while_a_charge_holds_it_loses_no_charge",)),
    Mutation("the trail's charges are not counted, only the ledger size they recorded", "client/site.py",
             "    return max(highest, charges)\n", "    return highest\n",
             (PRIVACY + "test_two_charges_that_read_the_same_ledger_are_both_counted_from_the_trail",)),
    Mutation("a stored answer is replayed whatever ledger it was charged to", "client/replies.py",
             "                        or (meta.get(\"ledger\") or {}).get(\"nonce\") != nonce):\n",
             "                        ):\n",
             ("tests/test_resume.py::test_a_reset_ledger_is_not_answered_with_the_earlier_cohorts_stored_tables",)),
    Mutation("missing ledger silently restarts at epsilon 0", "common/privacy/accounting.py",
             "        if not path.exists():\n            raise LedgerError(\n",
             "        if not path.exists():\n            return cls(delta, accountant, path=path)\n"
             "            raise LedgerError(\n",
             ("tests/test_accounting.py::test_missing_or_corrupt_ledger_is_refused_never_restarted_at_zero",
              PRIVACY + "test_a_deleted_or_reset_ledger_is_refused")),
    Mutation("ledger not cross-checked against the audit trail", "client/site.py",
             "if len(self.ledger.events) < recorded:", "if False:",
             (PRIVACY + "test_a_deleted_or_reset_ledger_is_refused",)),
    Mutation("a round-0 answer naming no run is not stored", "client/site.py",
             "        self.replies.put(run_id, 0, digest, arrays, {}, event, "
             "(self.ledger.stream_nonce, position), stage)",
             "        if run_id: self.replies.put(run_id, 0, digest, arrays, {}, event, "
             "(self.ledger.stream_nonce, position), stage)",
             (PRIVACY + "test_a_ledger_and_trail_restored_from_an_older_backup_are_refused",)),
    Mutation("a training answer naming no run is not stored", "client/site.py",
             "        self.replies.put(request.run_id, request.round, digest, updated, metrics, event,",
             "        if request.run_id: self.replies.put(request.run_id, request.round, digest, updated, metrics, "
             "event,",
             (PRIVACY + "test_a_ledger_and_trail_restored_from_an_older_backup_are_refused",)),
    Mutation("a padded sample's empty slots count as records", "common/privacy/dp_sgd.py",
             "finite = _finite_rows([*activations, *output_grads], batch) & _present(present, batch, inputs[0].device)",
             "finite = _finite_rows([*activations, *output_grads], batch)",
             (PRIVACY + "test_a_padded_samples_empty_slots_contribute_nothing",)),
    Mutation("a site with max_rows samples over its own rows", "client/site.py",
             "data = padded(torch.as_tensor(trainer.encoder.encode(frame), device=trainer.device), "
             + "self.policy.max_rows)",
             "data = padded(torch.as_tensor(trainer.encoder.encode(frame), device=trainer.device), None)",
             (PRIVACY + "test_with_max_rows_a_rounds_work_does_not_depend_on_the_row_count",)),
    Mutation("a ledger restored from an older backup is taken", "client/site.py",
             "        if len(self.ledger.events) < proven:", "        if False:",
             (PRIVACY + "test_a_ledger_and_trail_restored_from_an_older_backup_are_refused",)),
    Mutation("extract validated only after the charge", "client/site.py",
             "        self._check_affordable(event, request.epsilon)\n        self._check_room(",
             "        self._charge(PrivacyEvent('dp-sgd', sigma, request.sample_rate, 1), request.epsilon)\n"
             "        self._check_room(",
             (PRIVACY + "test_refusals_charge_nothing_and_say_nothing_private",)),
    Mutation("the disk check's threshold set by the request's answer", "client/site.py",
             "        if free < reserve:\n",
             "        if free < 2 * answer_bytes + 2**24:\n",
             (PRIVACY + "test_a_site_short_of_its_disk_reserve_refuses_uncharged_at_a_fixed_threshold",)),
    Mutation("arrays the networks ignore accepted in the global model", "common/model/training.py",
             "        if stray:\n            raise ValueError(",
             "        if False:\n            raise ValueError(",
             (PRIVACY + "test_a_site_short_of_its_disk_reserve_refuses_uncharged_at_a_fixed_threshold",)),
    Mutation("a global model's weights checked finite only in the dtype they came in", "common/model/training.py",
             "                if key in dtypes and value.dtype != dtypes[key]:\n",
             "                if False:\n",
             (PRIVACY + "test_a_global_model_that_would_be_infinite_at_the_site_is_refused_before_any_charge",)),
    Mutation("released counts keep the raw float64 sum's low bits", "common/privacy/randomness.py",
             "    return np.asarray(np.round(noisy / step) * step, dtype=float) if step > 0 else noisy",
             "    return noisy",
             (PRIVACY + "test_released_counts_lie_on_a_grid_of_their_noise_not_on_raw_floating_point_sums",)),
    Mutation("a site joins with a row count a request would refuse", "client/ops/launch.py",
             "    if refusal is not None:  # before joining",
             "    if False:  # before joining",
             ("tests/test_out_of_domain.py::test_a_row_count_refusal_is_met_at_start_and_delta_is_checked_against_max_rows",)),
    Mutation("delta at exactly 1/n accepted", "common/privacy/budget.py",
             "    return 0 < delta < 1 / rows and delta * rows < 1",
             "    return 0 < delta <= 1 / rows and delta * rows <= 1",
             ("tests/test_out_of_domain.py::test_delta_at_exactly_one_over_the_rows_is_refused_by_the_site_and_the_policy",)),
    Mutation("an underflowing noise multiplier reaches Opacus's division", "common/privacy/accounting.py",
             "    if noise_multiplier < 1e-100:\n",
             "    if False:\n",
             ("tests/test_accounting.py::test_a_coordinators_extreme_noise_is_refused_at_once_under_either_accountant",)),
    Mutation("an unexpected failure's text goes into the reply", "client/app.py",
             'answer = (ErrorCode.SITE_FAILURE, "unexpected failure at the site")',
             'answer = (ErrorCode.SITE_FAILURE, f"unexpected failure at the site: {exc}")',
             ("tests/test_out_of_domain.py::"
              "test_an_unexpected_site_failure_is_located_in_the_sites_log_and_never_in_the_reply",)),
    Mutation("a run's App names are not held to its bundle's", "client/ops/clientapp_process.py",
             "            check_run_names(fab_file, *run.names)",
             "            pass  # check_run_names skipped",
             ("tests/test_app_pinning.py::test_a_run_naming_another_app_than_its_bundle_is_refused_before_install",)),
    Mutation("the launcher's install is not given the run's names", "client/ops/clientapp_process.py",
             "os.environ[POLICY_VARIABLE], flower_runtime.install_from_fab, run)",
             "os.environ[POLICY_VARIABLE], flower_runtime.install_from_fab, RunNames())",
             ("tests/test_app_pinning.py::"
              "test_the_sites_clientapp_process_wires_both_checks_and_never_installs_dependencies",)),
    Mutation("a bundle's version may leave the Flower home", "client/ops/trusted_app.py",
             "    return isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None",
             "    return isinstance(name, str)",
             ("tests/test_app_pinning.py::test_a_bundle_whose_names_would_leave_the_flower_home_is_refused",)),
    Mutation("a deployed site runs with a seed", "client/app.py",
             "    if problem is not None:\n        raise PolicyRefusal(problem)",
             "    if False:\n        raise PolicyRefusal(problem)",
             (PRIVACY + "test_a_deployed_site_refuses_to_run_with_a_seed",)),
    Mutation("a refusal's failed trail line escapes the ClientApp", "client/app.py",
             "    except Exception as exc:  # noqa: BLE001 - a read-only disk, a full one",
             "    except ValueError as exc:  # noqa: BLE001 - a read-only disk, a full one",
             (PRIVACY + "test_a_refusal_whose_trail_cannot_be_written_goes_out_as_itself_after_its_hold",)),
    Mutation("a refusal quotes the coordinator's text unbounded", "common/errors.py",
             '    return line if len(line) <= PUBLIC_TEXT_CHARS else line[:PUBLIC_TEXT_CHARS - 3] + "..."',
             "    return text",
             (PRIVACY + "test_a_coordinators_own_text_in_a_refusal_is_one_bounded_line_and_never_grows_the_trail",)),
    Mutation("each distinct refusal reason adds a trail line", "client/app.py",
             'since=CHARGED, same=("message_type", "code"),', "since=CHARGED,",
             (PRIVACY + "test_a_coordinators_own_text_in_a_refusal_is_one_bounded_line_and_never_grows_the_trail",)),
    Mutation("an exception text Flower sent kept as a site's reason", "server/screening.py",
             "                reason = protocol.kept_reason(reply.error.code, reply.error.reason)",
             "                reason = reply.error.reason or ''",
             ("tests/test_federation.py::test_an_exception_text_flower_sends_for_a_site_is_kept_as_a_fixed_reason",)),
    Mutation("an exception text Flower sent kept as a site's budget answer", "server/screening.py",
             "                self.drop(site, 0, protocol.kept_reason(reply.error.code, reply.error.reason),",
             "                self.drop(site, 0, reply.error.reason or '',",
             ("tests/test_federation.py::test_an_exception_text_flower_sends_for_a_site_is_kept_as_a_fixed_reason",)),
    Mutation("round 0 reads the rows before a budget refusal", "client/site.py",
             "        self._check_affordable(event, budget)  # before any row is read: see _check_affordable\n",
             "        self._private_rows()\n        self._check_affordable(event, budget)\n",
             (PRIVACY + "test_refusals_that_need_no_rows_read_none",)),
    Mutation("training reads the rows before checking the model", "client/site.py",
             "        sigma = self.plan_noise(request)\n",
             "        sigma = self.plan_noise(request)\n        self._private_rows()\n",
             (PRIVACY + "test_refusals_that_need_no_rows_read_none",)),
    Mutation("training reads the rows before checking the summed tables", "client/site.py",
             "                check_summed_tables(self.schema, marginals)\n", "                pass\n",
             (PRIVACY + "test_refusals_that_need_no_rows_read_none",)),
    Mutation("replies leave as soon as they are made", "client/app.py",
             "    if quantum <= 0:\n        return\n", "    return\n",
             (PRIVACY + "test_a_sites_replies_leave_on_its_time_quantum",)),
    Mutation("a site's per-request epsilon limit is never checked", "common/privacy/accounting.py",
             "        if request_cap is not None and not alone <= request_cap:\n",
             "        if False:\n",
             (PRIVACY + "test_a_site_lets_no_single_request_spend_more_than_its_policy_allows",)),
    Mutation("a reply is made before the hold (Flower stamps when it was made)", "client/app.py",
             "            if site is not None:\n"
             "                _hold_to_quantum(started, site.policy.reply_quantum_seconds, "
             "site.policy.ledger.parent)\n",
             "            early = Message(content=answer, reply_to=message) if isinstance(answer, RecordDict) "
             "else None\n"
             "            if site is not None:\n"
             "                _hold_to_quantum(started, site.policy.reply_quantum_seconds, "
             "site.policy.ledger.parent)\n"
             "            if early is not None:\n                return early\n",
             (PRIVACY + "test_a_sites_replies_leave_on_its_time_quantum",)),
    Mutation("refusal text quotes the exception", "client/site.py",
             "raise SiteRefusal(ErrorCode.DATA_INVALID, \"the site's extract does not pass validation against the \"",
             "raise SiteRefusal(ErrorCode.DATA_INVALID, str(exc) + \"\"",
             (PRIVACY + "test_error_replies_carry_a_code_and_public_text_only",)),
    Mutation("validation messages quote cell values", "common/data/validation.py",
             "int(mask.sum()), _examples(mask, numbering))",
             "int(mask.sum()), [repr(v) for v in series[mask].head(3)])",
             ("tests/test_private_output.py",)),
    Mutation("a headerless file's first record is printed as names", "common/data/validation.py",
             "        return []\n    return unmatched\n", "        pass\n    return unmatched\n",
             ("tests/test_validation_messages.py::test_a_headerless_first_record_of_words_and_empty_cells_is_not_printed",
              "tests/test_validation_messages.py::test_a_file_without_a_header_line_never_prints_its_first_record")),
    Mutation("real-data validation report signed into the release", "simulations/workflow.py",
             'local = private_folder(out / "local-report")', 'local = private_folder(out / "release")',
             ("tests/test_cli.py::test_simulate_writes_a_signed_release_with_report_and_passes_gan_options",)),
    Mutation("site-level DP allowed with median aggregation", "server/settings.py",
             'if self.aggregation != "mean":', "if False:",
             (PRIVACY + "test_invalid_federation_settings_are_refused_at_construction",)),
    Mutation("coordinator reports epsilon at its own delta", "server/record.py",
             "delta = site.delta if site.delta is not None else self.settings.delta",
             "delta = self.settings.delta",
             (PRIVACY + "test_privacy_report_states_each_sites_own_delta",)),
    Mutation("numeric grid left out of the schema fingerprint", "common/federation/protocol.py",
             'hashlib.sha256(f"{GRID_VERSION}\\n{canonical}".encode())', "hashlib.sha256(canonical.encode())",
             (PRIVACY + "test_a_coordinator_binning_numbers_differently_is_refused_before_any_charge",)),
    # The second audit (issue 19): clipping totality, randomness, limits, what a release holds.
    Mutation("ghost clipping lets a non-finite record through", "common/privacy/dp_sgd.py",
             "finite = _finite_rows([*activations, *output_grads], batch)",
             "finite = torch.ones(batch, dtype=torch.bool, device=inputs[0].device)",
             (TOTAL + "test_a_record_whose_pass_overflows_contributes_exactly_nothing",
              TOTAL + "test_an_overflow_trap_on_one_patient_gives_a_finite_reply_with_or_without_them")),
    Mutation("per-sample clipping lets a non-finite record through", "common/privacy/dp_sgd.py",
             "finite = _finite_rows(list(per_sample.values()), batch)",
             "finite = torch.ones(batch, dtype=torch.bool, device=next(iter(per_sample.values())).device)",
             (TOTAL + "test_a_record_whose_pass_overflows_contributes_exactly_nothing",)),
    Mutation("clip factors computed in float32 (subnormal)", "common/privacy/dp_sgd.py",
             "    norms = norms.double()\n", "    norms = norms.float()\n",
             (TOTAL + "test_one_records_clipped_gradient_never_exceeds_c",)),
    Mutation("site ignores its request limits", "client/site.py",
             "        if problems:\n            raise PolicyRefusal(f\"the request exceeds",
             "        if False:\n            raise PolicyRefusal(f\"the request exceeds",
             ("tests/test_site_limits.py",)),
    Mutation("a resumed run draws round 1's model afresh", "server/coordinator.py",
             "            self._save(run.completed_round or 0)\n", "            pass\n",
             ("tests/test_resume.py::test_a_run_resumed_before_round_one_was_aggregated_charges_no_site_twice",)),
    Mutation("client start never writes the launcher that checks the App", "cli/client.py",
             "before_start=launch.install)", "before_start=None)",
             ("tests/test_operator_processes.py::test_client_start_writes_the_launcher_before_the_supernode_starts",)),
    Mutation("a site admits any number of site slots", "client/policy.py",
             "        if config.site_slots > self.max_site_slots:", "        if False:",
             ("tests/test_site_limits.py::test_a_request_beyond_the_sites_limits_is_refused_before_any_charge",)),
    Mutation("simulate defaults to a seed", "cli/research.py",
             "operating-system entropy\")] = None,", "operating-system entropy\")] = 0,",
             (RANDOM + "test_simulations_are_unseeded_unless_asked",)),
    Mutation("sweep arms of a seeded simulation share streams", "simulations/run.py",
             "stream = (run_label, index)", 'stream = ("main", index)',
             (RANDOM + "test_sweep_arms_of_one_seeded_simulation_draw_independent_noise",)),
    Mutation("seeded simulations share one stream", "simulations/run.py",
             "stream_nonce=None if seed is None else fresh_nonce(stream_nonce),",
             "stream_nonce=None if seed is None else stream_nonce or 'simulation',",
             (RANDOM + "test_two_simulations_with_one_seed_draw_independent_noise",)),
    Mutation("every seeded simulate reuses one stream nonce", "simulations/request.py",
             "stream_nonce=None if request.seed is None else fresh_nonce(request.stream_nonce))",
             "stream_nonce=None if request.seed is None else request.stream_nonce or '0' * 32)",
             (RANDOM + "test_every_seeded_simulate_gets_a_fresh_stream_unless_it_repeats_one",)),
    Mutation("a seeded simulation's nonce does not reach its sites", "simulations/workflow.py",
             "                         stream_nonce=simulation.stream_nonce,\n", "",
             (RANDOM + "test_a_seeded_simulation_given_its_stream_nonce_repeats_its_release",)),
    Mutation("fresh nonces are not random", "common/privacy/randomness.py",
             "return secrets.token_hex(16)", "return 'f' * 32",
             (RANDOM + "test_two_simulations_with_one_seed_draw_independent_noise",
              RANDOM + "test_a_reset_ledger_never_replays_the_old_ledgers_noise")),
    Mutation("a made-up stream nonce is taken", "common/privacy/randomness.py",
             "    if not is_stream_nonce(given):", "    if False:",
             (RANDOM + "test_a_fit_refuses_a_made_up_stream_nonce",)),
    Mutation("a new ledger's nonce is not random", "common/privacy/accounting.py",
             "stream_nonce=fresh_nonce(stream_nonce))", "stream_nonce=stream_nonce or 'fixed')",
             (RANDOM + "test_a_reset_ledger_never_replays_the_old_ledgers_noise",)),
    Mutation("a repeated simulation's streams are not bound to its rows and settings", "simulations/run.py",
             "bound_to_inputs(plan.stream_nonce, rows_digest(table, schema), *inputs)",
             "bound_to_inputs(plan.stream_nonce, *inputs)",
             (RANDOM + "test_a_repeated_stream_on_other_rows_or_settings_draws_unrelated_noise",)),
    Mutation("a repeated simulation's streams are not bound to its budget", "simulations/run.py",
             "repr((epsilon, delta, min_noise_multiplier, out_of_domain)), *stream_inputs)",
             "*stream_inputs)",
             (RANDOM + "test_a_repeated_stream_on_other_rows_or_settings_draws_unrelated_noise",)),
    Mutation("a repeated simulation's streams are not bound to its settings", "simulations/workflow.py",
             "stream_inputs=(stream_inputs(settings),))", ")",
             (RANDOM + "test_a_simulations_settings_reach_its_sites_streams",)),
    Mutation("a repeated fit's streams are not bound to its rows and parameters", "common/model/gan.py",
             "key = bound_to_inputs(nonce, rows_digest(frame, self.schema), self.schema.model_dump_json(),\n"
             "                              repr(self._public_params()))", "key = nonce",
             (RANDOM + "test_a_repeated_fit_on_other_rows_or_another_budget_draws_unrelated_noise",)),
    Mutation("a seeded fit reuses one stream", "common/model/gan.py",
             "nonce = fresh_nonce(self.stream_nonce)", "nonce = self.stream_nonce or 'fit'",
             (RANDOM + "test_two_seeded_fits_never_share_noise_unless_repeated_with_the_nonce",)),
    Mutation("the release publishes the seed", "server/settings.py",
             'self.model_dump(mode="json", exclude={"seed"})', 'self.model_dump(mode="json")',
             ("tests/test_release_contents.py",)),
    Mutation("the release publishes round seconds", "server/release.py",
             'PUBLIC_ROUND_FIELDS = ("round", "accepted", "dropped", "generator_loss")',
             'PUBLIC_ROUND_FIELDS = ("round", "accepted", "dropped", "generator_loss", "seconds")',
             ("tests/test_release_contents.py",)),
    Mutation("one out-of-domain record makes the site refuse", "client/policy.py",
             'default="drop", description="records with a value', 'default="refuse", description="records with a value',
             ("tests/test_out_of_domain.py::test_by_default_a_dirty_record_is_as_if_absent",)),
    Mutation("round 0 charged without proving the extract encodes", "client/site.py",
             "        self._check_encodable(frame)\n        position = self._charge(event, budget)",
             "        position = self._charge(event, budget)",
             ("tests/test_out_of_domain.py::test_an_extract_the_site_cannot_encode_is_refused_before_round_zero_is_charged",)),
    Mutation("a non-finite update is sent", "client/site.py",
             "        if not all(np.isfinite(v).all() for v in updated.values()) or not all(",
             "        if False and not all(np.isfinite(v).all() for v in updated.values()) or not all(",
             ("tests/test_adversary_coordinator.py::"
              "test_a_model_that_overflows_on_generated_rows_gets_a_finite_reply_or_a_refusal",)),
    Mutation("the clipped sum rounded to float32 before the noise", "common/privacy/dp_sgd.py",
             'summed[prefix + "weight"] = weighted.T @ activation',
             'summed[prefix + "weight"] = (weighted.T @ activation).float()',
             ("tests/test_adversary_coordinator.py::test_a_subnormal_clipping_norm_still_bounds_one_record",)),
    Mutation("the dashboard answers any Host", "server/ops/dashboard.py",
             "if host_allowed(request.headers.get(\"host\", \"\"), hosts):", "if True:",
             ("tests/test_dashboard.py::test_only_requests_addressed_to_the_view_are_answered",)),
    # Session 32: a newcomer's note with a record number in a draft; the ninth review's seed.
    Mutation("a draft writes a level one patient holds", "common/data/draft.py",
             "if rows >= RARE_LEVEL_ROWS),", "if rows >= 1),",
             ("tests/test_schema_and_validation.py::"
              "test_a_draft_writes_no_level_held_by_few_rows_and_no_date_as_a_number",
              "tests/test_cli_commands.py::test_schema_draft_says_which_columns_lost_rare_levels_and_which_carry_a_unit")),
    Mutation("a column the schema does not list reaches the mechanisms", "common/data/validation.py",
             "    frame = schema_columns(frame, schema)\n", "",
             ("tests/test_schema_and_validation.py::"
              "test_validation_reports_missing_columns_and_notes_the_ones_it_leaves_out",)),
    Mutation("a seeded simulation's coordinator stream comes from the seed alone", "simulations/run.py",
             "    settings = plan.coordinator_settings(settings)\n", "",
             ("tests/test_randomness.py::test_the_coordinators_stream_comes_from_the_seed_and_the_stream_nonce",)),
    Mutation("a validation hint the site logs counts some of a column's bad cells", "common/data/validation.py",
             'return "" if hinted.all() else " (some of them)"',
             'return "" if hinted.all() else f" ({int(hinted.sum())} of them)"',
             ("tests/test_out_of_domain.py::test_a_hint_on_some_of_a_columns_bad_cells_logs_no_count",)),
    # Session 43: helper-108 M3, a charge the ledger held and the trail did not.
    Mutation("a charge is made though the audit trail cannot take its entry", "client/site.py",
             '        with self.policy.audit_trail.open("a"):\n            pass\n', "",
             (PRIVACY + "test_a_site_whose_audit_trail_cannot_be_written_charges_nothing",)),
    # Session 43: helper-109 H1, one clamped record kept records with text cells it did not touch.
    Mutation("clamping writes back the whole parsed column", "common/data/validation.py",
             "frame[column.name] = frame[column.name].astype(object).where(~changed, clipped)",
             "frame[column.name] = numeric.where(~changed, clipped) if changed.any() else frame[column.name]",
             ("tests/test_out_of_domain.py::test_no_cell_in_any_column_changes_how_the_other_records_are_read",)),
    # Session 43: helper-106 F1, one text cell changed how a column's other cells were read.
    Mutation("a number marker matches a text cell by its spelling only", "common/data/schema.py",
             "            if numbers:\n                marked |=", "            if False:\n                marked |=",
             ("tests/test_out_of_domain.py::test_one_record_never_changes_how_the_others_are_read",
              "tests/test_out_of_domain.py::test_no_cell_in_any_column_changes_how_the_other_records_are_read")),
    # Session 44: helper-110's hunt for privacy-critical lines no mutation covered.
    Mutation("a site trains at less noise than its ledger charges", "client/site.py",
             "history = trainer.train(data, request.local_steps, request.sample_rate, sigma, slot=request.site_slot,",
             "history = trainer.train(data, request.local_steps, request.sample_rate, sigma / 1.5, "
             "slot=request.site_slot,",
             (PRIVACY + "test_a_sites_training_round_draws_the_noise_and_runs_the_steps_its_ledger_charged",)),
    Mutation("a site's own noise not raised to its policy's minimum", "client/site.py",
             "        return max(sigma, self.policy.min_noise_multiplier)\n", "        return sigma\n",
             (PRIVACY + "test_a_sites_training_round_draws_the_noise_and_runs_the_steps_its_ledger_charged",)),
    Mutation("the PRV accountant composes one step too few per entry", "common/privacy/accounting.py",
             "        for _ in range(steps):\n            prv.step",
             "        for _ in range(max(steps - 1, 1)):\n            prv.step",
             ("tests/test_accounting.py::test_a_prv_ledger_composes_every_step_of_rounds_at_varying_noise",)),
    Mutation("released counts rounded far below their noise (floating-point low bits kept)",
             "common/privacy/randomness.py", "NOISE_GRID = 2.0**-10", "NOISE_GRID = 2.0**-60",
             (PRIVACY + "test_released_counts_lie_on_a_grid_of_their_noise_not_on_raw_floating_point_sums",)),
    Mutation("the release's headline epsilon is the least-spent site's", "server/release.py",
             '"max_epsilon_any_site": max((site["epsilon_cumulative"] for site in sites), default=0.0),',
             '"max_epsilon_any_site": min((site["epsilon_cumulative"] for site in sites), default=0.0),',
             (PRIVACY + "test_privacy_report_states_each_sites_own_delta",)),
    Mutation("generator.pt states the smallest delta of the sites", "server/release.py",
             '"delta": max((site["delta"] for site in report["sites"]), default=run.settings.delta),',
             '"delta": min((site["delta"] for site in report["sites"]), default=run.settings.delta),',
             (PRIVACY + "test_privacy_report_states_each_sites_own_delta",)),
    Mutation("a slot's non-finite tables pass the site's checks", "common/privacy/marginals.py",
             "        if not all(plausible_counts(values) for values in tables.arrays.values()):\n"
             "            raise ValueError(f\"slot {slot}'s",
             "        if False:\n            raise ValueError(f\"slot {slot}'s",
             (PRIVACY + "test_a_slots_non_finite_or_overflowing_tables_are_refused_before_any_row_or_charge",)),
]



def table() -> str:
    """The privacy-critical lines as a Markdown table (what tests/PRIVACY_CRITICAL.md holds)."""
    rows = ["# Privacy-critical lines", "",
            "Generated by `python -m tests.mutations > tests/PRIVACY_CRITICAL.md` from the mutation catalogue",
            "(tests/mutations.py); `pytest -m mutation` breaks each line and checks that its tests fail.", "",
            "| where | what breaking it means | tests that must fail |", "|---|---|---|"]
    for mutation in sorted(MUTATIONS, key=lambda m: (m.path, m.where(), m.name)):
        tests = ", ".join(f"`{test.split('::')[-1] if '::' in test else test}`" for test in mutation.tests)
        rows.append(f"| `{mutation.path}` `{mutation.where()}` | {mutation.name} | {tests} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
