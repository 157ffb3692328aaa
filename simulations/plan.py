"""The pre-flight plan of a simulation: what each site's budget buys, before anything is spent.

A site with few rows, many columns and a small epsilon gets so much noise that no
generator can learn from it; a researcher should hear that before the run, not after a
signed but useless release. For each site this computes exactly what the site itself
will: the noise of its marginals release and the DP-SGD noise multiplier calibrated for
the whole plan of rounds and steps. Two ratios summarise it:

* ``records_per_noise``: expected records per DP-SGD step over the noise multiplier. The
  clipped sum of a step has at most that many units of signal per unit of noise.
* ``rows_per_histogram_noise``: the site's rows over the noise standard deviation of one
  histogram bin of its marginals release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedsyn.errors import PrivacyRefusal
from fedsyn.privacy.accounting import calibrate_noise_multiplier, gaussian_noise_for_epsilon
from fedsyn.privacy.marginals import marginals_event
from fedsyn.server.settings import FederationSettings

# Below these, the run is likely to give unusable data (measured: the bench's 303-row site at
# epsilon 1 has 5 records per unit of noise and still learns; ~100-row sites at 1 did not).
AMBER_RECORDS_PER_NOISE = 5.0
RED_RECORDS_PER_NOISE = 1.0
AMBER_ROWS_PER_HISTOGRAM_NOISE = 10.0


@dataclass(frozen=True)
class SitePlan:
    site: str
    rows: int
    expected_batch: float
    noise_multiplier: float | None  # None: the budget cannot cover the plan at all
    steps: int
    records_per_noise: float
    rows_per_histogram_noise: float
    level: Literal["green", "amber", "red"]
    advice: str


def plan_site(name: str, rows: int, sensitivity: float, settings: FederationSettings) -> SitePlan:
    """What ``settings`` mean for a site with ``rows`` records (known to the researcher only)
    whose marginals release has L2 ``sensitivity`` (:func:`marginals_sensitivity` of the schema)."""
    marginals_sigma = gaussian_noise_for_epsilon(settings.marginals_share * settings.epsilon, settings.delta,
                                                 settings.accountant)
    histogram_noise = marginals_sigma * sensitivity
    steps = settings.rounds * settings.local_steps
    batch = settings.sample_rate * rows
    try:
        sigma: float | None = calibrate_noise_multiplier(
            settings.epsilon, settings.delta, settings.sample_rate, steps, [marginals_event(marginals_sigma)],
            settings.accountant)
    except PrivacyRefusal:
        sigma = None
    records_per_noise = batch / sigma if sigma else 0.0
    rows_per_noise = rows / histogram_noise
    if sigma is None or records_per_noise < RED_RECORDS_PER_NOISE:
        level, advice = "red", ("noise swamps every step: expect an unusable release. Raise epsilon, pool sites, "
                                "or use fewer rounds x local steps")
    elif records_per_noise < AMBER_RECORDS_PER_NOISE or rows_per_noise < AMBER_ROWS_PER_HISTOGRAM_NOISE:
        level, advice = "amber", ("heavy noise for this site's size: expect weak utility; fewer rounds x steps or "
                                  "a larger epsilon help")
    else:
        level, advice = "green", "enough records per unit of noise"
    return SitePlan(name, rows, batch, sigma, steps, records_per_noise, rows_per_noise, level, advice)
