"""The release's raking to the sites' noisy pair tables (fedsyn.model.raking).

A generator trained on noisy tables can leave two columns independent although every site's
pair table says they move together (the bench's nwtco: instit and histol). These tests fail if
the release stops raking, rakes a slot to another site's table, or loses a slot's share or the
outcome's mix on the way.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from fedsyn.data.rules import Condition, Rule, impose_missing_by_design
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.max_entropy import numbers_as_measured
from fedsyn.model.raking import (
    RakingTargets,
    fitted_to_margins,
    outcome_classes,
    pooled_pair_tables,
    release_weights,
    slot_margins,
    systematic_picks,
)
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.marginals import Marginals, exact_counts
from fedsyn.privacy.pairs import exact_pair_table, group_bounds, pair_cells, pair_key, pair_shape
from fedsyn.privacy.randomness import torch_generator

from .helpers import TINY

PAIR = ("kappa", "lambda")


def _with_pair(rows: pd.DataFrame, schema, tables: Marginals | None = None) -> tuple[Marginals, dict]:
    """``rows``' exact tables with their kappa × lambda pair table (as a site measures it, without noise)."""
    tables = tables if tables is not None else exact_counts(rows, schema)
    bounds = {name: group_bounds(schema.column(name), tables) for name in PAIR}
    pair = exact_pair_table(rows, schema, PAIR, bounds)
    return Marginals({**tables.tables, pair_key(PAIR): pair,
                      **{f"pairbins:{name}": value for name, value in bounds.items()}}), bounds


def _pair_distribution(rows: pd.DataFrame, schema, bounds: dict, weights: np.ndarray | None = None) -> np.ndarray:
    """The (weighted) rows' kappa × lambda table as a distribution."""
    size = int(np.prod(pair_shape(schema, PAIR)))
    table = np.bincount(pair_cells(rows, schema, PAIR, bounds), weights=weights, minlength=size)
    return table / table.sum()


def test_a_release_follows_the_pair_table_its_generator_never_learnt(demo_frame, demo_schema):
    """The production path (``sample_frame``) of a generator trained on the one-way tables only
    (each column right, kappa and lambda only as related as the outcome makes them): with the pair table among the
    tables its rows match it, and they keep the outcome's mix."""
    rows = demo_frame.sample(3000, random_state=1)
    plain = exact_counts(rows, demo_schema)
    measured, bounds = _with_pair(rows, demo_schema, plain)
    learnt = _one_way_generator(plain, demo_schema)

    def release(marginals: Marginals) -> pd.DataFrame:
        trainer = GANTrainer(TableEncoder(demo_schema, marginals), TINY, rng=torch_generator(5, "raking-test"))
        trainer.sampler.load_state_dict(learnt.sampler.state_dict())
        return trainer.sample_frame(4000)[0]

    target = _pair_distribution(rows, demo_schema, bounds)
    raked, unraked = release(measured), release(plain)
    distance = 0.5 * np.abs(_pair_distribution(raked, demo_schema, bounds) - target).sum()
    before = 0.5 * np.abs(_pair_distribution(unraked, demo_schema, bounds) - target).sum()
    assert distance < 0.05 and distance < 0.3 * before  # measured: .02 against .15
    outcome = demo_schema.outcome
    assert abs(raked[outcome].value_counts(normalize=True).sort_index()
               - rows[outcome].value_counts(normalize=True).sort_index()).max() < 0.03


