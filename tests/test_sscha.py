"""SSCHA against analytic references: a harmonic crystal, quartic and double-well Einstein crystals."""

import json
from dataclasses import replace

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from scipy.optimize import brentq

from generate.sscha import (
    HBAR_EV_T,
    THZ_PER_OMEGA,
    SSCHASettings,
    harmonic_force_constants,
    run_sscha,
    supercell_model,
    to_matrix,
)

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


class OnSiteQuartic(Calculator):
    """V = Σ_components ½k u² + ¼λ u⁴ with u measured from fixed reference positions (an Einstein crystal)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, reference_positions, k_eV_A2, lambda_eV_A4):
        super().__init__()
        self.reference = np.array(reference_positions)
        self.k, self.lam = k_eV_A2, lambda_eV_A4

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        u = self.atoms.positions - self.reference
        self.results["energy"] = float(np.sum(0.5 * self.k * u**2 + 0.25 * self.lam * u**4))
        self.results["forces"] = -(self.k * u + self.lam * u**3)


class Harmonic(Calculator):
    """V = ½ uᵀ Φ u for a given (N, N, 3, 3) force-constant array."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, reference_positions, force_constants):
        super().__init__()
        self.reference = np.array(reference_positions)
        self.matrix = to_matrix(force_constants)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        u = (self.atoms.positions - self.reference).reshape(-1)
        self.results["energy"] = float(0.5 * u @ self.matrix @ u)
        self.results["forces"] = -(self.matrix @ u).reshape(-1, 3)


MASS_AMU = 4.0
SUPERCELL = (2, 2, 2)


def einstein_crystal():
    atoms = Atoms("Ar", cell=np.eye(3) * 3.0, pbc=True)
    atoms.set_masses([MASS_AMU])
    return atoms


def onsite_model_reference(atoms):
    from generate.sscha import supercell_model

    return supercell_model(atoms, SUPERCELL, SSCHASettings(acoustic_sum_rule=False)).atoms.positions


def scha_frequency_THz(k, lam, temperature_K, quantum):
    """Analytic SCHA: ω² = (k + 3λ<u²>)/m, <u²> = ħ/(2mω) coth(ħω/2kT) or kT/(mω²), solved for ω."""
    kT = units.kB * temperature_K

    def residual(omega2):
        omega = np.sqrt(omega2)
        if quantum:
            u2 = HBAR_EV_T / (2 * MASS_AMU * omega) / np.tanh(HBAR_EV_T * omega / (2 * kT))
        else:
            u2 = kT / (MASS_AMU * omega2)
        return MASS_AMU * omega2 - (k + 3 * lam * u2)

    omega2 = brentq(residual, 1e-8, 1e4)
    return np.sqrt(omega2) * THZ_PER_OMEGA


# On-site potentials break translation invariance: no acoustic sum rule, all 3N modes sampled.
ONSITE = dict(acoustic_sum_rule=False, n_configurations=400, q_mesh=(2, 2, 2), frequency_error_target_THz=None)


@pytest.mark.parametrize("quantum", [True, False])
@pytest.mark.parametrize("temperature_K", [100.0, 600.0])
def test_quartic_einstein_crystal_matches_analytic_scha(quantum, temperature_K):
    k, lam = 2.0, 20.0
    atoms = einstein_crystal()
    calculator = OnSiteQuartic(onsite_model_reference(atoms), k, lam)
    settings = SSCHASettings(temperature_K=temperature_K, quantum=quantum, **dict(ONSITE, frequency_error_target_THz=0.05))
    result = run_sscha(atoms, calculator, SUPERCELL, settings)
    expected = scha_frequency_THz(k, lam, temperature_K, quantum)
    d = settings.displacement_A  # phonopy's central difference sees k + λd²
    harmonic = np.sqrt((k + lam * d**2) / MASS_AMU) * THZ_PER_OMEGA
    assert result.converged
    np.testing.assert_allclose(result.harmonic_supercell_frequencies_THz, harmonic, rtol=1e-6)
    assert expected > 1.04 * harmonic  # a shift several times the tolerance is what is tested
    np.testing.assert_allclose(result.supercell_frequencies_THz, expected, rtol=0.01)


def test_harmonic_crystal_returns_its_own_force_constants_at_any_temperature():
    atoms = bulk("Cu", "fcc", a=3.6)
    settings = SSCHASettings(n_configurations=200, q_mesh=(2, 2, 2), frequency_error_target_THz=None)
    model = supercell_model(atoms, SUPERCELL, settings)
    reference, _ = harmonic_force_constants(model, EMT(), settings)
    calculator = Harmonic(model.atoms.positions, reference)
    scale = np.abs(reference).max()
    for temperature_K in (50.0, 1500.0):
        start = 1.4 * reference  # a wrong start, so the loop has to find the answer
        result = run_sscha(atoms, calculator, SUPERCELL, replace(settings, temperature_K=temperature_K), initial_force_constants=start)
        assert result.converged
        assert np.abs(result.force_constants_eV_A2 - reference).max() < 1e-6 * scale
        assert np.abs(result.force_constants_eV_A2.sum(axis=1)).max() < 1e-10 * scale  # acoustic sum rule
        np.testing.assert_allclose(result.supercell_frequencies_THz, result.harmonic_supercell_frequencies_THz, atol=1e-5)
        assert result.sigma_A < 1e-8  # no anharmonicity


