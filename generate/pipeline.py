"""Generation pipeline: relax → harmonic phonons → SSCHA at each temperature → κ (optional), per material.

Runner: :func:`run` takes a config (``conf/generate.yaml``), lists the materials of its source and
computes each one on an executor (Ray, or serial for debugging and tests). Every material ends as one
self-contained JSON record, written atomically into ``<out_dir>/<fingerprint>/records/``:

- ``status: "ok"`` with one dataset row per temperature (columns of :mod:`thermobench.dataset`), or
- ``status: "failed"`` with the stage, the reason and the traceback; the other materials go on.

Resuming: a material with a record is skipped (failed ones too, unless ``retry_failed``). The
settings that change the numbers are hashed into a fingerprint; records live in a folder named by
it, next to a ``manifest.json`` that holds the settings and the history of runs, so records made
with different settings are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from thermobench.families import Material
from thermobench.potentials import LoadedPotential, load_named_potential, named_potential_sha256

RECORD_VERSION = "1"


class StageError(RuntimeError):
    """An error in one stage of one material; ``stage`` names it in the failure record."""

    def __init__(self, stage: str, error: BaseException):
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


# ----------------------------------------------------------------------------------------------
# Settings


def settings_from_config(cfg) -> dict:
    """The settings that change the numbers, as plain data (the fingerprint is taken over this)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True)
    # dataset_version is part of the fingerprint: another version never writes into this run's folder.
    keys = ("potential", "temperatures_K", "supercell", "relax", "harmonic", "sscha", "engine", "kappa", "targets", "dos",
            "seed", "dataset_version")
    settings = {k: container[k] for k in keys}
    settings["dataset_version"] = str(settings["dataset_version"])
    settings["temperatures_K"] = [float(t) for t in settings["temperatures_K"]]
    settings["record_version"] = RECORD_VERSION
    from thermobench.dataset import SCHEMA_VERSION

    settings["schema_version"] = SCHEMA_VERSION
    return settings


def engine_settings(settings: dict):
    """The SSCHA engine of the run (``engine`` in conf/generate.yaml) as :class:`generate.sscha.EngineSettings`."""
    from generate.sscha import EngineSettings, SurrogateSettings

    values = dict(settings["engine"])
    surrogate = {k: tuple(v) if isinstance(v, list) else v for k, v in (values.pop("surrogate", None) or {}).items()}
    return EngineSettings(**values, surrogate=SurrogateSettings(**surrogate))


def check_settings(settings: dict) -> None:
    """Every numerical setting, checked before the first material; ``SettingsError`` names the field."""
    from generate import checks
    from generate.harmonic import HarmonicSettings
    from generate.relax import RelaxSettings
    from generate.sscha import SSCHASettings

    quantum = bool(settings["sscha"].get("quantum", True))
    temperatures = checks.temperatures(settings["temperatures_K"], "temperatures_K", quantum=quantum)
    sc = settings["supercell"]
    checks.atom_budget(sc["min_atoms"], sc["max_atoms"])
    if sc.get("matrix") is not None:
        checks.supercell_matrix(sc["matrix"], "supercell.matrix")
    h = settings["harmonic"]
    RelaxSettings(**{**settings["relax"], "symprec": h["symprec"]})
    HarmonicSettings(displacement_A=h["displacement_A"], symprec=h["symprec"], q_mesh=tuple(h["q_mesh"]),
                     imaginary_tolerance_THz=h["imaginary_tolerance_THz"], temperatures_K=temperatures)
    for temperature in temperatures:
        SSCHASettings(**{**settings["sscha"], "temperature_K": temperature, "seed": int(settings["seed"]),
                         "symprec": h["symprec"], "q_mesh": tuple(h["q_mesh"]), "displacement_A": h["displacement_A"]})
    if settings["kappa"].get("enabled"):
        from generate.kappa import settings_from_dict

        values = {k: v for k, v in settings["kappa"].items() if k != "enabled"}
        settings_from_dict({**values, "temperatures_K": list(temperatures)})
    engine_settings(settings)
    checks.positive(settings["dos"]["sigma_THz"], "dos.sigma_THz")
    checks.positive(settings["dos"]["n_points"], "dos.n_points", integer=True, minimum=2, strict=False)
    checks.positive(settings["targets"]["shift_min_frequency_THz"], "targets.shift_min_frequency_THz", strict=False)


