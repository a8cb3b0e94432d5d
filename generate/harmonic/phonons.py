"""Harmonic phonons of a relaxed crystal with phonopy: FC2, frequencies, bands, DOS, thermodynamics.

Forces come from ``thermobench.potentials.compute_forces`` (batched for matgl potentials, looped for
any ASE calculator). FC2 can also be taken from the potential's analytic Hessian.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

# Modes below this are imaginary. Machine-learned potentials leave acoustic branches at about
# +-0.1 THz near Gamma from numerical noise, so a smaller threshold would call stable crystals unstable.
IMAGINARY_TOLERANCE_THZ = 0.1
EV_PER_KJ_MOL = 1.0 / 96.485332
R_J_MOL_K = 8.314462618


@dataclass(frozen=True)
class HarmonicSettings:
    supercell_min_length_A: float = 10.0
    supercell_max_atoms: int | None = None  # above it: the largest balanced supercell within it (never Γ only)
    supercell_matrix: tuple | None = None  # overrides the minimum length when given
    primitive_matrix: str | tuple | None = "auto"
    displacement_A: float = 0.01
    symprec: float = 1e-5
    fc_method: str = "finite_displacement"  # or "hessian" (matgl potentials only)
    q_mesh: tuple[int, int, int] = (12, 12, 12)
    band_points: int = 51
    temperatures_K: tuple[float, ...] = (0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1000.0)
    imaginary_tolerance_THz: float = IMAGINARY_TOLERANCE_THZ

    def __post_init__(self):
        from generate.run import checks

        checks.positive(self.supercell_min_length_A, "harmonic.supercell_min_length_A")
        if self.supercell_max_atoms is not None:
            checks.positive(self.supercell_max_atoms, "harmonic.supercell_max_atoms", integer=True)
        if self.supercell_matrix is not None:
            checks.supercell_matrix(self.supercell_matrix, "harmonic.supercell_matrix")
        checks.positive(self.displacement_A, "harmonic.displacement_A")
        checks.positive(self.symprec, "harmonic.symprec")
        checks.choice(self.fc_method, "harmonic.fc_method", ("finite_displacement", "hessian"))
        checks.mesh(self.q_mesh, "harmonic.q_mesh")
        checks.temperatures(self.temperatures_K, "harmonic.temperatures_K")
        checks.positive(self.imaginary_tolerance_THz, "harmonic.imaginary_tolerance_THz", strict=False)


@dataclass(frozen=True)
class Thermodynamics:
    temperatures_K: np.ndarray
    free_energy_eV_atom: np.ndarray
    entropy_kB_atom: np.ndarray
    heat_capacity_kB_atom: np.ndarray

    def at(self, temperature_K: float) -> dict[str, float]:
        k = int(np.argmin(np.abs(self.temperatures_K - temperature_K)))
        if abs(self.temperatures_K[k] - temperature_K) > 1e-6:
            raise ValueError(f"{temperature_K} K is not among the computed temperatures")
        return {
            "free_energy_eV_atom": float(self.free_energy_eV_atom[k]),
            "entropy_kB_atom": float(self.entropy_kB_atom[k]),
            "heat_capacity_kB_atom": float(self.heat_capacity_kB_atom[k]),
        }


@dataclass(frozen=True)
class BandStructure:
    labels: list[str]
    distances: list[np.ndarray]  # one array per path segment
    frequencies_THz: list[np.ndarray]  # (n_points, n_bands) per segment


@dataclass(frozen=True)
class HarmonicResult:
    phonon: object = field(repr=False)  # the phonopy.Phonopy object, with force constants
    supercell_matrix: np.ndarray
    mesh_qpoints: np.ndarray
    mesh_weights: np.ndarray
    mesh_frequencies_THz: np.ndarray  # (n_q, n_bands), sorted per q-point by phonopy
    commensurate_qpoints: np.ndarray
    commensurate_frequencies_THz: np.ndarray
    band_structure: BandStructure
    dos_frequencies_THz: np.ndarray
    dos_states_per_THz: np.ndarray
    thermodynamics: Thermodynamics
    n_potential_evaluations: int
    imaginary_tolerance_THz: float

    @property
    def min_frequency_THz(self) -> float:
        return float(self.mesh_frequencies_THz.min())

    @property
    def n_imaginary_modes(self) -> int:
        """Modes on the q-mesh below -tolerance, counted once per irreducible q-point weight."""
        below = (self.mesh_frequencies_THz < -self.imaginary_tolerance_THz).sum(axis=1)
        return int((below * self.mesh_weights).sum())

    @property
    def is_stable(self) -> bool:
        return self.n_imaginary_modes == 0


def plane_spacings_A(lattice) -> np.ndarray:
    """Distances between the lattice planes of each pair of cell vectors (volume over face area), in Å: the
    smallest is twice the largest sphere the cell holds unwrapped, also for oblique cells."""
    cell = np.asarray(lattice, dtype=float)
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])


def supercell_matrix_for_min_length(atoms: Atoms, min_length_A: float) -> np.ndarray:
    """Smallest diagonal supercell whose lattice-plane spacings are all at least ``min_length_A``, so images of an
    atom are at least that far apart in every direction (:func:`plane_spacings_A`)."""
    return np.diag([max(1, int(np.ceil(min_length_A / s - 1e-8))) for s in plane_spacings_A(atoms.cell.array)])


def mesh_frequency_mae(reference_THz: np.ndarray, candidate_THz: np.ndarray, weights: np.ndarray) -> float:
    """Mean |Δν| over every band of a q-mesh (bands sorted per q-point), q-points weighted by ``weights``."""
    absolute = np.abs(np.sort(candidate_THz, 1) - np.sort(reference_THz, 1))
    weights = np.asarray(weights, float)
    return float(absolute.mean(axis=1) @ weights / weights.sum())


def mesh_mean_frequency_change(reference_THz: np.ndarray, candidate_THz: np.ndarray, weights: np.ndarray) -> float:
    """Relative change of the q-weighted mean frequency, candidate vs reference (imaginary frequencies count as
    negative): the signed counterpart of :func:`mesh_frequency_mae`, negative for a softer candidate."""
    weights = np.asarray(weights, float)
    return float(np.asarray(candidate_THz).mean(axis=1) @ weights / (np.asarray(reference_THz).mean(axis=1) @ weights) - 1)


def to_phonopy_atoms(atoms: Atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(  # masses travel with the atoms (isotopes, user-set masses)
        symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array, scaled_positions=atoms.get_scaled_positions(),
        masses=atoms.get_masses(),
    )


_FRESH_PHONOPY: OrderedDict = OrderedDict()  # construction key -> a phonopy object never handed out
_FRESH_PHONOPY_SIZE = 8


def new_phonopy(unitcell, supercell_matrix, primitive_matrix, symprec: float):
    """``phonopy.Phonopy(unitcell, supercell_matrix, primitive_matrix, symprec)``, a fresh object each call.

    Its constructor searches the supercell's symmetry and atomic permutations (~1 s at 128 atoms), and one
    material builds the same supercell about ten times (harmonic reference, SSCHA, floor, embedding,
    modes, classical σᴬ); a deep copy of the first costs ~2 ms and is as independent as a new one."""
    import copy

    from phonopy import Phonopy

    matrix = np.asarray(supercell_matrix, dtype=int)
    primitive = primitive_matrix if isinstance(primitive_matrix, str) or primitive_matrix is None else np.asarray(
        primitive_matrix, dtype=float)
    key = (np.asarray(unitcell.cell, float).tobytes(), np.asarray(unitcell.scaled_positions, float).tobytes(),
           tuple(unitcell.symbols), np.asarray(unitcell.masses, float).tobytes(), matrix.shape, matrix.tobytes(),
           primitive if isinstance(primitive, str) or primitive is None else (primitive.shape, primitive.tobytes()),
           float(symprec))
    if key not in _FRESH_PHONOPY:
        _FRESH_PHONOPY[key] = Phonopy(unitcell, supercell_matrix=matrix, primitive_matrix=primitive, symprec=symprec)
        while len(_FRESH_PHONOPY) > _FRESH_PHONOPY_SIZE:
            _FRESH_PHONOPY.popitem(last=False)
    _FRESH_PHONOPY.move_to_end(key)
    return copy.deepcopy(_FRESH_PHONOPY[key])


def explicit_primitive_matrix(unitcell, primitive, symprec: float) -> np.ndarray:
    """The primitive matrix as numbers: "auto" resolved by phonopy from the symmetry of ``unitcell``.

    phonopy 4 warns when its "auto" default picks a non-identity cell; an explicit matrix is what
    was meant, gives the same numbers, and keeps the output free of that warning.
    """
    from phonopy.structure.cells import get_primitive_matrix_with_auto

    primitive = np.array(primitive) if isinstance(primitive, list | tuple) else primitive
    return get_primitive_matrix_with_auto(unitcell, primitive, symprec=symprec)


def to_ase_atoms(cell) -> Atoms:
    return Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)


def build_phonopy(atoms: Atoms, settings: HarmonicSettings):
    """A phonopy object for ``atoms`` with the configured supercell and primitive cell."""
    if settings.supercell_matrix is not None:
        matrix = np.array(settings.supercell_matrix)
        matrix = np.diag(matrix) if matrix.ndim == 1 else matrix
    elif settings.supercell_max_atoms is not None:
        from generate.run.labels import choose_supercell

        matrix = choose_supercell(atoms, 0, settings.supercell_max_atoms, None, settings.supercell_min_length_A)
    else:
        matrix = supercell_matrix_for_min_length(atoms, settings.supercell_min_length_A)
    unitcell = to_phonopy_atoms(atoms)
    primitive = explicit_primitive_matrix(unitcell, settings.primitive_matrix, settings.symprec)
    return new_phonopy(unitcell, matrix, primitive, settings.symprec)


def displaced_supercell_forces(phonon, model) -> int:
    """Set the forces of phonopy's displaced supercells from ``model``; returns the number of evaluations."""
    from thermobench.potentials import compute_forces

    supercells = [to_ase_atoms(cell) for cell in phonon.supercells_with_displacements]
    phonon.forces = np.array(compute_forces(model, supercells))
    return len(supercells)


