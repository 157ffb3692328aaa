"""Empirical privacy audit: canary attacks on the production path, with a 95 % lower bound on epsilon.

The accountant *claims* an (epsilon, delta) per site; this module *measures* one. A canary
record is put into a site's extract in the "in" world and left out in the "out" world; each
run builds a fresh site (unseeded, so every run draws fresh operating-system noise), runs
the real mechanism through :class:`~fedsyn.client.site.Site` or the whole federation
(:func:`~fedsyn.simulations.workflow.simulate`) and hands an attacker only what the mechanism
publishes. The attacker's statistic and decision threshold are fixed before any run (the
threshold sits halfway between the two worlds' expected statistic), so every run is an
independent trial of one fixed test. From its true and false positive counts
:func:`epsilon_lower_bound` gives an epsilon that holds with 95 % confidence (Jagielski et
al. 2020, Nasr et al. 2021): a bound above the claim means the mechanism leaks more than
its accountant says, whatever the reason (missing noise, wrong sensitivity, reused noise,
unclipped gradients).

The attacks are the strongest cheap ones for each mechanism, so the bound is as close to
the claim as a few hundred runs allow:

- ``marginals``: the round-0 noisy outcome tables. One record adds 1 to one cell of every
  measured table, so the sum of the released counts in the canary's cells is the optimal
  (likelihood-ratio) test.
- ``dp-sgd``: one DP-SGD round under a white-box hostile global model
  (:func:`canary_probe`) whose real-data gradient is exactly 0 for every row but the canary
  and whose generated rows never touch the coordinates it reads.
- ``workflow``: a whole tiny federation; the attacker reads the canary site's noisy tables
  out of the published ``generator.pt`` (the marginals' part of the claim).

Honest bounds sit far below the claims: a Gaussian mechanism's epsilon is set by its tail at
delta = 1e-5, which no few hundred trials can reach. What the audit catches is gross
failure; ``tests/test_empirical_audit.py`` checks it does by removing the noise.

``python -m tests.privacy_audit [--runs N]`` prints the table of claims and bounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import beta, norm

from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site
from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.federation.protocol import TrainInstructions, schema_fingerprint
from fedsyn.model.checkpoint import load_checkpoint
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.accounting import gaussian_noise_for_epsilon
from fedsyn.privacy.dp_sgd import clipped_sum
from fedsyn.privacy.marginals import Marginals, exact_counts, measured_columns
from fedsyn.privacy.randomness import torch_generator
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.run import prepare_sites

CONFIDENCE = 0.95
DELTA = 1e-5
EPSILON = 1.0  # the federation's default budget per site: the claim the audit tests

# A valid but extreme record: every numeric at a public bound, rare categories. The guarantee
# covers any record, and an outlier is the one an attacker finds most easily.
CANARY = {"age": 105, "sex": "M", "sample_yr": "2002", "kappa": 30.0, "lambda": 0.01, "flc_grp": "10",
          "creatinine": 15.0, "mgus": "yes", "death": "dead"}

# The hostile model of the DP-SGD audit: one wide hidden layer (unit 0 finds the canary, the
# others carry its gradient), within fedsyn's default request limits.
PROBE = GANConfig(latent_dim=4, generator_hidden=(8,), discriminator_hidden=(256,), batch_size=64,
                  discriminator_lr=0.05, max_grad_norm=1.0, matching_weight=0.0)
DETECTOR_MARGIN = 1e4  # every other row sits this far below the canary on the detector unit
SIGNAL_WEIGHT = 10.0  # output weight of the carrier units: most of the canary's gradient lands on their inputs
ONE_HOT_LOGIT = 1000.0  # generated categories exactly one-hot: exp(-1000 / tau) is 0 in float32

# The workflow audit: a short federation of two demo sites, the canary in the first.
WORKFLOW_GAN = GANConfig(latent_dim=16, generator_hidden=(32,), discriminator_hidden=(32,), batch_size=64)
WORKFLOW_SETTINGS = FederationSettings(rounds=2, local_steps=2, sample_rate=0.25, epsilon=EPSILON, delta=DELTA,
                                       gan_config=WORKFLOW_GAN, min_sites=2)


@dataclass(frozen=True)
class AuditResult:
    """One mechanism's audit: the accountant's claim beside the measured lower bound."""

    mechanism: str
    claimed_epsilon: float
    lower_bound: float
    runs: int  # per world
    true_positives: int
    false_positives: int
    seconds: float

    @property
    def holds(self) -> bool:
        """The measurement does not contradict the claim."""
        return self.lower_bound <= self.claimed_epsilon


# -- the statistics ------------------------------------------------------------------------

def epsilon_lower_bound(true_positives: int, positives: int, false_positives: int, negatives: int,
                        confidence: float = CONFIDENCE, *, delta: float = 0.0) -> float:
    """The epsilon that an (epsilon, delta)-DP mechanism must at least have, at ``confidence``.

    Any test of "in" against "out" on an (epsilon, delta)-DP mechanism has
    TPR <= e^eps FPR + delta and, swapping the worlds, 1 - FPR <= e^eps (1 - TPR) + delta. The
    observed rates are replaced by one-sided Clopper-Pearson bounds (TPR from below, FPR from
    above), each at half the error so that both hold together with ``confidence``; the
    larger of the two resulting bounds is returned, 0 when the counts show nothing.
    """
    if positives <= 0 or negatives <= 0:
        raise ValueError("both worlds need at least one run")
    if not (0 <= true_positives <= positives and 0 <= false_positives <= negatives):
        raise ValueError("counts must lie between 0 and the number of runs")
    alpha = (1.0 - confidence) / 2
    tpr_low = 0.0 if true_positives == 0 else float(beta.ppf(alpha, true_positives, positives - true_positives + 1))
    fpr_high = 1.0 if false_positives == negatives else float(
        beta.ppf(1 - alpha, false_positives + 1, negatives - false_positives))
    bounds = [0.0]
    if tpr_low - delta > 0 and fpr_high > 0:
        bounds.append(math.log((tpr_low - delta) / fpr_high))
    if 1 - fpr_high - delta > 0 and tpr_low < 1:
        bounds.append(math.log((1 - fpr_high - delta) / (1 - tpr_low)))
    return max(bounds)


def audit_scores(mechanism: str, claimed: float, inside: Sequence[float], outside: Sequence[float],
                 threshold: float, seconds: float, confidence: float = CONFIDENCE) -> AuditResult:
    """The bound for the a-priori test "statistic > ``threshold`` means in"."""
    true_positives = int(np.sum(np.asarray(inside) > threshold))
    false_positives = int(np.sum(np.asarray(outside) > threshold))
    bound = epsilon_lower_bound(true_positives, len(inside), false_positives, len(outside), confidence, delta=DELTA)
    return AuditResult(mechanism, claimed, bound, min(len(inside), len(outside)), true_positives, false_positives,
                       seconds)


# -- the worlds ------------------------------------------------------------------------------

def demo_schema() -> Schema:
    return Schema.load(demo_schema_path())


def base_rows(rows: int, offset: int = 0) -> pd.DataFrame:
    """Demo rows both worlds share (fixed: the attacker knows everyone but the canary)."""
    frame = read_table(demo_data_path(), demo_schema())
    return frame.sample(n=rows, random_state=offset).reset_index(drop=True)


def canary_frame() -> pd.DataFrame:
    return pd.DataFrame([CANARY])


def with_canary(frame: pd.DataFrame, inside: bool) -> pd.DataFrame:
    """The extract of one world: the canary appended in the "in" world only."""
    return pd.concat([frame, canary_frame()], ignore_index=True) if inside else frame


def fresh_site(frame: pd.DataFrame, folder: Path, budget: float) -> Site:
    """A new, unseeded simulated hospital (operating-system noise, empty ledger) holding ``frame``."""
    plan = prepare_sites([frame], demo_schema_path(), folder, epsilon=budget, delta=DELTA)
    return Site(SitePolicy.load(plan.policies[0]))


RunOnce = Callable[[bool, Path], tuple[float, float]]  # (in world?, scratch folder) -> (statistic, claimed epsilon)


def run_worlds(run_once: RunOnce, runs: int, seconds: float | None = None
               ) -> tuple[list[float], list[float], float, float]:
    """Alternate "in" and "out" runs, each in its own scratch folder, ``runs`` of each (fewer
    if ``seconds`` run out first). Returns both worlds' statistics, the largest claim seen and
    the wall time."""
    started = time.monotonic()
    scores: dict[bool, list[float]] = {True: [], False: []}
    claimed = 0.0
    for _ in range(runs):
        for inside in (True, False):
            with tempfile.TemporaryDirectory(prefix="fedsyn-audit-") as scratch:
                score, claim = run_once(inside, Path(scratch))
            scores[inside].append(score)
            claimed = max(claimed, claim)
        if seconds is not None and time.monotonic() - started > seconds:
            break
    return scores[True], scores[False], claimed, time.monotonic() - started


def canary_cells(schema: Schema) -> dict[str, np.ndarray]:
    """The canary's cell (1) in every measured table, 0 elsewhere: the weights of the optimal
    linear test, since one record adds exactly this to the exact tables."""
    counts = exact_counts(canary_frame(), schema)
    return {c.name: counts.tables[c.name] for c in measured_columns(schema)}


def cells_statistic(tables: dict[str, np.ndarray], cells: dict[str, np.ndarray]) -> float:
    """Sum of the released counts in the canary's cells."""
    return float(sum(np.sum(np.asarray(tables[name]) * weight) for name, weight in cells.items()))


