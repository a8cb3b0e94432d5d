"""The 0.2 targets against references: σᴬ (quantum SSCHA and classical ensembles) against the analytic
value of a quartic Einstein crystal, its jackknife error, mode pairing by eigenvector overlap, the
stabilization-floor flag, and the structure families of database crystals."""

from types import SimpleNamespace

import numpy as np
import pytest
from ase import units
from test_sscha import MASS_AMU, ONSITE, SUPERCELL, OnSiteQuartic, einstein_crystal, onsite_model_reference

from generate.harmonic.modes import frequency_shifts, matched_frequencies, pair_modes
from generate.run.records import n_at_floor
from generate.sscha import HBAR_EV_T, THZ_PER_OMEGA, SSCHASettings, run_sscha
from generate.sscha.classical import classical_sigma_A
from thermobench.prototypes import balanced_order, primitive_atoms, structure_family

K, LAMBDA = 2.0, 20.0


def analytic_sigma_A(variance_A2: float, displacement_A: float) -> float:
    """σᴬ of V = ½k u² + ¼λ u⁴ per component over a centred Gaussian of variance s².

    f = -(k u + λ u³); f_harm = -(k + λ d²) u (phonopy's central difference of step d); Gaussian
    moments <u²> = s², <u⁴> = 3 s⁴, <u⁶> = 15 s⁶ give both averages in closed form.
    """
    s2, d2 = variance_A2, displacement_A**2
    anharmonic = LAMBDA**2 * (15 * s2**3 - 6 * d2 * s2**2 + d2**2 * s2)
    total = K**2 * s2 + 6 * K * LAMBDA * s2**2 + 15 * LAMBDA**2 * s2**3
    return float(np.sqrt(anharmonic / total))


@pytest.mark.parametrize("temperature_K", [100.0, 600.0])
def test_sigma_A_of_quantum_and_classical_ensembles_match_the_analytic_value(temperature_K):
    atoms = einstein_crystal()
    calculator = OnSiteQuartic(onsite_model_reference(atoms), K, LAMBDA)
    settings = SSCHASettings(temperature_K=temperature_K, **dict(ONSITE, frequency_error_target_THz=0.05))
    result = run_sscha(atoms, calculator, SUPERCELL, settings)
    omega = np.mean(result.supercell_frequencies_THz) / THZ_PER_OMEGA  # one SCHA frequency (Einstein crystal)
    kT = units.kB * temperature_K
    quantum_s2 = HBAR_EV_T / (2 * MASS_AMU * omega) / np.tanh(HBAR_EV_T * omega / (2 * kT))
    classical_s2 = kT / (MASS_AMU * omega**2)
    d = settings.displacement_A

    # Both σᴬ estimates are unbiased up to O(1/n); 4 jackknife errors bound a correct one with ~1e-4 failure odds.
    assert result.sigma_A_error > 0
    assert abs(result.sigma_A - analytic_sigma_A(quantum_s2, d)) < 4 * result.sigma_A_error
    sigma, error = classical_sigma_A(atoms, SUPERCELL, calculator, result, settings, n_configurations=200)
    assert error > 0
    assert abs(sigma - analytic_sigma_A(classical_s2, d)) < 4 * error
    if temperature_K == 100.0:  # ħω ≈ 5 kT: zero-point motion makes the quantum ensemble visibly wider
        assert analytic_sigma_A(quantum_s2, d) - analytic_sigma_A(classical_s2, d) > 8 * max(error, result.sigma_A_error)


class FixedDynamicalMatrix:
    """Stands in for a phonopy object: the same dynamical matrix at every q."""

    def __init__(self, matrix):
        self.dynamical_matrix = SimpleNamespace(run=lambda q: None, dynamical_matrix=np.asarray(matrix, complex))


def test_modes_are_paired_by_eigenvector_not_by_rank():
    rng = np.random.default_rng(0)
    vectors, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    harmonic = FixedDynamicalMatrix(vectors @ np.diag(np.array([1.0, 2.0, 3.0]) ** 2) @ vectors.T)
    # The softest mode hardens past both others; the other two soften slightly.
    renormalized = FixedDynamicalMatrix(vectors @ np.diag(np.array([3.5, 1.9, 2.9]) ** 2) @ vectors.T)
    nu_h, partner, overlap = matched_frequencies(harmonic, renormalized, [[0, 0, 0]])
    scale = nu_h[0, 0]  # phonopy's unit factor (the fake matrix holds ν² = 1, 4, 9), the same for both
    np.testing.assert_allclose(partner[0] / scale, [3.5, 1.9, 2.9], rtol=1e-10)
    np.testing.assert_allclose(overlap, 1.0, atol=1e-12)
    mean, largest, n, _ = frequency_shifts(nu_h, partner, 0, 0.0)
    assert n == 3 and mean == pytest.approx((2.5 - 0.05 - 0.1 / 3) / 3) and largest == pytest.approx(2.5)
    rank_mean = np.mean((np.sort(partner[0]) - nu_h[0]) / nu_h[0])
    assert abs(rank_mean - mean) > 0.3  # rank pairing would report a different number


