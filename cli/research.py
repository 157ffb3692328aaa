"""The researcher's commands: ``fedsyn fit``, ``fedsyn simulate`` and ``fedsyn evaluate``."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fedsyn.cli.output import (
    EXIT_INTERRUPTED,
    check_out_folder,
    console,
    fail,
    print_verdict,
    program,
    results,
    setup_logging,
    time_left,
)
from fedsyn.data.schema import Schema, SchemaError
from fedsyn.data.tables import DataFileError, read_table, write_table
from fedsyn.data.validation import DataValidationError, require_valid, schema_columns
from fedsyn.errors import ConfigurationError
from fedsyn.server.settings import FEDERATED_GAN, FEDERATED_LOCAL_STEPS, FEDERATED_ROUNDS, FederationSettings
from fedsyn.simulations.request import DEFAULT_HOLD_OUT

if TYPE_CHECKING:
    from fedsyn.model.gan import DPTabularGAN
    from fedsyn.server.record import RoundSummary, SiteStatus
    from fedsyn.simulations.plan import SitePlan, WidthPlan
    from fedsyn.simulations.request import PreparedSimulation
    from fedsyn.simulations.workflow import SimulationResult

COLOUR = {"green": "green", "amber": "yellow", "red": "red"}  # a plan's outlook, as rich colours
RULE_DROP_WARN = 0.05  # above this share of rows replaced for breaking a rule, the release's shares move


NO_HELD_OUT = ("no held-out real rows (--hold-out 0), so no local validation report or verdict: give --held-out FILE, "
               "or keep the default --hold-out 0.3")

def fit(
    data: Annotated[Path, typer.Argument(help="the extract to train on (CSV or Parquet)")],
    schema: Annotated[Path, typer.Option("--schema", "-s", help="its public schema (JSON)")],
    epsilon: Annotated[float, typer.Option(help="privacy budget of the whole fit")] = 1.0,
    delta: Annotated[float, typer.Option(help="DP delta; must be below 1/rows")] = 1e-5,
    epochs: Annotated[float, typer.Option(help="planned passes over the data (stops earlier at the budget)")] = 30.0,
    rows: Annotated[int, typer.Option(help="synthetic rows to write; 0: as many as the rows trained on")] = 0,
    out: Annotated[Path, typer.Option(help="output folder: release/ (model.pt, synthetic.csv, privacy_report.json: "
                                           "what may be shared) and local-report/ (computed from real rows, with the "
                                           "held-out rows: keep it local, never publish it)")
                   ] = Path("fedsyn-model"),
    overwrite: Annotated[bool, typer.Option(
        help="replace what an earlier fit left in --out (its model, synthetic rows, privacy report and local "
             "report); a folder holding other files, or this fit's inputs, is never emptied")] = False,
    device: Annotated[str, typer.Option(help="torch device, e.g. cuda")] = "cpu",
    seed: Annotated[int | None, typer.Option(help="secret seed: with the stream nonce the fit prints, repeats it "
                                             "exactly (never saved in the output; default: OS entropy)")] = None,
    stream_nonce: Annotated[str | None, typer.Option(help="repeat an earlier seeded fit: the nonce it printed, on "
                                                          "the same data and settings")
                            ] = None,
    allow_unreviewed_schema: Annotated[bool, typer.Option(
        help="train even though the schema has needs_review columns (recorded as a leak)")] = False,
    held_out: Annotated[Path | None, typer.Option(
        help="real rows the fit never sees, for the local validation report and its verdict (then every row of "
             "DATA is trained on)")] = None,
    hold_out: Annotated[float, typer.Option(
        min=0.0, max=0.9, help="without --held-out: the share of DATA kept out of training (stratified by the "
                               "outcome, as simulate --data does) for the local validation report and its verdict; "
                               "0: train on every row, no report")] = DEFAULT_HOLD_OUT,
    fail_below: Annotated[float | None, typer.Option(
        help="exit with code 3 when the local report's verdict score (0-1) is below this, for pipelines")] = None,
) -> None:
    """Fit a DP tabular GAN on one site's extract; write the model and synthetic rows, and a local
    validation report with its verdict against real rows the fit never saw."""
    from fedsyn.privacy.budget import is_budget, not_a_budget

    if not is_budget(epsilon):  # before torch loads and the extract is read (a newcomer waited 16 s for it)
        fail(not_a_budget(epsilon))
    from fedsyn.files import make_run_folder
    from fedsyn.model.gan import DPTabularGAN
    from fedsyn.simulations.workflow import FIT_FOLDER, check_out_folder_replaceable, clear_out_folder

    check_out_folder(out)
    inputs = tuple(path for path in (data, schema, held_out) if path is not None)
    try:  # refused before any row is read; an earlier fit is removed only once this one succeeded
        check_out_folder_replaceable(out, overwrite, inputs, FIT_FOLDER)
        contract = Schema.load(schema)
        frame = read_table(data, contract)
        require_valid(frame, contract, source=str(data))  # before any split: problems named by the file's lines
        frame = schema_columns(frame, contract)  # a column the schema does not list is never used
        test = None
        if held_out is not None:
            test = read_table(held_out, contract)
            require_valid(test, contract, source=str(held_out))
            test = schema_columns(test, contract)
    except (ConfigurationError, SchemaError, DataFileError, DataValidationError, ValueError) as exc:
        fail(str(exc))
    train = frame
    if held_out is None and hold_out > 0:
        from fedsyn.simulations.split import held_out_split

        try:
            train, test = held_out_split(frame, hold_out, contract.outcome, seed)
        except ValueError as exc:
            fail(f"{data}: {exc}")
    if test is not None and contract.outcome and test[contract.outcome].nunique() < 2:
        fail(f"the held-out rows hold one value of the outcome '{contract.outcome}' only: the report's utility "
             "checks need both. Give more held-out rows (--held-out FILE or a larger --hold-out)")
    try:
        model = DPTabularGAN(contract, epsilon=epsilon, delta=delta, epochs=epochs, device=device, seed=seed,
                             stream_nonce=stream_nonce, allow_unreviewed_schema=allow_unreviewed_schema)
        _show_fit_plan(model, data.stem, len(train), out)
        with console.status("training (DP-SGD)...") as status:
            model.fit(train, on_step=lambda step, _: status.update(f"training step {step + 1}"))
    except (SchemaError, DataFileError, DataValidationError, ValueError) as exc:
        fail(str(exc))
    try:
        clear_out_folder(out, overwrite, inputs, FIT_FOLDER)
    except ConfigurationError as exc:  # the folder changed while the fit ran
        fail(str(exc))
    make_run_folder(out)
    FIT_FOLDER.mark(out)
    release = out / "release"  # apart from local-report/: sharing it never shares a held-out row
    release.mkdir()
    model.save(release / "model.pt")
    write_table(model.sample(rows or len(train)), release / "synthetic.csv")
    spent, spent_delta = model.privacy_spent()
    report = model.privacy_report(seeded=seed is not None)
    (release / "privacy_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if contract.unreviewed_columns:
        console.print(f"[yellow]bounds/categories of {contract.unreviewed_columns} were read off the data without DP; "
                      "recorded in privacy_report.json[/]")
    console.print(f"model.pt, synthetic.csv and privacy_report.json in {release}; epsilon spent {spent:.3f} "
                  f"at delta {spent_delta:g}")
    if seed is not None:  # the terminal only: neither value is in any file written above
        console.print(f"seeded fit: `--seed {seed} --stream-nonce {model.stream_nonce_}` repeats it exactly. Keep both "
                      "private: with them anyone can regenerate this fit's noise")
    if test is None:
        console.print(NO_HELD_OUT)
        return
    from fedsyn.evaluation.report import write_local_report

    local = out / "local-report"
    ledger = {**report, "max_epsilon_any_site": spent,
              "sites": [{"site": data.stem, "epsilon_cumulative": spent, "delta": spent_delta}]}
    settings = {"epsilon": epsilon, "delta": delta, "epochs": epochs, "seeded": seed is not None,
                "held_out": str(held_out) if held_out is not None else f"{hold_out:.0%} of the extract, stratified"}
    with console.status("validation report (fidelity, utility, privacy)..."):
        result = write_local_report(read_table(release / "synthetic.csv", contract), train, test, contract, local,
                                    ledger, seed or 0, settings=settings)
        write_table(test, local / "held_out.parquet")
    console.print(f"validation report (LOCAL: computed from real rows, not for release): {local / 'report.html'}",
                  soft_wrap=True)
    print_verdict(result["verdict"], fail_below)


def simulate(
    sites: Annotated[list[Path] | None, typer.Option("--sites", help="one extract per hospital")] = None,
    held_out: Annotated[Path | None, typer.Option(
        help="real rows no site trains on, for the local validation report and verdict (then every row of DATA "
             "or of the --sites files trains)")] = None,
    data: Annotated[Path | None, typer.Option(help="one table to split into --split hospitals")] = None,
    hold_out: Annotated[float | None, typer.Option(
        help="without --held-out: the share of the rows kept out of training (stratified by the outcome; with "
             "--sites or --site-column, at each hospital) for the local validation report (default 0.3; 0: train "
             "on every row, no report)")] = None,
    split: Annotated[int | None, typer.Option(
        help="how many hospitals to split --data into (default 3; with --site-column: one per value)", min=1)] = None,
    skew: Annotated[str | None, typer.Option(help="non-IID split sorted by this column")] = None,
    dirichlet: Annotated[float | None, typer.Option(help="label skew with Dirichlet(alpha)")] = None,
    schema: Annotated[Path | None, typer.Option(
        help="the public schema (JSON) of your data; required with --data or --sites")] = None,
    epsilon: Annotated[float, typer.Option(help="privacy budget (epsilon) each site spends in total")
                       ] = FederationSettings.model_fields["epsilon"].default,
    delta: Annotated[float, typer.Option(help="DP delta per site; must be below 1/rows of every site")
                     ] = FederationSettings.model_fields["delta"].default,
    rounds: Annotated[int, typer.Option(help="federated training rounds after the marginals round")
                      ] = FEDERATED_ROUNDS,
    local_steps: Annotated[int, typer.Option(help="DP-SGD steps each site runs per round")] = FEDERATED_LOCAL_STEPS,
    batch_size: Annotated[int, typer.Option(help="expected records per DP-SGD step at the smallest site")
                          ] = FEDERATED_GAN.batch_size,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate of generator and discriminator")
                             ] = FEDERATED_GAN.generator_lr,
    generator_ema: Annotated[float, typer.Option(help=(
        "per-step decay of the averaged generator that samples the release: 0.99 fits numeric columns "
        "better (KS of age 0.24 vs 0.37); the default keeps 5-site logistic-regression utility higher"))
    ] = FEDERATED_GAN.generator_ema,
    numbers_as_measured: Annotated[bool, typer.Option(
        "--numbers-as-measured/--numbers-as-generated", help=(
            "relate each numeric column to the others in the release only as the sites' noisy tables say: no "
            "invented relation, and the ones no table measured shrink (the choice for studying associations); "
            "--numbers-as-generated keeps what the generator drew: some relations learnt at a high epsilon, "
            "others made up at any"))
    ] = FEDERATED_GAN.numbers_as_measured,
    marginals_share: Annotated[float, typer.Option(help=(
        "share of each site's epsilon spent on round 0 (the noisy outcome tables, the votes and the pair "
        "tables; the rest on DP-SGD)"))
    ] = FederationSettings.model_fields["marginals_share"].default,
    pairs_share: Annotated[float, typer.Option(help=(
        "share of that round-0 release each site spends on pair tables of other columns the sites choose by DP "
        "votes "
        "(every question beyond the outcome rests on them); 0: outcome tables only"))
    ] = FederationSettings.model_fields["pairs_share"].default,
    pairs_asked: Annotated[str, typer.Option(help=(
        "pairs of columns your study needs measured, e.g. 'creatinine:urea,age:albumin': measured before any pair "
        "the sites vote for (public: they go into run_config.json)"))] = "",
    matching_weight: Annotated[float, typer.Option(help=(
        "weight of the generator's term that matches the noisy outcome tables (free post-processing); 0: off"))
    ] = FEDERATED_GAN.matching_weight,
    table_steps: Annotated[int, typer.Option(help=(
        "generator steps on the noisy tables alone before round 1 (free post-processing; what it traded: "
        "docs/benchmarks.md); 0: off"))
    ] = FederationSettings.model_fields["table_steps"].default,
    rows: Annotated[int, typer.Option(help="synthetic rows to release; 0: as many as all sites' training rows")
                    ] = 0,
    out: Annotated[Path, typer.Option(help="output folder: release/, local-report/, sites/, keys/")
                   ] = Path("fedsyn-simulation"),
    overwrite: Annotated[bool, typer.Option(
        help="replace what an earlier simulation left in --out (its simulated sites, ledgers and release); a "
             "folder holding other files, or this run's inputs, is never emptied")] = False,
    seed: Annotated[int | None, typer.Option(help="secret seed of the split and of every simulated site: with the "
                                                  "stream nonce the run prints, whoever holds it can repeat the run "
                                                  "and regenerate its noise. Never written into the release (which "
                                                  "says it was seeded); default: operating-system entropy")] = None,
    stream_nonce: Annotated[str | None, typer.Option(
        help="repeat an earlier seeded simulation exactly: the nonce it printed, on the same data, schema and "
             "settings (on any others the noise is unrelated). Never for a release you publish beside that one: "
             "two releases of one stream cancel each other's noise")] = None,
    device: Annotated[str, typer.Option(help="torch device for the sites' training, e.g. cuda")] = "cpu",
    release_every: Annotated[int, typer.Option(help="also write an interim release every K rounds")] = 0,
    site_noise_multiplier: Annotated[float | None, typer.Option(
        help="add site-level DP (Flower's server-side fixed clipping) with this noise multiplier, to the "
             "training updates only: round 0's per-site tables stay record-level")] = None,
    site_clipping_norm: Annotated[float, typer.Option(help="clipping norm of site-level DP")
                                  ] = FederationSettings.model_fields["site_clipping_norm"].default,
    transport_dtype: Annotated[str, typer.Option(help="float32, or float16 to halve the bytes sent")
                               ] = FederationSettings.model_fields["transport_dtype"].default,
    aggregation: Annotated[str, typer.Option(help="mean, or the robust median / trimmed-mean")
                           ] = FederationSettings.model_fields["aggregation"].default,
    max_update_norm: Annotated[float | None, typer.Option(
        help="quarantine a site's update that moves the model further than this")] = None,
    engine: Annotated[str, typer.Option(help="inprocess (fast) or flower (Ray simulation engine)")] = "inprocess",
    compare: Annotated[bool, typer.Option(
        help="also train each site alone and all rows pooled (centralised DP), and compare their TSTR")] = False,
    fail_below: Annotated[float | None, typer.Option(
        help="exit with code 3 when the local report's verdict score (0-1) is below this, for pipelines")] = None,
    sweep_epsilon: Annotated[str | None, typer.Option(
        help="comma-separated budgets, e.g. 0.5,1,3,10: rerun the federation at each and plot the "
             "privacy-utility curve in the report")] = None,
    drop_rule_violations: Annotated[bool, typer.Option(
        help="replace synthetic rows that break the schema's rules (without it they are released; "
             "the count replaced is the release's run_config.json dropped_rule_violations)")] = False,
    allow_unreviewed_schema: Annotated[bool, typer.Option(
        help="train even though the schema has needs_review columns (recorded in the privacy report)")] = False,
    site_column: Annotated[str | None, typer.Option(
        help="your table's column naming each row's hospital: --data is split by it (one hospital per value) "
             "and released rows keep the site that generated them")
    ] = None,
    out_of_domain: Annotated[str, typer.Option(
        help="records the schema does not allow (unknown category, outside the bounds, missing where not allowed): "
             "refuse the run and name them, drop them, clamp numbers onto the bounds, or blank the bad cells of "
             "nullable columns (clamp and blank drop the rest), as a "
             "site's policy out_of_domain does")] = "refuse",
    yes: Annotated[bool, typer.Option("--yes", help="run even where the plan says the release cannot be usable")
                   ] = False,
    verbose: Annotated[bool, typer.Option(help="also show Flower's and fedsyn's log lines")] = False,
) -> None:
    """Simulate K hospitals on this machine. With no arguments: the embedded demo as 3 hospitals."""
    from fedsyn.privacy.pairs import split_pairs_text
    from fedsyn.simulations.request import SimulationRequest

    try:
        budgets = tuple(float(e) for e in sweep_epsilon.split(",")) if sweep_epsilon else ()
        request = SimulationRequest(
            sites=tuple(sites or ()), held_out=held_out, data=data, hold_out=hold_out, split=split, skew=skew,
            dirichlet=dirichlet,
            schema=schema, epsilon=epsilon, delta=delta, rounds=rounds, local_steps=local_steps,
            batch_size=batch_size, learning_rate=learning_rate, generator_ema=generator_ema,
            numbers_as_measured=numbers_as_measured, marginals_share=marginals_share, pairs_share=pairs_share,
            pairs_asked=tuple(split_pairs_text(pairs_asked)),
            matching_weight=matching_weight,
            table_steps=table_steps, rows=rows,
            out=out, seed=seed, stream_nonce=stream_nonce, device=device, release_every=release_every,
            site_noise_multiplier=site_noise_multiplier, site_clipping_norm=site_clipping_norm,
            transport_dtype=transport_dtype, aggregation=aggregation, max_update_norm=max_update_norm,
            engine=engine, compare=compare, sweep=budgets, drop_rule_violations=drop_rule_violations,
            allow_unreviewed_schema=allow_unreviewed_schema, site_column=site_column,
            out_of_domain=out_of_domain)  # type: ignore[arg-type]  # checked by the request
    except (ConfigurationError, ValueError) as exc:
        fail(str(exc))
    check_out_folder(out)
    setup_logging(verbose)
    from fedsyn.simulations.request import prepare

    try:  # the researcher's own files first, before torch and Flower load and before any simulated site exists
        prepared = prepare(request)
    except ConfigurationError as exc:
        fail(str(exc))
    from fedsyn.files import make_run_folder
    from fedsyn.server.record import FederationError
    from fedsyn.simulations import workflow

    try:  # a refusal first: warnings about a run that will not happen only confuse
        spent = overwrite and out.is_dir() and workflow.privacy_spent_in(out)  # a sweep's sites too
        workflow.clear_out_folder(out, overwrite, request.input_files)
    except ConfigurationError as exc:
        fail(str(exc))
    if spent:  # helper-95: an interrupted run's spent budget went without a word
        console.print(f"note: --overwrite replaced {out} and the ledgers of the budget its sites had spent: this run "
                      "spends again on the same rows, and publishing a release of each spends their sum",
                      soft_wrap=True)
    if fail_below is not None and prepared.simulation.test is None:  # a pipeline's gate that would check nothing
        fail("--fail-below needs the verdict of held-out rows, and this run has none: give --held-out FILE or a "
             "--hold-out share above 0")
    for warning in prepared.warnings:
        console.print(f"[yellow bold]warning:[/] {warning}", soft_wrap=True)
    _show_plan(prepared)
    if not prepared.usable and not yes:
        fail("the width plan above says this release cannot be usable (red: round 0's tables at some site cannot "
             "resolve most columns): follow its advice (drop columns, pool small sites, or raise --epsilon where it "
             "names one; --batch-size changes DP-SGD only, not round 0), or pass --yes to run anyway")

    round_seconds: list[float] = []

    def on_round(summary: RoundSummary, statuses: dict[int, SiteStatus]) -> None:
        round_seconds.append(summary.seconds)
        console.print(f"round {summary.round}/{rounds}: {summary.accepted} site(s) accepted, "
                      f"{summary.dropped} dropped, generator loss {summary.generator_loss:.3f}, "
                      f"{summary.seconds:.1f} s{time_left(round_seconds, rounds - summary.round)}",
                      soft_wrap=True)  # one line per round, also in a log file (helper-72: 'about 25\ns left')

    simulation = prepared.simulation
    try:
        created = make_run_folder(out)
    except OSError as exc:
        fail(f"--out {out}: cannot make the run folder ({exc.strerror or type(exc).__name__})")
    held_back = f"; {len(simulation.test)} real rows held out for the local report" if simulation.test is not None \
        else ""
    console.print(f"[bold]fedsyn simulate[/]: {len(simulation.tables)} sites "
                  f"({', '.join(str(len(t)) for t in simulation.tables)} rows), epsilon={epsilon} per site, "
                  f"delta={delta:g}, {rounds} rounds x {local_steps} local steps, engine={engine}{held_back}")
    try:
        with console.status("starting...") as status:
            try:
                result = workflow.simulate(simulation, on_round, status.update)
            except (FederationError, SchemaError) as exc:
                fail(str(exc))
    except KeyboardInterrupt:
        _stopped_by_user(out, created, workflow.privacy_spent_in(out))
    except BaseException:
        if not workflow.privacy_spent_in(out):  # a failed start: nothing spent, so nothing worth keeping
            workflow.remove_run(out, created)
            console.print(f"[yellow]no simulated site spent any budget: removed what this run wrote in {out}[/]")
        raise
    _print_release(result, rounds)
    if result.local_report is not None:  # where the results are: stdout, with the release table and verdict
        results.print("validation report (LOCAL: computed from real rows, not for release): "
                      f"{out / 'local-report' / 'report.html'}", soft_wrap=True)
    else:
        console.print(NO_HELD_OUT)
    key = result.keys / "coordinator.pub"
    results.print(f"release signed (check: {program()} verify {result.release} --key {key})", soft_wrap=True)
    if simulation.stream_nonce is not None:  # the terminal only: neither value is in any file written above
        console.print(f"seeded simulation: `--seed {seed} --stream-nonce {simulation.stream_nonce}` repeats it "
                      "exactly. Keep both private, and never publish a release of the same stream beside this one: "
                      "together they give away the noise", soft_wrap=True)
    if result.comparison is not None:
        table = Table(title="Utility: ROC-AUC on the real held-out split")
        for column in ("arm", "gradient boosting", "logistic regression"):
            table.add_column(column)
        for arm, aucs in result.comparison.items():
            table.add_row(arm, f"{aucs['gradient_boosting']:.3f}", f"{aucs['logistic_regression']:.3f}")
        results.print(table)
    if result.local_report is not None:
        print_verdict(result.local_report["verdict"], fail_below)


def _spent_by_site(out: Path) -> str:
    """What each simulated site's ledger holds, e.g. 'site-0 spent epsilon 0.908 of 1' (the cap
    from the site's policy; without a readable policy, what it spent alone)."""
    from fedsyn.client.policy import PolicyError, SitePolicy
    from fedsyn.privacy.accounting import LedgerError, PrivacyLedger

    spent = []
    for ledger in sorted((out / "sites").glob("*/ledger.json")):
        try:
            epsilon = PrivacyLedger.load(ledger).epsilon()
        except LedgerError:  # unreadable: the site's own message names it when the folder is used again
            continue
        try:
            cap = f" of {SitePolicy.load(ledger.parent / 'policy.json').max_epsilon:g}"
        except PolicyError:  # missing or unreadable: the ledger alone still says what was spent
            cap = ""
        spent.append(f"{ledger.parent.name} spent epsilon {epsilon:.3f}{cap}")
    return ", ".join(spent) or "no site has spent anything yet"


