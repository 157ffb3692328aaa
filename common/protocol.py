"""What travels between coordinator and sites, as Flower records, and how it is checked.

This module is the single definition of the wire format: which record keys exist, what a
site may send, and the defensive decoding both sides apply. A site's reply holds exactly
three records: the model arrays (or noisy marginal counts), the declared metrics and the
privacy event. Anything else is rejected.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsyn.common.accounting import PrivacyEvent

ARRAYS = "arrays"
MARGINALS = "marginals"
CONFIG = "config"
METRICS = "metrics"
PRIVACY = "privacy"

QUERY_MARGINALS = "query.marginals"

# The only metrics a site reports. None is computed on real rows: the discriminator's loss
# on generated rows and the generator's loss depend on DP parameters alone.
DECLARED_METRICS = frozenset({"discriminator_fake_loss", "generator_loss", "steps"})
PRIVACY_FIELDS = frozenset({"mechanism", "noise_multiplier", "sample_rate", "steps", "round", "epsilon_spent",
                            "delta", "site"})
MAX_ARRAY_ELEMENTS = 50_000_000


class ReplyError(ValueError):
    """A message does not have the agreed form; the reason says which part."""


def to_array_record(arrays: OrderedDict[str, np.ndarray] | dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_array_record(
    record: ArrayRecord, expected: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
) -> OrderedDict[str, np.ndarray]:
    """Decode arrays; with ``expected`` the names, shapes and dtypes must match exactly and
    every value must be finite."""
    if expected is not None and set(record.keys()) != set(expected):
        missing = sorted(set(expected) - set(record.keys()))
        extra = sorted(set(record.keys()) - set(expected))
        raise ReplyError(f"array names differ from the model's: missing {missing[:3]}, unexpected {extra[:3]}")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
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
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ReplyError(f"array '{name}' holds NaN or infinite values")
        out[name] = value
    return out


def event_record(event: PrivacyEvent, epsilon_spent: float, delta: float, site: str) -> ConfigRecord:
    """The privacy event, the site's own epsilon claim and the name the site publishes."""
    fields = {k: v for k, v in asdict(event).items() if v is not None}
    return ConfigRecord({**fields, "epsilon_spent": float(epsilon_spent), "delta": float(delta), "site": site})


def decode_event(record: ConfigRecord) -> tuple[PrivacyEvent, float, str]:
    """The privacy event, the site's epsilon claim and its name, after checking the fields."""
    fields = dict(record)
    unknown = set(fields) - PRIVACY_FIELDS
    if unknown:
        raise ReplyError(f"privacy record has undeclared fields {sorted(unknown)}")
    try:
        event = PrivacyEvent(
            mechanism=str(fields["mechanism"]),
            noise_multiplier=float(fields["noise_multiplier"]),
            sample_rate=float(fields["sample_rate"]),
            steps=int(fields["steps"]),
            round=int(fields["round"]) if "round" in fields else None,
        )
        return event, float(fields["epsilon_spent"]), str(fields.get("site", ""))[:64]
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # int(inf) overflows
        raise ReplyError(f"privacy record is malformed: {exc}") from None


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
