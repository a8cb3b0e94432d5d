"""A material's harmonic reference, the start of its SSCHA and the denominator of its labels.

``harmonic_reference: dft`` (the default) takes it from DFT wherever the source has DFT force constants
(phonondb): the crystal stays at DFT's geometry (no relaxation), DFT's FC2 is the harmonic result (mesh
frequencies, DOS and κ_harm with DFT's Born charges where phonondb has them), and the SSCHA runs on the
potential anchored to it (:mod:`generate.harmonic.anchoring`), so only the cubic and higher terms are the
potential's. Sources without DFT (the built-in metals, files) and ``harmonic_reference: potential`` take
everything from the potential at its own relaxed geometry, as thermobench-0.2 did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

REFERENCES = ("dft", "potential")


@dataclass(frozen=True)
class HarmonicReference:
    """What the SSCHA and the rows need from the harmonic stage, whichever route made it."""

    kind: str  # "dft" (anchored) or "potential"
    cell: Atoms  # the geometry every label of the material uses
    supercell_matrix: np.ndarray  # the SSCHA supercell
    harmonic: object = field(repr=False)  # HarmonicResult in the SSCHA supercell (no NAC: the supercell's own modes)
    large: object = field(repr=False)  # HarmonicResult of the q-mesh and DOS (NAC where DFT has Born charges)
    sscha_potential: object = field(repr=False)  # what the SSCHA evaluates: the anchored or the plain potential
    static_energy_eV_atom: float  # the potential's energy at ``cell``
    relax: object | None  # RelaxResult (potential route), None at DFT's geometry
    residual_max_force_eV_A: float  # the potential's largest force at ``cell``
    residual_pressure_GPa: float  # the potential's pressure at ``cell`` (−tr σ / 3)
    nac_params: dict | None  # DFT Born charges and dielectric tensor applied to the mesh and κ
    potential_fc2: np.ndarray | None = field(default=None, repr=False)  # (N, N, 3, 3) Φ_pot at DFT's geometry (dft route)

    @property
    def n_harmonic_evaluations(self) -> int:
        return int(self.harmonic.n_potential_evaluations)


def uses_dft(material, harmonic_reference: str) -> bool:
    return harmonic_reference == "dft" and getattr(material.build, "dft_phonons", None) is not None


def anchored_supercell(dft_phonon, cell: Atoms, supercell: dict) -> np.ndarray:
    """The SSCHA supercell of an anchored crystal: ``supercell.matrix`` when given, else DFT's own supercell where
    it fits ``supercell.max_atoms`` (DFT's FC2 there is exact, not interpolated), else the generator's choice."""
    from generate.harmonic.anchoring import primitive_supercell_matrix
    from generate.run.labels import choose_supercell

    if supercell.get("matrix") is not None:
        return choose_supercell(cell, 0, 10**9, supercell["matrix"])
    own = primitive_supercell_matrix(dft_phonon)
    size = len(cell) * round(abs(np.linalg.det(own)))
    if len(cell) < size <= int(supercell["max_atoms"]):
        return own
    return choose_supercell(cell, supercell["min_atoms"], supercell["max_atoms"], None, supercell["min_length_A"])


def residual_stress(atoms: Atoms, calculator) -> tuple[float, float]:
    """(largest force, eV/Å; pressure, GPa) of the potential at ``atoms``."""
    from ase.units import GPa

    atoms = atoms.copy()
    atoms.calc = calculator
    forces = np.asarray(atoms.get_forces())
    pressure = -float(np.trace(atoms.get_stress(voigt=False))) / 3 / GPa
    return float(np.linalg.norm(forces, axis=1).max()), pressure


def dft_reference(material, atoms: Atoms, loaded, settings) -> HarmonicReference:
    """The anchored route: DFT's geometry and FC2, the potential anchored to it in the SSCHA supercell."""
    from generate.harmonic.anchoring import anchor, dft_force_constants
    from generate.harmonic.embedding import supercell_phonopy
    from generate.harmonic.fidelity import same_setup_phonopy
    from generate.harmonic.phonons import phonon_properties
    from generate.sscha.supercell import supercell_model, symmetrize_matrix, to_blocks, to_matrix

    dft = material.build.dft_phonons()
    nac = dft.nac_params
    atoms = atoms.copy()
    atoms.set_masses(dft.primitive.masses)  # DFT's frequencies are phonopy's, with phonopy's masses
    matrix = anchored_supercell(dft, atoms, settings.supercell)
    sscha_settings = settings.sscha[0]
    model = supercell_model(atoms, matrix, sscha_settings)
    fc_dft = symmetrize_matrix(model, to_matrix(dft_force_constants(dft, atoms, matrix)))  # as every SSCHA step
    anchored, evaluations = anchor(loaded.model, model, fc_dft, sscha_settings.displacement_A,
                                   sscha_settings.max_atoms_per_chunk)
    supercell = supercell_phonopy(atoms, matrix, np.eye(3), sscha_settings.symprec, to_blocks(fc_dft))
    harmonic = phonon_properties(supercell, settings.harmonic_in(matrix), evaluations)
    mesh = same_setup_phonopy(dft, dft.unitcell)  # DFT's own supercell, with NAC below
    mesh.force_constants = dft.force_constants
    mesh.nac_params = nac
    large = phonon_properties(mesh, settings.harmonic, 0)
    max_force, pressure = residual_stress(atoms, loaded.calculator)
    return HarmonicReference(
        kind="dft", cell=atoms, supercell_matrix=np.asarray(matrix), harmonic=harmonic, large=large,
        sscha_potential=anchored, static_energy_eV_atom=anchored.energy0_eV / len(model.atoms), relax=None,
        residual_max_force_eV_A=max(max_force, anchored.residual_max_force_eV_A), residual_pressure_GPa=pressure,
        nac_params=nac, potential_fc2=to_blocks(anchored.fc_potential),
    )


def potential_reference(atoms: Atoms, loaded, settings, stage) -> HarmonicReference:
    """The potential route: relax with the potential, its FC2 in the SSCHA supercell and in the larger one of the mesh."""
    from generate.harmonic.phonons import harmonic_phonons
    from generate.harmonic.relax import relax
    from generate.run.records import sscha_supercells

    relaxed = stage("relax", relax, atoms, loaded.calculator, settings.relax)
    cell = relaxed.atoms
    cell.calc = None
    matrix, large_matrix = sscha_supercells(cell, settings.supercell, settings.harmonic)
    harmonic = stage("harmonic", harmonic_phonons, cell, loaded.model, settings.harmonic_in(matrix))
    large = harmonic
    if not np.array_equal(large_matrix, matrix):
        large = stage("harmonic", harmonic_phonons, cell, loaded.model, settings.harmonic_in(large_matrix))
    max_force, pressure = stage("harmonic", residual_stress, cell, loaded.calculator)
    return HarmonicReference(
        kind="potential", cell=cell, supercell_matrix=np.asarray(matrix), harmonic=harmonic, large=large,
        sscha_potential=loaded.model, static_energy_eV_atom=relaxed.energy_eV_atom, relax=relaxed,
        residual_max_force_eV_A=max_force, residual_pressure_GPa=pressure, nac_params=None,
    )
