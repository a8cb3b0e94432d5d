"""Lattice thermal conductivity κ with phono3py, for harmonic and SSCHA-renormalized FC2 with one FC3.

κ is computed in the relaxation-time approximation (``method="rta"``) or the Wigner formulation
(``"wigner"``: populations plus coherences, phono3py's SMM19), with isotope scattering from natural
abundances on by default and the non-analytic correction when Born charges are given.

Third-order force constants (FC3) come from the potential, either by finite displacements
(``fc3_method="finite_displacement"``: phono3py's pair displacements, optionally cut at
``fc3_cutoff_A``) or by a compressive-sensing fit (``"random_fit"``: supercells with every atom
displaced at random, fitted with symfc within ``fc3_cutoff_A``), which needs far fewer potential
calls. The same FC3 is then combined with two FC2s, the harmonic one and the SSCHA one
(:class:`generate.sscha.SSCHAResult`), giving ``kappa_ratio = κ_SSCHA(T) / κ_harmonic(T)``.

Entry points:

- :func:`compute_kappa` (atoms + potential -> :class:`KappaResult`), the function the generator uses;
- :func:`kappa_from_phono3py` (a :class:`phono3py.Phono3py` with FC3 already set, e.g. from a DFT
  dataset via :func:`load_phono3py_dataset`);
- :func:`pipeline_kappa_columns`, the ``kappa`` step of ``generate.pipeline``;
- ``python -m generate.kappa --structure Si --temperatures 300 --out kappa.json`` (settings in
  ``conf/kappa.yaml``).

A harmonically unstable crystal gets κ_harmonic = null with the reason (κ from the renormalized FC2
is still computed when that one is stable); a phono3py failure is recorded with its reason instead of
raised. Units: κ in W/(m·K), frequencies in THz, force constants in eV/Å², eV/Å³.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms

TENSOR_COMPONENTS = ("xx", "yy", "zz", "yz", "xz", "xy")  # phono3py's Voigt order of κ

log = logging.getLogger("thermobench.kappa")  # progress; the CLI shows it on stderr


class Phono3pyFailure(RuntimeError):
    """phono3py or symfc failed on valid input (recorded in the result, not raised to the caller)."""


@dataclass(frozen=True)
class KappaSettings:
    temperatures_K: tuple[float, ...] = (300.0,)
    q_mesh: tuple[int, int, int] = (11, 11, 11)
    method: str = "rta"  # rta | wigner
    isotope: bool = True  # isotope scattering from natural abundances
    unit_cell: str = "given"  # given | conventional: supercell matrices refer to this cell
    fc3_supercell_matrix: tuple | None = (2, 2, 2)  # 3 ints (diagonal) or 3x3
    fc2_supercell_matrix: tuple | None = None  # None: the FC3 supercell, or that of the FC2s passed in
    primitive_matrix: str | tuple | None = "auto"
    fc3_method: str = "finite_displacement"  # finite_displacement | random_fit
    fc3_cutoff_A: float | None = None  # pair cutoff of the displacements (FD) or of the fitted FC3 (random_fit)
    fc3_displacement_A: float = 0.03
    fc3_n_snapshots: int | None = None  # random_fit; None: symfc's estimate of the minimum x 4
    fc2_displacement_A: float = 0.01  # harmonic FC2 by finite displacements, as generate.harmonic
    symprec: float = 1e-5
    imaginary_tolerance_THz: float = 0.1  # as generate.harmonic: ML potentials leave ±0.1 THz near Γ
    # Average the tetrahedron weights over degenerate bands: otherwise κ depends on the arbitrary
    # eigenvectors of degenerate subspaces (1e-12 eV/Å² of noise in FC2 moved Si's κ by 0.7 %).
    average_degenerate_weights: bool = True
    symmetrize_tetrahedra: bool = True  # weights equal at symmetry-equivalent q-points
    n_frequency_bins: int = 20  # per-mode contribution summary
    max_atoms_per_chunk: int = 2048
    seed: int = 0

    def __post_init__(self):
        from generate import checks

        for index, value in enumerate(checks.temperatures(self.temperatures_K, "kappa.temperatures_K")):
            if value == 0:
                raise checks.SettingsError(
                    f"kappa.temperatures_K[{index}] = 0 K: no phonons are excited to scatter, the RTA κ is infinite; use T > 0"
                )
        checks.mesh(self.q_mesh, "kappa.q_mesh")
        checks.choice(self.method, "kappa.method", ("rta", "wigner"))
        checks.choice(self.unit_cell, "kappa.unit_cell", ("given", "conventional"))
        for name in ("fc3_supercell_matrix", "fc2_supercell_matrix"):
            if getattr(self, name) is not None:
                checks.supercell_matrix(getattr(self, name), f"kappa.{name}")
        checks.choice(self.fc3_method, "kappa.fc3_method", ("finite_displacement", "random_fit"))
        if self.fc3_cutoff_A is not None:
            checks.positive(self.fc3_cutoff_A, "kappa.fc3_cutoff_A")
        checks.positive(self.fc3_displacement_A, "kappa.fc3_displacement_A")
        if self.fc3_n_snapshots is not None:
            checks.positive(self.fc3_n_snapshots, "kappa.fc3_n_snapshots", integer=True)
        checks.positive(self.fc2_displacement_A, "kappa.fc2_displacement_A")
        checks.positive(self.symprec, "kappa.symprec")
        checks.positive(self.imaginary_tolerance_THz, "kappa.imaginary_tolerance_THz", strict=False)
        checks.positive(self.n_frequency_bins, "kappa.n_frequency_bins", integer=True)


@dataclass(frozen=True)
class FC3Report:
    method: str
    supercell_matrix: list
    n_supercell_atoms: int
    cutoff_A: float | None
    n_displacements: int  # supercells evaluated (finite displacements: those inside the cutoff)
    n_potential_evaluations: int
    potential_wall_time_s: float
    fit_wall_time_s: float  # FC3 solver (phono3py's finite differences or symfc)

    @property
    def wall_time_s(self) -> float:
        return self.potential_wall_time_s + self.fit_wall_time_s


@dataclass(frozen=True)
class ModeContributions:
    """Where κ comes from: the isotropic κ (trace/3) binned by phonon frequency, per temperature."""

    frequency_bin_edges_THz: list[float]
    kappa_per_bin_W_mK: list[list[float]]  # (n_T, n_bins)
    cumulative_kappa_W_mK: list[list[float]]  # (n_T, n_bins), κ of modes below each upper edge
    acoustic_fraction: list[float]  # (n_T,) share of the three lowest branches
    median_frequency_THz: list[float]  # (n_T,) half of κ comes from modes below this


@dataclass(frozen=True)
class KappaTable:
    """κ from one FC2 (with the shared FC3) at the requested temperatures."""

    label: str  # harmonic | renormalized
    status: str  # ok | unstable | failed
    reason: str | None
    temperatures_K: list[float]
    kappa_W_mK: list[list[float]] | None  # (n_T, 6) xx yy zz yz xz xy
    kappa_average_W_mK: list[float] | None  # (n_T,) trace / 3
    min_frequency_THz: float | None  # on the q-mesh
    n_imaginary_modes: int | None  # on the q-mesh, counted with the mesh weights
    contributions: ModeContributions | None = None
    kappa_populations_W_mK: list[list[float]] | None = None  # Wigner: particle-like part
    kappa_coherences_W_mK: list[list[float]] | None = None  # Wigner: wave-like part
    wall_time_s: float = 0.0

    def average_at(self, temperature_K: float) -> float | None:
        if self.kappa_average_W_mK is None:
            return None
        return self.kappa_average_W_mK[_temperature_index(self.temperatures_K, temperature_K)]


@dataclass(frozen=True)
class KappaResult:
    status: str  # ok | partial (one of the κ is null) | failed
    reason: str | None
    temperatures_K: list[float]
    harmonic: KappaTable | None
    renormalized: KappaTable | None
    kappa_ratio: list[float | None]  # κ_renormalized / κ_harmonic (trace/3), per temperature
    kappa_ratio_null_reason: str | None
    fc3: FC3Report | None
    n_potential_evaluations: int
    settings: KappaSettings
    wall_time_s: float = 0.0
    fc2_supercell_matrix: list | None = None
    nac: bool = False

    def to_json_dict(self) -> dict:
        out = asdict(self)
        out["settings"] = asdict(self.settings)
        if self.fc3 is not None:
            out["fc3"]["wall_time_s"] = self.fc3.wall_time_s
        return out


def _temperature_index(temperatures, temperature_K: float) -> int:
    k = int(np.argmin(np.abs(np.asarray(temperatures) - temperature_K)))
    if abs(temperatures[k] - temperature_K) > 1e-6:
        raise ValueError(f"{temperature_K} K is not among the computed temperatures {list(temperatures)}")
    return k


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

    from generate.harmonic import explicit_primitive_matrix, to_phonopy_atoms

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


def _to_ase(cell) -> Atoms:
    return Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)


def _forces(potential, structures: list[Atoms], max_atoms_per_chunk: int) -> np.ndarray:
    """Forces with ``evaluate_batch`` for a matgl Potential, ``compute_forces`` for an ASE calculator."""
    from thermobench.potentials import compute_forces

    try:
        from matgl.apps.pes import Potential
    except ImportError:  # matgl absent: only ASE calculators can be used
        Potential = ()
    if Potential and isinstance(potential, Potential):
        from thermobench.potentials import evaluate_batch

        return np.array(evaluate_batch(potential, structures, max_atoms_per_chunk=max_atoms_per_chunk).forces_eV_A)
    return np.array(compute_forces(potential, structures))


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
    structures = [_to_ase(ph3.supercell)] + [_to_ase(cells[k]) for k in evaluated]
    start = time.perf_counter()
    forces = _forces(potential, structures, settings.max_atoms_per_chunk)
    potential_time = time.perf_counter() - start
    all_forces = np.zeros((len(cells), len(ph3.supercell), 3))
    all_forces[evaluated] = forces[1:] - forces[0]
    ph3.forces = all_forces
    start = time.perf_counter()
    try:
        if method == "finite_displacement":
            ph3.produce_fc3()
            ph3.symmetrize_fc3()
        else:
            options = None if cutoff is None else f"cutoff = {cutoff}"
            ph3.produce_fc3(fc_calculator="symfc", fc_calculator_options=options)
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
    )


def harmonic_fc2_from_potential(ph3, potential, settings: KappaSettings) -> tuple[np.ndarray, int]:
    """Harmonic FC2 in phono3py's phonon supercell by finite displacements; returns (FC2, evaluations)."""
    ph3.generate_fc2_displacements(distance=settings.fc2_displacement_A)
    cells = ph3.phonon_supercells_with_displacements
    structures = [_to_ase(ph3.phonon_supercell)] + [_to_ase(c) for c in cells]
    forces = _forces(potential, structures, settings.max_atoms_per_chunk)
    ph3.phonon_forces = forces[1:] - forces[0]
    ph3.produce_fc2()
    ph3.symmetrize_fc2()
    return np.array(ph3.fc2), len(structures)


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
        raise ValueError(f"cannot match the FC2 supercell's atoms to phono3py's (worst distance {worst:.3f} Å)")
    if list(source.get_chemical_symbols()[k] for k in perm) != list(target.symbols):
        raise ValueError("matched FC2 supercell atoms have different species")
    return perm


