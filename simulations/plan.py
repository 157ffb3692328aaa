"""The pre-flight plan of a simulation: what each site's budget buys, before anything is spent.

A site with few rows, many columns and a small epsilon gets so much noise that no
generator can learn from it; a researcher should hear that before the run, not after a
signed but useless release. A simulated site starts with a new ledger capped at the run's
epsilon, so what it will calibrate (the noise of its marginals release and the DP-SGD noise
multiplier for the whole plan of rounds and steps) is the coordinator's own plan of such a
site, :func:`~fedsyn.privacy.budget.plan_site_run`; this module adds only what a researcher
reads from it. Two ratios summarise it:

* ``records_per_noise``: expected records per DP-SGD step over the noise multiplier. The
  clipped sum of a step has at most that many units of signal per unit of noise.
* ``rows_per_histogram_noise``: the site's rows over the noise standard deviation of one
  histogram bin of its marginals release.

:func:`plan_width` says what the width costs: every measured column adds to the round-0
noise of every cell, so a wide table at a small site can resolve none of its columns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from fedsyn.data.grid import bin_labels
from fedsyn.data.schema import Column, Schema
from fedsyn.privacy.budget import SiteBudget, marginals_noise, plan_site_run
from fedsyn.privacy.marginals import RUN_NOISE, measured_columns, table_noise_std, table_shape, tables_weight
from fedsyn.server.settings import FederationSettings

if TYPE_CHECKING:
    from fedsyn.model.gan import FitPlan

# Below these, the run is likely to give unusable data (measured: the bench's 303-row site at
# epsilon 1 has 5 records per unit of noise and still learns; ~100-row sites at 1 did not).
AMBER_RECORDS_PER_NOISE = 5.0
RED_RECORDS_PER_NOISE = 1.0
AMBER_ROWS_PER_HISTOGRAM_NOISE = 10.0
# At or above this sample rate a weak site is told to lower --batch-size: every step then sees
# (nearly) all of its rows, so subsampling buys DP-SGD no amplification (a newcomer's azpro run,
# 212 rows at the smallest site: --batch-size 256, rate 1, noise multiplier 136; --batch-size 64,
# rate 0.3, trained a much better release). The batch size suggested aims at TARGET_SAMPLE_RATE.
HIGH_SAMPLE_RATE = 0.5
TARGET_SAMPLE_RATE = 0.25


@dataclass(frozen=True)
class SitePlan:
    site: str
    rows: int
    expected_batch: float
    noise_multiplier: float | None  # None: the budget cannot cover the plan at all
    steps: int
    records_per_noise: float
    rows_per_histogram_noise: float  # 0: the budget covers no run at all, so no table is released
    level: Literal["green", "amber", "red"]
    advice: str
    batch_size: int | None = None  # the --batch-size the advice suggests (None: none suggested)


def plan_site(name: str, rows: int, tables: float, settings: FederationSettings) -> SitePlan:
    """What ``settings`` mean for a site with ``rows`` records (known to the researcher only)
    whose round-0 release measures tables of weight ``tables`` (:func:`tables_weight`)."""
    run = plan_site_run(SiteBudget(spent=0.0, max_epsilon=settings.epsilon, delta=settings.delta), settings)
    steps = run.rounds_fit * settings.local_steps  # a fixed noise may fit fewer rounds than asked
    sigma = run.training_noise if run.usable else None
    cell_noise = table_noise_std(tables, run.marginals_noise, settings.pairs_share) if run.marginals_noise else None
    plan = _graded(name, rows, settings.sample_rate * rows, sigma, steps, cell_noise)
    if plan.level != "green" and settings.sample_rate >= HIGH_SAMPLE_RATE:
        advice, suggested = _smaller_batch(rows, settings)
        return replace(plan, advice=f"{plan.advice}; {advice}", batch_size=suggested)
    return plan


def plan_fit(name: str, fit: FitPlan, tables: float, pairs_share: float) -> SitePlan:
    """What a single-site fit's plan (:meth:`fedsyn.model.gan.DPTabularGAN.plan`) means for its
    ``fit.rows`` rows, graded as a simulation's site is."""
    cell_noise = table_noise_std(tables, fit.marginals_noise, pairs_share) if fit.marginals_noise else None
    return _graded(name, fit.rows, fit.sample_rate * fit.rows, fit.noise_multiplier, fit.steps, cell_noise)


