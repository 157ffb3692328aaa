"""The public grid of numeric columns and the coarsening of noisy counts under their noise.

Both are post-processing of the DP release or functions of the schema alone; what these
tests pin is that they keep what the data says and invent nothing where it is silent.
"""

import math

import numpy as np
import pandas as pd
import pytest

from fedsyn.data.grid import bin_index, bin_labels, bound_value_bins, numeric_bins, numeric_edges
from fedsyn.data.schema import Column, Schema
from fedsyn.privacy.marginals import (
    Marginals,
    exact_counts,
    federation_tables,
    measured_columns,
    noisy_marginals,
    received_marginals,
    shrunk_site_tables,
    table_noise_std,
    tables_weight,
)
from fedsyn.privacy.postprocessing import coarsened, shrunk_to_pool

VISITS = Column(name="visits", kind="integer", lower=0, upper=365)


def _schema() -> Schema:
    """A visit count with honest public bounds far wider than the data, and an outcome."""
    return Schema(name="visits", outcome="admitted", columns=[
        VISITS, Column(name="admitted", kind="categorical", categories=["no", "yes"])])


def _coarsen(body: np.ndarray, cell_std: float = 10.0) -> np.ndarray:
    """``body`` (bins x 2 classes) coarsened as the coordinator does, the class totals being
    the table's own class sums."""
    tables = {"visits": body, "admitted": body.sum(axis=0).reshape(-1, 1)}
    return Marginals(tables, cell_std=cell_std).without_noise_floor(_schema(), threshold=1.5).tables["visits"]


def test_public_grid_is_fine_near_zero_and_whole_for_integers():
    """Non-negative measures get bins that widen from 0; integer bins hold whole values only."""
    edges = numeric_edges(VISITS)
    assert edges[0] == -0.5 and edges[-1] == 365.5
    assert np.all(np.diff(edges) >= 1) and np.all((edges + 0.5) == np.round(edges + 0.5))
    assert np.diff(edges)[0] == 1 and np.diff(edges)[-1] > 8
    shifted = Column(name="age", kind="continuous", lower=18, upper=100)  # not anchored at 0: equal widths
    widths = np.diff(numeric_edges(shifted))
    np.testing.assert_allclose(widths[[0, -1]], 82e-9)  # each bound an atom of its own
    np.testing.assert_allclose(widths[1:-1], [82 / 64 - 82e-9, *[82 / 64] * 62, 82 / 64 - 82e-9])


def test_an_integer_columns_lower_bound_is_a_bin_of_its_own():
    """0 hours in intensive care (88 % of a newcomer's admissions) and a stay of 1 day (a fifth
    of an unseen table's deaths) are piles at the lower bound: the grid's first bin held 0-1
    hours and 1-3 days, and the release spread each pile over its neighbours."""
    hours = Column(name="icu_hours", kind="integer", lower=0, upper=2000)
    stay = Column(name="los", kind="integer", lower=1, upper=180)
    bnp = Column(name="bnp", kind="integer", lower=10, upper=35000, transform="log")
    for column in (hours, stay, bnp):
        lower, upper = column.bounds
        index = bin_index(column, pd.Series([lower, lower + 1, upper]))
        assert index[0] == 0 and index[1] == 1 and index[-1] == numeric_bins(column) - 1, column.name


def test_a_bounds_value_with_a_bin_of_its_own_is_known_by_the_grid():
    """The release keeps a class's share at a bound to its table where the bound's value has a
    bin of its own (:func:`fedsyn.model.calibration.SlotCalibration`): an assay's limits, 0 hours
    in intensive care, a coma score of 15; not the top of a wide count (365 visits), nor a log
    grid's first bin that stops short of halfway to the next whole value, nor a column recorded
    in steps of 5 (a value on the grid between that edge and halfway, or 2.5 past the bound,
    decodes to the bound too)."""
    cases = [(Column(name="icu_hours", kind="integer", lower=0, upper=2000), (True, False)),
             (Column(name="gcs", kind="integer", lower=3, upper=15), (True, True)),
             # an oximeter's 50-100 %: the rounded grid gave 99 and 100 one bin (a newcomer's 14 % at 100)
             (Column(name="spo2", kind="integer", lower=50, upper=100), (True, True)),
             (Column(name="nodes", kind="integer", lower=0, upper=60), (True, False)),  # a count: an empty top
             (Column(name="kappa", kind="continuous", lower=0.1, upper=30.0, transform="log"), (True, True)),
             (Column(name="bnp", kind="integer", lower=10, upper=35000, transform="log"), (True, False)),
             (Column(name="alt", kind="integer", lower=5, upper=2000, transform="log"), (False, False)),
             (Column(name="dose", kind="integer", lower=0, upper=100, precision=5), (False, False))]
    for column, expected in cases:
        assert bound_value_bins(column) == expected, column.name
    assert numeric_bins(Column(name="spo2", kind="integer", lower=50, upper=100)) == 51  # a bin per value


def test_the_mass_left_over_after_a_pile_is_spread_like_every_class_not_piled_beside_it():
    """A newcomer's admissions sat at 0 hours in intensive care in 78 % of rows and the others'
    hours spread thinly over 1-336 (median 154): no group beat the noise beyond the pile, and a
    tail continuing the pile's density put every stay at 1 hour. Spread evenly without a prior,
    like the prior with one (counts that decay from 0 keep their decay)."""
    widths = np.ones(60)
    counts = np.r_[700.0, np.full(59, 1.8)]  # the thin spread never beats 15 * sqrt(its bins)
    alone = coarsened(counts, widths, 15.0, float(counts.sum()))
    assert alone[0] == 700.0 and alone[1:].sum() == pytest.approx(59 * 1.8)
    np.testing.assert_allclose(alone[1:], 1.8)  # not 106 rows at 1 hour
    decaying = np.r_[5000.0, 1000.0 * 0.5 ** np.arange(59)]
    shaped = coarsened(counts, widths, 15.0, float(counts.sum()), prior=decaying)
    np.testing.assert_allclose(shaped[1:], 59 * 1.8 * decaying[1:] / decaying[1:].sum())
    mirrored = coarsened(counts[::-1].copy(), widths, 15.0, float(counts.sum()), prior=decaying[::-1].copy())
    np.testing.assert_allclose(mirrored[::-1], shaped)  # below a pile at the upper bound alike
    beyond = coarsened(np.r_[700.0, 40.0, np.full(58, 1.8)], widths, 15.0, 846.4, prior=np.r_[5000.0, np.ones(59)])
    assert beyond[2:12].sum() > 0.9 * beyond[2:].sum()  # after a group beyond the pile: a decaying tail
    bell = np.zeros(40)
    bell[14:36] = [3, 4, 5, 6, 7, 8, *[12.0] * 10, 8, 7, 6, 5, 4, 3]  # a weak class: no bin beats the noise by far
    every = np.r_[np.full(5, 300.0), np.full(35, 5.0)] + bell  # every class piled far below it (and holding it)
    weak = coarsened(bell, np.ones(40), 15.0, float(bell.sum()), prior=every)
    flipped = coarsened(bell[::-1].copy(), np.ones(40), 15.0, float(bell.sum()), prior=every[::-1].copy())
    assert weak[:10].sum() < 0.5 and flipped[-10:].sum() < 0.5  # its left-over stays by it, not in that pile
    atoms = np.ones(20)
    atoms[[0, -1]] = 1e-9  # a continuous column's bounds, each settled at none for this class
    below = np.r_[0.0, 3, 2, 4, 1, 3, 200, 30, 25, 20, np.zeros(10)]
    spread = coarsened(below, atoms, 15.0, float(below.sum()), (0, 19), prior=np.r_[600.0, np.full(18, 20.0), 400])
    assert spread[0] == 0.0 and spread[-1] == 0.0  # every class's piles there are not this class's


