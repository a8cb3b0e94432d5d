"""Configurations per second: evaluate_batch versus a loop over the ASE calculator.

    THERMOBENCH_MODELS=../shared/models .venv/bin/python benchmarks/batch_forces.py [--device cuda]

Rattled NaCl supercells of 16 and 64 atoms, the workload of phonon and SSCHA ensembles. Both routes
use the same loaded potential; the ratio is measured in one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from ase.build import bulk

from thermobench.potentials import DEFAULT_POTENTIAL, ThermobenchCalculator, evaluate_batch, load_potential


def rattled_supercells(n_atoms: int, count: int, seed: int = 0):
    cell = bulk("NaCl", "rocksalt", a=5.69, cubic=n_atoms % 8 == 0 and n_atoms >= 64)
    repeat = round((n_atoms / len(cell)) ** (1 / 3))
    base = cell.repeat(repeat)
    assert len(base) == n_atoms, (len(base), n_atoms)
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(count):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        configs.append(atoms)
    return configs


def timed(function, repeats: int = 3) -> float:
    function()  # warm-up: graph caches, allocator, kernels
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--potential", default=DEFAULT_POTENTIAL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--count", type=int, default=32, help="configurations per size")
    args = parser.parse_args()

    potential = load_potential(args.potential, device=args.device)
    calculator = ThermobenchCalculator(potential, stress_unit="eV/A3")
    print(f"potential {args.potential}, device {args.device}, {args.count} configurations per size")
    print(f"{'atoms':>6} {'loop conf/s':>12} {'batch conf/s':>13} {'speed-up':>9} {'max |dF| eV/A':>14}")
    for n_atoms in (16, 64):
        configs = rattled_supercells(n_atoms, args.count)

        def loop():
            forces = []
            for atoms in configs:
                atoms = atoms.copy()
                atoms.calc = calculator
                forces.append(atoms.get_forces())
            return forces

        loop_time = timed(loop)
        batch_time = timed(lambda: evaluate_batch(potential, configs))
        difference = max(
            np.abs(a - b).max() for a, b in zip(loop(), evaluate_batch(potential, configs).forces_eV_A, strict=True)
        )
        print(
            f"{n_atoms:>6} {args.count / loop_time:>12.1f} {args.count / batch_time:>13.1f} "
            f"{loop_time / batch_time:>8.2f}x {difference:>14.1e}"
        )


if __name__ == "__main__":
    main()
