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
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

from generate.harmonic import explicit_primitive_matrix, to_phonopy_atoms

log = logging.getLogger("thermobench.sscha")  # step-by-step progress; the CLI shows it on stderr
HBAR_EV_T = units._hbar * units.J * units.second  # ħ in eV × ASE time units
THZ_PER_OMEGA = units.second / (2 * np.pi * 1e12)  # angular frequency in ASE units -> THz
UNSTABLE_TOLERANCE_THZ = 0.1  # as in generate.harmonic: ML potentials leave ±0.1 THz of noise


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
    frequency_error_target_THz: float | None = None  # also require this stochastic error, growing ensembles
    relax_centroids: bool = True
    acoustic_sum_rule: bool = True  # off for on-site model potentials, see SupercellModel
    min_frequency_THz: float = 0.5  # stabilization floor for non-acoustic modes
    displacement_A: float = 0.01  # finite displacement of the harmonic force constants
    symprec: float = 1e-5
    primitive_matrix: str | tuple | None = "auto"
    q_mesh: tuple[int, int, int] = (8, 8, 8)
    n_error_batches: int = 10  # batches of antithetic pairs for the stochastic errors
    max_atoms_per_chunk: int = 2048  # evaluate_batch chunk size
    seed: int = 0

    def __post_init__(self):
        from generate import checks

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
    max_frequency_difference_THz: float  # SSCHA frequencies of the potential minus the surrogate's (max |.|)
    frequency_difference_error_THz: float  # stochastic error of that difference (max over modes)
    free_energy_difference_eV_atom: float  # <V - V_surrogate> over the verification ensemble
    free_energy_difference_error_eV_atom: float
    surrogate_frequency_error_THz: float  # stochastic error of the SSCHA on the surrogate itself
    corrected: bool  # the differences were added to the reported frequencies and free energy
    n_surrogate_evaluations: int


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
    phonon: object = field(default=None, repr=False)  # phonopy.Phonopy with the SSCHA force constants

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


# ----------------------------------------------------------------------------------------------
# The supercell: masses, symmetry, acoustic subspace


@dataclass(frozen=True)
class SupercellModel:
    """What every step needs to know about the supercell.

    ``acoustic_sum_rule``: for a crystal, translating every atom costs nothing, so Φ obeys
    Σ_j Φ_ij = 0 and the three translations are zero modes that a Gaussian cannot sample; they are
    excluded from the density and the sum rule is imposed on Φ. On-site model potentials (an
    Einstein crystal of oscillators tied to fixed points) are not translation invariant: there the
    rule would be wrong and all 3N modes are sampled.
    """

    phonon: object = field(repr=False)  # phonopy.Phonopy on the reference structure
    atoms: Atoms  # reference supercell, phonopy's atom order, with masses
    sqrt_masses: np.ndarray  # (3N,) sqrt(m) per Cartesian component
    symmetry: object = field(repr=False)  # phonopy Symmetry of the supercell
    basis: np.ndarray  # (3N, 3N or 3N-3) orthonormal basis of the sampled (non-acoustic) subspace
    acoustic_sum_rule: bool

    @property
    def n_atoms(self) -> int:
        return len(self.atoms)


def supercell_model(atoms: Atoms, supercell_matrix, settings: SSCHASettings) -> SupercellModel:
    from phonopy import Phonopy
    from phonopy.structure.symmetry import Symmetry

    matrix = np.array(supercell_matrix, dtype=int)
    matrix = np.diag(matrix) if matrix.ndim == 1 else matrix
    unitcell = to_phonopy_atoms(atoms)
    primitive = explicit_primitive_matrix(unitcell, settings.primitive_matrix, settings.symprec)
    phonon = Phonopy(unitcell, supercell_matrix=matrix, primitive_matrix=primitive, symprec=settings.symprec)
    cell = phonon.supercell
    supercell = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, masses=cell.masses, pbc=True)
    sqrt_masses = np.repeat(np.sqrt(cell.masses), 3)
    if settings.acoustic_sum_rule:
        translations = np.zeros((3 * len(supercell), 3))
        for alpha in range(3):
            translations[alpha::3, alpha] = sqrt_masses[alpha::3]
        # Columns of U beyond the first three span the complement of the mass-weighted translations.
        u, _, _ = np.linalg.svd(translations / np.linalg.norm(translations, axis=0), full_matrices=True)
        basis = u[:, 3:]
    else:
        basis = np.eye(3 * len(supercell))
    return SupercellModel(
        phonon=phonon,
        atoms=supercell,
        sqrt_masses=sqrt_masses,
        symmetry=Symmetry(cell, symprec=settings.symprec),
        basis=basis,
        acoustic_sum_rule=settings.acoustic_sum_rule,
    )


def to_matrix(fc: np.ndarray) -> np.ndarray:
    """(N, N, 3, 3) -> (3N, 3N)."""
    n = fc.shape[0]
    return fc.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)


def to_blocks(matrix: np.ndarray) -> np.ndarray:
    """(3N, 3N) -> (N, N, 3, 3)."""
    n = matrix.shape[0] // 3
    return np.ascontiguousarray(matrix.reshape(n, 3, n, 3).transpose(0, 2, 1, 3))


def symmetrize_matrix(model: SupercellModel, matrix: np.ndarray, sum_rule: bool | None = None) -> np.ndarray:
    """Space-group, index-permutation and (optionally) acoustic-sum-rule symmetrization of a (3N, 3N) FC.

    phonopy's space-group average preserves the sum rule and the permutation symmetry; its
    translational/permutation step can break the space group at round-off level, hence the order.
    """
    from phonopy.harmonic.force_constants import (
        symmetrize_force_constants,
        symmetrize_force_constants_by_space_group,
    )

    sum_rule = model.acoustic_sum_rule if sum_rule is None else sum_rule
    fc = to_blocks(0.5 * (matrix + matrix.T))
    if sum_rule:
        symmetrize_force_constants(fc, level=3)
    symmetrize_force_constants_by_space_group(fc, model.atoms.cell.array, model.symmetry)
    out = to_matrix(fc)
    return 0.5 * (out + out.T)


def symmetrize_vector(model: SupercellModel, vectors: np.ndarray) -> np.ndarray:
    """Average (N, 3) atomic vectors (forces) over the space group: zero where sites have no freedom."""
    from phonopy.utils import similarity_transformation

    rotations = model.symmetry.symmetry_operations["rotations"]
    out = np.zeros_like(vectors)
    lattice_T = model.atoms.cell.array.T
    for rotation, perm in zip(rotations, model.symmetry.atomic_permutations, strict=True):
        out[perm] += vectors @ similarity_transformation(lattice_T, rotation).T
    return out / len(rotations)


# ----------------------------------------------------------------------------------------------
# The Gaussian density of an auxiliary dynamical matrix


@dataclass(frozen=True)
class Modes:
    omega: np.ndarray  # (n_modes,) angular frequencies, ASE units, positive
    vectors: np.ndarray  # (3N, n_modes) mass-weighted eigenvectors
    variance: np.ndarray  # (n_modes,) <v_mu^2> in amu Å^2
    kappa: np.ndarray  # -dln(variance)/dln(omega^2): 1 classical, 1/2 at T = 0


def mode_variance(omega: np.ndarray, temperature_K: float, quantum: bool) -> tuple[np.ndarray, np.ndarray]:
    kT = units.kB * temperature_K
    if not quantum:
        return kT / omega**2, np.ones_like(omega)
    x = HBAR_EV_T * omega / max(kT, 1e-300)
    variance = HBAR_EV_T / (2 * omega) / np.tanh(x / 2)
    kappa = 0.5 + np.where(x < 700, x / (2 * np.sinh(np.minimum(x, 700))), 0.0)
    return variance, kappa


def eigen(model: SupercellModel, dynamical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ω²) and mass-weighted eigenvectors of D on the sampled subspace, in a canonical basis."""
    reduced = model.basis.T @ dynamical @ model.basis
    values, vectors = np.linalg.eigh(0.5 * (reduced + reduced.T))
    return values, model.basis @ canonical_eigenvectors(values, vectors)


# Relative gap below which eigenvalues count as one degenerate level: symmetrized D has exact
# degeneracies up to round-off (1e-14 relative); genuinely distinct levels are far above 1e-8.
DEGENERACY_RTOL = 1e-8


def canonical_eigenvectors(values: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Eigenvectors made independent of how LAPACK resolved degeneracies and signs.

    Within a degenerate level any rotation of the eigenvectors is as valid, and LAPACK's choice
    changes with its thread count; the Gaussian draws ξ·e_μ, the per-mode errors and the mode-wise
    step would follow it, so labels depended on the threads. Each level is rotated to the
    eigenvectors of a fixed generic symmetric matrix projected on it, and every sign is fixed by a
    fixed generic vector: the basis then depends only on D.
    """
    n = vectors.shape[0]
    generator = np.random.default_rng(20261130)  # fixed: defines the canonical basis, not a sample
    probe = generator.standard_normal((n, n))
    probe = probe + probe.T
    direction = generator.standard_normal(n)
    scale = max(float(np.abs(values).max()), 1e-300)
    breaks = np.flatnonzero(np.diff(values) > DEGENERACY_RTOL * scale) + 1
    out = vectors.copy()
    for level in np.split(np.arange(len(values)), breaks):
        if len(level) > 1:
            block = vectors[:, level]
            _, rotation = np.linalg.eigh(block.T @ probe @ block)
            out[:, level] = block @ rotation
    signs = np.sign(direction @ out)
    signs[signs == 0] = 1.0
    return out * signs


