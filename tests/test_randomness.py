"""Nothing published determines DP noise, and no two mechanisms share a stream.

Regressions for the second audit's findings 2 (a published default seed let anyone de-noise a
simulation's release), 3 (sweep arms scaled one set of standard-normal draws, so two arms
cancelled each other's noise) and 4 (a ledger reset or a second seeded fit replayed the first
one's noise). Each test compares the standardised noise of two releases: equal draws are the
leak.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from fedsyn.cli.research import simulate as simulate_command
from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import Site, initialise_ledger
from fedsyn.data.demo import demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.federation import protocol
from fedsyn.model.gan import DPTabularGAN
from fedsyn.privacy.marginals import exact_counts, measured_columns
from fedsyn.simulations.run import prepare_sites

from .helpers import TINY


def _standard_noise(site: Site, frame, sigma: float) -> np.ndarray:
    """The site's round-0 noise over the tables, divided by its scale."""
    released, _ = site.release_marginals(sigma, 50.0, protocol.schema_fingerprint(site.schema))
    exact = exact_counts(frame, site.schema)
    return np.concatenate([(released.tables[c.name] - exact.tables[c.name]).ravel()
                           for c in measured_columns(site.schema)]) / sigma


def _site(folder, frame, seed: int | None, run_label: str = "main", stream_nonce: str | None = None,
          epsilon: float = 50.0, stream_inputs: tuple[str, ...] = ()) -> Site:
    plan = prepare_sites([frame], demo_schema_path(), folder, epsilon=epsilon, delta=1e-5, seed=seed,
                         run_label=run_label, stream_nonce=stream_nonce, stream_inputs=stream_inputs)
    return Site(SitePolicy.load(plan.policies[0]))


def test_simulations_are_unseeded_unless_asked():
    """`fedsyn simulate` draws from OS entropy by default (it defaulted to seed 0, published)."""
    assert inspect.signature(simulate_command).parameters["seed"].default is None


def test_unseeded_simulated_sites_draw_independent_noise(tmp_path, small_frame):
    noise = [_standard_noise(_site(tmp_path / name, small_frame, seed=None), small_frame, 20.0) for name in "ab"]
    assert abs(np.corrcoef(*noise)[0, 1]) < 0.3


def test_sweep_arms_of_one_seeded_simulation_draw_independent_noise(tmp_path, small_frame):
    """Two budgets of one simulation (one seed, one stream nonce): the noise must not be one draw
    scaled by two sigmas."""
    nonce = "5" * 32
    main = _standard_noise(_site(tmp_path / "main", small_frame, seed=3, run_label="main", stream_nonce=nonce),
                           small_frame, 20.0)
    arm = _standard_noise(_site(tmp_path / "arm", small_frame, seed=3, run_label="sweep-0", stream_nonce=nonce),
                          small_frame, 40.0)
    assert abs(np.corrcoef(main, arm)[0, 1]) < 0.3


def test_a_seeded_simulation_repeats_for_whoever_holds_the_seed_and_its_stream_nonce(tmp_path, small_frame):
    nonce = "0123456789abcdef" * 2
    first, again = (_standard_noise(_site(tmp_path / name, small_frame, seed=3, stream_nonce=nonce), small_frame, 20.0)
                    for name in "ab")
    np.testing.assert_allclose(first, again)


def test_a_repeated_stream_on_other_rows_or_settings_draws_unrelated_noise(tmp_path, small_frame):
    """Regression for the sixth review: `--seed S --stream-nonce N` repeated the run's draws
    whatever the rows or budget, so a rerun on an extract one patient apart gave, subtracted
    from the first release, that patient's every cell, noise-free. The nonce repeats a run on
    the same rows, schema and settings only."""
    nonce = "0123456789abcdef" * 2
    first = _standard_noise(_site(tmp_path / "first", small_frame, seed=3, stream_nonce=nonce), small_frame, 20.0)
    fewer = small_frame.drop(small_frame.index[17])
    reruns = {
        "one patient fewer": (_site(tmp_path / "fewer", fewer, seed=3, stream_nonce=nonce), fewer),
        "another budget": (_site(tmp_path / "budget", small_frame, seed=3, stream_nonce=nonce, epsilon=60.0),
                           small_frame),
        "other settings": (_site(tmp_path / "settings", small_frame, seed=3, stream_nonce=nonce,
                                 stream_inputs=("rounds: 30",)), small_frame),
    }
    for rerun, (site, frame) in reruns.items():
        assert abs(np.corrcoef(first, _standard_noise(site, frame, 20.0))[0, 1]) < 0.3, rerun