def fingerprint(settings: dict, potential_sha256: str) -> str:
    payload = json.dumps({"settings": settings, "potential_sha256": potential_sha256}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("thermobench", "ase", "phonopy", "spglib", "numpy", "matgl", "torch", "phono3py", "hiphive"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


# ----------------------------------------------------------------------------------------------
# Physics helpers


def choose_supercell(atoms, min_atoms: int, max_atoms: int, matrix=None) -> np.ndarray:
    """Diagonal supercell: the smallest balanced one (by lattice-plane spacing) with ≥ ``min_atoms``
    atoms; if that has more than ``max_atoms``, the largest balanced one that stays within it."""
    from generate.harmonic import supercell_matrix_for_min_length

    if matrix is not None:
        m = np.array(matrix, dtype=int)
        return np.diag(m) if m.ndim == 1 else m
    n = len(atoms)
    if n > max_atoms:
        raise ValueError(f"supercell.max_atoms = {max_atoms} is below the {n} atoms of the cell itself")
    below = np.eye(3, dtype=int)
    for length in np.arange(0.5, 80.0, 0.25):
        m = supercell_matrix_for_min_length(atoms, float(length))
        size = n * round(abs(np.linalg.det(m)))
        if size >= min_atoms:
            return m if size <= max_atoms else below
        below = m
    return below


def mode_thermodynamics(frequencies_THz: np.ndarray, temperature_K: float, n_atoms: int, tolerance_THz: float):
    """Quantum harmonic F (eV), S and Cv (k_B), per atom, of the modes above ``tolerance_THz``."""
    from ase import units

    h_eV_THz = 4.135667696e-3  # Planck constant in eV/THz
    nu = np.asarray(frequencies_THz)
    nu = nu[nu > tolerance_THz]
    energy = h_eV_THz * nu
    kT = units.kB * temperature_K
    if kT == 0:
        return float(np.sum(energy / 2) / n_atoms), 0.0, 0.0
    x = energy / kT
    free = np.sum(energy / 2 + kT * np.log(-np.expm1(-x)))
    entropy = np.sum(x / np.expm1(x) - np.log(-np.expm1(-x)))
    heat_capacity = np.sum(x**2 * np.exp(-x) / np.expm1(-x) ** 2)
    return float(free / n_atoms), float(entropy / n_atoms), float(heat_capacity / n_atoms)


def smeared_dos(frequencies_THz: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smeared DOS per primitive cell: integrates to the number of bands."""
    w = np.asarray(weights, float) / np.sum(weights)
    f = np.asarray(frequencies_THz)
    kernel = np.exp(-0.5 * ((grid[:, None, None] - f[None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return np.einsum("gqb,q->g", kernel, w)


def frequency_shifts(harmonic: np.ndarray, renormalized: np.ndarray, n_imaginary: int, min_frequency_THz: float):
    """Mean (signed) and max (absolute) relative shift of the supercell modes, paired by rank.

    Only defined for a harmonically stable crystal (no harmonic imaginary modes): rank pairing of
    sorted spectra then matches each mode with its renormalized self up to band crossings, which the
    sorted comparison deliberately ignores. Modes with harmonic ν below ``min_frequency_THz``
    (acoustic modes at Γ, numerical noise) are left out so tiny denominators do not dominate.
    Returns (mean, max, n_modes, null_reason).
    """
    if n_imaginary > 0:
        return None, None, 0, f"{n_imaginary} harmonic imaginary mode(s): no harmonic reference frequency"
    h, r = np.sort(harmonic), np.sort(renormalized)
    keep = h >= min_frequency_THz
    if not keep.any():
        return None, None, 0, f"no harmonic mode above {min_frequency_THz} THz"
    shift = (r[keep] - h[keep]) / h[keep]
    return float(shift.mean()), float(np.abs(shift).max()), int(keep.sum()), None


def structure_hash(atoms) -> str:
    payload = json.dumps(
        [atoms.get_chemical_symbols(), np.round(atoms.cell.array, 3).tolist(), np.round(atoms.positions, 3).tolist()]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def finite_or_none(x):
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


# ----------------------------------------------------------------------------------------------
# One material


def compute_material(material: Material, settings: dict, device: str = "cpu", potential=None) -> dict:
    """Compute one material's record; never raises (a failure becomes a failure record).

    ``potential``: a :class:`LoadedPotential` to use instead of loading ``settings["potential"]``.
    """
    start = time.time()
    base = {
        "record_version": RECORD_VERSION,
        "material_id": material.material_id,
        "name": material.name,
        "formula": material.formula,
        "family": material.family,
        "source": material.source,
        "source_id": material.source_id,
        "started": start,
        "host": os.uname().nodename,
    }
    try:
        rows = _compute_rows(material, settings, device, potential, start)
    except BaseException as error:  # noqa: BLE001 - the record must say what happened, whatever it was
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        stage = error.stage if isinstance(error, StageError) else "unknown"
        cause = error.error if isinstance(error, StageError) else error
        return {
            **base,
            "status": "failed",
            "stage": stage,
            "reason": f"{type(cause).__name__}: {cause}",
            "traceback": "".join(traceback.format_exception(cause)),
            "wall_time_s": time.time() - start,
            "finished": time.time(),
        }
    return {**base, "status": "ok", "rows": rows, "wall_time_s": time.time() - start, "finished": time.time()}


def _stage(name: str, function: Callable, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001
        raise StageError(name, error) from error


def _compute_rows(material: Material, settings: dict, device: str, potential, start: float) -> list[dict]:
    from generate.harmonic import HarmonicSettings, harmonic_phonons
    from generate.relax import RelaxSettings, relax
    from generate.sscha import SSCHASettings, run_sscha_engine
    from thermobench.families import formula_reduced
    from thermobench.potentials import check_structure

    atoms = _stage("load", material.atoms)
    loaded = potential if potential is not None else _stage("potential", load_named_potential, settings["potential"], device)
    _stage("check", check_structure, atoms, loaded.element_types, f"{material.material_id} ({material.formula})")
    sc = settings["supercell"]
    _stage("check", choose_supercell, atoms, sc["min_atoms"], sc["max_atoms"], sc.get("matrix"))  # before the relaxation
    if material.source == "file":  # a file's name says nothing reliable about its formula
        material = replace(material, formula=atoms.get_chemical_formula("metal", empirical=True))

    symprec = settings["harmonic"]["symprec"]
    relax_settings = RelaxSettings(**{**settings["relax"], "symprec": symprec})
    relaxed = _stage("relax", relax, atoms, loaded.calculator, relax_settings)
    cell = relaxed.atoms
    cell.calc = None

    matrix = choose_supercell(cell, sc["min_atoms"], sc["max_atoms"], sc.get("matrix"))
    temperatures = [float(t) for t in settings["temperatures_K"]]
    h = settings["harmonic"]
    tolerance = float(h["imaginary_tolerance_THz"])
    harmonic_settings = HarmonicSettings(
        supercell_matrix=tuple(map(tuple, matrix.tolist())),
        displacement_A=h["displacement_A"],
        symprec=symprec,
        q_mesh=tuple(h["q_mesh"]),
        imaginary_tolerance_THz=tolerance,
        temperatures_K=tuple(temperatures),
    )
    harmonic = _stage("harmonic", harmonic_phonons, cell, loaded.model, harmonic_settings)
    fc_harmonic = np.asarray(harmonic.phonon.force_constants)
    n_super = len(harmonic.phonon.supercell)

    sg = _stage("symmetry", _spacegroup_number_symbol, cell, symprec)
    versions = package_versions()
    dos_cfg = settings["dos"]
    sscha_cfg = dict(settings["sscha"])
    shift_min = float(settings["targets"]["shift_min_frequency_THz"])
    static_energy = relaxed.energy_eV_atom
    harmonic_super = None
    harm_mesh = np.asarray(harmonic.mesh_frequencies_THz)
    harm_comm = np.asarray(harmonic.commensurate_frequencies_THz)

    engine = engine_settings(settings)
    results = []
    for temperature in temperatures:
        sscha_settings = SSCHASettings(
            **{**sscha_cfg, "temperature_K": temperature, "seed": int(settings["seed"]), "symprec": symprec,
               "q_mesh": tuple(h["q_mesh"]), "displacement_A": h["displacement_A"]}
        )
        result = _stage(f"sscha@{temperature:g}K", run_sscha_engine, cell, loaded.model, matrix, sscha_settings, engine,
                        harmonic=(fc_harmonic, 0))
        results.append(result)
        harmonic_super = result.harmonic_supercell_frequencies_THz

    kappas = _stage("kappa", _kappa_columns, settings, cell, matrix, loaded, harmonic, results)

    # Frequency grid shared by every temperature, so DOS rows are comparable.
    all_max = max([harm_mesh.max()] + [r.mesh_frequencies_THz.max() for r in results])
    all_min = min([harm_mesh.min()] + [r.mesh_frequencies_THz.min() for r in results])
    sigma = float(dos_cfg["sigma_THz"])
    grid = np.linspace(min(0.0, all_min) - 3 * sigma, all_max + 3 * sigma, int(dos_cfg["n_points"]))
    harm_dos = smeared_dos(harm_mesh, harmonic.mesh_weights, grid, sigma)

    n_imag = int((harmonic_super < -tolerance).sum())
    harm_min = float(min(harm_mesh.min(), harmonic_super.min()))
    mesh_full = np.asarray(harmonic.mesh_weights)
    n_imag_mesh = int(((harm_mesh < -tolerance).sum(axis=1) * mesh_full).sum())
    identity = {
        "material_id": material.material_id,
        "name": material.name,
        "formula": material.formula,
        "family": material.family,
        "source": material.source,
        "source_id": material.source_id,
        "spacegroup_number": sg[0],
        "spacegroup_symbol": sg[1],
        "structure_hash": structure_hash(cell),
        "lattice_vectors": cell.cell.array.tolist(),
        "cartesian_site_positions": cell.positions.tolist(),
        "species_at_sites": cell.get_chemical_symbols(),
        "nsites": len(cell),
        "elements": sorted(set(cell.get_chemical_symbols())),
        "chemical_formula_reduced": formula_reduced(cell),
        "supercell_matrix": matrix.astype(int).tolist(),
        "n_supercell_atoms": n_super,
        "static_energy_eV_atom": static_energy,
    }
    rows = []
    wall = time.time() - start
    for temperature, result, kappa in zip(temperatures, results, kappas, strict=True):
        if not np.allclose(result.mesh_qpoints, harmonic.mesh_qpoints):
            raise StageError("record", ValueError("harmonic and SSCHA q-meshes differ"))
        if n_imag == 0:
            f_h, s_h, c_h = mode_thermodynamics(harmonic_super, temperature, n_super, tolerance)
            f_h += static_energy
            thermo_reason = None
        else:
            f_h = s_h = c_h = None
            thermo_reason = f"{n_imag} harmonic imaginary mode(s) at commensurate q"
        _, s_s, c_s = mode_thermodynamics(result.supercell_frequencies_THz, temperature, n_super, tolerance)
        mean_shift, max_shift, n_shift, shift_reason = frequency_shifts(
            harmonic_super, result.supercell_frequencies_THz, n_imag, shift_min
        )
        ren_mesh = np.asarray(result.mesh_frequencies_THz)
        rows.append(
            {
                **identity,
                "temperature_K": temperature,
                "quantum": bool(result.quantum),
                "harmonic_frequencies_THz": np.asarray(harmonic_super).tolist(),
                "renormalized_frequencies_THz": result.supercell_frequencies_THz.tolist(),
                "renormalized_frequency_errors_THz": result.supercell_frequency_errors_THz.tolist(),
                "commensurate_qpoints": np.asarray(harmonic.commensurate_qpoints).tolist(),
                "harmonic_commensurate_frequencies_THz": harm_comm.tolist(),
                "renormalized_commensurate_frequencies_THz": np.asarray(result.commensurate_frequencies_THz).tolist(),
                "q_mesh": [int(x) for x in h["q_mesh"]],
                "mesh_qpoints": np.asarray(harmonic.mesh_qpoints).tolist(),
                "mesh_weights": [int(w) for w in harmonic.mesh_weights],
                "harmonic_mesh_frequencies_THz": harm_mesh.tolist(),
                "renormalized_mesh_frequencies_THz": ren_mesh.tolist(),
                "dos_frequencies_THz": grid.tolist(),
                "harmonic_dos_states_per_THz": harm_dos.tolist(),
                "renormalized_dos_states_per_THz": smeared_dos(ren_mesh, result.mesh_weights, grid, sigma).tolist(),
                "dos_sigma_THz": sigma,
                "imaginary_tolerance_THz": tolerance,
                "n_imaginary_harmonic": n_imag,
                "n_imaginary_harmonic_mesh": n_imag_mesh,
                "harmonic_min_frequency_THz": harm_min,
                "n_imaginary_renormalized": int((result.supercell_frequencies_THz < -tolerance).sum()),
                "renormalized_min_frequency_THz": float(min(ren_mesh.min(), result.supercell_frequencies_THz.min())),
                "free_energy_harmonic_eV_atom": finite_or_none(f_h),
                "entropy_harmonic_kB_atom": finite_or_none(s_h),
                "heat_capacity_harmonic_kB_atom": finite_or_none(c_h),
                "harmonic_thermo_null_reason": thermo_reason,
                "free_energy_sscha_eV_atom": float(result.free_energy_eV_atom),
                "entropy_sscha_kB_atom": s_s,
                "heat_capacity_sscha_kB_atom": c_s,
                "anharmonic_free_energy_eV_atom": None if f_h is None else float(result.free_energy_eV_atom - f_h),
                "sigma_A": float(result.sigma_A),
                "mean_relative_frequency_shift": mean_shift,
                "max_relative_frequency_shift": max_shift,
                "n_shift_modes": n_shift,
                "shift_min_frequency_THz": shift_min,
                "shift_null_reason": shift_reason,
                **kappa,
                "sscha_converged": bool(result.converged),
                "sscha_status": result.status,
                "sscha_steps": len(result.history),
                "sscha_n_configurations": int(result.history[-1].n_configurations),
                "frequency_error_THz": float(result.max_frequency_error_THz),
                "free_energy_error_eV_atom": float(result.free_energy_error_eV_atom),
                "n_potential_evaluations": int(result.n_potential_evaluations),
                "n_harmonic_evaluations": int(harmonic.n_potential_evaluations),
                "relax_converged": bool(relaxed.converged),
                "relax_max_force_eV_A": float(relaxed.max_force_eV_A),
                "relax_symmetry_kept": bool(relaxed.symmetry_kept),
                "sscha_wall_time_s": float(result.wall_time_s),
                "material_wall_time_s": wall,
                "potential": loaded.name,
                "potential_sha256": loaded.sha256,
                "thermobench_version": versions["thermobench"] or "unknown",
                "package_versions": json.dumps(versions, sort_keys=True),
                "seed": int(settings["seed"]),
                "settings_json": json.dumps(settings, sort_keys=True),
            }
        )
    for row in rows:  # fields a float column would otherwise carry as NaN or inf
        for key, value in row.items():
            if isinstance(value, float) and not np.isfinite(value):
                raise StageError("record", ValueError(f"{key} = {value} at {row['temperature_K']} K is not finite"))
    return rows


def _spacegroup_number_symbol(atoms, symprec: float) -> tuple[int, str]:
    import spglib

    data = spglib.get_symmetry_dataset((atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers), symprec=symprec)
    if data is None:
        raise ValueError(f"spglib found no symmetry at symprec={symprec}")
    return int(data.number), str(data.international)


def _kappa_columns(settings: dict, cell, matrix, loaded, harmonic, results) -> list[dict]:
    """κ columns per temperature: computed when enabled and generate.kappa exists, else null with the reason."""
    cfg = settings.get("kappa") or {}
    if not cfg.get("enabled", False):
        return [_null_kappa("not computed: kappa disabled in the generation settings") for _ in results]
    try:
        from generate import kappa as kappa_module
    except ImportError:
        return [_null_kappa("not computed: generate.kappa is not available in this installation") for _ in results]
    # Contract with generate.kappa: pipeline_kappa_columns(cell, supercell_matrix, model, harmonic result,
    # SSCHA results (one per temperature), kappa settings) -> one dict of the four κ columns per temperature,
    # with kappa_null_reason set where κ could not be computed (e.g. harmonically unstable).
    adapter = getattr(kappa_module, "pipeline_kappa_columns", None)
    if adapter is None:
        return [_null_kappa("not computed: generate.kappa has no pipeline_kappa_columns entry point") for _ in results]
    return adapter(cell, matrix, loaded.model, harmonic, results, cfg)


def _null_kappa(reason: str) -> dict:
    return {"kappa_harmonic_W_mK": None, "kappa_renormalized_W_mK": None, "kappa_ratio": None, "kappa_null_reason": reason}


# ----------------------------------------------------------------------------------------------
# Records on disk


def safe_name(material_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", material_id)


def write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class RunFolder:
    """``<out_dir>/<fingerprint[:12]>/``: manifest.json and records/<material_id>.json."""

    root: Path

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def record_path(self, material_id: str) -> Path:
        return self.records / f"{safe_name(material_id)}.json"

    def read_record(self, material_id: str) -> dict | None:
        path = self.record_path(material_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a torn file cannot exist with atomic writes, but never trust it

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())


def open_run_folder(out_dir: Path, settings: dict, sha: str) -> tuple[RunFolder, dict]:
    """The run folder for these settings, created with its manifest, or reopened after checking it."""
    fp = fingerprint(settings, sha)
    folder = RunFolder(Path(out_dir) / fp[:12])
    if folder.manifest_path.is_file():
        manifest = folder.manifest()
        if manifest["settings_fingerprint"] != fp:
            raise RuntimeError(
                f"{folder.manifest_path} belongs to settings {manifest['settings_fingerprint']}, not {fp}; "
                "refusing to mix records (choose another out_dir)"
            )
    else:
        manifest = {
            "settings_fingerprint": fp,
            "settings": settings,
            "potential_sha256": sha,
            "created": time.time(),
            "runs": [],
        }
        write_json_atomically(folder.manifest_path, manifest)
    others = [p.name for p in Path(out_dir).iterdir() if p.is_dir() and p.name != folder.root.name and (p / "manifest.json").is_file()]
    return folder, {"fingerprint": fp, "other_settings": others}


# ----------------------------------------------------------------------------------------------
# Executors


def serial_executor(materials: list[Material], settings: dict, device: str, potential=None) -> Iterable[dict]:
    for material in materials:
        yield compute_material(material, settings, device, potential)


def _ray_compute(material: Material, settings: dict, device: str, num_threads: int) -> dict:
    import torch

    torch.set_num_threads(max(1, num_threads))
    return compute_material(material, settings, device)


def ray_executor(materials: list[Material], settings: dict, device: str, ray_cfg: dict) -> Iterable[dict]:
    """Materials as Ray tasks; records return to the driver, which writes them (no shared disk needed)."""
    import ray

    if not ray.is_initialized():
        init = {"include_dashboard": False, "log_to_driver": bool(ray_cfg.get("log_to_driver", False))}
        if ray_cfg.get("address"):
            init["address"] = ray_cfg["address"]
        elif ray_cfg.get("num_cpus"):
            init["num_cpus"] = int(ray_cfg["num_cpus"])
        if ray_cfg.get("num_gpus") is not None and not ray_cfg.get("address"):
            init["num_gpus"] = ray_cfg["num_gpus"]
        ray.init(**init)
    cpus = float(ray_cfg.get("num_cpus_per_task", 1))
    gpus = float(ray_cfg.get("num_gpus_per_task", 0))
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=int(ray_cfg.get("max_retries", 1)))(_ray_compute)
    capacity = max(1, int(ray.cluster_resources().get("CPU", 1) // max(cpus, 1e-9)))
    max_in_flight = int(ray_cfg.get("max_in_flight") or 2 * capacity)
    queue = list(materials)
    pending: dict = {}
    while queue or pending:
        while queue and len(pending) < max_in_flight:
            material = queue.pop(0)
            pending[task.remote(material, settings, device, int(max(1, cpus)))] = material
        done, _ = ray.wait(list(pending), num_returns=1)
        material = pending.pop(done[0])
        try:
            yield ray.get(done[0])
        except Exception as error:  # the worker died (out of memory, killed node): record it, go on
            yield {
                "record_version": RECORD_VERSION,
                "material_id": material.material_id,
                "name": material.name,
                "formula": material.formula,
                "family": material.family,
                "source": material.source,
                "source_id": material.source_id,
                "status": "failed",
                "stage": "worker",
                "reason": f"{type(error).__name__}: {error}",
                "traceback": "".join(traceback.format_exception(error)),
                "finished": time.time(),
            }


# ----------------------------------------------------------------------------------------------
# Runner


@dataclass(frozen=True)
class RunSummary:
    run_folder: Path
    fingerprint: str
    n_materials: int
    n_skipped: int
    n_done: int
    n_failed: int
    wall_time_s: float


def run(cfg, materials: list[Material] | None = None, potential: LoadedPotential | None = None, progress: bool = True) -> RunSummary:
    """Run the pipeline for ``cfg`` (``conf/generate.yaml``); ``potential`` overrides the named one
    (serial executor only: a loaded object does not travel to Ray workers)."""
    from tqdm.auto import tqdm

    from generate.sources import materials_from_config

    start = time.time()
    settings = settings_from_config(cfg)
    check_settings(settings)
    materials = materials if materials is not None else materials_from_config(cfg.source)
    ids = [m.material_id for m in materials]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate material ids in the source: {duplicates}")
    sha = potential.sha256 if potential is not None else named_potential_sha256(settings["potential"])
    folder, info = open_run_folder(Path(cfg.out_dir), settings, sha)
    print(f"[generate] records in {folder.root} (settings fingerprint {info['fingerprint'][:12]})")
    if info["other_settings"]:
        print(f"[generate] {cfg.out_dir} also holds runs with other settings: {', '.join(info['other_settings'])} (left untouched)")

    todo, skipped = [], 0
    for material in materials:
        record = folder.read_record(material.material_id)
        if record is not None and (record["status"] == "ok" or not cfg.retry_failed):
            skipped += 1
        else:
            todo.append(material)
    manifest = folder.manifest()
    run_entry = {
        "started": start,
        "command": cfg.get("command_line") or "",
        "executor": cfg.executor.kind,
        "host": os.uname().nodename,
        "n_requested": len(materials),
        "n_skipped": skipped,
        "n_done": 0,
        "n_failed": 0,
        "wall_time_s": 0.0,
    }
    manifest["runs"].append(run_entry)
    write_json_atomically(folder.manifest_path, manifest)

    device = str(cfg.device)
    if cfg.executor.kind == "serial" or potential is not None:
        records = serial_executor(todo, settings, device, potential)
    elif cfg.executor.kind == "ray":
        from omegaconf import OmegaConf

        records = ray_executor(todo, settings, device, OmegaConf.to_container(cfg.executor.ray, resolve=True))
    else:
        raise ValueError(f"executor.kind must be 'ray' or 'serial', not {cfg.executor.kind!r}")

    bar = tqdm(total=len(materials), initial=skipped, disable=not progress, unit="material", dynamic_ncols=True)
    bar.set_postfix(done=0, failed=0, skipped=skipped)
    for record in records:
        record["settings_fingerprint"] = info["fingerprint"]
        for row in record.get("rows", []):
            row["settings_fingerprint"] = info["fingerprint"]
            row["dataset_version"] = str(cfg.dataset_version)
            row["schema_version"] = settings["schema_version"]
        write_json_atomically(folder.record_path(record["material_id"]), record)
        key = "n_done" if record["status"] == "ok" else "n_failed"
        run_entry[key] += 1
        run_entry["wall_time_s"] = time.time() - start
        write_json_atomically(folder.manifest_path, manifest)
        if record["status"] != "ok":
            bar.write(f"[generate] {record['material_id']} failed at {record['stage']}: {record['reason'][:300]}")
        bar.set_postfix(done=run_entry["n_done"], failed=run_entry["n_failed"], skipped=skipped)
        bar.update(1)
    bar.close()
    run_entry["finished"] = time.time()
    run_entry["wall_time_s"] = time.time() - start
    write_json_atomically(folder.manifest_path, manifest)
    return RunSummary(folder.root, info["fingerprint"], len(materials), skipped, run_entry["n_done"], run_entry["n_failed"], run_entry["wall_time_s"])