def stabilize(model: SupercellModel, dynamical: np.ndarray, min_frequency_THz: float) -> tuple[np.ndarray, int]:
    """The stabilization rule: every sampled mode with ω² < ω_min² gets ω² = max(|ω²|, ω_min²).

    An imaginary mode iν thus starts as a real mode of frequency ν (its curvature's magnitude, the
    scale of the double well), and modes softer than ``min_frequency_THz`` are lifted to it so the
    Gaussian stays narrow enough for the potential. Eigenvectors, and with them the symmetry, are
    kept. Returns the new D and the number of modes changed.
    """
    omega2_min = (min_frequency_THz / THZ_PER_OMEGA) ** 2
    values, vectors = eigen(model, dynamical)
    lifted = values < omega2_min
    if not lifted.any():
        return dynamical, 0
    new_values = np.where(lifted, np.maximum(np.abs(values), omega2_min), values)
    return dynamical + (vectors * (new_values - values)) @ vectors.T, int(lifted.sum())


def gaussian_modes(model: SupercellModel, dynamical: np.ndarray, settings: SSCHASettings) -> Modes:
    values, vectors = eigen(model, dynamical)
    omega = np.sqrt(np.maximum(values, 1e-12))
    variance, kappa = mode_variance(omega, settings.temperature_K, settings.quantum)
    return Modes(omega=omega, vectors=vectors, variance=variance, kappa=kappa)


def harmonic_free_energy_eV(modes: Modes, temperature_K: float, quantum: bool) -> float:
    kT = units.kB * temperature_K
    energy = HBAR_EV_T * modes.omega
    if not quantum:
        return float(np.sum(kT * np.log(energy / kT)))
    if kT == 0:
        return float(np.sum(energy / 2))
    return float(np.sum(energy / 2 + kT * np.log(-np.expm1(-energy / kT))))


def frequencies_THz(dynamical: np.ndarray) -> np.ndarray:
    """All 3N eigenfrequencies of a supercell dynamical matrix, sorted; imaginary as negative."""
    values = np.linalg.eigvalsh(0.5 * (dynamical + dynamical.T))
    return np.sort(np.sign(values) * np.sqrt(np.abs(values)) * THZ_PER_OMEGA)


# ----------------------------------------------------------------------------------------------
# Ensembles


@dataclass(frozen=True)
class Ensemble:
    centroids_A: np.ndarray  # (N, 3) positions the displacements were drawn around
    displacements_A: np.ndarray  # (n, N, 3), pairs (2k, 2k+1) are +u, -u
    log_density: np.ndarray  # (n,) log of the drawing density (up to a shared constant)
    energies_eV: np.ndarray
    forces_eV_A: np.ndarray  # (n, N, 3)


def log_gaussian(modes: Modes, mass_weighted: np.ndarray) -> np.ndarray:
    amplitudes = mass_weighted @ modes.vectors
    return -0.5 * np.sum(amplitudes**2 / modes.variance, axis=1) - 0.5 * np.sum(np.log(modes.variance))


