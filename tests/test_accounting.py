"""The ledger's epsilon against an independent implementation, and budget enforcement."""

import pytest

from fedsyn.privacy.accounting import (
    BudgetExceededError,
    LedgerError,
    PrivacyEvent,
    PrivacyLedger,
    calibrate_noise_multiplier,
    compute_epsilon,
)

from .helpers import independent_epsilon

EVENTS = [PrivacyEvent("gaussian-marginals", 25.0, 1.0, 1), PrivacyEvent("dp-sgd", 3.0, 0.05, 400),
          PrivacyEvent("dp-sgd", 3.0, 0.05, 200, round=2), PrivacyEvent("dp-sgd", 1.5, 0.2, 30, round=3)]


@pytest.mark.parametrize(("accountant", "tolerance"), [("rdp", 1e-3), ("prv", 0.02)])
def test_ledger_epsilon_matches_independent_accountant(accountant, tolerance):
    ledger = PrivacyLedger(1e-5, accountant, EVENTS)
    assert ledger.epsilon() == pytest.approx(independent_epsilon(EVENTS, 1e-5, accountant), rel=tolerance)


def test_a_prv_ledger_composes_every_step_of_rounds_at_varying_noise():
    """A coordinator may ask every round at its own noise, so each round is its own entry of a
    few steps. Under PRV every step of each is composed, as the independent accountant does; one
    step lost per entry stays within the tolerance above on EVENTS' long entries, and here would
    understate epsilon by a third (helper-110)."""
    events = [PrivacyEvent("dp-sgd", 1.0 + 0.05 * index, 0.2, 2, round=index + 1) for index in range(6)]
    assert PrivacyLedger(1e-5, "prv", events).epsilon() == pytest.approx(independent_epsilon(events, 1e-5, "prv"),
                                                                          rel=0.02)


def test_a_wrong_epsilon_would_be_caught():
    """Dropping one round from the history must change epsilon beyond the tolerance above."""
    assert PrivacyLedger(1e-5, "rdp", EVENTS[:-1]).epsilon() < independent_epsilon(EVENTS, 1e-5, "rdp") * 0.99


def test_affordable_steps_is_the_exact_cut_off():
    ledger = PrivacyLedger(1e-5, "rdp", EVENTS[:1])
    steps = ledger.affordable_steps(1.0, 2.0, 0.05, limit=100_000)
    assert 0 < steps < 100_000
    assert ledger.epsilon([PrivacyEvent("dp-sgd", 2.0, 0.05, steps)]) <= 1.0
    assert ledger.epsilon([PrivacyEvent("dp-sgd", 2.0, 0.05, steps + 1)]) > 1.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_a_coordinators_extreme_noise_is_refused_at_once_under_either_accountant(tmp_path, accountant):
    """A hostile coordinator's round 0 at a noise multiplier of 1e-3, or 1,000 full-data steps
    at 0.5, stalled the PRV accountant for minutes; 0.01 to 0.025 raised from inside it, 1e-300
    divided by zero (helper-90 F4) and 1e-158 at a sample rate of 0.2 never returned under either
    accountant (helper-91). Each is refused over budget at once, the ledger unchanged."""
    import time

    ledger = PrivacyLedger.create(tmp_path / "ledger.json", delta=1e-5, accountant=accountant)
    for event in (PrivacyEvent("gaussian-marginals", 1e-3, 1.0, 1), PrivacyEvent("dp-sgd", 0.5, 1.0, 1000),
                  PrivacyEvent("gaussian-marginals", 0.02, 1.0, 1), PrivacyEvent("gaussian-marginals", 1e-300, 1.0, 1),
                  PrivacyEvent("dp-sgd", 1e-158, 0.2, 1)):
        started = time.monotonic()
        with pytest.raises(BudgetExceededError):
            ledger.charge(event, budget=5.0)
        assert time.monotonic() - started < 5
    assert PrivacyLedger.open(tmp_path / "ledger.json", delta=1e-5, accountant=accountant).events == []