@pytest.mark.parametrize("quantum", [True, False])
def test_harmonically_unstable_double_well_is_stabilized_at_high_temperature(quantum, seed=0):
    a, lam, temperature_K = 1.0, 10.0, 600.0  # V = -½a u² + ¼λ u⁴ per component
    atoms = einstein_crystal()
    calculator = OnSiteQuartic(onsite_model_reference(atoms), -a, lam)
    settings = SSCHASettings(temperature_K=temperature_K, quantum=quantum, seed=seed, **dict(ONSITE, n_configurations=3200))
    result = run_sscha(atoms, calculator, SUPERCELL, settings)
    assert (result.harmonic_supercell_frequencies_THz < -7).all()  # i*7.8 THz before renormalization
    assert len(result.unstable_harmonic_modes) == 24  # 3 bands at each of 8 commensurate q
    assert result.converged
    expected = scha_frequency_THz(-a, lam, temperature_K, quantum)
    frequencies = result.supercell_frequencies_THz
    assert np.sqrt(np.mean(frequencies**2)) == pytest.approx(expected, rel=0.01)
    # Single modes carry the large noise of a renormalization bigger than the curvature itself.
    np.testing.assert_allclose(frequencies, expected, rtol=0.04)
    assert np.abs(frequencies - expected).max() < 4 * result.max_frequency_error_THz
    assert (result.mesh_frequencies_THz > 0).all()


def test_same_seed_same_result_other_seed_other_result():
    atoms = einstein_crystal()
    calculator = OnSiteQuartic(onsite_model_reference(atoms), 2.0, 20.0)
    settings = SSCHASettings(temperature_K=300.0, **dict(ONSITE, n_configurations=100))
    first = run_sscha(atoms, calculator, SUPERCELL, settings)
    second = run_sscha(atoms, calculator, SUPERCELL, settings)
    other = run_sscha(atoms, calculator, SUPERCELL, replace(settings, seed=1))
    np.testing.assert_array_equal(first.force_constants_eV_A2, second.force_constants_eV_A2)
    assert first.history == second.history
    assert np.abs(first.force_constants_eV_A2 - other.force_constants_eV_A2).max() > 1e-6


def test_command_line_writes_the_record_and_agrees_with_the_harmonic_stage(shared, tmp_path):
    from generate.harmonic.phonons import HarmonicSettings, harmonic_phonons
    from generate.run.config import compose
    from generate.sscha.__main__ import run_command
    from thermobench.potentials import load_calculator
    from thermobench.structures import load_structure

    out = tmp_path / "nacl.json"
    run_command(compose("sscha", ["structure=NaCl", "supercell=[2,2,2]", "temperature_K=300", "relax_structure=false", "seed=3",
                                  f"out={out}", "sscha.n_configurations=100", "sscha.frequency_error_target_THz=null",
                                  "harmonic.q_mesh=[4,4,4]"]))
    record = json.loads(out.read_text())
    for key in ("temperature_K", "free_energy_eV_atom", "free_energy_error_eV_atom", "sigma_A", "wall_time_s", "history"):
        assert key in record
    assert record["temperature_K"] == 300.0 and record["seed"] == 3 and isinstance(record["converged"], bool)
    assert record["n_potential_evaluations"] == record["history"][-1]["n_potential_evaluations"] >= 100
    frequencies = np.array(record["supercell_frequencies_THz"])
    assert frequencies.shape == (48,) and (np.diff(frequencies) >= 0).all()  # 16 atoms: the cell alone (Γ only) is refused
    np.testing.assert_allclose(frequencies[:3], 0.0, atol=1e-6)  # translations
    assert frequencies[3] > 1.5 and 0.0 < record["sigma_A"] < 1.0  # lowest zone-boundary mode (TA at L, about 2.2 THz)
    harmonic = harmonic_phonons(
        load_structure("NaCl"), load_calculator(), HarmonicSettings(supercell_matrix=(2, 2, 2), q_mesh=(2, 2, 2), band_points=3)
    )
    np.testing.assert_allclose(
        record["harmonic_supercell_frequencies_THz"], np.sort(harmonic.commensurate_frequencies_THz.ravel()), atol=1e-3
    )


# ----------------------------------------------------------------------------------------------
# Surrogate backend


class QuarticBonds(Calculator):
    """Nearest-neighbour bonds V = Σ_bonds ½k|Δu|² + ¼λ|Δu|⁴ (Δu = u_i - u_j): a translation-invariant
    crystal whose potential is exactly a 2nd + 4th order force-constant expansion."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, reference: Atoms, k_eV_A2, lambda_eV_A4, cutoff_A):
        from ase.neighborlist import neighbor_list

        super().__init__()
        self.reference = reference.positions.copy()
        self.i, self.j = neighbor_list("ij", reference, cutoff_A)  # each bond twice, images included
        self.k, self.lam = k_eV_A2, lambda_eV_A4

    def bond_terms(self, d2):
        return 0.5 * self.k * d2 + 0.25 * self.lam * d2**2, self.k + self.lam * d2

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        u = self.atoms.positions - self.reference
        d = u[self.i] - u[self.j]
        energy, stiffness = self.bond_terms(np.sum(d**2, axis=1))
        forces = np.zeros_like(u)
        np.add.at(forces, self.i, -stiffness[:, None] * d)
        self.results["energy"] = float(0.5 * np.sum(energy))
        self.results["forces"] = forces


FCC = dict(a=4.0, nearest_A=4.0 / np.sqrt(2))


def tiled_energy(force_constants, displacements) -> float:
    """Σ over hiphive's sorted clusters of Φ_c·u⊗…⊗u / Π(m!), m: how often an atom repeats in c."""
    from collections import Counter
    from math import factorial, prod

    energy = 0.0
    for cluster, tensor in force_constants.get_fc_dict().items():
        product = tensor
        for atom in cluster:
            product = np.tensordot(product, displacements[atom], axes=([0], [0]))
        energy += float(product) / prod(factorial(m) for m in Counter(cluster).values())
    return energy


