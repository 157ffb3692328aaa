"""Pair tables (fedsyn.privacy.pairs): what round 0 measures beside the outcome tables, through
the site's own path, and what the split of the one round-0 event costs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp

from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site, SiteRefusal
from fedsyn.data.demo import demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.federation import protocol
from fedsyn.privacy import pairs as pairs_module
from fedsyn.privacy.accounting import PrivacyLedger
from fedsyn.privacy.marginals import Marginals, exact_counts, marginals_sensitivity, measured_columns
from fedsyn.privacy.pairs import (
    Forest,
    OutcomeModel,
    RoundZeroSplit,
    check_pair_array,
    exact_pair_table,
    group_bounds,
    misfit_score,
    pair_count,
    pair_key,
    pick_pair,
)
from fedsyn.simulations.run import prepare_sites

ORDERS = [1.5, 2.0, 4.0, 8.0, 32.0, 256.0]


def _site(tmp_path, frame, accountant: str = "rdp") -> Site:
    plan = prepare_sites([frame], demo_schema_path(), tmp_path / "sites", epsilon=500.0, delta=1e-5, seed=None)
    policy = SitePolicy.load(plan.policies[0])
    if accountant != "rdp":  # a site that chose the PRV accountant before its first charge
        policy = policy.model_copy(update={"accountant": accountant})
        policy.ledger.unlink()
        PrivacyLedger.create(policy.ledger, policy.delta, policy.accountant, protects=str(policy.data.resolve()))
    return Site(policy)


@pytest.mark.parametrize("share", [0.1, 0.4, 0.8])
@pytest.mark.parametrize("count", [1, 3, 7])
def test_the_parts_of_round_zero_cost_exactly_one_gaussian(share, count):
    """Outcome tables + ``count`` exponential-mechanism picks + pair tables = the one Gaussian
    event the ledger charges, at every Renyi order."""
    z = 3.0
    split = RoundZeroSplit(z, share)
    whole = np.asarray(compute_rdp(q=1.0, noise_multiplier=z, steps=1, orders=ORDERS))
    parts = (np.asarray(compute_rdp(q=1.0, noise_multiplier=split.tables, steps=1, orders=ORDERS))
             + np.asarray(compute_rdp(q=1.0, noise_multiplier=split.pair_tables, steps=1, orders=ORDERS))
             + count * np.asarray(ORDERS) * split.epsilon_each(count) ** 2 / 8)
    assert parts == pytest.approx(whole, rel=1e-9)


def test_round_zero_through_the_site_draws_each_part_at_its_noise(tmp_path, small_frame, monkeypatch):
    """Through Site.release_marginals: the outcome tables' noise std, the pair tables' (sqrt of
    the number of pairs times the split's multiplier), and the picks' epsilon."""
    picks = []
    real_pick = pairs_module.pick_pair

    def spy(scores, epsilon, rng):
        picks.append(epsilon)
        return real_pick(scores, epsilon, rng)

    monkeypatch.setattr(pairs_module, "pick_pair", spy)
    sigma, share = 2.0, 0.4
    site = _site(tmp_path, small_frame)
    released, _ = site.release_marginals(sigma, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=share)
    split = RoundZeroSplit(sigma, share)
    exact = exact_counts(small_frame, site.schema)
    measured = [c.name for c in measured_columns(site.schema)]
    tables = np.concatenate([(released.tables[c] - exact.tables[c]).ravel() for c in measured])
    assert tables.std() == pytest.approx(split.tables * marginals_sensitivity(site.schema), rel=0.12)

    assert len(released.pairs) >= 3 and picks == [split.epsilon_each(len(released.pairs))] * len(released.pairs)
    # pooled over ten releases (about 2,000 noisy cells): a noise 13 % short of the split's is caught
    standardised = []
    for _ in range(10):
        released, _ = site.release_marginals(sigma, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=share)
        std = split.pair_tables * math.sqrt(len(released.pairs))
        standardised += [(table - exact_pair_table(small_frame, site.schema, pair, released.pair_bounds)).ravel() / std
                         for pair, table in released.pairs.items()]
    assert np.concatenate(standardised).std() == pytest.approx(1.0, rel=0.05)


def test_what_round_zero_adds_besides_the_tables_follows_from_the_released_tables_alone(tmp_path, small_frame,
                                                                                        monkeypatch):
    """The pair groups' bounds and the number of pairs are post-processing of the noisy outcome
    tables the site releases (never of its exact counts), through the site's own path."""
    totals = []
    real_count = pairs_module.pair_count
    monkeypatch.setattr(pairs_module, "pair_count",
                        lambda total, *rest: totals.append(total) or real_count(total, *rest))
    site = _site(tmp_path, small_frame)
    measured = measured_columns(site.schema)
    sigma, share = 4.0, 0.4
    for _ in range(3):
        released, _ = site.release_marginals(sigma, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=share)
        public = Marginals(dict(released.tables))  # what a reader holds, pairs stripped
        assert totals.pop() == public.total() != len(small_frame)
        assert len(released.pairs) == pair_count(public.total(), RoundZeroSplit(sigma, share).pair_tables,
                                                 len(measured))
        for name, bounds in released.pair_bounds.items():
            np.testing.assert_array_equal(bounds, group_bounds(site.schema.column(name), public))


def test_a_pairs_share_too_small_to_pay_for_its_picks_is_refused_before_any_charge(tmp_path, small_frame):
    site = _site(tmp_path, small_frame)
    with pytest.raises(SiteRefusal):
        site.release_marginals(2.0, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=5e-324)
    assert site.ledger.events == []
    with pytest.raises(protocol.ReplyError):
        protocol.MarginalsQuery(2.0, 1.0, "f" * 64, pairs_share=1e-9)


def test_a_column_name_that_would_make_two_pairs_one_key_is_refused():
    with pytest.raises(ValueError, match="reserved"):
        Schema.model_validate({"name": "t", "columns": [{"name": "a|b", "kind": "categorical", "categories": ["x"]}]})


def test_a_prv_ledger_measures_no_pairs(tmp_path, small_frame):
    """The picks are bounded in Renyi DP only: a site on the PRV accountant spends the whole
    release on its outcome tables, whatever the coordinator asks."""
    site = _site(tmp_path, small_frame, accountant="prv")
    released, _ = site.release_marginals(2.0, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=0.4)
    assert released.pairs == {} and released.pair_bounds == {}


def test_the_picks_score_pairs_against_released_outputs_only(tmp_path, small_frame, monkeypatch):
    """The model each pick is scored against is built from the site's released outcome tables and
    learns from its released (noisy) pair tables, never from exact counts: only then does one
    record move a score by at most SCORE_SENSITIVITY."""
    seen: dict[str, list] = {"tables": [], "learned": []}
    real_init, real_learn = OutcomeModel.__init__, OutcomeModel.learn

    def init(self, columns, tables, bounds):
        seen["tables"].append(tables)
        real_init(self, columns, tables, bounds)

    def learn(self, pair, noisy):
        seen["learned"].append((pair, noisy.copy()))
        real_learn(self, pair, noisy)

    monkeypatch.setattr(OutcomeModel, "__init__", init)
    monkeypatch.setattr(OutcomeModel, "learn", learn)
    site = _site(tmp_path, small_frame)
    released, _ = site.release_marginals(2.0, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=0.4)
    (tables,) = seen["tables"]
    for name, table in released.tables.items():
        np.testing.assert_array_equal(tables.tables[name], table)
    assert [pair for pair, _ in seen["learned"]] == list(released.pairs)
    for pair, noisy in seen["learned"]:
        np.testing.assert_array_equal(noisy, released.pairs[pair])


def test_one_record_moves_a_misfit_score_by_at_most_its_sensitivity():
    """Against a fixed expected table a record moves the distance by one and the larger margin
    distance by at most one: the score by at most 2, reached when the record's cell is above
    its expectation and both its margins below theirs."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        table = rng.integers(0, rng.integers(1, 30), size=tuple(rng.integers(2, 6, size=2))).astype(float)
        expected = rng.uniform(0, 30, size=table.shape)
        cell = tuple(rng.integers(0, s) for s in table.shape)
        moved = table.copy()
        moved[cell] += 1
        assert abs(misfit_score(moved, expected, 1.0) - misfit_score(table, expected, 1.0)) \
            <= pairs_module.SCORE_SENSITIVITY + 1e-9
    table, expected = np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 5.0], [5.0, 0.0]])
    moved = misfit_score(table + [[1, 0], [0, 0]], expected, 1.0) - misfit_score(table, expected, 1.0)
    assert moved == pytest.approx(pairs_module.SCORE_SENSITIVITY)


def test_a_misfit_in_one_margin_alone_scores_nothing():
    """A pair whose table is the expected one with one column's counts moved scores no more than
    its noise: what it would add is that one-way correction, which the outcome tables give."""
    expected = np.outer([30.0, 50, 20], [60.0, 40]) / 100
    shifted = np.outer([50.0, 30, 20], [60.0, 40]) / 100
    assert misfit_score(shifted, expected, 0.0) == pytest.approx(0.0)
    dependent = np.array([[30.0, 0], [0, 50], [20, 0]])
    assert misfit_score(dependent, expected, 0.0) > 50


def test_the_model_learns_a_measured_margin_and_predicts_independence_within_a_class(demo_schema, small_frame):
    exact = exact_counts(small_frame, demo_schema)
    bounds = {c.name: group_bounds(c, exact) for c in demo_schema.columns if not c.is_categorical}
    model = OutcomeModel(measured_columns(demo_schema), exact, bounds)
    table = exact_pair_table(small_frame, demo_schema, ("age", "sex"), bounds)
    assert model.expected(("age", "sex")).sum() == pytest.approx(len(small_frame))
    np.testing.assert_allclose(model.expected(("age", "sex")).sum(axis=1), table.sum(axis=1), atol=1e-6)
    shifted = table[::-1].copy()  # age groups' counts reversed
    model.learn(("age", "sex"), shifted)
    np.testing.assert_allclose(model.expected(("age", "sex")).sum(axis=1), shifted.sum(axis=1), rtol=1e-6)


def test_the_picks_are_random_as_the_exponential_mechanism_draws_them():
    """With a small epsilon a weaker pair is picked about as often as the exponential mechanism
    says (exp(eps * gap / (2 * 2)) to 1): neither never nor always."""
    scores = {("a", "b"): 4.0, ("c", "d"): 0.0}
    rng = np.random.default_rng(1)
    first = [pick_pair(scores, 1.0, rng) for _ in range(4000)]
    share = first.count(("a", "b")) / len(first)
    assert share == pytest.approx(math.e / (1 + math.e), abs=0.03)


def test_a_pick_joins_two_trees_of_the_forest():
    forest = Forest()
    forest.join(("a", "b"))
    forest.join(("b", "c"))
    assert not forest.joins(("a", "c")) and forest.joins(("c", "d"))


def test_pair_arrays_are_checked_against_the_schema(demo_schema):
    good = Marginals.uniform(demo_schema)
    assert good.pairs == {}
    check_pair_array(demo_schema, pair_key(("sex", "mgus")), np.ones((2, 2)))
    check_pair_array(demo_schema, "pairbins:age", np.array([0.0, 4, 9, 15, 24, 55]))
    for key, value in [(pair_key(("sex", "death")), np.ones((2, 2))),  # the outcome has its own tables
                       (pair_key(("sex", "mgus")), np.ones((3, 2))),
                       (pair_key(("mgus", "sex")), np.ones((2, 2))),  # one pair, one key: schema order
                       (pair_key(("sex", "sex")), np.ones((2, 2))),
                       (pair_key(("sex", "nope")), np.ones((2, 2))),
                       ("pairbins:sex", np.array([0.0, 1])),
                       ("pairbins:age", np.array([0.0, 9, 4, 15, 24, 55])),
                       ("pairbins:age", np.array([0.0, 4, 9, 15, 24, 500])),
                       ("surprise", np.ones(3))]:
        with pytest.raises(ValueError):
            check_pair_array(demo_schema, key, value)


def test_pair_tables_travel_with_their_site_and_not_in_a_sum(demo_schema, small_frame):
    bounds = {"age": np.array([0.0, 4, 9, 15, 24, 55])}
    table = exact_pair_table(small_frame, demo_schema, ("age", "sex"), bounds)
    site = Marginals({**exact_counts(small_frame, demo_schema).tables, pair_key(("age", "sex")): table,
                      "pairbins:age": bounds["age"]})
    assert table.sum() == len(small_frame) and site.pairs[("age", "sex")] is not None
    assert Marginals(dict(site.arrays)).pairs.keys() == site.pairs.keys()
    assert (site + site).pairs == {}
    assert site.pair_distribution(("age", "sex")).sum() == pytest.approx(1.0)
