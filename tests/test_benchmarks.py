"""Every benchmark script in benchmarks/ still runs: each is run by its path, as
docs/benchmarks.md says (``python benchmarks/NAME.py ...``), on a budget cut to seconds.

They print figures and never assert, so nothing else would notice one rotting: the speed
benchmark once raised TypeError on its first line of work and no test saw it. Single-site fits
are cut to a few DP-SGD steps (``cut_fits_short``), federations to one round of one or two steps.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import cut_fits_short

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _run(monkeypatch: pytest.MonkeyPatch, script: str, *arguments: str) -> None:
    """``python benchmarks/SCRIPT arguments`` in this process (the imports are paid once)."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *arguments])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)  # the speed benchmark sets its own


def test_every_benchmark_script_is_smoke_tested() -> None:
    scripts = {path.name for path in BENCHMARKS.glob("*.py")}
    tested = {name.removeprefix("test_").replace("_runs", "") + ".py" for name in globals()
              if name.startswith("test_bench")}
    assert scripts == tested, "each benchmark script needs a test_NAME_runs here"


def test_bench_runs(monkeypatch, capsys):
    _run(monkeypatch, "bench.py", "--threads", "1", "--repeats", "2", "--sample-rows", "200", "--sites", "2",
         "--rounds", "1", "--local-steps", "2")
    out = capsys.readouterr().out
    assert "rows/s" in out and "bytes a site sends per round" in out and "peak memory of a site process" in out


def test_bench_utility_runs(monkeypatch, capsys):
    cut_fits_short(monkeypatch)
    _run(monkeypatch, "bench_utility.py", "--epsilons", "1", "--seeds", "1")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[0] == "TRTR" and [line.split()[0] for line in lines[2:]] == ["1", "no"]


def test_bench_federation_runs(monkeypatch, capsys):
    cut_fits_short(monkeypatch)
    _run(monkeypatch, "bench_federation.py", "--sites", "2", "--seeds", "1", "--rounds", "1", "--local-steps", "1")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["2"]]
    assert [row.split()[1] for row in rows] == ["iid", "age"]
    _run(monkeypatch, "bench_federation.py", "--sites", "2", "--seeds", "1", "--sweep", "64:1:1:1e-3")
    assert "batch   64" in capsys.readouterr().out


def test_bench_robust_runs(monkeypatch, capsys):
    _run(monkeypatch, "bench_robust.py", "--sites", "3", "--attacks", "scaled", "--rounds", "1", "--local-steps", "1")
    out = capsys.readouterr().out
    assert [line.split()[3].rstrip(":") for line in out.splitlines() if line.startswith("attack")] == \
        ["mean", "median", "trimmed-mean"]


def _bench_kit(folder: Path) -> Path:
    """A benchmark kit shaped like the real one (tables.json, load.py, judge.py, TABLE/train.csv,
    TABLE/schema.json) around 300 demo rows in two sites, with a judge that only checks what it
    is given: the kit's own judge needs sdmetrics and the real tables."""
    from fedsyn.data.demo import demo_data_path, demo_schema_path

    rows = pd.read_csv(demo_data_path()).head(300)
    rows["site"] = ["A", "B"] * 150
    schema = json.loads(Path(demo_schema_path()).read_text())
    schema["columns"].append({"name": "site", "kind": "categorical", "categories": ["A", "B"]})
    table = folder / "demo"
    table.mkdir(parents=True)
    rows.to_csv(table / "train.csv", index=False)
    (table / "schema.json").write_text(json.dumps(schema))
    categorical = [c["name"] for c in schema["columns"] if c["kind"] == "categorical"]
    numeric = [c["name"] for c in schema["columns"] if c["kind"] != "categorical"]
    (folder / "tables.json").write_text(json.dumps({"demo": {"site": "site", "categorical": categorical,
                                                              "continuous": numeric}}))
    (folder / "load.py").write_text(
        "import json, pathlib\nimport pandas as pd\n"
        "def load(table):\n"
        "    kit = pathlib.Path(__file__).parent\n"
        "    spec = json.loads((kit / 'tables.json').read_text())[table]\n"
        "    train = pd.read_csv(kit / table / 'train.csv', dtype={c: str for c in spec['categorical']})\n"
        "    return train, train, spec\n")
    (folder / "judge.py").write_text(
        "def judge_all(syn, train, test, spec):\n"
        "    assert list(syn.columns) == list(train.columns) and len(syn) == len(train), syn.shape\n"
        "    question = {'tstr_gb': 0.5, 'tstr_lr': 0.5, 'trtr_gb': 0.6, 'trtr_lr': 0.6}\n"
        "    return {'every_question': {'sex': question}, 'site_structure_tv': 0.1, 'detection_auc': 0.9,\n"
        "            'tstr_gb': 0.7, 'tstr_lr': 0.7, 'trtr_gb': 0.8, 'trtr_lr': 0.8, 'quality': 0.8,\n"
        "            'dcr_ratio': 1.2, 'excess_exact': 0}\n")
    return folder