def test_folded_expansion_equals_the_tiled_force_constants():
    """Folding force constants of a tiled supercell onto the SSCHA supercell changes nothing for
    displacements periodic with it: the energy is the tiled one over the copies, the forces are its
    negative gradient, batch and single-structure routes agree. The parameter basis used for fits
    folds to the same expansion, and its fit matrix gives the same forces."""
    from hiphive import ForceConstantPotential

    from generate.sscha import (
        ForceConstantExpansion,
        SurrogateSettings,
        folded_monomials,
        quiet_hiphive,
        surrogate_basis,
        surrogate_fit_matrix,
    )

    atoms = bulk("Ar", "fcc", a=FCC["a"])
    model = supercell_model(atoms, SUPERCELL, SSCHASettings())
    rng = np.random.default_rng(0)
    basis = surrogate_basis(atoms, model, SurrogateSettings(cutoffs_A=(3.4, 3.4, 3.4)))
    assert basis.tiling == 2  # beyond half the supercell: needs tiling
    parameters = rng.normal(size=basis.n_parameters)
    with quiet_hiphive():
        fcp = ForceConstantPotential(basis.cluster_space, parameters)
        force_constants = fcp.get_force_constants(model.atoms.repeat(2))
    expansion = ForceConstantExpansion(model.atoms, 0.5, folded_monomials(force_constants, model.n_atoms, 8))
    assert sorted(m.order for m in expansion.orders) == [2, 3, 4]
    displacements = rng.normal(scale=0.1, size=(3, model.n_atoms, 3))
    energies, forces = expansion.energies_and_forces(displacements)
    for u, energy in zip(displacements, energies, strict=True):
        assert energy - 0.5 == pytest.approx(tiled_energy(force_constants, np.tile(u, (8, 1))) / 8, rel=1e-10)
    h = 1e-5
    steps = np.eye(3 * model.n_atoms).reshape(-1, model.n_atoms, 3) * h
    plus, _ = expansion.energies_and_forces(displacements[0] + steps)
    minus, _ = expansion.energies_and_forces(displacements[0] - steps)
    numerical = -(plus - minus).reshape(model.n_atoms, 3) / (2 * h)
    assert np.abs(forces[0] - numerical).max() < 1e-6 * np.abs(numerical).max()
    one = model.atoms.copy()
    one.positions += displacements[0]
    one.calc = expansion
    np.testing.assert_allclose(one.get_forces(), forces[0], rtol=1e-12, atol=1e-12)

    from_basis = ForceConstantExpansion(model.atoms, 0.5, basis.monomials(parameters))
    basis_energies, basis_forces = from_basis.energies_and_forces(displacements)
    np.testing.assert_allclose(basis_energies, energies, rtol=1e-12)
    np.testing.assert_allclose(basis_forces, forces, atol=1e-12 * np.abs(forces).max())
    fit_matrix = surrogate_fit_matrix(basis, displacements)
    np.testing.assert_allclose(fit_matrix @ parameters, forces.reshape(-1), atol=1e-12 * np.abs(forces).max())


@pytest.fixture(scope="module")
def quartic_bond_crystal():
    """fcc crystal of quartic nearest-neighbour bonds: direct SSCHA and surrogate SSCHA at 300 K."""
    from generate.sscha import SurrogateSettings, run_sscha_surrogate

    atoms = bulk("Ar", "fcc", a=FCC["a"])
    settings = SSCHASettings(temperature_K=300.0, n_configurations=400, q_mesh=(2, 2, 2), frequency_error_target_THz=0.02)
    model = supercell_model(atoms, SUPERCELL, settings)
    calculator = QuarticBonds(model.atoms, 1.0, 20.0, cutoff_A=1.1 * FCC["nearest_A"])
    direct = run_sscha(atoms, calculator, SUPERCELL, settings)
    surrogate_settings = SurrogateSettings(
        cutoffs_A=(1.2 * FCC["nearest_A"],) * 3, fit_method="least-squares", n_training_structures=10
    )
    surrogate = run_sscha_surrogate(atoms, calculator, SUPERCELL, settings, surrogate_settings)
    return direct, surrogate, surrogate_settings


def test_surrogate_reproduces_the_direct_sscha_of_an_exactly_representable_crystal(quartic_bond_crystal):
    direct, surrogate, _ = quartic_bond_crystal
    assert direct.converged and surrogate.converged and surrogate.backend == "surrogate"
    shift = direct.supercell_frequencies_THz[3:] / direct.harmonic_supercell_frequencies_THz[3:]
    assert shift.min() > 1.1  # the renormalization tested is 10-20 %, far above the tolerance
    assert surrogate.max_frequency_error_THz <= 0.02 and direct.max_frequency_error_THz <= 0.02
    # Independent stochastic runs: every mode within 3 combined standard errors (0.02 THz each at most).
    combined = np.hypot(direct.supercell_frequency_errors_THz, surrogate.supercell_frequency_errors_THz)[3:]
    difference = np.abs(direct.supercell_frequencies_THz - surrogate.supercell_frequencies_THz)[3:]
    assert (difference <= 3 * combined).all(), (difference / combined).max()
    assert surrogate.free_energy_eV_atom == pytest.approx(direct.free_energy_eV_atom, abs=3 * np.hypot(
        surrogate.free_energy_error_eV_atom, direct.free_energy_error_eV_atom) + 1e-6)


