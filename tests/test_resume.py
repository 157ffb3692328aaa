"""A coordinator that dies mid-run resumes from its saved state, and no site pays twice.

The crash is made where it hurts most: the sites have trained and charged for round 2 and
sent their updates, but the coordinator dies before aggregating them. On resume it asks
for round 2 again; each site answers from its store at no cost.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fedsyn.client.app import make_client_app
from fedsyn.client.policy import SitePolicy
from fedsyn.client.replies import ReplyStore
from fedsyn.client.site import Site
from fedsyn.errors import ConfigurationError
from fedsyn.federation import protocol
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.accounting import PrivacyEvent, PrivacyLedger, gaussian_noise_for_epsilon
from fedsyn.server import coordinator as coordinator_module
from fedsyn.server.app import ReleasePlan, run_federation
from fedsyn.server.record import FederationError, RunRecord
from fedsyn.server.resume import IN_ROUND_ZERO, STATE_FILE, holding_run, load_state, lock_holder
from fedsyn.simulations.inprocess import InProcessGrid
from fedsyn.trust.audit import verify_log

from .helpers import SETTINGS, CoordinatorCrash, CrashingGrid


def _crash_in_round_two(plan, demo_schema, tmp_path, settings=SETTINGS):
    """A run with saved state whose coordinator dies once the sites answered round 2."""
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    with pytest.raises(CoordinatorCrash):
        run_federation(CrashingGrid(app, len(plan.policies), crash_at=2), demo_schema, settings, release)
    return release, app


def _ledgers(plan) -> list[PrivacyLedger]:
    return [PrivacyLedger.load(SitePolicy.load(p).ledger) for p in plan.policies]


def test_a_resumed_run_finishes_and_no_site_pays_twice(plan, demo_schema, tmp_path):
    release, app = _crash_in_round_two(plan, demo_schema, tmp_path)
    assert not (tmp_path / "release").exists()
    charged_at_crash = [len(ledger.events) for ledger in _ledgers(plan)]
    assert charged_at_crash == [4, 4, 4]  # round 0's two releases, round 1, round 2 (answered, never aggregated)

    coordinator = run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release,
                                 resume=True)
    ledgers = _ledgers(plan)
    assert [len(ledger.events) for ledger in ledgers] == [2 + SETTINGS.rounds] * 3  # round 2 was not charged again
    assert [[e.round for e in ledger.events] for ledger in ledgers] == [[0, 0, 1, 2, 3]] * 3
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    for site, ledger in zip(sorted(report["sites"], key=lambda s: s["site"]), ledgers):
        assert site["epsilon_cumulative"] == pytest.approx(ledger.epsilon(), rel=1e-9)
        assert site["epsilon_this_run"] == pytest.approx(ledger.epsilon(), rel=1e-6)
        assert site["rounds_accepted"] == [0, 1, 2, 3]
    trails = [[json.loads(line) for line in SitePolicy.load(p).audit_trail.read_text().splitlines()]
              for p in plan.policies]
    assert all([e["round"] for e in trail if e["event"] == "reply_replayed"] == [2] for trail in trails)
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len({e["run"] for e in entries}) == 1 and coordinator.run.run_id == entries[0]["run"]
    resumed = next(e for e in entries if e["event"] == "run_resumed")
    assert resumed["after_round"] == 1
    # The summed tables' noise std came back with the state: the release trusts them as a fresh run's does.
    slots = coordinator.trainer.release_slots if coordinator.trainer is not None else None
    assert slots is not None and (slots.table_noise_std or 0.0) > 0.0
    assert [e["round"] for e in entries if e["event"] == "round_finished"] == [1, 2, 3]
    verify_log(tmp_path / "audit.jsonl")
    published = (tmp_path / "release" / "synthetic.csv").read_bytes()  # helper-120 M5: a finished run resumed
    with pytest.raises(ConfigurationError, match="finished and wrote its release .* nothing to resume"):
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release, resume=True)
    assert (tmp_path / "release" / "synthetic.csv").read_bytes() == published
    assert [len(ledger.events) for ledger in _ledgers(plan)] == [2 + SETTINGS.rounds] * 3


def test_a_run_resumed_before_round_one_was_aggregated_charges_no_site_twice(plan, demo_schema, tmp_path):
    """helper-98 H1: a deployed (unseeded) coordinator stopped after the sites answered round 1
    drew a fresh model when resumed, so round 1's request was a new one and every site paid it
    again. The model round 1 sends is saved before it is sent; the sites replay their answers."""
    settings = SETTINGS.model_copy(update={"seed": None})
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    with pytest.raises(CoordinatorCrash):
        run_federation(CrashingGrid(app, len(plan.policies), crash_at=1), demo_schema, settings, release)
    assert [[e.round for e in ledger.events] for ledger in _ledgers(plan)] == [[0, 0, 1]] * 3
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, settings, release, resume=True)
    assert [[e.round for e in ledger.events] for ledger in _ledgers(plan)] == [[0, 0, 1, 2, 3]] * 3
    trails = [[json.loads(line) for line in SitePolicy.load(p).audit_trail.read_text().splitlines()]
              for p in plan.policies]
    assert all([e["round"] for e in trail if e["event"] == "reply_replayed"] == [1] for trail in trails)


@pytest.mark.parametrize("crash_on", [protocol.QUERY_MARGINALS, protocol.QUERY_PAIR_TABLES])
def test_a_coordinator_stopped_within_round_zero_resumes_and_no_site_pays_twice(plan, demo_schema, tmp_path,
                                                                                crash_on):
    """Stopped once the sites answered round 0's first release (or its second), a resumed run
    asks that release again word for word (planning again would ask new queries, the sites'
    ledgers having moved, and every site would charge round 0 twice), and each site answers it
    from its store."""
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    with pytest.raises(CoordinatorCrash):
        run_federation(CrashingGrid(app, len(plan.policies), crash_at=1, crash_on=crash_on), demo_schema, SETTINGS,
                       release)
    charged = 1 if crash_on == protocol.QUERY_MARGINALS else 2
    assert [len(ledger.events) for ledger in _ledgers(plan)] == [charged] * 3

    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release, resume=True)
    ledgers = _ledgers(plan)
    assert [[e.round for e in ledger.events] for ledger in ledgers] == [[0, 0, 1, 2, 3]] * 3
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    for site, ledger in zip(sorted(report["sites"], key=lambda s: s["site"]), ledgers):
        assert site["epsilon_this_run"] == pytest.approx(ledger.epsilon(), rel=1e-6)
        assert site["rounds_accepted"] == [0, 1, 2, 3]
    trails = [[json.loads(line) for line in SitePolicy.load(p).audit_trail.read_text().splitlines()]
              for p in plan.policies]
    # the release the coordinator stopped after, answered from the store: the first release is not
    # asked again once its answers were saved
    assert all([e["round"] for e in trail if e["event"] == "reply_replayed"] == [0] for trail in trails)
    verify_log(tmp_path / "audit.jsonl")


class _WithoutNodeGrid(InProcessGrid):
    """A grid on which one node is not connected."""

    def __init__(self, *args, absent: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.absent = absent

    def get_node_ids(self):
        return [node for node in super().get_node_ids() if node != self.absent]


def test_a_resume_within_round_zero_waits_for_the_sites_it_asks_next(plan, demo_schema, tmp_path):
    """Stopped with the first releases in, a run asks the pair tables of the sites whose first
    release came: a site whose first release was lost does not count towards min-sites, so a
    resume with one of the others away waits for it, and says which sites it waited for."""
    settings = SETTINGS.model_copy(update={"timeout": 10.0})  # a round fits it on loaded cores (4 s did not, at load 6)
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)

    def lose_first_sites_first_release(reply):
        return None if reply.metadata.src_node_id == 1001 and protocol.MARGINALS in reply.content else reply

    with pytest.raises(CoordinatorCrash):
        run_federation(CrashingGrid(app, len(plan.policies), lose_first_sites_first_release, crash_at=1,
                                    crash_on=protocol.QUERY_PAIR_TABLES), demo_schema, settings, release)
    with pytest.raises(FederationError, match="only 1 of the site\\(s\\) round 0 asks next connected"):
        run_federation(_WithoutNodeGrid(app, len(plan.policies), absent=1003), demo_schema, settings, release,
                       resume=True)


def test_a_state_within_round_zero_without_its_queries_is_refused(plan, demo_schema, tmp_path):
    """Resuming it would plan round 0 again under the same run id: every site would pay twice."""
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    with pytest.raises(CoordinatorCrash):
        run_federation(CrashingGrid(app, len(plan.policies), crash_at=1, crash_on=protocol.QUERY_MARGINALS),
                       demo_schema, SETTINGS, release)
    state = load_state(tmp_path / "state", tmp_path / "audit.jsonl")
    assert state.round == IN_ROUND_ZERO and state.round_zero
    state.round_zero = None
    with pytest.raises(ConfigurationError, match="round-0 queries"):
        RunRecord.from_state(state, demo_schema, SETTINGS)


# What the coordinator wrote in state.pt before its record became a value of its own (issue 21):
# the file's keys, and each site's and each round's fields, as that code's _save wrote them.
STATE_KEYS = ("format", "run_id", "round", "settings", "schema_sha256", "marginals", "site_marginals", "slots",
              "sites", "rounds", "model", "sampler", "release_choice")
SITE_FIELDS = ("node_id", "label", "events", "claimed_epsilon", "delta", "rounds_accepted", "dropped", "active",
               "unconfirmed", "spent_before", "max_epsilon", "epsilon_cap", "rounds_planned")
ROUND_FIELDS = ("round", "accepted", "dropped", "generator_loss", "seconds")
EVENT_FIELDS = ("mechanism", "noise_multiplier", "sample_rate", "steps", "round")


def test_a_state_saved_in_the_earlier_layout_resumes(plan, demo_schema, tmp_path):
    """A state.pt written in the layout of the code before the run's record (the dict its _save
    built, field by field, its settings without table_steps, which came later) and vouched for
    by the audit log resumes: no site pays twice and every round is trained."""
    import torch

    from fedsyn.trust.audit import AuditLog
    from fedsyn.trust.signing import sha256_file

    release, app = _crash_in_round_two(plan, demo_schema, tmp_path)
    state = tmp_path / "state" / STATE_FILE
    saved = torch.load(state, weights_only=True)
    earlier = {**{key: saved[key] for key in STATE_KEYS}, "format": "fedsyn-coordinator-state/2"}
    earlier["sites"] = [{**{name: site[name] for name in SITE_FIELDS},
                         "events": [{name: event[name] for name in EVENT_FIELDS} for event in site["events"]]}
                        for site in saved["sites"]]
    earlier["rounds"] = [{name: summary[name] for name in ROUND_FIELDS} for summary in saved["rounds"]]
    earlier["settings"] = {name: value for name, value in saved["settings"].items() if name != "table_steps"}
    torch.save(earlier, state)
    AuditLog(tmp_path / "audit.jsonl", run_id=saved["run_id"]).append(
        "state_saved", round=saved["round"], path=str(state.resolve()), sha256=sha256_file(state))

    coordinator = run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release,
                                 resume=True)
    assert [r.round for r in coordinator.run.rounds] == [1, 2, 3] and coordinator.run.run_id == saved["run_id"]
    assert [len(ledger.events) for ledger in _ledgers(plan)] == [2 + SETTINGS.rounds] * 3


def test_a_state_the_audit_log_does_not_vouch_for_is_refused(plan, demo_schema, tmp_path):
    release, app = _crash_in_round_two(plan, demo_schema, tmp_path)
    state = tmp_path / "state" / STATE_FILE
    state.write_bytes(state.read_bytes() + b"\0")
    with pytest.raises(ConfigurationError, match="not the state the audit log"):
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release, resume=True)
    with pytest.raises(ConfigurationError, match="settings changed"):
        state.write_bytes(state.read_bytes()[:-1])
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS.model_copy(update={"rounds": 5}),
                       release, resume=True)
    assert [len(ledger.events) for ledger in _ledgers(plan)] == [4, 4, 4]  # refusing to resume costs nothing


def test_only_one_coordinator_process_drives_a_run(tmp_path):
    """A ServerApp orphaned by a SuperLink crash holds the run's lock: a resumed run waits for
    it and refuses to train beside it; the lock names the holder so the CLI can stop it."""
    with holding_run(tmp_path, "4242"):
        assert lock_holder(tmp_path) == {"pid": os.getpid(), "flower_run": "4242"}
        with pytest.raises(ConfigurationError, match="Flower run 4242"):
            with holding_run(tmp_path, "5151", wait=0.5):
                pass
    assert lock_holder(tmp_path) is None


def test_a_second_new_run_on_a_state_folder_in_use_is_refused_at_once(plan, demo_schema, tmp_path, caplog):
    """helper-104 M5: a second `server run` on one state folder waited two minutes in silence and,
    had the first ended meanwhile, started and charged every site again. A new run refuses at
    once; a resumed run waits for the process it replaces, saying so."""
    import logging
    import time

    release = ReleasePlan(tmp_path / "release", rows=100, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    with holding_run(tmp_path / "state", "4242"):
        started = time.monotonic()
        with pytest.raises(ConfigurationError, match="let it finish, or stop it .`flwr stop 4242`"):
            run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release)
        assert time.monotonic() - started < 5
        with caplog.at_level(logging.INFO, logger="fedsyn.server"), pytest.raises(ConfigurationError):
            with holding_run(tmp_path / "state", "5151", wait=1.5):
                pass
    assert "waiting up to 2 s for it to stop" in caplog.text
    assert [len(ledger.events) for ledger in _ledgers(plan)] == [0, 0, 0]  # nothing charged


def test_a_tampered_audit_log_cannot_vouch_for_a_state(plan, demo_schema, tmp_path):
    release, app = _crash_in_round_two(plan, demo_schema, tmp_path)
    audit = tmp_path / "audit.jsonl"
    lines = audit.read_text().splitlines()
    altered = json.loads(lines[1])
    altered["time"] = "2020-01-01T00:00:00+00:00"  # an earlier entry altered: its hash no longer matches
    lines[1] = json.dumps(altered, sort_keys=True)
    audit.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigurationError, match="does not verify"):
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release, resume=True)


def test_a_run_with_site_level_dp_is_not_resumed(plan, demo_schema, tmp_path):
    """Flower's site-level accountant is not part of the saved state: resuming would understate it."""
    settings = SETTINGS.model_copy(update={"site_noise_multiplier": 0.5})
    release, app = _crash_in_round_two(plan, demo_schema, tmp_path, settings)
    with pytest.raises(ConfigurationError, match="site-level DP cannot be resumed"):
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, settings, release, resume=True)