def test_groups_spread_their_counts_by_width():
    """A group of unequal bins is spread evenly over its width (a density), not per bin: per
    bin would pile the group's mass into its narrow bins near 0."""
    body = np.zeros((numeric_bins(VISITS), 2))
    body[:, 0] = 4.0  # every bin 4 counts against a floor of 15: groups of several bins
    widths = np.diff(numeric_edges(VISITS))
    density = _coarsen(body)[:, 0] / widths
    last = 40  # well inside, where bins are several values wide and unequal
    group = np.flatnonzero(np.isclose(density, density[last]))
    assert len(group) > 2 and len(set(widths[group])) > 1


def test_a_sharp_peak_keeps_its_bin_and_an_empty_reach_stays_empty():
    body = np.zeros((numeric_bins(VISITS), 2))
    body[0, 0], body[1:6, 0] = 700.0, 60.0  # mostly 0 visits, then a few
    body[6:60:2, 0], body[7:60:2, 0] = 9.0, -9.0  # noise that never beats the floor and sums to 0
    coarse = _coarsen(body)[:, 0]
    assert coarse[0] == 700.0 and np.allclose(coarse[1:6], 60.0)
    assert coarse[6:].sum() == pytest.approx(0.0)  # nothing missing of the total: no tail invented


def test_the_classes_are_coarsened_on_their_own():
    """A rare class's cells are pure noise where the common class has its rows: one grouping
    for both (by the one-way counts) turned that noise into rows of the rare class."""
    body = np.zeros((numeric_bins(VISITS), 2))
    body[10:20, 0] = 500.0  # the common class
    body[0:4, 1] = 50.0  # the rare class: 200 rows near 0
    body[10:20:2, 1], body[11:20:2, 1] = 12.0, -12.0  # and noise among the common class's rows
    rare = _coarsen(body)[:, 1]
    assert rare[10:20].sum() < 0.02 * rare.sum()
    np.testing.assert_allclose(_coarsen(body)[10:20, 0], 500.0)


def test_an_empty_stretch_below_the_data_is_not_merged_into_it():
    """Groups grow from where the data first beats the noise, both ways: a class whose rows
    start at 12 keeps (almost) nothing below it."""
    body = np.zeros((numeric_bins(VISITS), 2))
    body[12:20, 1] = 40.0
    body[0:12:2, 1], body[1:12:2, 1] = 5.0, -5.0
    rare = _coarsen(body)[:, 1]
    assert rare[:12].sum() < 0.05 * rare.sum()


def test_a_sparse_tail_is_kept_not_cut_off():
    """Rows spread thinly beyond the last group (the many lymph nodes of patients who died):
    what the groups miss of the class's noisy total comes back as a decaying tail above them,
    where the leftover counts are."""
    counts = np.zeros(numeric_bins(VISITS))
    counts[0:5] = 200.0
    counts[5:40] = 3.0  # 105 rows, never above the floor of 15 sqrt(bins)
    widths = np.diff(numeric_edges(VISITS))
    coarse = coarsened(counts, widths, 15.0, counts.sum())
    assert coarse.sum() == pytest.approx(counts.sum(), rel=1e-3)  # the tail is cut at the upper bound
    assert coarse[5:].sum() == pytest.approx(105.0, rel=0.01)
    assert np.all(np.diff(coarse[5:40] / widths[5:40]) <= 1e-12)  # decaying density
    released = _coarsen(np.c_[counts, counts])[:, 0]  # with the runs' own counts: each run holds what it measured
    assert released.sum() == pytest.approx(counts.sum(), rel=1e-3) and released[5:].sum() > 95.0


def test_a_weak_class_is_not_anchored_on_noise_where_no_class_has_rows():
    """nmes seed 5: the hospitalised class's visits (622 rows, 0-20 visits) were released at a
    median of 281 (bound 365): a stretch of noise near the bound outscored the rows. No class has
    more rows in a stretch than every class together, which has none there."""
    widths = np.ones(60)
    counts = np.zeros(60)
    counts[:13] = 40.0  # the rows: 520 over 13 bins
    counts[13:48] = -5.0  # noise below 0 between them: no group grows across
    counts[48:56] = 60.0  # noise: 480 over 8 bins, a higher scan score than the rows'
    every = np.r_[np.full(16, 300.0), np.zeros(44)]
    kept = coarsened(counts, widths, 50.0, 600.0, prior=every)
    assert kept[:16].sum() > 0.8 * 600.0  # grown from the rows (a group may still reach across: noise)
    assert coarsened(counts, widths, 50.0, 600.0)[:16].sum() < 0.1 * 600.0  # without it: from the noise


def test_what_the_groups_miss_is_kept_where_neither_end_has_a_positive_sum():
    """The bench's nmes: a hospitalised class's visits (a pile at 0, a thin spread above it)
    where the noise summed below 0 beyond the groups. What the groups missed of the class's
    total was dropped, then read back spread evenly up to the public bound. It goes where every
    class's counts are, like any end's share."""
    widths = np.ones(60)
    counts = np.r_[500.0, np.full(59, -1.0)]  # the thin spread's 150 rows under negative noise
    every = np.r_[3000.0, 800.0 * 0.6 ** np.arange(59)]
    kept = coarsened(counts, widths, 15.0, 650.0, prior=every)
    assert kept.sum() == pytest.approx(650.0) and kept[0] == 500.0
    np.testing.assert_allclose(kept[1:], 150.0 * every[1:] / every[1:].sum())
    assert coarsened(counts, widths, 15.0, 650.0).sum() == pytest.approx(500.0)  # no prior: nothing to go by