def hessian_force_constants(phonon, potential) -> np.ndarray:
    """FC2 of the perfect supercell from the potential's analytic Hessian, phonopy's (N, N, 3, 3) layout."""
    from thermobench.potentials import ThermobenchCalculator

    calc_hessian = potential.calc_hessian
    potential.calc_hessian = True
    try:
        calculator = ThermobenchCalculator(potential, stress_unit="eV/A3")
        atoms = to_ase_atoms(phonon.supercell)
        atoms.calc = calculator
        atoms.get_potential_energy()
    finally:
        potential.calc_hessian = calc_hessian
    n = len(atoms)
    hessian = np.asarray(calculator.results["hessian"], dtype=float).reshape(n, 3, n, 3)
    return hessian.transpose(0, 2, 1, 3)


def force_constants(phonon, model, settings: HarmonicSettings) -> int:
    """Produce symmetrized FC2 on ``phonon``; returns the number of potential evaluations."""
    if settings.fc_method == "hessian":
        phonon.force_constants = hessian_force_constants(phonon, model)
        evaluations = 1
    elif settings.fc_method == "finite_displacement":
        phonon.generate_displacements(distance=settings.displacement_A)
        evaluations = displaced_supercell_forces(phonon, model)
        phonon.produce_force_constants()
    else:
        raise ValueError(f"fc_method must be 'finite_displacement' or 'hessian', not {settings.fc_method!r}")
    phonon.symmetrize_force_constants()
    return evaluations


