"""Check a hospital extract against the schema before anything is trained on it.

Every problem is reported by column, with the number of rows affected and a few example
row numbers (never the values: they are patient data); nothing is dropped or repaired silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fedsyn.data.grid import bin_index, numeric_bins
from fedsyn.data.schema import (
    DECIMAL_COMMA,
    MANY_CATEGORIES,
    NO_WORDS,
    RARE_LEVEL_ROWS,
    THOUSANDS_GROUPED,
    YES_WORDS,
    Column,
    ColumnKind,
    Schema,
    as_numbers,
    is_number,
    lists_no_level,
    names_like_values,
    off_step,
    separators_read,
    spell_category,
)
from fedsyn.errors import InputDataError, closest_name

_EXAMPLES = 3
RowNumbering = Literal["line", "row"]


@dataclass(frozen=True)
class Problem:
    """One kind of problem in one column."""

    column: str
    kind: str
    rows: int
    examples: list[str] = field(default_factory=list)
    counted: str = "row(s)"  # what ``rows`` counts

    def describe(self) -> str:
        """Where first, then what is wrong: a kind ends with how to fix it, so it ends the line. A
        note about several columns ('(bounds)') or the file ('(every column)') is named as such,
        not as a column ("column '(bounds)'" read as a column of that name)."""
        shown = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        return f"{self._where}, {self.rows} {self.counted}{shown}: {self.kind}"

    def named(self) -> str:
        """Where and what, without how many rows or which: for a log that may go to a collector
        ("(1)" beside a stay over 365 days is one patient; ninth review, F2)."""
        return f"{self._where}: {self.kind}"

    @property
    def _where(self) -> str:
        return self.column.strip("()") if self.column.startswith("(") else f"column '{self.column}'"


@dataclass(frozen=True)
class ValidationReport:
    """What validating an extract found: ``problems`` (a record or the file does not fit the
    schema) and ``notes``, by column, with row counts and where to look, never a value."""

    problems: list[Problem]
    n_rows: int
    # What fits the schema but an operator should hear (values finer than the declared
    # precision): never a reason to refuse or drop a record.
    notes: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.ok:
            lines = [f"{self.n_rows} rows fit the schema."]
        else:
            lines = [f"{len(self.problems)} problem(s) in {self.n_rows} rows:"]
            lines += [f"  - {p.describe()}" for p in self.problems]
        lines += [f"  note: {note.describe()}" for note in self.notes]
        return "\n".join(lines)


class DataValidationError(InputDataError, ValueError):
    """The data does not fit the schema; ``report`` says where."""

    def __init__(self, report: ValidationReport, source: str = "data"):
        self.report = report
        super().__init__(f"{source} does not fit the schema.\n{report.describe()}")


class OutOfDomainRecords(DataValidationError):
    """The file fits the schema but some records do not, and the handling says refuse: dropping,
    clamping or blanking those records (``screen_records``) would let the rest through."""


class WidespreadProblems(DataValidationError):
    """A kind of problem touches more of the extract than its site allows when it starts
    (:meth:`Screening.widespread`): a column whose form changed in a new export (a unit written
    beside each number, a code list renamed), which handling record by record would quietly
    turn into a site training on the few records left."""

    def __init__(self, report: ValidationReport, share: float, source: str = "data"):
        super().__init__(report, source)
        named = "\n".join(f"  - {problem.named()}" for problem in report.problems)
        # Names and kinds, never counts or lines: `client start` says this on a service log that
        # may go to a collector, as a site's screening does (`fedsyn validate` counts, on screen).
        self.args = (f"{source}: out_of_domain would leave out more than {share:.0%} of its records, more than "
                     "the site's policy allows (max_problem_share). Did a new export change these columns' form?"
                     f"\n{named}\nFix the extract or the schema (`fedsyn validate` counts and names the lines), or "
                     "raise max_problem_share in the policy if these records should be left out",)


def numbering_for(path: str | Path) -> RowNumbering:
    """How a person finds a row of this file: CSV lines (header is line 1) or Parquet rows."""
    return "row" if Path(str(path)).suffix.lower() in {".parquet", ".pq"} else "line"


def validate_frame(frame: pd.DataFrame, schema: Schema, numbering: RowNumbering = "line") -> ValidationReport:
    """Every problem of ``frame`` against ``schema``; examples name CSV ``line``s or ``row``s."""
    problems = _file_problems(frame, schema)
    notes: list[Problem] = []
    named: list[str] = []  # each numeric column whose bounds are its extract's own extremes, with which bounds
    crowded: list[str] = []  # each numeric column whose values fill only a few of its bins
    for column in schema.columns:
        if column.name in frame.columns:
            series = frame[column.name].reset_index(drop=True)
            problems.extend(_check_column(series, column, numbering))
            finer = _finer_than_precision(series, column)
            if finer is not None and finer.any():
                notes.append(Problem(column.name, f"value recorded finer than the schema's precision "
                                     f"({column.precision:g}): the release rounds to it. If the extract really "
                                     "records such values, declare a finer precision", int(finer.sum()),
                                     _examples(finer, numbering)))
            sides = _bounds_at_extremes(series, column)
            if sides:
                named.append(f"{column.name} ({' and '.join(sides)})")
            if _crowded(series, column):
                crowded.append(column.name)
            within = _markers_within_bounds(column, [*schema.missing_values, *(column.missing_values or [])])
            if within:
                notes.append(Problem(column.name, f"missing_values marker(s) {', '.join(within)} lie within this "
                                     "column's public bounds, so a real value equal to one is read as missing: "
                                     "if the column records such values, write its missing cells another way, or "
                                     "list a table-wide marker only in the own missing_values of the columns where "
                                     "it means missing",
                                     len(within), counted="marker(s)"))
            listed = _listed_markers(series, column, schema.missing_values)
            if listed is not None and listed.any():
                notes.append(Problem(column.name, "cell(s) hold a missing_values marker that this column also lists "
                                     "among its categories, so they are read as that category, not as missing: "
                                     "remove it from the column's categories if it means missing here",
                                     int(listed.sum()), _examples(listed, numbering)))
    decided = [f"{name} ({' and '.join(parts)})" for name, parts in few_record_columns(frame, schema).items()]
    if decided:  # one note for them all, as for the bounds: a draft's form is read off the rows too (helper-123 F4)
        notes.append(Problem("(schema)", f"{', '.join(decided)}: each rests on a few of this extract's records "
                             f"({FEW_RECORDS}). One record can decide it, and it enters every release's schema.json: "
                             "set it from public knowledge (an instrument's resolution, whole numbers by nature, a "
                             "value missing by design), never from the rows",
                             len(decided), counted="column(s)"))
    unlisted = unlisted_columns(frame, schema)
    if unlisted:
        shown = ", ".join(f"'{name}'" for name in unlisted[:8]) + (f" and {len(unlisted) - 8} more"
                                                                   if len(unlisted) > 8 else "")
        notes.append(Problem("(columns)", f"{shown} not in the schema: left out, never used (an identifier or a "
                             "column dropped from the schema needs no rewriting of the extract)",
                             len(unlisted), counted="column(s)"))
    if named:  # one note for them all: a drafted schema left as it was has one for every numeric column
        notes.append(Problem("(bounds)", f"{', '.join(named)}: each is this extract's own smallest or largest value. "
                             "A bound read off the rows puts a patient's value in the schema and every release: "
                             "use public knowledge (a measure's physiological or assay range, a scale's ends), or, "
                             "where the bound is public (an inclusion criterion, an assay's limit), say so in the "
                             "column's bounds_source",
                             len(named), counted="column(s)"))
    if crowded:
        notes.append(Problem("(bounds)", f"{', '.join(crowded)}: the middle 98 % of each column's values fall in "
                             f"at most a fifth of its bins, so the release tells them apart no finer, and on a "
                             "small table the noise in the empty bins beyond can outweigh them: narrower public "
                             "bounds (a plausible range for these patients, never their own extremes) resolve them "
                             "better, or give a positive measure with a long tail \"transform\": \"log\"",
                             len(crowded), counted="column(s)"))
    return ValidationReport(problems=problems, n_rows=len(frame), notes=notes)


# A numeric column whose middle 98 % of values fall in at most a fifth of its public bins (a
# count's grid grows its bins with the value, so 12 of 63 were 0-64 of 0-1,000) is noted: a
# newcomer's LDH on its assay range 50-5,000 U/L filled 6 bins, and on four sites at epsilon 1
# the release's median came back at 2,690 (real 221); another's ALT on 0-1,000 U/L filled 12 and
# came back with a mean of 448 (real 25), where a limit of 8 bins had said nothing (helper-95).
CROWDED_SHARE = 0.2


def _crowded(series: pd.Series, column: Column) -> bool:
    """Whether the middle 98 % of a numeric column's in-bound values fall in at most
    :data:`CROWDED_SHARE` of the public grid's bins while holding more distinct values than those
    bins (a count with a bin per value, such as visits 0-3, is kept exactly and not noted)."""
    if column.is_categorical:
        return False
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values >= column.bounds[0]) & (values <= column.bounds[1])]
    if values.size < 20:
        return False
    low, high = np.quantile(values, [0.01, 0.99])
    middle = values[(values >= low) & (values <= high)]
    bins = bin_index(column, pd.Series(middle))
    spanned = int(bins.max() - bins.min()) + 1
    return spanned <= CROWDED_SHARE * numeric_bins(column) and np.unique(middle).size > spanned


def _markers_within_bounds(column: Column, markers: list[str]) -> list[str]:
    """The number markers of ``missing_values`` that a numeric column could really hold (within
    its public bounds): every cell equal to one is read as missing, in every column (a
    newcomer's '999' for an unknown age also blanked two real BNP values of 999 pg/mL, without a
    word). From the schema alone."""
    if column.is_categorical:
        return []
    lower, upper = column.bounds
    return [marker for marker in markers if is_number(marker) and lower <= float(marker) <= upper]


def _listed_markers(series: pd.Series, column: Column, markers: list[str]) -> np.ndarray | None:
    """Which cells of a categorical column are a number marker of ``missing_values`` ('999',
    '-1') that the column lists among its categories. A listed marker is kept as a category by
    design (a test result's '-'), but a drafted level '999' kept beside a '999' marker for
    "unknown" was read as a category without a word (a newcomer's finding); None where the
    column lists no number marker."""
    numbers = {marker for marker in markers if is_number(marker)}
    listed = numbers & set(column.categories or []) if column.is_categorical else set()
    if not listed:
        return None
    spelled = series.map(spell_category).where(series.notna())
    return np.asarray(spelled.astype(str).str.strip().isin(listed) & series.notna(), dtype=bool)


def _bounds_at_extremes(series: pd.Series, column: Column) -> list[str]:
    """Which bounds ('lower', 'upper') of a numeric column are exactly its extract's smallest or
    largest value: the mark of bounds drafted from the rows and left as they were (a newcomer's
    reviewed schema published a CRP of 1567.9 and a BNP of 17234). A bound of 0, a count's or a
    measure's floor, is public by nature and not pointed at, nor are the bounds of a column
    that says where they come from (``bounds_source``: an inclusion criterion, an assay's
    range; the demo's ages start at its study's 50)."""
    if column.is_categorical or column.bounds_source:
        return []
    # read as the draft read them: a bound drafted from a cell written '40,3' is its own value (helper-123 F2)
    values = pd.to_numeric(separators_read(series), errors="coerce").to_numpy(dtype=float)
    present = values[np.isfinite(values)]
    if present.size == 0:
        return []
    return [side for side, bound, value in (("lower", column.lower, present.min()), ("upper", column.upper,
                                                                                       present.max()))
            if bound is not None and bound != 0 and value == bound]


# A column's precision, continuous kind or nullable flag that fewer of an extract's records than
# RARE_LEVEL_ROWS call for (or, for the first two, under this share of its values) rests on them.
FEW_RECORDS_SHARE = 0.1
FEW_RECORDS = (f"a precision that fewer than {RARE_LEVEL_ROWS} values, or under {FEW_RECORDS_SHARE * 100:g} % of them, "
               f"are recorded to; continuous for that few values with a fraction; nullable for fewer than "
               f"{RARE_LEVEL_ROWS} empty cells")


def few_record_columns(frame: pd.DataFrame, schema: Schema) -> dict[str, list[str]]:
    """Of ``schema``'s columns, those whose ``precision``, continuous kind or ``nullable`` flag
    rests on a few of ``frame``'s records (:data:`FEW_RECORDS`), with which ('precision',
    'continuous', 'nullable'): names only. A draft reads each off the rows, as it reads the
    bounds (:func:`_bounds_at_extremes`), and one patient's third decimal, fraction or empty cell
    decides it; once reviewed it enters every release's schema.json, where only the bounds were
    checked (helper-123 F4). Cells are read as the draft reads them (:func:`separators_read`);
    ``frame``'s missing-value markers are empty already, as an extract is read."""
    found = {}
    for column in schema.columns:
        if column.name not in frame.columns:
            continue
        cells = frame[column.name]
        values = pd.to_numeric(separators_read(cells.dropna()), errors="coerce").to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        # how many values need the precision (are off the next coarser power of ten), and have a fraction
        precise = int(off_step(values, _coarser(column.precision)).sum()) if column.precision is not None else 0
        fractional = int((values != np.round(values)).sum()) if column.kind is ColumnKind.CONTINUOUS else 0
        few = max(RARE_LEVEL_ROWS, FEW_RECORDS_SHARE * len(values))
        parts = [part for part, count in (("precision", precise), ("continuous", fractional)) if 0 < count < few]
        if column.nullable and 0 < int(cells.isna().sum()) < RARE_LEVEL_ROWS:
            parts.append("nullable")
        if parts:
            found[column.name] = parts
    return found


def _coarser(step: float) -> float:
    """The smallest power of ten coarser than ``step`` (0.01: 0.1; 5 and 1: 10; 0.25: 1): what a
    value not recorded to ``step`` would be recorded to."""
    return float(10.0 ** (math.floor(math.log10(step) + 1e-9) + 1))


def _finer_than_precision(series: pd.Series, column: Column) -> np.ndarray | None:
    """Which in-bound values of a numeric column are not multiples of its declared precision
    (bounds that are atoms excepted: they are values of their own; a fractional value of an
    integer column is a problem already); None without one."""
    if column.precision is None:
        return None
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    low, high = column.bounds
    with np.errstate(invalid="ignore"):
        inside = (values >= low) & (values <= high)
    if column.has_bound_atoms:
        inside &= (values != low) & (values != high)
    else:  # a fractional value of an integer column is already a problem of its own
        inside &= values == np.round(values)
    return np.asarray(off_step(values, column.precision) & inside & np.isfinite(values))


def _file_problems(frame: pd.DataFrame, schema: Schema) -> list[Problem]:
    """Problems of the file as a whole (its columns, its having rows), not of any one record."""
    problems: list[Problem] = []
    expected = schema.column_names
    if frame.empty:
        problems.append(Problem("(every column)", "the file has no rows: nothing to train on", 0))
    missing = [c for c in expected if c not in frame.columns]
    unmatched = [str(c) for c in frame.columns if c not in expected]
    extra = unlisted_columns(frame, schema)
    if unmatched and not extra:  # names that look like a record's values
        problems.append(Problem("(header line)", f"{len(unmatched)} of the file's column names are not in the "
                                "schema and some look like values (numbers, dates, categories or empty cells), so "
                                "none is shown: if the file has no header line, its first record was read as "
                                "names. Make the file's first line name its columns as the schema does",
                                len(frame)))
        if len(missing) == len(expected):  # no name matched: one line says it, not one per schema column
            problems.append(Problem("(every column)", f"none of the schema's {len(expected)} columns is named in "
                                    "the file's first line", len(frame)))
            missing = []
    for name in missing:
        guess = _close_name(name, extra, len(missing) - 1)
        short = None if guess else _abbreviation(name, extra)
        maybe = f"; the file has '{short}': if that is this column under a short name, rename it" if short else ""
        hint = (f" (the file has '{guess}': misspelt? rename one of them)" if guess
                else ": add it to the extract (with empty cells if this site does not record it, and the column "
                     f"nullable in the schema), or remove it from the schema if no site records it{maybe}")
        problems.append(Problem(name, f"column missing from the file{hint}", len(frame)))
    # A column the schema does not list is left out (unlisted_columns): a newcomer dropped columns
    # from the schema as the plan advised and had to rewrite six extracts. A misspelt header is
    # still caught, as the schema's own column missing from the file (with its did-you-mean).
    return problems


def unlisted_columns(frame: pd.DataFrame, schema: Schema) -> list[str]:
    """The file's columns that the schema does not list: left out, never used. None where one
    of them looks like a value, which :func:`_file_problems` refuses: without a header line a
    file's "names" are its first record's values, never printed. One name that looks like a
    value (a number, a date, a category, an empty cell, which pandas names 'Unnamed: 42', or
    one written as its column's values are: :func:`~fedsyn.data.schema.names_like_values`, the
    draft's rule too) puts the whole line in doubt: its other cells are that record's values too
    (an ID, a diagnosis, a ward), however name-like they look."""
    outside = [c for c in frame.columns if c not in schema.column_names]
    unmatched = [str(c) for c in outside]
    if all(name in frame.columns for name in schema.column_names):
        return unmatched  # a line naming every schema column is a header: 'Unnamed: 0', a pandas index, too
    categories = frozenset(level for column in schema.categorical_columns for level in column.levels)
    if names_like_values(frame.loc[:, outside], categories):  # only these names are in question
        return []
    return unmatched


def schema_columns(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """``frame``'s columns that the schema lists, in its order: what any mechanism reads."""
    return frame[[name for name in schema.column_names if name in frame.columns]]


def _close_name(name: str, candidates: list[str], others: int) -> str | None:
    """The candidate column name ``name`` is most likely a misspelling of, if any (case
    ignored). When ``name`` and one candidate are the only columns left unmatched on either
    side (``others``: how many names stand beside ``name``), a looser likeness will do
    ('smoking' for 'smoker', never 'patient_id' for 'mgus')."""
    lone = len(candidates) == 1 and others == 0
    return closest_name(name, candidates, cutoff=0.5 if lone else 0.8)


def _abbreviation(name: str, candidates: list[str]) -> str | None:
    """The one candidate that abbreviates ``name`` as a lab's short name does: three letters or
    more, its first letter first, then only consonants of ``name`` in their order (case ignored).
    helper-95's site file named hemoglobin 'Hgb', which no spelling likeness finds; a shorter or
    vowelled name (bilirubin's 'bun', potassium's 'pt') is another lab's (helper-97)."""
    def letters(text: str) -> str:
        return "".join(c for c in text.lower() if c.isalpha())

    def abbreviates(short: str, long: str) -> bool:
        rest = iter(c for c in long[1:] if c not in "aeiou")
        return 3 <= len(short) < len(long) and short[0] == long[0] and set(short[1:]).isdisjoint("aeiou") \
            and all(c in rest for c in short[1:])

    found = [c for c in candidates if abbreviates(letters(c), letters(name))]
    return found[0] if len(found) == 1 else None


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
    return [Problem(column.name, kind, int(mask.sum()), _examples(mask, numbering))
            for kind, mask in _column_masks(series, column)]


def _as_category_text(series: pd.Series) -> pd.Series:
    """Categories spelled as the schema spells them (a code read as 1.0 is '1')."""
    return series.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))