def test_the_reply_store_keeps_any_column_name(tmp_path):
    """Names are schema column names: numpy's own keywords must not break a store written after a charge."""
    store = ReplyStore(tmp_path)
    arrays = {"file": np.ones(2), "allow_pickle": np.zeros(3), "meta": np.arange(4.0), "a0": np.full(1, 7.0)}
    event = PrivacyEvent("gaussian-marginals", 3.0, 1.0, 1, round=0)
    store.put("run-1", 0, "abc", arrays, {}, event, ("nonce", 4))
    got, metrics, replayed = store.get("run-1", 0, "abc", "nonce")
    assert store.charges_proven("nonce") == 5 and store.charges_proven("another ledger") == 0
    assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in arrays.items()}
    assert replayed == event and metrics == {}
    assert store.get("run-1", 0, "another request", "nonce") is None and store.get("run-2", 0, "abc", "nonce") is None
    assert store.get("run-1", 0, "abc", "another ledger") is None  # helper-101 L3: another cohort's answer


def test_no_run_a_coordinator_may_name_shares_another_runs_stored_replies(tmp_path):
    """The ninth review's F4: a run named '_unnamed-run' was answered from the store kept for
    requests naming no run, and runs 'é1' and 'ü1' shared one file name."""
    import pytest

    from fedsyn.federation.protocol import ReplyError, _check_run_id

    store = ReplyStore(tmp_path)
    event = PrivacyEvent("gaussian-marginals", 3.0, 1.0, 1, round=0)
    store.put("", 0, "abc", {"a": np.ones(1)}, {}, event, ("nonce", 0))
    _check_run_id("_unnamed-run")  # a run id a coordinator may choose...
    assert store.get("_unnamed-run", 0, "abc", "nonce") is None  # ...is not the unnamed store
    assert store.get("", 0, "abc", "nonce") is not None
    for name in ("é1", "ü1"):
        with pytest.raises(ReplyError):
            _check_run_id(name)