def test_categorical_tables_are_left_as_they_were_and_a_missing_bin_beyond_the_noise_is_shared_by_rate():
    """A nullable numeric's 'missing' cell stands alone (no neighbours to merge with): none where
    the classes' sum does not beat the noise twice over, else each class's rate drawn toward the
    rate over every class as far as the classes differ by no more than their noise (here .13 and
    .18, noise .02 and .09: both take the rate over both); a bound's atom is settled alike."""
    schema = Schema(name="labs", outcome="admitted", columns=[
        Column(name="creatinine", kind="continuous", lower=0.2, upper=15, nullable=True),
        Column(name="sex", kind="categorical", categories=["F", "M"]),
        Column(name="admitted", kind="categorical", categories=["no", "yes"])])
    rng = np.random.default_rng(0)
    creatinine = np.abs(rng.normal(0, 3, (bin_labels(schema.column("creatinine")), 2)))
    creatinine[-1] = [40.0, 10.0]  # the 50 of both classes beat their noise (7.5 * sqrt(2)) twice over
    tables = {"creatinine": creatinine, "sex": np.array([[300.0, 20.0], [-4.0, 35.0]]),
              "admitted": np.array([[300.0], [55.0]])}
    noisy = Marginals(tables, cell_std=5.0)
    floored = noisy.without_noise_floor(schema)
    np.testing.assert_array_equal(floored.tables["sex"], tables["sex"])
    totals = noisy.class_totals()
    np.testing.assert_allclose(floored.tables["creatinine"][-1], 50.0 / totals.sum() * totals)
    assert floored.tables["creatinine"][:-1, 1].sum() == pytest.approx(totals[1] * (1 - 50.0 / totals.sum()), rel=1e-3)
    alone = Marginals({**tables, "creatinine": np.r_[creatinine[:-1], [[10.0, 5.0]]]}, cell_std=5.0)
    np.testing.assert_array_equal(alone.without_noise_floor(schema).tables["creatinine"][-1], [0.0, 0.0])


def test_a_column_no_row_lacks_is_not_released_as_missing(demo_schema, demo_frame):
    """A newcomer's glucose, nullable in the schema and never missing, came back missing in 4 %
    of the released rows (hemoglobin 7 % against 1 %): the noise of its 'missing' cells. Through
    the site's measurement and the coordinator's tables, noise alone no longer makes a value
    missing; a column missing in 17 % of rows keeps that share."""
    complete = demo_frame.assign(creatinine=demo_frame["creatinine"].fillna(1.0))
    raw_positive = floored_positive = 0
    for seed in range(20):
        noisy = noisy_marginals(complete, demo_schema, 64.0, np.random.default_rng(seed))
        raw_positive += int((noisy.tables["creatinine"][-1] > 0).sum())
        floored_positive += int((noisy.without_noise_floor(demo_schema).tables["creatinine"][-1] > 0).sum())
    assert raw_positive >= 10  # the noise: about half of the 40 cells
    assert floored_positive == 0
    kept = noisy_marginals(demo_frame, demo_schema, 16.0, np.random.default_rng(0)).without_noise_floor(demo_schema)
    share = kept.tables["creatinine"][-1].sum() / kept.class_totals().sum()
    assert share == pytest.approx(demo_frame["creatinine"].isna().mean(), abs=0.03)
    drowned = noisy_marginals(demo_frame, demo_schema, 64.0, np.random.default_rng(0)).without_noise_floor(demo_schema)
    shares = drowned.tables["creatinine"][-1] / drowned.class_totals()
    assert shares.min() > 0.05  # the deaths' own 9.5 %, or every class's 17 % where too noisy: never "none missing"


def test_an_integer_column_without_a_whole_number_between_its_bounds_is_refused():
    with pytest.raises(ValueError, match="no whole number"):
        Column(name="dose", kind="integer", lower=0.2, upper=0.8)


def test_the_tables_carry_their_noise_std_and_a_sum_adds_the_variances(demo_frame, demo_schema):
    """The measurement states its cell noise (as Private-PGM's measurements carry their stddev);
    sites' noise is independent, so a sum's std is the root of the summed variances."""
    columns = tables_weight(demo_schema)
    assert columns > len(measured_columns(demo_schema))  # numeric columns' runs are tables of their own
    one = noisy_marginals(demo_frame, demo_schema, 2.0, np.random.default_rng(0), pairs_share=0.4)
    other = noisy_marginals(demo_frame, demo_schema, 3.0, np.random.default_rng(1))
    assert one.cell_std == table_noise_std(columns, 2.0, 0.4) and other.cell_std == table_noise_std(columns, 3.0)
    assert (one + other).cell_std == pytest.approx(np.hypot(one.cell_std, other.cell_std))
    assert (one + exact_counts(demo_frame, demo_schema)).cell_std == one.cell_std


def test_exact_counts_carry_no_noise_and_are_never_coarsened_as_if_they_had_some(demo_frame, demo_schema):
    exact = exact_counts(demo_frame, demo_schema)
    assert exact.cell_std == 0.0
    assert exact.without_noise_floor(demo_schema) is exact


def test_tables_read_back_without_their_std_refuse_the_noise_floor(demo_frame, demo_schema):
    """The wire and the store carry arrays only: tables read back know no std until their
    receiver states it from the release it asked for, so a site's word never sets it."""
    sent = noisy_marginals(demo_frame, demo_schema, 2.0, np.random.default_rng(0))
    assert Marginals(dict(sent.arrays)).cell_std is None and Marginals.from_dict(sent.to_dict()).cell_std is None
    with pytest.raises(ValueError, match="noise std is unknown"):
        Marginals(dict(sent.arrays)).without_noise_floor(demo_schema)
    with pytest.raises(ValueError, match="noise std is unknown"):
        (Marginals(dict(sent.arrays)) + sent).without_noise_floor(demo_schema)
    received = received_marginals(dict(sent.arrays), demo_schema, 2.0, 0.4)  # asked with pair tables
    assert received.cell_std == table_noise_std(tables_weight(demo_schema), 2.0, 0.4) > sent.cell_std


