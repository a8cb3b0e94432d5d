"""Structure families of database crystals from composition, space group and cell size, and a
family-balanced selection of phonondb for the dataset.

A family is a prototype a crystal chemist would name (rock salt, rutile, cubic perovskite, ...),
decided from the reduced stoichiometry, the space group and the number of atoms in the primitive
cell; what no rule names falls back on its chemistry (``other oxides``, ...), from
:func:`thermobench.phonondb.chemical_family`. Rules are deliberately strict (space group *and*
atom count *and* stoichiometry), so a named family holds that prototype and nothing else.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from functools import cache

ALKALI_ALKALINE_EARTH = {"Li", "Na", "K", "Rb", "Cs", "Be", "Mg", "Ca", "Sr", "Ba"}
NONMETALS = {"H", "He", "B", "C", "N", "O", "F", "Ne", "Si", "P", "S", "Cl", "Ar", "Ge", "As", "Se", "Br", "Kr",
             "Sb", "Te", "I", "Xe"}
NOBLE_GASES = {"He", "Ne", "Ar", "Kr", "Xe", "Rn"}  # van der Waals solids: not what a crystal potential is for
MOLECULAR_ELEMENTS = {"H", "N", "O", "F", "Cl", "Br", "I"}  # their elemental solids are molecular crystals
ANIONS = {"O", "S", "Se", "Te", "F", "Cl", "Br", "I", "N", "P", "As", "Sb"}
HALOGENS = {"F", "Cl", "Br", "I"}
CHALCOGENS = {"S", "Se", "Te"}
PEROVSKITE_ANIONS = {"O"} | HALOGENS
# Space groups of the common octahedral-tilt and polar distortions of ABX3 perovskites (Glazer, Howard & Stokes)
DISTORTED_PEROVSKITE_GROUPS = {62, 63, 74, 127, 140, 167, 161, 160, 99, 38, 71, 139, 123, 12, 15, 14, 11, 148, 146}
CENTERING = {"P": 1, "I": 2, "F": 4, "A": 2, "B": 2, "C": 2, "R": 3}  # conventional / primitive atoms


@cache
def _centering(spacegroup: int) -> int:
    from pymatgen.symmetry.groups import SpaceGroup

    return CENTERING[SpaceGroup.from_int_number(spacegroup).symbol[0]]


def primitive_atoms(n_conventional: int, spacegroup: int) -> int:
    """Atoms of the primitive cell from those of the conventional one (phonondb's unit cell)."""
    return max(1, n_conventional // _centering(spacegroup))


def _counts(formula: str) -> dict[str, int]:
    from pymatgen.core import Composition

    reduced = Composition(formula).reduced_composition
    return {str(el): round(n) for el, n in reduced.items()}


def structure_family(formula: str, spacegroup: int, n_primitive: int) -> str:
    """The prototype family of a crystal (see the module docstring)."""
    from thermobench.phonondb import chemical_family

    counts = _counts(formula)
    elements = set(counts)
    ratio = tuple(sorted(counts.values()))
    anions = elements & ANIONS
    if len(elements) == 1:
        (element,) = elements
        if element in ALKALI_ALKALINE_EARTH:
            return "alkali & alkaline-earth metals"
        return "elemental nonmetals" if element in NONMETALS else "elemental metals"
    if ratio == (1, 1):
        named = {(225, 2): "rocksalt", (216, 2): "zincblende", (186, 4): "wurtzite", (221, 2): "CsCl-type"}
        if (spacegroup, n_primitive) in named:
            return named[(spacegroup, n_primitive)]
    if ratio == (1, 2):
        if spacegroup == 225 and n_primitive == 3:
            return "fluorite & antifluorite"
        if spacegroup == 136 and n_primitive == 6:
            return "rutile"
        if spacegroup in (164, 194, 166, 187) and n_primitive in (3, 6) and anions - {"O", "N"}:
            return "layered (CdI2/MoS2-type)"
    if ratio == (2, 3) and spacegroup == 166 and n_primitive == 5 and anions & CHALCOGENS:
        return "layered (Bi2Te3-type)"
    if ratio == (1, 1, 3) and anions & PEROVSKITE_ANIONS:
        x = max(counts, key=counts.get)
        if x in PEROVSKITE_ANIONS:
            if spacegroup == 221 and n_primitive == 5:
                return "perovskite-cubic"
            if spacegroup in DISTORTED_PEROVSKITE_GROUPS and n_primitive in (5, 10, 20, 40):
                return "perovskite-distorted"
    if ratio == (1, 2, 6) and spacegroup == 225 and n_primitive == 9 and anions & PEROVSKITE_ANIONS:
        return "vacancy-ordered double perovskite"
    if ratio == (1, 1, 2, 6) and spacegroup == 225 and n_primitive == 10 and anions & PEROVSKITE_ANIONS:
        return "double perovskite (elpasolite)"
    if ratio == (1, 1, 1) and spacegroup == 216 and n_primitive == 3:
        return "half-heusler"
    if ratio == (1, 1, 2) and spacegroup == 225 and n_primitive == 4 and not anions:
        return "full-heusler"
    if ratio == (1, 1, 2) and spacegroup == 122 and n_primitive == 8:
        return "chalcopyrite"
    return f"other {chemical_family(elements)}"


def _order_key(material_id: str) -> float:
    digest = hashlib.sha256(f"thermobench-0.2:{material_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def balanced_order(entries, max_primitive_atoms: int, per_family: int | None = None) -> list:
    """phonondb entries ordered so that any prefix is balanced over structure families.

    Within a family, the smallest primitive cells first (cost grows with them; ties in a fixed hashed
    order); then families are interleaved round-robin, so a run stopped after n materials has about
    n / n_families of each, and small families are exhausted rather than padded. Noble-gas and molecular
    elemental solids and cells above ``max_primitive_atoms`` are left out; ``per_family`` caps each family.
    """
    by_family: dict[str, list] = defaultdict(list)
    for entry in entries:
        n_prim = primitive_atoms(entry.n_unitcell, entry.spacegroup_number)
        if n_prim > max_primitive_atoms or set(entry.elements) & NOBLE_GASES or set(entry.elements) <= MOLECULAR_ELEMENTS:
            continue
        by_family[structure_family(entry.formula, entry.spacegroup_number, n_prim)].append((n_prim, _order_key(entry.material_id), entry))
    queues = [sorted(members, key=lambda t: t[:2])[:per_family] for _, members in sorted(by_family.items())]
    ordered = []
    for rank in range(max((len(q) for q in queues), default=0)):
        ordered.extend(q[rank][2] for q in queues if rank < len(q))
    return ordered
