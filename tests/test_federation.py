"""Federation end to end on the in-process grid: release, ledger, message contents, bad sites."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from fedsyn.client.app import make_client_app
from fedsyn.client.policy import SitePolicy
from fedsyn.data.demo import demo_schema_path
from fedsyn.data.draft import draft_schema
from fedsyn.data.schema import SchemaError
from fedsyn.data.tables import read_table
from fedsyn.data.validation import validate_frame
from fedsyn.federation import protocol
from fedsyn.model.raking import pooled_pair_tables
from fedsyn.privacy.accounting import PrivacyEvent, PrivacyLedger
from fedsyn.privacy.marginals import (
    Marginals,
    federation_tables,
    received_marginals,
    table_noise_std,
    tables_weight,
)
from fedsyn.privacy.pairs import bounds_arrays, check_pairs, parse_pair_key
from fedsyn.server.app import ReleasePlan, run_federation
from fedsyn.server.coordinator import Coordinator
from fedsyn.server.ops.dashboard_state import round_views
from fedsyn.server.record import FederationError
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.inprocess import InProcessGrid
from fedsyn.simulations.run import prepare_sites
from fedsyn.simulations.split import split_table

from .helpers import SETTINGS, independent_epsilon, run_in_process


def test_release_is_valid_and_ledger_matches_independent_recomputation(plan, demo_schema, tmp_path):
    _, coordinator = run_in_process(plan, demo_schema, tmp_path)
    release = tmp_path / "release"
    for name in ("synthetic.csv", "synthetic.parquet", "privacy_report.json", "generator.pt",
                 "run_config.json", "schema.json", "README.md"):
        assert (release / name).is_file(), name
    synthetic = read_table(release / "synthetic.csv", demo_schema)
    assert len(synthetic) == 500 and validate_frame(synthetic, demo_schema).ok
    report = json.loads((release / "privacy_report.json").read_text())
    assert len(report["sites"]) == 3 and report["schema_unreviewed_columns"] == []
    for site, policy_path in zip(report["sites"], plan.policies):
        assert site["epsilon_this_run"] <= 1.0 and site["within_budget"]
        assert len(site["rounds_accepted"]) == 4  # marginals round + 3 training rounds
        local = PrivacyLedger.load(SitePolicy.load(policy_path).ledger)
        assert site["site"] == SitePolicy.load(policy_path).site_id
        assert local.events == coordinator.run.sites[site["node_id"]].events
        assert site["epsilon_this_run"] == pytest.approx(independent_epsilon(local.events, 1e-5, "rdp"), rel=1e-3)
        assert site["epsilon_cumulative"] == pytest.approx(site["epsilon_claimed_by_site"], rel=1e-9)
        assert site["epsilon_cumulative"] == pytest.approx(site["epsilon_this_run"], rel=1e-9)  # first run


def test_sites_send_only_model_arrays_declared_metrics_and_privacy_events(plan, demo_schema, tmp_path):
    grid, coordinator = run_in_process(plan, demo_schema, tmp_path)
    model_keys = set(coordinator.trainer.state_arrays())
    assert grid.replies
    for reply in grid.replies:
        assert not reply.has_error()
        content = reply.content
        if protocol.BUDGET in content:  # before round 0: what the site has spent and may spend, nothing else
            assert set(content.keys()) == {protocol.BUDGET}
            assert set(content.config_records[protocol.BUDGET].keys()) == protocol.BUDGET_FIELDS
            continue
        if protocol.MARGINALS in content:
            assert set(content.keys()) == {protocol.MARGINALS, protocol.PRIVACY}
            counts = protocol.from_array_record(content.array_records[protocol.MARGINALS])
            released = Marginals(dict(counts))
            assert set(released.tables) == set(demo_schema.column_names) and released.votes  # and its votes
            assert not released.pairs  # the pair tables are the second release
            check_pairs(demo_schema, released)
            assert any(not np.allclose(v, np.round(v)) for v in counts.values())  # noisy, not exact counts
        elif protocol.PAIR_TABLES in content:  # round 0's second release: the pairs the sites chose, noisy
            assert set(content.keys()) == {protocol.PAIR_TABLES, protocol.PRIVACY}
            tables = protocol.from_array_record(content.array_records[protocol.PAIR_TABLES])
            assert tables and all(parse_pair_key(key) for key in tables)
            assert any(not np.allclose(v, np.round(v)) for v in tables.values())
        else:
            assert set(content.keys()) == {protocol.ARRAYS, protocol.METRICS, protocol.PRIVACY}
            assert set(content.array_records[protocol.ARRAYS].keys()) == model_keys
            assert set(content.metric_records[protocol.METRICS].keys()) <= protocol.DECLARED_METRICS
        assert set(content.config_records[protocol.PRIVACY].keys()) <= protocol.PRIVACY_FIELDS


def test_the_coordinator_states_each_sites_noise_from_what_it_asked(plan, demo_schema, tmp_path):
    """A site's tables carry the cell noise std of the query the coordinator sent it (public),
    never a figure of the site's; the global tables' std is the root of the sites' variances."""
    grid, coordinator = run_in_process(plan, demo_schema, tmp_path)
    asked = {m.metadata.dst_node_id: protocol.MarginalsQuery.from_record(m.content.config_records[protocol.CONFIG])
             for m in grid.sent if m.metadata.message_type == protocol.QUERY_MARGINALS}
    weight = tables_weight(demo_schema)
    stds = [table_noise_std(weight, asked[node].noise_multiplier, asked[node].pairs_share)
            for node in coordinator.run.site_marginals]
    assert len(stds) == 3 and coordinator.run.marginals.cell_std == pytest.approx(np.sqrt(np.sum(np.square(stds))))


