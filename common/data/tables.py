"""Reading and writing hospital extracts (CSV or Parquet) with errors a person can act on."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Collection, Mapping
from pathlib import Path

import pandas as pd

from fedsyn.data.schema import (
    CSV_EMPTY_CELLS,
    ColumnKind,
    Schema,
    as_numbers,
    category_levels,
    headerless_names,
    limits_at_bounds,
    read_as_levels,
    spell_category,
    text_columns,
    units_removed,
    without_schema_markers,
    zero_padded_codes,
)
from fedsyn.errors import InputDataError


class DataFileError(InputDataError, ValueError):
    """A data file cannot be read as a table."""


def read_table(path: str | Path, schema: Schema | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file.

    Categorical columns of ``schema`` are read as text so that codes such as ``"01"`` keep
    their spelling, and a value that is one of the schema's categories once its surrounding
    spaces are removed ('F ' from a spreadsheet export) is read as that category; everything
    is otherwise left for :func:`validate_frame` to judge. A cell holding one of the schema's
    ``missing_values`` (the extract's own '?' or '-') is read as empty, unless its column lists
    it among its categories, and so is a cell holding one of its column's own ``missing_values``
    ('999' for an unknown age, in that column only); a numeric cell written as a limit at its column's bound ('<0.01'
    where 0.01 is the lower bound) is read as the bound; a categorical cell written as one of its
    column's ``spellings`` ('pos' for 'positive') is read as that level.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in {".parquet", ".pq", *_TEXT_SEPARATORS}:
        raise DataFileError(f"unsupported data file type '{suffix}' for {path}: use .csv, .tsv or .parquet")
    if suffix in _TEXT_SEPARATORS:
        _check_text_layout(path, _TEXT_SEPARATORS[suffix])
    try:
        if suffix in _TEXT_SEPARATORS:
            # Every schema column as text, each cell then read on its own: pandas types a column
            # from all its cells, so one record ('?', a 20-digit number) made a column of TRUE/FALSE
            # or of numbers with gaps text, and changed how the others were read (helper-109 M1)
            dtype = {c.name: str for c in schema.columns} if schema else None
            # index_col=False: a first record with one field too many (a trailing comma) made pandas
            # read the first column as the index and shifted every column of every record.
            frame = pd.read_csv(path, sep=_TEXT_SEPARATORS[suffix], dtype=dtype, keep_default_na=True,
                                index_col=False)
            if schema is None:
                frame = _codes_as_written(frame, path, _TEXT_SEPARATORS[suffix])
        else:
            frame = _blank_text_as_missing(pd.read_parquet(path), category_levels(schema) if schema else {})
            _check_parquet_names(path, [str(name) for name in frame.columns])
    except DataFileError:
        raise
    except pd.errors.EmptyDataError:
        raise DataFileError(f"cannot read {path}: the file is empty (no header line, no rows)") from None
    except UnicodeDecodeError:  # its text quotes bytes of the file: never shown
        raise DataFileError(f"cannot read {path}: it is not UTF-8 text ({_first_non_utf8(path, suffix)} holds a "
                            "byte that is not, e.g. an accented letter saved as Latin-1 or Windows-1252): save it as "
                            "UTF-8 (in Excel: 'CSV UTF-8') and try again") from None
    except Exception as exc:  # pandas/pyarrow raise many types; all mean "unreadable file"
        # A tokenizer error states structure only ("expected 9 fields in line 5"); other readers'
        # texts can quote cells, which are patient data, so only their type is named.
        structural = isinstance(exc, pd.errors.ParserError)
        detail = str(exc) if structural else f"{type(exc).__name__}; check the file's format"
        raise DataFileError(f"cannot read {path} as a {suffix.lstrip('.')} table: {detail}") from None
    if suffix in _TEXT_SEPARATORS:
        _check_one_record_per_line(path, _TEXT_SEPARATORS[suffix])
    if schema is not None:
        frame = without_schema_markers(frame, schema)
        for column in schema.columns:
            if column.name in frame.columns and not column.is_categorical:  # '<0.01' at its bound: the bound
                frame[column.name] = as_numbers(limits_at_bounds(units_removed(frame[column.name], column), column))
    for column in schema.categorical_columns if schema is not None else []:
        if column.name in frame.columns:
            frame[column.name] = read_as_levels(frame[column.name], column)
    return frame


def _codes_as_written(frame: pd.DataFrame, path: Path, separator: str) -> pd.DataFrame:
    """``frame`` (read without a schema, its types guessed) with each number column that the file
    writes zero-padded ('021' for a 3-digit postcode, '007' for a ward) read as its text again:
    read as numbers, a draft listed '18' and '21' for a file's '018' and '021', and the file then
    failed its own draft on every row (a newcomer's zip3)."""
    numeric = [name for name in frame.columns if pd.api.types.is_numeric_dtype(frame[name])]
    if not numeric:
        return frame
    text = pd.read_csv(path, sep=separator, dtype=str, usecols=numeric, keep_default_na=True, index_col=False)
    for name in numeric:
        if zero_padded_codes(text[name]):
            frame[name] = text[name]
    return frame


def _blank_text_as_missing(frame: pd.DataFrame, levels: Mapping[str, Collection[str]]) -> pd.DataFrame:
    """A Parquet file's text cells that a CSV reader reads as empty made missing: empty (or
    all-space) ones and pandas' own words for missing (:data:`CSV_EMPTY_CELLS`: 'NA', 'NULL').
    An export that wrote '' for a missing lab value made the column text ('value is not a
    number' on every empty cell) and gave a yes/no flag a level ''; one that wrote 'NA' passed
    as CSV and failed as Parquet on three columns, with no way to tell why (a newcomer). A word
    its column lists among its ``levels`` (a smoking history 'None') is kept."""
    for name in text_columns(frame):
        series = frame[name]
        text = series.astype(str).str.strip()
        missing = CSV_EMPTY_CELLS - set(levels.get(str(name), ()))
        frame[name] = series.mask(series.notna() & ((text == "") | text.isin(missing)))
    return frame


_TEXT_SEPARATORS = {".csv": ",", ".txt": ",", ".tsv": "\t"}
_SEPARATOR_NAMES = {",": "comma", ";": "';'", "\t": "tab", "|": "'|'"}


def _first_non_utf8(path: Path, suffix: str) -> str:
    """Where a text file's first byte that is not UTF-8 lies: its line and column, by position
    (pandas' error gives an offset within the chunk it was decoding: helper-95 was told 'byte 7'
    of a byte at 1,339, line 3). Never the bytes, nor the header's name for the column: a file
    without a header line has a patient's values there."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
        return "a cell"
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
    line_start = raw.rfind(b"\n", 0, start) + 1
    line = raw.count(b"\n", 0, start) + 1
    before = raw[line_start:start].decode("utf-8", errors="replace")  # the line up to that byte, quotes kept
    fields = next(csv.reader([before], delimiter=_TEXT_SEPARATORS[suffix]), [""])
    return f"line {line}, column {max(len(fields), 1)} counting from 1,"


def _check_text_layout(path: Path, separator: str) -> None:
    """Refuse, in one sentence, a text file that is empty or split by another separator than
    its suffix says (a ';'-separated .csv otherwise reads as one column, every other missing).
    Only the header line is read, and it is never quoted: it names columns, yet it is the file's."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        header = next((line for line in handle if line.strip()), None)
    if header is None:
        raise DataFileError(f"cannot read {path}: the file is empty (no header line, no rows)")
    if separator in header:
        names = [name.strip() for name in next(csv.reader([header], delimiter=separator))]
        again = [index for index, name in enumerate(names) if name and name in names[:index]]
        # pandas would rename a second 'age' to 'age.1', reported as a column the schema lacks. A
        # first line that is a record (its values may repeat) is left to say "no header line".
        if again and not headerless_names(names):
            first = names.index(names[again[0]])
            # Positions, not names: a file without a header line has a patient's values there.
            raise DataFileError(f"cannot read {path}: its header line names the same column twice (columns "
                                f"{first + 1} and {again[0] + 1}, counting from 1): keep one column of each name, or "
                                "rename the other, and export again")
        return
    found = next((s for s in (",", ";", "\t", "|") if s != separator and s in header), None)
    if found is None:
        return  # one column: validation names what is missing
    said = _SEPARATOR_NAMES[found]
    expected = _SEPARATOR_NAMES[separator]
    if found == "\t":
        fix = f"rename it to {path.stem}.tsv, or save it comma-separated"
    elif found == ",":
        fix = f"rename it to {path.stem}.csv, or save it tab-separated"
    else:
        fix = "save it comma-separated (.csv) or tab-separated (.tsv)"
    raise DataFileError(f"cannot read {path}: the file looks {said}-separated, while a {path.suffix} file is read "
                        f"as {expected}-separated: {fix}")


def _check_parquet_names(path: Path, names: list[str]) -> None:
    """Refuse a Parquet file naming one column twice but for surrounding spaces (`potassium` and
    ` potassium`), as a CSV header is refused: a draft wrote the second as a column of its own,
    which validate and simulate then took (helper-114 M3). Positions only, as for a CSV."""
    stripped = [name.strip() for name in names]
    again = [index for index, name in enumerate(stripped) if name in stripped[:index]]
    if again:
        first = stripped.index(stripped[again[0]])
        raise DataFileError(f"cannot read {path}: it names the same column twice but for surrounding spaces (columns "
                            f"{first + 1} and {again[0] + 1}, counting from 1): keep one column of each name, or "
                            "rename the other, and export again")


def _check_one_record_per_line(path: Path, separator: str) -> None:
    """Refuse a text file where a record runs over several lines: a quoted cell holding a line
    break, or a quote an exporter left open. One open quote ('"pt refused', from an exporter that
    does not escape quotes) made the reader take every line up to the next quote as one cell, so
    one record changed whether 40 others were read (helper-106 F2). Every record is walked: a
    count of lines against records let a line pandas reads and this walk skips (a row of tabs)
    refuse a sound file, or hide a swallowed one (helper-109 M4). Only the line is named, never a
    cell: the cells are patients'."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader, previous = csv.reader(handle, delimiter=separator), 0
        try:
            for _ in reader:
                if reader.line_num - previous > 1:
                    break
                previous = reader.line_num
            else:
                return
        except csv.Error:  # a cell past the csv module's 128 KiB: an open quote swallowing the records after it
            pass
    raise DataFileError(f"cannot read {path}: the record at line {previous + 1} runs over several lines (a text cell "
                        "holding a line break, or a quote left open). fedsyn reads one record per line, so that no "
                        "record can change how others are read: remove line breaks from text cells, or export "
                        "without free-text columns (a schema uses none)")


def rows_digest(frame: pd.DataFrame, schema: Schema) -> str:
    """SHA-256 of a table's rows as its schema reads them (its columns, in the schema's order and
    types, :func:`typed_by_schema`): tells two extracts apart without keeping either, and the
    same rows read from a CSV or a Parquet file, or beside a column the schema lacks, apart
    from none (a seeded run's streams are bound to it,
    :func:`fedsyn.privacy.randomness.bound_to_inputs`). Of private rows: for local use only,
    never written."""
    rows = typed_by_schema(frame[[name for name in schema.column_names if name in frame.columns]], schema)
    digest = hashlib.sha256("\x1f".join(map(str, rows.columns)).encode())
    digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    if path.suffix.lower() in {".parquet", ".pq"}:
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def typed_by_schema(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """``frame`` with the dtypes its schema implies, for a researcher's own analysis: categories
    that are all whole numbers (codes such as 0/1) as nullable integers, so ``rows.death.mean()``
    works; other categories as pandas categoricals in the schema's order; integer columns as
    (nullable) integers; continuous columns as floats. Derived from the schema alone: the
    input file's dtypes (which can say whether a column had missing values) are never used."""
    typed = frame.copy()
    for column in schema.columns:
        if column.name not in typed.columns:
            continue
        values = typed[column.name]
        if column.is_categorical:
            if all(level.lstrip("-").isdigit() for level in column.levels):
                typed[column.name] = pd.to_numeric(values.map(spell_category), errors="coerce").astype("Int64")
            else:
                spelled = values.map(spell_category)  # a value the schema does not list: missing
                typed[column.name] = pd.Categorical(spelled.where(spelled.isin(column.levels)),
                                                    categories=column.levels)  # (pandas 4 will raise on it)
        elif column.kind is ColumnKind.INTEGER:
            typed[column.name] = pd.to_numeric(values, errors="coerce").astype("Int64" if column.nullable else "int64")
        else:
            typed[column.name] = pd.to_numeric(values, errors="coerce").astype("float64")
    return typed
