"""What travels between coordinator and sites, as Flower records, and how it is checked.

This module is the single definition of the wire format: which record keys exist, what a
site may send, and the defensive decoding both sides apply. A site's reply holds exactly
three records: the model arrays (or noisy marginal counts), the declared metrics and the
privacy event; its answer to the budget query holds one (:func:`budget_record`). Anything
else is rejected.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsyn.data.grid import GRID_VERSION
from fedsyn.data.schema import Schema
from fedsyn.errors import FedsynError, public_name, public_text
from fedsyn.model.config import TRANSPORT_DTYPES, GANConfig
from fedsyn.privacy.accounting import PrivacyEvent
from fedsyn.privacy.budget import MAX_NOISE_MULTIPLIER, SiteBudget, is_budget, is_noise_multiplier, is_pairs_share

ARRAYS = "arrays"
MARGINALS = "marginals"
SLOT_MARGINALS = "slot_marginals"  # train message: every slot's site's round-0 noisy tables ("slot/column")
SITE_SLOT = "site_slot"  # train config: the receiving site's public slot in the generator's input
CONFIG = "config"
METRICS = "metrics"
PRIVACY = "privacy"
BUDGET = "budget"  # a budget reply's one record: what the site has spent and may spend (SiteBudget)

QUERY_MARGINALS = "query.marginals"
QUERY_PAIR_TABLES = "query.pair_tables"  # round 0's second release: the tables of the pairs the sites chose
PAIR_TABLES = "pair_tables"
MAX_PAIRS = 10_000  # pair tables one query may ask for (a spanning tree of 10,001 columns)
MAX_SITES = 100_000
QUERY_BUDGET = "query.budget"  # before round 0, at no cost: the site's SiteBudget
SCHEMA_HASH = "schema_sha256"  # config key: the coordinator's schema, which each site must share
RUN_ID = "run_id"  # config key: the coordinator's run; a site answers a repeated (run, round) from its store


class ErrorCode(IntEnum):
    """Why a site did not do what it was asked. Sent with a fixed, public reason text only.

    Every code but :attr:`SITE_FAILURE` and :attr:`NO_ROOM` is final for the run: asking again
    cannot succeed, so the coordinator stops asking. Nothing was charged for any of them except
    where the mechanism itself failed after the charge (:attr:`SITE_FAILURE`, counted as possibly
    charged: over-counted, never under-counted; see :func:`possibly_charged`).
    """

    MALFORMED_REQUEST = 400  # the instructions or the global model do not have the agreed form
    BUDGET_EXHAUSTED = 402  # the request would exceed the site's max_epsilon
    POLICY_REFUSED = 403  # the request breaks another rule of the site's policy
    SCHEMA_MISMATCH = 409  # the coordinator's schema differs from the site's
    DATA_INVALID = 422  # the site's extract does not pass validation against the schema
    LEDGER_UNAVAILABLE = 423  # the site's ledger is missing, corrupt or inconsistent: nothing can be charged
    SITE_FAILURE = 500  # an unexpected failure at the site (details only in its local log)
    NO_ROOM = 507  # the site's disk could not hold the answer: refused before any charge, asked again next round


FINAL_CODES = frozenset(ErrorCode) - {ErrorCode.SITE_FAILURE, ErrorCode.NO_ROOM}  # the rest are asked again
UNCHARGED_CODES = FINAL_CODES | {ErrorCode.NO_ROOM}  # sent before any charge


def possibly_charged(code: int) -> bool:
    """Whether a site that answered with error ``code`` may have charged its ledger for the
    request: after an unexpected failure, or a code this version does not know (a newer site's),
    yes; :data:`UNCHARGED_CODES` are sent before any charge."""
    return code not in UNCHARGED_CODES


# Flower's own error codes whose reason text Flower writes itself (a message, reply or node
# unavailable; an App bundle refused; a ClientApp that stopped responding): never built from an
# exception inside a site's ClientApp.
FLOWER_FIXED_TEXT_CODES = frozenset({3, 4, 5, 7, 8})
# How Flower words a site's refusal of the coordinator's App bundle (fedsyn.client.ops.trusted_app,
# raised where Flower installs the bundle): its text names the bundle's hash and contents only.
APP_REFUSED_PREFIX = "<class 'fedsyn.client.ops.trusted_app.UntrustedAppError'>:"


def kept_reason(code: int, reason: str | None) -> str:
    """An error reply's reason as the coordinator keeps it (audit log, dashboard, release): a
    fedsyn code's reason when it has the form :func:`error_reason` gives, Flower's own texts
    for :data:`FLOWER_FIXED_TEXT_CODES`, a site's refusal of the App bundle
    (:data:`APP_REFUSED_PREFIX`), and otherwise a fixed text. Flower answers an exception
    that escapes a ClientApp with its type and message (a read-only trail's OSError: a path at
    the site and whatever else the message holds, helper-84), which is no public reason."""
    known = code in {int(c) for c in ErrorCode}
    prefix = f"{ErrorCode(code).name.lower()}: " if known else None
    if prefix is not None and reason is not None and reason.startswith(prefix):
        return prefix + public_text(reason[len(prefix):])  # as long as the site may make it
    if reason and reason.startswith(APP_REFUSED_PREFIX):
        return APP_REFUSED_PREFIX + public_text(reason[len(APP_REFUSED_PREFIX):])
    if reason and code in FLOWER_FIXED_TEXT_CODES:
        return public_text(reason)
    return f"no usable answer from the site (error code {code}); the site's operator log may say why"


def error_reason(code: ErrorCode, public_text: str) -> str:
    """The reason string of an error reply: the code's name and a text of public values only."""
    return f"{code.name.lower()}: {public_text}"


def schema_fingerprint(schema: Schema) -> str:
    """SHA-256 of the schema's canonical JSON and the numeric grid's version: sites and
    coordinator must agree on it."""
    # Fields left at their defaults are omitted, so fedsyn versions that add a field still agree.
    dumped = schema.model_dump(mode="json", exclude_defaults=True)
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{GRID_VERSION}\n{canonical}".encode()).hexdigest()

# The only metrics a site reports. None is computed on real rows: the discriminator's loss
# on generated rows and the generator's loss depend on DP parameters alone.
DECLARED_METRICS = frozenset({"discriminator_fake_loss", "generator_loss", "steps"})
PRIVACY_FIELDS = frozenset({"mechanism", "noise_multiplier", "sample_rate", "steps", "round", "epsilon_spent",
                            "delta", "site"})
BUDGET_FIELDS = frozenset({"epsilon_spent", "max_epsilon", "delta", "site", "max_epsilon_per_request"})
NO_REQUEST_CAP = 0.0  # max_epsilon_per_request on the wire when the site's policy sets none
MAX_ARRAY_ELEMENTS = 50_000_000


class ReplyError(FedsynError, ValueError):
    """A message does not have the agreed form; the reason says which part."""


def to_array_record(arrays: OrderedDict[str, np.ndarray] | dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def slot_marginals_record(per_slot: list[dict[str, np.ndarray]]) -> ArrayRecord:
    """Every site slot's round-0 tables (DP outputs) in one record, keyed ``"slot/column"``."""
    return to_array_record({f"{slot}/{name}": table for slot, tables in enumerate(per_slot)
                            for name, table in tables.items()})


def slot_marginals_from_record(record: ArrayRecord) -> list[dict[str, np.ndarray]]:
    """The inverse of :func:`slot_marginals_record`; slots must be numbered 0..K-1."""
    per_slot: dict[int, dict[str, np.ndarray]] = {}
    for key, value in from_array_record(record).items():
        slot, _, name = key.partition("/")
        if not slot.isdigit() or not name:
            raise ReplyError(f"slot marginals key '{key[:40]}' is not 'slot/column'")
        per_slot.setdefault(int(slot), {})[name] = value
    if sorted(per_slot) != list(range(len(per_slot))):
        raise ReplyError("slot marginals do not number their slots 0..K-1")
    return [per_slot[slot] for slot in range(len(per_slot))]


def from_array_record(
    record: ArrayRecord, expected: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None,
    optional: Callable[[str, np.ndarray], None] | None = None,
) -> OrderedDict[str, np.ndarray]:
    """Decode arrays; with ``expected`` the names, shapes and dtypes must match exactly and
    every value must be finite. Names beyond ``expected`` are accepted only where ``optional``
    (which raises ValueError for a bad one) accepts them."""
    extra = sorted(set(record.keys()) - set(expected or record.keys()))
    if expected is not None and (set(expected) - set(record.keys()) or (extra and optional is None)):
        missing = sorted(set(expected) - set(record.keys()))
        raise ReplyError(f"array names differ from the model's: missing {missing[:3]}, unexpected {extra[:3]}")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name in extra:
        value = record[name].numpy()
        if optional is None or value.dtype != np.float64 or int(np.prod(value.shape)) > MAX_ARRAY_ELEMENTS \
                or not np.isfinite(value).all():
            raise ReplyError(f"array '{name}' is not a finite float64 array of a sane size")
        try:
            optional(name, value)
        except ValueError as exc:
            raise ReplyError(str(exc)) from None
        out[name] = value
    for name in (expected if expected is not None else record.keys()):
        array = record[name]
        if int(np.prod(array.shape)) > MAX_ARRAY_ELEMENTS:
            raise ReplyError(f"array '{name}' is too large ({array.shape})")
        value = array.numpy()
        if expected is not None:
            shape, dtype = expected[name]
            if tuple(value.shape) != tuple(shape):
                raise ReplyError(f"array '{name}' has shape {tuple(value.shape)}, expected {tuple(shape)}")
            if value.dtype != dtype:
                raise ReplyError(f"array '{name}' has dtype {value.dtype}, expected {dtype}")
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
            raise ReplyError(f"array '{name}' holds NaN or infinite values")
        out[name] = value
    return out


def event_record(event: PrivacyEvent, epsilon_spent: float, delta: float, site: str) -> ConfigRecord:
    """The privacy event, the site's own epsilon claim and the name the site publishes."""
    fields = {k: v for k, v in asdict(event).items() if v is not None}
    return ConfigRecord({**fields, "epsilon_spent": float(epsilon_spent), "delta": float(delta), "site": site})


def number(value: object) -> float:
    """A scalar record value as a float; a list or bytes is a TypeError (malformed)."""
    if isinstance(value, (int, float, str)):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")


def whole(value: object) -> int:
    """A scalar record value as an int (``int(inf)`` raises OverflowError)."""
    if isinstance(value, (int, float, str)):
        return int(value)
    raise TypeError(f"expected a whole number, got {type(value).__name__}")


def decode_event(record: ConfigRecord) -> tuple[PrivacyEvent, float, float, str]:
    """The privacy event, the site's cumulative epsilon claim, its delta and its name."""
    fields = dict(record)
    unknown = set(fields) - PRIVACY_FIELDS
    if unknown:
        raise ReplyError(f"privacy record has undeclared fields {sorted(unknown)}")
    with _decoding("privacy record"):
        event = PrivacyEvent(
            mechanism=str(fields["mechanism"]),
            noise_multiplier=number(fields["noise_multiplier"]),
            sample_rate=number(fields["sample_rate"]),
            steps=whole(fields["steps"]),  # int(inf) overflows: malformed too
            round=whole(fields["round"]) if "round" in fields else None,
        )
        delta = number(fields["delta"])
        if not 0 < delta < 1:
            raise ReplyError(f"privacy record has delta {delta}, outside (0, 1)")
        claimed = number(fields["epsilon_spent"])
        if not (math.isfinite(claimed) and claimed >= 0):  # a NaN claim made the signed report's epsilon NaN
            raise ReplyError(f"privacy record claims a ledger of epsilon {claimed}, not a finite number >= 0")
        return event, claimed, delta, public_name(fields.get("site", ""))


def budget_record(budget: SiteBudget, site: str) -> ConfigRecord:
    """A site's answer to :data:`QUERY_BUDGET`: its ledger's epsilon, its policy's max_epsilon,
    max_epsilon_per_request and delta, and its name (declared public; no row is read to compute
    any of them)."""
    cap = budget.max_epsilon_per_request
    return ConfigRecord({"epsilon_spent": float(budget.spent), "max_epsilon": float(budget.max_epsilon),
                         "delta": float(budget.delta), "site": site,
                         "max_epsilon_per_request": NO_REQUEST_CAP if cap is None else float(cap)})


def decode_budget(content: RecordDict) -> tuple[SiteBudget, str]:
    """A budget reply: exactly one record of :data:`BUDGET_FIELDS`, with a usable budget. A site
    of an earlier version sends no ``max_epsilon_per_request``: read as none."""
    if set(content.keys()) != {BUDGET}:
        raise ReplyError(f"budget reply records {sorted(content.keys())} differ from the agreed ['{BUDGET}']")
    fields = dict(content.config_records[BUDGET])
    if set(fields) not in (BUDGET_FIELDS, BUDGET_FIELDS - {"max_epsilon_per_request"}):
        raise ReplyError(f"budget record fields {sorted(fields)} differ from the agreed {sorted(BUDGET_FIELDS)}")
    with _decoding("budget record"):
        cap = number(fields.get("max_epsilon_per_request", NO_REQUEST_CAP))
        budget = SiteBudget(number(fields["epsilon_spent"]), number(fields["max_epsilon"]), number(fields["delta"]),
                            None if cap == NO_REQUEST_CAP else cap)
    if not (is_budget(budget.max_epsilon) and math.isfinite(budget.spent) and budget.spent >= 0
            and 0 < budget.delta < 1 and (budget.max_epsilon_per_request is None
                                          or is_budget(budget.max_epsilon_per_request))):
        raise ReplyError(f"budget {budget} is not a spent epsilon >= 0, a positive max_epsilon and a delta in "
                         "(0, 1), with a positive max_epsilon_per_request or none")
    return budget, public_name(fields["site"])


@dataclass(frozen=True)
class MarginalsQuery:
    """Round 0: release noisy outcome tables (every column by the outcome's classes) with this
    noise multiplier, within this budget (``epsilon``: the most the site's ledger may hold
    afterwards, the site's cap for the run), for the schema with this fingerprint; ``run_id``
    lets the site answer the same query of the same run again from its store. ``pairs_share``
    of the round-0 release goes to the pair tables the ``sites`` sites of the run choose
    together (:mod:`fedsyn.privacy.pairs`): this query's answer holds the site's votes, and
    :class:`PairTablesQuery` asks for the tables; the two releases cost the one noise multiplier
    whatever the share."""

    noise_multiplier: float
    epsilon: float
    schema_sha256: str
    run_id: str = ""
    pairs_share: float = 0.0
    sites: int = 1

    def __post_init__(self) -> None:
        # NaN compares False with everything: without this a NaN budget would pass every check.
        if not (is_noise_multiplier(self.noise_multiplier) and is_budget(self.epsilon)):
            raise ReplyError(f"noise multiplier {self.noise_multiplier} and epsilon {self.epsilon} must be "
                             f"positive and finite, the noise multiplier at most {MAX_NOISE_MULTIPLIER:g}")
        if not is_pairs_share(self.pairs_share):
            raise ReplyError(f"pairs share {self.pairs_share} must be 0 or in [0.01, 1)")
        if not (isinstance(self.sites, int) and 1 <= self.sites <= MAX_SITES):
            raise ReplyError(f"sites={self.sites} is not a count of sites in 1..{MAX_SITES}")
        _check_run_id(self.run_id)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"noise_multiplier": self.noise_multiplier, "epsilon": self.epsilon,
                             SCHEMA_HASH: self.schema_sha256, RUN_ID: self.run_id, "pairs_share": self.pairs_share,
                             "sites": self.sites})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> MarginalsQuery:
        with _decoding("marginals query"):
            return cls(number(record["noise_multiplier"]), number(record["epsilon"]), str(record[SCHEMA_HASH]),
                       str(record.get(RUN_ID, "")), number(record.get("pairs_share", 0.0)),
                       whole(record.get("sites", 1)))


