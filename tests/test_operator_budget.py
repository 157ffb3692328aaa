"""Issue 23 item 2: budget left over is used. ``[run] epsilon`` is what one run may add to each
site's ledger, capped by the site's own max_epsilon; each site's round-0 noise is calibrated for
what that site can still spend; sites say what they have left (a declared-public fact, at no cost)
and the operator sees each site's plan before anything is charged."""

from __future__ import annotations

import json
import logging

import pytest

from fedsyn.client.app import make_client_app
from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site
from fedsyn.federation import protocol
from fedsyn.privacy.accounting import PrivacyLedger, gaussian_noise_for_epsilon
from fedsyn.privacy.budget import SiteBudget, plan_site_run
from fedsyn.server.app import ReleasePlan, run_federation
from fedsyn.server.record import FederationError
from fedsyn.simulations.inprocess import InProcessGrid

from .helpers import SETTINGS, CoordinatorCrash, CrashingGrid, run_in_process

PER_RUN = SETTINGS.model_copy(update={"epsilon": 0.4})  # the sites allow 1.0 each (the plan fixture)


def _spent(plan) -> list[float]:
    return [PrivacyLedger.load(SitePolicy.load(p).ledger).epsilon() for p in plan.policies]


def _round_zero_noise(grid: InProcessGrid) -> dict[int, float]:
    return {m.metadata.dst_node_id: float(m.content.config_records[protocol.CONFIG]["noise_multiplier"])
            for m in grid.sent if m.metadata.message_type == protocol.QUERY_MARGINALS}


def test_three_runs_with_one_config_use_a_sites_whole_cap_and_no_more(plan, demo_schema, tmp_path):
    """0.4 per run against a cap of 1.0: 0.4, then 0.8, then the 0.2 left; a fourth run finds
    nothing left and charges nothing. (Before: epsilon was each site's running total, so the
    second run was refused at round 0 and 0.6 of every cap stayed unused.)"""
    noise = []
    for run, expected in enumerate((0.4, 0.8, 1.0)):
        grid, _ = run_in_process(plan, demo_schema, tmp_path / f"run-{run}", PER_RUN)
        noise.append(_round_zero_noise(grid))
        assert all(expected - 2e-3 <= spent <= expected + 1e-9 for spent in _spent(plan)), (run, _spent(plan))
        report = json.loads((tmp_path / f"run-{run}" / "release" / "privacy_report.json").read_text())
        for site in report["sites"]:
            assert site["budget_epsilon_asked"] == pytest.approx(expected) and site["max_epsilon"] == 1.0
            assert site["epsilon_cumulative"] <= site["budget_epsilon_asked"] + 1e-9 and site["within_budget"]
    # each run's round 0 is calibrated for what the site can still spend: the last run's 0.2 needs more noise
    assert all(noise[2][node] > noise[1][node] for node in noise[1])
    full = _spent(plan)
    with pytest.raises(FederationError, match="budget_exhausted: site 'site-0' has spent"):
        run_in_process(plan, demo_schema, tmp_path / "run-3", PER_RUN)
    assert _spent(plan) == full


def test_a_site_that_spent_more_before_gets_noise_for_what_it_has_left(plan, demo_schema, tmp_path):
    """Issue 23: sites at 1.5 of a 2.0 cap could join no run. Here site-0 has spent 0.75 of its 1.0
    before the run; it joins, with round-0 noise for its 0.25, and ends at its cap like the others."""
    site = Site(SitePolicy.load(plan.policies[0]))
    site.release_marginals(gaussian_noise_for_epsilon(0.75, 1e-5), 0.75, protocol.schema_fingerprint(site.schema))
    before = site.ledger.epsilon()
    assert 0.74 < before <= 0.75
    grid, coordinator = run_in_process(plan, demo_schema, tmp_path, SETTINGS)
    noise = _round_zero_noise(grid)
    assert noise[1001] > 2 * noise[1002] and noise[1002] == noise[1003]
    assert all(1.0 - 2e-3 <= spent <= 1.0 + 1e-9 for spent in _spent(plan))
    assert coordinator.run.sites[1001].spent_before == pytest.approx(before)
    assert [r.accepted for r in coordinator.run.rounds] == [3] * SETTINGS.rounds


