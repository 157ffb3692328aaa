"""Federated fedsyn on the real multi-site benchmark tables, judged by the bench's own judge.

    python benchmarks/bench_tables.py BENCH_KIT [--seeds 3] [--first-seed 0] [--tables azpro,nmes]
        [--epsilon 1] [--json rows.jsonl] [--fedsyn PATH] [--judge-python PATH]

Why: on these tables (real hospitals, a ``site`` column, reviewed public bounds) the
federated release once gave TSTR ROC-AUC far below 0.5, i.e. synthetic data that reverses
outcome relationships. This runs fedsyn exactly as an outside reviewer does, so its numbers
can be put beside the peers in ``peers.jsonl``:

- ``train.csv`` is split by its ``site`` column into one CSV per site (a temporary folder);
- ``fedsyn simulate --sites ... --schema <table>/schema.json --epsilon E --rows len(train)
  --seed S --stream-nonce N(S) --out DIR --no-compare --hold-out 0`` runs as a subprocess (the real command
  line; N(S), :func:`bench_nonce`, is fixed per seed so that variants compare paired);
- ``DIR/release/synthetic.csv`` is scored by the bench's ``judge.judge_all``: TSTR with gradient
  boosting and logistic regression on the declared outcome and, averaged, with every other
  categorical column as the target ("questions"), site structure (mean TV of P(column | site),
  0 = each site's population kept), detection AUC (0.5 = indistinguishable), SDMetrics quality,
  DCR ratio, excess exact copies. The table's site column is passed as ``--site-column``.
  Beside the judge, every pair of numeric columns: how far its Spearman correlation is from the
  held-out real rows', and how many clear relations are turned round or made up.

The judge runs in a subprocess of ``--judge-python`` (default: this interpreter), so that
sdmetrics, which pins its own pandas, may live in a separate environment. Prints numbers
only, never asserts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

METRICS = ("tstr_gb", "tstr_lr", "questions_gb", "questions_lr", "site_tv", "detection", "quality", "dcr_ratio",
           "excess_exact", "seconds")
HEADERS = ("TSTR GB", "TSTR LR", "questions GB", "questions LR", "site TV", "detection", "quality", "DCR ratio",
           "excess exact", "seconds")

# Runs under --judge-python: reads the bench table, scores one synthetic CSV, prints JSON.
_JUDGE = """
import json, sys
import pandas as pd
bench, table, synthetic = sys.argv[1:4]
sys.path.insert(0, bench)
from load import load
import judge
train, test, spec = load(table)
syn = pd.read_csv(synthetic, dtype={c: str for c in spec["categorical"]})
scores = judge.judge_all(syn, train, test, spec)
questions = scores.pop("every_question") or {}
for model in ("gb", "lr"):  # every other categorical column as the target: the mean TSTR ROC-AUC
    values = [q[f"tstr_{model}"] for q in questions.values()]
    scores[f"questions_{model}"] = sum(values) / len(values) if values else None
scores["per_question"] = {target: {k: round(v, 4) for k, v in q.items() if isinstance(v, float)}
                          for target, q in questions.items()}
scores["site_tv"], scores["detection"] = scores.pop("site_structure_tv"), scores.pop("detection_auc")
pairs = []  # every pair of numeric columns: Spearman on the held-out real rows, then on the synthetic ones
numeric = spec.get("continuous", [])
for i, first in enumerate(numeric):
    for second in numeric[i + 1:]:
        real = pd.to_numeric(test[first], errors="coerce").corr(pd.to_numeric(test[second], errors="coerce"),
                                                                method="spearman")
        made = pd.to_numeric(syn[first], errors="coerce").corr(pd.to_numeric(syn[second], errors="coerce"),
                                                               method="spearman")
        if real == real and made == made:
            pairs.append((float(real), float(made)))
scores["numeric_pairs"] = {
    "pairs": len(pairs),
    "rho_error": sum(abs(r - m) for r, m in pairs) / len(pairs) if pairs else None,
    "reversed": sum(int(abs(r) >= 0.15 and abs(m) >= 0.05 and (r > 0) != (m > 0)) for r, m in pairs),
    "strong": sum(int(abs(r) >= 0.15) for r, m in pairs),
    "invented": sum(int(abs(r) < 0.05 and abs(m) >= 0.2) for r, m in pairs),
}
print(json.dumps(scores))
"""


def table_spec(bench: Path, table: str) -> dict:
    return dict(json.loads((bench / "tables.json").read_text())[table], name=table)


def split_by_site(bench: Path, table: str, folder: Path) -> list[Path]:
    """One CSV per value of the table's site column, categorical spellings kept as text."""
    spec = table_spec(bench, table)
    train = pd.read_csv(bench / table / "train.csv", dtype={c: str for c in spec["categorical"]})
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for site, rows in sorted(train.groupby(spec["site"]), key=lambda item: str(item[0])):
        path = folder / f"{site}.csv"
        rows.to_csv(path, index=False)
        paths.append(path)
    return paths