def commensurate_qpoints(phonon) -> np.ndarray:
    """q-points of the primitive cell's reciprocal lattice that the supercell samples exactly."""
    from phonopy.harmonic.dynmat_to_fc import get_commensurate_points

    supercell_in_primitive = np.rint(np.linalg.inv(phonon.primitive_matrix) @ phonon.supercell_matrix).astype(int)
    return get_commensurate_points(supercell_in_primitive)


def band_structure(phonon, points: int) -> BandStructure:
    """Bands along the standard path of the primitive cell's Bravais lattice (ASE's special points)."""
    path = to_ase_atoms(phonon.primitive).cell.bandpath(npoints=0)
    segments, labels = [], []
    for branch in path.path.split(","):
        names = _split_labels(branch)
        labels.append(f"{labels.pop()}|{names[0]}" if labels else names[0])
        for start, end in zip(names[:-1], names[1:], strict=True):
            segments.append(np.linspace(path.special_points[start], path.special_points[end], points))
            labels.append(end)
    phonon.run_band_structure(segments)
    bands = phonon.get_band_structure_dict()
    return BandStructure(
        labels=[label.replace("G", "Γ") for label in labels],
        distances=[np.asarray(d) for d in bands["distances"]],
        frequencies_THz=[np.asarray(f) for f in bands["frequencies"]],
    )