def cells_threshold(frame: pd.DataFrame, schema: Schema, cells: dict[str, np.ndarray]) -> float:
    """Halfway between the worlds' expected statistic: the out world's exact count plus half
    the canary's contribution (one count per measured table)."""
    return cells_statistic(exact_counts(frame, schema).tables, cells) + len(cells) / 2


# -- (a) the round-0 noisy tables --------------------------------------------------------------

def audit_marginals(runs: int, epsilon: float = EPSILON, rows: int = 300) -> AuditResult:
    """Round 0 through :meth:`Site.release_marginals` at the noise the coordinator asks for
    ``epsilon`` (its ``marginals_share``); the claim is the site's ledger after the release."""
    schema, frame = demo_schema(), base_rows(rows)
    settings = FederationSettings(epsilon=epsilon, delta=DELTA)
    sigma = gaussian_noise_for_epsilon(settings.marginals_share * settings.epsilon, settings.delta,
                                       settings.accountant)
    cells = canary_cells(schema)

    def run_once(inside: bool, folder: Path) -> tuple[float, float]:
        site = fresh_site(with_canary(frame, inside), folder, settings.epsilon)
        released, _ = site.release_marginals(sigma, settings.epsilon, schema_fingerprint(schema))
        return cells_statistic(released.tables, cells), site.ledger.epsilon()

    inside, outside, claimed, seconds = run_worlds(run_once, runs)
    return audit_scores("marginals (round 0)", claimed, inside, outside, cells_threshold(frame, schema, cells),
                        seconds)


