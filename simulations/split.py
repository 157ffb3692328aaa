"""Split one table into K hospital extracts: IID, skewed by a column, or Dirichlet label skew."""

from __future__ import annotations

import numpy as np
import pandas as pd


def split_table(frame: pd.DataFrame, sites: int, rng: np.random.Generator, skew: str | None = None,
                dirichlet: float | None = None, label: str | None = None) -> list[pd.DataFrame]:
    """Partition rows into ``sites`` disjoint tables.

    ``skew``: sort by that column, so each site holds a different range/category (non-IID).
    ``dirichlet``: per class of ``label``, site shares drawn from Dirichlet(alpha) (label skew).
    """
    if sites < 1 or sites > len(frame):
        raise ValueError(f"cannot split {len(frame)} rows into {sites} sites")
    order = rng.permutation(len(frame))
    if skew is not None:
        if skew not in frame.columns:
            raise ValueError(f"--skew column '{skew}' is not in the table")
        keys = frame[skew].astype(str) if frame[skew].dtype == object else frame[skew]
        order = order[np.argsort(keys.iloc[order].to_numpy(), kind="stable")]
        return [frame.iloc[part].reset_index(drop=True) for part in np.array_split(order, sites)]
    if dirichlet is not None:
        if label is None:
            raise ValueError("--dirichlet needs an outcome column in the schema")
        assignment = np.empty(len(frame), dtype=int)
        for value in frame[label].dropna().unique():
            rows = order[(frame[label].iloc[order] == value).to_numpy()]
            shares = rng.dirichlet([dirichlet] * sites)
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for site, part in enumerate(np.split(rows, cuts)):
                assignment[part] = site
        missing = order[frame[label].iloc[order].isna().to_numpy()]
        assignment[missing] = rng.integers(0, sites, len(missing))
        return [frame[assignment == s].reset_index(drop=True) for s in range(sites)]
    return [frame.iloc[part].reset_index(drop=True) for part in np.array_split(order, sites)]