def test_surrogate_verification_report(quartic_bond_crystal):
    direct, surrogate, settings = quartic_bond_crystal
    report = surrogate.surrogate
    # The bond model is exactly a 2nd + 4th order expansion: the fit and the verification see no error.
    assert report.training_force_rmse_eV_A < 1e-9 and report.verification_force_rmse_eV_A < 1e-9
    assert report.verification_relative_force_error < 1e-9
    assert report.max_frequency_difference_THz < 1e-6 and report.free_energy_difference_eV_atom == pytest.approx(0, abs=1e-9)
    assert report.n_fits == 1 and report.corrected
    assert report.n_verification >= settings.n_verification and report.n_verification % 2 == 0
    assert report.n_training_structures == settings.n_training_structures
    assert 0 < report.n_nonzero_parameters <= report.n_parameters and report.n_monomials > 0
    # Exact Gaussian averages on the surrogate: the verification carries all the stochastic error.
    assert report.surrogate_frequency_error_THz == 0 and report.n_surrogate_evaluations == 0
    assert report.frequency_difference_error_THz == pytest.approx(surrogate.max_frequency_error_THz, rel=1e-12)
    # Potential evaluations: 1 finite displacement (fcc), E0, training and verification.
    assert surrogate.n_potential_evaluations == 1 + 1 + report.n_training_structures + report.n_verification
    assert direct.n_potential_evaluations > surrogate.n_potential_evaluations
    record = json.loads(json.dumps(surrogate.to_json_dict()))
    assert record["backend"] == "surrogate" and record["surrogate"]["n_verification"] == report.n_verification


def test_one_surrogate_fit_serves_every_temperature(quartic_bond_crystal):
    """Trained once at the highest temperature: that result is the single-temperature run's (same
    random streams), the lower temperature costs only its verification, and quartic bonds harden
    less at 100 K than at 300 K."""
    from generate.sscha import run_sscha_surrogate_temperatures

    _, single, surrogate_settings = quartic_bond_crystal
    atoms = bulk("Ar", "fcc", a=FCC["a"])
    base = SSCHASettings(temperature_K=300.0, n_configurations=400, q_mesh=(2, 2, 2), frequency_error_target_THz=0.02)
    model = supercell_model(atoms, SUPERCELL, base)
    calculator = QuarticBonds(model.atoms, 1.0, 20.0, cutoff_A=1.1 * FCC["nearest_A"])
    cold, hot = run_sscha_surrogate_temperatures(atoms, calculator, SUPERCELL, [replace(base, temperature_K=100.0), base],
                                                 surrogate_settings)
    assert (cold.temperature_K, hot.temperature_K) == (100.0, 300.0)
    np.testing.assert_allclose(hot.supercell_frequencies_THz, single.supercell_frequencies_THz, atol=1e-10)
    assert cold.surrogate.n_fits == hot.surrogate.n_fits == 1
    assert cold.n_potential_evaluations == cold.surrogate.n_verification
    assert hot.n_potential_evaluations == 1 + 1 + surrogate_settings.n_training_structures + hot.surrogate.n_verification
    shift = lambda r: r.supercell_frequencies_THz[3:] / r.harmonic_supercell_frequencies_THz[3:]  # noqa: E731
    assert (shift(cold) < shift(hot)).all() and (shift(cold) > 1).all()


def onsite_expansion(model, k_eV_A2, lambda_eV_A4):
    """V = Σ_components ½k u² + ¼λ u⁴ as a force-constant expansion (on-site terms only)."""
    from generate.sscha import ForceConstantExpansion, Monomials, harmonic_monomials

    n_dofs = 3 * model.n_atoms
    quartic = Monomials(dofs=np.repeat(np.arange(n_dofs)[:, None], 4, axis=1), coefficients=np.full(n_dofs, lambda_eV_A4 / 4))
    return ForceConstantExpansion(model.atoms, 0.0, [harmonic_monomials(k_eV_A2 * np.eye(n_dofs)), quartic])


@pytest.mark.parametrize("quantum", [True, False])
@pytest.mark.parametrize(
    ("k_eV_A2", "temperature_K"),
    [(2.0, 100.0), (2.0, 600.0), (-1.0, 600.0)],  # a single well; a double well, stabilized when hot
)
def test_exact_averages_on_an_expansion_give_the_analytic_scha(quantum, temperature_K, k_eV_A2):
    """The SSCHA on a quartic expansion with exact Gaussian averages has no stochastic error: it
    meets the analytic SCHA frequency of the Einstein crystal to 1e-6, and its free energy is
    F_harm(ω) + ⟨V⟩ - ½mω²⟨u²⟩ per component."""
    from generate.sscha import mode_variance, run_scha_on_expansion, to_blocks

    lam = 20.0
    atoms = einstein_crystal()
    settings = SSCHASettings(temperature_K=temperature_K, quantum=quantum, **ONSITE)
    model = supercell_model(atoms, SUPERCELL, settings)
    expansion = onsite_expansion(model, k_eV_A2, lam)
    harmonic = to_blocks(k_eV_A2 * np.eye(3 * model.n_atoms))
    result = run_scha_on_expansion(atoms, expansion, SUPERCELL, settings, harmonic=(harmonic, 0))
    expected = scha_frequency_THz(k_eV_A2, lam, temperature_K, quantum)
    assert result.converged and result.max_frequency_error_THz == 0
    np.testing.assert_allclose(result.supercell_frequencies_THz, expected, rtol=1e-6)
    omega = np.array([expected / THZ_PER_OMEGA])
    variance, _ = mode_variance(omega, temperature_K, quantum)  # ⟨v²⟩ = m⟨u²⟩
    u2 = variance[0] / MASS_AMU
    kT = units.kB * temperature_K
    energy = HBAR_EV_T * omega[0]
    harmonic_free = energy / 2 + kT * np.log(-np.expm1(-energy / kT)) if quantum else kT * np.log(energy / kT)
    per_component = harmonic_free + 0.5 * k_eV_A2 * u2 + 0.75 * lam * u2**2 - 0.5 * MASS_AMU * omega[0] ** 2 * u2
    assert result.free_energy_eV_atom == pytest.approx(3 * per_component, rel=1e-6)


