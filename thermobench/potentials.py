"""Load matgl potentials (local directories first, the HuggingFace Hub second) and evaluate them.

Every potential goes through :mod:`thermobench.matgl_compat`, so checkpoints trained with matgl's
pre-3.0 message-passing convention compute what they were trained to compute.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matgl
import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import neighbor_list
from matgl.apps.pes import Potential
from matgl.ext.ase import Atoms2Graph, PESCalculator

from thermobench.matgl_compat import (
    METADATA_KEY,
    Convention,
    IncompatibleCheckpointError,
    apply_convention,
    detect_convention,
)

DEFAULT_POTENTIAL = "M3GNet-MP-2021.2.8-PES"
MODELS_ENV = "THERMOBENCH_MODELS"
MIN_INTERATOMIC_DISTANCE_A = 0.5
_MODEL_FILES = ("model.json", "model.pt", "state.pt")


class PotentialNotFoundError(FileNotFoundError):
    """No local model directory and no Hub model matched a name."""


class UnsupportedStructureError(ValueError):
    """A structure the potential cannot evaluate (no cell, overlapping atoms, unknown element)."""


class OverlappingAtomsError(UnsupportedStructureError):
    """Two atoms closer than MIN_INTERATOMIC_DISTANCE_A (e.g. a thermal ensemble drawn too wide)."""


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _MODEL_FILES)


PACKAGED_MODELS = Path(__file__).parent / "data" / "potentials"  # potentials thermobench ships (its fine-tunes)


def model_search_dirs() -> list[Path]:
    """Directories listed in ``THERMOBENCH_MODELS`` (os.pathsep-separated), in order, then the packaged ones."""
    return [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p] + [PACKAGED_MODELS]


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """Find the matgl model directory for a path, a name in ``THERMOBENCH_MODELS``, or a Hub name."""
    path = Path(name_or_path).expanduser()
    if _is_model_dir(path):
        return path
    if path.exists():
        missing = [f for f in _MODEL_FILES if not (path / f).is_file()]
        raise PotentialNotFoundError(f"{path} is not a matgl model directory: missing {', '.join(missing)}")
    searched = model_search_dirs()
    for directory in searched:
        if _is_model_dir(directory / str(name_or_path)):
            return directory / str(name_or_path)
    where = ", ".join(str(d.resolve()) for d in searched) or f"none (set {MODELS_ENV})"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        hub = "Hub lookup skipped because HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        hub = f"the HuggingFace Hub ({hub_endpoint()}) is unreachable (no network?); set HF_HUB_OFFLINE=1 to skip it"
    else:
        try:
            from matgl.utils.io import _get_file_paths  # downloads into matgl's Hub cache

            return Path(_get_file_paths(path, str_path=str(name_or_path))["model.json"]).parent
        except Exception as hub_error:
            hub = f"HuggingFace Hub lookup failed: {type(hub_error).__name__}: {hub_error}"
    raise PotentialNotFoundError(
        f"Unknown potential {str(name_or_path)!r}: not a model directory, not in the {MODELS_ENV} "
        f"directories [{where}]; {hub}"
    )


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A TCP connection to the Hub within ``timeout_s``: without it matgl's download retries for a minute."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(hub_endpoint())
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout_s):
            return True
    except OSError:
        return False


def checkpoint_sha256(model_dir: str | os.PathLike) -> str:
    """SHA-256 over the three matgl model files, for provenance."""
    digest = hashlib.sha256()
    for name in _MODEL_FILES:
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()


def load_potential(
    name_or_path: str | os.PathLike = DEFAULT_POTENTIAL,
    *,
    convention: Convention | str | None = None,
    device: str = "cpu",
) -> Potential:
    """Load a matgl ``Potential`` that computes what its checkpoint was trained to compute.

    Args:
        name_or_path: a model directory, a name found in ``THERMOBENCH_MODELS``, or a Hub name.
        convention: override the detected message-passing convention; a request that contradicts
            what the checkpoint is known to need is refused.
        device: torch device for the model.
    """
    model_dir = resolve_model_dir(name_or_path)
    needed = detect_convention(model_dir)
    if convention is not None and Convention(convention) is not needed:
        raise IncompatibleCheckpointError(
            f"{model_dir} was trained with the {needed.value}-aggregation convention; evaluating it with "
            f"{Convention(convention).value} aggregation gives wrong energies and forces."
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Incompatible model version", category=UserWarning)
        potential = matgl.load_model(model_dir)
    apply_convention(potential, needed)
    potential.thermobench_info = {  # provenance carried with the object
        "name": Path(model_dir).name,
        "path": str(model_dir),
        "sha256": checkpoint_sha256(model_dir),
        "convention": needed.value,
        "matgl_version": matgl.__version__,
    }
    return potential.to(device).eval()


def check_structure(atoms: Atoms, element_types: Sequence[str], label: str = "structure", cutoff_A: float | None = None) -> None:
    """Raise :class:`UnsupportedStructureError` naming what makes ``atoms`` unusable. With ``cutoff_A``
    (the potential's graph cutoff), also an atom with no neighbour within it: the potential sees an
    isolated atom, its forces and phonons are meaningless (bcc Cs: 5.3 Å to its neighbours, M3GNet 5 Å)."""
    if len(atoms) == 0:
        raise UnsupportedStructureError(f"{label} has no atoms")
    if not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-8:
        raise UnsupportedStructureError(
            f"{label} ({atoms.get_chemical_formula()}) has no periodic 3D cell (pbc={atoms.pbc.tolist()}, "
            f"volume={abs(atoms.cell.volume):.3g} A^3); thermobench evaluates crystals only"
        )
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(element_types))
    if unknown:
        raise UnsupportedStructureError(f"{label} contains element(s) {', '.join(unknown)} the potential does not cover")
    # one neighbour search serves both checks: the overlap one reads its pairs closer than the minimum
    i, j, d = neighbor_list("ijd", atoms, max(MIN_INTERATOMIC_DISTANCE_A, cutoff_A or 0.0))
    if len(d) and d.min() < MIN_INTERATOMIC_DISTANCE_A:
        k = int(np.argmin(d))
        raise OverlappingAtomsError(
            f"{label}: atoms {i[k]} ({atoms[i[k]].symbol}) and {j[k]} ({atoms[j[k]].symbol}) are {d[k]:.3f} A "
            f"apart, closer than {MIN_INTERATOMIC_DISTANCE_A} A"
        )
    if cutoff_A is not None:
        check_no_isolated_atoms(atoms, i, cutoff_A, label)


def check_no_isolated_atoms(atoms: Atoms, bonded: np.ndarray, cutoff_A: float, label: str) -> None:
    """``bonded``: the first atom of every pair within the cutoff (a neighbour list's ``i``, a graph's sources)."""
    lonely = np.setdiff1d(np.arange(len(atoms)), np.asarray(bonded))
    if lonely.size:
        k = int(lonely[0])
        raise UnsupportedStructureError(
            f"{label}: atom {k} ({atoms[k].symbol}) has no neighbour within the potential's {float(cutoff_A):g} A "
            f"cutoff ({lonely.size} such atoms): the potential sees isolated atoms"
        )


class ThermobenchCalculator(PESCalculator):
    """matgl's ASE calculator with stress in eV/A^3 and input checks that name the problem."""

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):  # noqa: D102
        model = self.potential.model
        check_structure(atoms if atoms is not None else self.atoms, model.element_types, cutoff_A=float(model.cutoff))
        super().calculate(atoms, properties, system_changes)


