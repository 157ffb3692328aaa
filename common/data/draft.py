"""Drafting a schema from a site's private extract, and the hints that come with the draft.

``fedsyn schema draft`` reads a hospital's own rows, on the hospital's machine, to propose a
schema (:func:`draft_schema`) for a person to review, and prints the columns a reviewer should
look at (markers read as missing, stray text, far bounds, outcome proxies, ...): names and
hints only, never a patient's value. It is apart from :mod:`fedsyn.data.schema`, the public
contract every hospital and the coordinator share and every reader of an extract follows:
this module reads private rows to guess, the contract never does. It imports the contract
(how cells are read, spelled and marked missing); the contract never imports it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping

import numpy as np
import pandas as pd
from pydantic import ValidationError

from fedsyn.data.grid import bound_value_bins
from fedsyn.data.schema import (
    FLAG_NO,
    FLAG_YES,
    MANY_CATEGORIES,
    NO_WORDS,
    NUMBER_AND_UNIT,
    RARE_LEVEL_ROWS,
    READ_AS_NO,
    READ_AS_YES,
    RECORD_TOKEN,
    WHOLE_NUMBER_WITH_POINT,
    YES_WORDS,
    Column,
    ColumnKind,
    Schema,
    SchemaError,
    censored,
    headerless_names,
    is_number,
    lists_no_level,
    names_like_values,
    numbers_with_units,
    off_step,
    read_as_levels,
    schema_problems,
    separators_read,
    spell_category,
    spelling_key,
    text_columns,
    without_markers,
    without_schema_markers,
    written_limits,
    yes_no_levels,
    zero_padded_codes,
)
from fedsyn.errors import did_you_mean

# A column whose values are numbers but for at most this share (a unit written beside a few
# values, a '<5' below a detection limit) is drafted as a number: as a category it would get
# hundreds of levels and the placeholder, and validation would never point at the stray cells.
STRAY_TEXT_SHARE = 0.05
# Or whose other cells are at most this many words, each written the same way many times, in
# under half of the cells: a lab's 'not done' in 35 % of troponins, 'haemolysed' in 5 % of
# potassiums. A newcomer's four such lab columns were drafted as categories of number levels, or
# as identifiers, with no word on why (docs/schema.md).
STRAY_WORDS = 3
STRAY_WORD_REPEATS = 5
# What a draft lists for a column of more levels, or of rare levels only: an identifier's (a
# record number's), a date's or a note's values would be patients' own, written into a file
# meant to be shared, and an unreviewed schema would hand them to the generator. So none is
# written; every row fails validation on this placeholder until the column is dropped or its
# public levels are listed.
UNLISTED_LEVELS = "REVIEW: none of the extract's levels written; list the public ones or drop the column"


def _written_level(value: object) -> str:
    """A non-empty cell as a draft lists it: spelled as a category, stray spaces off ('F ' is 'F'),
    a whole number written with a decimal point as the whole number ('2.0' is '2', as every reader
    takes it: :func:`~fedsyn.data.schema.read_as_levels`; a newcomer's CSV with gaps beside a
    Parquet file of whole numbers drafted 16 levels for 8 values)."""
    text = str(spell_category(value)).strip()
    whole = WHOLE_NUMBER_WITH_POINT.fullmatch(text)
    return whole.group(1) if whole else text


def recorded_precision(values: np.ndarray) -> float | None:
    """The coarsest power of ten (down to 10^-6) every value is a multiple of: the decimals an
    extract records (6.8, 7.5: 0.1). None when the values carry more decimals than that. Read
    off private rows: for a draft that a person reviews, never for training."""
    for places in range(7):
        if not off_step(values, 10.0 ** -places).any():
            return float(10.0 ** -places)
    return None


# Cells that look like an extract's way of writing "missing" (beyond pandas' own 'NA', 'NULL', ...):
# punctuation alone, or one of these words in any letter case. 'unknown' and 'none' are often real levels.
_MARKER_PUNCTUATION = re.compile(r"[?.*_/\\-]{1,3}")
# ('nil' is a urine dipstick's level, 'Na' sodium: neither is in the list.)
_MARKER_WORDS = frozenset({"na", "n/a", "n.a.", "nan", "null", "missing", "#n/a"})


def is_missing_marker(text: str) -> bool:
    """Whether ``text`` (spaces removed) looks like a way of writing "missing"."""
    return bool(_MARKER_PUNCTUATION.fullmatch(text)) or (text.lower() in _MARKER_WORDS and text != "Na")


def _text_values(frame: pd.DataFrame) -> dict[str, set[str]]:
    """Each text column's distinct values, their surrounding spaces removed."""
    return {name: set(frame[name].dropna().astype(str).str.strip().unique()) for name in text_columns(frame)}


