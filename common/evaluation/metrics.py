"""Evidence that a synthetic table is useful and does not expose patients.

Three families of metrics, each computed only against real rows the caller holds:

* fidelity: per-column KS / total-variation distance, pairwise association matrices, a
  real-vs-synthetic detection AUC, and the structure conclusions rest on: each numeric
  column's spread, each categorical column's shares, the outcome's main effects and what
  each column's missingness depends on;
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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.neighbors import NearestNeighbors
from sklearn.neural_network import MLPClassifier

from fedsyn.data.grid import forward_transform, transform_bounds
from fedsyn.data.rules import violation_mask
from fedsyn.data.schema import Column, Schema
from fedsyn.data.validation import validate_frame
from fedsyn.errors import ConfigurationError
from fedsyn.evaluation.verdict import SIGNAL_AUC, Verdict, dcr_warns, judge

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
            one_hot = np.zeros((len(frame), len(column.levels)))
            valid = codes >= 0
            one_hot[np.flatnonzero(valid), codes[valid]] = 1.0
            parts.append(one_hot)
            continue
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        missing = np.isnan(values)
        low, high = transform_bounds(column)
        scaled = (forward_transform(column, np.where(missing, column.bounds[0], values)) - low) / (high - low)
        parts.append(np.where(missing, 0.0, scaled)[:, None])
        if column.nullable:
            parts.append(missing.astype(float)[:, None])
    return np.hstack(parts)


def outcome_vector(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Each row's outcome class: its category's position in the schema's list (with two, 1 is
    the last listed, e.g. 'dead', 'yes'); -1 where the outcome is missing."""
    if schema.outcome is None:
        raise ConfigurationError(f"schema '{schema.name}' names no outcome column: utility (TSTR) needs one; "
                                 "set 'outcome' in the schema")
    levels = schema.column(schema.outcome).levels
    return np.asarray(pd.Categorical(frame[schema.outcome].astype(str), categories=levels).codes, dtype=np.int64)


def outcome_class_count(schema: Schema) -> int:
    """How many classes the outcome has (its categories in the schema)."""
    return len(schema.column(schema.outcome).levels) if schema.outcome else 0


# -- fidelity ---------------------------------------------------------------------------------

MISSING_LEVEL = "nan"  # how a missing value counts among a categorical column's levels


def level_shares(series: pd.Series, levels: list[str]) -> pd.Series:
    """Each level's share of all rows, a missing value counted as :data:`MISSING_LEVEL`. (pandas
    3 keeps a missing value missing through ``astype(str)``, and ``value_counts`` leaves it out:
    a column missing in every real row was judged 'collapsed' against a release with 2 %.)"""
    text = series.astype(object).where(series.notna(), MISSING_LEVEL).map(str)
    return text.value_counts(normalize=True).reindex([*levels, MISSING_LEVEL], fill_value=0.0)

def column_distances(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> dict[str, dict[str, Any]]:
    out = {}
    for column in schema.columns:
        if column.is_categorical:
            out[column.name] = {"metric": "total_variation",
                                "value": _tv(real[column.name], synthetic[column.name], column.levels)}
        else:
            a = pd.to_numeric(real[column.name], errors="coerce").dropna()
            b = pd.to_numeric(synthetic[column.name], errors="coerce").dropna()
            # With no value on one side there is no distribution to compare: the distance is how
            # much of the mass has a value on one side only (0 when neither has any).
            value = float(stats.ks_2samp(a, b).statistic) if len(a) and len(b) else \
                abs(len(a) / max(len(real), 1) - len(b) / max(len(synthetic), 1))
            out[column.name] = {"metric": "ks", "value": value}
    return out


def _cramers_v(x: np.ndarray, y: np.ndarray) -> float:
    """Cramér's V of two columns' level codes (-1 missing: those rows left out, as a
    cross-tabulation leaves them)."""
    present = (x >= 0) & (y >= 0)
    x, y = np.unique(x[present], return_inverse=True)[1], np.unique(y[present], return_inverse=True)[1]
    rows, cols = int(x.max(initial=0)) + 1, int(y.max(initial=0)) + 1
    if min(rows, cols) < 2:
        return 0.0
    table = np.bincount(x * cols + y, minlength=rows * cols).reshape(rows, cols).astype(float)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (table.sum() * (min(rows, cols) - 1)))


def _correlation_ratio(codes: np.ndarray, values: np.ndarray) -> float:
    """How much of a numeric column's variance its categorical partner's levels explain (eta)."""
    present = ~np.isnan(values) & (codes >= 0)
    codes, values = codes[present], values[present]
    if len(values) == 0 or values.var() == 0:
        return 0.0
    counts = np.bincount(codes)
    observed = counts > 0
    means = np.bincount(codes, weights=values)[observed] / counts[observed]
    between = float((counts[observed] * (means - values.mean()) ** 2).sum())
    return math.sqrt(between / float(((values - values.mean()) ** 2).sum()))


def _spearman(x: np.ndarray, y: np.ndarray, ranks: tuple[np.ndarray, np.ndarray]) -> float:
    """|Spearman's rho| over the rows where both are present; ``ranks`` are the columns' ranks
    over all rows, right when neither misses a value."""
    present = ~(np.isnan(x) | np.isnan(y))
    if present.sum() < 2:
        return 0.0
    first, second = ranks if present.all() else (stats.rankdata(x[present]), stats.rankdata(y[present]))
    if first.std() == 0 or second.std() == 0:
        return 0.0
    return abs(float(np.corrcoef(first, second)[0, 1]))


