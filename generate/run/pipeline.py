"""Generation pipeline: relax → harmonic phonons → SSCHA at each temperature → κ (optional), per material.

Runner: :func:`run` takes a config (``conf/generate.yaml``), lists the materials of its source and
computes each one on an executor (Ray, or serial for debugging and tests). Every material ends as one
self-contained JSON record, written atomically into ``<out_dir>/<fingerprint>/records/``:

- ``status: "ok"`` with one dataset row per temperature (columns of :mod:`thermobench.dataset`), or
- ``status: "failed"`` with the stage, the reason and the traceback; the other materials go on.

Resuming: a material with a record is skipped (failed ones too, unless ``retry_failed``); one that
was stopped mid-way resumes after its last checkpointed stage (SSCHA per temperature, κ;
:mod:`generate.run.checkpoint`, in ``partial/``). The
settings that change the numbers are hashed into a fingerprint; records live in a folder named by
it, next to a ``manifest.json`` that holds the settings and the history of runs, so records made
with different settings are never mixed.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from generate.run.atomic import write_json_atomically
from generate.run.records import compute_material, material_fields, open_run_folder
from generate.run.settings import RECORD_VERSION, GeneratorSettings, check_settings, settings_from_config
from thermobench.families import Material
from thermobench.potentials import LoadedPotential, named_potential_sha256

# ----------------------------------------------------------------------------------------------
# Executors


def serial_executor(materials: list[Material], settings: GeneratorSettings, device: str, potential=None,
                    checkpoint_dir: Path | None = None) -> Iterable[dict]:
    for material in materials:
        yield compute_material(material, settings, device, potential, checkpoint_dir)


def _ray_compute(material: Material, settings: GeneratorSettings, device: str, num_threads: int,
                 checkpoint_dir: str | None) -> dict:
    import torch

    torch.set_num_threads(max(1, num_threads))
    return compute_material(material, settings, device, checkpoint_dir=checkpoint_dir)


def ray_executor(materials: list[Material], settings: GeneratorSettings, device: str, ray_cfg: dict,
                 checkpoint_dir: Path | None = None) -> Iterable[dict]:
    """Materials as Ray tasks; records return to the driver, which writes them (no shared disk needed;
    without one, a worker keeps its checkpoints on its own disk, at the same path)."""
    import ray

    if not ray.is_initialized():
        init = {"include_dashboard": False, "log_to_driver": bool(ray_cfg.get("log_to_driver", False))}
        if ray_cfg.get("address"):
            init["address"] = ray_cfg["address"]
        elif ray_cfg.get("num_cpus"):
            init["num_cpus"] = int(ray_cfg["num_cpus"])
        if ray_cfg.get("num_gpus") is not None and not ray_cfg.get("address"):
            init["num_gpus"] = ray_cfg["num_gpus"]
        # Ray retries a task its memory monitor killed without limit, each time from scratch: bound it, so a
        # material too large for the node becomes a failure record instead of looping (a local Ray only).
        os.environ.setdefault("RAY_task_oom_retries", str(int(ray_cfg.get("max_oom_retries", 2))))
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
            pending[task.remote(material, settings, device, int(max(1, cpus)),
                                None if checkpoint_dir is None else str(checkpoint_dir))] = material
        done, _ = ray.wait(list(pending), num_returns=1)
        material = pending.pop(done[0])
        try:
            yield ray.get(done[0])
        except Exception as error:  # the worker died (out of memory, killed node): record it, go on
            yield {
                "record_version": RECORD_VERSION,
                **material_fields(material),
                "status": "failed",
                "stage": "worker",
                "reason": f"{type(error).__name__}: {error}",
                "traceback": "".join(traceback.format_exception(error)),
                "finished": time.time(),
            }


# ----------------------------------------------------------------------------------------------
# Runner


def checked_against_schema(record: dict) -> dict:
    """The record if its rows fit the dataset schema, else a failure record (stage ``record``) that says why:
    a row that would break ``assemble`` is caught when it is written, not days later."""
    from generate.dataset.assemble import InvalidRecordError, validate_rows

    if record["status"] != "ok":
        return record
    try:
        validate_rows(record["rows"])
    except InvalidRecordError as error:
        kept = {k: v for k, v in record.items() if k != "rows"}
        return {**kept, "status": "failed", "stage": "record", "reason": f"row does not fit the dataset schema: {error}",
                "traceback": ""}
    return record


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

    from generate.run.sources import materials_from_config

    start = time.time()
    settings = settings_from_config(cfg)
    typed = check_settings(settings)  # the only conversion: workers get these typed settings
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
    run_entry = {
        "started": start,
        "pid": os.getpid(),
        "command": cfg.get("command_line") or "",
        "executor": cfg.executor.kind,
        "host": os.uname().nodename,
        "n_requested": len(materials),
        "n_skipped": skipped,
        "n_done": 0,
        "n_failed": 0,
        "wall_time_s": 0.0,
    }
    folder.save_run(run_entry)

    device = str(cfg.potential.device)
    if cfg.executor.kind == "serial" or potential is not None:
        records = serial_executor(todo, typed, device, potential, folder.partial)
    elif cfg.executor.kind == "ray":
        from omegaconf import OmegaConf

        records = ray_executor(todo, typed, device, OmegaConf.to_container(cfg.executor.ray, resolve=True), folder.partial)
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
        record = checked_against_schema(record)
        write_json_atomically(folder.record_path(record["material_id"]), record)
        key = "n_done" if record["status"] == "ok" else "n_failed"
        run_entry[key] += 1
        run_entry["wall_time_s"] = time.time() - start
        folder.save_run(run_entry)
        if record["status"] != "ok":
            bar.write(f"[generate] {record['material_id']} failed at {record['stage']}: {record['reason'][:300]}")
        bar.set_postfix(done=run_entry["n_done"], failed=run_entry["n_failed"], skipped=skipped)
        bar.update(1)
    bar.close()
    run_entry["finished"] = time.time()
    run_entry["wall_time_s"] = time.time() - start
    folder.save_run(run_entry)
    return RunSummary(folder.root, info["fingerprint"], len(materials), skipped, run_entry["n_done"], run_entry["n_failed"], run_entry["wall_time_s"])
