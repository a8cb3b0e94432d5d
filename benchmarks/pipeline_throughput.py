"""Materials per hour of the generation pipeline, measured from a run's manifest and records.

    python benchmarks/pipeline_throughput.py outputs/thermobench-mini [--json out.json]

Reports the throughput over the run's wall time (what the machine delivered, resumed runs summed),
the compute time per material (each worker's own wall clock, so with k parallel workers it sums to
about k × the wall time), how it splits over stages, and a cost estimate for a larger dataset.
The figure depends on the machine's load: record the host and what else ran beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path


def throughput(run_folder: Path) -> dict:
    from generate.dataset.assemble import find_run_folder, read_records

    run_folder = find_run_folder(Path(run_folder))
    manifest, ok, failed = read_records(run_folder)
    wall = sum(float(r.get("wall_time_s", 0.0)) for r in manifest["runs"])
    per_material = [float(r["wall_time_s"]) for r in ok]
    sscha = [sum(row["sscha_wall_time_s"] for row in r["rows"]) for r in ok]
    by_family = defaultdict(list)
    by_atoms = defaultdict(list)
    for r in ok:
        by_family[r["family"]].append(float(r["wall_time_s"]))
        by_atoms[r["rows"][0]["n_supercell_atoms"]].append(float(r["wall_time_s"]))
    settings = manifest["settings"]
    executors = sorted({str(r.get("executor")) for r in manifest["runs"]})
    return {
        "run_folder": str(run_folder),
        "hosts": sorted({str(r.get("host")) for r in manifest["runs"]}),
        "executors": executors,
        "cpu_count": os.cpu_count(),
        "n_done": len(ok),
        "n_failed": len(failed),
        "wall_time_h": wall / 3600,
        "materials_per_hour": len(ok) / (wall / 3600) if wall else None,
        "material_compute_s_mean": statistics.mean(per_material) if per_material else None,
        "material_compute_s_median": statistics.median(per_material) if per_material else None,
        "sscha_fraction_of_compute": sum(sscha) / sum(per_material) if per_material else None,
        "compute_s_by_family": {f: statistics.mean(v) for f, v in sorted(by_family.items())},
        "compute_s_by_supercell_atoms": {int(n): statistics.mean(v) for n, v in sorted(by_atoms.items())},
        "temperatures_K": settings["temperatures_K"],
        "n_configurations": settings["sscha"]["n_configurations"],
        "supercell": settings["supercell"],
    }


def cluster_estimate(report: dict, n_materials: int, cores_per_material_on_this_machine: float, cluster_cores: int) -> dict:
    """CPU-core-hours for ``n_materials`` at this run's mean compute time per material, and the wall
    time on ``cluster_cores`` cores; assumes the mix of families and settings of this run."""
    core_hours = n_materials * report["material_compute_s_mean"] * cores_per_material_on_this_machine / 3600
    return {"n_materials": n_materials, "core_hours": core_hours, "cluster_cores": cluster_cores, "wall_hours": core_hours / cluster_cores}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_folder")
    parser.add_argument("--json", help="write the report here too")
    parser.add_argument("--estimate", type=int, default=5000, help="materials in the estimate")
    parser.add_argument("--cluster-cores", type=int, default=512)
    parser.add_argument("--cores-per-material", type=float, default=1.0, help="cores one material used in this run")
    args = parser.parse_args(argv)
    report = throughput(Path(args.run_folder))
    if report["n_done"]:
        report["estimate"] = cluster_estimate(report, args.estimate, args.cores_per_material, args.cluster_cores)
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
