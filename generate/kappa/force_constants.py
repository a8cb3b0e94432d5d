"""phono3py objects and force constants from a potential: FC3 (finite displacements or a symfc fit),
harmonic FC2, and FC2s from another supercell matched atom by atom."""

from __future__ import annotations

import time

import numpy as np
from ase import Atoms

from generate.harmonic.phonons import plane_spacings_A, to_ase_atoms
from generate.kappa.result import FC3Report, KappaSettings, Phono3pyFailure
from thermobench.potentials import compute_forces

# ----------------------------------------------------------------------------------------------
# Building phono3py and the force constants


def _as_matrix(matrix) -> np.ndarray:
    m = np.array(matrix, dtype=int)
    return np.diag(m) if m.ndim == 1 else m


def unit_cell(atoms: Atoms, settings: KappaSettings) -> Atoms:
    """The cell the supercell matrices refer to: ``atoms`` itself, or its standard conventional cell."""
    if settings.unit_cell == "given":
        return atoms
    if settings.unit_cell != "conventional":
        raise ValueError(f"unit_cell must be 'given' or 'conventional', not {settings.unit_cell!r}")
    import spglib
    from ase.build import make_supercell

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    data = spglib.standardize_cell(cell, to_primitive=False, no_idealize=True, symprec=settings.symprec)
    if data is None:
        raise ValueError(f"spglib found no symmetry for {atoms.get_chemical_formula()} at symprec={settings.symprec}")
    # Replicate the given atoms onto the conventional lattice (no origin shift, so the atoms of
    # supercells built from either cell coincide).
    transform = data[0] @ np.linalg.inv(atoms.cell.array)
    if np.abs(transform - np.rint(transform)).max() > 1e-4:
        raise ValueError(f"the conventional cell of {atoms.get_chemical_formula()} is not an integer supercell of the given cell")
    return make_supercell(atoms, np.rint(transform).astype(int), wrap=True)


def supercell_matrix_between(unit: Atoms, supercell: Atoms) -> np.ndarray:
    """Integer S with supercell lattice (rows) = Sᵀ · unit lattice, phonopy's convention; raises if none."""
    s = (supercell.cell.array @ np.linalg.inv(unit.cell.array)).T
    rounded = np.rint(s)
    if np.abs(s - rounded).max() > 1e-4 or abs(np.linalg.det(rounded)) < 0.5:
        raise ValueError(
            f"the FC2 supercell (cell {supercell.cell.array.round(4).tolist()}) is not an integer supercell of the "
            f"unit cell {unit.cell.array.round(4).tolist()}"
        )
    return rounded.astype(int)


def build_phono3py(unit: Atoms, settings: KappaSettings, fc2_supercell_matrix=None, nac_params=None):
    """A Phono3py object: FC3 in ``fc3_supercell_matrix``, FC2 in ``fc2_supercell_matrix`` (default: the same)."""
    from phono3py import Phono3py

    from generate.harmonic.phonons import explicit_primitive_matrix, to_phonopy_atoms

    fc3_matrix = _as_matrix(settings.fc3_supercell_matrix)
    fc2_matrix = fc2_supercell_matrix if fc2_supercell_matrix is not None else settings.fc2_supercell_matrix
    fc2_matrix = fc3_matrix if fc2_matrix is None else _as_matrix(fc2_matrix)
    primitive = explicit_primitive_matrix(to_phonopy_atoms(unit), settings.primitive_matrix, settings.symprec)
    ph3 = Phono3py(
        to_phonopy_atoms(unit),
        supercell_matrix=fc3_matrix,
        phonon_supercell_matrix=fc2_matrix,
        primitive_matrix=primitive,
        symprec=settings.symprec,
        log_level=0,
    )
    if nac_params is not None:
        ph3.nac_params = nac_params
    return ph3


