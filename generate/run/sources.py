"""Where the pipeline's crystals come from: the built-in set, a folder of files, or Materials Project.

Each source returns :class:`thermobench.families.Material` objects whose ``build`` makes the
starting cell; reading happens inside ``build``, so an unreadable file becomes that material's
failure record (stage ``load``) instead of stopping the run.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from ase import Atoms

from thermobench.families import Material, builtin_materials

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".extxyz", ".xyz", ".traj", ".json")
POSCAR_NAMES = ("POSCAR", "CONTCAR")


def builtin_source(families=None, ids=None, limit: int | None = None, structure_families: bool = False) -> list[Material]:
    """Built-in crystals (``families``: :data:`thermobench.families.FAMILIES` names). With
    ``structure_families`` a material's ``family`` is its :func:`thermobench.prototypes.structure_family`,
    as phonondb's are: for adding built-ins (e.g. the alkali metals phonondb lacks) to a phonondb run."""
    materials = builtin_materials(families=families, ids=ids)
    materials = materials[:limit] if limit is not None else materials
    if structure_families:
        materials = [replace(m, family=_structure_family_of(m.atoms())) for m in materials]
    return materials


def _structure_family_of(atoms) -> str:
    import spglib

    from thermobench.prototypes import structure_family

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    dataset = spglib.get_symmetry_dataset(cell, symprec=1e-3)
    primitive = spglib.standardize_cell(cell, to_primitive=True, symprec=1e-3)
    return structure_family(atoms.get_chemical_formula(mode="metal"), int(dataset.number), len(primitive[2]))


def _formula_guess(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", path.stem) or path.stem


def directory_source(directory: str | os.PathLike, family: str = "user") -> list[Material]:
    """Every structure file in ``directory`` (CIF, POSCAR/CONTCAR, extxyz, ...), sorted by name.

    The material id is ``file-<file stem>``; every file gets the structure family ``family``.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"structure directory {directory} does not exist")
    files = sorted(
        p for p in directory.iterdir()
        if p.is_file() and (p.suffix.lower() in STRUCTURE_SUFFIXES or p.name.startswith(POSCAR_NAMES))
    )
    if not files:
        raise FileNotFoundError(f"no structure files ({', '.join(STRUCTURE_SUFFIXES)}, POSCAR*) in {directory}")
    materials = []
    for path in files:
        stem = path.stem if path.suffix else path.name
        materials.append(
            Material(
                material_id=f"file-{stem}",
                name=stem,
                formula=_formula_guess(path),
                family=family,
                build=_FileBuilder(path),
                source="file",
                source_id=str(path),
            )
        )
    return materials


class _FileBuilder:
    """Picklable reader (Ray ships it to workers)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self) -> Atoms:
        from thermobench.structures import read_structure_file

        return read_structure_file(self.path)


class _AtomsBuilder:
    def __init__(self, atoms: Atoms):
        self.atoms = atoms

    def __call__(self) -> Atoms:
        return self.atoms.copy()


def materials_project_source(material_ids, api_key: str | None = None, family: str = "materials-project") -> list[Material]:
    """Structures by Materials Project id (``pip install thermobench[materials-project]``, an API key in
    ``MP_API_KEY`` or ``api_key``, and a network)."""
    try:
        from mp_api.client import MPRester
    except ImportError as error:
        raise ImportError(
            "the Materials Project source needs mp-api: pip install 'thermobench[materials-project]'"
        ) from error
    api_key = api_key or os.environ.get("MP_API_KEY")
    if not api_key:
        raise RuntimeError("the Materials Project source needs an API key: set MP_API_KEY or source.mp_api_key")
    from pymatgen.io.ase import AseAtomsAdaptor

    ids = [str(i) for i in material_ids]
    try:
        with MPRester(api_key) as rester:
            docs = rester.materials.summary.search(material_ids=ids, fields=["material_id", "structure", "formula_pretty"])
    except Exception as error:
        raise RuntimeError(f"Materials Project query for {ids} failed (network or key?): {type(error).__name__}: {error}") from error
    found = {str(doc.material_id): doc for doc in docs}
    missing = [i for i in ids if i not in found]
    if missing:
        raise KeyError(f"Materials Project returned no structure for {missing}")
    materials = []
    for mp_id in ids:
        doc = found[mp_id]
        atoms = AseAtomsAdaptor.get_atoms(doc.structure)
        materials.append(
            Material(mp_id, doc.formula_pretty, doc.formula_pretty, family, _AtomsBuilder(atoms), "materials-project", mp_id)
        )
    return materials


class _PhonondbBuilder:
    """The DFT (PBEsol) primitive cell of a phonondb archive, read in place (picklable for Ray)."""

    def __init__(self, archive: Path):
        self.archive = Path(archive)

    def __call__(self) -> Atoms:
        from generate.harmonic.dft_data import load_phonon_dataset
        from generate.harmonic.phonons import to_ase_atoms

        return to_ase_atoms(load_phonon_dataset(self.archive).primitive)

    def dft_phonons(self):
        """phonopy object with phonondb's DFT force constants of this crystal (the ground truth of its rows)."""
        from generate.harmonic.dft_data import load_dft_dataset

        return load_dft_dataset(self.archive)


