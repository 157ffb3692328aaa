"""Round 0's noise drawn again and again, offline: where each outcome class of a numeric column
lands after the coordinator's post-processing, at a table's own site split.

    python benchmarks/bench_noise_draws.py DATA.csv SCHEMA.json SITE_COLUMN COLUMN [--epsilon 1] [--draws 40]

Each draw runs every site's round-0 release on its exact rows with the production mechanism
(``noisy_marginals`` at the noise a federation at ``--epsilon`` per site gets with the default
settings, votes included) and the coordinator's ``federation_tables``; it prints, per outcome
class, how far the class's mean of COLUMN lands from the exact one (mean and worst absolute
error) and the share of draws off by more than ``--far`` of the column's range: a class placed
where it is not (session 32: nwtco's relapsed patients released with a median time to relapse
of 5,118 days against 284, docs/benchmarks.md). A change to the post-processing is measured
here on many draws before a bench run spends one seed per draw. Reads private rows: local use
only, as the bench's own scripts.
"""

from __future__ import annotations

import argparse

import numpy as np

from fedsyn.data.grid import numeric_edges
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.privacy.budget import marginals_noise
from fedsyn.privacy.marginals import exact_counts, federation_tables, noisy_marginals
from fedsyn.server.settings import FederationSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("schema")
    parser.add_argument("site_column")
    parser.add_argument("column")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--far", type=float, default=0.1, help="an error beyond this share of the range is far")
    args = parser.parse_args()

    schema = Schema.load(args.schema)
    frame = read_table(args.data, schema)
    column = schema.column(args.column)
    if column.is_categorical:
        parser.error(f"{args.column} is categorical: give a numeric column")
    settings = FederationSettings(epsilon=args.epsilon)
    sigma = marginals_noise(args.epsilon, settings.marginals_share, settings.delta, settings.accountant)
    sites = [rows for _, rows in frame.groupby(frame[args.site_column].astype(str))]
    edges = numeric_edges(column)
    middles = np.clip((edges[:-1] + edges[1:]) / 2, column.lower, column.upper)
    exact = exact_counts(frame, schema).conditional(column.name)[: len(middles)]
    truth = middles @ (exact / exact.sum(axis=0, keepdims=True))
    errors = []
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        parts = [noisy_marginals(rows, schema, sigma, rng, settings.pairs_share, len(sites)) for rows in sites]
        summed, _ = federation_tables(schema, parts, settings.marginals_noise_floor)
        drawn = summed.conditional(column.name, post_processed=True)[: len(middles)]
        errors.append(middles @ (drawn / np.maximum(drawn.sum(axis=0, keepdims=True), 1e-12)) - truth)
    errors = np.abs(np.asarray(errors))
    span = column.upper - column.lower
    print(f"{args.column} at epsilon {args.epsilon:g}, {len(sites)} sites, {args.draws} draws (sigma {sigma:.2f})")
    classes = schema.column(schema.outcome).levels if schema.outcome else []
    for k, mean in enumerate(truth):
        far = float((errors[:, k] > args.far * span).mean())
        name = classes[k] if k < len(classes) else "missing"
        print(f"  class {name}: exact mean {mean:.1f}; |error| mean {errors[:, k].mean():.1f}, "
              f"median {np.median(errors[:, k]):.1f}, worst {errors[:, k].max():.1f}; "
              f"beyond {args.far:.0%} of the range in {far:.0%} of draws")


if __name__ == "__main__":
    main()
