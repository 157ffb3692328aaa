"""The release bundle: synthetic table, privacy report, checkpoint, config, schema, README.

The privacy report lists, per site and per round, every mechanism that touched the
site's rows, the epsilon recomputed by the coordinator, and what was treated as public.
Everything is written from the run's record (:class:`~fedsyn.server.record.RunRecord`: public
facts and DP outputs only) and the trained generator, never from anything else the coordinator
holds.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsyn.data.tables import write_table
from fedsyn.data.validation import require_valid
from fedsyn.errors import ConfigurationError
from fedsyn.model.checkpoint import save_checkpoint
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.marginals import Marginals, class_distances, exact_counts
from fedsyn.privacy.pairs import Pair, asked_pairs, pair_cells, pair_key
from fedsyn.privacy.postprocessing import onto_simplex
from fedsyn.server.record import RoundSummary, RunRecord
from fedsyn.server.settings import AGGREGATION_RULES
from fedsyn.trust.signing import sign_release

# What leaves a site without DP noise, and why that is acceptable; repeated in every report.
DECLARED_PUBLIC = [
    "participation: that the site took part, and in which rounds (its replies or refusals, with their fixed "
    "error code and public reason text), and each round it missed the coordinator's deadline: whether a reply "
    "came in time can grow with the site's rows (a size, never a record), which its reply_quantum_seconds above "
    "its longest reply hides",
    "the site's name as set in its own policy (site_id)",
    "when the release, and each interim release, was published (their files' times; the release's README "
    "says no time): with the run's start, how long its rounds took, which can grow with the sites' rows (a "
    "size, never a record), as a reply's time can; a site's max_rows keeps its DP-SGD work the same whatever "
    "its rows",
    "privacy event parameters (noise multiplier, sample rate, steps), fixed by public settings "
    "and the site's public policy",
    "the site's delta and its own claim of cumulative epsilon spent, computed from those parameters",
    "the site's budget before round 0: the epsilon its ledger held, its max_epsilon (what it has left) and its "
    "max_epsilon_per_request, functions of its ledger and its policy, asked at no cost and read from no row",
    "metrics: discriminator loss on generated rows and generator loss, functions of DP parameters only",
    "the sample rate (a public setting; see public_facts for anything it was derived from)",
]
NOT_SENT = [
    "rows, row counts, exact histograms, bounds or category sets of private data",
    "losses on real rows; any exception text (it may quote private cells)",
]
RELEASE_CONTENTS = {
    "synthetic.csv / synthetic.parquet": "post-processing of DP outputs (sampled from the averaged generator)",
    "generator.pt": "post-processing of DP outputs (the averaged generator's weights of the round closest to the "
                    "noisy tables, the summed noisy outcome tables and, per site slot, that site's noisy round-0 "
                    "tables and pooled pair tables: post-processing of DP outputs the sites released; and the "
                    "summed tables' cell noise std, computed from the noise multipliers asked of the sites)",
    "privacy_report.json": "the declared-public facts above and the ledger recomputed from them",
    "quality_report.json": "synthetic rows against the summed noisy tables (one-way, by outcome class) and the "
                           "sites' pooled pair tables: post-processing of DP outputs",
    "run_config.json, schema.json, README.md": "public settings (not the seed: only whether the run was seeded), "
                                               "each round's reply counts and mean generator loss, and the public "
                                               "schema",
    "manifest.json, manifest.sig": "each other file's SHA-256 and the coordinator's Ed25519 signature over the "
                                   "manifest (fedsyn verify): public",
}
# What a release says about each training round. Not its wall-clock seconds: a round lasts
# longer the more rows the sites train on, and row counts are never published.
PUBLIC_ROUND_FIELDS = ("round", "accepted", "dropped", "generator_loss")


def public_rounds(rounds: list[RoundSummary]) -> list[dict[str, Any]]:
    """Each round's :data:`PUBLIC_ROUND_FIELDS`; a field added to RoundSummary stays out until listed."""
    return [{name: getattr(summary, name) for name in PUBLIC_ROUND_FIELDS} for summary in rounds]