def test_the_coordinator_keeps_each_sites_tables_drawn_toward_the_sum(plan, demo_schema, tmp_path):
    """The summed tables and each slot's (the site's first reply shrunk toward the sum, its pair
    tables from its second reply pooled over the sites) are :func:`federation_tables` and
    :func:`pooled_pair_tables` of the replies, at the std the coordinator asked for, with the
    groups it asked for."""
    grid, coordinator = run_in_process(plan, demo_schema, tmp_path)
    asked = {m.metadata.dst_node_id: protocol.MarginalsQuery.from_record(m.content.config_records[protocol.CONFIG])
             for m in grid.sent if m.metadata.message_type == protocol.QUERY_MARGINALS}
    asked_pairs = {m.metadata.dst_node_id: protocol.PairTablesQuery.from_record(
        m.content.config_records[protocol.CONFIG]) for m in grid.sent
        if m.metadata.message_type == protocol.QUERY_PAIR_TABLES}
    first = {reply.metadata.src_node_id: received_marginals(
        dict(protocol.from_array_record(reply.content.array_records[protocol.MARGINALS])), demo_schema,
        asked[reply.metadata.src_node_id].noise_multiplier, asked[reply.metadata.src_node_id].pairs_share)
        for reply in grid.replies if protocol.MARGINALS in reply.content}
    second = {reply.metadata.src_node_id: dict(protocol.from_array_record(reply.content.array_records[
        protocol.PAIR_TABLES])) for reply in grid.replies if protocol.PAIR_TABLES in reply.content}
    assert len(second) == 3 and len({query.pairs for query in asked_pairs.values()}) == 1  # the same pairs
    sent = {node: Marginals({**part.tables, **second[node], **bounds_arrays(list(asked_pairs[node].pairs), {
        name: np.asarray(values) for name, values in asked_pairs[node].bounds.items()})}, cell_std=part.cell_std)
        for node, part in first.items()}
    nodes = sorted(coordinator.run.site_marginals)
    summed, shrunk = federation_tables(demo_schema, [sent[node] for node in nodes],
                                       coordinator.settings.marginals_noise_floor)
    assert all(np.allclose(coordinator.run.marginals.tables[name], summed.tables[name]) for name in summed.tables)
    for node, own in zip(nodes, pooled_pair_tables(demo_schema, shrunk)):
        kept = coordinator.run.site_marginals[node]
        assert kept.arrays.keys() == own.arrays.keys() and kept.cell_std is None and kept.pairs
        assert all(np.allclose(kept.arrays[name], own.arrays[name]) for name in own.arrays)
    assert any(not np.array_equal(coordinator.run.site_marginals[node].tables[name], sent[node].tables[name])
               for node in nodes for name in sent[node].tables)


