"""Noisy outcome tables: the only statistics read off private rows outside DP-SGD.

For every column but the outcome, a two-way table of counts: the column's public bins (the
schema's categories, or a fixed grid between the schema's public bounds) by the outcome's
classes; for a numeric column, a second table of the same counts over runs of neighbouring
bins (:func:`numeric_runs`), which the site folds into the first before it is sent
(:func:`with_run_sums`). Every record adds one count to one cell of every table, so the L2
sensitivity of the whole release is the square root of the tables' weight (:func:`tables_weight`:
one per table, a quarter per table of runs, measured at twice the noise). Gaussian noise makes
it one Gaussian mechanism, charged to the privacy ledger. The one-way marginals (including the
outcome's) are sums of the tables, so the outcome's relation to every column comes at the price
the one-way histograms used to cost alone. Sites' noisy tables add up, which is how the federation
builds one global encoder without any site revealing exact counts. A schema without an
outcome gets one-way histograms (tables with one class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.stats import chi2

from fedsyn.data.grid import bin_index, bin_labels, numeric_bins, numeric_edges
from fedsyn.data.schema import Column, Schema
from fedsyn.privacy.accounting import PrivacyEvent
from fedsyn.privacy.budget import MARGINALS
from fedsyn.privacy.pairs import (
    BOUNDS_PREFIX,
    VOTE_PREFIX,
    Pair,
    RoundZeroSplit,
    check_pairs,
    measure_pairs,
    pair_key,
    parse_pair_key,
    vote_arrays,
    vote_count,
    vote_pairs,
)
from fedsyn.privacy.postprocessing import (
    NOISE_FLOOR,
    coarsened,
    onto_simplex,
    point_mass_beyond_noise,
    run_sums,
    shrunk_to_pool,
)
from fedsyn.privacy.randomness import gaussian_counts, on_noise_grid


def split_column(schema: Schema) -> Column | None:
    """The column whose classes split every other column's table: the outcome, if the schema
    names one and has other columns."""
    if schema.outcome is None or len(schema.columns) < 2:
        return None
    return schema.column(schema.outcome)


def measured_columns(schema: Schema) -> list[Column]:
    """The columns whose tables carry noise; the split column's counts are sums of them."""
    split = split_column(schema)
    return [column for column in schema.columns if split is None or column.name != split.name]


def table_shape(schema: Schema, column: Column) -> tuple[int, int]:
    """(bins, classes) of a column's table; the split column's own is its class counts, (classes, 1)."""
    split = split_column(schema)
    if split is None or column.name == split.name:
        return bin_labels(column), 1
    return bin_labels(column), bin_labels(split)


def run_measured_columns(schema: Schema) -> list[Column]:
    """The measured numeric columns whose tables are also measured over runs of neighbouring
    bins (:func:`numeric_runs`): those with more bins than runs. A run's count, measured once at
    ``RUN_NOISE`` times a cell's noise, carries four cells' noise variance; summed from its
    dozen fine bins it carried their dozen, and a small site's or a small class's location
    drowned in them (a newcomer's 188-row hospital of mean age 78 came out at 52;
    docs/benchmarks.md)."""
    return [column for column in measured_columns(schema)
            if not column.is_categorical and numeric_bins(column) > SITE_GROUPS]


RUN_NOISE = 2.0  # a run table's noise std, in a bin table cell's: a quarter of a column's price for its runs


def tables_weight(schema: Schema) -> float:
    """Round 0's tables counted by their price, the square of their L2 sensitivity relative to
    a cell's noise: 1 for each measured column's table, ``RUN_NOISE ** -2`` for each table of
    runs (:func:`run_measured_columns`; measured at ``RUN_NOISE`` times a cell's noise, as one
    table of counts scaled by ``1 / RUN_NOISE``). Each record adds one count to one cell of
    each. Measured at a cell's noise, the runs cost a numeric table's whole price: every cell
    of the others got noisier (22 % on the bench's nmes), and its categorical questions fell."""
    return len(measured_columns(schema)) + len(run_measured_columns(schema)) / RUN_NOISE ** 2


def marginals_sensitivity(schema: Schema) -> float:
    """L2 sensitivity of the release, each table of runs scaled by ``1 / RUN_NOISE``: one record
    moves one cell of every measured table by 1, and of each table of runs by ``1 / RUN_NOISE``."""
    return math.sqrt(tables_weight(schema))


