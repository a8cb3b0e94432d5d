"""The thermobench dataset: column schema (``datasets.Features``), material-grouped splits, loading.

One row per (material, temperature). Every column is declared once in :data:`COLUMNS` with its
type, unit and meaning; :data:`FEATURES` and the dataset card are built from that list, so the code,
the Parquet files and the documentation cannot drift apart.

Conventions:
- ``lattice_vectors`` rows are the three lattice vectors (Å), OPTIMADE style;
  ``cartesian_site_positions`` are Cartesian (Å) in the same frame.
- Frequencies in THz; negative numbers stand for imaginary frequencies (iν is stored as -ν).
- Energies per atom; entropy and heat capacity in units of k_B per atom.
- Nullable floats are null (never NaN), and each group of nullable targets has a ``*_null_reason``
  column saying why.

``datasets``/``pyarrow`` are imported inside functions so ``import thermobench`` stays light.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = "2.2"
DATA_DIR = Path(__file__).resolve().parent / "data"
EMBEDDED = {"thermobench-mini": DATA_DIR / "thermobench-mini", "thermobench-0.2": DATA_DIR / "thermobench-0.2"}
CONFIGS = ("random", "ood")
SPLITS = ("train", "validation", "test")
DATA_ENV = "THERMOBENCH_DATA"  # extra folders searched for a dataset by name (os.pathsep-separated)


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # "string", "int32", "int64", "float64", "bool", "list[float64]", "list2[float64]", ...
    unit: str  # "" when dimensionless or not a quantity
    description: str
    nullable: bool = False


COLUMNS: tuple[Column, ...] = (
    # identity
    Column("material_id", "string", "", "stable id, `<family>-<formula>` for built-in crystals, `file-<name>` or the MP id otherwise"),
    Column("name", "string", "", "usual name of the compound"),
    Column("formula", "string", "", "formula as usually written (e.g. SrTiO3)"),
    Column("family", "string", "", "structure family (prototype), e.g. rocksalt, zincblende, perovskite-cubic"),
    Column("source", "string", "", "where the structure came from: builtin, file or materials-project"),
    Column("source_id", "string", "", "id in the source (file path, Materials Project id), null for built-ins", True),
    Column("chemistry", "string", "", "coarse chemistry label, anion first (oxides, halides, ...; thermobench.phonondb.chemical_family)"),
    Column("phonondb_split", "string", "", "fixed phonondb split of this crystal (train/validation/test); the shipped fine-tune trained on train and chose its checkpoint on validation, so potential_dft_mae_THz is out-of-sample on test rows; null outside phonondb", True),
    Column("spacegroup_number", "int32", "", "space group of the relaxed structure (spglib, tolerance `symprec`)"),
    Column("spacegroup_symbol", "string", "", "Hermann-Mauguin symbol of the relaxed structure"),
    Column("structure_hash", "string", "", "sha256 of species and lattice/positions rounded to 1e-3 Å: a structure fingerprint"),
    # OPTIMADE structure
    Column("lattice_vectors", "list2[float64]", "Å", "3x3, rows are the lattice vectors of the relaxed cell"),
    Column("cartesian_site_positions", "list2[float64]", "Å", "n x 3 Cartesian positions of the relaxed cell"),
    Column("species_at_sites", "list[string]", "", "chemical symbol of each site"),
    Column("nsites", "int32", "", "number of sites in the cell"),
    Column("elements", "list[string]", "", "sorted chemical elements"),
    Column("chemical_formula_reduced", "string", "", "OPTIMADE reduced formula (elements alphabetical)"),
    # cell and temperature
    Column("supercell_matrix", "list2[int32]", "", "3x3 integer matrix: supercell = matrix @ cell (phonopy convention)"),
    Column("n_supercell_atoms", "int32", "", "atoms in the supercell used for FC2 and SSCHA"),
    Column("temperature_K", "float64", "K", "temperature of the SSCHA"),
    Column("quantum", "bool", "", "Bose-Einstein (true) or classical (false) statistics"),
    Column("static_energy_eV_atom", "float64", "eV/atom", "potential energy of the relaxed structure"),
    Column("volume_change_vs_source", "float64", "", "volume per atom of the potential-relaxed cell over the source's (DFT-relaxed for phonondb) minus 1; every phonon of the row is at the potential's own geometry"),
    # phonons at commensurate q (supercell)
    Column("harmonic_frequencies_THz", "list[float64]", "THz", "all 3N supercell modes (commensurate q), harmonic, sorted; negative = imaginary"),
    Column("renormalized_frequencies_THz", "list[float64]", "THz", "all 3N supercell modes, SSCHA renormalized at temperature_K, sorted"),
    Column("renormalized_frequency_errors_THz", "list[float64]", "THz", "stochastic error of each renormalized frequency (same order)"),
    Column("commensurate_qpoints", "list2[float64]", "reduced", "q-points commensurate with the supercell, primitive reciprocal basis"),
    Column("harmonic_commensurate_frequencies_THz", "list2[float64]", "THz", "n_q x n_bands harmonic frequencies at commensurate_qpoints"),
    Column("renormalized_commensurate_frequencies_THz", "list2[float64]", "THz", "n_q x n_bands SSCHA frequencies at commensurate_qpoints"),
    Column("renormalized_commensurate_frequencies_matched_THz", "list2[float64]", "THz", "n_q x n_bands: the SSCHA frequency of the mode paired with harmonic band b at q by eigenvector overlap (same order as harmonic_commensurate_frequencies_THz)"),
    Column("min_mode_overlap", "float64", "", "smallest overlap |<e_harm|e_SSCHA>|² (summed over degenerate subspaces) among the paired modes: near 1, the renormalization keeps the modes' character"),
    # q-mesh and DOS
    Column("q_mesh", "list[int32]", "", "Γ-centred q-mesh of the primitive cell (Fourier-interpolated force constants)"),
    Column("mesh_qpoints", "list2[float64]", "reduced", "irreducible q-points of q_mesh"),
    Column("mesh_weights", "list[int32]", "", "multiplicity of each irreducible q-point"),
    Column("harmonic_mesh_frequencies_THz", "list2[float64]", "THz", "n_q x n_bands harmonic frequencies on the mesh"),
    Column("renormalized_mesh_frequencies_THz", "list2[float64]", "THz", "n_q x n_bands SSCHA frequencies on the mesh"),
    Column("dos_frequencies_THz", "list[float64]", "THz", "frequency grid of the DOS columns"),
    Column("harmonic_dos_states_per_THz", "list[float64]", "1/THz", "harmonic phonon DOS per primitive cell (Gaussian smearing dos_sigma_THz), integrates to 3 nsites"),
    Column("dft_mesh_frequencies_THz", "list2[float64]", "THz", "n_q x n_bands DFT (phonondb, PBEsol) harmonic frequencies of the same crystal at mesh_qpoints, at DFT's geometry, no NAC", True),
    Column("potential_dft_mae_THz", "float64", "THz", "label fidelity: mesh-weighted MAE of the potential's harmonic frequencies (its own geometry) against dft_mesh_frequencies_THz, every band", True),
    Column("potential_dft_mae_dft_geometry_THz", "float64", "THz", "the same MAE with the potential's force constants at DFT's geometry and displacements (residual forces subtracted): its force-constant error without its lattice error (generate.harmonic.fidelity)", True),
    Column("dft_min_frequency_THz", "float64", "THz", "lowest DFT harmonic frequency on the mesh", True),
    Column("dft_dynamically_stable", "bool", "", "DFT harmonic phonons have no mode below -imaginary_tolerance_THz on the mesh", True),
    Column("dft_null_reason", "string", "", "why the DFT columns are null (a source without DFT phonons)", True),
    Column("renormalized_dos_states_per_THz", "list[float64]", "1/THz", "renormalized phonon DOS, same grid and normalization"),
    Column("dos_sigma_THz", "float64", "THz", "Gaussian smearing width of the DOS"),
    # imaginary modes
    Column("imaginary_tolerance_THz", "float64", "THz", "frequencies below minus this count as imaginary"),
    Column("n_imaginary_harmonic", "int32", "", "harmonic supercell modes (commensurate q) below -imaginary_tolerance_THz"),
    Column("n_imaginary_harmonic_mesh", "int32", "", "harmonic modes on the full q_mesh (weighted) below -imaginary_tolerance_THz"),
    Column("harmonic_min_frequency_THz", "float64", "THz", "lowest harmonic frequency over commensurate q and the mesh"),
    Column("n_imaginary_renormalized", "int32", "", "renormalized supercell modes below -imaginary_tolerance_THz"),
    Column("renormalized_min_frequency_THz", "float64", "THz", "lowest renormalized frequency over commensurate q and the mesh"),
    Column("potential_dynamically_stable", "bool", "", "the potential's own harmonic phonons, at the row's geometry, have no imaginary mode at commensurate q or on the mesh"),
    # the harmonic reference (generate.harmonic.reference, generate.harmonic.anchoring)
    Column("harmonic_reference", "string", "", "where the harmonic part of the row comes from: 'dft' (phonondb's FC2 at DFT's geometry, the SSCHA on the potential anchored to it: V = V_pot − ½uᵀΦ_pot u + ½uᵀΦ_DFT u, the potential's residual force removed) or 'potential' (the potential's own FC2 at its relaxed geometry)"),
    Column("nac_applied", "bool", "", "DFT Born charges and dielectric tensor applied to the mesh frequencies, DOS, thermodynamics of the mesh and κ (phonondb's BORN)"),
    Column("potential_residual_max_force_eV_A", "float64", "eV/Å", "label fidelity: the potential's largest force at the row's geometry (DFT's for harmonic_reference dft, where it measures how far the potential's equilibrium is)"),
    Column("potential_residual_pressure_GPa", "float64", "GPa", "label fidelity: the potential's pressure at the row's geometry (positive: it wants to expand)"),
    # thermodynamics, supercell modes
    Column("free_energy_harmonic_eV_atom", "float64", "eV/atom", "static energy + harmonic vibrational free energy of the supercell modes; null if harmonic imaginary modes", True),
    Column("entropy_harmonic_kB_atom", "float64", "k_B/atom", "harmonic vibrational entropy of the supercell modes", True),
    Column("heat_capacity_harmonic_kB_atom", "float64", "k_B/atom", "harmonic isochoric heat capacity of the supercell modes", True),
    Column("harmonic_thermo_null_reason", "string", "", "why the harmonic thermodynamics are null", True),
    Column("free_energy_sscha_eV_atom", "float64", "eV/atom", "SSCHA free energy F = F_harm(Φ) + <V - V_harm>, includes the static energy"),
    Column("entropy_sscha_kB_atom", "float64", "k_B/atom", "harmonic-oscillator entropy of the renormalized supercell modes"),
    Column("heat_capacity_sscha_kB_atom", "float64", "k_B/atom", "harmonic-oscillator heat capacity of the renormalized supercell modes"),
    Column("anharmonic_free_energy_eV_atom", "float64", "eV/atom", "free_energy_sscha - free_energy_harmonic", True),
    # targets
    Column("sigma_A", "float64", "", "Knoop anharmonicity score σᴬ = sqrt(Σ(f - f_harm)²/Σf²) over the final (quantum) SSCHA ensemble (Knoop et al. PRM 4, 083809, 2020)"),
    Column("sigma_A_error", "float64", "", "stochastic error of sigma_A (jackknife over antithetic pairs)", True),
    Column("sigma_A_classical", "float64", "", "σᴬ over a classical Gaussian ensemble at temperature_K (variances k_B T/ω² of the SSCHA Φ): comparable with molecular-dynamics σᴬ"),
    Column("sigma_A_classical_error", "float64", "", "stochastic error of sigma_A_classical (jackknife)", True),
    Column("mean_relative_frequency_shift", "float64", "", "mean over qualifying modes of (ν_SSCHA - ν_harm)/ν_harm, modes paired by eigenvector overlap at each commensurate q; positive = hardening", True),
    Column("max_relative_frequency_shift", "float64", "", "largest |ν_SSCHA - ν_harm|/ν_harm over the same modes", True),
    Column("n_shift_modes", "int32", "", "number of modes entering the shift targets"),
    Column("shift_min_frequency_THz", "float64", "THz", "modes with harmonic frequency below this are excluded from the shift targets"),
    Column("shift_null_reason", "string", "", "why the shift targets are null (harmonic imaginary modes, no qualifying mode)", True),
    Column("kappa_harmonic_W_mK", "float64", "W/(m K)", "lattice thermal conductivity (trace/3) from harmonic FC2", True),
    Column("kappa_renormalized_W_mK", "float64", "W/(m K)", "lattice thermal conductivity (trace/3) from the renormalized FC2", True),
    Column("kappa_ratio", "float64", "", "kappa_renormalized / kappa_harmonic", True),
    Column("kappa_null_reason", "string", "", "why the κ columns are null (not computed, unstable, failed)", True),
    Column("kappa_fc3_source", "string", "", "where the FC3 of both κ came from: the potential (finite displacements or a symfc random fit) or the SSCHA's surrogate expansion (its compressive-sensing fit, no potential evaluations); null where κ was not computed", True),
    # diagnostics
    Column("sscha_converged", "bool", "", "SSCHA gradient at the noise level on an independent ensemble, every frequency within frequency_error_target_THz, and no mode at the stabilization floor"),
    Column("sscha_status", "string", "", "SSCHA status text; names the engine (direct, or surrogate with its verified errors) and any fall-back"),
    Column("sscha_steps", "int32", "", "SSCHA steps taken"),
    Column("sscha_n_configurations", "int32", "", "configurations in the final ensemble"),
    Column("frequency_error_THz", "float64", "THz", "largest stochastic error of a renormalized frequency"),
    Column("frequency_error_target_THz", "float64", "THz", "the error every renormalized frequency had to reach", True),
    Column("n_stabilized_modes", "int32", "", "modes held at the SSCHA's stabilization floor (the SCHA wanted them softer)"),
    Column("at_stabilization_floor", "bool", "", "n_stabilized_modes > 0: frequencies and targets of the row are bounds, not converged values; sscha_status explains"),
    Column("free_energy_error_eV_atom", "float64", "eV/atom", "stochastic error of free_energy_sscha"),
    Column("n_potential_evaluations", "int32", "", "supercell evaluations for this temperature (SSCHA ensembles), harmonic ones not included"),
    Column("n_harmonic_evaluations", "int32", "", "displaced supercells evaluated for the harmonic FC2 (shared by all temperatures)"),
    Column("relax_converged", "bool", "", "relaxation reached fmax; null when harmonic_reference is dft (DFT's geometry, not relaxed)", True),
    Column("relax_max_force_eV_A", "float64", "eV/Å", "largest residual force after relaxation; null when harmonic_reference is dft", True),
    Column("relax_symmetry_kept", "bool", "", "space group unchanged by relaxation; null when harmonic_reference is dft", True),
    Column("audit_max_frequency_difference_THz", "float64", "THz", "audit sample (every audit.every-th material by id hash): largest difference between this row's sorted supercell frequencies and those of the direct engine run to audit.frequency_error_target_THz on the same potential; null outside the sample and where the row holds modes at the stabilization floor (a bound: nothing to audit)", True),
    Column("audit_frequency_difference_error_THz", "float64", "THz", "stochastic error of that difference (both runs' errors combined, at the mode of the largest difference); null outside the audit sample", True),
    Column("audit_sigma_A_difference", "float64", "", "σᴬ of this row minus the audit's direct run's; null outside the audit sample", True),
    Column("audit_kappa_harmonic_other_fc3_W_mK", "float64", "W/(m·K)", "audit sample: κ_harm again with the other FC3 (the SSCHA surrogate's cubic terms where kappa_fc3_source is the potential's finite displacements, and the reverse); null elsewhere", True),
    Column("audit_kappa_renormalized_other_fc3_W_mK", "float64", "W/(m·K)", "audit sample: κ_ren with that other FC3; null elsewhere", True),
    Column("audit_kappa_other_fc3_source", "string", "", "audit sample: where that other FC3 came from (as kappa_fc3_source); null elsewhere", True),
    Column("audit_kappa_harmonic_reference_mesh_W_mK", "float64", "W/(m·K)", "audit sample: κ_harm again on audit.kappa_q_mesh (same FC2 and FC3) where kappa.q_mesh differs from it; null elsewhere", True),
    Column("audit_kappa_renormalized_reference_mesh_W_mK", "float64", "W/(m·K)", "audit sample: κ_ren on that reference mesh; null elsewhere", True),
    Column("verified_relative_force_error", "float64", "", "the surrogate's force error (rmse / rms) against the potential on a fresh verification ensemble of the final auxiliary system; null when the row came from the direct engine (every force from the potential)", True),
    Column("sscha_wall_time_s", "float64", "s", "wall time of the SSCHA at this temperature"),
    Column("material_wall_time_s", "float64", "s", "wall time of the whole material (all temperatures)"),
    # provenance
    Column("potential", "string", "", "interatomic potential name"),
    Column("potential_sha256", "string", "", "sha256 of the potential checkpoint files"),
    Column("thermobench_version", "string", "", "thermobench version that made the record"),
    Column("package_versions", "string", "", "JSON object of package versions (ase, phonopy, matgl, torch, spglib, numpy)"),
    Column("seed", "int64", "", "random seed of the SSCHA ensembles"),
    Column("settings_fingerprint", "string", "", "sha256 of every setting that changes the numbers"),
    Column("settings_json", "string", "", "the settings themselves, JSON"),
    Column("schema_version", "string", "", "version of this column schema"),
    Column("dataset_version", "string", "", "dataset release"),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
ADDED_IN_2_0 = (
    "chemistry", "phonondb_split", "volume_change_vs_source", "renormalized_commensurate_frequencies_matched_THz",
    "min_mode_overlap", "dft_mesh_frequencies_THz", "potential_dft_mae_THz", "potential_dft_mae_dft_geometry_THz",
    "dft_min_frequency_THz", "dft_dynamically_stable", "dft_null_reason", "potential_dynamically_stable", "sigma_A_error", "sigma_A_classical",
    "sigma_A_classical_error", "frequency_error_target_THz", "n_stabilized_modes", "at_stabilization_floor",
)
ADDED_IN_2_1 = (
    "harmonic_reference", "nac_applied", "potential_residual_max_force_eV_A", "potential_residual_pressure_GPa",
    "verified_relative_force_error", "audit_max_frequency_difference_THz", "audit_frequency_difference_error_THz",
    "audit_sigma_A_difference", "kappa_fc3_source", "audit_kappa_harmonic_other_fc3_W_mK",
    "audit_kappa_renormalized_other_fc3_W_mK", "audit_kappa_other_fc3_source",
)
ADDED_IN_2_2 = ("audit_kappa_harmonic_reference_mesh_W_mK", "audit_kappa_renormalized_reference_mesh_W_mK")
SCHEMAS = {
    "1.0": tuple(c for c in COLUMNS if c.name not in ADDED_IN_2_0 + ADDED_IN_2_1 + ADDED_IN_2_2),
    "2.0": tuple(c for c in COLUMNS if c.name not in ADDED_IN_2_1 + ADDED_IN_2_2),
    "2.1": tuple(c for c in COLUMNS if c.name not in ADDED_IN_2_2),
    SCHEMA_VERSION: COLUMNS,
}


def _feature(dtype: str):
    from datasets import List, Value

    if dtype.startswith("list2["):
        return List(List(Value(dtype[6:-1])))
    if dtype.startswith("list["):
        return List(Value(dtype[5:-1]))
    return Value(dtype)


def features(schema_version: str = SCHEMA_VERSION):
    """The explicit ``datasets.Features`` of a thermobench table of this schema version."""
    from datasets import Features

    return Features({c.name: _feature(c.dtype) for c in SCHEMAS[schema_version]})


def schema_version_of(folder: Path) -> str:
    """The schema version of a dataset folder, read from its Parquet files' columns."""
    import pyarrow.parquet as pq

    names = set(pq.read_schema(next(Path(folder).glob("*/*.parquet"))).names)
    for version, columns in SCHEMAS.items():
        if names == {c.name for c in columns}:
            return version
    raise ValueError(f"{folder} has columns of no known thermobench schema ({', '.join(SCHEMAS)})")


