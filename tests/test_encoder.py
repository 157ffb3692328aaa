import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsyn.data.grid import to_precision
from fedsyn.data.schema import Column, ColumnKind, Schema
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


def test_a_continuous_columns_bounds_come_back_exactly_in_their_share():
    """A continuous column bounded 0-6000 whose values are 0 in 20 % of rows and 45 (an assay's
    upper limit) in 30 %: rows drawn through its encoding keep both atoms exactly, in their
    shares, and encode them inside their atoms' shares. Before, the zeros came back spread
    over the first bin ([0, 1.5)) and the limit as 44.5-44.98, never as the bounds."""
    schema = Schema(name="atoms", outcome="admitted", columns=[
        Column(name="lab", kind="continuous", lower=0, upper=45),
        Column(name="admitted", kind="categorical", categories=["no", "yes"])])
    rng = np.random.default_rng(0)
    share = rng.random(4000)
    lab = np.where(share < 0.2, 0.0, np.where(share < 0.5, 45.0, rng.uniform(1, 40, 4000)))
    frame = pd.DataFrame({"lab": lab, "admitted": rng.choice(["no", "yes"], 4000)})
    encoder = TableEncoder(schema, exact_counts(frame, schema))
    start = next(s for s in encoder.spans if s.column == "lab").start
    encoded = encoder.encode(frame)[:, start]
    assert np.all(np.abs(encoded[lab == 0] - (0.2 - 1)) < 0.03) and np.all(np.abs(encoded[lab == 45] - 0.7) < 0.03)
    drawn = np.zeros((20000, encoder.dim), dtype=np.float32)
    drawn[:, start] = rng.uniform(-1, 1, 20000)
    values = encoder.decode(drawn)["lab"]
    assert abs(float((values == 0).mean()) - 0.2) < 0.02 and abs(float((values == 45).mean()) - 0.3) < 0.02
    assert float(((values > 0) & (values < 0.9)).mean()) < 0.005  # no spread-out zeros


def test_values_come_back_at_their_declared_precision_and_the_bounds_stay_atoms():
    """Age recorded to one decimal between 6.5 and 11, an integer recorded to the nearest 2, and
    a lab value to a quarter with a bound (0.03) off the quarters: every decoded value is a
    multiple of its precision, written without float residue (6.8, not 6.800000000000001),
    except a value at a bound, which stays the bound."""
    schema = Schema(name="precision", outcome="admitted", columns=[
        Column(name="age", kind="continuous", lower=6.5, upper=11, precision=0.1),
        Column(name="income", kind="integer", lower=0, upper=200, precision=2),
        Column(name="lab", kind="continuous", lower=0.03, upper=45, precision=0.25),
        Column(name="admitted", kind="categorical", categories=["no", "yes"])])
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": np.round(rng.uniform(6.5, 11, 2000), 1), "income": 2 * rng.integers(0, 101, 2000),
                          "lab": np.where(rng.random(2000) < 0.2, 0.03, np.round(rng.uniform(0, 45, 2000) * 4) / 4),
                          "admitted": rng.choice(["no", "yes"], 2000)})
    frame["lab"] = frame["lab"].clip(0.03, 45)
    encoder = TableEncoder(schema, exact_counts(frame, schema))
    drawn = encoder.decode(rng.uniform(-1, 1, size=(5000, encoder.dim)).astype(np.float32))
    for name, step in (("age", 0.1), ("income", 2), ("lab", 0.25)):
        values = drawn[name].to_numpy(dtype=float)
        off = values[(values != schema.column(name).lower) & (values != schema.column(name).upper)]
        assert np.allclose(off / step, np.round(off / step), atol=1e-9), name
        assert np.all(off == np.round(off, 2)), name  # no float residue in what is written out
    assert (drawn["lab"] == 0.03).mean() > 0.1  # the lower bound, off the quarters, is kept as an atom
    assert 0.8 < (drawn["income"] % 4 == 0).mean() / (drawn["income"] % 4 == 2).mean() < 1.25  # rounded once
    assert set(np.round(drawn["age"].to_numpy(dtype=float) * 10) / 10) <= set(np.round(np.arange(65, 111) / 10, 1))


def test_an_even_step_on_an_integer_column_is_rounded_once_and_its_bounds_are_not_atoms():
    """An integer column recorded to the nearest 2 between 1 and 99: decoded values are even,
    every even value equally likely (rounding to whole numbers first, then to the step, gave
    multiples of 4 three times the mass of the others), and the odd bounds never come back
    (an integer column has no atoms), nor does a value just below a bound that sits a hair above
    a multiple of the step."""
    even = Column(name="dose", kind="integer", lower=1, upper=99, precision=2)
    values = to_precision(even, np.random.default_rng(0).uniform(1, 99, 200_000))
    assert np.all(values % 2 == 0) and values.min() == 2 and values.max() == 98
    by_four = np.bincount((values % 4 == 0).astype(int))
    assert 0.9 < by_four[1] / by_four[0] < 1.1
    assert to_precision(even, np.array([1.0, 99.0])).tolist() == [2.0, 98.0]
    hair = Column(name="hair", kind="continuous", lower=0.1000000001, upper=5, precision=0.1)
    assert to_precision(hair, np.array([0.12, 0.5])).min() >= hair.lower


