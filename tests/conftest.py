"""Shared fixtures: the embedded demo table and small, valid site tables."""

from __future__ import annotations

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