def test_gaussian_averages_of_an_expansion():
    """⟨V⟩ against Monte Carlo; ⟨∂V⟩ and ⟨∂²V⟩ against the exact Gaussian identities
    ∂⟨V⟩/∂mean = ⟨∂V⟩, ∂⟨∂V⟩/∂mean = ⟨∂²V⟩ and ∂⟨V⟩/∂C_ij = ⟨∂²V/∂u_i∂u_j⟩ (i ≠ j, C_ij = C_ji),
    by central differences, on a random 2nd-4th order expansion with repeated dofs in its monomials."""
    from generate.sscha import ForceConstantExpansion, Monomials, merge_monomials

    rng = np.random.default_rng(3)
    model = supercell_model(bulk("Ar", "fcc", a=4.0), (1, 1, 2), SSCHASettings())
    n_dofs = 3 * model.n_atoms
    orders = []
    for order, n_terms in ((2, 10), (3, 15), (4, 20)):
        merged = merge_monomials(rng.integers(0, n_dofs, size=(n_terms, order)), rng.normal(size=n_terms))
        orders.append(Monomials(dofs=merged.dofs, coefficients=merged.coefficients))
    expansion = ForceConstantExpansion(model.atoms, 0.3, orders)
    mean = rng.normal(scale=0.2, size=n_dofs)
    factor = rng.normal(scale=0.3, size=(n_dofs, n_dofs))
    covariance = factor @ factor.T / n_dofs
    energy, gradient, hessian = expansion.gaussian_averages(mean, covariance)
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-12)
    samples = rng.multivariate_normal(mean, covariance, size=200_000)
    energies, _ = expansion.energies_and_forces(samples.reshape(len(samples), -1, 3))
    assert abs(energy - energies.mean()) < 4 * energies.std() / np.sqrt(len(energies))
    h = 1e-5
    for i in range(n_dofs):
        step = np.zeros(n_dofs)
        step[i] = h
        e_plus, g_plus, _ = expansion.gaussian_averages(mean + step, covariance)
        e_minus, g_minus, _ = expansion.gaussian_averages(mean - step, covariance)
        assert (e_plus - e_minus) / (2 * h) == pytest.approx(gradient[i], abs=1e-7 * (1 + abs(gradient[i])))
        np.testing.assert_allclose((g_plus - g_minus) / (2 * h), hessian[:, i], atol=1e-6 * (1 + np.abs(hessian).max()))
    i, j = 1, 4
    bump = np.zeros_like(covariance)
    bump[i, j] = bump[j, i] = h
    d_energy = (expansion.gaussian_averages(mean, covariance + bump)[0] - expansion.gaussian_averages(mean, covariance - bump)[0]) / (2 * h)
    assert d_energy == pytest.approx(hessian[i, j], rel=1e-6)


def test_modes_wanting_to_be_softer_than_the_floor_are_reported_not_converged():
    """With the stabilization floor above the analytic SCHA frequency of a double well, the SCHA
    cannot reach its solution: the run stops unconverged at the floor and its status says so."""
    from dataclasses import replace

    from generate.sscha import run_scha_on_expansion, to_blocks

    k_eV_A2, lam, temperature_K = -1.0, 20.0, 600.0
    atoms = einstein_crystal()
    expected = scha_frequency_THz(k_eV_A2, lam, temperature_K, quantum=True)
    settings = replace(SSCHASettings(temperature_K=temperature_K, **ONSITE), min_frequency_THz=1.5 * expected, max_steps=20)
    model = supercell_model(atoms, SUPERCELL, settings)
    harmonic = to_blocks(k_eV_A2 * np.eye(3 * model.n_atoms))
    result = run_scha_on_expansion(atoms, onsite_expansion(model, k_eV_A2, lam), SUPERCELL, settings, harmonic=(harmonic, 0))
    assert not result.converged
    assert "24 modes held at the stabilization floor" in result.status
    np.testing.assert_allclose(result.supercell_frequencies_THz, 1.5 * expected, rtol=1e-6)


def test_a_surrogate_that_will_be_rejected_is_not_verified_further(quartic_bond_crystal):
    """Above the engine's force-error threshold the verification ensemble is not grown and no correction
    step is taken: the engine discards the result for the direct engine's anyway."""
    from dataclasses import replace as replaced

    from generate.sscha import run_sscha_surrogate_temperatures

    _, _, exact = quartic_bond_crystal
    atoms = bulk("Ar", "fcc", a=FCC["a"])
    settings = SSCHASettings(temperature_K=300.0, n_configurations=400, q_mesh=(2, 2, 2), frequency_error_target_THz=0.02)
    calculator = QuarticBonds(supercell_model(atoms, SUPERCELL, settings).atoms, 1.0, 20.0, cutoff_A=1.1 * FCC["nearest_A"])
    # Fourth order on-site only: the bond quartics are not representable, so verification has work to do.
    inexact = replaced(exact, cutoffs_A=(1.2 * FCC["nearest_A"], 1.2 * FCC["nearest_A"], 0.6 * FCC["nearest_A"]))
    (full,) = run_sscha_surrogate_temperatures(atoms, calculator, SUPERCELL, [settings], inexact)
    assert full.surrogate.verification_relative_force_error > 0.01
    assert full.surrogate.n_verification > inexact.n_verification or full.surrogate.n_corrections > 1
    # A threshold below that error: the give-up path (a zero threshold would do too).
    threshold = full.surrogate.verification_relative_force_error / 2
    (given_up,) = run_sscha_surrogate_temperatures(atoms, calculator, SUPERCELL, [settings], inexact, give_up_above=threshold)
    assert given_up.surrogate.n_verification == inexact.n_verification and given_up.surrogate.n_corrections == 1
    assert given_up.n_potential_evaluations < full.n_potential_evaluations


