"""κ with phono3py: the DFT silicon reference through thermobench's own functions, the harmonic /
renormalized ratio, an unstable harmonic FC2, phono3py failures, FC2 supercell matching, the CLI."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from generate.kappa import (
    KappaSettings,
    build_phono3py,
    compute_kappa,
    harmonic_fc2_from_potential,
    kappa_from_phono3py,
    load_phono3py_dataset,
    pipeline_kappa_columns,
    reorder_fc2,
    supercell_matrix_between,
    supercell_permutation,
    unit_cell,
)

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SI_KAPPA_XX_300K = 109.1  # W/(m·K), reference README: PBEsol, 11x11x11, RTA, no isotopes


@pytest.fixture(autouse=True)
def _quiet_phonopy():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*primitive_matrix.*")
        yield


@pytest.fixture(scope="module")
def si_dft(shared):
    folder = shared / "reference" / "dft-kappa" / "Si-PBEsol"
    if not (folder / "FORCES_FC3").is_file():
        pytest.skip(f"no DFT reference at {folder}")
    return load_phono3py_dataset(folder / "phono3py_disp.yaml", folder / "FORCES_FC3")


def test_dft_silicon_reference(si_dft):
    """phono3py_disp.yaml + FORCES_FC3 (VASP PBEsol) -> κ_xx(300 K) = 109.1 W/(m·K) within 1 %."""
    settings = KappaSettings(temperatures_K=(300.0,), q_mesh=(11, 11, 11), method="rta", isotope=False)
    result = kappa_from_phono3py(si_dft, settings)
    assert result.status == "ok" and result.harmonic.status == "ok"
    kappa = np.array(result.harmonic.kappa_W_mK[0])
    assert kappa[0] == pytest.approx(SI_KAPPA_XX_300K, rel=0.01)
    # Cubic: isotropic, no off-diagonal part.
    assert kappa[:3] == pytest.approx([kappa[0]] * 3, rel=1e-8)
    assert np.abs(kappa[3:]).max() < 1e-6 * kappa[0]
    # The per-mode summary adds up to κ; README: the heat is carried by modes below about 6 THz.
    summary = result.harmonic.contributions
    assert summary.cumulative_kappa_W_mK[0][-1] == pytest.approx(result.harmonic.kappa_average_W_mK[0], rel=1e-10)
    edges = np.array(summary.frequency_bin_edges_THz[1:])
    below_6THz = np.array(summary.cumulative_kappa_W_mK[0])[edges <= 6.2][-1]
    assert below_6THz > 0.8 * kappa[0]
    assert 0.8 < summary.acoustic_fraction[0] <= 1.0
    assert result.kappa_ratio == [None] and "no renormalized FC2" in result.kappa_ratio_null_reason
    json.dumps(result.to_json_dict())  # serialisable


def test_identical_fc2_gives_ratio_one_and_isotopes_lower_kappa(si_dft):
    fc2 = np.array(si_dft.fc2)
    settings = KappaSettings(temperatures_K=(300.0, 600.0), q_mesh=(5, 5, 5), isotope=False)
    result = kappa_from_phono3py(si_dft, settings, fc2_harmonic=fc2, fc2_renormalized=fc2.copy())
    assert result.status == "ok"
    assert result.kappa_ratio == pytest.approx([1.0, 1.0], abs=1e-12)
    harmonic = result.harmonic.kappa_average_W_mK
    assert harmonic[1] < harmonic[0]  # Umklapp scattering grows with T
    with_isotopes = kappa_from_phono3py(si_dft, KappaSettings(temperatures_K=(300.0,), q_mesh=(5, 5, 5), isotope=True))
    assert with_isotopes.harmonic.kappa_average_W_mK[0] < harmonic[0]


def test_unstable_harmonic_fc2_gives_null_with_reason(si_dft):
    """Harmonic FC2 with imaginary modes: κ_harmonic null with the reason; κ from the stable one remains."""
    fc2 = np.array(si_dft.fc2)
    settings = KappaSettings(temperatures_K=(300.0,), q_mesh=(5, 5, 5), isotope=False)
    result = kappa_from_phono3py(si_dft, settings, fc2_harmonic=-fc2, fc2_renormalized=fc2)
    assert result.status == "partial"
    assert result.harmonic.status == "unstable" and result.harmonic.kappa_W_mK is None
    assert "imaginary" in result.harmonic.reason and result.harmonic.n_imaginary_modes > 0
    assert result.renormalized.status == "ok" and result.renormalized.kappa_average_W_mK[0] > 10
    assert result.kappa_ratio == [None] and "κ_harmonic is null" in result.kappa_ratio_null_reason
    # Renormalized FC2 per temperature: an unstable one nulls only its own temperature.
    settings = KappaSettings(temperatures_K=(300.0, 600.0), q_mesh=(5, 5, 5), isotope=False)
    mixed = kappa_from_phono3py(si_dft, settings, fc2_harmonic=fc2, fc2_renormalized={300.0: fc2, 600.0: -fc2})
    assert mixed.renormalized.status == "unstable" and mixed.renormalized.reason.startswith("600 K:")
    assert mixed.renormalized.kappa_average_W_mK[1] is None
    assert mixed.kappa_ratio[0] == pytest.approx(1.0, abs=1e-12) and mixed.kappa_ratio[1] is None


def test_kappa_above_any_crystals_is_null_with_the_reason(si_dft, monkeypatch):
    """A κ above MAX_KAPPA_W_MK (1e5 W/(m·K): soft, unscattered modes, e.g. 4e17 from a floor-held SSCHA FC2) is not
    a label. With the bound lowered below silicon's 109 W/(m·K) the same DFT κ is refused, and the ratio says why."""
    from generate.kappa import transport

    settings = KappaSettings(temperatures_K=(300.0,), q_mesh=(5, 5, 5), isotope=False)
    fc2 = np.array(si_dft.fc2)
    assert kappa_from_phono3py(si_dft, settings, fc2_harmonic=fc2, fc2_renormalized=fc2).status == "ok"
    monkeypatch.setattr(transport, "MAX_KAPPA_W_MK", 50.0)
    result = kappa_from_phono3py(si_dft, settings, fc2_harmonic=fc2, fc2_renormalized=fc2)
    assert result.harmonic.status == "unphysical" and result.harmonic.kappa_average_W_mK is None
    assert "exceeds any crystal's" in result.harmonic.reason
    assert result.kappa_ratio == [None] and "κ_harmonic is null" in result.kappa_ratio_null_reason


