"""A hostile coordinator's tools: global models crafted against one patient.

Shared by the default suite's light checks and the opt-in adversary suite
(``pytest -m adversary``). Every model here is finite and within a site's policy limits;
what makes it hostile is where it overflows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from fedsyn.data.schema import Schema
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.marginals import Marginals
from fedsyn.privacy.randomness import torch_generator

# Three hidden layers of width 2: the trap needs two LeakyReLUs to shrink everyone else's
# pre-activation before the layer that overflows.
TRAP = GANConfig(latent_dim=4, generator_hidden=(8,), discriminator_hidden=(2, 2, 2), batch_size=32,
                 max_grad_norm=0.5, matching_weight=0.0)
OVERFLOW_SCALE = 1e38  # x * 1e38 overflows float32 once x > 3.4


def trap_direction(encoded: np.ndarray, target: int) -> tuple[np.ndarray, float, float]:
    """A unit direction on which ``target`` projects highest, with the gap to the next row and
    the spread below it (the trap's threshold sits inside the gap)."""
    direction = encoded[target] - np.delete(encoded, target, axis=0).mean(axis=0)
    direction = direction / np.linalg.norm(direction)
    projections = encoded @ direction
    others = np.delete(projections, target)
    return direction, float(projections[target] - others.max()), float(projections[target] - others.min())


def overflow_trap(schema: Schema, marginals: Marginals, encoded: np.ndarray, target: int,
                  config: GANConfig = TRAP) -> dict[str, np.ndarray]:
    """Global-model arrays whose discriminator overflows float32 only on rows projecting close
    to ``target``'s encoding, and whose output bias makes every other row's real-data gradient
    exactly 0 (the audit's membership oracle: a NaN update exactly when the patient is in).

    The generator emits constant rows (zero head), so generated rows never trip the trap."""
    direction, gap, spread = trap_direction(encoded, target)
    if gap <= 0:
        raise ValueError("the target is not the unique highest row on its own direction")
    slope = 8.0 / gap  # the target at +4, every other row at -4 or below
    if slope * spread > 80:  # two LeakyReLUs shrink the others to 0.04 z: 0.04 * 85 * 1e38 would overflow too
        raise ValueError("the other rows spread too far below the target for this trap")
    trainer = GANTrainer(TableEncoder(schema, marginals), config, rng=torch_generator(11, "hostile"))
    threshold = float(encoded[target] @ direction) - 0.5 * gap
    layers = [m for m in trainer.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
            layer.bias.zero_()
        width = encoded.shape[1]
        layers[0].weight[0, :width] = torch.as_tensor(slope * direction, dtype=torch.float32)
        layers[0].bias[0] = -slope * threshold  # z = slope * (x . d - threshold): target +4, others <= -4
        layers[1].weight[0, 0] = 1.0  # a LeakyReLU again: others shrink to 0.04 z
        layers[2].weight[0, 0] = OVERFLOW_SCALE  # target: 4e38 = inf; others: finite
        layers[3].weight[0, 0] = 1e-33
        layers[3].bias[0] = 1e6  # score ~ 1e6: softplus(-score)'s gradient is exactly 0
        trainer.generator.head.weight.zero_()
        trainer.generator.head.bias.zero_()
    return dict(trainer.state_arrays())


# -- two worlds that differ in one patient, and single-layer tampering ---------------------

CANARY_LIGHT_CHAINS = 29.75  # the target's kappa and lambda: near the public bound (30), far above everyone else's


def canary_tables(frame: pd.DataFrame, canary: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two extracts that differ only in one unusual patient: ``(with_them_last, without_them)``.

    Everyone else's light chains are capped at 3 mg/dL and the patient's set near the bound,
    so the patient is the unique highest row on their own direction (what
    :func:`overflow_trap` needs). The patient comes last so that a seeded site draws the same
    Poisson membership for every other row in both worlds."""
    frame = frame.reset_index(drop=True).copy()
    for column in ("kappa", "lambda"):
        frame[column] = frame[column].clip(upper=3.0)
    frame.loc[canary, ["kappa", "lambda"]] = CANARY_LIGHT_CHAINS
    without = frame.drop(index=canary).reset_index(drop=True)
    return pd.concat([without, frame.loc[[canary]]], ignore_index=True), without


def with_layer(arrays: dict[str, np.ndarray], name: str, value: float) -> dict[str, np.ndarray]:
    """``arrays`` with every value of array ``name`` set to ``value`` (as float32, like the wire):
    the one layer where a hostile model overflows, vanishes or goes subnormal."""
    changed = dict(arrays)
    changed[name] = np.full_like(arrays[name], np.float32(value))
    return changed
