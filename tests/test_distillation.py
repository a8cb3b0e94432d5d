"""The fine-tune's anharmonic guard: thermal supercells of DFT's phonons and Φ-free force combinations."""

from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from generate.harmonic.dft_data import load_phonon_dataset
from generate.harmonic.phonons import to_ase_atoms
from generate.potential.distillation import guard_samples, thermal_displacements

FIXTURES = Path(__file__).parent / "data" / "phonondb"

# SI constants for an independent closed form of the quantum oscillator's variance
HBAR_J_S, KB_J_K, AMU_KG, EV_J = 1.054571817e-34, 1.380649e-23, 1.66053906660e-27, 1.602176634e-19


def test_thermal_displacements_have_the_quantum_oscillator_variance():
    """Φ = k·1 on four atoms: every Cartesian component is an oscillator of ω = √(k/m), whose variance is
    ħ/(2mω)·coth(ħω/2k_BT). 4,000 draws per component, 12 components: the pooled estimate's relative standard
    error is √(2/24,000) ≈ 0.9 % per mass; tolerance 4 %, over 4σ."""
    k_eV_A2, masses, temperature = 3.0, np.array([20.0, 20.0, 60.0, 60.0]), 150.0
    u = thermal_displacements(k_eV_A2 * np.eye(12), masses, temperature, 4000, np.random.default_rng(0))
    assert u.shape == (4000, 4, 3)
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


class OnSitePolynomial(Calculator):
    """Each Cartesian component u of an atom's displacement from ``reference`` feels F = f0 − k u − a u² − b u³
    (energy −f0 u + k u²/2 + a u³/3 + b u⁴/4): Φ = k, Φ3 = 2a, Φ4 = 6b on the diagonal, and a residual force f0."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, reference, k, a, b, f0):
        super().__init__()
        self.reference, self.k, self.a, self.b, self.f0 = reference, k, a, b, f0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        u = self.atoms.positions - self.reference
        self.results["energy"] = float(np.sum(-self.f0 * u + self.k * u**2 / 2 + self.a * u**3 / 3 + self.b * u**4 / 4))
        self.results["forces"] = self.f0 - self.k * u - self.a * u**2 - self.b * u**3


def test_the_combinations_isolate_the_cubic_and_quartic_terms(cu2o):
    """Against the closed form of an on-site polynomial: the cubic combination is −Φ3:uu = −2a u² and the quartic
    one −¼Φ4:uuu = −1.5 b u³, exactly (the polynomial stops at u³, so no higher term remains); the harmonic term k
    and the residual force f0 cancel whatever their size. Float64 round-off on forces of ~k·u: 1e-9 eV/Å."""
    perfect = to_ase_atoms(cu2o.supercell).positions
    k, a, b = 7.0, 3.0, 11.0
    base = OnSitePolynomial(perfect, k, a, b, f0=0.05)
    samples = guard_samples(base, cu2o, "mp-361", 300.0, 2, np.random.default_rng(1))
    assert [s.guard for s in samples] == ["cubic", "quartic"] * 2
    for cubic, quartic in (samples[:2], samples[2:]):
        u = cubic.atoms.positions - perfect
        assert quartic.atoms is cubic.atoms  # one supercell serves both combinations
        assert 0.01 < np.sqrt(np.mean(u**2)) < 0.2  # thermal amplitudes at 300 K, not finite differences
        np.testing.assert_allclose(cubic.forces_eV_A, -2 * a * u**2, atol=1e-9)
        np.testing.assert_allclose(quartic.forces_eV_A, -1.5 * b * u**3, atol=1e-9)
        assert [c for _, c in cubic.terms] == [1.0] and [c for _, c in quartic.terms] == [-1.0, -2.0, 2.0]
        np.testing.assert_allclose(quartic.terms[1][0].positions - perfect, 0.5 * u, atol=1e-12)


def test_the_training_loss_takes_the_same_combinations(cu2o):
    """The loss sees a guard sample's combination of the model's force changes: with a model that returns EMT's
    forces for every supercell in the batch, guard samples labelled by EMT have zero loss and the force
    change of a DFT-style sample is the plain difference; a supercell shared by two samples is one graph."""
    import torch
    from matgl.ext.ase import Atoms2Graph

    from generate.potential.finetune import Sample, _batch, loss_terms

    perfect = to_ase_atoms(cu2o.supercell)
    guards = guard_samples(EMT(), cu2o, "mp-361", 300.0, 1, np.random.default_rng(2))
    moved = perfect.copy()
    moved.positions[0] += 0.01
    emt = {id(s): np.asarray(_emt_forces(s)) for s in [perfect, moved, *(g.atoms for g in guards), *(t for g in guards for t, _ in g.terms)]}
    dft_like = Sample("mp-361", moved, emt[id(moved)] - emt[id(perfect)])
    samples = [dft_like, *guards, Sample("mp-361", perfect, np.zeros((len(perfect), 3)))]
    batch = _batch(samples, Atoms2Graph(element_types=("Cu", "O"), cutoff=5.0), "cpu")
    order = list(dict.fromkeys(id(a) for s in samples for a in (s.atoms, *(t for t, _ in s.terms))))
    assert batch[1].shape[0] == len(order) == 6  # moved, 4 thermal supercells, perfect

    def model(graph, lattice, state):
        forces = torch.as_tensor(np.concatenate([emt[i] for i in order]), dtype=torch.float32)
        return torch.zeros(len(order)), forces

    config = type("Config", (), {"force_weight": 1.0, "equilibrium_weight": 0.0, "energy_weight": 0.0})
    _, force_loss, _ = loss_terms(model, batch, config)
    scale = np.mean([np.mean(g.forces_eV_A**2) for g in guards])
    assert float(force_loss) < 1e-10 * scale  # float32 storage of ~1 eV/Å forces: ~1e-7 relative
    guards[1].forces_eV_A[0, 0] += 1.0  # one wrong label component shows up as its own square over all rows
    _, force_loss, _ = loss_terms(model, _batch(samples, Atoms2Graph(element_types=("Cu", "O"), cutoff=5.0), "cpu"), config)
    assert float(force_loss) == pytest.approx(1.0 / (3 * len(perfect) * len(samples)), rel=1e-4)


def _emt_forces(atoms):
    copy = atoms.copy()
    copy.calc = EMT()
    return copy.get_forces()


def test_dataset_force_constants_take_random_displacement_datasets(cu2o):
    """Some phonondb sets hold random displacements (phonopy's type 2), which phonopy's own solver refuses (a
    fine-tune died on one): they go to symfc. EMT's forces on 0.01 Å single displacements and on 0.01 Å random
    ones of the same Cu2O supercell give the same FC2 up to the cubic terms the random set also carries
    (~u·Φ3/Φ2 ≈ 1 %); 5 % of the largest element allowed."""
    from phonopy import Phonopy

    from generate.potential.distillation import dataset_force_constants

    def emt_forces(phonon):
        return np.array([_emt_forces(to_ase_atoms(c)) for c in phonon.supercells_with_displacements])

    def fresh():
        return Phonopy(cu2o.unitcell, supercell_matrix=cu2o.supercell_matrix, primitive_matrix=cu2o.primitive_matrix, log_level=0)

    single, random = fresh(), fresh()
    single.generate_displacements(distance=0.01)
    random.generate_displacements(distance=0.01, number_of_snapshots=8, random_seed=0)
    assert "displacements" in random.dataset  # type 2
    reference = dataset_force_constants(single, emt_forces(single))
    fitted = dataset_force_constants(random, emt_forces(random))
    assert np.abs(fitted - reference).max() < 0.05 * np.abs(reference).max()