def test_phono3py_failure_is_captured(si_dft, monkeypatch):
    from phono3py import Phono3py

    def broken(*args, **kwargs):
        raise RuntimeError("collision integral exploded")

    monkeypatch.setattr(Phono3py, "run_thermal_conductivity", broken)
    result = kappa_from_phono3py(si_dft, KappaSettings(q_mesh=(3, 3, 3)), fc2_renormalized=np.array(si_dft.fc2))
    assert result.status == "failed"
    assert result.harmonic.status == "failed" and "collision integral exploded" in result.harmonic.reason
    assert result.kappa_ratio == [None]


def test_fc3_fit_failure_is_captured():
    """symfc cannot fit FC3 from a single random snapshot of a 32-atom supercell: recorded, not raised."""
    atoms = bulk("Cu", "fcc", a=3.61)
    settings = KappaSettings(
        unit_cell="conventional", fc3_supercell_matrix=(2, 2, 2), fc3_method="random_fit", fc3_n_snapshots=1,
        q_mesh=(3, 3, 3),
    )
    result = compute_kappa(atoms, EMT(), settings)
    assert result.status == "failed" and result.harmonic is None
    assert "FC3" in result.reason and "symfc needs at least" in result.reason


def test_supercell_permutation_recovers_a_shuffled_supercell():
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    atoms = bulk("NaCl", "rocksalt", a=5.64)
    phonon = Phonopy(PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                                  scaled_positions=atoms.get_scaled_positions()), supercell_matrix=np.eye(3) * 2)
    target = phonon.supercell
    n = len(target)
    rng = np.random.default_rng(1)
    fc = rng.normal(size=(n, n, 3, 3))
    order = rng.permutation(n)
    from ase import Atoms

    shuffled = Atoms(np.array(target.symbols)[order], cell=target.cell, scaled_positions=target.scaled_positions[order], pbc=True)
    shuffled.positions += rng.normal(scale=0.02, size=(n, 3))  # SSCHA centroids wander a little
    perm = supercell_permutation(shuffled, target)
    np.testing.assert_array_equal(order[perm], np.arange(n))
    np.testing.assert_array_equal(reorder_fc2(fc[np.ix_(order, order)], perm), fc)