def _graded(name: str, rows: int, batch: float, sigma: float | None, steps: int, cell_noise: float | None
            ) -> SitePlan:
    """A site's plan with its outlook: ``sigma`` DP-SGD's noise multiplier (None: the budget
    covers no training), ``cell_noise`` the noise std of one round-0 table cell (None: none)."""
    records_per_noise = batch / sigma if sigma else 0.0
    rows_per_noise = rows / cell_noise if cell_noise else 0.0
    level: Literal["green", "amber", "red"]
    if sigma is None or records_per_noise < RED_RECORDS_PER_NOISE:
        level, advice = "red", ("noise swamps every step: expect an unusable release. Raise epsilon, pool sites, "
                                "or use fewer rounds x local steps")
    elif records_per_noise < AMBER_RECORDS_PER_NOISE or rows_per_noise < AMBER_ROWS_PER_HISTOGRAM_NOISE:
        level, advice = "amber", ("heavy noise for this site's size: expect weak utility; fewer rounds x steps or "
                                  "a larger epsilon help")
    else:
        level, advice = "green", "enough records per unit of noise"
    return SitePlan(name, rows, batch, sigma, steps, records_per_noise, rows_per_noise, level, advice)


def _smaller_batch(rows: int, settings: FederationSettings) -> tuple[str, int | None]:
    """The ``--batch-size`` that samples about TARGET_SAMPLE_RATE of the rows per step, said,
    and as a number where it is exact (None where the site can only say which way to go).

    ``fedsyn simulate`` sets the public rate to the batch size over the smallest site's rows,
    at most 1. Below 1 that gives the smallest site's rows; at 1 a site of at most the batch
    size may be the smallest (its suggestion is exact if it is, and the smallest site's is the
    one to use), while a larger site cannot tell, so it only says which way to go."""
    batch_size, rate = settings.gan_config.batch_size, settings.sample_rate
    sampled = (f"each step samples {rate:.0%} of its {rows} rows (the rate is --batch-size over the smallest "
               "site's rows)")
    smallest = round(batch_size / rate) if rate < 1 else rows if rows <= batch_size else None
    if smallest is None:
        return f"{sampled}: a smaller --batch-size lowers it", None
    suggested = max(1, round(TARGET_SAMPLE_RATE * smallest))
    return (f"{sampled}: --batch-size {suggested} samples about {TARGET_SAMPLE_RATE:.0%} (one --batch-size for "
            "all sites: use the smallest site's suggestion; the records per unit of noise barely move, as the batch "
            "and its noise shrink together, but each step then sees a fresh sample of the rows: docs/researchers.md)"
            ), suggested


# -- width: what the round-0 tables can resolve ------------------------------------------------

# A numeric column's class distribution needs about this many groups above the noise to keep
# its shape (coarsening merges bins until each beats the noise; fewer groups collapse it).
NUMERIC_GROUPS = 4
# Expected rows per cell over the cell's noise std: below RED an effect of a few tens of percent
# is invisible under the noise (a 52-column table at 380 rows per site reversed its sex effect at
# epsilon 1 with about 1.6 here); below AMBER only strong effects survive.
RED_CELL_SNR = 2.0
AMBER_CELL_SNR = 5.0
EPSILON_LADDER = (1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 15.0, 20.0)


@dataclass(frozen=True)
class ColumnCost:
    column: str
    cells: int  # the cells its class distributions need resolved: categories (x classes), or NUMERIC_GROUPS
    cell_snr: float  # expected rows per cell over the cell's noise std
    level: Literal["green", "amber", "red"]
    mergeable: bool  # more than two categories: merging some thickens its cells; otherwise only dropping helps


