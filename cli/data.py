"""``fedsyn schema draft`` and ``fedsyn validate``: the data contract and a site's extract."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from fedsyn.cli.output import console, fail

if TYPE_CHECKING:
    import pandas as pd

schema_app = typer.Typer(help="Work with the public schema (the data contract).")


@schema_app.command("draft")
def schema_draft(
    data: Annotated[list[Path], typer.Argument(
        help="a local extract (CSV or Parquet) to draft from; several (a simulation's hospitals, the same columns) "
             "are drafted as one table")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where the draft goes")] = Path("schema.draft.json"),
    outcome: Annotated[str | None, typer.Option(help="the categorical column to predict, e.g. death")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the file at --out (a schema reviewed by hand is lost)")
                         ] = False,
) -> None:
    """Draft a schema from a local extract. Every bound and category list is marked needs_review."""
    import pandas as pd

    from fedsyn.data.draft import column_labels, date_like, draft_schema
    from fedsyn.data.schema import names_like_values
    from fedsyn.data.tables import DataFileError, read_table

    if out.exists() and not overwrite:  # a newcomer's reviewed schema was replaced by a fresh draft, unasked
        fail(f"--out {out} already exists (perhaps the schema you reviewed): give another --out, or --overwrite to "
             "replace it")
    if len({path.resolve() for path in data}) < len(data):  # its rows counted twice: a rare level would pass
        fail("a file is given twice: give each hospital's file once")
    try:
        extracts = [read_table(path) for path in data]
        for path, extract in zip(data[1:], extracts[1:]):
            # names only: a header names columns. Where they look like a record's values, no draft.
            if set(extract.columns) != set(extracts[0].columns) and _difference_unshown(extracts[0], extract):
                missing = len(set(extracts[0].columns) - set(extract.columns))
                fail(f"{path} has other columns than {data[0]} ({missing} of its columns missing, "
                     f"{len(set(extract.columns) - set(extracts[0].columns))} added), and some of their names look "
                     "like a record's values (a file without a header line?): give each file the same header line")
        every = list(dict.fromkeys(name for extract in extracts for name in extract.columns))
        lacking = {path: [str(name) for name in every if name not in extract.columns]
                   for path, extract in zip(data, extracts)}
        shared = set.intersection(*(set(map(str, extract.columns)) for extract in extracts))
        for path, extract in zip(data, extracts):
            renamed = _renamed_column(lacking[path], [str(name) for name in extract.columns if str(name) not in shared])
            if renamed is not None:  # helper-122: 'crp' beside 'CRP' was drafted as two columns, each half empty
                fail(f"{path} names a column '{renamed[1]}' where another file names '{renamed[0]}': one measure "
                     "under two names? Give it one name in every file (a column named differently is drafted as "
                     "two, each empty in the other files' rows)")
        extracts = [extract.reindex(columns=every) for extract in extracts]  # empty where a hospital has none
        dates = {str(name) for extract in extracts for name in extract.columns if date_like(extract[name])}
        extract = pd.concat(extracts, ignore_index=True) if len(extracts) > 1 else extracts[0]
        like_values = names_like_values(extract)
        draft = draft_schema(extract, name=data[0].stem, outcome=outcome, dates=dates, like_values=like_values)
    except (DataFileError, ValueError) as exc:
        fail(str(exc))
    draft.save(out, private=True)
    label = column_labels([str(name) for name in extract.columns], doubtful=bool(like_values))  # fewer than half
    if like_values:
        console.print("[yellow]some of the file's column names look like values (a number, a date, a record number, "
                      "a value of their own column or written as those are): is its first line a header line? If it "
                      "is a patient's record, add a header line and draft again. Names are never shown then: the "
                      "notes below name each column by its place in the file (#1 is the first)[/]")
    checked = data[0] if len(data) == 1 else Path("FILE")  # what `fedsyn validate` is told to read
    for path, names in lacking.items():  # helper-119 #5: a column one hospital never records stopped the draft
        if names:
            console.print(f"[yellow]{path} has no column {', '.join(label[name] for name in names)}: drafted as empty "
                          "in its rows (a measure that hospital does not take). Add the column, with empty cells, to "
                          "that extract: a site's extract holds every column of the schema[/]")
    from fedsyn.data.draft import (
        case_variant_columns,
        censored_cells,
        columns_without_levels,
        constant_columns,
        duplicate_columns,
        far_bound_columns,
        far_level_columns,
        letter_case_columns,
        log_scale_columns,
        marker_columns,
        mostly_empty_columns,
        outcome_proxy_columns,
        rare_level_columns,
        recurring_identifier_columns,
        separator_cells,
        spread_limit_piles,
        stray_negative_columns,
        stray_text_cells,
        unknown_level_columns,
    )
    from fedsyn.data.schema import MANY_CATEGORIES, RARE_LEVEL_ROWS, category_levels, without_schema_markers
    from fedsyn.data.validation import FEW_RECORDS, few_record_columns

    if draft.missing_values:
        holding = marker_columns(extract, draft.missing_values, category_levels(draft))
        shown = ", ".join(label[name] for name in holding[:8]) + (f" and {len(holding) - 8} more"
                                                                    if len(holding) > 8 else "")
        console.print(f"[yellow]cells holding {', '.join(repr(m) for m in draft.missing_values)} were read as missing "
                      f"(the draft's missing_values, in every column; found in {shown}): keep each only if the "
                      "extract uses it for 'missing', never as a real value (a marker that means missing in one "
                      "column only goes into that column's own missing_values)[/]")

    for column in draft.columns:
        if column.unit is not None:  # only the draft's reading of the cells sets it
            console.print(f"[yellow]column {label[column.name]}: some cells are written with the unit "
                          f"'{escape(column.unit)}' beside the number: the draft made it the column's unit, and "
                          "cells written so are read as their number (any other unit is listed by validate)[/]")
        if column.missing_values:
            written = ", ".join(repr(marker) for marker in column.missing_values)
            console.print(f"[yellow]column {label[column.name]}: cells written {written} were read as missing in this "
                          "column only (its own missing_values): keep each only if it says the value is not known[/]")
    unlisted = columns_without_levels(draft)
    if unlisted:  # one paragraph for all (helper-102: the same nine lines for ten columns)
        named = ", ".join(label[name] for name in unlisted)
        console.print(f"[yellow]column{'s' if len(unlisted) > 1 else ''} {named}: none of "
                      f"{'their' if len(unlisted) > 1 else 'its'} values was written into the draft "
                      f"({'each' if len(unlisted) > 1 else 'it'} holds dates, "
                      f"more than {MANY_CATEGORIES} distinct values, values each held by fewer than "
                      f"{RARE_LEVEL_ROWS} rows, such as free text, a value that reads as a note: over 48 "
                      "characters, 7 words or more, or 5 or more with a digit, as a drug and its dose or a "
                      "diagnosis's text may too, or a person's name: 'Dr. ...', 'Surname, Given'): if it is an "
                      "identifier, a date, a name or a note, drop it "
                      "from the schema (the extract may keep it: a column the schema does not list is never used), or "
                      "turn a date into a year or an age in the extract; a measure: make it a number column "
                      "with public bounds; otherwise list its public levels, grouping rare ones[/]")
    decided = few_record_columns(without_schema_markers(extract, draft), draft)
    if decided:  # helper-123 F4: only the bounds were checked after review
        named = ", ".join(f"{label[name]} ({' and '.join(parts)})" for name, parts in decided.items())
        console.print(f"[yellow]column{'s' if len(decided) > 1 else ''} {named}: each rests on a few of the extract's "
                      f"records ({FEW_RECORDS}). A few records decided it, and once reviewed it enters every release's "
                      "schema.json: set it from public knowledge (an instrument's resolution, whole numbers by "
                      "nature, a value missing by design), never from the rows[/]")
    for name in recurring_identifier_columns(extract):
        console.print(f"[yellow]column {label[name]} reads as a record number, and some of its values recur in several "
                      "rows: fedsyn protects each row, so a patient with several rows (admissions, visits) is "
                      "protected at about that many times the site's epsilon. Keep one row per patient in the "
                      "extract, or set the budget with the most rows one patient holds in mind "
                      "(docs/privacy.md#one-row-per-patient)[/]")
    for name in rare_level_columns(extract, draft):
        outcome_class = " (an outcome class among them: add it)" if name == outcome else ""
        console.print(f"[yellow]column {label[name]}: values held by fewer than {RARE_LEVEL_ROWS} rows each were not "
                      f"written into the draft{outcome_class} (a value that rare may be one patient's: a name or a "
                      "record number in a note). Add the column's public levels that are missing (from a code list, "
                      "or a rare class of a flag), group rare values into one level in the extract, or drop free text; "
                      f"fedsyn validate --schema {out} {checked} lists the lines that fit no level[/]")
    # Neither warning counts the cells: one cell below a detection limit is one patient, and a
    # terminal's text ends up in tickets (validate's line numbers stay on the site's own screen).
    spread = spread_limit_piles(extract, draft)
    for name in censored_cells(extract, draft):
        pile = (f" On this whole-number scale its {' and '.join(spread[name])} bound shares a bin with the values "
                "next to it, so the release would spread those cells over them: declare the column \"kind\": "
                "\"continuous\" with \"precision\": 1 (still whole numbers, each bound a value of its own)."
                if name in spread else "")
        console.print(f"[yellow]column {label[name]} holds cells written as a limit ('<0.01' below an assay's "
                      "detection limit, '>89' for a capped age): it was drafted as a number. Make that limit the "
                      "column's public bound: such a cell at its column's bound is read as the bound, as it is; any "
                      "other limit ('<0.02' where the bound is 0.01), write as a number or empty: fedsyn validate "
                      f"--schema {out} {checked} lists their lines.{pile}[/]")
    for name in separator_cells(extract, draft):
        console.print(f"[yellow]column {label[name]} holds numbers written with a decimal comma (37,2) or thousands "
                      "separators (6,994.91): the draft read them as numbers, so it was drafted as one. Fix the "
                      "export (a decimal point, no separators): fedsyn validate, which reads the file as written, "
                      f"lists their lines (fedsyn validate --schema {out} {checked})[/]")
    for name in stray_text_cells(extract, draft):
        console.print(f"[yellow]column {label[name]} holds numbers but for some cells of text (a unit written beside "
                      "the value, a word for an unknown value): it was drafted as a number. A word the extract "
                      "writes for 'not known' ('unknown', 'not done'): add it to the column's own missing_values; "
                      "anything else: write those cells as numbers, or empty them, in the extract (fedsyn validate "
                      f"--schema {out} {checked} lists their lines)[/]")
    for name, sides in far_bound_columns(extract, draft).items():
        console.print(f"[yellow]column {label[name]}: its drafted {' and '.join(sides)} bound lies far beyond the rest "
                      "of its values (a typo, or a code such as 999 for 'unknown'): set the public bound (a clinical "
                      "limit) instead, and put a code in the column's own missing_values (it means no value); "
                      f"fedsyn validate --schema {out} {checked} then lists the lines outside the bound, to "
                      "correct or empty[/]")
    for name in stray_negative_columns(extract, draft):
        console.print(f"[yellow]column {label[name]} holds a few values below 0 among values that are otherwise 0 or "
                      "more (an age of -1 for 'unknown', a length of stay typed with a minus): its drafted lower "
                      "bound is one of them. If values below 0 are real (an income, a change), keep them; if not, "
                      "set the public lower bound (0, or a clinical limit), add a code to the column's own "
                      "missing_values and "
                      f"correct typos (fedsyn validate --schema {out} {checked} lists those lines)[/]")
    for name, sides in far_level_columns(extract, draft).items():
        console.print(f"[yellow]column {label[name]} was drafted with number levels, and its "
                      f"{' and '.join('largest' if side == 'upper' else 'smallest' for side in sides)} lies far "
                      "beyond the others (a code such as 999 for 'unknown'): if it stands for a missing value, "
                      "add it to the column's own missing_values and drop it from the levels; otherwise correct "
                      f"those rows (fedsyn validate --schema {out} {checked} lists them once it is dropped)[/]")
    for name, empty in mostly_empty_columns(extract, draft).items():
        said = ("is empty in every row: it teaches the release nothing" if empty else
                "is empty in nearly every row: it teaches the release little beyond how often it is missing")
        console.print(f"[yellow]column {label[name]} {said}, and every column shares the budget (the noise grows with "
                      "the table's width): drop it unless a question needs it[/]")
    for name, levels in unknown_level_columns(draft).items():
        said = ", ".join(repr(level) for level in levels)
        console.print(f"[yellow]column {label[name]} has the level {said}: if it means that nothing was recorded, move "
                      "it from the column's categories to its own missing_values and make the column nullable (it is "
                      "then read as an empty cell, and the release learns how often it is missing); keep it as a "
                      "level if it is an answer your questions count[/]")
    for name in constant_columns(extract, draft):
        console.print(f"[yellow]column {label[name]} holds one value in every row: unless it names the hospital (a "
                      "site column), it tells nothing, and every column shares the budget (the noise grows with the "
                      "table's width): drop it from the extract and the schema[/]")
    for name, first in duplicate_columns(extract, draft):
        console.print(f"[yellow]column {label[name]} repeats column {label[first]} row for row: drop one of them "
                      "(every column shares the budget)[/]")
    for name in log_scale_columns(extract, draft):
        console.print(f"[yellow]column {label[name]} spans more than two orders of magnitude: consider \"transform\": "
                      "\"log\" with a public lower bound above 0 (docs/schema.md)[/]")
    for name in outcome_proxy_columns(extract, draft):
        console.print(f"[yellow]column {label[name]} (nearly) determines the outcome '{outcome}': its values (or "
                      "whether it is empty) pick the outcome class in 95 % of each class's rows, or one of its values "
                      "goes with one outcome class only, in a large part of that class's rows. If it records the "
                      "outcome itself (a discharge to the mortuary, a date of death), drop it: a release keeps such a "
                      "link more easily than any real relation, and the utility checks would then flatter it[/]")
    variants = case_variant_columns(extract, draft)  # one message naming them all: an extract's eleven yes/no flags
    if variants:
        named = ", ".join(label[name] for name in variants)
        plural = len(variants) > 1
        console.print(f"[yellow]column{'s' if plural else ''} {named} list{'' if plural else 's'} levels that "
                      "may be one level written two ways: in another letter case ('F' and 'f'), a letter and a word "
                      "it may abbreviate ('F' and 'Female'), or yes or no written two ways ('T' and 'yes'). If so, "
                      "list the level once and its other writings under the column's 'spellings' (docs/schema.md; "
                      "public, like the categories), or write it one way in the extract[/]")
    merged = letter_case_columns(draft)
    if merged:
        named = ", ".join(label[name] for name in merged)
        console.print(f"[yellow]{'columns' if len(merged) > 1 else 'column'} {named}: a level written in several "
                      "letter cases ('Emergency', 'emergency') was drafted once, read in any letter case (the level "
                      "among its own 'spellings'). Where letter case tells levels apart, list them apart and remove "
                      "that spelling[/]")
    if outcome is None:
        console.print("[yellow]no --outcome given: name the column you will predict (e.g. --outcome death) so that "
                      "utility can be measured and generation conditions on it[/]")
    console.print(f"[yellow]the draft's name '{escape(draft.name)}' (the file's) titles every release made with it: "
                  "rename it to the study's name[/]")
    taken = {name for name in extract.columns if extract[name].notna().any()}  # by some hospital
    for path, extract_of_site in zip(data, extracts):
        unmeasured = [str(name) for name in extract_of_site.columns if name in taken and len(extract_of_site)
                      and extract_of_site[name].isna().all() and str(name) not in lacking[path]]  # said above
        if unmeasured and len(data) > 1:
            console.print(f"[yellow]{path}: {', '.join(label[name] for name in unmeasured[:5])}"
                          f"{' and more' if len(unmeasured) > 5 else ''} empty in every row (a measure that hospital "
                          "does not take): drafted nullable. The release draws each site's missing share with "
                          "noise, so a small site may still get values there: name the site column (--site-column) "
                          "and check the report's sites[/]")
    read = " ".join(map(str, data))
    console.print(f"[yellow bold]Draft written to {out}. Its column names, kinds, bounds, categories (and their "
                  f"spellings), precisions, nullable flags and missing-value markers were read off {read}: that is "
                  "private information.[/] Check that each column name is a name, never a patient's value (a file "
                  "without a header line gives its first record as names). Replace "
                  "each with public knowledge (clinical ranges, code lists), set needs_review to false, then train. "
                  "Training refuses needs_review columns unless --allow-unreviewed-schema is given, which is then "
                  "written into the privacy report.")


def _renamed_column(lacking: list[str], own: list[str]) -> tuple[str, str] | None:
    """A column a file lacks (``lacking``) that it seems to hold under another name of its own
    that not every file shares (``own``): the same but for letter case, spaces, '-' or '_', or
    spelled nearly alike ('creatinin'). The pair (the others' name, this file's), or None."""
    from fedsyn.errors import closest_name

    def folded(name: str) -> str:
        return "".join(character for character in name.casefold() if character.isalnum())

    for name in lacking:
        same = [candidate for candidate in own if folded(candidate) == folded(name)]
        close = same[0] if same else closest_name(name, own, cutoff=0.85)
        if close is not None:
            return name, close
    return None


def _difference_unshown(first: pd.DataFrame, other: pd.DataFrame) -> bool:
    """Whether a name two files' headers do not share looks like a value
    (:func:`~fedsyn.data.schema.names_like_values`) or is a cell of either file (a level, a code,
    a ward): a file without a header line gives a patient's values as its names, so such names
    are never shown nor drafted from (helper-117: a headerless file's first record was printed whole)."""
    from fedsyn.data.schema import names_like_values

    names, others = {str(n) for n in first.columns}, {str(n) for n in other.columns}
    like_values = {*names_like_values(first), *names_like_values(other)}
    cells = {str(value).strip() for frame in (first, other) for name in frame.columns
             for value in frame[name].dropna().unique()}
    return any(name in like_values or name.strip() in cells for name in names ^ others)


def validate(
    data: Annotated[list[Path], typer.Argument(help="the extract(s) to check (CSV or Parquet): one hospital's, or "
                                               "each file a simulation's --sites would read")],
    schema: Annotated[Path, typer.Option("--schema", "-s", help="the public schema (JSON)")],
) -> None:
    """Check hospital extracts against the schema, each file on its own; exit code 1 if any does
    not fit, 2 if any cannot be read. Writes nothing."""
    from fedsyn.data.schema import Schema, SchemaError
    from fedsyn.data.tables import DataFileError, read_table
    from fedsyn.data.validation import numbering_for, validate_frame

    try:
        contract = Schema.load(schema)
    except SchemaError as exc:
        fail(str(exc))
    fits, unreadable = True, False
    for path in data:
        try:
            report = validate_frame(read_table(path, contract), contract, numbering_for(path))
        except DataFileError as exc:  # the next file is checked all the same
            console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            unreadable = True
            continue
        fits = fits and report.ok
        colour = "green" if report.ok else "red"
        first, *rest = report.describe().splitlines()
        console.print(f"[{colour}]{escape(f'{path}: {first}')}[/]", soft_wrap=True)  # a file's line whole, for grep
        for line in rest:  # a note is not a problem: it is not coloured as one, nor as "fits"
            console.print(f"[{'yellow' if line.lstrip().startswith('note:') else colour}]{escape(line)}[/]",
                          soft_wrap=True)
    if contract.unreviewed_columns:
        console.print(f"[yellow]note: {len(contract.unreviewed_columns)} column(s) of {schema} still need review "
                      "(needs_review): training refuses them until their bounds and categories are public ones and "
                      "needs_review is false, or --allow-unreviewed-schema is given and recorded[/]")
    if unreadable:  # as a single unreadable file always said: exit 2
        raise typer.Exit(2)
    if not fits:
        raise typer.Exit(1)


