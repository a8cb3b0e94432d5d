"""Dataset schema, splits, assembly checks, the built-in crystal set and the embedded thermobench-mini."""

import json
import math

import pytest

from generate.dataset.assemble import NULL_REASONS, InvalidRecordError, validate_rows
from thermobench.dataset import (
    COLUMNS,
    CONFIGS,
    EMBEDDED,
    OOD_TEST_FAMILIES,
    SCHEMAS,
    SPLITS,
    features,
    load_dataset,
    resolve_dataset,
    schema_version_of,
    split_of,
)
from thermobench.families import BUILTIN_MATERIALS, FAMILIES, builtin_materials, elements_of

MINI = EMBEDDED["thermobench-mini"]
REQUIRED = [
    "material_id", "name", "formula", "family", "spacegroup_number", "spacegroup_symbol", "lattice_vectors",
    "cartesian_site_positions", "species_at_sites", "nsites", "elements", "chemical_formula_reduced",
    "supercell_matrix", "temperature_K", "harmonic_frequencies_THz", "renormalized_frequencies_THz",
    "n_imaginary_harmonic", "harmonic_min_frequency_THz", "free_energy_harmonic_eV_atom", "free_energy_sscha_eV_atom",
    "sigma_A", "mean_relative_frequency_shift", "max_relative_frequency_shift", "kappa_harmonic_W_mK",
    "kappa_renormalized_W_mK", "kappa_ratio", "kappa_null_reason", "sscha_converged", "frequency_error_THz",
    "free_energy_error_eV_atom", "n_potential_evaluations", "potential", "potential_sha256", "thermobench_version",
    "package_versions", "seed", "settings_fingerprint", "dataset_version",
]


def test_schema_holds_the_promised_columns():
    names = [c.name for c in COLUMNS]
    assert len(names) == len(set(names))
    assert set(REQUIRED) <= set(names)
    assert list(features()) == names
    for target, reason in NULL_REASONS.items():
        assert {c.name: c for c in COLUMNS}[target].nullable and reason in names


def test_splits_are_deterministic_and_grouped():
    ids = [(m.material_id, m.family) for m in BUILTIN_MATERIALS]
    for config in CONFIGS:
        labels = [split_of(i, f, config) for i, f in ids]
        assert labels == [split_of(i, f, config) for i, f in ids]
        assert set(labels) == set(SPLITS)
    for material_id, family in ids:
        in_test = split_of(material_id, family, "ood") == "test"
        assert in_test == (family in OOD_TEST_FAMILIES)
    random_test = sum(split_of(i, f, "random") == "test" for i, f in ids) / len(ids)
    assert 0.03 < random_test < 0.2
    with pytest.raises(ValueError, match="unknown split configuration"):
        split_of("x", "fcc", "scaffold")


def test_builtin_crystals_are_many_real_and_covered_by_the_default_potential():
    from ase.data import chemical_symbols

    assert len(BUILTIN_MATERIALS) >= 100 and len(FAMILIES) >= 15
    assert len({m.material_id for m in BUILTIN_MATERIALS}) == len(BUILTIN_MATERIALS)
    # element_types of M3GNet-MP-2021.2.8 (H..Pu without the noble-gas-free gaps it lacks)
    m3gnet = set(chemical_symbols[1:95]) - {"Po", "At", "Rn", "Fr", "Ra"}
    assert elements_of(BUILTIN_MATERIALS) <= m3gnet
    first_round = builtin_materials()[: len(FAMILIES)]
    assert {m.family for m in first_round} == set(FAMILIES)  # round-robin: a short run covers every family
    with pytest.raises(KeyError, match="unknown structure famil"):
        builtin_materials(families=["quasicrystal"])


@pytest.mark.parametrize("material_id,spacegroup,nsites", [
    ("rocksalt-NaCl", 225, 2), ("wurtzite-GaN", 186, 4), ("rutile-TiO2", 136, 6), ("perovskite-cubic-SrTiO3", 221, 5),
    ("perovskite-tetragonal-PbTiO3", 99, 5), ("double-perovskite-vacancy-ordered-Cs2SnI6", 225, 9),
    ("antifluorite-Li2O", 225, 3), ("half-heusler-TiNiSn", 216, 3), ("A15-Nb3Sn", 223, 8),
])
def test_builtin_prototypes_have_the_right_symmetry(material_id, spacegroup, nsites):
    import spglib

    (material,) = builtin_materials(ids=[material_id])
    atoms = material.atoms()
    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    assert spglib.get_symmetry_dataset(cell, symprec=1e-3).number == spacegroup
    assert len(atoms) == nsites


def _row():
    """A row with every column present and valid, for the validation tests."""
    row = {}
    for c in COLUMNS:
        row[c.name] = {"string": "x", "int32": 1, "int64": 1, "float64": 1.0, "bool": True}.get(c.dtype, [])
    row["harmonic_reference"] = "potential"
    return row