def marker_levels(text_values: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """Of the text columns' values (:func:`_text_values`), the columns whose marker-like values
    are their levels, never "missing": a column of short symbols with two or more that are not
    numbers ('+' and '-' of a test result, '1+', '2+' and '-' of a dipstick), or a column holding
    one value only (a '*' flag, empty otherwise). A '?' among numbers or words stays a marker."""
    levels = {}
    for name, values in text_values.items():
        symbols = [value for value in values if not is_number(value)]
        symbolic = all(len(value) <= 3 and not any(char.isalpha() for char in value) for value in values)
        if len(values) == 1 or (symbolic and len(symbols) >= 2):
            levels[name] = values
    return levels


def missing_markers(text_values: Mapping[str, set[str]], levels: Mapping[str, set[str]]) -> list[str]:
    """The missing-value markers the text columns' values use (see :func:`is_missing_marker`),
    from the columns whose ``levels`` (:func:`marker_levels`) they are not."""
    return sorted({value for name, values in text_values.items() if name not in levels
                   for value in values if is_missing_marker(value)})


def column_labels(names: list[str], doubtful: bool) -> dict[str, str]:
    """How a draft's notes and errors name each column: quoted, or by its place in the file ('#3')
    where the header line is ``doubtful`` (a name looks like a value, :func:`names_like_values`):
    one such name puts the whole line in doubt, as validate holds, since its other names would be
    the same record's values (helper-123 F1: a patient's name, record number and address were
    printed as three columns' names)."""
    return {name: f"#{place}" if doubtful else f"'{name}'" for place, name in enumerate(names, 1)}


def draft_schema(frame: pd.DataFrame, name: str = "table", outcome: str | None = None,
                 dates: Collection[str] = (), like_values: list[str] | None = None) -> Schema:
    """Guess a schema from a local extract; every guessed bound or category list needs review.

    The draft reads min/max and category sets off the private rows, so it is a starting
    point for a person, never something to train on as it is. Cells that look like a way of
    writing "missing" ('?', '-', 'na') become the schema's ``missing_values`` and are read as
    empty, so a lab column with a few '?' is still drafted as a number. ``dates`` names
    columns to draft as dates whatever their cells (dates in one of several files: their text in
    another, concatenated, is no date type). ``like_values``: the names that look like values
    (:func:`names_like_values`), when the caller has them already. Errors name columns, never
    values, and by their place where the header line is in doubt.
    """
    names = [str(col) for col in frame.columns]
    like_values = names_like_values(frame) if like_values is None else like_values
    if headerless_names(names, like_values):
        raise SchemaError("the extract's first line does not look like column names (half of them or more look like "
                          "values: numbers, dates, record numbers, values of their own columns or written as those "
                          "are), so the file seems to lack a header line: add one naming the columns, then draft "
                          "again")
    if outcome is not None and outcome not in names:
        shown = [] if like_values else names  # one name like a value puts the whole line in doubt
        raise SchemaError(f"outcome '{outcome}': the extract has no such column{did_you_mean(outcome, shown, 0.5)}")
    text_values = _text_values(frame)
    levels = marker_levels(text_values)
    markers = missing_markers(text_values, levels)
    frame = without_markers(frame, markers, levels)
    try:
        return Schema(name=name, columns=[_drafted_column(frame[col], str(col) == outcome, str(col) in dates)
                                          for col in frame.columns],
                      outcome=outcome,
                      missing_values=markers)
    except ValidationError as exc:
        problems = schema_problems(exc, None)
        if like_values:  # a column validator quotes its column's name: here a record's value (helper-127 M2)
            for quoted, label in column_labels(names, doubtful=True).items():
                problems = problems.replace(f"'{quoted}'", label)
        raise SchemaError(f"could not draft a schema: {problems}") from None


def _drafted_column(series: pd.Series, outcome: bool = False, date: bool = False) -> Column:
    """One column's guess: numeric with its observed range (its stray text cells left for
    validation to point at, :func:`stray_text_cells`; cells written as a limit, '<0.01', however
    many, :func:`censored_cells`), or categorical with its observed levels."""
    name, nullable, values = str(series.name), bool(series.isna().any()), series.dropna()
    if date or date_like(series) or POSTCODE_NAME.fullmatch(name.strip().casefold()):
        # a Parquet export's dates read as numbers: their bounds two patients' dates; a postcode
        # drafted as a measure had its bounds at two patients' postcodes (helper-107 M3)
        return Column(name=name, kind=ColumnKind.CATEGORICAL, categories=[UNLISTED_LEVELS], nullable=nullable,
                      needs_review=True)
    written_values, values = values, separators_read(values)  # the text stays the levels if it is no number
    numeric = pd.to_numeric(values, errors="coerce")
    # A code written zero-padded ('0052' for an ICD code) is a code however many there are: a
    # newcomer's 300 diagnosis codes were drafted as the integers 52-7802 (helper-107 M1).
    coded = zero_padded_codes(written_values)
    unknown_words = _words_for_unknown(values) if len(values) > 0 else []
    if len(values) > 0 and not coded and (_stray_cells(values) <= STRAY_TEXT_SHARE * len(values) or unknown_words) \
            and _measure_like(numeric.dropna()) and not _identifier_like(numeric.dropna()):
        nullable = nullable or bool(unknown_words)  # its words are its own missing_values: empty cells
        limits = _limit_values(values)
        unit = _written_unit(values)  # its cells written with it are read as their numbers
        if unit is not None:
            numeric = numeric.fillna(numbers_with_units(values)[0])
        numeric = numeric.dropna()
        integral = bool((numeric == numeric.round()).all())
        # A cell written as a limit ('<0.01') says the limit is a value of the column: drafted as
        # its bound, the release keeps the cells written as it (docs/schema.md).
        lower = min([float(numeric.min()), *limits["<"]])
        upper = max([float(numeric.max()), *limits[">"]])
        return Column(name=name, kind=ColumnKind.INTEGER if integral else ColumnKind.CONTINUOUS, lower=lower,
                      upper=upper if upper > lower else lower + 1.0,
                      precision=None if integral else recorded_precision(numeric.to_numpy(dtype=float)),
                      nullable=nullable, missing_values=unknown_words or None, unit=unit, needs_review=True)
    if not outcome and not coded and _count_like(numeric):  # an outcome is categorical (a Rankin scale's 0-6 too)
        return Column(name=name, kind=ColumnKind.INTEGER, lower=0.0, upper=float(numeric.max()), nullable=nullable,
                      needs_review=True)
    values = written_values
    # Spelled as an extract is read: stray spaces around a level are that level ('F ' is 'F').
    # Levels that are numbers in their numbers' order (a coma score's 8, 9, 10, not 10, 8, 9).
    written = Counter(_written_level(v) for v in values)
    counts = _yes_and_no_together(written)
    flag = counts is not written
    counts, any_case = (counts, set()) if flag else _letter_cases_together(counts)
    categories = sorted((level for level, rows in counts.items() if rows >= RARE_LEVEL_ROWS),
                        key=lambda level: (0, float(level), level) if is_number(level) else (1, 0.0, level))
    if len(counts) > MANY_CATEGORIES or (counts and not categories) \
            or any(map(_note_like, categories)) or _names_like(categories):
        # an identifier, a date or free text: its values are patients', never written (a number
        # column too, :func:`_identifier_like`: its bounds would be two patients' record numbers)
        categories = [UNLISTED_LEVELS]
    categories = categories or ["(none)"]
    spellings = {level: [level] for level in categories if level in any_case}
    return Column(name=name, kind=ColumnKind.CATEGORICAL, categories=categories, nullable=nullable,
                  spellings=spellings or None, needs_review=True)


def _note_like(level: str) -> bool:
    """Whether a level reads as a note rather than a code: longer than 48 characters, of seven
    words or more, or of five or more with a digit ('moved to 14 Elm St', 'pt called re: bill,
    see chart 200794'). A newcomer's comment column repeated each note in hundreds of rows (as
    copied-forward notes do), so the rare-level rule kept them all, names and addresses among
    them: a column holding one such level gets the placeholder, and its notes are never written."""
    words = level.split()
    return len(level) > 48 or len(words) >= 7 or (len(words) >= 5 and any(c.isdigit() for c in level))


# A person's name as an extract writes it: after a title, the name capitalised ('Dr. José Núñez',
# 'Mrs Gomez'; never 'MS relapsing', 'Dr referral'), or as 'Surname, Given' ('Gomez, Maria').
_TITLED_NAME = re.compile(r"^(?:[Dd]r|[Mm]rs?|[Mm]x|[Mm]iss|[Pp]rof|Ms)\.?\s+[^\W\d_a-z]")
_SURNAME_FIRST = re.compile(r"^[^\W\d_a-z][^\W\d_]*(?:[-'’][^\W\d_]+)*,\s*[^\W\d_a-z][^\W\d_]*\.?"
                            r"(?:\s+[^\W\d_a-z][^\W\d_]*\.?)?$")


def _names_like(levels: list[str]) -> bool:
    """Whether a column's levels read as people's names: one after a title (:data:`_TITLED_NAME`),
    or most of them written 'Surname, Given' (:data:`_SURNAME_FIRST`; one such level among codes
    is a code, 'Black, African American', 'Fracture, Hip'). A newcomer's attending clinicians
    ('Dr. José Núñez', five of them, hundreds of rows each) passed the rare-level and note rules
    and were drafted as public levels: one review away from every release's schema.json."""
    def acronyms(level: str) -> bool:  # 'MRI, CT'
        return all(len(word) <= 4 and word.isupper() for word in re.findall(r"[^\W\d_]+", level))

    surname_first = sum(bool(_SURNAME_FIRST.match(level)) and not acronyms(level) for level in levels)
    return any(_TITLED_NAME.match(level) for level in levels) \
        or (len(levels) >= 2 and surname_first > len(levels) / 2)


def _letter_cases_together(counts: Counter[str]) -> tuple[Counter[str], set[str]]:
    """Words written in several letter cases ('Emergency', 'emergency', 'EMERGENCY') counted as
    one level, under its most common writing, and the levels so merged: the draft lists each
    once, read in any letter case (its ``spellings`` holding itself), where each writing alone
    may be rarer than a level must be to be drafted. Short codes are not merged: letter case
    tells genotypes ('AA', 'Aa', 'aa') or codes ('F' and 'f') apart as often as not (the
    draft names them, :func:`case_variant_columns`); the draft names the columns it merged
    (:func:`letter_case_columns`)."""
    groups: dict[str, list[str]] = {}
    for level in counts:
        groups.setdefault(level.casefold() if len(level) >= MERGED_CASE_LENGTH else level, []).append(level)
    together: Counter[str] = Counter()
    merged: set[str] = set()
    for writings in groups.values():
        level = max(writings, key=lambda writing: (counts[writing], writing))
        together[level] = sum(counts[writing] for writing in writings)
        if len(writings) > 1:
            merged.add(level)
    return together, merged


MERGED_CASE_LENGTH = 3  # the fewest characters of a level the draft reads in any letter case


def letter_case_columns(schema: Schema) -> list[str]:
    """The categorical columns with a level read in any letter case (a level among its own
    ``spellings``, as the draft writes one it merged): named, for a reviewer to undo where
    letter case tells levels apart."""
    return [column.name for column in schema.categorical_columns
            if any(level in written for level, written in (column.spellings or {}).items())]


def _yes_and_no_together(counts: Counter[str]) -> Counter[str]:
    """A flag's spellings of yes and of no ('Yes', 'yes', 'Y', '1') counted as one level each,
    under its most common spelling, where every level is one of them: each spelling alone may be
    rarer than a level must be to be drafted, and the reader takes the others for it
    (:func:`yes_no_levels`). Any other column's counts as they are."""
    folded = {level: level.casefold() for level in counts}
    if not counts or not all(word in READ_AS_YES | READ_AS_NO for word in folded.values()):
        return counts
    sides = [([level for level in counts if folded[level] in read], words)
             for read, words in ((READ_AS_YES, FLAG_YES), (READ_AS_NO, FLAG_NO))]
    worded = [[level for level in spellings if folded[level] in words] for spellings, words in sides]
    if not all(worded):  # '1' and '0' alone are codes, kept as they are
        return counts
    # Words on both sides where both have one ('yes' and 'no', not 'Y' beside 'no': hospitals
    # writing Y/N and yes/no drafted a newcomer's flag as ['Y', 'no']).
    full = [[level for level in side if len(level) > 1] for side in worded]
    worded = full if all(full) else worded
    together: Counter[str] = Counter()
    for (spellings, _), side in zip(sides, worded, strict=True):
        together[max(side, key=lambda level: (counts[level], level))] = sum(counts[s] for s in spellings)
    return together


def date_like(series: pd.Series) -> bool:
    """Whether a column holds dates or times as such (a Parquet export's timestamps, dates or
    durations), not as text."""
    return bool(pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series)
                or isinstance(series.dtype, pd.PeriodDtype)
                or (series.dtype == object and len(series.dropna()) > 0
                    and series.dropna().map(lambda v: isinstance(v, (dt.date, dt.time, dt.timedelta))).all()))


