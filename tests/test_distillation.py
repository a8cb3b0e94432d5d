"""The fine-tune's anharmonic guard: thermal supercells of DFT's phonons, labelled by the anchored base potential."""

from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

from generate.harmonic.dft_data import displaced_forces, load_phonon_dataset
from generate.potential import distillation
from generate.potential.distillation import anchored_thermal_samples, dataset_force_constants, thermal_displacements
from generate.sscha.supercell import evaluate

FIXTURES = Path(__file__).parent / "data" / "phonondb"

# SI constants for an independent closed form of the quantum oscillator's variance
HBAR_J_S, KB_J_K, AMU_KG, EV_J = 1.054571817e-34, 1.380649e-23, 1.66053906660e-27, 1.602176634e-19


def test_thermal_displacements_have_the_quantum_oscillator_variance():
    """Φ = k·1 on four atoms: every Cartesian component is an oscillator of ω = √(k/m), whose variance is
    ħ/(2mω)·coth(ħω/2k_BT). 2,000 ± pairs per component, 12 components: the pooled estimate's relative standard
    error is √(2/24,000) ≈ 0.9 %; tolerance 4 %, over 4σ. The pairs are exact negatives of each other."""
    k_eV_A2, masses, temperature = 3.0, np.array([20.0, 20.0, 60.0, 60.0]), 150.0
    u = thermal_displacements(k_eV_A2 * np.eye(12), masses, temperature, 2000, np.random.default_rng(0))
    assert u.shape == (4000, 4, 3)
    np.testing.assert_array_equal(u[:2000], -u[2000:])
    for atoms, mass in ((slice(0, 2), 20.0), (slice(2, 4), 60.0)):
        omega = np.sqrt(k_eV_A2 * EV_J * 1e20 / (mass * AMU_KG))
        x = HBAR_J_S * omega / (KB_J_K * temperature)
        expected_A2 = HBAR_J_S / (2 * mass * AMU_KG * omega) / np.tanh(x / 2) * 1e20
        assert np.mean(u[:, atoms] ** 2) == pytest.approx(expected_A2, rel=0.04)


def test_a_crystal_unstable_in_dft_gets_no_thermal_supercells():
    fc = np.diag([3.0] * 11 + [-1.0])  # one imaginary mode
    assert thermal_displacements(fc, np.full(4, 20.0), 300.0, 2, np.random.default_rng(0)) is None


@pytest.fixture(scope="module")
def cu2o():
    (archive,) = FIXTURES.glob("*cu2o*")
    return load_phonon_dataset(archive)


def test_anchored_labels_are_dfts_harmonic_forces_plus_the_potentials_anharmonicity(cu2o, monkeypatch):
    """phonondb's Cu2O with EMT as the base. (1) On DFT's own displaced supercells (0.01 Å) the labels are DFT's
    forces: the anchored curvature is DFT's, and EMT's, several times off, cancels. (2) On thermal supercells the
    even part of a ± pair, F(u) + F(−u) (cubic and higher even terms), is EMT's to round-off: the anharmonicity is
    the base potential's."""
    cells, dft_forces = displaced_forces(cu2o)
    perfect_positions = cu2o.supercell.positions
    dataset_u = np.array([c.positions - perfect_positions for c in cells])
    monkeypatch.setattr(distillation, "thermal_displacements", lambda *args: dataset_u)
    _, labels = anchored_thermal_samples(EMT(), cu2o, 300.0, 1, np.random.default_rng(0))
    scale = np.sqrt(np.mean(dft_forces**2))
    emt_minus_dft = dataset_force_constants(cu2o, evaluate(EMT(), [c for c in map(_atoms, cells)])[1]
                                            - evaluate(EMT(), [_atoms(cu2o.supercell)])[1][0]) \
        - dataset_force_constants(cu2o, dft_forces)
    assert np.abs(emt_minus_dft).max() > 1.0  # EMT's curvature is eV/Å² away from DFT's
    # The FC2 fit reproduces its own data up to phonopy's symmetrization (0.4 % of the rms force here; 2 % allowed)
    assert np.sqrt(np.mean((labels - dft_forces) ** 2)) < 0.02 * scale

    monkeypatch.undo()
    structures, labels = anchored_thermal_samples(EMT(), cu2o, 300.0, 2, np.random.default_rng(1))
    _, forces = evaluate(EMT(), [_atoms(cu2o.supercell)] + structures)
    even_labels = labels[:2] + labels[2:]
    even_emt = forces[1:3] + forces[3:5] - 2 * forces[0]
    np.testing.assert_allclose(even_labels, even_emt, atol=1e-9)
    u = np.array([s.positions - perfect_positions for s in structures])
    assert 0.01 < np.sqrt(np.mean(u**2)) < 0.2  # thermal amplitudes at 300 K, not finite differences


def _atoms(cell):
    from generate.harmonic.phonons import to_ase_atoms

    return to_ase_atoms(cell)
