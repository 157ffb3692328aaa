"""From what a researcher asks for to a simulation ready to run: ``prepare(SimulationRequest(...))``.

``fedsyn simulate`` parses its options into a :class:`SimulationRequest`, calls :func:`prepare`
and prints what comes back; a notebook can do the same and pass ``prepared.simulation`` to
:func:`fedsyn.simulations.workflow.simulate`. Everything is checked here, before any simulated
site exists or spends anything: the combination of inputs, the researcher's own files (read and
validated against the schema before torch and Flower load, so a mistyped path is answered at
once), the split, the settings of every budget and a delta every site would accept. A refusal
is a :class:`~fedsyn.errors.ConfigurationError` whose message says what to change.

The row counts read here are the researcher's own, on this machine: they reach the plan and the
warnings, which only this researcher sees, and the release only as declared public facts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import numpy as np
import pandas as pd

from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema, SchemaError
from fedsyn.data.tables import DataFileError, read_table
from fedsyn.data.validation import OutOfDomainRecords, RecordHandling, screen_records
from fedsyn.errors import ConfigurationError, did_you_mean, public_name
from fedsyn.privacy.budget import delta_fits, is_budget, not_a_budget
from fedsyn.privacy.randomness import is_stream_nonce
from fedsyn.server.settings import FEDERATED_GAN, FEDERATED_LOCAL_STEPS, FEDERATED_ROUNDS, FederationSettings

if TYPE_CHECKING:  # both load torch and Flower: imported once the researcher's files are read
    from fedsyn.model.config import GANConfig
    from fedsyn.simulations.plan import SitePlan, WidthPlan
    from fedsyn.simulations.workflow import Simulation

RARE_CLASS_ROWS = 20  # fewer rows of an outcome class at one site: its noisy tables there are mostly noise
WEAK_EPSILON = 10.0  # above this per site, a formal guarantee is rarely acceptable for patient data


@dataclass(frozen=True)
class SimulationRequest:
    """One simulated federation as the researcher asks for it: their files and settings, unchecked.
    Without ``data`` or ``sites``: the embedded demo, split into ``split`` hospitals."""

    sites: tuple[Path, ...] = ()  # one extract per hospital
    held_out: Path | None = None  # real rows no site trains on, for the local report
    data: Path | None = None  # one table to split into ``split`` hospitals
    hold_out: float | None = None  # with ``data`` and no ``held_out``: the share kept for the report (0.3)
    split: int | None = None  # default 3; with ``site_column``, one hospital per value of that column
    skew: str | None = None  # split sorted by this column (non-IID)
    dirichlet: float | None = None  # label skew with Dirichlet(alpha)
    schema: Path | None = None  # required with ``data`` or ``sites``
    epsilon: float = FederationSettings.model_fields["epsilon"].default
    delta: float = FederationSettings.model_fields["delta"].default
    rounds: int = FEDERATED_ROUNDS
    local_steps: int = FEDERATED_LOCAL_STEPS
    batch_size: int = FEDERATED_GAN.batch_size
    learning_rate: float = FEDERATED_GAN.generator_lr
    generator_ema: float = FEDERATED_GAN.generator_ema
    numbers_as_measured: bool = FEDERATED_GAN.numbers_as_measured
    marginals_share: float = FederationSettings.model_fields["marginals_share"].default
    pairs_share: float = FederationSettings.model_fields["pairs_share"].default
    pairs_asked: tuple[str, ...] = ()
    matching_weight: float = FEDERATED_GAN.matching_weight
    table_steps: int = FederationSettings.model_fields["table_steps"].default
    rows: int = 0  # synthetic rows to release; 0: as many as all sites' training rows
    out: Path = Path("fedsyn-simulation")
    seed: int | None = None  # secret; None: operating-system entropy
    stream_nonce: str | None = None  # with seed: repeat an earlier seeded simulation (the nonce it printed)
    device: str = "cpu"
    release_every: int = 0
    site_noise_multiplier: float | None = None
    site_clipping_norm: float = FederationSettings.model_fields["site_clipping_norm"].default
    transport_dtype: str = FederationSettings.model_fields["transport_dtype"].default
    aggregation: str = FederationSettings.model_fields["aggregation"].default
    max_update_norm: float | None = None
    engine: str = "inprocess"
    compare: bool = False
    sweep: tuple[float, ...] = ()  # more budgets: one more federation each, for the privacy-utility curve
    drop_rule_violations: bool = False
    allow_unreviewed_schema: bool = False
    site_column: str | None = None
    out_of_domain: RecordHandling = "refuse"  # records the schema does not allow: as a site's policy handles them

    @property
    def input_files(self) -> tuple[Path, ...]:
        """The researcher's own files this request reads (kept out of ``out``'s overwrite)."""
        named = (*self.sites, self.held_out, self.data, self.schema)
        return tuple(path for path in named if path is not None)

    def __post_init__(self) -> None:
        """Inputs that cannot go together are refused before any file is read."""
        if (self.data or self.sites) and self.schema is None:
            raise ConfigurationError(
                "--data and --sites need --schema: the schema of your own table (the demo's schema fits only the "
                "demo). Draft one with `fedsyn schema draft DATA.csv` and review it.")
        if self.held_out is not None and not (self.sites or self.data):
            raise ConfigurationError("--held-out goes with --data or --sites: the demo's held-out rows are split "
                                     "from it for you")
        if self.hold_out is not None and self.held_out is not None:
            raise ConfigurationError("--hold-out is the share of each hospital's rows kept out of training; with "
                                     "--held-out FILE the held-out rows are that file's")
        if self.hold_out is not None and not 0 <= self.hold_out < 1:
            raise ConfigurationError(f"--hold-out {self.hold_out}: a share of the rows, at least 0 and below 1 "
                                     "(0.3 is the default; 0: no held-out rows and no local report)")
        if self.held_out is not None and self.data is not None and self.held_out.resolve() == self.data.resolve():
            raise ConfigurationError("--held-out is --data itself: a report on rows the sites trained on would "
                                     "flatter the release. Give rows no site trains on, or leave --held-out out")
        if self.out_of_domain not in get_args(RecordHandling):
            raise ConfigurationError(f"--out-of-domain {self.out_of_domain}: choose "
                                     f"{', '.join(get_args(RecordHandling)[:-1])} or {get_args(RecordHandling)[-1]}")
        if self.data and self.sites:
            raise ConfigurationError("give either --data (one table to split) or --sites (one file per hospital), "
                                     "not both")
        if self.skew and self.dirichlet is not None:
            raise ConfigurationError("--skew and --dirichlet are two ways to split; choose one")
        if self.site_column and (self.data or not self.sites) and (self.split or self.skew or self.dirichlet):
            raise ConfigurationError(f"--site-column {self.site_column} already splits the table: one hospital per "
                                     "value of that column. Drop --split, --skew and --dirichlet")
        if self.dirichlet is not None and not self.dirichlet > 0:
            raise ConfigurationError(f"--dirichlet {self.dirichlet}: the concentration must be positive (0.1 very "
                                     "skewed, 10 nearly IID)")
        if self.stream_nonce is not None and (self.seed is None or not is_stream_nonce(self.stream_nonce)):
            raise ConfigurationError("--stream-nonce repeats an earlier seeded simulation: give it with that run's "
                                     "--seed, as the 32 hex digits the run printed")
        if self.engine not in ("inprocess", "flower"):
            raise ConfigurationError(f"--engine {self.engine}: choose inprocess or flower")
        for budget in (self.epsilon, *self.sweep):
            if not is_budget(budget):
                raise ConfigurationError(not_a_budget(budget))

    @property
    def schema_path(self) -> Path:
        return self.schema or demo_schema_path()


@dataclass(frozen=True)
class PreparedSimulation:
    """A checked request: the :class:`Simulation` to run, and what to tell the researcher first."""

    simulation: Simulation
    site_names: tuple[str, ...]  # each hospital's name in reports: its file's stem, or site-K
    warnings: tuple[str, ...] = ()  # a weak budget, outcome classes too rare at a site
    site_plans: tuple[SitePlan, ...] = field(default=())  # what each site's budget buys
    width_plans: tuple[WidthPlan, ...] = field(default=())  # what the table's width costs each site

    @property
    def usable(self) -> bool:
        """False when some site's round-0 tables cannot resolve most columns (the plan is red)."""
        return all(width.level != "red" for width in self.width_plans)


