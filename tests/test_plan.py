"""The pre-flight plan computes what the sites will, and warns where the noise swamps the data."""

import math

from fedsyn.privacy.accounting import PrivacyEvent, PrivacyLedger, gaussian_noise_for_epsilon
from fedsyn.privacy.marginals import marginals_event
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.plan import plan_site


def test_plan_matches_the_sites_calibration_and_grades_small_sites():
    settings = FederationSettings(epsilon=1.0, delta=1e-5, sample_rate=0.1)
    big = plan_site("big", 20_000, math.sqrt(9), settings)  # 9 noisy tables
    assert big.level == "green" and big.steps == settings.rounds * settings.local_steps
    marginals = marginals_event(gaussian_noise_for_epsilon(settings.marginals_share * settings.epsilon, 1e-5))
    spent = PrivacyLedger(1e-5, "rdp", [marginals, PrivacyEvent("dp-sgd", big.noise_multiplier, 0.1, big.steps)])
    assert 0.99 < spent.epsilon() <= 1.0  # the noise a site calibrates for the whole plan
    tiny = plan_site("tiny", 100, math.sqrt(31), FederationSettings(epsilon=1.0, delta=1e-5, sample_rate=1.0))
    assert tiny.level in ("amber", "red") and tiny.records_per_noise < 5
