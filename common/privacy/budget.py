"""How a site's budget is spent: what a budget is, the mechanisms' names and the one split.

A run spends each site's epsilon on two mechanisms: the round-0 noisy tables take
``share * epsilon`` on their own, and DP-SGD's noise is then calibrated so that the tables
composed with every planned step fit the whole epsilon (composed by the accountant, not
``(1 - share) * epsilon`` added). A single-site fit spends both through :func:`marginals_noise`
and :func:`~fedsyn.privacy.accounting.calibrate_noise_multiplier`; the coordinator's plan of a
site's run and a simulation's pre-flight plan both predict them with :func:`plan_site_run`, so
either computes what the site will.

Across runs, a federated run's epsilon is an amount per run: it may raise each site's
ledger by that much, never above the site's own ``max_epsilon`` (:meth:`SiteBudget.cap_for_run`).
A site says what it has spent and may spend (:class:`SiteBudget`, declared public: its
ledger's epsilon and its policy's cap, no row enters either) before anything is charged,
and :func:`plan_site_run` turns that into the site's part of the run: the ledger total the run
may reach, the round-0 noise, and the training rounds that fit.

Light on purpose (no deep-learning library): settings and the command line check budgets
with :func:`is_budget` before anything heavy is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

# The share of each site's epsilon the round-0 release takes on its own (DP-SGD gets the rest),
# and of that release the share that measures pair tables (see fedsyn.privacy.pairs); the
# outcome tables get the rest. Set from the bench tables (docs/benchmarks.md).
MARGINALS_SHARE = 0.9
PAIRS_SHARE = 0.4

# The mechanisms a ledger records (PrivacyEvent.mechanism).
MARGINALS = "gaussian-marginals"
DP_SGD = "dp-sgd"


def is_budget(value: object) -> bool:
    """A usable epsilon (or noise multiplier): a positive, finite number. NaN compares False with
    everything, so a check written as ``value > limit`` alone would let it through."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# The largest noise multiplier a site accepts: what a budget of about 1e-8 would need, far beyond
# any useful release, and low enough that noisy counts stay where float64 still adds a record's
# count exactly. At about 1e16 the site's post-processing of its own round-0 tables failed after
# the charge (onto_simplex found no threshold), and at 1e308 the accountant overflowed
# (helper-94). A coordinator asking for more is refused before anything is charged.
MAX_NOISE_MULTIPLIER = 1e9


def delta_fits(delta: float, rows: int) -> bool:
    """Whether ``delta`` is below 1/``rows``: at or above it, a mechanism may leak a whole record
    with that probability and still meet (epsilon, delta). The one rule behind a site's, a
    simulation's and a single-site fit's checks, each said in its own reader's words."""
    return 0 < delta < 1 / rows and delta * rows < 1  # both: (1/49) * 49 rounds to below 1


def is_noise_multiplier(value: object) -> bool:
    """A usable noise multiplier: a budget (:func:`is_budget`) no larger than :data:`MAX_NOISE_MULTIPLIER`."""
    return is_budget(value) and float(value) <= MAX_NOISE_MULTIPLIER  # type: ignore[arg-type]


def not_a_budget(value: object) -> str:
    """What a researcher reads for an epsilon that is no budget (``fedsyn simulate``, ``fit``)."""
    return (f"epsilon {value}: a privacy budget is a positive, finite number (1 is a common choice, per site in a "
            "federation; smaller is more private and noisier)")


