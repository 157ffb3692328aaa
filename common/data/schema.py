"""The schema: the public data contract shared by every hospital and the coordinator.

Everything the model needs to know about the *shape* of the data (column kinds, category
lists, numeric bounds) comes from here, so that none of it has to be learned from private
rows. A schema drafted from a local file (:mod:`fedsyn.data.draft`, which reads private rows
and is apart for that reason) is marked ``needs_review`` until a person replaces the
data-derived bounds and categories with public knowledge.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from enum import Enum
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from fedsyn.data.rules import Rule
from fedsyn.errors import ConfigurationError, did_you_mean, validation_problems
from fedsyn.files import write_atomically


class SchemaError(ConfigurationError, ValueError):
    """A schema file is missing, malformed or inconsistent."""


def check_markers(markers: list[str], where: str) -> None:
    """Missing-value markers as a schema lists them: each without surrounding spaces (cells are
    compared with theirs removed) and none empty. Raises ValueError naming ``where``."""
    for marker in markers:
        if not marker.strip() or marker != marker.strip():
            raise ValueError(f"{where} {markers}: each marker is written without surrounding spaces (cells are "
                             "compared with their spaces removed), and none is empty")


# A whole number written with a decimal point ('2.0'), as pandas writes a number column with gaps.
WHOLE_NUMBER_WITH_POINT = re.compile(r"\s*([+-]?\d+)\.0+\s*")


def spelling_key(text: str) -> str:
    """How a cell is compared with a column's declared ``spellings``: its spaces removed, its
    letter case folded, and a whole number's decimal point dropped ('2.0' is '2')."""
    whole = WHOLE_NUMBER_WITH_POINT.fullmatch(text)
    return (whole.group(1) if whole else text).strip().casefold()


# What pandas' CSV reader takes for an empty cell (its default NA strings); read_table reads a
# Parquet file's text cells so too. Folded as a spelling is, for the schema's checks.
CSV_EMPTY_CELLS = frozenset((
    "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null"))
CSV_EMPTY_WORDS = frozenset(word.casefold() for word in CSV_EMPTY_CELLS)


class ColumnKind(str, Enum):  # noqa: UP042 - StrEnum would change str(kind) in messages
    CATEGORICAL = "categorical"
    CONTINUOUS = "continuous"
    INTEGER = "integer"