def _corrupt_first_site(reply: Message) -> Message:
    if reply.metadata.src_node_id == 1001 and protocol.ARRAYS in reply.content:
        arrays = reply.content.array_records[protocol.ARRAYS]
        name = next(iter(arrays.keys()))
        broken = protocol.from_array_record(arrays)
        broken[name] = np.full_like(broken[name], np.nan)
        reply.content[protocol.ARRAYS] = protocol.to_array_record(broken)
    return reply


def test_malformed_update_is_dropped_and_named(plan, demo_schema, tmp_path):
    _, coordinator = run_in_process(plan, demo_schema, tmp_path, reply_filter=_corrupt_first_site)
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    bad = next(s for s in report["sites"] if s["node_id"] == 1001)
    assert [d["round"] for d in bad["dropped"]] == [1, 2, 3]
    assert "NaN" in bad["dropped"][0]["reason"]
    assert all(r.accepted == 2 for r in coordinator.run.rounds)


def _inflated(payload: str, scale: float) -> Callable[[Message], Message]:
    """A reply filter: the first site's ``payload`` arrays (round 0's tables) times ``scale``."""
    def inflate(reply: Message) -> Message:
        if reply.metadata.src_node_id == 1001 and payload in reply.content:
            tables = protocol.from_array_record(reply.content.array_records[payload])
            reply.content[payload] = protocol.to_array_record(
                {name: values if name.startswith(("pairbins:", "vote:")) else values * scale  # counts only
                 for name, values in tables.items()})
        return reply
    return inflate


@pytest.mark.parametrize(("payload", "scale"), [(protocol.MARGINALS, 1e12), (protocol.PAIR_TABLES, -1e306)])
def test_round_zero_tables_beyond_any_sites_size_are_dropped_not_summed(plan, demo_schema, tmp_path, payload, scale):
    """Every site refuses summed tables beyond MAX_COUNT (a finite 1e308 overflowed into NaN
    weights), so one site sending such counts would have stopped them all, and pair tables of
    -1e308 crashed the coordinator as it pooled them (a review): the coordinator drops that
    round-0 reply, and the others train and release."""
    _, coordinator = run_in_process(plan, demo_schema, tmp_path, reply_filter=_inflated(payload, scale))
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    bad = next(s for s in report["sites"] if s["node_id"] == 1001)
    assert bad["dropped"][0]["round"] == 0 and "beyond" in bad["dropped"][0]["reason"]
    assert all(r.accepted == (2 if payload == protocol.MARGINALS else 3) for r in coordinator.run.rounds)


def test_site_refuses_less_noise_than_its_minimum(plan, demo_schema, tmp_path):
    # Noise that fits the budget (the coordinator's plan asks the sites, 2 of 3 rounds fit) but is below
    # a minimum the sites raised: the site's own check refuses it, after round 0 was charged.
    for policy in plan.policies:
        strict = SitePolicy.load(policy).model_copy(update={"min_noise_multiplier": 8.0})
        strict.save(policy)
    weak = FederationSettings(**{**SETTINGS.__dict__, "noise_multiplier": 6.0})
    with pytest.raises(FederationError, match="policy_refused: noise multiplier 6.0 is below this site's minimum"):
        run_in_process(plan, demo_schema, tmp_path, settings=weak)
    for policy in plan.policies:
        ledger = PrivacyLedger.load(SitePolicy.load(policy).ledger)
        assert [e.mechanism for e in ledger.events] == ["gaussian-marginals"] * 2  # round 0: two releases


def test_site_level_dp_uses_flowers_wrapper_and_accountant(plan, demo_schema, tmp_path):
    site_dp = FederationSettings(**{**SETTINGS.__dict__, "site_noise_multiplier": 2.0, "site_clipping_norm": 5.0})
    _, coordinator = run_in_process(plan, demo_schema, tmp_path, settings=site_dp)
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    site_level = report["site_level_dp"]
    assert site_level["releases"] == SETTINGS.rounds
    independent = independent_epsilon([PrivacyEvent("site-level", 2.0, 1.0, SETTINGS.rounds)], 1e-5, "rdp")
    assert site_level["epsilon"] == pytest.approx(independent, rel=0.02)
    assert "training updates only" in site_level["scope"] and "no site-level epsilon" in site_level["scope"]
    assert json.loads((tmp_path / "release" / "privacy_report.json").read_text())["sites"][0]["within_budget"]