def _count_like(numbers: pd.Series) -> bool:
    """Whether a column of few values (10 or fewer, drafted as levels otherwise) is a count:
    every cell a whole number, from 0, at least 4 values and no wide gaps between them (prior
    admissions 0-6, ICU days 0-9). docs/schema.md says to keep counts on a linear integer scale,
    where their tables and the release keep the order and the pile at 0; drafted as levels they
    lost both (a newcomer's). Counts pile at 0, 0 their most common value, or run through 8
    values or more shaped as counts are (:func:`_count_shaped`: visits 0-9 most often 2, drafted
    as levels, lost their rare top counts from the list, and the extract failed its own draft).
    A code of 1-5, a 0/1 flag, hospitals numbered 0-3 or 0-9 whose hospital 0 is not the largest
    and a count with 999 for 'unknown' (its own gap, :func:`far_level_columns`) stay levels."""
    if len(numbers) == 0 or numbers.isna().any():
        return False
    distinct, counts = np.unique(numbers.to_numpy(dtype=float), return_counts=True)
    return bool(len(distinct) >= 4 and distinct[0] == 0
                and (counts[0] == counts.max() or (len(distinct) >= 8 and _count_shaped(counts)))
                and (distinct == np.round(distinct)).all() and distinct[-1] + 1 <= 2 * len(distinct))