def test_a_later_run_moves_the_earlier_release_aside_instead_of_overwriting_it(plan, demo_schema, tmp_path):
    release = ReleasePlan(tmp_path / "release", rows=100, audit_log=tmp_path / "audit.jsonl")
    app = make_client_app(plan.site_policy)
    short = SETTINGS.model_copy(update={"rounds": 1, "epsilon": 0.4})
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, short, release)
    first = (tmp_path / "release" / "privacy_report.json").read_text()
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, short, release)
    archived = [p for p in tmp_path.iterdir() if p.name.startswith("release.replaced-")]
    assert len(archived) == 1 and (archived[0] / "privacy_report.json").read_text() == first
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["path"] for e in entries if e["event"] == "release_archived"] == [str(archived[0])]


def test_a_refused_run_leaves_the_current_release_in_place(plan, demo_schema, tmp_path):
    """Issue 23 item 3: a run the sites cannot join (their budgets are spent) publishes nothing,
    and the release already there stays where pipelines and the dashboard look for it."""
    release = ReleasePlan(tmp_path / "release", rows=100, audit_log=tmp_path / "audit.jsonl")
    app = make_client_app(plan.site_policy)
    whole = SETTINGS.model_copy(update={"rounds": 1})  # the sites' whole max_epsilon
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, whole, release)
    first = (tmp_path / "release" / "privacy_report.json").read_text()
    with pytest.raises(FederationError, match="budget_exhausted"):
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, whole, release)
    assert (tmp_path / "release" / "privacy_report.json").read_text() == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("release.replaced-")]
    # helper-104 M3: the audit log says the run stopped, and why, and the dashboard shows it
    from fedsyn.server.ops.dashboard_state import latest_run, run_summary

    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    stopped = [e for e in entries if e["event"] == "run_failed"]
    assert len(stopped) == 1 and "budget_exhausted" in stopped[0]["reason"] and stopped[0]["resumable"] is False
    summary = run_summary(latest_run(entries))
    assert summary is not None and not summary["finished"] and "budget_exhausted" in summary["failed"]["reason"]


