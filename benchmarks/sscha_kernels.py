"""The SSCHA's bookkeeping kernels against the straightforward routes they replace, timed in one run.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.sscha_kernels

Once every ensemble is anchored and verified by a surrogate, the potential is no longer the only cost of a
material: a profile of phonondb's BaLiP (py-spy, M3GNet, one thread) spent a quarter of its time in the
space-group average of the SSCHA gradients, and one of CsBr a quarter in phonopy's symmetry search, run
about ten times per material on the same supercell. Per built-in crystal and supercell, three kernels:

- the space-group average of 10 batch gradients (the SSCHA's error batches): phonopy's loop over every
  operation (``symmetrize_force_constants_by_space_group``) against ``SpaceGroupAverage.blocks``;
- a phonopy object of the supercell: ``phonopy.Phonopy(...)`` against ``new_phonopy`` after its first call;
- the projection P M P on the sampled modes of the same 10 matrices: two dense products against the rank-3 update.

Each line gives both times (best of 3; phonopy's average once), their ratio and the largest deviation relative to the matrix scale.
"""

from __future__ import annotations

import time

import numpy as np

CASES = [("NaCl", [3, 3, 3]), ("rutile-SnO2", [2, 2, 2]), ("wurtzite-ZnO", [3, 3, 2]), ("SrTiO3", [3, 3, 3])]
N_BATCHES = 10


def best_of(function, repeats: int = 3) -> tuple[float, object]:
    result, best = None, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def phonopy_average(model, matrices: np.ndarray) -> np.ndarray:
    from phonopy.harmonic.force_constants import symmetrize_force_constants_by_space_group

    from generate.sscha.supercell import to_blocks, to_matrix

    out = []
    for matrix in matrices:
        fc = to_blocks(matrix)
        symmetrize_force_constants_by_space_group(fc, model.atoms.cell.array, model.symmetry)
        out.append(to_matrix(fc))
    return np.array(out)


def main() -> None:
    from phonopy import Phonopy

    from generate.harmonic.phonons import explicit_primitive_matrix, new_phonopy, to_phonopy_atoms
    from generate.sscha import SSCHASettings, supercell_model
    from generate.sscha.direct import sampled_part
    from generate.sscha.supercell import to_blocks, to_matrix
    from thermobench.structures import load_structure

    settings = SSCHASettings()
    print(f"{'crystal':<14} {'supercell':<10} {'atoms':>5} {'|G|':>5}   "
          f"{'average: phonopy / ours':>26} {'phonopy object':>24} {'projection':>22}   max deviation")
    for name, matrix in CASES:
        atoms = load_structure(name)
        model = supercell_model(atoms, matrix, settings)
        n = 3 * model.n_atoms
        matrices = np.random.default_rng(0).normal(size=(N_BATCHES, n, n))
        matrices = 0.5 * (matrices + np.swapaxes(matrices, 1, 2))

        slow_average, expected = best_of(lambda: phonopy_average(model, matrices), repeats=1)  # seconds to minutes
        fast_average, blocks = best_of(lambda: model.average.blocks(to_blocks(matrices)))
        average_deviation = np.abs(to_matrix(blocks) - expected).max() / np.abs(expected).max()

        unitcell = to_phonopy_atoms(atoms)
        primitive = explicit_primitive_matrix(unitcell, settings.primitive_matrix, settings.symprec)
        diagonal = np.diag(matrix)
        slow_phonopy, _ = best_of(lambda: Phonopy(unitcell, supercell_matrix=diagonal, primitive_matrix=primitive,
                                                  symprec=settings.symprec))
        new_phonopy(unitcell, diagonal, primitive, settings.symprec)  # the first call constructs
        fast_phonopy, _ = best_of(lambda: new_phonopy(unitcell, diagonal, primitive, settings.symprec))

        projector = model.basis @ model.basis.T
        slow_projection, dense = best_of(lambda: projector @ matrices @ projector)
        fast_projection, low_rank = best_of(lambda: sampled_part(model, matrices))
        projection_deviation = np.abs(low_rank - dense).max() / np.abs(dense).max()

        print(f"{name:<14} {'x'.join(map(str, matrix)):<10} {model.n_atoms:>5} {len(model.symmetry.symmetry_operations['rotations']):>5}   "
              f"{slow_average:8.3f} / {fast_average:6.3f} s {slow_average / fast_average:5.0f}x "
              f"{slow_phonopy:7.3f} / {fast_phonopy:6.4f} s {slow_phonopy / fast_phonopy:4.0f}x "
              f"{slow_projection:6.3f} / {fast_projection:6.3f} s {slow_projection / fast_projection:4.0f}x   "
              f"{max(average_deviation, projection_deviation):.1e}")


if __name__ == "__main__":
    main()