def association_matrix(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """|Spearman| for numeric pairs, Cramér's V for categorical pairs, correlation ratio mixed.

    Each column is coded once (a categorical's levels, missing left out pairwise; a
    numeric's values and ranks) and every pair is counted with NumPy: a 63-column table has
    1,953 pairs, and a cross-tabulation per pair took 20 s of the validation report."""
    names = schema.column_names
    codes = {c.name: pd.factorize(frame[c.name].astype(str))[0] for c in schema.columns if c.is_categorical}
    values = {c.name: pd.to_numeric(frame[c.name], errors="coerce").to_numpy(dtype=float)
              for c in schema.columns if not c.is_categorical}
    ranks = {name: stats.rankdata(value) for name, value in values.items()}
    matrix = np.eye(len(names))
    for (i, a), (j, b) in itertools.combinations(enumerate(schema.columns), 2):
        if a.is_categorical and b.is_categorical:
            value = _cramers_v(codes[a.name], codes[b.name])
        elif a.is_categorical or b.is_categorical:
            category, number = (a, b) if a.is_categorical else (b, a)
            value = _correlation_ratio(codes[category.name], values[number.name])
        else:
            value = _spearman(values[a.name], values[b.name], (ranks[a.name], ranks[b.name]))
        matrix[i, j] = matrix[j, i] = value
    return pd.DataFrame(matrix, index=names, columns=names)


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


# -- structure: spread, category shares, main effects, missingness ------------------------------
#
# A KS or total-variation distance alone can look moderate while the table misleads: a numeric
# column squeezed to a quarter of its spread, an outcome whose strongest predictor lost nine
# tenths of its effect, a value that is missing for every man in the real rows and for half of
# them in the synthetic ones. These measures are the evidence; verdict.py applies thresholds.

MAIN_EFFECTS = 5  # the strongest associations with the outcome that are judged (one per column)
RELATIONS = 8  # the strongest relations between two other columns that are judged (one per pair)
SITE_RELATIONS = 2  # and each hospital's strongest with other columns, judged whatever the others' strength
MADE_UP_RELATIONS = 5  # the strongest relations of the synthetic rows the real rows do not hold, judged too
MISSINGNESS_LINKS = 3  # per nullable column: the strongest things its missingness depends on
MIN_ASSOCIATION = 0.1  # |r| on the real rows below this is no main effect / dependence, however many rows
MIN_ASSOCIATION_Z = 4.0  # nor is one the real rows cannot tell from noise (Fisher z, two-sided p < 1e-4)
STRUCTURE_ROWS = 20_000  # more rows than this are subsampled (seeded) for main effects and missingness
_MIN_ROWS = 10


def _scaled(column: Column, series: pd.Series) -> np.ndarray:
    """A numeric column on the schema's modelling scale (log for lab values), NaN where missing."""
    return forward_transform(column, pd.to_numeric(series, errors="coerce").to_numpy(dtype=float))


def spread(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> dict[str, dict[str, Any]]:
    """Standard deviation of each numeric column, real vs synthetic, on the schema's scale (the
    log for log-transformed columns, so a few extreme lab values do not decide it)."""
    out = {}
    for column in schema.columns:
        if column.is_categorical:
            continue
        a, b = _scaled(column, real[column.name]), _scaled(column, synthetic[column.name])
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        if len(a) < 2 or len(b) < 2:
            continue
        sd_real, sd_synthetic = float(np.std(a, ddof=1)), float(np.std(b, ddof=1))
        out[column.name] = {"scale": column.transform, "sd_real": sd_real, "sd_synthetic": sd_synthetic,
                            "ratio": sd_synthetic / sd_real if sd_real > 1e-12 else None}
    return out


def category_shares(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> dict[str, dict[str, Any]]:
    """Each category's share of the rows where a categorical column is not missing, and how many
    rows those are (``rows``: a share of a handful says little)."""
    out = {}
    for column in schema.categorical_columns:
        shares: dict[str, Any] = {"rows": {}}
        for label, frame in (("real", real), ("synthetic", synthetic)):
            values = frame[column.name].dropna().astype(str)
            counts = values.value_counts(normalize=True).reindex(column.categories, fill_value=0.0)
            shares[label] = {level: float(share) for level, share in counts.items()}
            shares["rows"][label] = len(values)
        out[column.name] = shares
    return out


def bound_piles(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> dict[str, dict[str, Any]]:
    """Each numeric column's share of rows (where not missing, and how many those are: ``rows``)
    exactly at each of its schema bounds, in the real and in the synthetic rows. A bound is
    public, and a pile there is often the measurement's own (an assay's reporting limit, a
    saturation at 100 %): a release that spreads it over the range, or piles rows there by
    clipping, changes every analysis that counts it. A newcomer's CRP at its assay limit, 3.8 %
    of real rows, came out at 0.0 %, and no flag said so (helper-114)."""
    out: dict[str, dict[str, Any]] = {}
    for column, values in _numeric_values(real, synthetic, schema):
        for side, bound in (("lower", column.lower), ("upper", column.upper)):
            if bound is None:
                continue
            tolerance = 1e-9 * max(abs(bound), 1.0)
            out.setdefault(column.name, {})[side] = {
                "value": float(bound), **_shares({label: np.abs(held - bound) <= tolerance
                                                  for label, held in values.items()})}
    return out


def _numeric_values(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema
                    ) -> Iterator[tuple[Column, dict[str, np.ndarray]]]:
    """Each numeric column with its values (missing ones left out) in the real and the synthetic rows."""
    for column in schema.columns:
        if not column.is_categorical:
            yield column, {label: pd.to_numeric(frame[column.name], errors="coerce").dropna().to_numpy(dtype=float)
                           for label, frame in (("real", real), ("synthetic", synthetic))}


def _shares(picked: dict[str, np.ndarray]) -> dict[str, Any]:
    """The share of each side's values ``picked`` (a mask per side; 0 for none), and how many
    values each side has (``rows``): a share is judged only on enough of them."""
    return {**{label: float(np.mean(mask)) if len(mask) else 0.0 for label, mask in picked.items()},
            "rows": {label: len(mask) for label, mask in picked.items()}}


EXTREME_SHARE = 0.01  # a numeric column's tails: the rows beyond the real rows' 1st and 99th percentiles


def extreme_tails(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> dict[str, dict[str, Any]]:
    """Each numeric column's share of rows (where not missing; ``rows``: how many those are)
    beyond the real rows' 1st and 99th percentiles, in the real and in the synthetic rows. A
    spread can be right where a tail is gone: a newcomer's length of stay, its 99th percentile
    21 h and its longest 535 h, was cut at 10.6 h in the release, and the verdict's spread said
    nothing (helper-114). Ends where the real rows pile (a bound, an assay's limit) hold no
    rows beyond the percentile and are left out. The percentiles themselves are not returned."""
    out: dict[str, dict[str, Any]] = {}
    for column, values in _numeric_values(real, synthetic, schema):
        if not len(values["real"]):
            continue
        low, high = np.quantile(values["real"], [EXTREME_SHARE, 1.0 - EXTREME_SHARE])
        for side, sign, limit in (("lower", -1.0, low), ("upper", 1.0, high)):
            shares = _shares({label: sign * held > sign * limit for label, held in values.items()})
            if shares["real"] > 0:
                out.setdefault(column.name, {})[side] = shares
    return out


SITE_DEPARTURES = 3  # numeric columns shown per site: those where the site departs most from the whole table


def by_site(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, site_column: str) -> list[dict[str, Any]]:
    """Each site (a level of ``site_column``) in the real and in the synthetic rows: its share of
    the rows; the total variation between its real and synthetic outcome, and its categorical
    columns' mean; and the numeric columns where its real rows depart most from the whole table
    (on the schema's scale, in the table's standard deviations), with their means. A release
    that keeps every column's overall distribution can still average the hospitals away; this
    shows it per hospital (a newcomer's youngest, mean age 34, came out at 42-44, and nothing in
    the report said so)."""
    categorical = [c for c in schema.categorical_columns if c.name not in (site_column, schema.outcome)]
    # Each numeric column over the whole table, once: its scaled mean and sd, and its plain mean.
    whole = {c.name: (np.nanmean(scaled), np.nanstd(scaled), pd.to_numeric(real[c.name], errors="coerce").mean())
             for c in schema.columns if not c.is_categorical
             for scaled in [_scaled(c, real[c.name])] if np.nanstd(scaled) > 0}
    real_sites, synthetic_sites = real[site_column].astype(str), synthetic[site_column].astype(str)
    sites = []
    for level in schema.column(site_column).levels:
        mine, made = real[real_sites == level], synthetic[synthetic_sites == level]
        if mine.empty:
            continue
        entry: dict[str, Any] = {"site": level, "share_real": len(mine) / len(real),
                                 "share_synthetic": len(made) / max(len(synthetic), 1)}
        if made.empty:
            sites.append(entry)
            continue
        if schema.outcome is not None and schema.outcome != site_column:
            outcome = schema.column(schema.outcome)
            entry["outcome_tv"] = _tv(mine[outcome.name], made[outcome.name], outcome.levels)
        if categorical:
            entry["category_tv"] = float(np.mean([_tv(mine[c.name], made[c.name], c.levels) for c in categorical]))
        departures = []
        for name, (mean, sd, plain_mean) in whole.items():
            own = _scaled(schema.column(name), mine[name])
            if np.isnan(own).all():
                continue
            values = [pd.to_numeric(frame[name], errors="coerce").mean() for frame in (mine, made)] + [plain_mean]
            departures.append((abs(np.nanmean(own) - mean) / sd, name, values))
        entry["departures"] = [{"column": name, "real": float(values[0]), "synthetic": _finite(values[1]),
                                "all_real": float(values[2]), "departure_sd": float(distance)}
                               for distance, name, values in sorted(departures, reverse=True)[:SITE_DEPARTURES]]
        sites.append(entry)
    return sites


def _finite(value: float) -> float | None:
    """``value``, or None where it is NaN (a column the synthetic rows never filled): report.json stays JSON."""
    return float(value) if np.isfinite(value) else None


def _tv(real: pd.Series, synthetic: pd.Series, levels: list[str]) -> float:
    """Total variation between two samples of a categorical column (missing a level of its own)."""
    return float(0.5 * np.abs(level_shares(real, levels) - level_shares(synthetic, levels)).sum())


@dataclass(frozen=True)
class _Features:
    """Every column as numbers a signed correlation can use: numerics on the schema's scale, one
    0/1 indicator per category (only the last of two), and ``X missing`` for nullable columns;
    NaN where undefined. ``sources`` names the column each feature comes from."""

    labels: list[str]
    sources: list[str]
    indicator: list[bool]  # 0/1: a category or a missing value
    values: np.ndarray  # rows x features


def _subsampled(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows main effects and missingness are measured on: all, or a seeded sample of
    :data:`STRUCTURE_ROWS` (the measures need far fewer; the memory grows with rows x features)."""
    return frame.sample(n=STRUCTURE_ROWS, random_state=0) if len(frame) > STRUCTURE_ROWS else frame


TailTest = Callable[[np.ndarray], np.ndarray]


def _association_features(frame: pd.DataFrame, schema: Schema,
                          tails: dict[str, list[tuple[str, TailTest]]] | None = None) -> _Features:
    """The rows' :class:`_Features`; with ``tails`` (:func:`_tail_tests` of the real rows), each
    numeric column's tails too, 0/1 by the real rows' cuts."""
    frame = _subsampled(frame)
    labels, sources, indicator, values = [], [], [], []
    for column in schema.columns:
        series = frame[column.name]
        missing = series.isna().to_numpy()
        if column.is_categorical:
            text = series.astype(str).to_numpy()
            for level in column.levels[1:] if len(column.levels) == 2 else column.levels:
                labels.append(f"{column.name} = {level}")
                sources.append(column.name)
                indicator.append(True)
                values.append(np.where(missing, np.nan, (text == level) * 1.0))
        else:
            labels.append(column.name)
            sources.append(column.name)
            indicator.append(False)
            values.append(_scaled(column, series))
            cells = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
            for label, within in (tails or {}).get(column.name, []):
                labels.append(label)
                sources.append(column.name)
                indicator.append(True)
                values.append(np.where(np.isnan(cells), np.nan, within(cells) * 1.0))
        if column.nullable:
            labels.append(f"{column.name} missing")
            sources.append(f"{column.name} missing")
            indicator.append(True)
            values.append(missing.astype(float))
    return _Features(labels, sources, indicator, np.column_stack(values) if values else np.empty((len(frame), 0)))


TAIL_SHARE = 0.1  # a numeric column's top and bottom tenth, on the real rows, are features of their own


def _tail_tests(real: pd.DataFrame, schema: Schema) -> dict[str, list[tuple[str, TailTest]]]:
    """Each numeric column's top and bottom tail of the real rows (about a tenth each,
    :func:`_tail`), labelled, for :func:`_association_features`. An effect held in a tail has a
    weak correlation with the value itself: a newcomer's deaths were 37 % of the rows with
    lactate 4 or more and 2 % below 2, every release kept 3-5 % in both, and the verdict said
    lactate's correlation had shrunk to 56 %, amber. Kept like any feature, the strongest of a
    column's three judged."""
    real = _subsampled(real)
    tests: dict[str, list[tuple[str, TailTest]]] = {}
    for column in schema.columns:
        if column.is_categorical:
            continue
        values = pd.to_numeric(real[column.name], errors="coerce").dropna().to_numpy(dtype=float)
        for side in ("top", "bottom"):
            within = _tail(values, side)
            if within is not None:
                tests.setdefault(column.name, []).append((f"{column.name} in its {side} tail", within))
    return tests


def _tail(values: np.ndarray, side: str) -> TailTest | None:
    """Which values are in the ``side`` ('top' or 'bottom') tail of the real ``values``: beyond
    their :data:`TAIL_SHARE` quantile, the cut's own value in or out, whichever holds nearer a
    tenth of them (a pile of equal values at the cut: a lab capped at its limit, a score's top);
    None where neither holds between half and twice that share (a column of few values)."""
    if len(values) == 0:
        return None
    cut = float(np.quantile(values, 1.0 - TAIL_SHARE if side == "top" else TAIL_SHARE))
    beyond, reaching = (np.greater, np.greater_equal) if side == "top" else (np.less, np.less_equal)
    shares = {test: float(test(values, cut).mean()) for test in (beyond, reaching)}
    test = min(shares, key=lambda option: abs(shares[option] - TAIL_SHARE))
    if not TAIL_SHARE / 2 <= shares[test] <= 2 * TAIL_SHARE:
        return None
    return lambda cells: np.asarray(test(cells, cut))


def _correlations(x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r of each feature (column of ``x``, NaN where undefined) with each target (column
    of ``targets``, never NaN) over the rows where the feature is defined: point-biserial or phi
    for 0/1 values. Also how many rows that is. r is NaN under 10 rows, and 0 where either side
    is constant on those rows (no association can show). One pass for all targets."""
    valid = ~np.isnan(x)
    weights = valid.astype(float)
    n = weights.sum(axis=0)
    safe = np.maximum(n, 1.0)[:, None]
    x_centred = np.where(valid, x - np.where(valid, x, 0.0).sum(axis=0) / safe[:, 0], 0.0)  # no cancellation
    y_centred = targets - targets.mean(axis=0)
    mean_x = x_centred.sum(axis=0)[:, None] / safe
    square_x = (x_centred ** 2).sum(axis=0)[:, None] / safe
    mean_y, square_y = (weights.T @ y_centred) / safe, (weights.T @ y_centred ** 2) / safe
    var_x, var_y = square_x - mean_x ** 2, square_y - mean_y ** 2
    covariance = (x_centred.T @ y_centred) / safe - mean_x * mean_y
    constant = (var_x <= 1e-12 * square_x) | (var_y <= 1e-12 * square_y) | (var_x <= 0) | (var_y <= 0)
    r = np.clip(covariance / np.sqrt(np.where(constant, 1.0, var_x * var_y)), -1.0, 1.0)
    return np.where(n[:, None] < _MIN_ROWS, np.nan, np.where(constant, 0.0, r)), n


def _fisher(r: float) -> float:
    return float(np.arctanh(np.clip(r, -0.999, 0.999)))


def _comparison(label: str, real: float, n_real: float, synthetic: float, n_synthetic: float) -> dict[str, Any]:
    """The same association on real and synthetic rows, and how sure the difference is:
    ``z_weaker`` > 0 when the synthetic rows hold it more weakly in the real direction."""
    if math.isnan(synthetic):  # too few synthetic rows even hold both values: nothing reproduced
        synthetic, n_synthetic = 0.0, max(n_synthetic, 4.0)
    sign = 1.0 if real >= 0 else -1.0
    noise = math.sqrt(1.0 / (n_real - 3) + 1.0 / max(n_synthetic - 3, 1.0))
    return {"feature": label, "real": float(real), "synthetic": float(synthetic), "n_real": int(n_real),
            "n_synthetic": int(n_synthetic), "z_real": abs(_fisher(real)) * math.sqrt(n_real - 3),
            "ratio": float(synthetic / real),
            "z_weaker": sign * (_fisher(real) - _fisher(synthetic)) / noise}


def _clear(r: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Which correlations ``r`` (NaN: undefined) over ``n`` rows are clearly non-zero:
    |r| >= MIN_ASSOCIATION and Fisher z >= MIN_ASSOCIATION_Z."""
    strength = np.abs(np.nan_to_num(r))
    z = np.arctanh(np.minimum(strength, 0.999)) * np.sqrt(np.maximum(n - 3, 0))
    return np.asarray((strength >= MIN_ASSOCIATION) & (z >= MIN_ASSOCIATION_Z))


def _strongest(real: _Features, x_real: np.ndarray, y_real: np.ndarray, x_synthetic: np.ndarray,
               y_synthetic: np.ndarray, skips: list[tuple[str, ...]], top: int) -> list[list[dict[str, Any]]]:
    """For each target (a column of ``y_real`` / ``y_synthetic``): the features associated with it
    clearly on the real rows (|r| >= MIN_ASSOCIATION, z >= MIN_ASSOCIATION_Z), the strongest
    one per source column, ``top`` at most, each compared with the synthetic rows. Features whose
    source is in that target's ``skips`` entry (the target's own column) are left out."""
    r_real, n_real = _correlations(x_real, y_real)
    r_synthetic, n_synthetic = _correlations(x_synthetic, y_synthetic)
    clear = _clear(r_real, n_real[:, None])
    out = []
    for k, skip in enumerate(skips):
        chosen: dict[str, dict[str, Any]] = {}
        for j in sorted(np.flatnonzero(clear[:, k]), key=lambda j: -abs(r_real[j, k])):
            if real.sources[j] not in skip and real.sources[j] not in chosen:
                chosen[real.sources[j]] = _comparison(real.labels[j], r_real[j, k], n_real[j], r_synthetic[j, k],
                                                      n_synthetic[j])
        out.append(list(chosen.values())[:top])
    return out


def _binary(values: pd.Series, positive: str) -> np.ndarray:
    return np.where(values.isna().to_numpy(), np.nan, (values.astype(str).to_numpy() == positive) * 1.0)


def main_effects(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema,
                 top: int = MAIN_EFFECTS) -> list[dict[str, Any]]:
    """The outcome's main effects, defined on the real rows: the ``top`` features (one per column)
    most associated with it (point-biserial r for numerics, phi for a category or a missing
    value), kept only where clearly non-zero; each with the same association on the synthetic rows."""
    if schema.outcome is None:
        return []
    positive = schema.column(schema.outcome).levels[-1]
    tails = _tail_tests(real, schema)
    real_x, synthetic_x = _association_features(real, schema, tails), _association_features(synthetic, schema, tails)
    y_real = _binary(_subsampled(real)[schema.outcome], positive)
    y_synthetic = _binary(_subsampled(synthetic)[schema.outcome], positive)
    known_real, known_synthetic = ~np.isnan(y_real), ~np.isnan(y_synthetic)  # rows whose outcome is recorded
    return _strongest(real_x, real_x.values[known_real], y_real[known_real][:, None],
                      synthetic_x.values[known_synthetic], y_synthetic[known_synthetic][:, None],
                      [(schema.outcome, f"{schema.outcome} missing")], top)[0]


PairCorrelations = tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _pair_correlations(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema
                       ) -> PairCorrelations | None:
    """Every pair of features of columns other than the outcome (numbers on the schema's scale,
    category indicators; no missing indicator): their labels, source columns, correlations and
    row counts on the real rows, then on the synthetic ones. None with fewer than two features."""
    real_x, synthetic_x = _association_features(real, schema), _association_features(synthetic, schema)
    missing = {f"{column.name} missing" for column in schema.columns if column.nullable}
    kept = [j for j, source in enumerate(real_x.sources) if source != schema.outcome and source not in missing]
    if len(kept) < 2:
        return None
    valid_real = (~np.isnan(real_x.values[:, kept])).astype(float)
    valid_synthetic = (~np.isnan(synthetic_x.values[:, kept])).astype(float)
    return ([real_x.labels[j] for j in kept], [real_x.sources[j] for j in kept],
            pd.DataFrame(real_x.values[:, kept]).corr(min_periods=_MIN_ROWS).to_numpy(), valid_real.T @ valid_real,
            pd.DataFrame(synthetic_x.values[:, kept]).corr(min_periods=_MIN_ROWS).to_numpy(),
            valid_synthetic.T @ valid_synthetic)


def relations(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, top: int = RELATIONS,
              site_column: str | None = None, pairs: PairCorrelations | None = None) -> list[dict[str, Any]]:
    """The strongest relations between two columns other than the outcome, defined on the real
    rows: for each pair of columns the strongest signed correlation between their features
    (numbers on the schema's scale, category indicators), kept where clearly non-zero, the
    ``top`` pairs, each measured again on the synthetic rows. Every question beyond the outcome
    rests on them: a newcomer's release had height by sex turned round (real F 163 / M 176 cm,
    synthetic 170 / 163), and its verdict, which judged the outcome's effects only, said nothing.
    With ``site_column``, each hospital's ``SITE_RELATIONS`` strongest relations with other
    columns are judged too: how a hospital differs (a newcomer's east, 15 years younger, came back
    at the others' ages on four runs, and the verdict of the widest one, whose eight strongest
    pairs lay elsewhere, said nothing). Each hospital's own, not the site column's strongest few:
    those were the large hospitals', and a small one's case mix turned round (10.6 years older
    than the others, 4.5 younger in the release) went unsaid (helper-119). ``pairs``:
    :func:`_pair_correlations` of the same rows, when already computed."""
    pairs = pairs if pairs is not None else _pair_correlations(real, synthetic, schema)
    if pairs is None:
        return []
    labels, sources, r_real, n_real, r_synthetic, n_synthetic = pairs
    strength = np.abs(np.nan_to_num(r_real))
    clear = sorted(zip(*np.nonzero(np.triu(_clear(r_real, n_real), k=1))), key=lambda pair: -strength[pair])
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for a, b in clear:
        pair = (sources[a], sources[b])
        if pair[0] != pair[1] and pair not in chosen and pair[::-1] not in chosen:
            chosen[pair] = _comparison(f"{labels[a]} and {labels[b]}", r_real[a, b], n_real[a, b],
                                       r_synthetic[a, b], n_synthetic[a, b])
    kept = [comparison for _, comparison in list(chosen.items())[:top]]
    if site_column is None:
        return kept
    said = {comparison["feature"] for comparison in kept}
    each: dict[str, set[str]] = {}  # the other columns judged so far with each hospital (its indicator's label)
    for a, b in clear:
        if (sources[a] == site_column) == (sources[b] == site_column):
            continue
        hospital, other = (labels[a], sources[b]) if sources[a] == site_column else (labels[b], sources[a])
        label = f"{labels[a]} and {labels[b]}"
        others = each.setdefault(hospital, set())
        if label not in said and other not in others and len(others) < SITE_RELATIONS:
            others.add(other)
            kept.append(_comparison(label, r_real[a, b], n_real[a, b], r_synthetic[a, b], n_synthetic[a, b]))
    return kept


def made_up_relations(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema,
                      top: int = MADE_UP_RELATIONS, pairs: PairCorrelations | None = None) -> list[dict[str, Any]]:
    """The strongest relations between two columns other than the outcome that the synthetic
    rows hold clearly and the real rows do not (|r| under MIN_ASSOCIATION there), the difference
    beyond sampling noise: ``top`` pairs at most, one per pair of columns. :func:`relations`
    starts from the real rows and never sees them: a researcher's release held haemoglobin ×
    albumin at -.65 (real +.03) and its verdict said nothing (helper-112). ``pairs`` as in
    :func:`relations`."""
    pairs = pairs if pairs is not None else _pair_correlations(real, synthetic, schema)
    if pairs is None:
        return []
    labels, sources, r_real, n_real, r_synthetic, n_synthetic = pairs
    weak = np.abs(np.nan_to_num(r_real)) < MIN_ASSOCIATION
    candidates = np.triu(_clear(r_synthetic, n_synthetic) & weak & (n_real > 3), k=1)
    strength = np.abs(np.nan_to_num(r_synthetic))
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for a, b in sorted(zip(*np.nonzero(candidates)), key=lambda pair: -strength[pair]):
        pair = (sources[a], sources[b])
        if pair[0] == pair[1] or pair in chosen or pair[::-1] in chosen:
            continue
        noise = math.sqrt(1.0 / (n_real[a, b] - 3) + 1.0 / max(n_synthetic[a, b] - 3, 1.0))
        if abs(_fisher(r_synthetic[a, b]) - _fisher(np.nan_to_num(r_real[a, b]))) / noise >= MIN_ASSOCIATION_Z:
            chosen[pair] = {"feature": f"{labels[a]} and {labels[b]}", "real": float(np.nan_to_num(r_real[a, b])),
                            "synthetic": float(r_synthetic[a, b]), "n_real": int(n_real[a, b]),
                            "n_synthetic": int(n_synthetic[a, b])}
    return list(chosen.values())[:top]


def _missing_share(missing: np.ndarray, x: np.ndarray, value: float) -> float | None:
    """The share missing among the rows where ``x`` is ``value``; None for fewer than
    ``_MIN_ROWS`` of them: a share of a handful of rows is a small-cell count ('43 %' of the 7
    Pacific Islander patients is 3 of them), printed on a terminal and kept in CI logs."""
    rows = x == value
    return float(missing[rows].mean()) if int(rows.sum()) >= _MIN_ROWS else None


def missingness(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema,
                top: int = MISSINGNESS_LINKS) -> dict[str, dict[str, Any]]:
    """For each nullable column: its missing share, real and synthetic, and what its being
    missing depends on in the real rows (the ``top`` clearest links to other columns' values,
    categories or missingness), each measured again on the synthetic rows. For a category or a
    missing indicator, the share missing with and without it, e.g. missing for every man."""
    out: dict[str, dict[str, Any]] = {}
    judged = []
    real_rows, synthetic_rows = _subsampled(real), _subsampled(synthetic)
    for column in schema.columns:
        if not column.nullable:
            continue
        out[column.name] = {"missing_real": float(real[column.name].isna().mean()) if len(real) else 0.0,
                            "missing_synthetic": float(synthetic[column.name].isna().mean()) if len(synthetic)
                            else 0.0, "links": []}
        missing = int(real_rows[column.name].isna().sum())
        if min(missing, len(real_rows) - missing) >= _MIN_ROWS:  # else (almost) never or always missing: nothing
            judged.append(column.name)                             # to depend on anything
    if not judged:
        return out
    real_x, synthetic_x = _association_features(real, schema), _association_features(synthetic, schema)
    m_real = real_rows[judged].isna().to_numpy(dtype=float)
    m_synthetic = synthetic_rows[judged].isna().to_numpy(dtype=float)
    links = _strongest(real_x, real_x.values, m_real, synthetic_x.values, m_synthetic,
                       [(name, f"{name} missing") for name in judged], top)
    for k, name in enumerate(judged):
        for link in links[k]:
            j = real_x.labels.index(link["feature"])
            if real_x.indicator[j]:
                x_real, x_synthetic = real_x.values[:, j], synthetic_x.values[:, j]
                link["missing_share"] = {
                    "real_with": _missing_share(m_real[:, k], x_real, 1.0),
                    "real_without": _missing_share(m_real[:, k], x_real, 0.0),
                    "synthetic_with": _missing_share(m_synthetic[:, k], x_synthetic, 1.0),
                    "synthetic_without": _missing_share(m_synthetic[:, k], x_synthetic, 0.0)}
        out[name]["links"] = links[k]
    return out


def fidelity(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, seed: int = 0,
             site_column: str | None = None) -> dict[str, Any]:
    columns = column_distances(real, synthetic, schema)
    real_assoc, synthetic_assoc = association_matrix(real, schema), association_matrix(synthetic, schema)
    difference = (real_assoc - synthetic_assoc).abs()
    upper = np.triu_indices(len(schema.columns), k=1)
    association_error = float(difference.to_numpy()[upper].mean()) if len(schema.columns) > 1 else 0.0
    marginal_error = float(np.mean([c["value"] for c in columns.values()]))
    pair_correlations = _pair_correlations(real, synthetic, schema)  # relations and made-up ones read them
    return {
        "columns": columns,
        "marginal_error": marginal_error,
        "association_real": real_assoc.round(4).to_dict(),
        "association_synthetic": synthetic_assoc.round(4).to_dict(),
        "association_error": association_error,
        "overall_score": float(1.0 - (marginal_error + association_error) / 2.0),
        "detection_auc": detection_auc(real, synthetic, schema, seed),
        "spread": spread(real, synthetic, schema),
        "categories": category_shares(real, synthetic, schema),
        "bound_piles": bound_piles(real, synthetic, schema),
        "extreme_tails": extreme_tails(real, synthetic, schema),
        "main_effects": main_effects(real, synthetic, schema),
        "relations": relations(real, synthetic, schema, site_column=site_column, pairs=pair_correlations),
        "relations_made_up": made_up_relations(real, synthetic, schema, pairs=pair_correlations),
        "missingness": missingness(real, synthetic, schema),
    }


# -- utility ----------------------------------------------------------------------------------

def _classifiers(seed: int) -> dict[str, Any]:
    return {
        "logistic_regression": LogisticRegression(max_iter=2000),
        "random_forest": RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
        "gradient_boosting": HistGradientBoostingClassifier(random_state=seed),
        # No early stopping: it holds out a tenth and stops on accuracy, which on a 16 % outcome the
        # majority class wins at once (a newcomer's stopped at iteration 12, ROC-AUC .48-.56; helper-107 M4)
        "mlp": MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=200, random_state=seed),
    }


def _scores(model: ClassifierMixin, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
            y_test: np.ndarray, classes: int = 2) -> dict[str, float]:
    """ROC-AUC, F1 and accuracy on the test rows whose outcome is recorded (class >= 0). With
    more than two ``classes``: ROC-AUC one class against the rest, averaged over the classes the
    test rows hold, and macro F1 (scoring one class against all others as "the outcome" judged
    a 3-class table's own real rows below chance)."""
    x_train, y_train = x_train[y_train >= 0], y_train[y_train >= 0]
    x_test, y_test = x_test[y_test >= 0], y_test[y_test >= 0]
    trained, counts = np.unique(y_train, return_counts=True)
    if len(trained) < 2 or not len(y_test):  # one class to learn: every row is called that class
        return {"roc_auc": 0.5, "f1": 0.0,
                "accuracy": float(np.mean(y_test == y_train[0])) if len(y_train) and len(y_test) else 0.0}
    if counts.min() < 2 and model.get_params().get("early_stopping") is True:
        # Its validation split is stratified and needs two rows of each class: a synthetic table
        # with one row of a rare outcome made the whole report (and `fedsyn fit`) fail.
        model = clone(model).set_params(early_stopping=False)
    with warnings.catch_warnings():  # a model stopped at its iteration cap is scored as it stands; its
        # warning, with scikit-learn's install path, landed in the middle of a run's results (helper-119)
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        model.fit(x_train, y_train)
    probability = np.zeros((len(x_test), max(classes, 2)))
    probability[:, model.classes_] = model.predict_proba(x_test)
    predicted = probability.argmax(axis=1)
    present = np.unique(y_test)
    if len(present) < 2:  # a ranking needs two classes among the test rows
        roc_auc = 0.5
    elif len(present) == 2:
        scores = probability[:, present[1]] / np.clip(probability[:, present].sum(axis=1), 1e-12, None)
        roc_auc = roc_auc_score(y_test == present[1], scores)
    else:
        scores = probability[:, present] / np.clip(probability[:, present].sum(axis=1, keepdims=True), 1e-12, None)
        roc_auc = roc_auc_score(y_test, scores, multi_class="ovr", average="macro", labels=present)
    average = "binary" if classes <= 2 else "macro"
    return {"roc_auc": float(roc_auc), "f1": float(f1_score(y_test, predicted, average=average, zero_division=0)),
            "accuracy": float(accuracy_score(y_test, predicted))}


def utility(synthetic: pd.DataFrame, real_train: pd.DataFrame, real_test: pd.DataFrame, schema: Schema,
            seed: int = 0, models: tuple[str, ...] | None = None) -> dict[str, Any]:
    """TSTR and TRTR, each scored on ``real_test`` only (rows the generator never saw), and
    their ROC-AUC ratio (None where the real rows' model reaches under :data:`SIGNAL_AUC`)."""
    x_test, y_test = feature_matrix(real_test, schema, schema.outcome), outcome_vector(real_test, schema)
    x_syn, y_syn = feature_matrix(synthetic, schema, schema.outcome), outcome_vector(synthetic, schema)
    x_real, y_real = feature_matrix(real_train, schema, schema.outcome), outcome_vector(real_train, schema)
    out = {}
    for name, model in _classifiers(seed).items():
        if models is not None and name not in models:
            continue
        tstr = _scores(model, x_syn, y_syn, x_test, y_test, outcome_class_count(schema))
        trtr = _scores(_classifiers(seed)[name], x_real, y_real, x_test, y_test, outcome_class_count(schema))
        # no ratio to a baseline that learned nothing: a newcomer's MLP at .501 on real rows read 1.015
        ratio = tstr["roc_auc"] / trtr["roc_auc"] if trtr["roc_auc"] >= SIGNAL_AUC else None
        out[name] = {"tstr": tstr, "trtr": trtr, "auc_ratio": ratio}
    return out


def tstr_auc(train: pd.DataFrame, test: pd.DataFrame, schema: Schema, seed: int = 0) -> dict[str, float]:
    """ROC-AUC on real ``test`` rows of gradient boosting and logistic regression fitted on
    ``train`` (synthetic for TSTR, real for TRTR): the quick utility figure of the benchmarks."""
    x_train, y_train = feature_matrix(train, schema, schema.outcome), outcome_vector(train, schema)
    x_test, y_test = feature_matrix(test, schema, schema.outcome), outcome_vector(test, schema)
    models = _classifiers(seed)
    return {name: _scores(models[name], x_train, y_train, x_test, y_test, outcome_class_count(schema))["roc_auc"]
            for name in ("gradient_boosting", "logistic_regression")}


# -- privacy ----------------------------------------------------------------------------------

NEAR_LEVEL = 0.05  # the share of new patients nearer a training row than the DCR tail check's cut


def _row_keys(features: np.ndarray) -> list[bytes]:
    """Each row of a feature matrix as a key equal for rows that are equal (to 6 decimals)."""
    return list(map(bytes, np.round(features, 6).astype(np.float32)))


def test_rows_among_training(real_train: list[pd.DataFrame], real_test: pd.DataFrame, schema: Schema
                             ) -> tuple[float, float]:
    """The share of ``real_test``'s rows equal to a training row, and the least share of any
    training file's rows equal to another row of that file. Held-out rows copy training rows
    where a table has few distinct rows (each training file then repeats its own rows too);
    every one of them among training files whose rows seldom repeat says a training file holds
    the test rows (helper-95 passed the whole extract as --real-train: a DCR ratio of 90
    million, and 'a column records the outcome'). Per file, so that a file given twice, or the
    whole extract beside each site's file, does not pass for a table of repeated rows
    (helper-97)."""
    test_keys = _row_keys(feature_matrix(real_test, schema))
    files = [_row_keys(feature_matrix(rows, schema)) for rows in real_train]
    distinct = set().union(*map(set, files))
    among = sum(key in distinct for key in test_keys) / max(1, len(test_keys))
    repeated = min(1.0 - len(set(keys)) / max(1, len(keys)) for keys in files)
    return float(among), float(repeated)


def privacy(synthetic: pd.DataFrame, real_train: pd.DataFrame, real_test: pd.DataFrame, schema: Schema,
            seed: int = 0) -> dict[str, Any]:
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
    train_keys = set(_row_keys(train_x))
    copies = sum(key in train_keys for key in _row_keys(syn_x))
    holdout_copies = sum(key in train_keys for key in _row_keys(test_x))
    to_train = NearestNeighbors(n_neighbors=1).fit(train_x)
    n = min(len(test_x), len(syn_x), 5000)
    syn_sample = syn_x[rng.choice(len(syn_x), n, replace=False)]
    holdout_sample = test_x[rng.choice(len(test_x), n, replace=False)]
    dcr_synthetic = to_train.kneighbors(syn_sample)[0][:, 0]
    dcr_holdout = to_train.kneighbors(holdout_sample)[0][:, 0]
    ratio = float(np.mean(dcr_synthetic) / max(np.mean(dcr_holdout), 1e-12))
    ratio_upper = ratio + 2.0 * _ratio_std_error(dcr_synthetic, dcr_holdout)
    # The tail: synthetic rows nearer a training row than all but 5 % of new patients are (a
    # few near-copies hardly move a mean over every row), against what new patients give.
    near = float(np.mean(dcr_synthetic < np.quantile(dcr_holdout, NEAR_LEVEL)))
    near_limit = NEAR_LEVEL + 2.0 * math.sqrt(2.0 * NEAR_LEVEL * (1.0 - NEAR_LEVEL) / n)
    # Attack: a record is called a member when a synthetic row lies unusually close to it.
    to_synthetic = NearestNeighbors(n_neighbors=1).fit(syn_x)
    members = train_x[rng.choice(len(train_x), min(len(train_x), len(test_x), 5000), replace=False)]
    non_members = test_x[rng.choice(len(test_x), len(members), replace=False)]
    scores = -np.r_[to_synthetic.kneighbors(members)[0][:, 0], to_synthetic.kneighbors(non_members)[0][:, 0]]
    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    checks = {
        "exact_copies": int(copies),
        "exact_copy_share": float(copies / max(1, len(synthetic))),
        "holdout_copy_share": float(holdout_copies / max(1, len(real_test))),
        "excess_copy_share": float(copies / max(1, len(synthetic)) - holdout_copies / max(1, len(real_test))),
        "dcr_synthetic_median": float(np.median(dcr_synthetic)),
        "dcr_holdout_median": float(np.median(dcr_holdout)),
        "dcr_ratio": ratio,
        "dcr_ratio_upper": float(ratio_upper),
        "dcr_near_share": near,
        "dcr_near_share_limit": near_limit,
        "membership_attack_auc": float(roc_auc_score(labels, scores)),
        "caveat": EMPIRICAL_CAVEAT,
    }
    return {**checks, "dcr_warning": dcr_warns(checks)}  # the verdict's own rule, so report and verdict agree


def _ratio_std_error(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """Standard error of ``mean(numerator) / mean(denominator)`` over two independent samples
    (the delta method): how far the DCR ratio moves by which rows were drawn alone."""
    a, b = float(np.mean(numerator)), max(float(np.mean(denominator)), 1e-12)
    relative = (np.var(numerator) / (len(numerator) * max(a * a, 1e-24))
                + np.var(denominator) / (len(denominator) * b * b))
    return float(a / b * math.sqrt(relative))


def plausibility(synthetic: pd.DataFrame, schema: Schema) -> dict[str, Any]:
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

    fidelity: dict[str, Any]
    utility: dict[str, Any]
    privacy: dict[str, Any]
    plausibility: dict[str, Any]
    verdict: Verdict
    ledger: dict[str, Any] | None = None
    rows: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.to_dict(), "rows": self.rows, "fidelity": self.fidelity,
                "utility": self.utility, "privacy": self.privacy, "plausibility": self.plausibility,
                "ledger": self.ledger}


def evaluate(synthetic: pd.DataFrame, real_train: pd.DataFrame, real_test: pd.DataFrame, schema: Schema,
             ledger: dict[str, Any] | None = None, seed: int = 0, site_column: str | None = None) -> Evaluation:
    """Every metric, and the verdict drawn from them (see :mod:`fedsyn.evaluation.verdict`); with
    ``site_column``, each site's own fidelity too (:func:`by_site`)."""
    fidelity_ = fidelity(real_train, synthetic, schema, seed, site_column)
    if site_column is not None:
        fidelity_["sites"] = by_site(real_train, synthetic, schema, site_column)
    utility_ = utility(synthetic, real_train, real_test, schema, seed) if schema.outcome else {}
    privacy_ = privacy(synthetic, real_train, real_test, schema, seed)
    majority, class_rows = None, None
    if schema.outcome and len(real_test):
        recorded = outcome_vector(real_test, schema)
        recorded = recorded[recorded >= 0]
        class_rows = np.bincount(recorded).tolist() if len(recorded) else None
        majority = float(np.bincount(recorded).max() / len(recorded)) if len(recorded) else None
    epsilon = ledger.get("max_epsilon_any_site") if ledger else None
    return Evaluation(
        fidelity=fidelity_, utility=utility_, privacy=privacy_, plausibility=plausibility(synthetic, schema),
        verdict=judge(fidelity_, utility_, privacy_, majority, epsilon, schema.outcome, class_rows), ledger=ledger,
        rows={"synthetic": len(synthetic), "real_train": len(real_train), "real_test": len(real_test)},
    )
