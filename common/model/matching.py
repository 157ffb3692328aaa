"""Marginal matching: the generator's rows held to the noisy outcome tables.

The round-0 tables (every column by the outcome's classes, Gaussian noise, charged) are
already paid for, so training the generator towards them is free post-processing, as in
GEM (Liu et al., NeurIPS 2021). The GAN alone can miss or even reverse how a column
depends on the outcome; this term states it directly. For each outcome class among the
generated rows:

- a categorical column's mean softmax (the release's expected frequencies) against the
  table's P(value | class), by Kullback-Leibler divergence;
- a numeric column's encoded values (tanh, the same [-1, 1] space the encoder maps through
  the global CDF) against the quantiles of the table's P(bin | class), by the squared
  one-dimensional Wasserstein distance (sorted values against target quantiles);
- a nullable numeric's present/missing block like a categorical.

Every outcome class weighs the same, however rare: a synthetic table is mostly used to tell
the classes apart, and a rare class is where the GAN alone loses its relations first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedsyn.model.conditioning import ConditionSampler
from fedsyn.model.encoder import TableEncoder
from fedsyn.privacy.marginals import exact_counts, split_column

if TYPE_CHECKING:
    from fedsyn.model.training import GANTrainer

_EPS = 1e-6


@dataclass(frozen=True)
class _Softmax:
    start: int
    end: int
    target: torch.Tensor  # classes × width: P(value | class)


@dataclass(frozen=True)
class _Numeric:
    index: int
    edges: torch.Tensor  # encoded value at each bin edge (increasing)
    cdf: torch.Tensor  # classes × (bins + 1): P(value <= edge | class)


class TableMatcher:
    """The matching loss of generated rows against ``encoder.marginals``' tables."""

    def __init__(self, encoder: TableEncoder, conditions: ConditionSampler, device: torch.device):
        schema = encoder.schema
        split = split_column(schema)
        self.split_block: int | None = None
        if split is not None and split.name in conditions.columns:
            block = conditions.columns.index(split.name)
            self.split_block = block
            start = int(conditions.block_start[block])
            self.split_range = (start, start + len(conditions.values[block]))
        self.softmax: list[_Softmax] = []
        self.numeric: list[_Numeric] = []
        for span in encoder.spans:
            column = schema.column(span.column)
            if split is not None and column.name == split.name:
                continue  # conditioned on, not generated
            conditional = encoder.marginals.conditional(column.name)  # bins × classes
            if column.is_categorical:
                self.softmax.append(_Softmax(span.start, span.end, _tensor(conditional.T, device)))
            elif span.activation == "softmax":  # present / missing of a nullable numeric
                missing = conditional[-1]
                self.softmax.append(_Softmax(span.start, span.end,
                                             _tensor(np.stack([1.0 - missing, missing], axis=1), device)))
            else:
                body = conditional[:-1] if column.nullable else conditional
                body = body / np.clip(body.sum(axis=0, keepdims=True), _EPS, None)
                cdf = np.concatenate([np.zeros((1, body.shape[1])), np.cumsum(body, axis=0)]).T
                cdf[:, -1] = 1.0
                _, global_cdf = encoder.numeric_map(column.name)
                self.numeric.append(_Numeric(span.start, _tensor(2.0 * global_cdf - 1.0, device),
                                             _tensor(np.maximum.accumulate(cdf, axis=1), device)))
        self.terms = len(self.softmax) + len(self.numeric)

    def classes(self, cond: torch.Tensor) -> torch.Tensor:
        """Each generated row's outcome class, read from its condition (all zeros: no split)."""
        if self.split_block is None:
            return torch.zeros(cond.shape[0], dtype=torch.long, device=cond.device)
        start, end = self.split_range
        block = cond[:, start:end]
        if not bool((block.sum(dim=1) > 0).all()):
            raise ValueError("matching needs every generated row conditioned on the outcome")
        return block.argmax(dim=1)

    def loss(self, raw: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The matching loss of the generator's raw outputs ``raw`` for conditions ``cond``."""
        total = raw.new_zeros(())
        if self.terms == 0:
            return total
        labels = self.classes(cond)
        present = [label for label in torch.unique(labels).tolist() if int((labels == label).sum()) >= 2]
        for label in present:
            rows = raw[labels == label]
            share = 1.0 / len(present)
            for term in self.softmax:
                produced = torch.softmax(rows[:, term.start:term.end], dim=1).mean(dim=0).clamp_min(_EPS)
                target = term.target[label].clamp_min(_EPS)
                total = total + share * (target * (target.log() - produced.log())).sum()
            levels = (torch.arange(rows.shape[0], device=raw.device, dtype=raw.dtype) + 0.5) / rows.shape[0]
            for numeric in self.numeric:
                values = torch.sort(torch.tanh(rows[:, numeric.index])).values
                quantiles = _interpolate(levels, numeric.cdf[label], numeric.edges)
                total = total + share * ((values - quantiles) ** 2).mean()
        return total / self.terms


def _tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(values, dtype=np.float32), device=device)


def _interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation (``np.interp``) for increasing ``xp``; flat parts of
    ``xp`` (empty bins) are stepped over."""
    index = torch.searchsorted(xp, x).clamp(1, xp.shape[0] - 1)
    left, right = xp[index - 1], xp[index]
    weight = ((x - left) / (right - left).clamp_min(_EPS)).clamp(0.0, 1.0)
    return fp[index - 1] + weight * (fp[index] - fp[index - 1])


def release_misfit(trainer: GANTrainer, rng: torch.Generator, rows: int = 2000) -> float:
    """How far ``rows`` drawn as the release draws them are from the encoder's noisy tables:
    per outcome class and column, the total variation between the rows' distribution over the
    public bins and the table's P(bin | class), averaged with equal weight per class and per
    column. Reads DP outputs only (the tables and the model), so choosing among models by it
    is post-processing.

    The rows are drawn from ``rng``, not the trainer's own stream (which stays as it was):
    handing every candidate model the same stream compares models, not luck."""
    encoder = trainer.encoder
    produced = exact_counts(encoder.decode(trainer.generate(rows, rng=rng)), encoder.schema)
    split = split_column(encoder.schema)
    distances = []
    for column in encoder.schema.columns:
        if split is not None and column.name == split.name:
            continue
        target, made = encoder.marginals.conditional(column.name), produced.conditional(column.name)
        distances.append(float(np.mean(0.5 * np.abs(target - made).sum(axis=0))))
    return float(np.mean(distances)) if distances else 0.0
