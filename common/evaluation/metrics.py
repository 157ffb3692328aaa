"""Evidence that a synthetic table is useful and does not expose patients.

Three families of metrics, each computed only against real rows the caller holds:

* fidelity: per-column KS / total-variation distance, pairwise association matrices, a
  real-vs-synthetic detection AUC;
* utility: train-on-synthetic / train-on-real, tested on a real held-out split only;
* privacy: exact copies, distance to closest record (DCR) against a held-out baseline, and a
  distance-based membership-inference attack.

Plus clinical plausibility: the share of synthetic rows breaking each schema rule.
Empirical privacy checks cannot prove privacy; the DP guarantee is the release's ledger.
At a hospital this runs against the site's own rows: only these aggregate numbers leave,
which is itself a (non-DP) release of information and is documented as such.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.neighbors import NearestNeighbors
from sklearn.neural_network import MLPClassifier

from fedsyn.data.rules import violation_mask
from fedsyn.data.schema import Schema
from fedsyn.data.validation import validate_frame
from fedsyn.errors import ConfigurationError
from fedsyn.evaluation.verdict import Verdict, judge
from fedsyn.privacy.marginals import forward_transform, transform_bounds

EMPIRICAL_CAVEAT = ("Empirical privacy checks only test particular attacks on particular rows; they cannot show "
                    "that no record is exposed. The formal guarantee is the (epsilon, delta) in the privacy ledger.")


# -- a public feature space -------------------------------------------------------------------

def feature_matrix(frame: pd.DataFrame, schema: Schema, exclude: str | None = None) -> np.ndarray:
    """Rows as numbers scaled by *public* bounds: one-hot categoricals, numerics in [0, 1]
    (after the schema's transform), and a missing indicator for nullable numerics."""
    parts: list[np.ndarray] = []
    for column in schema.columns:
        if column.name == exclude:
            continue
        series = frame[column.name]
        if column.is_categorical:
            codes = pd.Categorical(series.astype(str), categories=column.categories).codes.astype(np.int64)  # not int8
            one_hot = np.zeros((len(frame), len(column.categories)))
            valid = codes >= 0
            one_hot[np.flatnonzero(valid), codes[valid]] = 1.0
            parts.append(one_hot)
            continue
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        missing = np.isnan(values)
        low, high = transform_bounds(column)
        scaled = (forward_transform(column, np.where(missing, column.lower, values)) - low) / (high - low)
        parts.append(np.where(missing, 0.0, scaled)[:, None])
        if column.nullable:
            parts.append(missing.astype(float)[:, None])
    return np.hstack(parts)


def outcome_vector(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """1 for the outcome's last listed category (e.g. 'dead', 'yes'), else 0."""
    if schema.outcome is None:
        raise ConfigurationError(f"schema '{schema.name}' names no outcome column: utility (TSTR) needs one; "
                                 "set 'outcome' in the schema")
    positive = schema.column(schema.outcome).categories[-1]
    return (frame[schema.outcome].astype(str) == positive).to_numpy(dtype=int)


# -- fidelity ---------------------------------------------------------------------------------

def column_distances(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> dict[str, dict]:
    out = {}
    for column in schema.columns:
        if column.is_categorical:
            levels = [*column.categories, "nan"]
            p = real[column.name].astype(str).value_counts(normalize=True).reindex(levels, fill_value=0)
            q = synthetic[column.name].astype(str).value_counts(normalize=True).reindex(levels, fill_value=0)
            out[column.name] = {"metric": "total_variation", "value": float(0.5 * np.abs(p - q).sum())}
        else:
            a = pd.to_numeric(real[column.name], errors="coerce").dropna()
            b = pd.to_numeric(synthetic[column.name], errors="coerce").dropna()
            value = float(stats.ks_2samp(a, b).statistic) if len(a) and len(b) else 1.0
            out[column.name] = {"metric": "ks", "value": value}
    return out


def _cramers_v(x: pd.Series, y: pd.Series) -> float:
    table = pd.crosstab(x, y)
    if min(table.shape) < 2:
        return 0.0
    chi2 = stats.chi2_contingency(table, correction=False)[0]
    return float(math.sqrt(chi2 / (table.to_numpy().sum() * (min(table.shape) - 1))))


def _correlation_ratio(categories: pd.Series, values: pd.Series) -> float:
    frame = pd.DataFrame({"c": categories, "v": values}).dropna()
    if frame.empty or frame["v"].var() == 0:
        return 0.0
    means = frame.groupby("c")["v"].agg(["mean", "count"])
    between = (means["count"] * (means["mean"] - frame["v"].mean()) ** 2).sum()
    return float(math.sqrt(between / ((frame["v"] - frame["v"].mean()) ** 2).sum()))


def association_matrix(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """|Spearman| for numeric pairs, Cramér's V for categorical pairs, correlation ratio mixed."""
    names = schema.column_names
    matrix = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for a, b in itertools.combinations(schema.columns, 2):
        x, y = frame[a.name], frame[b.name]
        if a.is_categorical and b.is_categorical:
            value = _cramers_v(x.astype(str), y.astype(str))
        elif a.is_categorical or b.is_categorical:
            cat, num = (x, y) if a.is_categorical else (y, x)
            value = _correlation_ratio(cat.astype(str), pd.to_numeric(num, errors="coerce"))
        else:
            rho = pd.to_numeric(x, errors="coerce").corr(pd.to_numeric(y, errors="coerce"), method="spearman")
            value = 0.0 if pd.isna(rho) else abs(float(rho))
        matrix.loc[a.name, b.name] = matrix.loc[b.name, a.name] = value
    return matrix


def detection_auc(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, seed: int = 0) -> float:
    """Cross-validated ROC-AUC of a classifier telling real from synthetic rows (0.5 is ideal)."""
    n = min(len(real), len(synthetic), 5000)
    rng = np.random.default_rng(seed)
    x = np.vstack([feature_matrix(real.iloc[rng.choice(len(real), n, replace=False)], schema),
                   feature_matrix(synthetic.iloc[rng.choice(len(synthetic), n, replace=False)], schema)])
    y = np.r_[np.zeros(n), np.ones(n)]
    scores = cross_val_predict(HistGradientBoostingClassifier(random_state=seed), x, y, cv=3,
                               method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def fidelity(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, seed: int = 0) -> dict:
    columns = column_distances(real, synthetic, schema)
    real_assoc, synthetic_assoc = association_matrix(real, schema), association_matrix(synthetic, schema)
    difference = (real_assoc - synthetic_assoc).abs()
    upper = np.triu_indices(len(schema.columns), k=1)
    association_error = float(difference.to_numpy()[upper].mean()) if len(schema.columns) > 1 else 0.0
    marginal_error = float(np.mean([c["value"] for c in columns.values()]))
    return {
        "columns": columns,
        "marginal_error": marginal_error,
        "association_real": real_assoc.round(4).to_dict(),
        "association_synthetic": synthetic_assoc.round(4).to_dict(),
        "association_error": association_error,
        "overall_score": float(1.0 - (marginal_error + association_error) / 2.0),
        "detection_auc": detection_auc(real, synthetic, schema, seed),
    }


# -- utility ----------------------------------------------------------------------------------

def _classifiers(seed: int) -> dict:
    return {
        "logistic_regression": LogisticRegression(max_iter=2000),
        "random_forest": RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
        "gradient_boosting": HistGradientBoostingClassifier(random_state=seed),
        "mlp": MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=400, early_stopping=True, random_state=seed),
    }


def _scores(model, x_train, y_train, x_test, y_test) -> dict[str, float]:
    if len(np.unique(y_train)) < 2:
        return {"roc_auc": 0.5, "f1": 0.0, "accuracy": float(np.mean(y_test == y_train[0]))}
    model.fit(x_train, y_train)
    probability = model.predict_proba(x_test)[:, 1]
    predicted = (probability >= 0.5).astype(int)
    return {"roc_auc": float(roc_auc_score(y_test, probability)), "f1": float(f1_score(y_test, predicted)),
            "accuracy": float(accuracy_score(y_test, predicted))}


def utility(synthetic: pd.DataFrame, real_train: pd.DataFrame, real_test: pd.DataFrame, schema: Schema,
            seed: int = 0, models: tuple[str, ...] | None = None) -> dict:
    """TSTR and TRTR, each scored on ``real_test`` only (rows the generator never saw)."""
    x_test, y_test = feature_matrix(real_test, schema, schema.outcome), outcome_vector(real_test, schema)
    x_syn, y_syn = feature_matrix(synthetic, schema, schema.outcome), outcome_vector(synthetic, schema)
    x_real, y_real = feature_matrix(real_train, schema, schema.outcome), outcome_vector(real_train, schema)
    out = {}
    for name, model in _classifiers(seed).items():
        if models is not None and name not in models:
            continue
        tstr = _scores(model, x_syn, y_syn, x_test, y_test)
        trtr = _scores(_classifiers(seed)[name], x_real, y_real, x_test, y_test)
        out[name] = {"tstr": tstr, "trtr": trtr, "auc_ratio": tstr["roc_auc"] / trtr["roc_auc"]}
    return out


def tstr_auc(train: pd.DataFrame, test: pd.DataFrame, schema: Schema, seed: int = 0) -> dict[str, float]:
    """ROC-AUC on real ``test`` rows of gradient boosting and logistic regression fitted on
    ``train`` (synthetic for TSTR, real for TRTR): the quick utility figure of the benchmarks."""
    x_train, y_train = feature_matrix(train, schema, schema.outcome), outcome_vector(train, schema)
    x_test, y_test = feature_matrix(test, schema, schema.outcome), outcome_vector(test, schema)
    models = _classifiers(seed)
    return {name: _scores(models[name], x_train, y_train, x_test, y_test)["roc_auc"]
            for name in ("gradient_boosting", "logistic_regression")}


# -- privacy ----------------------------------------------------------------------------------

def privacy(synthetic: pd.DataFrame, real_train: pd.DataFrame, real_test: pd.DataFrame, schema: Schema,
            seed: int = 0) -> dict:
    """Exact copies, DCR ratio and a distance-based membership-inference attack.

    Both copy and distance checks are relative to new patients (the held-out rows): on a
    table with few distinct rows, real held-out patients also match training rows exactly
    and lie at distance 0, which is no sign of memorisation. So the copy figure that warns is
    the *excess* share (synthetic minus held-out), and the DCR ratio is a ratio of means,
    which stays defined when most nearest distances are 0 (as the bench's judge does)."""
    rng = np.random.default_rng(seed)
    train_x = feature_matrix(real_train, schema)
    test_x = feature_matrix(real_test, schema)
    syn_x = feature_matrix(synthetic, schema)
    train_keys = set(map(bytes, np.round(train_x, 6).astype(np.float32)))
    copies = sum(bytes(row) in train_keys for row in np.round(syn_x, 6).astype(np.float32))
    holdout_copies = sum(bytes(row) in train_keys for row in np.round(test_x, 6).astype(np.float32))
    to_train = NearestNeighbors(n_neighbors=1).fit(train_x)
    n = min(len(test_x), len(syn_x), 5000)
    syn_sample = syn_x[rng.choice(len(syn_x), n, replace=False)]
    holdout_sample = test_x[rng.choice(len(test_x), n, replace=False)]
    dcr_synthetic = to_train.kneighbors(syn_sample)[0][:, 0]
    dcr_holdout = to_train.kneighbors(holdout_sample)[0][:, 0]
    ratio = float(np.mean(dcr_synthetic) / max(np.mean(dcr_holdout), 1e-12))
    # Attack: a record is called a member when a synthetic row lies unusually close to it.
    to_synthetic = NearestNeighbors(n_neighbors=1).fit(syn_x)
    members = train_x[rng.choice(len(train_x), min(len(train_x), len(test_x), 5000), replace=False)]
    non_members = test_x[rng.choice(len(test_x), len(members), replace=False)]
    scores = -np.r_[to_synthetic.kneighbors(members)[0][:, 0], to_synthetic.kneighbors(non_members)[0][:, 0]]
    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    return {
        "exact_copies": int(copies),
        "exact_copy_share": float(copies / max(1, len(synthetic))),
        "holdout_copy_share": float(holdout_copies / max(1, len(real_test))),
        "excess_copy_share": float(copies / max(1, len(synthetic)) - holdout_copies / max(1, len(real_test))),
        "dcr_synthetic_median": float(np.median(dcr_synthetic)),
        "dcr_holdout_median": float(np.median(dcr_holdout)),
        "dcr_ratio": ratio,
        "dcr_warning": ratio < 1.0,
        "membership_attack_auc": float(roc_auc_score(labels, scores)),
        "caveat": EMPIRICAL_CAVEAT,
    }


def plausibility(synthetic: pd.DataFrame, schema: Schema) -> dict:
    report = validate_frame(synthetic, schema)
    return {
        "schema_problems": [p.describe() for p in report.problems],
        "rules": [{"rule": rule.name, "violating_share": float(rule.violations(synthetic).mean())
                   if len(synthetic) else 0.0} for rule in schema.rules],
        "rows_violating_any_rule": int(violation_mask(synthetic, schema.rules).sum()),
    }


def pca_projection(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, seed: int = 0,
                   limit: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real_x = feature_matrix(real.iloc[rng.choice(len(real), min(limit, len(real)), replace=False)], schema)
    syn_x = feature_matrix(synthetic.iloc[rng.choice(len(synthetic), min(limit, len(synthetic)), replace=False)],
                           schema)
    pca = PCA(n_components=2, random_state=seed).fit(real_x)
    return pca.transform(real_x), pca.transform(syn_x)


@dataclass
class Evaluation:
    """All results of one evaluation; ``to_dict`` is the report.json content."""

    fidelity: dict
    utility: dict
    privacy: dict
    plausibility: dict
    verdict: Verdict
    ledger: dict | None = None
    rows: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict.to_dict(), "rows": self.rows, "fidelity": self.fidelity,
                "utility": self.utility, "privacy": self.privacy, "plausibility": self.plausibility,
                "ledger": self.ledger}


def evaluate(synthetic: pd.DataFrame, real_train: pd.DataFrame, real_test: pd.DataFrame, schema: Schema,
             ledger: dict | None = None, seed: int = 0) -> Evaluation:
    """Every metric, and the verdict drawn from them (see :mod:`fedsyn.evaluation.verdict`)."""
    fidelity_ = fidelity(real_train, synthetic, schema, seed)
    utility_ = utility(synthetic, real_train, real_test, schema, seed) if schema.outcome else {}
    privacy_ = privacy(synthetic, real_train, real_test, schema, seed)
    majority = None
    if schema.outcome and len(real_test):
        positive = float(outcome_vector(real_test, schema).mean())
        majority = max(positive, 1.0 - positive)
    epsilon = ledger.get("max_epsilon_any_site") if ledger else None
    return Evaluation(
        fidelity=fidelity_, utility=utility_, privacy=privacy_, plausibility=plausibility(synthetic, schema),
        verdict=judge(fidelity_, utility_, privacy_, majority, epsilon), ledger=ledger,
        rows={"synthetic": len(synthetic), "real_train": len(real_train), "real_test": len(real_test)},
    )
