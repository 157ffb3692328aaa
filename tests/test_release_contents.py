"""What a release must not hold, checked on the bytes of every file a short in-process run writes.

The coordinator's seed is never published: in a simulation it also seeds the sites' noise, so
whoever holds it can replay that noise. A release says only whether the run was seeded. Per-round
wall-clock seconds are not published either: they grow with the sites' row counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from tests.helpers import SETTINGS, run_in_process

SEED = 987654321  # digits that appear nowhere in a release by chance


def _keys(value: object) -> Iterator[str]:
    """Every key of every mapping in ``value``, at any depth."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


def test_a_seeded_release_holds_no_seed_and_no_round_seconds(plan, demo_schema, tmp_path):
    run_in_process(plan, demo_schema, tmp_path, SETTINGS.model_copy(update={"seed": SEED}))
    release = tmp_path / "release"
    files = sorted(p for p in release.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"synthetic.csv", "synthetic.parquet", "privacy_report.json",
                                       "quality_report.json", "generator.pt", "run_config.json", "schema.json",
                                       "README.md"}
    for path in files:
        assert str(SEED).encode() not in path.read_bytes(), path.name
    config = json.loads((release / "run_config.json").read_text())
    assert config["seeded"] is True
    assert not {"seed", "seconds"} & set(_keys(config))
    assert [r["round"] for r in config["rounds"]] == [1, 2, 3] and all(r["accepted"] == 3 for r in config["rounds"])
    privacy = json.loads((release / "privacy_report.json").read_text())
    assert privacy["seeded"] is True and not {"seed", "seconds"} & set(_keys(privacy))
    assert "This run was seeded" in (release / "README.md").read_text()


def test_an_unseeded_release_says_so(plan, demo_schema, tmp_path):
    run_in_process(plan, demo_schema, tmp_path, SETTINGS.model_copy(update={"seed": None}))
    release = tmp_path / "release"
    config = json.loads((release / "run_config.json").read_text())
    privacy = json.loads((release / "privacy_report.json").read_text())
    assert config["seeded"] is False and privacy["seeded"] is False
    # Each event's epsilon_after counts the events charged up to it: round 0's first of two
    # events showed both (tenth review)
    for site in privacy["sites"]:
        after = [event["epsilon_after"] for event in site["ledger"]]
        assert after == sorted(after) and len(set(after)) == len(after) and after[-1] > 0, after
    assert not {"seed", "seconds"} & set(_keys(config))
    assert "This run was not seeded" in (release / "README.md").read_text()


def test_the_quality_report_checks_relations_not_only_each_column(demo_frame, demo_schema):
    """Rows whose columns were shuffled apart keep every one-way distribution and lose every
    relation: a report of one-way distances read them as perfect. The outcome-class and
    pair-table distances (against the same DP tables) tell them from the real rows."""
    import numpy as np

    from fedsyn.privacy.marginals import Marginals, exact_counts
    from fedsyn.privacy.pairs import bounds_arrays, exact_pair_table, group_bounds, pair_key
    from fedsyn.server.record import RunRecord
    from fedsyn.server.release import quality_report

    rows = demo_frame.sample(3000, random_state=1).reset_index(drop=True)
    tables, pair = exact_counts(rows, demo_schema), ("kappa", "lambda")
    bounds = {name: group_bounds(demo_schema.column(name), tables) for name in pair}
    site = Marginals({**tables.tables, pair_key(pair): exact_pair_table(rows, demo_schema, pair, bounds),
                      **bounds_arrays([pair], bounds)})
    run = RunRecord("run", demo_schema, SETTINGS, marginals=tables, site_marginals={0: site})
    shuffled = rows.copy()
    for seed, name in enumerate(rows.columns):  # each column its own order
        shuffled[name] = rows[name].sample(frac=1.0, random_state=seed).to_numpy()

    kept, lost = quality_report(rows, run), quality_report(shuffled, run)
    assert kept["mean_total_variation"] == lost["mean_total_variation"] == 0.0
    assert kept["total_variation_per_pair_table"]["kappa|lambda"] < 0.01 < 0.2 < \
        lost["total_variation_per_pair_table"]["kappa|lambda"]
    assert kept["mean_total_variation_by_outcome_class"] < 0.01 < 0.05 < lost["mean_total_variation_by_outcome_class"]
    assert "is not" in kept["not_measured"]
    assert np.isfinite(list(lost["total_variation_by_outcome_class"].values())).all()
