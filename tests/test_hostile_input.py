"""Hostile and random input: every failure is a clear, typed error, never a crash or a silent drop.

Property-based (hypothesis) for schema parsing, frame validation, the encoder and message
decoding on both sides; a bounded fuzz run of the CSV/Parquet loader on random and
truncated files.
"""

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from fedsyn.client.app import _decode_request
from fedsyn.client.site import PolicyRefusal
from fedsyn.data.schema import Schema, SchemaError
from fedsyn.data.tables import DataFileError, read_table
from fedsyn.data.validation import validate_frame
from fedsyn.federation import protocol

FUZZ_CASES = 300
json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(json_values, st.fixed_dictionaries({"columns": st.lists(
    st.dictionaries(st.sampled_from(["name", "kind", "lower", "upper", "categories", "transform"]), json_values),
    max_size=3)})))
def test_schema_parser_only_raises_schema_errors(tmp_path, raw):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(raw))
    try:
        Schema.load(path)
    except SchemaError as exc:
        assert str(path) in str(exc)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_validation_never_crashes_on_random_cells(demo_schema, data):
    cell = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                     st.text(max_size=5))
    rows = data.draw(st.integers(0, 6))
    frame = pd.DataFrame({c: [data.draw(cell) for _ in range(rows)] for c in demo_schema.column_names})
    report = validate_frame(frame, demo_schema)
    assert report.n_rows == rows


float_arrays = st.one_of(
    arrays(st.sampled_from([np.float32, np.float64, np.float16]), array_shapes(max_dims=3),
           elements=st.floats(allow_nan=True, allow_infinity=True, width=16)),
    arrays(np.int32, array_shapes(max_dims=2), elements=st.integers(-5, 5)))


@settings(max_examples=200, deadline=None)
@given(named=st.dictionaries(st.sampled_from(["generator.head.weight", "x", "discriminator.net.0.bias"]),
                             float_arrays, max_size=3))
def test_coordinator_decoding_of_site_arrays_only_raises_reply_errors(named):
    expected = {"generator.head.weight": ((4, 3), np.dtype(np.float32)),
                "discriminator.net.0.bias": ((3,), np.dtype(np.float32))}
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in named.items()})
    try:
        decoded = protocol.from_array_record(record, expected)
    except protocol.ReplyError:
        return
    assert set(decoded) == set(expected)
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in decoded.values())


VALID_EVENT = {"mechanism": "dp-sgd", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 8, "round": 1,
               "epsilon_spent": 0.5, "delta": 1e-5, "site": "a"}
VALID_CONFIG = {"round": 1, "total_rounds": 3, "local_steps": 4, "sample_rate": 0.1, "epsilon": 1.0,
                "gan_config": json.dumps({"latent_dim": 8, "generator_hidden": [8]}), "transport_dtype": "float32",
                protocol.SCHEMA_HASH: "0" * 64}
any_value = st.one_of(st.floats(allow_nan=True), st.integers(-10, 10**9), st.text(max_size=12))


@settings(max_examples=200, deadline=None)
@given(changed=st.dictionaries(st.sampled_from(sorted(protocol.PRIVACY_FIELDS) + ["rows", "data"]), any_value,
                               max_size=3),
       removed=st.sets(st.sampled_from(sorted(VALID_EVENT)), max_size=2))
def test_coordinator_decoding_of_privacy_events_only_raises_reply_errors(changed, removed):
    """A valid event with some fields changed, added or removed: decoded and sane, or a ReplyError."""
    fields = {k: v for k, v in {**VALID_EVENT, **changed}.items() if k not in removed}
    try:
        event, claimed, delta, _ = protocol.decode_event(ConfigRecord(fields))
    except protocol.ReplyError:
        assert changed or removed  # the untouched valid event must decode
        return
    assert set(fields) <= protocol.PRIVACY_FIELDS
    assert event.noise_multiplier > 0 and 0 < event.sample_rate <= 1 and event.steps >= 0 and 0 < delta < 1
    assert math.isfinite(claimed) and claimed >= 0  # the signed report's epsilon is built from it


