"""``fedsyn simulate``: K hospitals on one machine, with local-only and pooled comparison arms."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from flwr.app import Context

from fedsyn.client.app import make_client_app
from fedsyn.client.policy import RequestLimits, SitePolicy
from fedsyn.client.site import initialise_ledger
from fedsyn.data.schema import Schema
from fedsyn.data.tables import rows_digest, write_table
from fedsyn.data.validation import RecordHandling
from fedsyn.evaluation.metrics import tstr_auc
from fedsyn.files import private_folder
from fedsyn.model.gan import DPTabularGAN
from fedsyn.privacy.randomness import bound_to_inputs, derived_nonce, derived_seed, fresh_nonce
from fedsyn.server.app import ReleasePlan, make_server_app, run_federation
from fedsyn.server.coordinator import Coordinator, RoundCallback
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.inprocess import InProcessGrid

log = logging.getLogger("fedsyn.simulate")



@dataclass
class SimulationPlan:
    """Where each simulated hospital's private files live and what its policy allows."""

    root: Path
    # A seeded simulation's stream nonce (None: unseeded): with the seed it repeats the run. Secret,
    # as the seed is; in no file (each site's ledger holds a nonce derived from it).
    stream_nonce: str | None = None
    policies: list[Path] = field(default_factory=list)
    # Which federation of the simulation this is (the main run, a sweep arm): its streams' label.
    run_label: str = "main"

    def site_policy(self, context: Context) -> SitePolicy:
        return SitePolicy.load(self.policies[int(context.node_config["partition-id"])])

    def coordinator_settings(self, settings: FederationSettings) -> FederationSettings:
        """``settings`` with the coordinator's seed (its model's initialisation, the release's
        draw) derived from the run's seed, this plan's stream nonce and its run label, as each
        site's is: seeded from the seed alone, a release of seed 7 was regenerated bit for bit by
        trying seeds 0-10 (the ninth review), and without the label a sweep's arms shared one
        draw. Unseeded: as they are."""
        if settings.seed is None or self.stream_nonce is None:
            return settings
        return settings.model_copy(update={"seed": derived_seed(settings.seed, "coordinator", self.stream_nonce,
                                                                self.run_label)})


_PATH_UNSAFE = re.compile(r"[^\w.-]+")  # a folder name keeps letters and digits of any script, '_', '.', '-'


def site_folder(index: int, name: str | None) -> str:
    """A simulated hospital's folder: ``site-K``, with its name when it has one (``site-0-east``,
    any character a path would trip on made '_', letters of any script kept: 'Hôpital Nord' was
    'H_pital_Nord', helper-114), so a researcher can tell which is which."""
    return f"site-{index}" if name is None else f"site-{index}-{_PATH_UNSAFE.sub('_', name)[:40]}"


def prepare_sites(tables: list[pd.DataFrame], schema_path: Path, root: Path, epsilon: float, delta: float,
                  min_noise_multiplier: float = 0.3, device: str = "cpu", seed: int | None = None,  # below a
                  # hospital policy's 0.5: a researcher's sweep reaches epsilon 10 and more on a few hundred rows
                  allow_unreviewed_schema: bool = False, names: list[str] | None = None,
                  run_label: str = "main", out_of_domain: RecordHandling = "drop",
                  stream_nonce: str | None = None, stream_inputs: tuple[str, ...] = ()) -> SimulationPlan:
    """Write one folder per hospital: its private extract, a policy and its new, empty ledger.
    ``names`` are the hospitals' names in reports (default ``site-0``, ``site-1``, ...);
    ``out_of_domain`` is each site's handling of records the schema does not allow.

    Without ``seed`` (the default) every site draws from operating-system entropy. With it,
    each hospital's seed and its ledger's stream nonce are derived from the seed, the
    simulation's ``stream_nonce``, the ``run_label`` and the site's index: the run is
    reproducible for whoever holds the seed and the nonce (:attr:`SimulationPlan.stream_nonce`),
    federations of one simulation (the main run, each sweep arm) given distinct labels never
    share a stream, and two simulations with one seed share none either (the nonce is fresh
    unless given: two releases of one stream would cancel each other's noise). A given nonce
    repeats the run on the same inputs only: each ledger's nonce is bound to its site's rows,
    the schema, the budget and ``stream_inputs`` (the federation's public settings), so a rerun
    on an extract one patient apart, or at another epsilon, draws unrelated noise
    (:func:`~fedsyn.privacy.randomness.bound_to_inputs`)."""
    plan = SimulationPlan(root, stream_nonce=None if seed is None else fresh_nonce(stream_nonce), run_label=run_label)
    schema = Schema.load(schema_path)
    # What else a repeat must share: the schema, the budget, each site's policy, the federation's settings.
    inputs = (schema_path.read_text(), repr((epsilon, delta, min_noise_multiplier, out_of_domain)), *stream_inputs)
    # The researcher's own simulated sites: small ones may train on every row each step, and a
    # federation of as many hospitals as the table has has a slot for each.
    limits = RequestLimits(max_sample_rate=1.0, max_site_slots=max(len(tables), RequestLimits().max_site_slots))
    for index, table in enumerate(tables):
        stream = (run_label, index)  # apart from every other site and federation of this simulation
        folder = private_folder(root / site_folder(index, names[index] if names else None))
        write_table(table, folder / "data.parquet")
        policy = SitePolicy(site_id=names[index] if names else f"site-{index}", data=Path("data.parquet"),
                            schema=schema_path.resolve(),
                            ledger=Path("ledger.json"), max_epsilon=epsilon, delta=delta,
                            min_noise_multiplier=min_noise_multiplier, device=device,
                            allow_unreviewed_schema=allow_unreviewed_schema,
                            limits=limits, out_of_domain=out_of_domain,
                            reply_quantum_seconds=0.0,  # no timing to hide from oneself
                            seed=None if seed is None else derived_seed(seed, "simulated-site", *stream))
        policy.save(folder / "policy.json")
        initialise_ledger(SitePolicy.load(folder / "policy.json"),
                          stream_nonce=None if seed is None or plan.stream_nonce is None else derived_nonce(
                              seed, "ledger", bound_to_inputs(plan.stream_nonce, rows_digest(table, schema), *inputs),
                              *stream))
        plan.policies.append(folder / "policy.json")
    return plan