def test_each_slot_is_raked_to_its_own_sites_table_and_keeps_its_share(demo_frame, demo_schema):
    """Two sites: one whose kappa and lambda move together, one where they do not. A pool in
    which they never do is weighted towards each site's own table, slot by slot."""
    rows = demo_frame.sample(2000, random_state=2).reset_index(drop=True)
    tables = exact_counts(rows, demo_schema)
    together, bounds = _with_pair(rows, demo_schema, tables)
    shuffled = rows.assign(**{"lambda": rows["lambda"].sample(frac=1.0, random_state=5).to_numpy()})
    apart, _ = _with_pair(shuffled, demo_schema, tables)
    pool = pd.concat([shuffled, shuffled], ignore_index=True)
    slots = np.repeat([0, 1], len(rows))
    targets = RakingTargets.of(np.array([0.7, 0.3]), [together, apart])
    weights = release_weights(pool, demo_schema, slots, targets, count=400)

    assert abs(weights[slots == 0].sum() - 0.7) < 1e-9 and abs(weights[slots == 1].sum() - 0.3) < 1e-9
    first = _pair_distribution(shuffled, demo_schema, bounds, weights[slots == 0] / 0.7)
    second = _pair_distribution(shuffled, demo_schema, bounds, weights[slots == 1] / 0.3)
    assert 0.5 * np.abs(first - _pair_distribution(rows, demo_schema, bounds)).sum() < 0.05
    assert 0.5 * np.abs(second - _pair_distribution(shuffled, demo_schema, bounds)).sum() < 0.05


def test_raking_keeps_how_the_pair_columns_depend_on_the_outcome(demo_frame, demo_schema):
    """A pool in which the outcome was shuffled (kappa tells nothing about it) is raked back to
    the site's kappa-by-outcome table, not only to its kappa × lambda table."""
    rows = demo_frame.sample(3000, random_state=3).reset_index(drop=True)
    measured, _ = _with_pair(rows, demo_schema)
    outcome = demo_schema.outcome
    pool = rows.assign(**{outcome: rows[outcome].sample(frac=1.0, random_state=6).to_numpy()})
    weights = release_weights(pool, demo_schema, np.zeros(len(pool), dtype=int),
                              RakingTargets.of(np.ones(1), [measured]), count=300)

    def dead_by_kappa(frame: pd.DataFrame, w: np.ndarray | None = None) -> pd.Series:
        w = np.ones(len(frame)) if w is None else w
        high = frame["kappa"] > rows["kappa"].median()
        dead = (frame[outcome] == "dead").to_numpy()
        return pd.Series([np.sum(w * dead * high) / np.sum(w * high), np.sum(w * dead * ~high) / np.sum(w * ~high)])

    real, raked, shuffled = dead_by_kappa(rows), dead_by_kappa(pool, weights), dead_by_kappa(pool)
    assert abs(shuffled[0] - shuffled[1]) < 0.03 < 0.5 * abs(real[0] - real[1])  # the pool lost it
    assert abs((raked[0] - raked[1]) - (real[0] - real[1])) < 0.3 * abs(real[0] - real[1])



def _sex_and_mgus(demo_frame: pd.DataFrame, men: float, seed: int) -> pd.DataFrame:
    """2000 rows with ``men`` of them men, and mgus 'yes' for 90 % of men and 10 % of women."""
    rng = np.random.default_rng(seed)
    rows = demo_frame.sample(2000, random_state=seed).reset_index(drop=True)
    male = rng.random(len(rows)) < men
    agree = rng.random(len(rows)) < 0.9
    return rows.assign(sex=np.where(male, "M", "F"), mgus=np.where(male == agree, "yes", "no"))


def test_a_slot_takes_how_two_columns_go_together_from_the_federation_and_keeps_its_own_mix(demo_frame,
                                                                                           demo_schema):
    """Site A (30 % men) measured sex × mgus; site B (80 % men) did not (its second release
    failed). After pooling, B's pool rows, in which mgus tells nothing of sex, are raked to A's
    association fitted to B's own share of men: the relation comes from the federation, how many
    men there are stays B's."""
    pair = ("sex", "mgus")
    first, second = _sex_and_mgus(demo_frame, 0.3, 1), _sex_and_mgus(demo_frame, 0.8, 2)
    measured = Marginals({**exact_counts(first, demo_schema).tables,
                          pair_key(pair): exact_pair_table(first, demo_schema, pair, {})})
    pooled = pooled_pair_tables(demo_schema, [measured, exact_counts(second, demo_schema)])
    assert [list(tables.pairs) for tables in pooled] == [[pair], [pair]]
    np.testing.assert_allclose(pooled[0].pair_distribution(pair), measured.pair_distribution(pair), atol=2e-3)
    pool = second.assign(mgus=second["mgus"].sample(frac=1.0, random_state=3).to_numpy())
    pool = pd.concat([pool, pool], ignore_index=True)
    slots = np.repeat([0, 1], len(second))
    weights = release_weights(pool, demo_schema, slots, RakingTargets.of(np.array([0.5, 0.5]), pooled), count=300)
    raked, w = pool[slots == 1], weights[slots == 1] / weights[slots == 1].sum()
    men, yes = (raked["sex"] == "M").to_numpy(), (raked["mgus"] == "yes").to_numpy()
    gap = np.sum(w * yes * men) / np.sum(w * men) - np.sum(w * yes * ~men) / np.sum(w * ~men)
    assert gap > 0.6  # real: .8; the pool's: about 0
    assert abs(np.sum(w * men) - 0.8) < 0.03  # B's own share of men, not A's .3


