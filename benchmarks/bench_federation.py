"""Federated vs local-only vs pooled utility on the demo data (prints, never asserts).

    python benchmarks/bench_federation.py [--sites 3,5] [--epsilon 1] [--seeds 3]
    python benchmarks/bench_federation.py --sites 5 --sweep 256:20:15:1e-3 128:20:15:1e-3

For each site count and split (IID, skewed by age): TSTR ROC-AUC (gradient boosting,
logistic regression) of the federated release, of each site's own DP-GAN with the same
budget (worst and best), of one DP-GAN on the pooled rows (centralized DP, research only)
and of the real rows (TRTR); and the wall time of the federation. Means over ``--seeds``
runs: single GAN runs vary by a few hundredths of AUC.

``--sweep BATCH:ROUNDS:STEPS:LR ...`` instead prints the federated TSTR of other settings on
the IID split (how the defaults in ``simulations.run`` were chosen).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.evaluation.metrics import tstr_auc
from fedsyn.server.app import ReleasePlan
from fedsyn.server.settings import FEDERATED_GAN, FEDERATED_LOCAL_STEPS, FEDERATED_ROUNDS, FederationSettings
from fedsyn.simulations.run import baseline_arms, default_sample_rate, prepare_sites, run_sites
from fedsyn.simulations.split import split_table

MODELS = ("gradient_boosting", "logistic_regression")


def _cell(auc: dict[str, float]) -> str:
    return " / ".join(f"{auc[m]:.3f}" for m in MODELS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", default="3,5")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--transport-dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--rounds", type=int, default=FEDERATED_ROUNDS, help="federated rounds of the comparison")
    parser.add_argument("--local-steps", type=int, default=FEDERATED_LOCAL_STEPS,
                        help="DP-SGD steps per site and round of the comparison")
    parser.add_argument("--sweep", nargs="+", metavar="BATCH:ROUNDS:STEPS:LR",
                        help="federated TSTR of these settings (IID split) instead of the comparison")
    args = parser.parse_args(argv)
    schema = Schema.load(demo_schema_path())
    frame = read_table(demo_data_path(), schema)
    train, test = train_test_split(frame, test_size=0.3, random_state=0, stratify=frame[schema.outcome])
    if args.sweep:
        _sweep(train, test, schema, args)
        return
    config = FEDERATED_GAN
    print(f"TRTR (GB / LR): {_cell(tstr_auc(train, test, schema))}; epsilon={args.epsilon} per site, delta=1e-5, "
          f"updates sent as {args.transport_dtype}, mean of {args.seeds} seeds")
    print(f"{'sites':>5} {'split':>6} | {'federated':>13} | {'local worst':>13} | {'local best':>13} | "
          f"{'pooled':>13} | {'fed s':>6}")
    for count in (int(k) for k in args.sites.split(",")):
        for split in ("iid", "age"):
            tables = split_table(train, count, np.random.default_rng(0), skew=None if split == "iid" else "age")
            runs = [_one_seed(tables, schema, test, config, args, seed) for seed in range(args.seeds)]
            mean = {arm: {m: float(np.mean([r[arm][m] for r in runs])) for m in MODELS}
                    for arm in ("federated", "worst", "best", "pooled")}
            seconds = float(np.mean([r["seconds"] for r in runs]))
            print(f"{count:>5} {split:>6} | {_cell(mean['federated'])} | {_cell(mean['worst'])} | "
                  f"{_cell(mean['best'])} | {_cell(mean['pooled'])} | {seconds:6.1f}", flush=True)


def _sweep(train, test, schema: Schema, args) -> None:
    print(f"federated TSTR (GB / LR), IID split, epsilon={args.epsilon} per site, mean of {args.seeds} seeds")
    for count in (int(k) for k in args.sites.split(",")):
        tables = split_table(train, count, np.random.default_rng(0))
        for setting in args.sweep:
            batch, rounds, steps, lr = setting.split(":")
            config = dataclasses.replace(FEDERATED_GAN, batch_size=int(batch), generator_lr=float(lr),
                                         discriminator_lr=float(lr))
            runs = [_federate(tables, schema, test, config, int(rounds), int(steps), args, seed)[0]
                    for seed in range(args.seeds)]
            mean = {m: float(np.mean([r[m] for r in runs])) for m in MODELS}
            print(f"{count:>5} sites  batch {batch:>4}  {rounds:>3} rounds x {steps:>3} steps  lr {lr:>6} | "
                  f"{_cell(mean)}", flush=True)


def _federate(tables, schema, test, config, rounds: int, steps: int, args, seed: int) -> tuple[dict, float]:
    """TSTR ROC-AUC of one federated release, and the federation's wall time."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        plan = prepare_sites(tables, demo_schema_path(), root / "sites", args.epsilon, 1e-5, seed=seed)
        settings = FederationSettings(rounds=rounds, local_steps=steps, epsilon=args.epsilon, delta=1e-5,
                                      sample_rate=default_sample_rate(tables, config.batch_size)[0],
                                      gan_config=config, seed=seed, min_sites=1, transport_dtype=args.transport_dtype)
        started = time.perf_counter()
        run_sites(plan, schema, settings, ReleasePlan(root / "release", sum(len(t) for t in tables)))
        seconds = time.perf_counter() - started
        return tstr_auc(read_table(root / "release" / "synthetic.csv", schema), test, schema), seconds


def _one_seed(tables, schema, test, config, args, seed: int) -> dict:
    federated, seconds = _federate(tables, schema, test, config, args.rounds, args.local_steps, args, seed)
    arms = baseline_arms(tables, test, schema, args.epsilon, 1e-5, seed)
    local = [aucs for arm, aucs in arms.items() if arm.startswith("local-only")]
    return {"federated": federated, "pooled": arms["pooled (centralized DP)"], "seconds": seconds,
            "worst": {m: min(a[m] for a in local) for m in MODELS},
            "best": {m: max(a[m] for a in local) for m in MODELS}}


if __name__ == "__main__":
    main()