def test_float16_transport_halves_the_update_and_still_validates(plan, demo_schema, tmp_path):
    half = FederationSettings(**{**SETTINGS.__dict__, "transport_dtype": "float16"})
    grid, coordinator = run_in_process(plan, demo_schema, tmp_path, settings=half)
    updates = [r for r in grid.replies if protocol.ARRAYS in r.content]
    sent = [a for r in updates for a in r.content.array_records[protocol.ARRAYS].values()]
    assert sent and all(a.dtype == "float16" for a in sent)
    assert all(r.accepted == 3 for r in coordinator.run.rounds)
    assert all(v.dtype == np.float32 for v in coordinator.trainer.state_arrays().values())


def _poison_first_site(scale: float):
    """Site node-1001 sends its update scaled far away from the global model."""
    def poison(reply: Message) -> Message:
        if reply.metadata.src_node_id == 1001 and not reply.has_error() and protocol.ARRAYS in reply.content:
            arrays = protocol.from_array_record(reply.content.array_records[protocol.ARRAYS])
            reply.content[protocol.ARRAYS] = protocol.to_array_record({k: v * scale for k, v in arrays.items()})
        return reply
    return poison


def _generator_shift(coordinator, reference) -> float:
    weights = coordinator.trainer.state_arrays()
    return float(np.sqrt(sum(np.sum((weights[k] - reference[k]) ** 2) for k in weights if k.startswith("generator"))))


def test_median_aggregation_resists_a_poisoning_site(demo_frame, demo_schema, tmp_path):
    tables = split_table(demo_frame.sample(1500, random_state=0), 5, np.random.default_rng(0))
    runs = {}
    for name, aggregation, scale in (("clean", "mean", 1.0), ("poisoned mean", "mean", 50.0),
                                     ("poisoned median", "median", 50.0)):
        plan = prepare_sites(tables, demo_schema_path(), tmp_path / name / "sites", epsilon=1.0, delta=1e-5)
        settings = FederationSettings(**{**SETTINGS.__dict__, "rounds": 2, "aggregation": aggregation})
        grid = InProcessGrid(make_client_app(plan.site_policy), 5, _poison_first_site(scale))
        runs[name] = run_federation(grid, demo_schema, settings, ReleasePlan(tmp_path / name / "release", 100))
    clean = runs["clean"].trainer.state_arrays()
    assert _generator_shift(runs["poisoned mean"], clean) > 10 * _generator_shift(runs["poisoned median"], clean)


def test_update_norm_bound_quarantines_the_poisoning_site(plan, demo_schema, tmp_path):
    bounded = FederationSettings(**{**SETTINGS.__dict__, "max_update_norm": 50.0})
    _, coordinator = run_in_process(plan, demo_schema, tmp_path, settings=bounded,
                                    reply_filter=_poison_first_site(50.0))
    poisoned = coordinator.run.sites[1001]
    assert [d["round"] for d in poisoned.dropped] == [1, 2, 3]
    assert "exceeds the bound" in poisoned.dropped[0]["reason"]
    assert all(r.accepted == 2 for r in coordinator.run.rounds)


class CoordinatorCrash(RuntimeError):
    pass


