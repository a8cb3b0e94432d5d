"""Anharmonic fidelity panel: each potential's third-order force constants against public DFT sets.

    git clone https://github.com/phonopy/phono3py    # its example/ folder holds the DFT sets
    THERMOBENCH_MODELS=../shared/models OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.anharmonic_panel \\
        --examples phono3py/example [--potentials M3GNet-MP-2021.2.8-PES ...] \\
        [--work /work/bench-work/anharmonic_panel] [--out benchmarks/results/anharmonic_panel]

For phonondb crystals the generator takes the harmonic part (FC2) from DFT, so what a potential
contributes to a κ label is its cubic part. Every public DFT third-order set within reach is used
(phono3py's ``example/``; ``../shared/reference/dft-kappa/Si-PBEsol`` is byte-identical to its
Si-PBEsol): the potential is evaluated on exactly the DFT displaced supercells at the DFT geometry
(its perfect-supercell forces subtracted), its FC2 and FC3 are solved with the same solver as the
DFT set's (phono3py's finite differences, or symfc for random displacements), and

- κ(300 K) with the DFT FC2 and the potential's FC3 is compared with κ from the DFT FC2 and FC3,
  both computed here at the reference's own settings (its q-mesh, RTA, no isotope scattering as in
  the phono3py examples, the DFT Born charges where the set has them); the reference's stated κ is
  listed beside the recomputed one. Also κ with the potential's own FC2 and FC3 and with its FC2 and
  the DFT FC3, and ‖FC3‖/‖FC3_DFT‖ (Frobenius norm over the supercell);
- forces against DFT on those supercells (0.03 Å displacements, 3× phonondb's 0.01 Å; random
  displacements of every atom in the NaCl-rd, NaCl-alm and AlN-rd sets): RMSE and RMSE / RMS(DFT),
  and the same for the anharmonic part of the force, F + Φ₂u with each side's own FC2 Φ₂ (fitted
  jointly with FC3 from the same supercells), which is what matters when DFT supplies FC2;
- the cost of one energy+force call on a 64-atom cell (NaCl 2x2x2 conventional, one torch thread),
  every potential in the same run, as a ratio to the first potential;
- a load check: the relaxed lattice constants of Si and NaCl with each checkpoint (against
  experiment), and for the MatPES checkpoints also evaluated without thermobench.matgl_compat.

Sets: Si-PBEsol, Si-PBE, Si-LDA (VASP, 2x2x2 conventional, 111 pair displacements), zb-ZnTe-PBEsol
(VASP, 222), AlN-LDA (VASP, 3x3x2, 1254), NaCl-rd (VASP PBEsol, 100 random supercells for FC3, 2 of
4x4x4 for FC2) enter the κ panel; NaCl-alm (200 random 2x2x2 supercells, PBEsol) and AlN-rd (200
random 4x4x2 supercells, PBEsol) enter the force comparison only (their stated κ come from ALM and a
pypolymlp potential, not from the DFT force constants directly). The geometric means are over one set
per material (Si-PBEsol, ZnTe, AlN-LDA, NaCl-rd); Si-PBE and Si-LDA show how far the functional
alone moves κ. Wigner_La2Zr2O7 ships the DFT FC2 and precomputed linewidths but no third-order
forces, so there is nothing to compare a potential's FC3 with: it is left out.

One JSON per (set, potential) and per set for DFT under ``--work`` (rerunning skips finished ones);
the report (Markdown and JSON) under ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "anharmonic_panel"
TEMPERATURE_K = 300.0
POTENTIALS = (
    "M3GNet-MP-2021.2.8-PES",
    "M3GNet-phonondb-PBEsol",
    "M3GNet-MatPES-PBE-v2025.1-PES",
    "M3GNet-MatPES-r2SCAN-v2025.1-PES",
    "TensorNet-MatPES-PBE-v2025.1-PES",
    "TensorNet-MatPES-r2SCAN-v2025.1-PES",
)
# Experimental lattice constants (room temperature) for the load check: Si 5.431 Å, NaCl 5.640 Å.
EXPERIMENT_LATTICE_A = {"Si": 5.431, "NaCl": 5.640}
LATTICE_TOLERANCE = 0.03  # PBE overestimates by 1-2 %, the broken convention gave NaCl 7.19 Å (+27 %)


@dataclass(frozen=True)
class PanelSet:
    name: str  # folder in phono3py's example/
    material: str
    functional: str
    code: str
    files: tuple[str, ...]  # phono3py(-params) yaml [, FORCES_FC3]
    solver: str  # traditional (pair displacements) | symfc (random displacements)
    q_mesh: tuple[int, int, int] | None  # None: forces only
    stated: str  # the reference's own statement of κ(300 K)
    stated_kappa_W_mK: float | None  # its isotropic average (trace/3)
    in_mean: bool  # counted in the geometric means (one set per material)
    born: str | None = None
    phonopy_only: bool = False  # a phonopy (not phono3py) params file
    extra_columns: bool = True  # also κ with the potential's own FC2 (AlN-LDA: 170 s per κ on one core, left out)
    potentials: bool = True  # False: DFT only (Si-PBE, Si-LDA: how far the functional alone moves κ)
    # Panel settings cheaper than the reference's, applied to DFT and potentials alike (the DFT κ at the
    # reference's own settings is recomputed beside them): a pair cutoff of the FC3 displacements (finite
    # differences; for symfc a cutoff of the fit) and a coarser q-mesh.
    fc3_cutoff_A: float | None = None
    reference_q_mesh: tuple[int, int, int] | None = None  # None: q_mesh is the reference's


SETS = (
    PanelSet("Si-PBEsol", "Si", "PBEsol", "VASP", ("phono3py_disp.yaml", "FORCES_FC3"), "traditional", (11, 11, 11),
             "109.1 W/(m·K), 11x11x11, RTA, no isotopes (example README; also ../shared/reference/dft-kappa)", 109.1, True),
    PanelSet("Si-PBE", "Si", "PBE", "VASP", ("phono3py_disp.yaml", "FORCES_FC3"), "traditional", (11, 11, 11),
             "119.5 W/(m·K), 11x11x11, RTA", 119.5, False, potentials=False),
    PanelSet("Si-LDA", "Si", "LDA", "VASP", ("phono3py_disp.yaml", "FORCES_FC3"), "traditional", (11, 11, 11),
             "112.4 W/(m·K), 11x11x11, RTA", 112.4, False, potentials=False),
    PanelSet("zb-ZnTe-PBEsol", "ZnTe", "PBEsol", "VASP", ("phono3py_params_ZnTe.yaml.xz",), "traditional", (14, 14, 14),
             "46.5 W/(m·K), --mesh 50 (14x14x14), RTA, NAC", 46.5, True),
    # 1,254 supercells and 170 s per κ at 15x15x8 on one core: pairs within 4 Å (460 supercells) and 11x11x6
    PanelSet("AlN-LDA", "AlN", "LDA", "VASP", ("phono3py_disp.yaml", "FORCES_FC3"), "traditional", (11, 11, 6),
             "finite differences: κ_xx 251.2, κ_zz 233.4 W/(m·K), --mesh 40 (15x15x8), RTA, NAC", (2 * 251.2 + 233.4) / 3,
             True, born="BORN", extra_columns=False, fc3_cutoff_A=4.0, reference_q_mesh=(15, 15, 8)),
    PanelSet("NaCl-rd", "NaCl", "PBEsol", "VASP", ("phono3py_params_NaCl.yaml.xz",), "symfc", (15, 15, 15),
             "~8.3 W/(m·K), symfc, --mesh 50, RTA, NAC", 8.3, True),
    PanelSet("NaCl-alm", "NaCl", "PBEsol", "VASP", ("phono3py_params_NaCl222.yaml.xz",), "symfc", None,
             "~7.3 W/(m·K) with ALM force constants (forces only here)", None, False),
    PanelSet("AlN-rd", "AlN", "PBEsol", "VASP", ("phonopy_params_mp-661.yaml.xz",), "symfc", None,
             "κ_xx ~252, κ_zz ~232 W/(m·K) through a pypolymlp potential (forces only here)", None, False,
             phonopy_only=True, fc3_cutoff_A=5.0),  # symfc's joint FC2+FC3 fit of 128 atoms, for its harmonic part
)


# ----------------------------------------------------------------------------------------------
# Data


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_set(root: Path, panel_set: PanelSet):
    """The DFT set as phono3py (or phonopy) loads it: dataset, forces and NAC; no force constants yet."""
    folder = root / panel_set.name
    if panel_set.phonopy_only:
        import phonopy

        return phonopy.load(folder / panel_set.files[0], produce_fc=False, log_level=0)
    import phono3py

    kwargs = {}
    if len(panel_set.files) > 1:
        forces = folder / panel_set.files[1]
        if not forces.is_file() and forces.with_suffix(".xz").is_file():
            import lzma

            forces.write_bytes(lzma.decompress(forces.with_suffix(".xz").read_bytes()))  # AlN-LDA ships FORCES_FC3.xz
        kwargs["forces_fc3_filename"] = forces
    if panel_set.born:
        kwargs["born_filename"] = folder / panel_set.born
    ph3 = phono3py.load(folder / panel_set.files[0], produce_fc=False, log_level=0, **kwargs)
    if panel_set.solver == "traditional" and panel_set.fc3_cutoff_A is not None:
        apply_pair_cutoff(ph3, panel_set.fc3_cutoff_A)
    return ph3


def apply_pair_cutoff(ph3, cutoff_A: float) -> None:
    """Keep the pair displacements within ``cutoff_A`` (phono3py's ``cutoff_pair_distance``): the others
    are not evaluated, their forces are zero and phono3py sets the FC3 elements of those pairs to zero."""
    dataset = ph3.dataset
    forces = None if ph3.forces is None else np.array(ph3.forces)
    dataset["cutoff_distance"] = cutoff_A
    count = len(dataset["first_atoms"])
    for first in dataset["first_atoms"]:
        for second in first["second_atoms"]:
            second["included"] = bool(second["pair_distance"] < cutoff_A)
            if not second["included"] and forces is not None:
                forces[count] = 0.0
            count += 1
    ph3.dataset = dataset
    if forces is not None:
        ph3.forces = forces


def displacements_of(ph) -> np.ndarray:
    """(supercells, atoms, 3) displacements of every displaced supercell in the order of ``ph.forces``,
    from the supercells themselves (phono3py's ``displacements`` of a pair dataset holds only the second
    atom's); zero for pairs beyond a cutoff."""
    perfect = ph.supercell
    lattice = np.asarray(perfect.cell)
    out = []
    for cell in ph.supercells_with_displacements:
        if cell is None:
            out.append(np.zeros((len(perfect), 3)))
            continue
        diff = np.asarray(cell.scaled_positions) - np.asarray(perfect.scaled_positions)
        out.append((diff - np.rint(diff)) @ lattice)
    return np.array(out)


def evaluated(ph) -> np.ndarray:
    """Indices of the displaced supercells that carry forces (all but pairs beyond a cutoff)."""
    return np.array([k for k, c in enumerate(ph.supercells_with_displacements) if c is not None])


def potential_forces(ph, potential, phonon: bool = False) -> tuple[np.ndarray, float]:
    """Forces of the potential on the set's displaced supercells, minus those of its perfect supercell."""
    from generate.harmonic.phonons import to_ase_atoms
    from thermobench.potentials import compute_forces

    if phonon:
        cells = ph.phonon_supercells_with_displacements
        perfect = ph.phonon_supercell
    else:
        cells = ph.supercells_with_displacements
        perfect = ph.supercell
    index = [k for k, c in enumerate(cells) if c is not None]
    structures = [to_ase_atoms(perfect)] + [to_ase_atoms(cells[k]) for k in index]
    start = time.perf_counter()
    forces = np.array(compute_forces(potential, structures, max_atoms_per_chunk=1024))
    wall = time.perf_counter() - start
    out = np.zeros((len(cells), len(perfect), 3))
    out[index] = forces[1:] - forces[0]
    return out, wall


def fit_force_constants(ph, forces: np.ndarray, solver: str, cutoff_A: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(FC2, FC3), full (supercell-sized) arrays, from ``forces`` on the set's FC3 supercells with
    phono3py's solver of the set (finite differences, symmetrized as phono3py-load does, or symfc)."""
    from phono3py.interface.fc_calculator import FC3Solver
    from phonopy.harmonic.force_constants import symmetrize_force_constants

    ph.forces = forces
    options = None if cutoff_A is None else f"cutoff = {cutoff_A}"
    fcs = FC3Solver(solver, ph.supercell, symmetry=ph.symmetry, dataset=ph.dataset, is_compact_fc=False,
                    primitive=ph.primitive, orders=[2, 3], options=options, log_level=0).force_constants
    fc2, fc3 = np.array(fcs[2]), np.array(fcs[3])
    if solver == "traditional":
        ph.fc3 = fc3
        ph.symmetrize_fc3()
        fc3 = np.array(ph.fc3)
        symmetrize_force_constants(fc2)
    return fc2, fc3


def fit_phonopy_set(ph, forces: np.ndarray, cutoff_A: float | None) -> np.ndarray:
    """FC2 of a phonopy random-displacement set, fitted jointly with FC3 by symfc (harmonic part only)."""
    from phonopy.interface.fc_calculator import FCSolver

    dataset = {"displacements": np.array(ph.dataset["displacements"]), "forces": forces}
    options = None if cutoff_A is None else f"cutoff = {cutoff_A}"
    fcs = FCSolver("symfc", ph.supercell, symmetry=ph.symmetry, dataset=dataset, is_compact_fc=False,
                   primitive=ph.primitive, orders=[2, 3], options=options, log_level=0).force_constants
    return np.array(fcs[2])


def phonon_fc2(ph3, forces: np.ndarray | None, solver: str) -> np.ndarray:
    """FC2 in phono3py's separate phonon supercell (NaCl-rd: 4x4x4) from ``forces`` (None: the DFT ones)."""
    if forces is not None:
        ph3.phonon_forces = forces
    ph3.produce_fc2(fc_calculator=None if solver == "traditional" else solver, is_compact_fc=False)
    if solver == "traditional":
        ph3.symmetrize_fc2()
    return np.array(ph3.fc2)


# ----------------------------------------------------------------------------------------------
# Measurements


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def force_errors(displacements: np.ndarray, f_dft: np.ndarray, f_pot: np.ndarray, fc2_dft: np.ndarray, fc2_pot: np.ndarray) -> dict:
    """RMSE of the forces and of their anharmonic parts F + Φ₂u (each side's own FC2), eV/Å."""
    def harmonic(fc2):
        return -np.einsum("ijab,sjb->sia", fc2, displacements, optimize=True)

    anh_dft = f_dft - harmonic(fc2_dft)
    anh_pot = f_pot - harmonic(fc2_pot)
    amplitude = np.linalg.norm(displacements, axis=-1)
    return {
        "n_supercells": int(len(f_dft)),
        "displacement_max_A": float(amplitude.max()),
        "force_rms_dft_eV_A": rms(f_dft),
        "force_rmse_eV_A": rms(f_pot - f_dft),
        "force_relative_error": rms(f_pot - f_dft) / rms(f_dft),
        "anharmonic_force_rms_dft_eV_A": rms(anh_dft),
        "anharmonic_force_rmse_eV_A": rms(anh_pot - anh_dft),
        "anharmonic_force_relative_error": rms(anh_pot - anh_dft) / rms(anh_dft),
    }


def kappa_of(ph3, fc2: np.ndarray, fc3: np.ndarray, q_mesh, label: str) -> dict:
    """κ(300 K), RTA, no isotopes, the set's NAC, with the given FC2 and FC3 (full arrays)."""
    from generate.kappa import KappaSettings, conductivity

    settings = KappaSettings(temperatures_K=(TEMPERATURE_K,), q_mesh=tuple(q_mesh), method="rta", isotope=False)
    ph3.fc3 = np.ascontiguousarray(fc3[ph3.primitive.p2s_map])  # compact, as phono3py-load keeps it
    table = conductivity(ph3, fc2, settings, label)
    out = {"status": table.status, "reason": table.reason, "wall_s": table.wall_time_s,
           "min_frequency_THz": table.min_frequency_THz}
    if table.status == "ok":
        out["kappa_W_mK"] = table.kappa_W_mK[0]  # xx yy zz yz xz xy
        out["kappa_average_W_mK"] = table.kappa_average_W_mK[0]
    return out


def dft_record(root: Path, panel_set: PanelSet) -> dict:
    start = time.perf_counter()
    ph = load_set(root, panel_set)
    record = {"set": panel_set.name, "material": panel_set.material, "functional": panel_set.functional,
              "files": {name: sha256_of(root / panel_set.name / name) for name in panel_set.files},
              "n_supercell_atoms": len(ph.supercell), "n_supercells": int(len(ph.forces)),
              "nac": ph.nac_params is not None}
    if panel_set.phonopy_only:
        record["wall_s"] = time.perf_counter() - start
        return record
    fc2, fc3 = fit_force_constants(ph, np.array(ph.forces), panel_set.solver, panel_set.fc3_cutoff_A)
    if panel_set.q_mesh is not None:
        fc2_kappa = fc2 if ph.phonon_supercell_matrix is None else phonon_fc2(ph, None, panel_set.solver)
        record["kappa"] = kappa_of(ph, fc2_kappa, fc3, panel_set.q_mesh, "dft")
        record["q_mesh"] = list(panel_set.q_mesh)
        record["fc3_cutoff_A"] = panel_set.fc3_cutoff_A
        record["n_evaluated_supercells"] = int(len(evaluated(ph)))
    record["wall_s"] = time.perf_counter() - start
    return record


def dft_reference_settings(root: Path, panel_set: PanelSet) -> dict:
    """κ of the whole DFT set at the reference's own mesh, where the panel uses cheaper settings."""
    full = load_set(root, PanelSet(**{**asdict(panel_set), "fc3_cutoff_A": None}))
    fc2, fc3 = fit_force_constants(full, np.array(full.forces), panel_set.solver)
    return kappa_of(full, fc2, fc3, panel_set.reference_q_mesh, "dft")


def potential_record(root: Path, panel_set: PanelSet, potential, columns: tuple[str, ...]) -> dict:
    """Forces, FC3 and κ columns of one potential on one set."""
    start = time.perf_counter()
    cutoff = panel_set.fc3_cutoff_A
    ph = load_set(root, panel_set)
    f_dft = np.array(ph.forces)
    displacements = displacements_of(ph)
    f_pot, force_wall = potential_forces(ph, potential)
    forces_file = {"forces_eV_A": f_pot}
    record = {"set": panel_set.name, "force_wall_s": force_wall, "n_force_calls": int(len(evaluated(ph))) + 1,
              "fc3_cutoff_A": cutoff, "q_mesh": None if panel_set.q_mesh is None else list(panel_set.q_mesh)}
    if panel_set.phonopy_only:
        fc2_dft = fit_phonopy_set(ph, f_dft, cutoff)
        fc2_pot = fit_phonopy_set(ph, f_pot, cutoff)
        record["forces"] = force_errors(displacements, f_dft, f_pot, fc2_dft, fc2_pot)
        record["wall_s"] = time.perf_counter() - start
        record["forces_file"] = forces_file
        return record
    fc2_dft, fc3_dft = fit_force_constants(ph, f_dft, panel_set.solver, cutoff)
    fc2_pot, fc3_pot = fit_force_constants(ph, f_pot, panel_set.solver, cutoff)
    keep = evaluated(ph)  # pairs beyond a cutoff carry no forces
    record["forces"] = force_errors(displacements[keep], f_dft[keep], f_pot[keep], fc2_dft, fc2_pot)
    record["fc3_norm_ratio"] = float(np.linalg.norm(fc3_pot) / np.linalg.norm(fc3_dft))
    record["fc2_norm_ratio"] = float(np.linalg.norm(fc2_pot) / np.linalg.norm(fc2_dft))
    if panel_set.q_mesh is not None:
        if ph.phonon_supercell_matrix is None:
            fc2_dft_kappa, fc2_pot_kappa = fc2_dft, fc2_pot
        else:  # FC2 from the separate phonon supercells, each side's own forces
            fc2_dft_kappa = phonon_fc2(ph, None, panel_set.solver)
            dft_phonon_forces = np.array(ph.phonon_forces)
            pot_phonon_forces, wall = potential_forces(ph, potential, phonon=True)
            forces_file["phonon_forces_eV_A"] = pot_phonon_forces
            record["force_wall_s"] += wall
            fc2_pot_kappa = phonon_fc2(ph, pot_phonon_forces, panel_set.solver)
            ph.phonon_forces = dft_phonon_forces
        pairs = {"dft_fc2": (fc2_dft_kappa, fc3_pot), "own": (fc2_pot_kappa, fc3_pot), "dft_fc3": (fc2_pot_kappa, fc3_dft)}
        columns = columns if panel_set.extra_columns else tuple(c for c in columns if c == "dft_fc2")
        record["kappa"] = {c: kappa_of(ph, *pairs[c], panel_set.q_mesh, c) for c in columns}
    record["wall_s"] = time.perf_counter() - start
    record["forces_file"] = forces_file  # written beside the record by main (np.savez_compressed)
    return record


def force_call_cost(potentials: dict, repeats: int) -> dict:
    """Seconds per energy+force call on a 64-atom cell (NaCl 2x2x2 conventional, rattled), one thread."""
    from ase.build import bulk

    from thermobench.potentials import evaluate_batch

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.03, seed=0)
    out = {}
    for label, potential in potentials.items():
        for _ in range(2):
            evaluate_batch(potential, [atoms])  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            evaluate_batch(potential, [atoms])
            times.append(time.perf_counter() - start)
        out[label] = {"median_s": float(np.median(times)), "min_s": float(np.min(times)), "repeats": repeats}
    base = next(iter(out.values()))["median_s"]
    for value in out.values():
        value["ratio_to_first"] = value["median_s"] / base
    return out


def load_check(names: list[str]) -> dict:
    """Relaxed lattice constants of Si and NaCl with each checkpoint as loaded (matgl_compat applied);
    for checkpoints the compatibility layer changes, also as plain matgl loads them."""
    import matgl
    from ase.build import bulk

    from generate.harmonic.relax import RelaxSettings, relax
    from thermobench.matgl_compat import Convention, detect_convention
    from thermobench.potentials import ThermobenchCalculator, load_potential, resolve_model_dir

    crystals = {"Si": bulk("Si", "diamond", a=5.431), "NaCl": bulk("NaCl", "rocksalt", a=5.640)}
    out = {}
    for name in names:
        model_dir = resolve_model_dir(name)
        convention = detect_convention(model_dir)
        variants = {"as loaded": load_potential(name)}
        if convention is not Convention.SOURCE:
            variants["plain matgl"] = matgl.load_model(model_dir).eval()
        entry = {"convention": convention.value}
        for variant, potential in variants.items():
            calculator = ThermobenchCalculator(potential, stress_unit="eV/A3")
            for material, atoms in crystals.items():
                result = relax(atoms, calculator, RelaxSettings(max_steps=200))
                a = float(np.linalg.norm(result.atoms.cell[0]) * np.sqrt(2))  # fcc primitive vector -> cubic a
                deviation = a / EXPERIMENT_LATTICE_A[material] - 1
                entry[f"{variant}: {material}"] = {"a_A": a, "deviation": deviation, "converged": result.converged,
                                                   "energy_eV_atom": float(result.energy_eV / len(atoms)),
                                                   "within_tolerance": abs(deviation) <= LATTICE_TOLERANCE}
        out[Path(name).name] = entry
    return out


# ----------------------------------------------------------------------------------------------
# Report


def geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return float(np.exp(np.mean(np.log(values)))) if values else None


def summarize(sets: list[PanelSet], labels: list[str], dft: dict, records: dict) -> dict:
    kappa_sets = [s for s in sets if s.q_mesh is not None]
    summary = {}
    for label in labels:
        ratios, columns = {}, {}
        for s in kappa_sets:
            record = records[label].get(s.name)
            reference = dft[s.name].get("kappa", {}).get("kappa_average_W_mK")
            if record is None or "kappa" not in record or reference is None:
                continue
            for column, value in record["kappa"].items():
                columns.setdefault(column, {})[s.name] = (
                    value["kappa_average_W_mK"] / reference if value["status"] == "ok" else None)
        ratios = columns.get("dft_fc2", {})
        mean_sets = [s.name for s in kappa_sets if s.in_mean]
        in_mean = [ratios.get(n) for n in mean_sets]
        complete = all(r is not None for r in in_mean)
        entry = {"kappa_ratio": columns, "n_mean_sets": sum(r is not None for r in in_mean), "complete": complete}
        for column, by_set in columns.items():
            names = mean_sets if column == "dft_fc2" else [s.name for s in kappa_sets if s.in_mean and s.extra_columns]
            values = [by_set.get(n) for n in names]
            if all(v is not None for v in values):
                entry[f"{column}_geomean_ratio"] = geometric_mean(values)
                entry[f"{column}_geomean_error_factor"] = float(np.exp(np.mean(np.abs(np.log(values)))))
            else:
                entry[f"{column}_geomean_ratio"] = entry[f"{column}_geomean_error_factor"] = None
        forces = {s.name: records[label][s.name]["forces"] for s in sets if s.name in records[label] and "forces" in records[label][s.name]}
        entry["force_relative_error_mean"] = float(np.mean([f["force_relative_error"] for f in forces.values()])) if forces else None
        entry["anharmonic_force_relative_error_mean"] = (
            float(np.mean([f["anharmonic_force_relative_error"] for f in forces.values()])) if forces else None)
        summary[label] = entry
    return summary


def _f(value, digits=2, suffix=""):
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def markdown(report: dict) -> str:
    all_sets = [s for s in SETS if s.name in report["dft"]]
    dft_kappa_sets = [s for s in all_sets if s.q_mesh is not None]
    sets = [s for s in all_sets if s.potentials]
    kappa_sets = [s for s in sets if s.q_mesh is not None]
    labels = report["potentials"]
    lines = [
        "# Anharmonic fidelity panel: potentials' FC3 against public DFT third-order sets", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {report['machine']}. κ at 300 K, RTA, no isotope scattering, each set's own q-mesh and Born charges; "
        "isotropic average (trace/3). Every potential is evaluated on exactly the DFT displaced supercells at the DFT "
        "geometry, and its FC2/FC3 solved as the DFT set's are (finite differences or symfc).", "",
        "## The DFT references, recomputed here", "",
        "'κ here' at the reference's own settings; 'panel κ' at the panel's (the same as the reference's except for "
        "AlN-LDA: pairs within 4 Å, 466 of 1,254 supercells, and an 11x11x6 mesh, as for every potential on it). "
        "phono3py 4.10 gives 52.8 W/(m·K) for ZnTe with the README's own command; its 46.5 comes from an older version.", "",
        "| set | functional | code | supercell atoms | supercells | κ stated (W/m·K) | κ here | here / stated | panel κ (mesh) |",
        "|---|---|---|---:|---:|---|---:|---:|---|",
    ]
    for s in dft_kappa_sets:
        d = report["dft"][s.name]
        k = d["kappa"].get("kappa_average_W_mK")
        full = d.get("kappa_reference_settings", d["kappa"]).get("kappa_average_W_mK")
        lines.append(f"| {s.name} | {s.functional} | {s.code} | {d['n_supercell_atoms']} | {d['n_supercells']} | {s.stated} | "
                     f"{_f(full, 1)} | {_f(full / s.stated_kappa_W_mK if full else None, 3)} | "
                     f"{_f(k, 1)} ({'x'.join(map(str, s.q_mesh))}) |")
    mean_names = [s.name for s in kappa_sets if s.in_mean]
    lines += ["", "## κ(DFT FC2 + the potential's FC3) / κ(DFT)", "",
              f"Geometric means over {', '.join(mean_names)} (one set per material); 'error factor' = "
              "exp(mean |ln ratio|), which over- and underestimates cannot cancel. Si-PBE and Si-LDA (not in the means) "
              "show the spread the functional alone causes.", "",
              "| potential | " + " | ".join(s.name for s in kappa_sets) + " | geo-mean ratio | error factor |",
              "|---|" + "---:|" * (len(kappa_sets) + 2)]
    for label in labels:
        e = report["summary"][label]
        by_set = e["kappa_ratio"].get("dft_fc2", {})
        lines.append(f"| {label} | " + " | ".join(_f(by_set.get(s.name)) for s in kappa_sets)
                     + f" | {_f(e['dft_fc2_geomean_ratio'])} | {_f(e['dft_fc2_geomean_error_factor'])} |")
    for column, title in (("own", "its own FC2 + its FC3"), ("dft_fc3", "its FC2 + DFT FC3")):
        if not any(column in report["summary"][label]["kappa_ratio"] for label in labels):
            continue
        extra = ", ".join(s.name for s in kappa_sets if s.in_mean and s.extra_columns)
        lines += ["", f"### κ({title}) / κ(DFT)", "",
                  f"DFT geometry; '—': its FC2 is dynamically unstable there (κ undefined) or the column was not computed "
                  f"(AlN-LDA: one κ takes 170 s on one core at its 15x15x8 mesh). Means over {extra}.", "",
                  "| potential | " + " | ".join(s.name for s in kappa_sets) + " | geo-mean ratio | error factor |",
                  "|---|" + "---:|" * (len(kappa_sets) + 2)]
        for label in labels:
            e = report["summary"][label]
            by_set = e["kappa_ratio"].get(column, {})
            lines.append(f"| {label} | " + " | ".join(_f(by_set.get(s.name)) for s in kappa_sets)
                         + f" | {_f(e.get(f'{column}_geomean_ratio'))} | {_f(e.get(f'{column}_geomean_error_factor'))} |")
    lines += ["", "### κ in W/(m·K) (DFT FC2 + the potential's FC3)", "",
              "| potential | " + " | ".join(s.name for s in kappa_sets) + " |", "|---|" + "---:|" * len(kappa_sets),
              "| DFT | " + " | ".join(_f(report["dft"][s.name]["kappa"].get("kappa_average_W_mK"), 1) for s in kappa_sets) + " |"]
    for label in labels:
        recs = report["records"][label]
        lines.append(f"| {label} | " + " | ".join(
            _f(recs.get(s.name, {}).get("kappa", {}).get("dft_fc2", {}).get("kappa_average_W_mK"), 1) for s in kappa_sets) + " |")
    lines += ["", "### ‖FC3‖ / ‖FC3_DFT‖ (Frobenius, whole supercell)", "",
              "| potential | " + " | ".join(s.name for s in kappa_sets) + " |", "|---|" + "---:|" * len(kappa_sets)]
    for label in labels:
        recs = report["records"][label]
        lines.append(f"| {label} | " + " | ".join(_f(recs.get(s.name, {}).get("fc3_norm_ratio")) for s in kappa_sets) + " |")
    lines += ["", "## Forces on the DFT displaced supercells", "",
              "RMSE / RMS(DFT) of all force components; 'anharmonic' is F + Φ₂u with each side's own FC2 (fitted with "
              "FC3 from the same supercells), the part a potential contributes when DFT supplies FC2. Displacements: "
              "0.03 Å, 3× phonondb's (pairs of atoms in Si, ZnTe, AlN-LDA, whose largest atomic displacement is up to "
              "0.055 Å where both moves fall on one atom; every atom at random in NaCl-rd, NaCl-alm, AlN-rd).", "",
              "| set | functional | supercells | RMS F_DFT (eV/Å) | RMS anharmonic F_DFT (eV/Å) |", "|---|---|---:|---:|---:|"]
    first = report["records"][labels[0]]
    for s in sets:
        f = first.get(s.name, {}).get("forces")
        if f:
            lines.append(f"| {s.name} | {s.functional} | {f['n_supercells']} | {f['force_rms_dft_eV_A']:.4f} | "
                         f"{f['anharmonic_force_rms_dft_eV_A']:.5f} |")
    for key, title in (("force_relative_error", "total force, relative error"),
                       ("anharmonic_force_relative_error", "anharmonic part of the force, relative error")):
        lines += ["", f"### {title}", "", "| potential | " + " | ".join(s.name for s in sets) + " | mean |",
                  "|---|" + "---:|" * (len(sets) + 1)]
        for label in labels:
            recs = report["records"][label]
            values = [recs.get(s.name, {}).get("forces", {}).get(key) for s in sets]
            lines.append(f"| {label} | " + " | ".join(_f(v, 3) for v in values)
                         + f" | {_f(report['summary'][label][f'{key}_mean'], 3)} |")
    if report.get("cost"):
        lines += ["", "## Cost of one energy+force call, 64-atom NaCl cell, one torch thread (same run)", "",
                  "| potential | median (s) | ratio to first |", "|---|---:|---:|"]
        for label, c in report["cost"].items():
            lines.append(f"| {label} | {c['median_s']:.4f} | {c['ratio_to_first']:.2f} |")
    if report.get("load_check"):
        lines += ["", "## Load check: relaxed lattice constants (experiment: Si 5.431 Å, NaCl 5.640 Å; tolerance "
                  f"±{100 * LATTICE_TOLERANCE:.0f} %)", "", "| checkpoint | convention | loaded as | a(Si) Å | a(NaCl) Å | within tolerance |",
                  "|---|---|---|---:|---:|---|"]
        for name, entry in report["load_check"].items():
            for variant in ("as loaded", "plain matgl"):
                if f"{variant}: Si" not in entry:
                    continue
                si, nacl = entry[f"{variant}: Si"], entry[f"{variant}: NaCl"]
                lines.append(f"| {name} | {entry['convention']} | {variant} | {si['a_A']:.3f} ({100 * si['deviation']:+.1f} %) | "
                             f"{nacl['a_A']:.3f} ({100 * nacl['deviation']:+.1f} %) | "
                             f"{'yes' if si['within_tolerance'] and nacl['within_tolerance'] else 'no'} |")
    lines += ["", "## Wall time per potential (s, one core: forces + FC fits + κ, all sets)", "",
              "| potential | force calls | force evaluation | total |", "|---|---:|---:|---:|"]
    for label in labels:
        recs = report["records"][label].values()
        lines.append(f"| {label} | {sum(r.get('n_force_calls', 0) for r in recs)} | "
                     f"{sum(r.get('force_wall_s', 0) for r in recs):.0f} | {sum(r.get('wall_s', 0) for r in recs):.0f} |")
    if report.get("excluded"):
        lines += ["", "## Left out", ""] + [f"- {name}: {why}" for name, why in report["excluded"].items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    import torch

    from benchmarks.finetune_phonondb import label_of
    from generate.run.atomic import write_json_atomically
    from thermobench.potentials import load_potential

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, required=True, help="example/ of a phono3py clone")
    parser.add_argument("--potentials", nargs="+", default=list(POTENTIALS))
    parser.add_argument("--sets", nargs="+", default=[s.name for s in SETS])
    parser.add_argument("--columns", nargs="+", default=["dft_fc2", "own", "dft_fc3"],
                        help="κ columns: dft_fc2 (DFT FC2 + its FC3), own (its FC2 + FC3), dft_fc3 (its FC2 + DFT FC3)")
    parser.add_argument("--work", type=Path, default=Path("/work/bench-work/anharmonic_panel"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cost-repeats", type=int, default=20, help="0: skip the force-call cost")
    parser.add_argument("--skip-load-check", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sets = [s for s in SETS if s.name in args.sets]
    labels = [label_of(p) for p in args.potentials]
    command = "python -m benchmarks.anharmonic_panel " + " ".join(sys.argv[1:] if argv is None else argv)

    dft = {}
    for s in sets:
        path = args.work / "dft" / f"{s.name}.json"
        old = json.loads(path.read_text()) if path.is_file() else None
        if old is None or old.get("fc3_cutoff_A") != s.fc3_cutoff_A or old.get("q_mesh") != (s.q_mesh and list(s.q_mesh)):
            record = dft_record(args.examples, s)
            if old and s.reference_q_mesh and old.get("q_mesh") == list(s.reference_q_mesh) and old.get("fc3_cutoff_A") is None:
                record["kappa_reference_settings"] = old.get("kappa_reference_settings", old["kappa"])  # the whole set
            write_json_atomically(path, record)
        record = json.loads(path.read_text())
        if s.reference_q_mesh is not None and "kappa_reference_settings" not in record:
            record["kappa_reference_settings"] = dft_reference_settings(args.examples, s)
            write_json_atomically(path, record)
        dft[s.name] = record
        print(f"DFT {s.name}: κ {dft[s.name].get('kappa', {}).get('kappa_average_W_mK')} ({dft[s.name]['wall_s']:.0f} s)", flush=True)

    # Set by set (the κ sets of the geometric means first), every potential on each, so that an
    # interrupted run has the sets that decide the ranking for every potential.
    order = sorted((s for s in sets if s.potentials), key=lambda s: (not s.in_mean, s.q_mesh is None))
    models = {}
    records: dict = {label: {} for label in labels}
    for s in order:
        for potential_name, label in zip(args.potentials, labels):
            path = args.work / label / f"{s.name}.json"
            if not path.is_file() or json.loads(path.read_text()).get("status", "").startswith("failed"):
                if label not in models:
                    models[label] = load_potential(potential_name)
                try:
                    record = potential_record(args.examples, s, models[label], tuple(args.columns))
                    # the potential's forces, so that force metrics can be recomputed without the potential
                    np.savez_compressed(path.with_suffix(".forces.npz"), **record.pop("forces_file"))
                except Exception as error:  # one set never stops the panel
                    record = {"set": s.name, "status": f"failed: {type(error).__name__}: {error}", "traceback": traceback.format_exc()}
                write_json_atomically(path, record)
            records[label][s.name] = json.loads(path.read_text())
            kappa = records[label][s.name].get("kappa", {})
            print(f"{label} {s.name}: " + ", ".join(f"{c} {v.get('kappa_average_W_mK')}" for c, v in kappa.items())
                  + f" ({records[label][s.name].get('wall_s', 0):.0f} s)", flush=True)

    cost_path = args.work / "cost.json"
    cost = json.loads(cost_path.read_text()) if cost_path.is_file() else None
    if args.cost_repeats and (cost is None or list(cost) != labels):
        loaded = {label: models.get(label) or load_potential(p) for p, label in zip(args.potentials, labels)}
        cost = force_call_cost(loaded, args.cost_repeats)
        write_json_atomically(cost_path, cost)
    check_path = args.work / "load_check.json"
    check = json.loads(check_path.read_text()) if check_path.is_file() else None
    if not args.skip_load_check and (check is None or set(check) != set(labels)):
        check = load_check(args.potentials)
        write_json_atomically(check_path, check)

    report = {
        "command": command,
        "machine": f"{platform.machine()}, shared 2-core CPU, one torch/BLAS thread",
        "potentials": labels,
        "temperature_K": TEMPERATURE_K,
        "sets": [asdict(s) for s in sets],
        "dft": dft,
        "records": records,
        "summary": summarize(sets, labels, dft, records),
        "cost": cost,
        "load_check": check,
        "excluded": {"Wigner_La2Zr2O7": "ships the DFT FC2 (fc2.hdf5) and precomputed linewidths (kappa-m191919.hdf5, "
                                        "read with --read-gamma) but no third-order forces or FC3: nothing to compare a "
                                        "potential's FC3 with.",
                     **{s.name: "not in this run's --sets" for s in SETS if s.name not in args.sets}},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(args.out / "report.json", report)
    (args.out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