def _categorical(name: str, levels: int, nullable: bool = False) -> Column:
    """A categorical column of ``levels`` categories (plus 'missing' if nullable): that many positions."""
    return Column(name=name, kind="categorical", categories=[f"{name}_{i}" for i in range(levels)], nullable=nullable)


def _wide_schema() -> Schema:
    """305 encoded positions, laid out so that categorical blocks run across 127/128 and
    255/256, the int8 boundaries of pandas' category codes, and one starts past 128."""
    return Schema(name="wide", outcome="after_128", columns=[
        _categorical("wide_a", 100),                                                # 0-99
        Column(name="lab_a", kind="continuous", lower=0.1, upper=100.0, transform="log", nullable=True),  # 100-102
        Column(name="age_a", kind="integer", lower=0, upper=120),                   # 103
        _categorical("wide_b", 20),                                                 # 104-123
        Column(name="pad_a", kind="continuous", lower=-5.0, upper=5.0),             # 124
        _categorical("across_128", 4, nullable=True),                               # 125-129, 'missing' at 129
        _categorical("after_128", 3),                                               # 130-132
        _categorical("wide_c", 120),                                                # 133-252
        Column(name="pad_b", kind="integer", lower=0, upper=10),                    # 253
        _categorical("across_256", 4),                                              # 254-257
        _categorical("wide_d", 40),                                                 # 258-297
        Column(name="lab_b", kind="continuous", lower=0.0, upper=50.0, nullable=True),  # 298-300
        _categorical("tail", 3, nullable=True),                                     # 301-304
    ])


def _frame_for(schema: Schema, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Every category of every column (and 'missing' where allowed) appears, so every slot
    of every block is written at least once; numerics are spread over their bounds."""
    data: dict[str, object] = {}
    for column in schema.columns:
        missing = np.arange(n) % 7 == 3 if column.nullable else np.zeros(n, dtype=bool)
        if column.is_categorical:
            values = np.resize(np.array(column.categories, dtype=object), n)
            rng.shuffle(values)
            data[column.name] = pd.Series(np.where(missing, None, values), dtype=object)
        else:
            values = rng.uniform(column.lower, column.upper, n)
            values = np.round(values) if column.kind is ColumnKind.INTEGER else values
            data[column.name] = np.where(missing, np.nan, values)
    return pd.DataFrame(data)


def _assert_encodes_one_hot_and_round_trips(schema: Schema, frame: pd.DataFrame) -> None:
    """Every softmax block holds exactly one 1.0 per row, a categorical's at its own value's
    slot (the last one for a missing value), and decoding gives back the rows."""
    encoder = TableEncoder(schema, exact_counts(frame, schema))
    encoded = encoder.encode(frame)
    for span in encoder.spans:
        if span.activation == "softmax":
            np.testing.assert_array_equal(encoded[:, span.start:span.end].sum(axis=1), 1.0, err_msg=span.column)
    for column, span in encoder.categorical_spans():
        slots = encoder.categories_with_missing(column)
        expected = frame[column.name].fillna(slots[-1]).map(slots.index).to_numpy()
        np.testing.assert_array_equal(encoded[:, span.start:span.end].argmax(axis=1), expected, err_msg=column.name)
    decoded = encoder.decode(encoded)
    for column in schema.columns:
        original, back = frame[column.name], decoded[column.name]
        if column.is_categorical:
            assert (back.isna() == original.isna()).all(), column.name
            assert (back.astype(object)[original.notna()] == original[original.notna()]).all(), column.name
        else:
            np.testing.assert_allclose(back.astype(float), original.astype(float), rtol=1e-3,
                                       atol=1e-3 * (column.upper - column.lower), equal_nan=True,
                                       err_msg=column.name)


def test_blocks_across_the_int8_code_boundaries_encode_in_their_own_columns():
    """pandas keeps category codes as int8; ``span.start + codes`` overflowed past position
    127, so a block starting beyond it raised OverflowError and one running across it wrote
    its 1.0 into another column. Blocks across 127/128 and 255/256 now land where they belong."""
    schema = _wide_schema()
    layout = TableEncoder(schema)
    starts = {span.column: span.start for _, span in layout.categorical_spans()}
    assert (starts["across_128"], starts["after_128"], starts["across_256"], layout.dim) == (125, 130, 254, 305)
    _assert_encodes_one_hot_and_round_trips(schema, _frame_for(schema, 600, np.random.default_rng(1)))


def test_fifty_column_table_of_small_categoricals_and_numerics_encodes_and_decodes():
    """The reported table: 25 five-level categoricals interleaved with 25 numerics (150
    positions) crashed in encode."""
    columns: list[Column] = []
    for i in range(25):
        columns += [_categorical(f"cat_{i}", 5), Column(name=f"num_{i}", kind="continuous", lower=0.0, upper=1.0)]
    schema = Schema(name="fifty", columns=columns)
    _assert_encodes_one_hot_and_round_trips(schema, _frame_for(schema, 300, np.random.default_rng(2)))