def minimum_random_snapshots(ph3, cutoff_A: float | None) -> int:
    """symfc's estimate of the fewest random snapshots that determine FC2 and FC3 jointly."""
    from phonopy.interface.symfc import SymfcFCSolver

    options = None if cutoff_A is None else {"cutoff": {3: cutoff_A}}
    estimate = SymfcFCSolver(ph3.supercell, symmetry=ph3.symmetry, options=options).estimate_numbers_of_supercells(orders=[2, 3])
    return int(sum(estimate.values()))


def fc3_from_potential(ph3, potential, settings: KappaSettings) -> FC3Report:
    """Set ``ph3.fc3`` from the potential's forces (finite displacements or symfc fit); FC2 is left alone.

    The perfect supercell's forces (one extra evaluation) are subtracted, so residual forces of a
    not quite relaxed structure do not leak into the force constants.
    """
    method = settings.fc3_method
    cutoff = settings.fc3_cutoff_A
    if method not in ("finite_displacement", "random_fit"):
        raise ValueError(f"fc3_method must be 'finite_displacement' or 'random_fit', not {method!r}")
    try:
        if method == "finite_displacement":
            ph3.generate_displacements(distance=settings.fc3_displacement_A, cutoff_pair_distance=cutoff)
        else:
            snapshots = settings.fc3_n_snapshots if settings.fc3_n_snapshots is not None else "auto"
            if snapshots != "auto":
                minimum = minimum_random_snapshots(ph3, cutoff)
                if snapshots < minimum:
                    raise ValueError(
                        f"{snapshots} random snapshot(s) cannot determine FC2 and FC3 of the "
                        f"{len(ph3.supercell)}-atom supercell: symfc needs at least {minimum}"
                    )
            ph3.generate_displacements(
                distance=settings.fc3_displacement_A, number_of_snapshots=snapshots, random_seed=settings.seed,
                cutoff_pair_distance=cutoff,
            )
    except Exception as error:  # noqa: BLE001
        raise Phono3pyFailure(f"FC3 displacements ({method}): {type(error).__name__}: {error}") from error
    cells = ph3.supercells_with_displacements
    evaluated = [k for k, cell in enumerate(cells) if cell is not None]
    structures = [to_ase_atoms(ph3.supercell)] + [to_ase_atoms(cells[k]) for k in evaluated]
    start = time.perf_counter()
    forces = np.array(compute_forces(potential, structures, settings.max_atoms_per_chunk))
    potential_time = time.perf_counter() - start
    all_forces = np.zeros((len(cells), len(ph3.supercell), 3))
    all_forces[evaluated] = forces[1:] - forces[0]
    ph3.forces = all_forces
    start = time.perf_counter()
    try:
        # symfc only where the cutoff sphere fits in the supercell (pairs unambiguous): there both solvers agree
        # (CsBr 128 atoms 1.3 %); past it they truncate images differently (rutile SnO2, 72 atoms: κ 58 vs 105 W/mK).
        solver = "symfc" if method == "random_fit" or (cutoff is not None and cutoff < 0.5 * plane_spacings_A(ph3.supercell.cell).min()) \
            else "phono3py"
        if method == "random_fit":
            options = None if cutoff is None else f"cutoff = {cutoff}"
            ph3.produce_fc3(fc_calculator="symfc", fc_calculator_options=options)
        elif solver == "symfc":
            # The same pair displacements solved by symfc within the same cutoff: phono3py's own solver completes the
            # cut pairs in an O(N³) Python loop (22 s on a 128-atom cell, symfc 1.3 s).
            try:
                ph3.produce_fc3(fc_calculator="symfc", fc_calculator_options=f"cutoff = {cutoff}")
            except Exception:  # noqa: BLE001 - symfc finds no basis where the cutoff wraps a tiny cell
                solver = "phono3py"
        if solver == "phono3py":
            ph3.produce_fc3()
            ph3.symmetrize_fc3()
    except Exception as error:  # noqa: BLE001
        raise Phono3pyFailure(f"FC3 solver ({method}): {type(error).__name__}: {error}") from error
    return FC3Report(
        method=method,
        supercell_matrix=np.asarray(ph3.supercell_matrix).tolist(),
        n_supercell_atoms=len(ph3.supercell),
        cutoff_A=cutoff,
        n_displacements=len(evaluated),
        n_potential_evaluations=len(structures),
        potential_wall_time_s=potential_time,
        fit_wall_time_s=time.perf_counter() - start,
        solver=solver,
    )


