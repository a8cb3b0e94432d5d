"""Crystals by name: the built-in catalog (one, :mod:`thermobench.families`) or a structure file.

``builtin_structure("NaCl")`` is the primitive cell of the catalog entry with that formula (or
material id, e.g. ``perovskite-cubic-SrTiO3``), at its experimental lattice constant.
"""

from __future__ import annotations

from pathlib import Path

from ase import Atoms

# A small, chemically varied set (ionic, covalent, metallic) used where a few crystals are needed:
# replay structures of the fine-tune, the SSCHA benchmark. Their cells come from the one catalog.
BUILTIN_CRYSTALS = ("NaCl", "KBr", "LiI", "RbI", "MgO", "CsI", "CsCl", "Si", "GaAs", "Cu", "Al", "Na")


def _catalog():
    from thermobench.families import BUILTIN_MATERIALS

    return BUILTIN_MATERIALS


def builtin_structure(name: str) -> Atoms:
    """Primitive cell of a built-in crystal, by formula (first family that has it) or material id."""
    for material in _catalog():
        if name in (material.formula, material.material_id):
            return material.atoms()
    raise KeyError(f"No built-in crystal {name!r}: give a formula or material id of thermobench.families "
                   f"(e.g. {', '.join(BUILTIN_CRYSTALS)})")


def is_builtin(name: str) -> bool:
    return any(name in (m.formula, m.material_id) for m in _catalog())


def load_structure(name_or_path: str) -> Atoms:
    """A built-in crystal by name, or the first structure of a file ASE can read (CIF, POSCAR, extxyz)."""
    path = Path(name_or_path)
    if not path.is_file():
        if is_builtin(name_or_path):
            return builtin_structure(name_or_path)
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a built-in crystal (a formula or material id of thermobench.families, "
            f"e.g. {', '.join(BUILTIN_CRYSTALS)}) nor a file"
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
    check_finite(atoms, str(path))
    return atoms


def check_finite(atoms: Atoms, label: str) -> None:
    """Refuse NaN or infinite lattice vectors or positions, naming the field (OPTIMADE names) and where:
    downstream they surface as "no neighbour within the cutoff" or an SVD that did not converge."""
    import numpy as np

    for field, values in (("lattice_vectors", atoms.cell.array), ("cartesian_site_positions", atoms.positions)):
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            row, column = (int(x) for x in bad[0])
            what = f"lattice vector {row}" if field == "lattice_vectors" else f"atom {row}, {atoms[row].symbol}"
            raise ValueError(f"{label}: {field}[{row}][{column}] is {float(values[row, column])} ({what}); "
                             f"{len(bad)} non-finite number(s) in {field}")