def test_noisy_site_tables_are_pooled_and_one_site_does_not_dictate_a_relation(demo_frame, demo_schema):
    """Three sites measured sex × mgus (men say yes, women no, in 90 % of rows) with noise that
    drowns each site's own table; pooled, every site's table shows the relation. A site claiming
    a million times the rows for a reversed table weighs no more than the others together."""
    pair = ("sex", "mgus")
    rng = np.random.default_rng(4)
    sites = [_sex_and_mgus(demo_frame, 0.5, seed).head(150) for seed in (1, 2, 3, 5)]
    noisy = [Marginals({**exact_counts(rows, demo_schema).tables,
                        pair_key(pair): exact_pair_table(rows, demo_schema, pair, {}) + rng.normal(0, 40, (2, 2))})
             for rows in sites]
    agreement = [np.trace(tables.pair_distribution(pair)) for tables in pooled_pair_tables(demo_schema, noisy)]
    assert min(agreement) > 0.7  # each site alone: noise std 40 on cells of about 37 rows
    honest = Marginals({**exact_counts(sites[1], demo_schema).tables,
                        pair_key(pair): exact_pair_table(sites[1], demo_schema, pair, {})})
    reversed_ = sites[2].assign(mgus=np.where(sites[2]["mgus"] == "yes", "no", "yes"))
    loud = Marginals({name: table * 1e6 for name, table in exact_counts(reversed_, demo_schema).tables.items()}
                     | {pair_key(pair): exact_pair_table(reversed_, demo_schema, pair, {}) * 1e6})
    table = pooled_pair_tables(demo_schema, [exact_counts(sites[0], demo_schema), honest, loud])[0].pairs[pair]
    assert abs(table[1, 1] / table[1].sum() - 0.5) < 0.1  # the two relations, equal parts: none
    # the same with only its pair table inflated, its outcome tables (its noisy total) honest (sixth review)
    loud_pair = Marginals({**exact_counts(reversed_, demo_schema).tables,
                           pair_key(pair): exact_pair_table(reversed_, demo_schema, pair, {}) * 1e6})
    table = pooled_pair_tables(demo_schema, [exact_counts(sites[0], demo_schema), honest, loud_pair])[0].pairs[pair]
    assert table[1, 1] / table[1].sum() > 0.4  # not its reversed relation (.1): at most an equal part


def test_a_joint_fitted_to_other_margins_keeps_its_odds_ratio_and_fills_an_empty_row():
    joint = np.array([[0.4, 0.1], [0.1, 0.4], [0.0, 0.0]])  # odds ratio 16; nobody in the third row
    first, second = np.array([0.2, 0.6, 0.2]), np.array([0.7, 0.3])
    fitted = fitted_to_margins(joint, first, second)
    assert np.allclose(fitted.sum(axis=1), first, atol=2e-3) and np.allclose(fitted.sum(axis=0), second, atol=2e-3)
    odds = fitted[0, 0] * fitted[1, 1] / (fitted[0, 1] * fitted[1, 0])
    assert 12 < odds < 17  # the blend with the margins' product costs a little of it
    assert np.all(fitted[2] > 0.01)  # the row nobody was in takes its margin's mass over both columns


