"""A release scanner: everything fedsyn publishes, read back byte by byte.

Each kind of output meant to leave the machine is made tiny with a distinctive seed:
``fedsyn fit``'s output folder; ``fedsyn simulate``'s release with ``--sites``, with ``--data``
and a split, with ``--sweep-epsilon`` (one more release per budget) and with interim
releases; and a deployment's release (the coordinator over a grid of sites). Then every file
of what is published is read as bytes and must hold:

- no secret in any encoding tried here: the seed's digits; each simulated site's ledger
  ``stream_nonce`` and derived seed (its ``policy.json``); the fit's stream nonce (printed on
  the terminal, never written); the coordinator's signing key. Whoever holds one of them can
  regenerate DP noise, or sign releases;
- in every JSON file and model checkpoint, only key paths declared in :data:`RELEASE_KEYS` /
  :data:`FIT_KEYS`, each under the reason it may be public: a field added later fails this
  scan until someone declares it there; and only declared file names;
- tables with exactly the schema's columns;
- ``seeded`` saying truthfully whether the run was seeded.

The local report (``local-report/``: metrics on real rows, documented as local-only) is not a
release and is not scanned as one; it must not be inside the release either.

The default suite scans ``simulate --sites --held-out`` (its local report too) and ``fit``;
``pytest -m adversary`` scans every kind, seeded and not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import typer
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fedsyn.cli.main import app
from fedsyn.data.demo import demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table
from fedsyn.simulations.run import prepare_sites
from fedsyn.simulations.split import split_table

from .helpers import SETTINGS, run_in_process

SEED = 918273645  # digits that appear in no release by chance

# -- what may be published, and why ------------------------------------------------------------------
# Every key path of every published JSON file and model checkpoint, by file name. A path joins keys
# with "."; "[]" stands for the items of a list and "*" for a key that is itself data (a column, file
# or parameter name). Only leaves count (a list of plain values is its key's path). Each group says
# why its fields may be published.

SETTING = "a public setting: chosen by whoever ran the job and published by design (never the seed, only `seeded`)"
DP_OUTPUT = "a DP output, or post-processing of DP outputs only"
ACCOUNTING = ("privacy accounting: mechanism parameters fixed by public settings and site policies, the epsilons "
              "computed from them, and participation (DECLARED_PUBLIC in server/release.py)")
FACT = "a declared public fact: derived from private data and published with its reason under public_facts"
SCHEMA = "the public schema every site agreed on"
TEXT = "fixed text fedsyn writes: what the guarantee is, what is public and why, format tags"
INTEGRITY = "SHA-256 of the release's own files, which its signature covers"
EMPTY = "a private field of a ledger (its data path, its stream nonce): allowed only as null"


def _declare(why: str, *paths: str, under: str = "") -> dict[str, str]:
    return {f"{under}{path}": why for path in paths}


GAN_CONFIG = ("latent_dim", "generator_hidden", "discriminator_hidden", "generator_lr", "discriminator_lr",
              "batch_size", "max_grad_norm", "gumbel_tau", "generator_ema", "betas", "matching_weight", "site_slots",
              "numbers_as_measured")
FEDERATION_SETTINGS = ("rounds", "local_steps", "sample_rate", "epsilon", "delta", "marginals_share", "pairs_share",
                       "pairs_asked",
                       "table_steps", "noise_multiplier", "min_sites", "site_noise_multiplier", "site_clipping_norm",
                       "transport_dtype", "max_update_norm", "aggregation", "allow_unreviewed_schema", "accountant",
                       "site_conditional", "marginals_noise_floor", "site_column", "timeout", "seeded")
CONDITION = ("column", "equals", "one_of", "between", "is_missing", "at_most_column", "at_least_column")
SCHEMA_PATHS = ("name", "outcome", "source", "rules.[].name", "missing_values", "missing_values.[]",
                *(f"columns.[].{name}" for name in ("name", "kind", "categories", "lower", "upper", "unit", "nullable",
                                                    "transform", "precision", "bounds_source", "needs_review",
                                                    "description", "missing_values", "missing_values.[]", "spellings",
                                                    "spellings.*")),
                *(f"rules.[].{side}.{name}" for side in ("when", "require") for name in CONDITION))
EVENT = ("mechanism", "noise_multiplier", "sample_rate", "steps", "round")


def _ledger(under: str) -> dict[str, str]:
    """A single-site fit's in-memory ledger, as its privacy report and model file carry it."""
    return {**_declare(ACCOUNTING, "delta", "accountant", "epsilon", *(f"events.[].{e}" for e in EVENT), under=under),
            **_declare(TEXT, "format", under=under), **_declare(EMPTY, "protects", "stream_nonce", under=under)}


