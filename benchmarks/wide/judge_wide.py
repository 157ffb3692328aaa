"""Judge synthetic tables against the wide NHEFS table with the bench's own judge (judge.judge_all).

    /tmp/judge-venv/bin/python benchmarks/wide/judge_wide.py DATA_DIR SYN.csv [SYN.csv ...]
        [--bench /work/shared/bench] [--label NAME] [--json results.jsonl]

DATA_DIR holds train.csv and test.csv from build.py; spec.json and schema.json sit beside this
file. Needs pandas, scikit-learn and sdmetrics (the judge venv).

One adaptation, applied identically to the real train/test rows and to every synthetic table:
judge.py cannot take empty cells in a continuous column (logistic regression and the DCR nearest
neighbours reject NaN, and its `_coerce` drops every synthetic row with one, which would drop all
men because `pregnancies` is empty for them). So each nullable continuous column C (schema
`nullable`) is given a categorical indicator `C_missing` ("1" empty, "0" not) and its empty cells
are filled with the real training median of C. The missingness pattern thus stays part of what is
judged (TSTR features, quality, site structure, detection, DCR). The indicators are also asked as
"every question" targets by judge.every_question; the summary means (`eq_*_mean`) leave them out
and average the 41 real categorical columns other than the outcome and the site.

A second one, for detection only: judge.detection's OrdinalEncoder raises on a category that a
cross-validation fold did not see in training, and cross_val_score then returns NaN. On this table
that always happens (birthplace has 51 codes, several held by one or two people). While
judge.judge_all runs, sklearn's OrdinalEncoder is replaced by one that encodes such a category as
-1 (handle_unknown="use_encoded_value"); nothing else in judge.py uses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rows import emit  # this folder: each script runs by its path

HERE = Path(__file__).resolve().parent
TABLE = "nhefs_wide"
MISSING = "_missing"


def load_spec() -> dict:
    return dict(json.loads((HERE / "spec.json").read_text())[TABLE], name=TABLE)


def nullable_continuous(spec: dict) -> list[str]:
    schema = json.loads((HERE / "schema.json").read_text())
    nullable = {c["name"] for c in schema["columns"] if c.get("nullable")}
    return [c for c in spec["continuous"] if c in nullable]


def spell(value: object) -> object:
    """'19.0' -> '19', as fedsyn and build.py spell codes; empty stays empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def read(path: Path, spec: dict) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={c: str for c in spec["categorical"]})
    for col in spec["categorical"]:
        if col in frame:
            frame[col] = frame[col].map(spell)
    return frame


def prepare(frame: pd.DataFrame, spec: dict, medians: dict) -> pd.DataFrame:
    frame = frame.copy()
    for col in nullable_continuous(spec):
        values = pd.to_numeric(frame[col], errors="coerce")
        frame[col + MISSING] = values.isna().astype(int).astype(str)
        frame[col] = values.fillna(medians[col])
    return frame


def judged_spec(spec: dict) -> dict:
    return dict(spec, categorical=spec["categorical"] + [c + MISSING for c in nullable_continuous(spec)])


def load_table(data: Path):
    """(train, test, spec) ready for judge.judge_all, and the median filler for synthetic tables."""
    spec = load_spec()
    train, test = read(data / "train.csv", spec), read(data / "test.csv", spec)
    medians = {c: float(train[c].median()) for c in nullable_continuous(spec)}
    return prepare(train, spec, medians), prepare(test, spec, medians), judged_spec(spec), medians


def summarise(res: dict, spec: dict) -> dict:
    questions = {k: v for k, v in res["every_question"].items() if not k.endswith(MISSING)}
    out = {"eq_questions": len(questions)}
    for key in ("tstr_gb", "tstr_lr", "trtr_gb", "trtr_lr"):
        out[f"eq_{key}_mean"] = round(float(np.mean([v[key] for v in questions.values()])), 4)
    return out


class _TolerantOrdinalEncoder:
    """sklearn's OrdinalEncoder with unseen categories encoded as -1 (see the module docstring)."""

    def __new__(cls, **kwargs):
        from sklearn.preprocessing._encoders import OrdinalEncoder
        kwargs.setdefault("handle_unknown", "use_encoded_value")
        kwargs.setdefault("unknown_value", -1)
        return OrdinalEncoder(**kwargs)


def judge_file(path: Path, data: Path, bench: Path) -> dict:
    sys.path.insert(0, str(bench))
    import judge
    import sklearn.preprocessing as preprocessing
    train, test, spec, medians = load_table(data)
    syn = prepare(read(path, load_spec()), load_spec(), medians)
    started = time.monotonic()
    original = preprocessing.OrdinalEncoder
    preprocessing.OrdinalEncoder = _TolerantOrdinalEncoder
    try:
        res = judge.judge_all(syn, train, test, spec)
    finally:
        preprocessing.OrdinalEncoder = original
    res.update(summarise(res, spec), judge_seconds=round(time.monotonic() - started, 1))
    return res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="folder with train.csv and test.csv (build.py)")
    parser.add_argument("synthetic", type=Path, nargs="+")
    parser.add_argument("--bench", type=Path, default=Path("/work/shared/bench"))
    parser.add_argument("--label", default=None, help="a name stored with each result row")
    parser.add_argument("--json", type=Path, default=None, help="append result rows here (JSON lines)")
    args = parser.parse_args(argv)
    for path in args.synthetic:
        row = {"table": TABLE, "file": str(path), "label": args.label, **judge_file(path, args.data, args.bench)}
        emit(row, args.json)


if __name__ == "__main__":
    main()