def test_bench_tables_runs(monkeypatch, capsys, tmp_path):
    kit = _bench_kit(tmp_path / "kit")
    _run(monkeypatch, "bench_tables.py", str(kit), "--seeds", "1", "--work", str(tmp_path / "work"),
         "--json", str(tmp_path / "rows.jsonl"), "--simulate-args", "--rounds 1 --local-steps 1")
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert rows[0]["arm"] == "fedsyn federated (2 sites)" and rows[0]["tstr_gb"] == 0.7
    assert (tmp_path / "work" / "demo" / "seed-0" / "release" / "synthetic.csv").is_file()
    out = capsys.readouterr().out
    assert "question sex" in out and "demo       numeric pairs (6)  fedsyn federated s0: |drho| 0." in out
    assert rows[0]["numeric_pairs"]["pairs"] == 6


def test_bench_site_tables_runs(monkeypatch, capsys, tmp_path):
    _run(monkeypatch, "bench_site_tables.py", str(_bench_kit(tmp_path / "kit")), "--seeds", "1")
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("demo"))
    sent, shrunk, summed = map(float, line.split()[2:])
    assert 0 < shrunk and 0 < sent and 0 < summed
    _run(monkeypatch, "bench_site_tables.py", str(tmp_path / "kit"), "--seeds", "1", "--means", "age")
    rows = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("rows"))
    assert all(50 < float(mean) < 105 for mean in rows.split()[1:])  # the demo's ages, one mean a site


def test_bench_noise_draws_runs(monkeypatch, capsys, tmp_path):
    from fedsyn.data.demo import demo_data_path, demo_schema_path

    pd.read_csv(demo_data_path()).head(400).to_csv(tmp_path / "rows.csv", index=False)
    _run(monkeypatch, "bench_noise_draws.py", str(tmp_path / "rows.csv"), str(demo_schema_path()), "sex", "age",
         "--draws", "2")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("age at epsilon 1, 2 sites, 2 draws") and len(lines) == 3
    assert all("exact mean" in line and "of draws" in line for line in lines[1:])


def test_bench_pair_selection_runs(monkeypatch, capsys, tmp_path):
    from fedsyn.data.demo import demo_data_path, demo_schema_path

    pd.read_csv(demo_data_path()).head(600).to_csv(tmp_path / "rows.csv", index=False)
    _run(monkeypatch, "bench_pair_selection.py", str(tmp_path / "rows.csv"), str(demo_schema_path()), "sex",
         "--draws", "2")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 sites at epsilon 1") and "candidate pairs" in lines[0]
    assert [line.split(":")[0] for line in lines[1:3]] == ["  draw 0", "  draw 1"]
    assert lines[3].startswith("chosen in draws: ")


def test_bench_large_runs(monkeypatch, capsys, tmp_path):
    _run(monkeypatch, "bench_large.py", str(tmp_path / "large"), "--rows", "1500", "--rounds", "1",
         "--fedsyn", str(Path(sys.executable).with_name("fedsyn")))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("schema draft: 1500 rows, 40 columns:") and "GiB" in lines[0]
    assert any(line.strip().startswith("round 1/1") for line in lines)
    assert lines[-1].startswith("simulate, 1 rounds, with the local report:")
