"""Utility benchmark of the single-site DP-GAN on the demo data (prints, never asserts).

    python benchmarks/bench_utility.py [--epsilons 0.5,1,3,10] [--seeds 3]

For each epsilon (and without DP): TSTR ROC-AUC of gradient boosting and logistic
regression trained on synthetic rows and tested on a real held-out split (mean and
standard deviation over seeds; GAN training varies from seed to seed), the ratio to TRTR,
and the mean fit time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.model_selection import train_test_split

from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.evaluation.metrics import tstr_auc
from fedsyn.model.gan import DPTabularGAN


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epsilons", default="0.5,1,3,10")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    schema = Schema.load(demo_schema_path())
    frame = read_table(demo_data_path(), schema)
    train, test = train_test_split(frame, test_size=0.3, random_state=0, stratify=frame[schema.outcome])
    real = tstr_auc(train, test, schema)
    models = ("gradient_boosting", "logistic_regression")
    print(f"{'epsilon':>8} | {'GB TSTR':>13} {'xTRTR':>6} | {'LR TSTR':>13} {'xTRTR':>6} | {'fit s':>6}")
    print(f"{'TRTR':>8} | {real[models[0]]:13.3f} {1:6.2f} | {real[models[1]]:13.3f} {1:6.2f} |")
    for epsilon in [*(float(e) for e in args.epsilons.split(",")), None]:
        scores, seconds = {m: [] for m in models}, []
        for seed in range(args.seeds):
            started = time.perf_counter()
            model = DPTabularGAN(schema, epsilon=epsilon, delta=1e-5, seed=seed).fit(train)
            seconds.append(time.perf_counter() - started)
            auc = tstr_auc(model.sample(len(train)), test, schema)
            for m in models:
                scores[m].append(auc[m])
        label = "no DP" if epsilon is None else f"{epsilon:g}"
        cells = [f"{np.mean(scores[m]):6.3f}±{np.std(scores[m]):.3f} {np.mean(scores[m]) / real[m]:6.2f}"
                 for m in models]
        print(f"{label:>8} | {cells[0]} | {cells[1]} | {np.mean(seconds):6.1f}", flush=True)


if __name__ == "__main__":
    main()