def test_pairing_inside_a_degenerate_subspace_is_basis_independent():
    nu = np.array([1.0, 2.0, 2.0])
    e_h = np.eye(3)
    angle = 0.7  # another basis of the degenerate pair
    e_r = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    partner, overlap = pair_modes(nu, e_h, nu * 1.1, e_r)
    np.testing.assert_allclose(partner, nu * 1.1)
    np.testing.assert_allclose(overlap, 1.0, atol=1e-12)


def test_rows_at_the_stabilization_floor_are_counted():
    step = SimpleNamespace(n_stabilized_modes=0)
    free = SimpleNamespace(supercell_frequencies_THz=np.array([0.0, 0.0, 0.0, 0.7, 1.3]), history=[step])
    held = SimpleNamespace(supercell_frequencies_THz=np.array([0.0, 0.0, 0.0, 0.5, 0.5, 1.3]), history=[step])
    assert n_at_floor(free, 0.5) == 0
    assert n_at_floor(held, 0.5) == 2
    assert n_at_floor(SimpleNamespace(supercell_frequencies_THz=np.array([1.0]), history=[SimpleNamespace(n_stabilized_modes=3)]), 0.5) == 3


@pytest.mark.parametrize(
    "formula, spacegroup, n_conventional, family",
    [
        ("NaCl", 225, 8, "rocksalt"),
        ("ZnS", 216, 8, "zincblende"),
        ("GaN", 186, 4, "wurtzite"),
        ("CsCl", 221, 2, "CsCl-type"),
        ("CaF2", 225, 12, "fluorite & antifluorite"),
        ("Li2O", 225, 12, "fluorite & antifluorite"),
        ("TiO2", 136, 6, "rutile"),
        ("SrTiO3", 221, 5, "perovskite-cubic"),
        ("CsPbBr3", 221, 5, "perovskite-cubic"),
        ("CaTiO3", 62, 20, "perovskite-distorted"),
        ("Cs2AgBiBr6", 225, 40, "double perovskite (elpasolite)"),
        ("K2PtCl6", 225, 36, "vacancy-ordered double perovskite"),
        ("Bi2Te3", 166, 15, "layered (Bi2Te3-type)"),
        ("MoS2", 194, 6, "layered (CdI2/MoS2-type)"),
        ("TiNiSn", 216, 12, "half-heusler"),
        ("Cu2MnAl", 225, 16, "full-heusler"),
        ("CuInSe2", 122, 16, "chalcopyrite"),
        ("Na", 229, 2, "alkali & alkaline-earth metals"),
        ("Si", 227, 8, "elemental nonmetals"),
        ("Al2O3", 167, 30, "other oxides"),
        ("PbTe", 225, 8, "rocksalt"),
    ],
)
def test_structure_families_of_known_compounds(formula, spacegroup, n_conventional, family):
    assert structure_family(formula, spacegroup, primitive_atoms(n_conventional, spacegroup)) == family


def test_builtins_added_to_a_phonondb_run_carry_its_structure_families():
    """The alkali and alkaline-earth metals phonondb lacks come from the built-ins, labelled as
    phonondb's crystals are (from their own symmetry, not the built-in family name)."""
    from generate.run.sources import builtin_source

    ids = ["bcc-Li", "fcc-Ca", "hcp-Mg", "rocksalt-NaCl", "wurtzite-ZnO", "zincblende-GaAs"]
    families = {m.material_id: m.family for m in builtin_source(ids=ids, structure_families=True)}
    assert families == {"bcc-Li": "alkali & alkaline-earth metals", "fcc-Ca": "alkali & alkaline-earth metals",
                        "hcp-Mg": "alkali & alkaline-earth metals", "rocksalt-NaCl": "rocksalt",
                        "wurtzite-ZnO": "wurtzite", "zincblende-GaAs": "zincblende"}
    assert {m.family for m in builtin_source(ids=ids)} == {"bcc", "fcc", "hcp", "rocksalt", "wurtzite", "zincblende"}


