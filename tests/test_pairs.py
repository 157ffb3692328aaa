"""Pair tables (fedsyn.privacy.pairs): what round 0 measures beside the outcome tables, through
the site's own path (its votes, then the tables the sites chose together), and what the split
of round 0 costs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp

from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site, SiteRefusal
from fedsyn.data.demo import demo_schema_path
from fedsyn.data.grid import numeric_bins
from fedsyn.data.schema import Schema
from fedsyn.federation import protocol
from fedsyn.privacy import pairs as pairs_module
from fedsyn.privacy.accounting import PrivacyLedger
from fedsyn.privacy.marginals import (
    Marginals,
    exact_counts,
    marginals_sensitivity,
    measured_columns,
    noisy_marginals,
)
from fedsyn.privacy.pairs import (
    Forest,
    OutcomeModel,
    RoundZeroSplit,
    affordable_pairs,
    check_pair_array,
    exact_pair_table,
    group_bounds,
    misfit_score,
    pair_key,
    pick_pair,
    shared_pairs,
    vote_count,
)
from fedsyn.simulations.run import prepare_sites

ORDERS = [1.5, 2.0, 4.0, 8.0, 32.0, 256.0]


def _site(tmp_path, frame, accountant: str = "rdp", seed: int | None = None) -> Site:
    """A site on ``frame``; ``seed`` fixes its streams (a statistical test that must not flake)."""
    plan = prepare_sites([frame], demo_schema_path(), tmp_path / "sites", epsilon=500.0, delta=1e-5, seed=seed,
                         stream_nonce=None if seed is None else "5eed" * 8)
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
    first = (np.asarray(compute_rdp(q=1.0, noise_multiplier=split.tables, steps=1, orders=ORDERS))
             + count * np.asarray(ORDERS) * split.epsilon_each(count) ** 2 / 8)
    assert np.asarray(compute_rdp(q=1.0, noise_multiplier=split.first_release, steps=1, orders=ORDERS)) \
        == pytest.approx(first, rel=1e-9)  # a federation's first release: the tables and the votes


def _pair_tables_query(site: Site, pairs: list, multiplier: float, run_id: str = "",
                       **bounds) -> protocol.PairTablesQuery:
    return protocol.PairTablesQuery(multiplier, 500.0, protocol.schema_fingerprint(site.schema), tuple(pairs),
                                    {name: tuple(values) for name, values in bounds.items()}, run_id)


def test_round_zero_through_the_site_draws_each_part_at_its_noise(tmp_path, small_frame, monkeypatch):
    """Through Site.release_marginals and Site.release_pair_tables: the outcome tables' noise
    std, each vote's epsilon, each charge's multiplier, and the pair tables' noise (sqrt of the
    number of pairs times the multiplier asked). A vote weighs a pair's noise at the site's share of
    the federation's summed table (counts ``sites`` times, noise ``sqrt(sites)`` times a site's):
    scored at its own, every table of a numeric column was taken for noise, and azpro's admission
    type and length of stay was never chosen."""
    picks, score_stds = [], []
    real_pick, real_score = pairs_module.pick_pair, pairs_module.misfit_score

    def spy(scores, epsilon, rng):
        picks.append(epsilon)
        return real_pick(scores, epsilon, rng)

    def score_spy(exact, expected, noise_std):
        score_stds.append(noise_std)
        return real_score(exact, expected, noise_std)

    monkeypatch.setattr(pairs_module, "pick_pair", spy)
    monkeypatch.setattr(pairs_module, "misfit_score", score_spy)
    sigma, share = 2.0, 0.4
    site = _site(tmp_path, small_frame, seed=3)  # its draws fixed: unseeded, one run in many fell outside
    released, event = site.release_marginals(sigma, 500.0, protocol.schema_fingerprint(site.schema),
                                             pairs_share=share, sites=3)
    split = RoundZeroSplit(sigma, share)
    exact = exact_counts(small_frame, site.schema)
    measured = [c.name for c in measured_columns(site.schema)]
    tables = np.concatenate([(released.tables[c] - exact.tables[c]).ravel() for c in measured])
    assert tables.std() == pytest.approx(split.tables * marginals_sensitivity(site.schema), rel=0.12)
    assert event.noise_multiplier == pytest.approx(split.first_release) and released.pairs == {}
    assert len(released.votes) >= 3 and picks == [split.epsilon_each(len(released.votes))] * len(released.votes)
    assert score_stds == pytest.approx([split.pair_tables * math.sqrt(len(released.votes) / 3)] * len(score_stds))

    chosen = [("age", "sex"), ("sex", "mgus"), ("kappa", "lambda")]
    bounds = {name: group_bounds(site.schema.column(name), released) for name in ("age", "kappa", "lambda")}
    # pooled over forty releases (about 1,600 noisy cells, the std's error about 2 %): a noise 13 %
    # short of the one asked is caught
    standardised = []
    for _ in range(40):
        query = _pair_tables_query(site, chosen, split.pair_tables, **bounds)
        tables_sent, event = site.release_pair_tables(query)
        assert event.noise_multiplier == split.pair_tables and set(tables_sent) == {pair_key(p) for p in chosen}
        std = split.pair_tables * math.sqrt(len(chosen))
        standardised += [(tables_sent[pair_key(pair)] - exact_pair_table(small_frame, site.schema, pair, bounds)
                          ).ravel() / std for pair in chosen]
    assert np.concatenate(standardised).std() == pytest.approx(1.0, rel=0.07)


def test_what_round_zero_adds_besides_the_tables_follows_from_the_released_tables_alone(tmp_path, small_frame,
                                                                                        monkeypatch):
    """The number of votes, and for a site alone the pair groups' bounds and the number of
    pairs, are post-processing of the noisy outcome tables the site releases (never of its
    exact counts), through the site's own path."""
    totals = []
    real_count = pairs_module.affordable_pairs
    monkeypatch.setattr(pairs_module, "affordable_pairs",
                        lambda total, *rest: totals.append(total) or real_count(total, *rest))
    site = _site(tmp_path, small_frame)
    measured = measured_columns(site.schema)
    sigma, share = 4.0, 0.4
    split = RoundZeroSplit(sigma, share)
    for _ in range(3):
        released, _ = site.release_marginals(sigma, 500.0, protocol.schema_fingerprint(site.schema),
                                             pairs_share=share, sites=3)
        public = Marginals(dict(released.tables))  # what a reader holds, votes stripped
        assert totals.pop() == 3 * public.total() and public.total() != len(small_frame)
        assert len(released.votes) == vote_count(public.total(), split.pair_tables, len(measured), 3)
    alone = noisy_marginals(small_frame, site.schema, sigma, np.random.default_rng(), share)  # fedsyn fit
    public = Marginals(dict(alone.tables))
    assert totals.pop() == public.total()
    assert len(alone.pairs) == affordable_pairs(public.total(), [split.pair_tables], len(measured))
    for name, bounds in alone.pair_bounds.items():
        np.testing.assert_array_equal(bounds, group_bounds(site.schema.column(name), public))