def test_a_plan_of_many_steps_is_calibrated_at_once_under_prv():
    """helper-96: PRV's grid grows with the steps it composes, and a coordinator's plan of 100,000
    rounds of 200 steps made each calibration probe minutes long (2,000,000 steps: 190 s; 1,000
    rounds, 200,000 steps, 6 s a probe, over a minute a request). Past
    PRV_LARGEST_STEPS the RDP bound is used under PRV too: valid, and never below PRV."""
    import time

    from fedsyn.privacy.accounting import PRV_LARGEST_STEPS

    started = time.monotonic()
    sigma = calibrate_noise_multiplier(5.0, 1e-5, 0.05, 1_000 * 200, accountant="prv")
    assert time.monotonic() - started < 10
    assert sigma == calibrate_noise_multiplier(5.0, 1e-5, 0.05, 1_000 * 200, accountant="rdp")
    within = [PrivacyEvent("dp-sgd", 1.0, 0.05, PRV_LARGEST_STEPS)]
    assert compute_epsilon(within, 1e-5, "prv") < compute_epsilon(within, 1e-5, "rdp")  # PRV still answers


def test_charge_refuses_and_leaves_ledger_unchanged(tmp_path):
    ledger = PrivacyLedger.create(tmp_path / "ledger.json", delta=1e-5)
    ledger.charge(EVENTS[1], budget=5.0)
    spent = ledger.epsilon()
    with pytest.raises(BudgetExceededError, match="above the budget"):
        ledger.charge(PrivacyEvent("dp-sgd", 0.5, 0.5, 1000), budget=5.0)
    reloaded = PrivacyLedger.open(tmp_path / "ledger.json", delta=1e-5)
    assert reloaded.events == [EVENTS[1]]
    assert reloaded.epsilon() == spent


def test_ledger_refuses_to_restate_delta(tmp_path):
    PrivacyLedger.create(tmp_path / "l.json", delta=1e-5).charge(EVENTS[0], budget=10.0)
    with pytest.raises(LedgerError, match="cannot be re-stated"):
        PrivacyLedger.open(tmp_path / "l.json", delta=1e-3)


def test_missing_or_corrupt_ledger_is_refused_never_restarted_at_zero(tmp_path):
    with pytest.raises(LedgerError, match="no privacy ledger.*ledger init"):
        PrivacyLedger.open(tmp_path / "missing.json", delta=1e-5)
    assert not (tmp_path / "missing.json").exists()
    PrivacyLedger.create(tmp_path / "l.json", delta=1e-5).charge(EVENTS[0], budget=10.0)
    with pytest.raises(LedgerError, match="already exists"):
        PrivacyLedger.create(tmp_path / "l.json", delta=1e-5)
    (tmp_path / "l.json").write_text((tmp_path / "l.json").read_text()[:40])  # truncated by a full disk
    with pytest.raises(LedgerError, match="corrupt"):
        PrivacyLedger.open(tmp_path / "l.json", delta=1e-5)


def test_two_ledger_handles_compose_in_the_file_and_cannot_exceed_the_budget(tmp_path):
    """Two runs at once each hold a ledger loaded before the other charged: the lock and the
    re-read under it make the second charge see the first."""
    path = tmp_path / "ledger.json"
    PrivacyLedger.create(path, delta=1e-5)
    first, second = PrivacyLedger.open(path, 1e-5), PrivacyLedger.open(path, 1e-5)
    event = PrivacyEvent("dp-sgd", 1.0, 0.1, 400)
    alone = PrivacyLedger(1e-5).epsilon([event])
    budget = alone * 1.01  # room for one such event, not two
    assert first.charge(event, budget) == 0
    with pytest.raises(BudgetExceededError):
        second.charge(event, budget)
    assert len(PrivacyLedger.load(path).events) == 1
    assert PrivacyLedger.load(path).epsilon() <= budget


def _charge_in_process(path: str, budget: float, results) -> None:
    try:
        PrivacyLedger.open(path, 1e-5).charge(PrivacyEvent("dp-sgd", 1.0, 0.1, 400), budget)
        results.put("charged")
    except BudgetExceededError:
        results.put("refused")


