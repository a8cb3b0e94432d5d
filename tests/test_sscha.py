"""SSCHA against analytic references: a harmonic crystal, quartic and double-well Einstein crystals."""

import json
from dataclasses import replace
import subprocess
import sys

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
ONSITE = dict(acoustic_sum_rule=False, n_configurations=400, q_mesh=(2, 2, 2))


@pytest.mark.parametrize("quantum", [True, False])
@pytest.mark.parametrize("temperature_K", [100.0, 600.0])
def test_quartic_einstein_crystal_matches_analytic_scha(quantum, temperature_K):
    k, lam = 2.0, 20.0
    atoms = einstein_crystal()
    calculator = OnSiteQuartic(onsite_model_reference(atoms), k, lam)
    settings = SSCHASettings(temperature_K=temperature_K, quantum=quantum, frequency_error_target_THz=0.05, **ONSITE)
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
    settings = SSCHASettings(n_configurations=200, q_mesh=(2, 2, 2))
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
    from generate.harmonic import HarmonicSettings, harmonic_phonons
    from generate.sscha import main
    from thermobench.potentials import load_calculator
    from thermobench.structures import load_structure

    out = tmp_path / "nacl.json"
    argv = ["--structure", "NaCl", "--supercell", "1", "1", "1", "--temperature", "300", "--no-relax", "--seed", "3"]
    main(argv + ["--out", str(out), "--set", "sscha.n_configurations=100", "sscha.q_mesh=[4,4,4]"])
    record = json.loads(out.read_text())
    for key in ("temperature_K", "free_energy_eV_atom", "free_energy_error_eV_atom", "sigma_A", "wall_time_s", "history"):
        assert key in record
    assert record["temperature_K"] == 300.0 and record["seed"] == 3 and isinstance(record["converged"], bool)
    assert record["n_potential_evaluations"] == record["history"][-1]["n_potential_evaluations"] >= 100
    frequencies = np.array(record["supercell_frequencies_THz"])
    assert frequencies.shape == (6,) and (np.diff(frequencies) >= 0).all()
    np.testing.assert_allclose(frequencies[:3], 0.0, atol=1e-6)  # translations
    assert frequencies[3] > 3.0 and 0.0 < record["sigma_A"] < 1.0
    harmonic = harmonic_phonons(
        load_structure("NaCl"), load_calculator(), HarmonicSettings(supercell_matrix=(1, 1, 1), q_mesh=(2, 2, 2), band_points=3)
    )
    np.testing.assert_allclose(
        record["harmonic_supercell_frequencies_THz"], np.sort(harmonic.commensurate_frequencies_THz.ravel()), atol=1e-3
    )