def _one_way_generator(marginals: Marginals, schema, site_slots: int = 0) -> GANTrainer:
    """A generator trained on the matching term of one-way tables only: each column right,
    kappa and lambda only as related as the outcome makes them."""
    learnt = GANTrainer(TableEncoder(schema, marginals), replace(TINY, matching_weight=1.0, site_slots=site_slots),
                        rng=torch_generator(4, "raking-test"))
    learnt.fit_tables(150)
    return learnt


def test_a_federated_release_is_raked_and_a_saved_one_too(demo_frame, demo_schema, tmp_path):
    """The release path of a federation (slots set as the coordinator sets them, then saved and
    loaded as ``generator.pt``): its rows follow the sites' pair tables, and no pool row is
    released twice."""
    from fedsyn.model.checkpoint import load_checkpoint, save_checkpoint

    halves = [demo_frame.iloc[:1500], demo_frame.iloc[1500:3000]]
    plain = [exact_counts(half, demo_schema) for half in halves]
    measured = [_with_pair(half, demo_schema, tables) for half, tables in zip(halves, plain)]
    bounds = measured[0][1]
    trainer = _one_way_generator(plain[0] + plain[1], demo_schema, site_slots=2)
    target = _pair_distribution(pd.concat(halves), demo_schema, bounds)

    def distance(release: GANTrainer) -> float:
        frame = release.sample_frame(4000, rng=torch_generator(9, "raking-test"))[0]
        assert not frame.duplicated().any()
        return 0.5 * float(np.abs(_pair_distribution(frame, demo_schema, bounds) - target).sum())

    trainer.set_release_slots([1500, 1500], plain)
    before = distance(trainer)
    trainer.set_release_slots([1500, 1500], [m for m, _ in measured])
    assert distance(trainer) < 0.1 < 0.35 * before  # measured: .09 against .32
    save_checkpoint(tmp_path / "generator.pt", demo_schema, trainer, privacy={})
    assert distance(load_checkpoint(tmp_path / "generator.pt").trainer) < 0.1


def test_a_model_file_with_a_malformed_pair_table_is_refused(demo_frame, demo_schema, tmp_path):
    """A generator.pt whose slot tables were changed (a pair table of the wrong shape, a NaN) is
    refused with a plain message instead of misreading the release's cells."""
    import pytest
    import torch

    from fedsyn.errors import ConfigurationError
    from fedsyn.model.checkpoint import load_checkpoint, save_checkpoint

    rows = demo_frame.iloc[:1500]
    measured, _ = _with_pair(rows, demo_schema)
    trainer = GANTrainer(TableEncoder(demo_schema, exact_counts(rows, demo_schema)), replace(TINY, site_slots=1),
                         rng=torch_generator(1, "raking-test"))
    trainer.set_release_slots([1500], [measured])
    path = tmp_path / "generator.pt"
    save_checkpoint(path, demo_schema, trainer, privacy={})
    raw = torch.load(path, weights_only=True)
    for change in ("shape", "nan"):
        crafted = {**raw, "site_slots": {**raw["site_slots"], "marginals": [dict(raw["site_slots"]["marginals"][0])]}}
        tables = crafted["site_slots"]["marginals"][0]
        key = pair_key(PAIR)
        tables[key] = [[1.0] * 7] * 7 if change == "shape" else [[float("nan")] + row[1:] for row in tables[key]]
        torch.save(crafted, tmp_path / f"{change}.pt")
        with pytest.raises(ConfigurationError, match="malformed noisy tables"):
            load_checkpoint(tmp_path / f"{change}.pt")
    # Finite but beyond what a distribution can be read from: refused as plainly, not an IndexError.
    crafted = {**raw, "site_slots": {**raw["site_slots"], "marginals": [dict(raw["site_slots"]["marginals"][0])]}}
    tables = crafted["site_slots"]["marginals"][0]
    tables["age"] = [[(1e308 if index % 2 else -1e308) for _ in row] for index, row in enumerate(tables["age"])]
    torch.save(crafted, tmp_path / "huge.pt")
    with pytest.raises(ConfigurationError, match="malformed"):
        load_checkpoint(tmp_path / "huge.pt")
    # Finite, all positive and beyond any table (a review: the class sums overflowed into NaN weights).
    tables["age"] = [[1.7e308 for _ in row] for row in tables["age"]]
    torch.save(crafted, tmp_path / "overflow.pt")
    with pytest.raises(ConfigurationError, match="malformed noisy tables"):
        load_checkpoint(tmp_path / "overflow.pt")
    # The sites' totals too: NaN slot weights failed in torch's sampler, not here.
    for totals in ([float("nan")], [1e300]):
        torch.save({**raw, "site_slots": {**raw["site_slots"], "totals": totals}}, tmp_path / "totals.pt")
        with pytest.raises(ConfigurationError, match="malformed site tables"):
            load_checkpoint(tmp_path / "totals.pt")


