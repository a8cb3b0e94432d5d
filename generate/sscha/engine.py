"""The SSCHA engines behind one signature, and the surrogate's fall-back to the direct engine.

``engine.run(atoms, potential, supercell_matrix, settings, harmonic)`` takes one
:class:`SSCHASettings` per temperature and returns one :class:`SSCHAResult` each, in that order.
Hydra picks the class by the ``_target_`` of ``conf/sscha/{direct,surrogate}.yaml``
(:func:`engine_from_config`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np
from ase import Atoms

from generate.run.checkpoint import active as active_checkpoints
from generate.sscha.direct import run_sscha
from generate.sscha.result import SSCHAResult, SSCHASettings, n_held
from generate.sscha.surrogate import SurrogateDiverged, SurrogateSettings
from generate.sscha.surrogate_run import run_sscha_surrogate_temperatures

log = logging.getLogger("thermobench.sscha")


def _direct(atoms: Atoms, potential, supercell_matrix, one: SSCHASettings, harmonic) -> SSCHAResult:
    """:func:`run_sscha` at one temperature, read back from the material's checkpoints when it ran before."""
    inputs = (atoms, np.asarray(supercell_matrix), one, harmonic)
    return active_checkpoints().cached("sscha-direct", inputs, lambda: run_sscha(atoms, potential, supercell_matrix, one, harmonic=harmonic))


@dataclass(frozen=True)
class DirectEngine:
    """Every ensemble through the potential (:func:`run_sscha`), each temperature from the harmonic start."""

    name = "direct"

    def run(self, atoms: Atoms, potential, supercell_matrix, settings: list[SSCHASettings],
            harmonic: tuple[np.ndarray, int] | None = None) -> list[SSCHAResult]:
        out = []
        for one in settings:
            result = _direct(atoms, potential, supercell_matrix, one, harmonic)
            out.append(replace(result, status=f"{result.status} (direct engine)"))
        return out


@dataclass(frozen=True)
class SurrogateEngine:
    """One hiphive surrogate per material for all temperatures (:func:`run_sscha_surrogate_temperatures`),
    verified against the potential at each; a temperature whose verification fails a threshold is
    recomputed by the direct engine, and its status says why."""

    name = "surrogate"
    # The corrected result is unbiased whatever the surrogate (a control variate); its force error only
    # sets how much cheaper than the direct engine it is (variance ~ error²): fcc Al's 0.33 still saves ~9×.
    max_relative_force_error: float = 0.6  # verified force error (rmse / rms) above this: direct engine
    max_frequency_correction_THz: float = 0.2  # last verified correction step above this (not converged): direct
    # A result with modes held at the stabilization floor is a bound, and the direct engine holds the same modes
    # and stalls as well: on phonondb's SrO2 it spent 2,700 CPU s for bounds 0.26-1.7 THz uncertain. Such a
    # result, rejected only for its correction's convergence, is kept with that correction in its error bars.
    recompute_held: bool = False
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)

    def __post_init__(self):
        from generate.run import checks

        checks.positive(self.max_relative_force_error, "sscha.max_relative_force_error")
        checks.positive(self.max_frequency_correction_THz, "sscha.max_frequency_correction_THz")

    def rejection(self, result: SSCHAResult) -> list[str]:
        """Why the verification rejects the surrogate's result (empty: accepted)."""
        report, reasons = result.surrogate, []
        if report.verification_relative_force_error > self.max_relative_force_error:
            reasons.append(f"verified relative force error {report.verification_relative_force_error:.3f} > {self.max_relative_force_error}")
        if report.last_correction_THz > self.max_frequency_correction_THz:
            reasons.append(f"verified frequency correction {report.last_correction_THz:.3f} THz after "
                           f"{report.n_corrections} step(s) > {self.max_frequency_correction_THz} THz")
        return reasons

    def run(self, atoms: Atoms, potential, supercell_matrix, settings: list[SSCHASettings],
            harmonic: tuple[np.ndarray, int] | None = None) -> list[SSCHAResult]:
        inputs = (atoms, np.asarray(supercell_matrix), settings, self.surrogate, self.max_relative_force_error, harmonic,
                  self.recompute_held)
        surrogate_results = active_checkpoints().cached("sscha-surrogate", inputs, lambda: list(run_sscha_surrogate_temperatures(
            atoms, potential, supercell_matrix, settings, self.surrogate, harmonic, self.max_relative_force_error,
            held_as_bound=not self.recompute_held)))
        out = []
        for one, result in zip(settings, surrogate_results, strict=True):
            reasons = [str(result)] if isinstance(result, SurrogateDiverged) else self.rejection(result)
            if not reasons:
                report = result.surrogate
                out.append(replace(result, status=(
                    f"{result.status} (surrogate engine; verified relative force error "
                    f"{report.verification_relative_force_error:.3f}, correction {report.max_frequency_difference_THz:.3f} THz "
                    f"in {report.n_corrections} step(s))")))
                continue
            if not self.recompute_held and kept_as_bound(result, self.max_relative_force_error):
                log.info("surrogate held at the floor at %g K (%s): kept as a bound", one.temperature_K, "; ".join(reasons))
                out.append(held_bound(result, reasons))
                continue
            log.info("surrogate rejected at %g K (%s): direct engine", one.temperature_K, "; ".join(reasons))
            direct = _direct(atoms, potential, supercell_matrix, one, harmonic)
            out.append(replace(
                direct, status=f"{direct.status} (direct engine after surrogate fall-back: {'; '.join(reasons)})",
                n_potential_evaluations=direct.n_potential_evaluations + result.n_potential_evaluations,
                wall_time_s=direct.wall_time_s + result.wall_time_s))
        return out