def _site_tables(shares: np.ndarray, size: float, std: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact and noisy counts of one column at each site (sites × bins × 1 class)."""
    exact = (shares * size)[:, :, None]
    return exact, exact + rng.normal(0.0, std, size=exact.shape)


def _error(counts: np.ndarray, exact: np.ndarray) -> float:
    """Mean total variation of each site's counts (clipped, normalised) from its exact shares."""
    made = np.clip(counts[:, :, 0], 0.0, None)
    made = made / made.sum(axis=1, keepdims=True)
    truth = exact[:, :, 0] / exact[:, :, 0].sum(axis=1, keepdims=True)
    return float(np.mean(0.5 * np.abs(made - truth).sum(axis=1)))


@pytest.mark.parametrize("seed", range(3))
def test_sites_that_differ_by_noise_alone_are_drawn_to_the_pool_and_real_differences_are_kept(seed):
    """Five sites of 300 rows at the noise of a wide release (std 15 per cell): where they share
    one distribution the shrunk tables are far closer to each site's truth than its own noisy
    ones; where each site holds its own values (a site's age groups) each keeps its own."""
    rng = np.random.default_rng(seed)
    sites, size, std = 5, 300.0, 15.0
    sizes, stds = np.full((sites, 1), size), np.full(sites, std)
    alike, alike_noisy = _site_tables(np.tile([0.4, 0.3, 0.2, 0.1], (sites, 1)), size, std, rng)
    pooled = np.clip(alike_noisy.sum(axis=0), 0, None) / np.clip(alike_noisy.sum(axis=0), 0, None).sum()
    shrunk = shrunk_to_pool(alike_noisy, sizes, stds, pooled)
    assert _error(shrunk, alike) < 0.7 * _error(alike_noisy, alike)
    own, own_noisy = _site_tables(np.eye(sites), size, std, rng)  # each site its own value
    pooled = np.full((sites, 1), 1.0 / sites)
    shrunk = shrunk_to_pool(own_noisy, sizes, stds, pooled)
    assert _error(shrunk, own) < _error(own_noisy, own) + 0.01
    assert np.all(np.argmax(shrunk[:, :, 0], axis=1) == np.arange(sites))


def test_a_site_whose_whole_distribution_is_shifted_keeps_its_shift_at_the_resolution_its_noise_allows():
    """A newcomer's five hospitals at epsilon 8: Northfield's 805 patients averaged 52 years (the
    pool 61) and its own noisy age table said 51, but no single one of 64 bins differed from the
    pool by more than its noise, so its slot table was drawn to the pool (59). Weighed over runs
    of 8 neighbouring bins, where the shift stands out, the site keeps more of it (54)."""
    from fedsyn.privacy.marginals import SITE_GROUPS

    rng = np.random.default_rng(0)
    centre = np.arange(64.0)
    shapes = [np.exp(-0.5 * ((centre - mean) / 9.0) ** 2) for mean in (22.0, 32.0, 32.0, 32.0, 32.0)]
    shares = np.stack([shape / shape.sum() for shape in shapes])
    sites, size, std = 5, 800.0, 15.0
    exact, noisy = _site_tables(shares, size, std, rng)
    pooled = (exact.sum(axis=0) / exact.sum())
    groups = np.arange(64) * SITE_GROUPS // 64
    args = (noisy, np.full((sites, 1), size), np.full(sites, std), pooled)
    mean = [float((np.clip(t[0, :, 0], 0, None) * centre).sum() / np.clip(t[0, :, 0], 0, None).sum())
            for t in (shrunk_to_pool(*args), shrunk_to_pool(*args, groups))]
    kept = [(30.0 - m) / 8.0 for m in mean]  # the share of its shift (22 against the pool's 30) the site keeps
    assert kept[0] < 0.1 and kept[1] > 4 * kept[0]  # measured: 4 % bin by bin, 21 % by runs
    alike = _site_tables(np.tile(shares[1], (sites, 1)), size, std, rng)[1]  # sites that differ by noise alone
    assert _error(shrunk_to_pool(alike, *args[1:], groups), np.tile(exact[1], (sites, 1, 1))) \
        < 0.7 * _error(alike, np.tile(exact[1], (sites, 1, 1)))


@pytest.mark.parametrize("nullable", [False, True])
def test_a_numeric_column_of_few_bins_keeps_a_site_that_really_differs(nullable):
    """A count of 0-4 has 5 bins, fewer than SITE_GROUPS runs: each bin is its own run, numbered
    without gaps ('missing' last). Numbered 0, 1, 3, 4, 6, the empty runs 2 and 5 made the sites'
    spread NaN, read as no spread at all: a site whose counts are the pool's reversed was drawn
    all the way to the pool."""
    from fedsyn.privacy.marginals import site_groups

    column = Column(name="visits", kind="integer", lower=0, upper=4, nullable=nullable)
    groups = site_groups(column)
    assert groups is not None
    assert list(groups) == list(range(bin_labels(column)))
    rising = np.linspace(1.0, 3.0, bin_labels(column))
    shares = np.stack([rising[::-1], rising, rising, rising, rising]) / rising.sum()
    exact, noisy = _site_tables(shares, 300.0, 5.0, np.random.default_rng(1))
    pooled = exact.sum(axis=0) / exact.sum()
    shrunk = shrunk_to_pool(noisy, np.full((5, 1), 300.0), np.full(5, 5.0), pooled, groups)
    assert _error(shrunk[:1], exact[:1]) < 0.05  # drawn to the pool: .24


def test_where_the_pool_holds_nothing_no_site_holds_anything():
    """Four sites' emergency visits, 0-12 in the rows, 40 bins of public range at std 5 a cell:
    the coarsened sum holds nothing past bin 6, and the sites' own noise there (positive half
    the time, and a release draws rows only where a count is positive) is no site's data. Kept,
    it gave the bench's nmes sites visits up to 75 and turned the outcome's effect round."""
    rng = np.random.default_rng(0)
    sites, bins = 4, 40
    exact = np.zeros((sites, bins, 1))
    exact[:, :6, 0] = [600.0, 60.0, 20.0, 8.0, 3.0, 1.0]
    noisy = exact + rng.normal(0.0, 5.0, size=exact.shape)
    pooled = np.zeros((bins, 1))
    pooled[:6, 0] = exact[0, :6, 0] / exact[0, :6, 0].sum()
    shrunk = shrunk_to_pool(noisy, noisy.sum(axis=1), np.full(sites, 5.0), pooled)
    assert (noisy[:, 6:] > 5.0).sum() > 5  # the sites' noise alone: a few cells above one std
    assert np.all(shrunk[:, 6:] == 0.0) and np.all(shrunk[:, :2] > 0.0)


def test_no_site_keeps_more_of_a_run_than_the_whole_federation_holds():
    """The bench's azpro hospitals: stays of one procedure differ between sites in the body, so
    each site keeps much of its own mix, and the same weight kept a site's positive noise in
    the empty reach up to the public bound of 365 days, where the pool's tail is thin (257 stays,
    9 % of them beyond 100 days; the real maximum is 53). No site's count of a run exceeds the
    federation's, and what is taken off the tail stays in the site's body."""
    rng = np.random.default_rng(3)
    sites, bins, size, std = 5, 32, 257.0, 12.9
    groups = np.arange(bins) * 8 // bins  # runs of 4 bins, as site_groups makes them
    body = np.array([[0.3, 0.4, 0.2, 0.1], [0.1, 0.2, 0.4, 0.3], [0.25, 0.25, 0.25, 0.25],
                     [0.4, 0.4, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4]])
    exact = np.zeros((sites, bins, 1))
    exact[:, :4, 0] = body * size
    noisy = exact + rng.normal(0.0, std, size=exact.shape)
    pooled = np.r_[exact[:, :4, 0].sum(axis=0), np.geomspace(1.0, 0.05, bins - 4)][:, None]  # a thin decaying tail
    pooled /= pooled.sum()
    shrunk = shrunk_to_pool(noisy, np.full((sites, 1), size), np.full(sites, std), pooled, groups)
    federation = np.bincount(groups, weights=pooled[:, 0]) * size * sites
    runs = np.stack([np.bincount(groups, weights=site) for site in shrunk[:, :, 0]])
    assert np.all(runs <= federation[None, :] + 1e-9)
    assert np.all(shrunk[:, 4:, 0].sum(axis=1) < 0.03 * size)  # the federation's tail: under 1 % of its rows
    assert np.all(shrunk[:, :4, 0].sum(axis=1) > 0.9 * size)  # what the tail lost went to the body


def test_a_post_processed_class_holding_less_than_its_total_is_not_spread_over_the_empty_bins():
    """A slot's post-processed stays table of one procedure held 382 of the 423 rows its class
    totals said (the other tables hold more): projected at 423, the 41 missing went evenly to all
    61 bins, 365 days included, the calibration (which reads the tables so) put the slot's 95th
    percentile at 96 days (real 15), and 6 % of its stays were released beyond 40 days. The
    summed table each site's is drawn toward was read so too, and gave four of azpro's five
    slots a procedure's 95th percentile of 141 days (logistic regression .55). Read as
    post-processed, a table is never added to, and no site's drawn table holds that reach."""
    table = np.zeros((numeric_bins(VISITS), 2))
    table[:10, 0], table[:10, 1] = 38.2, 50.0  # class 0: 382 in the table, its totals' 402 above
    made = Marginals({"visits": table, "other": np.array([[423.0, 500.0]])}, cell_std=1.0)
    shares = made.conditional("visits", post_processed=True)
    assert shares[10:, 0].sum() == pytest.approx(0.0)
    np.testing.assert_allclose(shares[:10, 0], 0.1)
    schema = Schema(name="stays", outcome="admitted", columns=[
        VISITS, Column(name="sex", kind="categorical", categories=["F", "M"]),
        Column(name="admitted", kind="categorical", categories=["no", "yes"])])
    noise = np.random.default_rng(3).normal(0.0, 1.0, size=(2, *table.shape))
    parts = [Marginals({"visits": table / 2 + noise[k], "sex": np.array([[211.5, 250.0], [211.5, 250.0]]),
                        "admitted": np.array([[423.0], [500.0]])}, cell_std=1.0) for k in range(2)]
    summed = Marginals({"visits": table, "sex": np.array([[423.0, 500.0], [423.0, 500.0]]),
                        "admitted": np.array([[846.0], [1000.0]])}, cell_std=math.sqrt(2.0))
    for own in shrunk_site_tables(schema, parts, summed):
        assert np.abs(own.tables["visits"][10:]).sum() == pytest.approx(0.0)


def test_one_site_or_no_noise_leaves_the_counts_as_they_are():
    counts = np.array([[[10.0], [-2.0], [30.0]]])
    assert np.array_equal(shrunk_to_pool(counts, np.array([[38.0]]), np.array([5.0]), np.full((3, 1), 1 / 3)), counts)
    two = np.array([[[10.0], [2.0], [30.0]], [[30.0], [2.0], [10.0]]])  # exact counts, and their own pool
    exact = shrunk_to_pool(two, np.full((2, 1), 42.0), np.zeros(2), two.sum(axis=0) / two.sum())
    assert np.allclose(exact, two)


def test_site_tables_are_shrunk_per_measured_column_and_keep_their_pairs(demo_frame, demo_schema):
    """Each measured column's tables are drawn toward the sum's, the outcome's class counts and the
    pair tables are kept, and the results say their std is no longer known. Tables whose std
    is unknown are refused."""
    halves = [demo_frame.iloc[: len(demo_frame) // 2], demo_frame.iloc[len(demo_frame) // 2:]]
    parts = [noisy_marginals(half, demo_schema, 2.0, np.random.default_rng(k), pairs_share=0.4)
             for k, half in enumerate(halves)]
    shrunk = shrunk_site_tables(demo_schema, parts, parts[0] + parts[1])
    for part, own in zip(parts, shrunk):
        assert own.cell_std is None and own.pairs.keys() == part.pairs.keys()
        assert all(np.array_equal(own.pairs[pair], part.pairs[pair]) for pair in part.pairs)
        assert np.array_equal(own.tables[demo_schema.outcome], part.tables[demo_schema.outcome])
        assert any(not np.array_equal(own.tables[c.name], part.tables[c.name]) for c in measured_columns(demo_schema))
    with pytest.raises(ValueError, match="noise std is unknown"):
        shrunk_site_tables(demo_schema, [Marginals(dict(p.arrays)) for p in parts], parts[0] + parts[1])



def test_a_site_with_an_empty_class_does_not_pool_the_sites_that_really_differ():
    """Three sites that hold different value mixes, and a fourth whose class is empty (a rare
    class at a small site, or a hostile all-zero reply): the three keep their own mixes."""
    rng = np.random.default_rng(0)
    own = np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]])
    exact = np.concatenate([own * 300.0, np.zeros((1, 3))])[:, :, None]
    noisy = exact + np.concatenate([rng.normal(0.0, 15.0, size=(3, 3, 1)), np.zeros((1, 3, 1))])
    sizes = np.array([[300.0], [300.0], [300.0], [1.0]])
    pooled = (own.mean(axis=0) / own.mean(axis=0).sum())[:, None]
    shrunk = shrunk_to_pool(noisy, sizes, np.full(4, 15.0), pooled)
    assert _error(shrunk[:3], exact[:3]) < _error(noisy[:3], exact[:3]) + 0.01
    assert np.all(np.argmax(shrunk[:3, :, 0], axis=1) == np.arange(3))


