"""The empirical privacy audit (tests/privacy_audit.py): measured epsilon never above the claim.

The default suite runs a light audit of the round-0 tables and of one DP-SGD round, and
proves each light audit has power: with the mechanism's noise removed (the ledger still
charged as if it were there) the same audit reports a bound above the claim. The full
audits, the whole federation included, run with ``pytest -m adversary``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

import fedsyn.client.site as site_module
import fedsyn.privacy.dp_sgd as dp_sgd
import fedsyn.server.coordinator as coordinator_module
from fedsyn.privacy.marginals import Marginals

from .privacy_audit import (
    AuditResult,
    audit_dp_sgd,
    audit_marginals,
    audit_workflow,
    epsilon_lower_bound,
    format_table,
)

LIGHT_RUNS = {"marginals": 60, "dp-sgd": 40}
POWER_RUNS = 30  # perfect separation in 30 runs per world bounds epsilon at 2.04: above every claim audited
FULL_RUNS = {"marginals": 600, "dp-sgd": 200}
WORKFLOW_SECONDS = 240.0


@pytest.fixture()
def no_marginals_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The site's round-0 tables released exact (and no pair tables), while the ledger charges
    the requested noise. The coordinator is told so (cell std 0): otherwise it would draw the
    exact tables toward the sum as if they carried the requested noise (post-processing that
    dilutes what the release shows of each site), and the audit would measure that, not the
    missing noise."""
    real = site_module.noisy_marginals
    monkeypatch.setattr(site_module, "noisy_marginals",
                        lambda frame, schema, noise_multiplier, rng, pairs_share=0.0, sites=None:
                        real(frame, schema, 0.0, rng))
    monkeypatch.setattr(coordinator_module, "received_marginals",
                        lambda arrays, schema, noise_multiplier, pairs_share: Marginals(arrays, cell_std=0.0))


@pytest.fixture()
def no_dp_sgd_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """DP-SGD's clipped sum released without its Gaussian noise, the ledger charged as usual."""
    real = dp_sgd.privatize
    monkeypatch.setattr(dp_sgd, "privatize", lambda summed, noise_multiplier, max_grad_norm, expected, generator:
                        real(summed, 0.0, max_grad_norm, expected, generator))


def _reported(result: AuditResult) -> AuditResult:
    """Print the audit's row (visible with ``-s``) and hand it back."""
    print("\n" + format_table([result]))
    return result


# -- the bound itself ------------------------------------------------------------------------------

@pytest.mark.parametrize("runs", [10, 30, 500])
def test_perfect_separation_gives_the_closed_form_bound(runs: int):
    """All in-runs detected and no out-run: Clopper-Pearson's one-sided bounds are alpha^(1/n)
    and 1 - alpha^(1/n) exactly (alpha split over the two bounds)."""
    alpha = 0.025
    tpr, fpr = alpha ** (1 / runs), 1 - alpha ** (1 / runs)
    assert epsilon_lower_bound(runs, runs, 0, runs, delta=1e-5) == pytest.approx(math.log((tpr - 1e-5) / fpr))


def test_no_separation_bounds_nothing():
    assert epsilon_lower_bound(50, 100, 50, 100) == 0.0
    assert epsilon_lower_bound(0, 100, 0, 100) == 0.0
    assert epsilon_lower_bound(100, 100, 100, 100) == 0.0


def test_the_bound_is_symmetric_in_the_worlds_and_grows_with_evidence():
    """Swapping the worlds (and so the test's answer) bounds the same epsilon; a test that
    errs the other way than fixed beforehand proves nothing; more runs at the same rates
    prove more."""
    assert epsilon_lower_bound(80, 100, 5, 90) == pytest.approx(epsilon_lower_bound(85, 90, 20, 100))
    assert epsilon_lower_bound(10, 100, 90, 100) == 0.0
    assert 0 < epsilon_lower_bound(18, 20, 2, 20) < epsilon_lower_bound(180, 200, 20, 200) < math.log(9)


def test_the_bound_refuses_impossible_counts():
    with pytest.raises(ValueError):
        epsilon_lower_bound(1, 0, 0, 10)
    with pytest.raises(ValueError):
        epsilon_lower_bound(11, 10, 0, 10)


# -- light audits and their power (default suite) ------------------------------------------------

LIGHT_AUDITS: dict[str, Callable[[int], AuditResult]] = {"marginals": audit_marginals, "dp-sgd": audit_dp_sgd}


@pytest.mark.parametrize("mechanism", list(LIGHT_AUDITS))
def test_light_audit_finds_no_more_than_the_claim(mechanism: str):
    result = _reported(LIGHT_AUDITS[mechanism](LIGHT_RUNS[mechanism]))
    assert result.claimed_epsilon > 0
    assert result.holds, f"{mechanism}: measured epsilon >= {result.lower_bound:.3f} above the claim " \
                         f"{result.claimed_epsilon:.3f}"


def test_marginals_audit_catches_missing_noise(no_marginals_noise: None):
    result = _reported(audit_marginals(POWER_RUNS))
    assert result.lower_bound > result.claimed_epsilon


def test_dp_sgd_audit_catches_missing_noise(no_dp_sgd_noise: None):
    result = _reported(audit_dp_sgd(POWER_RUNS))
    assert result.lower_bound > result.claimed_epsilon


# -- full audits (pytest -m adversary) ------------------------------------------------------------

@pytest.mark.adversary
@pytest.mark.parametrize("mechanism", list(LIGHT_AUDITS))
def test_full_audit_finds_no_more_than_the_claim(mechanism: str):
    result = _reported(LIGHT_AUDITS[mechanism](FULL_RUNS[mechanism]))
    assert result.runs >= FULL_RUNS[mechanism]
    assert result.holds


@pytest.mark.adversary
def test_full_workflow_audit_finds_no_more_than_the_claim():
    """A whole federation read from its release only, as many runs as fit in four minutes."""
    result = _reported(audit_workflow(10_000, WORKFLOW_SECONDS))
    assert result.runs >= 20
    assert result.holds


@pytest.mark.adversary
def test_workflow_audit_reads_the_right_site_from_the_release(no_marginals_noise: None):
    """Without the tables' noise the release-only attack separates the worlds perfectly: the
    attacker finds the canary site's slot in the published files, so the full audit has power."""
    result = _reported(audit_workflow(POWER_RUNS))
    assert (result.true_positives, result.false_positives) == (POWER_RUNS, 0)
    assert result.lower_bound > result.claimed_epsilon