def test_what_the_cap_takes_back_stays_in_the_slots_outcome_class(demo_frame, demo_schema):
    """Two sites far from the pool (young women, old men), a pool 3.3 times the release: raking
    sends 13 % of the rows to the cap, and what the cap takes back goes to the slot's rows of the
    same outcome class, so each slot keeps its share and its own death rate. Spread over the
    slot's rows, it moved a newcomer's death rate from 12 % to 14 %."""
    young_women = demo_frame[(demo_frame["sex"] == "F") & (demo_frame["age"] < 60)]
    old_men = demo_frame[(demo_frame["sex"] == "M") & (demo_frame["age"] >= 75)]
    own = [exact_counts(rows, demo_schema) for rows in (young_women, old_men)]
    pool = demo_frame.sample(4000, random_state=7).reset_index(drop=True)
    slots = np.arange(len(pool)) % 2
    weights = release_weights(pool, demo_schema, slots, RakingTargets.of(np.array([0.5, 0.5]), own), count=1200)

    dead = (pool[demo_schema.outcome] == "dead").to_numpy()
    for slot, rows in enumerate((young_women, old_men)):
        share = weights[(slots == slot) & dead].sum() / weights[slots == slot].sum()
        # measured when spread over the slot: old men .43 against .78
        assert share == pytest.approx((rows[demo_schema.outcome] == "dead").mean(), abs=0.005)
        assert weights[slots == slot].sum() == pytest.approx(0.5)


def test_a_slot_whose_pool_lacks_a_class_keeps_its_share_and_no_row_is_released_twice(demo_frame, demo_schema):
    """Slot 0's pool holds no dead patients although its tables count some: their share goes to the
    slot's other rows instead of being dropped. Dropped, the final normalisation lifted rows above
    one released row's weight (a row released twice) and moved the slot shares to .42 / .58."""
    own = [exact_counts(demo_frame.iloc[:2000], demo_schema), exact_counts(demo_frame.iloc[2000:4000], demo_schema)]
    alive = demo_frame[demo_frame[demo_schema.outcome] == "alive"].head(1000)
    pool = pd.concat([alive, demo_frame.iloc[4000:5000]], ignore_index=True)
    slots = np.repeat([0, 1], 1000)
    count = 300
    weights = release_weights(pool, demo_schema, slots, RakingTargets.of(np.array([0.5, 0.5]), own), count=count)

    assert weights.max() * count <= 1.0
    assert len(np.unique(systematic_picks(weights, count, 0.5))) == count
    assert weights[slots == 0].sum() == pytest.approx(0.5) and weights[slots == 1].sum() == pytest.approx(0.5)


def test_a_release_holds_the_tables_share_at_a_bound_and_of_missing_values(demo_frame, demo_schema):
    """The generator under-draws point masses: a newcomer's CRP sat at its assay's limit in 7 %
    of real rows and 1 % of released ones, glucose was missing in 5 % and 0.1 %. A pool with few
    kappa values at the lower bound and few missing creatinine values (neither in a pair table)
    is raked to the site's tables of both, class by class."""
    site, pool, weights = _raked_at_bound(demo_frame, demo_schema, 4, site_share=0.3, pool_share=0.05,
                                          pool_missing=0.04)

    at_bound = (pool["kappa"] == demo_schema.column("kappa").lower).to_numpy()
    missing = pool["creatinine"].isna().to_numpy()
    assert weights[at_bound].sum() == pytest.approx(0.3, abs=0.03)  # 0.05 unraked
    assert weights[missing].sum() == pytest.approx(site["creatinine"].isna().mean(), abs=0.02)  # 0.04 unraked
    survivors = (pool[demo_schema.outcome] == "alive").to_numpy()
    real = site.loc[site[demo_schema.outcome] == "alive", "creatinine"].isna().mean()
    assert weights[missing & survivors].sum() / weights[survivors].sum() == pytest.approx(real, abs=0.02)  # by class


