"""A large extract end to end: how long `schema draft` and `simulate` take, and how much memory.

    python benchmarks/bench_large.py OUT [--rows 120000] [--rounds 3] [--fedsyn PATH]

Writes ``OUT/large.csv``: ``--rows`` made-up patients (NumPy, a fixed seed: no real person, and
nothing downloaded) of four hospitals (40 / 30 / 20 / 10 % of the rows), with 40 columns a
hospital extract has: age and sex, 12 log-normal lab values, 18 yes/no flags, a 30-level
diagnosis, a ward, a length of stay, a visit count, a BMI, a smoking status, and a death that
depends on age and one flag. Then runs the real command lines, `fedsyn schema draft` and
`fedsyn simulate --site-column site` on the draft as it is (``--allow-unreviewed-schema``), and
prints each one's wall time and peak memory (the children's maximum resident set). Real
extracts hold tens of thousands of rows; the bench tables hold a few thousand. Prints numbers
only, never asserts.
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

HOSPITALS = (("north", 0.4), ("south", 0.3), ("east", 0.2), ("west", 0.1))


def made_up_extract(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Patients of four hospitals whose risk grows with age; no row is anyone's."""
    site = rng.choice([name for name, _ in HOSPITALS], rows, p=[share for _, share in HOSPITALS])
    age = np.clip(rng.normal(60, 15, rows).round(), 18, 100)
    risk = (age - 60) / 15
    columns: dict[str, object] = {"site": site, "age": age, "sex": rng.choice(["F", "M"], rows)}
    for index in range(12):
        columns[f"lab{index}"] = np.round(np.exp(rng.normal(3 + 0.1 * risk * (index % 3), 0.5, rows)), 1)
    for index in range(18):
        chance = 1 / (1 + np.exp(-(0.3 * risk * (index % 4) - 1.5)))
        columns[f"flag{index}"] = np.where(rng.random(rows) < chance, "yes", "no")
    columns["diagnosis"] = rng.choice([f"D{code:02d}" for code in range(30)], rows)
    columns["ward"] = rng.choice(list("ABCDEF"), rows)
    columns["los"] = np.clip(rng.geometric(0.2, rows), 1, 200)
    columns["visits"] = rng.poisson(2 + risk.clip(0), rows)
    columns["bmi"] = np.round(rng.normal(27, 5, rows), 1)
    columns["smoker"] = rng.choice(["never", "former", "current"], rows)
    death = 1 / (1 + np.exp(-(1.2 * risk - 2 + 0.5 * (columns["flag1"] == "yes"))))
    columns["death"] = np.where(rng.random(rows) < death, "yes", "no")
    return pd.DataFrame(columns)


def timed(command: list[str]) -> tuple[float, float, str]:
    """Run ``command``; its wall seconds, the peak resident memory (GiB) of any child so far, and
    what it printed."""
    started = time.monotonic()
    printed = subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.monotonic() - started, peak_kib / 2**20, printed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="a folder for the extract, its draft and the run (written)")
    parser.add_argument("--rows", type=int, default=120_000)
    parser.add_argument("--rounds", type=int, default=3, help="training rounds (the default run has 25)")
    parser.add_argument("--fedsyn", default=shutil.which("fedsyn") or "fedsyn", help="the fedsyn command to time")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    extract, draft = args.out / "large.csv", args.out / "large.draft.json"
    made_up_extract(args.rows, np.random.default_rng(7)).to_csv(extract, index=False)
    seconds, peak, _ = timed([args.fedsyn, "schema", "draft", str(extract), "--outcome", "death", "-o", str(draft),
                           "--overwrite"])
    print(f"schema draft: {args.rows} rows, 40 columns: {seconds:.0f} s, peak {peak:.2f} GiB")
    seconds, peak, printed = timed([args.fedsyn, "simulate", "--data", str(extract), "--site-column", "site",
                                    "--schema", str(draft), "--allow-unreviewed-schema", "--rounds", str(args.rounds),
                                    "--yes", "--overwrite", "--out", str(args.out / "run")])
    for line in printed.splitlines():  # each round's time and the release's
        if re.match(r"\s*(round \d+/\d+|Release:)", line):
            print(f"  {line.strip()}")
    print(f"simulate, {args.rounds} rounds, with the local report: {seconds:.0f} s, peak {peak:.2f} GiB")


if __name__ == "__main__":
    main()
