"""The potential anchored on DFT's harmonic force constants: DFT's harmonic part, the potential's anharmonicity.

About a fixed reference supercell R0 (the DFT geometry), with Φ_pot the potential's finite-displacement
FC2 at R0 and Φ_DFT DFT's FC2 in the same supercell:

    V(R0 + u) = V_pot(R0 + u) + F_pot(R0)·u − ½ uᵀ Φ_pot u + ½ uᵀ Φ_DFT u
    F(u)      = F_pot(R0 + u) − F_pot(R0) + Φ_pot u − Φ_DFT u

Its curvature at R0 is Φ_DFT (exactly, for the same finite-displacement scheme that gave Φ_pot), R0 is
an equilibrium (the potential's residual force there is removed), and every cubic and higher term is
the potential's. V(R0) = V_pot(R0) is kept so that free energies stay comparable with the potential's.

DFT's FC2 in any supercell of the primitive cell comes from its dynamical matrices at that supercell's
commensurate q-points (:func:`dft_force_constants`): exact in the DFT calculation's own supercell, a
Fourier interpolation in any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from generate.sscha.supercell import evaluate, to_matrix
from thermobench.potentials import OverlappingAtomsError


class AnchoringError(ValueError):
    """A structure that cannot be matched to the anchored potential's reference supercell."""


# ----------------------------------------------------------------------------------------------
# DFT's FC2 in the SSCHA supercell


def primitive_supercell_matrix(dft_phonon) -> np.ndarray:
    """The DFT calculation's supercell expressed on its primitive cell (integer 3×3; phonopy convention:
    supercell lattice = matrix @ primitive lattice)."""
    matrix = np.linalg.inv(np.asarray(dft_phonon.primitive_matrix, float)) @ np.asarray(dft_phonon.supercell_matrix, float)
    rounded = np.rint(matrix)
    if np.abs(matrix - rounded).max() > 1e-6:
        raise AnchoringError(f"the DFT supercell is not a supercell of its primitive cell (matrix {matrix.tolist()})")
    return rounded.astype(int)


def dft_force_constants(dft_phonon, cell: Atoms, supercell_matrix) -> np.ndarray:
    """DFT's FC2 (N, N, 3, 3, eV/Å²) in ``supercell_matrix`` of ``cell``, in the atom order of
    ``phonopy.Phonopy(cell, supercell_matrix).supercell`` (the SSCHA's supercell model).

    ``cell`` must be ``dft_phonon``'s primitive cell, atom for atom (phondb's crystals enter the generator
    as that cell). The dynamical matrices are taken without the non-analytic correction: the SSCHA
    supercell's force constants are short-ranged, as DFT's own supercell forces are.
    """
    from phonopy import Phonopy
    from phonopy.harmonic.dynmat_to_fc import DynmatToForceConstants

    from generate.harmonic.fidelity import same_setup_phonopy
    from generate.harmonic.phonons import to_phonopy_atoms

    primitive = dft_phonon.primitive
    positions = (cell.get_scaled_positions() - primitive.scaled_positions + 0.5) % 1 - 0.5
    if (len(cell) != len(primitive) or not np.allclose(cell.cell.array, primitive.cell, atol=1e-6)
            or np.abs(positions).max() > 1e-6 or list(cell.numbers) != list(primitive.numbers)):
        raise AnchoringError("the cell is not the DFT calculation's primitive cell (lattice, positions or species differ)")
    target = Phonopy(to_phonopy_atoms(cell), supercell_matrix=np.asarray(supercell_matrix), primitive_matrix=np.eye(3),
                     symprec=dft_phonon.symmetry.tolerance)
    short_range = same_setup_phonopy(dft_phonon, dft_phonon.unitcell)
    short_range.force_constants = dft_phonon.force_constants  # no NAC: short-range FC2
    converter = DynmatToForceConstants(target.primitive, target.supercell, is_full_fc=True)
    matrices = []
    for q in converter.commensurate_points:
        short_range.dynamical_matrix.run(q)
        matrices.append(short_range.dynamical_matrix.dynamical_matrix)
    converter.dynamical_matrices = np.array(matrices)
    converter.run()
    return np.real(np.asarray(converter.force_constants))