def test_a_release_holds_the_tables_share_at_an_integer_columns_lower_bound(demo_frame, demo_schema):
    """An integer column's lower bound has a bin of its own (0 hours in intensive care), so its
    share is a point mass the release is raked to, as an assay limit's is."""
    site, pool, weights = _raked_at_bound(demo_frame, demo_schema, 5, site_share=0.3, pool_share=0.05, column="age")
    lowest = demo_schema.column("age").lower
    assert weights[(pool["age"] == lowest).to_numpy()].sum() == pytest.approx((site["age"] == lowest).mean(), abs=0.03)


def test_a_point_mass_the_pool_cannot_hold_bends_no_other_table(demo_frame, demo_schema):
    """A review of the point-mass raking: a site with 32 % of kappa at its lower bound and a pool
    with 1 % there (the cap lets a row weigh 10 times its share: at most 10 %). Asked for 32 %,
    the raking piled weight on those rows within each sweep and the cap cut it after, and the
    other columns' class tables were left .16-.36 in total variation from the site's. The cell is
    asked what its rows can hold: they take their most, and every other table keeps its fit."""
    site, pool, weights = _raked_at_bound(demo_frame, demo_schema, 6, site_share=0.32, pool_share=0.01)

    at_bound = (pool["kappa"] == demo_schema.column("kappa").lower).to_numpy()
    assert weights[at_bound].sum() > 0.08  # as near 32 % as the pool allows (10 x its 1 %)
    outcome = demo_schema.outcome
    for name in ("sex", "flc_grp", "mgus"):
        for level in site[outcome].unique():
            real = site.loc[site[outcome] == level, name].value_counts(normalize=True)
            members = (pool[outcome] == level).to_numpy()
            raked = pd.Series(weights[members], index=pool.loc[members, name]).groupby(level=0).sum()
            gap = 0.5 * (raked / raked.sum()).sub(real, fill_value=0.0).abs().sum()
            assert gap < 0.03, (name, level, gap)


def test_a_small_slot_s_point_mass_is_asked_what_its_own_rows_can_hold(demo_frame, demo_schema):
    """Two slots of 2,000 pool rows, 70 % and 30 % of a release of 400: a row of the small slot
    may hold 1/400 of the release, 1/120 of its slot, so its 1 % of rows at kappa's bound can
    hold 17 % of it (a review: with the cap taken as a share of the whole release, 5 %)."""
    rows = demo_frame.sample(2000, random_state=7).reset_index(drop=True)
    rng = np.random.default_rng(7)
    site, pool = rows.copy(), rows.copy()
    site.loc[rng.random(len(site)) < 0.32, "kappa"] = demo_schema.column("kappa").lower
    pool.loc[rng.random(len(pool)) < 0.01, "kappa"] = demo_schema.column("kappa").lower
    both = pd.concat([pool, pool], ignore_index=True)
    slots = np.repeat([0, 1], len(pool))
    targets = RakingTargets.of(np.array([0.7, 0.3]), [exact_counts(rows, demo_schema), exact_counts(site, demo_schema)])
    weights = release_weights(both, demo_schema, slots, targets, count=400)
    at_bound = (both["kappa"] == demo_schema.column("kappa").lower).to_numpy()
    assert weights[at_bound & (slots == 1)].sum() / weights[slots == 1].sum() > 0.12