def test_coordinator_crash_mid_run_loses_no_spent_privacy_and_a_new_run_respects_it(plan, demo_schema, tmp_path):
    """The coordinator dies during round 2 (fail loudly); a fresh run then starts cleanly. Every
    site's on-disk ledger still holds what the first run spent, so the new run's sites only
    spend what is left of their budgets."""
    replies = {"count": 0}

    def crash_in_round_two(reply: Message) -> Message:
        replies["count"] += 1
        if replies["count"] > 3 + 3 + 3 + 1:  # round 0's two releases, round 1, first reply of round 2
            raise CoordinatorCrash("coordinator stopped")
        return reply

    with pytest.raises(CoordinatorCrash):
        run_in_process(plan, demo_schema, tmp_path / "first", SETTINGS, reply_filter=crash_in_round_two)
    spent_before = [PrivacyLedger.load(SitePolicy.load(p).ledger).epsilon() for p in plan.policies]
    assert all(0 < e < 1.0 for e in spent_before)
    _, coordinator = run_in_process(plan, demo_schema, tmp_path / "second", SETTINGS)
    for policy, before in zip(plan.policies, spent_before):
        ledger = PrivacyLedger.load(SitePolicy.load(policy).ledger)
        assert before < ledger.epsilon() <= 1.0 + 1e-9  # what the crashed run left, and no more
        assert [e.mechanism for e in ledger.events].count("gaussian-marginals") == 4  # round 0 of each run: two


def test_coordinator_refuses_an_unreviewed_schema_before_contacting_any_site(plan, demo_frame):
    grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies))
    with pytest.raises(SchemaError, match="needs_review"):
        Coordinator(draft_schema(demo_frame, outcome="death"), SETTINGS).collect_marginals(grid)
    assert grid.sent == []


def _without_site_in_round_two(grid: InProcessGrid, stopped: int) -> None:
    """The stopped site never receives round 2's message (as if its SuperNode were down)."""
    answer = grid.push_messages

    def in_round_two(message):
        config = message.content.config_records.get(protocol.CONFIG, {})
        return message.metadata.message_type == "train" and config.get("round") == 2

    grid.push_messages = lambda messages: answer(
        [m for m in messages if not (m.metadata.dst_node_id == stopped and in_round_two(m))])


def test_a_site_that_stops_is_named_and_the_round_goes_on_above_the_minimum(demo_frame, demo_schema, tmp_path):
    tables = split_table(demo_frame.sample(900, random_state=0), 3, np.random.default_rng(0))
    for name, min_sites in (("enough", 2), ("too-few", 3)):
        plan = prepare_sites(tables, demo_schema_path(), tmp_path / name / "sites", epsilon=1.0, delta=1e-5)
        grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies))
        _without_site_in_round_two(grid, 1002)
        settings = FederationSettings(**{**SETTINGS.__dict__, "min_sites": min_sites})
        release = ReleasePlan(tmp_path / name / "release", rows=100)
        if min_sites == 2:
            coordinator = run_federation(grid, demo_schema, settings, release)
            assert [r.accepted for r in coordinator.run.rounds] == [3, 2, 3]
            assert coordinator.run.sites[1002].dropped[0]["round"] == 2
            assert "no reply" in coordinator.run.sites[1002].dropped[0]["reason"]
        else:
            with pytest.raises(FederationError, match=r"round 2: only 2 valid .* minimum 3.*no reply"):
                run_federation(grid, demo_schema, settings, release)


def test_a_site_charged_whose_reply_is_lost_is_reported_at_least_at_its_ledger(plan, demo_schema, tmp_path):
    """Issue 23 item 1: a site charged for rounds 1 to 3 whose replies never arrive. The release's
    cumulative epsilon for it must not be below what its own ledger holds; it is a stated bound."""

    answered = []

    def lose_first_site_from_round_two(reply):
        if reply.metadata.src_node_id != 1001:
            return reply
        answered.append(reply)  # the budget query, round 0's two releases, then rounds 1, 2, 3
        return None if len(answered) >= 4 else reply

    run_in_process(plan, demo_schema, tmp_path, reply_filter=lose_first_site_from_round_two)
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    lost = next(s for s in report["sites"] if s["node_id"] == 1001)
    ledger = PrivacyLedger.load(SitePolicy.load(plan.policies[0]).ledger)
    assert len(ledger.events) == 5  # round 0's two releases and rounds 1-3 were all charged at the site
    assert lost["epsilon_cumulative"] >= ledger.epsilon() - 1e-9
    assert lost["epsilon_cumulative_is_upper_bound"] and "1, 2, 3" in lost["upper_bound_reason"]
    readme = (tmp_path / "release" / "README.md").read_text()  # helper-120 M2: the bound read as the amount spent
    assert f"| {lost['site']} | at most {lost['epsilon_cumulative']:.3f} |" in readme and '"At most"' in readme
    assert report["max_epsilon_any_site"] >= ledger.epsilon() - 1e-9
    # this run's figure holds only the events that arrived: it says it is a lower bound, and of which rounds
    assert lost["epsilon_this_run"] < ledger.epsilon() - 1e-6
    assert lost["epsilon_this_run_is_lower_bound"] and lost["unconfirmed_rounds"] == [1, 2, 3]
    others = [s for s in report["sites"] if s["node_id"] != 1001]
    assert not any(s["epsilon_cumulative_is_upper_bound"] or s["epsilon_this_run_is_lower_bound"]
                   or s["unconfirmed_rounds"] for s in others)


