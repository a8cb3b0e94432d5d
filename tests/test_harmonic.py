"""Harmonic phonons: analytic properties with EMT, DFT reproduction, a real potential against DFT."""

import shutil

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from generate.harmonic.phonons import (
    HarmonicSettings,
    harmonic_phonons,
    phonon_properties,
    supercell_matrix_for_min_length,
)
from generate.harmonic.relax import RelaxSettings
from generate.harmonic.validate_phonons import (
    DatasetError,
    compare,
    load_dft_dataset,
    potential_phonons_on_dft_geometry,
    validate,
    validate_dataset,
)
from thermobench.potentials import ThermobenchCalculator, load_potential

SMALL = HarmonicSettings(q_mesh=(6, 6, 6), band_points=11)


@pytest.fixture(scope="module")
def copper():
    return harmonic_phonons(bulk("Cu", "fcc", a=3.6), EMT(), SMALL)


def test_acoustic_sum_rule_and_zero_gamma_acoustic_modes(copper):
    fc = copper.phonon.force_constants
    assert np.abs(fc.sum(axis=1)).max() < 1e-10  # translating the crystal costs no force
    gamma = np.flatnonzero(np.all(np.isclose(copper.commensurate_qpoints, 0), axis=1))[0]
    assert np.abs(copper.commensurate_frequencies_THz[gamma]).max() < 1e-4
    assert copper.is_stable and copper.n_imaginary_modes == 0


def test_copper_heat_capacity_is_the_bose_einstein_mode_sum_and_dulong_petit(copper):
    from ase import units

    temperature = 1000.0
    weights = np.repeat(copper.mesh_weights, copper.mesh_frequencies_THz.shape[1])
    frequencies = copper.mesh_frequencies_THz.ravel()
    translations = frequencies < 1e-3  # the three Gamma acoustic modes carry no heat capacity
    x = units._hplanck * frequencies[~translations] * 1e12 / (units._k * temperature)
    mode_sum = (weights[~translations] * x**2 * np.exp(x) / np.expm1(x) ** 2).sum() / copper.mesh_weights.sum()
    heat_capacity = copper.thermodynamics.at(temperature)["heat_capacity_kB_atom"]
    assert heat_capacity == pytest.approx(mode_sum, rel=1e-5)  # phonopy and ASE constants differ at 1e-6
    # Classical limit 3 k_B, less the 1/216 of modes at Gamma and the quantum correction <x^2>/12 (~0.5 %).
    assert heat_capacity == pytest.approx(3.0, rel=0.015)


def test_supercell_from_minimum_length():
    cubic = bulk("Po", "sc", a=4.0)
    np.testing.assert_array_equal(supercell_matrix_for_min_length(cubic, 10.0), np.diag([3, 3, 3]))
    fcc = bulk("Cu", "fcc", a=3.6)  # primitive plane spacing a/sqrt(3) = 2.078 A
    np.testing.assert_array_equal(supercell_matrix_for_min_length(fcc, 10.0), np.diag([5, 5, 5]))


def test_dft_path_reproduces_phonopys_own_frequencies(shared):
    import phonopy

    directory = shared / "reference" / "dft-phonons" / "NaCl"
    ours = phonon_properties(load_dft_dataset(directory), SMALL, 0)
    theirs = phonopy.load(
        directory / "phonopy_disp.yaml", force_sets_filename=directory / "FORCE_SETS", born_filename=directory / "BORN"
    )
    theirs.run_mesh(SMALL.q_mesh, is_gamma_center=True)
    # Same data, same symmetrization; only the order of floating-point sums differs (FC to 1e-14).
    # Zero-frequency modes are sqrt(eigenvalue round-off): sqrt(1e-15) * w_max ~ 3e-7 THz for w_max ~ 8 THz.
    np.testing.assert_allclose(ours.mesh_frequencies_THz, theirs.get_mesh_dict()["frequencies"], rtol=1e-9, atol=1e-6)


@pytest.fixture(scope="module")
def m3gnet(shared):
    return load_potential("M3GNet-MP-2021.2.8-PES")


def test_m3gnet_nacl_phonons_against_dft(shared, m3gnet):
    reference = load_dft_dataset(shared / "reference" / "dft-phonons" / "NaCl")
    dft = phonon_properties(reference, SMALL, 0)
    ours = potential_phonons_on_dft_geometry(reference, m3gnet, SMALL)
    comparison = compare(dft, ours)
    # Measured 0.23 THz (about 5 % of the 4.5 THz band width); the unpatched matgl 4 is far off.
    assert comparison.frequency_mae_THz < 0.35
    assert comparison.stability_agrees and comparison.reference_stable