def dft_stable(archive: Path, mesh=(8, 8, 8), tolerance_THz: float = 0.1) -> bool:
    """Whether phonondb's DFT phonons have no mode below -``tolerance_THz`` on a Γ-centred mesh."""
    from generate.harmonic.dft_data import load_dft_dataset

    phonon = load_dft_dataset(archive)
    phonon.run_mesh(list(mesh), is_gamma_center=True)
    return bool(phonon.get_mesh_dict()["frequencies"].min() >= -tolerance_THz)


def phonondb_source(
    phonondb_dir, ids=None, spacegroups=None, elements=None, max_unitcell_atoms=None, max_supercell_atoms=None,
    split=None, families=None, only_dft_stable: bool = False, limit: int | None = None,
    balanced: bool = False, max_primitive_atoms: int | None = None, per_family: int | None = None,
) -> list[Material]:
    """Materials of the Kyoto phonon database (DFT-relaxed PBEsol cells), filtered.

    ``elements``: every element of a material must be among them (e.g. those the potential covers);
    ``families``: chemistry labels of :func:`thermobench.phonondb.chemical_family`; ``split``: the fixed
    phonondb split; ``only_dft_stable``: keep materials whose DFT phonons are stable (checked lazily,
    about a second each, so combine it with ``limit``). ``balanced``: order the materials so that any
    prefix is balanced over structure families (:func:`thermobench.prototypes.balanced_order`, within
    ``max_primitive_atoms`` and ``per_family``), so a run stopped early is still balanced.
    A material's ``family`` is its structure family (:func:`thermobench.prototypes.structure_family`).
    """
    from thermobench.phonondb import archive_path, chemical_family, present_ids, read_index, select
    from thermobench.prototypes import balanced_order, primitive_atoms, structure_family

    present = present_ids(Path(phonondb_dir))  # a clone, or any subset of it
    entries = select([e for e in read_index() if e.material_id in present], split, max_supercell_atoms=max_supercell_atoms, elements=set(elements) if elements else None,
                     ids=set(ids) if ids else None, spacegroups=set(spacegroups) if spacegroups else None,
                     max_unitcell_atoms=max_unitcell_atoms)
    entries = [e for e in entries if not families or chemical_family(e.elements) in families]
    if balanced:
        entries = balanced_order(entries, max_primitive_atoms or 10**6, per_family)
    if ids:
        missing = sorted(set(ids) - {e.material_id for e in entries})
        if missing:
            raise KeyError(f"phonondb has no material {missing} passing the other filters")
    materials = []
    for entry in entries:
        archive = archive_path(Path(phonondb_dir), entry)
        if only_dft_stable and not dft_stable(archive):
            continue
        family = structure_family(entry.formula, entry.spacegroup_number, primitive_atoms(entry.n_unitcell, entry.spacegroup_number))
        materials.append(Material(f"phonondb-{entry.material_id}", entry.formula, entry.formula, family,
                                  _PhonondbBuilder(archive), "phonondb", entry.material_id))
        if limit is not None and len(materials) >= limit:
            break
    return materials


def materials_from_config(source) -> list[Material]:
    """Materials of the ``source`` config group (kind: builtin | directory | materials_project)."""
    kind = source.kind
    if kind == "builtin":
        families = list(source.families) if source.get("families") else None
        ids = list(source.ids) if source.get("ids") else None
        return builtin_source(families, ids, source.get("limit"), bool(source.get("structure_families")))
    if kind == "directory":
        if not source.get("directory"):
            raise ValueError("source=directory needs source.directory=PATH")
        materials = directory_source(source.directory, source.get("family") or "user")
        return materials[: source.limit] if source.get("limit") else materials
    if kind == "materials_project":
        if not source.get("mp_ids"):
            raise ValueError("source=materials_project needs source.mp_ids=[mp-149,...]")
        return materials_project_source(list(source.mp_ids), source.get("mp_api_key"))
    if kind == "phonondb":
        if not source.get("phonondb_dir"):
            raise ValueError("source=phonondb needs source.phonondb_dir=PATH (git clone https://github.com/WMD-group/phononDB; its phonon_db_tarred/)")
        listed = lambda key: list(source[key]) if source.get(key) else None  # noqa: E731
        return phonondb_source(
            source.phonondb_dir, ids=listed("ids"), spacegroups=listed("spacegroups"), elements=listed("elements"),
            max_unitcell_atoms=source.get("max_unitcell_atoms"), max_supercell_atoms=source.get("max_supercell_atoms"),
            split=source.get("split"), families=listed("families"), only_dft_stable=bool(source.get("dft_stable")),
            limit=source.get("limit"), balanced=bool(source.get("balanced")),
            max_primitive_atoms=source.get("max_primitive_atoms"), per_family=source.get("per_family"),
        )
    raise ValueError(f"source.kind must be builtin, directory, materials_project or phonondb, not {kind!r}")