# ----------------------------------------------------------------------------------------------
# Splits: deterministic, grouped by material

OOD_TEST_FAMILIES = ("wurtzite", "antifluorite", "perovskite-tetragonal", "half-heusler", "hcp")  # thermobench-mini 0.1
RANDOM_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class OodHoldout:
    """What the ``ood`` configuration puts in test: whole structure families, and every material that
    contains an element of ``elements`` (a chemistry the training split never sees)."""

    families: tuple[str, ...]
    elements: tuple[str, ...] = ()
    elements_name: str = ""

    def holds_out(self, family: str, elements=()) -> bool:
        return family in self.families or bool(set(elements) & set(self.elements))


# Per dataset release (major.minor), so a release's splits never change when a later one is made.
OOD_HOLDOUTS = {
    "0.1": OodHoldout(OOD_TEST_FAMILIES),
    "0.2": OodHoldout(("wurtzite", "half-heusler", "vacancy-ordered double perovskite", "layered (CdI2/MoS2-type)"),
                      ("Cu", "Ag", "Au"), "coinage metals (group 11)"),
}


def ood_holdout(dataset_version: str) -> OodHoldout:
    release = ".".join(str(dataset_version).split(".")[:2])
    if release not in OOD_HOLDOUTS:
        raise ValueError(f"no ood holdout defined for dataset version {dataset_version!r}; known: {', '.join(OOD_HOLDOUTS)}")
    return OOD_HOLDOUTS[release]