def test_the_budget_query_charges_nothing_and_says_only_declared_public_facts(plan, demo_schema, tmp_path, caplog):
    """``plan_only``: each site answers what it has spent and may spend (its ledger and its policy,
    no row); the operator's log shows spent, left, this run's cost and the rounds that fit."""
    grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies))
    audit = tmp_path / "audit.jsonl"
    with caplog.at_level(logging.INFO, logger="fedsyn.server"):
        run_federation(grid, demo_schema, PER_RUN, ReleasePlan(tmp_path / "release", 100, audit_log=audit),
                       plan_only=True)
    assert {m.metadata.message_type for m in grid.sent} == {protocol.QUERY_BUDGET}
    for reply in grid.replies:
        assert set(reply.content.keys()) == {protocol.BUDGET}
        assert set(reply.content.config_records[protocol.BUDGET].keys()) == protocol.BUDGET_FIELDS
    assert _spent(plan) == [0.0, 0.0, 0.0] and not (tmp_path / "release").exists()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("budget of ")]
    assert len(lines) == 3 and "budget of site-0: spent 0.0000 of its max_epsilon 1, 1.0000 left; this run may " \
        "raise it to 0.4000 (+0.4000)" in lines[0] and "3 of 3 training round(s) fit" in lines[0]
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["epsilon_cap"] for e in entries if e["event"] == "site_budget"] == [pytest.approx(0.4)] * 3
    trail = SitePolicy.load(plan.policies[0]).audit_trail.read_text().splitlines()
    assert json.loads(trail[-1])["event"] == "budget_reported"


def test_a_site_that_caps_each_request_gets_round_zero_within_its_cap_and_trains(plan, demo_schema, tmp_path):
    """A site's max_epsilon_per_request reaches the coordinator's plan with its budget: its round
    0 comes at noise whose every release costs no more than the cap on its own, and it trains
    with the others. Planned at the run's share, round 0's first release (about 0.8 of the run's
    1.0) was refused and the site sat the run out after the others had paid for round 0."""
    capped = SitePolicy.load(plan.policies[0])
    capped.model_copy(update={"max_epsilon_per_request": 0.3}).save(plan.policies[0])
    grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies))
    audit = tmp_path / "audit.jsonl"
    coordinator = run_federation(grid, demo_schema, SETTINGS, ReleasePlan(tmp_path / "release", 100, audit_log=audit))
    # both sides' audit trails keep the cap the plan was made with
    assert [e.get("max_epsilon_per_request") for e in map(json.loads, audit.read_text().splitlines())
            if e["event"] == "site_budget"] == [0.3, None, None]
    assert [e["max_epsilon_per_request"] for e in map(json.loads, capped.audit_trail.read_text().splitlines())
            if e["event"] == "budget_reported"] == [0.3]
    noise = _round_zero_noise(grid)
    assert noise[1001] >= gaussian_noise_for_epsilon(0.3, 1e-5) > noise[1002] == noise[1003]
    assert [r.accepted for r in coordinator.run.rounds] == [3] * SETTINGS.rounds
    events = PrivacyLedger.load(capped.ledger).events
    assert len(events) == 2 + SETTINGS.rounds and all(
        PrivacyLedger(1e-5, "rdp", [event]).epsilon() <= 0.3 for event in events)
    capped_spent, *others = _spent(plan)  # each of its rounds, too, costs at most 0.3 alone: it spends less
    assert capped_spent <= 1.0 and all(1.0 - 2e-3 <= spent <= 1.0 + 1e-9 for spent in others)