def _split_labels(branch: str) -> list[str]:
    """'GXWKGLUWLK' -> ['G', 'X', 'W', 'K', 'G', 'L', 'U', 'W', 'L', 'K'] (digits belong to a label)."""
    labels: list[str] = []
    for char in branch:
        if char.isdigit() and labels:
            labels[-1] += char
        else:
            labels.append(char)
    return labels


def thermodynamics(phonon, temperatures_K) -> Thermodynamics:
    temperatures = np.asarray(temperatures_K, dtype=float)
    # The three zero-frequency Gamma acoustic modes carry no thermodynamics (translations).
    phonon.run_thermal_properties(temperatures=temperatures, exclude_gamma_acoustic=True)
    props = phonon.get_thermal_properties_dict()
    n_atoms = len(phonon.primitive)
    return Thermodynamics(
        temperatures_K=np.asarray(props["temperatures"]),
        free_energy_eV_atom=np.asarray(props["free_energy"]) * EV_PER_KJ_MOL / n_atoms,
        entropy_kB_atom=np.asarray(props["entropy"]) / R_J_MOL_K / n_atoms,
        heat_capacity_kB_atom=np.asarray(props["heat_capacity"]) / R_J_MOL_K / n_atoms,
    )


def phonon_properties(phonon, settings: HarmonicSettings, n_potential_evaluations: int, spectra: bool = True) -> HarmonicResult:
    """Everything downstream needs from a phonopy object that has force constants.

    ``spectra=False`` leaves out the band structure, DOS and commensurate frequencies (None): the
    mesh and the thermodynamics are what a comparison over hundreds of materials needs.
    """
    phonon.run_mesh(settings.q_mesh, is_gamma_center=True)
    mesh = phonon.get_mesh_dict()
    commensurate = commensurate_frequencies = bands = None
    dos = {"frequency_points": None, "total_dos": None}
    if spectra:
        commensurate = commensurate_qpoints(phonon)
        phonon.run_qpoints(commensurate)
        commensurate_frequencies = np.asarray(phonon.get_qpoints_dict()["frequencies"])
        bands = band_structure(phonon, settings.band_points)
        phonon.run_mesh(settings.q_mesh, is_gamma_center=True)
        phonon.run_total_dos()
        dos = phonon.get_total_dos_dict()
    return HarmonicResult(
        phonon=phonon,
        supercell_matrix=np.asarray(phonon.supercell_matrix),
        mesh_qpoints=np.asarray(mesh["qpoints"]),
        mesh_weights=np.asarray(mesh["weights"]),
        mesh_frequencies_THz=np.asarray(mesh["frequencies"]),
        commensurate_qpoints=None if commensurate is None else np.asarray(commensurate),
        commensurate_frequencies_THz=commensurate_frequencies,
        band_structure=bands,
        dos_frequencies_THz=None if dos["frequency_points"] is None else np.asarray(dos["frequency_points"]),
        dos_states_per_THz=None if dos["total_dos"] is None else np.asarray(dos["total_dos"]),
        thermodynamics=thermodynamics(phonon, settings.temperatures_K),
        n_potential_evaluations=n_potential_evaluations,
        imaginary_tolerance_THz=settings.imaginary_tolerance_THz,
    )


def harmonic_phonons(atoms: Atoms, model, settings: HarmonicSettings = HarmonicSettings(), nac_params=None) -> HarmonicResult:
    """Harmonic phonons of ``atoms`` (already relaxed) with a matgl potential or an ASE calculator."""
    phonon = build_phonopy(atoms, settings)
    if nac_params is not None:
        phonon.nac_params = nac_params
    evaluations = force_constants(phonon, model, settings)
    return phonon_properties(phonon, settings, evaluations)
