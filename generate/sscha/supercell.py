"""The supercell model of the SSCHA: masses, symmetry, the acoustic subspace, canonical modes,
the Gaussian of an auxiliary dynamical matrix and the harmonic start."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator

from generate.harmonic.phonons import explicit_primitive_matrix, new_phonopy, to_phonopy_atoms
from generate.sscha.result import SSCHASettings, UnstableMode
from generate.sscha.symmetry import SpaceGroupAverage

HBAR_EV_T = units._hbar * units.J * units.second  # ħ in eV × ASE time units
THZ_PER_OMEGA = units.second / (2 * np.pi * 1e12)  # angular frequency in ASE units -> THz

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
    average: SpaceGroupAverage | None = field(repr=False)  # the fast space-group average, when G factors
    basis: np.ndarray  # (3N, 3N or 3N-3) orthonormal basis of the sampled (non-acoustic) subspace
    acoustic_sum_rule: bool

    @property
    def n_atoms(self) -> int:
        return len(self.atoms)


def mass_weighted_translations(sqrt_masses: np.ndarray) -> np.ndarray:
    """(3N, 3) orthonormal columns: the three rigid translations in mass-weighted coordinates."""
    translations = np.zeros((len(sqrt_masses), 3))
    for alpha in range(3):
        translations[alpha::3, alpha] = sqrt_masses[alpha::3]
    return translations / np.linalg.norm(translations, axis=0)


def supercell_model(atoms: Atoms, supercell_matrix, settings: SSCHASettings) -> SupercellModel:
    matrix = np.array(supercell_matrix, dtype=int)
    matrix = np.diag(matrix) if matrix.ndim == 1 else matrix
    unitcell = to_phonopy_atoms(atoms)
    primitive = explicit_primitive_matrix(unitcell, settings.primitive_matrix, settings.symprec)
    phonon = new_phonopy(unitcell, matrix, primitive, settings.symprec)
    cell = phonon.supercell
    supercell = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, masses=cell.masses, pbc=True)
    sqrt_masses = np.repeat(np.sqrt(cell.masses), 3)
    if settings.acoustic_sum_rule:
        # Columns of U beyond the first three span the complement of the mass-weighted translations.
        u, _, _ = np.linalg.svd(mass_weighted_translations(sqrt_masses), full_matrices=True)
        basis = u[:, 3:]
    else:
        basis = np.eye(3 * len(supercell))
    symmetry = phonon.symmetry  # the supercell's, with the same tolerance: searching it again doubled the cost
    return SupercellModel(
        phonon=phonon,
        atoms=supercell,
        sqrt_masses=sqrt_masses,
        symmetry=symmetry,
        average=SpaceGroupAverage.of(symmetry, supercell.cell.array),
        basis=basis,
        acoustic_sum_rule=settings.acoustic_sum_rule,
    )


def to_matrix(fc: np.ndarray) -> np.ndarray:
    """(..., N, N, 3, 3) -> (..., 3N, 3N)."""
    n = fc.shape[-4]
    return np.swapaxes(fc, -3, -2).reshape(*fc.shape[:-4], 3 * n, 3 * n)


def to_blocks(matrix: np.ndarray) -> np.ndarray:
    """(..., 3N, 3N) -> (..., N, N, 3, 3)."""
    n = matrix.shape[-1] // 3
    return np.ascontiguousarray(np.swapaxes(matrix.reshape(*matrix.shape[:-2], n, 3, n, 3), -3, -2))


def symmetrize_matrix(model: SupercellModel, matrix: np.ndarray, sum_rule: bool | None = None) -> np.ndarray:
    """Space-group, index-permutation and (optionally) acoustic-sum-rule symmetrization of (..., 3N, 3N) FCs.

    The space-group average preserves the sum rule and the permutation symmetry; phonopy's
    translational/permutation step can break the space group at round-off level, hence the order.
    """
    from phonopy.harmonic.force_constants import (
        symmetrize_force_constants,
        symmetrize_force_constants_by_space_group,
    )

    sum_rule = model.acoustic_sum_rule if sum_rule is None else sum_rule
    matrix = np.asarray(matrix)
    if matrix.ndim > 2 and (sum_rule or model.average is None):
        return np.array([symmetrize_matrix(model, m, sum_rule) for m in matrix])
    fc = to_blocks(0.5 * (matrix + np.swapaxes(matrix, -1, -2)))
    if sum_rule:
        symmetrize_force_constants(fc, level=3)
    if model.average is not None:
        fc = model.average.blocks(fc)
    else:
        symmetrize_force_constants_by_space_group(fc, model.atoms.cell.array, model.symmetry)
    out = to_matrix(fc)
    return 0.5 * (out + np.swapaxes(out, -1, -2))


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


def softest_real_mode_THz(model: SupercellModel, fc: np.ndarray) -> float:
    """The lowest real frequency among the sampled modes of a supercell FC2, (N, N, 3, 3) in phonopy's order
    (translations left out with the acoustic sum rule); inf where every mode is imaginary."""
    values, _ = eigen(model, to_matrix(fc) / np.outer(model.sqrt_masses, model.sqrt_masses))
    real = values[values > 0]
    return float(np.sqrt(real.min()) * THZ_PER_OMEGA) if real.size else np.inf


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


def evaluate(model, structures: list[Atoms], max_atoms_per_chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Energies and forces: batched through ``evaluate_batch`` for a matgl Potential, looped for ASE."""
    if hasattr(model, "evaluate_structures"):  # an in-memory model (the surrogate's expansion)
        return model.evaluate_structures(structures)
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


def unstable_modes(phonon, force_constants: np.ndarray, qpoints: np.ndarray, tolerance_THz: float) -> tuple[UnstableMode, ...]:
    phonon.force_constants = force_constants
    phonon.run_qpoints(qpoints)
    frequencies = np.asarray(phonon.qpoints.frequencies)
    return tuple(
        UnstableMode(qpoint=tuple(float(x) for x in qpoints[i]), band=int(j), frequency_THz=float(frequencies[i, j]))
        for i, j in zip(*np.nonzero(frequencies < -tolerance_THz), strict=True)
    )