def test_a_release_the_disk_could_not_hold_leaves_the_earlier_one_in_place_and_resumes(plan, demo_schema, tmp_path,
                                                                                      monkeypatch):
    """helper-104 H1: a disk that filled while generator.pt was written left a cut release at the
    published path, the good one moved aside, and the run said no release was written. The release
    is now written whole beside it first; the run says what happened and `--resume` writes it
    without charging any site again."""
    import errno

    from fedsyn.server import release as release_module

    release = ReleasePlan(tmp_path / "release", rows=100, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    short = SETTINGS.model_copy(update={"rounds": 1, "epsilon": 0.4})
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, short, release)
    first = (tmp_path / "release" / "privacy_report.json").read_text()
    original = release_module.save_checkpoint

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(release_module, "save_checkpoint", full_disk)
    with pytest.raises(FederationError, match=r"ENOSPC\)\): is the disk full or read-only") as failed:
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, short, release)
    assert failed.value.resumable and "--resume" in str(failed.value)
    assert (tmp_path / "release" / "privacy_report.json").read_text() == first  # untouched, in place
    assert sorted(p.name for p in tmp_path.iterdir() if "release" in p.name and p.name != "release") == []
    charged = [len(ledger.events) for ledger in _ledgers(plan)]
    monkeypatch.setattr(release_module, "save_checkpoint", original)
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, short, release, resume=True)
    assert [len(ledger.events) for ledger in _ledgers(plan)] == charged  # written, nothing charged again
    assert (tmp_path / "release" / "generator.pt").is_file()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("release.replaced-")]) == 1


def test_a_state_the_disk_could_not_hold_stops_the_run_with_its_way_forward(plan, demo_schema, tmp_path,
                                                                            monkeypatch):
    """helper-108 M8: a full disk under the state folder gave Flower a 40-line traceback, no
    `run_failed` entry and no word of `--resume`. The run now stops on a FederationError naming
    the folder and the errno, recorded as resumable, and `--resume` finishes it."""
    import errno

    release = ReleasePlan(tmp_path / "release", rows=100, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    original, saves = coordinator_module.save_state, []

    def fills_the_disk(directory, state):
        saves.append(directory)
        if len(saves) == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / STATE_FILE))
        return original(directory, state)

    monkeypatch.setattr(coordinator_module, "save_state", fills_the_disk)
    with pytest.raises(FederationError, match=r"state could not be saved in .*ENOSPC on .*: is the disk full") as stop:
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release)
    assert stop.value.resumable and "--resume" in str(stop.value)
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["resumable"] for e in entries if e["event"] == "run_failed"] == [True]
    monkeypatch.setattr(coordinator_module, "save_state", original)
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release, resume=True)
    assert (tmp_path / "release" / "generator.pt").is_file()


def test_a_node_that_comes_back_under_another_name_is_said_and_recorded(plan, demo_schema, tmp_path, caplog):
    """helper-108 M4: a fourth hospital holding a copy of site 1's auth key, and a site renamed
    between runs, were adopted in silence; the release named the new name for the registered node."""
    import logging

    release = ReleasePlan(tmp_path / "release", rows=100, audit_log=tmp_path / "audit.jsonl")
    app = make_client_app(plan.site_policy)
    short = SETTINGS.model_copy(update={"rounds": 1, "epsilon": 0.4})
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, short, release)
    raw = json.loads(plan.policies[1].read_text())
    plan.policies[1].write_text(json.dumps({**raw, "site_id": "hosp-3"}))
    with caplog.at_level(logging.WARNING, logger="fedsyn.server"):
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, short, release)
    assert f"called itself '{raw['site_id']}'" in caplog.text and "now calls itself 'hosp-3'" in caplog.text
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["before"], e["site"]) for e in entries if e["event"] == "site_renamed"] == [(raw["site_id"], "hosp-3")]


def test_a_site_refusing_before_it_names_itself_is_logged_by_its_last_name(plan, demo_schema, tmp_path, caplog):
    """helper-120 M6: a site whose ledger was corrupt refused the budget query and was logged as
    node-ID, while `sites list` and the audit log knew it by name."""
    import logging

    release = ReleasePlan(tmp_path / "release", rows=100, audit_log=tmp_path / "audit.jsonl")
    app = make_client_app(plan.site_policy)
    short = SETTINGS.model_copy(update={"rounds": 1, "epsilon": 0.4, "min_sites": 2})
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, short, release)
    name = json.loads(plan.policies[1].read_text())["site_id"]
    ledger = plan.policies[1].parent / json.loads(plan.policies[1].read_text())["ledger"]
    ledger.write_text("{ not a ledger")
    with caplog.at_level(logging.WARNING, logger="fedsyn.server"):
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, short, release)
    assert f"(last named '{name}'): ledger_unavailable" in caplog.text, caplog.text