def _spelling_hint(unknown: pd.Series, categories: list[str]) -> str:
    """A hint when unknown values are the schema's categories in another letter case ('f' for
    'F'), or, for a yes/no column, yes or no written another way ('Y', '1', 'true': a newcomer's
    eleven flags, three quarters of whose bad rows the letter-case hint did not cover): said
    without any value, since the rows' spelling is theirs, and without how many: the text is
    the problem's kind, which the site's log keeps (:meth:`Problem.named`; "(1 of them)" was one
    patient's outcome, tenth review F1)."""
    folded = {category.strip().casefold() for category in categories}
    text = unknown.str.strip().str.casefold()
    hints = []
    matching = text.isin(folded)
    if matching.any():
        hints.append(f"they are the schema's categories in another letter case{_some(matching)}")
    if folded & YES_WORDS and folded & NO_WORDS:
        synonyms = ~matching & text.isin(YES_WORDS | NO_WORDS)
        if synonyms.any():
            hints.append(f"they are yes or no written another way{_some(synonyms)}, as Y / N, 1 / 0 or true / false")
    if not hints:
        return ""
    return (f"; {'; '.join(hints)}. Write them exactly as the schema does, or list them under the column's "
            "'spellings' in the schema (docs/schema.md), which reads them as their level")


def _some(hinted: pd.Series) -> str:
    """Whether a hint covers all the cells it is about or some: never how many (the hint is in
    the problem's kind, which the site logs)."""
    return "" if hinted.all() else " (some of them)"




