"""The public grid: the bins every histogram of a column uses, from the schema alone.

A numeric column's bins lie between its public bounds in its transformed space (log or
linear); a categorical column's bins are its categories; a nullable column has one more,
'missing', at the end. The rows never decide a bin, so the encoder, the noisy tables, the
evaluation and the release all read the grid from here without touching anything private.
``GRID_VERSION`` names the grid in the schema's fingerprint (see
:func:`fedsyn.federation.protocol.schema_fingerprint`): a site that bins differently
refuses before it charges anything.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fedsyn.data.schema import Column, ColumnKind, spell_category, step_decimals
from fedsyn.errors import ConfigurationError

# 3: a continuous column's bounds are atoms with bins of their own; 4: an integer column's lower bound too;
# 5: a narrow integer range has a bin per value, its top value included; 6: round 0 also measures a
# numeric column's runs of bins and folds them into its bins (a site of grid 5 sends tables read otherwise)
GRID_VERSION = "fedsyn-grid/6"
NUMERIC_BINS = 64
MISSING = "(missing)"
# Width of an atom's bin, as a share of the column's transformed range: wide enough for float
# error, far narrower than any value a measurement tells apart from the bound.
ATOM_WIDTH = 1e-9


def numeric_edges(column: Column) -> np.ndarray:
    """Public bin edges between the schema's bounds, in the column's transformed space.

    Only the schema decides them (the rows never do), and two public facts shape them:

    - A linear column whose lower bound is 0 is a non-negative measure (a count, a duration,
      a concentration). Honest public bounds are far wider than such data, which piles up
      near 0: equal-width bins put most rows in one bin. Its edges are spaced quadratically
      from 0 (equal steps of the square root), so the bins are fine near 0 and twice the
      equal width at the upper bound. Measured on the real bench tables (noisy per-class
      distributions at epsilon 1, KS against the rows): visit counts 0.36-0.48 -> 0.90,
      lab values 0.72 -> 0.79, length of stay 0.88 -> 0.90; survival times 0.83 -> 0.78.
    - An integer column's edges fall halfway between integers, so a bin holds whole values
      and decoding (which rounds) gives them back: a column that is mostly 0 keeps its 0s
      instead of spreading them over [0, 1) and rounding half of them up. A narrow range
      gets fewer bins than ``NUMERIC_BINS``: one per value on a scale away from 0 (rounded from
      the plain grid, a range of 33-64 values gave its top two values one bin, and an
      oximeter's 100 %, 14 % of a newcomer's rows, was no value of its own); a count from 0
      keeps its quadratic spacing, coarser toward its top's empty reach. Integer columns on a log scale
      keep the plain grid: some of their low bins hold no integer.
    - An integer column's lower bound is a value of its own: 0 hours in intensive care (88 % of
      a newcomer's admissions), a stay of 1 day (a fifth of one unseen table's deaths, 2 % of
      its survivors). It gets a bin that holds it alone where the grid's first bin would hold
      more (0-1 hours on 0-2,000; 1-3 days on 1-180), so the tables tell a pile at the bound
      from its neighbours and decoding gives the bound back. Not the upper bound: a wide range's
      top is an empty reach (365 visits a year), where a bin of its own is one more cell of
      noise, and a scale that piles at its top (a coma score of 15) is narrow enough to have a
      bin for each value already.
    - A continuous column's bounds are atoms: values pile up exactly there (a lab value at its
      assay's limit, a concentration of 0 where 0 is the lower bound: 20 % of one bench
      table's progesterone values). Each bound gets a bin of its own, ``ATOM_WIDTH`` wide, so
      the noisy tables measure its mass and decoding gives the bound back exactly
      (:func:`snap_to_atoms`) instead of spreading it over the first bin.
    """
    low, high = transform_bounds(column)
    steps = np.linspace(0.0, 1.0, NUMERIC_BINS + 1)
    if column.transform == "linear" and low == 0:
        steps = steps ** 2
    edges = low + (high - low) * steps
    if column.kind is ColumnKind.INTEGER and column.transform == "linear":
        first, last = math.ceil(low) - 0.5, math.floor(high) + 0.5
        if last - first <= NUMERIC_BINS and low != 0:  # a narrow scale: a bin per value, its top included
            edges = np.arange(first, last + 0.5, 1.0)
        else:
            inner = np.unique(np.round(edges[1:-1]) - 0.5)
            edges = np.concatenate([[first], inner[(inner > first) & (inner < last)], [last]])
    if column.kind is ColumnKind.INTEGER:
        above_lower = forward_transform(column, np.array([math.ceil(column.bounds[0]) + 0.5]))[0]
        if above_lower < edges[1]:
            edges = np.concatenate([edges[:1], [above_lower], edges[1:]])
    elif column.kind is ColumnKind.CONTINUOUS:
        atom = ATOM_WIDTH * (high - low)
        edges = np.concatenate([[low, low + atom], edges[1:-1], [high - atom, high]])
    return np.asarray(edges, dtype=float)


def bound_value_bins(column: Column) -> tuple[bool, bool]:
    """Whether a numeric column's first and last bins each hold its bound's value alone: a
    continuous column's atoms, and an integer column's bound where a bin's edge falls halfway to
    the next whole value (the lower bound on a linear scale always, :func:`numeric_edges`; the
    upper one on a range narrow enough for a bin per value; not one recorded in coarser steps).
    Such a bin's table cell counts the rows at that very value (0 hours in intensive care, a
    coma score of 15), and a value on the grid's scale inside it decodes to the bound."""
    if column.has_bound_atoms:
        return True, True
    if column.kind is not ColumnKind.INTEGER or column.recorded_step != 1.0:
        return False, False  # recorded in steps of 5, values up to 2.5 past a bound decode to it too
    edges = numeric_edges(column)
    low, high = column.bounds
    tolerance = 1e-9 * float(edges[-1] - edges[0])
    just_above, just_below = forward_transform(column, np.array([math.ceil(low) + 0.5, math.floor(high) - 0.5]))
    lower_alone = abs(edges[1] - just_above) <= tolerance
    upper_alone = len(edges) > 2 and abs(edges[-2] - just_below) <= tolerance
    return bool(lower_alone), bool(upper_alone)


