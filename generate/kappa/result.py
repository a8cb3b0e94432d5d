"""κ settings and self-contained results (FC3 report, κ tables, mode contributions)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

TENSOR_COMPONENTS = ("xx", "yy", "zz", "yz", "xz", "xy")  # phono3py's Voigt order of κ

log = logging.getLogger("thermobench.kappa")  # progress; the CLI shows it on stderr


class Phono3pyFailure(RuntimeError):
    """phono3py or symfc failed on valid input (recorded in the result, not raised to the caller)."""


@dataclass(frozen=True)
class KappaSettings:
    temperatures_K: tuple[float, ...] = (300.0,)
    # A length in Å (n_i ≈ L·|b_i|, phonopy's rule: one sampling density for every cell) or three integers. 40 Å is
    # within 11×11×11's own convergence error of it on the anchoring panel at half its cost, and far cheaper on
    # large cells (SnO2: 8x8x12, 190 vs 419 CPU s; benchmarks/results/kappa_mesh).
    q_mesh: tuple[int, int, int] | float = 40.0
    method: str = "rta"  # rta | wigner
    isotope: bool = True  # isotope scattering from natural abundances
    unit_cell: str = "given"  # given | conventional: supercell matrices refer to this cell
    fc3_supercell_matrix: tuple | None = (2, 2, 2)  # 3 ints (diagonal) or 3x3
    fc2_supercell_matrix: tuple | None = None  # None: the FC3 supercell, or that of the FC2s passed in
    primitive_matrix: str | tuple | None = "auto"
    fc3_method: str = "finite_displacement"  # finite_displacement | random_fit | surrogate (generator only, see step)
    fc3_cutoff_A: float | None = None  # pair cutoff of the displacements (FD) or of the fitted FC3 (random_fit)
    fc3_displacement_A: float = 0.03
    fc3_n_snapshots: int | None = None  # random_fit; None: symfc's estimate of the minimum x 4
    fc2_displacement_A: float = 0.01  # harmonic FC2 by finite displacements, as generate.harmonic.phonons
    symprec: float = 1e-5
    imaginary_tolerance_THz: float = 0.1  # as generate.harmonic.phonons: ML potentials leave ±0.1 THz near Γ
    # Average the tetrahedron weights over degenerate bands: otherwise κ depends on the arbitrary
    # eigenvectors of degenerate subspaces (1e-12 eV/Å² of noise in FC2 moved Si's κ by 0.7 %).
    average_degenerate_weights: bool = True
    symmetrize_tetrahedra: bool = True  # weights equal at symmetry-equivalent q-points
    n_frequency_bins: int = 20  # per-mode contribution summary
    max_atoms_per_chunk: int = 2048
    seed: int = 0

    def __post_init__(self):
        from generate.run import checks

        for index, value in enumerate(checks.temperatures(self.temperatures_K, "kappa.temperatures_K")):
            if value == 0:
                raise checks.SettingsError(
                    f"kappa.temperatures_K[{index}] = 0 K: no phonons are excited to scatter, the RTA κ is infinite; use T > 0"
                )
        checks.mesh_or_length(self.q_mesh, "kappa.q_mesh")
        checks.choice(self.method, "kappa.method", ("rta", "wigner"))
        checks.choice(self.unit_cell, "kappa.unit_cell", ("given", "conventional"))
        for name in ("fc3_supercell_matrix", "fc2_supercell_matrix"):
            if getattr(self, name) is not None:
                checks.supercell_matrix(getattr(self, name), f"kappa.{name}")
        checks.choice(self.fc3_method, "kappa.fc3_method", ("finite_displacement", "random_fit", "surrogate"))
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
    solver: str = "phono3py"  # phono3py | symfc | none (FC3 given by a model)

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
    status: str  # ok | unstable | unphysical (κ above MAX_KAPPA_W_MK) | failed
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