def test_a_surrogate_scha_leaving_its_fitted_region_is_a_divergence_not_an_answer():
    """A polar crystal (P6mm, centroids free along c) on an expansion whose minimum puts the Ar sublattice
    1 Å up: the centroid relaxation follows it exactly when trusted, and raises ``SurrogateDiverged``
    (the engine's cue for the direct engine) when 1 Å exceeds the displacements the fit has seen."""
    from generate.sscha import (
        ForceConstantExpansion,
        SurrogateDiverged,
        harmonic_monomials,
        run_scha_on_expansion,
        to_blocks,
    )

    k_eV_A2, rise_A = 2.0, 1.0
    atoms = Atoms("NeAr", cell=[[3, 0, 0], [-1.5, 1.5 * np.sqrt(3), 0], [0, 0, 5]], pbc=True,
                  scaled_positions=[[0, 0, 0], [0, 0, 0.4]])
    settings = SSCHASettings(temperature_K=300.0, **ONSITE)
    model = supercell_model(atoms, SUPERCELL, settings)
    minimum = model.atoms.copy()
    minimum.positions[minimum.numbers == 18, 2] += rise_A
    expansion = ForceConstantExpansion(minimum, 0.0, [harmonic_monomials(k_eV_A2 * np.eye(3 * model.n_atoms))])
    harmonic = (to_blocks(k_eV_A2 * np.eye(3 * model.n_atoms)), 0)
    trusted = run_scha_on_expansion(atoms, expansion, SUPERCELL, settings, harmonic=harmonic, model=model)
    assert trusted.converged
    np.testing.assert_allclose(trusted.supercell.positions, minimum.positions, atol=1e-6)
    with pytest.raises(SurrogateDiverged, match=r"moved a centroid 1.00 Å .* \(0.50 Å\)"):
        run_scha_on_expansion(atoms, expansion, SUPERCELL, settings, harmonic=harmonic, model=model, trusted_displacement_A=0.5)


def test_the_surrogate_engine_sends_a_diverged_temperature_to_the_direct_engine(quartic_bond_crystal, monkeypatch):
    """A temperature whose surrogate SCHA diverges is solved by the direct engine and says why; the other
    temperature keeps the surrogate's result."""
    from generate.sscha import SurrogateDiverged, SurrogateEngine, surrogate_run

    _, _, surrogate_settings = quartic_bond_crystal
    solve = surrogate_run.run_scha_on_expansion

    def diverging_when_cold(atoms, expansion, supercell_matrix, settings, **kwargs):
        if settings.temperature_K < 200:
            raise SurrogateDiverged("SCHA on the surrogate diverged (test)")
        return solve(atoms, expansion, supercell_matrix, settings, **kwargs)

    monkeypatch.setattr(surrogate_run, "run_scha_on_expansion", diverging_when_cold)
    atoms = bulk("Ar", "fcc", a=FCC["a"])
    hot = SSCHASettings(temperature_K=300.0, n_configurations=400, q_mesh=(2, 2, 2), frequency_error_target_THz=0.02)
    calculator = QuarticBonds(supercell_model(atoms, SUPERCELL, hot).atoms, 1.0, 20.0, cutoff_A=1.1 * FCC["nearest_A"])
    cold_result, hot_result = SurrogateEngine(surrogate=surrogate_settings).run(
        atoms, calculator, SUPERCELL, [replace(hot, temperature_K=100.0), hot])
    assert hot_result.backend == "surrogate" and "surrogate engine" in hot_result.status
    assert cold_result.backend == "direct" and cold_result.converged
    assert "surrogate fall-back: SCHA on the surrogate diverged (test)" in cold_result.status


def held_z_crystal():
    """Double wells along z, single wells along x and y (V = Σ ½k_c u_c² + ¼λ u_c⁴, k = (2, 2, -1) eV/Å²,
    600 K, a tetragonal cell so that symmetry keeps z apart), and a floor 1.2× the wells' SCHA frequency."""
    k, lam, temperature_K = np.array([2.0, 2.0, -1.0]), 20.0, 600.0
    atoms = Atoms("Ar", cell=np.diag([3.0, 3.0, 3.5]), pbc=True)
    atoms.set_masses([MASS_AMU])
    floor = 1.2 * scha_frequency_THz(k[2], lam, temperature_K, quantum=True)
    return atoms, k, lam, temperature_K, floor