def _column_masks(series: pd.Series, column: Column) -> list[tuple[str, np.ndarray]]:
    """Each kind of record-level problem in one column, with the rows that have it."""
    found: list[tuple[str, np.ndarray]] = []
    is_null = series.isna().to_numpy()
    if is_null.any() and not column.nullable:
        found.append(("missing value where the schema does not allow one (an empty cell, or one holding a "
                      "missing_values marker, which is read as empty): fill in or remove those rows, or mark "
                      "the column nullable in the schema if values may really be missing", is_null))
    present = ~is_null
    if column.kind is ColumnKind.CATEGORICAL:
        text = _as_category_text(series)
        unknown = present & ~text.isin(column.categories).to_numpy()
        if unknown.any() and lists_no_level(column):  # a newcomer was told to add an MRN
            found.append((f"the draft listed none of this column's values (more than {MANY_CATEGORIES}, or each held "
                          f"by fewer than {RARE_LEVEL_ROWS} rows: free text, a date, a record number): "
                          "an identifier or a date is dropped from the schema (the extract may keep it); otherwise "
                          "list the column's public levels (grouping rare ones), or make it a number column", unknown))
        elif unknown.any():
            hint = _spelling_hint(text[unknown], column.levels)
            fix = "correct those rows, or add the category to the schema's list if it is a real one"
            found.append((f"category not in the schema's list {column.categories}"
                          + (f"{hint}. Otherwise {fix}" if hint else f": {fix}"), unknown))
        return found
    numeric = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    non_numeric = present & np.isnan(numeric)
    grouped = non_numeric & series.astype(str).str.strip().str.fullmatch(THOUSANDS_GROUPED).to_numpy(dtype=bool)
    if grouped.any():
        found.append(("value is written with thousands separators (1,234.5): write it without them (1234.5)",
                      grouped))
        non_numeric = non_numeric & ~grouped
    comma = non_numeric & series.astype(str).str.strip().str.fullmatch(DECIMAL_COMMA).to_numpy(dtype=bool)
    if comma.any():  # a newcomer's temperatures, 30 % written 37,2, were told only "not a number"
        found.append(("value is written with a decimal comma (37,2): write it with a decimal point (37.2), e.g. "
                      "export the file with '.' as the decimal separator", comma))
        non_numeric = non_numeric & ~comma
    if non_numeric.any():
        found.append(("value is not a number: write the number (a lab's '<0.3' as the public detection limit, "
                      "0.3, or make 0.3 the column's bound, where such cells are read as it; a unit removed), or "
                      "leave the cell empty and mark the column nullable; an extract that writes 'missing' as "
                      "'?' or '-' lists that marker in the schema's missing_values (or the column's own)",
                      non_numeric))
    checkable = present & ~np.isnan(numeric)
    infinite = checkable & ~np.isfinite(numeric)
    if infinite.any():
        found.append(("value is infinite", infinite))
    finite = checkable & np.isfinite(numeric)
    out = finite & ((numeric < column.lower) | (numeric > column.upper))
    if out.any():
        found.append((f"value outside the public bounds [{column.bounds[0]:g}, {column.bounds[1]:g}]: correct those "
                      "rows, or widen the schema's public bounds if such values are real", out))
    if column.kind is ColumnKind.INTEGER:
        fractional = finite & (numeric != np.round(numeric))
        if fractional.any():
            found.append(("value is not a whole number: round those values, or declare the column continuous "
                          "in the schema if fractions are real", fractional))
    return found


