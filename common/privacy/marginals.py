"""Noisy one-way marginals: the only statistics read off private rows outside DP-SGD.

The bins are public (the schema's categories, or a fixed grid between the schema's public
bounds), every record adds one count to one bin of every column, so the L2 sensitivity of
the whole release is sqrt(number of columns). Gaussian noise makes it a Gaussian mechanism
that is charged to the privacy ledger. Sites' noisy marginals add up, which is how the
federation builds one global encoder without any site revealing exact counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedsyn.data.schema import Column, Schema
from fedsyn.errors import ConfigurationError
from fedsyn.privacy.accounting import PrivacyEvent

NUMERIC_BINS = 64
MISSING = "(missing)"


def numeric_edges(column: Column, n_bins: int = NUMERIC_BINS) -> np.ndarray:
    """Public bin edges between the schema's bounds, in the column's transformed space."""
    low, high = transform_bounds(column)
    return np.linspace(low, high, n_bins + 1)


def transform_bounds(column: Column) -> tuple[float, float]:
    if column.lower is None or column.upper is None:  # the schema refuses this; kept for the type checker
        raise ConfigurationError(f"numeric column '{column.name}' has no public bounds")
    if column.transform == "log":
        return math.log(column.lower), math.log(column.upper)
    return column.lower, column.upper


def forward_transform(column: Column, values: np.ndarray) -> np.ndarray:
    if column.transform == "log":
        return np.asarray(np.log(np.clip(values, column.lower, None)), dtype=float)
    return values


def inverse_transform(column: Column, values: np.ndarray) -> np.ndarray:
    if column.transform == "log":
        return np.asarray(np.exp(values), dtype=float)
    return values


def bin_labels(column: Column) -> int:
    """Number of bins of a column's histogram (the missing bin included when nullable)."""
    base = len(column.categories or []) if column.is_categorical else NUMERIC_BINS
    return base + int(column.nullable)


@dataclass
class Marginals:
    """Per-column (noisy) counts over public bins; last bin is 'missing' for nullable columns."""

    counts: dict[str, np.ndarray]

    def __add__(self, other: Marginals) -> Marginals:
        return Marginals({name: self.counts[name] + other.counts[name] for name in self.counts})

    def probabilities(self, name: str, floor: float = 1e-3) -> np.ndarray:
        """Noisy counts made a distribution: negatives clipped, every bin kept possible."""
        counts = np.clip(self.counts[name], 0.0, None)
        total = counts.sum()
        probs = counts / total if total > 0 else np.full_like(counts, 1.0 / len(counts))
        probs = probs + floor / len(probs)
        return np.asarray(probs / probs.sum(), dtype=float)

    def without_noise_floor(self, schema: Schema, noise_std: float, threshold: float = 2.0) -> Marginals:
        """Numeric histograms with every bin below ``threshold`` noise standard deviations set to 0.

        Post-processing with public numbers only (``noise_std`` follows from the public noise
        multiplier, column and site counts): summed noise otherwise fills the many empty bins
        between wide public bounds with much of the mass, and the quantile map then has little
        resolution where the data are. A column whose bins all fall below is left as it was.
        """
        counts = dict(self.counts)
        for column in schema.columns:
            if column.is_categorical or column.name not in counts:
                continue
            hist = counts[column.name].copy()
            body = hist[:-1] if column.nullable else hist
            keep = body >= threshold * noise_std
            if keep.any():
                body[~keep] = 0.0
                counts[column.name] = hist
        return Marginals(counts)

    def total(self) -> float:
        """The noisy row count: each column's noisy histogram sums to it, so their mean is the
        least noisy estimate (post-processing of the DP release), at least 1."""
        sums = [float(np.sum(values)) for values in self.counts.values()]
        return max(1.0, float(np.mean(sums))) if sums else 1.0

    def to_dict(self) -> dict[str, list[float]]:
        return {name: values.tolist() for name, values in self.counts.items()}

    @classmethod
    def from_dict(cls, raw: dict[str, list[float]]) -> Marginals:
        return cls({name: np.asarray(values, dtype=float) for name, values in raw.items()})

    @classmethod
    def uniform(cls, schema: Schema) -> Marginals:
        """The no-information marginals: used when no statistics are released at all."""
        return cls({c.name: np.ones(bin_labels(c)) for c in schema.columns})


def exact_counts(frame: pd.DataFrame, schema: Schema) -> Marginals:
    """Exact per-column counts. Private: only ever released through :func:`noisy_marginals`."""
    counts: dict[str, np.ndarray] = {}
    for column in schema.columns:
        series = frame[column.name]
        missing = series.isna().to_numpy()
        if column.is_categorical:
            codes = pd.Categorical(series.astype(str).where(~missing), categories=column.categories).codes
            hist = np.bincount(codes[codes >= 0], minlength=len(column.categories or [])).astype(float)
        else:
            values = forward_transform(column, series.to_numpy(dtype=float)[~missing])
            edges = numeric_edges(column)
            index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, NUMERIC_BINS - 1)
            hist = np.bincount(index, minlength=NUMERIC_BINS).astype(float)
        if column.nullable:
            hist = np.append(hist, float(missing.sum()))
        counts[column.name] = hist
    return Marginals(counts)


def noisy_marginals(frame: pd.DataFrame, schema: Schema, noise_multiplier: float,
                    rng: np.random.Generator) -> Marginals:
    """Every column's histogram with Gaussian noise: the event :func:`marginals_event` describes.

    ``noise_multiplier`` is relative to the release's L2 sensitivity sqrt(#columns): one
    record adds one count to one bin of every column. Charge the event before calling this.
    """
    std = noise_multiplier * math.sqrt(len(schema.columns))
    exact = exact_counts(frame, schema)
    return Marginals({name: hist + rng.normal(0.0, std, size=hist.shape) for name, hist in exact.counts.items()})


def marginals_event(noise_multiplier: float, round_: int | None = None) -> PrivacyEvent:
    """The privacy cost of :func:`noisy_marginals`: one full-data Gaussian mechanism."""
    return PrivacyEvent("gaussian-marginals", noise_multiplier=noise_multiplier, sample_rate=1.0, steps=1,
                        round=round_)
