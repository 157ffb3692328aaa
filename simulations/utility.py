"""Train-on-synthetic, test-on-real (TSTR) utility with two standard classifiers."""

from __future__ import annotations

import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedsyn.common.schema import Schema


def _features(frame: pd.DataFrame, schema: Schema) -> tuple[pd.DataFrame, pd.Series]:
    assert schema.outcome is not None, "utility needs an outcome column in the schema"
    outcome = schema.column(schema.outcome)
    positive = outcome.categories[-1]
    y = (frame[schema.outcome].astype(str) == positive).astype(int)
    parts = []
    for column in schema.columns:
        if column.name == schema.outcome:
            continue
        if column.is_categorical:
            values = pd.Categorical(frame[column.name].astype(str), categories=column.categories)
            parts.append(pd.get_dummies(values, prefix=column.name).astype(float))
        else:
            values = pd.to_numeric(frame[column.name], errors="coerce").astype(float)
            parts.append(pd.DataFrame({column.name: values.fillna(column.lower), f"{column.name}_missing":
                                       values.isna().astype(float)}))
    return pd.concat([p.reset_index(drop=True) for p in parts], axis=1), y.reset_index(drop=True)


def tstr_auc(train: pd.DataFrame, test: pd.DataFrame, schema: Schema, seed: int = 0) -> dict[str, float]:
    """ROC-AUC on the real ``test`` rows of models fitted on ``train`` (0.5 if one class only)."""
    x_train, y_train = _features(train, schema)
    x_test, y_test = _features(test, schema)
    if y_train.nunique() < 2:
        return {"gradient_boosting": 0.5, "logistic_regression": 0.5}
    models = {
        "gradient_boosting": HistGradientBoostingClassifier(random_state=seed),
        "logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
    }
    return {name: float(roc_auc_score(y_test, model.fit(x_train, y_train).predict_proba(x_test)[:, 1]))
            for name, model in models.items()}