def prepare(request: SimulationRequest) -> PreparedSimulation:
    """Read, check and split the researcher's rows and build every setting of the simulation."""
    loaded = _load(request)
    schema, tables, named = loaded.schema, loaded.tables, loaded.names
    if loaded.test is None and (request.compare or request.sweep):
        raise ConfigurationError("--compare and --sweep-epsilon score releases on held-out rows, and this run has "
                                 "none: give --held-out FILE (or, with --data, a --hold-out share above 0)")
    from fedsyn.model.config import GANConfig
    from fedsyn.privacy.marginals import tables_weight
    from fedsyn.privacy.pairs import asked_pairs
    from fedsyn.privacy.randomness import fresh_nonce
    from fedsyn.simulations.plan import plan_site, plan_width
    from fedsyn.simulations.run import default_sample_rate
    from fedsyn.simulations.workflow import Simulation

    try:
        asked_pairs(schema, list(request.pairs_asked), request.site_column)
    except ValueError as exc:
        raise ConfigurationError(f"--pairs-asked: {exc}") from None
    try:
        config = GANConfig(batch_size=request.batch_size, generator_lr=request.learning_rate,
                           discriminator_lr=request.learning_rate, generator_ema=request.generator_ema,
                           matching_weight=request.matching_weight, numbers_as_measured=request.numbers_as_measured)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    sample_rate, public_facts = default_sample_rate(tables, request.batch_size)
    if not request.rows:  # the default release size is every site's rows together: that total is published
        public_facts["total_site_rows"] = {
            "value": sum(len(t) for t in tables),
            "why_public": "--rows 0 releases as many synthetic rows as the sites hold; with smallest_site_rows, "
                          "every site's count follows when there are two sites (or the others are equal)"}
    if named and request.site_column:  # each hospital is named after its value: which values hold rows is said
        public_facts["site_names"] = {
            "value": list(named),
            "why_public": f"each simulated hospital is named after the one value it holds in --site-column "
                          f"{request.site_column} (a file holding several: after its file) in this report and the "
                          f"release's README; with --data, one hospital per value holding at least {MIN_SITE_ROWS} "
                          "rows"}
    if request.sweep:  # every release names the others drawn from the same rows, and what all of them spend
        budgets = [request.epsilon, *request.sweep]
        public_facts["releases_from_the_same_rows"] = {
            "value": {"epsilon_per_release": budgets, "epsilon_if_all_published_at_most": sum(budgets),
                      "delta_if_all_published_at_most": request.delta * len(budgets)},
            "why_public": "this simulation writes one release per budget (the main run and each --sweep-epsilon "
                          "arm), all from the same sites' rows, each arm's sites with a ledger of their own: "
                          "publishing several spends up to their sum (basic composition), not any one's epsilon"}
    settings = _settings(request, request.epsilon, sample_rate, len(tables), config)
    for budget in request.sweep:  # every budget is checked before any simulated site spends anything
        _settings(request, budget, sample_rate, len(tables), config)
    names = named or tuple(f"site-{index}" for index in range(len(tables)))
    _check_site_delta(request.delta, tables, names)
    simulation = Simulation(
        tables=tables, schema=schema, schema_path=request.schema_path, settings=settings, out=request.out,
        rows=request.rows or sum(len(t) for t in tables), train=loaded.train, test=loaded.test, sweep=request.sweep,
        release_every=request.release_every, drop_rule_violations=request.drop_rule_violations,
        engine=request.engine, device=request.device, compare=request.compare, public_facts=public_facts,
        site_names=named,
        # A fresh stream for every seeded simulation unless it repeats one: never two releases of one stream.
        stream_nonce=None if request.seed is None else fresh_nonce(request.stream_nonce))
    weight = tables_weight(schema)
    return PreparedSimulation(
        simulation, names,
        (*loaded.notes, *_weak_budget(request), *_unreviewed_schema(schema),
         *_rare_outcome_classes(tables, schema, names)),
        tuple(plan_site(name, len(table), weight, settings) for name, table in zip(names, tables)),
        tuple(plan_width(name, len(table), schema, settings, _rarest_class_rows(table, schema))
              for name, table in zip(names, tables)))


