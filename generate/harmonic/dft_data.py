"""Read DFT phonon datasets of every phonopy layout into a phonopy object with forces and Born charges.

Layouts (a directory, or a ``.tar.lzma``/``.tar.xz``/``.tar.gz``/``.tar`` archive holding one):

- phonondb (Kyoto phonon database, the WMD-group/phononDB mirror): ``POSCAR-unitcell``,
  ``phonopy.conf`` (``DIM``, ``PRIMITIVE_AXIS``), ``disp.yaml``, ``FORCE_SETS``, optional ``BORN``;
  archives are read in place, nothing is extracted to disk;
- ``phonopy_disp.yaml`` (or the old ``disp.yaml``) + ``FORCE_SETS``, of type 1 (one displaced atom
  per supercell) or type 2 (random displacements of every atom, what ``phonopy --rd`` writes);
- ``phonopy_params.yaml`` or ``phonopy_params.yaml.xz`` (forces inside).

Every problem raises ``DatasetError`` naming the dataset and what is wrong, before any potential is
evaluated, so a caller can skip that dataset and go on.
"""

from __future__ import annotations

import lzma
import re
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np

ARCHIVE_SUFFIXES = (".tar.lzma", ".tar.xz", ".tar.gz", ".tgz", ".tar")
DATASET_FILES = ("phonopy_params.yaml", "phonopy_params.yaml.xz", "phonopy_disp.yaml", "POSCAR-unitcell")


class DatasetError(ValueError):
    """A DFT phonon dataset that cannot be used, with the reason."""


def dataset_name(path: Path) -> str:
    """``mp-<id>`` for phonondb archives, else the directory or archive name without suffix."""
    from thermobench.phonondb import material_id_of

    path = Path(path)
    material_id = material_id_of(path.name)
    if material_id:
        return material_id
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def is_archive(path: Path) -> bool:
    return Path(path).is_file() and Path(path).name.endswith(ARCHIVE_SUFFIXES)


def find_datasets(root: Path) -> list[Path]:
    """Every dataset directory or archive under ``root`` (any depth), sorted; ``root`` itself if it is one."""
    root = Path(root)
    if is_archive(root) or any((root / name).is_file() for name in DATASET_FILES):
        return [root]
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset, directory or archive")
    found = {p.parent for name in DATASET_FILES for p in root.rglob(name)}
    found |= {p for suffix in ARCHIVE_SUFFIXES for p in root.rglob(f"*{suffix}")}
    return sorted(found)


