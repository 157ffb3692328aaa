"""Speed and size benchmark of the demo model on the demo data (prints, never asserts).

    python benchmarks/bench.py [--device cpu|cuda] [--threads 2]

Prints: discriminator steps/s and rows/s with DP and without (same network, batch 256)
and their ratio; a whole D+G step likewise; decoded sampling rows/s; bytes one site sends
per round; seconds per in-process round with 3 and 10 sites (``--sites``); peak memory of a
site process training one round. ``--repeats``, ``--sample-rows``, ``--rounds`` and
``--local-steps`` shrink the work (tests/test_benchmarks.py runs it in seconds).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.federation import protocol
from fedsyn.model.config import GANConfig
from fedsyn.model.encoder import TableEncoder
from fedsyn.model.training import GANTrainer
from fedsyn.privacy.marginals import exact_counts
from fedsyn.privacy.randomness import torch_generator
from fedsyn.server.app import ReleasePlan
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.run import prepare_sites, run_sites
from fedsyn.simulations.split import split_table

BATCH = 256


def _rate(step, repeats: int) -> float:
    """Calls per second of ``step`` after a warm-up (device synchronised)."""
    for _ in range(5):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return repeats / (time.perf_counter() - started)


def training_speed(trainer: GANTrainer, data: torch.Tensor, repeats: int) -> None:
    rate = BATCH / data.shape[0]
    dp_d = _rate(lambda: trainer.discriminator_step(data, rate, 1.0), repeats)
    plain_d = _rate(lambda: trainer.discriminator_step(data, rate, None), repeats)
    dp_full = _rate(lambda: (trainer.discriminator_step(data, rate, 1.0), trainer.generator_step()), repeats)
    plain_full = _rate(lambda: (trainer.discriminator_step(data, rate, None), trainer.generator_step()), repeats)
    print(f"discriminator step, batch {BATCH}:  DP {dp_d:8.1f} steps/s ({dp_d * BATCH:9.0f} rows/s)   "
          f"no DP {plain_d:8.1f} steps/s   DP time / no-DP time = {plain_d / dp_d:.2f}x")
    print(f"D+G step, batch {BATCH}:            DP {dp_full:8.1f} steps/s ({dp_full * BATCH:9.0f} rows/s)   "
          f"no DP {plain_full:8.1f} steps/s   DP time / no-DP time = {plain_full / dp_full:.2f}x")


def sampling_speed(trainer: GANTrainer, rows: int) -> None:
    trainer.sample_frame(1000)
    started = time.perf_counter()
    frame, _ = trainer.sample_frame(rows)
    seconds = time.perf_counter() - started
    print(f"sampling, decoded to a DataFrame:   {len(frame) / seconds:12.0f} rows/s ({rows} rows in {seconds:.2f} s)")


def bytes_per_round(trainer: GANTrainer) -> None:
    record = protocol.to_array_record(trainer.state_arrays())
    sent = sum(len(array.data) for array in record.values())
    print(f"bytes a site sends per round:       {sent:12d} (G and D, float32, before transport framing)")


def round_time(train, schema: Schema, sites: int, rounds: int, local_steps: int) -> None:
    tables = split_table(train, sites, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as folder:
        plan = prepare_sites(tables, demo_schema_path(), Path(folder) / "sites", 1.0, 1e-5)
        settings = FederationSettings(rounds=rounds, local_steps=local_steps, sample_rate=0.2, epsilon=1.0,
                                      seed=0, min_sites=1)
        started = time.perf_counter()
        coordinator = run_sites(plan, schema, settings, ReleasePlan(Path(folder) / "release", 1000))
        total = time.perf_counter() - started
    per_round = np.mean([r.seconds for r in coordinator.run.rounds])
    print(f"in-process simulation, {sites:2d} sites:    {per_round:6.2f} s per round ({local_steps} local steps), "
          f"{total:6.1f} s for {rounds} rounds incl. marginals round and release")


SITE_PROBE = """
import sys
from pathlib import Path
from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site
from fedsyn.federation import protocol
from fedsyn.model.encoder import TableEncoder
from fedsyn.privacy.marginals import Marginals
from fedsyn.model.config import GANConfig
from fedsyn.model.training import GANTrainer
site = Site(SitePolicy.load(sys.argv[1]))
marginals = Marginals.uniform(site.schema)
arrays = GANTrainer(TableEncoder(site.schema, marginals), GANConfig()).state_arrays()
instructions = protocol.TrainInstructions(1, 10, int(sys.argv[2]), 0.2, 1.0, None, GANConfig(),
                                          protocol.schema_fingerprint(site.schema))
site.train(instructions, arrays, marginals)
# VmHWM is this process's own high-water mark; ru_maxrss would carry over the parent's.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def site_memory(train, local_steps: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        plan = prepare_sites([train], demo_schema_path(), Path(folder), 1.0, 1e-5)
        output = subprocess.run([sys.executable, "-c", SITE_PROBE, str(plan.policies[0]), str(local_steps)],
                                check=True, capture_output=True, text=True).stdout
    print(f"peak memory of a site process:      {int(output.split()[-1]) / 1024:8.0f} MiB "
          f"(one round, {local_steps} steps)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--sample-rows", type=int, default=1_000_000)
    parser.add_argument("--sites", default="3,10", help="site counts of the in-process round timing")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each timed in-process federation")
    parser.add_argument("--local-steps", type=int, default=30, help="DP-SGD steps per round (timing and memory)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    schema = Schema.load(demo_schema_path())
    frame = read_table(demo_data_path(), schema)
    train, _ = train_test_split(frame, test_size=0.3, random_state=0)
    encoder = TableEncoder(schema, exact_counts(train, schema))
    trainer = GANTrainer(encoder, GANConfig(batch_size=BATCH), device=args.device,
                         rng=torch_generator(0, "bench", device=args.device))
    data = torch.as_tensor(encoder.encode(train), device=trainer.device)
    print(f"device {args.device}, {args.threads} threads, torch {torch.__version__}, demo train split "
          f"{len(train)} rows, D {GANConfig().discriminator_hidden}, G {GANConfig().generator_hidden}")
    training_speed(trainer, data, args.repeats)
    sampling_speed(trainer, args.sample_rows)
    bytes_per_round(trainer)
    if args.device == "cpu":
        for sites in (int(count) for count in args.sites.split(",")):
            round_time(train, schema, sites, args.rounds, args.local_steps)
        site_memory(train, args.local_steps)
    print(f"peak memory of this process:        {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB")


if __name__ == "__main__":
    main()