def test_hessian_and_finite_displacement_force_constants_agree(m3gnet):
    nacl = bulk("NaCl", "rocksalt", a=5.6914)
    settings = dict(supercell_matrix=(2, 2, 2), q_mesh=(4, 4, 4), band_points=5)
    finite = harmonic_phonons(nacl, m3gnet, HarmonicSettings(**settings))
    analytic = harmonic_phonons(nacl, m3gnet, HarmonicSettings(fc_method="hessian", **settings))
    # 0.01 A displacements leave a cubic-anharmonicity error of order 1e-3 THz.
    np.testing.assert_allclose(finite.commensurate_frequencies_THz, analytic.commensurate_frequencies_THz, atol=5e-3)
    assert analytic.n_potential_evaluations == 1 and finite.n_potential_evaluations == 2


def test_broken_datasets_are_reported_by_name_and_skipped(shared, tmp_path, m3gnet):
    source = shared / "reference" / "dft-phonons" / "NaCl"
    shutil.copytree(source, tmp_path / "NaCl")
    (tmp_path / "no-forces").mkdir()
    shutil.copy(source / "phonopy_disp.yaml", tmp_path / "no-forces")
    (tmp_path / "wrong-count").mkdir()
    shutil.copy(source / "phonopy_disp.yaml", tmp_path / "wrong-count")
    lines = (source / "FORCE_SETS").read_text().splitlines()
    (tmp_path / "wrong-count" / "FORCE_SETS").write_text("\n".join(["63", *lines[1:]]) + "\n")

    with pytest.raises(DatasetError, match="no-forces: missing FORCE_SETS"):
        load_dft_dataset(tmp_path / "no-forces")
    report = validate(str(shared / "models" / "M3GNet-MP-2021.2.8-PES"), tmp_path, tmp_path / "out", SMALL, RelaxSettings(), "test")
    status = {r["material"]: r["status"] for r in report["materials"]}
    assert status["NaCl"] == "ok"
    assert status["no-forces"] == "skipped: no-forces: missing FORCE_SETS"
    assert "63 atoms" in status["wrong-count"] and "has 64" in status["wrong-count"]
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "NaCl.png").is_file()


def test_unconverged_relaxation_is_reported_not_used(shared, m3gnet):
    record = validate_dataset(
        shared / "reference" / "dft-phonons" / "NaCl",
        m3gnet,
        ThermobenchCalculator(m3gnet, stress_unit="eV/A3"),
        SMALL,
        RelaxSettings(max_steps=1),
        plot_dir=None,
        label="M3GNet",
    )
    assert record["relaxation"]["converged"] is False
    assert record["relaxed_geometry"] is None and "did not converge" in record["status"]
    assert record["dft_geometry"]["frequency_mae_THz"] > 0


def test_validate_phonons_writes_outside_the_committed_results_by_default(shared, tmp_path, monkeypatch):
    from generate.harmonic.validate_phonons import run_command
    from generate.run.config import compose

    datasets = tmp_path / "datasets"
    (datasets / "empty").mkdir(parents=True)
    (datasets / "empty" / "phonopy_disp.yaml").write_text("not: a phonopy file\n")
    monkeypatch.chdir(tmp_path)
    run_command(compose("validate_phonons", [f"potential.name={shared / 'models' / 'M3GNet-MP-2021.2.8-PES'}",
                                             f"datasets={datasets}"]))
    report = tmp_path / "outputs" / "validate_phonons" / "M3GNet-MP-2021.2.8-PES" / "report.json"
    assert report.is_file() and "skipped" in report.read_text()


def test_mesh_mean_frequency_change_is_signed_and_weighted():
    """A spectrum scaled by s changes by s - 1 whatever the weights; the q-weights decide how much each
    q-point's bands count (here a softened q-point of weight 3 against an unchanged one of weight 1)."""
    import numpy as np

    from generate.harmonic.phonons import mesh_mean_frequency_change

    reference = np.array([[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]])
    assert mesh_mean_frequency_change(reference, 0.8 * reference, [1, 7]) == pytest.approx(-0.2, rel=1e-12)
    softened = reference.copy()
    softened[1] = [-1.0, 3.0, 5.0]  # an imaginary mode counts as negative: the mean drops by 2/3 THz
    assert mesh_mean_frequency_change(reference, softened, [1, 3]) == pytest.approx((3 * -2 / 3) / (1 * 2 + 3 * 3), rel=1e-12)
