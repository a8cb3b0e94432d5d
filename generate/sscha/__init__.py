"""Stochastic self-consistent harmonic approximation (SSCHA): temperature-renormalized phonons.

The SSCHA replaces the crystal's potential by the harmonic one (force constants Φ, centroids R)
whose Gaussian density ρ_Φ,R of displacements minimises the free energy. At the minimum

    Φ = ⟨∂²V/∂u∂u⟩_ρ   and   ⟨f⟩_ρ = 0,

and Gaussian integration by parts turns the curvature average into forces: ⟨∂²V/∂u_a∂u_b⟩ =
-Σ_c ⟨f_a u_c⟩ (C⁻¹)_cb, C being the displacement covariance of ρ. :func:`run_sscha` samples ρ,
evaluates the forces of the ensemble, and moves Φ and R towards that fixed point, reusing an ensemble
by importance reweighting until its effective sample size runs low.

Two backends: ``direct`` evaluates every ensemble with the potential; ``surrogate``
(:func:`run_sscha_surrogate`) fits a sparse 2nd-4th order force-constant expansion (hiphive) to a few
dozen displaced supercells, runs the SSCHA on that cheap model with large ensembles, and checks the
answer on a fresh ensemble evaluated by the potential.

``python -m generate.sscha --structure NaCl --supercell 2 2 2 --temperature 300 --out result.json``
writes the result as JSON (settings in ``conf/sscha.yaml``).

Units: eV, Å, amu and ASE's time unit Å·sqrt(amu/eV) inside; frequencies are reported in THz.
Mass-weighted coordinates v = sqrt(m) u are used throughout, so the dynamical matrix D = M^-½ Φ M^-½
and the Gaussian's mode variances are those of independent oscillators.

Modules: :mod:`~generate.sscha.result` (settings and results), :mod:`~generate.sscha.supercell`
(supercell model, canonical modes, harmonic start), :mod:`~generate.sscha.direct` (the direct
engine), :mod:`~generate.sscha.expansion` (the force-constant expansion) and
:mod:`~generate.sscha.surrogate` (the surrogate's expansion, fit and verification),
:mod:`~generate.sscha.surrogate_run` (one fit per material, corrected at each temperature),
:mod:`~generate.sscha.symmetry` (the factored space-group average), :mod:`~generate.sscha.engine`
(the engines behind one signature, and the fall-back); ``python -m generate.sscha`` is :mod:`~generate.sscha.__main__`.
"""

from generate.sscha.direct import anharmonicity_score, run_sscha, starting_dynamical_matrices
from generate.sscha.engine import DirectEngine, SurrogateEngine, engine_from_config
from generate.sscha.expansion import (
    ForceConstantExpansion,
    Monomials,
    folded_monomials,
    harmonic_monomials,
    merge_monomials,
)
from generate.sscha.result import (
    SSCHAResult,
    SSCHASettings,
    SSCHAStep,
    SurrogateReport,
    UnstableMode,
)
from generate.sscha.supercell import (
    HBAR_EV_T,
    THZ_PER_OMEGA,
    canonical_eigenvectors,
    frequencies_THz,
    harmonic_force_constants,
    mode_variance,
    stabilize,
    supercell_model,
    to_blocks,
    to_matrix,
)
from generate.sscha.surrogate import (
    SurrogateDiverged,
    SurrogateSettings,
    quiet_hiphive,
    run_scha_on_expansion,
    surrogate_basis,
    surrogate_fit_matrix,
)
from generate.sscha.surrogate_run import (
    run_sscha_surrogate,
    run_sscha_surrogate_temperatures,
    solve_on_surrogate,
    train_surrogate,
)

__all__ = [
    "HBAR_EV_T",
    "THZ_PER_OMEGA",
    "DirectEngine",
    "ForceConstantExpansion",
    "Monomials",
    "SSCHAResult",
    "SSCHASettings",
    "SSCHAStep",
    "SurrogateDiverged",
    "SurrogateEngine",
    "SurrogateReport",
    "SurrogateSettings",
    "UnstableMode",
    "anharmonicity_score",
    "canonical_eigenvectors",
    "engine_from_config",
    "folded_monomials",
    "frequencies_THz",
    "harmonic_force_constants",
    "harmonic_monomials",
    "merge_monomials",
    "mode_variance",
    "quiet_hiphive",
    "run_scha_on_expansion",
    "run_sscha",
    "run_sscha_surrogate",
    "run_sscha_surrogate_temperatures",
    "solve_on_surrogate",
    "stabilize",
    "starting_dynamical_matrices",
    "supercell_model",
    "surrogate_basis",
    "surrogate_fit_matrix",
    "to_blocks",
    "to_matrix",
    "train_surrogate",
]