def privacy_report(run: RunRecord, public_facts: dict[str, object] | None = None,
                   site_level_dp: dict[str, float | str] | None = None) -> dict[str, Any]:
    """Per site: every mechanism it ran in this run, epsilon recomputed at the site's own delta,
    and the site's own cumulative claim (its ledger, all runs), which is what its budget caps;
    with ``site_level_dp``, Flower's site-level accountant's figures."""
    settings = run.settings
    sites: list[dict[str, Any]] = []
    for site in run.sites.values():
        rounds = []
        for index, event in enumerate(site.events):  # in the order charged: round 0 is two events
            rounds.append({**asdict(event), "epsilon_after": run.epsilon_of(site, site.events[:index + 1])})
        this_run = run.epsilon_of(site)
        unconfirmed = sorted(set(site.unconfirmed))  # charged perhaps, and not in ``site.events``
        # The site's last word on its ledger: a privacy event's claim, or (a site asked nothing
        # more after its budget reply) what it said its ledger held before round 0.
        cumulative = max(site.claimed_epsilon, site.spent_before or 0.0, this_run)
        bound = None
        if site.claim_outdated:  # every charge of this run is checked against the site's cap for the run
            cumulative = max(cumulative, site.cap)
            bound = (f"round(s) {', '.join(map(str, unconfirmed))} may have been charged at the site without its "
                     "claim reaching the coordinator (no reply, a failure after the charge, or a reply the coordinator "
                     f"rejected); each charge of this run was capped at epsilon {site.cap:g}, so this run left the "
                     "site's ledger at most that (a later run may add to it). The site's own ledger has the exact "
                     "figure")
        sites.append({
            "site": site.name,
            "node_id": site.node_id,
            "epsilon_this_run": this_run,
            "epsilon_this_run_is_lower_bound": bool(unconfirmed or site.charged_before_resume),
            "unconfirmed_rounds": unconfirmed,
            "possibly_charged_before_resume": sorted(set(site.charged_before_resume)),
            "epsilon_cumulative": cumulative,
            "epsilon_cumulative_is_upper_bound": bound is not None,
            **({"upper_bound_reason": bound} if bound else {}),
            "epsilon_claimed_by_site": site.claimed_epsilon,
            # No budget reply: the site's name and claim are its last ones in this coordinator's audit log.
            "answered_this_run": site.spent_before is not None,
            "delta": site.delta if site.delta is not None else settings.delta,
            "epsilon_before_run": site.spent_before,
            "max_epsilon": site.max_epsilon,
            "budget_epsilon_asked": site.epsilon_cap,
            # Within the cap this run asked for and the site's own max_epsilon: a site whose operator
            # lowered max_epsilon below its spend was reported within budget (helper-78)
            "within_budget": all(cumulative <= cap + 1e-9 for cap in (site.epsilon_cap, site.max_epsilon)
                                 if cap is not None),
            "rounds_accepted": site.rounds_accepted,
            "dropped": site.dropped,
            "ledger": rounds,
        })
    return {
        "guarantee": "record-level (epsilon, delta)-DP per site, add/remove-one-record adjacency (a record is a "
                     "row: a patient with k rows is protected at about k epsilon), composed over all rounds with the "
                     "accountant below",
        "scope": "epsilon_this_run is recomputed from the privacy events the coordinator received, at each site's "
                 "own delta: a lower bound where a round's charge is unconfirmed (unconfirmed_rounds: no reply, "
                 "a failure after the charge, or a rejected reply; possibly_charged_before_resume: such a round of "
                 "a run that stopped, asked again after its resume), which the ledger list leaves out too; "
                 "max_epsilon is the site's own limit as it answered before round 0 (one its operator changed "
                 "during the run is not seen before the next run; the site enforces its current one either way); "
                 "budget_epsilon_asked is the most the run let the site's ledger reach (the run's "
                 "epsilon above epsilon_before_run, never above the site's max_epsilon); epsilon_cumulative is the "
                 "site's own ledger over all runs as last claimed, or an upper "
                 "bound with its reason when a request may have been charged without a claim reaching the "
                 "coordinator (the site's ledger is authoritative: it also "
                 "counts work whose reply never arrived); a site that answered nothing in this run "
                 "(answered_this_run false) is named, and its epsilon_cumulative given, as in its last claim in "
                 "this coordinator's earlier runs (0 if none)",
        "accountant": settings.accountant,
        # Reproducible by whoever holds the seed; the seed itself is in no release file.
        "seeded": settings.seed is not None,
        "max_epsilon_any_site": max((site["epsilon_cumulative"] for site in sites), default=0.0),
        "sites": sites,
        "declared_public": DECLARED_PUBLIC,
        "public_facts": public_facts or {},
        "never_sent": NOT_SENT,
        "release_contents": RELEASE_CONTENTS,
        "aggregation": f"{settings.aggregation} of site updates (no site row counts used)",
        # Bounds/categories read off private data without DP: a leak the user accepted explicitly.
        "schema_unreviewed_columns": run.schema.unreviewed_columns,
        "site_level_dp": site_level_dp,
    }


