"""Crystal graphs from the dataset's OPTIMADE structure columns, cached on disk.

``lattice_vectors`` rows are the lattice vectors (Å), ``cartesian_site_positions`` are Cartesian (Å).
Edges join every pair of sites closer than ``cutoff_A`` across periodic images; ``edge_index[0]``
is the source, ``edge_index[1]`` the destination and ``pbc_offshift`` the Cartesian image offset
of the destination, so ``pos[dst] + pbc_offshift - pos[src]`` is the bond vector (matgl's
convention, so the same graphs feed matgl models).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers
from ase.neighborlist import neighbor_list
from torch_geometric.data import Data

GRAPH_FORMAT_VERSION = 1  # bump when the graph content changes, so stale caches are not reused


def atoms_from_row(row) -> Atoms:
    """``ase.Atoms`` from one dataset row (a mapping with the OPTIMADE structure columns)."""
    try:
        cell = np.asarray([list(v) for v in row["lattice_vectors"]], dtype=float)
        positions = np.asarray([list(p) for p in row["cartesian_site_positions"]], dtype=float)
        species = list(row["species_at_sites"])
    except KeyError as missing:
        raise KeyError(f"row {row.get('material_id', '?')!r} lacks structure column {missing}") from None
    if cell.shape != (3, 3) or positions.shape != (len(species), 3):
        raise ValueError(
            f"row {row.get('material_id', '?')!r}: lattice_vectors {cell.shape} or cartesian_site_positions "
            f"{positions.shape} do not fit {len(species)} species_at_sites"
        )
    unknown = [s for s in species if s not in atomic_numbers]
    if unknown:
        raise ValueError(f"row {row.get('material_id', '?')!r}: unknown element(s) {sorted(set(unknown))}")
    return Atoms(symbols=species, positions=positions, cell=cell, pbc=True)


def structure_graph(atoms: Atoms, cutoff_A: float) -> Data:
    """Radius graph of a periodic structure (see module docstring for the edge convention)."""
    # a site may have no neighbour within the cutoff (bcc Cs at 5 A): it keeps its own features only
    src, dst, shifts, dist = neighbor_list("ijSd", atoms, cutoff_A)
    cell = np.asarray(atoms.cell, dtype=float)
    return Data(
        z=torch.as_tensor(atoms.numbers, dtype=torch.long),
        pos=torch.as_tensor(atoms.positions, dtype=torch.float32),
        edge_index=torch.as_tensor(np.stack([src, dst]), dtype=torch.long),
        pbc_offshift=torch.as_tensor(shifts @ cell, dtype=torch.float32),
        pbc_offset=torch.as_tensor(shifts, dtype=torch.float32),
        edge_distance=torch.as_tensor(dist, dtype=torch.float32),
        lattice=torch.as_tensor(cell, dtype=torch.float32).unsqueeze(0),
        num_nodes=len(atoms),
    )


def _structure_key(row) -> str:
    payload = json.dumps(
        [row["material_id"], np.asarray(list(map(list, row["lattice_vectors"]))).round(8).tolist(),
         np.asarray(list(map(list, row["cartesian_site_positions"]))).round(8).tolist(), list(row["species_at_sites"])]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def build_graphs(rows: Sequence, cutoff_A: float, cache_dir: str | os.PathLike | None = None) -> dict[str, Data]:
    """Graphs keyed by ``material_id`` (one per material; its temperatures share it).

    With ``cache_dir`` the graphs are stored in one file named by a digest of the structures, the
    cutoff and the graph format, so a changed structure or cutoff never reuses an old cache.
    """
    unique: dict[str, object] = {}
    for row in rows:
        unique.setdefault(row["material_id"], row)
    digest = hashlib.sha256(
        json.dumps([GRAPH_FORMAT_VERSION, float(cutoff_A), sorted(_structure_key(r) for r in unique.values())]).encode()
    ).hexdigest()[:20]
    path = Path(cache_dir) / f"graphs-{digest}.pt" if cache_dir else None
    if path is not None and path.is_file():
        return torch.load(path, weights_only=False)
    graphs = {mid: structure_graph(atoms_from_row(row), cutoff_A) for mid, row in unique.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(graphs, tmp)
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache
    return graphs
