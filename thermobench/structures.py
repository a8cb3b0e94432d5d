"""Built-in crystals defined from prototypes, with experimental lattice constants (Angstrom).

The lattice constants are the experimental values of the M3GNet model card's cubic benchmark, so
that relaxations start close to the answer and can be compared with the card.
"""

from __future__ import annotations

from pathlib import Path

from ase import Atoms
from ase.build import bulk

# name -> (ASE prototype, conventional cubic lattice constant in Angstrom)
BUILTIN_CRYSTALS: dict[str, tuple[str, float]] = {
    "NaCl": ("rocksalt", 5.64),
    "KBr": ("rocksalt", 6.60),
    "LiI": ("rocksalt", 6.01),
    "RbI": ("rocksalt", 7.35),
    "MgO": ("rocksalt", 4.212),
    "CsI": ("cesiumchloride", 4.567),
    "CsCl": ("cesiumchloride", 4.123),
    "Si": ("diamond", 5.43102),
    "GaAs": ("zincblende", 5.653),
    "Cu": ("fcc", 3.597),
    "Al": ("fcc", 4.046),
    "Na": ("bcc", 4.23),
}


def builtin_structure(name: str) -> Atoms:
    """Primitive cell of a built-in crystal."""
    if name not in BUILTIN_CRYSTALS:
        raise KeyError(f"No built-in crystal {name!r}; available: {', '.join(sorted(BUILTIN_CRYSTALS))}")
    prototype, a = BUILTIN_CRYSTALS[name]
    return bulk(name, prototype, a=a)


def load_structure(name_or_path: str) -> Atoms:
    """A built-in crystal by name, or the first structure of a file ASE can read (CIF, POSCAR, extxyz)."""
    if name_or_path in BUILTIN_CRYSTALS:
        return builtin_structure(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a built-in crystal ({', '.join(sorted(BUILTIN_CRYSTALS))}) nor a file"
        )
    return read_structure_file(path)


def read_structure_file(path: str | Path) -> Atoms:
    """The first structure of a file ASE can read; an unreadable file raises ``ValueError`` naming it."""
    from ase.io import read

    path = Path(path)
    try:
        atoms = read(path, index=0)
    except Exception as error:  # ASE raises anything from StopIteration to KeyError on bad files
        raise ValueError(f"cannot read a crystal structure from {path}: {type(error).__name__}: {error}") from None
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise ValueError(f"{path} holds no atoms")
    return atoms
