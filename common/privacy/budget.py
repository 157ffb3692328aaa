"""How a site's budget is spent: what a budget is, the mechanisms' names and the one split.

A run spends each site's epsilon on two mechanisms: the round-0 noisy tables take
``share * epsilon`` on their own, and DP-SGD's noise is then calibrated so that the tables
composed with every planned step fit the whole epsilon (composed by the accountant, not
``(1 - share) * epsilon`` added). The coordinator asks for the tables' noise, a single-site
fit spends both, and the pre-flight plan predicts both: all through :func:`marginals_noise`
and :func:`~fedsyn.privacy.accounting.calibrate_noise_multiplier`, so the plan computes
exactly what a site will.

Light on purpose (no deep-learning library): settings and the command line check budgets
with :func:`is_budget` before anything heavy is imported.
"""

from __future__ import annotations

import math

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
