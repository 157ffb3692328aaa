"""Per-record sensitivity and noise of the DP-SGD step: these fail without clipping or noise."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedsyn.model.networks import Discriminator
from fedsyn.privacy.dp_sgd import (
    UNIFORM_GRID,
    clip_and_sum,
    inclusion_threshold,
    linear_clipped_sum,
    per_sample_gradients,
    poisson_sample,
    private_gradient,
    supports_linear_clipping,
)

C = 0.5


def _model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = Discriminator(6, 2, (16, 16))
    rows, cond = torch.randn(32, 6), torch.randn(32, 2)
    return model, rows, cond


def _loss(score):
    return F.softplus(-score).sum()


def test_per_sample_gradients_match_one_row_at_a_time():
    model, rows, cond = _model_and_batch()
    batched = per_sample_gradients(model, _loss, (rows, cond))
    for i in (0, 7):
        model.zero_grad()
        _loss(model(rows[i:i + 1], cond[i:i + 1])).backward()
        for name, param in model.named_parameters():
            torch.testing.assert_close(batched[name][i], param.grad, rtol=1e-4, atol=1e-6)


def _vmap_clipped_sum(model, loss, inputs, max_grad_norm):
    return clip_and_sum(per_sample_gradients(model, loss, inputs), max_grad_norm)


CLIPPED_SUMS = [_vmap_clipped_sum, linear_clipped_sum]


def test_both_clipping_methods_agree():
    model, rows, cond = _model_and_batch()
    rows = rows * 5  # large gradients, so clipping is active for most records
    assert supports_linear_clipping(model)
    fast = linear_clipped_sum(model, _loss, (rows, cond), C)
    reference = _vmap_clipped_sum(model, _loss, (rows, cond), C)
    for name in reference:
        torch.testing.assert_close(fast[name], reference[name], rtol=1e-4, atol=1e-6)


def _influence_of_one_record(max_grad_norm: float, clipped_sum) -> float:
    """Largest L2 change of the summed gradient from replacing or removing one record."""
    model, rows, cond = _model_and_batch()
    base = clipped_sum(model, _loss, (rows, cond), max_grad_norm)
    worst = 0.0
    for i in range(rows.shape[0]):
        outlier = rows.clone()
        outlier[i] = 1e3  # an extreme patient record
        for candidate in (
            (outlier, cond),  # replace record i by an outlier
            (torch.cat([rows[:i], rows[i + 1:]]), torch.cat([cond[:i], cond[i + 1:]])),  # remove record i
        ):
            other = clipped_sum(model, _loss, candidate, max_grad_norm)
            delta = torch.cat([(base[k] - other[k]).flatten() for k in base]).norm().item()
            worst = max(worst, delta)
    return worst


@pytest.mark.parametrize("clipped_sum", CLIPPED_SUMS)
def test_one_record_moves_the_noiseless_clipped_sum_by_at_most_the_clip_norm(clipped_sum):
    # replace-one adjacency bounds the change by 2C, add/remove by C; the outlier row is a removal + addition
    assert _influence_of_one_record(C, clipped_sum) <= 2 * C + 1e-5


@pytest.mark.parametrize("clipped_sum", CLIPPED_SUMS)
def test_without_clipping_the_same_check_fails(clipped_sum):
    assert _influence_of_one_record(1e9, clipped_sum) > 2 * C


def test_noise_has_the_accountants_standard_deviation():
    """An empty batch releases pure noise: its std must be sigma*C/B, as the accountant assumes."""
    model, rows, cond = _model_and_batch()
    sigma, batch = 2.0, 64.0
    draws = [
        torch.cat([g.flatten() for g in private_gradient(
            model, _loss, (rows[:0], cond[:0]), noise_multiplier=sigma, max_grad_norm=C,
            expected_batch_size=batch, generator=None).values()])
        for _ in range(20)
    ]
    std = torch.stack(draws).std().item()
    assert std == pytest.approx(sigma * C / batch, rel=0.05)


def test_poisson_sampling_draws_each_row_independently():
    generator = np.random.default_rng(0)
    sizes = [len(poisson_sample(1000, 0.1, generator, torch.device("cpu"))) for _ in range(300)]
    mean = sum(sizes) / len(sizes)
    variance = sum((s - mean) ** 2 for s in sizes) / len(sizes)
    assert mean == pytest.approx(100, rel=0.05)
    assert variance == pytest.approx(1000 * 0.1 * 0.9, rel=0.3)  # binomial, not a fixed batch size


class _Draws:
    """A stand-in for the mechanism's NumPy generator that returns chosen uniform draws."""

    def __init__(self, values: list[float]) -> None:
        self.values = np.asarray(values)

    def random(self, n: int) -> np.ndarray:
        return self.values[:n]


def test_a_record_joins_with_at_most_the_charged_sample_rate():
    """A draw on the 2^-53 grid just below a rate that is not on it would join under ``u < q``,
    making the real rate exceed the charged one; float32 draws (multiples of 2^-24) would
    sample a rate of 1e-9 at 6e-8. The threshold is the grid point at or below the rate."""
    rate = 1e-9 + 1e-25  # not on the grid
    below = math.floor(rate / UNIFORM_GRID) * UNIFORM_GRID
    assert inclusion_threshold(rate) == below <= rate
    sample = poisson_sample(3, rate, _Draws([below - UNIFORM_GRID, below, 0.5]), torch.device("cpu"))
    assert sample.tolist() == [0]
    assert inclusion_threshold(0.25) == 0.25 and inclusion_threshold(1.0) == 1.0


def test_the_sample_and_the_noise_come_from_the_mechanism_stream():
    """The caller's NumPy stream decides who joins (all draws 0: everyone) and repeats the noise
    exactly; a PyTorch stream (32 bits of seed kept) is never asked."""
    assert poisson_sample(4, 0.1, _Draws([0.0] * 4), torch.device("cpu")).tolist() == [0, 1, 2, 3]
    model, rows, cond = _model_and_batch()
    noisy = [private_gradient(model, _loss, (rows[:0], cond[:0]), noise_multiplier=1.0, max_grad_norm=C,
                              expected_batch_size=1.0, generator=np.random.default_rng(7)) for _ in range(2)]
    assert all(torch.equal(noisy[0][k], noisy[1][k]) for k in noisy[0])
