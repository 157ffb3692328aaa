"""A self-contained HTML validation report: plots embedded as PNG, opens offline, no scripts."""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on hospital servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fedsyn import __version__
from fedsyn.data.schema import Schema  # noqa: E402
from fedsyn.evaluation.metrics import EMPIRICAL_CAVEAT, Evaluation, evaluate, level_shares, pca_projection  # noqa: E402
from fedsyn.evaluation.verdict import SCORE_CAP, Verdict
from fedsyn.files import make_run_folder, private_folder

REAL, SYNTHETIC = "#1f77b4", "#ff7f0e"


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a label in a script the bundled font lacks ('中文') is drawn as boxes; the
        # report's tables spell it, and ten warnings naming package paths told a site nothing (helper-114)
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(data: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def marginals_plot(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> str:
    columns = schema.columns
    width = 3
    rows = (len(columns) + width - 1) // width
    figure, axes = plt.subplots(rows, width, figsize=(4 * width, 3 * rows), squeeze=False)
    for axis, column in zip(axes.flat, columns):
        if column.is_categorical:
            levels = column.levels
            real_share = level_shares(real[column.name], levels)[levels]
            syn_share = level_shares(synthetic[column.name], levels)[levels]
            position = np.arange(len(levels))
            axis.bar(position - 0.2, real_share, 0.4, color=REAL, label="real")
            axis.bar(position + 0.2, syn_share, 0.4, color=SYNTHETIC, label="synthetic")
            axis.set_xticks(position, levels, rotation=45, fontsize=7)
            axis.set_ylabel("share of rows", fontsize=7)
        else:
            low, high = column.bounds
            edges = np.geomspace(low, high, 40) if column.transform == "log" else np.linspace(low, high, 40)
            for frame, color, label in ((real, REAL, "real"), (synthetic, SYNTHETIC, "synthetic")):
                values = pd.to_numeric(frame[column.name], errors="coerce").dropna()
                axis.hist(values, bins=edges, density=True, alpha=0.5, color=color, label=label)
            if column.transform == "log":
                axis.set_xscale("log")
            axis.set_xlabel(column.unit or "value", fontsize=7)
            axis.set_ylabel("density", fontsize=7)
        axis.set_title(column.name, fontsize=9)
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(columns):]:
        axis.axis("off")
    figure.tight_layout()
    return _png(figure)


def association_plot(evaluation: Evaluation) -> str:
    """Pairwise association (Cramer's V between categoricals, correlation ratio between a
    categorical and a numeric, |Pearson r| between numerics), real vs synthetic. One panel per
    row and a size that grows with the columns, so 40 column names stay readable."""
    real = pd.DataFrame(evaluation.fidelity["association_real"])
    synthetic = pd.DataFrame(evaluation.fidelity["association_synthetic"]).loc[real.index, real.columns]
    size = max(5.0, 0.28 * len(real) + 2.5)
    font = 8 if len(real) <= 15 else 6
    figure, axes = plt.subplots(3, 1, figsize=(size + 1.5, 3 * size))
    for axis, matrix, title in ((axes[0], real, "real rows"), (axes[1], synthetic, "synthetic rows"),
                                (axes[2], (real - synthetic).abs(), "|real - synthetic|")):
        image = axis.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
        axis.set_xticks(range(len(matrix)), matrix.columns, rotation=90, fontsize=font)
        axis.set_yticks(range(len(matrix)), matrix.index, fontsize=font)
        axis.set_title(f"association, {title}")
        figure.colorbar(image, ax=axis, shrink=0.8, label="association (0 none, 1 perfect)")
    figure.tight_layout()
    return _png(figure)


def pca_plot(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> str:
    real_points, syn_points = pca_projection(real, synthetic, schema)
    figure, axis = plt.subplots(figsize=(6, 5))
    axis.scatter(real_points[:, 0], real_points[:, 1], s=4, alpha=0.4, color=REAL, label="real")
    axis.scatter(syn_points[:, 0], syn_points[:, 1], s=4, alpha=0.4, color=SYNTHETIC, label="synthetic")
    axis.set_xlabel("PC 1 (fitted on real)")
    axis.set_ylabel("PC 2")
    axis.legend()
    return _png(figure)


def curve_plot(curve: list[dict[str, Any]], real: dict[str, float] | None = None) -> str:
    """Utility (TSTR ROC-AUC) and membership-attack AUC against epsilon, with the real rows'
    own utility (TRTR) as dashed lines: the ceiling the curve approaches."""
    curve = sorted(curve, key=lambda point: point["epsilon"])
    epsilons = [point["epsilon"] for point in curve]
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, label in (("tstr_gradient_boosting", "TSTR AUC, gradient boosting"),
                       ("tstr_logistic_regression", "TSTR AUC, logistic regression"),
                       ("membership_attack_auc", "membership attack AUC")):
        axis.plot(epsilons, [point[key] for point in curve], marker="o", label=label)
    for (model, value), style in zip((real or {}).items(), ("--", "-.")):
        axis.axhline(value, color="black", linewidth=0.8, linestyle=style,
                     label=f"real rows (TRTR), {model.replace('_', ' ')}")
    axis.set_xscale("log")
    axis.set_xlabel("epsilon per site")
    axis.set_ylabel("ROC-AUC")
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axis.legend(fontsize=8)
    return _png(figure)


def _table(rows: list[list[object]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.1e}"
    return str(value)


def _verdict_section(verdict: Verdict) -> str:
    """The headline first: score, level and every flag, coloured."""
    flags = "".join(f"<li class='{flag.level}'><b>{flag.level}</b> ({flag.area}): {html.escape(flag.message)}</li>"
                    for flag in verdict.flags) or "<li class='green'>no flag raised</li>"
    cap = (f"<p>The score never exceeds {SCORE_CAP[verdict.level]:.1f} while a {verdict.level} flag stands.</p>"
           if verdict.level != "green" else "")
    return (f"<section id='verdict' class='{verdict.level}'><h2>Verdict: {verdict.level.upper()} "
            f"(score {verdict.score:.2f} of 1)</h2><p>{html.escape(verdict.summary)}</p><ul>{flags}</ul>{cap}"
            "</section>")


def _structure_sections(fidelity: dict[str, Any]) -> list[str]:
    """The evidence behind the verdict's spread, main-effect and missingness flags."""
    sections = []
    if fidelity.get("spread"):
        sections += ["<h3>Spread of numeric columns</h3>",
                     "<p>Standard deviation on the schema's scale (the log for log-transformed columns); a ratio "
                     "under 0.5 or over 2 is a red flag.</p>",
                     _table([[name, s["scale"], s["sd_real"], s["sd_synthetic"],
                              "" if s["ratio"] is None else s["ratio"]] for name, s in fidelity["spread"].items()],
                            ["column", "scale", "sd real", "sd synthetic", "ratio"])]
    if fidelity.get("main_effects"):
        sections += ["<h3>Main effects on the outcome</h3>",
                     "<p>The strongest associations with the outcome in the real rows (correlation: point-biserial "
                     "for a numeric column, phi for a category or a missing value), and the same on the synthetic "
                     "rows. Reversed, or under a third of real, is a red flag.</p>",
                     _table([[e["feature"], e["real"], e["synthetic"], "" if e["ratio"] is None else e["ratio"]]
                             for e in fidelity["main_effects"]], ["feature", "real", "synthetic", "ratio"])]
    missing = []
    for name, entry in fidelity.get("missingness", {}).items():
        shares = [name, f"{entry['missing_real']:.1%}", f"{entry['missing_synthetic']:.1%}"]
        missing += [[*shares, link["feature"], link["real"], link["synthetic"]] for link in entry["links"]]
        missing += [] if entry["links"] else [[*shares, "(nothing clear)", "", ""]]
    if missing:
        sections += ["<h3>Missingness</h3>",
                     "<p>Missing shares, and what being missing depends on in the real rows (correlation of the "
                     "missing indicator with another column's value, category or missingness), measured again on "
                     "the synthetic rows.</p>",
                     _table(missing, ["column", "missing, real", "missing, synthetic", "depends on",
                                      "correlation, real", "correlation, synthetic"])]
    return sections


def _site_section(fidelity: dict[str, Any]) -> list[str]:
    """Each hospital, real against synthetic: the release may keep every column's overall
    distribution and still average the hospitals away."""
    if not fidelity.get("sites"):
        return []
    rows = []
    for site in fidelity["sites"]:
        numbers = "; ".join(f"{d['column']} {d['real']:.4g} real, "
                            f"{'none' if d['synthetic'] is None else format(d['synthetic'], '.4g')} synthetic "
                            f"(all {d['all_real']:.4g})" for d in site.get("departures", []))
        rows.append([site["site"], f"{site['share_real']:.1%} / {site['share_synthetic']:.1%}",
                     site.get("outcome_tv", ""), site.get("category_tv", ""), numbers])
    return ["<h3>Per hospital</h3>",
            "<p>Each hospital's share of the rows, how far its synthetic rows are from its real ones (total "
            "variation of the outcome, and the mean over its other categorical columns: 0 is identical), and "
            "the numeric columns where its real rows differ most from the whole table, with their means.</p>",
            _table(rows, ["hospital", "rows, real / synthetic", "outcome TV", "categories TV",
                          "numbers that set it apart"])]


def render_html(evaluation: Evaluation, real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema,
                path: Path, curve: list[dict[str, Any]] | None = None,
                comparison: dict[str, dict[str, float]] | None = None,
                settings: dict[str, Any] | None = None) -> Path:
    """The local report page. ``comparison``: TSTR ROC-AUC per arm (federated, each site alone,
    pooled, real rows); ``settings``: the run's public settings, shown at the end."""
    fidelity, privacy, plausibility = evaluation.fidelity, evaluation.privacy, evaluation.plausibility
    sections = [
        f"<h1>Validation report: {html.escape(schema.name)}</h1>",
        "<p class='caveat'>LOCAL REPORT: computed from real rows. Keep it with the data; it is not part of any "
        "release.</p>",
        _verdict_section(evaluation.verdict),
        f"<p>{evaluation.rows.get('synthetic')} synthetic rows compared with {evaluation.rows.get('real_train')} "
        f"training rows and {evaluation.rows.get('real_test')} held-out rows. fedsyn {html.escape(__version__)}, "
        f"written {datetime.now(UTC).isoformat(timespec='seconds')}.</p>",
    ]
    if evaluation.ledger:
        sites = evaluation.ledger.get("sites", [])
        sections += ["<h2>Formal privacy guarantee</h2>",
                     _table([[s["site"], s["epsilon_cumulative"], s["delta"]] for s in sites],
                            ["site", "epsilon (cumulative)", "delta"])]
    sections += [
        "<h2>Fidelity</h2>",
        _table([["closeness of marginals and associations (1 = identical; one input of the verdict above, "
                 "not a verdict)", fidelity["overall_score"]],
                ["mean marginal distance", fidelity["marginal_error"]],
                ["mean association difference", fidelity["association_error"]],
                ["detection ROC-AUC (0.5 is ideal)", fidelity["detection_auc"]]], ["measure", "value"]),
        _table([[name, c["metric"], c["value"]] for name, c in fidelity["columns"].items()],
               ["column", "distance", "value"]),
        *_structure_sections(fidelity),
        *_site_section(fidelity),
        "<h3>Marginals</h3>", _img(marginals_plot(real, synthetic, schema), "marginal distributions"),
        "<h3>Associations</h3>", _img(association_plot(evaluation), "association matrices"),
        "<h3>PCA projection</h3>", _img(pca_plot(real, synthetic, schema), "PCA projection"),
    ]
    if evaluation.utility:
        sections += ["<h2>Utility (tested on real held-out rows only)</h2>", _table(
            [[name, u["tstr"]["roc_auc"], u["trtr"]["roc_auc"],
              "– (real rows at chance)" if u["auc_ratio"] is None else u["auc_ratio"], u["tstr"]["f1"], u["trtr"]["f1"],
              u["tstr"]["accuracy"], u["trtr"]["accuracy"]] for name, u in evaluation.utility.items()],
            ["model", "TSTR AUC", "TRTR AUC", "ratio", "TSTR F1", "TRTR F1", "TSTR acc.", "TRTR acc."])]
    sections += [
        "<h2>Empirical privacy checks</h2>",
        f'<p class="caveat">{html.escape(EMPIRICAL_CAVEAT)}</p>',
        _table([["exact copies of training rows", privacy["exact_copies"]],
                ["share copying a training row: synthetic / held-out (excess warns)",
                 f"{privacy['exact_copy_share']:.1%} / {privacy['holdout_copy_share']:.1%}"],
                ["DCR ratio synthetic / held-out (below 1 beyond its sampling error warns of memorisation)",
                 privacy["dcr_ratio"]],
                ["DCR ratio's 95 % upper end", privacy["dcr_ratio_upper"]],
                ["Synthetic rows nearer a training row than 95 % of new patients (share; warns above its limit)",
                 f"{privacy['dcr_near_share']:.3f} (limit {privacy['dcr_near_share_limit']:.3f})"],
                ["membership-inference attack ROC-AUC (0.5 is ideal)", privacy["membership_attack_auc"]]],
               ["check", "value"]),
        "<h2>Clinical plausibility</h2>",
        _table([[r["rule"], r["violating_share"]] for r in plausibility["rules"]] or [["(no rules in schema)", ""]],
               ["rule", "share of synthetic rows violating"]),
        f"<p>Schema problems in synthetic rows: {len(plausibility['schema_problems'])}</p>",
    ]
    if comparison:
        sections += ["<h2>Federated release against the other arms</h2>",
                     "<p>ROC-AUC on the real held-out rows of models trained on each arm's rows: the federated "
                     "release, each site's own DP generator with the same budget, one DP generator on all rows "
                     "pooled (centralised: research only) and the real rows themselves.</p>",
                     _table([[arm, scores["gradient_boosting"], scores["logistic_regression"]]
                             for arm, scores in comparison.items()], ["arm", "gradient boosting",
                                                                       "logistic regression"])]
    if curve:
        trtr = {name: scores["trtr"]["roc_auc"] for name, scores in evaluation.utility.items()
                if name in ("gradient_boosting", "logistic_regression")}
        sections += ["<h2>Privacy-utility curve</h2>", _img(curve_plot(curve, trtr), "privacy-utility curve"),
                     _table([[p["epsilon"], p["tstr_gradient_boosting"], p["tstr_logistic_regression"],
                              p["membership_attack_auc"]] for p in curve],
                            ["epsilon", "TSTR AUC GB", "TSTR AUC LR", "attack AUC"])]
    if settings:
        sections += ["<h2>Run settings</h2>", _table([[key, json.dumps(value, default=str)]
                                                      for key, value in settings.items()], ["setting", "value"])]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
             ".plot{max-width:100%}.caveat{background:#fff3cd;padding:8px}"
             "#verdict{padding:4px 16px;border-left:8px solid}#verdict.green{border-color:#2e7d32}"
             "#verdict.amber{border-color:#f9a825}#verdict.red{border-color:#c62828}"
             "li.red b{color:#c62828}li.amber b{color:#b28704}li.green b{color:#2e7d32}")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fedsyn report: "
            f"{html.escape(schema.name)}</title><style>{style}</style></head><body>{''.join(sections)}</body></html>")
    path.write_text(page)
    return path


def write_local_report(synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, schema: Schema, out: Path,
                       ledger: dict[str, Any] | None, seed: int, curve: list[dict[str, Any]] | None = None,
                       comparison: dict[str, dict[str, float]] | None = None, settings: dict[str, Any] | None = None,
                       site_column: str | None = None) -> dict[str, Any]:
    """The validation report against real rows (report.json with its verdict, report.html);
    with ``site_column``, each hospital's own fidelity too."""
    evaluation = evaluate(synthetic, train, test, schema, ledger=ledger, seed=seed, site_column=site_column)
    result = {**evaluation.to_dict(), "privacy_utility_curve": curve or [], "comparison": comparison,
              "settings": settings}
    if make_run_folder(out):  # a report of real rows: ignored by git wherever it is written,
        private_folder(out)  # and read by its owner only where it made the folder (not a user's own: helper-80)
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    render_html(evaluation, train, synthetic, schema, out / "report.html", curve, comparison, settings)
    return result