@dataclass(frozen=True)
class PairTablesQuery:
    """Round 0's second release: the tables of ``pairs`` (the pairs the sites voted for, the
    same for every site), numeric columns grouped by ``bounds`` (public bin indices, from the
    sites' summed noisy tables), with Gaussian noise of multiplier ``noise_multiplier`` (times
    sqrt(#pairs) per cell), within ``epsilon`` as in :class:`MarginalsQuery`. The site checks
    every pair and bound against the schema before it reads a row."""

    noise_multiplier: float
    epsilon: float
    schema_sha256: str
    pairs: tuple[tuple[str, str], ...]
    bounds: dict[str, tuple[float, ...]]
    run_id: str = ""

    def __post_init__(self) -> None:
        if not (is_noise_multiplier(self.noise_multiplier) and is_budget(self.epsilon)):
            raise ReplyError(f"noise multiplier {self.noise_multiplier} and epsilon {self.epsilon} must be "
                             f"positive and finite, the noise multiplier at most {MAX_NOISE_MULTIPLIER:g}")
        if not 1 <= len(self.pairs) <= MAX_PAIRS or len(set(self.pairs)) != len(self.pairs) \
                or not all(len(pair) == 2 and all(isinstance(name, str) for name in pair) for pair in self.pairs):
            raise ReplyError(f"pairs must be 1 to {MAX_PAIRS} distinct pairs of column names")
        if len(self.bounds) > MAX_PAIRS or not all(isinstance(name, str) and len(values) <= MAX_PAIRS
                                                   for name, values in self.bounds.items()):
            raise ReplyError("group bounds must be a few lists of bin indices by column name")
        _check_run_id(self.run_id)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"noise_multiplier": self.noise_multiplier, "epsilon": self.epsilon,
                             SCHEMA_HASH: self.schema_sha256, RUN_ID: self.run_id,
                             "pairs": json.dumps([list(pair) for pair in self.pairs]),
                             "bounds": json.dumps({name: list(values) for name, values in self.bounds.items()})})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> PairTablesQuery:
        with _decoding("pair tables query"):
            pairs = tuple((str(first), str(second)) for first, second in json.loads(str(record["pairs"])))
            listed = json.loads(str(record["bounds"]))
            if not isinstance(listed, dict):
                raise TypeError("group bounds are not a mapping of column names")
            bounds = {str(name): tuple(number(value) for value in values) for name, values in listed.items()}
            return cls(number(record["noise_multiplier"]), number(record["epsilon"]), str(record[SCHEMA_HASH]),
                       pairs, bounds, str(record.get(RUN_ID, "")))