@dataclass
class Marginals:
    """Per-column (noisy) tables over public bins by the outcome's classes, bins × classes.

    The last bin is 'missing' for nullable columns. One-dimensional arrays are one-way
    histograms (one class). ``counts`` are the one-way marginals, summed over classes.

    A site's own tables may also hold its noisy pair tables (``pairs``), their numeric groups'
    bounds (``pair_bounds``) and, in a federation's round 0, the site's votes for the pairs to
    measure (``votes``: each pair's rank), see :mod:`fedsyn.privacy.pairs`. Pairs are per site
    (each site's own noise, pooled by :func:`pooled_pair_tables`), so a sum of sites' tables
    holds none. Built from the wire's flat arrays (``Marginals(arrays)``), the prefixed keys go
    to ``pairs``, ``pair_bounds`` and ``votes``.

    ``cell_std`` is the noise std of one cell of the measured tables, as Private-PGM's
    measurements carry their ``stddev``: set by the measurement (:func:`noisy_marginals`), 0
    for exact counts (:func:`exact_counts`: no noise, so nothing DP about them), combined by
    ``+`` (sites' noise is independent: variances add), and read by the post-processing
    (:meth:`without_noise_floor`). ``None``: not known, e.g. tables read back from the wire or
    a store, which carry arrays only (a receiver states it from what it asked for, see
    :func:`received_marginals`). The pair tables' cells carry their own noise
    (:class:`fedsyn.privacy.pairs.RoundZeroSplit`).
    """

    tables: dict[str, np.ndarray]
    pairs: dict[Pair, np.ndarray] = field(default_factory=dict)
    pair_bounds: dict[str, np.ndarray] = field(default_factory=dict)
    votes: dict[Pair, int] = field(default_factory=dict)
    cell_std: float | None = None

    def __post_init__(self) -> None:
        tables = {}
        for name, values in self.tables.items():
            pair, vote = parse_pair_key(name), parse_pair_key(name, VOTE_PREFIX)
            if pair is not None:
                self.pairs[pair] = np.asarray(values, dtype=float)
            elif vote is not None:
                self.votes[vote] = int(np.asarray(values, dtype=float).ravel()[0])
            elif name.startswith(BOUNDS_PREFIX):
                self.pair_bounds[name[len(BOUNDS_PREFIX):]] = np.asarray(values, dtype=float)
            else:
                tables[name] = np.asarray(values, dtype=float).reshape(len(values), -1)
        self.tables = tables

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every array, flat (the wire's and the store's form): tables, pair tables, group bounds."""
        return {**self.tables, **{pair_key(pair): table for pair, table in self.pairs.items()},
                **{f"{BOUNDS_PREFIX}{name}": bounds for name, bounds in self.pair_bounds.items()},
                **vote_arrays(self.ranked_votes())}

    def ranked_votes(self) -> list[Pair]:
        """The pairs this site voted for (:mod:`fedsyn.privacy.pairs`), its first pick first."""
        return sorted(self.votes, key=self.votes.__getitem__)

    @property
    def counts(self) -> dict[str, np.ndarray]:
        return {name: table.sum(axis=1) for name, table in self.tables.items()}

    def __add__(self, other: Marginals) -> Marginals:
        """The cell-wise sum (of sites' tables): independent noise, so the variances add."""
        std = None if self.cell_std is None or other.cell_std is None else math.hypot(self.cell_std, other.cell_std)
        return Marginals({name: self.tables[name] + other.tables[name] for name in self.tables}, cell_std=std)

    def class_totals(self) -> np.ndarray:
        """Noisy row count per outcome class: every table's class sums averaged by their
        precision (:func:`_precise_class_sums`), at least 1 each (one class when there is no
        outcome)."""
        split = [t for t in self.tables.values() if t.shape[1] > 1]
        if not split:
            return np.array([self.total()])
        return np.asarray(np.clip(_precise_class_sums(split), 1.0, None), dtype=float)

    def conditional(self, name: str, groups: np.ndarray | None = None, group_count: int = 0,
                    post_processed: bool = False) -> np.ndarray:
        """P(bin | class) of a column's table, bins × classes: each class's noisy counts
        projected onto the counts that are non-negative and sum to that class's noisy total.

        Clipping negatives instead would leave half the noise in every empty bin and spread a
        wide-bounded numeric over its whole range; the projection subtracts one threshold per
        class, so most empty bins return to zero (post-processing, no privacy cost).

        A ``post_processed`` table (coarsened, or a slot's drawn toward the pool) is projected at
        most at its own class sums: where it holds less than the class totals (the
        precision-weighted sums of every table), the projection at the total added the
        shortfall evenly to every bin, a stay of 365 days included. Read so by the calibration, a
        slot's stays had a 95th percentile of 96 days (real 15); read so as the pool each site's
        table is drawn toward, four of azpro's five slots held a procedure's stays up to a 95th
        percentile of 141 days, and the release's logistic regression fell to .55-.70
        (docs/benchmarks.md). Its own shape is the better guess of where the rest lies. The other
        readers (the matching's categorical and missing shares, the raking's per-slot targets, the
        calibration's atoms) keep the totals: read never-adding everywhere, the bench's nmes lost
        .03 of its outcome's ROC-AUC over three seeds (session 30, not rerun since).

        With ``groups`` (each bin's group, ``group_count`` groups) the noisy counts are summed
        into the groups first and projected after: a sum of noise has mean zero, while
        projecting dozens of sparse tail bins one by one leaves their positive noise behind."""
        table = self.tables[name]
        if groups is not None:
            table = run_sums(table, groups, group_count)
        totals = self.class_totals() if table.shape[1] > 1 else np.array([self.total()])
        if post_processed:
            held = table.sum(axis=0)
            totals = np.where(held > 0, np.minimum(totals, held), totals)
        projected = np.stack([onto_simplex(table[:, k], totals[k]) for k in range(table.shape[1])], axis=1)
        return np.asarray(projected / projected.sum(axis=0, keepdims=True), dtype=float)

    def pair_distribution(self, pair: Pair) -> np.ndarray:
        """A noisy pair table made a distribution: projected onto the non-negative tables that
        sum to the noisy total (as :meth:`conditional` does per class), then normalised."""
        table = self.pairs[pair]
        projected = onto_simplex(table.ravel(), self.total()).reshape(table.shape)
        return np.asarray(projected / projected.sum(), dtype=float)

    def probabilities(self, name: str, floor: float = 1e-3) -> np.ndarray:
        """Noisy counts made a distribution (projected as in :meth:`conditional`), every bin kept possible."""
        counts = onto_simplex(self.counts[name], self.total())
        probs = counts / counts.sum()
        probs = probs + floor / len(probs)
        return np.asarray(probs / probs.sum(), dtype=float)

    def without_noise_floor(self, schema: Schema, threshold: float = NOISE_FLOOR) -> Marginals:
        """Numeric tables coarsened where the noise would drown the counts (post-processing).

        Each outcome class's counts are coarsened on their own (:func:`fedsyn.privacy.postprocessing.coarsened`), at the
        resolution they support: a cell's noise is :attr:`cell_std` whatever the class's size, so
        a rare class gets wider bins than a common one, and the noise of a common class's
        cells never lands as invented rows in a rare class; a class too small to say anything of
        the column is spread like the column's counts over every class (coarsened under their
        own noise), so it shows no effect rather than a false one. A cell that stands alone (a
        nullable column's 'missing', a continuous column's bound atom) is settled first, class by
        class (:func:`~fedsyn.privacy.postprocessing.point_mass_beyond_noise`). :attr:`cell_std`
        follows from public numbers only (the noise multiplier, the number of tables, the number
        of sites). Exact counts (std 0) have no noise to drown them and are returned as they are.
        """
        if self.cell_std is None:
            raise ValueError("the tables' noise std is unknown: build them with noisy_marginals or received_marginals")
        if self.cell_std == 0:
            return self
        cell_std = self.cell_std
        runs_measured = run_measured_columns(schema)
        tables = dict(self.tables)
        class_totals = self.class_totals()
        for column in schema.columns:
            if column.is_categorical or column.name not in tables:
                continue
            table = tables[column.name].copy()
            body = table[:-1] if column.nullable else table
            widths = np.diff(numeric_edges(column))
            atoms = (0, len(widths) - 1) if column.has_bound_atoms else ()
            classes = body.shape[1]
            if column.nullable:
                table[-1] = point_mass_beyond_noise(table[-1], class_totals, threshold * cell_std, cell_std)
            present = class_totals - (table[-1] if column.nullable else 0.0)
            for index in atoms:
                body[index] = point_mass_beyond_noise(body[index], present, threshold * cell_std, cell_std)
            every_class = coarsened(body.sum(axis=1), widths, threshold * cell_std * math.sqrt(classes),
                                    float(present.sum()), atoms)  # a class too small to say more is spread like it
            folded = body.copy()  # the bound atoms settled, the rest as measured (and folded, with_run_sums)
            for k in range(classes):
                body[:, k] = coarsened(body[:, k], widths, threshold * cell_std, present[k], atoms, prior=every_class)
            if column in runs_measured:
                runs = numeric_runs(column)[:len(widths)]
                body[:] = _held_to_runs(body, folded, runs, widths, cell_std, threshold, present, every_class, atoms)
            tables[column.name] = table
        return replace(self, tables=tables)

    def total(self) -> float:
        """The noisy row count: each column's noisy table sums to it, so their average by
        precision (:func:`_precise_class_sums`) is the least noisy estimate (post-processing of
        the DP release), at least 1. The outcome's own table, the sum of the others' class sums,
        is left out where there are tables by class: it would count them twice."""
        by_class = [table for table in self.tables.values() if table.shape[1] > 1]
        tables = by_class or list(self.tables.values())
        if not tables:
            return 1.0
        return max(1.0, float(_precise_class_sums(tables).sum()))

    def to_dict(self) -> dict[str, list[list[float]]]:
        return {name: values.tolist() for name, values in self.arrays.items()}

    @classmethod
    def from_dict(cls, raw: dict[str, list[list[float]]]) -> Marginals:
        return cls({name: np.asarray(values, dtype=float) for name, values in raw.items()})

    @classmethod
    def uniform(cls, schema: Schema) -> Marginals:
        """The no-information marginals: used when no statistics are released at all."""
        return cls({c.name: np.ones(table_shape(schema, c)) for c in schema.columns})


def class_distances(target: Marginals, produced: Marginals, schema: Schema) -> dict[str, float]:
    """Per column (the split column aside), the total variation between ``produced``'s and
    ``target``'s P(bin | class), averaged with equal weight per outcome class: how far rows'
    tables (``produced``) are from the noisy ones in each class, where the outcome's relations
    live. Post-processing of whatever ``target`` is."""
    split = split_column(schema)
    return {column.name: float(np.mean(0.5 * np.abs(target.conditional(column.name)
                                                     - produced.conditional(column.name)).sum(axis=0)))
            for column in schema.columns if split is None or column.name != split.name}


def _precise_class_sums(tables: list[np.ndarray]) -> np.ndarray:
    """Per outcome class, the least noisy estimate of the class's size from ``tables`` (each
    bins × classes): every table counts each record once, and every cell of a release carries
    noise of one std, so a table's class sum carries the noise of as many cells as it has bins.
    Each table is weighted by the inverse of that (1 / bins), not equally: equally, a numeric
    column's 60 bins outweighed the 2-level columns' precise sums, and a 300-row site's class
    of 46 rows came out empty (nwtco, docs/benchmarks.md)."""
    weights = np.array([1.0 / max(table.shape[0], 1) for table in tables])
    sums = np.stack([table.sum(axis=0) for table in tables])
    return np.asarray((weights[:, None] * sums).sum(axis=0) / weights.sum(), dtype=float)


def exact_counts(frame: pd.DataFrame, schema: Schema) -> Marginals:
    """Exact tables. Of private rows: only ever released through :func:`noisy_marginals` (on
    synthetic rows they measure a release, see :func:`fedsyn.model.matching.release_misfit`)."""
    split = split_column(schema)
    classes = bin_index(split, frame[split.name]) if split is not None else np.zeros(len(frame), dtype=int)
    tables: dict[str, np.ndarray] = {}
    for column in schema.columns:
        bins, width = table_shape(schema, column)
        if split is not None and column.name == split.name:
            tables[column.name] = np.bincount(classes, minlength=bins).astype(float).reshape(bins, 1)
            continue
        index = bin_index(column, frame[column.name]) * width + classes
        tables[column.name] = np.bincount(index, minlength=bins * width).astype(float).reshape(bins, width)
    return Marginals(tables, cell_std=0.0)


def round_zero_split(schema: Schema, noise_multiplier: float, pairs_share: float) -> RoundZeroSplit:
    """How a round-0 release with ``noise_multiplier`` is shared: ``pairs_share`` for pairs,
    none with fewer than two measured columns. Public numbers only."""
    return RoundZeroSplit(noise_multiplier, pairs_share if len(measured_columns(schema)) >= 2 else 0.0)


def table_noise_std(weight: float, noise_multiplier: float, pairs_share: float = 0.0) -> float:
    """The noise std of one cell of a site's outcome tables when tables of ``weight``
    (:func:`tables_weight`) are measured, in a round-0 release with ``noise_multiplier`` of
    which ``pairs_share`` goes to pair tables (none with fewer than two measured columns: a
    weight below 2, since a column's runs weigh less than a column while ``RUN_NOISE`` > 1).
    Public numbers only."""
    share = pairs_share if weight >= 2 else 0.0
    return RoundZeroSplit(noise_multiplier, share).tables * math.sqrt(max(weight, 1.0))


def noisy_marginals(frame: pd.DataFrame, schema: Schema, noise_multiplier: float,
                    rng: np.random.Generator, pairs_share: float = 0.0, sites: int | None = None) -> Marginals:
    """The round-0 release: the event :func:`marginals_event` describes (with ``sites``, the
    first of a federation's two, :func:`first_release_event`). Charge it first.

    Every measured table with Gaussian noise, and with ``pairs_share`` > 0 the pairs
    (:mod:`fedsyn.privacy.pairs`): the tables then get ``1 - pairs_share`` of the release
    (noise multiplier ``noise_multiplier / sqrt(1 - pairs_share)``), the pairs the rest. A site
    alone (``sites`` None) picks its pairs and measures them here: the whole costs exactly one
    Gaussian mechanism with ``noise_multiplier``. A site of a federation of ``sites`` only
    votes here; the pair tables the sites choose together are the second release
    (:func:`fedsyn.privacy.pairs.measure_pair_tables`). The multiplier is relative to the
    tables' L2 sensitivity :func:`marginals_sensitivity`. The outcome's own counts are the
    noisy tables' class sums averaged by their precision (post-processing, :func:`_precise_class_sums`).
    """
    measured = measured_columns(schema)
    split = round_zero_split(schema, noise_multiplier, pairs_share)
    std = table_noise_std(tables_weight(schema), noise_multiplier, pairs_share)
    exact = exact_counts(frame, schema)
    tables = {c.name: gaussian_counts(exact.tables[c.name], std, rng) for c in measured}
    for name, counts in run_tables(exact, schema).items():  # each run's count once more
        runs = numeric_runs(schema.column(name))
        measured_runs = gaussian_counts(counts, RUN_NOISE * std, rng)
        tables[name] = on_noise_grid(with_run_sums(tables[name], measured_runs, runs), std)
    outcome = split_column(schema)
    if outcome is not None:
        tables[outcome.name] = _precise_class_sums(list(tables.values())).reshape(-1, 1)
    outcome_tables = Marginals({c.name: tables[c.name] for c in schema.columns}, cell_std=std)
    if not split.pairs_share:
        return outcome_tables
    if sites is not None:
        count = vote_count(outcome_tables.total(), split.pair_tables, len(measured), sites)
        votes = vote_pairs(frame, schema, measured, outcome_tables, split, count, rng, sites)
        return Marginals({**outcome_tables.tables, **vote_arrays(votes)}, cell_std=std)
    pairs = measure_pairs(frame, schema, measured, outcome_tables, noise_multiplier, split.pairs_share, rng)
    return Marginals({**outcome_tables.tables, **pairs}, cell_std=std)


def received_marginals(arrays: dict[str, np.ndarray], schema: Schema, noise_multiplier: float,
                       pairs_share: float) -> Marginals:
    """A site's round-0 arrays as the coordinator that asked for them holds them: their cell
    noise std is that of the release it asked for (``noise_multiplier`` and ``pairs_share`` of
    its own query: public), never anything the site says.

    A site's word on its noise could only mislead the post-processing. Claiming less noise
    than asked would make :meth:`Marginals.without_noise_floor` keep cells it should merge, so
    the noise of every site's tables would become invented rows in the shared encoding
    everyone trains on; claiming more would flatten every site's detail. Neither helps the
    site's own patients: their protection is the noise the site adds, which no claim
    changes. The query's std is the most an honest site adds (a site on a PRV ledger
    measures no pair tables and gives its tables the whole multiplier, less noise than
    this), so the coarsening errs on the coarse side."""
    return Marginals(arrays, cell_std=table_noise_std(tables_weight(schema), noise_multiplier, pairs_share))


def shrunk_site_tables(schema: Schema, parts: list[Marginals], summed: Marginals) -> list[Marginals]:
    """Each site's outcome tables with their noise drawn toward the federation's ``summed``
    tables, column by column and class by class, as far as the sites' differences are noise
    (:func:`fedsyn.privacy.postprocessing.shrunk_to_pool`): post-processing of DP outputs.

    A site's tables say how its own rows depend on the outcome, and the generator matches each
    slot's rows to them and the release is raked to them. Alone they are noisy: a site of 300
    rows splits each column's counts over the outcome's classes at the whole release's noise
    (measured in docs/benchmarks.md). Each site's cell std
    (:attr:`Marginals.cell_std`, the query's) must be known; pair tables are kept as they are
    (the coordinator pools them, :func:`fedsyn.model.raking.pooled_pair_tables`). The results
    are no longer counts plus noise of a known std, so their ``cell_std`` is None.

    A federation of one site has nothing to pool: its tables are the ``summed`` ones, which are
    its own post-processed (left raw, a site that no row lacks glucose at was raked toward
    glucose missing in up to 7 % of a class's rows)."""
    if any(part.cell_std is None for part in parts):
        raise ValueError("a site's noise std is unknown: build its tables with received_marginals")
    if len(parts) == 1:
        own = {**parts[0].tables, **{column.name: summed.tables[column.name] for column in measured_columns(schema)}}
        return [replace(parts[0], tables=own, cell_std=None)]
    stds = np.array([float(part.cell_std or 0.0) for part in parts])
    sizes = np.stack([part.class_totals() for part in parts])
    tables: list[dict[str, np.ndarray]] = [dict(part.tables) for part in parts]
    runs_measured = run_measured_columns(schema)
    for column in measured_columns(schema):
        stacked = np.stack([part.tables[column.name] for part in parts])
        pooled = summed.conditional(column.name, post_processed=True)
        runs = site_groups(column)
        run_noise = run_noise_cells(runs) if runs is not None and column in runs_measured else None
        shrunk = shrunk_to_pool(stacked, sizes, stds, pooled, runs, run_noise, missing_last=column.nullable)
        for own, table in zip(tables, shrunk):
            own[column.name] = table
    return [replace(part, tables=own, cell_std=None) for part, own in zip(parts, tables)]


SITE_GROUPS = 8  # a numeric column's bins, in this many runs: measured as a table of their own, and where a
# site's own mix is weighed against the pool


def run_tables(exact: Marginals, schema: Schema) -> dict[str, np.ndarray]:
    """The second table round 0 measures of each :func:`run_measured_columns` column: its
    ``exact`` counts over runs of neighbouring bins (:func:`numeric_runs`), runs × classes."""
    return {column.name: run_sums(exact.tables[column.name], numeric_runs(column))
            for column in run_measured_columns(schema)}


def with_run_sums(bins: np.ndarray, run_counts: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """Noisy counts of a column's bins (bins × classes, a cell's noise std each) made consistent
    with the noisy counts of their runs (``run_counts``, runs × classes, ``RUN_NOISE`` times that
    std; ``runs``: each bin's run): the least-squares estimate of the bins from both, which gives
    each of a run's ``k`` bins ``1 / (k + RUN_NOISE²)`` of the difference between the run's count
    and its bins' sum (post-processing). A run's sum then carries ``k RUN_NOISE² / (k +
    RUN_NOISE²)`` of a cell's noise variance (:func:`run_noise_cells`) instead of ``k``."""
    width = np.bincount(runs, minlength=len(run_counts)).astype(float)
    gap = (run_counts - run_sums(bins, runs)) / (width + RUN_NOISE ** 2)[:, None]
    return np.asarray(bins + gap[runs], dtype=float)


def run_noise_cells(runs: np.ndarray) -> np.ndarray:
    """The noise variance of each run's sum in a table made consistent with its measured runs
    (:func:`with_run_sums`), in a cell's: ``k RUN_NOISE² / (k + RUN_NOISE²)`` for a run of ``k``
    bins (under ``RUN_NOISE²``, however long the run; ``k`` bins' sums alone carry ``k``)."""
    width = np.bincount(runs).astype(float)
    return np.asarray(width * RUN_NOISE ** 2 / (width + RUN_NOISE ** 2), dtype=float)


def _held_to_runs(fine: np.ndarray, folded: np.ndarray, runs: np.ndarray, widths: np.ndarray, cell_std: float,
                  threshold: float, present: np.ndarray, every_class: np.ndarray, atoms: tuple[int, ...]) -> np.ndarray:
    """A numeric column's coarsened body (``fine``, bins × classes), a class's mass per run of
    neighbouring bins (``runs``) taken from the runs' own counts where ``fine`` contradicts them
    (post-processing).

    The ``folded`` counts (made consistent with the measured runs, :func:`with_run_sums`)
    give each run's sum at the noise of a few cells (:func:`run_noise_cells`, under
    ``RUN_NOISE²``), where its dozen bins carry a dozen cells' (``cell_std`` each). Coarsened bin
    by bin only, a class whose rows fill two runs beat no group's floor and was spread like
    every class (nwtco's relapsed patients' time to relapse, 440 rows in 2 runs of 8, spread
    over all 8 in four draws of six), and a stretch of noise in an empty reach outscored the
    rows themselves. So where the class's run sums in ``fine`` depart from the measured ones by
    more than their noise explains (a chi-square test at 95 % over the runs), the measured run
    sums, coarsened as bins of their own (:func:`~fedsyn.privacy.postprocessing.coarsened` at a
    run's noise and ``threshold``, never more than the class's total, ``present``), take their
    place; a class whose runs agree keeps ``fine`` as it is (counts that pile at 0, whose runs' widths grow
    fast, kept their tails' decay). The bound ``atoms`` keep what they were settled at; within
    each run, ``fine`` places the rest of the run's mass, or, where it left the run empty,
    ``every_class`` does, or the bins' ``widths``."""
    atom = np.isin(np.arange(len(widths)), atoms)
    free = np.where(atom[:, None], 0.0, folded)
    run_widths = run_sums(widths[:, None], runs)[:, 0]
    noise = cell_std ** 2 * run_noise_cells(runs)  # each run sum's noise variance
    run_floor = threshold * math.sqrt(float(np.max(noise)))
    every_run = run_sums(np.where(atom, 0.0, every_class)[:, None], runs)[:, 0]
    held = fine.copy()
    for k in range(fine.shape[1]):
        sums = run_sums(free[:, k:k + 1], runs)[:, 0]
        placed = run_sums(np.where(atom, 0.0, fine[:, k])[:, None], runs)[:, 0]
        if float(np.sum((sums - placed) ** 2 / noise)) <= chi2.ppf(0.95, len(noise)):
            continue
        rest = max(float(present[k]) - float(fine[atom, k].sum()), 0.0)
        targets = np.clip(coarsened(sums, run_widths, run_floor, rest, prior=every_run), 0.0, None)
        targets *= min(1.0, rest / max(float(targets.sum()), 1e-12))  # noise makes no class larger
        for run, target in enumerate(targets):
            inside = (runs == run) & ~atom
            held[inside, k] = target * _shape_within(fine[inside, k], every_class[inside], widths[inside])
    return held


def _shape_within(own: np.ndarray, every_class: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """How a run's mass is spread over its bins: like the class's own coarsened counts there,
    else like every class's, else by width (shares that sum to 1; none for a run of no width)."""
    for shape in (np.clip(own, 0.0, None), np.clip(every_class, 0.0, None), widths):
        if shape.sum() > 0:
            return np.asarray(shape / shape.sum(), dtype=float)
    return np.zeros(len(widths))


def site_groups(column: Column) -> np.ndarray | None:
    """A numeric column's bins in SITE_GROUPS runs of neighbours (:func:`numeric_runs`): a site
    whose ages are all ten years older than the pool's differs little in any one of 64 bins,
    less than their noise, and much in each run of 8. None for a categorical column: its levels
    have no neighbours."""
    return None if column.is_categorical else numeric_runs(column)


def numeric_runs(column: Column) -> np.ndarray:
    """Each bin's run of neighbours, numbered from 0: a numeric column's bins in SITE_GROUPS runs
    (its 'missing' bin a run of its own, last)."""
    body = numeric_bins(column)
    runs = np.arange(body) * min(SITE_GROUPS, body) // body
    return np.concatenate([runs, [runs[-1] + 1]]) if column.nullable else runs


def federation_tables(schema: Schema, parts: list[Marginals], noise_floor: float) -> tuple[Marginals, list[Marginals]]:
    """What the coordinator makes of the sites' round-0 tables (each carrying the std of the
    query it was asked, :func:`received_marginals`): the summed tables (:func:`summed_tables`)
    and each site's own tables drawn toward that sum (:func:`shrunk_site_tables`). All
    post-processing of DP outputs."""
    summed = summed_tables(schema, parts, noise_floor)
    return summed, shrunk_site_tables(schema, parts, summed)


def summed_tables(schema: Schema, parts: list[Marginals], noise_floor: float) -> Marginals:
    """The sum of ``parts`` (one or more sites' noisy tables of known std), coarsened under the
    sum's noise (``noise_floor`` std, 0: not): the tables a generator learns from (a single
    site's fit is a federation of one). Post-processing of DP outputs."""
    summed = parts[0]
    for part in parts[1:]:
        summed = summed + part  # the sum's cell std: the sites' variances added
    return summed.without_noise_floor(schema, noise_floor) if noise_floor else summed


MAX_SITE_COUNT = 1e9  # beyond any site's rows and noise: the coordinator drops a round-0 reply above it
MAX_COUNT = 1e12  # the same for a sum over up to a thousand sites (a finite 1e308 overflowed into NaN weights)


def plausible_counts(values: np.ndarray, limit: float = MAX_COUNT) -> bool:
    """Finite counts no larger than ``limit`` either way."""
    return bool(np.isfinite(values).all() and (np.abs(values) <= limit).all())


def check_summed_tables(schema: Schema, summed: Marginals) -> None:
    """The summed round-0 tables as a site receives them with a training request or a model file
    holds them: one table per schema column, of the schema's shape, finite, and pair tables (a
    federation of one site keeps its own) well-formed. A site checks them before it reads a row:
    a malformed table that failed only once the rows were encoded would refuse in a time that
    grows with the rows, and a coordinator could time that for free. Raises ValueError."""
    expected = {column.name: table_shape(schema, column) for column in schema.columns}
    if {name: table.shape for name, table in summed.tables.items()} != expected:
        raise ValueError("the summed tables are not one table per schema column of its shape")
    if not all(plausible_counts(values) for values in summed.arrays.values()):
        raise ValueError(f"the summed tables hold non-finite counts or counts beyond {MAX_COUNT:g}")
    check_pairs(schema, summed)


def check_slot_tables(schema: Schema, summed: Marginals, per_slot: list[Marginals]) -> None:
    """Every site slot's round-0 tables, as a site receives them or a model file holds them:
    shaped like the summed tables (themselves checked against the schema:
    :func:`check_summed_tables`), finite, with well-formed pair tables and group bounds
    (:func:`fedsyn.privacy.pairs.check_pairs`). The release is drawn by them, so a crafted
    table must be refused here rather than misread there. Raises ValueError."""
    check_summed_tables(schema, summed)
    shapes = {name: table.shape for name, table in summed.tables.items()}
    for slot, tables in enumerate(per_slot):
        if {name: table.shape for name, table in tables.tables.items()} != shapes:
            raise ValueError(f"slot {slot}'s tables are not shaped like the summed tables")
        if not all(plausible_counts(values) for values in tables.arrays.values()):
            raise ValueError(f"slot {slot}'s tables hold non-finite counts or counts beyond {MAX_COUNT:g}")
        check_pairs(schema, tables)


def marginals_event(noise_multiplier: float, round_: int | None = None) -> PrivacyEvent:
    """The privacy cost of :func:`noisy_marginals` (a site alone) or of a federation's pair
    tables (:func:`fedsyn.privacy.pairs.measure_pair_tables`): one full-data Gaussian mechanism."""
    return PrivacyEvent(MARGINALS, noise_multiplier=noise_multiplier, sample_rate=1.0, steps=1,
                        round=round_)


def first_release_event(schema: Schema, noise_multiplier: float, pairs_share: float,
                        round_: int | None = None) -> PrivacyEvent:
    """The privacy cost of a federation's first round-0 release (:func:`noisy_marginals` with
    ``sites``): the outcome tables and the votes, the whole's multiplier less the pair tables'
    part (:attr:`fedsyn.privacy.pairs.RoundZeroSplit.first_release`); with the pair tables'
    release it composes to one Gaussian mechanism with ``noise_multiplier``."""
    return marginals_event(round_zero_split(schema, noise_multiplier, pairs_share).first_release, round_)