def test_a_request_cap_sets_each_floor_under_either_accountant_and_rules_out_what_cannot_meet_it():
    """The coordinator does not know a site's accountant: round 0 and each round are planned at
    noise that costs no more than the cap alone under RDP or PRV (PRV's figure is the higher for
    small caps). A fixed noise below a round's floor, or a cap no noise meets, plans no round."""
    from fedsyn.privacy.accounting import PrivacyEvent, compute_epsilon
    from fedsyn.privacy.budget import DP_SGD, MARGINALS

    for cap in (0.3, 0.03):
        plan = plan_site_run(SiteBudget(0.0, 1.0, 1e-5, cap), SETTINGS)
        assert plan.usable
        for accountant in ("rdp", "prv"):
            assert compute_epsilon([PrivacyEvent(MARGINALS, plan.marginals_noise, 1.0, 1)], 1e-5, accountant) <= cap
            assert compute_epsilon([PrivacyEvent(DP_SGD, plan.training_noise, SETTINGS.sample_rate,
                                                 SETTINGS.local_steps)], 1e-5, accountant) <= cap
    fixed = SETTINGS.model_copy(update={"noise_multiplier": 3.0, "epsilon": 3.0})  # a round alone costs 0.70
    assert plan_site_run(SiteBudget(0.0, 3.0, 1e-5), fixed).usable
    assert not plan_site_run(SiteBudget(0.0, 3.0, 1e-5, 0.3), fixed).usable
    assert not plan_site_run(SiteBudget(0.0, 1.0, 1e-5, 0.001), SETTINGS).usable


def test_a_budget_reply_of_an_earlier_site_without_a_request_cap_reads_as_none():
    from flwr.app import ConfigRecord, RecordDict

    record = dict(protocol.budget_record(SiteBudget(0.2, 1.0, 1e-5, 0.3), "a"))
    assert protocol.decode_budget(RecordDict({protocol.BUDGET: ConfigRecord(record)}))[0].max_epsilon_per_request == 0.3
    del record["max_epsilon_per_request"]
    assert protocol.decode_budget(RecordDict({protocol.BUDGET: ConfigRecord(record)})) == (
        SiteBudget(0.2, 1.0, 1e-5, None), "a")
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(protocol.ReplyError):
            protocol.decode_budget(RecordDict({protocol.BUDGET: ConfigRecord({**record,
                                                                            "max_epsilon_per_request": bad})}))


def test_a_fixed_noise_plan_counts_the_rounds_that_fit():
    assert SiteBudget(0.9, 1.0, 1e-5).remaining == pytest.approx(0.1)
    assert SiteBudget(0.9, 1.0, 1e-5).cap_for_run(0.4) == 1.0
    assert SiteBudget(0.2, 1.0, 1e-5).cap_for_run(0.4) == pytest.approx(0.6)
    fixed = SETTINGS.model_copy(update={"noise_multiplier": 4.0, "rounds": 50, "marginals_share": 0.5})
    fits = plan_site_run(SiteBudget(0.0, 1.0, 1e-5), fixed)
    assert fits.cost == 1.0 and fits.training_noise == 4.0 and 0 < fits.rounds_fit < 50
    assert plan_site_run(SiteBudget(0.5, 1.0, 1e-5), fixed).rounds_fit < fits.rounds_fit
    assert plan_site_run(SiteBudget(1.0, 1.0, 1e-5), SETTINGS).marginals_noise is None  # nothing left


def test_a_site_refuses_a_cap_above_its_own_max_whatever_the_coordinator_asks(plan, demo_schema, tmp_path,
                                                                               monkeypatch):
    """A coordinator that ignores a site's max_epsilon (here: a cap of spent + the run's epsilon)
    is refused at round 0 by the site, which charges nothing."""
    monkeypatch.setattr(SiteBudget, "cap_for_run", lambda self, run_epsilon: self.spent + run_epsilon)
    greedy = SETTINGS.model_copy(update={"epsilon": 5.0})
    with pytest.raises(FederationError, match="budget_exhausted: site 'site-.' allows at most epsilon=1.0"):
        run_in_process(plan, demo_schema, tmp_path, greedy)
    assert _spent(plan) == [0.0, 0.0, 0.0]


def test_server_plan_submits_a_run_that_only_asks_for_budgets(tmp_path):
    from fedsyn.server.ops.superlink import CoordinatorConfig

    (tmp_path / "server.toml").write_text('[run]\nepsilon = 0.4\n')
    command = CoordinatorConfig.load(tmp_path / "server.toml").run_command(plan_only=True)
    assert "plan-only=true" in command[-1] and "epsilon=0.4" in command[-1]


def _spend_all_of(policy_path) -> float:
    """Bring a site's ledger to (just under) its max_epsilon 1.0 outside any run."""
    site = Site(SitePolicy.load(policy_path))
    site.release_marginals(gaussian_noise_for_epsilon(0.999, 1e-5), 1.0, protocol.schema_fingerprint(site.schema))
    return site.ledger.epsilon()