def load_calculator(name_or_path: str | os.PathLike = DEFAULT_POTENTIAL, device: str = "cpu") -> PESCalculator:
    """ASE calculator for a potential; stress in eV/A^3 as ASE filters and optimizers expect."""
    return ThermobenchCalculator(load_potential(name_or_path, device=device), stress_unit="eV/A3")


EMT_ELEMENTS = ("H", "C", "N", "O", "Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")  # what ASE's EMT parametrizes

_LOADED: dict = {}


@dataclass(frozen=True)
class LoadedPotential:
    name: str
    sha256: str
    model: object  # matgl Potential or ASE calculator: what the force functions take
    calculator: object  # ASE calculator for relaxation
    element_types: tuple[str, ...]
    cutoff_A: float | None = None  # graph cutoff (None: EMT)


def load_named_potential(name: str, device: str = "cpu") -> LoadedPotential:
    """A potential by name with its calculator and provenance, cached per process: a matgl checkpoint
    (see :func:`load_potential`), or ``EMT`` (ASE's effective-medium theory, for tests)."""
    key = (name, device)
    if key in _LOADED:
        return _LOADED[key]
    if name == "EMT":
        import ase
        from ase.calculators.emt import EMT

        calculator = EMT()
        sha = hashlib.sha256(f"ase.calculators.emt.EMT ase=={ase.__version__}".encode()).hexdigest()
        loaded = LoadedPotential("EMT", sha, calculator, calculator, EMT_ELEMENTS)
    else:
        potential = load_potential(name, device=device)
        calculator = ThermobenchCalculator(potential, stress_unit="eV/A3")
        info = potential.thermobench_info
        loaded = LoadedPotential(info["name"], info["sha256"], potential, calculator, tuple(potential.model.element_types),
                                 float(potential.model.cutoff))
    _LOADED[key] = loaded
    return loaded


def named_potential_sha256(name: str) -> str:
    """Checksum of a potential without loading it (the driver only needs it for the fingerprint)."""
    if name == "EMT":
        return load_named_potential("EMT").sha256
    return checkpoint_sha256(resolve_model_dir(name))


