"""Clipping is total: for any finite model and any clipping norm a site accepts, one record's
clipped contribution is finite and at most C, on both clipping paths and through the site.

These are the regressions for the second audit's findings 1 (a NaN membership oracle built
from a discriminator that overflows on one patient) and 5 (subnormal clip factors that let
one record exceed C); ``pytest -m mutation`` reintroduces each and checks these fail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site
from fedsyn.data.demo import demo_schema_path
from fedsyn.federation import protocol
from fedsyn.model.encoder import TableEncoder
from fedsyn.privacy.dp_sgd import clip_and_sum, linear_clipped_sum, per_sample_gradients
from fedsyn.privacy.marginals import Marginals
from fedsyn.simulations.run import prepare_sites

from .hostile import TRAP, overflow_trap

CANARY = 7


def _vmap_path(model, loss, inputs, max_grad_norm):
    return clip_and_sum(per_sample_gradients(model, loss, inputs), max_grad_norm)


PATHS = [pytest.param(_vmap_path, id="per-sample"), pytest.param(linear_clipped_sum, id="ghost")]


def _loss(score: torch.Tensor) -> torch.Tensor:
    return F.softplus(-score).sum()


def _norm(summed: dict[str, torch.Tensor]) -> float:
    return float(torch.cat([g.double().flatten() for g in summed.values()]).norm())


def _overflowing_model() -> nn.Module:
    """Row 0 overflows float32 in the forward pass (inf activation, zero output gradient);
    every other row has a finite, ordinary gradient."""
    model = nn.Sequential(nn.Linear(3, 2), nn.LeakyReLU(0.2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e38, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1e-30, 1.0]]))
        model[2].bias.zero_()
    return model


@pytest.mark.parametrize("clipped_sum", PATHS)
def test_a_record_whose_pass_overflows_contributes_exactly_nothing(clipped_sum):
    model = _overflowing_model()
    rows = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.3, -0.2], [0.0, -1.0, 0.5]])
    assert not torch.isfinite(model(rows[:1])).all()  # the trap springs on row 0
    with_row = clipped_sum(model, _loss, (rows,), 0.5)
    without = clipped_sum(model, _loss, (rows[1:],), 0.5)
    for name in without:
        assert torch.isfinite(with_row[name]).all(), name
        torch.testing.assert_close(with_row[name], without[name], rtol=0, atol=0)


def _huge_gradient_model() -> nn.Module:
    model = nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.fill_(1e12)
        model.bias.zero_()
    return model


@pytest.mark.parametrize("clipped_sum", PATHS)
@pytest.mark.parametrize("max_grad_norm", [1e-28, 1e-12, 1e-3, 1.0])
def test_one_records_clipped_gradient_never_exceeds_c(clipped_sum, max_grad_norm):
    """A gradient of norm ~1e20 clipped to C ~ 1e-28 needs a clip factor of ~1e-48: float32
    would make it subnormal (the audit measured 1.75 C). Every record alone stays <= C."""
    model = _huge_gradient_model()
    rows = torch.tensor([[3e8, -2e8, 1e8, 7e7], [1.0, 2.0, 3.0, 4.0], [-5e7, 1e7, 0.0, 2.0]])
    for i in range(rows.shape[0]):
        one = clipped_sum(model, lambda s: (s ** 2).sum(), (rows[i:i + 1],), max_grad_norm)
        assert _norm(one) <= max_grad_norm * (1 + 1e-6)


def _site_pair(tmp_path, small_frame) -> tuple[Site, Site, np.ndarray, Marginals]:
    """Two seeded sites, the same extract but for the canary: same batches, same noise."""
    frame = small_frame.head(300).copy()
    for column in ("kappa", "lambda"):
        frame[column] = frame[column].clip(upper=3.0)
    frame.loc[CANARY, ["kappa", "lambda"]] = 30.0  # an unusual patient: both light chains at the top
    without = frame.drop(index=CANARY).reset_index(drop=True)
    with_canary = pd.concat([without, frame.loc[[CANARY]]], ignore_index=True)  # the canary last
    sites = [Site(SitePolicy.load(prepare_sites([table], demo_schema_path(), tmp_path / name, epsilon=50.0,
                                                delta=1e-5, seed=5).policies[0]))
             for name, table in (("in", with_canary), ("out", without))]
    marginals = Marginals.uniform(sites[0].schema)
    encoded = TableEncoder(sites[0].schema, marginals).encode(with_canary)
    return sites[0], sites[1], encoded, marginals


def test_an_overflow_trap_on_one_patient_gives_a_finite_reply_with_or_without_them(tmp_path, small_frame):
    """The audit's attack end to end through the site: a discriminator that overflows only on
    one patient. The update must be finite in both worlds (it was NaN exactly when the
    patient was in the extract)."""
    site_in, site_out, encoded, marginals = _site_pair(tmp_path, small_frame)
    arrays = overflow_trap(site_in.schema, marginals, encoded, target=len(encoded) - 1)
    request = protocol.TrainInstructions(round=1, total_rounds=1, local_steps=1, sample_rate=1.0, epsilon=50.0,
                                         noise_multiplier=1.0, gan_config=TRAP,
                                         schema_sha256=protocol.schema_fingerprint(site_in.schema))
    replies = [site.train(request, arrays, marginals)[0] for site in (site_in, site_out)]
    for reply in replies:
        assert all(np.isfinite(value).all() for value in reply.values())
