"""Cross-check run_sscha against phonopy's own SSCHA loop, driven by the same potential.

    THERMOBENCH_MODELS=../shared/models .venv/bin/python -m benchmarks.sscha_phonopy_crosscheck \
        [--structure NaCl] [--supercell 2 2 2] [--temperature 300] [--snapshots 1000] \
        [--out benchmarks/results/sscha/crosscheck_NaCl_300K.json]

phonopy's loop is ``phonopy.sscha.core.MLPSSCHA`` (what ``phonopy-mlpsscha`` runs), unmodified: each
iteration draws ``--snapshots`` supercells from the harmonic canonical ensemble of the current force
constants at T (quantum statistics, ``Phonopy.generate_displacements(number_of_snapshots=...,
temperature=...)``), evaluates them, and refits the force constants to the displacements and forces
with symfc. It expects a pypolymlp potential behind ``PhonopyMLP.evaluate``; :class:`ThermobenchMLP`
puts the matgl potential there instead (forces through ``evaluate_batch``). The loop starts from the
finite-displacement force constants (phonopy's systematic displacements, 0.01 Å), as ``phonopy-
mlpsscha`` does when the input file carries force constants, symmetrized and with imaginary and very
soft modes lifted by run_sscha's own rule (:func:`generate.sscha.stabilize`, ω² → max(|ω²|, (0.5 THz)²); a no-op
for NaCl): phonopy's harmonic sampling of an imaginary mode otherwise throws atoms onto each other
(cubic CsPbBr3: Cs and Br 0.48 Å apart in the first ensemble). Its answer is the mean of the refits
after a transient, with the standard error of that mean as its stochastic error; phonopy leaves the
averaging window to the user (``--transient``), and here iterations run until the error of the mean
is below the target. Successive refits are correlated through the force constants they were drawn
from; for NaCl that feedback is weak (the renormalization is a fraction of Φ), so the error of the
mean is nearly the naive one.

run_sscha is run on the same relaxed cell with a frequency-error target, and the two sets of sorted
supercell frequencies (all 3N eigenfrequencies of the commensurate dynamical matrices) are compared
mode by mode against their combined error sqrt(σ_run_sscha² + σ_phonopy²).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

RESULTS = Path(__file__).resolve().parent / "results" / "sscha"


def make_mlp(potential, max_atoms_per_chunk: int = 2048):
    """A ``PhonopyMLP`` whose ``evaluate`` is the matgl potential (phonopy's MLP hook, duck-typed)."""
    from phonopy.interface.mlp import PhonopyMLP

    from thermobench.potentials import evaluate_batch

    class ThermobenchMLP(PhonopyMLP):
        def __init__(self):
            super().__init__(mlp=potential)
            self.n_evaluations = 0

        def evaluate(self, supercells_with_displacements):
            structures = [
                Atoms(c.symbols, cell=c.cell, scaled_positions=c.scaled_positions, pbc=True)
                for c in supercells_with_displacements
            ]
            result = evaluate_batch(potential, structures, max_atoms_per_chunk=max_atoms_per_chunk)
            self.n_evaluations += len(structures)
            return result.energies_eV, np.array(result.forces_eV_A), np.zeros((len(structures), 6))

    return ThermobenchMLP()


@dataclass
class PhonopyLoopResult:
    temperature_K: float
    n_snapshots: int
    transient: int  # sampled iterations whose refits are left out of the mean
    frequencies_THz: np.ndarray  # mean of the sorted supercell frequencies of the kept refits
    frequency_errors_THz: np.ndarray  # standard error of that mean
    n_averaged: int
    n_potential_evaluations: int
    wall_time_s: float
    cpu_time_s: float
    reached_target: bool
    iterations: list = field(default_factory=list)  # per refit: frequencies, evaluations, times, free energy
    failure: str | None = None  # why the loop stopped early (a sampled supercell the potential refused)

    def to_json_dict(self) -> dict:
        return {
            "temperature_K": self.temperature_K,
            "n_snapshots": self.n_snapshots,
            "transient": self.transient,
            "supercell_frequencies_THz": None if self.frequencies_THz is None else self.frequencies_THz.tolist(),
            "supercell_frequency_errors_THz": None if self.frequency_errors_THz is None else self.frequency_errors_THz.tolist(),
            "n_averaged": self.n_averaged,
            "n_potential_evaluations": self.n_potential_evaluations,
            "wall_time_s": self.wall_time_s,
            "cpu_time_s": self.cpu_time_s,
            "reached_target": self.reached_target,
            "iterations": self.iterations,
            "failure": self.failure,
        }


def run_phonopy_loop(
    atoms: Atoms,
    potential,
    supercell,
    temperature_K: float = 300.0,
    n_snapshots: int = 1000,
    transient: int = 2,
    frequency_error_target_THz: float = 0.02,
    min_averaged: int = 4,
    max_iterations: int = 30,
    seed: int = 0,
    symprec: float = 1e-5,
) -> PhonopyLoopResult:
    """phonopy's MLPSSCHA loop with the matgl potential, run until the mean of the refits after
    ``transient`` iterations has a standard error ≤ the target on every frequency (at least
    ``min_averaged`` refits, at most ``max_iterations`` iterations)."""
    from phonopy import Phonopy
    from phonopy.sscha.core import MLPSSCHA

    from generate.harmonic.phonons import to_phonopy_atoms
    from generate.sscha import frequencies_THz, to_matrix
    from thermobench.potentials import UnsupportedStructureError

    wall0, cpu0 = time.perf_counter(), time.process_time()
    mlp = make_mlp(potential)
    ph = Phonopy(to_phonopy_atoms(atoms), supercell_matrix=np.diag(supercell), primitive_matrix="auto", symprec=symprec)
    ph.generate_displacements(distance=0.01)  # systematic finite displacements: the starting Φ
    ph.mlp = mlp
    ph.evaluate_mlp()
    ph.produce_force_constants(show_drift=False)
    ph.force_constants = stabilized_start(atoms, ph, supercell, symprec)
    loop = MLPSSCHA(
        ph, mlp, temperature=temperature_K, number_of_snapshots=n_snapshots, max_iterations=max_iterations,
        random_seed=seed,
    )
    sqrt_masses = np.repeat(np.sqrt(loop.phonopy.supercell.masses), 3)
    mass_outer = np.outer(sqrt_masses, sqrt_masses)
    iterations, kept = [], []
    mean = errors = failure = None
    try:
        for iteration in loop:  # iteration 0 was skipped: starting force constants were given
            frequencies = frequencies_THz(to_matrix(loop.force_constants) / mass_outer)
            iterations.append(
                {
                    "iteration": iteration,
                    "supercell_frequencies_THz": frequencies.tolist(),
                    "n_potential_evaluations": mlp.n_evaluations,
                    "wall_time_s": time.perf_counter() - wall0,
                    "free_energy_eV_cell": loop.free_energy,
                    "free_energy_error_eV_cell": loop.free_energy_error,
                }
            )
            if iteration > transient:
                kept.append(frequencies)
            if len(kept) >= max(2, min_averaged):
                mean = np.mean(kept, axis=0)
                errors = np.std(kept, axis=0, ddof=1) / np.sqrt(len(kept))
                if errors.max() <= frequency_error_target_THz:
                    break
    except UnsupportedStructureError as error:
        failure = f"ensemble of iteration {len(iterations) + 1}: {error}"
    if mean is None and len(kept) >= 2:
        mean, errors = np.mean(kept, axis=0), np.std(kept, axis=0, ddof=1) / np.sqrt(len(kept))
    return PhonopyLoopResult(
        temperature_K=temperature_K,
        n_snapshots=n_snapshots,
        transient=transient,
        frequencies_THz=mean,
        frequency_errors_THz=errors,
        n_averaged=len(kept),
        n_potential_evaluations=mlp.n_evaluations,
        wall_time_s=time.perf_counter() - wall0,
        cpu_time_s=time.process_time() - cpu0,
        reached_target=bool(errors is not None and errors.max() <= frequency_error_target_THz),
        iterations=iterations,
        failure=failure,
    )


def stabilized_start(atoms: Atoms, ph, supercell, symprec: float) -> np.ndarray:
    """phonopy's finite-displacement force constants with run_sscha's starting rule applied."""
    from generate.sscha import SSCHASettings, starting_dynamical_matrices, supercell_model, to_blocks

    settings = SSCHASettings(symprec=symprec)
    model = supercell_model(atoms, supercell, settings)
    offsets = model.atoms.get_scaled_positions(wrap=False) - ph.supercell.scaled_positions
    if np.abs(offsets - np.round(offsets)).max() > 1e-8:
        raise RuntimeError("phonopy's supercell and run_sscha's differ in atom order")
    mass_outer, _, dynamical, _ = starting_dynamical_matrices(model, ph.force_constants, None, settings)
    return to_blocks(dynamical * mass_outer)


def compare(frequencies_a, errors_a, frequencies_b, errors_b, n_acoustic: int = 3) -> dict:
    """Mode-by-mode agreement of two sorted frequency sets, acoustic zero modes left out."""
    a, b = np.asarray(frequencies_a)[n_acoustic:], np.asarray(frequencies_b)[n_acoustic:]
    combined = np.hypot(np.asarray(errors_a)[n_acoustic:], np.asarray(errors_b)[n_acoustic:])
    difference = a - b
    z = difference / combined
    return {
        "max_abs_difference_THz": float(np.abs(difference).max()),
        "mean_difference_THz": float(difference.mean()),
        "max_combined_error_THz": float(combined.max()),
        "max_abs_z": float(np.abs(z).max()),
        "chi2_per_mode": float(np.mean(z**2)),
        "n_modes": int(a.size),
        "within_3_sigma": bool(np.all(np.abs(z) <= 3.0)),
    }


def relaxed(structure: str, potential_name: str) -> Atoms:
    from generate.harmonic.relax import RelaxSettings, relax
    from thermobench.potentials import load_calculator
    from thermobench.structures import load_structure

    result = relax(load_structure(structure), load_calculator(potential_name), RelaxSettings())
    if not (result.converged and result.symmetry_kept):
        raise RuntimeError(f"relaxation of {structure}: converged={result.converged}, {result.spacegroup_before} -> {result.spacegroup_after}")
    return result.atoms


def main() -> None:
    from generate.sscha import SSCHASettings, run_sscha
    from thermobench.potentials import DEFAULT_POTENTIAL, describe, load_potential

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structure", default="NaCl")
    parser.add_argument("--supercell", type=int, nargs=3, default=[2, 2, 2])
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--potential", default=DEFAULT_POTENTIAL)
    parser.add_argument("--snapshots", type=int, default=1000, help="phonopy loop: supercells per iteration")
    parser.add_argument("--transient", type=int, default=2, help="phonopy loop: iterations left out of the mean")
    parser.add_argument("--target", type=float, default=0.02, help="frequency stochastic error, THz, for both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    potential = load_potential(args.potential)
    atoms = relaxed(args.structure, args.potential)
    settings = SSCHASettings(temperature_K=args.temperature, frequency_error_target_THz=args.target, seed=args.seed)
    ours = run_sscha(atoms, potential, args.supercell, settings)
    print(f"run_sscha: converged={ours.converged} ({ours.status}), {ours.n_potential_evaluations} evaluations, "
          f"{ours.wall_time_s:.0f} s, max error {ours.max_frequency_error_THz:.4f} THz")
    theirs = run_phonopy_loop(
        atoms, potential, args.supercell, args.temperature, args.snapshots, args.transient, args.target, seed=args.seed
    )
    print(f"phonopy MLPSSCHA: {len(theirs.iterations)} iterations of {args.snapshots}, mean of {theirs.n_averaged}, "
          f"{theirs.n_potential_evaluations} evaluations, {theirs.wall_time_s:.0f} s, "
          f"max error {theirs.frequency_errors_THz.max():.4f} THz")
    agreement = compare(ours.supercell_frequencies_THz, ours.supercell_frequency_errors_THz,
                        theirs.frequencies_THz, theirs.frequency_errors_THz)
    print(json.dumps(agreement, indent=1))
    print(f"{'run_sscha':>10} {'±':>6} {'phonopy':>9} {'±':>6} {'z':>6}")
    for a, ea, b, eb in zip(ours.supercell_frequencies_THz, ours.supercell_frequency_errors_THz,
                            theirs.frequencies_THz, theirs.frequency_errors_THz, strict=True):
        z = (a - b) / np.hypot(ea, eb) if np.hypot(ea, eb) > 0 else 0.0
        print(f"{a:10.4f} {ea:6.4f} {b:9.4f} {eb:6.4f} {z:6.2f}")
    out = args.out or RESULTS / f"crosscheck_{args.structure}_{args.temperature:g}K.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "THERMOBENCH_MODELS=../shared/models .venv/bin/python -m benchmarks.sscha_phonopy_crosscheck "
        + " ".join(__import__("sys").argv[1:]),
        "structure": args.structure,
        "supercell": args.supercell,
        "potential": describe(potential),
        "lattice_vectors_A": atoms.cell.array.tolist(),
        "agreement": agreement,
        "run_sscha": {k: v for k, v in ours.to_json_dict().items() if not k.startswith("mesh")},
        "phonopy_loop": theirs.to_json_dict(),
        "versions": versions(),
    }
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("phonopy", "symfc", "matgl", "torch", "hiphive", "numpy")}


if __name__ == "__main__":
    main()