def _site_names(sites: tuple[Path, ...], tables: list[pd.DataFrame], site_column: str | None) -> tuple[str, ...]:
    """Each hospital named after the one value its extract holds in ``site_column`` (the names the
    release's site column uses), a file holding several after its file name (H0.csv: H0), when
    those are distinct; else every one after its file name (a newcomer's one file of two
    hospitals renamed the other four after their files). Each as the coordinator shows a name
    (:func:`~fedsyn.errors.public_name`: a '|' read '?'), which a site's policy requires."""
    stems = tuple(public_name(path.stem) or f"site-{index}" for index, path in enumerate(sites))
    if site_column is not None:
        values = [table[site_column].dropna().astype(str).unique() for table in tables]
        names = tuple(public_name(held[0]) or stem if len(held) == 1 else stem for held, stem in zip(values, stems))
        if len(set(names)) == len(names):
            return names
    return stems if len(set(stems)) == len(stems) else ()


@dataclass(frozen=True)
class _Loaded:
    """The researcher's rows, read and screened: one table per hospital and the held-out rows."""

    schema: Schema
    tables: list[pd.DataFrame]
    train: pd.DataFrame  # every site's rows together
    test: pd.DataFrame | None
    names: tuple[str, ...]  # the hospitals' names (empty: numbered)
    notes: tuple[str, ...]  # what screening dropped, clamped or noted (bounds at extremes), file by file


