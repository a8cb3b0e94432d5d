"""SSCHA settings and self-contained results (steps, unstable modes, the surrogate's report)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms

from generate.harmonic.phonons import IMAGINARY_TOLERANCE_THZ


@dataclass(frozen=True)
class SSCHASettings:
    temperature_K: float = 300.0
    quantum: bool = True  # Bose-Einstein mode occupations; False: classical
    n_configurations: int = 200  # per ensemble, in antithetic (±u) pairs
    max_configurations: int = 6400  # ensembles grow up to this to reach frequency_error_target_THz
    max_steps: int = 60
    mixing: float = 1.0  # fraction of the preconditioned step taken
    ess_threshold: float = 0.5  # draw a new ensemble below this Kong-Liu effective sample fraction
    gradient_error_fraction: float = 0.5  # stop when the gradient is below this fraction of its error
    relative_gradient_tolerance: float = 1e-10  # or when it vanishes against Φ (exactly harmonic V)
    frequency_error_target_THz: float | None = 0.05  # also require this stochastic error, growing ensembles
    relax_centroids: bool = True
    acoustic_sum_rule: bool = True  # off for on-site model potentials, see SupercellModel
    min_frequency_THz: float = 0.5  # stabilization floor for non-acoustic modes (the generator starts it no higher
    # than half the softest real harmonic mode: generate.run.records.sscha_with_floor)
    displacement_A: float = 0.01  # finite displacement of the harmonic force constants
    symprec: float = 1e-5
    primitive_matrix: str | tuple | None = "auto"
    q_mesh: tuple[int, int, int] = (8, 8, 8)
    n_error_batches: int = 10  # batches of antithetic pairs for the stochastic errors
    imaginary_tolerance_THz: float = IMAGINARY_TOLERANCE_THZ  # harmonic modes below -this are unstable
    max_atoms_per_chunk: int = 2048  # evaluate_batch chunk size
    seed: int = 0

    def __post_init__(self):
        from generate.run import checks

        checks.temperature(self.temperature_K, "sscha.temperature_K", self.quantum)
        checks.positive(self.n_configurations, "sscha.n_configurations", integer=True, minimum=2, strict=False)
        if checks.positive(self.max_configurations, "sscha.max_configurations", integer=True) < self.n_configurations:
            raise checks.SettingsError(
                f"sscha.max_configurations = {self.max_configurations} is below sscha.n_configurations = {self.n_configurations}"
            )
        checks.positive(self.max_steps, "sscha.max_steps", integer=True)
        checks.fraction(self.mixing, "sscha.mixing")
        checks.fraction(self.ess_threshold, "sscha.ess_threshold")
        checks.positive(self.gradient_error_fraction, "sscha.gradient_error_fraction")
        if self.frequency_error_target_THz is not None:
            checks.positive(self.frequency_error_target_THz, "sscha.frequency_error_target_THz")
        checks.positive(self.min_frequency_THz, "sscha.min_frequency_THz", strict=False)
        checks.positive(self.displacement_A, "sscha.displacement_A")
        checks.positive(self.symprec, "sscha.symprec")
        checks.mesh(self.q_mesh, "sscha.q_mesh")
        checks.positive(self.n_error_batches, "sscha.n_error_batches", integer=True, minimum=2, strict=False)
        checks.positive(self.imaginary_tolerance_THz, "sscha.imaginary_tolerance_THz", strict=False)


@dataclass(frozen=True)
class SSCHAStep:
    """One SSCHA step: the statistics of the auxiliary Φ before its update."""

    step: int
    n_configurations: int
    new_ensemble: bool
    effective_sample_fraction: float
    free_energy_eV_atom: float
    free_energy_error_eV_atom: float
    gradient_norm: float  # Frobenius norm of the symmetrized gradient of D, eV/(Å² amu)
    gradient_error: float  # its stochastic error
    max_frequency_error_THz: float
    min_frequency_THz: float
    max_centroid_force_eV_A: float  # symmetrized average force
    n_stabilized_modes: int  # modes of the updated Φ that the stabilization rule had to lift
    n_potential_evaluations: int  # cumulative


@dataclass(frozen=True)
class UnstableMode:
    qpoint: tuple[float, float, float]  # reduced coordinates of the primitive reciprocal lattice
    band: int
    frequency_THz: float  # negative: imaginary


@dataclass(frozen=True)
class SurrogateReport:
    """How the surrogate did against the potential on the verification ensemble (fresh, drawn from the
    final auxiliary system, evaluated by both). Differences are paired, potential minus surrogate on the
    same displacements, so the sampling noise they share cancels."""

    n_training_structures: int
    n_fits: int  # 1 + refits with the verification ensembles added to the training set
    n_parameters: int
    n_nonzero_parameters: int
    n_monomials: int  # terms of the folded expansion evaluated per configuration
    training_force_rmse_eV_A: float
    n_verification: int
    verification_force_rmse_eV_A: float
    verification_relative_force_error: float  # rmse / rms of the potential's forces
    max_frequency_difference_THz: float  # corrected SSCHA frequencies minus the surrogate's own (max |.|)
    frequency_difference_error_THz: float  # stochastic error of that difference (max over modes)
    free_energy_difference_eV_atom: float  # <V - V_surrogate> over the verification ensemble
    free_energy_difference_error_eV_atom: float
    surrogate_frequency_error_THz: float  # stochastic error of the SSCHA on the surrogate itself
    corrected: bool  # the differences were added to the reported frequencies and free energy
    n_surrogate_evaluations: int
    n_corrections: int = 1  # verified correction steps taken
    last_correction_THz: float = float("nan")  # largest frequency change of the last step (converged: small)


@dataclass(frozen=True)
class SSCHAResult:
    temperature_K: float
    quantum: bool
    backend: str
    converged: bool
    status: str
    supercell: Atoms  # centroids
    force_constants_eV_A2: np.ndarray  # (N, N, 3, 3), phonopy's supercell order
    harmonic_force_constants_eV_A2: np.ndarray
    supercell_frequencies_THz: np.ndarray  # all 3N, sorted; negative: imaginary
    supercell_frequency_errors_THz: np.ndarray  # stochastic, in the same order
    harmonic_supercell_frequencies_THz: np.ndarray
    unstable_harmonic_modes: tuple[UnstableMode, ...]
    free_energy_eV_atom: float  # includes the potential energy: F = F_harm(Φ) + ⟨V - V_harm⟩
    free_energy_error_eV_atom: float
    sigma_A: float
    n_potential_evaluations: int
    history: tuple[SSCHAStep, ...]
    seed: int
    wall_time_s: float
    commensurate_qpoints: np.ndarray
    commensurate_frequencies_THz: np.ndarray  # (n_q, n_bands)
    mesh_qpoints: np.ndarray
    mesh_weights: np.ndarray
    mesh_frequencies_THz: np.ndarray
    surrogate: SurrogateReport | None = None
    sigma_A_error: float = float("nan")  # stochastic (jackknife over antithetic pairs)
    phonon: object = field(default=None, repr=False)  # phonopy.Phonopy with the SSCHA force constants
    expansion: object = field(default=None, repr=False)  # the surrogate's fitted expansion (surrogate engine only)

    @property
    def max_frequency_error_THz(self) -> float:
        return float(self.supercell_frequency_errors_THz.max())

    def to_json_dict(self) -> dict:
        return {
            "temperature_K": self.temperature_K,
            "quantum": self.quantum,
            "backend": self.backend,
            "converged": self.converged,
            "status": self.status,
            "supercell_frequencies_THz": self.supercell_frequencies_THz.tolist(),
            "supercell_frequency_errors_THz": self.supercell_frequency_errors_THz.tolist(),
            "harmonic_supercell_frequencies_THz": self.harmonic_supercell_frequencies_THz.tolist(),
            "unstable_harmonic_modes": [asdict(m) for m in self.unstable_harmonic_modes],
            "free_energy_eV_atom": self.free_energy_eV_atom,
            "free_energy_error_eV_atom": self.free_energy_error_eV_atom,
            "sigma_A": self.sigma_A,
            "sigma_A_error": self.sigma_A_error,
            "n_potential_evaluations": self.n_potential_evaluations,
            "history": [asdict(s) for s in self.history],
            "seed": self.seed,
            "wall_time_s": self.wall_time_s,
            "commensurate_qpoints": self.commensurate_qpoints.tolist(),
            "commensurate_frequencies_THz": self.commensurate_frequencies_THz.tolist(),
            "mesh_qpoints": self.mesh_qpoints.tolist(),
            "mesh_weights": self.mesh_weights.tolist(),
            "mesh_frequencies_THz": self.mesh_frequencies_THz.tolist(),
            "surrogate": asdict(self.surrogate) if self.surrogate is not None else None,
        }


def n_held(result) -> int:
    """Modes the stabilization rule held at the floor in the result's last SCHA step (``SSCHAStep.n_stabilized_modes``)."""
    return int(result.history[-1].n_stabilized_modes) if result.history else 0