def draw_displacements(model: SupercellModel, modes: Modes, n_configurations: int, rng: np.random.Generator) -> np.ndarray:
    """Antithetic pairs ±u from the Gaussian of ``modes`` (acoustic modes, when excluded, not excited)."""
    n_pairs = max(1, n_configurations // 2)
    amplitudes = rng.standard_normal((n_pairs, modes.omega.size)) * np.sqrt(modes.variance)
    u = (amplitudes @ modes.vectors.T) / model.sqrt_masses
    return np.stack([u, -u], axis=1).reshape(2 * n_pairs, model.n_atoms, 3)


def evaluate(model, structures: list[Atoms], max_atoms_per_chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Energies and forces: batched through ``evaluate_batch`` for a matgl Potential, looped for ASE."""
    if isinstance(model, ForceConstantExpansion):
        return model.energies_and_forces(np.array([atoms.positions for atoms in structures]) - model.reference)
    if isinstance(model, Calculator):
        energies, forces = [], []
        for atoms in structures:
            atoms = atoms.copy()
            atoms.calc = model
            energies.append(atoms.get_potential_energy())
            forces.append(np.array(atoms.get_forces()))
        return np.array(energies), np.array(forces)
    from thermobench.potentials import evaluate_batch

    result = evaluate_batch(model, structures, max_atoms_per_chunk=max_atoms_per_chunk)
    return result.energies_eV, np.array(result.forces_eV_A)


def new_ensemble(model: SupercellModel, potential, centroids_A, modes, n_configurations, rng, settings) -> Ensemble:
    displacements = draw_displacements(model, modes, n_configurations, rng)
    structures = []
    for u in displacements:
        atoms = model.atoms.copy()
        atoms.positions = centroids_A + u
        structures.append(atoms)
    energies, forces = evaluate(potential, structures, settings.max_atoms_per_chunk)
    mass_weighted = displacements.reshape(len(displacements), -1) * model.sqrt_masses
    return Ensemble(
        centroids_A=centroids_A.copy(),
        displacements_A=displacements,
        log_density=log_gaussian(modes, mass_weighted),
        energies_eV=energies,
        forces_eV_A=forces,
    )


# ----------------------------------------------------------------------------------------------
# Statistics of an ensemble for the current auxiliary system


@dataclass(frozen=True)
class Statistics:
    weights: np.ndarray
    effective_sample_fraction: float
    gradient: np.ndarray  # symmetrized (3N, 3N) in D units: D - <d2V>
    batch_gradients: np.ndarray  # (B, 3N, 3N) symmetrized
    batch_weights: np.ndarray  # (B,)
    free_energy_eV: float
    free_energy_error_eV: float
    mean_force_eV_A: np.ndarray  # (N, 3), symmetrized
    frequency_errors_THz: np.ndarray  # per sampled mode, modes order

    @property
    def gradient_error(self) -> float:
        deviations = self.batch_gradients - self.gradient
        return float(np.sqrt(bessel(self.batch_weights) * np.sum(self.batch_weights[:, None, None] ** 2 * deviations**2)))


def bessel(batch_weights: np.ndarray) -> float:
    """B/(B-1): the spread of B batch means about their own mean underestimates their variance."""
    return len(batch_weights) / max(len(batch_weights) - 1, 1)


def pair_batches(n_configurations: int, n_batches: int) -> np.ndarray:
    """Batch index of each configuration; both members of an antithetic pair share a batch."""
    n_pairs = n_configurations // 2
    return np.repeat(np.arange(n_pairs) % min(n_batches, n_pairs), 2)


def ensemble_statistics(model, ensemble: Ensemble, dynamical, centroids_A, settings: SSCHASettings) -> Statistics:
    modes = gaussian_modes(model, dynamical, settings)
    n = len(ensemble.displacements_A)
    u = ensemble.centroids_A + ensemble.displacements_A - centroids_A
    v = u.reshape(n, -1) * model.sqrt_masses
    log_w = log_gaussian(modes, v) - ensemble.log_density
    weights = np.exp(log_w - log_w.max())
    weights /= weights.sum()
    ess = float(1.0 / np.sum(weights**2) / n)

    # Control variate: subtracting the auxiliary's own forces -D v leaves the same mean (its exact
    # value is D on the sampled subspace) but removes the harmonic part of the noise.
    g = ensemble.forces_eV_A.reshape(n, -1) / model.sqrt_masses
    residual = g + v @ dynamical
    scaled = (v @ modes.vectors) / modes.variance  # C^-1 v in mode coordinates

    def gradient_of(w: np.ndarray) -> np.ndarray:
        raw = ((residual * w[:, None]).T @ scaled) @ modes.vectors.T / w.sum()
        return symmetrize_mass_weighted(model, raw)

    batch = pair_batches(n, settings.n_error_batches)
    n_batches = batch.max() + 1
    batch_weights = np.array([weights[batch == b].sum() for b in range(n_batches)])
    batch_gradients = np.array([gradient_of(np.where(batch == b, weights, 0.0)) for b in range(n_batches)])
    gradient = np.einsum("b,bij->ij", batch_weights, batch_gradients)  # = gradient_of(weights), linear

    anharmonic = ensemble.energies_eV - 0.5 * np.einsum("ni,ij,nj->n", v, dynamical, v)
    batch_anharmonic = np.array([np.sum(weights * anharmonic * (batch == b)) / batch_weights[b] for b in range(n_batches)])
    mean_anharmonic = float(np.sum(weights * anharmonic))
    free_energy_error = float(np.sqrt(bessel(batch_weights) * np.sum(batch_weights**2 * (batch_anharmonic - mean_anharmonic) ** 2)))

    frequency_errors = mode_frequency_errors_THz(modes, batch_gradients, batch_weights)

    mean_force = symmetrize_vector(model, np.einsum("n,nij->ij", weights, ensemble.forces_eV_A))
    return Statistics(
        weights=weights,
        effective_sample_fraction=ess,
        gradient=gradient,
        batch_gradients=batch_gradients,
        batch_weights=batch_weights,
        free_energy_eV=harmonic_free_energy_eV(modes, settings.temperature_K, settings.quantum) + mean_anharmonic,
        free_energy_error_eV=free_energy_error,
        mean_force_eV_A=mean_force,
        frequency_errors_THz=frequency_errors,
    )


def mode_frequency_errors_THz(modes: Modes, batch_gradients: np.ndarray, batch_weights: np.ndarray) -> np.ndarray:
    """Stochastic error of each mode's frequency: the first-order change of its ω² under each batch's
    deviation of the gradient from the weighted mean, propagated to ω."""
    deviations = batch_gradients - np.einsum("b,bij->ij", batch_weights, batch_gradients)
    domega2 = np.einsum("im,bij,jm->bm", modes.vectors, deviations, modes.vectors)
    omega2_error = np.sqrt(bessel(batch_weights) * np.sum(batch_weights[:, None] ** 2 * domega2**2, axis=0))
    return omega2_error / (2 * modes.omega) * THZ_PER_OMEGA


def symmetrize_mass_weighted(model: SupercellModel, matrix: np.ndarray) -> np.ndarray:
    """Symmetrize a mass-weighted matrix (space-group operations only map atoms of equal mass)."""
    m = model.sqrt_masses
    projector = model.basis @ model.basis.T
    sym = symmetrize_matrix(model, projector @ matrix @ projector * np.outer(m, m), sum_rule=False)
    return projector @ (sym / np.outer(m, m)) @ projector


def preconditioned_step(model, dynamical, harmonic_dynamical, gradient, settings) -> np.ndarray:
    """A Newton-like step in the auxiliary's mode basis.

    Let A_μ = <d2V>_μμ - D_harm,μμ be mode μ's anharmonic renormalization. With quartic
    anharmonicity it is a sum over modes, A_μ = Σ_ν Λ_μν <v_ν²>, and the mean-field assumption that
    every mode feeds it in proportion to its thermal amplitude, Λ_μν <v_ν²> ≈ A_μ w_ν with
    w_ν = <v_ν²>/Σ<v²>, gives the Jacobian of the self-consistent map a rank-one form
    -A bᵀ, b_ν = κ_ν w_ν/ω_ν² (κ = -dln<v²>/dlnω², 1 classically, 1/2 at T = 0). Newton's step on
    the mode-diagonal residual then follows from Sherman-Morrison. It matters for strongly
    stabilized double wells (A ≫ ω²), where the plain iteration D <- <d2V> overshoots and diverges;
    components that do not change the thermal amplitudes get the plain step. A step that lowers ω²
    is finally taken in 1/ω² (the mode's thermal amplitude), in which the residual is convex, so it
    cannot cross zero. The fixed point (zero gradient) is unchanged.
    """
    modes = gaussian_modes(model, dynamical, settings)
    omega2 = modes.omega**2
    in_modes = modes.vectors.T @ gradient @ modes.vectors
    target = dynamical - gradient
    renormalization = np.einsum("im,ij,jm->m", modes.vectors, target - harmonic_dynamical, modes.vectors)
    b = modes.kappa * modes.variance / modes.variance.sum() / omega2
    residual = np.diag(in_modes).copy()
    denominator = 1.0 + b @ renormalization
    if denominator > 1.0:  # net hardening: the plain step overshoots
        residual -= renormalization * (b @ residual) / denominator
    residual *= omega2 / (omega2 + np.maximum(residual, 0.0))
    np.fill_diagonal(in_modes, residual)
    return modes.vectors @ in_modes @ modes.vectors.T


def converged_gradient(gradient_norm, gradient_error, carried_error, dynamical_norm, settings) -> bool:
    """The convergence criterion on the gradient.

    The estimated gradient Ĝ carries the ensemble's noise δG, and on an ensemble independent of the
    one that last moved Φ it also sees the noise Φ carries from that one (δΦ, ``carried_error``):
    E|Ĝ|² = |G|² + δG² + δΦ². The true gradient is estimated as sqrt(max(0, |Ĝ|² - δG² - δΦ²)),
    and it is at the noise level when that is at most ``gradient_error_fraction`` × δG.
    :func:`run_sscha` iterates on one ensemble until this holds there (with δΦ = 0, Φ having been
    fitted to that ensemble's own noise), and declares convergence only when it also holds on a
    freshly drawn ensemble. A gradient that vanishes against D (``relative_gradient_tolerance``)
    also counts: an exactly harmonic potential has no noise to compare with.
    """
    if gradient_norm <= settings.relative_gradient_tolerance * dynamical_norm:
        return True
    noise2 = gradient_error**2 + carried_error**2
    return gradient_norm**2 - noise2 <= settings.gradient_error_fraction**2 * gradient_error**2


def unconverged_status(settings, n_stabilized: int) -> str:
    """Why a run stopped without converging; modes held at the stabilization floor are named, as the
    SCHA then wants them softer than ``min_frequency_THz`` (a structural instability near this T)."""
    status = f"not converged in {settings.max_steps} steps"
    if n_stabilized:
        status += f": {n_stabilized} modes held at the stabilization floor of {settings.min_frequency_THz} THz"
    return status


# ----------------------------------------------------------------------------------------------
# Harmonic start


def harmonic_force_constants(model: SupercellModel, potential, settings: SSCHASettings) -> tuple[np.ndarray, int]:
    """Finite-displacement FC (phonopy), symmetrized like every SSCHA step; returns (FC, evaluations)."""
    phonon = model.phonon
    phonon.generate_displacements(distance=settings.displacement_A)
    structures = []
    for cell in phonon.supercells_with_displacements:
        structures.append(Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True))
    _, forces = evaluate(potential, structures, settings.max_atoms_per_chunk)
    phonon.forces = forces
    phonon.produce_force_constants()
    return to_blocks(symmetrize_matrix(model, to_matrix(phonon.force_constants))), len(structures)


def unstable_modes(phonon, force_constants: np.ndarray, qpoints: np.ndarray) -> tuple[UnstableMode, ...]:
    phonon.force_constants = force_constants
    phonon.run_qpoints(qpoints)
    frequencies = np.asarray(phonon.qpoints.frequencies)
    return tuple(
        UnstableMode(qpoint=tuple(float(x) for x in qpoints[i]), band=int(j), frequency_THz=float(frequencies[i, j]))
        for i, j in zip(*np.nonzero(frequencies < -UNSTABLE_TOLERANCE_THZ), strict=True)
    )


# ----------------------------------------------------------------------------------------------
# The SSCHA loop


def starting_dynamical_matrices(model, fc_harmonic, initial_force_constants, settings):
    """Mass weights, the harmonic dynamical matrix and the symmetrized, stabilized start of an SSCHA run."""
    mass_outer = np.outer(model.sqrt_masses, model.sqrt_masses)
    harmonic_dynamical = to_matrix(fc_harmonic) / mass_outer
    start_fc = fc_harmonic if initial_force_constants is None else initial_force_constants
    dynamical = symmetrize_mass_weighted_fc(model, to_matrix(start_fc) / mass_outer)
    dynamical, n_stabilized = stabilize(model, dynamical, settings.min_frequency_THz)
    return mass_outer, harmonic_dynamical, dynamical, n_stabilized


def run_sscha(
    atoms: Atoms,
    potential,
    supercell_matrix,
    settings: SSCHASettings = SSCHASettings(),
    *,
    initial_force_constants: np.ndarray | None = None,
    harmonic: tuple[np.ndarray, int] | None = None,
) -> SSCHAResult:
    """Run the SSCHA for ``atoms`` (primitive or unit cell, relaxed) in the given supercell.

    ``potential`` is a matgl Potential (ensembles are evaluated in batches) or any ASE calculator.
    The start is the harmonic force constants made stable by :func:`stabilize` (or
    ``initial_force_constants``, (N, N, 3, 3) in phonopy's supercell order); ``harmonic`` passes
    precomputed (harmonic FC, evaluations). Convergence is judged by :func:`converged_gradient`,
    and also by ``frequency_error_target_THz`` when set, doubling the ensemble until the stochastic
    error of every frequency is below it. Running out of steps or configurations is reported in
    ``converged``/``status``, with the last state and the whole history.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    model = supercell_model(atoms, supercell_matrix, settings)
    fc_harmonic, evaluations = harmonic if harmonic is not None else harmonic_force_constants(model, potential, settings)
    mass_outer, harmonic_dynamical, dynamical, _ = starting_dynamical_matrices(model, fc_harmonic, initial_force_constants, settings)
    centroids = model.atoms.positions.copy()

    n_configurations = settings.n_configurations
    ensemble, history, stats = None, [], None
    converged, status, n_stabilized = False, None, 0  # status: set where the loop stops early
    # Noise that Φ carries from the ensemble that last moved it: its gradient error, its per-mode
    # frequency errors and its size. The harmonic start carries none.
    carried_error, carried_frequency_errors, carried_size = 0.0, None, 0
    # Steps on one reweighted ensemble can overshoot into a two-step cycle: halve the step whenever
    # the gradient grows on the same ensemble, back to full mixing on a fresh one.
    step_scale, previous_gradient_norm = settings.mixing, np.inf
    for step in range(settings.max_steps):
        fresh = ensemble is None
        if not fresh:
            stats = ensemble_statistics(model, ensemble, dynamical, centroids, settings)
            fresh = stats.effective_sample_fraction < settings.ess_threshold
        if fresh:
            modes = gaussian_modes(model, dynamical, settings)
            ensemble = new_ensemble(model, potential, centroids, modes, n_configurations, rng, settings)
            evaluations += len(ensemble.energies_eV)
            stats = ensemble_statistics(model, ensemble, dynamical, centroids, settings)
        gradient_norm, gradient_error = float(np.linalg.norm(stats.gradient)), stats.gradient_error
        if fresh:
            step_scale = settings.mixing
        elif gradient_norm > previous_gradient_norm:
            step_scale /= 2
        previous_gradient_norm = gradient_norm
        history.append(
            SSCHAStep(
                step=step,
                n_configurations=len(ensemble.energies_eV),
                new_ensemble=fresh,
                effective_sample_fraction=stats.effective_sample_fraction,
                free_energy_eV_atom=stats.free_energy_eV / model.n_atoms,
                free_energy_error_eV_atom=stats.free_energy_error_eV / model.n_atoms,
                gradient_norm=gradient_norm,
                gradient_error=gradient_error,
                max_frequency_error_THz=float(stats.frequency_errors_THz.max()),
                min_frequency_THz=float(frequencies_THz(dynamical)[0]),
                max_centroid_force_eV_A=float(np.abs(stats.mean_force_eV_A).max()),
                n_stabilized_modes=n_stabilized,
                n_potential_evaluations=evaluations,
            )
        )
        log.info(
            "SSCHA %g K step %d: F = %.5f eV/atom, |gradient| %.3g (noise %.3g), %d configurations%s, %d evaluations",
            settings.temperature_K, step, history[-1].free_energy_eV_atom, gradient_norm, gradient_error,
            len(ensemble.energies_eV), " (new)" if fresh else "", evaluations,
        )
        at_noise = converged_gradient(
            gradient_norm, gradient_error, carried_error if fresh else 0.0, np.linalg.norm(dynamical), settings
        )
        if fresh and at_noise and n_stabilized == 0:
            # An independent ensemble cannot tell the gradient from noise: Φ is self-consistent.
            errors = stats.frequency_errors_THz if carried_frequency_errors is None else carried_frequency_errors
            target = settings.frequency_error_target_THz
            if target is None or errors.max() <= target:
                converged, status = True, "converged"
                break
            if carried_size >= settings.max_configurations:
                status = f"frequency error {errors.max():.3g} THz above {target} THz with {carried_size} configurations"
                break
            # Errors scale as 1/sqrt(n): size the next ensembles for the target, and use this one.
            needed = int(np.ceil(1.1 * max(carried_size, 2) * (errors.max() / target) ** 2 / 2)) * 2
            n_configurations = min(max(n_configurations, needed), settings.max_configurations)
        elif at_noise and not fresh:
            if step == settings.max_steps - 1:
                break  # no step left to check on a fresh ensemble; keep this one for the final statistics
            # This ensemble has nothing more to say; check the result on an independent one.
            ensemble = None
            continue
        step_matrix = preconditioned_step(model, dynamical, harmonic_dynamical, stats.gradient, settings)
        dynamical = symmetrize_mass_weighted_fc(model, dynamical - step_scale * step_matrix)
        dynamical, n_stabilized = stabilize(model, dynamical, settings.min_frequency_THz)
        if settings.relax_centroids:
            centroids = centroids + centroid_step(model, dynamical, stats.mean_force_eV_A, settings)
        carried_error, carried_frequency_errors = gradient_error, stats.frequency_errors_THz
        carried_size = len(ensemble.energies_eV)

    status = status or unconverged_status(settings, n_stabilized)
    final_errors = stats.frequency_errors_THz if carried_frequency_errors is None else carried_frequency_errors
    return sscha_result(
        model, settings, "direct", converged, status, dynamical, centroids, fc_harmonic, final_errors, history,
        sigma_A=anharmonicity_score(model, ensemble, stats.weights, fc_harmonic),
        n_potential_evaluations=evaluations,
        wall_time_s=time.perf_counter() - start,
    )


def sscha_result(
    model, settings, backend, converged, status, dynamical, centroids, fc_harmonic, mode_errors_THz, history, **fields
) -> SSCHAResult:
    """The result of a run ending at ``dynamical`` and ``centroids``: frequencies with their errors
    (``mode_errors_THz`` in the order of the sampled modes), harmonic instabilities, commensurate and
    mesh frequencies; the free energy is the last step's. ``fields``: sigma_A,
    n_potential_evaluations, wall_time_s."""
    from generate.harmonic import commensurate_qpoints

    mass_outer = np.outer(model.sqrt_masses, model.sqrt_masses)
    supercell = model.atoms.copy()
    supercell.positions = centroids
    fc = to_blocks(dynamical * mass_outer)
    modes = gaussian_modes(model, dynamical, settings)
    frequencies, errors = sorted_frequencies_with_errors(model, dynamical, modes, mode_errors_THz)
    qpoints = commensurate_qpoints(model.phonon)
    unstable = unstable_modes(model.phonon, fc_harmonic, qpoints)
    commensurate, mesh = phonon_frequencies(model.phonon, fc, qpoints, settings.q_mesh)
    return SSCHAResult(
        temperature_K=settings.temperature_K,
        quantum=settings.quantum,
        backend=backend,
        converged=converged,
        status=status,
        supercell=supercell,
        force_constants_eV_A2=fc,
        harmonic_force_constants_eV_A2=fc_harmonic,
        supercell_frequencies_THz=frequencies,
        supercell_frequency_errors_THz=errors,
        harmonic_supercell_frequencies_THz=frequencies_THz(to_matrix(fc_harmonic) / mass_outer),
        unstable_harmonic_modes=unstable,
        free_energy_eV_atom=history[-1].free_energy_eV_atom,
        free_energy_error_eV_atom=history[-1].free_energy_error_eV_atom,
        history=tuple(history),
        seed=settings.seed,
        commensurate_qpoints=np.asarray(qpoints),
        commensurate_frequencies_THz=commensurate,
        mesh_qpoints=mesh[0],
        mesh_weights=mesh[1],
        mesh_frequencies_THz=mesh[2],
        phonon=model.phonon,
        **fields,
    )


def phonon_frequencies(phonon, fc: np.ndarray, qpoints: np.ndarray, q_mesh) -> tuple[np.ndarray, tuple]:
    """Frequencies of supercell force constants at the commensurate q-points and on a Γ-centred mesh
    (Fourier interpolation); sets them on ``phonon``. Returns (commensurate, (mesh q, weights, frequencies))."""
    phonon.force_constants = fc
    phonon.run_qpoints(qpoints)
    commensurate = np.asarray(phonon.qpoints.frequencies)
    phonon.run_mesh(q_mesh, is_gamma_center=True)
    mesh = phonon.mesh
    return commensurate, (np.asarray(mesh.qpoints), np.asarray(mesh.weights), np.asarray(mesh.frequencies))


def symmetrize_mass_weighted_fc(model: SupercellModel, dynamical: np.ndarray) -> np.ndarray:
    """Symmetrize D as force constants Φ = M^½ D M^½ (space group, sum rule when on)."""
    mass_outer = np.outer(model.sqrt_masses, model.sqrt_masses)
    return symmetrize_matrix(model, dynamical * mass_outer) / mass_outer


def centroid_step(model: SupercellModel, dynamical: np.ndarray, mean_force_eV_A: np.ndarray, settings) -> np.ndarray:
    """Newton step of the centroids along the symmetrized average force, with D as the Hessian.

    The force is averaged over the space group first, so only internal coordinates that symmetry
    leaves free move (in NaCl or a cubic perovskite nothing moves).
    """
    modes = gaussian_modes(model, dynamical, settings)
    g = mean_force_eV_A.reshape(-1) / model.sqrt_masses
    dv = modes.vectors @ ((modes.vectors.T @ g) / modes.omega**2)
    return settings.mixing * (dv / model.sqrt_masses).reshape(-1, 3)


def sorted_frequencies_with_errors(model, dynamical, modes: Modes, mode_errors_THz) -> tuple[np.ndarray, np.ndarray]:
    """All 3N frequencies sorted, with the stochastic error of each (acoustic zero modes: 0)."""
    sampled = modes.omega * THZ_PER_OMEGA
    n_acoustic = 3 * model.n_atoms - sampled.size
    frequencies = np.concatenate([np.zeros(n_acoustic), sampled])
    errors = np.concatenate([np.zeros(n_acoustic), mode_errors_THz])
    order = np.argsort(frequencies, kind="stable")
    return frequencies[order], errors[order]


def anharmonicity_score(model: SupercellModel, ensemble: Ensemble, weights, fc_harmonic) -> float:
    """σᴬ = sqrt(Σ(f - f_harm)² / Σf²) over the (reweighted) ensemble, Knoop et al. PRM 4, 083809 (2020).

    f_harm = -Φ_harm u with u measured from the reference (static equilibrium) positions; the
    thermal ensemble is the SSCHA's Gaussian instead of molecular dynamics.
    """
    n = len(ensemble.energies_eV)
    u = (ensemble.centroids_A + ensemble.displacements_A - model.atoms.positions).reshape(n, -1)
    forces = ensemble.forces_eV_A.reshape(n, -1)
    harmonic = -u @ to_matrix(fc_harmonic).T
    return float(np.sqrt(np.sum(weights[:, None] * (forces - harmonic) ** 2) / np.sum(weights[:, None] * forces**2)))


# ----------------------------------------------------------------------------------------------
# Surrogate backend: a sparse force-constant expansion fitted with hiphive


@dataclass(frozen=True)
class SurrogateSettings:
    n_training_structures: int = 40  # displaced supercells evaluated by the potential for the first fit
    cutoffs_A: tuple[float, float, float] | None = None  # orders 2, 3, 4; None: from cutoff_factors
    # × nearest-neighbour distance. Quartic terms within the first shell only: on NaCl, 1.45 (second
    # shell) lowered the verified force error from 0.113 to 0.107 for 3× the cluster-space time.
    cutoff_factors: tuple[float, float, float] = (1.8, 1.8, 1.1)
    fit_method: str = "ardr"  # trainstation: ardr | lasso | rfe | omp | least-squares | ...
    averages: str = "analytic"  # SSCHA on the surrogate: exact Gaussian averages | "ensemble" (sampled)
    n_configurations: int = 2000  # ensemble averages only: SSCHA ensembles on the surrogate
    max_configurations: int = 64000
    n_verification: int = 200  # fresh ensemble evaluated by the potential at the end
    max_verification: int = 3200  # verification grows up to this to meet frequency_error_target_THz
    refit_threshold_THz: float = 0.1  # refit (verification added to training) above this difference
    max_refits: int = 2
    correct: bool = True  # add the verified differences to the reported frequencies and free energy


@dataclass(frozen=True)
class Monomials:
    """One order of a polynomial in the flattened displacements u (index 3·atom + Cartesian):
    Σ_t coefficients[t] Π_k u[dofs[t, k]], each monomial once (indices sorted within a row)."""

    dofs: np.ndarray  # (T, order) int
    coefficients: np.ndarray  # (T,)

    @property
    def order(self) -> int:
        return self.dofs.shape[1]


def merge_monomials(dofs: np.ndarray, coefficients: np.ndarray, tolerance: float = 0.0) -> Monomials:
    """Sort each row (the product commutes), sum the coefficients of equal rows, drop |c| <= tolerance."""
    dofs = np.sort(dofs, axis=1)
    unique, inverse = np.unique(dofs, axis=0, return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=coefficients, minlength=len(unique))
    keep = np.abs(summed) > tolerance
    return Monomials(dofs=np.ascontiguousarray(unique[keep]), coefficients=summed[keep])


def harmonic_monomials(matrix: np.ndarray) -> Monomials:
    """½ uᵀ M u as monomials: M_ij u_i u_j for i < j and ½ M_ii u_i²."""
    i, j = np.triu_indices(matrix.shape[0])
    return merge_monomials(np.stack([i, j], axis=1), np.where(i == j, 0.5, 1.0) * matrix[i, j])


def folded_monomials(force_constants, n_atoms: int, copies: int, chunk: int = 20000) -> list[Monomials]:
    """The energy per copy of a hiphive force-constant set on a tiled supercell, as monomials of the
    small supercell's displacements.

    For displacements periodic with the small supercell (every copy moved alike, tiled atom k moving
    as atom k mod N) the tiled energy is ``copies`` times that of one copy. A sorted cluster c adds
    Φ_c·u⊗…⊗u / Π_a m_a! (m_a: how often atom a appears in c), hiphive's convention; folding its atoms
    onto the small supercell and summing equal monomials gives the folded force constants, so the
    SSCHA supercell is evaluated as it is, for a whole ensemble at once.
    """
    from collections import Counter
    from math import factorial, prod

    out = []
    for order in force_constants.orders:
        items = list(force_constants.get_fc_dict(order).items())
        alphas = np.array(np.unravel_index(np.arange(3**order), (3,) * order)).T  # (3^n, n)
        parts = []
        for start in range(0, len(items), chunk):
            clusters = [c for c, _ in items[start : start + chunk]]
            tensors = np.array([fc for _, fc in items[start : start + chunk]]).reshape(len(clusters), -1)
            weights = np.array([1.0 / prod(factorial(m) for m in Counter(c).values()) for c in clusters]) / copies
            dofs = 3 * (np.array(clusters)[:, None, :] % n_atoms) + alphas[None, :, :]
            parts.append(merge_monomials(dofs.reshape(-1, order), (tensors * weights[:, None]).reshape(-1)))
        out.append(
            merge_monomials(
                np.concatenate([p.dofs for p in parts]), np.concatenate([p.coefficients for p in parts]), tolerance=1e-14
            )
        )
    return out


def gaussian_moments(columns: list[np.ndarray], mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """E[Π_k u_{columns[k]}] for u ~ N(mean, covariance), elementwise over the rows of the columns.

    Isserlis' recursion with a mean: E[u_a Π_rest] = mean_a E[Π_rest] + Σ_j C_{a,j} E[Π_{rest∖j}].
    """
    if not columns:
        return np.ones(1)
    first, rest = columns[0], columns[1:]
    out = mean[first] * gaussian_moments(rest, mean, covariance)
    for j in range(len(rest)):
        out = out + covariance[first, rest[j]] * gaussian_moments(rest[:j] + rest[j + 1 :], mean, covariance)
    return out


class ForceConstantExpansion(Calculator):
    """V = E0 + Σ_orders Σ_t c_t Π u: a force-constant expansion on the SSCHA supercell.

    :meth:`energies_and_forces` evaluates a whole ensemble in vectorized passes (what
    :func:`evaluate` uses): the second order as a dense matrix, higher orders as sparse monomials
    whose gradients are scattered back with a sparse incidence matrix. As an ASE calculator it
    evaluates one structure. u is measured from ``reference`` (the supercell's positions).
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, reference: Atoms, energy0_eV: float, orders: list[Monomials], block_elements: int = 2**20):
        super().__init__()
        from scipy.sparse import csr_matrix

        self.reference = reference.positions.copy()
        self.energy0_eV = energy0_eV
        self.orders = orders
        self.block_elements = block_elements  # bounds the (configurations × monomials) work arrays
        n_dofs = self.reference.size
        self.matrix = np.zeros((n_dofs, n_dofs))  # second order: E = ½ uᵀ M u
        self.higher, self.incidence = [], []
        for monomials in orders:
            if monomials.order == 2:
                i, j = monomials.dofs.T
                np.add.at(self.matrix, (i, j), monomials.coefficients)
                np.add.at(self.matrix, (j, i), monomials.coefficients)
                continue
            # One column per (position k, monomial t), with a one at the dof in position k.
            rows = monomials.dofs.T.reshape(-1)
            self.incidence.append(
                csr_matrix((np.ones(rows.size), (rows, np.arange(rows.size))), shape=(n_dofs, rows.size))
            )
            self.higher.append(monomials)

    @property
    def n_monomials(self) -> int:
        return sum(len(m.coefficients) for m in self.orders)

    def energies_and_forces(self, displacements_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies (B,) and forces (B, N, 3) for displacements (B, N, 3) from the reference."""
        u = displacements_A.reshape(len(displacements_A), -1)
        linear = u @ self.matrix
        energies = self.energy0_eV + 0.5 * np.einsum("bi,bi->b", linear, u)
        gradient = linear
        for monomials, incidence in zip(self.higher, self.incidence, strict=True):
            order, coefficients = monomials.order, monomials.coefficients
            step = max(1, self.block_elements // max(1, coefficients.size))
            for start in range(0, len(u), step):
                columns = [u[start : start + step, monomials.dofs[:, k]] for k in range(order)]  # (b, T) each
                left = [None] * (order + 1)  # left[k]: product of the first k columns
                left[1] = columns[0]
                for k in range(1, order):
                    left[k + 1] = left[k] * columns[k]
                energies[start : start + step] += left[order] @ coefficients
                partials = []  # ∂/∂(column k) of each monomial, times its coefficient
                right = coefficients  # product of the columns after k, times the coefficient
                for k in range(order - 1, -1, -1):
                    partials.append(right if k == 0 else left[k] * right)
                    right = right * columns[k]
                stacked = np.concatenate(partials[::-1], axis=1)  # (b, order·T), position-major
                gradient[start : start + step] += (incidence @ stacked.T).T
        return energies, -gradient.reshape(displacements_A.shape)

    def gaussian_averages(self, mean_A: np.ndarray, covariance_A2: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Exact ⟨V⟩, ⟨∂V/∂u⟩ (3N,) and ⟨∂²V/∂u∂u⟩ (3N, 3N) over the Gaussian u ~ N(mean, covariance).

        A polynomial's Gaussian averages are finite sums of moments (Isserlis' theorem with a mean,
        :func:`gaussian_moments`): the SSCHA on the expansion needs no ensemble and has no
        stochastic error. Derivatives of Π_k u_{d_k} are sums over positions k (and ordered pairs
        k ≠ l) of the product of the remaining factors, so repeated dofs come out right.
        """
        mean, covariance = mean_A.reshape(-1), covariance_A2
        n_dofs = mean.size
        energy = self.energy0_eV + 0.5 * (np.sum(self.matrix * covariance) + mean @ self.matrix @ mean)
        gradient = self.matrix @ mean
        hessian = self.matrix.copy()
        for monomials in self.higher:
            columns, coefficients, order = list(monomials.dofs.T), monomials.coefficients, monomials.order
            energy += float(coefficients @ gaussian_moments(columns, mean, covariance))
            for k in range(order):
                others = columns[:k] + columns[k + 1 :]
                gradient += np.bincount(columns[k], coefficients * gaussian_moments(others, mean, covariance), n_dofs)
                for l in range(k + 1, order):
                    rest = [c for m, c in enumerate(columns) if m not in (k, l)]
                    values = coefficients * gaussian_moments(rest, mean, covariance)
                    pair = np.bincount(columns[k] * n_dofs + columns[l], values, n_dofs**2).reshape(n_dofs, n_dofs)
                    hessian += pair + pair.T
        return float(energy), gradient, hessian

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces = self.energies_and_forces((self.atoms.positions - self.reference)[None])
        self.results["energy"] = float(energies[0])
        self.results["forces"] = forces[0]


class quiet_hiphive:
    """hiphive logs cluster-space summaries at INFO level; keep them out of our output."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("hiphive")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def surrogate_cutoffs(model: SupercellModel, settings: SurrogateSettings) -> tuple[list[float], int]:
    """Cutoffs per order (explicit, or multiples of the nearest-neighbour distance) and the tiling of
    the supercell that keeps them below half its smallest plane spacing, as hiphive requires."""
    distances = model.atoms.get_all_distances(mic=True)
    nearest = float(distances[distances > 1e-6].min())
    cutoffs = list(settings.cutoffs_A) if settings.cutoffs_A is not None else [f * nearest for f in settings.cutoff_factors]
    cell = model.atoms.cell.array
    volume = abs(np.linalg.det(cell))
    spacing = min(volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3))
    tiling = int(np.floor(2 * max(cutoffs) / spacing)) + 1
    return cutoffs, tiling


@dataclass(frozen=True)
class ParameterMonomials:
    """One order of the folded expansion as a linear function of the cluster space's eigentensor
    amplitudes a: the monomials' coefficients are ``basis @ a``."""

    dofs: np.ndarray  # (T, order) int, sorted rows
    basis: object = field(repr=False)  # scipy.sparse.csr_matrix (T, n_eigentensors)

    @property
    def order(self) -> int:
        return self.dofs.shape[1]


@dataclass(frozen=True)
class SurrogateBasis:
    """The cluster space of the surrogate and its eigentensors' folded monomials on the SSCHA supercell.

    Amplitudes are ``amplitudes @ p`` for parameters p (hiphive's constraint map, which imposes the
    acoustic sum rule). Keeping the map apart from the folded monomials keeps the monomial basis as
    sparse as the orbits are (a few eigentensors per monomial instead of most parameters).
    """

    cluster_space: object = field(repr=False)
    orders: tuple[ParameterMonomials, ...]
    amplitudes: np.ndarray = field(repr=False)  # (n_eigentensors, n_parameters)
    cutoffs_A: tuple[float, ...]
    tiling: int

    @property
    def n_parameters(self) -> int:
        return int(self.cluster_space.n_dofs)

    def monomials(self, parameters: np.ndarray) -> list[Monomials]:
        """The expansion of ``parameters`` on the supercell, one :class:`Monomials` per order."""
        amplitudes = self.amplitudes @ parameters
        return [Monomials(dofs=m.dofs, coefficients=m.basis @ amplitudes) for m in self.orders]


def surrogate_basis(atoms: Atoms, model: SupercellModel, settings: "SurrogateSettings") -> SurrogateBasis:
    """Build the hiphive cluster space once and fold every eigentensor onto the supercell.

    hiphive needs cutoffs below half the cell it works in, so its force-constant model is built on
    the supercell tiled (:func:`surrogate_cutoffs`); a cluster's tensor is Σ_i a_i E_i over its
    orientation family's eigentensors E_i. Folding its atoms onto the supercell as in
    :func:`folded_monomials` gives monomial coefficients linear in the amplitudes a, so fits and
    refits need neither hiphive's per-structure fit matrices nor its force constants.
    """
    from collections import Counter
    from math import factorial, prod

    from hiphive import ClusterSpace
    from hiphive.force_constant_model import ForceConstantModel
    from scipy.sparse import coo_matrix

    cutoffs, tiling = surrogate_cutoffs(model, settings)
    tiled = model.atoms.repeat(tiling)  # copies in order: tiled atom k is atom k mod N
    n_atoms = model.n_atoms
    with quiet_hiphive():
        cluster_space = ClusterSpace(atoms, cutoffs)
        fcm = ForceConstantModel(tiled, cluster_space)
    n_dofs = 3 * n_atoms
    amplitudes = np.asarray(cluster_space._map_parameters(np.eye(cluster_space.n_dofs)))  # (n_eigentensors, P)
    n_eigentensors = amplitudes.shape[0]
    triplets = {}  # order -> lists of (monomial keys, eigentensor columns, values)
    start = 0
    for orbit in fcm.orbits:
        n_eigen = len(orbit.eigentensors)
        if n_eigen == 0:
            continue  # no free parameters (hiphive leaves such orbits at zero)
        order = orbit.order
        columns = start + np.arange(n_eigen)
        start += n_eigen
        if not np.any(amplitudes[columns]):
            continue  # the constraints pin this orbit to zero
        alphas = np.array(np.unravel_index(np.arange(3**order), (3,) * order)).T  # (3^n, n)
        for family in orbit.orientation_families:
            clusters = np.array([fcm.cluster_list[i] for i in family.cluster_indices])  # (n_c, order)
            # The family holds each cluster's images under the supercell's translations (one per
            # copy), all folding to the same monomials: keep the one whose first atom is in the first
            # copy, which is the energy per copy.
            clusters = clusters[clusters[:, 0] < n_atoms]
            weights = np.array([1.0 / prod(factorial(m) for m in Counter(c).values()) for c in clusters])
            local = np.array(family.eigentensors).reshape(n_eigen, -1).T  # (3^n, n_eigen)
            components = np.nonzero(np.any(local != 0, axis=1))[0]  # tensor components that can be nonzero
            dofs = np.sort(3 * (clusters[:, None, :] % n_atoms) + alphas[None, components], axis=2)  # (n_c, n_a, n)
            keys = dofs @ n_dofs ** np.arange(order)  # one integer per monomial
            values = weights[:, None, None] * local[None, components]  # (n_c, n_a, n_eigen)
            nonzero = values != 0
            c, a, j = np.nonzero(nonzero)
            rows, cols, data = triplets.setdefault(order, ([], [], []))
            rows.append(keys[c, a])
            cols.append(columns[j])
            data.append(values[nonzero])
    orders = []
    for order in sorted(triplets):
        keys, cols, data = (np.concatenate(x) for x in triplets[order])
        unique, inverse = np.unique(keys, return_inverse=True)
        dofs = (unique[:, None] // n_dofs ** np.arange(order)) % n_dofs
        basis = coo_matrix((data, (inverse.reshape(-1), cols)), shape=(len(unique), n_eigentensors)).tocsr()
        basis.sum_duplicates()
        orders.append(ParameterMonomials(dofs=np.ascontiguousarray(dofs), basis=basis))
    return SurrogateBasis(
        cluster_space=cluster_space, orders=tuple(orders), amplitudes=amplitudes, cutoffs_A=tuple(cutoffs), tiling=tiling
    )


def monomial_partials(u: np.ndarray, dofs: np.ndarray) -> list[np.ndarray]:
    """∂/∂(factor k) of each monomial Π_k u[:, dofs[:, k]]: the product of the other factors, (B, T) each."""
    columns = [u[:, dofs[:, k]] for k in range(dofs.shape[1])]
    partials = []
    for k in range(len(columns)):
        product = np.ones_like(columns[0])
        for m, column in enumerate(columns):
            if m != k:
                product = product * column
        partials.append(product)
    return partials


def surrogate_fit_matrix(basis: SurrogateBasis, displacements_A: np.ndarray) -> np.ndarray:
    """(3N·B, P): the forces of displacements (B, N, 3) are this matrix times the parameters.

    Forces are -∂V/∂u. Each nonzero b of the monomial basis (monomial t, eigentensor e) adds, for
    every factor k of t, -b × (the product of t's other factors) to the entry (t's k-th dof, e):
    per factor a sparse (dof·e, t) matrix times the dense (t, configurations) partial products.
    The amplitude map then turns eigentensor columns into parameter columns.
    """
    from scipy.sparse import csr_matrix

    n, n_dofs = len(displacements_A), displacements_A[0].size
    n_eigentensors = basis.amplitudes.shape[0]
    u = displacements_A.reshape(n, -1)
    out = np.zeros((n_dofs * n_eigentensors, n))
    for monomials in basis.orders:
        entries = monomials.basis.tocoo()
        partials = monomial_partials(u, monomials.dofs)
        for k in range(monomials.order):
            scatter = csr_matrix(
                (entries.data, (monomials.dofs[entries.row, k] * n_eigentensors + entries.col, entries.row)),
                shape=(n_dofs * n_eigentensors, len(monomials.dofs)),
            )
            out -= scatter @ partials[k].T
    by_configuration = out.reshape(n_dofs, n_eigentensors, n).transpose(2, 0, 1)
    return by_configuration.reshape(n * n_dofs, n_eigentensors) @ basis.amplitudes


def fit_surrogate(
    basis: SurrogateBasis, model, fc_harmonic, energy0_eV, displacements_A, forces_eV_A, settings, seed, fit_matrix=None
):
    """Fit the cluster space's parameters to what Φ_harm misses in the given forces (trainstation,
    ``settings.fit_method``) and return Φ_harm plus the fit as one :class:`ForceConstantExpansion`.

    The finite-displacement Φ_harm already holds every pair the supercell can see; the fit adds the
    anharmonic terms and a 2nd-order correction within the cutoffs. Each configuration gives 3N
    force rows on the supercell itself (the tiled copies would only repeat them). ``fit_matrix``:
    :func:`surrogate_fit_matrix` of the displacements, when already at hand.
    """
    from trainstation import Optimizer

    matrix = to_matrix(fc_harmonic)
    n = len(displacements_A)
    residual = forces_eV_A.reshape(n, -1) + displacements_A.reshape(n, -1) @ matrix.T
    fit_matrix = surrogate_fit_matrix(basis, displacements_A) if fit_matrix is None else fit_matrix
    # No condition-number check: the sparse fits (ARDR, LASSO) exist for ill-conditioned cluster
    # spaces, so its warning would flag every fit and its SVD of the fit matrix costs time.
    optimizer = Optimizer((fit_matrix, residual.reshape(-1)), fit_method=settings.fit_method, train_size=0.9, seed=seed,
                          check_condition=False)
    with quiet_hiphive():
        optimizer.train()
    harmonic = harmonic_monomials(matrix)
    fitted = {}
    for monomials in basis.monomials(optimizer.parameters):
        keep = np.abs(monomials.coefficients) > 1e-14
        fitted[monomials.order] = Monomials(dofs=monomials.dofs[keep], coefficients=monomials.coefficients[keep])
    if 2 in fitted:
        harmonic = merge_monomials(
            np.concatenate([harmonic.dofs, fitted[2].dofs]),
            np.concatenate([harmonic.coefficients, fitted[2].coefficients]),
        )
    orders = [harmonic] + [fitted[n] for n in sorted(fitted) if n != 2]
    return ForceConstantExpansion(model.atoms, energy0_eV, orders), optimizer


@dataclass(frozen=True)
class Verification:
    """The potential against the surrogate on one ensemble of the surrogate's final auxiliary system."""

    ensemble: Ensemble  # evaluated by the potential
    surrogate_energies_eV: np.ndarray
    surrogate_forces_eV_A: np.ndarray
    corrected_dynamical: np.ndarray  # one SSCHA step with the paired difference of the two gradients
    difference_errors_THz: np.ndarray  # per mode of the surrogate's auxiliary system
    free_energy_difference_eV: float  # <V - V_surrogate>
    free_energy_difference_error_eV: float


def verify_surrogate(
    model, potential, expansion, dynamical, centroids_A, harmonic_dynamical, settings, surrogate, rng, target_THz,
    refit_threshold_THz=None,
):
    """Evaluate a fresh ensemble of ``dynamical`` with both and move D by the difference of the gradients.

    Potential and surrogate see the same displacements, so their gradients share the sampling noise
    and the difference ⟨∂²V_surrogate⟩ - ⟨∂²V⟩ has only the noise of the force difference: the
    surrogate acts as a control variate for the potential. The ensemble grows (doubling, up to
    ``surrogate.max_verification``) until the difference's frequency error is below ``target_THz``,
    unless a frequency already moves by more than ``refit_threshold_THz`` beyond 3 standard errors:
    then the surrogate will be refitted anyway and more precision here would be wasted.
    """
    modes = gaussian_modes(model, dynamical, settings)
    surrogate_frequencies = signed_mode_frequencies_THz(model, dynamical)
    ensemble, n_new = None, surrogate.n_verification
    while True:
        fresh = new_ensemble(model, potential, centroids_A, modes, n_new, rng, settings)
        ensemble = fresh if ensemble is None else concatenate_ensembles(ensemble, fresh)
        energies_s, forces_s = expansion.energies_and_forces(ensemble.centroids_A + ensemble.displacements_A - expansion.reference)
        stats_real = ensemble_statistics(model, ensemble, dynamical, centroids_A, settings)
        surrogate_ensemble = replace(ensemble, energies_eV=energies_s, forces_eV_A=forces_s)
        stats_surrogate = ensemble_statistics(model, surrogate_ensemble, dynamical, centroids_A, settings)
        batch_differences = stats_real.batch_gradients - stats_surrogate.batch_gradients
        errors = mode_frequency_errors_THz(modes, batch_differences, stats_real.batch_weights)
        difference = stats_real.gradient - stats_surrogate.gradient
        step = preconditioned_step(model, dynamical, harmonic_dynamical, difference, settings)
        corrected = symmetrize_mass_weighted_fc(model, dynamical - step)
        shift = np.abs(signed_mode_frequencies_THz(model, corrected) - surrogate_frequencies)
        size = len(ensemble.energies_eV)
        if target_THz is None or errors.max() <= target_THz or size >= surrogate.max_verification:
            break
        if refit_threshold_THz is not None and (shift - 3 * errors).max() > refit_threshold_THz:
            break
        needed = int(np.ceil(1.1 * size * (errors.max() / target_THz) ** 2 / 2)) * 2
        n_new = min(needed, surrogate.max_verification) - size
    pair_means = (ensemble.energies_eV - energies_s).reshape(-1, 2).mean(axis=1)
    return Verification(
        ensemble=ensemble,
        surrogate_energies_eV=energies_s,
        surrogate_forces_eV_A=forces_s,
        corrected_dynamical=corrected,
        difference_errors_THz=errors,
        free_energy_difference_eV=float(pair_means.mean()),
        free_energy_difference_error_eV=float(pair_means.std(ddof=1) / np.sqrt(len(pair_means))),
    )


def concatenate_ensembles(first: Ensemble, second: Ensemble) -> Ensemble:
    """Two ensembles of one Gaussian around the same centroids (antithetic pairs stay adjacent)."""
    return Ensemble(
        centroids_A=first.centroids_A,
        displacements_A=np.concatenate([first.displacements_A, second.displacements_A]),
        log_density=np.concatenate([first.log_density, second.log_density]),
        energies_eV=np.concatenate([first.energies_eV, second.energies_eV]),
        forces_eV_A=np.concatenate([first.forces_eV_A, second.forces_eV_A]),
    )


def signed_mode_frequencies_THz(model: SupercellModel, dynamical: np.ndarray) -> np.ndarray:
    values, _ = eigen(model, dynamical)
    return np.sign(values) * np.sqrt(np.abs(values)) * THZ_PER_OMEGA


def run_scha_on_expansion(
    atoms: Atoms,
    expansion: ForceConstantExpansion,
    supercell_matrix,
    settings: SSCHASettings,
    *,
    harmonic: tuple[np.ndarray, int],
    initial_force_constants: np.ndarray | None = None,
    tolerance: float = 1e-9,
) -> SSCHAResult:
    """The SSCHA on a force-constant expansion with exact Gaussian averages instead of ensembles.

    Same start, update (:func:`preconditioned_step`, symmetrization, stabilization, centroid
    relaxation) and result as :func:`run_sscha`, but ⟨∂²V⟩, ⟨∂V⟩ and ⟨V⟩ come from
    :meth:`ForceConstantExpansion.gaussian_averages`: the infinite-ensemble limit, without
    stochastic error. Converged when the gradient is below ``tolerance`` × |D| and the symmetrized
    mean force below 1e-6 eV/Å with no mode held up by the stabilization floor.
    """
    start = time.perf_counter()
    model = supercell_model(atoms, supercell_matrix, settings)
    fc_harmonic, evaluations = harmonic
    mass_outer, harmonic_dynamical, dynamical, n_stabilized = starting_dynamical_matrices(
        model, fc_harmonic, initial_force_constants, settings
    )
    centroids = model.atoms.positions.copy()
    history, converged, status = [], False, None
    for step in range(settings.max_steps):
        modes = gaussian_modes(model, dynamical, settings)
        covariance = (modes.vectors * modes.variance) @ modes.vectors.T / mass_outer
        energy, gradient_u, hessian = expansion.gaussian_averages(centroids - expansion.reference, covariance)
        gradient = symmetrize_mass_weighted(model, dynamical - hessian / mass_outer)
        mean_force = symmetrize_vector(model, -gradient_u.reshape(-1, 3))
        potential_harmonic = 0.5 * np.sum(modes.omega**2 * modes.variance)  # ⟨½ vᵀ D v⟩
        free_energy = harmonic_free_energy_eV(modes, settings.temperature_K, settings.quantum) + energy - potential_harmonic
        gradient_norm = float(np.linalg.norm(gradient))
        history.append(
            SSCHAStep(
                step=step,
                n_configurations=0,
                new_ensemble=False,
                effective_sample_fraction=1.0,
                free_energy_eV_atom=free_energy / model.n_atoms,
                free_energy_error_eV_atom=0.0,
                gradient_norm=gradient_norm,
                gradient_error=0.0,
                max_frequency_error_THz=0.0,
                min_frequency_THz=float(frequencies_THz(dynamical)[0]),
                max_centroid_force_eV_A=float(np.abs(mean_force).max()),
                n_stabilized_modes=n_stabilized,
                n_potential_evaluations=evaluations,
            )
        )
        force_settled = not settings.relax_centroids or np.abs(mean_force).max() <= 1e-6
        if gradient_norm <= tolerance * np.linalg.norm(dynamical) and force_settled and n_stabilized == 0:
            converged, status = True, "converged"
            break
        step_matrix = preconditioned_step(model, dynamical, harmonic_dynamical, gradient, settings)
        dynamical = symmetrize_mass_weighted_fc(model, dynamical - settings.mixing * step_matrix)
        dynamical, n_stabilized = stabilize(model, dynamical, settings.min_frequency_THz)
        if settings.relax_centroids:
            centroids = centroids + centroid_step(model, dynamical, mean_force, settings)
    if not converged:
        status = unconverged_status(settings, n_stabilized)
    n_modes = model.basis.shape[1]
    return sscha_result(
        model, settings, "surrogate", converged, status, dynamical, centroids, fc_harmonic, np.zeros(n_modes), history,
        sigma_A=float("nan"),  # needs forces of an ensemble; run_sscha_surrogate takes it from the verification
        n_potential_evaluations=evaluations,
        wall_time_s=time.perf_counter() - start,
    )


def run_sscha_surrogate(
    atoms: Atoms,
    potential,
    supercell_matrix,
    settings: SSCHASettings = SSCHASettings(),
    surrogate: SurrogateSettings = SurrogateSettings(),
) -> SSCHAResult:
    """The SSCHA on a hiphive surrogate of ``potential``, verified (and corrected) with the potential.

    1. Φ_harm by finite displacements, E0, and ``n_training_structures`` configurations of the
       stabilized harmonic Gaussian, all from the potential; fit the surrogate (:func:`fit_surrogate`).
    2. The SSCHA on the surrogate: with ``surrogate.averages == "analytic"`` (default) by
       :func:`run_scha_on_expansion`, exactly, so that the verification alone carries stochastic
       error; with ``"ensemble"`` by :func:`run_sscha` with ``surrogate.n_configurations`` per
       ensemble, to half of ``frequency_error_target_THz``.
    3. :func:`verify_surrogate` on a fresh ensemble of the result. If the frequencies move by more
       than ``refit_threshold_THz``, the verification configurations join the training set and 1-3
       repeat (at most ``max_refits`` times), starting from the last result.
    4. With ``surrogate.correct`` the reported Φ is the verified one (one SSCHA step with the
       potential's forces, paired with the surrogate's) and F gets ⟨V - V_surrogate⟩; the reported
       errors combine the surrogate run's and the verification's. ``n_potential_evaluations``
       counts every potential call; the surrogate's own count is in the report.
    """
    from generate.harmonic import commensurate_qpoints

    if surrogate.averages not in ("analytic", "ensemble"):
        raise ValueError(f"surrogate.averages must be 'analytic' or 'ensemble', not {surrogate.averages!r}")
    analytic = surrogate.averages == "analytic"
    start = time.perf_counter()
    rng = np.random.default_rng([settings.seed, 1])  # a stream apart from the SSCHA's own
    model = supercell_model(atoms, supercell_matrix, settings)
    basis = surrogate_basis(atoms, model, surrogate)
    fc_harmonic, evaluations = harmonic_force_constants(model, potential, settings)
    energy0 = float(evaluate(potential, [model.atoms], settings.max_atoms_per_chunk)[0][0])
    evaluations += 1
    mass_outer = np.outer(model.sqrt_masses, model.sqrt_masses)
    harmonic_dynamical = to_matrix(fc_harmonic) / mass_outer
    start_dynamical, _ = stabilize(model, harmonic_dynamical, settings.min_frequency_THz)
    training = new_ensemble(
        model, potential, model.atoms.positions, gaussian_modes(model, start_dynamical, settings),
        surrogate.n_training_structures, rng, settings,
    )
    evaluations += len(training.energies_eV)
    displacements, forces = training.displacements_A, training.forces_eV_A
    target = settings.frequency_error_target_THz
    cheap = replace(
        settings,
        n_configurations=surrogate.n_configurations,
        max_configurations=surrogate.max_configurations,
        frequency_error_target_THz=None if target is None else target / 2,
    )
    initial, n_surrogate_evaluations = None, 0
    fit_matrix = surrogate_fit_matrix(basis, displacements)
    for fit in range(surrogate.max_refits + 1):
        expansion, optimizer = fit_surrogate(
            basis, model, fc_harmonic, energy0, displacements, forces, surrogate, settings.seed, fit_matrix=fit_matrix
        )
        if analytic:
            result = run_scha_on_expansion(
                atoms, expansion, supercell_matrix, settings, harmonic=(fc_harmonic, 0), initial_force_constants=initial
            )
        else:
            result = run_sscha(atoms, expansion, supercell_matrix, cheap, harmonic=(fc_harmonic, 0), initial_force_constants=initial)
        n_surrogate_evaluations += result.n_potential_evaluations
        dynamical = to_matrix(result.force_constants_eV_A2) / mass_outer
        centroids = result.supercell.positions
        check = verify_surrogate(
            model, potential, expansion, dynamical, centroids, harmonic_dynamical, settings, surrogate, rng,
            None if target is None else target if analytic else target * np.sqrt(3) / 2,
            refit_threshold_THz=surrogate.refit_threshold_THz if fit < surrogate.max_refits else None,
        )
        evaluations += len(check.ensemble.energies_eV)
        surrogate_frequencies = signed_mode_frequencies_THz(model, dynamical)
        shift = signed_mode_frequencies_THz(model, check.corrected_dynamical) - surrogate_frequencies
        log.info("surrogate fit %d: %d training structures, verification shifts up to %.3f THz, %d potential evaluations",
                 fit + 1, len(displacements), float(np.abs(shift).max()), evaluations)
        if np.abs(shift).max() <= surrogate.refit_threshold_THz or fit == surrogate.max_refits:
            break
        added = check.ensemble.centroids_A + check.ensemble.displacements_A - model.atoms.positions
        displacements = np.concatenate([displacements, added])
        forces = np.concatenate([forces, check.ensemble.forces_eV_A])
        fit_matrix = np.concatenate([fit_matrix, surrogate_fit_matrix(basis, added)])
        initial = result.force_constants_eV_A2

    real = check.ensemble
    rmse = float(np.sqrt(np.mean((check.surrogate_forces_eV_A - real.forces_eV_A) ** 2)))
    modes = gaussian_modes(model, dynamical, settings)
    surrogate_errors = result.supercell_frequency_errors_THz[3 * model.n_atoms - modes.omega.size :]
    # run_sscha's errors come sorted by frequency, as eigh orders the modes of D, so they line up.
    report = SurrogateReport(
        n_training_structures=len(displacements),
        n_fits=fit + 1,
        n_parameters=int(optimizer.n_parameters),
        n_nonzero_parameters=int(optimizer.n_nonzero_parameters),
        n_monomials=expansion.n_monomials,
        training_force_rmse_eV_A=float(optimizer.rmse_train),
        n_verification=len(real.energies_eV),
        verification_force_rmse_eV_A=rmse,
        verification_relative_force_error=rmse / float(np.sqrt(np.mean(real.forces_eV_A**2))),
        max_frequency_difference_THz=float(np.abs(shift).max()),
        frequency_difference_error_THz=float(check.difference_errors_THz.max()),
        free_energy_difference_eV_atom=check.free_energy_difference_eV / model.n_atoms,
        free_energy_difference_error_eV_atom=check.free_energy_difference_error_eV / model.n_atoms,
        surrogate_frequency_error_THz=float(surrogate_errors.max()) if surrogate_errors.size else 0.0,
        corrected=surrogate.correct,
        n_surrogate_evaluations=n_surrogate_evaluations,
    )
    sigma_a = anharmonicity_score(model, real, np.full(len(real.energies_eV), 1.0 / len(real.energies_eV)), fc_harmonic)
    changes = dict(
        backend="surrogate",
        n_potential_evaluations=evaluations,
        surrogate=report,
        sigma_A=sigma_a,
        wall_time_s=time.perf_counter() - start,
    )
    if surrogate.correct:
        corrected = check.corrected_dynamical
        fc = to_blocks(corrected * mass_outer)
        mode_errors = np.sqrt(surrogate_errors**2 + check.difference_errors_THz**2)
        n_acoustic = 3 * model.n_atoms - modes.omega.size
        frequencies = np.concatenate([np.zeros(n_acoustic), signed_mode_frequencies_THz(model, corrected)])
        errors = np.concatenate([np.zeros(n_acoustic), mode_errors])
        order = np.argsort(frequencies, kind="stable")
        frequencies, errors = frequencies[order], errors[order]
        commensurate, mesh = phonon_frequencies(result.phonon, fc, commensurate_qpoints(result.phonon), settings.q_mesh)
        changes.update(
            force_constants_eV_A2=fc,
            supercell_frequencies_THz=frequencies,
            supercell_frequency_errors_THz=errors,
            free_energy_eV_atom=result.free_energy_eV_atom + report.free_energy_difference_eV_atom,
            free_energy_error_eV_atom=float(np.hypot(result.free_energy_error_eV_atom, report.free_energy_difference_error_eV_atom)),
            commensurate_frequencies_THz=commensurate,
            mesh_qpoints=mesh[0],
            mesh_weights=mesh[1],
            mesh_frequencies_THz=mesh[2],
        )
    return replace(result, **changes)


# ----------------------------------------------------------------------------------------------
# Command line


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


def settings_from_config(cfg) -> tuple[SSCHASettings, "SurrogateSettings"]:
    from omegaconf import OmegaConf

    def build(cls, node):
        values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    return build(SSCHASettings, cfg.get("sscha")), build(SurrogateSettings, cfg.get("surrogate"))


def load_config(argv: list[str] | None = None):
    """conf/sscha.yaml, then --config FILE, then the flags, then --set key=value overrides."""
    import argparse
    from pathlib import Path

    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(prog="python -m generate.sscha", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML merged over conf/sscha.yaml")
    parser.add_argument("--structure", help="built-in name (thermobench.structures) or structure file")
    parser.add_argument("--supercell", type=int, nargs=3, metavar=("N1", "N2", "N3"))
    parser.add_argument("--temperature", type=float, help="K")
    parser.add_argument("--potential", help="potential name or model directory")
    parser.add_argument("--backend", choices=["direct", "surrogate"])
    parser.add_argument("--classical", action="store_true", help="classical instead of quantum statistics")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-relax", action="store_true", help="use the structure as given")
    parser.add_argument("--out", help="JSON result file")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. sscha.n_configurations=800")
    args = parser.parse_args(argv)
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "sscha.yaml")
    if args.config:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(args.config))
    flags = {
        "structure": args.structure,
        "supercell": list(args.supercell) if args.supercell else None,
        "potential": args.potential,
        "backend": args.backend,
        "out": args.out,
        "sscha.temperature_K": args.temperature,
        "sscha.seed": args.seed,
        "sscha.quantum": False if args.classical else None,
        "relax": False if args.no_relax else None,
    }
    for key, value in flags.items():
        if value is not None:
            OmegaConf.update(cfg, key, value)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.set))


def write_json_atomically(path, data: dict) -> None:
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> SSCHAResult:
    from generate.relax import RelaxSettings, relax
    from thermobench.potentials import describe, load_calculator, load_potential
    from thermobench.structures import load_structure

    from generate import checks
    from thermobench.potentials import check_structure

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(argv)
    settings, surrogate_settings = settings_from_config(cfg)  # checked here, before any work
    checks.supercell_matrix(list(cfg.supercell), "supercell")
    checks.choice(cfg.backend, "backend", ("direct", "surrogate"))
    atoms = load_structure(str(cfg.structure))
    potential = load_potential(cfg.potential, device=cfg.device)
    check_structure(atoms, potential.model.element_types, str(cfg.structure))
    if cfg.relax:
        atoms = relax(atoms, load_calculator(cfg.potential, device=cfg.device), RelaxSettings()).atoms
    if cfg.backend == "direct":
        result = run_sscha(atoms, potential, list(cfg.supercell), settings)
    elif cfg.backend == "surrogate":
        result = run_sscha_surrogate(atoms, potential, list(cfg.supercell), settings, surrogate_settings)
    else:
        raise ValueError(f"backend must be 'direct' or 'surrogate', not {cfg.backend!r}")
    from omegaconf import OmegaConf

    record = result.to_json_dict()
    record["structure"] = str(cfg.structure)
    record["supercell"] = list(cfg.supercell)
    record["potential"] = describe(potential)
    record["settings"] = OmegaConf.to_container(cfg, resolve=True)
    write_json_atomically(cfg.out, record)
    state = "converged" if result.converged else f"NOT converged ({result.status})"
    print(
        f"{atoms.get_chemical_formula()} {list(cfg.supercell)} at {settings.temperature_K} K ({cfg.backend}): {state} "
        f"in {len(result.history)} steps, {result.n_potential_evaluations} potential evaluations, "
        f"{result.wall_time_s:.1f} s"
    )
    print(
        f"frequencies {result.supercell_frequencies_THz.min():.3f}..{result.supercell_frequencies_THz.max():.3f} THz "
        f"(harmonic {result.harmonic_supercell_frequencies_THz.min():.3f}..), max stochastic error "
        f"{result.max_frequency_error_THz:.3f} THz; F = {result.free_energy_eV_atom:.5f} ± "
        f"{result.free_energy_error_eV_atom:.5f} eV/atom; sigma_A = {result.sigma_A:.3f}; wrote {cfg.out}"
    )
    return result


if __name__ == "__main__":
    main()