@pytest.mark.parametrize("layout", ["other files", "symlink", "empty folder"])
def test_a_release_reaches_an_out_that_holds_other_files_or_is_a_link(plan, demo_schema, tmp_path, layout):
    """helper-105 H1: the release written whole beside OUT was renamed onto it, which failed, after
    every site had paid, where OUT held other files or was a symlink (or a mount point): the
    release is moved into such an OUT file by file, as it was written there before."""
    target = tmp_path / "volume"
    target.mkdir()
    out = tmp_path / "release"
    if layout == "symlink":
        out.symlink_to(target, target_is_directory=True)
    else:
        out.mkdir()
        if layout == "other files":
            (out / "NOTES.txt").write_text("the team's own notes")
    short = SETTINGS.model_copy(update={"rounds": 1, "epsilon": 0.4})
    run_federation(InProcessGrid(make_client_app(plan.site_policy), len(plan.policies)), demo_schema, short,
                   ReleasePlan(out, rows=100, audit_log=tmp_path / "audit.jsonl"))
    assert (out / "privacy_report.json").is_file() and (out / "generator.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".writing")]
    if layout == "symlink":
        assert out.is_symlink() and (target / "synthetic.csv").is_file()
    if layout == "other files":
        assert (out / "NOTES.txt").read_text() == "the team's own notes"


def test_the_dashboard_shows_a_resumed_run_as_running_not_as_stopped():
    """helper-105 M1: a run resumed after its failure showed 'stopped' for its whole resumed life."""
    from fedsyn.server.ops.dashboard_state import run_summary

    failed = [{"event": "run_configured", "run": "a", "settings": {}},
              {"event": "run_failed", "run": "a", "reason": "the release could not be written", "resumable": True}]
    assert run_summary(failed)["failed"]["reason"] == "the release could not be written"
    assert run_summary([*failed, {"event": "run_resumed", "run": "a"}])["failed"] is None
    again = [*failed, {"event": "run_resumed", "run": "a"}, {"event": "run_failed", "run": "a", "reason": "quorum"}]
    assert run_summary(again)["failed"]["reason"] == "quorum"


def test_the_dashboard_counts_a_round_accepted_again_after_a_resume_once():
    """helper-104 Low: a site's accepted rounds read [0, 1, 1, 2, 3] after a resume."""
    from fedsyn.server.ops.dashboard_state import site_views

    entries = [{"event": "run_configured", "run": "a", "settings": {}},
               *({"event": "update_accepted", "run": "a", "round": r, "node": 1, "site": "h1"} for r in (0, 1, 1, 2))]
    assert site_views(entries)[0]["rounds_accepted"] == [0, 1, 2]


def test_a_failed_runs_interim_releases_leave_the_earlier_release_and_no_mix_of_runs(plan, demo_schema, tmp_path):
    """helper-100 M-3: with interim releases beside the release, a later run that failed after its
    first interim had moved the finished release aside, and left the earlier run's round-002 beside
    its own round-001."""
    release = ReleasePlan(tmp_path / "release", rows=100, every=1, audit_log=tmp_path / "audit.jsonl")
    app = make_client_app(plan.site_policy)
    three = SETTINGS.model_copy(update={"epsilon": 0.3})  # rounds 1-3, interims after rounds 1 and 2
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, three, release)
    first = (tmp_path / "release" / "privacy_report.json").read_text()
    assert sorted(p.name for p in tmp_path.glob("release.round-*")) == ["release.round-001", "release.round-002"]
    with pytest.raises(CoordinatorCrash):
        run_federation(CrashingGrid(app, len(plan.policies), crash_at=2), demo_schema, three, release)
    assert (tmp_path / "release" / "privacy_report.json").read_text() == first  # still where it was
    assert sorted(p.name for p in tmp_path.glob("release.round-???")) == ["release.round-001"]  # the failed run's
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("release.round-") and ".replaced-" in p.name]) == 2


def test_a_resumed_run_keeps_the_interim_releases_it_wrote_before_it_stopped(plan, demo_schema, tmp_path):
    """helper-100 Low: resumed, a run moved its own round-001 aside as an earlier run's, so the
    folders beside the release no longer held the run's every interim release."""
    release = ReleasePlan(tmp_path / "release", rows=100, every=1, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    with pytest.raises(CoordinatorCrash):
        run_federation(CrashingGrid(app, len(plan.policies), crash_at=2), demo_schema, SETTINGS, release)
    before = (tmp_path / "release.round-001" / "privacy_report.json").read_text()
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release, resume=True)
    assert (tmp_path / "release.round-001" / "privacy_report.json").read_text() == before
    assert sorted(p.name for p in tmp_path.glob("release.round-*")) == ["release.round-001", "release.round-002"]


def test_the_coordinator_fits_the_generator_to_every_sites_tables_before_round_one(plan, demo_schema, tmp_path,
                                                                                    monkeypatch):
    """With table_steps the coordinator fits the fresh generator once, after the sites' slots and
    their own tables are set (so their terms are part of the fit), and says so in the audit log."""
    fitted: list[tuple[int, bool]] = []
    original = GANTrainer.fit_tables

    def watched(trainer: GANTrainer, steps: int, rng=None) -> None:
        fitted.append((steps, trainer.slot_weights is not None and bool(trainer.matcher.slot_softmax)))
        original(trainer, steps, rng)

    monkeypatch.setattr(GANTrainer, "fit_tables", watched)
    release = ReleasePlan(tmp_path / "release", rows=100, audit_log=tmp_path / "audit.jsonl")
    settings = SETTINGS.model_copy(update={"rounds": 1, "table_steps": 10})
    run_federation(InProcessGrid(make_client_app(plan.site_policy), len(plan.policies)), demo_schema, settings, release)
    assert fitted == [(10, True)]
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["steps"] for e in entries if e["event"] == "generator_fitted_to_tables"] == [10]