def is_pairs_share(value: object) -> bool:
    """A usable share of round 0 for pair tables: 0 (none) or from 1 % to below 1. A share so
    small that the picks' epsilon underflows would fail after the charge, so it is refused."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (value == 0 or 0.01 <= value < 1)


def pairs_allowed(accountant: str) -> bool:
    """Whether a ledger on ``accountant`` can carry the pair tables' selection: its exponential
    mechanism is bounded in Renyi DP only (see :mod:`fedsyn.privacy.pairs`)."""
    return accountant == "rdp"


def marginals_noise(epsilon: float, share: float, delta: float, accountant: str = "rdp") -> float:
    """Noise multiplier of the round-0 tables: a full-data Gaussian release of ``share * epsilon``."""
    from fedsyn.privacy.accounting import gaussian_noise_for_epsilon  # the accountant loads Opacus: only when used

    if not is_budget(epsilon) or not 0 < share < 1:
        raise ValueError(f"epsilon={epsilon} must be a positive number and share={share} in (0, 1)")
    return gaussian_noise_for_epsilon(share * epsilon, delta, accountant)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SiteBudget:
    """What a site has spent (its ledger's epsilon, at its ``delta``), the most it will ever
    spend (its policy's ``max_epsilon``) and the most one request may cost on its own (its
    policy's ``max_epsilon_per_request``, None when unset). Declared public: functions of the
    ledger's privacy events and of the site's policy, never of its rows."""

    spent: float
    max_epsilon: float
    delta: float
    max_epsilon_per_request: float | None = None

    @property
    def remaining(self) -> float:
        return max(0.0, self.max_epsilon - self.spent)

    def cap_for_run(self, run_epsilon: float) -> float:
        """The ledger total a run of ``run_epsilon`` may bring this site to: that much more than
        it has spent, never above its own ``max_epsilon``."""
        return min(self.spent + run_epsilon, self.max_epsilon)


class RunPlanSettings(Protocol):
    """The coordinator's settings a plan reads (:class:`~fedsyn.server.settings.FederationSettings`)."""

    @property
    def epsilon(self) -> float: ...
    @property
    def marginals_share(self) -> float: ...
    @property
    def accountant(self) -> Literal["rdp", "prv"]: ...
    @property
    def rounds(self) -> int: ...
    @property
    def local_steps(self) -> int: ...
    @property
    def sample_rate(self) -> float: ...
    @property
    def noise_multiplier(self) -> float | None: ...


@dataclass(frozen=True)
class SiteRunPlan:
    """One site's part of a run, before anything is charged.

    ``cap`` is the ledger total the run may bring the site to, ``cost`` what that adds.
    ``marginals_noise`` is the round-0 tables' noise, calibrated for ``marginals_share`` of
    ``cost`` alone (None: nothing usable is left). ``training_noise`` and ``rounds_fit`` are
    estimated as if this run were the site's first: the site's own accountant composes the
    run with its ledger, which is never looser (the noise it calibrates is at most this,
    unless its ``min_noise_multiplier`` asks for more; with a fixed noise at least these rounds fit).
    """

    budget: SiteBudget
    cap: float
    marginals_noise: float | None
    training_noise: float | None
    rounds_fit: int

    @property
    def cost(self) -> float:
        return self.cap - self.budget.spent

    @property
    def usable(self) -> bool:
        """Whether the site takes part: round 0 fits and so does at least one training round. With
        a fixed noise multiplier too low for what is left, round 0's tables would be paid for and
        every training round then refused: the site is asked nothing instead."""
        return self.marginals_noise is not None and self.rounds_fit > 0


def plan_site_run(budget: SiteBudget, settings: RunPlanSettings) -> SiteRunPlan:
    """What a run with ``settings`` costs a site with ``budget``, and what fits in it.

    A site that caps what one request may cost (``max_epsilon_per_request``) gets round 0 at no
    less noise than one Gaussian release costing that cap on its own (each of round 0's
    releases has a multiplier at least the whole's, :class:`fedsyn.privacy.pairs.RoundZeroSplit`),
    and a training round at no less noise than one round costing it: the site checks each
    request with its own accountant, which the coordinator does not know, so each floor is the
    larger of the Renyi and PRV accountants' (PRV's is the higher for small caps). A site whose
    cap no training round can meet, or below a fixed noise multiplier's round, is planned no
    rounds and asked nothing. Planned at the run's share instead, a site whose cap was below
    round 0's cost refused round 0 after the others had paid for it."""
    from fedsyn.privacy.accounting import (  # the accountant loads Opacus: only when used
        BudgetExceededError,
        PrivacyEvent,
        PrivacyLedger,
        calibrate_noise_multiplier,
    )

    cap = budget.cap_for_run(settings.epsilon)
    cost = cap - budget.spent
    steps = settings.rounds * settings.local_steps
    if not is_budget(cost):
        return SiteRunPlan(budget, cap, None, None, 0)
    request_cap = budget.max_epsilon_per_request
    try:
        sigma = marginals_noise(cost, settings.marginals_share, budget.delta, settings.accountant)
        round_floor = 0.0
        if request_cap is not None:
            sigma = max(sigma, _within_request_cap(request_cap, budget.delta, 1.0, 1))  # a full-data release
            round_floor = _within_request_cap(request_cap, budget.delta, settings.sample_rate, settings.local_steps)
        tables = [PrivacyEvent(MARGINALS, sigma, 1.0, 1)]
        if settings.noise_multiplier is not None:
            if settings.noise_multiplier < round_floor:  # every round would cost more than the cap alone
                return SiteRunPlan(budget, cap, sigma, settings.noise_multiplier, 0)
            ledger = PrivacyLedger(budget.delta, settings.accountant, tables)
            fit = ledger.affordable_steps(cost, settings.noise_multiplier, settings.sample_rate, steps)
            return SiteRunPlan(budget, cap, sigma, settings.noise_multiplier, fit // settings.local_steps)
        training = calibrate_noise_multiplier(cost, budget.delta, settings.sample_rate, steps, tables,
                                              settings.accountant)
        return SiteRunPlan(budget, cap, sigma, max(training, round_floor), settings.rounds)
    except BudgetExceededError:  # no noise up to the calibration's limit fits what is left
        return SiteRunPlan(budget, cap, None, None, 0)


def _within_request_cap(request_cap: float, delta: float, sample_rate: float, steps: int) -> float:
    """The least noise at which one request (``steps`` steps at ``sample_rate``) costs at most
    ``request_cap`` on its own under either accountant: the site checks with its own, which the
    coordinator does not know. Raises BudgetExceededError when no noise does."""
    from fedsyn.privacy.accounting import calibrate_noise_multiplier

    return max(calibrate_noise_multiplier(request_cap, delta, sample_rate, steps, (), name) for name in ("rdp", "prv"))