def test_a_site_charged_whose_reply_is_rejected_is_reported_at_least_at_its_ledger(plan, demo_schema, tmp_path):
    """The second privacy review (F1): site 1001's last update arrives scaled out of the norm bound
    (a faulty link; the site charged honestly). Its claim travels in the rejected reply, so the
    release may not take the round before as the site's last word: it states an upper bound."""
    bounded = FederationSettings(**{**SETTINGS.__dict__, "max_update_norm": 50.0})
    poison = _poison_first_site(50.0)

    def poison_last_round(reply):
        if reply.has_error() or protocol.PRIVACY not in reply.content.config_records:
            return reply
        return poison(reply) if reply.content.config_records[protocol.PRIVACY]["round"] == bounded.rounds else reply

    run_in_process(plan, demo_schema, tmp_path, settings=bounded, reply_filter=poison_last_round)
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    rejected = next(s for s in report["sites"] if s["node_id"] == 1001)
    ledger = PrivacyLedger.load(SitePolicy.load(plan.policies[0]).ledger)
    assert [d["round"] for d in rejected["dropped"]] == [bounded.rounds] and len(ledger.events) == 5
    assert rejected["epsilon_cumulative"] >= ledger.epsilon() - 1e-9
    assert rejected["epsilon_cumulative_is_upper_bound"] and "rejected" in rejected["upper_bound_reason"]
    assert report["max_epsilon_any_site"] >= ledger.epsilon() - 1e-9
    # the third privacy review (F1): the charged round is not in this run's figure, which says so
    assert rejected["epsilon_this_run"] < ledger.epsilon() - 1e-6
    assert rejected["epsilon_this_run_is_lower_bound"] and rejected["unconfirmed_rounds"] == [bounded.rounds]


def test_a_site_whose_disk_is_full_for_a_round_is_asked_again_and_its_epsilon_stays_exact(plan, demo_schema,
                                                                                             tmp_path, monkeypatch):
    """Site 1001's disk is full during round 2: it refuses before any charge (``no_room``), is
    asked again at round 3, and the release states its epsilon exactly: a refusal that cannot
    follow a charge marks no round as possibly charged."""
    import shutil

    from fedsyn.client import site as site_module

    folder = SitePolicy.load(plan.policies[0]).ledger.parent
    full, answered = {"on": False}, []
    real_usage = shutil.disk_usage
    monkeypatch.setattr(site_module.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=0)
                        if full["on"] and Path(path).is_relative_to(folder) else real_usage(path))

    def fill_the_disk_for_round_two(reply):
        if reply.metadata.src_node_id == 1001:
            answered.append(reply)  # the budget query, round 0's two releases, then rounds 1, 2, 3
            full["on"] = len(answered) == 4
        return reply

    run_in_process(plan, demo_schema, tmp_path, reply_filter=fill_the_disk_for_round_two)
    assert answered[4].has_error() and answered[4].error.code == protocol.ErrorCode.NO_ROOM
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    site = next(s for s in report["sites"] if s["node_id"] == 1001)
    ledger = PrivacyLedger.load(SitePolicy.load(plan.policies[0]).ledger)
    assert [event.round for event in ledger.events] == [0, 0, 1, 3]  # round 2 was not charged
    assert site["rounds_accepted"] == [0, 1, 3] and [d["round"] for d in site["dropped"]] == [2]
    assert not site["epsilon_this_run_is_lower_bound"] and not site["unconfirmed_rounds"]
    assert not site["epsilon_cumulative_is_upper_bound"]
    assert site["epsilon_this_run"] == pytest.approx(ledger.epsilon(), rel=1e-9)


