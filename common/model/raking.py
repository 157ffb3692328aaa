"""Released rows raked to the sites' noisy pair tables: post-processing of DP outputs.

The generator is trained to match each site's pair tables (:mod:`fedsyn.model.matching`), but
that term compares the *mean* of the rows' soft group memberships with the table, and a
generator whose outputs hardly depend on its latent noise sits on a saddle there: the mean of
identical rows' outer products is the product of their margins, and moving away from it is a
second-order gain. Measured on the bench's nwtco table, five sites' noisy instit × histol tables
said the two agree in 95 % of rows; the trained generator's rows were independent.

So the release draws ``POOL_FACTOR`` times the rows it needs from the generator, weights them by
iterative proportional fitting (raking; Deming and Stephan, 1940) so that each site slot's rows
reproduce that site's noisy pair tables, its tables of those columns by outcome class and its
outcome class shares, and draws the released rows from the pool by those weights (capped, and
drawn systematically, so that no pool row is released twice). Raking gives the distribution
closest to the pool's (in Kullback-Leibler divergence) that has the measured margins: where the
tables say nothing, the pool's own relations are kept, those of its numeric columns made
independent given the tables first (:mod:`fedsyn.model.max_entropy`).

The sites measure the same pairs, chosen together; one site's table is noisy, so each slot
is raked to the pooled association of every site's table of the pair, fitted to this site's own
one-way margins (:func:`pooled_pair_tables`, which the coordinator applies once to the tables
it keeps). How two columns relate comes from the federation; how often each value occurs stays
the site's own.

Only the model and the noisy tables are read, with the release's own random stream: no privacy
cost, nothing new is published.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from fedsyn.data.grid import bin_index, bin_labels, bound_value_bins, numeric_bins
from fedsyn.data.schema import Column, Schema
from fedsyn.privacy.marginals import Marginals, measured_columns, split_column
from fedsyn.privacy.pairs import Pair, bin_groups, group_count, group_index, pair_cells

POOL_FACTOR = 10  # pool rows drawn per released row
MAX_SWEEPS = 30  # raking sweeps over every margin, at most
_CONVERGED = 1e-3  # a sweep that moves no weight by more than this share ends the raking
_TARGET_FLOOR = 1e-4  # a cell the table makes empty keeps a little weight: the table is noisy


@dataclass(frozen=True)
class Margin:
    """One measured distribution the pool is raked to: ``rows`` (pool indices) fall into
    ``cells``; ``target`` is the distribution over the cells the table gives."""

    rows: np.ndarray
    cells: np.ndarray
    target: np.ndarray


@dataclass(frozen=True)
class RakingTargets:
    """What a release is raked to, per site slot: its share of the released rows and its noisy
    tables (their pair tables pooled over the federation, :func:`pooled_pair_tables`)."""

    shares: np.ndarray
    marginals: list[Marginals]

    @classmethod
    def of(cls, shares: np.ndarray, marginals: list[Marginals]) -> RakingTargets:
        return cls(np.asarray(shares, dtype=float), list(marginals))


def pooled_pair_tables(schema: Schema, marginals: list[Marginals]) -> list[Marginals]:
    """Each site's tables with every pair table the federation measured (the sites measure the
    same pairs with the same groups, :mod:`fedsyn.privacy.pairs`) replaced by the sites' pooled
    association, fitted to this site's own one-way margins of the two columns (from its outcome
    tables, :func:`fitted_to_margins`) and scaled to its noisy total. A site that measured no
    pairs (its second release failed) gets them too.

    One site's table of a pair carries that site's whole noise on its few hundred rows; the sum
    over the sites is as precise as the federation (measured on the bench: every question of
    rotterdam and nwtco rose by .02-.10 against each site's own picks). How two columns relate
    is pooled; how often each value occurs stays the site's own. Each site's noisy table is made a
    distribution (:meth:`~fedsyn.privacy.marginals.Marginals.pair_distribution`) and the
    distributions are averaged in proportion to the sites' noisy totals, none weighing more than
    all the others together: a site whose table claims a million times its rows still weighs
    its share, so one site cannot dictate a relation to every slot. The groups' bounds are the
    coordinator's, the same at every site. Post-processing of DP outputs."""
    measured: dict[Pair, list[Marginals]] = {}
    for tables in marginals:
        for pair in tables.pairs:
            measured.setdefault(pair, []).append(tables)
    if not measured:
        return marginals
    bounds = {name: values for tables in marginals for name, values in tables.pair_bounds.items()}
    pooled = {}
    for pair, sources in measured.items():
        totals = np.array([source.total() for source in sources])
        weights = np.minimum(totals, totals.sum() - totals) if len(sources) > 1 else totals
        pooled[pair] = sum(w * source.pair_distribution(pair) for w, source in zip(weights, sources)) / weights.sum()
    return [replace(own, pairs={pair: own.total() * fitted_to_margins(
                joint, _group_margin(schema, own, pair[0], bounds), _group_margin(schema, own, pair[1], bounds))
                for pair, joint in pooled.items()}, pair_bounds=dict(bounds), votes={})
            for own in marginals]


def _group_margin(schema: Schema, marginals: Marginals, name: str, bounds: dict[str, np.ndarray]) -> np.ndarray:
    """A site's distribution of a column's pair-table groups, from its outcome tables."""
    column = schema.column(name)
    by_bin = _by_class(marginals, name).sum(axis=1)
    groups = bin_groups(column, np.arange(len(by_bin)), bounds.get(name))
    margin = np.bincount(groups, weights=by_bin, minlength=group_count(column))
    return np.asarray(margin / max(float(margin.sum()), 1e-12), dtype=float)


def fitted_to_margins(joint: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The two-way distribution closest to ``joint`` (in Kullback-Leibler divergence) whose row
    sums are ``first`` and column sums ``second`` (both distributions), by :func:`rake` over its
    cells: it keeps ``joint``'s association (its odds ratios) and takes the margins given.
    ``joint`` is blended with a thousandth of the margins' product first, so that a row or
    column it leaves empty can still take its margin's mass."""
    rows, columns = joint.shape
    blended = np.asarray(joint, dtype=float) / max(float(np.sum(joint)), 1e-12) + 1e-3 * np.outer(first, second)
    cells = np.arange(rows * columns)
    fitted = rake(blended.ravel(), [Margin(cells, cells // columns, first), Margin(cells, cells % columns, second)])
    return np.asarray(fitted.reshape(rows, columns) / fitted.sum(), dtype=float)


def _by_class(marginals: Marginals, name: str) -> np.ndarray:
    """A slot's joint distribution of a column's public bins and the outcome's classes (bins ×
    classes), from its tables: P(bin | class) times its class shares."""
    totals = marginals.class_totals()
    return np.asarray(marginals.conditional(name) * (totals / totals.sum())[None, :], dtype=float)


def slot_margins(frame: pd.DataFrame, rows: np.ndarray, classes: np.ndarray, schema: Schema,
                 marginals: Marginals, row_cap: float = 1.0) -> list[Margin]:
    """The margins of one slot's pool ``rows`` (positions in ``frame``, of outcome ``classes``):
    the table by outcome class of every categorical column and of each numeric column in a pair
    (its bins merged into its pair groups: the site's fine bins are too noisy to rake to), each
    pair table, and last the outcome's class shares (so raking ends on the outcome's mix).

    The tables by class hold how each column depends on the outcome at this site. Raked to the
    pair tables alone, the pool kept less of it (the bench's declared outcome lost .01-.03 of
    ROC-AUC on three tables of four), and a categorical column in no pair kept none of the
    site's own mix. A numeric column in no pair gets its site's departure from the pool when it
    is drawn (:mod:`fedsyn.model.calibration`); raked to its runs of bins,
    a weak class's noisy tail (a third of dead patients' lactate in its top run) would be
    weighted in. Its point masses are raked to, though (:func:`point_mass_bounds`): the
    calibration keeps a class's share at an atom only within its noise of the slot's table, and
    leaves 'missing' as drawn. Each point-mass cell
    is asked no more than its pool rows can hold, ``row_cap`` (the most of the slot's weight one
    row may take) each (:func:`_within_reach`)."""
    part = frame.iloc[rows]
    totals = marginals.class_totals()
    shares = totals / totals.sum()
    margins = []
    for column in measured_columns(schema):
        bounds = marginals.pair_bounds.get(column.name)
        masses = not column.is_categorical and bounds is None
        if masses:
            bounds = point_mass_bounds(column)
            if bounds is None:
                continue
        groups = bin_groups(column, np.arange(bin_labels(column)), bounds)
        joint = _by_class(marginals, column.name)  # public bins × classes
        grouped = np.zeros((int(groups.max()) + 1, len(shares)))
        np.add.at(grouped, groups, joint)
        cells = np.asarray(group_index(column, part[column.name], bounds) * len(shares) + classes)
        target = _within_reach(grouped, np.bincount(cells, minlength=grouped.size).reshape(grouped.shape) * row_cap) \
            if masses else grouped
        margins.append(Margin(rows, cells, target.ravel()))
    for pair in marginals.pairs:
        margins.append(Margin(rows, pair_cells(part, schema, pair, marginals.pair_bounds),
                              marginals.pair_distribution(pair).ravel()))
    if split_column(schema) is not None:
        margins.append(Margin(rows, classes, shares))
    return margins


def _within_reach(target: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """``target`` (groups × classes, a distribution) with no cell above its ``reach`` (what its
    pool rows can hold under the cap), what is taken off given to the class's other cells in
    proportion to their targets (to their room left where the class has no other target: a
    class the table puts wholly in one cell keeps its share). Asked for more, the raking piled
    weight on a point mass's few pool rows within each sweep and the cap cut it after, leaving
    every other margin bent (a site's 32 % at an assay's limit against the pool's 1 % moved a
    categorical column's class tables by .2 TV)."""
    target = np.asarray(target, dtype=float).copy()
    for _ in range(target.shape[0]):
        over = target > reach
        if not over.any():
            break
        excess = np.where(over, target - reach, 0.0).sum(axis=0)
        target = np.where(over, reach, target)
        room = np.maximum(reach - target, 0.0)
        free = np.where(room > 0, target, 0.0)  # the class's other targets, where rows can take more
        share = np.where(free.sum(axis=0) > 0, free, room)  # a class with none: by the room left
        target += share * (excess / np.maximum(share.sum(axis=0), 1e-300))[None, :]
    return target


def point_mass_bounds(column: Column) -> np.ndarray | None:
    """Group bounds (public bin indices, as :func:`fedsyn.privacy.pairs.group_bounds` gives a
    pair's) that set a numeric column's point masses apart from its other values: each bin that
    holds a bound's value alone (a continuous column's atoms, an integer column's bound where its
    value has a bin of its own: :func:`fedsyn.data.grid.bound_value_bins`) and, in a group of
    its own, 'missing' (a nullable column). None for a column without either.

    The generator under-draws point masses, and the calibration moves no value into 'missing'
    and keeps a share at an atom only within its noise: a newcomer's CRP sat at its assay limit
    in 7 % of real rows and 1 % of released ones, glucose was missing in 5 % of real rows and 0.1 % of
    released ones. The tables hold both (their atoms and 'missing' cells kept only where they
    beat the noise, :meth:`~fedsyn.privacy.marginals.Marginals.without_noise_floor`)."""
    lower_alone, upper_alone = bound_value_bins(column)
    if not (lower_alone or upper_alone or column.nullable):
        return None
    bins = numeric_bins(column)
    return np.unique(np.array([0, 1 if lower_alone else 0, bins - 1 if upper_alone else bins, bins], dtype=float))


def rake(weights: np.ndarray, margins: list[Margin], ceiling: np.ndarray | None = None) -> np.ndarray:
    """``weights`` scaled, margin after margin, until each margin's rows are spread over its cells
    as its target says (or a sweep no longer moves them). A margin's rows keep their total weight
    (a slot keeps its share); a cell no pool row falls in cannot be reached and is left alone.

    ``ceiling`` caps each row's weight after every sweep: noisy, mutually inconsistent tables
    otherwise pile the weight onto a few rows, which the release would repeat."""
    weights = np.asarray(weights, dtype=float).copy()
    for _ in range(MAX_SWEEPS):
        before = weights.copy()
        for margin in margins:
            part = weights[margin.rows]
            total = part.sum()
            if total <= 0:
                continue
            current = np.bincount(margin.cells, weights=part, minlength=len(margin.target)) / total
            ratio = np.where(current > 0, np.maximum(margin.target, _TARGET_FLOOR) / np.maximum(current, 1e-300), 1.0)
            scaled = part * ratio[margin.cells]
            weights[margin.rows] = scaled * (total / scaled.sum())
        if ceiling is not None:
            np.minimum(weights, ceiling, out=weights)
        if np.max(np.abs(weights - before) / np.maximum(before, 1e-300)) < _CONVERGED:
            break
    return weights


def release_weights(frame: pd.DataFrame, schema: Schema, slots: np.ndarray, targets: RakingTargets,
                    count: int) -> np.ndarray:
    """Each pool row's probability of being released, for ``count`` released rows: slot ``k``'s
    rows share ``targets.shares[k]``, raked to its tables (see the module),
    none above ``1 / count``, so that drawn systematically (:func:`systematic_picks`) no pool
    row is released twice (the pool holds ``POOL_FACTOR`` times ``count`` rows: room for that).

    The weight the cap takes back goes to the other rows of the same slot and outcome class, so
    that each slot keeps its share and its class shares: spread over the slot's rows instead, it
    moved a newcomer's death rate from 12 % to 14 % once every column was raked. A class the
    slot's pool lacks has its share spread over the slot's other classes, and what a class's rows
    cannot take under the cap goes to the slot's other rows: dropped, the final normalisation
    would lift rows above the cap (a row released twice) and move the slots' shares."""
    shares = targets.shares
    weights = np.zeros(len(frame))
    margins: list[Margin] = []
    classes = outcome_classes(frame, schema)
    members = [np.flatnonzero(slots == slot) for slot in range(len(shares))]
    ceiling = (1.0 - 1e-9) / count
    drawn = sum(share for rows, share in zip(members, shares) if len(rows))
    for rows, share, tables in zip(members, shares, targets.marginals):
        if len(rows):
            weights[rows] = share / len(rows)
            row_cap = ceiling * drawn / max(share, 1e-300)  # the most of the slot's weight one row may take
            margins += slot_margins(frame, rows, classes[rows], schema, tables, row_cap)
    weights = rake(weights / weights.sum(), margins, ceiling=np.full(len(weights), ceiling))
    for rows, share, tables in zip(members, shares, targets.marginals):
        if not len(rows):
            continue
        total = share / drawn
        totals = tables.class_totals() * np.isin(np.arange(len(tables.class_totals())), classes[rows])
        for label, class_share in enumerate(totals / max(totals.sum(), 1e-300)):
            group = rows[classes[rows] == label]
            if len(group):
                weights[group] = _capped(weights[group], ceiling, total * class_share)
        # A class with too few pool rows for its share under the cap: the rest to the slot's others.
        weights[rows] = _capped(weights[rows], ceiling, total)
    return np.asarray(weights / weights.sum(), dtype=float)


def outcome_classes(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Each row's outcome class (all 0 without an outcome)."""
    split = split_column(schema)
    return np.asarray(bin_index(split, frame[split.name])) if split is not None else np.zeros(len(frame), dtype=int)


def _capped(weights: np.ndarray, ceiling: float, total: float) -> np.ndarray:
    """``weights`` scaled to sum to ``total`` with none above ``ceiling``: what the cap takes from
    the heaviest rows goes to the others in proportion (as far as ``ceiling`` times the rows allows)."""
    weights = np.minimum(weights * (total / max(weights.sum(), 1e-300)), ceiling)
    for _ in range(100):
        deficit = total - weights.sum()
        free = weights < ceiling
        if deficit <= total * 1e-9 or not free.any() or weights[free].sum() <= 0:
            break
        weights[free] = np.minimum(weights[free] * (1.0 + deficit / weights[free].sum()), ceiling)
    return weights


def systematic_picks(weights: np.ndarray, count: int, offset: float) -> np.ndarray:
    """``count`` pool rows drawn by systematic resampling: one ``offset`` in [0, 1) shifts
    ``count`` evenly spaced points over the cumulative weights, so a row is drawn the floor or
    the ceiling of ``count`` times its weight, never more (multinomial draws repeat rows at random)."""
    points = (offset + np.arange(count)) / count
    cumulative = np.cumsum(weights)
    picks = np.searchsorted(cumulative, points * cumulative[-1], side="right")
    return np.asarray(np.minimum(picks, len(weights) - 1), dtype=np.int64)