def test_balanced_order_interleaves_families_smallest_cells_first():
    from thermobench.phonondb import read_index

    entries = read_index()
    ordered = balanced_order(entries, max_primitive_atoms=10, per_family=5)
    family = [structure_family(e.formula, e.spacegroup_number, primitive_atoms(e.n_unitcell, e.spacegroup_number)) for e in ordered]
    n_families = len(set(family))
    assert n_families >= 20
    assert len(set(family[:n_families])) == n_families  # the first round has one of each
    assert max(family.count(f) for f in set(family)) <= 5
    assert not any(set(e.elements) <= {"He", "Ne", "Ar", "Kr", "Xe", "H", "N", "O", "F", "Cl", "Br", "I"} for e in ordered)
    sizes = {}
    for e, f in zip(ordered, family, strict=True):  # within a family, cells never shrink along the order
        n = primitive_atoms(e.n_unitcell, e.spacegroup_number)
        assert n >= sizes.get(f, 0)
        sizes[f] = n


def test_floor_is_raised_when_an_ensemble_overlaps_atoms():
    from generate.run.records import RAISED_FLOORS_THZ, sscha_with_floor
    from thermobench.potentials import OverlappingAtomsError

    class SoftModeEngine:
        """Overlaps atoms below a 1 THz floor, as a soft-mode perovskite's 0.5 THz floor does."""

        def __init__(self):
            self.floors = []

        def run(self, cell, model, matrix, settings, harmonic=None):
            self.floors.append(settings[0].min_frequency_THz)
            if settings[0].min_frequency_THz < 1.0:
                raise OverlappingAtomsError("structure 3: atoms 8 (Ti) and 20 (O) are 0.361 A apart, closer than 0.5 A")
            return [f"result at {s.temperature_K} K" for s in settings]

    engine = SoftModeEngine()
    per_temperature = [SSCHASettings(temperature_K=t) for t in (100.0, 300.0)]
    results, floor, note = sscha_with_floor(engine, None, None, None, per_temperature, None)
    assert engine.floors == [0.5, 1.0] and floor == 1.0 == RAISED_FLOORS_THZ[0]
    assert results == ["result at 100.0 K", "result at 300.0 K"]
    assert "raised from 0.5 to 1.0 THz" in note and "Ti" in note
    assert sscha_with_floor(SoftModeEngine(), None, None, None, [SSCHASettings(min_frequency_THz=1.0)], None)[2] is None

    class AlwaysOverlapping(SoftModeEngine):
        def run(self, cell, model, matrix, settings, harmonic=None):
            raise OverlappingAtomsError("atoms 1 and 2 are 0.1 A apart")

    with pytest.raises(OverlappingAtomsError):  # the material fails with the reason once every floor was tried
        sscha_with_floor(AlwaysOverlapping(), None, None, None, per_temperature, None)


def test_floor_starts_below_the_softest_real_harmonic_mode():
    """On-site wells (an Ar supercell, 2×2×2): z modes at ν_z, x and y at 3 THz. A real mode softer than the 0.5 THz
    floor (layered CaI2's 0.33 THz) lowers the floor to half of it, so it is not held from the start; never below
    0.1 THz; an imaginary mode does not lower it (that is what the floor is for), nor does a stiff crystal."""
    from ase import Atoms

    from generate.run.records import sscha_with_floor
    from generate.sscha.supercell import THZ_PER_OMEGA

    class Recording:
        def __init__(self):
            self.floors = []

        def run(self, cell, model, matrix, settings, harmonic=None):
            self.floors.append(settings[0].min_frequency_THz)
            return ["result"]

    mass = 40.0
    atoms = Atoms("Ar", cell=np.diag([3.0, 3.0, 3.5]), pbc=True)
    atoms.set_masses([mass])
    settings = [SSCHASettings(acoustic_sum_rule=False, q_mesh=(2, 2, 2), min_frequency_THz=0.5)]

    def wells(nu_z):
        k = mass * (np.array([3.0, 3.0, abs(nu_z)]) / THZ_PER_OMEGA) ** 2 * np.array([1, 1, np.sign(nu_z)])
        fc = np.zeros((8, 8, 3, 3))
        fc[np.arange(8), np.arange(8)] = np.diag(k)
        return fc, 0

    for nu_z, expected in ((0.33, 0.165), (0.15, 0.1), (-0.33, 0.5), (2.0, 0.5)):
        engine = Recording()
        _, used, note = sscha_with_floor(engine, atoms, None, (2, 2, 2), settings, wells(nu_z))
        assert engine.floors == [pytest.approx(expected, rel=1e-6)] and used == engine.floors[0], nu_z
        assert (note is not None) == (expected < 0.5) and (note is None or "lowered from 0.5" in note)