def fc3_from_model(ph3, model) -> FC3Report:
    """Set ``ph3.fc3`` from an FC3 model's ``fc3_for(ph3)`` (compact, e.g. the surrogate's cubic terms): no evaluations."""
    start = time.perf_counter()
    try:
        ph3.fc3 = model.fc3_for(ph3)
        ph3.symmetrize_fc3()  # the fit's own symmetry, to round-off; phono3py's finite-difference route does the same
    except Exception as error:  # noqa: BLE001
        raise Phono3pyFailure(f"FC3 from the model: {type(error).__name__}: {error}") from error
    return FC3Report(
        method="surrogate",
        supercell_matrix=np.asarray(ph3.supercell_matrix).tolist(),
        n_supercell_atoms=len(ph3.supercell),
        cutoff_A=None,
        n_displacements=0,
        n_potential_evaluations=0,
        potential_wall_time_s=0.0,
        fit_wall_time_s=time.perf_counter() - start,
        solver="none",
    )


def harmonic_fc2_from_potential(ph3, potential, settings: KappaSettings) -> tuple[np.ndarray, int]:
    """Harmonic FC2 in phono3py's phonon supercell by finite displacements; returns (FC2, evaluations)."""
    ph3.generate_fc2_displacements(distance=settings.fc2_displacement_A)
    cells = ph3.phonon_supercells_with_displacements
    structures = [to_ase_atoms(ph3.phonon_supercell)] + [to_ase_atoms(c) for c in cells]
    forces = np.array(compute_forces(potential, structures, settings.max_atoms_per_chunk))
    ph3.phonon_forces = forces[1:] - forces[0]
    ph3.produce_fc2()
    ph3.symmetrize_fc2()
    return np.array(ph3.fc2), len(structures)


class SitesNotMatchedError(ValueError):
    """The FC2 supercell's atoms are not within tolerance of phono3py's sites (e.g. SSCHA centroids of a distorted crystal)."""


def supercell_permutation(source: Atoms, target, tolerance_A: float = 0.3) -> np.ndarray:
    """perm with target atom i = source atom perm[i] (same periodic lattice, positions matched modulo it).

    ``source`` is the supercell in which FC2 was computed (e.g. ``SSCHAResult.supercell``, phonopy's
    order; its SSCHA centroids may have moved slightly), ``target`` phono3py's phonon supercell.
    """
    target_cell = np.asarray(target.cell)
    change = source.cell.array @ np.linalg.inv(target_cell)
    if np.abs(change - np.rint(change)).max() > 1e-4 or abs(abs(np.linalg.det(change)) - 1) > 1e-4:
        raise ValueError("the FC2 supercell and phono3py's phonon supercell are different lattices")
    source_frac = source.positions @ np.linalg.inv(target_cell)
    target_frac = np.asarray(target.scaled_positions)
    diff = source_frac[None, :, :] - target_frac[:, None, :]
    diff -= np.rint(diff)
    distance = np.linalg.norm(diff @ target_cell, axis=-1)  # (n_target, n_source)
    perm = distance.argmin(axis=1)
    worst = distance[np.arange(len(perm)), perm].max()
    if worst > tolerance_A or len(set(perm.tolist())) != len(perm):
        raise SitesNotMatchedError(f"cannot match the FC2 supercell's atoms to phono3py's (worst distance {worst:.3f} Å)")
    if list(source.get_chemical_symbols()[k] for k in perm) != list(target.symbols):
        raise ValueError("matched FC2 supercell atoms have different species")
    return perm


def reorder_fc2(fc2: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """(N, N, 3, 3) force constants in the target order given :func:`supercell_permutation`."""
    return np.ascontiguousarray(np.asarray(fc2)[np.ix_(perm, perm)])


# ----------------------------------------------------------------------------------------------
