"""A whole simulated federation as one library call: ``simulate(Simulation(...))``.

The command line (``fedsyn simulate``) only parses options into a request, which
:func:`fedsyn.simulations.request.prepare` checks and turns into a :class:`Simulation`, and
prints the :class:`SimulationResult`; notebooks and benchmarks call the same functions.
What it writes under ``out``:

- ``release/``: the signed release (DP outputs and declared public facts only);
- ``local-report/``: the validation report, its verdict, the held-out rows and, with
  ``compare``, the comparison arms: computed from real rows, never part of a release;
- ``sites/``: each simulated hospital's extract, policy, ledger and trail; ``keys/``,
  ``audit.jsonl``: the coordinator's signing keys and signed audit trail;
- ``sweep/epsilon-E/``: one more federation per budget of ``sweep``;
- ``.gitignore`` (``*``), when it made the folder: no git checkout picks up real rows or keys;
- ``.fedsyn-simulation``: the stamp that lets ``--overwrite`` replace the folder, and nothing else.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table, write_table
from fedsyn.errors import ConfigurationError
from fedsyn.evaluation.report import write_local_report
from fedsyn.files import make_run_folder, private_folder
from fedsyn.server.app import ReleasePlan
from fedsyn.server.coordinator import RoundCallback
from fedsyn.server.settings import FederationSettings
from fedsyn.simulations.run import baseline_arms, prepare_sites, run_sites
from fedsyn.trust.signing import generate_keypair

StageCallback = Callable[[str], None]
JSON = dict[str, Any]  # a report as json.loads reads it back


@dataclass(frozen=True)
class Simulation:
    """One simulated federation as a researcher sets it up."""

    tables: list[pd.DataFrame]  # one per hospital
    schema: Schema
    schema_path: Path  # the file every simulated site loads (the coordinator checks its fingerprint)
    settings: FederationSettings  # at the main epsilon
    out: Path
    rows: int  # synthetic rows to release
    train: pd.DataFrame | None = None  # every site's rows together, for the local report
    test: pd.DataFrame | None = None  # held-out real rows: the local report and its verdict need them
    sweep: tuple[float, ...] = ()  # more budgets: one more federation each, for the privacy-utility curve
    release_every: int = 0
    drop_rule_violations: bool = False
    engine: str = "inprocess"
    device: str = "cpu"
    compare: bool = False  # also each site alone and all rows pooled (centralised DP)
    site_names: tuple[str, ...] = ()  # the hospitals' names in reports (default site-0, site-1, ...)
    public_facts: dict[str, object] = field(default_factory=dict)
    # With a seed: the simulation's stream nonce (secret, fresh unless given to repeat a run; see
    # fedsyn.simulations.run.prepare_sites). Every federation of the simulation derives from it.
    stream_nonce: str | None = None


@dataclass(frozen=True)
class SimulationResult:
    release: Path
    keys: Path
    privacy_report: JSON
    seconds: float  # the federation(s), without the local report
    local_report: JSON | None = None  # report.json (with its verdict), when there were held-out rows
    comparison: dict[str, dict[str, float]] | None = None  # TSTR ROC-AUC per arm, with ``compare``


def simulate(simulation: Simulation, on_round: RoundCallback | None = None,
             on_stage: StageCallback | None = None) -> SimulationResult:
    """Run the federation (and the sweep), write the release and the local report."""
    stage = on_stage or (lambda _: None)
    out = simulation.out
    make_run_folder(out)
    SIMULATION_FOLDER.mark(out)
    keys = out / "keys"
    if not (keys / "coordinator.key").exists():
        generate_keypair(keys)
    started = time.monotonic()
    release = _federate(simulation, simulation.settings, out, keys, "main", on_round)
    curve = []
    for arm, budget in enumerate(simulation.sweep):
        stage(f"privacy-utility sweep: epsilon={budget:g}")
        settings = simulation.settings.model_copy(update={"epsilon": budget})
        swept = _federate(simulation, settings, out / "sweep" / f"epsilon-{budget:g}", keys, f"sweep-{arm}")
        if simulation.train is not None and simulation.test is not None:
            curve.append(_curve_point(budget, swept, simulation.schema, simulation.train, simulation.test,
                                      simulation.settings.seed or 0))
    if curve and simulation.train is not None and simulation.test is not None \
            and simulation.settings.epsilon not in simulation.sweep:  # the main release is on the curve too
        curve.append(_curve_point(simulation.settings.epsilon, release, simulation.schema, simulation.train,
                                  simulation.test, simulation.settings.seed or 0))
    seconds = time.monotonic() - started
    privacy_report = json.loads((release / "privacy_report.json").read_text())
    result = SimulationResult(release, keys, privacy_report, seconds)
    if simulation.test is None or simulation.train is None:
        return result
    local = private_folder(out / "local-report")
    comparison = None
    if simulation.compare and simulation.schema.outcome:
        comparison = _compare(simulation, simulation.test, release, local, stage)
    stage("validation report (fidelity, utility, privacy)...")
    report = write_local_report(read_table(release / "synthetic.csv", simulation.schema), simulation.train,
                                simulation.test, simulation.schema, local, privacy_report,
                                simulation.settings.seed or 0, curve, comparison, simulation.settings.public_dict(),
                                simulation.settings.site_column)
    write_table(simulation.test, local / "held_out.parquet")
    return SimulationResult(release, keys, privacy_report, seconds, report, comparison)


@dataclass(frozen=True)
class RunFolder:
    """What one command writes in its ``--out`` folder: ``--overwrite`` replaces a folder holding
    only these ``entries`` and the command's ``stamp`` (or, before stamps, a file matching
    ``older``), and nothing else is ever removed. ``kept`` says why such a folder is not replaced
    without ``--overwrite``."""

    command: str
    stamp: str
    entries: frozenset[str]
    older: str
    kept: str

    @property
    def written(self) -> frozenset[str]:
        """Every name the command writes in its folder: its entries and its stamp."""
        return self.entries | {self.stamp}

    def mark(self, out: Path) -> None:
        """Stamp ``out`` as this command's folder."""
        (out / self.stamp).write_text(f"written by {self.command}: --overwrite may replace this folder\n")

    def holds_earlier_run(self, out: Path) -> bool:
        return (out / self.stamp).is_file() or any(out.glob(self.older))


