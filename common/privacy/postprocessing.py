"""Post-processing of noisy tables: what fedsyn does with DP outputs after the mechanism.

Nothing here reads a private row, so none of it costs privacy (the post-processing property
of DP): it only turns noisy counts into distributions a generator can learn, and it lives
apart from :mod:`fedsyn.privacy.marginals` (the mechanism that measures the tables) so that
changing how noise is cleaned up can never touch how it is added.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import chi2

NOISE_FLOOR = 1.5  # the default floor: a group of noisy counts is kept where it beats this many noise std
PILE_FLOORS = 3.0  # a bin beating this many floors is a pile: a group of its own


def beats_noise_alone(count: float, floor: float) -> bool:
    """Whether a cell that stands alone (a continuous column's bound, a numeric column's
    'missing') holds more than noise: its count beats ``floor`` twice over (3 noise std at the
    default floor of 1.5). Noise alone passes for one such cell in 700; at ``floor`` itself, one
    in 15 (every class of every bound and every nullable column: an invented atom, a column
    missing in 4 % of released rows that no real row lacks)."""
    return bool(count >= 2 * floor)


def point_mass_beyond_noise(counts: np.ndarray, class_totals: np.ndarray, floor: float, std: float) -> np.ndarray:
    """A cell that stands alone (no neighbouring bins to merge with: a nullable column's
    'missing', a continuous column's bound atom), one noisy count per outcome class (each
    carrying noise of ``std``): nothing where even their sum does not beat the noise
    (:func:`beats_noise_alone` at ``floor``); else the rate over every class, unless the
    classes' rates differ by more than their noise explains (a chi-square test at 95 %), and
    then each class's rate drawn toward it as far as its noise outweighs how much they differ
    (the DerSimonian-Laird weights :func:`shrunk_to_pool` gives sites); never more than two
    floors above a class's own count, nor more than its ``class_totals``, nor, for a count the
    noise drowns alone, more than the rate over every class (the test itself is noisy where the
    sum barely beats the noise: a small class of the same rate then kept its noise).

    So a column no row lacks is not released missing (a newcomer's glucose came back missing in
    4 % of rows), and a class is not made never missing, or never at an assay's limit, where its
    count is only too noisy to say: on the bench's rotterdam table 12-14 % of each class's
    estrogen receptor values are 0, and a class whose count fell below its floor was released
    with almost none (3 % of rows at 0 on seed 0). Classes that differ keep about their own:
    where 40 % of survivors and 2 % of deaths sat at an assay's limit the deaths would have had
    24 %, and on a COVID test table, where every negative test and 0.5 % of the positives sat
    at the cycle threshold's limit 45, the rate over both capped at two floors above the
    positives' own count still gave them 18 % (docs/benchmarks.md). Without the test, two
    classes of one rate were told apart one time in three, and a small class kept its noise."""
    pooled = float(np.sum(counts))
    if not beats_noise_alone(pooled, floor * math.sqrt(len(counts))):
        return np.zeros(len(counts))
    counts = np.asarray(counts, dtype=float)
    totals = np.maximum(np.asarray(class_totals, dtype=float), 0.0)
    measured = totals > 1.0  # an empty class's noise says nothing of a rate
    rate = min(max(float(counts[measured].sum()), 0.0) / max(float(totals[measured].sum()), 1.0), 1.0)
    own = np.clip(counts / np.clip(totals, 1.0, None), 0.0, 1.0)
    weight = np.zeros(len(counts))
    if measured.sum() > 1:
        variance = (max(std, 1e-12) / totals[measured]) ** 2
        if _heterogeneity(own[measured][:, None], variance) > chi2.ppf(0.95, int(measured.sum()) - 1):
            weight[measured] = _pooling_weights(own[measured][:, None], variance)
    settled = np.minimum(totals * (weight * own + (1.0 - weight) * rate), np.maximum(counts + 2 * floor, 0.0))
    alone = np.array([beats_noise_alone(count, floor) for count in counts])
    settled = np.where(alone, settled, np.minimum(settled, totals * rate))  # drowned: no more than pooled
    return np.asarray(np.clip(settled, 0.0, totals), dtype=float)


def coarsened(counts: np.ndarray, widths: np.ndarray, floor: float, total: float,
              atoms: tuple[int, ...] = (), prior: np.ndarray | None = None) -> np.ndarray:
    """One class's noisy counts over bins of ``widths``, merged where the noise drowns them.

    ``atoms`` are bins that hold one value (a continuous column's bounds: a lab value at its
    assay's limit, see :func:`fedsyn.data.grid.numeric_edges`), their counts already settled
    against the noise (:func:`point_mass_beyond_noise`; at ``floor`` itself, invented atoms
    cost the bench's nmes table .03 of its outcome's ROC-AUC): spread by width, a group would
    take nothing there. One with a count is a group of its own and keeps it (the kept atoms
    scaled down to the class's ``total`` if they exceed it: a noise spike never makes a class
    larger) whatever happens to the others; an empty one is an ordinary bin. (On a newcomer's
    54-column table 32 % of troponin values sat at the assay's limit, and the release held
    none: each class was spread evenly over the range, its atom getting its width's share.)

    Adjacent bins are merged until a group's count exceeds ``floor`` times the square root of
    its number of bins (its noise grows so), and each group is spread evenly over its width
    (bins may differ in width, see :func:`fedsyn.data.grid.numeric_edges`). So a sharp peak keeps its bins and
    a spread-out stretch becomes a coarser histogram instead of noise. Groups grow both ways
    from an anchor inside the data: the largest bin if it beats the noise by far (3 floors;
    a noise spike rarely does), else the first bin of the stretch that stands furthest above
    its noise (:func:`_strongest_stretch`). So an empty stretch below the data (short stays of
    a procedure that needs a week in hospital) is not merged into the data's first group, and
    a weak class's groups start among its rows, not on a stretch of noise below them.

    The bins left over at either end never beat the noise: a sparse tail, or the empty
    reaches of wide public bounds. Their cells are dropped; what the groups miss of the
    class's noisy ``total`` is shared between the two ends by their own noisy sums (where
    neither is positive, by ``prior``'s mass there: dropped, the missing rows were read back
    spread evenly over every bin, and the hospitalised patients' visits in the bench's nmes
    reached the public bound; offline, their W1 fell up to fourfold), and each
    end's share becomes a tail that continues the outermost group's density and decays
    (:func:`_tail`; after a pile, spread like ``prior``). So a long sparse tail (the lymph
    nodes of the patients who died) is kept instead of cut off, and an empty reach stays empty. Counts in which no
    stretch beats the noise are returned as they were.

    A class too small for even all its bins together to beat the noise (``total`` below
    ``floor`` times the square root of their number) is spread like ``prior`` instead (the
    column's counts over every class, coarsened under their own noise; evenly over the range
    without one): any group that beats the noise there is a noise spike, and the class's whole
    mass went into it. On a 63-column table at epsilon 1 that put every death at ages 25-27
    and turned the age gradient round (docs/benchmarks.md). Spread like every class, the class
    says nothing of the column, which is what its noisy counts support; spread evenly, it said
    something false: a newcomer's readmitted patients' stays (1-13 days), spread over the public
    1-120, gave the release 3.8 times the real spread and 4 times the real effect."""
    kept = [index for index in atoms if counts[index] > 0]
    if kept:
        rest = np.ones(len(counts), dtype=bool)
        rest[kept] = False
        merged = counts.copy()
        merged[kept] *= min(1.0, max(total, 0.0) / counts[kept].sum())
        empty = tuple(int(np.searchsorted(np.flatnonzero(rest), index)) for index in atoms if index not in kept)
        merged[rest] = coarsened(counts[rest], widths[rest], floor, max(total - merged[kept].sum(), 0.0),
                                 empty, prior=None if prior is None else prior[rest])  # still atoms: kept at none
        return merged
    if prior is not None:  # a raw prior may hold noise below 0; an atom settled at none holds none of its share
        prior = np.where(np.isin(np.arange(len(prior)), atoms), 0.0, np.clip(prior, 0.0, None))
    if total < floor * math.sqrt(len(counts)):
        shape = widths.copy() if prior is None else prior.copy()
        shape[list(atoms)] = 0.0  # settled at none: every class's share there is not this class's
        if shape.sum() <= 1e-9 * widths.sum():
            shape = widths
        return np.asarray(shape / shape.sum() * max(total, 0.0), dtype=float)
    anchor = int(np.argmax(counts))
    pile = counts[anchor] >= PILE_FLOORS * floor  # a bin that beats the noise by far: a group of its own
    if not pile:
        anchor, score = _strongest_stretch(counts, prior)
        if score < floor:
            return counts.copy()
    upper, upper_end = _merged_upwards(counts[anchor:], widths[anchor:], floor)
    lower, lower_end = _merged_upwards(counts[:anchor][::-1], widths[:anchor][::-1], floor)
    merged = np.concatenate([lower[::-1], upper])
    low, high = anchor - lower_end, anchor + upper_end  # the groups cover bins [low, high)
    missing = max(total - merged[low:high].sum(), 0.0)
    left_over = np.clip([counts[:low].sum(), counts[high:].sum()], 0.0, None)
    if left_over.sum() <= 0 and prior is not None:  # neither end's noise says: where every class's rows lie
        left_over = np.array([prior[:low].sum(), prior[high:].sum()])
    below, above = missing * left_over / left_over.sum() if left_over.sum() > 0 else (0.0, 0.0)
    upper_prior, lower_prior = (None, None) if prior is None else (prior[high:], prior[:low][::-1])
    merged[high:] = _tail(above, merged[high - 1] / widths[high - 1], widths[high:], upper_prior,
                          pile and high - anchor == 1)
    merged[:low] = _tail(below, merged[low] / widths[low], widths[:low][::-1], lower_prior,
                         pile and low == anchor)[::-1]
    return merged


def _tail(mass: float, density: float, widths: np.ndarray, prior: np.ndarray | None, after_pile: bool) -> np.ndarray:
    """``mass`` left over at one end of a class's groups, over the bins of ``widths`` (from the
    groups outwards): a tail that continues the outermost group's ``density`` and decays
    (:func:`_decaying_tail`), unless that group is a pile (``after_pile``: the anchor's bin
    alone, a bin that beats the noise by far, with no group beyond it on this side).

    A pile's density is no tail's: a newcomer's admissions sat at 0 hours in intensive care in
    78 % of rows, no group beat the noise over the thin spread of the others' hours (1-336,
    median 154), and a tail continuing the pile put every stay at 1 hour in 2 runs of 3 (in a
    third of draws of the tables offline). After a pile, the mass is spread like ``prior``
    there (every class's counts, coarsened; none below 0), or evenly by width without one: counts that
    decay from 0 (every class's visits) keep their decay, a thin spread keeps its spread."""
    if after_pile and mass > 0:
        shape = widths if prior is None or prior.sum() <= 0 else prior
        return np.asarray(mass * shape / shape.sum(), dtype=float)
    return _decaying_tail(mass, density, widths)


def _merged_upwards(counts: np.ndarray, widths: np.ndarray, floor: float) -> tuple[np.ndarray, int]:
    """Greedy groups from the first bin up (see :func:`coarsened`): the merged counts and the
    index where the groups end (bins from there on are left as they were; 0: no group)."""
    merged = counts.copy()
    start, running = 0, 0.0
    for index, count in enumerate(counts):
        running += count
        if running >= floor * math.sqrt(index - start + 1):
            group = slice(start, index + 1)
            merged[group] = widths[group] / widths[group].sum() * counts[group].sum()
            start, running = index + 1, 0.0
    return merged, start


def _strongest_stretch(counts: np.ndarray, prior: np.ndarray | None = None) -> tuple[int, float]:
    """The first bin of the stretch of bins whose sum stands furthest above its noise, and that
    sum over the square root of the stretch's length (a scan statistic, in noise units of one
    bin's). Where no bin beats the noise by far, this is where a weak class's rows are: the
    first group from the lower bound may be a stretch of noise (one time in three in a class's
    first 50 bins), and greedy groups grown from there could not cross the negative noise after
    it to reach the rows (a newcomer's readmitted patients went to ages 26-45; the real ones
    were 60-90, docs/benchmarks.md).

    A stretch's sum counts for no more than ``prior`` holds there (every class's counts,
    coarsened): no class has more rows somewhere than all classes together. A noise stretch in
    the empty reach of a wide bound had outscored the rows themselves: the bench's nmes released
    its hospitalised patients with 281 visits at the median (real 5; the bound is 365)."""
    sums = np.concatenate([[0.0], np.cumsum(counts)])
    starts, ends = np.triu_indices(len(sums), k=1)
    held = sums[ends] - sums[starts]
    if prior is not None and prior.sum() > 0:
        every = np.concatenate([[0.0], np.cumsum(prior)])
        held = np.minimum(held, every[ends] - every[starts])
    score = held / np.sqrt(ends - starts)
    best = int(np.argmax(score))
    return int(starts[best]), float(score[best])


def _decaying_tail(mass: float, density: float, widths: np.ndarray) -> np.ndarray:
    """``mass`` over consecutive bins of ``widths``: an exponential density that starts at
    ``density`` (where the histogram before it ends) and decays with the scale that holds
    ``mass`` on an unbounded axis, cut at the last bin. Nothing without mass or density."""
    if mass <= 0 or density <= 0:
        return np.zeros_like(widths)
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    return np.asarray(mass * np.diff(-np.expm1(-edges * density / mass)), dtype=float)


def onto_simplex(values: np.ndarray, total: float) -> np.ndarray:
    """The closest point (Euclidean) to ``values`` that is non-negative and sums to ``total``:
    ``max(values - theta, 0)`` for the one ``theta`` that gives that sum."""
    total = max(float(total), 1e-9)
    ordered = np.sort(values)[::-1]
    excess = np.cumsum(ordered) - total
    ranks = np.arange(1, len(values) + 1)
    positive = np.nonzero(ordered - excess / ranks > 0)[0]
    rho = int(positive[-1]) if positive.size else 0  # rank 1 always qualifies but for float rounding at huge values
    return np.asarray(np.clip(values - excess[rho] / (rho + 1), 0.0, None), dtype=float)


def run_sums(table: np.ndarray, runs: np.ndarray, count: int | None = None) -> np.ndarray:
    """A table's counts (bins × classes) summed over each bin's run (``runs``): runs × classes
    (``count`` runs; None: as many as ``runs`` names). The one place bins are summed into runs:
    the mechanism's fold (:mod:`fedsyn.privacy.marginals`) and the pooling below both read it."""
    sums = np.zeros((int(runs.max()) + 1 if count is None else count, table.shape[1]))
    np.add.at(sums, runs, table)
    return sums


def shrunk_to_pool(tables: np.ndarray, sizes: np.ndarray, stds: np.ndarray, pooled: np.ndarray,
                   groups: np.ndarray | None = None, run_noise: np.ndarray | None = None,
                   missing_last: bool = False) -> np.ndarray:
    """Sites' noisy counts of one column (sites × bins × classes), each site's class drawn
    toward the pooled distribution ``pooled`` (bins × classes, P(bin | class)) as far as its
    noise outweighs how much sites really differ: an empirical-Bayes (James-Stein) estimate.

    A site's count of a bin in class ``k`` is its class size ``n`` (``sizes``, sites × classes,
    noisy) times its own share plus noise of std ``s`` (``stds``, one per site), so its share
    carries noise of variance ``v = (s / n)²``. Sites' shares are modelled as a common share
    plus a site effect of variance ``tau²`` per bin, estimated as DerSimonian and Laird do in
    meta-analysis: each site weighted by its precision ``1 / v``, so that a site with a tiny or
    empty class (or a hostile all-zero reply) counts for almost nothing instead of dragging the
    estimate to 0 for everyone. The best linear estimate of a site's counts is then ``w`` times
    its counts plus ``1 - w`` times ``n`` times the pooled share, ``w = tau² / (tau² + v)``. So a
    column whose sites differ by more than their noise (the hospital's own age groups, a site
    column) keeps each site's own distribution, and one whose site differences are noise gets
    the federation's, which is far less noisy. A small class of a small site leans on the pool
    most. A cell the pool holds nothing of (the coarsened sum's empty reach) is nothing at every
    site: no site's count there exceeds the sum's, which is noise. Kept, a site's positive noise
    there became rows (the nmes sites' emergency visits up to 75 where the rows stop at 12).
    With one site there is nothing to pool: the counts are returned as they are.

    ``groups`` (each bin's run of neighbouring bins; None: every bin its own) is the resolution
    at which a site's departure from the pool is weighed and kept: the site's share of each run
    is drawn toward the pool's, and spread within the run like the pool's. A site whose whole
    age distribution is ten years younger than the pool's differs in no one of 64 bins by more
    than the noise, and in each run of 8 by much more: weighed bin by bin, a newcomer's
    Northfield (real mean age 52, its own noisy table 51, the pool 61) was drawn to 59; by
    runs, to 54. Where the site measured each run's count as a table of its own
    (:func:`fedsyn.privacy.marginals.with_run_sums`), a run's share carries less noise than its
    ``k`` bins': ``run_noise`` gives each run's noise variance in cells' (None: ``k``).

    No site keeps more of a numeric column's run than the whole federation holds there (the
    pool's share of the run times the sum of the sites' class sizes): a site's rows are among
    the federation's, and its noise is not. The sites' real differences in a column's body (the
    bench's azpro hospitals' stays) set one weight per site for every run, so a site kept its
    positive noise in the empty reach of a wide bound too, where the pool's decaying tail is
    thin: spread like the pool within the run, 257 stays of one procedure took 9 % beyond 100
    days (the real maximum is 53), and the release's logistic regression fell from .93 to .65
    (docs/benchmarks.md). What a ceiling takes off goes to the site's other runs
    (:func:`_within_ceiling`). A categorical column's levels are left uncapped: where one site
    holds nearly all of a level (a site's own code), the pool's count binds by noise half the
    time, and what it took off landed on the levels the site holds none of.

    With ``missing_last`` (a nullable column: its last run is 'missing') the missing share keeps
    the larger of the column's weight and its own (:func:`_mixed`): a hospital that does not take
    a measure differs from the others there alone, and weighed with every run of the column it
    was drawn to the pool's share (a 300-row site's BNP, empty in every real row, 21 % empty in
    the release; helper-114)."""
    shrunk = np.array(tables, dtype=float)
    sites, bins, classes = shrunk.shape
    if sites < 2:
        return shrunk
    group = np.arange(bins) if groups is None else groups
    count = int(group.max()) + 1
    width = np.bincount(group, minlength=count)  # bins per run
    noise_cells = width if run_noise is None else run_noise  # a run's noise variance, in cells'
    for k in range(classes):
        size = np.clip(sizes[:, k], 1.0, None)
        own = run_sums((shrunk[:, :, k] / size[:, None]).T, group, count).T  # sites × runs
        common = run_sums(pooled[:, k:k + 1], group, count)[:, 0]
        variance = (np.maximum(stds, 1e-12) / size) ** 2
        mixed = _mixed(own, common, noise_cells, variance, missing_last)
        if groups is not None:  # a numeric column's runs of bins: the whole pool's count of each, per site row
            federation = common[None, :] * size.sum() / size[:, None]
            mixed = np.stack([_within_ceiling(shares, ceiling, common) for shares, ceiling in zip(mixed, federation)])
        with np.errstate(invalid="ignore", divide="ignore"):
            tilt = np.where(common > 0, mixed / common, 0.0)
        shrunk[:, :, k] = size[:, None] * pooled[None, :, k] * tilt[:, group]
    shrunk[:, pooled <= 0] = 0.0  # where the federation's sum holds nothing, no site's share of it is more than noise
    return shrunk


MIN_HELD_SHARE = 0.01  # a site's values holding less of its class than this are noise: they take the pool's shape


def _mixed(own: np.ndarray, common: np.ndarray, noise_cells: np.ndarray, variance: np.ndarray,
           missing_last: bool) -> np.ndarray:
    """Each site's shares of a column's runs (``own``, sites × runs) drawn toward ``common`` by
    their DerSimonian-Laird weight over every run. With ``missing_last`` the last run ('missing')
    keeps the larger of that weight and its own, and the others, drawn as before, are made a
    distribution holding what the site's missing share leaves of its class. Weighed apart
    from the values too, the covid table's values were drawn more to the pool (its lab site,
    86 % missing, holds few): its questions lost .01."""
    def weight(runs: slice) -> np.ndarray:
        return _pooling_weights(own[:, runs] / np.sqrt(noise_cells[runs])[None, :], variance)[:, None]

    def drawn(runs: slice, weights: np.ndarray) -> np.ndarray:
        return np.asarray(weights * own[:, runs] + (1.0 - weights) * common[None, runs], dtype=float)

    every = weight(slice(None))
    if not missing_last or own.shape[1] < 2:
        return drawn(slice(None), every)
    body = np.clip(drawn(slice(None, -1), every), 0.0, None)
    missing = np.clip(drawn(slice(-1, None), np.maximum(every, weight(slice(-1, None)))), 0.0, 1.0)
    # The present values' distribution, holding what 'missing' leaves. A site that takes no such
    # value holds only noise there, summing to about 0: scaled up, it became any shape at all
    # (helper-117: a no-BNP site's [-14, -30] came out 100 % one level), so it takes the pool's.
    pool = np.clip(common[:-1], 0.0, None)
    shape = pool / pool.sum() if pool.sum() > 0 else np.full(len(pool), 1.0 / len(pool))
    held = body.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        body = np.where(held > MIN_HELD_SHARE, body / held, shape[None, :]) * (1.0 - missing)
    return np.concatenate([body, missing], axis=1)


def _within_ceiling(shares: np.ndarray, ceiling: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """One site's ``shares`` of a column's runs, none above its ``ceiling``: what a capped run
    loses goes to the runs below theirs in proportion to the site's own positive shares there
    (the ``pooled`` ones where it has none; a negative share, noise, is then set to 0), so the
    site's total is kept while any run has room. Shares within every ceiling are returned as
    they are."""
    kept = np.asarray(shares, dtype=float).copy()
    ceiling = np.clip(ceiling, 0.0, None)
    total = float(kept.sum())
    capped = np.zeros(len(kept), dtype=bool)
    while (over := ~capped & (kept > ceiling)).any():
        capped |= over
        kept[capped] = ceiling[capped]
        kept[~capped] = np.clip(kept[~capped], 0.0, None)
        room = total - float(kept.sum())
        weights = np.where(capped, 0.0, kept)
        if weights.sum() <= 0:
            weights = np.where(capped, 0.0, np.clip(pooled, 0.0, None))
        if room <= 0 or weights.sum() <= 0:
            break
        kept += room * weights / weights.sum()
    return kept


def _heterogeneity(shares: np.ndarray, variance: np.ndarray) -> float:
    """Cochran's Q: the precision-weighted squared spread of units' ``shares`` (units × bins,
    noise ``variance`` per unit) around their precision-weighted mean, summed over the bins; a
    chi-square of ``bins * (units - 1)`` degrees of freedom where the units do not differ."""
    precision = 1.0 / variance
    with np.errstate(over="ignore", invalid="ignore"):
        centre = (precision[:, None] * shares).sum(axis=0) / precision.sum()
        return float((precision[:, None] * (shares - centre) ** 2).sum())


def _pooling_weights(shares: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Each site's weight on its own ``shares`` (sites × bins, noise ``variance`` per site):
    ``tau² / (tau² + variance)`` with the DerSimonian-Laird ``tau²`` (method of moments on the
    precision-weighted spread of the sites' shares around their precision-weighted mean)."""
    sites, bins = shares.shape
    precision = 1.0 / variance
    with np.errstate(over="ignore", invalid="ignore"):
        spread = _heterogeneity(shares, variance)
        scale = precision.sum() - (precision ** 2).sum() / precision.sum()
        tau2 = max(0.0, (spread - bins * (sites - 1)) / (bins * scale)) if scale > 0 else 0.0
    if not np.isfinite(tau2):  # shares beyond float range differ by more than any noise
        return np.ones(sites)
    return np.asarray(tau2 / (tau2 + variance) if tau2 > 0 else np.zeros(sites), dtype=float)