# -- a site's handling of out-of-domain records -------------------------------------------------

RecordHandling = Literal["drop", "clamp", "blank", "refuse"]


@dataclass(frozen=True)
class Screening:
    """The extract a mechanism may read, and what screening changed (counts: local only)."""

    frame: pd.DataFrame
    dropped: int
    clamped: int
    problems: list[Problem]  # the record-level problems found, by column, before handling
    notes: list[Problem] = field(default_factory=list)  # what fits but its operator should hear
    blanked: int = 0  # cells emptied (``blank``)

    @property
    def changed(self) -> str:
        """What screening did, by count (never a value): for the operator's log and notes. Only
        what happened is said (a blank run's notes said '0 number(s) moved onto the bounds')."""
        parts = [f"{self.dropped} record(s) left out" if self.dropped else "",
                 f"{self.clamped} number(s) moved onto the schema's bounds" if self.clamped else "",
                 f"{self.blanked} cell(s) emptied" if self.blanked else ""]
        return ", ".join(part for part in parts if part) or "nothing changed"

    def widespread(self, share: float) -> list[Problem]:
        """When screening left out more than ``share`` of the extract's records, the problems
        found in more than that share (all of them, if none alone is); else none. Records that
        ``clamp`` or ``blank`` repaired stay in: a site that chose them for a code in many rows
        (999 for 'unknown') is not refused."""
        if self.dropped <= share * self.records:
            return []
        return [problem for problem in self.problems if problem.rows > share * self.records] or self.problems

    @property
    def records(self) -> int:
        """The extract's records before screening: those kept and those left out."""
        return len(self.frame) + self.dropped


