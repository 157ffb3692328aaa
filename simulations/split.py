"""Split one table into K hospital extracts: IID, skewed by a column, or Dirichlet label skew."""

from __future__ import annotations

from typing import Literal

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


def held_out_split(frame: pd.DataFrame, share: float, outcome: str | None, seed: int | None,
                   stratify: Literal["always", "where_possible"] = "always") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``frame``'s rows for training and the ``share`` held out for the local report, stratified
    by ``outcome`` (when given: ``always``, or ``where_possible``, every class having two rows),
    both renumbered.

    A split that cannot be made says so without a count: scikit-learn's own message names how
    many rows the smallest outcome class holds, a small-cell count that would travel on from a
    terminal into logs and tickets (the fifth review's F2)."""
    from sklearn.model_selection import train_test_split

    instead = ("Give real rows the training never sees with --held-out FILE, or --hold-out 0 to train on every "
               "row without a report")
    labels = _strata(frame[outcome]) if outcome is not None else None
    if labels is not None and not _stratifiable(labels):
        if stratify == "always":
            raise ValueError(f"cannot hold out {share:.0%} of the rows stratified by the outcome '{outcome}': "
                             f"some class has too few rows to stratify. {instead}")
        labels = None
    try:
        train, test = train_test_split(frame, test_size=share, random_state=seed, stratify=labels)
    except ValueError:
        raise ValueError(f"cannot hold out {share:.0%} of the rows: too few rows for a held-out part and a "
                         f"training part. {instead}") from None
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _strata(outcome: pd.Series) -> pd.Series:
    """The outcome's classes to stratify by, a row whose outcome is not recorded (a nullable
    outcome) in a stratum of its own, or with the most common class where it is alone: a
    hospital's file with one blank outcome cell stopped `simulate --sites` (helper-122)."""
    labels = outcome.astype(object).where(outcome.notna(), None)
    missing = labels.isna()
    if not missing.any():
        return outcome
    common = labels[~missing].mode()
    filler = "(not recorded)" if missing.sum() >= 2 or common.empty else common.iloc[0]
    return labels.where(~missing, filler).astype(str)


def _stratifiable(labels: pd.Series) -> bool:
    """Every class that occurs has at least two rows (a category's unused levels aside)."""
    counts = labels.value_counts()
    return bool((counts[counts > 0] >= 2).all())
