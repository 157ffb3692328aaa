"""Quantile targets: each numeric column's noisy P(bin | class) read as a quantile function in
the encoder's [-1, 1] space.

The matching loss (:mod:`fedsyn.model.matching`) holds the generator's sorted values to these
quantiles; the release's calibration (:mod:`fedsyn.model.calibration`) maps drawn values
through them. Both read the tables here, so they never disagree on where a quantile lies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedsyn.data.grid import numeric_edges
from fedsyn.data.schema import Column
from fedsyn.model.encoder import TableEncoder
from fedsyn.privacy.marginals import Marginals

EPS = 1e-6


def float_tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """``values`` as a contiguous float32 tensor on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(values, dtype=np.float32), device=device)


def numeric_outputs(encoder: TableEncoder) -> list[tuple[Column, int]]:
    """Each numeric column, with where its value (a tanh output) sits in an encoded row."""
    schema = encoder.schema
    return [(schema.column(span.column), span.start) for span in encoder.spans
            if not schema.column(span.column).is_categorical and span.activation == "tanh"]


def midpoints(count: int, like: torch.Tensor) -> torch.Tensor:
    """The probability levels ``(i + 0.5) / count`` of ``count`` sorted values (as ``like``'s dtype and device)."""
    return (torch.arange(count, device=like.device, dtype=like.dtype) + 0.5) / count


@dataclass(frozen=True)
class QuantileTargets:
    """Numeric columns' quantile functions, side by side: each column's bin edges (encoded, and
    on the public grid's scale) and, per outcome class, its cumulative distribution at them
    (P(value <= edge | class)), padded to a common width by repeating the last edge (at
    probability 1), so that one batched search reads every column's quantiles at once."""

    edges: torch.Tensor  # columns × width: encoded value at each bin edge (increasing)
    grid: torch.Tensor  # columns × width: the same edges on the grid's scale (float64, on the CPU: see grid_at)
    cdf: torch.Tensor  # classes × columns × width

    @classmethod
    def of(cls, encoder: TableEncoder, columns: list[Column], marginals: Marginals,
           device: torch.device) -> QuantileTargets:
        """``columns``' targets from ``marginals``' tables, each on the encoder's map of the
        column (a nullable column's present values only: whether a value is present is read
        like a categorical)."""
        edges, grids, cdfs = [], [], []
        for column in columns:
            conditional = marginals.conditional(column.name, post_processed=True)  # bins × classes
            body = conditional[:-1] if column.nullable else conditional
            body = body / np.clip(body.sum(axis=0, keepdims=True), EPS, None)
            cdf = np.concatenate([np.zeros((1, body.shape[1])), np.cumsum(body, axis=0)]).T
            cdf[:, -1] = 1.0
            _, global_cdf = encoder.numeric_map(column.name)
            edges.append(2.0 * global_cdf - 1.0)
            grids.append(numeric_edges(column))
            cdfs.append(np.maximum.accumulate(cdf, axis=1))
        width = max((len(e) for e in edges), default=0)

        def side_by_side(rows: list[np.ndarray]) -> np.ndarray:
            return np.stack([np.pad(e, (0, width - len(e)), mode="edge") for e in rows]) if rows else np.zeros((0, 0))

        padded_cdfs = [np.pad(c, ((0, 0), (0, width - c.shape[1])), mode="edge") for c in cdfs]
        return cls(float_tensor(side_by_side(edges), device),
                   torch.as_tensor(side_by_side(grids), dtype=torch.float64),
                   float_tensor(np.stack(padded_cdfs, axis=1) if cdfs else np.zeros((0, 0, 0)), device))

    def at(self, label: int, levels: torch.Tensor) -> torch.Tensor:
        """Every column's quantiles (encoded) of class ``label`` at probabilities ``levels`` (levels × columns)."""
        return _quantiles(levels, self.cdf[label], self.edges)

    def column_at(self, label: int, levels: torch.Tensor, column: int) -> torch.Tensor:
        """One ``column``'s quantiles (encoded) of class ``label`` at probabilities ``levels``."""
        return _quantiles(levels, self.cdf[label, column:column + 1], self.edges[column:column + 1])[:, 0]

    def grid_at(self, label: int, levels: torch.Tensor, column: int) -> np.ndarray:
        """One ``column``'s quantiles of class ``label`` at probabilities ``levels``, on the grid's
        scale, in float64 (in float32 a bound's atom bin, about 1e-9 of the range wide, has no
        width, and its values fall out of it)."""
        cdf = self.cdf[label, column:column + 1].cpu().double()
        return _quantiles(levels.cpu().double(), cdf, self.grid[column:column + 1])[:, 0].numpy()


def _quantiles(levels: torch.Tensor, cdf: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Quantiles at ``levels`` (levels × columns) of distributions with cumulative ``cdf`` at
    ``edges`` (both columns × width): piecewise-linear between the edges, stepping over empty
    bins (flat parts of the cdf)."""
    x = levels.unsqueeze(0).expand(cdf.shape[0], -1).contiguous()
    index = torch.searchsorted(cdf, x).clamp(1, cdf.shape[1] - 1)
    left, right = cdf.gather(1, index - 1), cdf.gather(1, index)
    weight = ((x - left) / (right - left).clamp_min(EPS)).clamp(0.0, 1.0)
    low, high = edges.gather(1, index - 1), edges.gather(1, index)
    return (low + weight * (high - low)).T