def test_an_exception_text_flower_sends_for_a_site_is_kept_as_a_fixed_reason(plan, demo_schema, tmp_path):
    """Flower answers an exception that escapes a site's ClientApp with its type and message (a
    read-only trail's OSError named a path at the site, helper-84), and the coordinator kept that
    text in its audit log, dashboard and the signed release. A reason is kept only in the form a
    fedsyn site writes it (or Flower's own fixed texts); anything else becomes a fixed text."""
    from flwr.app import Error

    def escape(reply):  # site 1001 at round 2, site 1002 at the budget query (the first message)
        if reply.has_content() and (
                reply.metadata.src_node_id == 1002 and protocol.BUDGET in reply.content
                or reply.metadata.src_node_id == 1001 and protocol.ARRAYS in reply.content
                and reply.content.config_records[protocol.PRIVACY]["round"] == 2):
            reply.__dict__["_content"] = None
            reply.error = Error(code=2, reason="<class 'OSError'>:<'[Errno 30] Read-only file system: "
                                                "'/secret-ward/patient-4711/audit.jsonl''>")
        return reply

    one_is_enough = FederationSettings(**{**SETTINGS.__dict__, "min_sites": 1})
    run_in_process(plan, demo_schema, tmp_path, settings=one_is_enough, reply_filter=escape)
    release = tmp_path / "release"
    sites = {s["node_id"]: s for s in json.loads((release / "privacy_report.json").read_text())["sites"]}
    assert [d["round"] for d in sites[1001]["dropped"]] == [2] and "error code 2" in sites[1001]["dropped"][0]["reason"]
    assert [d["round"] for d in sites[1002]["dropped"]] == [0] and "error code 2" in sites[1002]["dropped"][0]["reason"]
    assert not any("secret-ward" in path.read_text(errors="ignore") for path in release.iterdir() if path.is_file())


class _EchoingGrid(InProcessGrid):
    """Delivers every training round's first reply twice (a replayed or duplicated message)."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        if replies and messages[0].metadata.message_type == "train":
            replies.append(replies[0])
        return replies


def test_a_second_reply_to_one_request_is_ignored_not_counted_twice(plan, demo_schema, tmp_path):
    """Found in review: a reply was paired with the site its request went to, however many came,
    so a duplicate counted the site's update twice in the aggregate (and its event twice)."""
    grid = _EchoingGrid(make_client_app(plan.site_policy), len(plan.policies))
    coordinator = run_federation(grid, demo_schema, SETTINGS, ReleasePlan(tmp_path / "release", rows=100))
    assert [r.accepted for r in coordinator.run.rounds] == [3] * SETTINGS.rounds
    for site in coordinator.run.sites.values():
        assert len([e for e in site.events if e.mechanism == "dp-sgd"]) == SETTINGS.rounds


def test_a_site_that_loses_only_its_pair_tables_joined_round_zero_and_its_drop_says_so(plan, demo_schema, tmp_path):
    """Round 0 is two releases. A site whose second (the pair tables) never arrives joined with
    its first: the operator reads which release failed, and the dashboard does not count the
    site dropped from round 0."""
    def lose_first_sites_pair_tables(reply):
        return None if reply.metadata.src_node_id == 1001 and protocol.PAIR_TABLES in reply.content else reply

    grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies), lose_first_sites_pair_tables)
    coordinator = run_federation(grid, demo_schema, SETTINGS, ReleasePlan(tmp_path / "release", rows=300,
                                                                           audit_log=tmp_path / "audit.jsonl"))
    site = coordinator.run.sites[1001]
    assert site.rounds_accepted == [0, 1, 2, 3]
    assert [(d["round"], d["stage"]) for d in site.dropped] == [(0, "pair tables")]
    assert str(site.dropped[0]["reason"]).startswith("pair tables: no reply")
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    round_zero = round_views(entries)[0]
    assert round_zero["round"] == 0 and (round_zero["accepted"], round_zero["dropped"]) == (3, 0)