class Column(BaseModel):
    """One column of the contract.

    ``transform`` is public modelling knowledge (lab values are often log-normal); it only
    changes how values are spread before encoding and never depends on private data.
    """

    name: str = Field(min_length=1)
    kind: ColumnKind
    categories: list[str] | None = None
    lower: float | None = None
    upper: float | None = None
    unit: str | None = None
    nullable: bool = False
    transform: Literal["linear", "log"] = "linear"
    # The step a numeric column's values are recorded in (0.1: one decimal; 5: to the nearest
    # 5): a public fact of the extract's format. Released values are rounded to it, so a
    # synthetic row does not give itself away by digits no real row has.
    precision: float | None = None
    # Where a numeric column's bounds come from (an inclusion criterion, an assay's reporting
    # range, a scale's ends): public knowledge, said where a reader can check it. A column that
    # says so is not pointed at when a bound equals its extract's own smallest or largest value.
    bounds_source: str | None = None
    # This column's own spellings of "missing" ('999' for an unknown age, 'not done' for a lab),
    # read as empty in this column only: a table-wide marker also blanks another column's real
    # values equal to it (a BNP of 999 pg/mL). None (left out of a written schema) lists none.
    missing_values: list[str] | None = None
    # A categorical column's other ways of writing a level in the extracts ({"female": ["F",
    # "woman"]}, {"positive": ["pos", "+"]}), matched without surrounding spaces and in any letter
    # case: read as that level, so a site keeps its export as it is. Written by the reviewer, as
    # the categories are; None (left out of a written schema) lists none.
    spellings: dict[str, list[str]] | None = None
    needs_review: bool = False
    description: str | None = None

    @model_validator(mode="after")
    def _check_kind_fields(self) -> Column:
        if "|" in self.name or self.name.startswith(("pair:", "pairbins:")):
            raise ValueError(f"column '{self.name}': '|' and the prefixes 'pair:' and 'pairbins:' are reserved "
                             "(a pair table is named 'pair:first|second'); rename the column in the schema and "
                             "the extract")
        check_markers(self.missing_values or [], f"column '{self.name}': missing_values")
        if self.missing_values == []:  # the same as none listed, and so the same schema fingerprint
            self.missing_values = None
        if self.spellings is not None:  # a level with none listed, or none at all: the same fingerprint as none
            self.spellings = {level: written for level, written in self.spellings.items() if written} or None
        if self.kind is ColumnKind.CATEGORICAL:
            own, numbers = set(self.missing_values or []), _finite_numbers(self.missing_values or [])
            listed = [level for level in self.categories or [] if level in own or _finite_numbers([level]) & numbers]
            if listed:
                raise ValueError(f"categorical column '{self.name}' lists {listed} both as a category and in its own "
                                 "missing_values: keep it in one of them (a category is a value, a marker is "
                                 "read as empty)")
            if not self.categories:
                raise ValueError(f"categorical column '{self.name}' needs a non-empty 'categories' list")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"categorical column '{self.name}' lists a category twice")
            if any(field is not None for field in (self.lower, self.upper, self.precision, self.bounds_source)):
                raise ValueError(f"categorical column '{self.name}' must not have 'lower'/'upper' bounds, their "
                                 "'bounds_source' or a 'precision'")
            self._check_spellings()
        else:
            if self.lower is None or self.upper is None:
                raise ValueError(
                    f"numeric column '{self.name}' needs public 'lower' and 'upper' bounds "
                    "(from clinical knowledge or assay ranges, not from the data)"
                )
            if not self.lower < self.upper:
                raise ValueError(f"column '{self.name}': lower ({self.lower}) must be below upper ({self.upper})")
            if self.categories is not None or self.spellings is not None:
                raise ValueError(f"numeric column '{self.name}' must not list 'categories' or their 'spellings'")
            if self.bounds_source is not None and not self.bounds_source.strip():
                raise ValueError(f"column '{self.name}': 'bounds_source' is blank: say where the bounds come from "
                                 "(an inclusion criterion, an assay's reporting range), or leave it out")
            if self.kind is ColumnKind.INTEGER and math.ceil(self.lower) > math.floor(self.upper):
                raise ValueError(f"integer column '{self.name}': no whole number lies between lower ({self.lower}) "
                                 f"and upper ({self.upper})")
            if self.transform == "log" and self.lower <= 0:
                raise ValueError(f"column '{self.name}': a 'log' transform needs lower > 0, got {self.lower}")
            self._check_precision()
        return self

    def _check_spellings(self) -> None:
        """Each spelling names a listed level, is not empty, and reads as one level only: not
        another level (a whole number's '2.0' is '2'), another level's spelling, a yes or a no a
        flag reads as its other level, or one of the column's missing-value markers (a cell is
        read as its level, its spelling or empty: one of them); nor a word a CSV reader takes for
        an empty cell ('NA', 'None'), which would never reach its level from a CSV file."""
        if self.spellings is None:
            return
        unknown = [level for level in self.spellings if level not in self.levels]
        if unknown:
            raise ValueError(f"column '{self.name}': 'spellings' names {unknown}, not among its categories: each key "
                             "is a listed level, each value the other ways the extracts write it")
        reads_as = {spelling_key(level): level for level in self.levels}
        flag = yes_no_levels(self.levels)
        if flag is not None:  # its Y, 1 and true are its yes already: never another level's spelling
            reads_as |= {word: flag[0] for word in READ_AS_YES} | {word: flag[1] for word in READ_AS_NO}
        markers = {spelling_key(marker) for marker in self.missing_values or []}  # a marker 2.0 blanks a cell 2
        for level, written in self.spellings.items():
            for spelling in written:
                key = spelling_key(spelling)
                if not key:
                    raise ValueError(f"column '{self.name}': a spelling of '{level}' is empty")
                if key in markers:
                    raise ValueError(f"column '{self.name}': '{spelling}' is both a spelling of '{level}' and one "
                                     "of the column's missing_values: keep it in one of them")
                if key in CSV_EMPTY_WORDS:
                    raise ValueError(f"column '{self.name}': a CSV file's '{spelling}' (in any letter case) is read "
                                     f"as an empty cell, never as '{level}': write it another way in the extract, "
                                     "or mark the column nullable")
                if reads_as.setdefault(key, level) != level:
                    raise ValueError(f"column '{self.name}': '{spelling}' (in any letter case) would read as both "
                                     f"'{level}' and '{reads_as[key]}': list it for one level only")

    def spelled_levels(self) -> dict[str, str]:
        """Each declared spelling as a cell is compared with it (:func:`spelling_key`) and the
        level it is read as (empty without ``spellings``)."""
        return {spelling_key(spelling): level for level, written in (self.spellings or {}).items()
                for spelling in written}

    def _check_precision(self) -> None:
        """A numeric column's ``precision``: positive, whole for an integer column, and with at
        least one of its multiples between the bounds."""
        if self.precision is None:
            return
        step = self.precision
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"column '{self.name}': 'precision' must be a positive number (0.1: values recorded "
                             f"to one decimal), got {step}")
        if self.kind is ColumnKind.INTEGER and step != round(step):
            raise ValueError(f"integer column '{self.name}': 'precision' must be a whole number, got {step}")
        first, last = self.recorded_values()
        if first > last:
            raise ValueError(f"column '{self.name}': no multiple of its precision ({step}) lies between lower "
                             f"({self.lower}) and upper ({self.upper})")

    @property
    def recorded_step(self) -> float | None:
        """The step a numeric column's values are recorded in: its declared ``precision``, else 1
        for an integer column; None for a continuous column without one (any value)."""
        if self.precision is not None:
            return self.precision
        return 1.0 if self.kind is ColumnKind.INTEGER else None

    def recorded_values(self) -> tuple[float, float]:
        """The first and last multiple of :attr:`recorded_step` between the bounds, written to
        the step's decimals (6.8, not 6.800000000000001); (lower, upper) without a step."""
        low, high = self.bounds
        step = self.recorded_step
        if step is None:
            return low, high
        places = step_decimals(step)
        first = round(math.ceil(low / step - 1e-9) * step, places)
        last = round(math.floor(high / step + 1e-9) * step, places)
        return (first + step if first < low else first), (last - step if last > high else last)

    @property
    def is_categorical(self) -> bool:
        return self.kind is ColumnKind.CATEGORICAL

    @property
    def has_bound_atoms(self) -> bool:
        """Whether the bounds are values of their own (a lab value at its assay's limit): a
        continuous column's are (see :func:`fedsyn.data.grid.numeric_edges`); an integer
        column's whole numbers are its bins, so it has none."""
        return self.kind is ColumnKind.CONTINUOUS

    @property
    def levels(self) -> list[str]:
        """A categorical column's categories (the validator guarantees them for that kind)."""
        if self.categories is None:
            raise TypeError(f"column '{self.name}' is {self.kind.value}: it has no categories")
        return self.categories

    @property
    def bounds(self) -> tuple[float, float]:
        """A numeric column's public (lower, upper) (the validator guarantees them for that kind)."""
        if self.lower is None or self.upper is None:
            raise TypeError(f"column '{self.name}' is {self.kind.value}: it has no bounds")
        return self.lower, self.upper