def test_direct_sscha_stops_at_the_constrained_solution_when_modes_are_held_at_the_floor():
    """Double wells along z held at a floor above their SCHA frequency, single wells along x and y free
    (:func:`held_z_crystal`). The free modes must reach the analytic SCHA frequency of their own well (they stalled up to 3 %
    above it, 4.6σ, while the held modes fed the Newton step a softening the floor never allows), and
    the run stops once they are self-consistent, flagged, instead of spending every step."""
    atoms, k, lam, temperature_K, floor = held_z_crystal()
    free_scha = scha_frequency_THz(k[0], lam, temperature_K, quantum=True)
    assert floor < 0.9 * free_scha  # the free modes stay clear of the floor
    settings = SSCHASettings(temperature_K=temperature_K, **dict(ONSITE, frequency_error_target_THz=0.05), min_frequency_THz=floor)
    result = run_sscha(atoms, OnSiteQuartic(onsite_model_reference(atoms), k, lam), SUPERCELL, settings)
    assert not result.converged
    assert result.status.startswith("self-consistent with 8 modes held at the stabilization floor"), result.status
    assert result.history[0].n_stabilized_modes == 8  # the harmonic start is already held (k_z < 0)
    assert len(result.history) < settings.max_steps // 2
    order = np.argsort(result.supercell_frequencies_THz)
    nu, errors = result.supercell_frequencies_THz[order], result.supercell_frequency_errors_THz[order]
    np.testing.assert_allclose(nu[:8], floor, rtol=1e-6)
    assert errors[8:].max() <= settings.frequency_error_target_THz
    np.testing.assert_allclose(nu[8:], free_scha, rtol=0.01)  # as the unconstrained analytic test


def test_direct_sscha_with_held_modes_stops_when_its_free_gradient_stalls(monkeypatch):
    """The crystal above, with a free gradient that only grows (as when modes cross the floor and back):
    the run stops after STALLED_ENSEMBLES fresh ensembles that fail to lower it, not after max_steps,
    and says so."""
    from generate.sscha import direct

    atoms, k, lam, temperature_K, floor = held_z_crystal()
    # ess_threshold 1: every step on a fresh ensemble, as in fcc Hg at 300 K
    settings = SSCHASettings(temperature_K=temperature_K, **ONSITE, min_frequency_THz=floor, ess_threshold=1.0)
    calls, exact = [], direct.free_gradient

    def growing(*args):
        calls.append(1)
        return float(len(calls)), exact(*args)[1]

    monkeypatch.setattr(direct, "free_gradient", growing)
    result = run_sscha(atoms, OnSiteQuartic(onsite_model_reference(atoms), k, lam), SUPERCELL, settings)
    assert not result.converged
    assert result.status.startswith("stalled with 8 modes held at the stabilization floor"), result.status
    assert [step.new_ensemble for step in result.history] == [True] * (1 + direct.STALLED_ENSEMBLES)


def test_direct_sscha_with_held_modes_stops_after_its_ensemble_cap(monkeypatch):
    """The crystal above, with a free gradient that keeps creeping down but never reaches its noise (as SrO2's
    at 100 K: 48 fresh ensembles): the held run stops after MAX_HELD_ENSEMBLES fresh ensembles, a bound, and says so."""
    from generate.sscha import direct

    atoms, k, lam, temperature_K, floor = held_z_crystal()
    settings = SSCHASettings(temperature_K=temperature_K, **ONSITE, min_frequency_THz=floor, ess_threshold=1.0)
    calls, exact = [], direct.free_gradient

    def creeping(*args):
        calls.append(1)
        return 1e3 / len(calls), exact(*args)[1]

    monkeypatch.setattr(direct, "free_gradient", creeping)
    result = run_sscha(atoms, OnSiteQuartic(onsite_model_reference(atoms), k, lam), SUPERCELL, settings)
    assert not result.converged
    assert result.status.startswith("stopped with 8 modes held at the stabilization floor"), result.status
    assert [step.new_ensemble for step in result.history] == [True] * direct.MAX_HELD_ENSEMBLES


def test_a_held_surrogate_result_rejected_for_its_correction_is_kept_as_a_bound(monkeypatch):
    """A surrogate result with modes held at the floor, rejected only because its verified correction did
    not converge, is kept (the direct engine holds the same modes): not converged, that correction in
    every mode's error bar, and the status says so. A failed force check, or ``recompute_held``, still
    sends it to the direct engine."""
    from generate.sscha import SurrogateEngine, engine
    from generate.sscha.result import SurrogateReport

    atoms, k, lam, temperature_K, floor = held_z_crystal()
    settings = SSCHASettings(temperature_K=temperature_K, **dict(ONSITE, frequency_error_target_THz=0.05), min_frequency_THz=floor)
    held = run_sscha(atoms, OnSiteQuartic(onsite_model_reference(atoms), k, lam), SUPERCELL, settings)
    assert held.history[-1].n_stabilized_modes == 8

    def surrogate_result(force_error):
        report = SurrogateReport(10, 1, 5, 5, 5, 0.01, 40, 0.01, force_error, 0.5, 0.02, 0.0, 0.0, 0.01, True, 100,
                                 n_corrections=8, last_correction_THz=0.5)
        return replace(held, backend="surrogate", surrogate=report)

    direct_calls = []
    monkeypatch.setattr(engine, "_direct", lambda *args: direct_calls.append(args) or held)
    for force_error, recompute, to_direct in ((0.1, False, False), (0.1, True, True), (0.9, False, True)):
        monkeypatch.setattr(engine, "run_sscha_surrogate_temperatures", lambda *args, e=force_error, **kwargs: [surrogate_result(e)])
        direct_calls.clear()
        (result,) = SurrogateEngine(recompute_held=recompute).run(atoms, None, SUPERCELL, [settings])
        assert bool(direct_calls) == to_direct, (force_error, recompute)
        if not to_direct:
            assert result.backend == "surrogate" and not result.converged
            assert "8 mode(s) held at the stabilization floor: kept as a bound" in result.status
            assert "verified frequency correction 0.500 THz after 8 step(s)" in result.status
            np.testing.assert_allclose(result.supercell_frequency_errors_THz,
                                       np.hypot(held.supercell_frequency_errors_THz, 0.5))


