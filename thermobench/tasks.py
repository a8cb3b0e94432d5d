"""Benchmark tasks: which column is the target, its unit, and what a harmonic model would predict.

A task is plain data, built by Hydra from ``conf/task/<name>.yaml``. Rows whose target is null
(e.g. ``kappa_ratio`` where κ was not computed, with ``kappa_null_reason`` saying why) are left out
of training and scoring, and the number left out is reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

# Knoop et al., Phys. Rev. Materials 4, 083809 (2020): σᴬ ≈ 0.2 is where the harmonic picture starts
# to fail (perturbative, phonon-gas behaviour below; strongly anharmonic, non-perturbative above).
STRONG_ANHARMONICITY_THRESHOLD = 0.2


@dataclass(frozen=True)
class Task:
    """One prediction target of the benchmark.

    Attributes:
        name: task key (``conf/task/<name>.yaml``).
        target: dataset column holding the label (classification: the column thresholded).
        kind: ``regression`` or ``classification`` (binary; label = ``target > threshold``).
        unit: unit of the target ("1" for dimensionless).
        harmonic_value: what a model without renormalization predicts (σᴬ = 0, shift = 0, κ ratio = 1,
            class 0): the harmonic pass-through baseline.
        threshold: classification threshold on ``target``.
        temperature_input: give the temperature to the model (tasks spanning temperatures).
        description: one line for the leaderboard.
    """

    name: str
    target: str
    kind: Literal["regression", "classification"] = "regression"
    unit: str = "1"
    harmonic_value: float = 0.0
    threshold: float | None = None
    temperature_input: bool = True
    description: str = ""

    def __post_init__(self):
        if self.kind not in ("regression", "classification"):
            raise ValueError(f"task {self.name!r}: kind must be 'regression' or 'classification', not {self.kind!r}")
        if self.kind == "classification" and self.threshold is None:
            raise ValueError(f"task {self.name!r}: a classification task needs a threshold on {self.target!r}")

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    def has_label(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask of rows with a finite target."""
        if self.target not in frame.columns:
            raise KeyError(
                f"task {self.name!r} needs column {self.target!r}, which the dataset lacks "
                f"(columns: {', '.join(sorted(frame.columns))})"
            )
        values = pd.to_numeric(frame[self.target], errors="coerce").to_numpy(dtype=float)
        return np.isfinite(values)

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        """Targets as float (classification: 0/1) for rows that have one; call on ``frame[has_label]``."""
        values = pd.to_numeric(frame[self.target], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(f"task {self.name!r}: {int((~np.isfinite(values)).sum())} rows lack {self.target!r}")
        if self.is_classification:
            return (values > self.threshold).astype(float)
        return values

    def to_dict(self) -> dict:
        return asdict(self)