def _stopped_by_user(out: Path, created: bool, spent: bool) -> None:
    """Ctrl-C: say what is left in ``out`` and how to remove it; always exits :data:`EXIT_INTERRUPTED`."""
    from fedsyn.simulations.workflow import remove_run

    if not spent:
        remove_run(out, created)
        console.print(f"[yellow]interrupted before any simulated site spent budget: removed what this run wrote in "
                      f"{out}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    left = [f"sites/ (copies of your real rows and each simulated site's privacy ledger: {_spent_by_site(out)})",
            "keys/ (the coordinator's private signing key)"]
    if (out / "local-report").exists():
        left.append("local-report/ (computed from real rows, with the held-out rows)")
    console.print(f"[yellow bold]interrupted:[/] {out} is left as it is: {'; '.join(left)}. If this was a throwaway "
                  f"simulation, remove it with: rm -rf {shlex.quote(str(out))}", soft_wrap=True)
    raise typer.Exit(EXIT_INTERRUPTED)


def _print_release(result: SimulationResult, rounds: int) -> None:
    from rich.markup import escape

    from fedsyn.privacy.pairs import asked_pairs
    from fedsyn.server.release import measured_pairs_note

    report = result.privacy_report
    # The validation report's time is not in it: a newcomer read "(21 s)" against 44 s of wall time (helper-114)
    table = Table(title=f"Release: {result.release}  (written in {result.seconds:.0f} s, before the validation report)")
    for column in ("site", "epsilon spent", "delta", f"training rounds accepted (of {rounds})", "dropped"):
        table.add_column(column)
    for site in report["sites"]:  # round 0 is the marginals release, not a training round
        trained = [r for r in site["rounds_accepted"] if r > 0]
        table.add_row(site["site"], f"{site['epsilon_cumulative']:.3f}", f"{site['delta']:g}",
                      str(len(trained)), str(len(site["dropped"])))
    results.print(table)
    config = json.loads((result.release / "run_config.json").read_text())
    measured = json.loads((result.release / "quality_report.json").read_text())["total_variation_per_pair_table"]
    settings = config["settings"]
    results.print(escape(measured_pairs_note(  # helper-112: said nowhere but the audit log
        [(first, second) for first, second in (key.split("|") for key in measured)],
        settings["gan_config"].get("numbers_as_measured", True),
        asked_pairs(Schema.load(result.release / "schema.json"), settings.get("pairs_asked", []),
                    settings.get("site_column")))), soft_wrap=True)
    dropped = config.get("dropped_rule_violations")
    if dropped:  # a newcomer's rule replaced 81 of 659 rows and emptied an outcome class unsaid
        share = dropped / max(int(config["rows"]), 1)
        console.print(f"[{'yellow' if share > RULE_DROP_WARN else 'default'}]--drop-rule-violations: {dropped} "
                      f"generated rows ({share:.0%} of {config['rows']}) broke the schema's rules and were drawn "
                      "again"
                      + (": a rule that replaces this many changes the release's shares (an outcome class "
                         "among them); check the rule and the report's outcome shares" if share > RULE_DROP_WARN
                         else "") + "[/]", soft_wrap=True)
    if report["site_level_dp"]:
        site_level = report["site_level_dp"]
        console.print(f"site-level DP (Flower): epsilon {site_level['epsilon']:.3f} at delta {site_level['delta']:g}, "
                      f"covering {site_level['scope']}")


def _show_fit_plan(model: DPTabularGAN, site: str, rows: int, out: Path) -> None:
    """Before a fit spends anything: what its budget buys on ``rows`` rows (printed locally: the
    row count is the site's own), graded as a simulation's sites are, and the width's cost."""
    from fedsyn.privacy.marginals import tables_weight
    from fedsyn.simulations.plan import plan_fit, plan_width

    plan, epsilon = model.plan(rows), model.epsilon
    if epsilon is None:
        return  # no budget (a non-private baseline): nothing to plan
    round_zero = FederationSettings(epsilon=epsilon, delta=model.delta, marginals_share=model.marginals_share,
                                    pairs_share=model.pairs_share, accountant=model.accountant)
    _show_site_plans(f"Plan: epsilon {epsilon:g}, {plan.steps} DP-SGD steps of {plan.batch_size} expected records "
                     f"(sample rate {plan.sample_rate:.3g})",
                     (plan_fit(site, plan, tables_weight(model.schema), model.pairs_share),),
                     (plan_width(site, rows, model.schema, round_zero),), epsilon, out)


def _show_plan(prepared: PreparedSimulation) -> None:
    """Before training: what each site's budget buys, with a warning where it is too little, and
    what the table's width costs."""
    settings = prepared.simulation.settings
    _show_site_plans(f"Plan: epsilon {settings.epsilon:g} per site, {settings.rounds} rounds x "
                     f"{settings.local_steps} steps, sample rate {settings.sample_rate:.3g}",
                     prepared.site_plans, prepared.width_plans, settings.epsilon, prepared.simulation.out)


def _show_site_plans(title: str, site_plans: tuple[SitePlan, ...], width_plans: tuple[WidthPlan, ...],
                     epsilon: float, out: Path) -> None:
    """Each site's plan (a fit's one) with its outlook and advice, then the width's cost."""
    table = Table(title=title)
    for column in ("site", "rows", "records per step", "noise multiplier", "records per unit of noise", "outlook"):
        table.add_column(column)
    for plan in site_plans:
        sigma = f"{plan.noise_multiplier:.2f}" if plan.noise_multiplier else "budget too small"
        table.add_row(plan.site, str(plan.rows), f"{plan.expected_batch:.0f}", sigma, f"{plan.records_per_noise:.1f}",
                      f"[{COLOUR[plan.level]}]{plan.level}[/]")
    console.print(table)
    advised: dict[tuple[str, str], list[str]] = {}  # the same advice for several sites: said once, naming them all
    for plan in site_plans:
        if plan.level != "green":
            advised.setdefault((plan.level, plan.advice), []).append(plan.site)
    for (level, advice), sites in advised.items():
        console.print(f"[{COLOUR[level]} bold]{level}:[/] {', '.join(sites)}: {advice}")
    _show_width(width_plans, epsilon, out,
                min((plan.batch_size for plan in site_plans if plan.batch_size), default=None))


def _show_width(widths: tuple[WidthPlan, ...], epsilon: float, out: Path, batch_size: int | None = None) -> None:
    """Round 0 measures every column by the outcome at once: its noise grows with the square root
    of the number of columns. Shows each site's noise per cell against its rows, the columns that
    cost most, and what would make the tables usable; the command it suggests carries the
    ``batch_size`` the sites' plans advised too (the smallest site's), so one paste does both,
    and an ``--out`` of its own (this run's, which the paste would be refused, named after the
    budget)."""
    from fedsyn.simulations.plan import EPSILON_LADDER

    table = Table(title=f"Width: {widths[0].measured_columns} columns measured by the outcome in round 0")
    for column in ("site", "rows", "noise per cell", "columns resolved (green/amber/red)", "outlook"):
        table.add_column(column, overflow="fold")  # the red columns' names wrap, never cut off with '...'
    for width in widths:
        counts = [sum(c.level == level for c in width.columns) for level in ("green", "amber", "red")]
        red = [c.column for c in width.columns if c.level == "red"]
        resolved = "/".join(map(str, counts)) + (f" (red: {', '.join(red[:4])}{', ...' if len(red) > 4 else ''})"
                                                 if red else "")
        table.add_row(width.site, str(width.rows), f"{width.cell_noise:.1f}", resolved,
                      f"[{COLOUR[width.level]}]{width.level}[/]")
    console.print(table)
    worst = min(widths, key=lambda w: w.rows)
    if worst.level == "green":
        return
    console.print(f"[{COLOUR[worst.level]} bold]{worst.level}:[/] at {worst.site}, each round-0 cell carries noise "
                  f"of {worst.cell_noise:.0f} rows (it grows with the square root of the {worst.measured_columns} "
                  f"columns, a numeric one's runs a quarter more); {worst.column_advice}")
    if worst.epsilon_needed is not None and worst.epsilon_needed > epsilon:
        batch = [("--batch-size", str(batch_size))] if batch_size else []
        needed = f"{worst.epsilon_needed:g}"
        console.print(f"  epsilon {needed} per site would resolve most of them (the site's outlook no longer red; the "
                      "weakest columns may stay red): "
                      f"{_command_with(('--epsilon', needed), *batch, ('--out', f'{out}-epsilon-{needed}'))}",
                      soft_wrap=True)
        if batch:
            console.print("  (the sample rate is published: at this --batch-size, below the smallest site's rows, the "
                          "rate is below 1 and that site's row count, batch size / rate, is public too; the privacy "
                          "report lists it)", soft_wrap=True)
    elif worst.epsilon_needed is None and epsilon < EPSILON_LADDER[-1]:
        console.print(f"  no epsilon up to {EPSILON_LADDER[-1]:g} per site resolves this width at {worst.site}'s "
                      f"{worst.rows} rows: keep fewer columns, or pool the smallest sites", soft_wrap=True)
    if worst.keep_advice:
        console.print(f"  at epsilon {epsilon:g}, {worst.keep_advice}: drop the others from the schema (the "
                      "extracts may keep them: a column the schema does not list is never used), or pool small "
                      "sites", soft_wrap=True)
    elif worst.level == "red":  # a newcomer was told to keep fewer columns, and no count of them would do
        higher = ", or raise epsilon and keep fewer" if epsilon < EPSILON_LADDER[-1] else ""
        console.print(f"  at epsilon {epsilon:g}, keeping fewer of this schema's columns resolves none of them at "
                      f"{worst.site}'s {worst.rows} rows either: pool it with another site{higher}", soft_wrap=True)


def _command_with(*settings: tuple[str, str]) -> str:
    """This very command line with each option of ``settings`` set to its value, ready to paste,
    without ``--yes``: the plan is checked again at the new settings (a newcomer's pasted
    suggestion would have skipped it)."""
    options = {option for option, _ in settings}
    words, skip = [], False
    for word in sys.argv[1:]:
        if skip:
            skip = False
        elif word == "--yes":
            continue
        elif word in options:
            skip = True
        elif not any(word.startswith(f"{option}=") for option in options):
            words.append(word)
    return shlex.join(["fedsyn", *words, *(word for setting in settings for word in setting)])


TRAIN_FILE = "__fedsyn_training_file"  # evaluate's own column: which --real-train file a row came from


def evaluate(
    schema: Annotated[Path, typer.Option("--schema", "-s", help="the public schema (JSON)")],
    synthetic: Annotated[Path, typer.Option(help="the synthetic table")],
    real_train: Annotated[list[Path], typer.Option(
        help="real rows the generator was trained on (repeat it for several files: each site's)")],
    real_test: Annotated[Path, typer.Option(help="real rows the generator never saw")],
    out: Annotated[Path, typer.Option(help="where report.json and report.html go")] = Path("fedsyn-report"),
    privacy_report: Annotated[Path | None, typer.Option(help="the release's privacy_report.json")] = None,
    seed: Annotated[int, typer.Option(help="seed of the evaluation's models and samples")] = 0,
    fail_below: Annotated[float | None, typer.Option(
        help="exit with code 3 when the verdict score (0-1) is below this, for pipelines")] = None,
    site_column: Annotated[str | None, typer.Option(
        help="the column naming each row's hospital: the report adds each hospital's own fidelity")] = None,
    site: Annotated[str | None, typer.Option(
        help="with --site-column: compare only the synthetic rows of this hospital (its value there) with the "
             "real rows given, a hospital's own")] = None,
) -> None:
    """Fidelity, utility and privacy of a synthetic table: writes report.json and report.html.

    Both files are local, like a simulation's local-report/: report.html plots real rows (a
    scatter of up to 2,000 of them) and report.json holds exact statistics of the real rows
    (row counts, each category's share, spreads, missing shares, each hospital's means), none
    DP-protected: two reports a patient apart give that patient's record away (helper-86).
    """
    try:
        contract = Schema.load(schema)
        read = {path: schema_columns(read_table(path, contract), contract)
                for path in (synthetic, *real_train, real_test)}
        ledger = json.loads(privacy_report.read_text()) if privacy_report else None
    except (SchemaError, DataFileError, OSError, json.JSONDecodeError) as exc:
        fail(str(exc))
    import pandas as pd

    from fedsyn.evaluation.metrics import test_rows_among_training

    trained_on = " ".join(map(str, real_train))
    # each training row keeps its file's number until the overlap check below has read it
    tables = [read[synthetic], pd.concat([read[path].assign(**{TRAIN_FILE: number})
                                          for number, path in enumerate(real_train)], ignore_index=True),
              read[real_test]]
    if site is not None and site_column is None:
        fail("--site names a hospital by its value in a column: give that column with --site-column")
    from fedsyn.simulations.request import check_site_column

    try:
        check_site_column(contract, site_column)
    except ConfigurationError as exc:
        fail(str(exc))
    if site is not None:  # a newcomer compared the whole release with one hospital's rows: 'hospital' collapsed
        own = tables[0][site_column].astype(str) == site
        if not own.any():
            fail(f"--site {site}: the synthetic table holds no row with {site_column} = {site}")
        tables[0] = tables[0][own].reset_index(drop=True)
        for index, path in ((1, trained_on), (2, str(real_test))):  # a file of every hospital: its own rows only
            if site_column not in tables[index].columns:  # the hospital's own file: its rows are --site's
                tables[index] = tables[index].assign(**{str(site_column): tables[0][site_column].iloc[0]})
                continue
            hospital = tables[index][site_column].astype(str) == site
            if not hospital.any():
                fail(f"--site {site}: {path} holds no row with {site_column} = {site}: give that hospital's rows")
            if not hospital.all():
                console.print(f"note: {path} holds rows of other hospitals: compared with its {int(hospital.sum())} "
                              f"row(s) of {site_column} = {site}", soft_wrap=True)
                tables[index] = tables[index][hospital].reset_index(drop=True)
    from fedsyn.data.validation import numbering_for, validate_frame
    from fedsyn.evaluation.report import write_local_report

    files = [rows.drop(columns=TRAIN_FILE) for _, rows in tables[1].groupby(TRAIN_FILE)]
    tables[1] = tables[1].drop(columns=TRAIN_FILE)
    among, repeated = test_rows_among_training(files, tables[2], contract)
    if among >= 0.99 and repeated < 0.5 and len(tables[2]) >= 20:  # a handful of test rows may all hit by chance
        fail(f"{among:.0%} of the rows of {real_test} are also in --real-train: the test rows must be rows the "
             "generator never saw, or every check reads as a copy. After `fedsyn simulate --data`, the training "
             "rows are each site's OUT/sites/*/data.parquet (repeat --real-train for each) and the held-out "
             "rows OUT/local-report/held_out.parquet")
    for path, rows, kind in ((trained_on, tables[1], real_train[0]), (str(real_test), tables[2], real_test)):
        found = validate_frame(rows, contract, numbering_for(kind))  # a newcomer's 98.6 degree C passed without a word
        if not found.ok:
            console.print(f"[yellow bold]warning:[/] {path} does not fit the schema ({len(found.problems)} "
                          f"problem(s); `{program()} validate {path} --schema {schema}` names them): the report "
                          "compares the synthetic rows with these rows as they are", soft_wrap=True)
    with console.status("evaluating..."):
        synthetic_rows, train_rows, test_rows = tables
        result = write_local_report(synthetic_rows, train_rows, test_rows, contract, out, ledger, seed,
                                    site_column=None if site is not None else site_column)
    fidelity, privacy_checks = result["fidelity"], result["privacy"]
    table = Table(title=f"Report: {out / 'report.html'}")
    table.add_column("measure")
    table.add_column("value")
    table.add_row("fidelity (one input of the verdict below, not a verdict)", f"{fidelity['overall_score']:.3f}")
    table.add_row("detection AUC (0.5 = ideal)", f"{fidelity['detection_auc']:.3f}")
    for name, scores in result["utility"].items():
        table.add_row(f"{name} TSTR / TRTR AUC", f"{scores['tstr']['roc_auc']:.3f} / {scores['trtr']['roc_auc']:.3f}")
    table.add_row("exact copies", str(privacy_checks["exact_copies"]))
    table.add_row("DCR ratio (warns where its 95 % upper end is < 1)",
                  f"{privacy_checks['dcr_ratio']:.3f} (≤ {privacy_checks['dcr_ratio_upper']:.3f})")
    table.add_row("Nearer a training row than 95 % of new patients",
                  f"{privacy_checks['dcr_near_share']:.1%} (warns above {privacy_checks['dcr_near_share_limit']:.1%})")
    table.add_row("membership attack AUC", f"{privacy_checks['membership_attack_auc']:.3f}")
    results.print(table)
    print_verdict(result["verdict"], fail_below)
