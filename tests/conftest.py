"""Shared fixtures: the embedded demo table and small, valid site tables."""

from __future__ import annotations

import os

# ruff: noqa: E402 - the imports below come after the thread limits, which must precede the libraries
# One thread per native library (OpenMP in gradient boosting, BLAS): CI has 2 cores, and
# oversubscribed threads ran the evaluation tests about 15x slower under load.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import pandas as pd
import pytest
import torch

from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_schema() -> Schema:
    return Schema.load(demo_schema_path())


@pytest.fixture(scope="session")
def demo_frame(demo_schema: Schema) -> pd.DataFrame:
    return read_table(demo_data_path(), demo_schema)


@pytest.fixture()
def small_frame(demo_frame: pd.DataFrame) -> pd.DataFrame:
    return demo_frame.sample(n=600, random_state=0).reset_index(drop=True)


@pytest.fixture()
def plan(demo_frame: pd.DataFrame, tmp_path):
    """Three simulated hospitals with 300 demo rows each, epsilon 1 per site."""
    import numpy as np

    from fedsyn.simulations.run import prepare_sites
    from fedsyn.simulations.split import split_table

    tables = split_table(demo_frame.sample(900, random_state=0), 3, np.random.default_rng(0))
    return prepare_sites(tables, demo_schema_path(), tmp_path / "sites", epsilon=1.0, delta=1e-5)