def test_concurrent_processes_cannot_overspend_one_ledger(tmp_path):
    import multiprocessing

    path = tmp_path / "ledger.json"
    PrivacyLedger.create(path, delta=1e-5)
    budget = PrivacyLedger(1e-5).epsilon([PrivacyEvent("dp-sgd", 1.0, 0.1, 400)] * 2) * 1.01  # room for two
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_charge_in_process, args=(str(path), budget, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes == ["charged", "charged", "refused", "refused"]
    assert PrivacyLedger.load(path).epsilon() <= budget


def test_a_lock_file_deleted_while_a_charge_holds_it_loses_no_charge(tmp_path, monkeypatch):
    """helper-101 L1: the lock file deleted (a cleaner's "stale .lock") while one charge held it
    let a second charge lock a new file and read the same ledger: both wrote one event, and one
    charge was lost. Now a charge whose lock left the path writes nothing and says so."""
    import threading
    import time

    path = tmp_path / "ledger.json"
    PrivacyLedger.create(path, delta=1e-5)
    event = PrivacyEvent("dp-sgd", 1.0, 0.1, 400)
    original, slowed = PrivacyLedger.check, threading.Event()

    def slow_check(self, *args, **kwargs):
        if not slowed.is_set():  # the first charge only
            slowed.set()
            time.sleep(1.0)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PrivacyLedger, "check", slow_check)
    outcomes: list[str] = []

    def charge() -> None:
        try:
            PrivacyLedger.open(path, 1e-5).charge(event, 100.0)
            outcomes.append("charged")
        except LedgerError as exc:
            outcomes.append("lock" if "was deleted while a charge held it" in str(exc) else repr(exc))

    first = threading.Thread(target=charge)
    first.start()
    time.sleep(0.3)
    (tmp_path / "ledger.json.lock").unlink()
    charge()
    first.join(10)
    assert sorted(outcomes) == ["charged", "lock"]
    assert len(PrivacyLedger.load(path).events) == outcomes.count("charged")


def test_a_lock_that_is_never_the_same_file_twice_is_refused_not_retried_forever(tmp_path, monkeypatch):
    """helper-103 M1: on a file system whose files change identity between two looks, the lock's
    retry spun forever and every request of the site hung."""
    from fedsyn.privacy import accounting

    path = tmp_path / "ledger.json"
    PrivacyLedger.create(path, delta=1e-5)
    monkeypatch.setattr(accounting.os.path, "samestat", lambda a, b: False)
    with pytest.raises(LedgerError, match="never the same file twice"):
        PrivacyLedger.open(path, 1e-5).charge(PrivacyEvent("dp-sgd", 1.0, 0.1, 400), 100.0)
    assert PrivacyLedger.load(path).events == []


def test_calibrated_noise_meets_budget_tightly():
    sigma = calibrate_noise_multiplier(1.0, 1e-5, 0.05, 500, prior=EVENTS[:1])
    ledger = PrivacyLedger(1e-5, "rdp", EVENTS[:1])
    assert ledger.epsilon([PrivacyEvent("dp-sgd", sigma, 0.05, 500)]) <= 1.0
    assert ledger.epsilon([PrivacyEvent("dp-sgd", sigma * 0.98, 0.05, 500)]) > 1.0


def test_nan_budget_or_parameters_are_refused_not_silently_passed():
    ledger = PrivacyLedger(1e-5)
    with pytest.raises(BudgetExceededError, match="not a positive finite"):
        ledger.charge(EVENTS[1], budget=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        PrivacyEvent("dp-sgd", float("nan"), 0.1, 1)
    assert ledger.events == []


def test_a_failed_save_keeps_the_old_file_whole_and_leaves_no_temporary(tmp_path):
    """The ledger, a site's stored replies and the coordinator's state are all written this way."""
    from fedsyn.files import write_atomically

    path = tmp_path / "ledger.json"
    write_atomically(path, lambda out: out.write(b"old"))

    def fails_half_way(out):
        out.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fails_half_way)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def test_the_prv_accountant_answers_without_warnings():
    """helper-120 L1: a coordinator's plan printed some 108 lines of Opacus warnings (a log of 0 in
    the PRV grid, the inner RDP bound's order search at its edge), burying the five that mattered."""
    import warnings

    from fedsyn.privacy.accounting import PrivacyEvent, compute_epsilon

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epsilon = compute_epsilon([PrivacyEvent("dp-sgd", 30.0, 0.3, 50), PrivacyEvent("gaussian-marginals", 5.0,
                                                                                        1.0, 1)], 1e-5, "prv")
    assert 0 < epsilon < 10 and not caught