CHECKPOINT = {
    **_declare(TEXT, "format"),
    **_declare(SCHEMA, *SCHEMA_PATHS, under="schema."),
    **_declare(SETTING, *GAN_CONFIG, under="config."),
    # the averaged generator, the noisy tables that define the encoding, a fit's discriminator
    # (DP-SGD), the sites' noisy round-0 tables and noisy totals per site slot
    **_declare(DP_OUTPUT, "generator.*", "marginals.*", "discriminator", "discriminator.*", "site_slots",
               "site_slots.totals", "site_slots.marginals.[].*"),
    **_declare(SETTING, "site_slots.site_column"),  # FederationSettings.site_column: a column's name
    # the summed tables' cell noise std: a function of the noise multipliers asked of the sites
    **_declare(ACCOUNTING, "site_slots.table_noise_std"),
}
RELEASE_KEYS: dict[str, dict[str, str]] = {
    "run_config.json": {
        **_declare(SETTING, "rows", "seeded", *(f"settings.{s}" for s in FEDERATION_SETTINGS),
                   *(f"settings.gan_config.{c}" for c in GAN_CONFIG)),
        **_declare(ACCOUNTING, "rounds.[].round", "rounds.[].accepted", "rounds.[].dropped"),
        **_declare(DP_OUTPUT, "rounds.[].generator_loss", "dropped_rule_violations"),
    },
    "privacy_report.json": {
        **_declare(TEXT, "guarantee", "scope", "declared_public", "never_sent", "release_contents.*", "aggregation",
                   "site_level_dp.scope"),
        **_declare(SETTING, "accountant", "seeded"),
        **_declare(SCHEMA, "schema_unreviewed_columns"),
        **_declare(ACCOUNTING, "max_epsilon_any_site", "site_level_dp",
                   *(f"site_level_dp.{k}" for k in ("epsilon", "delta", "releases", "noise_multiplier",
                                                    "clipping_norm")),
                   *(f"sites.[].{k}" for k in ("site", "node_id", "epsilon_this_run", "epsilon_cumulative",
                                               "epsilon_this_run_is_lower_bound", "unconfirmed_rounds",
                                               "possibly_charged_before_resume",
                                               "epsilon_cumulative_is_upper_bound", "upper_bound_reason",
                                               "epsilon_claimed_by_site", "answered_this_run", "delta", "within_budget",
                                               "epsilon_before_run", "max_epsilon", "budget_epsilon_asked",
                                               "rounds_accepted", "dropped")),
                   *(f"sites.[].ledger.[].{k}" for k in (*EVENT, "epsilon_after"))),
        # simulations/run.py default_sample_rate and simulations/request.py (--rows 0)
        **_declare(FACT, "public_facts", "public_facts.smallest_site_rows", "public_facts.why_public",
                   "public_facts.total_site_rows.value", "public_facts.total_site_rows.why_public"),
        # simulations/request.py (--sweep-epsilon): public settings of the simulation
        **_declare(ACCOUNTING, *(f"public_facts.releases_from_the_same_rows.value.{k}" for k in (
            "epsilon_per_release", "epsilon_if_all_published_at_most", "delta_if_all_published_at_most"))),
        **_declare(TEXT, "public_facts.releases_from_the_same_rows.why_public"),
    },
    "quality_report.json": {**_declare(TEXT, "basis", "not_measured"),
                            **_declare(DP_OUTPUT, "total_variation_per_column.*", "mean_total_variation",
                                       "total_variation_by_outcome_class.*", "mean_total_variation_by_outcome_class",
                                       "total_variation_per_pair_table.*", "mean_total_variation_per_pair_table")},
    "schema.json": _declare(SCHEMA, *SCHEMA_PATHS),
    "manifest.json": _declare(INTEGRITY, "files.*"),
    "generator.pt": {
        **CHECKPOINT,
        **_declare(ACCOUNTING, "privacy.max_epsilon_any_site", "privacy.delta"),
        **_declare(TEXT, "privacy.scope"),
        **_declare(SETTING, "params"),  # the single-site estimator's settings: none for a federated release
    },
    "synthetic.csv": {}, "synthetic.parquet": {}, "README.md": {}, "manifest.sig": {},
}
FIT_KEYS: dict[str, dict[str, str]] = {
    "privacy_report.json": {
        **_declare(ACCOUNTING, "epsilon", "delta"),
        **_ledger("ledger."),
        **_declare(SETTING, "seeded"),
        **_declare(SCHEMA, "schema_unreviewed_columns"),
        **_declare(FACT, "public_facts.rows", "public_facts.why_public"),  # cli/research.py fit
    },
    "model.pt": {
        **CHECKPOINT,
        **_ledger("privacy.ledger."),
        **_declare(SETTING, *(f"params.{p}" for p in ("epsilon", "delta", "epochs", "marginals_share", "pairs_share",
                                                      "noise_multiplier", "marginals_noise_floor", "accountant"))),
    },
    "synthetic.csv": {},
    ".fedsyn-fit": {}, ".gitignore": {},  # fixed text (simulations/workflow.py): the fit's stamp, out of git
}
TABLES = ("synthetic.csv", "synthetic.parquet")