def test_the_release_samples_from_the_closest_round_also_across_a_restart(plan, demo_schema, tmp_path, monkeypatch):
    """The release's generator is the second-half round whose rows sit closest to the noisy
    tables; a round chosen before a restart stays a candidate after it (it is saved). The
    misfits are scripted so that the round before the restart is the closest."""
    scripted = iter([0.1, 0.2])  # rounds 3 and 4 (rounds 1 and 2 are too early to be candidates)
    monkeypatch.setattr(coordinator_module, "release_misfit", lambda trainer, rng: next(scripted))
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    settings = SETTINGS.model_copy(update={"rounds": 4, "table_steps": 20})
    with pytest.raises(CoordinatorCrash):  # dies once round 4 was answered, after round 3 was saved
        run_federation(CrashingGrid(app, len(plan.policies), crash_at=4), demo_schema, settings, release)
    coordinator = run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, settings, release, resume=True)
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {e["round"]: e["misfit"] for e in entries if e["event"] == "round_finished" and "misfit" in e} == \
        {3: 0.1, 4: 0.2}
    assert [e["round"] for e in entries if e["event"] == "release_model_chosen"] == [3]
    # Fitted to the tables once, before round 1: the resumed run keeps the trained model.
    assert [e["steps"] for e in entries if e["event"] == "generator_fitted_to_tables"] == [20]
    assert coordinator.run.release_choice.round == 3
    for name, value in coordinator.trainer.sampler.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), coordinator.run.release_choice.sampler[name])


class _LateNodeGrid(CrashingGrid):
    """A grid on which one more node shows up after the budget query (it is never sent anything)."""

    LATE = 999

    def get_node_ids(self):
        return [*super().get_node_ids(), *([self.LATE] if self.answered else [])]


def test_a_site_that_joined_late_is_said_once_across_a_restart(plan, demo_schema, tmp_path):
    """A restarted coordinator said 'joined late' again for a node it had already named, and
    counted it as one of the run's sites (listed in the release, never asked anything)."""
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    with pytest.raises(CoordinatorCrash):
        run_federation(_LateNodeGrid(app, len(plan.policies), crash_at=2), demo_schema, SETTINGS, release)
    resumed = _LateNodeGrid(app, len(plan.policies))
    resumed.answered = 1  # the late node is there from the start
    coordinator = run_federation(resumed, demo_schema, SETTINGS, release, resume=True)
    assert _LateNodeGrid.LATE not in coordinator.run.sites  # not made a site of the run by the restart
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    late = [entry for entry in entries if entry.get("event") == "site_joined_late"]
    assert [entry.get("node") for entry in late] == [_LateNodeGrid.LATE]


class _RenumberedGrid(InProcessGrid):
    """The same sites under new node ids (a SuperLink that lost its database)."""

    def get_node_ids(self):
        return [node + 100 for node in super().get_node_ids()]


def test_a_resume_whose_sites_came_back_under_new_ids_says_so(plan, demo_schema, tmp_path):
    settings = SETTINGS.model_copy(update={"timeout": 10.0})  # a round fits it on loaded cores (4 s did not, at load 6)
    release, app = _crash_in_round_two(plan, demo_schema, tmp_path, settings)
    with pytest.raises(FederationError, match="3 other node.s. are connected that took no part"):
        run_federation(_RenumberedGrid(app, len(plan.policies)), demo_schema, settings, release, resume=True)


class _WithoutLastSite(InProcessGrid):
    """The run's last site has not reconnected yet."""

    def get_node_ids(self):
        return sorted(super().get_node_ids())[:-1]


def test_a_resume_waits_for_the_sites_that_can_still_train(plan, demo_schema, tmp_path):
    """site-0 spent 0.2 before, so at noise 6 one training round fits it and two fit the others;
    the coordinator dies once round 2 was answered. Resumed while site-2 is still away, the run
    used to count site-0 (done with its rounds) toward min-sites 2, ask round 2 of site-1 alone,
    stop at the quorum and release one round. It waits for site-2 instead and says which sites
    it waits for; resumed once site-2 is back, it trains round 2 and releases."""
    site = Site(SitePolicy.load(plan.policies[0]))
    site.release_marginals(gaussian_noise_for_epsilon(0.2, 1e-5), 0.2, protocol.schema_fingerprint(site.schema))
    settings = SETTINGS.model_copy(update={"noise_multiplier": 6.0, "timeout": 3.0})
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    with pytest.raises(CoordinatorCrash):
        run_federation(CrashingGrid(app, len(plan.policies), crash_at=2), demo_schema, settings, release)
    with pytest.raises(FederationError, match="only 1 of the run's site.s. that can still train connected"):
        run_federation(_WithoutLastSite(app, len(plan.policies)), demo_schema, settings, release, resume=True)
    assert not (tmp_path / "release").exists()
    coordinator = run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, settings, release,
                                 resume=True)
    assert [r.round for r in coordinator.run.rounds] == [1, 2]