@pytest.mark.parametrize("spread", [0.02, 0.05])
def test_sites_that_differ_a_little_keep_the_part_of_their_own_mix_their_noise_allows(spread):
    """Between the two extremes: sites' shares differ from a common mix by ``spread`` (std per
    bin) and carry noise of about the same size. The estimate must beat both the sites' own
    tables and the pool's on average, which only a between-site variance near the truth does
    (0 pools everything, a large one keeps every site's noise)."""
    rng = np.random.default_rng(1)
    sites, bins, size, std = 6, 8, 400.0, 8.0
    errors = {"own": [], "pooled": [], "shrunk": []}
    for _ in range(30):
        shares = np.clip(1.0 / bins + rng.normal(0.0, spread, size=(sites, bins)), 0.001, None)
        shares /= shares.sum(axis=1, keepdims=True)
        exact = (shares * size)[:, :, None]
        noisy = exact + rng.normal(0.0, std, size=exact.shape)
        pooled = np.clip(noisy.sum(axis=0), 0.0, None) / np.clip(noisy.sum(axis=0), 0.0, None).sum()
        shrunk = shrunk_to_pool(noisy, np.full((sites, 1), size), np.full(sites, std), pooled)
        errors["own"].append(_error(noisy, exact))
        errors["pooled"].append(_error(np.broadcast_to(pooled * size, exact.shape), exact))
        errors["shrunk"].append(_error(shrunk, exact))
    own, pooled, shrunk = (float(np.mean(errors[name])) for name in ("own", "pooled", "shrunk"))
    assert shrunk < min(own, pooled)


