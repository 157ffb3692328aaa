import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsyn.data.schema import Column, Schema
from fedsyn.data.validation import validate_frame
from fedsyn.model.encoder import TableEncoder
from fedsyn.privacy.marginals import exact_counts, noisy_marginals


def test_round_trip_is_exact_up_to_float32(demo_frame, demo_schema):
    encoder = TableEncoder(demo_schema, noisy_marginals(demo_frame, demo_schema, 5.0, np.random.default_rng(0)))
    decoded = encoder.decode(encoder.encode(demo_frame))
    for column in demo_schema.columns:
        if column.is_categorical:
            assert (decoded[column.name].astype(str) == demo_frame[column.name].astype(str)).all()
        else:
            np.testing.assert_allclose(decoded[column.name].astype(float), demo_frame[column.name].astype(float),
                                       rtol=1e-3, equal_nan=True)  # float32 codes through a steep CDF


def test_encoder_uses_public_parameters_only(demo_frame, demo_schema):
    """Without released statistics the encoding depends on the schema alone, not on the rows."""
    a = TableEncoder(demo_schema).encode(demo_frame.head(5))
    b = TableEncoder(demo_schema).encode(demo_frame.head(5))
    np.testing.assert_array_equal(a, b)
    assert np.unique(TableEncoder(demo_schema).marginals.counts["age"]).size == 1  # flat: no statistics


def test_quantile_map_spreads_skewed_values(demo_frame, demo_schema):
    """With exact marginals, encoded kappa is about uniform on [-1, 1] (its empirical CDF)."""
    encoder = TableEncoder(demo_schema, exact_counts(demo_frame, demo_schema))
    span = next(s for s in encoder.spans if s.column == "kappa")
    values = encoder.encode(demo_frame)[:, span.start]
    assert abs(np.median(values)) < 0.1 and values.min() >= -1 and values.max() <= 1


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_generator_output_decodes_to_valid_rows(demo_schema, data):
    encoder = TableEncoder(demo_schema)
    raw = data.draw(arrays(np.float32, (7, encoder.dim), elements=st.floats(-1e6, 1e6, width=32)))
    decoded = encoder.decode(raw)
    report = validate_frame(decoded, demo_schema)
    assert report.ok, report.describe()
    assert pd.api.types.is_integer_dtype(decoded["age"])


def test_float_spelled_categories_count_and_encode_as_validation_spells_them(demo_frame, demo_schema):
    """An in-memory frame may hold flc_grp as 1.0 where the schema says '1': validation accepts it,
    so counting and encoding (after the privacy charge) must read it the same way, not fail."""
    as_text = demo_frame.head(200)
    as_float = as_text.assign(flc_grp=as_text["flc_grp"].astype(float))
    text_counts, float_counts = exact_counts(as_text, demo_schema), exact_counts(as_float, demo_schema)
    assert all(np.array_equal(text_counts.tables[k], float_counts.tables[k]) for k in text_counts.tables)
    encoder = TableEncoder(demo_schema)
    np.testing.assert_array_equal(encoder.encode(as_text), encoder.encode(as_float))


def _count_schema() -> Schema:
    """A visit count with honest public bounds far wider than the data, which is mostly 0."""
    return Schema(name="visits", outcome="admitted", columns=[
        Column(name="visits", kind="integer", lower=0, upper=365),
        Column(name="admitted", kind="categorical", categories=["no", "yes"])])


def test_count_columns_keep_their_zeros_when_sampled():
    """A count column that is 70 % zeros, bounded 0-365: rows drawn through its encoding (as
    the generator's uniform output is decoded) keep about 70 % zeros. With equal-width bins
    the zeros shared [0, 5.7) with 1-5 and most came back as other counts."""
    schema = _count_schema()
    rng = np.random.default_rng(0)
    visits = np.where(rng.random(4000) < 0.7, 0, rng.integers(1, 30, 4000))
    frame = pd.DataFrame({"visits": visits, "admitted": rng.choice(["no", "yes"], 4000)})
    encoder = TableEncoder(schema, exact_counts(frame, schema))
    drawn = np.zeros((20000, encoder.dim), dtype=np.float32)
    drawn[:, next(s for s in encoder.spans if s.column == "visits").start] = rng.uniform(-1, 1, 20000)
    zeros = float((encoder.decode(drawn)["visits"] == 0).mean())
    assert abs(zeros - 0.7) < 0.02, zeros
