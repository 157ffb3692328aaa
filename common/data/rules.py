"""Clinical plausibility rules from the schema, e.g. "if sex = M then pregnant = 0".

A rule is public domain knowledge written into the schema. It never reads private data;
it is checked on synthetic rows (share violating) and can filter them at sampling time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, model_validator


class Condition(BaseModel):
    """A test on one column: exactly one of ``equals``, ``one_of`` or ``between``."""

    column: str
    equals: str | float | None = None
    one_of: list[str | float] | None = None
    between: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        given = [t for t in (self.equals, self.one_of, self.between) if t is not None]
        if len(given) != 1:
            raise ValueError(f"condition on '{self.column}' needs exactly one of equals, one_of, between")
        return self

    def holds(self, frame: pd.DataFrame) -> np.ndarray:
        series = frame[self.column]
        if self.between is not None:
            values = pd.to_numeric(series, errors="coerce")
            return ((values >= self.between[0]) & (values <= self.between[1])).to_numpy(dtype=bool)
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
        return applies & ~self.require.holds(frame)


def violation_mask(frame: pd.DataFrame, rules: list[Rule]) -> np.ndarray:
    """Rows that break at least one rule."""
    mask = np.zeros(len(frame), dtype=bool)
    for rule in rules:
        mask |= rule.violations(frame)
    return mask