def _unit_hash(material_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{material_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(material_id: str, family: str, config: str, elements=(), holdout: OodHoldout = OOD_HOLDOUTS["0.1"]) -> str:
    """Split of a material. A hash of its id decides, so a material's split never changes when the
    dataset grows; ``ood`` puts what ``holdout`` names in test and draws validation from the rest."""
    train, validation, _ = RANDOM_FRACTIONS
    if config == "random":
        u = _unit_hash(material_id, "random")
        return "train" if u < train else "validation" if u < train + validation else "test"
    if config == "ood":
        if holdout.holds_out(family, elements):
            return "test"
        return "validation" if _unit_hash(material_id, "ood") < validation / (train + validation) else "train"
    raise ValueError(f"unknown split configuration {config!r}; known: {', '.join(CONFIGS)}")


# ----------------------------------------------------------------------------------------------
# Loading


def resolve_dataset(name_or_path: str | os.PathLike) -> str:
    """A local folder for an embedded name or a path, else the string itself (a Hub repo id)."""
    name = str(name_or_path)
    if name in EMBEDDED:
        folder = EMBEDDED[name]
        if not (folder / "README.md").is_file():
            raise FileNotFoundError(f"the embedded dataset {name!r} is missing from this installation ({folder})")
        return str(folder)
    for directory in [p for p in os.environ.get(DATA_ENV, "").split(os.pathsep) if p]:
        if (Path(directory) / name / "README.md").is_file():
            return str(Path(directory) / name)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "README.md").is_file():
            raise FileNotFoundError(f"{path} is not a thermobench dataset folder: no README.md dataset card")
        return str(path)
    if name.count("/") != 1:
        raise FileNotFoundError(
            f"{name!r} is not an embedded dataset ({', '.join(EMBEDDED)}), a folder, or a Hub id of the form owner/name"
        )
    return name


def load_dataset(name_or_path: str | os.PathLike = "thermobench-mini", split: str | None = None, name: str = "random", **kwargs):
    """Load thermobench data with ``datasets.load_dataset``.

    Args:
        name_or_path: ``"thermobench-mini"`` (the copy shipped with the package), a local dataset
            folder, or a HuggingFace Hub repo id (``revision=`` pins a release).
        split: ``"train"``, ``"validation"``, ``"test"`` or None for the whole ``DatasetDict``.
        name: split configuration, ``"random"`` or ``"ood"`` (whole structure families held out).
    """
    import datasets

    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; choose one of {', '.join(CONFIGS)}")
    source = resolve_dataset(name_or_path)
    if Path(source).is_dir():
        # datasets' cache can serve an older build of a re-assembled local folder; local data is small,
        # so it is always read afresh.
        kwargs.setdefault("download_mode", "force_redownload")
        kwargs.setdefault("verification_mode", "no_checks")  # the cache's split sizes may be of an older build
        kwargs.setdefault("features", features(schema_version_of(Path(source))))
    return datasets.load_dataset(source, name=name, split=split, **kwargs)