def test_compute_kappa_with_sscha_supercell_fc2_is_matched_and_ratio_one():
    """EMT copper end to end: FC3 by finite displacements in the 2x2x2 conventional cell; the FC2 comes
    in the SSCHA's (phonopy's primitive-cell) supercell order and must be matched to phono3py's."""
    from generate.sscha import SSCHASettings, harmonic_force_constants, supercell_model

    atoms = bulk("Cu", "fcc", a=3.59)
    model = supercell_model(atoms, [2, 2, 2], SSCHASettings())
    fc2, _ = harmonic_force_constants(model, EMT(), SSCHASettings())
    settings = KappaSettings(unit_cell="conventional", fc3_supercell_matrix=(2, 2, 2), fc3_cutoff_A=3.0,
                             q_mesh=(5, 5, 5), temperatures_K=(300.0,))
    given = compute_kappa(atoms, EMT(), settings, fc2_renormalized={300.0: fc2}, fc2_supercell=model.atoms, fc2_harmonic=fc2)
    assert given.status == "ok", given.reason
    assert given.kappa_ratio == pytest.approx([1.0], abs=1e-12)
    assert given.fc3.n_potential_evaluations == given.fc3.n_displacements + 1 == given.n_potential_evaluations
    assert 1 < given.harmonic.kappa_average_W_mK[0] < 1000
    # The matched FC2 is the one phono3py's own displacements give in its phonon supercell.
    from phonopy.harmonic.force_constants import compact_fc_to_full_fc

    unit = unit_cell(atoms, settings)
    ph3 = build_phono3py(unit, settings, supercell_matrix_between(unit, model.atoms))
    own, _ = harmonic_fc2_from_potential(ph3, EMT(), settings)
    own = compact_fc_to_full_fc(ph3.phonon_primitive, own) if own.shape[0] != own.shape[1] else own
    matched = reorder_fc2(fc2, supercell_permutation(model.atoms, ph3.phonon_supercell))
    assert np.abs(matched - own).max() < 1e-6 * np.abs(own).max()
    assert np.abs(fc2 - own).max() > 0.1 * np.abs(own).max()  # the orders really differ
    # ... and κ is computed from exactly the matched FC2. phono3py's own FC2, handed over in the
    # SSCHA's supercell order, must come back bitwise after matching: κ with it equals κ with the own
    # FC2 to round-off (1e-9). Comparing the two FC2 routes' κ instead would measure how phono3py
    # resolves degenerate modes of FC2s that differ at 1e-12, which varies with the BLAS kernel.
    in_sscha_order = reorder_fc2(own, np.argsort(supercell_permutation(model.atoms, ph3.phonon_supercell)))
    np.testing.assert_array_equal(reorder_fc2(in_sscha_order, supercell_permutation(model.atoms, ph3.phonon_supercell)), own)
    check = compute_kappa(atoms, EMT(), settings, fc2_renormalized={300.0: in_sscha_order}, fc2_supercell=model.atoms)
    assert check.status == "ok", check.reason
    assert check.kappa_ratio == pytest.approx([1.0], abs=1e-9)


