"""Which engine labels a material, and the fall-back from the surrogate to the direct engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
from ase import Atoms

from generate.sscha.direct import run_sscha
from generate.sscha.result import SSCHAResult, SSCHASettings
from generate.sscha.surrogate import SurrogateSettings, run_sscha_surrogate

log = logging.getLogger("thermobench.sscha")


@dataclass(frozen=True)
class EngineSettings:
    """Which SSCHA engine labels a material, and when the surrogate must hand over to the direct one."""

    name: str = "direct"  # direct: every ensemble through the potential | surrogate: hiphive model, verified
    max_relative_force_error: float = 0.3  # surrogate's verified force error (rmse / rms) above this: direct
    max_frequency_correction_THz: float = 0.2  # a verified frequency correction above this: direct
    surrogate: SurrogateSettings = field(default_factory=lambda: SurrogateSettings())

    def __post_init__(self):
        from generate import checks

        checks.choice(self.name, "engine.name", ("direct", "surrogate"))
        checks.positive(self.max_relative_force_error, "engine.max_relative_force_error")
        checks.positive(self.max_frequency_correction_THz, "engine.max_frequency_correction_THz")


def run_sscha_engine(atoms: Atoms, potential, supercell_matrix, settings: SSCHASettings, engine: EngineSettings,
                     harmonic: tuple[np.ndarray, int] | None = None) -> SSCHAResult:
    """The SSCHA with the configured engine; the surrogate falls back to the direct engine when its
    verification against the potential fails a threshold. ``status`` says which engine made the
    result and why; ``n_potential_evaluations`` counts both runs after a fall-back."""
    if engine.name == "direct":
        result = run_sscha(atoms, potential, supercell_matrix, settings, harmonic=harmonic)
        return replace(result, status=f"{result.status} (direct engine)")
    result = run_sscha_surrogate(atoms, potential, supercell_matrix, settings, engine.surrogate)
    report = result.surrogate
    reasons = []
    if report.verification_relative_force_error > engine.max_relative_force_error:
        reasons.append(f"verified relative force error {report.verification_relative_force_error:.3f} > {engine.max_relative_force_error}")
    if report.max_frequency_difference_THz > engine.max_frequency_correction_THz:
        reasons.append(f"verified frequency correction {report.max_frequency_difference_THz:.3f} THz > {engine.max_frequency_correction_THz} THz")
    if not reasons:
        return replace(result, status=(f"{result.status} (surrogate engine; verified relative force error "
                                       f"{report.verification_relative_force_error:.3f}, correction {report.max_frequency_difference_THz:.3f} THz)"))
    log.info("surrogate rejected (%s): direct engine", "; ".join(reasons))
    direct = run_sscha(atoms, potential, supercell_matrix, settings, harmonic=harmonic)
    return replace(direct, status=f"{direct.status} (direct engine after surrogate fall-back: {'; '.join(reasons)})",
                   n_potential_evaluations=direct.n_potential_evaluations + result.n_potential_evaluations)