def test_validation_rejects_nan_and_unexplained_nulls():
    validate_rows([_row()])
    bad = _row()
    bad["sigma_A"] = math.nan
    with pytest.raises(InvalidRecordError, match="sigma_A holds non-finite"):
        validate_rows([bad])
    bad = _row()
    bad["renormalized_frequencies_THz"] = [1.0, math.inf]
    with pytest.raises(InvalidRecordError, match="non-finite"):
        validate_rows([bad])
    bad = _row()
    bad["kappa_ratio"], bad["kappa_null_reason"] = None, None
    with pytest.raises(InvalidRecordError, match="kappa_ratio is null without a reason"):
        validate_rows([bad])
    bad = _row()
    bad["sigma_A"] = None
    with pytest.raises(InvalidRecordError, match="not nullable"):
        validate_rows([bad])
    bad = _row()
    del bad["formula"]
    with pytest.raises(InvalidRecordError, match="missing columns"):
        validate_rows([bad])
    bad = _row()
    bad["harmonic_reference"] = "dft"  # at DFT's geometry: no relaxation to report
    with pytest.raises(InvalidRecordError, match="relax_converged is True with harmonic_reference 'dft'"):
        validate_rows([bad])
    for name in ("relax_converged", "relax_max_force_eV_A", "relax_symmetry_kept"):
        bad[name] = None
    validate_rows([bad])
    bad["harmonic_reference"] = "DFT"
    with pytest.raises(InvalidRecordError, match="harmonic_reference"):
        validate_rows([bad])


def test_resolve_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no README.md"):
        resolve_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="not an embedded dataset"):
        resolve_dataset("no-such-dataset")
    assert resolve_dataset("owner/name") == "owner/name"  # a Hub id is passed through
    with pytest.raises(ValueError, match="unknown configuration"):
        load_dataset("thermobench-mini", name="scaffold")


@pytest.mark.skipif(not (MINI / "README.md").is_file(), reason="thermobench-mini not assembled in this checkout")
@pytest.mark.parametrize("config", CONFIGS)
def test_embedded_dataset_loads_with_declared_features_and_clean_splits(config):
    loaded = load_dataset("thermobench-mini", name=config)
    owner = {}
    for split, dataset in loaded.items():
        assert split in SPLITS
        assert schema_version_of(MINI) == "1.0"  # 0.1's rows keep the schema they were made with
        assert dataset.features == features("1.0")
        for row in dataset:
            assert owner.setdefault(row["material_id"], split) == split, f"{row['material_id']} in two splits"
            for column in SCHEMAS["1.0"]:
                value = row[column.name]
                if value is None:
                    assert column.nullable, column.name
                elif isinstance(value, float):
                    assert math.isfinite(value), column.name
            for target, reason in NULL_REASONS.items():
                if target in row:  # the reasons of the schema the dataset was made with
                    assert row[target] is not None or row[reason], f"{target} null without reason"
            assert json.loads(row["settings_json"])["potential"] == row["potential"]
            assert len(row["renormalized_frequencies_THz"]) == 3 * row["n_supercell_atoms"]
    if config == "ood" and "test" in loaded:
        assert set(loaded["test"]["family"]) <= set(OOD_TEST_FAMILIES)
    card = (MINI / "README.md").read_text()
    assert card.startswith("---\n") and "configs:" in card and "python -m generate" in card


RELEASE = EMBEDDED["thermobench-0.2"]


