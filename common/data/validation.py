"""Check a hospital extract against the schema before anything is trained on it.

Every problem is reported by column, with the number of rows affected and a few example
row numbers (never the values: they are patient data); nothing is dropped or repaired silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fedsyn.data.schema import Column, ColumnKind, Schema
from fedsyn.errors import InputDataError

_EXAMPLES = 3
RowNumbering = Literal["line", "row"]


@dataclass(frozen=True)
class Problem:
    """One kind of problem in one column."""

    column: str
    kind: str
    rows: int
    examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        shown = ", ".join(self.examples)
        return f"column '{self.column}': {self.kind} in {self.rows} row(s)" + (f" (e.g. {shown})" if shown else "")


@dataclass(frozen=True)
class ValidationReport:
    problems: list[Problem]
    n_rows: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.ok:
            return f"{self.n_rows} rows fit the schema."
        lines = [f"{len(self.problems)} problem(s) in {self.n_rows} rows:"]
        lines += [f"  - {p.describe()}" for p in self.problems]
        return "\n".join(lines)


class DataValidationError(InputDataError, ValueError):
    """The data does not fit the schema; ``report`` says where."""

    def __init__(self, report: ValidationReport, source: str = "data"):
        self.report = report
        super().__init__(f"{source} does not fit the schema.\n{report.describe()}")


def numbering_for(path: str | Path) -> RowNumbering:
    """How a person finds a row of this file: CSV lines (header is line 1) or Parquet rows."""
    return "row" if Path(str(path)).suffix.lower() in {".parquet", ".pq"} else "line"


def validate_frame(frame: pd.DataFrame, schema: Schema, numbering: RowNumbering = "line") -> ValidationReport:
    """Every problem of ``frame`` against ``schema``; examples name CSV ``line``s or ``row``s."""
    problems: list[Problem] = []
    expected = schema.column_names
    missing = [c for c in expected if c not in frame.columns]
    extra = [str(c) for c in frame.columns if c not in expected]
    if frame.empty:
        problems.append(Problem("(every column)", "the file has no rows: nothing to train on", 0))
    for name in missing:
        problems.append(Problem(name, "column missing from the file", len(frame)))
    for name in extra:
        problems.append(Problem(name, "column not in the schema (remove it or add it to the schema)", len(frame)))
    for column in schema.columns:
        if column.name in frame.columns:
            problems.extend(_check_column(frame[column.name], column, numbering))
    return ValidationReport(problems=problems, n_rows=len(frame))


def require_valid(frame: pd.DataFrame, schema: Schema, source: str = "data") -> None:
    report = validate_frame(frame, schema, numbering_for(source))
    if not report.ok:
        raise DataValidationError(report, source)


def _examples(mask: np.ndarray, numbering: RowNumbering) -> list[str]:
    """Where to look, never what is there: a cell's value is patient data and error text
    travels (terminals, logs, tickets). CSV lines count the header as line 1; rows count from 1."""
    first = 2 if numbering == "line" else 1
    return [f"{numbering} {int(i) + first}" for i in np.flatnonzero(mask)[:_EXAMPLES]]


def _check_column(series: pd.Series, column: Column, numbering: RowNumbering) -> list[Problem]:
    problems: list[Problem] = []
    series = series.reset_index(drop=True)
    is_null = series.isna().to_numpy()
    if is_null.any() and not column.nullable:
        problems.append(Problem(column.name, "missing value where the schema does not allow one",
                                int(is_null.sum()), _examples(is_null, numbering)))
    present = ~is_null
    if column.kind is ColumnKind.CATEGORICAL:
        as_text = series.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
        unknown = present & ~as_text.isin(column.categories).to_numpy()
        if unknown.any():
            problems.append(Problem(column.name, f"category not in the schema's list {column.categories}",
                                    int(unknown.sum()), _examples(unknown, numbering)))
        return problems
    numeric = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    non_numeric = present & np.isnan(numeric)
    if non_numeric.any():
        problems.append(Problem(column.name, "value is not a number", int(non_numeric.sum()),
                                _examples(non_numeric, numbering)))
    checkable = present & ~np.isnan(numeric)
    infinite = checkable & ~np.isfinite(numeric)
    if infinite.any():
        problems.append(Problem(column.name, "value is infinite", int(infinite.sum()), _examples(infinite, numbering)))
    finite = checkable & np.isfinite(numeric)
    out = finite & ((numeric < column.lower) | (numeric > column.upper))
    if out.any():
        problems.append(Problem(column.name, f"value outside the public bounds [{column.lower}, {column.upper}]",
                                int(out.sum()), _examples(out, numbering)))
    if column.kind is ColumnKind.INTEGER:
        fractional = finite & (numeric != np.round(numeric))
        if fractional.any():
            problems.append(Problem(column.name, "value is not a whole number", int(fractional.sum()),
                                    _examples(fractional, numbering)))
    return problems