def bench_nonce(seed: int) -> str:
    """The stream nonce of bench seed ``seed``: fixed, so two variants run on one seed draw the
    same noise and their difference is the variant's (paired comparisons on public bench
    tables; a published release must never share a stream with another, so never do this
    outside a benchmark)."""
    return hashlib.sha256(f"fedsyn-bench-{seed}".encode()).hexdigest()[:32]


def run_fedsyn(fedsyn: str, sites: list[Path], schema: Path, epsilon: float, rows: int, seed: int,
               out: Path, extra: Iterable[str] = ()) -> float:
    """``fedsyn simulate`` as a reviewer runs it; returns its wall-clock seconds."""
    command = [fedsyn, "simulate", *[arg for path in sites for arg in ("--sites", str(path))],
               "--schema", str(schema), "--epsilon", f"{epsilon:g}", "--rows", str(rows),
               "--seed", str(seed), "--stream-nonce", bench_nonce(seed), "--out", str(out), "--no-compare", "--yes",
               "--hold-out", "0", *extra]  # every site row trains; the bench's judge holds its own test rows
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode:
        raise RuntimeError(f"fedsyn simulate failed ({result.returncode}):\n{result.stdout[-2000:]}"
                           f"{result.stderr[-3000:]}")
    return seconds


def judge_release(judge_python: str, bench: Path, table: str, synthetic: Path) -> dict:
    """The bench's judge.py on one synthetic table (in a subprocess of ``judge_python``)."""
    result = subprocess.run([judge_python, "-c", _JUDGE, str(bench), table, str(synthetic)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode:
        raise RuntimeError(f"judge failed on {synthetic}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def peers(bench: Path, table: str) -> list[dict]:
    """Pooled AIM and AIM on the largest site, each replaced by MST where AIM is missing."""
    path = bench / "peers.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows = [r for r in rows if r.get("table") == table]
    chosen = []
    for scope, label in (("pooled", "pooled"), ("site:", "largest site")):
        for method in ("aim", "mst"):
            match = [r for r in rows if r["method"] == method and r["scope"].startswith(scope)]
            if match:
                chosen.append({**match[0], "arm": f"{method.upper()} {label} ({match[0]['scope']})"})
                break
    return chosen


def saved_peers(judge_python: str, bench: Path, table: str, folder: Path | None) -> list[dict]:
    """Peers' synthetic tables kept by the bench's ``peers.py --save`` (``TABLE-METHOD-...csv``),
    judged here exactly as fedsyn's releases are: every question, site structure, detection."""
    if folder is None:
        return []
    rows = []
    for path in sorted(folder.glob(f"{table}-*.csv")):
        scores = judge_release(judge_python, bench, table, path)
        rows.append({"table": table, "arm": f"{path.stem} (judged here)", "seed": None, "peer": True,
                     "method": path.stem.split("-")[1], **scores})
    return rows


def print_questions(table: str, rows: list[dict]) -> None:
    """Every question's TSTR GB / LR, per fedsyn seed and per judged peer, beside the real ceiling."""
    judged = [r for r in rows if r.get("per_question")]
    if not judged:
        return
    for target in judged[0]["per_question"]:
        cells = "  ".join(f"{r['arm'].split(' (')[0]}{'' if r.get('seed') is None else ' s' + str(r['seed'])}: "
                          f"{r['per_question'][target].get('tstr_gb', float('nan')):.3f}/"
                          f"{r['per_question'][target].get('tstr_lr', float('nan')):.3f}"
                          for r in judged if target in r["per_question"])
        real = judged[0]["per_question"][target]
        print(f"{table:<10} question {target:<16} real {real.get('trtr_gb', float('nan')):.3f}/"
              f"{real.get('trtr_lr', float('nan')):.3f}  {cells}", flush=True)


def print_numeric_pairs(table: str, rows: list[dict]) -> None:
    """How the numeric columns relate, per fedsyn seed and judged peer: the mean absolute error
    of every pair's Spearman correlation against the held-out real rows, the clear ones (|rho| of
    .15 or more there) turned round, and the pairs made related (|rho| .2 or more) that are not
    (under .05)."""
    judged = [r for r in rows if r.get("numeric_pairs", {}).get("pairs")]
    if not judged:
        return
    cells = "  ".join(f"{r['arm'].split(' (')[0]}{'' if r.get('seed') is None else ' s' + str(r['seed'])}: "
                      f"|drho| {r['numeric_pairs']['rho_error']:.3f}, reversed {r['numeric_pairs']['reversed']}"
                      f"/{r['numeric_pairs']['strong']}, invented {r['numeric_pairs']['invented']}" for r in judged)
    print(f"{table:<10} numeric pairs ({judged[0]['numeric_pairs']['pairs']})  {cells}", flush=True)


def _cells(row: dict) -> str:
    values = []
    for key in METRICS:
        value = row.get(key)
        values.append(f"{'-':>12}" if value is None else f"{value:12.1f}" if key == "seconds" else f"{value:12.4f}")
    return " ".join(values)


def print_rows(rows: Iterable[dict]) -> None:
    for row in rows:
        seed = "" if row.get("seed") is None else str(row["seed"])
        print(f"{row['table']:<10} {row['arm']:<34} {seed:>4} {_cells(row)}", flush=True)


def mean_row(table: str, rows: list[dict]) -> dict:
    out = {"table": table, "arm": f"fedsyn federated mean of {len(rows)}", "seed": None}
    for key in (*METRICS, "trtr_gb", "trtr_lr"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    out["tstr_gb_std"] = float(np.std([r["tstr_gb"] for r in rows]))
    out["tstr_lr_std"] = float(np.std([r["tstr_lr"] for r in rows]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench", type=Path, help="the bench folder (tables.json, load.py, judge.py, peers.jsonl)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1 (more seeds for a comparison)")
    parser.add_argument("--tables", default=None, help="comma-separated names (default: all in tables.json)")
    parser.add_argument("--epsilon", type=float, default=1.0, help="budget per site")
    parser.add_argument("--json", type=Path, default=None, help="write the result rows here as JSON lines")
    parser.add_argument("--work", type=Path, default=None, help="keep site splits and releases here")
    parser.add_argument("--fedsyn", default=str(Path(sys.executable).with_name("fedsyn")),
                        help="the fedsyn command (default: the one beside this Python)")
    parser.add_argument("--judge-python", default=sys.executable,
                        help="a Python with sdmetrics and scikit-learn to run the bench's judge.py")
    parser.add_argument("--peer-tables", type=Path, default=None,
                        help="a folder of peers' synthetic tables (peers.py --save) to judge the same way")
    parser.add_argument("--simulate-args", default="",
                        help="more `fedsyn simulate` options for every run, e.g. '--marginals-share 0.3'")
    args = parser.parse_args(argv)
    bench = args.bench.resolve()
    names = args.tables.split(",") if args.tables else list(json.loads((bench / "tables.json").read_text()))
    work = args.work or Path(tempfile.mkdtemp(prefix="fedsyn-bench-"))
    last_seed = args.first_seed + args.seeds - 1
    print(f"fedsyn federated, epsilon={args.epsilon:g} per site, seeds {args.first_seed}..{last_seed}; work in {work}")
    print(f"{'table':<10} {'arm':<34} {'seed':>4} " + " ".join(f"{h:>12}" for h in HEADERS), flush=True)
    results: list[dict] = []
    for table in names:
        sites = split_by_site(bench, table, work / table / "sites")
        train_rows = _train_rows(bench, table)
        runs = []
        for seed in range(args.first_seed, last_seed + 1):
            out = work / table / f"seed-{seed}"
            site_column = ["--site-column", table_spec(bench, table)["site"]]  # the table's own hospital column
            seconds = run_fedsyn(args.fedsyn, sites, bench / table / "schema.json", args.epsilon,
                                 train_rows, seed, out, [*site_column, *shlex.split(args.simulate_args)])
            scores = judge_release(args.judge_python, bench, table, out / "release" / "synthetic.csv")
            row = {"table": table, "arm": f"fedsyn federated ({len(sites)} sites)", "seed": seed,
                   "method": "fedsyn", "scope": f"federated:{len(sites)}", "eps": args.epsilon,
                   **scores, "seconds": round(seconds, 1)}
            runs.append(row)
            print_rows([row])
        summary = mean_row(table, runs)
        reference = [{**p, "seed": None} for p in peers(bench, table)]
        judged = saved_peers(args.judge_python, bench, table, args.peer_tables)
        print_rows([summary, *reference, *judged])
        print(f"{table:<10} {'real data ceiling (TRTR GB / LR)':<34} {'':>4} "
              f"{runs[0]['trtr_gb']:12.4f} {runs[0]['trtr_lr']:12.4f}", flush=True)
        print_questions(table, [*runs, *judged])
        print_numeric_pairs(table, [*runs, *judged])
        results += [*runs, summary, *({**p, "peer": True} for p in reference), *judged]
    if args.json is not None:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in results))
        print(f"rows written to {args.json}")


def _train_rows(bench: Path, table: str) -> int:
    return len(pd.read_csv(bench / table / "train.csv", usecols=[0]))


if __name__ == "__main__":
    main()