class Schema(BaseModel):
    """A table's public contract: its columns and which one is the outcome."""

    name: str = "table"
    columns: list[Column] = Field(min_length=1)
    outcome: str | None = None
    source: str | None = None
    rules: list[Rule] = Field(default_factory=list)
    # The extract's own spellings of "missing" ('?', '-', '.'), read as empty cells in every column
    # but a categorical one that lists the marker among its categories (a test result's '-').
    missing_values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_columns(self) -> Schema:
        names = [c.name for c in self.columns]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"column names appear more than once: {duplicated}")
        if self.outcome is not None:
            if self.outcome not in names:
                raise ValueError(f"outcome '{self.outcome}' is not a column of the schema"
                                 f"{did_you_mean(self.outcome, names)}")
            if not self.column(self.outcome).is_categorical:
                raise ValueError(f"outcome '{self.outcome}' must be a categorical column")
        check_markers(self.missing_values, "missing_values")
        for column in self.categorical_columns:  # a marker the column lists as a level is kept there, no other
            markers = {spelling_key(marker) for marker in self.missing_values if marker not in column.levels}
            blanked = sorted(set(column.spelled_levels()) & markers)
            if blanked:
                raise ValueError(f"column '{column.name}': its spellings {blanked} are among the schema's "
                                 "missing_values, so they would be read as empty: keep each in one of them")
        for rule in self.rules:
            for condition in (rule.when, rule.require):
                if condition is None:
                    continue
                for named in (condition.column, condition.other_column):
                    if named is not None and named not in names:
                        raise ValueError(f"rule '{rule.name}' names unknown column '{named}'")
            if rule.require.is_missing and not self.column(rule.require.column).nullable:
                raise ValueError(f"rule '{rule.name}' requires '{rule.require.column}' to be missing: mark that "
                                 "column nullable")
        return self

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"no column '{name}' in schema '{self.name}'")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def categorical_columns(self) -> list[Column]:
        return [c for c in self.columns if c.is_categorical]

    @property
    def unreviewed_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.needs_review]

    def require_reviewed(self, allow_unreviewed: bool) -> None:
        """Refuse to train on bounds/categories that were read off private data."""
        if self.unreviewed_columns and not allow_unreviewed:
            raise SchemaError(
                f"schema '{self.name}' still marks columns as needs_review: {self.unreviewed_columns}. "
                "Their bounds or categories were read from the data, which leaks private information. "
                "Replace them with public knowledge and set needs_review to false, or pass "
                "--allow-unreviewed-schema (this is then written into the privacy report)."
            )

    def save(self, path: str | Path, private: bool = False) -> None:
        """Write the schema as JSON. A ``private`` one (a draft: its bounds, levels and names were
        read off a site's rows) is readable by its owner only (0600), as the site's other private
        files are (:func:`fedsyn.files.write_atomically`); a draft written 0644 was readable by
        every user of the hospital's machine (helper-123 F3)."""
        text = self.model_dump_json(indent=2, exclude_none=True) + "\n"
        if private:
            write_atomically(Path(path), lambda out: out.write(text.encode()))
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise SchemaError(f"schema file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SchemaError(f"schema file {path} is not valid JSON: {exc}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise SchemaError(f"schema file {path} is invalid: {schema_problems(exc, raw)}") from None


def schema_problems(exc: ValidationError, raw: object) -> str:
    """A schema's validation errors for a person (:func:`fedsyn.errors.validation_problems`),
    each column named (``column 'crp': kind``, not ``columns.2.kind``)."""
    columns = raw.get("columns") if isinstance(raw, dict) else None

    def place(loc: tuple[int | str, ...]) -> str:
        if len(loc) >= 2 and loc[0] == "columns" and isinstance(loc[1], int) and isinstance(columns, list) \
                and loc[1] < len(columns) and isinstance(columns[loc[1]], dict) and "name" in columns[loc[1]]:
            if len(loc) == 2:  # a Column validator's own error, which names its column (a newcomer read it twice)
                return ""
            rest = ".".join(str(part) for part in loc[2:])
            return f"column '{columns[loc[1]]['name']}': {rest}"
        return ".".join(str(part) for part in loc)

    def hint(error: ErrorDetails) -> str:
        if "categories" in error["loc"] and error["type"] == "string_type":
            return ' (write each category in quotes: "0", "1")'
        return ""

    return validation_problems(exc, place, hint)


MANY_CATEGORIES = 50  # above this a drafted categorical column is probably an identifier
# A level held by fewer rows than this is not written into a draft: a level that rare may be one
# patient's (a newcomer's free-text note 'see chart 200794, PTB risk high' was one of 40 levels,
# and a careless review released the record number in schema.json and in 29 synthetic rows).
RARE_LEVEL_ROWS = 5


def lists_no_level(column: Column) -> bool:
    """Whether a column holds only a draft's placeholder (:data:`fedsyn.data.draft.UNLISTED_LEVELS`, or an
    earlier version's wording: any single 'REVIEW:' level)."""
    return column.is_categorical and len(column.categories or []) == 1 \
        and str((column.categories or [""])[0]).startswith("REVIEW:")


def spell_category(value: object) -> object:
    """A category as text, the same from CSV and Parquet: integral floats (1.0) are '1'."""
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def step_decimals(step: float) -> int:
    """The decimal places a multiple of ``step`` needs (0.25: 2; 5: 0), at most 12."""
    return next((places for places in range(13) if abs(round(step, places) - step) <= 1e-12 * max(1.0, step)), 12)


def off_step(values: np.ndarray, step: float) -> np.ndarray:
    """Which ``values`` are not multiples of ``step``, allowing for the float error of writing
    a decimal (0.1 + 0.2) but not for a digit (650000.37 is not a multiple of 1). NaN: False."""
    scaled = np.asarray(values, dtype=float) / step
    with np.errstate(invalid="ignore"):
        return np.asarray(np.abs(scaled - np.round(scaled)) > 1e-6 + 1e-14 * np.abs(scaled))


def value_like(name: str, categories: frozenset[str] = frozenset()) -> bool:
    """Whether a file's column name looks like a cell's value (a number, a date or time, one of
    ``categories``) rather than a name. A file without a header line gives its first record as
    its column names: messages must never print those (pandas' '.1' suffix on a repeated name
    is ignored). :func:`names_like_values` also reads the names beside their columns."""
    text = re.sub(r"\.\d+$", "", name.strip()) if name.strip() not in categories else name.strip()
    return bool(re.fullmatch(r"[+-]?\.?\d[\d\s.,:/+-]*", name.strip())) or text in categories


# A cell written as a record number: an optional letter prefix, then five digits or more, dashes
# allowed ('MRN0041233', '88-1203').
RECORD_TOKEN = re.compile(r"^[A-Za-z]{0,5}[-_ ]?\d[\d-]{3,}\d$")
# A column of text with at least this many cells, every one distinct (patients' names, addresses),
# whose name is written as at least SHAPE_SHARE of them are, is headed by one of its own values.
SHAPE_ROWS = 20
SHAPE_SHARE = 0.2


def names_like_values(frame: pd.DataFrame, categories: frozenset[str] = frozenset()) -> list[str]:
    """The column names of ``frame`` that look like a cell's value rather than a name: a number,
    a date or one of ``categories`` (:func:`value_like`), an empty cell (which pandas names
    'Unnamed: 3'), a record number (:data:`RECORD_TOKEN`), one of its own column's values ('F'
    over a column of F and M), or written as its own column's values are where those are free
    text, every one distinct (:func:`_written_alike`: 'Maria Gomez' over patients' names, '12 Elm
    St' over addresses). A file without a header line gives its first record as its names; the
    draft and validation judge that line by this one rule, and print none of it where a name is
    found here (helper-123 F1: a record of name, record number, address, sex, age and outcome
    became a draft's column names, three of them printed)."""
    found = []
    for column in frame.columns:
        name = str(column)
        cells = frame[column].dropna()
        written = cells.astype(str).str.strip()
        if value_like(name, categories) or name.startswith("Unnamed: ") or RECORD_TOKEN.match(name.strip()) \
                or name.strip() in set(written) or _written_alike(name.strip(), written):
            found.append(name)
    return found


def _written_alike(name: str, written: pd.Series) -> bool:
    """Whether ``name`` is written as the text cells ``written`` of its column are, where they are
    at least :data:`SHAPE_ROWS`, every one distinct: its words in the same order of capitalised
    and lower-case words, numbers and punctuation (:func:`_shape`) as :data:`SHAPE_SHARE` of the
    cells or more. A lone word is as likely a header's as a value ('Surname' over 'Gomez'), and
    is not judged; a header 'Patient Name' over patients' names is taken for one of them, which
    costs a name shown, never a value."""
    if len(written) < SHAPE_ROWS or not written.is_unique or re.fullmatch(r"[^\W\d_]+", name):
        return False
    return bool((written.map(_shape) == _shape(name)).mean() >= SHAPE_SHARE)


def _shape(text: str) -> str:
    """How ``text`` is written, its letters and digits left out: 'Maria Gomez' is 'A A', '12 Elm
    St' '9 A A', 'patient_name' 'a_a'."""
    return re.sub(r"[^\W\d_]+", lambda word: "A" if word.group()[0].isupper() else "a", re.sub(r"\d+", "9", text))


def headerless_names(names: list[str], like_values: Collection[str] | None = None) -> bool:
    """Whether at least half of a file's column names look like values (``like_values``, as
    :func:`names_like_values` found them; where the cells are not read yet, as
    :func:`value_like` finds them): its first line is probably a record. Half is enough: a first
    record of name, record number, address, sex, age and outcome gave three names that look like
    values on their own (helper-123 F1)."""
    like = [name for name in names if (name in like_values if like_values is not None else value_like(name))]
    return bool(names) and len(like) * 2 >= len(names)


def text_columns(frame: pd.DataFrame) -> list[str]:
    """The columns read as text (where a marker can stand)."""
    return [str(column) for column in frame.columns
            if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column])]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def as_numbers(cells: pd.Series) -> pd.Series:
    """Text cells of a numeric column as numbers when every one is a number (as a clean file's
    are read); else as they are, for validation to point at the others. A column whose own
    missing-value marker ('unknown') made it text stayed text once the marker was blanked:
    ``read_table(...).tsh.mean()`` failed, and a model took it for 514 categories."""
    if cells.dtype.kind in "biuf":
        return cells
    numbers = pd.to_numeric(cells.astype(object), errors="coerce")  # object in: NumPy's int64 or float64 out
    return numbers if int(numbers.notna().sum()) == int(cells.notna().sum()) else cells