NOT_MEASURED = ("Only what the noisy tables measure is checked here: each column, each column within each outcome "
                "class, and the pairs of columns the sites measured together. How two columns without a pair table "
                "relate, and how three or more combine, is not: a small distance here is no verdict on every "
                "question. The validation against real rows stays with the data (the local report).")


def quality_report(synthetic: pd.DataFrame, run: RunRecord) -> dict[str, Any]:
    """How far the synthetic rows are from the noisy tables (total variation): each column
    against the summed tables' one-way sums, each column within each outcome class (where the
    outcome's relations live), and each measured pair of columns against the sites' pooled pair
    tables, summed. A report of one-way distances alone read well for a release whose every
    relation had been lost.

    Computed from DP outputs only, so it may be published with the release; the full
    validation against real rows is a local artefact that never enters a release.
    """
    if run.marginals is None:
        raise ConfigurationError("no marginals yet: run collect_marginals() before writing a release")
    produced_tables = exact_counts(synthetic, run.schema)
    synthetic_counts = Marginals(produced_tables.counts)
    distances = {}
    for column in run.schema.columns:
        target = run.marginals.probabilities(column.name, floor=0.0)
        produced = synthetic_counts.probabilities(column.name, floor=0.0)
        distances[column.name] = round(float(0.5 * np.abs(target - produced).sum()), 4)
    by_class = {name: round(value, 4) for name, value in class_distances(run.marginals, produced_tables,
                                                                         run.schema).items()}
    pairs = _pair_distances(synthetic, run)
    return {
        "basis": "synthetic rows against the sites' noisy tables, summed (DP); no real row is used",
        "not_measured": NOT_MEASURED,
        "total_variation_per_column": distances,
        "mean_total_variation": _mean(distances),
        "total_variation_by_outcome_class": by_class,
        "mean_total_variation_by_outcome_class": _mean(by_class),
        "total_variation_per_pair_table": pairs,
        "mean_total_variation_per_pair_table": _mean(pairs),
    }


def _mean(distances: dict[str, float]) -> float:
    return round(float(np.mean(list(distances.values()))), 4) if distances else 0.0


def _pair_distances(synthetic: pd.DataFrame, run: RunRecord) -> dict[str, float]:
    """Each pair table the sites measured: the synthetic rows' distribution over its cells
    against the sum of the sites' pooled tables (projected onto a distribution, as the
    release's raking reads them), keyed 'first|second'."""
    sites = list(run.site_marginals.values())
    if not sites:
        return {}
    distances = {}
    for pair in sites[0].pairs:
        summed = np.sum([site.pairs[pair] for site in sites], axis=0)
        target = onto_simplex(summed.ravel(), max(float(summed.sum()), 1.0))
        cells = pair_cells(synthetic, run.schema, pair, sites[0].pair_bounds)
        produced = np.bincount(cells, minlength=summed.size) / max(len(cells), 1)
        distances[pair_key(pair, "")] = round(float(0.5 * np.abs(target / target.sum() - produced).sum()), 4)
    return distances