@dataclass(frozen=True)
class TrainInstructions:
    """One training round as the coordinator asks it of a site (public values only). ``epsilon``
    is the most the site's ledger may hold after the round: the site's cap for the run
    (:meth:`~fedsyn.privacy.budget.SiteBudget.cap_for_run`), which the site checks against its
    own max_epsilon."""

    round: int
    total_rounds: int
    local_steps: int
    sample_rate: float
    epsilon: float
    noise_multiplier: float | None  # None: the site calibrates its own noise for its budget
    gan_config: GANConfig
    schema_sha256: str
    transport_dtype: str = "float32"
    site_slot: int | None = None  # the receiving site's public slot when gan_config.site_slots > 0
    run_id: str = ""  # the coordinator's run ("": none named, nothing is replayed)

    def __post_init__(self) -> None:
        # NaN compares False with everything: without this a NaN budget would pass every check.
        if not is_budget(self.epsilon):
            raise ReplyError(f"epsilon={self.epsilon} is not a positive finite budget")
        if self.noise_multiplier is not None and not is_noise_multiplier(self.noise_multiplier):
            raise ReplyError(f"noise_multiplier={self.noise_multiplier} is not a positive finite value at most "
                             f"{MAX_NOISE_MULTIPLIER:g}")
        if self.transport_dtype not in TRANSPORT_DTYPES:
            raise ReplyError(f"transport dtype '{self.transport_dtype}' is not one of {', '.join(TRANSPORT_DTYPES)}")
        if not 1 <= self.round <= self.total_rounds <= 100_000:
            raise ReplyError(f"round {self.round} of {self.total_rounds} is not a valid plan")
        if not 1 <= self.local_steps <= 100_000:
            raise ReplyError(f"local_steps={self.local_steps} is outside 1..100000")
        if not 0 < self.sample_rate <= 1:
            raise ReplyError(f"sample_rate={self.sample_rate} is outside (0, 1]")
        slots = self.gan_config.site_slots  # a template for all sites leaves the slot out; each site gets its own
        if slots and self.site_slot is not None and not 0 <= self.site_slot < slots:
            raise ReplyError(f"site slot {self.site_slot} is not one of the {slots} slots")
        if not slots and self.site_slot is not None:
            raise ReplyError(f"site slot {self.site_slot} sent for a model without site slots")
        _check_run_id(self.run_id)

    def to_record(self) -> ConfigRecord:
        fields: dict[str, Any] = {
            "round": self.round, "total_rounds": self.total_rounds, "local_steps": self.local_steps,
            "sample_rate": self.sample_rate, "epsilon": self.epsilon, "gan_config": json.dumps(asdict(self.gan_config)),
            "transport_dtype": self.transport_dtype, SCHEMA_HASH: self.schema_sha256, RUN_ID: self.run_id}
        if self.noise_multiplier is not None:
            fields["noise_multiplier"] = self.noise_multiplier
        if self.site_slot is not None:
            fields[SITE_SLOT] = self.site_slot
        return ConfigRecord(fields)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> TrainInstructions:
        with _decoding("training instructions"):
            return cls(
                round=whole(record["round"]), total_rounds=whole(record["total_rounds"]),
                local_steps=whole(record["local_steps"]), sample_rate=number(record["sample_rate"]),
                epsilon=number(record["epsilon"]),
                noise_multiplier=number(record["noise_multiplier"]) if "noise_multiplier" in record else None,
                gan_config=GANConfig.from_dict(json.loads(str(record["gan_config"]))),
                schema_sha256=str(record[SCHEMA_HASH]),
                transport_dtype=str(record.get("transport_dtype", "float32")),
                site_slot=whole(record[SITE_SLOT]) if SITE_SLOT in record else None,
                run_id=str(record.get(RUN_ID, "")),
            )


