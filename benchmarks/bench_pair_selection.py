"""Round 0's pair choice drawn again and again, offline: which pair tables a federation at a
table's own site split measures, and what they are worth.

    python benchmarks/bench_pair_selection.py DATA.csv SCHEMA.json SITE_COLUMN [--epsilon 1] [--draws 10]

Each draw runs every site's first round-0 release on its exact rows with the production
mechanism (``noisy_marginals`` at the noise a federation at ``--epsilon`` per site gets with the
default settings, votes included), then the coordinator's choice (``affordable_pairs`` and
``shared_pairs`` of the votes, no pair of SITE_COLUMN). It prints, for
the pooled rows, the pairs that carry most (each pair's misfit against the exact outcome
tables, :func:`fedsyn.privacy.pairs.misfit_score`, less the L1 error the summed table's noise
would add at the count chosen), then per draw how many tables were chosen and their worth (the
sum of that over the chosen pairs: misfit the tables teach, less the noise they bring; every
table chosen makes each one noisier), and how often each of the strongest pairs was chosen.

A change to the votes or the choice is measured here over many draws before a bench run spends
one seed per draw (session 35: docs/benchmarks.md). The worth is a proxy: three choices it
ranked above the defaults did no better on the bench's questions. Reads private rows: local
use only, as the bench's own scripts.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import numpy as np

from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.privacy import pairs
from fedsyn.privacy.budget import marginals_noise
from fedsyn.privacy.marginals import exact_counts, measured_columns, noisy_marginals, summed_tables
from fedsyn.server.settings import FederationSettings

SHOWN = 8  # the strongest pairs whose pick rates are printed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("schema")
    parser.add_argument("site_column")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()

    schema = Schema.load(args.schema)
    frame = read_table(args.data, schema)
    settings = FederationSettings(epsilon=args.epsilon)
    sigma = marginals_noise(args.epsilon, settings.marginals_share, settings.delta, settings.accountant)
    sites = [rows for _, rows in frame.groupby(frame[args.site_column].astype(str))]
    measured = measured_columns(schema)
    split = pairs.RoundZeroSplit(sigma, settings.pairs_share)
    exact = exact_counts(frame, schema)
    bounds = pairs.own_group_bounds(measured, exact)
    model = pairs.OutcomeModel(measured, exact, bounds)
    tables = {pair: pairs.exact_pair_table(frame, schema, pair, bounds) for pair in pairs.candidate_pairs(measured)
              if args.site_column not in pair}
    misfit = {pair: pairs.misfit_score(table, model.expected(pair), 0.0) for pair, table in tables.items()}

    def worth(chosen: list[pairs.Pair], count: int) -> dict[pairs.Pair, float]:
        """Each pair's misfit less the L1 error of its summed table measured among ``count``."""
        std = math.sqrt(len(sites)) * split.pair_tables * math.sqrt(max(count, 1))
        return {pair: misfit[pair] - math.sqrt(2.0 / math.pi) * std * tables[pair].size for pair in chosen}

    afforded = pairs.affordable_pairs(exact.total(), [split.pair_tables] * len(sites), len(measured))
    at_afforded = worth(list(misfit), afforded)
    strongest = sorted(misfit, key=at_afforded.__getitem__, reverse=True)[:SHOWN]
    print(f"{len(sites)} sites at epsilon {args.epsilon:g} (sigma {sigma:.2f}), {len(tables)} candidate pairs; "
          f"the strongest at {afforded} tables: "
          + ", ".join(f"{a}|{b} {at_afforded[(a, b)]:.0f}" for a, b in strongest))
    chosen_times: Counter[pairs.Pair] = Counter()
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        parts = [noisy_marginals(rows, schema, sigma, rng, settings.pairs_share, len(sites)) for rows in sites]
        count = pairs.affordable_pairs(summed_tables(schema, parts, 0.0).total(),
                                       [split.pair_tables] * len(sites), len(measured))
        chosen = pairs.shared_pairs([part.ranked_votes() for part in parts], count, args.site_column)
        chosen_times.update(chosen)
        print(f"  draw {draw}: {len(chosen)} tables, worth {sum(worth(chosen, len(chosen)).values()):.0f}")
    print("chosen in draws: " + ", ".join(f"{a}|{b} {chosen_times[(a, b)] / args.draws:.0%}" for a, b in strongest))


if __name__ == "__main__":
    main()