def test_each_sites_weight_on_its_own_table_follows_the_true_between_site_variance():
    """Many bins, so the between-site variance is estimated closely: each site's weight on its
    own counts (read back from the result) is near tau² / (tau² + (s / n)²) with the true tau²,
    for sites of different sizes."""
    rng = np.random.default_rng(2)
    bins, std = 1000, 0.3
    sizes = np.array([200.0, 400.0, 800.0, 1600.0, 400.0, 800.0])
    shares = (1.0 + rng.normal(0.0, 0.3, size=(len(sizes), bins))) / bins  # a site effect of std .3 / bins
    noisy = (shares * sizes[:, None] + rng.normal(0.0, std, size=shares.shape))[:, :, None]
    pooled = np.full((bins, 1), 1.0 / bins)
    shrunk = shrunk_to_pool(noisy, sizes[:, None], np.full(len(sizes), std), pooled)
    toward = sizes[:, None, None] * pooled[None]
    weights = ((shrunk - toward) / (noisy - toward))[:, :, 0].mean(axis=1)
    tau2 = (0.3 / bins) ** 2
    expected = tau2 / (tau2 + (std / sizes) ** 2)
    assert np.allclose(weights, expected, rtol=0.1), (weights, expected)


def test_the_federations_tables_are_the_sum_coarsened_and_each_sites_drawn_toward_it(demo_frame, demo_schema):
    """The coordinator's one recipe: the sites' tables summed (variances added) and coarsened
    under the sum's noise; each site's own drawn toward that sum."""
    halves = [demo_frame.iloc[: len(demo_frame) // 2], demo_frame.iloc[len(demo_frame) // 2:]]
    parts = [noisy_marginals(half, demo_schema, 2.0, np.random.default_rng(k), pairs_share=0.4)
             for k, half in enumerate(halves)]
    summed, per_site = federation_tables(demo_schema, parts, 1.5)
    expected = (parts[0] + parts[1]).without_noise_floor(demo_schema, 1.5)
    assert summed.cell_std == pytest.approx(math.hypot(parts[0].cell_std, parts[1].cell_std))
    assert all(np.array_equal(summed.tables[name], expected.tables[name]) for name in expected.tables)
    for own, made in zip(shrunk_site_tables(demo_schema, parts, expected), per_site):
        assert all(np.array_equal(own.arrays[name], made.arrays[name]) for name in own.arrays)
    unfloored, _ = federation_tables(demo_schema, parts, 0.0)
    assert any(not np.array_equal(unfloored.tables[name], summed.tables[name]) for name in summed.tables)
    # One site has nothing to pool: its slot's tables (the release is raked to them) are the sum's,
    # coarsened, not its raw noise (a glucose no row lacks was raked toward missing in 7 % of a class).
    alone, (own,) = federation_tables(demo_schema, parts[:1], 1.5)
    assert all(np.array_equal(own.tables[name], alone.tables[name]) for name in alone.tables)
    assert any(not np.array_equal(own.tables[name], parts[0].tables[name]) for name in alone.tables)


def test_class_sizes_lean_on_the_tables_with_few_bins():
    """A small site's rare class (46 rows) from two 2-level columns and two numeric columns of 60
    bins, every cell with noise of std 15: a 60-bin table's class sum carries 60 cells' noise, so
    weighing the tables equally (as before) left the estimate's error 2.8 times that of the
    precision-weighted one. On nwtco's tables at epsilon 1 the ratio is 2.4 (std 27.5 against
    11.6): its smallest site's 46 relapses were 1.7 std from an empty class, and seed 0 emptied
    it. The estimate must stay unbiased, and the total likewise."""
    rng = np.random.default_rng(7)
    sizes, errors, totals = np.array([300.0, 46.0]), [], []
    for _ in range(400):
        tables = {}
        for name, bins in (("a", 2), ("b", 2), ("x", 60), ("y", 60)):
            exact = np.zeros((bins, 2))
            exact[0], exact[-1] = sizes / 2, sizes / 2
            tables[name] = exact + rng.normal(0.0, 15.0, size=exact.shape)
        marginals = Marginals(tables)
        errors.append(marginals.class_totals()[1] - sizes[1])
        totals.append(marginals.total() - sizes.sum())
    assert abs(np.mean(errors)) < 2.0 and abs(np.mean(totals)) < 3.0  # unbiased
    assert 12.0 < np.std(errors) < 18.0  # precision-weighted: 15 / sqrt(1 + 1/30) ≈ 14.8; equally weighted ≈ 42
    assert np.std(totals) < 26.0  # ≈ 20.9; equally weighted ≈ 59


def test_a_class_the_noise_drowns_whole_is_spread_evenly_not_piled_where_noise_spiked():
    """The wide table's deaths (238 rows over 49 age bins, noise std 90 per cell of the summed
    tables): the first bins whose noise happened to beat the floor took the class's whole mass,
    every death at ages 25-27, and the released age gradient was turned round. A class whose
    bins together cannot beat the noise is spread evenly over the range."""
    from fedsyn.privacy.postprocessing import coarsened

    rng = np.random.default_rng(3)
    widths = np.ones(49)
    exact = np.zeros(49)
    exact[25:] = 238 / 24  # the old die
    for _ in range(20):
        noisy = exact + rng.normal(0.0, 90.0, size=49)
        spread = coarsened(noisy, widths, 1.5 * 90.0, 238.0)
        np.testing.assert_allclose(spread, np.full(49, 238.0 / 49))
    enough = np.zeros(49)
    enough[25:] = 60_000 / 24
    kept = coarsened(enough + rng.normal(0.0, 90.0, size=49), widths, 1.5 * 90.0, 60_000.0)
    assert kept[25:].sum() > 0.95 * 60_000  # where the data beats the noise, it keeps its place


def test_a_weak_class_is_grouped_where_its_rows_stand_out_not_from_a_stretch_of_noise_below_them():
    """A newcomer's readmitted patients (315 rows, ages 60-90 of 64 bins, noise 25 a cell; no bin
    beats the noise by far): greedy groups grown from the first stretch whose noise crossed the
    floor, at young ages, could not cross the negative noise after it, so the class went to ages
    26-45 and the age effect came out reversed. Groups now grow from the stretch that stands
    furthest above its noise."""
    from fedsyn.privacy.postprocessing import coarsened

    counts = np.zeros(64)
    counts[35:55] = 15.0  # 300 rows, 15 a bin against a floor of 37.5
    counts[2:5] = [30.0, 25.0, 10.0]  # noise crossing the floor early
    counts[5:35] = -5.0  # then negative noise, -150 in all
    grouped = np.clip(coarsened(counts, np.ones(64), 37.5, 300.0), 0.0, None)
    assert grouped[35:55].sum() > 0.85 * grouped.sum() and grouped[:35].sum() == 0.0  # greedy: 65 rows at 2-5
    # The same, drawn: the class older than every class (prior mean 28.7, class 40.0)
    centre = np.arange(64.0)
    young, old = (np.exp(-0.5 * ((centre - mean) / sd) ** 2) for mean, sd in ((25, 10), (40, 8)))
    every_class = 1000 * young / young.sum() + 315 * old / old.sum()
    rng = np.random.default_rng(0)
    shifts = []
    for _ in range(100):
        prior = np.clip(coarsened(every_class + rng.normal(0, 35.0, 64), np.ones(64), 52.5, every_class.sum()),
                        0.0, None)
        released = np.clip(coarsened(315 * old / old.sum() + rng.normal(0, 25.0, 64), np.ones(64), 37.5, 315.0,
                                     prior=prior), 0.0, None)
        shifts.append((released @ centre) / released.sum() - (prior @ centre) / prior.sum())
    assert np.median(shifts) > 9 and sum(shift < -2 for shift in shifts) <= 20  # greedy: median 6.8 (12 reversed)


def test_a_class_the_noise_drowns_whole_is_spread_like_every_class_not_over_the_public_range():
    """A newcomer's readmitted patients (277 of 1,986 rows, 3 sites at epsilon 1) were too few
    for their length of stay (1-13 days, public bounds 1-120) to beat the noise, and were spread
    evenly over 1-120: the release's stays had 3.8 times the real spread and their effect on
    readmission 4 times the real one. Spread like the column's counts over every class, the
    class says nothing of the column (no effect) instead of something false."""
    body = np.zeros((numeric_bins(VISITS), 2))
    body[:8, 0] = 2000 / 8  # the data sits in the first bins, far below the upper bound
    body[:8, 1] = 60 / 8  # 60 rows against a floor of 15 per bin: the noise drowns the class whole
    coarse = _coarsen(body, cell_std=10.0)
    small = coarse[:, 1] / coarse[:, 1].sum()
    assert small[:8].sum() > 0.9  # where every class's rows are (spread by width: under 0.1)
    np.testing.assert_allclose(small, coarse[:, 0] / coarse[:, 0].sum(), atol=0.05)


def test_a_value_piled_at_a_bound_keeps_its_share_when_its_class_is_coarsened(demo_schema, demo_frame):
    """A newcomer's 54-column table had 32 % of troponin values at the assay's limit (the lower
    bound) and the release held none: its small classes were spread over the range by width,
    and the bound's bin, one value wide, got nothing. A bound's bin whose count beats the noise
    keeps it; without mass there, none is invented."""
    from fedsyn.privacy.postprocessing import coarsened, point_mass_beyond_noise

    rows = demo_frame.head(4000).copy()
    at_limit = np.random.default_rng(0).random(len(rows)) < 0.32
    rows.loc[at_limit, "kappa"] = demo_schema.column("kappa").lower
    noisy = noisy_marginals(rows, demo_schema, 60.0, np.random.default_rng(1))
    floored = noisy.without_noise_floor(demo_schema)
    shares = floored.tables["kappa"][0] / floored.class_totals()
    truth = [float(at_limit[(rows["death"] == level).to_numpy()].mean())
             for level in demo_schema.column("death").levels]
    assert noisy.cell_std * 1.5 * np.sqrt(numeric_bins(demo_schema.column("kappa"))) > floored.class_totals().min()
    np.testing.assert_allclose(shares, truth, atol=0.2)  # the smaller class was spread evenly, its atom kept
    assert shares.min() > 0.15  # it was 0
    rows = demo_frame.head(4000)
    noisy = noisy_marginals(rows, demo_schema, 60.0, np.random.default_rng(2))  # nothing at kappa's bounds
    floored = noisy.without_noise_floor(demo_schema).tables["kappa"]
    assert (floored[[0, -1]] == 0).all() and (np.abs(noisy.tables["kappa"][[0, -1]]) > 0).all()  # noise is no atom
    settled = point_mass_beyond_noise(np.array([1000.0, 4.0]), np.array([2500.0, 200.0]), 15.0, 10.0)
    assert settled[0] == pytest.approx(1000.0, rel=1e-3)  # rates of 40 % and 2 % differ far beyond their noise:
    assert settled[1] < 10.0  # the small class keeps about its own (24 % pooled; 17 % under a cap of two floors)
    widths = np.r_[1e-9, np.ones(47), 1e-9]
    spike = coarsened(np.r_[400.0, np.zeros(47), 0.0], widths, 135.0, 1.0, atoms=(0, 48))
    assert spike.sum() == pytest.approx(1.0)  # a spike at a bound never makes the class larger


def test_what_the_noise_drowns_never_gets_negative_counts_or_more_missing_rows_than_its_class():
    """A review of 822b5b4: a prior left with raw noisy bins (below 0) gave a small class
    negative counts, and a kept 'missing' count or a pooled share could exceed the class."""
    from fedsyn.privacy.postprocessing import coarsened, point_mass_beyond_noise

    spread = coarsened(np.array([0.3, 0.3, 0, 0, 0, 0.06]), np.ones(6), 1.5, 1.67,
                       prior=np.array([0.9, 0.7, 0.5, -1.3, 0.4, -0.5]))
    assert spread.min() >= 0 and spread.sum() == pytest.approx(1.67)
    settled = point_mass_beyond_noise(np.array([10.0, 0.0]), np.array([5.0, 50.0]), 1.5, 1.0)
    assert settled[0] <= 5.0 and 0.0 <= settled[1] < 1.0  # never more than the class; the other keeps its none
    settled = point_mass_beyond_noise(np.array([10.0, 2.5]), np.array([50.0, 5.0]), 1.5, 1.0)
    np.testing.assert_allclose(settled, 12.5 / 55.0 * np.array([50.0, 5.0]))  # rates within their noise: pooled
    assert point_mass_beyond_noise(np.array([4.0, 2.9]), np.array([5.0, 1.0]), 1.5, 1.0)[1] <= 1.0


def test_classes_of_one_rate_at_an_atom_share_it_and_a_small_class_settled_at_none_stays_so():
    """The review of affcc07: DerSimonian-Laird alone told two classes of one rate apart one time
    in three (a chi-square test now decides first), and a small class whose atom was settled at
    none was spread like every class, atom included: a COVID-like table's 120 positives got the
    negatives' 95 % at the assay's limit (0.8 % real), which the calibration then held."""
    from fedsyn.privacy.postprocessing import coarsened, point_mass_beyond_noise

    rng = np.random.default_rng(5)
    errors = []
    for _ in range(400):
        counts = np.array([200.0, 8.0]) + rng.normal(0.0, 15.0, 2)  # 2,000 and 80 rows, both 10 %
        errors.append(point_mass_beyond_noise(counts, np.array([2000.0, 80.0]), 22.5, 15.0)[1] / 80.0 - 0.1)
    assert np.sqrt(np.mean(np.square(errors))) < 0.06 and np.mean(np.abs(errors) > 0.15) < 0.03
    widths = np.r_[np.ones(30), 1e-9]
    every_class = np.r_[np.full(30, 5.0), 3000.0]  # the negatives all at the upper atom
    body = np.r_[np.full(30, 4.0), 0.0]  # 120 positives, their atom settled at none
    spread = coarsened(body, widths, 22.5, 120.0, atoms=(30,), prior=every_class)
    assert spread[30] == 0.0 and spread.sum() == pytest.approx(120.0)
    # the second review: with its other atom kept, the one settled at none was no atom any more
    widths, every_class = np.r_[1e-9, widths], np.r_[150.0, every_class]
    spread = coarsened(np.r_[10.0, body], widths, 22.5, 120.0, atoms=(0, 31), prior=every_class)
    assert spread[0] == 10.0 and spread[31] == 0.0 and spread.sum() == pytest.approx(120.0)


def test_an_atom_each_class_is_too_noisy_to_hold_takes_the_columns_share(demo_schema, demo_frame):
    """On the bench's rotterdam table 12-14 % of each class's estrogen receptor values are 0 (its
    lower bound); one seed's noise put both classes' counts there below their floor, and the
    release held no 0 at all. The column's count over both classes beats the noise: each class
    takes its share."""
    rows = demo_frame.head(4000).copy()
    at_limit = np.random.default_rng(3).random(len(rows)) < 0.13
    rows.loc[at_limit, "kappa"] = demo_schema.column("kappa").lower
    noisy = noisy_marginals(rows, demo_schema, 37.5, np.random.default_rng(1))
    floor = 1.5 * noisy.cell_std
    totals = noisy.class_totals()
    levels = demo_schema.column("death").levels
    truth = np.array([at_limit[(rows["death"] == level).to_numpy()].sum() for level in levels])
    assert (truth < 2 * floor).all() and truth.sum() > 2 * floor * np.sqrt(2)  # the case
    noisy.tables["kappa"][0] = truth  # the cells' noise aside: each class alone stays below its floor
    shares = noisy.without_noise_floor(demo_schema).tables["kappa"][0] / totals
    np.testing.assert_allclose(shares, truth.sum() / totals.sum(), rtol=1e-3)  # it was 0 in both classes


def test_a_weak_class_keeps_the_runs_it_fills_where_its_bins_alone_drown(monkeypatch):
    """nwtco's relapsed patients (440 rows, their time to relapse in 2 runs of 8) were too few
    for their 64 bins together to beat the summed tables' noise: spread like every class, their
    median time to relapse came out at 5,118 days (real 284) and the outcome's LR at .36. Each
    run's count, measured as a table of its own, carries the noise of a few cells, not of its
    eight bins: the class keeps where its rows are, and without the runs' tables it does not."""
    from fedsyn.privacy import marginals

    days = Column(name="days", kind="integer", lower=0, upper=6000)
    schema = Schema(name="relapse", outcome="relapsed", columns=[
        days, Column(name="relapsed", kind="categorical", categories=["no", "yes"])])
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"days": np.r_[rng.integers(0, 6000, 3000), rng.integers(100, 900, 440)],
                          "relapsed": ["no"] * 3000 + ["yes"] * 440})
    centres = inverse_transform_centres(days)
    truth = frame.loc[frame["relapsed"] == "yes", "days"].mean()

    def weak_class_error(draws: int = 6) -> float:
        errors = []
        for draw in range(draws):
            noisy = noisy_marginals(frame, schema, 30.0, np.random.default_rng(draw))
            weak = noisy.without_noise_floor(schema).tables["days"][:, 1]
            errors.append(abs(float(weak @ centres / weak.sum()) - truth))
        return float(np.mean(errors))

    assert weak_class_error() < 300  # 155 on these draws
    monkeypatch.setattr(marginals, "run_measured_columns", lambda schema: [])
    assert weak_class_error() > 600  # 1,270, at less noise (no runs to pay for)