@dataclass(frozen=True)
class WidthPlan:
    """What one site's round-0 tables can resolve at this width, and what would fix it."""

    site: str
    rows: int
    measured_columns: int
    cell_noise: float  # noise std of every cell (table_noise_std)
    columns: list[ColumnCost]  # every measured column but the run's site column (constant at a site)
    level: Literal["green", "amber", "red"]
    # This epsilon where the site is not red; else the smallest of EPSILON_LADDER above it where it is not.
    epsilon_needed: float | None
    # At this epsilon, where the site is red: (columns, levels) pairs, each a width that resolves
    # every column of at most that many levels (a numeric column counts NUMERIC_GROUPS, one more
    # with missing values), fewest levels first; the run's site column is one of the columns.
    keep_options: list[tuple[int, int]]

    @property
    def costliest(self) -> list[str]:
        """The weak (amber or red) columns with the thinnest cells, thinnest first: the ones with
        the most categories or bins, first to drop or merge."""
        return [c.column for c in self._thinnest]

    @property
    def column_advice(self) -> str:
        """What to do about the thinnest columns: merge the categories of one that has more than two,
        where the question allows (a newcomer's ward was the study's variable, and a ward only some
        hospitals have is a rule, not a thin cell); otherwise drop columns. Which to drop the plan
        cannot say: it reads no relation between columns, so the thinnest may be the study's main
        predictor (a newcomer's plan named age). Any column dropped lowers every cell's noise, so
        the advice is to drop what the question does not need, named by the researcher, not by
        the plan."""
        if not self._thinnest:
            return "every column's cells stand above the noise"
        merge = [c.column for c in self._thinnest if c.mergeable]
        steps = [f"merge categories of {_listed(merge)} where your question allows (a category that only some "
                 "hospitals have is a schema rule, not noise: docs/researchers.md)"] if merge else []
        steps.append("drop columns your question does not need, whichever they are: each one dropped lowers every "
                     "cell's noise (the plan reads no relation between columns, so it cannot tell which matter)")
        others = sum(c.level != "green" for c in self.columns) - len(self._thinnest)
        more = f" ({others} more weak column{'s' if others > 1 else ''} in the table above)" if others > 0 else ""
        return f"the thinnest cells are in {', '.join(self.costliest)}{more}: {'; '.join(steps)}"

    @property
    def keep_advice(self) -> str:
        """How narrow a table this site can resolve at its epsilon, as widths the researcher can
        follow whichever columns they keep: 'at most 30 columns, each of at most 2 levels'
        holds for any 30 such columns. Counted for the cheapest columns only, the advice moved as
        a newcomer followed it (keep 30 of 54, then 21 of 29, then 17 of 21: the columns kept
        had more levels than the cheapest)."""
        # 'all': fewer levels would do, not fewer columns ('at most 11' of 11 read as 'at the limit')
        options = [f"{'all' if columns >= self.measured_columns else 'at most'} {columns} columns if each has at most "
                   f"{levels} levels" for columns, levels in self.keep_options]
        if not options:
            return ""
        site = ", the site column among them" if self.measured_columns > len(self.columns) else ""
        return (f"keep {', or '.join(options)} (of the {self.measured_columns} besides the outcome{site}; a "
                f"numeric column counts as {NUMERIC_GROUPS} levels, and missing values as one more)")

    @property
    def _thinnest(self) -> list[ColumnCost]:
        weak = [c for c in self.columns if c.level != "green"]
        return sorted(weak, key=lambda c: c.cell_snr)[:5]


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _grade(snr: float) -> Literal["green", "amber", "red"]:
    return "red" if snr < RED_CELL_SNR else "amber" if snr < AMBER_CELL_SNR else "green"


def _cell_snr(class_rows: float, levels: int, cell_noise: float) -> float:
    """Expected rows per cell over the cell's noise std, for a column of ``levels`` levels in an
    outcome class of ``class_rows`` rows."""
    return class_rows / (levels * cell_noise)