# -- the scan ----------------------------------------------------------------------------------------

def key_paths(value: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """Every leaf of a JSON-like tree (torch tensors are leaves) with its key path; an empty
    mapping or list is a leaf too, and a list of plain values is its key's path."""
    if isinstance(value, dict):
        if not value:
            yield path, value
        for key, inner in value.items():
            yield from key_paths(inner, (*path, str(key)))
    elif isinstance(value, (list, tuple)):
        if not value:
            yield path, value
        for inner in value:
            yield from key_paths(inner, (*path, "[]"))
    else:
        while path and path[-1] == "[]":
            path = path[:-1]
        yield path, value


def _matches(path: tuple[str, ...], pattern: str) -> bool:
    parts = pattern.split(".") if pattern else []
    if parts and parts[-1] == "*":  # a data key, whatever lies below it (a column's table, a tensor)
        return len(path) >= len(parts) and all(p in ("*", q) for p, q in zip(parts, path))
    return len(parts) == len(path) and all(p in ("*", q) for p, q in zip(parts, path))


def undeclared(tree: object, declared: dict[str, str]) -> list[str]:
    """Key paths of ``tree`` no pattern of ``declared`` covers, and EMPTY fields that are not."""
    found = []
    for path, value in key_paths(tree):
        reasons = [why for pattern, why in declared.items() if _matches(path, pattern)]
        if not reasons:
            found.append(".".join(path))
        elif EMPTY in reasons and value is not None:
            found.append(f"{'.'.join(path)} (holds a value; declared only as null)")
    return found


@dataclass
class Secrets:
    """What must never be published, each in every byte form tried: name -> forms."""

    forms: dict[str, set[bytes]] = field(default_factory=dict)
    numbers: dict[int, str] = field(default_factory=dict)  # for a checkpoint's integer leaves

    def add_number(self, what: str, value: int) -> None:
        forms = {str(value).encode()}
        if -(2 ** 63) <= value < 2 ** 64:
            forms |= {struct.pack("<Q" if value >= 2 ** 63 else "<q", value), struct.pack(">q", value)
                      if value < 2 ** 63 else struct.pack(">Q", value)}
        self.forms[what] = forms
        self.numbers[value] = what

    def add_nonce(self, what: str, nonce: str) -> None:
        self.forms[what] = {nonce.lower().encode(), nonce.upper().encode(), bytes.fromhex(nonce),
                            base64.b64encode(bytes.fromhex(nonce))}

    def add_text(self, what: str, *forms: bytes) -> None:
        self.forms[what] = {form for form in forms if form}


def site_secrets(out: Path, secrets: Secrets, seeded: bool) -> int:
    """Every simulated site's ledger nonce and derived seed under ``out`` (sweep arms too);
    returns how many sites there were, so a scan is never vacuous."""
    ledgers = sorted(out.glob("**/sites/*/ledger.json"))
    for ledger in ledgers:
        name = ledger.parent.relative_to(out)
        nonce = json.loads(ledger.read_text())["stream_nonce"]
        assert nonce, f"{name}: a simulated site's ledger has no stream nonce"
        secrets.add_nonce(f"{name}'s ledger stream nonce", nonce)
        seed = json.loads((ledger.parent / "policy.json").read_text())["seed"]
        assert (seed is not None) == seeded, f"{name}: policy seed {seed!r} in a run seeded={seeded}"
        if seed is not None:
            secrets.add_number(f"{name}'s derived seed", int(seed))
    return len(ledgers)


def key_secrets(keys: Path, secrets: Secrets) -> None:
    """The coordinator's Ed25519 signing key: its PEM body and its raw 32 bytes."""
    pem = (keys / "coordinator.key").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    secrets.add_text("the coordinator's signing key", raw, body, base64.b64encode(raw))


def scan(folder: Path, declared: dict[str, dict[str, str]], secrets: Secrets, schema: Schema) -> list[Path]:
    """Read every file under ``folder`` as bytes and hold it to the rules above."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert files, f"nothing published in {folder}"
    for path in files:
        name = str(path.relative_to(folder))
        assert len(path.relative_to(folder).parts) == 1, f"{name}: a folder in a published output"
        assert path.name in declared, f"{name}: a file nobody declared publishable"
        data = path.read_bytes()
        for what, forms in secrets.forms.items():
            assert not any(form in data for form in forms), f"{name} holds {what}"
        tree: Any = None
        if path.suffix == ".json":
            tree = json.loads(data)
        elif path.suffix == ".pt":
            tree = torch.load(path, weights_only=True)
        if tree is not None:
            missing = undeclared(tree, declared[path.name])
            assert not missing, f"{name}: fields nobody declared public: {missing[:8]}"
            for _, value in key_paths(tree):
                assert not (isinstance(value, int) and value in secrets.numbers), \
                    f"{name} holds {secrets.numbers[value]}"
        if path.name in TABLES:
            columns = pq.read_schema(path).names if path.suffix == ".parquet" else \
                data.decode().splitlines()[0].split(",")
            assert [c for c in columns if not c.startswith("__index")] == schema.column_names, name
    return files


@dataclass
class Output:
    """What one fedsyn job wrote: the folders it publishes, held to ``declared``."""

    published: list[Path]
    declared: dict[str, dict[str, str]]
    secrets: Secrets
    seeded: bool
    local_report: Path | None = None  # where the job's real-data report went (local only)


def check_output(output: Output) -> None:
    schema = Schema.load(demo_schema_path())
    for folder in output.published:
        scan(folder, output.declared, output.secrets, schema)
        for config_file in folder.rglob("run_config.json"):
            config = json.loads(config_file.read_text())
            assert config["seeded"] is config["settings"]["seeded"] is output.seeded, config_file
            report = json.loads((config_file.parent / "privacy_report.json").read_text())
            assert report["seeded"] is output.seeded
            readme = (config_file.parent / "README.md").read_text()
            assert not re.search(r"\d\d:\d\d", readme), f"{config_file.parent}: the README dates the release"
            assert ("This run was seeded" in readme) is output.seeded
            assert ("This run was not seeded" in readme) is not output.seeded
        if output.declared is FIT_KEYS:
            assert json.loads((folder / "privacy_report.json").read_text())["seeded"] is output.seeded
    if output.local_report is not None:
        assert_local_only(output.local_report, output.published, output.secrets)


def assert_local_only(local: Path, published: list[Path], secrets: Secrets) -> None:
    """The local report exists, lies outside every published folder (a fit's once lay in the
    folder beside its shareable files, held-out rows and all: seventh review), none
    of its files is published under another name, and none holds a secret: researchers share
    its verdict and HTML, and a seed there once gave away a simulation's site split."""
    files = [p for p in local.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"report.json", "report.html", "held_out.parquet"}, files
    for path in files:
        data = path.read_bytes()
        for what, forms in secrets.forms.items():
            assert not any(form in data for form in forms), f"{path} holds {what}"
    # Every run folder's .gitignore is the same fixed text (simulations/workflow.py), nothing of the rows.
    digests = {hashlib.sha256(p.read_bytes()).digest() for p in files if p.name != ".gitignore"}
    for folder in published:
        assert not local.resolve().is_relative_to(folder.resolve()), f"{local} is inside the release {folder}"
        for path in folder.rglob("*"):
            if path.is_file():
                assert hashlib.sha256(path.read_bytes()).digest() not in digests, f"{path} is a local-report file"


# -- the jobs ----------------------------------------------------------------------------------------

TINY_RUN = ("--rounds", "1", "--local-steps", "1", "--rows", "100", "--batch-size", "32")


def _cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@dataclass(frozen=True)
class Inputs:
    """Real rows as a researcher hands them to the CLI: one table, or one file per hospital."""

    cohort: Path
    sites: tuple[Path, ...]
    held_out: Path


@pytest.fixture()
def inputs(tmp_path: Path, demo_frame: pd.DataFrame) -> Inputs:
    rows = demo_frame.sample(900, random_state=3)
    rows.iloc[:600].to_csv(tmp_path / "cohort.csv", index=False)
    sites = []
    for index in range(2):
        sites.append(tmp_path / f"H{index}.csv")
        rows.iloc[index * 300:(index + 1) * 300].to_csv(sites[-1], index=False)
    rows.iloc[600:].to_csv(tmp_path / "held_out.csv", index=False)
    return Inputs(tmp_path / "cohort.csv", tuple(sites), tmp_path / "held_out.csv")


def simulate(inputs: Inputs, out: Path, *args: str, seeded: bool = True, local_report: bool = False,
             releases: int = 1, interim: bool = False) -> Output:
    """``fedsyn simulate`` through the real command line; its ``releases`` (main, sweep arms) and
    ``interim`` ones, each beside its release (its README and its files' times would date each
    stretch of rounds inside the final one's signed bundle: helper-99 M1)."""
    go_ahead = ("--yes",) if _has_option("simulate", "yes") else ()  # a tiny run's plan may be red: run it anyway
    printed = _cli("simulate", "--schema", demo_schema_path(), *TINY_RUN, *args,
                   *(("--seed", SEED) if seeded else ()), *go_ahead, "--out", out)
    secrets = Secrets()
    if seeded:
        secrets.add_number("the seed", SEED)
        nonce = re.search(r"--stream-nonce ([0-9a-f]{32})", printed.replace("\n", ""))
        if _has_option("simulate", "stream_nonce"):  # versions that draw a fresh stream per seeded simulation
            assert nonce, printed
            secrets.add_nonce("the simulation's stream nonce", nonce.group(1))
    assert site_secrets(out, secrets, seeded) >= 2
    key_secrets(out / "keys", secrets)
    published = [out / "release", *sorted(out.glob("sweep/*/release"))]
    assert len(published) == releases and all(folder.is_dir() for folder in published), published
    interim_releases = sorted(out.glob("release.round-*"))
    assert all((folder / "run_config.json").is_file() for folder in interim_releases)
    assert bool(interim_releases) is interim
    published += interim_releases
    return Output(published, RELEASE_KEYS, secrets, seeded, out / "local-report" if local_report else None)


def _has_option(command: str, option: str) -> bool:
    """Whether ``fedsyn COMMAND`` has ``option`` (a parameter name): the scan passes options
    that only keep a tiny run quick or let it through, and runs on versions with or without them."""
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    return any(param.name == option for param in params)


def _fit_holds_out() -> bool:
    """Whether ``fedsyn fit`` holds rows out for a local report (``--hold-out``)."""
    return _has_option("fit", "hold_out")


def fit(inputs: Inputs, out: Path, seeded: bool = True, report: bool = False) -> Output:
    """``fedsyn fit``; its stream nonce is printed on the terminal and must be in no file. With
    ``report`` (where fit makes one) its local report is checked too, else none is made."""
    report = report and _fit_holds_out()
    printed = _cli("fit", inputs.cohort, "--schema", demo_schema_path(), "--epochs", "0.2", "--rows", "50",
                   *(("--seed", SEED) if seeded else ()), *(() if report or not _fit_holds_out() else
                                                            ("--hold-out", "0")), "--out", out)
    secrets = Secrets()
    if seeded:
        secrets.add_number("the seed", SEED)
        nonce = re.search(r"--stream-nonce ([0-9a-f]{32})", printed.replace("\n", ""))
        assert nonce, printed
        secrets.add_nonce("the fit's stream nonce", nonce.group(1))
    return Output([out / "release"], FIT_KEYS, secrets, seeded, out / "local-report" if report else None)


def deployment(inputs: Inputs, out: Path, seeded: bool = True) -> Output:
    """A coordinator's release over a grid of sites (what ``fedsyn server`` runs), each site
    with its own policy and ledger."""
    schema = Schema.load(demo_schema_path())
    tables = split_table(read_table(inputs.cohort, schema), 3, np.random.default_rng(0))
    plan = prepare_sites(tables, demo_schema_path(), out / "sites", epsilon=1.0, delta=1e-5,
                         seed=SEED if seeded else None)
    run_in_process(plan, schema, out, SETTINGS.model_copy(update={"seed": SEED if seeded else None}))
    secrets = Secrets()
    if seeded:
        secrets.add_number("the seed", SEED)
    assert site_secrets(out, secrets, seeded) == 3
    return Output([out / "release"], RELEASE_KEYS, secrets, seeded)


Job = Callable[[Inputs, Path], Output]
LIGHT: dict[str, Job] = {
    "simulate --sites --held-out": lambda inputs, out: simulate(
        inputs, out, *(f"--sites={p}" for p in inputs.sites), f"--held-out={inputs.held_out}", local_report=True),
    "fit": fit,
}
FULL: dict[str, Job] = {
    "simulate --data --split 3 --sweep-epsilon": lambda inputs, out: simulate(
        inputs, out, "--data", str(inputs.cohort), "--split", "3", "--sweep-epsilon", "0.5", local_report=True,
        releases=2),
    "simulate --sites --held-out --release-every 1": lambda inputs, out: simulate(
        inputs, out, *(f"--sites={p}" for p in inputs.sites), f"--held-out={inputs.held_out}", "--rounds", "2",
        "--release-every", "1", local_report=True, interim=True),
    "simulate --sites, unseeded": lambda inputs, out: simulate(
        inputs, out, *(f"--sites={p}" for p in inputs.sites), seeded=False),
    "fit with its local report": lambda inputs, out: fit(inputs, out, report=True),
    "fit, unseeded": lambda inputs, out: fit(inputs, out, seeded=False),
    "deployment": deployment,
    "deployment, unseeded": lambda inputs, out: deployment(inputs, out, seeded=False),
}


@pytest.mark.parametrize("job", LIGHT.values(), ids=LIGHT.keys())
def test_a_published_output_holds_no_secret_and_only_declared_fields(inputs: Inputs, tmp_path: Path, job: Job):
    check_output(job(inputs, tmp_path / "out"))


@pytest.mark.adversary
@pytest.mark.parametrize("job", FULL.values(), ids=FULL.keys())
def test_every_kind_of_published_output_holds_no_secret_and_only_declared_fields(inputs: Inputs, tmp_path: Path,
                                                                                 job: Job):
    check_output(job(inputs, tmp_path / "out"))


# -- the scanner has teeth -------------------------------------------------------------------------

def test_the_scanner_finds_a_planted_nonce_an_undeclared_field_and_a_stray_file(inputs: Inputs, tmp_path: Path):
    output = LIGHT["simulate --sites --held-out"](inputs, tmp_path / "out")
    release = output.published[0]
    nonce = json.loads(next(tmp_path.glob("out/sites/site-0*/ledger.json")).read_text())["stream_nonce"]
    config = json.loads((release / "run_config.json").read_text())
    plants: list[Callable[[], None]] = [
        lambda: (release / "README.md").write_text(f"made with nonce {nonce.upper()}\n"),
        lambda: (release / "run_config.json").write_text(json.dumps({**config, "settings": {
            **config["settings"], "debug": {"rng_state": 1}}})),
        lambda: (release / "trace.log").write_text("nothing secret\n"),
        lambda: (release / "run_config.json").write_text(json.dumps({**config, "seed_hint": str(SEED)})),
    ]
    originals = {p: p.read_bytes() for p in release.iterdir() if p.is_file()}
    for plant, found in zip(plants, ("stream nonce", "debug.rng_state", "trace.log", "the seed")):
        plant()
        with pytest.raises(AssertionError, match=re.escape(found)):
            check_output(output)
        for path in release.iterdir():
            if path not in originals:
                path.unlink()
        for path, data in originals.items():
            path.write_bytes(data)
    check_output(output)
    assert output.local_report is not None
    settings = output.local_report / "report.json"
    report = settings.read_text()
    settings.write_text(json.dumps({**json.loads(report), "settings": {"seed": SEED}}))
    with pytest.raises(AssertionError, match="the seed"):
        check_output(output)
    settings.write_text(report)
