"""Metric functions over numpy arrays, and each metric's direction (declared once, used to rank).

Regression metrics carry the target's unit except ``r2`` and ``spearman`` (dimensionless);
classification metrics take the predicted probability of the positive class.
"""

from __future__ import annotations

import numpy as np

# higher or lower is better; the leaderboard sorts by these and nothing else
DIRECTIONS: dict[str, str] = {
    "mae": "lower",
    "rmse": "lower",
    "max_error": "lower",
    "r2": "higher",
    "spearman": "higher",
    "accuracy": "higher",
    "balanced_accuracy": "higher",
    "f1": "higher",
    "roc_auc": "higher",
}
UNITLESS = {"r2", "spearman", "accuracy", "balanced_accuracy", "f1", "roc_auc"}
REGRESSION_METRICS = ("mae", "rmse", "max_error", "r2", "spearman")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc")
PRIMARY = {"regression": "mae", "classification": "balanced_accuracy"}


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=float).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=float).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} targets but {y_pred.size} predictions")
    if y_true.size == 0:
        raise ValueError("no rows to score")
    return y_true, y_pred


def mae(y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(np.abs(y_pred - y_true)))


def rmse(y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((y_pred - y_true) ** 2)))


def max_error(y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.max(np.abs(y_pred - y_true)))


def r2(y_true, y_pred) -> float:
    """Coefficient of determination; NaN-free: a constant target gives 0 for a perfect fit's absence."""
    y_true, y_pred = _pair(y_true, y_pred)
    total = np.sum((y_true - y_true.mean()) ** 2)
    if total == 0:
        return 0.0
    return float(1.0 - np.sum((y_true - y_pred) ** 2) / total)


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def spearman(y_true, y_pred) -> float:
    """Rank correlation; 0 when either side is constant (e.g. the mean baseline)."""
    y_true, y_pred = _pair(y_true, y_pred)
    a, b = _ranks(y_true), _ranks(y_pred)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def accuracy(y_true, p_pred) -> float:
    y_true, p_pred = _pair(y_true, p_pred)
    return float(np.mean((p_pred > 0.5) == (y_true > 0.5)))


def balanced_accuracy(y_true, p_pred) -> float:
    """Mean recall over the classes present in ``y_true``."""
    y_true, p_pred = _pair(y_true, p_pred)
    truth, guess = y_true > 0.5, p_pred > 0.5
    recalls = [np.mean(guess[truth == c] == c) for c in (False, True) if np.any(truth == c)]
    return float(np.mean(recalls))


def f1(y_true, p_pred) -> float:
    y_true, p_pred = _pair(y_true, p_pred)
    truth, guess = y_true > 0.5, p_pred > 0.5
    tp = np.sum(truth & guess)
    denominator = 2 * tp + np.sum(~truth & guess) + np.sum(truth & ~guess)
    return float(2 * tp / denominator) if denominator else 0.0


def roc_auc(y_true, p_pred) -> float:
    """Area under the ROC curve (Mann-Whitney form, ties count half); 0.5 when one class is absent."""
    y_true, p_pred = _pair(y_true, p_pred)
    truth = y_true > 0.5
    n_pos, n_neg = truth.sum(), (~truth).sum()
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = _ranks(p_pred)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


FUNCTIONS = {f.__name__: f for f in (mae, rmse, max_error, r2, spearman, accuracy, balanced_accuracy, f1, roc_auc)}


def score(y_true, y_pred, kind: str, unit: str) -> dict[str, dict]:
    """All metrics of a task kind as ``{name: {"value": v, "unit": u}}``, plus the row count."""
    names = CLASSIFICATION_METRICS if kind == "classification" else REGRESSION_METRICS
    result = {name: {"value": FUNCTIONS[name](y_true, y_pred), "unit": "1" if name in UNITLESS else unit} for name in names}
    result["n"] = int(np.asarray(y_true).size)
    return result
