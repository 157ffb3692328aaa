"""The benchmark scripts still run: each parses its options, and the speed benchmark's
measurements run end to end on a tiny budget (`python -m fedsyn.simulations.bench` once
raised TypeError and no test noticed)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.marginals import exact_counts
from fedsyn.privacy.randomness import torch_generator

BENCHMARKS = ["bench", "bench_federation", "bench_robust", "bench_tables", "bench_utility"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_parses_its_options(name):
    result = subprocess.run([sys.executable, "-m", f"fedsyn.simulations.{name}", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_speed_benchmark_measures_end_to_end(capsys):
    bench = importlib.import_module("fedsyn.simulations.bench")
    schema = Schema.load(demo_schema_path())
    rows = read_table(demo_data_path(), schema).head(300)
    encoder = TableEncoder(schema, exact_counts(rows, schema))
    trainer = GANTrainer(encoder, GANConfig(batch_size=32, generator_hidden=(16,), discriminator_hidden=(16,)),
                         rng=torch_generator(0, "bench-test"))
    data = torch.as_tensor(encoder.encode(rows))
    bench.training_speed(trainer, data, 2)
    bench.sampling_speed(trainer, 100)
    bench.bytes_per_round(trainer)
    assert "rows/s" in capsys.readouterr().out
