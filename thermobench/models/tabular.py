"""Models that fit on dataset rows directly: the trivial baselines and the descriptor model.

All share ``fit(frame, y)``, ``predict(frame) -> ndarray`` (classification: probability of the
positive class), ``save(path)`` and :func:`load_tabular` (joblib, one file holding the task too).
"""

from __future__ import annotations

import os
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from thermobench.features import descriptor_frame
from thermobench.tasks import Task


class TabularModel:
    """Common save/load for the models that need no graphs."""

    task: Task | None = None

    def bind(self, task: Task) -> "TabularModel":
        self.task = task
        return self

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        joblib.dump(self, tmp)
        os.replace(tmp, path)
        return path


def load_tabular(path: str | os.PathLike) -> TabularModel:
    model = joblib.load(path)
    if not isinstance(model, TabularModel):
        raise TypeError(f"{path} holds a {type(model).__name__}, not a thermobench tabular model")
    return model


class MeanBaseline(TabularModel):
    """Predicts the training-set mean of the target (classification: the positive-class fraction)."""

    def fit(self, frame: pd.DataFrame, y: np.ndarray, **_) -> "MeanBaseline":
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.full(len(frame), self.mean_)


class HarmonicBaseline(TabularModel):
    """Harmonic pass-through: no renormalization, so the task's harmonic value (shift 0, σᴬ 0, κ ratio 1)."""

    def fit(self, frame: pd.DataFrame, y: np.ndarray, **_) -> "HarmonicBaseline":
        self.value_ = float(self.task.harmonic_value)
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.full(len(frame), self.value_)


class DescriptorModel(TabularModel):
    """Gradient-boosted trees (sklearn HistGradientBoosting) on :mod:`thermobench.features` descriptors."""

    def __init__(self, max_iter: int = 300, learning_rate: float = 0.05, max_leaf_nodes: int = 15,
                 min_samples_leaf: int = 5, l2_regularization: float = 0.0, random_state: int = 0):
        self.params = dict(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                           min_samples_leaf=min_samples_leaf, l2_regularization=l2_regularization,
                           random_state=random_state)

    def features(self, frame: pd.DataFrame) -> pd.DataFrame:
        return descriptor_frame(frame, temperature_input=self.task.temperature_input)

    def fit(self, frame: pd.DataFrame, y: np.ndarray, **_) -> "DescriptorModel":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        features = self.features(frame)
        self.feature_names_ = list(features.columns)
        if self.task.is_classification and len(np.unique(y)) < 2:
            raise ValueError(f"task {self.task.name!r}: the training split holds one class only; cannot fit a classifier")
        estimator = HistGradientBoostingClassifier if self.task.is_classification else HistGradientBoostingRegressor
        self.estimator_ = estimator(**self.params).fit(features.to_numpy(), y)
        return self

    def _predict_features(self, features: np.ndarray) -> np.ndarray:
        if self.task.is_classification:
            return self.estimator_.predict_proba(features)[:, 1]
        return self.estimator_.predict(features)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self._predict_features(self.features(frame)[self.feature_names_].to_numpy())

    def permutation_importance(self, frame: pd.DataFrame, y: np.ndarray, n_repeats: int = 10, seed: int = 0) -> pd.DataFrame:
        """Increase of the task's primary error when one feature is shuffled (mean and std over repeats).

        Features describing the same material are permuted across rows, so the number measures how
        much the fitted trees rely on that feature on held-out data.
        """
        from thermobench import metrics

        features = self.features(frame)[self.feature_names_].to_numpy()
        error = (lambda t, p: 1 - metrics.balanced_accuracy(t, p)) if self.task.is_classification else metrics.mae
        reference = error(y, self._predict_features(features))
        rng = np.random.default_rng(seed)
        rows = []
        for column, name in enumerate(self.feature_names_):
            increases = []
            for _ in range(n_repeats):
                shuffled = features.copy()
                shuffled[:, column] = rng.permutation(shuffled[:, column])
                increases.append(error(y, self._predict_features(shuffled)) - reference)
            rows.append({"feature": name, "importance_mean": float(np.mean(increases)),
                         "importance_std": float(np.std(increases))})
        return pd.DataFrame(rows).sort_values("importance_mean", ascending=False, ignore_index=True)