def test_the_pair_tables_asked_are_checked_before_any_charge_and_answered_again_for_free(tmp_path, small_frame):
    """A coordinator names the pairs and the groups: the site refuses any that do not fit its
    schema before it reads a row, and answers the same request of the same run from its store."""
    site = _site(tmp_path, small_frame)
    bins = float(numeric_bins(site.schema.column("age")))  # the groups' last bound: the grid's bins
    good = {"age": (0.0, 4, 9, 15, 24, bins)}
    for pairs, bounds in [([("sex", "death")], {}),  # the outcome has its own tables
                          ([("mgus", "sex")], {}),  # not in schema order
                          ([("age", "sex")], {}),  # a numeric column without its groups
                          ([("age", "sex")], {"age": (0.0, 9, 4, 15, 24, bins)}),
                          ([("sex", "mgus")], {"sex": (0.0, 1)}),
                          (list(itertools.combinations(["sex", "mgus", "sample_yr", "flc_grp"], 2)), {})]:  # no tree
        with pytest.raises(SiteRefusal):
            site.release_pair_tables(_pair_tables_query(site, pairs, 2.0, **bounds))
    assert site.ledger.events == []
    query = _pair_tables_query(site, [("age", "sex")], 2.0, "run-1", **good)
    first, _ = site.release_pair_tables(query)
    again, _ = site.release_pair_tables(query)
    assert len(site.ledger.events) == 1 and np.array_equal(first[pair_key(("age", "sex"))],
                                                           again[pair_key(("age", "sex"))])