SIMULATION_FOLDER = RunFolder(
    "fedsyn simulate", ".fedsyn-simulation",
    frozenset({"release", "local-report", "sites", "keys", "audit.jsonl", "audit.jsonl.sig", "sweep", ".gitignore"}),
    "sites/*/policy.json", "its simulated hospitals keep ledgers that are never reset")
FIT_FOLDER = RunFolder(
    "fedsyn fit", ".fedsyn-fit",
    # release/ and local-report/ (stamped); fits before release/ wrote its three files at the top, and
    # fits before the stamp are known by the privacy report there
    frozenset({"release", "local-report", ".gitignore", "model.pt", "synthetic.csv", "privacy_report.json"}),
    "privacy_report.json", "its privacy report is the only record of the budget that fit spent on its extract")


def clear_out_folder(out: Path, overwrite: bool, inputs: tuple[Path, ...] = (),
                     kind: RunFolder = SIMULATION_FOLDER) -> None:
    """Empty ``out`` of an earlier run of ``kind`` when told to; refuse otherwise
    (:func:`check_out_folder_replaceable`)."""
    if check_out_folder_replaceable(out, overwrite, inputs, kind):
        shutil.rmtree(out)


def check_out_folder_replaceable(out: Path, overwrite: bool, inputs: tuple[Path, ...] = (),
                                 kind: RunFolder = SIMULATION_FOLDER) -> bool:
    """Whether ``out`` holds an earlier run of ``kind`` that ``overwrite`` lets this run replace;
    raises ConfigurationError where it may not. A folder holding anything that command does not
    write (the user's own files), or one of this run's ``inputs``, is never emptied: ``--out .``
    beside one's data must not delete it."""
    if out.is_symlink():
        raise ConfigurationError(f"--out {out} is a link to another folder: name the folder itself")
    if not out.exists() or not any(out.iterdir()):
        return False
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in kind.written)
    if not foreign and not kind.holds_earlier_run(out):
        foreign = sorted(entry.name for entry in out.iterdir())
    if foreign:
        raise ConfigurationError(
            f"{out} holds files that are not from an earlier `{kind.command}` ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}): choose a new or empty folder for --out "
            f"(--overwrite replaces only what an earlier `{kind.command}` wrote, never other files)")
    resolved = out.resolve()
    inside = [path for path in inputs if resolved in path.resolve().parents]
    if inside:
        raise ConfigurationError(f"{inside[0]} lies inside --out {out}, which --overwrite would empty: "
                                 "move it out, or choose another --out")
    if not overwrite:
        raise ConfigurationError(f"{out} already holds the output of an earlier `{kind.command}` ({kind.kept}): "
                                 "choose another --out, or pass --overwrite to replace it")
    return True