@pytest.mark.parametrize("claim", [float("nan"), float("inf"), -5.0])
def test_a_site_claim_of_no_usable_epsilon_is_a_reply_error(claim):
    """Found by the session-21 privacy review: a claim of NaN made the site's epsilon_cumulative
    and max_epsilon_any_site NaN in the signed report (invalid JSON); -5 and inf were taken too.
    As a ReplyError the reply is unconfirmed, and the site reported at its cap."""
    with pytest.raises(protocol.ReplyError, match="claims a ledger"):
        protocol.decode_event(ConfigRecord({**VALID_EVENT, "epsilon_spent": claim}))


def test_privacy_event_with_an_undeclared_field_is_rejected():
    with pytest.raises(protocol.ReplyError, match="undeclared"):
        protocol.decode_event(ConfigRecord({**VALID_EVENT, "rows": 300}))


@settings(max_examples=200, deadline=None)
@given(changed=st.dictionaries(st.sampled_from(sorted(VALID_CONFIG) + ["noise_multiplier"]), st.one_of(
    any_value, st.just(json.dumps({"latent_dim": 10**6, "generator_hidden": [8]}))), max_size=3),
       removed=st.sets(st.sampled_from(sorted(VALID_CONFIG)), max_size=2))
def test_site_decoding_of_coordinator_instructions_refuses_cleanly(changed, removed):
    """A valid instruction with some fields changed or removed: a sane request, or a refusal."""
    config = {k: v for k, v in {**VALID_CONFIG, **changed}.items() if k not in removed}
    try:
        request = _decode_request(ConfigRecord(config))
    except PolicyRefusal:
        assert changed or removed  # the untouched valid instruction must decode
        return
    assert request.local_steps >= 1 and 0 < request.sample_rate <= 1 and math.isfinite(request.epsilon)
    assert request.epsilon > 0 and (request.noise_multiplier is None or request.noise_multiplier > 0)


def test_fuzzed_and_truncated_files_give_clear_errors(tmp_path, demo_frame, demo_schema):
    """Random bytes and truncated real files: DataFileError, or a table validation can judge."""
    rng = np.random.default_rng(0)
    csv_bytes = demo_frame.head(200).to_csv(index=False).encode()
    parquet = io.BytesIO()
    demo_frame.head(200).to_parquet(parquet)
    parquet_bytes = parquet.getvalue()
    outcomes = {"error": 0, "table": 0}
    for case in range(FUZZ_CASES):
        source, suffix = [(csv_bytes, ".csv"), (parquet_bytes, ".parquet")][case % 2]
        kind = case % 3
        if kind == 0:
            data = rng.bytes(int(rng.integers(0, 400)))
        elif kind == 1:
            data = source[: int(rng.integers(0, len(source)))]
        else:
            mutated = bytearray(source)
            for position in rng.integers(0, len(mutated), 5):
                mutated[position] = int(rng.integers(0, 256))
            data = bytes(mutated)
        path = tmp_path / f"case{case}{suffix}"
        path.write_bytes(data)
        try:
            frame = read_table(path, demo_schema)
        except DataFileError as exc:
            assert str(path) in str(exc)
            outcomes["error"] += 1
            continue
        validate_frame(frame, demo_schema)  # must judge it, whatever came out
        outcomes["table"] += 1
    assert sum(outcomes.values()) == FUZZ_CASES and outcomes["error"] > 0 and outcomes["table"] > 0


def test_infinite_step_count_in_a_privacy_event_is_a_reply_error():
    """Found by hypothesis: int(inf) raised OverflowError past the decoder."""
    with pytest.raises(protocol.ReplyError, match="malformed"):
        protocol.decode_event(ConfigRecord({"mechanism": "dp-sgd", "noise_multiplier": 1.0, "sample_rate": 0.1,
                                            "steps": float("inf"), "epsilon_spent": 0.0, "delta": 1e-5}))