def _check_run_id(run_id: str) -> None:
    # ASCII only: 'é1' and 'ü1' were one stored reply's name (ninth review, F4)
    if len(run_id) > 64 or not all((c.isascii() and c.isalnum()) or c in "-_" for c in run_id):
        raise ReplyError("run id must be at most 64 ASCII letters, digits, '-' or '_'")


@contextmanager
def _decoding(what: str) -> Iterator[None]:
    """A missing or mistyped field is a ReplyError naming the message, never a crash."""
    try:
        yield
    except ReplyError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # JSONDecodeError is a ValueError
        raise ReplyError(f"malformed {what} ({type(exc).__name__}: {exc})") from None


def check_reply_records(content: RecordDict, payload_key: str) -> None:
    """A site's reply must hold exactly the payload arrays, declared metrics and privacy event."""
    allowed = {payload_key, PRIVACY} | ({METRICS} if payload_key == ARRAYS else set())
    keys = set(content.keys())
    if keys != allowed:
        raise ReplyError(f"reply records {sorted(keys)} differ from the agreed {sorted(allowed)}")
    if payload_key == ARRAYS:
        metrics = content.metric_records[METRICS]
        undeclared = set(metrics.keys()) - DECLARED_METRICS
        if undeclared:
            raise ReplyError(f"reply carries undeclared metrics {sorted(undeclared)}")


def metrics_record(values: dict[str, float]) -> MetricRecord:
    return MetricRecord({k: float(v) for k, v in values.items()})