def test_a_site_left_out_for_its_budget_is_reported_with_what_its_ledger_holds(plan, demo_schema, tmp_path):
    """A site that said (query.budget) it has spent its whole max_epsilon is asked nothing more;
    the signed report must still give its cumulative epsilon as at least what it said its ledger
    holds, never 0 (issue 23 item 1: the release must not understate a site's epsilon)."""
    spent = _spend_all_of(plan.policies[0])
    _, coordinator = run_in_process(plan, demo_schema, tmp_path, SETTINGS)
    assert coordinator.run.sites[1001].epsilon_cap is None  # left out: nothing usable was left
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    left_out = next(s for s in report["sites"] if s["site"] == "site-0")
    assert left_out["epsilon_before_run"] == pytest.approx(spent)
    assert left_out["epsilon_cumulative"] >= spent - 1e-9, left_out
    assert report["max_epsilon_any_site"] >= spent - 1e-9
    assert left_out["within_budget"]  # spent just under its max_epsilon 1.0


def test_a_site_whose_max_epsilon_was_lowered_below_its_spend_is_not_within_budget(plan, demo_schema, tmp_path):
    """helper-78: an operator lowered max_epsilon to 0.8 after spending 0.9999; the report said
    within_budget true, as the run had asked the site for nothing."""
    spent = _spend_all_of(plan.policies[0])
    policy = SitePolicy.load(plan.policies[0])
    policy.model_copy(update={"max_epsilon": 0.8 * spent}).save(plan.policies[0])
    run_in_process(plan, demo_schema, tmp_path, SETTINGS)
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    lowered = next(s for s in report["sites"] if s["site"] == "site-0")
    assert lowered["max_epsilon"] == pytest.approx(0.8 * spent) and not lowered["within_budget"], lowered
    assert all(s["within_budget"] for s in report["sites"] if s["site"] != "site-0")


def test_a_fixed_noise_run_whose_training_fits_no_round_charges_nothing(plan, demo_schema, tmp_path):
    """With a fixed noise multiplier the plan knows how many training rounds fit each site. A site
    where none fits must not be charged for round 0 either: its round-0 tables would be paid for
    and the run then refused at round 1 with no release."""
    fixed = SETTINGS.model_copy(update={"noise_multiplier": 4.0})
    assert plan_site_run(SiteBudget(0.0, 1.0, 1e-5), fixed).rounds_fit == 0
    with pytest.raises(FederationError, match="no training round fits that at noise multiplier 4.0"):
        run_in_process(plan, demo_schema, tmp_path, fixed)
    assert _spent(plan) == [0.0, 0.0, 0.0]


def test_a_fixed_noise_run_where_some_rounds_fit_trains_those_and_releases(plan, demo_schema, tmp_path, caplog):
    """At noise-multiplier 6, 2 of the run's 3 training rounds fit each site's 1.0. The sites are
    asked for those two and no more: the release is written with ledger-equal epsilon. (Before:
    round 3 was sent, every site refused it for its budget, the quorum failed and the run ended
    with its budget spent and no release.)"""
    fixed = SETTINGS.model_copy(update={"noise_multiplier": 6.0})
    assert plan_site_run(SiteBudget(0.0, 1.0, 1e-5), fixed).rounds_fit == 2
    with caplog.at_level(logging.INFO, logger="fedsyn.server"):
        grid, coordinator = run_in_process(plan, demo_schema, tmp_path, fixed)
    assert [r.round for r in coordinator.run.rounds] == [1, 2]
    assert sum(m.metadata.message_type == "train" for m in grid.sent) == 3 * 2
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    spent = dict(zip(["site-0", "site-1", "site-2"], _spent(plan)))
    for site in report["sites"]:
        assert site["epsilon_cumulative"] == pytest.approx(spent[site["site"]], abs=1e-6)
        assert 0.9 < site["epsilon_cumulative"] <= 1.0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fits 2 training round(s), and each has been asked of it" in m for m in messages) == 3
    assert any("training stops after round 2 of 3" in m for m in messages)