# ----------------------------------------------------------------------------------------------
# The anchored potential


@dataclass(frozen=True)
class AnchoredPotential:
    """A potential whose harmonic part about ``reference`` is replaced by ``fc_dft``.

    Serves every engine through ``evaluate_structures`` (:func:`generate.sscha.supercell.evaluate`).
    Structures must have the reference's lattice; their atoms are matched to the reference sites by
    position (minimum image), never by index, and forces come back in the structure's own order.
    """

    potential: object = field(repr=False)  # matgl Potential, ASE calculator, anything `evaluate` takes
    reference: Atoms  # R0, the DFT supercell
    fc_dft: np.ndarray = field(repr=False)  # (3N, 3N) eV/Å², reference order
    fc_potential: np.ndarray = field(repr=False)  # (3N, 3N) the potential's at R0, same scheme as the SSCHA start
    energy0_eV: float
    forces0_eV_A: np.ndarray = field(repr=False)  # (N, 3) the potential's residual forces at R0
    max_atoms_per_chunk: int = 2048

    @property
    def residual_max_force_eV_A(self) -> float:
        return float(np.linalg.norm(self.forces0_eV_A, axis=1).max())

    def displacements(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
        """(sites, u): the reference site of each atom and its displacement from it (Å, minimum image)."""
        return match_sites(self.reference, atoms)

    def evaluate_structures(self, structures: list[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        matched = [self.displacements(atoms) for atoms in structures]  # every check before any evaluation
        energies, forces = evaluate(self.potential, list(structures), self.max_atoms_per_chunk)
        out_e, out_f = np.empty(len(structures)), np.empty((len(structures), len(self.reference), 3))
        correction_matrix = self.fc_potential - self.fc_dft
        for k, (sites, u) in enumerate(matched):
            u_ref = np.zeros((len(self.reference), 3))
            u_ref[sites] = u
            flat = u_ref.reshape(-1)
            linear = correction_matrix @ flat  # (Φ_pot − Φ_DFT) u
            out_f[k] = np.asarray(forces[k]) - self.forces0_eV_A[sites] + linear.reshape(-1, 3)[sites]
            out_e[k] = (float(energies[k]) + float(np.sum(self.forces0_eV_A * u_ref))
                        - 0.5 * float(flat @ linear))
        return out_e, out_f


class DisplacementTooLargeError(AnchoringError, OverlappingAtomsError):
    """An atom at least as near another site of its element as its own: its displacement from R0 cannot be told
    from its position, the configuration has left the region the anchoring describes (as overlapping atoms do for
    the plain potential, so the SSCHA raises its stabilization floor the same way)."""


def match_sites(reference: Atoms, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Each atom's reference site by position and its displacement (Å, minimum image): the nearest site of its
    element, which must be nearer than every other site of its element and no other atom's.

    Refuses another lattice or composition; an atom at least as near another site of its element as its own, or
    two atoms on one site, is a :class:`DisplacementTooLargeError`.
    """
    if len(atoms) != len(reference):
        raise AnchoringError(f"structure has {len(atoms)} atoms, the anchored reference supercell {len(reference)}")
    if not np.allclose(atoms.cell.array, reference.cell.array, atol=1e-6):
        raise AnchoringError("structure's lattice differs from the anchored reference supercell's (fixed DFT lattice)")
    numbers, reference_numbers = np.asarray(atoms.numbers), np.asarray(reference.numbers)
    if sorted(numbers) != sorted(reference_numbers):
        raise AnchoringError("structure's composition differs from the anchored reference supercell's")
    cell = reference.cell.array
    delta = atoms.get_scaled_positions(wrap=False)[:, None, :] - reference.get_scaled_positions(wrap=False)[None, :, :]
    delta -= np.rint(delta)
    squared = np.sum((delta @ cell) ** 2, axis=-1)  # (n_atoms, n_sites), minimum image
    squared[numbers[:, None] != reference_numbers[None, :]] = np.inf  # only sites of the atom's element
    order = np.argsort(squared, axis=1)[:, :2]
    sites = order[:, 0]
    rows = np.arange(len(atoms))
    symbols = reference.get_chemical_symbols()
    tied = np.flatnonzero(squared[rows, order[:, 1]] <= squared[rows, sites]) if len(atoms) > 1 else []
    if len(tied):
        k = int(tied[0])
        raise DisplacementTooLargeError(
            f"an atom ({symbols[sites[k]]}) is {np.sqrt(squared[k, sites[k]]):.3f} Å from its nearest site and as near "
            "another site of its element: its displacement cannot be told from its position")
    if len(np.unique(sites)) != len(sites):
        values, counts = np.unique(sites, return_counts=True)
        raise DisplacementTooLargeError(f"two atoms are nearest to one {symbols[values[counts > 1][0]]} site: "
                                        "their displacements cannot be told from their positions")
    return sites, delta[rows, sites] @ cell


def central_force_constants(model, potential, displacement_A: float, max_atoms_per_chunk: int = 2048) -> tuple[np.ndarray, int]:
    """FC2 (3N, 3N) of ``potential`` about ``model``'s supercell by central finite differences (phonopy's ± displacements)
    of the forces minus those at R0, symmetrized as every SSCHA step (:func:`symmetrize_matrix`); returns
    (FC2, evaluations). Central differences keep the potential's residual force at R0 and its cubic terms out of Φ_pot."""
    from generate.sscha.supercell import symmetrize_matrix

    phonon = model.phonon
    phonon.generate_displacements(distance=displacement_A, is_plusminus=True)
    structures = [Atoms(c.symbols, cell=c.cell, scaled_positions=c.scaled_positions, pbc=True)
                  for c in [phonon.supercell, *phonon.supercells_with_displacements]]
    _, forces = evaluate(potential, structures, max_atoms_per_chunk)
    forces = np.asarray(forces)
    phonon.forces = forces[1:] - forces[0]
    phonon.produce_force_constants()
    return symmetrize_matrix(model, to_matrix(np.asarray(phonon.force_constants))), len(structures)


def anchor(potential, model, fc_dft: np.ndarray, displacement_A: float = 0.01,
           max_atoms_per_chunk: int = 2048) -> tuple[AnchoredPotential, int]:
    """The anchored potential about ``model``'s supercell (:class:`generate.sscha.supercell.SupercellModel`, R0 = its
    atoms) with ``fc_dft`` ((N, N, 3, 3) or (3N, 3N), R0's order): Φ_pot from :func:`central_force_constants`, the
    potential's energy and forces at R0. Returns (anchored potential, potential evaluations)."""
    reference = model.atoms
    n = len(reference)
    fc_dft = np.asarray(fc_dft, float)
    fc_dft = to_matrix(fc_dft) if fc_dft.ndim == 4 else fc_dft
    if fc_dft.shape != (3 * n, 3 * n):
        raise AnchoringError(f"fc_dft has shape {fc_dft.shape}, the {n}-atom reference supercell needs {(3 * n, 3 * n)}")
    energies, forces = evaluate(potential, [reference], max_atoms_per_chunk)
    fc_potential, evaluations = central_force_constants(model, potential, displacement_A, max_atoms_per_chunk)
    anchored = AnchoredPotential(potential=potential, reference=reference, fc_dft=0.5 * (fc_dft + fc_dft.T),
                                 fc_potential=fc_potential, energy0_eV=float(energies[0]),
                                 forces0_eV_A=np.asarray(forces[0], float), max_atoms_per_chunk=max_atoms_per_chunk)
    return anchored, evaluations + 1