def test_finite_displacements_and_random_fit_agree_on_emt():
    atoms = bulk("Cu", "fcc", a=3.59)
    common = dict(unit_cell="conventional", fc3_supercell_matrix=(2, 2, 2), fc3_cutoff_A=3.0, q_mesh=(5, 5, 5))
    fd = compute_kappa(atoms, EMT(), KappaSettings(**common))
    fit = compute_kappa(atoms, EMT(), KappaSettings(**common, fc3_method="random_fit", fc3_n_snapshots=8))
    assert fd.status == fit.status == "ok"
    assert fit.fc3.n_potential_evaluations < fd.fc3.n_potential_evaluations
    assert fit.harmonic.kappa_average_W_mK[0] == pytest.approx(fd.harmonic.kappa_average_W_mK[0], rel=0.15)


def test_pipeline_columns_with_sscha_results():
    from generate.sscha import SSCHASettings, run_sscha

    atoms = bulk("Cu", "fcc", a=3.59)
    # 3x3x3 primitive supercell: in 2x2x2 EMT copper's FC2 leaves modes near zero frequency and harmonic κ comes out
    # 1e34 W/(m·K) (refused as unphysical); here κ_harm is ~20 W/(m·K), the size of copper's lattice part.
    results = [
        run_sscha(atoms, EMT(), [3, 3, 3], SSCHASettings(temperature_K=t, n_configurations=100, max_steps=10, seed=0))
        for t in (300.0, 800.0)
    ]
    cfg = {"enabled": True, "q_mesh": [5, 5, 5], "fc3_cutoff_A": 3.0}
    rows = pipeline_kappa_columns(atoms, np.eye(3, dtype=int) * 3, EMT(), None, results, {**cfg, "temperatures_K": [300.0, 800.0]})
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"kappa_harmonic_W_mK", "kappa_renormalized_W_mK", "kappa_ratio", "kappa_null_reason",
                            "kappa_fc3_source", "audit_kappa_harmonic_reference_mesh_W_mK",
                            "audit_kappa_renormalized_reference_mesh_W_mK"}
        assert row["audit_kappa_harmonic_reference_mesh_W_mK"] is None  # no reference mesh asked for
        assert row["kappa_null_reason"] is None and row["kappa_fc3_source"] == "potential, finite displacements"
        assert row["kappa_ratio"] == pytest.approx(row["kappa_renormalized_W_mK"] / row["kappa_harmonic_W_mK"])
        assert 0.2 < row["kappa_ratio"] < 5
    assert rows[1]["kappa_harmonic_W_mK"] < rows[0]["kappa_harmonic_W_mK"]
    # Only the listed temperatures cost a phono3py run; the others say why they are null. Same FC3, same κ.
    only_300 = pipeline_kappa_columns(atoms, np.eye(3, dtype=int) * 3, EMT(), None, results, {**cfg, "temperatures_K": [300.0]})
    assert only_300[0] == pytest.approx(rows[0])
    assert only_300[1]["kappa_ratio"] is None and "kappa.temperatures_K = [300.0]" in only_300[1]["kappa_null_reason"]
    # The audit's reference mesh reuses the Phono3py object and its FC3: its κ is the one a fresh run on that mesh
    # gives (phono3py keeps per-mesh state; a stale interaction would show here), and the rows' κ is unchanged.
    # A length of 14.5 Å is 7 points along each reciprocal vector of fcc Cu (|b| = √3 / 3.59 Å⁻¹): the same mesh.
    audited = pipeline_kappa_columns(atoms, np.eye(3, dtype=int) * 3, EMT(), None, results, {**cfg, "temperatures_K": [300.0]},
                                     reference_q_mesh=[7, 7, 7])
    fresh = pipeline_kappa_columns(atoms, np.eye(3, dtype=int) * 3, EMT(), None, results,
                                   {**cfg, "temperatures_K": [300.0], "q_mesh": 14.5})
    assert audited[0]["kappa_harmonic_W_mK"] == pytest.approx(rows[0]["kappa_harmonic_W_mK"], rel=1e-10)
    assert audited[0]["audit_kappa_harmonic_reference_mesh_W_mK"] == pytest.approx(fresh[0]["kappa_harmonic_W_mK"], rel=1e-10)
    assert audited[0]["audit_kappa_renormalized_reference_mesh_W_mK"] == pytest.approx(fresh[0]["kappa_renormalized_W_mK"],
                                                                                       rel=1e-10)
    assert audited[0]["audit_kappa_harmonic_reference_mesh_W_mK"] != pytest.approx(rows[0]["kappa_harmonic_W_mK"], rel=1e-6)
    assert audited[1]["audit_kappa_harmonic_reference_mesh_W_mK"] is None  # 800 K: no κ at all
    # A distorted crystal (a centroid 0.6 Å off its site, past the 0.3 Å matching tolerance): null κ with the reason
    from dataclasses import replace

    moved = results[0].supercell.copy()
    moved.positions[0] += [0.6, 0.0, 0.0]
    distorted = pipeline_kappa_columns(atoms, np.eye(3, dtype=int) * 3, EMT(), None, [replace(results[0], supercell=moved)],
                                       {**cfg, "temperatures_K": [300.0]})
    assert distorted[0]["kappa_ratio"] is None and "centroids left the cell's sites" in distorted[0]["kappa_null_reason"]