def reorder_fc2(fc2: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """(N, N, 3, 3) force constants in the target order given :func:`supercell_permutation`."""
    return np.ascontiguousarray(np.asarray(fc2)[np.ix_(perm, perm)])


# ----------------------------------------------------------------------------------------------
# κ from one FC2


def fc2_supercell_matrix_of(ph3) -> np.ndarray:
    """phono3py's FC2 supercell matrix (the FC3 one when no separate phonon supercell was set)."""
    matrix = ph3.phonon_supercell_matrix
    return np.asarray(ph3.supercell_matrix if matrix is None else matrix)


def mesh_stability(ph3, fc2: np.ndarray, settings: KappaSettings) -> tuple[float, int]:
    """(min frequency, imaginary modes counted with weights) of ``fc2`` on the Γ-centred q-mesh."""
    from phonopy import Phonopy

    phonon = Phonopy(
        ph3.unitcell,
        supercell_matrix=fc2_supercell_matrix_of(ph3),
        primitive_matrix=ph3.primitive_matrix,
        symprec=settings.symprec,
    )
    phonon.force_constants = fc2
    if ph3.nac_params is not None:
        phonon.nac_params = ph3.nac_params
    phonon.run_mesh(list(settings.q_mesh), is_gamma_center=True)
    frequencies = np.asarray(phonon.mesh.frequencies)
    weights = np.asarray(phonon.mesh.weights)
    n_imaginary = int(((frequencies < -settings.imaginary_tolerance_THz).sum(axis=1) * weights).sum())
    return float(frequencies.min()), n_imaginary


def mode_contributions(conductivity, n_bins: int) -> ModeContributions:
    """Bin the isotropic mode κ (trace/3) by frequency. phono3py's mode_kappa carries the q-point
    weights, so its sum over q-points and bands divided by the grid size is κ. Wigner: each mode gets
    its row of the mode-κ matrix (its population term plus its coherences with the other bands)."""
    try:
        mode_kappa = np.asarray(conductivity.mode_kappa)[0]  # (n_T, n_q, n_bands, 6), first sigma
    except AttributeError:
        mode_kappa = np.asarray(conductivity.mode_kappa_matrix)[0].sum(axis=3)
    frequencies = np.asarray(conductivity.frequencies)  # (n_q, n_bands)
    n_grid = float(np.asarray(conductivity.grid_weights).sum())
    isotropic = mode_kappa[..., :3].mean(axis=-1) / n_grid  # (n_T, n_q, n_bands)
    edges = np.linspace(0.0, max(float(frequencies.max()), 1e-6) * (1 + 1e-9), n_bins + 1)
    index = np.clip(np.digitize(frequencies, edges) - 1, 0, n_bins - 1)  # below 0 (ignored modes) -> bin 0
    per_bin = np.zeros((isotropic.shape[0], n_bins))
    for b in range(n_bins):
        per_bin[:, b] = isotropic[:, index == b].sum(axis=1)
    cumulative = np.cumsum(per_bin, axis=1)
    total = isotropic.sum(axis=(1, 2))
    acoustic = isotropic[:, :, :3].sum(axis=(1, 2))
    order = np.argsort(frequencies.ravel())
    medians = []
    for t in range(isotropic.shape[0]):
        running = np.cumsum(isotropic[t].ravel()[order])
        k = int(np.searchsorted(running, 0.5 * running[-1])) if running[-1] > 0 else 0
        medians.append(float(frequencies.ravel()[order][min(k, len(order) - 1)]))
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(total > 0, acoustic / total, np.nan)
    return ModeContributions(
        frequency_bin_edges_THz=edges.tolist(),
        kappa_per_bin_W_mK=per_bin.tolist(),
        cumulative_kappa_W_mK=cumulative.tolist(),
        acoustic_fraction=[None if not np.isfinite(f) else float(f) for f in fraction],
        median_frequency_THz=medians,
    )


def conductivity(ph3, fc2: np.ndarray, settings: KappaSettings, label: str, temperatures_K=None) -> KappaTable:
    """κ with ``fc2`` and the FC3 set on ``ph3``; instability and phono3py failures are returned, not raised."""
    start = time.perf_counter()
    temperatures = [float(t) for t in (temperatures_K if temperatures_K is not None else settings.temperatures_K)]

    def table(status, reason, **kwargs) -> KappaTable:
        values = dict(kappa_W_mK=None, kappa_average_W_mK=None, min_frequency_THz=None, n_imaginary_modes=None)
        values.update(kwargs)
        return KappaTable(label=label, status=status, reason=reason, temperatures_K=temperatures,
                          wall_time_s=time.perf_counter() - start, **values)

    try:
        min_frequency, n_imaginary = mesh_stability(ph3, fc2, settings)
    except Exception as error:  # noqa: BLE001 - phonopy failure is recorded
        return table("failed", f"phonopy on the {label} FC2 failed: {type(error).__name__}: {error}")
    if n_imaginary > 0:
        return table(
            "unstable",
            f"{label} FC2 is dynamically unstable: {n_imaginary} imaginary mode(s) on the "
            f"{'x'.join(map(str, settings.q_mesh))} mesh below -{settings.imaginary_tolerance_THz} THz "
            f"(min {min_frequency:.3f} THz)",
            min_frequency_THz=min_frequency, n_imaginary_modes=n_imaginary,
        )
    if settings.method not in ("rta", "wigner"):
        raise ValueError(f"method must be 'rta' or 'wigner', not {settings.method!r}")
    try:
        ph3.fc2 = fc2
        ph3.mesh_numbers = list(settings.q_mesh)
        ph3.init_phph_interaction(
            average_degenerate_weights=settings.average_degenerate_weights,
            symmetrize_tetrahedra=settings.symmetrize_tetrahedra,
        )
        ph3.run_thermal_conductivity(
            temperatures=temperatures,
            is_isotope=settings.isotope,
            transport_type="SMM19" if settings.method == "wigner" else None,
        )
        result = ph3.thermal_conductivity
        kappa = np.asarray(result.kappa)[0]  # Wigner: populations + coherences
        extra = {}
        if settings.method == "wigner":
            extra = dict(kappa_populations_W_mK=np.asarray(result.kappa_intra)[0].tolist(),
                         kappa_coherences_W_mK=np.asarray(result.kappa_inter)[0].tolist())
        if not np.all(np.isfinite(kappa)):
            raise FloatingPointError(f"phono3py returned non-finite κ {kappa.tolist()}")
        contributions = mode_contributions(result, settings.n_frequency_bins)
    except Exception as error:  # noqa: BLE001 - a phono3py failure goes into the record
        return table("failed", f"phono3py κ with the {label} FC2 failed: {type(error).__name__}: {error}",
                     min_frequency_THz=min_frequency, n_imaginary_modes=n_imaginary)
    return table(
        "ok", None,
        kappa_W_mK=kappa.tolist(),
        kappa_average_W_mK=kappa[:, :3].mean(axis=1).tolist(),
        min_frequency_THz=min_frequency,
        n_imaginary_modes=n_imaginary,
        contributions=contributions,
        **extra,
    )


# ----------------------------------------------------------------------------------------------
# Harmonic and renormalized κ with one FC3


def _merge_tables(tables: list[KappaTable], temperatures: list[float], label: str) -> KappaTable:
    """One table from per-temperature tables (each renormalized FC2 belongs to its own temperature).
    A temperature whose FC2 is unstable or failed gets null entries; the others keep their κ."""
    if len(tables) == 1:
        return tables[0]
    rows = {t.temperatures_K[0]: t for t in tables}
    ordered = [rows[T] for T in temperatures]
    bad = [t for t in ordered if t.status != "ok"]
    good = [t for t in ordered if t.status == "ok"]

    def stack(name):
        values = [getattr(t, name)[0] if getattr(t, name) is not None else None for t in ordered]
        return None if all(v is None for v in values) else values

    def per_temperature(name):
        return [getattr(t.contributions, name)[0] if t.contributions is not None else None for t in ordered]

    contributions = None
    if good:
        contributions = ModeContributions(
            frequency_bin_edges_THz=good[0].contributions.frequency_bin_edges_THz,  # of the first stable FC2
            kappa_per_bin_W_mK=per_temperature("kappa_per_bin_W_mK"),
            cumulative_kappa_W_mK=per_temperature("cumulative_kappa_W_mK"),
            acoustic_fraction=per_temperature("acoustic_fraction"),
            median_frequency_THz=per_temperature("median_frequency_THz"),
        )
    statuses = {t.status for t in bad}
    return KappaTable(
        label=label,
        status="ok" if not bad else ("failed" if "failed" in statuses else "unstable"),
        reason="; ".join(f"{t.temperatures_K[0]:g} K: {t.reason}" for t in bad) or None,
        temperatures_K=temperatures,
        kappa_W_mK=stack("kappa_W_mK"),
        kappa_average_W_mK=stack("kappa_average_W_mK"),
        min_frequency_THz=min((t.min_frequency_THz for t in tables if t.min_frequency_THz is not None), default=None),
        n_imaginary_modes=max((t.n_imaginary_modes for t in tables if t.n_imaginary_modes is not None), default=None),
        contributions=contributions,
        kappa_populations_W_mK=stack("kappa_populations_W_mK"),
        kappa_coherences_W_mK=stack("kappa_coherences_W_mK"),
        wall_time_s=sum(t.wall_time_s for t in tables),
    )


def kappa_from_phono3py(
    ph3,
    settings: KappaSettings = KappaSettings(),
    *,
    fc2_harmonic: np.ndarray | None = None,
    fc2_renormalized: np.ndarray | Mapping[float, np.ndarray] | None = None,
    fc3_report: FC3Report | None = None,
    n_potential_evaluations: int = 0,
) -> KappaResult:
    """κ_harmonic, κ_renormalized and their ratio from a Phono3py object whose FC3 is set.

    FC2s are (N, N, 3, 3) in the order of ``ph3.phonon_supercell``. ``fc2_harmonic`` defaults to
    ``ph3.fc2``; ``fc2_renormalized`` is one array for every temperature or a mapping temperature ->
    array (the SSCHA FC2 of that temperature). Without it only κ_harmonic is computed.
    """
    start = time.perf_counter()
    temperatures = [float(t) for t in settings.temperatures_K]
    if ph3.fc3 is None:
        raise ValueError("ph3 has no FC3: produce or set it before kappa_from_phono3py")
    fc2_harmonic = np.array(ph3.fc2) if fc2_harmonic is None and ph3.fc2 is not None else fc2_harmonic
    harmonic = None if fc2_harmonic is None else conductivity(ph3, fc2_harmonic, settings, "harmonic", temperatures)
    renormalized = None
    if fc2_renormalized is not None:
        if isinstance(fc2_renormalized, Mapping):
            by_temperature = {float(t): np.asarray(fc) for t, fc in fc2_renormalized.items()}
            missing = [t for t in temperatures if not any(abs(t - k) < 1e-6 for k in by_temperature)]
            if missing:
                raise ValueError(f"no renormalized FC2 for {missing} K (have {sorted(by_temperature)})")
            tables = [
                conductivity(ph3, by_temperature[min(by_temperature, key=lambda k: abs(k - t))], settings, "renormalized", [t])
                for t in temperatures
            ]
            renormalized = _merge_tables(tables, temperatures, "renormalized")
        else:
            renormalized = conductivity(ph3, np.asarray(fc2_renormalized), settings, "renormalized", temperatures)
    ratio, ratio_reason = [None] * len(temperatures), None
    if harmonic is None or renormalized is None:
        ratio_reason = "no renormalized FC2 given" if renormalized is None else "no harmonic FC2 given"
    else:
        harm = harmonic.kappa_average_W_mK or [None] * len(temperatures)
        ren = renormalized.kappa_average_W_mK or [None] * len(temperatures)
        ratio = [r / h if r is not None and h is not None and h > 0 else None for r, h in zip(ren, harm, strict=True)]
        if harmonic.status != "ok":
            ratio_reason = f"κ_harmonic is null: {harmonic.reason}"
        elif renormalized.status != "ok":
            ratio_reason = f"κ_renormalized is null: {renormalized.reason}"
        elif any(r is None for r in ratio):
            ratio_reason = "κ_harmonic is zero"
    tables = [t for t in (harmonic, renormalized) if t is not None]
    n_ok = sum(t.status == "ok" for t in tables)
    status = "ok" if tables and n_ok == len(tables) else ("partial" if n_ok else "failed")
    reason = "; ".join(t.reason for t in tables if t.reason) or (None if tables else "no FC2 given")
    return KappaResult(
        status=status,
        reason=reason,
        temperatures_K=temperatures,
        harmonic=harmonic,
        renormalized=renormalized,
        kappa_ratio=ratio,
        kappa_ratio_null_reason=ratio_reason,
        fc3=fc3_report,
        n_potential_evaluations=n_potential_evaluations,
        settings=settings,
        wall_time_s=time.perf_counter() - start,
        fc2_supercell_matrix=fc2_supercell_matrix_of(ph3).tolist(),
        nac=ph3.nac_params is not None,
    )


def _failed(settings: KappaSettings, reason: str, fc3: FC3Report | None, evaluations: int, start: float) -> KappaResult:
    return KappaResult(
        status="failed", reason=reason, temperatures_K=[float(t) for t in settings.temperatures_K],
        harmonic=None, renormalized=None, kappa_ratio=[None] * len(settings.temperatures_K),
        kappa_ratio_null_reason=reason, fc3=fc3, n_potential_evaluations=evaluations, settings=settings,
        wall_time_s=time.perf_counter() - start,
    )


def compute_kappa(
    atoms: Atoms,
    potential,
    settings: KappaSettings = KappaSettings(),
    *,
    fc2_renormalized: np.ndarray | Mapping[float, np.ndarray] | None = None,
    fc2_supercell: Atoms | None = None,
    fc2_harmonic: np.ndarray | None = None,
    nac_params: dict | None = None,
) -> KappaResult:
    """κ of ``atoms`` (relaxed) with a matgl Potential or an ASE calculator, harmonic and renormalized.

    ``fc2_renormalized``: (N, N, 3, 3) SSCHA force constants (``SSCHAResult.force_constants_eV_A2``),
    or a mapping temperature -> array. ``fc2_supercell``: the supercell those arrays are ordered in
    (``SSCHAResult.supercell``); it fixes the FC2 supercell of both κ and is matched atom by atom to
    phono3py's phonon supercell. Without it the arrays must already be in phono3py's order for
    ``settings.fc2_supercell_matrix``. ``fc2_harmonic`` (same order) skips the harmonic finite
    displacements (e.g. ``SSCHAResult.harmonic_force_constants_eV_A2``). ``nac_params``: phonopy's
    {"born", "dielectric", "factor"} for the non-analytic correction.

    A phono3py failure while fitting FC3 or computing κ is returned as ``status="failed"`` with the
    reason; bad input (shapes, lattices, unknown elements) raises.
    """
    start = time.perf_counter()
    unit = unit_cell(atoms, settings)
    fc2_matrix = None if fc2_supercell is None else supercell_matrix_between(unit, fc2_supercell)
    ph3 = build_phono3py(unit, settings, fc2_matrix, nac_params)
    n_fc2 = len(ph3.phonon_supercell)
    perm = None
    if fc2_supercell is not None:
        perm = supercell_permutation(fc2_supercell, ph3.phonon_supercell)

    def prepare(fc2, name):
        fc2 = np.asarray(fc2, dtype=float)
        if fc2.shape != (n_fc2, n_fc2, 3, 3):
            raise ValueError(f"{name} has shape {fc2.shape}; phono3py's FC2 supercell needs {(n_fc2, n_fc2, 3, 3)}")
        return fc2 if perm is None else reorder_fc2(fc2, perm)

    if fc2_renormalized is not None:
        if isinstance(fc2_renormalized, Mapping):
            fc2_renormalized = {t: prepare(fc, f"fc2_renormalized[{t}]") for t, fc in fc2_renormalized.items()}
        else:
            fc2_renormalized = prepare(fc2_renormalized, "fc2_renormalized")
    evaluations = 0
    if fc2_harmonic is not None:
        fc2_harmonic = prepare(fc2_harmonic, "fc2_harmonic")
    else:
        log.info("harmonic FC2: %d-atom supercell", n_fc2)
        fc2_harmonic, evaluations = harmonic_fc2_from_potential(ph3, potential, settings)
    log.info("FC3 (%s) in the %d-atom supercell", settings.fc3_method, len(ph3.supercell))
    try:
        report = fc3_from_potential(ph3, potential, settings)
    except Phono3pyFailure as error:
        return _failed(settings, str(error), None, evaluations, start)
    evaluations += report.n_potential_evaluations
    log.info("FC3 done (%d potential evaluations, %.0f s); κ (%s) on a %s q-mesh at %s K",
             report.n_potential_evaluations, report.wall_time_s, settings.method, "x".join(map(str, settings.q_mesh)),
             ", ".join(f"{t:g}" for t in settings.temperatures_K))
    result = kappa_from_phono3py(
        ph3, settings, fc2_harmonic=fc2_harmonic, fc2_renormalized=fc2_renormalized, fc3_report=report,
        n_potential_evaluations=evaluations,
    )
    from dataclasses import replace

    return replace(result, wall_time_s=time.perf_counter() - start)


def load_phono3py_dataset(
    phono3py_yaml, forces_fc3=None, forces_fc2=None, *, symmetrize: bool = True, nac: bool = True
):
    """A Phono3py object with FC3 and FC2 from a phono3py displacement dataset and its forces
    (e.g. a DFT calculation: ``phono3py_disp.yaml`` + ``FORCES_FC3``), by finite differences,
    symmetrized as ``phono3py-load`` does. Never reads fc*.hdf5 from the working directory."""
    import phono3py

    ph3 = phono3py.load(
        phono3py_yaml, forces_fc3_filename=forces_fc3, forces_fc2_filename=forces_fc2, produce_fc=False,
        is_nac=nac, log_level=0,
    )
    if ph3.dataset is None or ph3.forces is None:
        raise ValueError(f"{phono3py_yaml}: no FC3 displacement dataset with forces (FORCES_FC3 given: {forces_fc3})")
    ph3.produce_fc3()
    if symmetrize:
        ph3.symmetrize_fc3()
    if ph3.phonon_supercell_matrix is not None and ph3.phonon_dataset is not None:
        ph3.produce_fc2()
    if symmetrize and ph3.fc2 is not None:
        ph3.symmetrize_fc2()
    return ph3


# ----------------------------------------------------------------------------------------------
# Pipeline step


def settings_from_dict(values: Mapping | None) -> KappaSettings:
    """KappaSettings from a plain mapping (YAML); lists become tuples; unknown keys are an error."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(values, resolve=True) if OmegaConf.is_config(values) else dict(values or {})
    known = set(KappaSettings.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown kappa setting(s) {unknown}; known: {sorted(known)}")

    def convert(v):
        return tuple(convert(x) for x in v) if isinstance(v, list | tuple) else v

    return KappaSettings(**{k: convert(v) for k, v in values.items()})


def pipeline_kappa_columns(cell: Atoms, supercell_matrix, model, harmonic, results, cfg: Mapping) -> list[dict]:
    """``generate.pipeline``'s κ step: one dict of the four κ columns per SSCHA result (temperature).

    FC2s are the pipeline's own (harmonic and SSCHA, in ``supercell_matrix``); FC3 is computed once
    in ``cfg["fc3_supercell_matrix"]`` (default: the same supercell). κ is the isotropic average.
    """
    values = {k: v for k, v in dict(cfg).items() if k != "enabled"}
    values.setdefault("fc3_supercell_matrix", np.asarray(supercell_matrix).tolist())
    values["temperatures_K"] = [float(r.temperature_K) for r in results]
    settings = settings_from_dict(values)
    result = compute_kappa(
        cell, model, settings,
        fc2_renormalized={float(r.temperature_K): r.force_constants_eV_A2 for r in results},
        fc2_supercell=results[0].supercell,
        fc2_harmonic=results[0].harmonic_force_constants_eV_A2,
    )
    rows = []
    harmonic_kappa = (result.harmonic.kappa_average_W_mK if result.harmonic else None) or [None] * len(results)
    renormalized_kappa = (result.renormalized.kappa_average_W_mK if result.renormalized else None) or [None] * len(results)
    for k in range(len(settings.temperatures_K)):
        ratio = result.kappa_ratio[k]
        rows.append({
            "kappa_harmonic_W_mK": harmonic_kappa[k],
            "kappa_renormalized_W_mK": renormalized_kappa[k],
            "kappa_ratio": ratio,
            "kappa_null_reason": None if ratio is not None else (result.kappa_ratio_null_reason or result.reason),
        })
    return rows


# ----------------------------------------------------------------------------------------------
# Command line


def load_config(argv: list[str] | None = None):
    """conf/kappa.yaml, then --config FILE, then the flags, then --set key=value overrides."""
    import argparse
    from pathlib import Path

    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(prog="python -m generate.kappa", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML merged over conf/kappa.yaml")
    parser.add_argument("--structure", help="built-in name (thermobench.structures) or structure file")
    parser.add_argument("--potential", help="potential name or model directory")
    parser.add_argument("--temperatures", type=float, nargs="+", help="K")
    parser.add_argument("--q-mesh", type=int, nargs=3, metavar=("N1", "N2", "N3"))
    parser.add_argument("--fc3-supercell", type=int, nargs=3, metavar=("N1", "N2", "N3"), help="of the unit cell")
    parser.add_argument("--fc3-method", choices=["finite_displacement", "random_fit"])
    parser.add_argument("--fc3-cutoff", type=float, help="Å")
    parser.add_argument("--method", choices=["rta", "wigner"])
    parser.add_argument("--no-isotope", action="store_true", help="leave out isotope scattering")
    parser.add_argument("--no-sscha", action="store_true", help="harmonic κ only")
    parser.add_argument("--born", help="phonopy BORN file (Born charges, dielectric tensor) for NAC")
    parser.add_argument("--no-relax", action="store_true", help="use the structure as given")
    parser.add_argument("--out", help="JSON result file")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. kappa.fc3_cutoff_A=4.5")
    args = parser.parse_args(argv)
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "kappa.yaml")
    if args.config:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(args.config))
    flags = {
        "structure": args.structure,
        "potential": args.potential,
        "out": args.out,
        "born_file": args.born,
        "kappa.temperatures_K": args.temperatures,
        "kappa.q_mesh": list(args.q_mesh) if args.q_mesh else None,
        "kappa.fc3_supercell_matrix": list(args.fc3_supercell) if args.fc3_supercell else None,
        "kappa.fc3_method": args.fc3_method,
        "kappa.fc3_cutoff_A": args.fc3_cutoff,
        "kappa.method": args.method,
        "kappa.isotope": False if args.no_isotope else None,
        "sscha.enabled": False if args.no_sscha else None,
        "relax": False if args.no_relax else None,
    }
    for key, value in flags.items():
        if value is not None:
            OmegaConf.update(cfg, key, value)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.set))


def read_nac_params(born_file, atoms: Atoms, settings: KappaSettings) -> dict:
    """phonopy's NAC parameters from a BORN file for the primitive cell of ``atoms``."""
    from pathlib import Path

    from phonopy import Phonopy
    from phonopy.file_IO import parse_BORN

    from generate.harmonic import explicit_primitive_matrix, to_phonopy_atoms

    if not Path(born_file).is_file():
        raise FileNotFoundError(f"BORN file {born_file} does not exist")
    unitcell = to_phonopy_atoms(atoms)
    primitive = explicit_primitive_matrix(unitcell, settings.primitive_matrix, settings.symprec)
    phonon = Phonopy(unitcell, primitive_matrix=primitive, symprec=settings.symprec)
    try:
        return parse_BORN(phonon.primitive, symprec=settings.symprec, filename=str(born_file))
    except Exception as error:
        raise ValueError(f"cannot read Born charges from {born_file}: {error}") from error


def run_from_config(cfg) -> tuple[KappaResult, dict]:
    """Relax (optional), SSCHA per temperature (optional), κ; returns the result and the JSON record."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from generate import checks
    from generate.relax import RelaxSettings, relax
    from generate.sscha import SSCHASettings, run_sscha
    from thermobench.potentials import check_structure, load_named_potential
    from thermobench.structures import load_structure

    # Every setting is checked before the structure is read or a potential evaluated.
    settings = settings_from_dict(OmegaConf.to_container(cfg.kappa, resolve=True))
    sscha_cfg = OmegaConf.to_container(cfg.sscha, resolve=True)
    sscha_enabled, supercell = sscha_cfg.pop("enabled"), sscha_cfg.pop("supercell")
    sscha_settings = {}
    if sscha_enabled:
        checks.supercell_matrix(supercell, "sscha.supercell")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in sscha_cfg.items()}
        sscha_settings = {t: SSCHASettings(**values, temperature_K=t) for t in settings.temperatures_K}
    if cfg.get("born_file") and not Path(cfg.born_file).is_file():
        raise FileNotFoundError(f"born_file {cfg.born_file} does not exist")
    atoms = load_structure(str(cfg.structure))
    loaded = load_named_potential(str(cfg.potential), device=cfg.device)  # a matgl checkpoint, or EMT (tests)
    check_structure(atoms, loaded.element_types, str(cfg.structure))
    potential = loaded.model
    if cfg.relax:
        log.info("relaxing %s", atoms.get_chemical_formula())
        atoms = relax(atoms, loaded.calculator, RelaxSettings()).atoms
    nac_params = read_nac_params(cfg.born_file, atoms, settings) if cfg.get("born_file") else None
    kwargs, sscha_summary = {}, []
    if sscha_enabled:
        fc2_by_temperature = {}
        for temperature in settings.temperatures_K:
            log.info("SSCHA at %g K (renormalized FC2)", temperature)
            sscha = run_sscha(atoms, potential, supercell, sscha_settings[temperature])
            fc2_by_temperature[float(temperature)] = sscha.force_constants_eV_A2
            kwargs.update(fc2_supercell=sscha.supercell, fc2_harmonic=sscha.harmonic_force_constants_eV_A2)
            sscha_summary.append({"temperature_K": temperature, "converged": sscha.converged, "status": sscha.status,
                                  "n_potential_evaluations": sscha.n_potential_evaluations,
                                  "wall_time_s": sscha.wall_time_s})
        kwargs["fc2_renormalized"] = fc2_by_temperature
    result = compute_kappa(atoms, potential, settings, nac_params=nac_params, **kwargs)
    record = result.to_json_dict()
    record["structure"] = str(cfg.structure)
    record["formula"] = atoms.get_chemical_formula()
    record["potential"] = {"name": loaded.name, "sha256": loaded.sha256}
    record["sscha"] = sscha_summary
    record["config"] = OmegaConf.to_container(cfg, resolve=True)
    return result, record


def main(argv: list[str] | None = None) -> KappaResult:
    from generate.atomic import write_json_atomically

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(argv)
    result, record = run_from_config(cfg)
    write_json_atomically(cfg.out, record)
    for T, ratio in zip(result.temperatures_K, result.kappa_ratio, strict=True):
        harm = result.harmonic.average_at(T) if result.harmonic else None
        ren = result.renormalized.average_at(T) if result.renormalized else None
        print(f"{record['formula']} {T:g} K: κ_harmonic {_fmt(harm)}, κ_renormalized {_fmt(ren)} W/(m·K), ratio {_fmt(ratio, 3)}")
    if result.reason:
        print(f"status {result.status}: {result.reason}")
    fc3 = result.fc3
    if fc3 is not None:
        print(f"FC3 ({fc3.method}, {fc3.n_supercell_atoms} atoms): {fc3.n_potential_evaluations} potential evaluations, "
              f"{fc3.wall_time_s:.1f} s; wrote {cfg.out}")
    return result


def _fmt(value, digits: int = 1) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def to_json(result: KappaResult) -> str:
    return json.dumps(result.to_json_dict(), indent=1)


if __name__ == "__main__":
    main()