@pytest.mark.skipif(not (RELEASE / "README.md").is_file(), reason="thermobench-0.2 not assembled in this checkout")
@pytest.mark.parametrize("config", CONFIGS)
def test_release_0_2_schema_splits_null_reasons_and_dft_columns(config):
    import numpy as np

    from generate.harmonic.phonons import mesh_frequency_mae
    from thermobench import phonondb
    from thermobench.dataset import SCHEMAS, ood_holdout

    loaded = load_dataset("thermobench-0.2", name=config)
    version = schema_version_of(RELEASE)  # an older schema until the anchored run is assembled (issue 29)
    columns = SCHEMAS[version]
    holdout = ood_holdout("0.2")
    owner = {}
    for split, dataset in loaded.items():
        assert dataset.features == features(version) and list(dataset.column_names) == [c.name for c in columns]
        for row in dataset:
            assert owner.setdefault(row["material_id"], split) == split, f"{row['material_id']} in two splits"
            for column in columns:
                value = row[column.name]
                assert value is not None or column.nullable, column.name
                assert not isinstance(value, float) or math.isfinite(value), column.name
            for target, reason in NULL_REASONS.items():
                assert row[target] is not None or row[reason], f"{target} null without reason"
            anchored = row.get("harmonic_reference") == "dft"
            if config == "ood":
                assert (split == "test") == holdout.holds_out(row["family"], row["elements"]), row["material_id"]
            # Ground truth beside the label: recomputed from the row's own DFT and potential frequencies.
            if row["source"] == "phonondb":
                assert row["phonondb_split"] == phonondb.split_of(row["source_id"])
                dft, harmonic = np.array(row["dft_mesh_frequencies_THz"]), np.array(row["harmonic_mesh_frequencies_THz"])
                assert dft.shape == harmonic.shape
                if anchored:  # the harmonic part is DFT's; with Born charges, LO modes split off the short-range ones
                    assert row["potential_dft_mae_THz"] == row["potential_dft_mae_dft_geometry_THz"] >= 0
                    assert row["volume_change_vs_source"] == 0 and row["relax_converged"] is None
                    if not row["nac_applied"]:
                        np.testing.assert_allclose(harmonic, dft, atol=1e-3)  # ASR symmetrization only
                else:
                    mae = mesh_frequency_mae(dft, harmonic, row["mesh_weights"])
                    assert row["potential_dft_mae_THz"] == pytest.approx(mae, rel=1e-9)
                    assert row["potential_dft_mae_dft_geometry_THz"] >= 0  # both geometries measured (generate.harmonic.fidelity)
                assert row["dft_dynamically_stable"] == bool(dft.min() >= -row["imaginary_tolerance_THz"])
            # Targets: convergence means every frequency within target and no floor; floor rows say so.
            if row["sscha_converged"]:
                assert row["frequency_error_THz"] <= row["frequency_error_target_THz"] * (1 + 1e-9)
            assert row["at_stabilization_floor"] == (row["n_stabilized_modes"] > 0)
            if row["at_stabilization_floor"]:
                assert not row["sscha_converged"] and "stabilization floor" in row["sscha_status"]
            # Mode pairing permutes each q-point's renormalized spectrum; it never invents a frequency.
            matched = np.sort(np.array(row["renormalized_commensurate_frequencies_matched_THz"]), axis=1)
            np.testing.assert_allclose(matched, np.array(row["renormalized_commensurate_frequencies_THz"]), atol=1e-5)
            assert 0 < row["min_mode_overlap"] <= 1 + 1e-9
            assert row["sigma_A_error"] is None or row["sigma_A_error"] >= 0
    card = (RELEASE / "README.md").read_text()
    assert "Label fidelity" in card and "figures/targets_by_family_and_element.png" in card
    assert (RELEASE / "figures" / "targets_by_family_and_element.png").is_file()


def test_card_counts_the_anchored_rows_from_their_own_columns():
    from generate.dataset.card import anchored_fidelity

    rows = []
    for k, (stable, shift, floor, audit) in enumerate([(True, 0.05, False, 0.02), (True, -0.01, True, None),
                                                       (False, 0.03, False, None)]):
        row = _row()
        row.update(material_id=f"m{k}", harmonic_reference="dft", temperature_K=300.0, phonondb_split="test",
                   potential_dft_mae_THz=0.5 + k, potential_residual_max_force_eV_A=0.01, potential_residual_pressure_GPa=1.0,
                   dft_dynamically_stable=stable, potential_dynamically_stable=True, n_imaginary_renormalized=0,
                   at_stabilization_floor=floor, mean_relative_frequency_shift=shift,
                   audit_max_frequency_difference_THz=audit, audit_frequency_difference_error_THz=audit and 0.01,
                   audit_sigma_A_difference=audit and 0.001)
        if audit:  # κ 10 / ratio 1.2 with the rows' FC3, 20 / 1.5 with the other one; 8 / 1.25 on the reference mesh
            row.update(kappa_harmonic_W_mK=10.0, kappa_ratio=1.2, audit_kappa_harmonic_other_fc3_W_mK=20.0,
                       audit_kappa_renormalized_other_fc3_W_mK=30.0, audit_kappa_other_fc3_source="surrogate expansion, cubic terms",
                       audit_kappa_harmonic_reference_mesh_W_mK=8.0, audit_kappa_renormalized_reference_mesh_W_mK=10.0)
        else:
            row.update(audit_kappa_harmonic_reference_mesh_W_mK=None, audit_kappa_renormalized_reference_mesh_W_mK=None)
        rows.append(row)
    text = anchored_fidelity(rows, rows)
    assert "3 materials are anchored" in text and "| test | 3 | 1.500 | 1.500 |" in text
    assert "DFT stable but the potential not 0, the potential stable but DFT not 1" in text
    assert "the SSCHA keeps 1 of the 2 DFT-stable crystals stable" in text  # the floor row is not stable
    assert "100% of 2 rows harden" in text  # the floor row's shift is a bound, left out
    assert "Audit (1 materials, 1 rows)" in text and "at most 0.020 THz" in text
    assert "(surrogate expansion, cubic terms) on 1 audited rows" in text and "geometric mean 0.50" in text
    assert "κ ratio 0.800" in text
    assert "1 audited rows: |Δκ_harm| median 25.0%, largest 25.0%; |Δ(κ ratio)| median 4.0%" in text