def _read_files(path: Path) -> dict[str, bytes]:
    """The files of one dataset by base name (archives: the members of the single folder inside)."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    try:
        with tarfile.open(path) as archive:  # compression detected from the content (lzma-alone included)
            files = {}
            for member in archive.getmembers():
                if member.isfile():
                    handle = archive.extractfile(member)
                    files[Path(member.name).name] = handle.read() if handle else b""
            return files
    except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as error:
        raise DatasetError(f"{dataset_name(path)}: {name} is a corrupt or truncated archive ({type(error).__name__}: {error})") from None


def _conf_matrix(conf: str, key: str, name: str) -> np.ndarray | None:
    """``DIM`` / ``PRIMITIVE_AXIS`` of a phonopy.conf as a 3x3 matrix (fractions allowed)."""
    match = re.search(rf"^\s*{key}\s*=\s*(.+)$", conf, re.MULTILINE)
    if not match:
        return None
    try:
        values = [float(Fraction(v)) for v in match.group(1).split()]
    except (ValueError, ZeroDivisionError):
        raise DatasetError(f"{name}: phonopy.conf {key} is not numeric: {match.group(1)!r}") from None
    if len(values) == 3:
        return np.diag(values)
    if len(values) != 9:
        raise DatasetError(f"{name}: phonopy.conf {key} needs 3 or 9 numbers, has {len(values)}")
    return np.array(values).reshape(3, 3)


def _read_poscar(text: bytes, name: str):
    from phonopy.interface.vasp import read_vasp_from_strings

    try:
        return read_vasp_from_strings(text.decode())
    except Exception as error:  # phonopy raises bare errors on malformed POSCARs
        raise DatasetError(f"{name}: POSCAR-unitcell unreadable ({type(error).__name__}: {error})") from None


def _force_sets(text: bytes, natom: int, name: str) -> dict:
    """A phonopy displacement dataset from FORCE_SETS of either type, checked against ``natom``."""
    from phonopy.file_IO import parse_FORCE_SETS

    lines = text.decode().split("\n")
    first = lines[0].split() if lines else []
    if len(first) == 1 and first[0].isdigit() and int(first[0]) != natom:  # type 1 states its atom count
        raise DatasetError(f"{name}: FORCE_SETS is for {first[0]} atoms but the supercell has {natom}")
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "FORCE_SETS").write_bytes(text)
            dataset = parse_FORCE_SETS(Path(tmp) / "FORCE_SETS", natom=natom)
    except Exception as error:
        raise DatasetError(f"{name}: FORCE_SETS unreadable ({type(error).__name__}: {error})") from None
    if "first_atoms" in dataset:
        forces = [d.get("forces") for d in dataset["first_atoms"]]
        if not forces or any(f is None or np.shape(f) != (natom, 3) for f in forces):
            raise DatasetError(f"{name}: FORCE_SETS has incomplete force sets for a {natom}-atom supercell")
        stacked = np.array(forces)
    else:
        stacked = np.asarray(dataset.get("forces", []))
        if stacked.ndim != 3 or stacked.shape[1:] != (natom, 3) or len(stacked) == 0:
            raise DatasetError(f"{name}: FORCE_SETS (type 2) does not hold {natom}x3 forces per supercell")
    if not np.isfinite(stacked).all():
        raise DatasetError(f"{name}: non-finite forces in FORCE_SETS")
    return dataset


def _phonondb(files: dict[str, bytes], name: str, log_level: int = 0):
    """phonondb layout: unit cell x DIM, PRIMITIVE_AXIS, FORCE_SETS (type 1), BORN."""
    from phonopy import Phonopy

    for required in ("POSCAR-unitcell", "FORCE_SETS"):
        if required not in files:
            raise DatasetError(f"{name}: missing {required}")
    conf = files.get("phonopy.conf", b"").decode()
    dim = _conf_matrix(conf, "DIM", name)
    if dim is None:
        raise DatasetError(f"{name}: phonopy.conf has no DIM (supercell)")
    if abs(np.linalg.det(dim)) < 0.5:
        raise DatasetError(f"{name}: phonopy.conf DIM is singular")
    primitive = _conf_matrix(conf, "PRIMITIVE_AXIS", name)
    primitive = "P" if primitive is None else primitive  # phonondb: no PRIMITIVE_AXIS means the unit cell is primitive
    unitcell = _read_poscar(files["POSCAR-unitcell"], name)
    phonon = Phonopy(unitcell, supercell_matrix=np.rint(dim).astype(int), primitive_matrix=primitive, log_level=log_level)
    natom = len(phonon.supercell)
    phonon.dataset = _force_sets(files["FORCE_SETS"], natom, name)
    _check_against_disp_yaml(phonon, files.get("disp.yaml"), name)
    return phonon


def _check_against_disp_yaml(phonon, disp: bytes | None, name: str) -> None:
    """The supercell phonopy builds must be the one the forces were computed for (old disp.yaml).

    Old phonopy versions ordered some supercells differently: when disp.yaml holds the same atoms in
    another order, the dataset (displaced atom numbers and forces) is carried over to phonopy's order.
    """
    if disp is None:
        return
    import yaml

    try:
        data = yaml.load(disp, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        lattice = np.array(data["lattice"], dtype=float)
        atoms = data.get("atoms") or data["points"]  # two generations of disp.yaml
        positions = np.array([atom.get("position", atom.get("coordinates")) for atom in atoms], dtype=float)
    except Exception as error:
        raise DatasetError(f"{name}: disp.yaml unreadable ({type(error).__name__}: {error})") from None
    supercell = phonon.supercell
    if len(positions) != len(supercell) or not np.allclose(lattice, supercell.cell, atol=1e-5):
        raise DatasetError(f"{name}: disp.yaml supercell ({len(positions)} atoms) differs from POSCAR-unitcell x DIM ({len(supercell)})")
    delta = positions[:, None, :] - supercell.scaled_positions[None, :, :]
    match = np.abs(delta - np.rint(delta)).max(axis=2) < 1e-5  # (disp.yaml atom, phonopy atom)
    if not (match.sum(axis=1) == 1).all() or not (match.sum(axis=0) == 1).all():
        raise DatasetError(f"{name}: the atoms of disp.yaml's supercell are not those of POSCAR-unitcell x DIM")
    order = match.argmax(axis=1)  # disp.yaml atom i is phonopy atom order[i]
    if (order == np.arange(len(order))).all():
        return
    # In phonopy's order the displaced atoms need not be the representatives its finite-difference
    # solver expects, so the data become a type-2 set (every supercell's displacements and forces),
    # which symfc fits whatever atoms moved.
    natom = len(supercell)
    sets = phonon.dataset["first_atoms"]
    displacements = np.zeros((len(sets), natom, 3))
    forces = np.zeros((len(sets), natom, 3))
    for k, displacement in enumerate(sets):
        displacements[k, order[displacement["number"]]] = displacement["displacement"]
        forces[k, order] = displacement["forces"]
    phonon.dataset = {"displacements": displacements, "forces": forces}


def _phonopy_yaml(files: dict[str, bytes], name: str, log_level: int = 0):
    """phonopy_params.yaml[.xz] (forces inside) or phonopy_disp.yaml + FORCE_SETS."""
    import tempfile

    import phonopy

    if "phonopy_params.yaml" in files or "phonopy_params.yaml.xz" in files:
        text = files.get("phonopy_params.yaml")
        if text is None:
            try:
                text = lzma.decompress(files["phonopy_params.yaml.xz"])
            except lzma.LZMAError as error:
                raise DatasetError(f"{name}: phonopy_params.yaml.xz is corrupt ({error})") from None
        with tempfile.TemporaryDirectory() as tmp:
            params = Path(tmp) / "phonopy_params.yaml"
            params.write_bytes(text)
            try:
                phonon = phonopy.load(params, produce_fc=False, log_level=log_level)
            except Exception as error:
                raise DatasetError(f"{name}: phonopy_params.yaml unreadable ({type(error).__name__}: {error})") from None
        if not phonon.dataset or phonon.forces is None:
            raise DatasetError(f"{name}: phonopy_params.yaml holds no forces")
        forces = np.asarray(phonon.forces)
        if not np.isfinite(forces).all():
            raise DatasetError(f"{name}: non-finite forces in phonopy_params.yaml")
        return phonon
    if "FORCE_SETS" not in files:
        raise DatasetError(f"{name}: missing FORCE_SETS")
    with tempfile.TemporaryDirectory() as tmp:
        disp = Path(tmp) / "phonopy_disp.yaml"
        disp.write_bytes(files["phonopy_disp.yaml"])
        try:
            phonon = phonopy.load(disp, produce_fc=False, log_level=log_level)
        except Exception as error:
            raise DatasetError(f"{name}: phonopy_disp.yaml unreadable ({type(error).__name__}: {error})") from None
    expected = len(phonon.supercells_with_displacements or [])
    phonon.dataset = _force_sets(files["FORCE_SETS"], len(phonon.supercell), name)
    found = len(phonon.supercells_with_displacements or [])
    if expected and found != expected:
        raise DatasetError(f"{name}: phonopy_disp.yaml has {expected} displacements but FORCE_SETS {found} force sets")
    return phonon


def _born(phonon, text: bytes | None, name: str):
    if text is None:
        return
    from phonopy.file_IO import parse_BORN_from_strings
    from phonopy.physical_units import get_physical_units

    units = get_physical_units()
    try:
        params = parse_BORN_from_strings(text.decode(), phonon.primitive, symprec=phonon.symmetry.tolerance)
        params.setdefault("factor", units.Hartree * units.Bohr)  # VASP units, as phonopy.load sets them
        phonon.nac_params = params
    except Exception as error:
        raise DatasetError(f"{name}: BORN unreadable ({type(error).__name__}: {error})") from None


def load_phonon_dataset(path: Path, log_level: int = 0):
    """phonopy object with the DFT displacement dataset, forces and (if ``BORN``) NAC parameters."""
    path = Path(path)
    name = dataset_name(path)
    files = _read_files(path)
    if "phonopy_params.yaml" in files or "phonopy_params.yaml.xz" in files or "phonopy_disp.yaml" in files:
        phonon = _phonopy_yaml(files, name, log_level)
    elif "POSCAR-unitcell" in files:
        phonon = _phonondb(files, name, log_level)
    else:
        raise DatasetError(f"{name}: none of {', '.join(DATASET_FILES)} found")
    if phonon.nac_params is None:
        _born(phonon, files.get("BORN"), name)
    return phonon


def displaced_forces(phonon) -> tuple[list, np.ndarray]:
    """``(supercells_with_displacements, forces (n, natom, 3))`` of a loaded dataset, for either type."""
    dataset = phonon.dataset
    if "first_atoms" in dataset:
        forces = np.array([d["forces"] for d in dataset["first_atoms"]], dtype=float)
    else:
        forces = np.asarray(dataset["forces"], dtype=float)
    return phonon.supercells_with_displacements, forces


def phonondb_entry(archive: Path):
    """Index entry of one phonondb archive from its small text files (no phonopy object built)."""
    from ase.symbols import Symbols

    from thermobench.phonondb import Entry, split_of

    archive = Path(archive)
    name = dataset_name(archive)
    files = _read_files(archive)
    for required in ("POSCAR-unitcell", "phonopy.conf", "FORCE_SETS"):
        if required not in files:
            raise DatasetError(f"{name}: missing {required}")
    lines = files["POSCAR-unitcell"].decode().splitlines()
    try:
        species, counts = lines[5].split(), [int(n) for n in lines[6].split()]
    except (IndexError, ValueError):
        raise DatasetError(f"{name}: POSCAR-unitcell has no species and counts lines") from None
    dim = _conf_matrix(files["phonopy.conf"].decode(), "DIM", name)
    if dim is None:
        raise DatasetError(f"{name}: phonopy.conf has no DIM (supercell)")
    n_unit = sum(counts)
    force_lines = files["FORCE_SETS"].decode().split()
    try:
        n_displacements = int(force_lines[1])
    except (IndexError, ValueError):
        raise DatasetError(f"{name}: FORCE_SETS header has no displacement count") from None
    symbols = Symbols.fromsymbols([s for s, n in zip(species, counts, strict=True) for _ in range(n)])
    number = re.search(r"-(\d+)\.tar", archive.name)  # the archive name ends in the space-group number
    spacegroup = int(number.group(1)) if number else 0
    return Entry(
        material_id=name,
        formula=symbols.get_chemical_formula(mode="metal", empirical=True),
        spacegroup_number=spacegroup,
        n_unitcell=n_unit,
        n_supercell=int(round(abs(np.linalg.det(dim)))) * n_unit,
        n_displacements=n_displacements,
        elements=tuple(sorted(set(species))),
        has_born="BORN" in files,
        split=split_of(name),
    )


def build_phonondb_index(phonondb_dir: Path, processes: int = 1):
    """Index every archive of a phonondb clone; unreadable archives are reported and left out."""
    from multiprocessing import Pool

    archives = sorted(Path(phonondb_dir).glob("materials-id-*.tar.lzma"))
    if not archives:
        raise DatasetError(f"{phonondb_dir}: no materials-id-*.tar.lzma archives (clone the mirror, pass phonon_db_tarred/)")
    with Pool(processes) as pool:
        results = pool.map(_entry_or_error, archives, chunksize=64)
    entries = [r for r in results if not isinstance(r, str)]
    errors = [r for r in results if isinstance(r, str)]
    return sorted(entries, key=lambda e: int(e.material_id.split("-")[1])), errors


def _entry_or_error(archive: Path):
    try:
        return phonondb_entry(archive)
    except DatasetError as error:
        return str(error)


def displacements_only(dataset: dict) -> dict:
    """The displacements of a dataset without its forces (to be filled by another calculator)."""
    if "first_atoms" in dataset:
        return {
            "natom": dataset["natom"],
            "first_atoms": [{"number": d["number"], "displacement": d["displacement"]} for d in dataset["first_atoms"]],
        }
    return {"displacements": np.asarray(dataset["displacements"])}


def produce_force_constants(phonon, full: bool = False) -> None:
    """Symmetrized FC2 from the dataset: phonopy's solver for type 1, a symfc fit for type 2."""
    fc_calculator = "symfc" if "displacements" in (phonon.dataset or {}) else None
    phonon.produce_force_constants(calculate_full_force_constants=full, fc_calculator=fc_calculator)
    phonon.symmetrize_force_constants()