def test_when_sites_plans_differ_training_stops_at_the_quorum_and_releases(plan, demo_schema, tmp_path, caplog):
    """Review of finding D: site-0 spent 0.2 before, so at noise 6 one training round fits it and
    two fit the others. With min-sites 3, round 2 would ask two sites and fail the quorum, the
    budgets spent and no release; training stops after round 1 instead, and the release is
    written with each site's ledger."""
    site = Site(SitePolicy.load(plan.policies[0]))
    site.release_marginals(gaussian_noise_for_epsilon(0.2, 1e-5), 0.2, protocol.schema_fingerprint(site.schema))
    fixed = SETTINGS.model_copy(update={"noise_multiplier": 6.0, "min_sites": 3})
    with caplog.at_level(logging.INFO, logger="fedsyn.server"):
        _, coordinator = run_in_process(plan, demo_schema, tmp_path, fixed)
    assert [r.round for r in coordinator.run.rounds] == [1]
    assert any("2 site(s) can train round 2, fewer than min-sites 3" in r.getMessage() for r in caplog.records)
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    spent = dict(zip(["site-0", "site-1", "site-2"], _spent(plan)))
    assert {s["site"]: s["epsilon_cumulative"] for s in report["sites"]} == pytest.approx(spent, abs=1e-6)


class _LateGrid(InProcessGrid):
    """Its last site connects only after the coordinator's budget query."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked = 0

    def get_node_ids(self):
        self.asked += 1
        nodes = sorted(super().get_node_ids())
        return nodes if self.asked > 1 else nodes[:-1]


def test_a_site_that_joins_after_the_budget_query_is_told_it_sits_this_run_out(plan, demo_schema, tmp_path,
                                                                                 caplog):
    """Finding F: with min-sites below the number of sites, a site that connects late was left out
    without a word. It is still asked nothing and charged nothing, and the operator hears why."""
    grid = _LateGrid(make_client_app(plan.site_policy), len(plan.policies))
    with caplog.at_level(logging.INFO, logger="fedsyn.server"):
        run_federation(grid, demo_schema, SETTINGS, ReleasePlan(tmp_path / "release", rows=100))
    late = max(grid.get_node_ids())
    assert not [m for m in grid.sent if m.metadata.dst_node_id == late]
    assert _spent(plan)[-1] == 0.0
    said = [r.getMessage() for r in caplog.records if "connected after this run's budget query" in r.getMessage()]
    assert len(said) == 1 and f"node {late}" in said[0] and "charged nothing" in said[0]


def test_a_run_saved_before_per_site_caps_resumes(plan, demo_schema, tmp_path, monkeypatch):
    """A state saved before this change has no per-site cap (the run's epsilon was then every
    site's cap). Resuming it must go on training the sites, not ask nobody and fail the quorum."""
    import dataclasses

    from fedsyn.server import record as record_module
    from fedsyn.server.record import SiteStatus

    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")

    def old_asdict(obj):  # what the coordinator saved before it had per-site caps
        saved = dataclasses.asdict(obj)
        if isinstance(obj, SiteStatus):
            for name in ("spent_before", "max_epsilon", "epsilon_cap"):
                saved.pop(name)
        return saved

    app = make_client_app(plan.site_policy)
    with monkeypatch.context() as patched:
        patched.setattr(record_module, "asdict", old_asdict)
        with pytest.raises(CoordinatorCrash):
            run_federation(CrashingGrid(app, len(plan.policies), crash_at=2), demo_schema, SETTINGS, release)
    coordinator = run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release, resume=True)
    assert [r.accepted for r in coordinator.run.rounds] == [3] * SETTINGS.rounds
    assert [len(PrivacyLedger.load(SitePolicy.load(p).ledger).events) for p in plan.policies] == [5] * 3


def test_the_budget_reply_reads_no_row(plan):
    """What a site says before round 0 is the same whether its extract is there or not: it is
    computed from its ledger and policy alone (declared public), never from a patient row."""
    from flwr.app import RecordDict

    from .helpers import client_reply

    def said() -> dict:
        reply = client_reply(plan.policies[0], RecordDict(), protocol.QUERY_BUDGET)
        assert not reply.has_error()
        return dict(reply.content.config_records[protocol.BUDGET])

    with_rows = said()
    SitePolicy.load(plan.policies[0]).data.unlink()
    assert said() == with_rows == {"epsilon_spent": 0.0, "max_epsilon": 1.0, "delta": 1e-5, "site": "site-0",
                                   "max_epsilon_per_request": protocol.NO_REQUEST_CAP}