@dataclass(frozen=True)
class BatchResult:
    """Energies, forces and stresses of many configurations."""

    energies_eV: np.ndarray  # (n_structures,)
    forces_eV_A: list[np.ndarray]  # n_structures arrays of shape (n_atoms, 3)
    stresses_eV_A3: np.ndarray | None  # (n_structures, 3, 3), ASE sign convention


def _device_of(potential: Potential) -> torch.device:
    return next(potential.parameters()).device


def evaluate_batch(
    potential: Potential,
    structures: Sequence[Atoms],
    *,
    max_atoms_per_chunk: int = 2048,
    compute_stress: bool = False,
) -> BatchResult:
    """Energies and forces of many structures, in batched graph passes of bounded size.

    Structures are packed into chunks of at most ``max_atoms_per_chunk`` atoms (a structure larger
    than that forms a chunk of its own); each chunk is one batched forward and backward pass.
    """
    from torch_geometric.data import Batch

    element_types = potential.model.element_types
    for index, atoms in enumerate(structures):
        check_structure(atoms, element_types, label=f"structure {index}")
    converter = Atoms2Graph(element_types=element_types, cutoff=potential.model.cutoff)
    device = _device_of(potential)
    energies: list[float] = []
    forces: list[np.ndarray] = []
    stresses: list[np.ndarray] = []

    def run_chunk(chunk: list[Atoms], first: int) -> None:
        graphs, lattices, states = [], [], []
        for index, atoms in enumerate(chunk, first):
            graph, lattice, state = converter.get_graph(atoms)
            # the graph's own edges: no second neighbour search (which would cost ~10 % of a force call)
            check_no_isolated_atoms(atoms, graph.edge_index[0].numpy(), potential.model.cutoff, f"structure {index}")
            graphs.append(graph)
            lattices.append(torch.as_tensor(np.asarray(lattice), dtype=matgl.float_th).reshape(3, 3))
            states.append(np.asarray(state, dtype=float).reshape(-1))
        batch = Batch.from_data_list(graphs).to(device)
        lattice = torch.stack(lattices).to(device)
        state_attr = torch.as_tensor(np.stack(states), dtype=matgl.float_th, device=device)
        energy, force, stress = potential(batch, lattice, state_attr)[:3]
        energies.extend(energy.detach().reshape(-1).cpu().numpy().tolist())
        offsets = np.cumsum([0] + [len(a) for a in chunk])
        force = force.detach().cpu().numpy()
        forces.extend(force[offsets[k] : offsets[k + 1]] for k in range(len(chunk)))
        if compute_stress:
            stresses.extend(stress.detach().reshape(len(chunk), 3, 3).cpu().numpy() * units.GPa)

    chunk: list[Atoms] = []
    for index, atoms in enumerate(structures):
        if chunk and sum(map(len, chunk)) + len(atoms) > max_atoms_per_chunk:
            run_chunk(chunk, index - len(chunk))
            chunk = []
        chunk.append(atoms)
    if chunk:
        run_chunk(chunk, len(structures) - len(chunk))
    return BatchResult(
        energies_eV=np.asarray(energies),
        forces_eV_A=forces,
        stresses_eV_A3=np.asarray(stresses) if compute_stress else None,
    )


def compute_forces(model: Potential | Calculator, structures: Sequence[Atoms], max_atoms_per_chunk: int = 2048) -> list[np.ndarray]:
    """Forces (eV/A) on many structures: batched for a matgl ``Potential``, looped for an ASE calculator.

    Analytic ASE calculators (EMT, model Hamiltonians in tests) and potentials share one interface; an
    in-memory model with ``evaluate_structures`` (the generator's anchored potential, a fitted expansion) is
    evaluated in one call.
    """
    if hasattr(model, "evaluate_structures"):
        return list(model.evaluate_structures(list(structures))[1])
    if isinstance(model, Potential):
        return evaluate_batch(model, structures, max_atoms_per_chunk=max_atoms_per_chunk).forces_eV_A
    forces = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = model
        forces.append(np.array(atoms.get_forces()))
    return forces


def describe(potential: Potential) -> dict:
    """Provenance of a potential loaded by :func:`load_potential` (name, checksum, convention)."""
    return dict(getattr(potential, "thermobench_info", {}))


def write_convention_metadata(model_dir: str | os.PathLike, convention: Convention) -> None:
    """Record the convention in a saved model's ``model.json`` so it is never guessed again."""
    path = Path(model_dir) / "model.json"
    model_json = json.loads(path.read_text())
    metadata = model_json.get("metadata") or {}
    metadata[METADATA_KEY] = Convention(convention).value
    model_json["metadata"] = metadata
    path.write_text(json.dumps(model_json, indent=4, default=str))
