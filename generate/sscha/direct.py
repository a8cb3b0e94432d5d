"""The direct engine: every ensemble evaluated by the potential, Kong-Liu reweighting, a preconditioned
step, stochastic errors; :func:`run_sscha`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from generate.sscha.result import SSCHAResult, SSCHASettings, SSCHAStep
from generate.sscha.supercell import (
    THZ_PER_OMEGA,
    Modes,
    SupercellModel,
    eigen,
    evaluate,
    frequencies_THz,
    gaussian_modes,
    harmonic_force_constants,
    harmonic_free_energy_eV,
    mass_weighted_translations,
    stabilize,
    supercell_model,
    symmetrize_matrix,
    symmetrize_vector,
    to_blocks,
    to_matrix,
    unstable_modes,
)

log = logging.getLogger("thermobench.sscha")  # step-by-step progress; the CLI shows it on stderr

# Fresh ensembles in a row, with modes held at the floor, whose free gradient is no lower than the best so
# far: the run stops there. Modes crossing the floor and back keep the gradient several times its noise
# (fcc Hg, Bi2Se3: 60 steps, 12,000 evaluations, each step on a fresh ensemble) and the row is a bound anyway.
STALLED_ENSEMBLES = 3
# Fresh ensembles in all, with modes held at the floor: the run stops there however its free gradient creeps. A
# held row is a bound; phonondb's SrO2 (anchoring panel) spent 48 ensembles, 9,632 evaluations, on one at 100 K.
MAX_HELD_ENSEMBLES = 12


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

    batch = pair_batches(n, settings.n_error_batches)
    n_batches = batch.max() + 1
    in_batch = (batch[None, :] == np.arange(n_batches)[:, None]) * weights  # (B, n)
    batch_weights = in_batch.sum(axis=1)
    raw = np.einsum("bn,ni,nm->bim", in_batch, residual, scaled, optimize=True) @ modes.vectors.T
    batch_gradients = symmetrize_mass_weighted(model, raw / batch_weights[:, None, None])  # linear: one call for all
    gradient = np.einsum("b,bij->ij", batch_weights, batch_gradients)  # = gradient_of(weights), linear

    anharmonic = ensemble.energies_eV - 0.5 * np.einsum("ni,ni->n", v @ dynamical, v)  # matmul: 20× a 3-operand einsum
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
    domega2 = np.einsum("im,bim->bm", modes.vectors, deviations @ modes.vectors)
    omega2_error = np.sqrt(bessel(batch_weights) * np.sum(batch_weights[:, None] ** 2 * domega2**2, axis=0))
    return omega2_error / (2 * modes.omega) * THZ_PER_OMEGA


def symmetrize_mass_weighted(model: SupercellModel, matrix: np.ndarray) -> np.ndarray:
    """Symmetrize a mass-weighted matrix (space-group operations only map atoms of equal mass)."""
    m = model.sqrt_masses
    sym = symmetrize_matrix(model, sampled_part(model, matrix) * np.outer(m, m), sum_rule=False)
    return sampled_part(model, sym / np.outer(m, m))


def sampled_part(model: SupercellModel, matrix: np.ndarray) -> np.ndarray:
    """P M P with P = B Bᵀ the projector on the sampled modes (B: ``model.basis``), as the rank-3 update
    P = 1 − t tᵀ (t: the mass-weighted translations) where the sum rule holds: O(N²), not two O(N³) products."""
    if not model.acoustic_sum_rule:
        projector = model.basis @ model.basis.T
        return projector @ matrix @ projector
    t = mass_weighted_translations(model.sqrt_masses)
    left = matrix - t @ (t.T @ matrix)  # P M
    return left - (left @ t) @ t.T  # P M P


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
    renormalization = np.einsum("im,im->m", modes.vectors, (target - harmonic_dynamical) @ modes.vectors)
    b = modes.kappa * modes.variance / modes.variance.sum() / omega2
    residual = np.diag(in_modes).copy()
    # A mode the floor holds keeps its amplitude whatever the step, so it feeds no other mode: counting
    # it would make the free modes wait for a softening that never comes (they stall off their solution).
    b[floor_held(omega2, residual, settings.min_frequency_THz)] = 0.0
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


def at_floor(values: np.ndarray, min_frequency_THz: float) -> np.ndarray:
    """Modes (eigenvalues ω² of D) at the stabilization floor: stabilize() puts them at ω_min² exactly."""
    omega2_min = (min_frequency_THz / THZ_PER_OMEGA) ** 2
    return np.abs(values - omega2_min) <= 1e-6 * omega2_min


def floor_held(values: np.ndarray, own_gradient: np.ndarray, min_frequency_THz: float) -> np.ndarray:
    """Modes the stabilization floor holds: at it, with their own gradient component pushing them below
    it (D <- D - step: positive lowers ω²; the SCHA wants them softer)."""
    return at_floor(values, min_frequency_THz) & (own_gradient > 0)


def free_gradient(model: SupercellModel, dynamical: np.ndarray, gradient: np.ndarray, min_frequency_THz: float) -> tuple[float, np.ndarray]:
    """The gradient's norm without the components the floor holds fixed, and the modes at the floor (mask
    over the sampled modes, in :func:`eigen`'s order). The modes at the floor are degenerate, so within
    their subspace a step only rotates them and stabilize() puts them back: the part of the gradient's
    block there that pushes them down (its positive eigenvalues) cannot vanish, and at the constrained
    minimum it is all that is left; their couplings to the other modes, and every other mode, stay free."""
    values, vectors = eigen(model, dynamical)
    floor = at_floor(values, min_frequency_THz)
    total = float(np.linalg.norm(gradient))
    if not floor.any():
        return total, floor
    block = vectors[:, floor].T @ gradient @ vectors[:, floor]
    pushed_down = np.clip(np.linalg.eigvalsh(0.5 * (block + block.T)), 0.0, None)  # D <- D - step: positive lowers ω²
    return float(np.sqrt(max(0.0, total**2 - np.sum(pushed_down**2)))), floor


def held_status(settings, n_stabilized: int) -> str:
    """A run that reached its constrained minimum: every mode self-consistent except those held at the floor."""
    return (f"self-consistent with {n_stabilized} modes held at the stabilization floor of {settings.min_frequency_THz} THz, "
            "where the SCHA wants them softer: a solution of the constrained problem, not converged")


def stalled_status(settings, n_stabilized: int) -> str:
    """A run stopped because its free gradient stopped falling while modes crossed the floor and back."""
    return (f"stalled with {n_stabilized} modes held at the stabilization floor of {settings.min_frequency_THz} THz: "
            f"the free modes' gradient did not fall below its best on {STALLED_ENSEMBLES} fresh ensembles in a row")


def capped_status(settings, n_stabilized: int) -> str:
    """A run stopped after :data:`MAX_HELD_ENSEMBLES` fresh ensembles with modes held at the floor."""
    return (f"stopped with {n_stabilized} modes held at the stabilization floor of {settings.min_frequency_THz} THz after "
            f"{MAX_HELD_ENSEMBLES} fresh ensembles: a bound, its free modes not yet self-consistent")


def unconverged_status(settings, n_stabilized: int) -> str:
    """Why a run stopped without converging; modes held at the stabilization floor are named, as the
    SCHA then wants them softer than ``min_frequency_THz`` (a structural instability near this T)."""
    status = f"not converged in {settings.max_steps} steps"
    if n_stabilized:
        status += f": {n_stabilized} modes held at the stabilization floor of {settings.min_frequency_THz} THz"
    return status


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
    _, harmonic_dynamical, dynamical, n_stabilized = starting_dynamical_matrices(model, fc_harmonic, initial_force_constants, settings)
    centroids = model.atoms.positions.copy()

    n_configurations = settings.n_configurations
    ensemble, history, stats = None, [], None
    converged, status = False, None  # status: set where the loop stops early
    # stalled: fresh ensembles in a row without a lower free gradient; held_ensembles: fresh ensembles with modes held
    best_free_norm, stalled, held_ensembles = np.inf, 0, 0
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
        # With modes held at the floor, the components the floor holds cannot vanish: judge the others.
        free_norm, held = (free_gradient(model, dynamical, stats.gradient, settings.min_frequency_THz) if n_stabilized
                           else (gradient_norm, None))
        at_noise = converged_gradient(
            free_norm, gradient_error, carried_error if fresh else 0.0, np.linalg.norm(dynamical), settings
        )
        if fresh and at_noise:
            # An independent ensemble cannot tell the gradient from noise: Φ is self-consistent.
            errors = stats.frequency_errors_THz if carried_frequency_errors is None else carried_frequency_errors
            if held is not None and len(errors) == len(held) and not held.all():
                errors = errors[~held]  # a held mode's frequency is the floor's, whatever its noise
            target = settings.frequency_error_target_THz
            if target is None or errors.max() <= target:
                converged = n_stabilized == 0
                status = "converged" if converged else held_status(settings, n_stabilized)
                break
            if carried_size >= settings.max_configurations:
                status = f"frequency error {errors.max():.3g} THz above {target} THz with {carried_size} configurations"
                break
            # Errors scale as 1/sqrt(n): size the next ensembles for the target, and use this one.
            needed = int(np.ceil(1.1 * max(carried_size, 2) * (errors.max() / target) ** 2 / 2)) * 2
            n_configurations = min(max(n_configurations, needed), settings.max_configurations)
        elif fresh and n_stabilized:
            stalled = 0 if free_norm < best_free_norm else stalled + 1
            best_free_norm = min(best_free_norm, free_norm)
            held_ensembles += 1
            if stalled >= STALLED_ENSEMBLES:
                status = stalled_status(settings, n_stabilized)
                break
            if held_ensembles >= MAX_HELD_ENSEMBLES:
                status = capped_status(settings, n_stabilized)
                break
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
    sigma, sigma_error = anharmonicity_score(model, ensemble, stats.weights, fc_harmonic)
    return sscha_result(
        model, settings, "direct", converged, status, dynamical, centroids, fc_harmonic, final_errors, history,
        sigma_A=sigma,
        sigma_A_error=sigma_error,
        n_potential_evaluations=evaluations,
        wall_time_s=time.perf_counter() - start,
    )


def sscha_result(
    model, settings, backend, converged, status, dynamical, centroids, fc_harmonic, mode_errors_THz, history, **fields
) -> SSCHAResult:
    """The result of a run ending at ``dynamical`` and ``centroids``: frequencies with their errors
    (``mode_errors_THz`` in the order of the sampled modes), harmonic instabilities, commensurate and
    mesh frequencies; the free energy is the last step's. ``fields``: sigma_A, sigma_A_error,
    n_potential_evaluations, wall_time_s."""
    from generate.harmonic.phonons import commensurate_qpoints

    mass_outer = np.outer(model.sqrt_masses, model.sqrt_masses)
    supercell = model.atoms.copy()
    supercell.positions = centroids
    fc = to_blocks(dynamical * mass_outer)
    modes = gaussian_modes(model, dynamical, settings)
    frequencies, errors = sorted_frequencies_with_errors(model, dynamical, modes, mode_errors_THz)
    qpoints = commensurate_qpoints(model.phonon)
    unstable = unstable_modes(model.phonon, fc_harmonic, qpoints, settings.imaginary_tolerance_THz)
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


def anharmonicity_score(model: SupercellModel, ensemble: Ensemble, weights, fc_harmonic) -> tuple[float, float]:
    """σᴬ = sqrt(Σ(f - f_harm)² / Σf²) over the (reweighted) ensemble, Knoop et al. PRM 4, 083809 (2020),
    and its stochastic error (delete-one jackknife over the independent antithetic pairs).

    f_harm = -Φ_harm u with u measured from the reference (static equilibrium) positions; the
    thermal ensemble is the SSCHA's Gaussian instead of molecular dynamics.
    """
    n = len(ensemble.energies_eV)
    u = (ensemble.centroids_A + ensemble.displacements_A - model.atoms.positions).reshape(n, -1)
    forces = ensemble.forces_eV_A.reshape(n, -1)
    harmonic = -u @ to_matrix(fc_harmonic).T
    weights = np.asarray(weights, float)
    numerator = weights * np.sum((forces - harmonic) ** 2, axis=1)
    denominator = weights * np.sum(forces**2, axis=1)
    value = float(np.sqrt(numerator.sum() / denominator.sum()))
    n_pairs = n // 2
    if n_pairs < 2:
        return value, float("nan")
    pair_num = numerator[: 2 * n_pairs].reshape(n_pairs, 2).sum(axis=1)
    pair_den = denominator[: 2 * n_pairs].reshape(n_pairs, 2).sum(axis=1)
    left_out = np.sqrt((numerator.sum() - pair_num) / (denominator.sum() - pair_den))
    return value, float(np.sqrt((n_pairs - 1) / n_pairs * np.sum((left_out - left_out.mean()) ** 2)))
