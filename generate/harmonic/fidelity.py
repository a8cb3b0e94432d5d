"""How far the potential is from DFT for one crystal, at the DFT geometry.

A row's ``potential_dft_mae_THz`` compares the potential's phonons *at its own relaxed geometry* (the
one the labels use) with DFT's. That error mixes two things: the force constants themselves and the
lattice the potential relaxes to (a 1-2 % volume error shifts every phonon). The same comparison
with the potential's force constants on the DFT geometry, from exactly the DFT displacements,
separates them: ``potential_dft_mae_dft_geometry_THz``.

At the DFT geometry the potential is not at rest: atoms on free Wyckoff positions feel a residual
force. It is subtracted from the displaced supercells' forces (phonopy's ``--fz``), so the finite
differences see only the displacement's response whatever the displacement set.

    python -m generate.harmonic.fidelity RUN_FOLDER PHONONDB_DIR

adds the column to the finished records of a run that predate it (records are rewritten in place;
a record that has it is left alone, so the command resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

COLUMN = "potential_dft_mae_dft_geometry_THz"


def same_setup_phonopy(reference, unitcell):
    """A phonopy object of ``unitcell`` with the reference's supercell, primitive matrix and symmetry
    tolerance (no NAC)."""
    from phonopy import Phonopy

    return Phonopy(unitcell, supercell_matrix=reference.supercell_matrix, primitive_matrix=reference.primitive_matrix,
                   symprec=reference.symmetry.tolerance)


def potential_phonopy_on_dft_geometry(reference, model, max_atoms_per_chunk: int = 2048):
    """A phonopy object of ``reference``'s cell, supercell and displacements with the potential's FC2
    (full), the forces of the undisplaced supercell subtracted. Returns (phonopy, potential evaluations).
    ``max_atoms_per_chunk``: atoms per batched evaluation (memory: TensorNet needs ~10 GB for 2,048)."""
    from generate.harmonic.dft_data import displacements_only, produce_force_constants
    from generate.harmonic.phonons import to_ase_atoms
    from thermobench.potentials import compute_forces

    phonon = same_setup_phonopy(reference, reference.unitcell)
    phonon.dataset = displacements_only(reference.dataset)
    cells = [to_ase_atoms(phonon.supercell)] + [to_ase_atoms(c) for c in phonon.supercells_with_displacements]
    forces = np.asarray(compute_forces(model, cells, max_atoms_per_chunk))
    phonon.forces = forces[1:] - forces[0]
    produce_force_constants(phonon, full=True)
    return phonon, len(cells)


def dft_geometry_mae(reference, model, qpoints, weights, dft_frequencies_THz) -> float:
    """Mesh-weighted MAE (THz, every band, no NAC) of the potential's frequencies at the DFT geometry
    against ``dft_frequencies_THz`` on ``qpoints`` (reduced coordinates of the same primitive cell)."""
    from generate.harmonic.phonons import mesh_frequency_mae

    phonon, _ = potential_phonopy_on_dft_geometry(reference, model)
    phonon.run_qpoints(np.asarray(qpoints))
    frequencies = np.asarray(phonon.qpoints.frequencies)
    return mesh_frequency_mae(np.asarray(dft_frequencies_THz), frequencies, np.asarray(weights))


def backfill(run_folder: Path, phonondb_dir: Path, potential=None, log=print) -> int:
    """Add :data:`COLUMN` to every finished phonondb record of ``run_folder`` (``<run>/<fingerprint>/records``
    or a records folder) that lacks it, with the potential the rows were made with (by name, checked
    against the rows' checksum; ``potential``: a loaded one instead). Returns the records written."""
    from generate.harmonic.dft_data import load_dft_dataset
    from thermobench.phonondb import archive_path, read_index
    from thermobench.potentials import load_named_potential

    paths = sorted(run_folder.glob("*/records/*.json")) or sorted(run_folder.glob("*.json"))
    todo = []
    for path in paths:
        record = json.loads(path.read_text())
        rows = record.get("rows") or []
        if record.get("status") == "ok" and record.get("source") == "phonondb" and not all(COLUMN in r for r in rows):
            todo.append((path, record))
    made_with = {(r["rows"][0]["potential"], r["rows"][0]["potential_sha256"]) for _, r in todo}
    if len(made_with) > 1:
        raise ValueError(f"{run_folder}: rows made with several potentials {sorted(made_with)}")
    if todo and potential is None:
        ((name, sha),) = made_with
        potential = load_named_potential(name)
        if potential.sha256 != sha:
            raise ValueError(f"{name}: checkpoint sha256 {potential.sha256} is not the rows' {sha}")
    entries = {e.material_id: e for e in read_index()}
    for k, (path, record) in enumerate(todo, 1):
        rows = record["rows"]
        reference = load_dft_dataset(archive_path(phonondb_dir, entries[record["source_id"]]))
        first = rows[0]
        mae = dft_geometry_mae(reference, potential.model, first["mesh_qpoints"], first["mesh_weights"],
                               first["dft_mesh_frequencies_THz"])
        for row in rows:
            row[COLUMN] = mae
        path.write_text(json.dumps(record))
        log(f"[fidelity] {k}/{len(todo)} {record['material_id']} ({record['name']}): {mae:.3f} THz at the DFT geometry, "
            f"{first['potential_dft_mae_THz']:.3f} at its own")
    return len(todo)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m generate.harmonic.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folder", type=Path)
    parser.add_argument("phonondb_dir", type=Path, help="phononDB/phonon_db_tarred")
    args = parser.parse_args(argv)
    for path, what in ((args.run_folder, "run folder"), (args.phonondb_dir, "phonondb directory")):
        if not path.is_dir():
            sys.exit(f"{what} {path} does not exist")
    written = backfill(args.run_folder, args.phonondb_dir)
    print(f"[fidelity] {written} records updated in {args.run_folder}")


if __name__ == "__main__":
    main()
