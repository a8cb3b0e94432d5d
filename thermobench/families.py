"""Built-in real inorganic crystals, defined from structure prototypes and chemistry.

Each entry is a compound that exists in the named structure (at ambient conditions or in a
well-known high-temperature or high-pressure phase), with its usual name and a starting lattice
constant close to the experimental one. Relaxation with the potential fixes the lattice, so the
starting values need only be good enough for the relaxation to stay in the right basin.

Material ids read ``<family>-<formula>`` (``rocksalt-NaCl``, ``wurtzite-ZnS``) and are stable.
Everything here returns primitive cells (``ase.Atoms``) and needs only ASE and spglib.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms


@dataclass(frozen=True)
class Material:
    """A crystal to compute: its id, names and a way to build its starting primitive cell."""

    material_id: str
    name: str
    formula: str
    family: str
    build: Callable[[], Atoms] = field(repr=False, compare=False)
    source: str = "builtin"
    source_id: str | None = None

    def atoms(self) -> Atoms:
        return self.build()


def primitive(atoms: Atoms, symprec: float = 1e-3) -> Atoms:
    """The spglib primitive cell (standardized) of a conventional cell."""
    import spglib

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    lattice, positions, numbers = spglib.standardize_cell(cell, to_primitive=True, symprec=symprec)
    return Atoms(numbers=numbers, cell=lattice, scaled_positions=positions, pbc=True)


def _spacegroup_crystal(symbols, basis, spacegroup: int, cellpar, setting: int = 1) -> Atoms:
    from ase.spacegroup import crystal

    return primitive(crystal(symbols, basis=basis, spacegroup=spacegroup, cellpar=cellpar, setting=setting))


def _bulk(name: str, prototype: str, **kwargs) -> Callable[[], Atoms]:
    def build() -> Atoms:
        from ase.build import bulk

        return bulk(name, prototype, **kwargs)

    return build


def _cubic(symbols, basis, spacegroup: int, a: float) -> Callable[[], Atoms]:
    return lambda: _spacegroup_crystal(symbols, basis, spacegroup, [a, a, a, 90, 90, 90])


# --- chemistry tables: formula -> usual name and experimental lattice constants (Å) -------------

FCC_METALS = {"Al": 4.05, "Cu": 3.615, "Ag": 4.086, "Au": 4.078, "Ni": 3.524, "Pd": 3.891, "Pt": 3.924,
              "Pb": 4.950, "Ca": 5.588, "Sr": 6.085, "Rh": 3.803, "Ir": 3.839}
BCC_METALS = {"Li": 3.510, "Na": 4.290, "K": 5.328, "Rb": 5.585, "Cs": 6.141, "Fe": 2.867, "Cr": 2.885,
              "Mo": 3.147, "W": 3.165, "V": 3.030, "Nb": 3.300, "Ta": 3.303, "Ba": 5.028}
HCP_METALS = {"Mg": (3.209, 5.211), "Ti": (2.951, 4.686), "Zn": (2.665, 4.947), "Zr": (3.232, 5.147),
              "Be": (2.286, 3.584), "Co": (2.507, 4.070), "Cd": (2.979, 5.619)}
DIAMOND = {"C": ("diamond", 3.567), "Si": ("silicon", 5.431), "Ge": ("germanium", 5.658),
           "Sn": ("alpha-tin (grey tin)", 6.489)}
ROCKSALT = {
    "LiF": ("lithium fluoride", 4.027), "LiCl": ("lithium chloride", 5.130), "LiBr": ("lithium bromide", 5.501),
    "LiI": ("lithium iodide", 6.000), "NaF": ("sodium fluoride", 4.634), "NaCl": ("sodium chloride (halite)", 5.640),
    "NaBr": ("sodium bromide", 5.977), "NaI": ("sodium iodide", 6.473), "KF": ("potassium fluoride", 5.347),
    "KCl": ("potassium chloride (sylvite)", 6.293), "KBr": ("potassium bromide", 6.600),
    "KI": ("potassium iodide", 7.066), "RbF": ("rubidium fluoride", 5.652), "RbCl": ("rubidium chloride", 6.590),
    "RbBr": ("rubidium bromide", 6.889), "RbI": ("rubidium iodide", 7.342), "MgO": ("magnesium oxide (periclase)", 4.212),
    "CaO": ("calcium oxide (lime)", 4.811), "SrO": ("strontium oxide", 5.160), "BaO": ("barium oxide", 5.523),
    "PbS": ("lead sulfide (galena)", 5.936), "PbSe": ("lead selenide", 6.124), "PbTe": ("lead telluride", 6.462),
    "SnTe": ("tin telluride", 6.320), "AgCl": ("silver chloride", 5.550), "AgBr": ("silver bromide", 5.774),
    "TiC": ("titanium carbide", 4.328), "TiN": ("titanium nitride", 4.240), "ZrC": ("zirconium carbide", 4.698),
    "NbC": ("niobium carbide", 4.470), "MnO": ("manganese(II) oxide", 4.445), "NiO": ("nickel oxide", 4.177),
    "CaS": ("calcium sulfide", 5.689), "MgS": ("magnesium sulfide", 5.200),
}
CSCL = {"CsCl": ("caesium chloride", 4.123), "CsBr": ("caesium bromide", 4.296), "CsI": ("caesium iodide", 4.567),
        "TlCl": ("thallium chloride", 3.842), "TlBr": ("thallium bromide", 3.985), "NiAl": ("nickel aluminide", 2.887),
        "CuZn": ("beta-brass", 2.950), "FeAl": ("iron aluminide", 2.909)}
ZINCBLENDE = {
    "GaAs": ("gallium arsenide", 5.653), "GaP": ("gallium phosphide", 5.451), "GaSb": ("gallium antimonide", 6.096),
    "AlP": ("aluminium phosphide", 5.463), "AlAs": ("aluminium arsenide", 5.661), "AlSb": ("aluminium antimonide", 6.136),
    "InP": ("indium phosphide", 5.869), "InAs": ("indium arsenide", 6.058), "InSb": ("indium antimonide", 6.479),
    "ZnS": ("zinc sulfide (sphalerite)", 5.409), "ZnSe": ("zinc selenide", 5.668), "ZnTe": ("zinc telluride", 6.101),
    "CdTe": ("cadmium telluride", 6.481), "CuCl": ("copper(I) chloride", 5.416), "CuBr": ("copper(I) bromide", 5.690),
    "CuI": ("copper(I) iodide", 6.054), "BN": ("cubic boron nitride", 3.615), "BP": ("boron phosphide", 4.538),
    "SiC": ("silicon carbide (3C)", 4.360), "BeS": ("beryllium sulfide", 4.862),
}
WURTZITE = {  # a, c (Å); u starts at the ideal 3/8
    "ZnO": ("zinc oxide", 3.250, 5.207), "GaN": ("gallium nitride", 3.189, 5.185), "AlN": ("aluminium nitride", 3.112, 4.982),
    "InN": ("indium nitride", 3.545, 5.703), "CdS": ("cadmium sulfide (greenockite)", 4.136, 6.714),
    "CdSe": ("cadmium selenide", 4.300, 7.011), "BeO": ("beryllium oxide", 2.698, 4.380),
    "ZnS": ("zinc sulfide (wurtzite)", 3.821, 6.257), "AgI": ("silver iodide (beta)", 4.592, 7.510),
}
FLUORITE = {"CaF2": ("calcium fluoride (fluorite)", 5.463), "SrF2": ("strontium fluoride", 5.800),
            "BaF2": ("barium fluoride", 6.200), "CdF2": ("cadmium fluoride", 5.388), "PbF2": ("lead fluoride (beta)", 5.940),
            "CeO2": ("cerium dioxide (ceria)", 5.411), "ThO2": ("thorium dioxide", 5.597),
            "UO2": ("uranium dioxide", 5.470), "ZrO2": ("zirconia (cubic)", 5.090), "SrCl2": ("strontium chloride", 6.977)}
ANTIFLUORITE = {"Li2O": ("lithium oxide", 4.611), "Na2O": ("sodium oxide", 5.550), "K2O": ("potassium oxide", 6.436),
                "Li2S": ("lithium sulfide", 5.708), "Na2S": ("sodium sulfide", 6.540),
                "Mg2Si": ("magnesium silicide", 6.351), "Mg2Ge": ("magnesium germanide", 6.385),
                "Mg2Sn": ("magnesium stannide", 6.765)}
RUTILE = {  # a, c (Å), anion parameter u
    "TiO2": ("titanium dioxide (rutile)", 4.594, 2.959, 0.305), "SnO2": ("tin dioxide (cassiterite)", 4.737, 3.186, 0.307),
    "GeO2": ("germanium dioxide (rutile)", 4.397, 2.863, 0.306), "MgF2": ("magnesium fluoride (sellaite)", 4.623, 3.052, 0.303),
    "ZnF2": ("zinc fluoride", 4.704, 3.134, 0.303), "MnF2": ("manganese(II) fluoride", 4.873, 3.310, 0.305),
    "PbO2": ("lead dioxide (plattnerite)", 4.956, 3.384, 0.307), "RuO2": ("ruthenium dioxide", 4.492, 3.106, 0.306),
    "NiF2": ("nickel(II) fluoride", 4.651, 3.084, 0.302), "SiO2": ("stishovite", 4.180, 2.666, 0.306),
    "CrO2": ("chromium dioxide", 4.421, 2.916, 0.303), "VO2": ("vanadium dioxide (rutile, high T)", 4.554, 2.856, 0.300),
}
PEROVSKITE_CUBIC = {  # ABX3, cubic (Pm-3m) phase, a (Å)
    "SrTiO3": ("strontium titanate", 3.905), "BaTiO3": ("barium titanate (cubic)", 4.000),
    "KTaO3": ("potassium tantalate", 3.989), "KNbO3": ("potassium niobate (cubic)", 4.022),
    "BaZrO3": ("barium zirconate", 4.193), "SrZrO3": ("strontium zirconate (cubic, high T)", 4.154),
    "CaTiO3": ("calcium titanate (cubic, high T)", 3.895), "PbTiO3": ("lead titanate (cubic)", 3.970),
    "BaSnO3": ("barium stannate", 4.116), "BaHfO3": ("barium hafnate", 4.171), "LaAlO3": ("lanthanum aluminate (cubic, high T)", 3.821),
    "KMgF3": ("potassium magnesium fluoride", 3.989), "KZnF3": ("potassium zinc fluoride", 4.055),
    "KNiF3": ("potassium nickel fluoride", 4.013), "RbCaF3": ("rubidium calcium fluoride", 4.455),
    "CsCaCl3": ("caesium calcium chloride", 5.396), "CsPbCl3": ("caesium lead chloride (cubic)", 5.605),
    "CsPbBr3": ("caesium lead bromide (cubic)", 5.874), "CsPbI3": ("caesium lead iodide (alpha)", 6.289),
    "CsSnBr3": ("caesium tin bromide", 5.804), "CsSnI3": ("caesium tin iodide (cubic)", 6.219),
    "CsCdBr3": ("caesium cadmium bromide (cubic)", 5.51),
}
PEROVSKITE_TETRAGONAL = {  # ABO3 P4mm ferroelectrics: a, c (Å), z of B, apical O1 and equatorial O2 (A at origin)
    "BaTiO3": ("barium titanate (tetragonal)", 3.992, 4.036, 0.512, -0.024, 0.486),
    "PbTiO3": ("lead titanate (tetragonal)", 3.904, 4.152, 0.538, 0.112, 0.617),
    "KNbO3": ("potassium niobate (tetragonal)", 3.997, 4.063, 0.517, -0.021, 0.481),
    "PbVO3": ("lead vanadate", 3.800, 4.670, 0.567, 0.213, 0.681),
}
VACANCY_ORDERED_DOUBLE_PEROVSKITE = {  # A2BX6 (K2PtCl6 type, Fm-3m): a (Å), B-X bond (Å)
    "K2PtCl6": ("potassium hexachloroplatinate", 9.755, 2.32), "K2SnCl6": ("potassium hexachlorostannate", 9.986, 2.42),
    "Cs2SnCl6": ("caesium hexachlorostannate", 10.38, 2.42), "Cs2SnBr6": ("caesium hexabromostannate", 10.84, 2.60),
    "Cs2SnI6": ("caesium hexaiodostannate", 11.65, 2.85), "Cs2TiBr6": ("caesium hexabromotitanate", 10.92, 2.52),
    "Cs2PtBr6": ("caesium hexabromoplatinate", 10.67, 2.47), "K2SiF6": ("potassium hexafluorosilicate", 8.134, 1.68),
    "Cs2ZrCl6": ("caesium hexachlorozirconate", 10.41, 2.46), "Cs2TeI6": ("caesium hexaiodotellurate", 11.70, 2.93),
    "Rb2SnCl6": ("rubidium hexachlorostannate", 10.12, 2.42),
}
ELPASOLITE = {  # A2BB'X6 double perovskites (Fm-3m): a (Å), B-X bond (Å)
    "Cs2AgBiBr6": ("caesium silver bismuth bromide", 11.27, 2.80), "Cs2AgBiCl6": ("caesium silver bismuth chloride", 10.78, 2.70),
    "Cs2AgInCl6": ("caesium silver indium chloride", 10.47, 2.70), "Cs2NaBiCl6": ("caesium sodium bismuth chloride", 10.84, 2.80),
    "Cs2NaInCl6": ("caesium sodium indium chloride", 10.53, 2.75),
}
HEUSLER = {"Cu2MnAl": ("Heusler alloy Cu2MnAl", 5.95), "Ni2MnGa": ("nickel manganese gallium", 5.825),
           "Co2MnSi": ("cobalt manganese silicide", 5.654), "Fe2VAl": ("iron vanadium aluminide", 5.761)}
HALF_HEUSLER = {"TiNiSn": ("titanium nickel stannide", 5.93), "ZrNiSn": ("zirconium nickel stannide", 6.11),
                "NbFeSb": ("niobium iron antimonide", 5.95), "TiCoSb": ("titanium cobalt antimonide", 5.88),
                "HfNiSn": ("hafnium nickel stannide", 6.08)}
L12 = {"Cu3Au": ("copper gold (Cu3Au)", 3.749), "Ni3Al": ("nickel aluminide (gamma prime)", 3.572),
       "Pt3Ti": ("platinum titanium", 3.90)}
A15 = {"Nb3Sn": ("niobium-tin", 5.29), "V3Si": ("vanadium silicide", 4.72)}
ANTIPEROVSKITE = {"Li3OCl": ("lithium oxychloride", 3.91), "Na3OCl": ("sodium oxychloride", 4.50)}
REO3_TYPE = {"ReO3": ("rhenium trioxide", 3.748), "ScF3": ("scandium trifluoride", 4.013)}


def _species(formula: str) -> list[tuple[str, int]]:
    """'Cs2AgBiBr6' -> [('Cs', 2), ('Ag', 1), ('Bi', 1), ('Br', 6)] in order of appearance."""
    import re

    return [(el, int(n) if n else 1) for el, n in re.findall(r"([A-Z][a-z]?)(\d*)", formula)]


def _materials() -> list[Material]:
    out: list[Material] = []

    def add(family: str, formula: str, name: str, build: Callable[[], Atoms]) -> None:
        out.append(Material(f"{family}-{formula}", name, formula, family, build))

    for el, a in FCC_METALS.items():
        add("fcc", el, _element_name(el), _bulk(el, "fcc", a=a))
    for el, a in BCC_METALS.items():
        add("bcc", el, _element_name(el), _bulk(el, "bcc", a=a))
    for el, (a, c) in HCP_METALS.items():
        add("hcp", el, _element_name(el), _bulk(el, "hcp", a=a, c=c))
    for el, (name, a) in DIAMOND.items():
        add("diamond", el, name, _bulk(el, "diamond", a=a))
    for f, (name, a) in ROCKSALT.items():
        add("rocksalt", f, name, _bulk(f, "rocksalt", a=a))
    for f, (name, a) in CSCL.items():
        add("cesium-chloride", f, name, _bulk(f, "cesiumchloride", a=a))
    for f, (name, a) in ZINCBLENDE.items():
        add("zincblende", f, name, _bulk(f, "zincblende", a=a))
    for f, (name, a, c) in WURTZITE.items():
        add("wurtzite", f, name, _bulk(f, "wurtzite", a=a, c=c))
    for f, (name, a) in FLUORITE.items():
        (cation, _), (anion, _) = _species(f)
        add("fluorite", f, name, _cubic([cation, anion], [(0, 0, 0), (0.25, 0.25, 0.25)], 225, a))
    for f, (name, a) in ANTIFLUORITE.items():
        (cation, _), (anion, _) = _species(f)
        add("antifluorite", f, name, _cubic([anion, cation], [(0, 0, 0), (0.25, 0.25, 0.25)], 225, a))
    for f, (name, a, c, u) in RUTILE.items():
        (cation, _), (anion, _) = _species(f)
        add("rutile", f, name, _rutile(cation, anion, a, c, u))
    for f, (name, a) in PEROVSKITE_CUBIC.items():
        (A, _), (B, _), (X, _) = _species(f)
        add("perovskite-cubic", f, name, _cubic([A, B, X], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], 221, a))
    for f, (name, a, c, zb, zo1, zo2) in PEROVSKITE_TETRAGONAL.items():
        (A, _), (B, _), (X, _) = _species(f)
        basis = [(0, 0, 0), (0.5, 0.5, zb), (0.5, 0.5, zo1), (0.5, 0, zo2)]
        add("perovskite-tetragonal", f, name, _tetragonal([A, B, X, X], basis, 99, a, c))
    for f, (name, a, bond) in VACANCY_ORDERED_DOUBLE_PEROVSKITE.items():
        (A, _), (B, _), (X, _) = _species(f)
        basis = [(0.25, 0.25, 0.25), (0, 0, 0), (bond / a, 0, 0)]
        add("double-perovskite-vacancy-ordered", f, name, _cubic([A, B, X], basis, 225, a))
    for f, (name, a, bond) in ELPASOLITE.items():
        (A, _), (B, _), (B2, _), (X, _) = _species(f)
        basis = [(0.25, 0.25, 0.25), (0, 0, 0), (0.5, 0.5, 0.5), (bond / a, 0, 0)]
        add("double-perovskite-elpasolite", f, name, _cubic([A, B, B2, X], basis, 225, a))
    for f, (name, a) in HEUSLER.items():
        (X, _), (Y, _), (Z, _) = _species(f)
        add("heusler", f, name, _cubic([X, Y, Z], [(0.25, 0.25, 0.25), (0, 0, 0), (0.5, 0.5, 0.5)], 225, a))
    for f, (name, a) in HALF_HEUSLER.items():
        (X, _), (Y, _), (Z, _) = _species(f)
        add("half-heusler", f, name, _cubic([Z, X, Y], [(0, 0, 0), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)], 216, a))
    for f, (name, a) in L12.items():
        (X, _), (Y, _) = _species(f)
        add("L12", f, name, _cubic([Y, X], [(0, 0, 0), (0, 0.5, 0.5)], 221, a))
    for f, (name, a) in A15.items():
        (X, _), (Y, _) = _species(f)
        add("A15", f, name, _cubic([Y, X], [(0, 0, 0), (0.25, 0, 0.5)], 223, a))
    for f, (name, a) in ANTIPEROVSKITE.items():
        (X, _), (B, _), (A, _) = _species(f)  # Li3OCl: Li on the faces, O at the centre, Cl at the corner
        add("antiperovskite", f, name, _cubic([A, B, X], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], 221, a))
    for f, (name, a) in REO3_TYPE.items():
        (B, _), (X, _) = _species(f)
        add("ReO3-type", f, name, _cubic([B, X], [(0, 0, 0), (0.5, 0, 0)], 221, a))
    return out


def _rutile(cation: str, anion: str, a: float, c: float, u: float) -> Callable[[], Atoms]:
    return lambda: _spacegroup_crystal([cation, anion], [(0, 0, 0), (u, u, 0)], 136, [a, a, c, 90, 90, 90])


def _tetragonal(symbols, basis, spacegroup: int, a: float, c: float) -> Callable[[], Atoms]:
    return lambda: _spacegroup_crystal(symbols, basis, spacegroup, [a, a, c, 90, 90, 90])


def _element_name(symbol: str) -> str:
    from ase.data import atomic_numbers

    names = {
        3: "lithium", 4: "beryllium", 11: "sodium", 12: "magnesium", 13: "aluminium", 19: "potassium", 20: "calcium",
        22: "titanium", 23: "vanadium", 24: "chromium", 26: "iron", 27: "cobalt", 28: "nickel", 29: "copper",
        30: "zinc", 37: "rubidium", 38: "strontium", 40: "zirconium", 41: "niobium", 42: "molybdenum",
        45: "rhodium", 46: "palladium", 47: "silver", 48: "cadmium", 55: "caesium", 56: "barium", 73: "tantalum",
        74: "tungsten", 77: "iridium", 78: "platinum", 79: "gold", 82: "lead",
    }
    return names.get(atomic_numbers[symbol], symbol)


BUILTIN_MATERIALS: tuple[Material, ...] = tuple(_materials())
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(m.family for m in BUILTIN_MATERIALS))


def builtin_materials(
    families: Iterable[str] | None = None, ids: Iterable[str] | None = None, interleave: bool = True
) -> list[Material]:
    """Built-in materials, optionally filtered by family or id.

    ``interleave`` orders them round-robin over families, so that a run stopped early (or a
    ``limit``) still covers every family.
    """
    chosen = list(BUILTIN_MATERIALS)
    if families is not None:
        families = list(families)
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise KeyError(f"unknown structure famil(ies) {unknown}; known: {', '.join(FAMILIES)}")
        chosen = [m for m in chosen if m.family in families]
    if ids is not None:
        ids = list(ids)
        known = {m.material_id for m in BUILTIN_MATERIALS}
        unknown = sorted(set(ids) - known)
        if unknown:
            raise KeyError(f"unknown built-in material id(s) {unknown}")
        chosen = [m for m in chosen if m.material_id in ids]
    if not interleave:
        return chosen
    by_family: dict[str, list[Material]] = {}
    for m in chosen:
        by_family.setdefault(m.family, []).append(m)
    queues = list(by_family.values())
    ordered = []
    for k in range(max((len(q) for q in queues), default=0)):
        ordered.extend(q[k] for q in queues if k < len(q))
    return ordered


def elements_of(materials: Iterable[Material]) -> set[str]:
    """Chemical elements used by the given materials (from their formulas, without building them)."""
    return {el for m in materials for el, _ in _species(m.formula)}


def formula_reduced(atoms: Atoms) -> str:
    """Reduced formula in OPTIMADE order (elements alphabetical, counts divided by their gcd)."""
    symbols, counts = np.unique(atoms.get_chemical_symbols(), return_counts=True)
    divisor = int(np.gcd.reduce(counts))
    return "".join(f"{s}{c // divisor if c // divisor > 1 else ''}" for s, c in zip(symbols, counts, strict=True))