def limits_at_bounds(cells: pd.Series, column: Column) -> pd.Series:
    """``cells`` of a numeric column with each cell written as a limit at one of its public
    bounds ('<0.01' where 0.01 is the lower bound, '>200' where 200 is the upper) read as that
    bound: the value docs/schema.md asks such a cell to be written as, which a newcomer did by
    hand for every troponin '<0.01'. Any other text is left for validation to point at."""
    if column.is_categorical or cells.dtype.kind in "biuf":
        return cells
    sides, limits = written_limits(cells)
    if sides.isna().all():
        return cells
    return as_numbers(cells.where(~((sides == "<") & (limits == column.lower)), column.lower)
                      .where(~((sides == ">") & (limits == column.upper)), column.upper))


def units_removed(cells: pd.Series, column: Column) -> pd.Series:
    """``cells`` of a numeric column with each cell written as a number and the column's own
    ``unit`` ('120 mg/dL' where the unit is mg/dL, in any letter case or spacing) read as the
    number: a lab system writes the unit into some cells, and a newcomer rewrote 4 % of their
    fibrinogens by hand. Any other text is left for validation to point at."""
    if column.is_categorical or column.unit is None or cells.dtype.kind in "biuf":
        return cells
    numbers, units = numbers_with_units(cells)
    own = units == _folded_unit(column.unit)
    if not own.any():
        return cells
    return as_numbers(cells.astype(object).where(~own, numbers))  # a Parquet category column cannot take a number


