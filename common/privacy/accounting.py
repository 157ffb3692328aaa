"""Privacy ledger: every Gaussian mechanism a site ran on its records, and what it cost.

Each entry is a sub-sampled Gaussian mechanism (noise multiplier, sample rate, steps), the
form in which both DP-SGD steps and the noisy marginal histograms are charged. The total
(epsilon, delta) is always recomputed from the full history with an Opacus accountant
(RDP by default, PRV optionally), so composition across rounds is never approximated by
adding epsilons. Budgets are enforced *before* a mechanism runs: see
:meth:`PrivacyLedger.affordable_steps`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedsyn.errors import PrivacyRefusal
from fedsyn.files import write_atomically
from fedsyn.privacy.budget import is_budget
from fedsyn.privacy.randomness import fresh_nonce

AccountantName = Literal["rdp", "prv"]
LEDGER_FORMAT = "fedsyn-ledger/2"

# Opacus's default RDP orders stop at 63; small budgets (a full-data Gaussian release at
# epsilon 0.1, say) are tightest at orders in the hundreds, so the grid is extended.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [
    64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 2048, 4096]


class BudgetExceededError(PrivacyRefusal, RuntimeError):
    """Running the requested mechanism would spend more privacy than the budget allows."""


class RequestCapExceededError(BudgetExceededError):
    """The budget allows the mechanism, but it would spend more in one request than the site
    lets any single request spend."""


@dataclass(frozen=True)
class PrivacyEvent:
    """One run of a (sub-sampled) Gaussian mechanism on a site's records.

    ``noise_multiplier`` is the noise standard deviation divided by the L2 sensitivity.
    ``sample_rate`` is the Poisson sampling probability (1.0 for a full-data release).
    """

    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    round: int | None = None

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.noise_multiplier, self.sample_rate)):
            raise ValueError(f"privacy event parameters must be finite: {self}")
        if self.noise_multiplier <= 0:
            raise ValueError(f"noise multiplier must be positive, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 0:
            raise ValueError(f"steps must be non-negative, got {self.steps}")


def rdp_orders(events: Iterable[PrivacyEvent]) -> list[float]:
    """The RDP orders used for ``events``: all of them for full-data releases only; up to
    256 once a sub-sampled mechanism is involved (its curve costs O(order) per order, and
    its optimum lies far below 256 for any useful budget). Fewer orders can only loosen,
    never understate, epsilon."""
    if all(e.sample_rate == 1.0 for e in events):
        return RDP_ORDERS
    return [order for order in RDP_ORDERS if order <= 256]


# Beyond this epsilon the RDP bound is used under the PRV accountant too: it is a valid upper
# bound, no budget comes near it, and PRV's grid stalls or fails on the mechanisms that reach
# it (a noise multiplier of 1e-3, or 0.5 at a sample rate of 1 for 1,000 steps: helper-90 F4).
PRV_LARGEST_EPSILON = 100.0
# And beyond this many steps in all: PRV's grid grows with the steps it composes (2.6 s at 10,000
# steps, 5.9 s at 200,000, 190 s at 2,000,000 on one core), and calibrating a site's noise runs
# it a dozen times, so a coordinator's plan of 100,000 rounds stalled a PRV site for hours,
# charging nothing (helper-96). RDP is within a few % there (10,000 steps at 1.0 and 0.05:
# 50.1 against 47.2) and never below.
PRV_LARGEST_STEPS = 10_000


@lru_cache(maxsize=8192)
def _rdp_curve(sample_rate: float, noise_multiplier: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one step of the sub-sampled Gaussian at each order (Opacus's analysis); infinite
    (a valid bound) below a multiplier of 1e-100: Opacus divided by a square that is 0 in
    floating point, and just above that its series never ended (1e-158 at a sample rate of 0.2:
    helper-91)."""
    if noise_multiplier < 1e-100:
        return np.full(len(orders), np.inf)
    return np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(orders)))