def test_a_simulations_settings_reach_its_sites_streams(tmp_path, monkeypatch):
    """A review: every other test of the binding called prepare_sites itself, and the line that
    gives it the federation's settings could be deleted unseen; two budgets' shares of round 0
    would then draw one set of normals at two scales."""
    from fedsyn.simulations import workflow
    from fedsyn.simulations.request import SimulationRequest, prepare

    simulation = prepare(SimulationRequest(seed=3, stream_nonce="ab" * 16, out=tmp_path / "run")).simulation
    bound = []

    def prepared(*args, **kwargs):
        bound.append(kwargs.get("stream_inputs", ()))
        raise RuntimeError("the sites' streams are all this test reads")

    monkeypatch.setattr(workflow, "prepare_sites", prepared)
    for share in (0.9, 0.8):
        settings = simulation.settings.model_copy(update={"marginals_share": share})
        with pytest.raises(RuntimeError, match="streams"):
            workflow._federate(simulation, settings, tmp_path / f"share-{share}", tmp_path / "keys", "main")
    assert bound[0] and bound[0] != bound[1]


def test_the_same_rows_read_from_csv_or_parquet_repeat_one_stream(tmp_path, small_frame, demo_schema):
    """A review: the rows' digest read the raw frame, so the same extract from a CSV and from a
    Parquet file, or beside a column the schema lacks, drew unrelated noise where a repeat was
    promised. It reads the rows as the schema does."""
    from fedsyn.data.tables import read_table, rows_digest, write_table

    write_table(small_frame.assign(note="x"), tmp_path / "rows.csv")
    write_table(small_frame, tmp_path / "rows.parquet")
    digests = {rows_digest(read_table(tmp_path / name, demo_schema), demo_schema)
               for name in ("rows.csv", "rows.parquet")}
    assert len(digests) == 1
    assert rows_digest(small_frame.iloc[1:], demo_schema) not in digests


def test_two_simulations_with_one_seed_draw_independent_noise(tmp_path, small_frame):
    """Regression for the third review's F1: two `fedsyn simulate --seed S` runs on the same rows
    drew the same standard normals, so their two releases (at any two budgets) gave back the
    exact tables, and two extracts differing by one patient gave back that patient."""
    first, again = (_standard_noise(_site(tmp_path / name, small_frame, seed=3), small_frame, 20.0) for name in "ab")
    assert abs(np.corrcoef(first, again)[0, 1]) < 0.3


def test_a_reset_ledger_never_replays_the_old_ledgers_noise(tmp_path, small_frame):
    """A seeded deployment site (its ledgers made by `ledger init`) whose operator starts a new
    ledger for a refreshed extract: the seed and ledger positions repeat, the noise must not."""
    plan = prepare_sites([small_frame], demo_schema_path(), tmp_path, epsilon=50.0, delta=1e-5)
    policy = SitePolicy.load(plan.policies[0]).model_copy(update={"seed": 3})
    before = _standard_noise(Site(policy), small_frame, 20.0)
    initialise_ledger(policy, reset_reason="refreshed extract")
    after = _standard_noise(Site(policy), small_frame, 20.0)
    assert abs(np.corrcoef(before, after)[0, 1]) < 0.3


def _fit_noise(demo_schema, frame, epsilon: float = 1.0, **params) -> tuple[np.ndarray, DPTabularGAN]:
    model = DPTabularGAN(demo_schema, epsilon=epsilon, delta=1e-5, epochs=0.01, config=TINY,
                         marginals_noise_floor=0.0, **params).fit(frame)
    exact = exact_counts(frame, demo_schema)
    tables = model.trainer_.encoder.marginals.tables
    noise = [(tables[c.name] - exact.tables[c.name]).ravel() for c in measured_columns(demo_schema)]
    return np.concatenate(noise), model


def test_two_seeded_fits_never_share_noise_unless_repeated_with_the_nonce(demo_schema, small_frame):
    first, model = _fit_noise(demo_schema, small_frame, seed=3)
    second, _ = _fit_noise(demo_schema, small_frame, seed=3)
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.3
    repeated, _ = _fit_noise(demo_schema, small_frame, seed=3, stream_nonce=model.stream_nonce_)
    np.testing.assert_allclose(first, repeated)


def test_a_repeated_fit_on_other_rows_or_another_budget_draws_unrelated_noise(demo_schema, small_frame):
    """The sixth review's repeat through the Python API: a fit given another fit's nonce draws
    that fit's noise only on the same rows and parameters."""
    first, model = _fit_noise(demo_schema, small_frame, seed=3)
    fewer = small_frame.drop(small_frame.index[17])
    one_less, _ = _fit_noise(demo_schema, fewer, seed=3, stream_nonce=model.stream_nonce_)
    assert abs(np.corrcoef(first, one_less)[0, 1]) < 0.3
    budget, _ = _fit_noise(demo_schema, small_frame, epsilon=2.0, seed=3, stream_nonce=model.stream_nonce_)
    assert abs(np.corrcoef(first, budget)[0, 1]) < 0.3


