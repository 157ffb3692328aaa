"""How far each site's noisy tables by outcome class are from its exact ones: as sent, drawn
toward the sum (what the coordinator keeps, ``federation_tables``), and the sum's alone.

    python benchmarks/bench_site_tables.py BENCH_KIT [--tables azpro,nmes] [--seeds 5] [--epsilon 1]

Why: each site slot's generated rows are matched, and the release raked, to that site's own
tables, so their noise becomes the release's. This measures that noise on the bench's real
site splits without training anything: each site's round-0 release is drawn as a site draws
it (``noisy_marginals`` at the noise the default settings give ε per site), received and
summed as the coordinator does (its noise floor included), and every site's P(bin | class) is
compared with the exact one of its rows: total variation per column, weighted by the site's
class shares, averaged over columns and sites. Prints numbers only, never asserts.

    python benchmarks/bench_site_tables.py BENCH_KIT --tables nwtco --means age,edrel

prints instead each site's mean of those numeric columns: from its rows, its tables as sent,
drawn toward the sum, the sum's, and four equal-width bins at the same noise per cell (what a
coarser measurement would keep of a site's difference on a wide table).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from fedsyn.data.grid import inverse_transform, numeric_edges
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.privacy.budget import marginals_noise
from fedsyn.privacy.marginals import (
    Marginals,
    exact_counts,
    federation_tables,
    measured_columns,
    noisy_marginals,
    received_marginals,
)
from fedsyn.server.settings import FederationSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_tables, also when run by path from elsewhere

from bench_tables import split_by_site  # noqa: E402


def site_frames(bench: Path, table: str, schema: Schema, folder: Path) -> list[pd.DataFrame]:
    """The table's training rows, one frame per site (as ``bench_tables.py`` splits them)."""
    return [read_table(path, schema) for path in split_by_site(bench, table, folder)]


def distance(tables: Marginals, exact: Marginals, schema: Schema) -> float:
    """Mean over measured columns of the class-weighted total variation of P(bin | class)."""
    weights = exact.class_totals() / exact.class_totals().sum()
    distances = []
    for column in measured_columns(schema):
        truth = exact.tables[column.name] / np.clip(exact.tables[column.name].sum(axis=0, keepdims=True), 1.0, None)
        distances.append(float((0.5 * np.abs(tables.conditional(column.name) - truth).sum(axis=0) * weights).sum()))
    return float(np.mean(distances))


def round_zero(frames: list[pd.DataFrame], schema: Schema, epsilon: float, rng: np.random.Generator
               ) -> tuple[list[Marginals], Marginals, list[Marginals]]:
    """One draw of every site's round-0 release at the default settings, as the coordinator
    receives it: each site's tables, their sum, and each site's drawn toward the sum."""
    settings = FederationSettings()
    noise = marginals_noise(epsilon, settings.marginals_share, settings.delta)
    parts = [received_marginals(noisy_marginals(frame, schema, noise, rng, settings.pairs_share).arrays, schema,
                                noise, settings.pairs_share) for frame in frames]
    summed, shrunk = federation_tables(schema, parts, settings.marginals_noise_floor)
    return parts, summed, shrunk


def measure(frames: list[pd.DataFrame], schema: Schema, epsilon: float, rng: np.random.Generator) -> dict[str, float]:
    """One draw of every site's round-0 release: each estimate's mean distance over the sites."""
    parts, summed, shrunk = round_zero(frames, schema, epsilon, rng)
    exact = [exact_counts(frame, schema) for frame in frames]
    return {name: float(np.mean([distance(own, truth, schema) for own, truth in zip(estimates, exact)]))
            for name, estimates in (("as sent", parts), ("drawn toward the sum", shrunk),
                                    ("the sum's", [summed] * len(parts)))}


COARSE_BINS = 4