def test_a_site_that_answers_nothing_is_reported_at_its_last_claim_not_at_zero(plan, demo_schema, tmp_path):
    """helper-98 M4: a site whose budget reply never came (it failed, or the reply was lost) was
    listed in the release as ``node-ID`` at a cumulative epsilon of 0, though this coordinator's
    audit log held its name and its claim of an earlier run."""
    audit = tmp_path / "audit.jsonl"
    app = make_client_app(plan.site_policy)
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS,
                   ReleasePlan(tmp_path / "first", rows=200, audit_log=audit))
    spent = PrivacyLedger.load(SitePolicy.load(plan.policies[0]).ledger).epsilon()
    for path in plan.policies:  # room for a second run
        path.write_text(json.dumps({**json.loads(path.read_text()), "max_epsilon": 3.0}))

    def silent_first_site(reply: Message) -> Message | None:
        return None if reply.metadata.src_node_id == 1001 else reply

    run_federation(InProcessGrid(app, len(plan.policies), silent_first_site), demo_schema, SETTINGS,
                   ReleasePlan(tmp_path / "second", rows=200, audit_log=audit))
    report = json.loads((tmp_path / "second" / "privacy_report.json").read_text())
    silent = next(s for s in report["sites"] if s["node_id"] == 1001)
    assert silent["site"] == SitePolicy.load(plan.policies[0]).site_id
    assert silent["answered_this_run"] is False and silent["epsilon_this_run"] == 0
    assert silent["epsilon_cumulative"] == pytest.approx(spent, rel=1e-6)
    assert all(s["answered_this_run"] for s in report["sites"] if s["node_id"] != 1001)


def test_a_silent_node_is_not_named_after_a_site_that_answered_under_a_new_node(demo_schema):
    """helper-100 L-1: a hospital that re-keyed answered under a new node while Flower still
    listed its old one; the silent old node took its name too, and the README listed it twice."""
    from fedsyn.server.record import SiteStatus, known_names

    coordinator = Coordinator(demo_schema, SETTINGS, None)
    coordinator.run.sites = {1001: SiteStatus(1001), 1002: SiteStatus(1002), 1004: SiteStatus(1004, label="site-0")}
    entries: list[dict[str, object]] = [{"event": "site_budget", "node": 1001, "site": "site-0"},
                                        {"event": "site_budget", "node": 1002, "site": "site-1"}]
    coordinator._name_silent_sites(known_names(entries), {"site-0": 0.9, "site-1": 0.5})
    assert [coordinator.run.sites[node].name for node in (1001, 1002, 1004)] == ["node-1001", "site-1", "site-0"]
    assert coordinator.run.sites[1002].claimed_epsilon == 0.5 and coordinator.run.sites[1001].claimed_epsilon == 0


def test_a_site_refused_for_its_budget_is_reported_and_logged_at_its_ledger(plan, demo_schema, tmp_path, caplog):
    """helper-116 M1: a site with no room left, whose budget reply said 1.0, was logged each round
    as "0.000 ... all runs composed in its ledger" and reported with epsilon_claimed_by_site 0."""
    import logging

    app = make_client_app(plan.site_policy)
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS,
                   ReleasePlan(tmp_path / "first", rows=200))
    spent = PrivacyLedger.load(SitePolicy.load(plan.policies[0]).ledger).epsilon()
    for path in plan.policies[1:]:  # room for a second run at the others; none at the first
        path.write_text(json.dumps({**json.loads(path.read_text()), "max_epsilon": 3.0}))
    with caplog.at_level(logging.INFO, logger="fedsyn.server"):
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS,
                       ReleasePlan(tmp_path / "second", rows=200))
    report = json.loads((tmp_path / "second" / "privacy_report.json").read_text())
    refused = next(s for s in report["sites"] if s["site"] == SitePolicy.load(plan.policies[0]).site_id)
    assert refused["epsilon_this_run"] == 0 and refused["epsilon_claimed_by_site"] == pytest.approx(spent, rel=1e-9)
    rounds = [r for r in caplog.records if r.getMessage().startswith("round 3 of 3 done")]
    assert rounds and f"{refused['site']} {spent:.3f} (this run alone 0.000)" in rounds[-1].getMessage()
