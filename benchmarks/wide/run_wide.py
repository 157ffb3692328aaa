"""fedsyn on the wide NHEFS table, as a reviewer runs it, judged by judge_wide.py.

    /work/main/.venv/bin/python benchmarks/wide/run_wide.py DATA_DIR [--seeds 0,1,2] [--epsilon 1]
        [--out-prefix /tmp/wide-run-] [--judge-python /tmp/judge-venv/bin/python] [--json results.jsonl]
        [--simulate-args=--yes]

Reuses benchmarks/bench_tables.py's split_by_site (one CSV per value of train.csv's `site`
column; the schema keeps `site`, so the column stays). Then, per seed, one real command line:

    fedsyn simulate --sites midwest.csv --sites northeast.csv --sites south.csv --sites west.csv
        --held-out test.csv --schema schema.json --epsilon 1 --rows len(train) --seed S --stream-nonce N(S)
        --out OUT_PREFIX S --no-compare --overwrite

(as bench_tables.run_fedsyn builds it, plus --held-out for the local report and verdict; its
stdout, with the plan and the verdict, is kept in OUT.stdout, stderr in OUT.stderr:
`--overwrite` empties OUT), and judge_wide.py on OUT/release/synthetic.csv. One run at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: bench_tables, as `python benchmarks/bench_tables.py` finds it

from bench_tables import bench_nonce, split_by_site  # noqa: E402
from rows import emit  # noqa: E402  (this folder: each script runs by its path)

TABLE = "nhefs_wide"


def bench_layout(data: Path, work: Path) -> Path:
    """A folder shaped like the shared bench (tables.json + TABLE/train.csv) for split_by_site."""
    bench = work / "bench"
    (bench / TABLE).mkdir(parents=True, exist_ok=True)
    (bench / "tables.json").write_text((HERE / "spec.json").read_text())
    for name in ("train.csv", "test.csv"):
        link = bench / TABLE / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((data / name).resolve())
    return bench


def log(out: Path, stream: str) -> Path:
    return out.with_name(f"{out.name}.{stream}")


def simulate(fedsyn: str, sites: list[Path], held_out: Path, epsilon: float, rows: int, seed: int,
             out: Path, extra: list[str] = ()) -> float:
    command = [fedsyn, "simulate", *[arg for path in sites for arg in ("--sites", str(path))],
               "--held-out", str(held_out), "--schema", str(HERE / "schema.json"), "--epsilon", f"{epsilon:g}",
               "--rows", str(rows), "--seed", str(seed), "--stream-nonce", bench_nonce(seed), "--out", str(out),
               "--no-compare", "--overwrite", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print("$ " + " ".join(command), flush=True)
    started = time.monotonic()
    with log(out, "stdout").open("w") as stdout, log(out, "stderr").open("w") as stderr:
        result = subprocess.run(command, env=env, stdout=stdout, stderr=stderr, text=True)
    seconds = time.monotonic() - started
    if result.returncode:
        raise RuntimeError(f"fedsyn simulate failed ({result.returncode}); see {log(out, 'stderr')}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="folder with train.csv and test.csv (build.py)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--out-prefix", default="/tmp/wide-run-")
    parser.add_argument("--work", type=Path, default=Path("/tmp/wide-work"))
    parser.add_argument("--fedsyn", default=str(Path(sys.executable).with_name("fedsyn")))
    parser.add_argument("--judge-python", default="/tmp/judge-venv/bin/python")
    parser.add_argument("--json", type=Path, default=None, help="append result rows here (JSON lines)")
    parser.add_argument("--simulate-args", default="", help="more `fedsyn simulate` options, e.g. '--yes' to run "
                        "past a plan that says red (fedsyn since c755878 refuses one)")
    args = parser.parse_args(argv)
    bench = bench_layout(args.data, args.work)
    sites = split_by_site(bench, TABLE, args.work / "sites")
    rows = json.loads((HERE / "spec.json").read_text())[TABLE]["rows"]
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = Path(f"{args.out_prefix}{seed}")
        seconds = simulate(args.fedsyn, sites, args.data / "test.csv", args.epsilon, rows, seed, out,
                           shlex.split(args.simulate_args))
        print(log(out, "stdout").read_text(), flush=True)
        judged = subprocess.run([args.judge_python, str(HERE / "judge_wide.py"), str(args.data),
                                 str(out / "release" / "synthetic.csv"), "--label", f"fedsyn seed {seed}"],
                                capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if judged.returncode:
            raise RuntimeError(f"judge failed:\n{judged.stderr[-3000:]}")
        row = {**json.loads(judged.stdout.strip().splitlines()[-1]), "method": "fedsyn",
               "scope": f"federated:{len(sites)}", "eps": args.epsilon, "seed": seed,
               "simulate_args": args.simulate_args, "seconds": round(seconds, 1)}
        emit(row, args.json)


if __name__ == "__main__":
    main()
