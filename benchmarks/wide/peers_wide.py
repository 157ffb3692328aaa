"""Pooled AIM (or MST) at the same epsilon on the wide NHEFS table, judged by judge_wide.py.

    /tmp/peers-venv/bin/python benchmarks/wide/peers_wide.py DATA_DIR aim --eps 1 --save /tmp/wide-peers \
        [--fit-minutes 25] [--judge-python /tmp/judge-venv/bin/python] [--json results.jsonl]

Fitting is stopped after --fit-minutes (SIGALRM; exit code 124, "did not finish"): then run
`mst` instead and report it as MST.

Uses the shared bench's peers.fit_sample unchanged (smartnoise-synth; 10 % of epsilon for DP
bounds, and where smartnoise cannot find them, the schema's public bounds through
peers.public_bounds_transformer, pointed at benchmarks/wide/schema.json). Pooled: it sees all
training rows, the centralised upper bound a federation cannot see. Set up the venv as peers.py's
docstring says: python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install smartnoise-synth
sdmetrics scikit-learn.

Empty cells: smartnoise's transformers take none, so before fitting each nullable continuous
column C gets a categorical indicator C_missing and its empty cells the schema's public lower
bound (not a statistic of the data); a nullable categorical keeps "nan" as one more category.
After sampling, C is emptied where C_missing is "1" and the indicator dropped, so the synthetic
table has the real table's columns and is judged like every other (judge_wide.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rows import emit  # this folder: each script runs by its path

HERE = Path(__file__).resolve().parent
TABLE = "nhefs_wide"
MISSING = "_missing"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="folder with train.csv and test.csv (build.py)")
    parser.add_argument("method", nargs="?", default="aim", choices=["aim", "mst"])
    parser.add_argument("--eps", type=float, default=1.0)
    parser.add_argument("--bench", type=Path, default=Path("/work/shared/bench"))
    parser.add_argument("--save", type=Path, default=Path("/tmp/wide-peers"))
    parser.add_argument("--fit-minutes", type=float, default=25.0, help="stop fitting after this long")
    parser.add_argument("--judge-python", default="/tmp/judge-venv/bin/python")
    parser.add_argument("--json", type=Path, default=None, help="append the result row here (JSON lines)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(args.bench))
    import load
    import peers
    load.schema_path = lambda name: HERE / "schema.json"  # public_bounds_transformer reads our schema

    spec = dict(json.loads((HERE / "spec.json").read_text())[TABLE], name=TABLE)
    schema = json.loads((HERE / "schema.json").read_text())
    lower = {c["name"]: c["lower"] for c in schema["columns"] if c["kind"] != "categorical"}
    nullable = [c["name"] for c in schema["columns"] if c.get("nullable") and c["kind"] != "categorical"]
    train = pd.read_csv(args.data / "train.csv", dtype={c: str for c in spec["categorical"]})
    fit = train.copy()
    for col in spec["categorical"]:
        fit[col] = fit[col].fillna("nan")
    for col in nullable:
        fit[col + MISSING] = fit[col].isna().astype(int).astype(str)
        fit[col] = fit[col].fillna(lower[col])
    fit_spec = dict(spec, categorical=spec["categorical"] + [c + MISSING for c in nullable])

    def out_of_time(signum, frame):
        raise TimeoutError(f"{args.method} did not finish fitting in {args.fit_minutes:g} minutes")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.fit_minutes * 60))
    started = time.monotonic()
    try:
        syn = peers.fit_sample(args.method, fit, fit_spec, args.eps, len(train))
    except TimeoutError as exc:
        print(f"{exc} (stopped after {time.monotonic() - started:.0f} s)", flush=True)
        sys.exit(124)
    finally:
        signal.alarm(0)
    seconds = time.monotonic() - started
    for col in nullable:
        syn[col] = pd.to_numeric(syn[col], errors="coerce").where(syn[col + MISSING].astype(str) != "1", np.nan)
    syn = syn[list(train.columns)]
    args.save.mkdir(parents=True, exist_ok=True)
    path = args.save / f"{TABLE}-{args.method}-e{args.eps:g}-pooled.csv"
    syn.to_csv(path, index=False)
    print(f"{args.method} fitted and sampled in {seconds:.1f} s -> {path}", flush=True)

    judged = subprocess.run([args.judge_python, str(HERE / "judge_wide.py"), str(args.data), str(path),
                             "--bench", str(args.bench), "--label", f"{args.method} pooled"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if judged.returncode:
        raise RuntimeError(f"judge failed:\n{judged.stderr[-3000:]}")
    row = {**json.loads(judged.stdout.strip().splitlines()[-1]), "method": args.method, "scope": "pooled",
           "eps": args.eps, "seconds": round(seconds, 1)}
    emit(row, args.json)


if __name__ == "__main__":
    main()
