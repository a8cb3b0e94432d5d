"""The surrogate engine: a sparse 2nd-4th order force-constant expansion (hiphive) fitted to a few
dozen potential evaluations, the SCHA on it, and its verification against the potential."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
from ase import Atoms

from generate.sscha.direct import (
    Ensemble,
    centroid_step,
    ensemble_statistics,
    free_gradient,
    held_status,
    mode_frequency_errors_THz,
    new_ensemble,
    preconditioned_step,
    sscha_result,
    starting_dynamical_matrices,
    symmetrize_mass_weighted,
    symmetrize_mass_weighted_fc,
    unconverged_status,
)
from generate.harmonic.phonons import plane_spacings_A
from generate.sscha.expansion import ForceConstantExpansion, Monomials, harmonic_monomials, merge_monomials
from generate.sscha.result import SSCHAResult, SSCHASettings, SSCHAStep
from generate.sscha.supercell import (
    THZ_PER_OMEGA,
    SupercellModel,
    eigen,
    frequencies_THz,
    gaussian_modes,
    harmonic_free_energy_eV,
    stabilize,
    supercell_model,
    symmetrize_vector,
    to_matrix,
)

log = logging.getLogger("thermobench.sscha")


# ----------------------------------------------------------------------------------------------
# Surrogate backend: a sparse force-constant expansion fitted with hiphive


@dataclass(frozen=True)
class SurrogateSettings:
    n_training_structures: int = 24  # displaced supercells evaluated by the potential for the first fit
    cutoffs_A: tuple[float, float, float] | None = None  # orders 2, 3, 4; None: from cutoff_factors
    # × nearest-neighbour distance. Quartic terms within the first shell only: on NaCl, 1.45 (second
    # shell) lowered the verified force error from 0.113 to 0.107 for 3× the cluster-space time.
    cutoff_factors: tuple[float, float, float] = (1.8, 1.8, 1.1)
    fit_method: str = "ardr"  # trainstation: ardr | lasso | rfe | omp | least-squares | ...
    averages: str = "analytic"  # SSCHA on the surrogate: exact Gaussian averages | "ensemble" (sampled)
    n_configurations: int = 2000  # ensemble averages only: SSCHA ensembles on the surrogate
    max_configurations: int = 64000
    # The verification differences potential - surrogate are small, so few configurations give the
    # precision of a direct ensemble many times larger; they grow to frequency_error_target_THz.
    n_verification: int = 32  # fresh ensemble evaluated by the potential (and the surrogate) per step
    max_verification: int = 800
    # Refitting rarely shrinks the correction (the force error is the expansion's, not the data's):
    # one refit when the surrogate is far off; the correction steps below do the rest.
    refit_threshold_THz: float = 0.5
    max_refits: int = 1
    correct: bool = True  # add the verified differences to the reported frequencies and free energy
    # Correction steps reuse the verification ensemble, reweighted (a fresh one only when its effective
    # sample fraction drops below sscha.ess_threshold), until a step moves no frequency by more than this.
    max_corrections: int = 8
    correction_tolerance_THz: float = 0.01


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
    spacing = plane_spacings_A(model.atoms.cell.array).min()
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


def symmetrized(atoms: Atoms, symprec: float) -> Atoms:
    """A copy of ``atoms`` with cell and positions made exactly symmetric at ``symprec`` (spglib's refinement,
    orientation kept). hiphive's orbit search fails on cells symmetric only to ~1e-8 Å (phonondb's rhombohedral
    Bi2Se3: "(1, 257) is not in list"); the moves are below symprec, far below any force constant's range."""
    from ase.spacegroup.symmetrize import refine_symmetry

    out = atoms.copy()
    refine_symmetry(out, symprec=symprec, verbose=False)
    return out


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
        cluster_space = ClusterSpace(symmetrized(atoms, model.phonon.symmetry.tolerance), cutoffs)
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
    n_new: int  # configurations the potential evaluated for this verification


def relative_force_error(forces, surrogate_forces) -> float:
    """rmse of the surrogate's forces over the rms of the potential's."""
    return float(np.sqrt(np.mean((surrogate_forces - forces) ** 2)) / np.sqrt(np.mean(forces**2)))


