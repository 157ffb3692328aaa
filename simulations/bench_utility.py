"""Utility benchmark of the single-site DP-GAN on the demo data (prints, never asserts).

    python -m fedsyn.simulations.bench_utility [--epsilons 0.5,1,3,10] [--seed 0]

For each epsilon (and without DP): TSTR ROC-AUC of gradient boosting and logistic
regression trained on synthetic rows and tested on a real held-out split, TRTR for
reference, the ratio TSTR/TRTR and the fit time.
"""

from __future__ import annotations

import argparse
import time

from sklearn.model_selection import train_test_split

from fedsyn.common.data import demo_data_path, demo_schema_path
from fedsyn.common.gan import DPTabularGAN
from fedsyn.common.schema import Schema
from fedsyn.common.tables import read_table
from fedsyn.simulations.utility import tstr_auc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epsilons", default="0.5,1,3,10")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    schema = Schema.load(demo_schema_path())
    frame = read_table(demo_data_path(), schema)
    train, test = train_test_split(frame, test_size=0.3, random_state=args.seed, stratify=frame[schema.outcome])
    real = tstr_auc(train, test, schema, args.seed)
    print(f"{'epsilon':>8} {'GB TSTR':>8} {'GB ratio':>8} {'LR TSTR':>8} {'LR ratio':>8} {'fit s':>7}")
    print(f"{'TRTR':>8} {real['gradient_boosting']:8.3f} {1:8.2f} {real['logistic_regression']:8.3f} {1:8.2f}")
    for epsilon in [*(float(e) for e in args.epsilons.split(",")), None]:
        started = time.perf_counter()
        model = DPTabularGAN(schema, epsilon=epsilon, delta=1e-5, seed=args.seed).fit(train)
        seconds = time.perf_counter() - started
        auc = tstr_auc(model.sample(len(train)), test, schema, args.seed)
        label = "no DP" if epsilon is None else f"{epsilon:g}"
        print(f"{label:>8} {auc['gradient_boosting']:8.3f} {auc['gradient_boosting'] / real['gradient_boosting']:8.2f}"
              f" {auc['logistic_regression']:8.3f} {auc['logistic_regression'] / real['logistic_regression']:8.2f}"
              f" {seconds:7.1f}", flush=True)


if __name__ == "__main__":
    main()