def _classes(schema: Schema, columns: list[Column]) -> int:
    """The outcome's classes: the width of every measured column's table."""
    return table_shape(schema, columns[0])[1] if columns else 1


def _column_costs(class_rows: float, schema: Schema, cell_noise: float, columns: list[Column]) -> list[ColumnCost]:
    classes = _classes(schema, columns)
    costs = []
    for column in columns:
        cells = bin_labels(column) if column.is_categorical else NUMERIC_GROUPS + int(column.nullable)
        snr = _cell_snr(class_rows, cells, cell_noise)
        mergeable = column.is_categorical and len(column.categories or []) > 2
        costs.append(ColumnCost(column.name, cells * classes, snr, _grade(snr), mergeable))
    return costs


def _width_level(costs: list[ColumnCost]) -> Literal["green", "amber", "red"]:
    """Red when most columns cannot be resolved; amber when any column is weak."""
    red = sum(c.level == "red" for c in costs)
    if red * 2 > len(costs):
        return "red"
    return "amber" if red or any(c.level == "amber" for c in costs) else "green"


def plan_width(name: str, rows: int, schema: Schema, settings: FederationSettings,
               rarest_class_rows: int | None = None) -> WidthPlan:
    """The round-0 cost of a site's width: one record adds a count to every measured table, so
    the noise of every cell grows with the square root of the tables' weight (one per column,
    a numeric column's runs a quarter more: :func:`tables_weight`). A width it advises holds
    whichever columns are kept: where they may be numeric (as many levels as a numeric column
    counts, ``NUMERIC_GROUPS``), with their runs.

    Cells are graded in the outcome's rarest class, of ``rarest_class_rows`` rows where the
    caller holds the rows (a simulation's own extracts, printed on its own terminal), else of an
    equal share of ``rows``: a 9 % outcome's class holds a fifth of what an equal share says, and
    a newcomer's plan graded amber a width whose outcome effects the release then lost
    (helper-124 #1).

    The run's site column adds its table's noise like any column but is not graded: at a site it
    holds one value, which the site's slot already says, so it has nothing to resolve, and it
    is the one column the researcher cannot drop."""
    measured = measured_columns(schema)
    columns = [column for column in measured if column.name != settings.site_column]
    site = len(measured) - len(columns)  # 1: the site column is measured (its noise counts), 0: it is not

    tables = tables_weight(schema)

    def cell_noise(epsilon: float, width: float) -> float:  # tables of weight ``width``
        sigma = marginals_noise(epsilon, settings.marginals_share, settings.delta, settings.accountant)
        return table_noise_std(width, sigma, settings.pairs_share)

    classes = _classes(schema, measured)
    class_rows = rows / classes if rarest_class_rows is None else min(rarest_class_rows, rows / classes)
    noise = cell_noise(settings.epsilon, tables)
    costs = _column_costs(class_rows, schema, noise, columns)
    level = _width_level(costs)
    # Not red: this epsilon is what it needs (a ladder's next rung above it was offered as needed).
    needed = settings.epsilon if level != "red" else next(
        (e for e in EPSILON_LADDER if e > settings.epsilon
         and _width_level(_column_costs(class_rows, schema, cell_noise(e, tables), columns)) != "red"), None)
    keep: list[tuple[int, int]] = []
    if level == "red":
        for levels in sorted({cost.cells // classes for cost in costs} - {1}):  # one level resolves nothing
            per_column = 1.0 + RUN_NOISE ** -2 if levels >= NUMERIC_GROUPS else 1.0  # a numeric one's runs
            width = next((k for k in range(len(measured), site, -1) if _grade(_cell_snr(
                class_rows, levels, cell_noise(settings.epsilon, per_column * k))) != "red"), None)
            if width is None:
                break
            if keep and keep[-1][0] == width:  # as many columns with more levels each
                keep.pop()
            keep.append((width, levels))
        keep = keep[:3]
    return WidthPlan(name, rows, len(measured), noise, costs, level, needed, keep)
