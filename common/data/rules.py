"""Clinical plausibility rules from the schema, e.g. "if sex = M then pregnant = 0".

A rule is public domain knowledge written into the schema. It never reads private data;
it is checked on synthetic rows (share violating) and can filter them at sampling time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, model_validator


class Condition(BaseModel):
    """A test on one column: exactly one of ``equals``, ``one_of``, ``between`` (values),
    ``is_missing`` (true: the cell is missing; false: it is present) or ``at_most_column`` /
    ``at_least_column`` (the column's number against another column's on the same row, e.g.
    years smoked at most age). A comparison with a missing side does not apply."""

    column: str
    equals: str | float | None = None
    one_of: list[str | float] | None = None
    between: tuple[float, float] | None = None
    is_missing: bool | None = None
    at_most_column: str | None = None
    at_least_column: str | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        given = [t for t in (self.equals, self.one_of, self.between, self.is_missing, self.at_most_column,
                             self.at_least_column) if t is not None]
        if len(given) != 1:
            raise ValueError(f"condition on '{self.column}' needs exactly one of equals, one_of, between, is_missing, "
                             "at_most_column, at_least_column")
        return self

    @property
    def other_column(self) -> str | None:
        """The column a comparison reads besides its own."""
        return self.at_most_column or self.at_least_column

    def holds(self, frame: pd.DataFrame) -> np.ndarray:
        """True for each row of ``frame`` where the test passes."""
        return np.asarray(self._holds(frame), dtype=bool)

    def _holds(self, frame: pd.DataFrame) -> object:
        series = frame[self.column]
        if self.is_missing is not None:
            return (series.isna() == self.is_missing).to_numpy(dtype=bool)
        if self.other_column is not None:
            mine = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
            other = pd.to_numeric(frame[self.other_column], errors="coerce").to_numpy(dtype=float)
            compared = mine <= other if self.at_most_column else mine >= other
            return compared | np.isnan(mine) | np.isnan(other)
        if self.between is not None:
            # As floats: a nullable integer column's missing cells compare as NaN (outside), not as
            # pandas' NA, which no boolean array can hold.
            values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            return (values >= self.between[0]) & (values <= self.between[1])
        wanted = [self.equals] if self.equals is not None else list(self.one_of or [])
        as_text = series.astype(str)
        return as_text.isin([str(w) for w in wanted]).to_numpy(dtype=bool)


class Rule(BaseModel):
    """``require`` must hold on every row where ``when`` holds (or on every row)."""

    name: str
    when: Condition | None = None
    require: Condition

    def violations(self, frame: pd.DataFrame) -> np.ndarray:
        applies = self.when.holds(frame) if self.when is not None else np.ones(len(frame), dtype=bool)
        return np.asarray(applies & ~self.require.holds(frame), dtype=bool)


def impose_missing_by_design(frame: pd.DataFrame, rules: list[Rule]) -> pd.DataFrame:
    """Rows where a rule requires a cell to be missing get it missing (e.g. "if sex = M then
    pregnancies is missing"): a design fact of the questionnaire, public knowledge, imposed on
    synthetic rows rather than left to a generator that sees it only through noise."""
    repaired = frame
    for rule in rules:
        if rule.require.is_missing:
            applies = rule.when.holds(repaired) if rule.when is not None else np.ones(len(repaired), dtype=bool)
            if applies.any():
                repaired = repaired.copy() if repaired is frame else repaired
                repaired.loc[applies, rule.require.column] = None
    return repaired


def violation_mask(frame: pd.DataFrame, rules: list[Rule]) -> np.ndarray:
    """Rows that break at least one rule."""
    mask = np.zeros(len(frame), dtype=bool)
    for rule in rules:
        mask |= rule.violations(frame)
    return mask