def _count_shaped(counts: np.ndarray) -> bool:
    """Whether frequencies rise to their most common value in the lower third of the values and
    fall after it, as a count's do (a little sampling noise allowed); hospitals or codes numbered
    0-9 seldom do (helper-100 M-4)."""
    mode = int(np.argmax(counts))
    tail = counts[mode:].astype(float)
    return bool(mode <= len(counts) // 3 and np.all(tail[1:] <= 1.1 * tail[:-1] + 2))


def _written_unit(cells: pd.Series) -> str | None:
    """The unit some of non-empty ``cells`` are written with beside their number, as most of
    them write it, where those cells all give one unit ('mg/dL', 'mg/dl'), in at least
    :data:`RARE_LEVEL_ROWS` cells (one cell's words are no unit, and could be a patient's), and
    their numbers spread as the plain numbers do: nine in ten within the plain numbers' range
    and their median within the plain numbers' middle 80 % (a '5.5 mmol/L' among glucoses of
    70-200 mg/dL, a '170 umol/L' among creatinines of 0.4-11 mg/dL, is another unit, not the
    column's); None otherwise."""
    numbers, units = numbers_with_units(cells)
    written = units.dropna()
    if len(written) < RARE_LEVEL_ROWS or written.nunique() > 1:
        return None
    plain = pd.to_numeric(cells, errors="coerce").dropna()
    with_unit = numbers[units.notna()]
    if len(plain):
        inside = with_unit.between(plain.min(), plain.max()).mean()
        if inside < 0.9 or not plain.quantile(0.1) <= with_unit.median() <= plain.quantile(0.9):
            return None
    spelled = cells[units.notna()].astype(str).str.strip().str.extract(NUMBER_AND_UNIT)[1]
    return str(spelled.value_counts().index[0])


def _limit_values(cells: pd.Series) -> dict[str, list[float]]:
    """The numbers of the cells written as a limit ('<0.01', '>200'), by side."""
    sides, limits = written_limits(cells)
    return {side: limits[sides == side].dropna().astype(float).tolist() for side in "<>"}


def _identifier_like(numbers: pd.Series) -> bool:
    """Whether a column of numbers is a record number or a date written as one (20210317): whole
    numbers, every one distinct and six digits or more, or every one distinct and close to
    consecutive (row numbers); or dates, yyyymmdd with a real month and day. Survival times in
    days are whole and mostly distinct too, but repeat and stay below 100,000. Under 50 values
    (a small hospital's extract, tenth review F2: two patients' MRNs drafted as bounds), dates
    and record numbers are told the same way; close to consecutive numbers are not (too few to
    tell row numbers from a measure's spread). A large measure (a platelet count per µL) may be
    taken for a record number: the reviewer then writes its bounds, which fails safe."""
    if numbers.empty or not bool((numbers == numbers.round()).all()):
        return False
    month, day = (numbers // 100) % 100, numbers % 100
    if numbers.between(18_000_101, 22_001_231).all() and month.between(1, 12).all() and day.between(1, 31).all():
        return True
    if _recurring_record_numbers(numbers):
        return True
    if not numbers.is_unique:
        return False
    if numbers.abs().max() >= 100_000:
        return True
    return bool(len(numbers) >= 50 and numbers.max() - numbers.min() < 1.1 * len(numbers))


def marker_columns(frame: pd.DataFrame, markers: list[str], levels: Mapping[str, Collection[str]]) -> list[str]:
    """The columns of ``frame`` where :func:`without_markers` empties a cell (a marker not among
    the column's ``levels``, where it stays a level): names only, for a reader to check that
    each marker means 'missing' wherever it was read so."""
    emptied = without_markers(frame, markers, levels).isna() & frame.notna()
    return [str(name) for name in frame.columns if emptied[name].any()]


def stray_text_cells(frame: pd.DataFrame, schema: Schema) -> dict[str, int]:
    """Of a draft's numeric columns, how many of the extract's cells are text that is no number
    (the draft's missing-value markers and cells written as a limit aside): counts only, never
    the cells (they are patients')."""
    return _numeric_column_counts(frame, schema, _stray_cells)


def censored_cells(frame: pd.DataFrame, schema: Schema) -> dict[str, int]:
    """Of a draft's numeric columns, how many cells are written as a limit ('<0.01', '>89'): a
    lab value below its assay's detection limit, an age capped for privacy. A newcomer's
    troponin, two thirds '<0.01', was drafted as text with more than 50 levels and the advice to
    drop an identifier; now it is drafted as a number and these cells are counted."""
    return _numeric_column_counts(frame, schema, lambda cells: int(censored(cells).sum()))


def spread_limit_piles(frame: pd.DataFrame, schema: Schema) -> dict[str, list[str]]:
    """Of a draft's integer columns with cells written as a limit, the bounds ('lower', 'upper')
    those cells sit at that get no bin of their own on the column's public grid
    (:func:`fedsyn.data.grid.bound_value_bins`: an integer column's upper bound has one only on a
    scale of at most 64 values), so the release spreads their pile over the neighbouring values:
    a newcomer's eGFR, 35 % '>90' on 0-90, came back 7 % at 90. A continuous column's bounds are
    values of their own whatever the scale."""
    spread = {}
    for column, cells in _numeric_cells(frame, schema):
        if column.kind is not ColumnKind.INTEGER:
            continue
        written = set(written_limits(cells)[0].dropna())
        alone = dict(zip(("lower", "upper"), bound_value_bins(column), strict=True))
        sides = [side for side, mark in (("lower", "<"), ("upper", ">")) if mark in written and not alone[side]]
        if sides:
            spread[column.name] = sides
    return spread


def _numeric_column_counts(frame: pd.DataFrame, schema: Schema, count: Callable[[pd.Series], int]
                           ) -> dict[str, int]:
    """``count`` of each of a draft's numeric columns' non-empty cells (markers read as missing),
    where it is not 0."""
    counts = {column.name: count(cells) for column, cells in _numeric_cells(frame, schema)}
    return {name: found for name, found in counts.items() if found}


POSTCODE_NAME = re.compile(r"(post(al)?[ _-]?code|zip([ _-]?code)?|zip5|plz)")  # a street (zip3: a region)


MEASURE_VALUES = 10  # more distinct numbers than this: a measure; fewer, levels (a scale, a code)
MEASURE_DECIMALS = 5  # or this many, some with decimals: a measure read to a step (an INR of 0.8-1.7)


def _measure_like(numbers: pd.Series) -> bool:
    """Whether a column's numbers are a measure rather than levels: more than
    :data:`MEASURE_VALUES` distinct values, or :data:`MEASURE_DECIMALS` with decimals (a
    newcomer's INR, ten values 0.8-1.7 and 'not done', was drafted as eleven levels)."""
    distinct = numbers.nunique()
    return distinct > MEASURE_VALUES or (distinct >= MEASURE_DECIMALS and bool((numbers != numbers.round()).any()))


def _words_for_unknown(cells: pd.Series) -> list[str]:
    """The words, as written, of non-empty ``cells`` that are numbers (or limits) but for at most
    :data:`STRAY_WORDS` words without a digit ('5 mg' is a value with its unit), each written in
    :data:`STRAY_WORD_REPEATS` cells or more in some letter case, together in under half of them:
    a lab's 'not done', 'haemolysed'. None found (or other text) gives []. Every spelling of such
    a word is listed ('Not done' beside 'not done'): a way of recording the lab's work, never one
    patient's value."""
    text = cells.astype(str).str.strip()
    written = text[pd.to_numeric(cells, errors="coerce").isna() & ~censored(cells)]
    words = written.str.casefold()
    counts = words.value_counts()
    found = 0 < len(words) < len(text) / 2 and len(counts) <= STRAY_WORDS \
        and int(counts.min()) >= STRAY_WORD_REPEATS and not words.str.contains(r"\d").any() \
        and bool(words.str.contains(r"[^\W\d_]").all())
    return sorted(set(written)) if found else []


def _stray_cells(cells: pd.Series) -> int:
    """How many of non-empty ``cells`` are text that is no number, cells written as a limit aside,
    cells written with the column's one unit ('120 mg/dL', :func:`_written_unit`) and numbers
    written with a decimal comma or thousands separators (:func:`separator_cells`)."""
    with_unit = int(numbers_with_units(cells)[1].notna().sum()) if _written_unit(cells) else 0
    return (_text_cells(pd.to_numeric(separators_read(cells), errors="coerce")) - int(censored(cells).sum())
            - with_unit)


def separator_cells(frame: pd.DataFrame, schema: Schema) -> dict[str, int]:
    """Of a draft's numeric columns, how many cells the draft read as numbers written with a
    decimal comma ('37,2') or thousands separators ('6,994.91') (:func:`separators_read`): a
    newcomer's semicolon export, converted, was told its lab values held 'a unit or a word' in
    some cells. Counts only."""
    def written_so(cells: pd.Series) -> int:
        read = separators_read(cells)
        return int((read.astype(str) != cells.astype(str)).sum()) if read is not cells else 0

    return _numeric_column_counts(frame, schema, written_so)


# A drafted bound this many times farther from the 99th percentile (the 1st) than that is from
# the median is a typo or a code for unknown (an age of 999), not a tail: a lognormal cost of
# sigma 2 reaches about 9.5 on 2,000 rows, and 0.5 on the log scale, which a column of values
# from 0 up must also exceed (a count of visits, mostly 0, reaches 0.9 there).
FAR_BOUND_RATIO = 10.0
FAR_BOUND_LOG_RATIO = 2.0
FAR_CODE_SHARE = 0.25  # a largest value held by more of the cells is a pile (an assay's limit), not a code


def far_bound_columns(frame: pd.DataFrame, schema: Schema) -> dict[str, list[str]]:
    """Of a draft's numeric columns, those whose drafted bound (the extract's own extreme) lies
    far beyond the rest of its values (:data:`FAR_BOUND_RATIO`): which side, never the values.
    Kept as a bound, a typo stretches the public grid over nothing (64 bins from 20 to 999 are
    15 years of age each)."""
    far = {}
    for column, values in _numeric_values(frame, schema):
        sides = [side for side, sign in (("lower", -1.0), ("upper", 1.0)) if _far(sign * values)]
        if sides:
            far[column.name] = sides
    return far


STRAY_NEGATIVE_SHARE = 0.01  # at most this share of a column's values below 0, the rest not: codes or typos


def stray_negative_columns(frame: pd.DataFrame, schema: Schema) -> list[str]:
    """Of a draft's numeric columns, those with a few values below 0 (at most
    :data:`STRAY_NEGATIVE_SHARE`) among values that are otherwise all 0 or more: an age of -1
    for 'unknown', a stay of -2 days typed for 2. The draft made one of them the lower bound.
    Names only, never the values."""
    stray = []
    for column, values in _numeric_values(frame, schema):
        negative = int((values < 0).sum())
        if len(values) >= 20 and 0 < negative <= STRAY_NEGATIVE_SHARE * len(values):
            stray.append(column.name)
    return stray


def far_level_columns(frame: pd.DataFrame, schema: Schema) -> dict[str, list[str]]:
    """Of a draft's categorical columns whose levels are all numbers (a count of few values,
    drafted as levels), those whose largest (smallest) level lies far beyond the rest, as
    :func:`far_bound_columns` judges a bound, and more than :data:`FAR_BOUND_RATIO` times the
    next level's size (a rare 1 among 0s, a 2 among 0s and 1s, is a rare level, not a code):
    which side, never the value. A newcomer's prior admissions, 0 to 7 and 999 for 'unknown',
    were drafted with 999 as a level and no word."""
    frame = without_schema_markers(frame, schema)
    far = {}
    for column in schema.categorical_columns:
        if column.name not in frame.columns or not all(is_number(level) for level in column.levels):
            continue
        values = pd.to_numeric(frame[column.name], errors="coerce").dropna().to_numpy(dtype=float)
        levels = np.unique(values)
        sides = [side for side, sign, end, next_ in (("lower", -1.0, 0, 1), ("upper", 1.0, -1, -2))
                 if len(levels) > 1 and _far(sign * values)
                 and abs(levels[end]) > FAR_BOUND_RATIO * max(1.0, abs(levels[next_]))]
        if sides:
            far[column.name] = sides
    return far


def constant_columns(frame: pd.DataFrame, schema: Schema) -> list[str]:
    """Of a draft's columns, those holding one value in every row: they tell nothing, and every
    column shares the budget (its noise grows with the table's width). One value and empty
    cells is a flag ('Y' or nothing), not a constant; an empty column is
    :func:`mostly_empty_columns`'."""
    frame = without_schema_markers(frame, schema)
    return [c.name for c in schema.columns if c.name in frame.columns and len(frame) > 1
            and frame[c.name].nunique(dropna=False) <= 1 and frame[c.name].notna().any()]


# Levels that usually record that nothing was known rather than an answer (casefolded, spaces squeezed).
UNKNOWN_LEVELS = frozenset({"unknown", "unk", "unkn", "not known", "n/k", "nk", "not recorded", "not stated",
                            "not specified", "unspecified", "not available", "no data", "undetermined"})


def unknown_level_columns(schema: Schema) -> dict[str, list[str]]:
    """Of a draft's categorical columns, the levels (as drafted) that read as 'not known': a
    newcomer's 'unknown' stayed a level of three columns with no word, where '-' had been read
    as empty (helper-119). Either may be right (an 'unknown' smoking status is an answer some
    studies count); the draft says which, and the reviewer decides."""
    found = {column.name: [level for level in column.levels if " ".join(level.casefold().split()) in UNKNOWN_LEVELS]
             for column in schema.categorical_columns}
    return {name: levels for name, levels in found.items() if levels}


MOSTLY_EMPTY_SHARE = 0.95  # a drafted column empty in more of its rows than this is named


def mostly_empty_columns(frame: pd.DataFrame, schema: Schema) -> dict[str, bool]:
    """Of a draft's columns, those empty in more than :data:`MOSTLY_EMPTY_SHARE` of the rows
    (helper-95's genetic panel, 99 % empty, went unnamed), each with whether it is empty in every
    row (helper-102's was called a column of one value): they teach the release little beyond
    how often they are missing, and every column shares the budget. Names only."""
    frame = without_schema_markers(frame, schema)
    shares = {c.name: float(frame[c.name].isna().mean()) for c in schema.columns
              if c.name in frame.columns and len(frame) > 1}
    return {name: share == 1.0 for name, share in shares.items() if share > MOSTLY_EMPTY_SHARE}


def duplicate_columns(frame: pd.DataFrame, schema: Schema) -> list[tuple[str, str]]:
    """Of a draft's columns, each that repeats an earlier one row for row (a lab in two units
    written the same, an export's copy), with the column it repeats: names only."""
    frame = without_schema_markers(frame, schema)
    seen: dict[int, str] = {}
    repeats = []
    for column in schema.columns:
        if column.name not in frame.columns or frame[column.name].isna().all():  # an empty one is said so
            continue
        key = int(pd.util.hash_pandas_object(frame[column.name].astype(str), index=False).sum())
        if key in seen and frame[column.name].astype(str).equals(frame[seen[key]].astype(str)):
            repeats.append((column.name, seen[key]))
        else:
            seen.setdefault(key, column.name)
    return repeats


# A column whose values alone tell the outcome's classes apart this well (balanced accuracy of
# the outcome class most common at each value) records the outcome rather than predicts it.
OUTCOME_PROXY_ACCURACY = 0.95


def outcome_proxy_columns(frame: pd.DataFrame, schema: Schema) -> list[str]:
    """Of a draft's columns, those that (nearly) determine its outcome: a categorical column's
    values, or whether a numeric one is empty, pick the outcome class in at least 95 % of each
    class's rows. A newcomer's discharge destination 'Deceased' was their in-hospital death
    written again: the release kept that link, and the report's utility check (.94) flattered a
    release that had lost death's relation to age, SOFA and lactate. Names only."""
    if schema.outcome is None or schema.outcome not in frame.columns:
        return []
    frame = without_schema_markers(frame, schema)
    for column in schema.categorical_columns:  # hospitals' 'Y', '1', 'yes' and True: one level, as fedsyn reads them
        if column.name in frame.columns:
            frame[column.name] = read_as_levels(frame[column.name], column)
    outcome = frame[schema.outcome].astype(str)
    if outcome.nunique() < 2:
        return []
    found = []
    for column in schema.columns:
        if column.name == schema.outcome or column.name not in frame.columns:
            continue
        if lists_no_level(column):
            continue  # an identifier or a date: each value a row of its own, 'determining' anything
        cells = frame[column.name]
        # Empty is a value of its own (text conversion keeps it empty, and a cross-tabulation
        # drops it): a newcomer's readmission flag, empty exactly for the deaths, went unnamed.
        values = cells.astype(str).where(cells.notna(), "(empty)") if column.is_categorical \
            else cells.isna().astype(str)
        if not column.is_categorical and _threshold_picks_a_class(pd.to_numeric(cells, errors="coerce"), outcome):
            found.append(column.name)
            continue
        if values.nunique() < 2:
            continue
        table = pd.crosstab(values, outcome)
        picked = values.map(table.idxmax(axis=1))
        recall = (picked == outcome).groupby(outcome).mean()
        if float(recall.mean()) >= OUTCOME_PROXY_ACCURACY or _level_only_with_one_class(table):
            found.append(column.name)
    return found


def _threshold_picks_a_class(numbers: pd.Series, outcome: pd.Series) -> bool:
    """Whether one cut of a numeric column tells an outcome class (of at least
    :data:`OUTCOME_PROXY_ROWS` rows) from the others in :data:`OUTCOME_PROXY_ACCURACY` of the
    rows of each side, on the rows where it has a value: a newcomer's gestational age below 259
    days is a preterm birth, by definition, and the draft said nothing of it."""
    present = numbers.notna()
    if present.sum() < 2 * OUTCOME_PROXY_ROWS:
        return False
    order = np.argsort(numbers[present].to_numpy(dtype=float), kind="stable")
    values = numbers[present].to_numpy(dtype=float)[order]
    classes = outcome[present].to_numpy()[order]
    cuts = np.flatnonzero(np.diff(values) > 0)  # a cut falls between two different values
    for level in np.unique(classes):
        inside = classes == level
        if inside.sum() < OUTCOME_PROXY_ROWS or inside.all():
            continue
        below_in = np.cumsum(inside)[cuts] / inside.sum()  # share of the class at or below each cut
        below_out = np.cumsum(~inside)[cuts] / (~inside).sum()
        balanced = np.maximum((below_in + 1 - below_out) / 2, (1 - below_in + below_out) / 2)
        if len(balanced) and float(balanced.max()) >= OUTCOME_PROXY_ACCURACY:
            return True
    return False


# A level every row of which has one outcome class other than the most common, and that holds
# at least this share of that class's rows (and OUTCOME_PROXY_ROWS of them), says the outcome: a
# newcomer's discharge destination 'deceased' was 60 % of their deaths and never a survivor's,
# under the 95 % rule. (A level of the common class alone, 'not admitted' among survivors, is a
# relation, not the outcome written again.)
OUTCOME_PROXY_SHARE = 0.2
OUTCOME_PROXY_ROWS = 10
OUTCOME_PROXY_PURITY = 0.98


def _level_only_with_one_class(table: pd.DataFrame) -> bool:
    """Whether a column's levels × outcome classes counts hold a level found (in
    :data:`OUTCOME_PROXY_PURITY` of its rows) with one class, not the most common, that is a
    large part of that class (:data:`OUTCOME_PROXY_SHARE`): a miscoded survivor or two must
    not hide a discharge to the mortuary."""
    rarer = table.drop(columns=table.sum(axis=0).idxmax())
    pure = rarer.ge(OUTCOME_PROXY_PURITY * table.sum(axis=1), axis=0)  # each cell against its level's rows
    large = rarer.div(rarer.sum(axis=0), axis=1) >= OUTCOME_PROXY_SHARE  # ... and against its class's
    return bool((pure & large & (rarer >= OUTCOME_PROXY_ROWS)).to_numpy().any())


# A positive column whose 99th percentile is this many times its 1st is drafted linear but reads
# better on a log scale: its 64 bins would otherwise leave most rows in the first few.
LOG_SPAN = 100.0


def log_scale_columns(frame: pd.DataFrame, schema: Schema) -> list[str]:
    """Of a draft's linear numeric columns, those of positive values spanning more than two
    orders of magnitude (:data:`LOG_SPAN`): a cost, a BNP, a CRP, for ``transform: log``."""
    names = []
    for column, values in _numeric_values(frame, schema):
        if len(values) and _far(values):  # a code for unknown (a rate of 999) is no part of the span
            values = values[values < values.max()]
        if column.transform == "linear" and len(values) >= 20 and values.min() > 0:
            low, high = np.quantile(values, [0.01, 0.99])
            if high >= LOG_SPAN * low:
                names.append(column.name)
    return names


def _numeric_values(frame: pd.DataFrame, schema: Schema) -> Iterator[tuple[Column, np.ndarray]]:
    """Each of a draft's numeric columns in ``frame`` with its cells that are numbers (the
    draft's missing-value markers, empty cells and stray text left out)."""
    for column, cells in _numeric_cells(frame, schema):
        yield column, pd.to_numeric(cells, errors="coerce").dropna().to_numpy(dtype=float)


def _numeric_cells(frame: pd.DataFrame, schema: Schema) -> Iterator[tuple[Column, pd.Series]]:
    """Each of a draft's numeric columns in ``frame`` with its non-empty cells as written (the
    draft's missing-value markers read as empty)."""
    frame = without_schema_markers(frame, schema)
    for column in schema.columns:
        if not column.is_categorical and column.name in frame.columns:
            yield column, frame[column.name].dropna()


def _far(values: np.ndarray) -> bool:
    """Whether ``values``' largest lies far beyond the 99th percentile of the others (the cells
    below it: a code for unknown in 1 % of rows or more was its own 99th percentile, and a
    newcomer's age of 999 in 28 of 2,500 rows was drafted as the upper bound without a word),
    unless it holds more than :data:`FAR_CODE_SHARE` of them: a pile, such as an assay's limit
    (:func:`far_bound_columns`)."""
    if len(values) < 20:
        return False
    top = float(values.max())
    others = values[values < top]
    if _nines_code(top, values, others):
        return True
    if len(others) < 20 or len(others) < (1.0 - FAR_CODE_SHARE) * len(values):
        return False
    middle, high = np.quantile(others, [0.5, 0.99])
    if top - high <= FAR_BOUND_RATIO * max(high - middle, 1e-12):
        return False
    if values.min() < 0:  # not a measure from 0 up: the linear scale alone
        return True
    middle, high = np.quantile(np.log1p(others), [0.5, 0.99])
    return bool(math.log1p(top) - high > FAR_BOUND_LOG_RATIO * max(high - middle, 1e-12))


def _nines_code(top: float, values: np.ndarray, others: np.ndarray) -> bool:
    """Whether ``top`` (the largest of ``values``) is a run of nines (99, 999, 9999) written in
    :data:`STRAY_WORD_REPEATS` cells or more and over twice every other value: a code for
    unknown, however many cells hold it. A newcomer's CRP (0.5-300 mg/L, 999 in 7 % of rows)
    was drafted with 999 as its bound: on the log scale 999 lies near 300, and as a pile at the
    bound the release would have kept 7 % of patients at a CRP of 999."""
    nines = math.isfinite(top) and top >= 99 and top == int(top) and set(str(int(top))) == {"9"}
    return bool(nines and len(others) >= 20 and int((values == top).sum()) >= STRAY_WORD_REPEATS
                and top > 2.0 * float(others.max()))


def _text_cells(numeric: pd.Series) -> int:
    """How many of a column's non-empty cells, read as numbers (``pd.to_numeric(..., errors=
    "coerce")``), were text that is no number."""
    return int(numeric.isna().sum())


def case_variant_columns(frame: pd.DataFrame, schema: Schema) -> list[str]:
    """The categorical columns of a draft whose levels in ``frame`` (the rare ones the draft left
    out included: a 'Y' among 'yes'), each read through the column's ``spellings``, hold two that
    differ only in letter case or in spaces ('F' and 'f', where no spelling reads both), or a
    letter and a word it abbreviates ('F' and 'Female', 'Y' and 'yes'), or a yes or a no written
    two ways ('yes' and '1'): one level written two ways, for the schema's ``spellings`` or the
    extract to merge, or two levels the schema should name apart. (Stage 'I', 'II' and 'III'
    are not: Roman numerals.)"""
    frame = without_schema_markers(frame, schema)
    return [column.name for column in schema.categorical_columns
            if column.name in frame.columns and not lists_no_level(column)
            and yes_no_levels(column.levels) is None  # a flag's other spellings are read as its two levels
            and _written_two_ways(sorted(_read_levels(frame[column.name], column)))]


def _written_two_ways(levels: list[str]) -> bool:
    spelled = {level.strip().casefold() for level in levels}
    if len(spelled) < len(levels) or len(spelled & YES_WORDS) > 1 or len(spelled & NO_WORDS) > 1:
        return True
    letters = {level for level in spelled if len(level) == 1 and level.isalpha()}
    return any(len(level) >= 3 and level.isalpha() and level[0] in letters and set(level) - set("ivxlcdm")
               for level in spelled)  # a Roman numeral ('iii') abbreviates nothing


# A column named as a record number ('patient_id', 'MRN', 'record no').
_ID_NAME = re.compile(r"(^|[^a-z])(id|mrn|no|nr|num|number|record|patient)($|[^a-z])", re.IGNORECASE)
# A cell written as a record number (:data:`RECORD_TOKEN`) is never a date or a time ('2021-03-04', '10:30:15').
_DATE_OR_TIME = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}|^\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{1,2}:\d{2}")


def _recurring_record_numbers(numbers: pd.Series) -> bool:
    """Whole numbers that repeat, read as a patient's record number on each of their rows
    (helper-95's extract held two rows per patient; such a column was not unique, so it was
    drafted as a number bounded by two patients' numbers): at least 20 distinct and five digits
    or more, few of them round (platelets per µL rounded to thousands are a measure), and either
    the column is named as one (``_ID_NAME``) or they are six digits or more, nearly all of one
    width (a cost in yen spreads over several)."""
    if len(numbers) < 2 or numbers.is_unique or numbers.nunique() < 20 or numbers.abs().min() < 10_000:
        return False
    if float((numbers % 100 == 0).mean()) >= 0.5:
        return False
    widths = numbers.abs().astype("int64").astype(str).str.len()
    named = bool(_ID_NAME.search(str(numbers.name or "")))
    return named or bool(numbers.abs().min() >= 100_000 and widths.value_counts(normalize=True).iloc[0] >= 0.95)


def recurring_identifier_columns(frame: pd.DataFrame) -> list[str]:
    """Columns of ``frame`` that read as record numbers and repeat some of their values: names
    only. fedsyn's guarantee is per row, so a patient with ``k`` rows (admissions, visits) is
    protected as ``k`` records are, about ``k`` times epsilon (docs/privacy.md)."""
    names = []
    for name in frame.columns:
        cells = frame[name].dropna()
        if len(cells) < 2 or cells.is_unique:
            continue
        numbers = pd.to_numeric(cells, errors="coerce")
        if numbers.notna().all():
            recurring = bool((numbers == numbers.round()).all()) and _recurring_record_numbers(numbers)
        else:
            written = cells.astype(str).str.strip()
            tokens = written.map(lambda cell: bool(RECORD_TOKEN.match(cell)) and not _DATE_OR_TIME.search(cell))
            recurring = bool(tokens.mean() >= 0.95 and written.nunique() >= 20)
        if recurring:
            names.append(str(name))
    return names


def columns_without_levels(schema: Schema) -> list[str]:
    """The columns a draft listed none of the levels of (:data:`UNLISTED_LEVELS`): too many, or
    each held by fewer than :data:`RARE_LEVEL_ROWS` rows."""
    return [column.name for column in schema.categorical_columns if lists_no_level(column)]


def rare_level_columns(frame: pd.DataFrame, schema: Schema) -> list[str]:
    """The categorical columns of a draft that list some of their levels and left out others,
    each held by fewer than :data:`RARE_LEVEL_ROWS` rows of ``frame``: names only (how many
    levels would say how many patients hold one: 1 to 4 deaths, for an outcome)."""
    frame = without_schema_markers(frame, schema)
    return [column.name for column in schema.categorical_columns
            if column.name in frame.columns and not lists_no_level(column) and _left_out(frame[column.name], column)]


def _left_out(cells: pd.Series, column: Column) -> set[str]:
    """The values of ``cells`` that read as none of ``column``'s levels (a flag's other spellings
    of yes and no are read as its levels: :func:`yes_no_levels`)."""
    flag = yes_no_levels(column.levels)
    values = _read_levels(cells, column) - set(column.levels)
    return {v for v in values if flag is None or v.casefold() not in READ_AS_YES | READ_AS_NO}


def _read_levels(cells: pd.Series, column: Column) -> set[str]:
    """The levels ``cells`` hold as a draft lists them (:func:`_written_level`), a declared
    spelling read as its level."""
    declared = column.spelled_levels()
    return {declared.get(spelling_key(written), written) for written in {_written_level(v) for v in cells.dropna()}}