def test_the_reply_store_keeps_the_newest_rounds_whole_and_the_older_ones_as_records(tmp_path):
    """A run's older training rounds keep their record (and so the proof of their charge) but not
    their model update; round 0 and the newest two rounds stay whole, and other runs are untouched.
    A default 5-site simulation kept 140 MB of updates."""
    store = ReplyStore(tmp_path)
    update = {"weights": np.ones(1000)}
    for round_ in range(4):
        event = PrivacyEvent("dp-sgd", 1.0, 0.1, 10, round=round_)
        store.put("run-1", round_, f"digest-{round_}", update, {}, event, ("nonce", round_))
    store.put("run-2", 1, "digest-1", update, {}, PrivacyEvent("dp-sgd", 1.0, 0.1, 10, round=1), ("nonce", 4))
    store.put("run-1", 4, "digest-4", update, {}, PrivacyEvent("dp-sgd", 1.0, 0.1, 10, round=4), ("nonce", 5))

    kept = {round_: store.get("run-1", round_, f"digest-{round_}", "nonce") is not None for round_ in range(5)}
    assert kept == {0: True, 1: False, 2: False, 3: True, 4: True}
    assert store.get("run-2", 1, "digest-1", "nonce") is not None
    slimmed = tmp_path / "run-1-round-00001.npz"
    assert slimmed.stat().st_size < 2000 < (tmp_path / "run-1-round-00003.npz").stat().st_size
    assert store.charges_proven("nonce") == 6


def test_a_slimmed_reply_still_proves_its_charge_and_keeps_its_time(tmp_path):
    """The record a slimmed round keeps is what proves its charge: a ledger restored from before
    rounds 1-3 (nonce "old") is still caught, and each file keeps the time of its charge (the
    proof reads the newest files). A run whose id merely starts like another's is not touched."""
    import os

    store = ReplyStore(tmp_path)
    update = {"weights": np.ones(1000)}
    for round_ in range(1, 6):
        nonce = "old" if round_ <= 3 else "new"
        store.put("run-1", round_, f"digest-{round_}", update, {}, PrivacyEvent("dp-sgd", 1.0, 0.1, 10, round=round_),
                  (nonce, round_))
        path = tmp_path / f"run-1-round-{round_:05d}.npz"
        os.utime(path, ns=(round_ * 10**9, round_ * 10**9))  # written a second apart
    lookalike = "run-1-round-00009-b"
    store.put(lookalike, 1, "digest", update, {}, PrivacyEvent("dp-sgd", 1.0, 0.1, 10, round=1), ("other", 0))
    store.put("run-1", 6, "digest-6", update, {}, PrivacyEvent("dp-sgd", 1.0, 0.1, 10, round=6), ("new", 6))

    assert store.get("run-1", 3, "digest-3", "old") is None and store.get(lookalike, 1, "digest", "other") is not None
    assert store.charges_proven("old") == 4 and store.charges_proven("new") == 7
    times = [(tmp_path / f"run-1-round-{r:05d}.npz").stat().st_mtime_ns for r in (1, 2, 3)]
    assert times == [r * 10**9 for r in (1, 2, 3)]


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04 cut short"])
def test_a_stored_reply_that_cannot_be_read_is_kept_and_the_answer_still_stored(tmp_path, content):
    """Slimming older rounds is best effort: an empty, foreign or truncated file among them is
    left as it is, and the answer being stored (already charged) is stored all the same."""
    store = ReplyStore(tmp_path)
    (tmp_path / "run-1-round-00001.npz").write_bytes(content)
    update = {"weights": np.ones(10)}
    store.put("run-1", 5, "digest-5", update, {}, PrivacyEvent("dp-sgd", 1.0, 0.1, 10, round=5), ("nonce", 5))
    assert store.get("run-1", 5, "digest-5", "nonce") is not None
    assert (tmp_path / "run-1-round-00001.npz").read_bytes() == content


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04 cut short"])
def test_an_unreadable_stored_reply_is_charged_again_and_stops_no_request(tmp_path, small_frame, content, caplog):
    """helper-101 L2: one truncated stored reply failed every request of the site, budget queries
    included, each as a possible charge at the coordinator. It is now no answer (asked again, the
    request is charged again: an over-count, never an under-count), and the site's log names it."""
    import logging

    from fedsyn.data.demo import demo_schema_path
    from fedsyn.simulations.run import prepare_sites

    plan = prepare_sites([small_frame], demo_schema_path(), tmp_path / "sites", epsilon=50.0, delta=1e-5)
    site = Site(SitePolicy.load(plan.policies[0]))
    fingerprint = protocol.schema_fingerprint(site.schema)
    site.release_marginals(30.0, 50.0, fingerprint, run_id="run-a")
    stored = next(site.replies.directory.glob("run-a-round-*.npz"))
    stored.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="fedsyn.client"):
        site = Site(site.policy)  # the proof of charges reads it
        assert site.budget().spent > 0
        site.release_marginals(30.0, 50.0, fingerprint, run_id="run-a")
    assert len(site.ledger.events) == 2 and stored.name in caplog.text


def test_a_reset_ledger_is_not_answered_with_the_earlier_cohorts_stored_tables(tmp_path, small_frame):
    """helper-101 L3: after `ledger init --reset-reason` (the extract holds other patients), the
    earlier cohort's stored round-0 tables were replayed as the site's answer, uncharged."""
    from fedsyn.client.site import initialise_ledger
    from fedsyn.data.demo import demo_schema_path
    from fedsyn.simulations.run import prepare_sites

    plan = prepare_sites([small_frame], demo_schema_path(), tmp_path / "sites", epsilon=50.0, delta=1e-5)
    site = Site(SitePolicy.load(plan.policies[0]))
    fingerprint = protocol.schema_fingerprint(site.schema)
    before, _ = site.release_marginals(30.0, 50.0, fingerprint, run_id="run-a")
    initialise_ledger(site.policy, reset_reason="new cohort")
    site = Site(site.policy)
    after, _ = site.release_marginals(30.0, 50.0, fingerprint, run_id="run-a")
    assert len(site.ledger.events) == 1  # charged to the new ledger
    assert any(not np.array_equal(before.arrays[k], after.arrays[k]) for k in before.arrays)