def test_a_class_a_point_mass_cannot_hold_goes_to_its_other_cells():
    """A class the table puts wholly in one cell its pool rows cannot fill (every death's
    creatinine missing; the pool 4 %): what they cannot hold goes to the class's other cells by
    their room, not lost (a review: the raking then fought the class shares and bent the other
    tables by .21 TV)."""
    from fedsyn.model.raking import _within_reach

    target = np.array([[0.0, 0.6], [0.0, 0.1], [0.3, 0.0]])  # groups x classes: class 0 all missing (last group)
    reach = np.array([[1.0, 1.0], [0.05, 1.0], [0.1, 1.0]])
    fitted = _within_reach(target, reach)
    np.testing.assert_allclose(fitted.sum(axis=0), target.sum(axis=0))  # each class keeps its share
    assert (fitted <= reach + 1e-12).all() and fitted[2, 0] == pytest.approx(0.1)


def _raked_at_bound(frame: pd.DataFrame, schema, seed: int, site_share: float, pool_share: float,
                    pool_missing: float | None = None, column: str = "kappa"
                    ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """One site whose ``column`` sits at its lower bound in ``site_share`` of its 2,000 rows, a
    pool of the same rows with ``pool_share`` there (and, given ``pool_missing``, creatinine
    missing in that share of its rows instead of the site's), and the pool's release weights for
    200 rows raked to the site's exact tables."""
    rows = frame.sample(2000, random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    site, pool = rows.copy(), rows.copy()
    site.loc[rng.random(len(site)) < site_share, column] = schema.column(column).lower
    pool.loc[rng.random(len(pool)) < pool_share, column] = schema.column(column).lower
    if pool_missing is not None:
        pool["creatinine"] = pool["creatinine"].fillna(1.0)
        pool.loc[rng.random(len(pool)) < pool_missing, "creatinine"] = np.nan
    targets = RakingTargets.of(np.ones(1), [exact_counts(site, schema)])
    return site, pool, release_weights(pool, schema, np.zeros(len(pool), dtype=int), targets, count=200)


def _inventing(trainer: GANTrainer, source: str, copy: str) -> GANTrainer:
    """``trainer`` with its sampling copy rewired to output ``copy`` as it outputs ``source``: a
    generator that invents a perfect relation between two numeric columns."""
    spans = {span.column: span for span in trainer.encoder.spans if span.activation == "tanh"}
    head = trainer.sampler.head
    with torch.no_grad():
        head.weight[spans[copy].start] = head.weight[spans[source].start]
        head.bias[spans[copy].start] = head.bias[spans[source].start]
    return trainer


def test_a_release_invents_no_relation_between_numbers_the_sites_did_not_measure(demo_frame, demo_schema):
    """The production path (``sample_frame``) of a generator that outputs creatinine as it
    outputs age: rows it draws for one condition (never raked) carry the invented relation, the
    release (raked) none beyond what the outcome makes."""
    rows = demo_frame.sample(3000, random_state=2)
    tables = exact_counts(rows, demo_schema)
    trainer = GANTrainer(TableEncoder(demo_schema, tables), TINY, rng=torch_generator(6, "raking-test"))
    trainer.sampler.load_state_dict(_one_way_generator(tables, demo_schema).sampler.state_dict())
    _inventing(trainer, "age", "creatinine")
    outcome = demo_schema.outcome
    drawn = trainer.sample_frame(4000, condition={outcome: "alive"})[0]
    released = trainer.sample_frame(4000)[0]
    assert drawn["age"].corr(drawn["creatinine"], method="spearman") > 0.9
    for _, rows_of_class in released.groupby(outcome):  # both depend on the outcome: not across classes
        assert abs(rows_of_class["age"].corr(rows_of_class["creatinine"], method="spearman")) < 0.08
    as_generated = GANTrainer(TableEncoder(demo_schema, tables), replace(TINY, numbers_as_measured=False),
                              rng=torch_generator(6, "raking-test"))
    as_generated.sampler.load_state_dict(trainer.sampler.state_dict())
    kept = as_generated.sample_frame(4000)[0]  # what the generator drew, raked: the invention stays
    assert all(rows_of_class["age"].corr(rows_of_class["creatinine"], method="spearman") > 0.5
               for _, rows_of_class in kept.groupby(outcome))


def test_numbers_a_rule_ties_move_together_and_keep_the_rule(demo_schema):
    """A pool's numbers tied by a rule (b at most a) move as one block, a number a rule ties to a
    category moves only among rows of that category, and each stratum keeps its values."""
    schema = demo_schema.model_copy(update={"rules": [
        Rule(name="creatinine at most kappa", require=Condition(column="creatinine", at_most_column="kappa")),
        *demo_schema.rules]})
    rng = np.random.default_rng(0)
    size = 4000
    kappa = rng.uniform(0.1, 5.0, size)
    frame = pd.DataFrame({"age": rng.integers(50, 90, size), "kappa": kappa,
                          "creatinine": kappa * rng.uniform(0, 1, size), "lambda": rng.uniform(0.1, 5.0, size),
                          "flc_grp": rng.choice(list("123"), size), "death": rng.choice(["alive", "dead"], size)})
    frame.loc[frame["flc_grp"] == "1", "lambda"] = 1.0
    strata = rng.integers(0, 3, size)
    moved, orders = numbers_as_measured(frame, schema, strata, [], {}, rng)
    assert set(orders) == {"age", "kappa", "creatinine", "lambda"}
    assert np.array_equal(orders["kappa"], orders["creatinine"])
    assert not np.array_equal(orders["kappa"], orders["age"])
    assert moved.equals(frame.assign(**{name: frame[name].to_numpy()[order] for name, order in orders.items()}))
    assert (moved["creatinine"] <= moved["kappa"]).all()
    assert (moved.loc[moved["flc_grp"] == "1", "lambda"] == 1.0).all()
    for name, order in orders.items():
        assert np.array_equal(strata[order], strata)
        assert sorted(moved[name]) == sorted(frame[name])


def test_the_pool_moves_as_its_decoded_rows_and_every_table_the_raking_reads_stays(demo_frame, demo_schema):
    """helper-111 M1 and M4: with a measured pair of numbers (age × creatinine, creatinine
    nullable) and a rule that empties creatinine for men, the moved pool decodes (missing cells
    imposed) to the moved rows exactly, and every margin the raking reads of each slot holds the
    same counts as before the move."""
    schema = demo_schema.model_copy(update={"rules": [
        *demo_schema.rules,
        Rule(name="no creatinine for men", when=Condition(column="sex", equals="M"),
             require=Condition(column="creatinine", is_missing=True))]})
    rows = demo_frame.sample(3000, random_state=5)
    tables = exact_counts(rows, schema)
    pair = ("age", "creatinine")
    bounds = {name: group_bounds(schema.column(name), tables) for name in pair}
    measured = Marginals({**tables.tables, pair_key(pair): exact_pair_table(rows, schema, pair, bounds),
                          **{f"pairbins:{name}": value for name, value in bounds.items()}})
    trainer = GANTrainer(TableEncoder(schema, measured), replace(TINY, site_slots=2),
                         rng=torch_generator(8, "raking-test"))
    trainer.set_release_slots([1500.0, 1500.0], [measured, measured])
    targets = trainer._raking_targets()
    pool, slots = trainer._draw(6000, None, torch_generator(9, "raking-test"))
    frame = impose_missing_by_design(trainer.encoder.decode(pool.cpu().numpy()), schema.rules)  # as drawn
    in_slot = slots.cpu().numpy()

    def counts(rows: pd.DataFrame) -> list[np.ndarray]:
        classes = outcome_classes(rows, schema)
        return [np.bincount(margin.cells, minlength=len(margin.target))
                for slot in range(2) for margin in slot_margins(rows, np.flatnonzero(in_slot == slot),
                                                                classes[in_slot == slot], schema, measured)]

    before = counts(frame)
    moved = trainer._raked_pool(pool, in_slot, targets, torch_generator(10, "raking-test"))
    assert not moved["age"].equals(frame["age"])  # it did move
    assert all(np.array_equal(a, b) for a, b in zip(before, counts(moved)))
    decoded = impose_missing_by_design(trainer.encoder.decode(pool.cpu().numpy()), schema.rules)
    pd.testing.assert_frame_equal(decoded, moved, check_dtype=False)
