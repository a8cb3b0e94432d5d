"""The Kyoto phonon database (phonondb, A. Togo, 2018-04-17; VASP PBEsol; CC BY 4.0): index and fixed split.

The database is not shipped: clone the mirror (``git clone https://github.com/WMD-group/phononDB``,
~345 MB) and point ``phonondb_dir`` at its ``phonon_db_tarred/`` folder. What ships is
``data/phonondb/index.csv``: one row per material (mp id, formula, space group, atoms in the unit
cell and the DFT supercell, displacements, elements, Born charges) and its split.

The split is fixed by a hash of the mp id (80/10/10 % train/validation/test), so it never depends on
which materials a run filters or on their order. The test split is for final evaluation only: never
for training, early stopping or any choice of settings.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

MIRROR_URL = "https://github.com/WMD-group/phononDB"
MIRROR_COMMIT = "b5fa78d25c2d983d8fdfaf4ce063d713a529bfc2"
INDEX_PATH = Path(__file__).parent / "data" / "phonondb" / "index.csv"
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
CITATION = (
    "A. Togo, phonondb (Kyoto phonon database), version 2018-04-17, VASP PBEsol, CC BY 4.0; "
    "mirrored at github.com/WMD-group/phononDB"
)


ARCHIVE_NAME = re.compile(r"materials-id-(?P<id>\d+)-")


def material_id_of(archive_name: str) -> str | None:
    """``mp-<id>`` of a phonondb archive name (``materials-id-149-si-fd-3m-227.tar.lzma``), else None."""
    match = ARCHIVE_NAME.match(archive_name)
    return f"mp-{match['id']}" if match else None


def split_of(material_id: str) -> str:
    """Fixed split of a phonondb material: a hash of its mp id (``mp-149``)."""
    digest = hashlib.sha256(f"phonondb:{material_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split, fraction in SPLIT_FRACTIONS.items():
        cumulative += fraction
        if u < cumulative:
            return split
    return "test"


@dataclass(frozen=True)
class Entry:
    material_id: str
    formula: str
    spacegroup_number: int
    n_unitcell: int
    n_supercell: int
    n_displacements: int
    elements: tuple[str, ...]
    has_born: bool
    split: str


def read_index(path: Path = INDEX_PATH) -> list[Entry]:
    """The committed index of phonondb, one entry per material."""
    with open(path, newline="") as handle:
        return [
            Entry(
                material_id=row["material_id"],
                formula=row["formula"],
                spacegroup_number=int(row["spacegroup_number"]),
                n_unitcell=int(row["n_unitcell"]),
                n_supercell=int(row["n_supercell"]),
                n_displacements=int(row["n_displacements"]),
                elements=tuple(row["elements"].split()),
                has_born=row["has_born"] == "1",
                split=row["split"],
            )
            for row in csv.DictReader(handle)
        ]


def write_index(entries: list[Entry], path: Path = INDEX_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(Entry.__dataclass_fields__)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for entry in entries:
            row = {f: getattr(entry, f) for f in fields}
            row["elements"] = " ".join(entry.elements)
            row["has_born"] = int(entry.has_born)
            writer.writerow(row)
    tmp.replace(path)


def chemical_family(elements) -> str:
    """A coarse chemistry label (anion first, as crystal chemists sort) for breakdowns and balancing."""
    elements = set(elements)
    if "H" in elements:
        return "hydrides & hydroxides"
    if "O" in elements:
        return "oxides"
    if elements & {"F", "Cl", "Br", "I"}:
        return "halides"
    if elements & {"S", "Se", "Te"}:
        return "chalcogenides"
    if elements & {"N", "P", "As", "Sb"}:
        return "pnictides"
    if elements & {"B", "C", "Si", "Ge"}:
        return "borides, carbides, silicides"
    return "intermetallics & elements"


def select(
    entries: list[Entry],
    split: str | None = None,
    max_supercell_atoms: int | None = None,
    max_displacements: int | None = None,
    elements: set[str] | None = None,
    ids: set[str] | None = None,
    spacegroups: set[int] | None = None,
    max_unitcell_atoms: int | None = None,
) -> list[Entry]:
    """Entries passing every given filter (``elements``: all of a material's elements must be in it)."""
    if split is not None and split not in SPLIT_FRACTIONS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLIT_FRACTIONS)}")
    return [
        e
        for e in entries
        if (split is None or e.split == split)
        and (max_supercell_atoms is None or e.n_supercell <= max_supercell_atoms)
        and (max_displacements is None or e.n_displacements <= max_displacements)
        and (max_unitcell_atoms is None or e.n_unitcell <= max_unitcell_atoms)
        and (elements is None or set(e.elements) <= elements)
        and (ids is None or e.material_id in ids)
        and (spacegroups is None or e.spacegroup_number in spacegroups)
    ]


def present_ids(phonondb_dir: Path) -> set[str]:
    """mp ids of the archives in a clone's ``phonon_db_tarred/`` (or any folder holding a subset of them)."""
    root = Path(phonondb_dir)
    root = root / "phonon_db_tarred" if (root / "phonon_db_tarred").is_dir() else root
    found = {material_id_of(p.name) for p in root.glob("materials-id-*.tar.lzma")}
    if not found:
        raise FileNotFoundError(f"no phonondb archives (materials-id-*.tar.lzma) in {root}: git clone {MIRROR_URL}")
    return found


def archive_path(phonondb_dir: Path, entry: Entry) -> Path:
    """Where ``entry``'s archive is in a clone; an error that says how to get the database if absent."""
    root = Path(phonondb_dir)
    pattern = f"materials-id-{entry.material_id.removeprefix('mp-')}-*.tar.lzma"
    for folder in (root, root / "phonon_db_tarred"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"{pattern} not found under {root}: clone the database with `git clone {MIRROR_URL}` "
        "and pass its phonon_db_tarred/ folder"
    )
