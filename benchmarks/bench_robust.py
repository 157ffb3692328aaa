"""Utility under a poisoning site, with and without a robust aggregation rule (prints only).

    python benchmarks/bench_robust.py [--sites 5] [--scale 50]

Five IID hospitals from the demo training split, epsilon 1 each; site 0 misbehaves by
sending its update scaled by ``--scale`` or replaced by random values. Prints TSTR ROC-AUC
(gradient boosting / logistic regression) of the release for each aggregation rule.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from flwr.app import Message
from sklearn.model_selection import train_test_split

from fedsyn.client.app import make_client_app
from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.evaluation.metrics import tstr_auc
from fedsyn.federation import protocol
from fedsyn.server.app import ReleasePlan, run_federation
from fedsyn.server.record import FederationError
from fedsyn.server.settings import FEDERATED_GAN, FEDERATED_LOCAL_STEPS, FEDERATED_ROUNDS, FederationSettings
from fedsyn.simulations.inprocess import FIRST_NODE_ID, InProcessGrid
from fedsyn.simulations.run import default_sample_rate, prepare_sites
from fedsyn.simulations.split import split_table


def attack(kind: str, scale: float, rng: np.random.Generator):
    def tamper(reply: Message) -> Message:
        if reply.metadata.src_node_id != FIRST_NODE_ID or reply.has_error() or protocol.ARRAYS not in reply.content:
            return reply
        arrays = {k: a.numpy() for k, a in reply.content.array_records[protocol.ARRAYS].items()}
        bad = {k: (v * scale if kind == "scaled" else rng.normal(0, scale, v.shape)).astype(v.dtype)
               for k, v in arrays.items()}
        reply.content[protocol.ARRAYS] = protocol.to_array_record(bad)
        return reply
    return tamper


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--scale", type=float, default=50.0)
    parser.add_argument("--attacks", default="none,scaled,random")
    parser.add_argument("--rounds", type=int, default=FEDERATED_ROUNDS)
    parser.add_argument("--local-steps", type=int, default=FEDERATED_LOCAL_STEPS)
    args = parser.parse_args(argv)
    schema = Schema.load(demo_schema_path())
    frame = read_table(demo_data_path(), schema)
    train, test = train_test_split(frame, test_size=0.3, random_state=0, stratify=frame[schema.outcome])
    tables = split_table(train, args.sites, np.random.default_rng(0))
    print(f"{args.sites} IID sites, epsilon 1 each; site 0 attacks (scale {args.scale:g}). TSTR AUC GB / LR; "
          f"TRTR {' / '.join(f'{v:.3f}' for v in tstr_auc(train, test, schema).values())}")
    for attack_kind in args.attacks.split(","):
        for aggregation in ("mean", "median", "trimmed-mean"):
            with tempfile.TemporaryDirectory() as folder:
                plan = prepare_sites(tables, demo_schema_path(), Path(folder) / "sites", 1.0, 1e-5)
                settings = FederationSettings(rounds=args.rounds, local_steps=args.local_steps, epsilon=1.0,
                                              delta=1e-5, seed=0, gan_config=FEDERATED_GAN, aggregation=aggregation,
                                              sample_rate=default_sample_rate(tables, FEDERATED_GAN.batch_size)[0])
                tamper = None if attack_kind == "none" else attack(attack_kind, args.scale, np.random.default_rng(1))
                grid = InProcessGrid(make_client_app(plan.site_policy), args.sites, tamper)
                try:
                    run_federation(grid, schema, settings, ReleasePlan(Path(folder) / "release", len(train)))
                except FederationError as exc:
                    print(f"attack {attack_kind:>6}  aggregation {aggregation:>12}:  run failed ({exc})"[:160])
                    continue
                auc = tstr_auc(read_table(Path(folder) / "release" / "synthetic.csv", schema), test, schema)
            print(f"attack {attack_kind:>6}  aggregation {aggregation:>12}:  "
                  f"{auc['gradient_boosting']:.3f} / {auc['logistic_regression']:.3f}", flush=True)


if __name__ == "__main__":
    main()
