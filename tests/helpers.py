"""Helpers shared by test modules (kept here so no test module imports another)."""

from __future__ import annotations

import dp_accounting
from dp_accounting import pld, rdp

from fedsyn.model.config import GANConfig
from fedsyn.privacy.accounting import rdp_orders

# A small network: the tests check behaviour, not utility.
TINY = GANConfig(latent_dim=16, generator_hidden=(32,), discriminator_hidden=(32,), batch_size=64)


def independent_epsilon(events, delta, accountant):
    """Google's dp-accounting, a second implementation sharing no code with Opacus."""
    engine = rdp.RdpAccountant(rdp_orders(events)) if accountant == "rdp" else pld.PLDAccountant()
    engine.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)),
            e.steps)
        for e in events]))
    return engine.get_epsilon(delta)
