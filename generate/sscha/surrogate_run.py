"""The surrogate engine's runs: one fit per material (:class:`SurrogateFit`), the SCHA on it at each
temperature and the verified correction against the potential (:func:`solve_on_surrogate`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
from ase import Atoms

from generate.sscha.direct import Ensemble, anharmonicity_score, new_ensemble, phonon_frequencies, run_sscha
from generate.sscha.expansion import ForceConstantExpansion
from generate.sscha.result import SSCHAResult, SSCHASettings, SurrogateReport, n_held
from generate.sscha.supercell import (
    SupercellModel,
    evaluate,
    gaussian_modes,
    harmonic_force_constants,
    stabilize,
    supercell_model,
    to_blocks,
    to_matrix,
)
from generate.sscha.surrogate import (
    SurrogateBasis,
    SurrogateDiverged,
    SurrogateSettings,
    fit_surrogate,
    relative_force_error,
    run_scha_on_expansion,
    scha_point,
    signed_mode_frequencies_THz,
    surrogate_basis,
    surrogate_fit_matrix,
    verify_surrogate,
)

log = logging.getLogger("thermobench.sscha")


@dataclass
class SurrogateFit:
    """One material's surrogate, shared by its temperatures: the cluster space, Φ_harm, E0, the
    configurations the fit has seen and the current expansion. A temperature whose verification
    asks for a refit adds its configurations, and the refitted expansion serves the next one."""

    model: SupercellModel
    basis: SurrogateBasis
    fc_harmonic: np.ndarray
    energy0_eV: float
    displacements_A: np.ndarray
    forces_eV_A: np.ndarray
    fit_matrix: np.ndarray
    expansion: ForceConstantExpansion | None = None
    optimizer: object = None
    n_fits: int = 0

    def refit(self, surrogate: SurrogateSettings, seed: int) -> None:
        self.expansion, self.optimizer = fit_surrogate(
            self.basis, self.model, self.fc_harmonic, self.energy0_eV, self.displacements_A, self.forces_eV_A, surrogate,
            seed, fit_matrix=self.fit_matrix,
        )
        self.n_fits += 1

    @property
    def trusted_displacement_A(self) -> float:
        """The largest atomic displacement among the configurations the fit has seen."""
        return float(np.linalg.norm(self.displacements_A, axis=-1).max())

    def add(self, ensemble: Ensemble) -> None:
        added = ensemble.centroids_A + ensemble.displacements_A - self.model.atoms.positions
        self.displacements_A = np.concatenate([self.displacements_A, added])
        self.forces_eV_A = np.concatenate([self.forces_eV_A, ensemble.forces_eV_A])
        self.fit_matrix = np.concatenate([self.fit_matrix, surrogate_fit_matrix(self.basis, added)])


def train_surrogate(
    atoms: Atoms, potential, supercell_matrix, settings: SSCHASettings, surrogate: SurrogateSettings,
    harmonic: tuple[np.ndarray, int] | None = None,
) -> tuple[SurrogateFit, int]:
    """Φ_harm (finite displacements, or ``harmonic`` = (Φ, evaluations) of this supercell), E0 and
    ``n_training_structures`` configurations of the stabilized harmonic Gaussian at
    ``settings.temperature_K``, all from the potential, and the first fit. Train at the highest
    temperature of a material: its Gaussian spans the displacements of the lower ones.
    Returns the fit and the potential evaluations it cost."""
    rng = np.random.default_rng([settings.seed, 1])  # a stream apart from the SSCHA's own
    model = supercell_model(atoms, supercell_matrix, settings)
    basis = surrogate_basis(atoms, model, surrogate)
    fc_harmonic, evaluations = harmonic if harmonic is not None else harmonic_force_constants(model, potential, settings)
    energy0 = float(evaluate(potential, [model.atoms], settings.max_atoms_per_chunk)[0][0])
    evaluations += 1
    harmonic_dynamical = to_matrix(fc_harmonic) / np.outer(model.sqrt_masses, model.sqrt_masses)
    start_dynamical, _ = stabilize(model, harmonic_dynamical, settings.min_frequency_THz)
    training = new_ensemble(
        model, potential, model.atoms.positions, gaussian_modes(model, start_dynamical, settings),
        surrogate.n_training_structures, rng, settings,
    )
    evaluations += len(training.energies_eV)
    fit = SurrogateFit(model, basis, fc_harmonic, energy0, training.displacements_A, training.forces_eV_A,
                       surrogate_fit_matrix(basis, training.displacements_A))
    fit.refit(surrogate, settings.seed)
    return fit, evaluations


def run_sscha_surrogate(
    atoms: Atoms,
    potential,
    supercell_matrix,
    settings: SSCHASettings = SSCHASettings(),
    surrogate: SurrogateSettings = SurrogateSettings(),
    harmonic: tuple[np.ndarray, int] | None = None,
) -> SSCHAResult:
    """The SSCHA at one temperature on a hiphive surrogate of ``potential``, verified (and corrected)
    with the potential: :func:`run_sscha_surrogate_temperatures` with that one temperature."""
    (result,) = run_sscha_surrogate_temperatures(atoms, potential, supercell_matrix, [settings], surrogate, harmonic)
    if isinstance(result, SurrogateDiverged):
        raise result
    return result


def run_sscha_surrogate_temperatures(
    atoms: Atoms,
    potential,
    supercell_matrix,
    settings: list[SSCHASettings],
    surrogate: SurrogateSettings = SurrogateSettings(),
    harmonic: tuple[np.ndarray, int] | None = None,
    give_up_above: float | None = None,
    held_as_bound: bool = False,
) -> list[SSCHAResult | SurrogateDiverged]:
    """The SSCHA at several temperatures (one ``SSCHASettings`` each) from one surrogate fit, trained
    at the highest; temperatures are solved from the highest down, each starting from the Φ of the
    one above. Each result is verified at its own temperature; the training cost is counted in the
    highest temperature's ``n_potential_evaluations`` and wall time. Results come in the given order;
    a temperature whose SCHA left the surrogate's fitted region comes as its :class:`SurrogateDiverged`
    (the next one then starts from the last good Φ).
    ``give_up_above``, ``held_as_bound``: see :func:`solve_on_surrogate`."""
    start = time.perf_counter()
    order = sorted(range(len(settings)), key=lambda k: -settings[k].temperature_K)
    fit, evaluations = train_surrogate(atoms, potential, supercell_matrix, settings[order[0]], surrogate, harmonic)
    training_s = time.perf_counter() - start
    results: dict[int, SSCHAResult | SurrogateDiverged] = {}
    initial = None
    for rank, k in enumerate(order):
        try:
            result = solve_on_surrogate(fit, atoms, potential, supercell_matrix, settings[k], surrogate, initial, give_up_above,
                                        held_as_bound)
        except SurrogateDiverged as error:
            log.info("surrogate at %g K: %s", settings[k].temperature_K, error)
            if rank == 0:
                error.n_potential_evaluations += evaluations
                error.wall_time_s += training_s
            results[k] = error
            continue
        if rank == 0:
            result = replace(result, n_potential_evaluations=result.n_potential_evaluations + evaluations,
                             wall_time_s=result.wall_time_s + training_s)
        results[k] = result
        initial = result.force_constants_eV_A2
    return [results[k] for k in range(len(settings))]


def solve_on_surrogate(
    fit: SurrogateFit,
    atoms: Atoms,
    potential,
    supercell_matrix,
    settings: SSCHASettings,
    surrogate: SurrogateSettings,
    initial_force_constants: np.ndarray | None = None,
    give_up_above: float | None = None,
    held_as_bound: bool = False,
) -> SSCHAResult:
    """The SSCHA at ``settings.temperature_K`` on the surrogate, verified with the potential.

    1. The SSCHA on the surrogate: with ``surrogate.averages == "analytic"`` (default) by
       :func:`run_scha_on_expansion`, exactly, so that the verification alone carries stochastic
       error; with ``"ensemble"`` by :func:`run_sscha` with ``surrogate.n_configurations`` per
       ensemble, to half of ``frequency_error_target_THz``.
    2. :func:`verify_surrogate` on a fresh ensemble of the result. If the frequencies move by more
       than ``refit_threshold_THz``, the verification configurations join the training set, the
       surrogate is refitted and 1-2 repeat (at most ``max_refits`` times), starting from the last result.
    3. With ``surrogate.correct`` the reported Φ is the verified one: SSCHA steps with the potential's
       forces, paired with the surrogate's, repeated on the verification ensemble (reweighted) until a
       step moves no frequency by more than ``correction_tolerance_THz``; F gets ⟨V - V_surrogate⟩; the
       reported errors combine the surrogate run's and the verification's. ``n_potential_evaluations``
       counts the verification calls; the surrogate's own count is in the report.

    ``give_up_above``: when the fit's forces are off by more than this relative error (the
    threshold at which the caller rejects the surrogate), its verification ensemble is not grown and
    no correction steps are taken: precision spent on a result that will be discarded is wasted.
    ``held_as_bound``: a solution with modes held at the stabilization floor is a bound (the caller keeps it
    as such), so its verification ensemble is not grown towards the frequency target: SrO2's grew to
    hundreds of evaluations per correction step for modes the floor holds anyway.
    """
    from generate.harmonic.phonons import commensurate_qpoints

    if surrogate.averages not in ("analytic", "ensemble"):
        raise ValueError(f"surrogate.averages must be 'analytic' or 'ensemble', not {surrogate.averages!r}")
    analytic = surrogate.averages == "analytic"
    start = time.perf_counter()
    # A stream per temperature, apart from training's and the SSCHA's own.
    rng = np.random.default_rng([settings.seed, 2, int(round(1000 * settings.temperature_K))])
    model, fc_harmonic = fit.model, fit.fc_harmonic
    mass_outer = np.outer(model.sqrt_masses, model.sqrt_masses)
    harmonic_dynamical = to_matrix(fc_harmonic) / mass_outer
    target = settings.frequency_error_target_THz
    cheap = replace(
        settings,
        n_configurations=surrogate.n_configurations,
        max_configurations=surrogate.max_configurations,
        frequency_error_target_THz=None if target is None else target / 2,
    )
    initial, n_surrogate_evaluations, evaluations = initial_force_constants, 0, 0
    for attempt in range(surrogate.max_refits + 1):
        if analytic:
            try:
                result = run_scha_on_expansion(
                    atoms, fit.expansion, supercell_matrix, settings, harmonic=(fc_harmonic, 0),
                    initial_force_constants=initial, model=model, trusted_displacement_A=fit.trusted_displacement_A,
                )
            except SurrogateDiverged as error:
                error.n_potential_evaluations, error.wall_time_s = evaluations, time.perf_counter() - start
                raise
        else:
            result = run_sscha(atoms, fit.expansion, supercell_matrix, cheap, harmonic=(fc_harmonic, 0),
                               initial_force_constants=initial)
        n_surrogate_evaluations += result.n_potential_evaluations
        dynamical = to_matrix(result.force_constants_eV_A2) / mass_outer
        centroids = result.supercell.positions
        held = held_as_bound and n_held(result) > 0
        verify_target = None if target is None or held else target if analytic else target * np.sqrt(3) / 2
        check = verify_surrogate(
            model, potential, fit.expansion, dynamical, centroids, harmonic_dynamical, settings, surrogate, rng, verify_target,
            refit_threshold_THz=surrogate.refit_threshold_THz if attempt < surrogate.max_refits else None,
            give_up_above=give_up_above,
        )
        evaluations += check.n_new
        surrogate_frequencies = signed_mode_frequencies_THz(model, dynamical)
        shift = signed_mode_frequencies_THz(model, check.corrected_dynamical) - surrogate_frequencies
        log.info("surrogate at %g K (fit %d, %d training structures): verification shifts up to %.3f THz, "
                 "%d potential evaluations", settings.temperature_K, fit.n_fits, len(fit.displacements_A),
                 float(np.abs(shift).max()), evaluations)
        if np.abs(shift).max() <= surrogate.refit_threshold_THz or attempt == surrogate.max_refits:
            break
        fit.add(check.ensemble)
        fit.refit(surrogate, settings.seed)
        initial = result.force_constants_eV_A2

    # Further correction steps at the corrected D, on the same ensemble reweighted, until they settle:
    # the potential's gradient there is the surrogate's exact one plus the sampled (low-noise) difference.
    surrogate_free_energy = result.free_energy_eV_atom
    last_step, n_corrections = float(np.abs(shift).max()), 1
    hopeless = give_up_above is not None and relative_force_error(check.ensemble.forces_eV_A, check.surrogate_forces_eV_A) > give_up_above
    while (surrogate.correct and analytic and not hopeless and n_corrections < surrogate.max_corrections
           and last_step > surrogate.correction_tolerance_THz):
        dynamical, _ = stabilize(model, check.corrected_dynamical, settings.min_frequency_THz)
        free_energy, gradient, _ = scha_point(model, fit.expansion, dynamical, centroids, settings)
        check = verify_surrogate(model, potential, fit.expansion, dynamical, centroids, harmonic_dynamical, settings,
                                 surrogate, rng, verify_target, surrogate_gradient=gradient, reuse=check.ensemble)
        evaluations += check.n_new
        last_step = float(np.abs(signed_mode_frequencies_THz(model, check.corrected_dynamical)
                                 - signed_mode_frequencies_THz(model, dynamical)).max())
        surrogate_free_energy = free_energy / model.n_atoms
        n_corrections += 1
        log.info("surrogate at %g K: correction step %d moves frequencies by up to %.3f THz (error %.3f), %d potential evaluations",
                 settings.temperature_K, n_corrections, last_step, float(check.difference_errors_THz.max()), evaluations)
    shift = signed_mode_frequencies_THz(model, check.corrected_dynamical) - surrogate_frequencies  # total correction

    real = check.ensemble
    rmse = float(np.sqrt(np.mean((check.surrogate_forces_eV_A - real.forces_eV_A) ** 2)))
    modes = gaussian_modes(model, dynamical, settings)
    surrogate_errors = result.supercell_frequency_errors_THz[3 * model.n_atoms - modes.omega.size :]
    # run_sscha's errors come sorted by frequency, as eigh orders the modes of D, so they line up.
    report = SurrogateReport(
        n_training_structures=len(fit.displacements_A),
        n_fits=fit.n_fits,
        n_parameters=int(fit.optimizer.n_parameters),
        n_nonzero_parameters=int(fit.optimizer.n_nonzero_parameters),
        n_monomials=fit.expansion.n_monomials,
        training_force_rmse_eV_A=float(fit.optimizer.rmse_train),
        n_verification=len(real.energies_eV),
        verification_force_rmse_eV_A=rmse,
        verification_relative_force_error=relative_force_error(real.forces_eV_A, check.surrogate_forces_eV_A),
        max_frequency_difference_THz=float(np.abs(shift).max()),
        frequency_difference_error_THz=float(check.difference_errors_THz.max()),
        free_energy_difference_eV_atom=check.free_energy_difference_eV / model.n_atoms,
        free_energy_difference_error_eV_atom=check.free_energy_difference_error_eV / model.n_atoms,
        surrogate_frequency_error_THz=float(surrogate_errors.max()) if surrogate_errors.size else 0.0,
        corrected=surrogate.correct,
        n_surrogate_evaluations=n_surrogate_evaluations,
        n_corrections=n_corrections,
        last_correction_THz=last_step,
    )
    sigma_a, sigma_a_error = anharmonicity_score(model, real, np.full(len(real.energies_eV), 1.0 / len(real.energies_eV)), fc_harmonic)
    changes = dict(
        backend="surrogate",
        expansion=fit.expansion,
        n_potential_evaluations=evaluations,
        surrogate=report,
        sigma_A=sigma_a,
        sigma_A_error=sigma_a_error,
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
            free_energy_eV_atom=surrogate_free_energy + report.free_energy_difference_eV_atom,
            free_energy_error_eV_atom=float(np.hypot(result.free_energy_error_eV_atom, report.free_energy_difference_error_eV_atom)),
            commensurate_frequencies_THz=commensurate,
            mesh_qpoints=mesh[0],
            mesh_weights=mesh[1],
            mesh_frequencies_THz=mesh[2],
        )
    return replace(result, **changes)