def compute_epsilon(events: Iterable[PrivacyEvent], delta: float, accountant: AccountantName = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (0 for no events)."""
    merged: dict[tuple[float, float], int] = {}
    for event in events:
        if event.steps:
            key = (event.noise_multiplier, event.sample_rate)
            merged[key] = merged.get(key, 0) + event.steps
    if not merged:
        return 0.0
    history = [(sigma, rate, steps) for (sigma, rate), steps in merged.items()]
    orders = tuple(rdp_orders(PrivacyEvent("x", s, q, n) for s, q, n in history))
    rdp = sum(steps * _rdp_curve(rate, sigma, orders) for sigma, rate, steps in history)
    with warnings.catch_warnings():  # calibration probes extreme noise levels on purpose
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        epsilon, _ = get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    if accountant == "rdp" or not epsilon <= PRV_LARGEST_EPSILON or sum(merged.values()) > PRV_LARGEST_STEPS:
        return float(epsilon)
    prv = PRVAccountant()
    for sigma, rate, steps in history:  # Opacus's public interface: one call per step (it merges repeats)
        for _ in range(steps):
            prv.step(noise_multiplier=sigma, sample_rate=rate)
    # Its grid's log of 0 at the tails, and its inner RDP bound's order search at the edge: 108 warning
    # lines on a coordinator's plan (helper-120), none of which changes the bound.
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        return float(prv.get_epsilon(delta))


class LedgerError(PrivacyRefusal, RuntimeError):
    """The on-disk ledger is missing, corrupt, locked by a foreign format or bound elsewhere."""


LOCK_ATTEMPTS = 50  # a lock file replaced this many times in a row is not a cleaner's doing


def ledger_lock(ledger: Path) -> Path:
    """The lock file a charge to ``ledger`` holds (``<ledger name>.lock`` beside it): only a charge
    creates it, so it is also a trace that privacy was spent there."""
    return ledger.with_name(ledger.name + ".lock")


@contextmanager
def _held_lock(lock_path: Path) -> Iterator[TextIO]:
    """The lock file at ``lock_path``, open and exclusively locked. A lock file deleted while
    another process held it (a cleaner removing a "stale" ``.lock``) leaves that process locking
    a file no longer at the path, and the next one would lock a new file beside it: both
    charged from the same count and one charge was lost (helper-101 L1). So a lock is held only
    once the locked file is still the one at the path, and a charge checks it again right before
    it writes (:meth:`PrivacyLedger._locked`)."""
    for _ in range(LOCK_ATTEMPTS):
        lock = open(lock_path, "a")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if _is_at(lock, lock_path):
                break
        except BaseException:
            lock.close()
            raise
        lock.close()  # unlinked or replaced meanwhile: lock the file now at the path
    else:  # a file system whose files change identity between two looks at them (helper-103)
        raise LedgerError(f"the ledger's lock {lock_path} was never the same file twice in {LOCK_ATTEMPTS} attempts: "
                          "keep the ledger's folder on a local file system, where a file keeps its identity")
    try:
        yield lock
    finally:
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        lock.close()


def _is_at(opened: TextIO, path: Path) -> bool:
    """Whether the open file ``opened`` is the file at ``path`` now."""
    try:
        return os.path.samestat(os.fstat(opened.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


class PrivacyLedger:
    """The cumulative record of a site's spent privacy, optionally persisted to disk.

    With a ``path`` the file is the truth: :meth:`charge` takes an exclusive lock, re-reads
    the file, checks the budget against everything recorded there (by any process) and
    writes the new event atomically before it returns. Two runs at once therefore compose
    in the file instead of each spending the whole budget. ``protects`` names the extract
    the ledger belongs to, so a ledger cannot silently be reused for another data file.

    ``stream_nonce`` is created with the ledger (128 random bits) and keys a seeded site's
    random streams together with the seed and the event's position: a new or reset ledger
    never replays an earlier ledger's noise or Poisson batches. It is the site's private
    state, never sent or published.
    """

    def __init__(
        self,
        delta: float,
        accountant: AccountantName = "rdp",
        events: Sequence[PrivacyEvent] = (),
        path: str | Path | None = None,
        protects: str | None = None,
        stream_nonce: str | None = None,
    ):
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = delta
        self.accountant: AccountantName = accountant
        self.events: list[PrivacyEvent] = list(events)
        self.path = Path(path) if path is not None else None
        self.protects = protects
        self.stream_nonce = stream_nonce
        # The file's ``epsilon`` field as read: a summary for people, rewritten at every charge and
        # never read back into the budget (the events are); ``client status`` names an edited one.
        self.stated_epsilon: float | None = None

    def epsilon(self, extra: Sequence[PrivacyEvent] = ()) -> float:
        """Epsilon spent so far, or that would be spent after also running ``extra``."""
        return compute_epsilon([*self.events, *extra], self.delta, self.accountant)

    def affordable_steps(self, budget: float, noise_multiplier: float, sample_rate: float, limit: int) -> int:
        """The most steps (at most ``limit``) of this mechanism that keep epsilon within ``budget``.

        Epsilon grows monotonically with steps, so a binary search over the accountant
        finds the exact cut-off; training stops there instead of overshooting by a step.
        """
        def fits(steps: int) -> bool:
            return self.epsilon([PrivacyEvent("probe", noise_multiplier, sample_rate, steps)]) <= budget

        if not fits(0):
            return 0
        if fits(limit):
            return limit
        low, high = 0, limit  # fits(low) and not fits(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low

    def check(self, event: PrivacyEvent, budget: float, request_cap: float | None = None) -> None:
        """Raise BudgetExceededError unless ``event`` fits ``budget`` on top of the events known
        here, and RequestCapExceededError if ``event`` alone costs more than ``request_cap``
        (:meth:`charge` checks again under the lock, with the events on disk).

        The cap is on the event's own epsilon, not on what it adds to the total: composed, a
        later event adds less than it costs alone (the conversion's overhead is paid once), so
        a coordinator that first spent on cheap requests could otherwise have one query at little
        noise cost over twice the cap (found by a review of the cap's first version)."""
        if not is_budget(budget):  # NaN would make every comparison pass
            raise BudgetExceededError(f"the budget {budget} is not a positive finite epsilon")
        before, after = self.epsilon(), self.epsilon([event])
        said = (f"{event.mechanism} ({event.steps} step(s), noise multiplier {event.noise_multiplier:.3f}, "
                f"sample rate {event.sample_rate:.4f})")
        if after > budget:
            raise BudgetExceededError(f"{said} would raise epsilon from {before:.4f} to {after:.4f}, above the "
                                      f"budget {budget:.4f} at delta={self.delta:g}")
        alone = compute_epsilon([event], self.delta, self.accountant)
        if request_cap is not None and not alone <= request_cap:
            raise RequestCapExceededError(f"{said} costs epsilon {alone:.4f} on its own, more than the "
                                          f"{request_cap:g} this site lets one request spend")

    def charge(self, event: PrivacyEvent, budget: float, request_cap: float | None = None) -> int:
        """Record ``event`` only if the total stays within ``budget``; otherwise raise.

        Returns the event's position in the ledger (0 for the first event ever charged): a
        number no other charge of this ledger ever gets, which keys the mechanism's
        random stream.
        """
        with self._locked() as still_locked:
            self.check(event, budget, request_cap)
            still_locked()
            self.events.append(event)
            if self.path is not None:
                self.save(self.path)
            return len(self.events) - 1

    @contextmanager
    def _locked(self) -> Iterator[Callable[[], None]]:
        """Hold the ledger's exclusive lock and bring :attr:`events` and :attr:`protects` up to date
        from disk. Yields a check to call right before writing: it raises if the lock file is no
        longer the one at its path (deleted while held: another process may be charging from the
        same count)."""
        if self.path is None:
            yield lambda: None
            return
        lock_path = ledger_lock(self.path)
        with _held_lock(lock_path) as lock:
            current = self.load(self.path)
            if (current.delta, current.accountant) != (self.delta, self.accountant):
                raise LedgerError(f"ledger {self.path} changed its delta or accountant while in use")
            self.events, self.protects = current.events, current.protects

            def still_locked() -> None:
                if not _is_at(lock, lock_path):
                    raise LedgerError(f"the ledger's lock {lock_path} was deleted while a charge held it, so another "
                                      "charge may have read the same ledger: nothing was charged. Leave the .lock "
                                      "file in place (it is not stale while the site runs)")
            yield still_locked

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "delta": self.delta,
            "accountant": self.accountant,
            "protects": self.protects,
            "stream_nonce": self.stream_nonce,
            "epsilon": self.epsilon(),
            "events": [asdict(e) for e in self.events],
        }

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a ledger."""
        text = json.dumps(self.to_dict(), indent=2).encode()
        write_atomically(Path(path), lambda out: out.write(text))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: str | Path | None = None) -> PrivacyLedger:
        events = [PrivacyEvent(**e) for e in raw["events"]]
        ledger = cls(delta=raw["delta"], accountant=raw["accountant"], events=events, path=path,
                     protects=raw.get("protects"), stream_nonce=raw.get("stream_nonce"))
        stated = raw.get("epsilon")
        ledger.stated_epsilon = float(stated) if isinstance(stated, (int, float)) else None
        return ledger

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """The ledger stored at ``path``; a missing or unreadable file is a :class:`LedgerError`."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()), path=path)
        except FileNotFoundError:
            raise LedgerError(f"ledger {path} does not exist") from None
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"ledger {path} is corrupt or unreadable ({type(exc).__name__}); restore it from "
                              "backup: spent privacy must never be re-stated") from None


    @classmethod
    def create(cls, path: str | Path, delta: float, accountant: AccountantName = "rdp",
               protects: str | None = None, stream_nonce: str | None = None) -> PrivacyLedger:
        """Start an empty ledger at ``path``; refuses to overwrite one that exists.

        ``stream_nonce`` defaults to fresh randomness; only a seeded simulation, which must be
        reproducible from its seed, passes one derived from that seed."""
        path = Path(path)
        if path.exists():
            raise LedgerError(f"ledger {path} already exists; it holds spent privacy and is never overwritten")
        ledger = cls(delta=delta, accountant=accountant, path=path, protects=protects,
                     stream_nonce=fresh_nonce(stream_nonce))
        ledger.save(path)
        return ledger

    @classmethod
    def open(cls, path: str | Path, delta: float, accountant: AccountantName = "rdp",
             protects: str | None = None) -> PrivacyLedger:
        """The existing ledger at ``path``, checked against the policy's delta, accountant and
        extract. A missing ledger is refused: starting again at epsilon 0 must be an
        explicit, audited act of the operator (``fedsyn client ledger init``)."""
        path = Path(path)
        if not path.exists():
            raise LedgerError(
                f"no privacy ledger at {path}. If this site has never spent privacy on this extract, create it "
                "with `fedsyn client ledger init --config SITE_POLICY`; if it existed, restore it from backup. A "
                "policy for another federation on an extract that already has a ledger points `ledger` at that "
                "file: one extract, one ledger, one budget")
        ledger = cls.load(path)
        if ledger.delta != delta or ledger.accountant != accountant:
            raise LedgerError(
                f"ledger {path} was kept at delta={ledger.delta:g} with the {ledger.accountant} accountant; "
                f"the policy now asks for delta={delta:g} with {accountant}. Spent privacy cannot be re-stated: "
                "keep the original delta/accountant in the site policy."
            )
        if protects is not None and ledger.protects not in (None, protects):
            raise LedgerError(f"ledger {path} protects the extract {ledger.protects}, not {protects}: each "
                              "extract keeps its own ledger. If the same patients' extract was moved there, "
                              "`fedsyn client ledger move --config SITE_POLICY` carries the ledger, and all it "
                              "has spent, to it")
        return ledger

    def move_to(self, protects: str) -> str:
        """Name ``protects`` as the extract this ledger protects, under its lock; return the
        extract it named before. Everything spent stays spent: a site whose storage moved had
        no way on but a new ledger at epsilon 0 (helper-108 M5)."""
        with self._locked() as still_locked:
            before = str(self.protects)  # as the file holds it: the lock brought the ledger up to date
            still_locked()
            self.protects = protects
            if self.path is not None:
                self.save(self.path)
        return before


def calibrate_noise_multiplier(
    budget: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: Sequence[PrivacyEvent] = (),
    accountant: AccountantName = "rdp",
    tolerance: float = 1e-3,
) -> float:
    """Smallest noise multiplier so that ``prior`` plus ``steps`` DP-SGD steps fit ``budget``."""
    def epsilon_at(sigma: float) -> float:
        return compute_epsilon([*prior, PrivacyEvent("probe", sigma, sample_rate, steps)], delta, accountant)

    if compute_epsilon(prior, delta, accountant) >= budget:
        raise BudgetExceededError(f"the budget {budget} is already spent before training starts")
    low, high = 0.3, 1.0
    while epsilon_at(high) > budget:
        low, high = high, high * 2
        if high > 1e4:
            raise BudgetExceededError(f"no noise multiplier fits epsilon={budget} for {steps} steps")
    while high - low > tolerance:
        middle = (low + high) / 2
        low, high = (low, middle) if epsilon_at(middle) <= budget else (middle, high)
    return high


def gaussian_noise_for_epsilon(epsilon: float, delta: float, accountant: AccountantName = "rdp") -> float:
    """Noise multiplier of a single full-data Gaussian release that costs ``epsilon`` alone."""
    return calibrate_noise_multiplier(epsilon, delta, sample_rate=1.0, steps=1, accountant=accountant)