def load_dft_dataset(path: Path):
    """phonopy object with DFT force constants (and NAC when ``BORN`` is present), any layout."""
    phonon = load_phonon_dataset(path)
    produce_force_constants(phonon)  # compact, as phonopy.load does
    return phonon


def _main() -> None:  # pragma: no cover
    """``python -m generate.harmonic.dft_data index PHONONDB_DIR`` rebuilds the committed index; else describe datasets."""
    import sys

    from thermobench.phonondb import INDEX_PATH, write_index

    if sys.argv[1:2] == ["index"]:
        entries, errors = build_phonondb_index(Path(sys.argv[2]), processes=int(sys.argv[3]) if len(sys.argv) > 3 else 1)
        write_index(entries)
        print(f"{len(entries)} materials indexed into {INDEX_PATH}; {len(errors)} unreadable", *errors, sep="\n")
        return
    for arg in sys.argv[1:]:
        phonon = load_phonon_dataset(Path(arg))
        cells, forces = displaced_forces(phonon)
        print(dataset_name(Path(arg)), phonon.unitcell.formula if hasattr(phonon.unitcell, "formula") else "",
              len(phonon.supercell), "atoms,", len(cells), "displacements, NAC" if phonon.nac_params else "")


if __name__ == "__main__":  # pragma: no cover
    _main()