# -- (b) one DP-SGD round under a hostile global model ---------------------------------------

@dataclass(frozen=True)
class Probe:
    """A hostile global model and what the attacker reads off the site's reply."""

    arrays: dict[str, np.ndarray]
    marginals: Marginals  # the encoding the coordinator sends (uniform)
    read: np.ndarray  # boolean mask over the first discriminator layer's weight
    direction: np.ndarray  # sign of the update the canary pushes each read weight towards


def canary_probe(schema: Schema, others: pd.DataFrame, config: GANConfig = PROBE) -> Probe:
    """A global model under which one DP-SGD step reveals, as cleanly as clipping allows,
    whether the canary was in the batch.

    - Unit 0 of the hidden layer detects the canary: it projects rows on the canary's
      encoding, with the canary at +1 and every other row below -1e4. Through the output
      layer every other real row scores above 2000, where softplus(-score)'s gradient is
      exactly 0 in float32: those rows add nothing to the clipped sum.
    - The canary scores 0; its loss gradient reaches the other units (constant activation
      1, output weight 10), whose input weights it moves along its own encoding. These
      weights are what the attacker reads: they carry most of the canary's clipped norm.
    - The generator ignores its input and emits one fixed row that is 0 on every
      coordinate where the canary is not (other categories, numerics at tanh(0) = 0, the
      nullable numeric marked missing), so the generated rows' gradient on the read weights
      is exactly 0.

    The site's optimiser is Adam, whose first step moves each weight by the learning rate
    times the sign of its (noisy) gradient: the attacker counts signs.
    """
    marginals = Marginals.uniform(schema)
    trainer = GANTrainer(TableEncoder(schema, marginals), config, rng=torch_generator(0, "audit-probe"))
    encoder = trainer.encoder
    canary = encoder.encode(canary_frame())[0].astype(np.float64)
    projections = encoder.encode(others).astype(np.float64) @ canary
    top = float(canary @ canary)
    gap = top - float(projections.max())
    if gap <= 0:
        raise ValueError("the canary is not the unique highest row on its own encoding")
    slope = DETECTOR_MARGIN / gap
    first, last = [m for m in trainer.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    hidden = first.weight.shape[0]
    with torch.no_grad():
        for layer in (first, last):
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[0, :encoder.dim] = torch.as_tensor(slope * canary, dtype=torch.float32)
        first.bias[0] = 1.0 - slope * top
        first.bias[1:] = 1.0
        last.weight[0, 0] = -1.0
        last.weight[0, 1:] = SIGNAL_WEIGHT
        last.bias[0] = 1.0 - (hidden - 1) * SIGNAL_WEIGHT
        head = trainer.generator.head
        head.weight.zero_()
        head.bias.zero_()
        for span in encoder.spans:
            if span.activation == "softmax":
                unused = next(i for i in range(span.start, span.end) if canary[i] == 0)
                head.bias[unused] = ONE_HOT_LOGIT
    read = np.zeros(tuple(first.weight.shape), dtype=bool)
    read[1:, :encoder.dim] = canary != 0
    # Descent moves a read weight against the canary's gradient: W += lr * sign(x) (output weights > 0).
    direction = np.zeros(read.shape)
    direction[1:, :encoder.dim] = np.sign(canary)
    return Probe(dict(trainer.state_arrays()), marginals, read, direction)


def probe_threshold(probe: Probe, schema: Schema, noise_multiplier: float, config: GANConfig = PROBE) -> float:
    """Halfway between the worlds' expected sign count: 0 out (pure noise), and in the sum over
    read weights of 2 P(noise does not flip the canary's clipped gradient) - 1. The canary's
    clipped gradient is computed with the production clipping on the hostile model."""
    trainer = GANTrainer(TableEncoder(schema, probe.marginals), config, rng=torch_generator(0, "audit-threshold"))
    trainer.load_state_arrays(probe.arrays)
    canary = torch.as_tensor(trainer.encoder.encode(canary_frame()))
    condition = trainer.conditions.from_real(canary, np.random.default_rng(0))
    gradient = clipped_sum(trainer.discriminator, lambda score: F.softplus(-score).sum(), (canary, condition),
                           config.max_grad_norm)
    weights = gradient["net.0.weight"].double().numpy()[probe.read]
    flip_free = norm.cdf(np.abs(weights) / (noise_multiplier * config.max_grad_norm))
    return float(np.sum(2 * flip_free - 1) / 2)


def probe_statistic(reply: dict[str, np.ndarray], probe: Probe) -> float:
    """How many read weights moved the way the canary pushes them, minus how many moved against."""
    moved = reply["discriminator.net.0.weight"].astype(np.float64) - probe.arrays["discriminator.net.0.weight"]
    return float(np.sum(np.sign(moved[probe.read]) * probe.direction[probe.read]))


def probe_request(site: Site, budget: float, config: GANConfig = PROBE) -> TrainInstructions:
    """One round of one step on every row (q = 1), the site calibrating its own noise for ``budget``."""
    return TrainInstructions(round=1, total_rounds=1, local_steps=1, sample_rate=1.0, epsilon=budget,
                             noise_multiplier=None, gan_config=config, schema_sha256=schema_fingerprint(site.schema))


def audit_dp_sgd(runs: int, epsilon: float = EPSILON, rows: int = 300) -> AuditResult:
    """One DP-SGD round through :meth:`Site.train` under :func:`canary_probe`'s model; the
    claim is the site's ledger after the round (its own calibration for ``epsilon``)."""
    schema, frame = demo_schema(), base_rows(rows)
    probe = canary_probe(schema, frame)
    with tempfile.TemporaryDirectory(prefix="fedsyn-audit-") as scratch:
        site = fresh_site(frame, Path(scratch), epsilon)
        sigma = site.plan_noise(probe_request(site, epsilon))  # public: the site's policy and the request
    threshold = probe_threshold(probe, schema, sigma)

    def run_once(inside: bool, folder: Path) -> tuple[float, float]:
        site = fresh_site(with_canary(frame, inside), folder, epsilon)
        reply, _, _ = site.train(probe_request(site, epsilon), probe.arrays, probe.marginals)
        return probe_statistic(reply, probe), site.ledger.epsilon()

    inside, outside, claimed, seconds = run_worlds(run_once, runs)
    return audit_scores("dp-sgd (one round, hostile model)", claimed, inside, outside, threshold, seconds)


# -- (c) a whole federation, read from its release ------------------------------------------------

def release_statistic(release: Path, site: str, cells: dict[str, np.ndarray]) -> tuple[float, float]:
    """The canary cells' sum in ``site``'s noisy round-0 tables as ``generator.pt`` publishes
    them, and the site's epsilon as ``privacy_report.json`` publishes it. Site slots follow
    the node ids of the sites that answered round 0 (both in the privacy report)."""
    report = json.loads((release / "privacy_report.json").read_text())
    answered = sorted((s["node_id"], s["site"]) for s in report["sites"] if 0 in s["rounds_accepted"])
    slot = [name for _, name in answered].index(site)
    slots = load_checkpoint(release / "generator.pt").trainer.release_slots
    if slots is None:
        raise ValueError(f"{release / 'generator.pt'} holds no per-site tables")
    claimed = next(s["epsilon_cumulative"] for s in report["sites"] if s["site"] == site)
    return cells_statistic(slots.marginals[slot].tables, cells), float(claimed)


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Hold ``logger`` to errors: Flower logs every round of every one of hundreds of runs."""
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def audit_workflow(runs: int, seconds: float | None = None, rows: int = 200,
                   settings: FederationSettings = WORKFLOW_SETTINGS) -> AuditResult:
    """A whole :func:`simulate` run of two sites, the canary in ``site-0``; the attacker reads
    the published release only."""
    from fedsyn.simulations.workflow import Simulation, simulate

    schema = demo_schema()
    tables = [base_rows(rows, offset=0), base_rows(rows, offset=1)]
    cells = canary_cells(schema)

    def run_once(inside: bool, folder: Path) -> tuple[float, float]:
        sites = [with_canary(tables[0], inside), tables[1]]
        result = simulate(Simulation(sites, schema, demo_schema_path(), settings, folder, rows=50))
        return release_statistic(result.release, "site-0", cells)

    with _quiet("flwr"):
        inside, outside, claimed, elapsed = run_worlds(run_once, runs, seconds)
    return audit_scores("workflow (whole federation, release only)", claimed, inside, outside,
                        cells_threshold(tables[0], schema, cells), elapsed)


# -- the report ------------------------------------------------------------------------------------

def format_table(results: Sequence[AuditResult]) -> str:
    header = f"{'mechanism':<44} {'claimed eps':>11} {'95% lower bound':>15} {'runs/world':>10} " \
             f"{'TP':>5} {'FP':>5} {'seconds':>8}  verdict"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.mechanism:<44} {r.claimed_epsilon:>11.4f} {r.lower_bound:>15.4f} {r.runs:>10d} "
                     f"{r.true_positives:>5d} {r.false_positives:>5d} {r.seconds:>8.1f}  "
                     f"{'holds' if r.holds else 'VIOLATED'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.privacy_audit", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per world for every mechanism (default: 500 marginals, 100 dp-sgd, "
                             "as many workflows as fit in --workflow-seconds)")
    parser.add_argument("--workflow-seconds", type=float, default=240.0)
    parser.add_argument("--skip-workflow", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.monotonic()
    results = [audit_marginals(args.runs or 500), audit_dp_sgd(args.runs or 100)]
    if not args.skip_workflow:
        results.append(audit_workflow(args.runs or 10_000, args.workflow_seconds))
    print(format_table(results))
    print(f"delta={DELTA:g}, confidence {CONFIDENCE:.0%}; wall time {time.monotonic() - started:.1f} s")
    return 0 if all(r.holds for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
