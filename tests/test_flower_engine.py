"""One run on Flower's real simulation engine (Ray): the same ServerApp/ClientApp objects."""

import json

import numpy as np

from fedsyn.data.demo import demo_schema_path
from fedsyn.data.tables import read_table
from fedsyn.data.validation import validate_frame
from fedsyn.server.app import ReleasePlan
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.run import prepare_sites, run_sites
from fedsyn.simulations.split import split_table

from .helpers import TINY


def test_flower_simulation_engine_writes_a_valid_release(demo_frame, demo_schema, tmp_path):
    tables = split_table(demo_frame.sample(600, random_state=0), 3, np.random.default_rng(0))
    plan = prepare_sites(tables, demo_schema_path(), tmp_path / "sites", epsilon=1.0, delta=1e-5)
    settings = FederationSettings(rounds=2, local_steps=3, sample_rate=0.2, epsilon=1.0, gan_config=TINY,
                                  seed=0, min_sites=3)  # wait for all three: Ray registers nodes one by one
    run_sites(plan, demo_schema, settings, ReleasePlan(tmp_path / "release", rows=200), engine="flower")
    synthetic = read_table(tmp_path / "release" / "synthetic.csv", demo_schema)
    assert validate_frame(synthetic, demo_schema).ok
    report = json.loads((tmp_path / "release" / "privacy_report.json").read_text())
    assert len(report["sites"]) == 3 and all(s["within_budget"] for s in report["sites"])