def atom_bins(column: Column, transformed: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Which ``transformed`` positions lie in the lower and in the upper bound's atom bin, on the
    column's grid ``edges`` (:func:`numeric_edges`); None for a column without atoms."""
    if not column.has_bound_atoms:
        return None
    return transformed <= edges[1], transformed >= edges[-2]


def snap_to_atoms(column: Column, transformed: np.ndarray, edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (decoded from ``transformed`` positions on the grid ``edges``) with every
    position in a bound's atom bin set to that bound exactly."""
    atoms = atom_bins(column, transformed, edges)
    if atoms is None:
        return values
    low, high = column.bounds
    return np.where(atoms[0], low, np.where(atoms[1], high, values))


def to_precision(column: Column, values: np.ndarray) -> np.ndarray:
    """``values`` of a numeric column decoded to what it records: rounded once to its declared
    ``precision``, or to whole numbers for an integer column without one (rounding to whole
    numbers first and to an even step after would pile mass on every other multiple), and kept
    between the bounds. A continuous column's value exactly at a bound stays there even off the
    precision's multiples: its bounds are atoms (:func:`numeric_edges`), public values of their
    own; an integer column has no atoms."""
    step = column.recorded_step
    if step is None:
        return values
    first, last = column.recorded_values()
    # Rounded to the step's decimals, 6.800000000000001 is written as 6.8.
    rounded = np.clip(np.round(np.floor(values / step + 0.5) * step, step_decimals(step)), first, last)
    if not column.has_bound_atoms:
        return np.asarray(rounded, dtype=float)
    low, high = column.bounds
    return np.asarray(np.where((values == low) | (values == high), values, rounded), dtype=float)


def numeric_bins(column: Column) -> int:
    """Number of bins of a numeric column's public grid."""
    return len(numeric_edges(column)) - 1


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
    base = len(column.categories or []) if column.is_categorical else numeric_bins(column)
    return base + int(column.nullable)


def bin_index(column: Column, series: pd.Series) -> np.ndarray:
    """Each row's bin of ``column`` (the last one for a missing value of a nullable column)."""
    missing = series.isna().to_numpy()
    if column.is_categorical:
        spelled = series.map(spell_category).where(~missing)  # as validation spells it: 1.0 is '1'
        index = pd.Categorical(spelled, categories=column.categories).codes.astype(int)
    else:
        values = forward_transform(column, series.to_numpy(dtype=float, na_value=np.nan))
        edges = numeric_edges(column)
        index = np.clip(np.searchsorted(edges, np.where(missing, edges[0], values), side="right") - 1,
                        0, len(edges) - 2)
    if column.nullable:
        index = np.where(missing, bin_labels(column) - 1, index)
    return np.asarray(index)