def test_a_site_on_the_prv_accountant_takes_part_without_votes(tmp_path, small_frame):
    """The votes are bounded in Renyi DP only: a PRV site sends none and charges the whole
    round-0 multiplier, which the coordinator accepts (it asks no pair tables of it); its slot
    still gets the pairs the others measured, pooled."""
    from fedsyn.client.app import make_client_app
    from fedsyn.server.coordinator import Coordinator
    from fedsyn.simulations.inprocess import InProcessGrid

    from .helpers import SETTINGS

    frames = [small_frame.iloc[i::3] for i in range(3)]
    plan = prepare_sites(frames, demo_schema_path(), tmp_path / "sites", epsilon=5.0, delta=1e-5, seed=None)
    prv = SitePolicy.load(plan.policies[0]).model_copy(update={"accountant": "prv"})
    prv.ledger.unlink()
    PrivacyLedger.create(prv.ledger, prv.delta, prv.accountant, protects=str(prv.data.resolve()))
    prv.save(plan.policies[0])
    coordinator = Coordinator(Schema.load(demo_schema_path()), SETTINGS.model_copy(update={"epsilon": 5.0}))
    coordinator.collect_marginals(InProcessGrid(make_client_app(plan.site_policy), 3))
    assert len(coordinator.run.site_marginals) == 3
    assert all(tables.pairs for tables in coordinator.run.site_marginals.values())
    assert len(PrivacyLedger.load(prv.ledger).events) == 1  # no votes, so no pair tables asked
    assert [len(PrivacyLedger.load(SitePolicy.load(p).ledger).events) for p in plan.policies[1:]] == [2, 2]


def test_the_federation_measures_what_most_sites_voted_for_as_many_as_its_noise_affords():
    votes = [[("a", "b"), ("c", "d")], [("c", "d"), ("a", "b"), ("e", "f")], [("e", "f")], [("g", "h")]]
    assert shared_pairs(votes, 2) == [("a", "b"), ("c", "d")]  # two votes each: ("a", "b") at mean rank .5
    assert shared_pairs(votes, 10)[2:] == [("e", "f"), ("g", "h")]
    # the sum of four sites' tables, each cell with noise std m sqrt(k): k tables while sqrt(4 k) m <= total / 40
    assert affordable_pairs(2000.0, [5.0] * 4, 30) == math.floor((2000 / 40) ** 2 / (4 * 25)) == 25
    assert affordable_pairs(10.0, [5.0] * 4, 30) == 1 and affordable_pairs(1e9, [5.0], 30) == 29
    assert vote_count(1000.0, 5.0, 30, 4) == affordable_pairs(4000.0, [5.0] * 4, 30)


def test_no_pair_of_the_site_column_is_measured():
    """The site column is one value at each site: its table with any column is what each site's
    outcome tables already say, summed. A federation with a site column spends no pair table on it."""
    votes = [[("site", "a"), ("a", "b")], [("site", "a"), ("c", "d")], [("site", "b"), ("a", "b")]]
    assert shared_pairs(votes, 2) == [("site", "a"), ("a", "b")]
    assert shared_pairs(votes, 2, "site") == [("a", "b"), ("c", "d")]


def test_a_pairs_share_too_small_to_pay_for_its_picks_is_refused_before_any_charge(tmp_path, small_frame):
    site = _site(tmp_path, small_frame)
    with pytest.raises(SiteRefusal):
        site.release_marginals(2.0, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=5e-324)
    for sites in (0, -1, 10**9):  # 0 would be a site alone's release (votes and tables), dearer than the charge
        with pytest.raises(SiteRefusal):
            site.release_marginals(2.0, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=0.4, sites=sites)
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
    released, event = site.release_marginals(2.0, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=0.4,
                                             sites=3)
    assert released.votes == {} and released.pairs == {} and event.noise_multiplier == 2.0