def archive_earlier_release(out: Path) -> Path | None:
    """Move a release already in ``out`` aside (``OUT.replaced-<UTC time>``) before a new run
    writes there, so a later run never silently overwrites an earlier one. Returns where it went."""
    if not (out / "privacy_report.json").exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    earlier = out.with_name(f"{out.name}.replaced-{stamp}")
    out.rename(earlier)
    return earlier


def write_release(run: RunRecord, trainer: GANTrainer | None, out: Path, rows: int, drop_rule_violations: bool = False,
                  signing_key: Ed25519PrivateKey | None = None, public_facts: dict[str, object] | None = None,
                  site_level_dp: dict[str, float | str] | None = None) -> dict[str, Any]:
    """Sample ``rows`` synthetic rows from the global generator ``trainer`` and write the bundle
    of ``run`` to ``out``; with ``signing_key`` also the signed manifest of every file in it.
    Returns the privacy report it wrote."""
    if trainer is None:
        raise ConfigurationError("no trained generator yet: run train() before writing a release")
    out.mkdir(parents=True, exist_ok=True)
    rules = run.schema.rules if drop_rule_violations else None
    synthetic, dropped = trainer.sample_frame(rows, rules=rules)
    require_valid(synthetic, run.schema, source="synthetic release")
    write_table(synthetic, out / "synthetic.csv")
    write_table(synthetic, out / "synthetic.parquet")
    report = privacy_report(run, public_facts, site_level_dp)
    (out / "privacy_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "quality_report.json").write_text(json.dumps(quality_report(synthetic, run), indent=2) + "\n")
    run.schema.save(out / "schema.json")
    config = {"settings": run.settings.public_dict(), "seeded": report["seeded"], "rows": rows,
              "dropped_rule_violations": dropped if drop_rule_violations else None,
              "rounds": public_rounds(run.rounds)}
    (out / "run_config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    save_checkpoint(out / "generator.pt", run.schema, trainer, privacy={
        "max_epsilon_any_site": report["max_epsilon_any_site"],
        "delta": max((site["delta"] for site in report["sites"]), default=run.settings.delta),
        "scope": "per site, each at its own delta: see privacy_report.json"})
    (out / "README.md").write_text(_readme(run, report, synthetic, rows))
    if signing_key is not None:
        sign_release(out, signing_key)
    return report


def measured_pairs_note(measured: list[Pair], numbers_as_measured: bool, asked: list[Pair] | None = None) -> str:
    """Which pairs of columns a release's relations rest on (``measured``, those the study
    ``asked`` for marked so), and what became of the others: a reader took an unmeasured pair's
    near-zero correlation for a finding (helper-112). The release README says it, and
    ``fedsyn simulate`` prints it."""
    pairs = [f"`{a}` × `{b}`" + (" (asked)" if (a, b) in (asked or []) else "") for a, b in measured]
    said = f"Pairs of columns the sites measured together: {', '.join(pairs) if pairs else 'none'}. " + (
        "Each measured table carries its noise (it grows with the number of tables), and the sites chose those "
        "the study did not ask for by noisy votes: a weak relation of a measured pair may be that noise, and a "
        "strong one may come out weaker. "
        if pairs else "")
    if numbers_as_measured:
        return said + ("A numeric column relates to the other columns only as these tables, the tables by outcome "
                       "class and the schema's rules say: a relation no table measured comes out as none beyond "
                       "what they imply, never made up, so a near-zero correlation of such a pair is no finding.")
    return said + ("Numeric columns keep the relations the generator drew (`numbers_as_measured` off): beyond these "
                   "tables, some may be learnt and some made up.")


def _measured_pairs(run: RunRecord) -> list[Pair]:
    """The pairs every site measured (the federation's choice: the same at each site)."""
    sites = list(run.site_marginals.values())
    return list(sites[0].pairs) if sites else []