# A number (never split inside its exponent: '2e-05' is no 2 in 'e-05'), then a unit: one word
# without a digit or a space, starting with a letter, '%' or a degree sign ('120 mg/dL',
# '37.2°C'), at most UNIT_LENGTH characters (a note after a number, 'pt called back', is no unit).
NUMBER_AND_UNIT = re.compile(
    r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![eE][-+]?\d)\s*((?:[^\W\d_]|[%°])[^\s\d]*)\s*$")
UNIT_LENGTH = 10


def _folded_unit(unit: str) -> str:
    return re.sub(r"\s+", "", unit).casefold()


def numbers_with_units(cells: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Each cell written as a number and a unit ('120 mg/dL'): its number and its unit (folded:
    no spaces, any letter case); missing for every other cell."""
    parts = cells.astype(str).where(cells.notna()).str.extract(NUMBER_AND_UNIT)
    units = parts[1].map(lambda unit: folded if len(folded := _folded_unit(unit)) <= UNIT_LENGTH else None,
                         na_action="ignore")
    return pd.to_numeric(parts[0], errors="coerce").where(units.notna()), units


def written_limits(cells: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Each cell written as a limit ('<0.01', '> 200', '<=5'): its side ('<' or '>') and its
    number; missing for every other cell."""
    limited = censored(cells) & cells.notna()
    written = cells.astype(str).str.strip().where(limited)
    return written.str[0], pd.to_numeric(written.str.lstrip("<>=").str.strip(), errors="coerce")


def without_markers(frame: pd.DataFrame, markers: list[str], levels: Mapping[str, Collection[str]] | None = None,
                    own: Mapping[str, Collection[str]] | None = None) -> pd.DataFrame:
    """``frame`` with every text cell that is one of ``markers`` (spaces removed), or one of its
    column's ``own`` markers, made empty, and every cell whose number such a number marker ('999',
    '-1') equals ('999.0' and '0999' too, whether the column was read as text or as numbers),
    except where it is one of its column's ``levels`` (a categorical column's categories).

    Each cell is judged on its own: a '99.0' matched the marker '99' while its column was read as
    numbers and stopped matching once one other cell ('pending', or the marker '?') made the
    column text; one record then changed how 30 others were read, 15 times the tables' charged
    sensitivity (helper-106 F1). (A column read as numbers once kept its 999s: the marker was
    compared with text cells only.)"""
    if not markers and not any((own or {}).values()):
        return frame
    frame = frame.copy()
    texts = text_columns(frame)
    for name in frame.columns:
        series, kept = frame[name], set((levels or {}).get(str(name), ()))
        spellings = (set(markers) | set((own or {}).get(str(name), ()))) - kept
        numbers = _finite_numbers(spellings) - _finite_numbers(kept)  # a level '999' keeps a marker '999.0' too
        if name in texts:
            text = series.astype(str).str.strip()
            marked = text.isin(spellings)
            if numbers:
                marked |= pd.to_numeric(text.where(series.notna()), errors="coerce").isin(numbers)
            frame[name] = series.mask(series.notna() & marked)
        elif numbers and pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            frame[name] = series.mask(series.isin(numbers))
    return frame


def _finite_numbers(spellings: Collection[str]) -> set[float]:
    """The finite numbers among ``spellings`` ('999', '999.0' and '-1'; not 'nan' or 'inf')."""
    return {float(text) for text in spellings if is_number(text) and math.isfinite(float(text))}


def without_schema_markers(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """``frame`` with the cells ``schema`` writes as missing made empty (:func:`without_markers`):
    its table-wide ``missing_values`` in every column but a categorical one listing them among
    its categories, and each column's own ``missing_values`` in that column."""
    own = {column.name: column.missing_values for column in schema.columns if column.missing_values}
    return without_markers(frame, schema.missing_values, category_levels(schema), own)


_CENSORED = re.compile(r"^\s*[<>]=?\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def censored(cells: pd.Series) -> pd.Series:
    """Which cells are a number written as a limit: '<0.01', '> 89', '<=5'."""
    return cells.astype(str).str.match(_CENSORED)


ZERO_PADDED = re.compile(r"[+-]?0\d+")  # '021', '007', '-05': a code, not the number 21, 7 or -5
PADDED_SHARE = 0.1  # of a column's distinct values zero-padded: codes (one '065' among 50 ages: a typo)


def zero_padded_codes(cells: pd.Series) -> bool:
    """Whether a column writes codes zero-padded ('021', '0052'): a tenth or more of its distinct
    values are. One such cell made a whole column of ages or creatinines codes (helper-109 M3)."""
    written = pd.Series(cells.dropna().astype(str).str.strip().unique())
    return bool(len(written)) and float(written.str.fullmatch(ZERO_PADDED).mean()) >= PADDED_SHARE


DECIMAL_COMMA = r"[+-]?\d+,(\d{1,2}|\d{4,})"  # 37,2 or 0,89 (three digits after it would be thousands)
THOUSANDS_GROUPED = r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?"  # 6,994.91


def separators_read(cells: pd.Series) -> pd.Series:
    """``cells`` with each one written with a decimal comma ('37,2') or thousands separators
    ('20,532.98') as its number: a newcomer's temperatures (30 % written so) and costs were
    drafted as free text. A decimal comma only where the column is a measure: some of its cells
    have a decimal point, or its comma values are too many for codes ('1,2' may be a code, or
    answers 1 and 2). Validation still names those cells in the file, so that its export is
    fixed rather than guessed at each read, and reads them so where it compares a column's bounds
    with its values: a bound drafted from '40,3' is the extract's own value too (helper-123 F2)."""
    if pd.api.types.is_numeric_dtype(cells):
        return cells
    text = cells.astype(str).str.strip()
    comma, grouped = text.str.fullmatch(DECIMAL_COMMA), text.str.fullmatch(THOUSANDS_GROUPED)
    if not (text.str.fullmatch(r"[+-]?\d*\.\d+").any() or text[comma].nunique() > MANY_CATEGORIES):
        comma = pd.Series(False, index=text.index)  # '1,2' among codes, no decimal point: a code or a list
    if not (comma.any() or grouped.any()):
        return cells
    return cells.mask(comma, text.str.replace(",", ".", regex=False)).mask(
        grouped, text.str.replace(",", "", regex=False))


def read_as_levels(series: pd.Series, column: Column) -> pd.Series:
    """A categorical column's cells as its levels, as every reader of an extract takes them:
    codes as strings, spelled as the schema spells them (see :func:`spell_category`), a level
    with stray surrounding spaces read as that level, and a whole-number level written with a
    decimal point ('2.0' for '2': pandas writes a number column with gaps so, and a newcomer's
    draft, which read the column as numbers, was refused by validate on its own file), a
    spelling the column declares (``spellings``: 'pos' for 'positive') read as its level, and a
    yes/no column's other spellings of yes and no ('Y', 'Yes', '1', 'true') read as its two
    levels (:func:`yes_no_levels`)."""
    levels, declared = set(column.levels), column.spelled_levels()
    flag = yes_no_levels(sorted(levels))

    def spelled(value: object) -> object:
        text = spell_category(value)
        if not isinstance(text, str) or text in levels:
            return text
        if text.strip() in levels:
            return text.strip()
        whole = WHOLE_NUMBER_WITH_POINT.fullmatch(text)
        if whole and whole.group(1) in levels:
            return whole.group(1)
        folded = spelling_key(text)
        if folded in declared:
            return declared[folded]
        if flag is not None and folded in READ_AS_YES:  # a flag's 'Y', 'Yes', 'true', '1': its yes
            return flag[0]
        if flag is not None and folded in READ_AS_NO:
            return flag[1]
        return text

    return series.map(spelled).astype(object)


# Ways an extract writes yes and no (folded): a flag written in two of them is one level written twice.
YES_WORDS = frozenset({"y", "yes", "1", "true", "t"})
NO_WORDS = frozenset({"n", "no", "0", "false", "f"})
# What a flag's cells are read as (yes_no_levels): words only for its levels ('0' and '1' may be
# any two codes: a sex), and never 't' or 'f' ('F' is a former smoker as often as false).
FLAG_YES, FLAG_NO = frozenset({"y", "yes", "true"}), frozenset({"n", "no", "false"})
READ_AS_YES, READ_AS_NO = FLAG_YES | {"1"}, FLAG_NO | {"0"}


def yes_no_levels(levels: Collection[str]) -> tuple[str, str] | None:
    """A yes/no column's two levels, its yes first ('yes' and 'no', 'Y' and 'N', '1' and '0'),
    or None for any other list (codes '0' and '1' among them): a cell written as another
    spelling of yes or no (:data:`READ_AS_YES`, :data:`READ_AS_NO`, in any letter case; never
    't' or 'f') is read as that level. Two newcomers' flags were written Yes, yes, Y and 1."""
    if len(levels) != 2:
        return None
    yes = [level for level in levels if level.strip().casefold() in FLAG_YES]
    no = [level for level in levels if level.strip().casefold() in FLAG_NO]
    return (yes[0], no[0]) if len(yes) == 1 and len(no) == 1 else None


def category_levels(schema: Schema) -> dict[str, list[str]]:
    """Each categorical column's categories and their declared spellings: a missing-value marker
    listed there, or equal in value to one ('09' for a marker '9'), stays what it spells
    (helper-109 L1: a spelling '09' of a level was emptied by the marker '9')."""
    return {column.name: [*column.levels, *(spelling for written in (column.spellings or {}).values()
                                            for spelling in written)]
            for column in schema.categorical_columns}