def verify_surrogate(
    model, potential, expansion, dynamical, centroids_A, harmonic_dynamical, settings, surrogate, rng, target_THz,
    refit_threshold_THz=None, surrogate_gradient=None, reuse: Ensemble | None = None, give_up_above: float | None = None,
):
    """Evaluate a fresh ensemble of ``dynamical`` with both and move D by the difference of the gradients.

    Potential and surrogate see the same displacements, so their gradients share the sampling noise
    and the difference ⟨∂²V_surrogate⟩ - ⟨∂²V⟩ has only the noise of the force difference: the
    surrogate acts as a control variate for the potential. The ensemble grows (doubling, up to
    ``surrogate.max_verification``) until the difference's frequency error is below ``target_THz``,
    unless a frequency already moves by more than ``refit_threshold_THz`` beyond 3 standard errors:
    then the surrogate will be refitted anyway and more precision here would be wasted.
    ``surrogate_gradient``: the surrogate's exact SCHA gradient at ``dynamical`` when that is not the
    surrogate's own minimum (a later correction step); the potential's gradient is then that plus
    the sampled difference. ``reuse``: an ensemble of a nearby D, reweighted to this one (no new
    potential evaluations) unless its effective sample fraction falls below ``settings.ess_threshold``.
    ``give_up_above``: stop growing once the relative force error (rmse / rms of the potential's forces)
    exceeds it: the result will be rejected whatever its precision.
    """
    modes = gaussian_modes(model, dynamical, settings)
    surrogate_frequencies = signed_mode_frequencies_THz(model, dynamical)
    ensemble, n_new, n_evaluated = reuse, (0 if reuse is not None else surrogate.n_verification), 0
    while True:
        if n_new > 0:
            fresh = new_ensemble(model, potential, centroids_A, modes, n_new, rng, settings)
            ensemble = fresh if ensemble is None else concatenate_ensembles(ensemble, fresh)
            n_evaluated += n_new
        energies_s, forces_s = expansion.energies_and_forces(ensemble.centroids_A + ensemble.displacements_A - expansion.reference)
        stats_real = ensemble_statistics(model, ensemble, dynamical, centroids_A, settings)
        if n_evaluated == 0 and stats_real.effective_sample_fraction < settings.ess_threshold:
            ensemble, n_new = None, surrogate.n_verification  # too far from the reused ensemble's D
            continue
        surrogate_ensemble = replace(ensemble, energies_eV=energies_s, forces_eV_A=forces_s)
        stats_surrogate = ensemble_statistics(model, surrogate_ensemble, dynamical, centroids_A, settings)
        batch_differences = stats_real.batch_gradients - stats_surrogate.batch_gradients
        errors = mode_frequency_errors_THz(modes, batch_differences, stats_real.batch_weights)
        difference = stats_real.gradient - stats_surrogate.gradient
        if surrogate_gradient is not None:  # away from the surrogate's minimum: its exact gradient at D
            difference = difference + surrogate_gradient
        step = preconditioned_step(model, dynamical, harmonic_dynamical, difference, settings)
        corrected = symmetrize_mass_weighted_fc(model, dynamical - step)
        shift = np.abs(signed_mode_frequencies_THz(model, corrected) - surrogate_frequencies)
        size = len(ensemble.energies_eV)
        if target_THz is None or errors.max() <= target_THz or size >= surrogate.max_verification:
            break
        if give_up_above is not None and relative_force_error(ensemble.forces_eV_A, forces_s) > give_up_above:
            break
        if refit_threshold_THz is not None and (shift - 3 * errors).max() > refit_threshold_THz:
            break
        needed = int(np.ceil(1.1 * size * (errors.max() / target_THz) ** 2 / 2)) * 2
        n_new = min(needed, surrogate.max_verification) - size
    # ⟨V - V_surrogate⟩ over antithetic pairs, reweighted to D (weights are 1/n on a fresh ensemble)
    pair_weights = stats_real.weights.reshape(-1, 2).sum(axis=1)
    pair_values = (ensemble.energies_eV - energies_s).reshape(-1, 2).mean(axis=1)
    mean = float(pair_weights @ pair_values / pair_weights.sum())
    spread = np.sqrt(np.sum(pair_weights**2 * (pair_values - mean) ** 2)) / pair_weights.sum()
    n_pairs = len(pair_values)
    return Verification(
        ensemble=ensemble,
        surrogate_energies_eV=energies_s,
        surrogate_forces_eV_A=forces_s,
        corrected_dynamical=corrected,
        difference_errors_THz=errors,
        free_energy_difference_eV=mean,
        free_energy_difference_error_eV=float(spread * np.sqrt(n_pairs / max(n_pairs - 1, 1))),
        n_new=n_evaluated,
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


class SurrogateDiverged(RuntimeError):
    """The SCHA on a surrogate left the region the surrogate was fitted on (or became non-finite): an
    expansion with negative even-order directions is unbounded there, so its answer means nothing.
    The engine treats this as a rejection. ``n_potential_evaluations`` and ``wall_time_s``: what the
    surrogate had cost when it gave up."""

    def __init__(self, message: str, n_potential_evaluations: int = 0, wall_time_s: float = 0.0):
        super().__init__(message)
        self.n_potential_evaluations, self.wall_time_s = n_potential_evaluations, wall_time_s


def signed_mode_frequencies_THz(model: SupercellModel, dynamical: np.ndarray) -> np.ndarray:
    values, _ = eigen(model, dynamical)
    return np.sign(values) * np.sqrt(np.abs(values)) * THZ_PER_OMEGA


def scha_point(model, expansion: ForceConstantExpansion, dynamical, centroids_A, settings) -> tuple[float, np.ndarray, np.ndarray]:
    """The SCHA free energy (eV), its gradient in D and the symmetrized mean force at (D, centroids) on
    the expansion: exact Gaussian averages, no stochastic error."""
    mass_outer = np.outer(model.sqrt_masses, model.sqrt_masses)
    modes = gaussian_modes(model, dynamical, settings)
    covariance = (modes.vectors * modes.variance) @ modes.vectors.T / mass_outer
    energy, gradient_u, hessian = expansion.gaussian_averages(centroids_A - expansion.reference, covariance)
    gradient = symmetrize_mass_weighted(model, dynamical - hessian / mass_outer)
    mean_force = symmetrize_vector(model, -gradient_u.reshape(-1, 3))
    potential_harmonic = 0.5 * np.sum(modes.omega**2 * modes.variance)  # ⟨½ vᵀ D v⟩
    free_energy = harmonic_free_energy_eV(modes, settings.temperature_K, settings.quantum) + energy - potential_harmonic
    return float(free_energy), gradient, mean_force


def run_scha_on_expansion(
    atoms: Atoms,
    expansion: ForceConstantExpansion,
    supercell_matrix,
    settings: SSCHASettings,
    *,
    harmonic: tuple[np.ndarray, int],
    initial_force_constants: np.ndarray | None = None,
    tolerance: float = 1e-9,
    model: SupercellModel | None = None,
    trusted_displacement_A: float | None = None,
) -> SSCHAResult:
    """The SSCHA on a force-constant expansion with exact Gaussian averages instead of ensembles.

    Same start, update (:func:`preconditioned_step`, symmetrization, stabilization, centroid
    relaxation) and result as :func:`run_sscha`, but ⟨∂²V⟩, ⟨∂V⟩ and ⟨V⟩ come from
    :meth:`ForceConstantExpansion.gaussian_averages`: the infinite-ensemble limit, without
    stochastic error. Converged when the gradient is below ``tolerance`` × |D| and the symmetrized
    mean force below 1e-6 eV/Å with no mode held up by the stabilization floor.

    ``trusted_displacement_A``: the largest atomic displacement the expansion was fitted on; a centroid
    moved further (or a non-finite D) raises :class:`SurrogateDiverged`, since the expansion only
    extrapolates there (GeTe's surrogate pulled its centroids 18 Å away before D overflowed).
    """
    start = time.perf_counter()
    model = supercell_model(atoms, supercell_matrix, settings) if model is None else model
    fc_harmonic, evaluations = harmonic
    mass_outer, harmonic_dynamical, dynamical, n_stabilized = starting_dynamical_matrices(
        model, fc_harmonic, initial_force_constants, settings
    )
    centroids = model.atoms.positions.copy()
    history, converged, status = [], False, None
    # Modes near the floor can step over and back across it (seen in bcc Rb): halve the step whenever the
    # gradient grows, as the direct loop does on one ensemble.
    step_scale, previous_norm = settings.mixing, np.inf
    for step in range(settings.max_steps):
        shift = float(np.linalg.norm(centroids - model.atoms.positions, axis=1).max())
        if not (np.isfinite(dynamical).all() and np.isfinite(shift)):
            raise SurrogateDiverged(f"SCHA on the surrogate diverged at step {step} (non-finite D or centroids)",
                                    evaluations, time.perf_counter() - start)
        if trusted_displacement_A is not None and shift > trusted_displacement_A:
            raise SurrogateDiverged(
                f"SCHA on the surrogate moved a centroid {shift:.2f} Å at step {step}, beyond the largest "
                f"displacement it was fitted on ({trusted_displacement_A:.2f} Å)", evaluations, time.perf_counter() - start)
        free_energy, gradient, mean_force = scha_point(model, expansion, dynamical, centroids, settings)
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
        free_norm = free_gradient(model, dynamical, gradient, settings.min_frequency_THz)[0] if n_stabilized else gradient_norm
        if free_norm <= tolerance * np.linalg.norm(dynamical) and force_settled:
            converged = n_stabilized == 0  # held modes: the constrained problem is solved, flagged as such
            status = "converged" if converged else held_status(settings, n_stabilized)
            break
        if free_norm > previous_norm:
            step_scale /= 2
        previous_norm = free_norm
        step_matrix = preconditioned_step(model, dynamical, harmonic_dynamical, gradient, settings)
        dynamical = symmetrize_mass_weighted_fc(model, dynamical - step_scale * step_matrix)
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