def test_a_run_waiting_for_its_sites_says_how_many_it_has(plan, demo_schema, tmp_path, monkeypatch, caplog):
    """helper-77 and helper-78: `fedsyn server plan` with one site of two online printed nothing
    for five minutes (it waits up to settings.timeout, an hour by default)."""
    import logging

    monkeypatch.setattr(coordinator_module, "WAITING_SAID_EVERY_S", 0.4)
    settings = SETTINGS.model_copy(update={"min_sites": 3, "timeout": 1.5})
    release = ReleasePlan(tmp_path / "release", rows=300)
    with caplog.at_level(logging.INFO, logger="fedsyn.server"), pytest.raises(FederationError):
        run_federation(_WithoutLastSite(make_client_app(plan.site_policy), len(plan.policies)), demo_schema,
                       settings, release)
    assert "waiting for sites: 2 of the 3 needed connected, giving up in" in caplog.text


def test_a_resume_after_a_failed_round_reports_that_rounds_possible_charge(plan, demo_schema, tmp_path):
    """helper-78: a site charged for round 1 failed before its reply left; the round missed its
    quorum and the run stopped, saved as of round 0. Resumed, the report gave the site's epsilon
    this run without that charge, and not as a lower bound. The failed round's possible charge is
    in the audit log, and a resume reads it from there."""
    settings = SETTINGS.model_copy(update={"min_sites": 3})
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    answered = []

    def lose_first_sites_round_one(reply):
        if reply.metadata.src_node_id == 1001:
            answered.append(reply)  # the budget query, round 0's two releases, then round 1
            if len(answered) == 4:
                return None
        return reply

    app = make_client_app(plan.site_policy)
    with pytest.raises(FederationError, match="round 1"):
        run_federation(InProcessGrid(app, len(plan.policies), lose_first_sites_round_one), demo_schema, settings,
                       release)
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, settings, release, resume=True)
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    first = next(site for site in report["sites"] if site["node_id"] == 1001)
    # the resumed run's round 1 was the site's stored answer or a new charge: either way its own claim
    # (the cumulative figure) counts it, and this run's recomputed epsilon is said to be a lower bound
    assert first["possibly_charged_before_resume"] == [1] and first["epsilon_this_run_is_lower_bound"], first
    assert not first["unconfirmed_rounds"] and not first["epsilon_cumulative_is_upper_bound"], first
    assert all(not site["possibly_charged_before_resume"] and not site["epsilon_this_run_is_lower_bound"]
               for site in report["sites"] if site["node_id"] != 1001)


def test_a_site_whose_ledger_went_back_between_a_crash_and_the_resume_is_refused(plan, demo_schema, tmp_path):
    """helper-80: the claim a ledger went back from was checked at the budget query only, which a
    resume never asks again: a site whose state folder was lost and its ledger initialised again
    between the crash and ``--resume`` was charged from a fresh budget and accepted. Every reply's
    claim is now held to the site's earlier ones, those of the audit log included."""
    import shutil

    from fedsyn.client.site import initialise_ledger

    release, app = _crash_in_round_two(plan, demo_schema, tmp_path)
    before = _ledgers(plan)[0].epsilon()
    folder = plan.policies[0].parent
    for path in folder.iterdir():  # the state lost: ledger, trail, stored replies; policy and extract kept
        if path.name not in ("policy.json", "data.parquet"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    initialise_ledger(SitePolicy.load(plan.policies[0]))
    run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, SETTINGS, release, resume=True)
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    lost = next(site for site in report["sites"] if site["site"] == "site-0")
    assert lost["dropped"][-1]["reason"].startswith("ledger_unavailable"), lost["dropped"]
    assert lost["rounds_accepted"] == [0, 1] and lost["epsilon_cumulative"] >= before - 1e-9
    assert len(_ledgers(plan)[0].events) == 1  # charged once from its new ledger, then asked nothing more
    assert all(site["rounds_accepted"] == [0, 1, 2, 3] for site in report["sites"] if site["site"] != "site-0")


def test_only_a_run_that_saved_a_state_of_its_own_is_called_resumable(plan, demo_schema, tmp_path):
    """helper-100 M-1: a run that stopped before it saved anything was told to `--resume`, which
    would continue (and publish again) an earlier run's state in the same folder."""
    release = ReleasePlan(tmp_path / "release", rows=300, audit_log=tmp_path / "audit.jsonl",
                          state_dir=tmp_path / "state")
    app = make_client_app(plan.site_policy)
    too_many = SETTINGS.model_copy(update={"min_sites": 4, "timeout": 1.0})  # three sites: stopped before it saved
    with pytest.raises(FederationError) as stopped:
        run_federation(InProcessGrid(app, len(plan.policies)), demo_schema, too_many, release)
    assert not stopped.value.resumable

    trained: list[int] = []  # the training replies so far: round 1's three, then round 2's

    def lose_two_sites_from_round_two(reply):
        if reply.metadata.message_type != "train":
            return reply
        trained.append(reply.metadata.src_node_id)
        return None if len(trained) > 3 and reply.metadata.src_node_id != 1001 else reply

    with pytest.raises(FederationError, match="round 2") as stopped:
        run_federation(InProcessGrid(app, len(plan.policies), lose_two_sites_from_round_two), demo_schema, SETTINGS,
                       release)
    assert stopped.value.resumable


def test_deleting_the_lock_file_lets_no_second_coordinator_drive_the_run(tmp_path):
    """helper-108 M1: an operator who took `coordinator.lock` for stale and deleted it let a
    second `server run --resume` lock a new file and drive the run beside the first. The lock is
    the state folder's own."""
    with holding_run(tmp_path, "4242"):
        (tmp_path / "coordinator.lock").unlink()
        assert lock_holder(tmp_path) == {}  # held, its holder's note gone
        with pytest.raises(ConfigurationError, match="another coordinator process drives the run"):
            with holding_run(tmp_path, "5151", wait=0.5):
                pass
    with holding_run(tmp_path, "6161"):
        assert lock_holder(tmp_path) == {"pid": os.getpid(), "flower_run": "6161"}