@pytest.mark.parametrize("name", ["seed", "stream_nonce"])
def test_a_saved_model_holds_neither_seed_nor_nonce(demo_schema, small_frame, tmp_path, name):
    model = DPTabularGAN(demo_schema, epsilon=1.0, delta=1e-5, epochs=0.01, config=TINY, seed=918273645)
    model.fit(small_frame)
    model.save(tmp_path / "model.pt")
    secret = "918273645" if name == "seed" else model.stream_nonce_
    assert secret.encode() not in (tmp_path / "model.pt").read_bytes()


def test_every_seeded_simulate_gets_a_fresh_stream_unless_it_repeats_one(tmp_path):
    """What `fedsyn simulate --seed` runs: a fresh nonce per invocation (printed, in no file),
    the given one with --stream-nonce, and --stream-nonce refused without its seed."""
    from fedsyn.errors import ConfigurationError
    from fedsyn.simulations.request import SimulationRequest, prepare

    nonces = {prepare(SimulationRequest(seed=3, out=tmp_path / name)).simulation.stream_nonce for name in "ab"}
    assert len(nonces) == 2 and all(len(n or "") == 32 for n in nonces)
    given = "0123456789abcdef" * 2
    assert prepare(SimulationRequest(seed=3, stream_nonce=given, out=tmp_path / "c")).simulation.stream_nonce == given
    assert prepare(SimulationRequest(out=tmp_path / "d")).simulation.stream_nonce is None
    with pytest.raises(ConfigurationError, match="--stream-nonce"):
        SimulationRequest(stream_nonce=given)
    with pytest.raises(ConfigurationError, match="32 hex digits"):
        SimulationRequest(seed=3, stream_nonce="1")


def test_a_fit_refuses_a_made_up_stream_nonce(small_frame):
    """A short nonce ('1') is easily chosen twice, and two fits of one stream cancel each other's
    noise: only a nonce as fedsyn prints them repeats a fit, before anything is drawn."""
    from fedsyn.privacy.randomness import fresh_nonce

    assert fresh_nonce("") != fresh_nonce(None) and len(fresh_nonce()) == 32
    for made_up in ("1", "ab" * 15, "AB" * 16, "ab" * 17):
        with pytest.raises(ValueError, match="32 hex digits"):
            fresh_nonce(made_up)
    model = DPTabularGAN(Schema.load(demo_schema_path()), epsilon=1.0, seed=3, stream_nonce="1", config=TINY)
    with pytest.raises(ValueError, match="32 hex digits"):
        model.fit(small_frame)
    assert getattr(model, "ledger_", None) is None  # nothing was charged


def test_a_seeded_simulation_given_its_stream_nonce_repeats_its_release(tmp_path):
    """'--seed S --stream-nonce N repeats it exactly', through the whole simulation (helper-30:
    the nonce could be dropped on its way to the sites and no test saw it)."""
    from fedsyn.simulations import workflow
    from fedsyn.simulations.request import SimulationRequest, prepare

    def release(name: str, nonce: str | None) -> str:
        request = SimulationRequest(seed=3, stream_nonce=nonce, rounds=1, local_steps=2, rows=40,
                                    out=tmp_path / name)
        return (workflow.simulate(prepare(request).simulation).release / "synthetic.csv").read_text()

    nonce = "ab" * 16
    assert release("a", nonce) == release("b", nonce)
    assert release("c", None) != release("d", None)  # a seed alone: two fresh streams


def test_the_coordinators_stream_comes_from_the_seed_and_the_stream_nonce(tmp_path, small_frame, monkeypatch):
    """The ninth review regenerated a seed-7 release bit for bit by trying seeds 0-10: the
    coordinator's stream (its model's initialisation, the release's draw) came from the seed
    alone. It now comes from the seed and the run's secret stream nonce, as each site's does, and
    from the federation's label: a sweep's arms (one nonce) drew their releases from one stream."""
    from fedsyn.server.settings import FederationSettings
    from fedsyn.simulations import run

    seeds = []
    monkeypatch.setattr(run, "run_federation", lambda grid, schema, settings, *_: seeds.append(settings.seed))
    for name, nonce, label in (("a", "ab" * 16, "main"), ("b", "cd" * 16, "main"), ("c", "ab" * 16, "main"),
                               ("e", "ab" * 16, "arm-1")):
        plan = prepare_sites([small_frame], demo_schema_path(), tmp_path / name, epsilon=1.0, delta=1e-5, seed=7,
                             stream_nonce=nonce, run_label=label)
        run.run_sites(plan, Schema.load(demo_schema_path()), FederationSettings(seed=7), release=None)
    assert 7 not in seeds and seeds[0] != seeds[1] and seeds[0] == seeds[2] and seeds[3] not in seeds[:3]
    unseeded = prepare_sites([small_frame], demo_schema_path(), tmp_path / "d", epsilon=1.0, delta=1e-5)
    assert unseeded.coordinator_settings(FederationSettings()).seed is None