def screen_records(frame: pd.DataFrame, schema: Schema, handling: RecordHandling, source: str = "data") -> Screening:
    """The extract with its out-of-domain records handled as the site's policy says.

    A file-level problem (missing columns, no rows) always raises
    :class:`DataValidationError`. Record-level problems (unknown category, a value outside
    the public bounds, not a number, not whole, missing where not allowed) are handled per
    record: ``drop`` removes the record, ``clamp`` moves a finite out-of-bounds number to
    the nearest bound and rounds a fractional value of an integer column (a record with any
    other problem is dropped), ``blank`` empties every cell with a problem in a nullable
    column (an age of 999 for "unknown": the record stays, without its age; a record with a
    problem in a column that cannot be empty is dropped), ``refuse`` raises. Dropping or repairing each record on its
    own keeps neighbouring extracts neighbours, so the guarantee is unchanged; a refusal, by
    contrast, is decided by whatever records are out of domain.
    """
    file_level = _file_problems(frame, schema)
    if file_level:
        raise DataValidationError(ValidationReport(file_level, len(frame)), source)
    report = validate_frame(frame, schema, numbering_for(source))
    frame = schema_columns(frame, schema)
    if report.ok:
        return Screening(frame, 0, 0, [], report.notes)
    if handling == "refuse":
        raise OutOfDomainRecords(report, source)
    frame = frame.reset_index(drop=True)
    repaired = np.zeros(len(frame), dtype=int)  # cells clamped or emptied, per record
    if handling == "blank":
        frame = frame.copy()
        for column in schema.columns:
            masks = [mask for _, mask in _column_masks(frame[column.name], column)] if column.nullable else []
            if masks:
                cells = np.logical_or.reduce(masks)
                repaired += cells
                frame[column.name] = frame[column.name].mask(cells)
    if handling == "clamp":
        frame = frame.copy()
        for column in schema.columns:
            if column.kind is ColumnKind.CATEGORICAL:
                continue
            numeric = pd.to_numeric(frame[column.name], errors="coerce")
            clipped = numeric.clip(column.lower, column.upper)
            if column.kind is ColumnKind.INTEGER:
                clipped = clipped.round()
            changed = numeric.notna() & np.isfinite(numeric) & (clipped != numeric)
            repaired += changed.to_numpy(dtype=bool)
            # Only the clamped cells change: writing back the whole parsed column emptied every
            # other record's text cell ('pending'), which then passed as missing, so one record
            # needing a clamp kept records that were otherwise dropped (helper-109 H1)
            frame[column.name] = frame[column.name].astype(object).where(~changed, clipped)
    bad = np.zeros(len(frame), dtype=bool)
    for column in schema.columns:
        for _, mask in _column_masks(frame[column.name], column):
            bad |= mask
    kept = frame.loc[~bad].reset_index(drop=True)
    if kept.empty:
        raise DataValidationError(ValidationReport([*report.problems, Problem(
            "(every column)", "no record fits the schema once out-of-domain records are dropped", len(frame))],
            len(frame)), source)
    kept_repairs = int(repaired[~bad].sum())  # a record left out counts as left out, not repaired too
    for column in schema.columns:  # every cell left is a number or empty: numbers, as a clean file's are read
        if not column.is_categorical:
            kept[column.name] = as_numbers(kept[column.name])
    return Screening(kept, int(bad.sum()), kept_repairs if handling == "clamp" else 0, report.problems, report.notes,
                     kept_repairs if handling == "blank" else 0)