def test_repeated_free_queries_do_not_grow_the_sites_audit_trail(plan):
    """A budget query charges nothing, nor does a request the site answers from its store, and a
    coordinator may repeat both: each answer was appended to the site's audit trail, so a
    hostile one could grow it without limit, also by alternating the two. An answer already
    logged since the last charge is not written again; a new answer (after a charge) is."""
    from flwr.app import ConfigRecord, RecordDict

    from .helpers import client_reply

    policy = plan.policies[0]
    trail = SitePolicy.load(policy).audit_trail
    site = Site(SitePolicy.load(policy))
    query = protocol.MarginalsQuery(gaussian_noise_for_epsilon(0.5, 1e-5), 1.0,
                                    protocol.schema_fingerprint(site.schema), "run-a")

    def entries() -> list[dict]:
        return [json.loads(line) for line in trail.read_text().splitlines()]

    def ask_budget() -> None:
        assert not client_reply(policy, RecordDict(), protocol.QUERY_BUDGET).has_error()

    def ask_marginals() -> None:
        content = RecordDict({protocol.CONFIG: ConfigRecord(dict(query.to_record()))})
        assert not client_reply(policy, content, protocol.QUERY_MARGINALS).has_error()

    ask_budget()
    ask_marginals()  # charged
    ask_budget()
    ask_marginals()  # answered from the store
    before = len(entries())
    for _ in range(5):
        ask_budget()
        ask_marginals()
    assert len(entries()) == before
    assert {e["event"] for e in entries()[-2:]} == {"budget_reported", "reply_replayed"}
    query = protocol.MarginalsQuery(query.noise_multiplier, 1.0, query.schema_sha256, "run-b")
    ask_marginals()  # another run's request: charged again
    ask_budget()
    spent = PrivacyLedger.load(SitePolicy.load(policy).ledger).epsilon()
    assert spent > 0.5 and entries()[-1]["event"] == "budget_reported"
    assert entries()[-1]["epsilon_spent"] == pytest.approx(spent)


def test_a_site_whose_ledger_went_back_since_an_earlier_run_is_asked_nothing(plan, demo_schema, tmp_path):
    """helper-78: a site's whole state folder was lost and its ledger initialised again: it said
    it had spent 0, and the coordinator, whose own audit log held its earlier claims, planned its
    whole budget again without a word. It now refuses that site, and its report never says less
    than the site claimed before."""
    import shutil

    from fedsyn.client.site import initialise_ledger

    audit = tmp_path / "audit.jsonl"

    def run(name):
        grid = InProcessGrid(make_client_app(plan.site_policy), len(plan.policies))
        run_federation(grid, demo_schema, PER_RUN, ReleasePlan(tmp_path / name, rows=500, audit_log=audit))
        return json.loads((tmp_path / name / "privacy_report.json").read_text())

    run("first")
    before = _spent(plan)
    folder = plan.policies[0].parent
    for path in folder.iterdir():  # the state lost: ledger, trail, stored replies; policy and extract kept
        if path.name not in ("policy.json", "data.parquet"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    initialise_ledger(SitePolicy.load(plan.policies[0]))
    report = run("second")
    lost = next(site for site in report["sites"] if site["site"] == "site-0")
    assert lost["dropped"][0]["reason"].startswith("ledger_unavailable") and "an earlier run" in \
        lost["dropped"][0]["reason"]
    assert lost["epsilon_cumulative"] >= before[0] - 1e-9 and _spent(plan)[0] == 0.0  # nothing charged again
    assert all(site["rounds_accepted"] for site in report["sites"] if site["site"] != "site-0")


def test_two_sites_of_one_name_are_both_refused(plan, demo_schema, tmp_path):
    """helper-80: claims are kept by site name, so a second site reusing a name was refused with the
    other site's claim as its own. Two connected sites of one site_id now are both refused."""
    for path in plan.policies[:2]:
        SitePolicy.load(path).model_copy(update={"site_id": "st-mary"}).save(path)
    with pytest.raises(FederationError):
        run_in_process(plan, demo_schema, tmp_path, SETTINGS.model_copy(update={"min_sites": 2}))
    assert _spent(plan) == [0.0, 0.0, 0.0]  # nothing charged anywhere: the quorum failed before round 0