def _readme(run: RunRecord, report: dict[str, Any], synthetic: pd.DataFrame, rows: int) -> str:
    lines = [
        f"# Synthetic release: {run.schema.name}",
        "",
        "## What this is",
        f"{rows} synthetic rows (`synthetic.csv`, `synthetic.parquet`) sampled from a generator trained by "
        f"{len(report['sites'])} site(s) with federated, record-level differentially private GAN training. "
        "No row of any site left that site; sites sent only DP-noised marginal counts and DP-SGD model updates.",
        "",
        "## Privacy per site",
        f"Accountant: {report['accountant']}; each site's epsilon is at its own delta (`privacy_report.json`).",
        "",
        "| site | epsilon spent (all runs) | most this run allowed | training rounds accepted | dropped |",
        "|---|---|---|---|---|",
    ]
    for site in report["sites"]:
        cap = site["budget_epsilon_asked"]
        spent = f"{'at most ' if site['epsilon_cumulative_is_upper_bound'] else ''}{site['epsilon_cumulative']:.3f}"
        lines.append(f"| {site['site']} | {spent} | {'-' if cap is None else f'{cap:.3f}'} | "
                     f"{sum(1 for r in site['rounds_accepted'] if r > 0)} | {len(site['dropped'])} |")
    if any(site["epsilon_cumulative_is_upper_bound"] for site in report["sites"]):
        # helper-120 M2: a bound read as the amount spent, where a read-only site had charged nothing
        lines += ["", "\"At most\": a round may have been charged at that site without its claim reaching the "
                      "coordinator, so the figure is the most its ledger can hold; the site's own ledger has the "
                      "exact one (`upper_bound_reason` in `privacy_report.json`)."]
    lines += [
        "",
        "## How it was made",
        "Round 0: each site released Gaussian-noised tables of every column's public bins by the outcome's "
        "classes and, with `pairs_share` > 0, its votes for a few two-way tables of other columns (picked with "
        "the exponential mechanism); the sites then measured the pairs most of them voted for, with Gaussian "
        "noise (round 0's two releases are charged as two Gaussian events that together cost one, a bound that "
        "holds in Renyi DP: recompute it with an RDP accountant, not PRV); each site's pair tables were pooled "
        "over the sites and fitted to its own one-way margins; the sum of the outcome tables defines the numeric "
        "quantile maps and conditional sampling frequencies. Rounds 1..R: each site trained the "
        "discriminator with DP-SGD (Poisson sampling, per-record clipping, Gaussian noise) and the generator "
        "through it and towards the summed tables and each site's own tables and pair tables (marginal "
        "matching, post-processing); the coordinator combined the updates by their "
        f"{AGGREGATION_RULES[run.settings.aggregation]}, each site's with equal weight (whatever its rows). "
        "Generator and discriminator are told which site (a public slot) a row is "
        "for, and at each site generated rows follow that site's own noisy marginals; the release picks a "
        "site slot per row in proportion to the sites' noisy row counts from round 0 (post-processing). "
        "Settings: `run_config.json`; schema: `schema.json`; "
        "generator weights: `generator.pt`.",
        "",
        measured_pairs_note(_measured_pairs(run), run.settings.gan_config.numbers_as_measured,
                            asked_pairs(run.schema, run.settings.pairs_asked, run.settings.site_column)),
        "",
        "This run was seeded: whoever holds the seed and the run's stream nonce can reproduce it. Neither is in "
        "any file of this release."
        if report["seeded"] else
        "This run was not seeded: the coordinator drew its randomness from the operating system.",
        "",
        "## Known limits",
        "- DP bounds what any one record can change; it does not make the synthetic table accurate. "
        "Check fidelity and utility before using it for research conclusions.",
        "- Noise is drawn with a standard (not cryptographically secure) PRNG.",
        "- Rare categories and sub-groups are the least faithful parts of the table.",
    ]
    return "\n".join(lines) + "\n"