def test_a_held_solution_is_verified_without_growing_its_ensemble(quartic_bond_crystal, monkeypatch):
    """``held_as_bound``: a surrogate solution with modes held at the floor is verified on the base ensemble
    (no frequency target to grow towards), since the engine keeps it as a bound; unheld ones, or with the
    option off, are verified to the target."""
    from generate.sscha import surrogate_run

    _, _, surrogate_settings = quartic_bond_crystal
    solve, verify = surrogate_run.run_scha_on_expansion, surrogate_run.verify_surrogate
    targets = []

    def held(*args, **kwargs):
        result = solve(*args, **kwargs)
        return replace(result, history=(*result.history[:-1], replace(result.history[-1], n_stabilized_modes=2)))

    def recorded(*args, **kwargs):
        targets.append(args[9])
        return verify(*args, **kwargs)

    monkeypatch.setattr(surrogate_run, "verify_surrogate", recorded)
    atoms = bulk("Ar", "fcc", a=FCC["a"])
    settings = SSCHASettings(temperature_K=300.0, n_configurations=400, q_mesh=(2, 2, 2), frequency_error_target_THz=0.02)
    calculator = QuarticBonds(supercell_model(atoms, SUPERCELL, settings).atoms, 1.0, 20.0, cutoff_A=1.1 * FCC["nearest_A"])
    for solver, as_bound, expected in ((solve, True, 0.02), (held, False, 0.02), (held, True, None)):
        monkeypatch.setattr(surrogate_run, "run_scha_on_expansion", solver)
        targets.clear()
        surrogate_run.run_sscha_surrogate_temperatures(atoms, calculator, SUPERCELL, [settings], surrogate_settings,
                                                       held_as_bound=as_bound)
        assert targets and all(t == expected for t in targets), (as_bound, targets)


def test_free_gradient_leaves_out_only_what_the_floor_holds():
    """Modes at the floor are degenerate: the part of the gradient's block among them that pushes them
    down (its positive eigenvalues, whatever basis) cannot vanish; their couplings to other modes can,
    and so can a direction that wants to leave the floor upwards."""
    from generate.sscha.direct import free_gradient

    model = supercell_model(einstein_crystal(), SUPERCELL, SSCHASettings(**ONSITE))
    floor, n = 0.5, model.basis.shape[1]
    rng = np.random.default_rng(0)
    vectors = model.basis @ np.linalg.qr(rng.normal(size=(n, n)))[0]
    values = np.r_[np.full(8, (floor / THZ_PER_OMEGA) ** 2), np.linspace(2.0, 3.0, n - 8) * (floor / THZ_PER_OMEGA) ** 2]
    dynamical = (vectors * values) @ vectors.T
    a = rng.normal(size=(8, 8))
    held = vectors[:, :8] @ (a @ a.T) @ vectors[:, :8].T  # positive definite among the modes at the floor
    norm, at_floor = free_gradient(model, dynamical, held, floor)
    assert at_floor.sum() == 8 and norm < 1e-6 * np.linalg.norm(held)
    coupling = np.outer(vectors[:, 0], vectors[:, 8])
    coupling += coupling.T
    assert free_gradient(model, dynamical, held + 1e-3 * coupling, floor)[0] == pytest.approx(1e-3 * np.linalg.norm(coupling), rel=1e-3)
    assert free_gradient(model, dynamical, -held, floor)[0] == pytest.approx(np.linalg.norm(held), rel=1e-12)


# phonondb's Bi2Se3 (mp-541837, R-3m, CC BY 4.0): its rhombohedral cell is symmetric to ~1e-8 Å only
BI2SE3_CELL = [[2.065721133333333, 1.1926446533333335, 9.492875183333332],
               [-2.0657211366666663, 1.1926446533333335, 9.492875183333332],
               [3.3333333846577943e-09, -2.385289306666667, 9.492875183333332]]
BI2SE3_POSITIONS = [[0.4003664300000001, 0.40036643000000005, 0.40036642999999994],
                    [0.5996335700000001, 0.5996335700000001, 0.5996335700000001],
                    [0.9999999999999998, 0.9999999900000002, 0.9999999999999999],
                    [0.21100027000000018, 0.21100025999999994, 0.21100026999999996],
                    [0.7889997299999999, 0.7889997400000003, 0.78899973]]


def test_surrogate_cluster_space_is_built_on_an_exactly_symmetric_cell():
    """hiphive's orbit search fails on phonondb's Bi2Se3 as given ("(1, 257) is not in list" with hiphive 1.5, the
    pipeline's cutoffs 1.8/1.8/1.1 × the nearest-neighbour distance); on the cell refined to its own space group
    (atoms moved < 1e-6 Å) it builds, with the same 12 operations."""
    import spglib
    from hiphive import ClusterSpace

    from generate.sscha.surrogate import quiet_hiphive, symmetrized

    atoms = Atoms("Bi2Se3", cell=BI2SE3_CELL, scaled_positions=BI2SE3_POSITIONS, pbc=True)
    distances = atoms.repeat(3).get_all_distances(mic=True)
    nearest = float(distances[distances > 1e-6].min())
    cutoffs = [1.8 * nearest, 1.8 * nearest, 1.1 * nearest]
    with quiet_hiphive():
        with pytest.raises(ValueError, match="is not in list"):
            ClusterSpace(atoms, cutoffs)
        refined = symmetrized(atoms, 1e-5)
        space = ClusterSpace(refined, cutoffs)
    assert np.abs(refined.positions - atoms.positions).max() < 1e-6
    assert space.n_dofs > 0
    cell = lambda a: (a.cell.array, a.get_scaled_positions(), a.numbers)  # noqa: E731
    assert len(spglib.get_symmetry(cell(refined), symprec=1e-5)["rotations"]) == 12
    assert spglib.get_spacegroup(cell(refined), symprec=1e-8) == "R-3m (166)"  # exact now