def run_sites(plan: SimulationPlan, schema: Schema, settings: FederationSettings, release: ReleasePlan,
              engine: str = "inprocess", on_round: RoundCallback | None = None) -> Coordinator | None:
    """Run the federation on the chosen engine; the release lands in ``release.out``.

    ``inprocess`` returns the coordinator; ``flower`` (Ray simulation engine) runs the same
    ServerApp/ClientApp objects in separate workers and the release files are the result.
    """
    client_app = make_client_app(plan.site_policy)
    settings = plan.coordinator_settings(settings)
    if engine == "inprocess":
        grid = InProcessGrid(client_app, len(plan.policies))
        return run_federation(grid, schema, settings, release, on_round)
    from flwr.simulation import run_simulation

    server_app = make_server_app(schema, settings, release, on_round)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(plan.policies),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    if not (release.out / "synthetic.csv").exists():
        raise RuntimeError(f"the Flower simulation ended without writing a release to {release.out}; see its log")
    return None


def default_sample_rate(tables: list[pd.DataFrame], batch_size: int) -> tuple[float, dict[str, object]]:
    """The sample rate every site uses: ``batch_size`` rows in expectation at the smallest site,
    and the fact it discloses.

    The rate is published, so the smallest site's row count (``batch_size / rate``) is too:
    it is returned as a declared public fact for the privacy report. In a deployment the
    coordinator sets ``sample-rate`` as a public setting and sites never report row counts.
    """
    smallest = max(1, min(len(t) for t in tables))
    rate = float(min(1.0, batch_size / smallest))
    return rate, {"smallest_site_rows": smallest if rate < 1.0 else f"at most {batch_size}",
                  "why_public": "the simulation derives the public sample rate from it (batch size / rows)"}


def baseline_arms(tables: list[pd.DataFrame], test: pd.DataFrame, schema: Schema, epsilon: float, delta: float,
                  seed: int = 0, device: str = "cpu", on_arm: Callable[[str], None] | None = None,
                  stream_nonce: str | None = None) -> dict[str, dict[str, float]]:
    """TSTR ROC-AUC of the arms a federated release is compared with: each site's own DP-GAN
    with the same budget ("local-only site-K"), one DP-GAN on all rows pooled (centralized
    DP, research only) and the real rows themselves ("real (TRTR)"). Single-site arms use
    the single-site defaults, so each arm runs with its own best settings. With a seeded
    simulation's ``stream_nonce`` each arm's stream derives from it (the simulation repeats
    whole); without, every arm draws a fresh one."""
    def arm_nonce(arm: str) -> str | None:
        return None if stream_nonce is None else derived_nonce(seed, "comparison", stream_nonce, arm)

    results: dict[str, dict[str, float]] = {}
    for index, table in enumerate(tables):
        if on_arm is not None:
            on_arm(f"local-only arm, site {index}")
        model = DPTabularGAN(schema, epsilon, delta, seed=seed, device=device,
                             stream_nonce=arm_nonce(f"site-{index}")).fit(table)
        results[f"local-only site-{index}"] = tstr_auc(model.sample(len(table)), test, schema, seed)
    pooled_rows = pd.concat(tables, ignore_index=True)
    if on_arm is not None:
        on_arm("pooled (centralized DP) arm")
    pooled = DPTabularGAN(schema, epsilon, delta, seed=seed, device=device, stream_nonce=arm_nonce("pooled")
                          ).fit(pooled_rows)
    results["pooled (centralized DP)"] = tstr_auc(pooled.sample(len(pooled_rows)), test, schema, seed)
    results["real (TRTR)"] = tstr_auc(pooled_rows, test, schema, seed)
    return results