def site_means(frames: list[pd.DataFrame], schema: Schema, epsilon: float, column: str,
               rng: np.random.Generator) -> dict[str, list[float]]:
    """One draw of round 0: each site's mean of numeric ``column`` from its rows, from its tables
    as sent, drawn toward the sum, and the sum's; and, for comparison, from a histogram of
    :data:`COARSE_BINS` equal-width bins carrying the same noise per cell (both classes summed)."""
    parts, summed, shrunk = round_zero(frames, schema, epsilon, rng)
    std = parts[0].cell_std or 0.0  # every site's, at the same query
    spec = schema.column(column)
    edges = numeric_edges(spec)
    centres = inverse_transform(spec, (edges[:-1] + edges[1:]) / 2)

    def mean(tables: Marginals) -> float:  # the numeric bins only (a nullable column's last bin is 'missing')
        weights = tables.class_totals() / tables.class_totals().sum()
        shares = (tables.conditional(column) * weights).sum(axis=1)[:len(centres)]
        return float((shares * centres).sum() / shares.sum())

    coarse = np.linspace(*spec.bounds, COARSE_BINS + 1)
    out: dict[str, list[float]] = {"rows": [], "as sent": [], "drawn toward the sum": [], "the sum's": [],
                                   f"{COARSE_BINS} bins at the same noise": []}
    for frame, own, drawn in zip(frames, parts, shrunk):
        counts = np.histogram(frame[column].dropna(), coarse)[0] + rng.normal(0.0, std * np.sqrt(2), COARSE_BINS)
        counts = np.clip(counts, 0.0, None)
        for name, value in (("rows", float(frame[column].mean())), ("as sent", mean(own)),
                            ("drawn toward the sum", mean(drawn)), ("the sum's", mean(summed)),
                            (f"{COARSE_BINS} bins at the same noise",
                             float((counts * (coarse[:-1] + coarse[1:]) / 2).sum() / max(counts.sum(), 1e-9)))):
            out[name].append(value)
    return out


def print_site_means(bench: Path, table: str, columns: list[str], epsilon: float, draws: int) -> None:
    """Each site's mean of each column, averaged over ``draws`` draws of round 0."""
    schema = Schema.load(bench / table / "schema.json")
    with tempfile.TemporaryDirectory() as folder:
        frames = site_frames(bench, table, schema, Path(folder))
    print(f"{table}: each site's mean ({', '.join(str(len(frame)) for frame in frames)} rows), {draws} draws")
    for column in columns:
        found = [site_means(frames, schema, epsilon, column, np.random.default_rng(seed)) for seed in range(draws)]
        print(f"  {column}")
        for name in found[0]:
            values = np.mean([draw[name] for draw in found], axis=0)
            print(f"    {name:26s}" + " ".join(f"{value:9.2f}" for value in values))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path, help="the bench folder (tables.json, TABLE/train.csv, TABLE/schema.json)")
    parser.add_argument("--tables", default=None, help="comma-separated names (default: all in tables.json)")
    parser.add_argument("--seeds", type=int, default=5, help="draws of the round-0 releases per table")
    parser.add_argument("--epsilon", type=float, default=1.0, help="each site's epsilon for the run")
    parser.add_argument("--means", default=None, help="comma-separated numeric columns: print each site's mean of "
                        "each instead (rows, tables as sent, drawn toward the sum, the sum's, and "
                        f"{COARSE_BINS} equal-width bins at the same noise per cell)")
    args = parser.parse_args(argv)
    names = args.tables.split(",") if args.tables else list(json.loads((args.bench / "tables.json").read_text()))
    if args.means:
        for table in names:
            print_site_means(args.bench, table, args.means.split(","), args.epsilon, args.seeds)
        return
    print(f"site tables' distance from their sites' exact P(bin | class), epsilon={args.epsilon:g} per site, "
          f"{args.seeds} draws")
    print(f"{'table':10s} {'sites':>5s} {'as sent':>10s} {'drawn toward the sum':>22s} {'the sum':>10s}")
    with tempfile.TemporaryDirectory() as folder:
        for table in names:
            schema = Schema.load(args.bench / table / "schema.json")
            frames = site_frames(args.bench, table, schema, Path(folder) / table)
            draws = [measure(frames, schema, args.epsilon, np.random.default_rng(seed)) for seed in range(args.seeds)]
            mean = {name: np.mean([draw[name] for draw in draws]) for name in draws[0]}
            print(f"{table:10s} {len(frames):5d} " + " ".join(f"{mean[name]:{width}.3f}" for name, width in
                                                             (("as sent", 10), ("drawn toward the sum", 22),
                                                              ("the sum's", 10))))


if __name__ == "__main__":
    main()