def inverse_transform_centres(column: Column) -> np.ndarray:
    """The middle of each of a linear numeric column's public bins."""
    edges = numeric_edges(column)
    return np.clip((edges[:-1] + edges[1:]) / 2, column.lower, column.upper)


def test_onto_simplex_answers_even_where_float_rounding_leaves_no_threshold():
    """helper-94 F1: values of about 1e16 against a total of 1 left no rank whose threshold
    float64 could tell positive, and the projection raised an IndexError after the site had
    been charged. It now falls back to the first rank: non-negative, never an exception."""
    from fedsyn.privacy.postprocessing import onto_simplex

    rng = np.random.default_rng(0)
    for scale in (1e10, 1e16, 1e20):
        projected = onto_simplex(rng.normal(0.0, scale, 50), 1.0)
        assert np.isfinite(projected).all() and projected.min() >= 0.0


@pytest.mark.parametrize("kind", ["continuous", "categorical"])
def test_a_site_that_never_takes_a_measure_keeps_it_missing(kind):
    """helper-114's 300-row clinic takes no BNP: empty in every real row, 27 % empty in the
    release. Its body is no different from the others' (it has none), so one weight for the
    whole column drew its missing share to the pool's; weighed on its own it stays."""
    from fedsyn.privacy.marginals import site_groups

    column = (Column(name="bnp", kind=kind, lower=1, upper=5000, transform="log", nullable=True)
              if kind == "continuous" else Column(name="bnp", kind=kind, categories=["low", "high"], nullable=True))
    bins = bin_labels(column)
    body = np.exp(-0.5 * ((np.arange(bins - 1) - (bins - 1) / 2) / max(bins / 6, 0.5)) ** 2)
    taking = np.concatenate([body / body.sum() * 0.95, [0.05]])
    shares = np.stack([np.eye(bins)[-1], taking, taking, taking])
    sizes, stds = np.array([[300.0], [1500.0], [1200.0], [1000.0]]), np.full(4, 15.0)
    exact = shares[:, :, None] * sizes[:, None, :]
    rng = np.random.default_rng(0)
    noisy = exact + rng.normal(0, 15.0, exact.shape)
    pooled = exact.sum(axis=0) / exact.sum()
    shrunk = shrunk_to_pool(noisy, sizes, stds, pooled, site_groups(column), missing_last=True)
    missing_share = shrunk[:, -1, 0] / shrunk[:, :, 0].sum(axis=1)
    assert missing_share[0] > 0.9 and np.all(np.abs(missing_share[1:] - 0.05) < 0.03)
    np.testing.assert_allclose(shrunk[:, :, 0].sum(axis=1), sizes[:, 0])  # each class keeps its (noisy) size
    # helper-117: the site's values are noise summing to about 0 (and its noisy class size is not its
    # table's sum): scaled up they became one level at 100 % and 'missing' 0 %; they take the pool's shape
    hollow = noisy.copy()
    hollow[0, :, 0] = 0.0
    hollow[0, :2, 0], hollow[0, -1, 0] = [-13.7, -29.5], 280.0
    shrunk = shrunk_to_pool(hollow, sizes + [[10.0], [0], [0], [0]], stds, pooled, site_groups(column),
                            missing_last=True)
    assert (shrunk[0] >= 0).all() and shrunk[0, -1, 0] / shrunk[0, :, 0].sum() > 0.8  # was [227, -174, 257]
    np.testing.assert_allclose(shrunk[0, :, 0].sum(), 310.0)
    if kind == "continuous":  # one weight for 64 bins and 'missing': drawn toward the pool's 13 %
        one_weight = shrunk_to_pool(noisy, sizes, stds, pooled, site_groups(column))
        assert one_weight[0, -1, 0] / one_weight[0, :, 0].sum() < 0.6
