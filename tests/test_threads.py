"""A label must not depend on how many threads computed it (BLAS/LAPACK, OpenMP, torch)."""

import os
import subprocess
import sys

import numpy as np

from tests.test_pipeline import REPO, TINY, records_of

# Every numeric column is a deterministic function of the seed. Threads change only the order of
# floating-point sums (1e-16 relative); the SSCHA draws its ensembles in a basis that does not depend
# on how LAPACK resolved degenerate modes, so labels agree to round-off carried through a few SSCHA
# steps (1e-7 bounds it; different ensembles would differ by the stochastic error, ~1e-2).
# Acoustic modes at Gamma are sqrt(round-off of a zero eigenvalue): sqrt(1e-15) x 10 THz ~ 3e-7 THz,
# so frequency columns get an absolute 1e-6 THz.
RTOL, ATOL, ATOL_THZ = 1e-7, 1e-9, 1e-6
SETTINGS = ["supercell.min_atoms=64", "supercell.max_atoms=64", "sscha.n_configurations=10", "sscha.max_steps=2",
            "temperatures_K=[300.0]", "executor.kind=serial"]


def rows_with_threads(n_threads: int, material: str, out) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[variable] = str(n_threads)
    command = [sys.executable, "-m", "generate", *TINY, *SETTINGS, f"source.ids=[{material}]", f"out_dir={out}"]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    (record,) = records_of(out).values()
    assert record["status"] == "ok", record.get("reason")
    return record["rows"]


def numeric_columns(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if key.endswith("wall_time_s") or isinstance(value, bool | str) or value is None:
            continue
        try:
            out[key] = np.asarray(value, dtype=float)
        except (TypeError, ValueError):  # text and nested lists of text
            continue
    return out


def test_labels_are_the_same_with_one_and_two_threads(tmp_path):
    one = rows_with_threads(1, "fcc-Al", tmp_path / "one")
    two = rows_with_threads(2, "fcc-Al", tmp_path / "two")
    assert len(one) == len(two) == 1
    columns_a, columns_b = numeric_columns(one[0]), numeric_columns(two[0])
    assert columns_a.keys() == columns_b.keys()
    assert {"sigma_A", "free_energy_sscha_eV_atom", "renormalized_frequencies_THz"} <= columns_a.keys()
    for key in columns_a:
        atol = ATOL_THZ if key.endswith("_THz") else ATOL
        np.testing.assert_allclose(columns_a[key], columns_b[key], rtol=RTOL, atol=atol, err_msg=key)