def remove_run(out: Path, created: bool) -> None:
    """Remove what a run wrote in ``out``, for a run that failed before any site spent budget: the
    folder if the run made it, else what a simulation writes in it (it held nothing else: a fresh
    folder, or emptied by :func:`clear_out_folder`)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for entry in out.iterdir():
        if entry.name not in SIMULATION_FOLDER.written:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def privacy_spent_in(out: Path) -> bool:
    """Whether any simulated site under ``out`` (the main run or a sweep) has a ledger that records
    a charge; a ledger that cannot be read counts as charged, so that it is never deleted unseen."""
    for ledger in out.rglob("ledger.json"):
        try:
            if json.loads(ledger.read_text()).get("events"):
                return True
        except (OSError, ValueError, AttributeError):
            return True
    return False


def stream_inputs(settings: FederationSettings) -> str:
    """The settings a seeded simulation's streams are bound to (:func:`~fedsyn.privacy.randomness.bound_to_inputs`):
    every public one but how the release is drawn from the trained model
    (``gan_config.numbers_as_measured``). Two runs that differ only there release two
    post-processings of the same DP outputs, which together tell no more than those outputs; bound,
    they drew unrelated noise and could not be compared (helper-112)."""
    public = settings.public_dict()
    public["gan_config"] = {key: value for key, value in public["gan_config"].items() if key != "numbers_as_measured"}
    if not public["pairs_asked"]:  # none asked binds as before the setting existed: the bench's streams stay paired
        del public["pairs_asked"]
    return json.dumps(public, sort_keys=True, default=str)


def _federate(simulation: Simulation, settings: FederationSettings, folder: Path, keys: Path, run_label: str,
              on_round: RoundCallback | None = None) -> Path:
    """One federation with fresh simulated hospitals under ``folder``; returns its release.
    ``run_label`` keeps its sites' streams apart from the simulation's other federations."""
    plan = prepare_sites(simulation.tables, simulation.schema_path, folder / "sites", settings.epsilon, settings.delta,
                         device=simulation.device, seed=settings.seed,
                         allow_unreviewed_schema=settings.allow_unreviewed_schema,
                         names=list(simulation.site_names) or None, run_label=run_label,
                         stream_nonce=simulation.stream_nonce,
                         stream_inputs=(stream_inputs(settings),))
    release = ReleasePlan(folder / "release", simulation.rows, simulation.release_every,
                          simulation.drop_rule_violations, signing_key=keys / "coordinator.key",
                          audit_log=folder / "audit.jsonl", public_facts=simulation.public_facts)
    run_sites(plan, simulation.schema, settings, release, simulation.engine, on_round)
    return release.out


def _curve_point(epsilon: float, release: Path, schema: Schema, train: pd.DataFrame, test: pd.DataFrame,
                 seed: int) -> JSON:
    """One point of the privacy-utility curve: TSTR ROC-AUC and the attack's AUC at ``epsilon``."""
    from fedsyn.evaluation.metrics import privacy, tstr_auc

    synthetic = read_table(release / "synthetic.csv", schema)
    auc = tstr_auc(synthetic, test, schema, seed)
    attack = privacy(synthetic, train, test, schema, seed)["membership_attack_auc"]
    return {"epsilon": epsilon, "tstr_gradient_boosting": auc["gradient_boosting"],
            "tstr_logistic_regression": auc["logistic_regression"], "membership_attack_auc": attack}


def _compare(simulation: Simulation, test: pd.DataFrame, release: Path, local: Path, stage: StageCallback
             ) -> dict[str, dict[str, float]]:
    """TSTR of the federated release beside each site alone, all rows pooled and the real rows."""
    from fedsyn.evaluation.metrics import tstr_auc

    seed = simulation.settings.seed or 0
    results = {"federated": tstr_auc(read_table(release / "synthetic.csv", simulation.schema), test,
                                     simulation.schema, seed)}
    results.update(baseline_arms(simulation.tables, test, simulation.schema, simulation.settings.epsilon,
                                 simulation.settings.delta, seed, simulation.device, stage, simulation.stream_nonce))
    (local / "utility.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