def test_cli_writes_json(tmp_path):
    out = tmp_path / "kappa.json"
    command = [
        sys.executable, "-m", "generate.kappa", "structure=Cu", "potential=emt", "temperatures_K=[300]",
        "renormalize=false", "kappa.fc3_cutoff_A=3.0", "kappa.q_mesh=[4,4,4]", f"out={out}",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["harmonic"]["kappa_average_W_mK"][0] > 1
    assert record["potential"]["name"] == "EMT" and record["settings"]["q_mesh"] == [4, 4, 4]
    assert "κ_harmonic" in done.stdout


def test_cli_rejects_unknown_setting(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "generate.kappa", "potential=emt", "structure=Cu", "relax_structure=false",
         "kappa.q_mseh=[4,4,4]", f"out={tmp_path / 'k.json'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0 and "q_mseh" in done.stderr


@pytest.mark.filterwarnings("ignore:Symmetry of Born")  # the charges are made up: this checks the wiring
def test_born_charges_switch_on_the_non_analytic_correction(shared):
    """Made-up, neutral Born charges (+1, -1) on the two Si sites split LO and TO and change κ."""
    folder = shared / "reference" / "dft-kappa" / "Si-PBEsol"
    if not (folder / "FORCES_FC3").is_file():
        pytest.skip(f"no DFT reference at {folder}")
    settings = KappaSettings(temperatures_K=(300.0,), q_mesh=(5, 5, 5), isotope=False)
    plain = kappa_from_phono3py(load_phono3py_dataset(folder / "phono3py_disp.yaml", folder / "FORCES_FC3"), settings)
    ph3 = load_phono3py_dataset(folder / "phono3py_disp.yaml", folder / "FORCES_FC3")
    ph3.nac_params = {"born": np.array([np.eye(3), -np.eye(3)]), "dielectric": np.eye(3) * 11.7, "factor": 14.399652}
    polar = kappa_from_phono3py(ph3, settings)
    assert not plain.nac and polar.nac and polar.status == "ok"
    assert abs(polar.harmonic.kappa_average_W_mK[0] / plain.harmonic.kappa_average_W_mK[0] - 1) > 1e-3


def test_surrogate_fc3_is_the_expansions_third_derivative():
    """The surrogate's FC3 (its cubic terms, folded) equals phono3py's finite-difference FC3 of the same
    expansion, in any atom order of the expansion's supercell. A diamond cluster space with random parameters
    has the crystal's symmetry, which phono3py's solver assumes; its cubic part alone makes the finite
    differences exact (the force is quadratic in the displacements), so they agree to round-off."""
    from generate.kappa.step import SurrogateFC3
    from generate.sscha import ForceConstantExpansion, Monomials, SSCHASettings, SurrogateSettings, supercell_model
    from generate.sscha.surrogate import surrogate_basis

    atoms = bulk("Si", "diamond", a=5.43)
    model = supercell_model(atoms, [2, 2, 2], SSCHASettings())
    basis = surrogate_basis(atoms, model, SurrogateSettings(cutoffs_A=(3.9, 3.9, 2.4)))
    parameters = np.random.default_rng(3).normal(size=basis.n_parameters)
    cubic = [m for m in basis.monomials(parameters) if m.order == 3]
    assert cubic and len(cubic[0].coefficients) > 0
    expansion = ForceConstantExpansion(model.atoms, 0.0, cubic)

    ph3 = build_phono3py(atoms, KappaSettings(fc3_supercell_matrix=[2, 2, 2]))
    ph3.generate_displacements(distance=0.01)
    perm = supercell_permutation(model.atoms, ph3.supercell)  # phono3py's atom i = the expansion's perm[i]
    forces = []
    for cell in ph3.supercells_with_displacements:
        u = np.zeros((len(perm), 3))
        u[perm] = cell.positions - ph3.supercell.positions
        forces.append(expansion.energies_and_forces(u[None])[1][0][perm])
    ph3.forces = np.array(forces)
    ph3.produce_fc3()
    finite_difference = np.asarray(ph3.fc3)  # compact: the primitive sites (p2s_map) first
    scale = np.abs(finite_difference).max()
    assert scale > 0
    np.testing.assert_allclose(SurrogateFC3(expansion).fc3_for(ph3), finite_difference, atol=1e-9 * scale)

    # The expansion's supercell in another atom order (dofs relabelled alike): the same FC3 in phono3py's order.
    order = np.random.default_rng(4).permutation(len(model.atoms))
    new_index = np.argsort(order)  # old atom a is new atom new_index[a]
    relabelled = [Monomials(dofs=np.sort(3 * new_index[m.dofs // 3] + m.dofs % 3, axis=1), coefficients=m.coefficients)
                  for m in cubic]
    shuffled = ForceConstantExpansion(model.atoms[order], 0.0, relabelled)
    np.testing.assert_allclose(SurrogateFC3(shuffled).fc3_for(ph3), finite_difference, atol=1e-9 * scale)


def test_cutoff_fc3_by_symfc_matches_phono3pys_own_solver():
    """With a pair cutoff that fits in the supercell, FC3 comes from symfc (phono3py's own solver completes the cut
    pairs in an O(N³) Python loop): the same displacements of EMT copper (64 atoms, 4 Å) through both independent
    solvers give κ within 3 %. They differ only beyond the cutoff (symfc drops those triplets); 1.3 % on CsBr
    (128 atoms). Where the cutoff sphere does not fit (27 atoms), phono3py's solver is used."""
    from generate.kappa.force_constants import fc3_from_potential

    settings = KappaSettings(fc3_supercell_matrix=[4, 4, 4], fc3_cutoff_A=4.0, q_mesh=(8, 8, 8), temperatures_K=(300.0,))
    ph3 = build_phono3py(bulk("Cu", "fcc", a=3.59), settings)  # planes 8.3 Å apart: the 4 Å sphere fits
    fc2, _ = harmonic_fc2_from_potential(ph3, EMT(), settings)
    report = fc3_from_potential(ph3, EMT(), settings)
    assert report.solver == "symfc" and report.n_displacements > 0
    by_symfc = kappa_from_phono3py(ph3, settings, fc2_harmonic=fc2).harmonic.kappa_average_W_mK[0]
    ph3.produce_fc3()
    ph3.symmetrize_fc3()
    by_phono3py = kappa_from_phono3py(ph3, settings, fc2_harmonic=fc2).harmonic.kappa_average_W_mK[0]
    assert by_symfc == pytest.approx(by_phono3py, rel=0.03)
    small = build_phono3py(bulk("Cu", "fcc", a=3.59), KappaSettings(fc3_supercell_matrix=[3, 3, 3], fc3_cutoff_A=4.0))
    assert fc3_from_potential(small, EMT(), settings).solver == "phono3py"