def test_the_picks_score_pairs_against_released_outputs_only(tmp_path, small_frame, monkeypatch):
    """The model each vote is scored against is built from the site's released outcome tables,
    never from exact counts: only then does one record move a score by at most SCORE_SENSITIVITY."""
    seen = []
    real_init = OutcomeModel.__init__

    def init(self, columns, tables, bounds):
        seen.append(tables)
        real_init(self, columns, tables, bounds)

    monkeypatch.setattr(OutcomeModel, "__init__", init)
    site = _site(tmp_path, small_frame)
    released, _ = site.release_marginals(2.0, 500.0, protocol.schema_fingerprint(site.schema), pairs_share=0.4,
                                         sites=3)
    (tables,) = seen
    for name, table in released.tables.items():
        np.testing.assert_array_equal(tables.tables[name], table)


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


def test_the_model_predicts_each_margin_and_independence_within_a_class(demo_schema, small_frame):
    exact = exact_counts(small_frame, demo_schema)
    bounds = {c.name: group_bounds(c, exact) for c in demo_schema.columns if not c.is_categorical}
    model = OutcomeModel(measured_columns(demo_schema), exact, bounds)
    table = exact_pair_table(small_frame, demo_schema, ("age", "sex"), bounds)
    assert model.expected(("age", "sex")).sum() == pytest.approx(len(small_frame))
    np.testing.assert_allclose(model.expected(("age", "sex")).sum(axis=1), table.sum(axis=1), atol=1e-6)


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
    bins = numeric_bins(demo_schema.column("age"))
    check_pair_array(demo_schema, "pairbins:age", np.array([0.0, 4, 9, 15, 24, bins]))
    check_pair_array(demo_schema, "vote:sex|mgus", np.array([2.0]))
    for key, value in [(pair_key(("sex", "death")), np.ones((2, 2))),  # the outcome has its own tables
                       (pair_key(("sex", "mgus")), np.ones((3, 2))),
                       (pair_key(("mgus", "sex")), np.ones((2, 2))),  # one pair, one key: schema order
                       (pair_key(("sex", "sex")), np.ones((2, 2))),
                       (pair_key(("sex", "nope")), np.ones((2, 2))),
                       ("pairbins:sex", np.array([0.0, 1])),
                       ("pairbins:age", np.array([0.0, 9, 4, 15, 24, bins])),
                       ("pairbins:age", np.array([0.0, 4, 9, 15, 24, 500])),
                       ("vote:sex|mgus", np.array([0.5])),  # a vote's rank is a whole number
                       ("vote:sex|mgus", np.array([99.0])),  # below the measured columns' count
                       ("vote:mgus|sex", np.array([0.0])),
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


def test_a_lost_second_release_marks_the_sites_claim_as_outdated():
    """Round 0 is asked twice: a site whose pair tables were asked (and maybe charged) but never
    came back, after its first release was accepted, may have spent more than its last claim
    (the diff review of the two releases); its published epsilon must say it is an upper bound."""
    from fedsyn.server.record import SiteStatus

    assert SiteStatus(1, rounds_accepted=[0], unconfirmed=[0]).claim_outdated
    assert not SiteStatus(1, rounds_accepted=[0, 1], unconfirmed=[0]).claim_outdated  # round 1's claim covers it
    assert not SiteStatus(1, rounds_accepted=[0]).claim_outdated


def test_votes_all_naming_the_site_column_leave_round_zero_without_pair_tables(tmp_path, small_frame, monkeypatch):
    """No pair of the site column is chosen; a run whose every vote named it asked its sites for
    pair tables of no pair, a query the protocol refuses as malformed, and stopped (the bench
    test's two sites of 150 rows, one vote each, once their draws changed). It goes on with the
    outcome tables, and no site is charged for a second release."""
    from fedsyn.client.app import make_client_app
    from fedsyn.privacy import marginals as marginals_module
    from fedsyn.server.coordinator import Coordinator
    from fedsyn.simulations.inprocess import InProcessGrid

    from .helpers import SETTINGS

    monkeypatch.setattr(marginals_module, "vote_pairs", lambda *args, **kwargs: [("sex", "sample_yr")])
    frames = [small_frame.iloc[i::3] for i in range(3)]
    plan = prepare_sites(frames, demo_schema_path(), tmp_path / "sites", epsilon=5.0, delta=1e-5, seed=None)
    settings = SETTINGS.model_copy(update={"epsilon": 5.0, "site_column": "sample_yr"})
    coordinator = Coordinator(Schema.load(demo_schema_path()), settings)
    coordinator.collect_marginals(InProcessGrid(make_client_app(plan.site_policy), 3))
    assert len(coordinator.run.site_marginals) == 3
    assert not any(tables.pairs for tables in coordinator.run.site_marginals.values())
    assert all(len(PrivacyLedger.load(SitePolicy.load(path).ledger).events) == 1 for path in plan.policies)


def test_pairs_a_study_asks_for_are_measured_first_and_bad_ones_refused_before_any_site(tmp_path, small_frame,
                                                                                        caplog):
    """helper-112: the votes missed a study's strongest relations (creatinine × urea, age ×
    albumin), which came back as none, and nothing let the researcher name them. Pairs asked are
    measured before the voted ones, at no cost of choosing them; a pair the schema cannot hold is
    refused before any site is asked anything."""
    import logging

    from fedsyn.client.app import make_client_app
    from fedsyn.errors import ConfigurationError
    from fedsyn.server.coordinator import Coordinator
    from fedsyn.simulations.inprocess import InProcessGrid

    from .helpers import SETTINGS

    schema = Schema.load(demo_schema_path())
    assert pairs_module.asked_pairs(schema, ["creatinine:age", " kappa : sex"]) == [("age", "creatinine"),
                                                                                    ("sex", "kappa")]
    for bad in (["age"], ["age:age"], ["age:death"], ["age:nope"], ["age:sex", "sex:age"], ["age:sample_yr"]):
        with pytest.raises(ValueError):
            pairs_module.asked_pairs(schema, bad, site_column="sample_yr")
    assert pairs_module.chosen_pairs([("age", "creatinine")], [[("sex", "mgus"), ("age", "creatinine")]], 2) \
        == [("age", "creatinine"), ("sex", "mgus")]

    frames = [small_frame.iloc[i::3] for i in range(3)]
    plan = prepare_sites(frames, demo_schema_path(), tmp_path / "sites", epsilon=5.0, delta=1e-5, seed=None)
    settings = SETTINGS.model_copy(update={"epsilon": 5.0, "pairs_asked": ["creatinine:age"]})
    coordinator = Coordinator(schema, settings)
    coordinator.collect_marginals(InProcessGrid(make_client_app(plan.site_policy), 3))
    assert all(list(tables.pairs)[0] == ("age", "creatinine") for tables in coordinator.run.site_marginals.values())
    from fedsyn.server.release import measured_pairs_note  # helper-116 L4: the release said which, not why

    note = measured_pairs_note(list(coordinator.run.site_marginals[1001].pairs), True,
                               pairs_module.asked_pairs(schema, settings.pairs_asked))
    assert "`age` × `creatinine` (asked)" in note and note.count("(asked)") == 1
    from fedsyn.server.settings import FederationSettings

    from_server_toml = FederationSettings.from_run_config({"pairs-asked": "creatinine:age, kappa:sex"})
    assert from_server_toml.pairs_asked == ["creatinine:age", " kappa:sex"]  # a run config holds no list
    many = Coordinator(schema, SETTINGS.model_copy(update={"epsilon": 0.5, "pairs_asked": [
        "age:sex", "age:kappa", "age:lambda", "age:creatinine", "age:mgus", "sex:kappa", "sex:lambda"]}))
    plan = prepare_sites(frames, demo_schema_path(), tmp_path / "more-sites", epsilon=5.0, delta=1e-5, seed=None)
    with caplog.at_level(logging.WARNING, logger="fedsyn.server"):
        many.collect_marginals(InProcessGrid(make_client_app(plan.site_policy), 3))
    assert "7 pairs asked, and the sites' noisy totals afford" in caplog.text  # said, then all measured
    assert all(len(tables.pairs) == 7 for tables in many.run.site_marginals.values())
    refused = Coordinator(schema, SETTINGS.model_copy(update={"pairs_asked": ["age:death"]}))
    with pytest.raises(ConfigurationError, match="pairs_asked: pair 'age:death'"):
        refused.check_run()