def kept_as_bound(result, max_relative_force_error: float) -> bool:
    """A surrogate result with modes held at the floor whose fit passed the force check: only the
    correction's convergence failed, which the direct engine, holding the same modes, does not mend."""
    return (not isinstance(result, SurrogateDiverged) and n_held(result) > 0
            and result.surrogate.verification_relative_force_error <= max_relative_force_error)


def held_bound(result: SSCHAResult, reasons: list[str]) -> SSCHAResult:
    """``result`` as a bound: not converged, its last correction step added to every mode's error."""
    last = result.surrogate.last_correction_THz
    errors = np.hypot(result.supercell_frequency_errors_THz, last if np.isfinite(last) else 0.0)
    return replace(result, converged=False, supercell_frequency_errors_THz=errors, status=(
        f"{result.status} (surrogate engine, {n_held(result)} mode(s) held at the stabilization floor: kept as a bound, "
        f"not recomputed by the direct engine; {'; '.join(reasons)}; that correction is in the error bars)"))


ENGINES = {"direct": DirectEngine, "surrogate": SurrogateEngine}


def engine_from_config(values: Mapping) -> DirectEngine | SurrogateEngine:
    """The engine of an ``sscha`` config node: its ``_target_`` class, with the node's engine fields
    (``surrogate`` as :class:`SurrogateSettings`); the node's other keys are :class:`SSCHASettings`."""
    from hydra.utils import get_class

    from generate.run.checks import SettingsError
    from generate.run.config import settings_of

    values = dict(values)
    target = values.get("_target_", f"{__name__}.DirectEngine")
    try:
        cls = get_class(target)
    except Exception as error:  # noqa: BLE001 - Hydra raises several types for a bad path
        raise SettingsError(f"sscha._target_ = {target!r} is not an engine class: {error}") from error
    if cls not in ENGINES.values():
        raise SettingsError(f"sscha._target_ = {target!r}; known engines: "
                            + ", ".join(f"{c.__module__}.{c.__qualname__}" for c in ENGINES.values()))
    kwargs = {f.name: values[f.name] for f in fields(cls) if f.name in values}
    if "surrogate" in kwargs:
        kwargs["surrogate"] = settings_of(SurrogateSettings, kwargs["surrogate"], "sscha.surrogate")
    return cls(**kwargs)


def engine_keys(cls) -> set[str]:
    """Keys of an ``sscha`` node that configure the engine rather than :class:`SSCHASettings`."""
    return {"_target_"} | {f.name for f in fields(cls)}
