"""Schema rules that test missingness and compare two columns; missing-by-design is imposed
on every synthetic row (a design fact, public), other rules filter when asked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fedsyn.data.rules import Condition, Rule, impose_missing_by_design, violation_mask
from fedsyn.data.schema import Schema
from fedsyn.model.gan import DPTabularGAN

from .helpers import TINY

FRAME = pd.DataFrame({"sex": ["F", "M", "M", "F"], "pregnancies": [2.0, 1.0, None, None],
                      "age": [40.0, 50.0, 60.0, 30.0], "smokeyrs": [10.0, 55.0, None, 30.0]})


def test_missingness_and_column_comparisons():
    assert Condition(column="pregnancies", is_missing=True).holds(FRAME).tolist() == [False, False, True, True]
    at_most_age = Condition(column="smokeyrs", at_most_column="age").holds(FRAME)
    assert at_most_age.tolist() == [True, False, True, True]  # a missing side: the comparison does not apply
    rule = Rule(name="men have no pregnancy answer", when=Condition(column="sex", equals="M"),
                require=Condition(column="pregnancies", is_missing=True))
    assert violation_mask(FRAME, [rule]).tolist() == [False, True, False, False]
    repaired = impose_missing_by_design(FRAME, [rule])
    assert repaired["pregnancies"].isna().tolist() == [False, True, True, True] and FRAME.loc[1, "pregnancies"] == 1


def test_a_range_reads_a_nullable_integer_columns_missing_cells_as_outside():
    """A range asked of a nullable integer column (sample(condition={'prior_admissions': (1, 3)}))
    once crashed on pandas' NA; a missing cell is outside any range."""
    counts = pd.DataFrame({"prior": pd.array([1, None, 5, 3], dtype="Int64")})
    assert Condition(column="prior", between=(1, 3)).holds(counts).tolist() == [True, False, False, True]


def test_a_condition_has_exactly_one_test():
    with pytest.raises(ValidationError):
        Condition(column="age", is_missing=True, at_most_column="smokeyrs")


def _schema(demo_schema: Schema, rule: dict, nullable: bool = True) -> Schema:
    raw = demo_schema.model_dump(mode="json", exclude_none=True)
    for column in raw["columns"]:
        if column["name"] == "creatinine":
            column["nullable"] = nullable
    raw["rules"] = [rule]
    return Schema.model_validate(raw)


MISSING_FOR_MEN = {"name": "no creatinine for men", "when": {"column": "sex", "equals": "M"},
                   "require": {"column": "creatinine", "is_missing": True}}


def test_the_schema_checks_what_a_rule_names(demo_schema):
    with pytest.raises(ValidationError, match="mark that column nullable"):
        _schema(demo_schema, MISSING_FOR_MEN, nullable=False)
    with pytest.raises(ValidationError, match="unknown column 'height'"):
        _schema(demo_schema, {"name": "x", "require": {"column": "age", "at_least_column": "height"}})


def test_sampled_rows_keep_a_missing_by_design_pattern(demo_schema, small_frame):
    """The real rows hold creatinine for nobody male; neither must the synthetic rows, whatever
    the (noisy) generator learnt."""
    schema = _schema(demo_schema, MISSING_FOR_MEN)
    frame = small_frame.copy()
    frame.loc[frame["sex"] == "M", "creatinine"] = np.nan
    rows = DPTabularGAN(schema, epsilon=1.0, delta=1e-5, epochs=0.2, config=TINY).fit(frame).sample(400)
    men = rows["sex"] == "M"
    assert men.any() and rows.loc[men, "creatinine"].isna().all()
    assert rows.loc[~men, "creatinine"].notna().any()


def test_sampling_conditioned_on_a_numeric_range_and_a_category(demo_schema, small_frame):
    model = DPTabularGAN(demo_schema, epsilon=1.0, delta=1e-5, epochs=0.2, config=TINY).fit(small_frame)
    rows = model.sample(200, condition={"age": (60, 70), "sex": "F"})
    assert len(rows) == 200 and rows["age"].between(60, 70).all() and (rows["sex"] == "F").all()
    with pytest.raises(ValueError, match="must be a range"):
        model.sample(10, condition={"age": 60})
    with pytest.raises(ValueError, match=r"public bounds \[50, 105\]"):  # was 20 attempts, then 'widen the range'
        model.sample(10, condition={"age": (300, 400)})


def test_sampled_rows_have_the_dtypes_the_schema_implies(demo_schema, small_frame):
    """Codes come back as numbers (the researcher's rows.death.mean()), other categories as
    categoricals in the schema's order, numbers as numbers."""
    rows = DPTabularGAN(demo_schema, epsilon=1.0, delta=1e-5, epochs=0.2, config=TINY).fit(small_frame).sample(100)
    assert str(rows["flc_grp"].dtype) == "Int64" and 1 <= rows["flc_grp"].mean() <= 10  # categories '1'..'10'
    assert list(rows["sex"].cat.categories) == ["F", "M"]
    assert rows["age"].dtype == "int64" and rows["kappa"].dtype == "float64"