DEFAULT_HOLD_OUT = 0.3  # the share of --data kept for the local report when no --held-out file is given


def _load(request: SimulationRequest) -> _Loaded:
    """Read, screen and split the researcher's files (or the demo)."""
    notes: list[str] = []
    try:
        schema = Schema.load(request.schema_path)
        schema.require_reviewed(request.allow_unreviewed_schema)  # before any plan is printed or file read
        check_site_column(schema, request.site_column)
        read = [_screened(path, schema, request.schema_path, request.out_of_domain, notes)
                for path in (request.sites or (request.data or demo_data_path(),))]
        test = None if request.held_out is None \
            else _screened(request.held_out, schema, request.schema_path, request.out_of_domain, notes)
    except (SchemaError, DataFileError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from exc
    share = 0.0 if test is not None else DEFAULT_HOLD_OUT if request.hold_out is None else request.hold_out
    if request.sites:
        # Each file keeps its share for the report, as a --site-column split does: with none kept, a
        # newcomer with four hospitals' files learnt only after the budget was spent that no verdict
        # would come, and built a held-out file of four spellings by hand (helper-119 #3).
        names = _site_names(request.sites, read, request.site_column)
        try:
            tables, held = _held_out_of_each(read, names or tuple(str(path) for path in request.sites), schema,
                                             share, request.seed, "--sites")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        return _Loaded(schema, tables, pd.concat(tables, ignore_index=True), test if held is None else held, names,
                       tuple(notes))
    from fedsyn.simulations.split import held_out_split, split_table

    whole = read[0]
    rng = np.random.default_rng(request.seed)  # the split and the held-out rows only
    try:
        if request.site_column:
            tables, held, names = _split_by_site(whole, schema, request.site_column, share, request.seed)
            return _Loaded(schema, tables, pd.concat(tables, ignore_index=True),
                           test if held is None else held, names, tuple(notes))
        train = whole
        if share > 0:
            train, test = held_out_split(whole, share, schema.outcome, request.seed)
        tables = split_table(train, request.split or 3, rng, skew=request.skew, dirichlet=request.dirichlet,
                             label=schema.outcome)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    return _Loaded(schema, tables, train, test, (), tuple(notes))


def _screened(path: Path, schema: Schema, schema_path: Path, handling: RecordHandling, notes: list[str]
              ) -> pd.DataFrame:
    """``path``'s rows with the records the schema does not allow handled as ``handling`` says, as
    a site's policy ``out_of_domain`` would (what was changed is noted, by count: the researcher's
    own rows on their own machine). A refusal says how to drop them instead."""
    try:
        screening = screen_records(read_table(path, schema), schema, handling, source=str(path))
    except OutOfDomainRecords as exc:
        raise ConfigurationError(f"{exc}\nFix those records, or pass --out-of-domain drop to leave them out (clamp: "
                                 "move numbers outside the bounds onto them; blank: empty the bad cells of columns "
                                 "that may be empty), as a hospital's site does with its policy's out_of_domain") \
            from exc
    if screening.problems:
        notes.append(f"{path}: records the schema does not allow: {screening.changed} (--out-of-domain {handling}); "
                     f"`fedsyn validate {path} --schema {schema_path}` names them")
    notes.extend(f"{path}: {note.describe()}" for note in screening.notes)
    return screening.frame


def check_site_column(schema: Schema, name: str | None) -> None:
    """A ``--site-column`` names a categorical column of the schema other than the outcome."""
    if name is None:
        return
    if name not in schema.column_names:
        raise ConfigurationError(f"--site-column {name}: the schema has no such column"
                                 f"{did_you_mean(name, schema.column_names)}")
    if not schema.column(name).is_categorical or name == schema.outcome:
        raise ConfigurationError(f"--site-column {name}: the hospital column must be a categorical column of the "
                                 "schema other than the outcome")


MIN_SITE_ROWS = 20  # a hospital of --site-column: fewer rows cannot be split into training and held-out rows


def _split_by_site(whole: pd.DataFrame, schema: Schema, column: str, hold_out: float, seed: int | None
                   ) -> tuple[list[pd.DataFrame], pd.DataFrame | None, tuple[str, ...]]:
    """One hospital per value of ``column`` (named after it), each holding out ``hold_out`` of its
    rows for the local report (stratified by the outcome where every class allows it; none at 0)."""

    if whole[column].isna().any():
        raise ValueError(f"--site-column {column}: some rows name no hospital; fill the column in or drop those rows "
                         "(every row belongs to one hospital)")
    groups = sorted(whole.groupby(whole[column].astype(str)), key=lambda item: item[0])
    for value, rows in groups:
        if len(rows) < MIN_SITE_ROWS:
            raise ValueError(f"--site-column {column}: hospital '{value}' has fewer than {MIN_SITE_ROWS} rows, too "
                             "few to train on and hold out from; merge it with another or drop it")  # no small count
    if len(groups) < 2:
        raise ValueError(f"--site-column {column} holds {len(groups)} hospital(s) in this table: a federation "
                         "needs at least 2")
    trains, test = _held_out_of_each([rows for _, rows in groups], tuple(value for value, _ in groups), schema,
                                     hold_out, seed, f"--site-column {column}: hospital")
    names = tuple(public_name(value) or f"site-{index}" for index, (value, _) in enumerate(groups))
    return trains, test, names  # named as a site's policy takes them


def _held_out_of_each(tables: list[pd.DataFrame], names: tuple[str, ...], schema: Schema, hold_out: float,
                      seed: int | None, what: str) -> tuple[list[pd.DataFrame], pd.DataFrame | None]:
    """Each hospital's rows less ``hold_out`` of them (stratified by the outcome where every class
    allows it), and those held-out rows together for the local report (None at 0): every hospital
    is in the report as it is in the release."""
    from fedsyn.simulations.split import held_out_split

    if hold_out <= 0:
        return [table.reset_index(drop=True) for table in tables], None
    trains: list[pd.DataFrame] = []
    tests: list[pd.DataFrame] = []
    for name, rows in zip(names, tables):
        try:
            train, test = held_out_split(rows, hold_out, schema.outcome, seed, stratify="where_possible")
        except ValueError as exc:
            raise ValueError(f"{what} '{name}': {exc}") from None
        trains.append(train.reset_index(drop=True))
        tests.append(test)
    return trains, pd.concat(tests, ignore_index=True)


def _settings(request: SimulationRequest, epsilon: float, sample_rate: float, sites: int, config: GANConfig
              ) -> FederationSettings:
    """The federation's settings at ``epsilon`` (the main budget or one of the sweep's)."""
    return FederationSettings.checked(  # a ConfigurationError that names the setting
        rounds=request.rounds, local_steps=request.local_steps, epsilon=epsilon, delta=request.delta,
        sample_rate=sample_rate, marginals_share=request.marginals_share, pairs_share=request.pairs_share,
        pairs_asked=list(request.pairs_asked),
        table_steps=request.table_steps, gan_config=config, seed=request.seed, min_sites=max(1, sites // 2 + 1),
        site_column=request.site_column,
        site_noise_multiplier=request.site_noise_multiplier, site_clipping_norm=request.site_clipping_norm,
        transport_dtype=request.transport_dtype, aggregation=request.aggregation,
        max_update_norm=request.max_update_norm, allow_unreviewed_schema=request.allow_unreviewed_schema)


def _check_site_delta(delta: float, tables: list[pd.DataFrame], names: tuple[str, ...]) -> None:
    """Refuse a delta the simulated sites would refuse, before any of them is set up."""
    from fedsyn.client.policy import SitePolicy

    limit = next(rule.lt for rule in SitePolicy.model_fields["delta"].metadata if getattr(rule, "lt", None))
    if not delta < limit:
        raise ConfigurationError(f"--delta {delta:g}: a site accepts a delta below {limit:g} (delta is the chance "
                                 "that the guarantee fails outright; 1e-5 or less is usual)")
    rows, name = min((len(table), name) for table, name in zip(tables, names))
    if not delta_fits(delta, rows):
        raise ConfigurationError(
            f"--delta {delta:g} is not below 1/rows of every site: {name} has {rows} rows (1/rows = {1 / rows:.2g}). "
            f"Choose a smaller delta, e.g. {10 ** math.floor(math.log10(0.1 / rows)):g}")


def _weak_budget(request: SimulationRequest) -> list[str]:
    largest = max([request.epsilon, *request.sweep])
    if largest <= WEAK_EPSILON:
        return []
    return [f"epsilon up to {largest:g} per site gives little protection: a formal guarantee this weak is rarely "
            "acceptable for patient data"]


def _unreviewed_schema(schema: Schema) -> list[str]:
    """Columns run with --allow-unreviewed-schema: their drafted bounds and categories, read off the
    rows without DP, go into the release's schema.json as they are."""
    names = schema.unreviewed_columns
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [f"{len(names)} column(s) still need review ({shown}): their bounds and categories, if read off your "
            "rows by `schema draft`, are published as they are in the release's schema.json, without DP (listed in "
            "its privacy report). Replace them with public knowledge and set needs_review to false"]


def _rarest_class_rows(table: pd.DataFrame, schema: Schema) -> int | None:
    """The rows of the outcome's rarest class at a site, among those with at least
    ``RARE_CLASS_ROWS`` (a rarer one is named by :func:`_rare_outcome_classes`, with its own
    advice); None without an outcome or such a class. For the plan, on this terminal only."""
    if schema.outcome is None:
        return None
    counts = [int((table[schema.outcome] == category).sum()) for category in schema.column(schema.outcome).categories
              or []]
    return min((count for count in counts if count >= RARE_CLASS_ROWS), default=None)


def _rare_outcome_classes(tables: list[pd.DataFrame], schema: Schema, names: tuple[str, ...]) -> list[str]:
    """An outcome class with few rows at a site is mostly noise in that site's tables. Said without
    the counts: a terminal's text ends up in CI logs and bug reports, and the exact number of
    patients of a class at a hospital is a small-cell count."""
    if schema.outcome is None:
        return []
    said = []
    for category in schema.column(schema.outcome).categories or []:
        few = [name for table, name in zip(tables, names)
               if int((table[schema.outcome] == category).sum()) < RARE_CLASS_ROWS]
        if few:
            said.append(f"outcome class '{category}' has fewer than {RARE_CLASS_ROWS} rows at {', '.join(few)}: its "
                        "tables there will be mostly noise. Use fewer, larger sites (a smaller --split, or hospitals "
                        "merged in the site column), more rows, or merge rare classes in the schema")
    return said
