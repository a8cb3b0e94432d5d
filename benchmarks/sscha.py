"""SSCHA cost to a frequency stochastic error of 0.02 THz: direct, surrogate and phonopy's own loop.

    THERMOBENCH_MODELS=../shared/models nice .venv/bin/python -m benchmarks.sscha \
        [--materials NaCl CsPbBr3 SrTiO3] [--methods direct surrogate phonopy] [--target 0.02] \
        [--threads 1] [--out benchmarks/results/sscha]

For each material (NaCl, MgO and Si: 2×2×2 supercells of the primitive cell, 16 atoms; fcc Cu: 3×3×3,
27 atoms; cubic CsPbBr3 and SrTiO3: 2×2×2 of the 5-atom cell, 40 atoms, both harmonically unstable,
where phonopy's loop, which has no stabilization, overlaps atoms; all relaxed with the potential first,
untimed) at 300 K, three routes run
one after the other in this process, each until every supercell frequency has a stochastic error
≤ ``--target``:

- ``direct``: ``run_sscha`` with ``frequency_error_target_THz``;
- ``surrogate``: ``run_sscha_surrogate`` (hiphive fit, SSCHA on it, paired verification and
  correction with the potential), same target;
- ``phonopy``: phonopy's ``MLPSSCHA`` loop with the same potential
  (:mod:`benchmarks.sscha_phonopy_crosscheck`), iterated until the mean of its refits after the
  transient has that error.

Wall and CPU time and potential evaluations are reported with ratios to the phonopy loop, and the
frequencies of each route are compared with the phonopy loop's within their combined errors (the
cross-check). The relaxation and one warm-up batch through the potential are untimed. Each route's result is written to ``<out>/<material>_<method>.json`` as it finishes and
reused when present (delete it to rerun), so a stopped run resumes; ``report.json`` and
``report.md`` are rewritten from those files: for every material asked for, every route with a
result file in ``<out>`` is reported, also routes not asked for this time (each record carries the
command line that made it), so results of separate invocations end up in one report. The machine is shared: wall time includes the
waiting for the CPU that other processes take, CPU time does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.sscha_phonopy_crosscheck import RESULTS, compare, run_phonopy_loop, versions

MATERIALS = {"NaCl": (2, 2, 2), "MgO": (2, 2, 2), "Si": (2, 2, 2), "Cu": (3, 3, 3), "CsPbBr3": (2, 2, 2), "SrTiO3": (2, 2, 2)}
KNOWN_METHODS = ("surrogate", "direct", "phonopy")


def starting_structure(name: str):
    from thermobench.structures import builtin_structure

    return builtin_structure(name)  # the catalog's cell at the experimental lattice constant


def relaxed(name: str, potential_name: str):
    from generate.harmonic.relax import RelaxSettings, relax
    from thermobench.potentials import load_calculator

    result = relax(starting_structure(name), load_calculator(potential_name), RelaxSettings())
    if not (result.converged and result.symmetry_kept):
        raise RuntimeError(f"{name}: relaxation converged={result.converged}, {result.spacegroup_before} -> {result.spacegroup_after}")
    return result.atoms


def warm_up(atoms, potential, supercell) -> None:
    """One untimed batch through the potential, so that no route pays torch's first-call costs."""
    from thermobench.potentials import evaluate_batch

    cell = atoms.repeat(supercell)
    rng = np.random.default_rng(0)
    structures = [cell.copy() for _ in range(8)]
    for structure in structures:
        structure.positions += rng.normal(scale=0.05, size=structure.positions.shape)
    evaluate_batch(potential, structures)


def run_method(method: str, atoms, potential, supercell, args) -> dict:
    from generate.sscha import SSCHASettings, SurrogateSettings, run_sscha, run_sscha_surrogate

    settings = SSCHASettings(temperature_K=args.temperature, frequency_error_target_THz=args.target, seed=args.seed)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if method == "phonopy":
        result = run_phonopy_loop(
            atoms, potential, supercell, args.temperature, args.snapshots, args.transient, args.target,
            max_iterations=args.max_iterations, seed=args.seed,
        )
        record = result.to_json_dict()
        record["converged"] = result.reached_target
        record["status"] = f"failed: {result.failure}" if result.failure else "reached target" if result.reached_target else "target not reached"
        record["max_frequency_error_THz"] = float("nan") if result.frequency_errors_THz is None else float(result.frequency_errors_THz.max())
    else:
        if method == "direct":
            result = run_sscha(atoms, potential, supercell, settings)
        else:
            result = run_sscha_surrogate(atoms, potential, supercell, settings, SurrogateSettings())
        record = {k: v for k, v in result.to_json_dict().items() if not k.startswith("mesh")}
        record["max_frequency_error_THz"] = result.max_frequency_error_THz
    record.update(method=method, wall_time_s=time.perf_counter() - wall0, cpu_time_s=time.process_time() - cpu0)
    return record


def summarize(material: str, records: dict, target: float) -> dict:
    baseline = records.get("phonopy")
    rows = {}
    for method, r in records.items():
        row = {
            "converged": r["converged"],
            "status": r.get("status", "reached target" if r["converged"] else "target not reached"),
            "wall_time_s": r["wall_time_s"],
            "cpu_time_s": r["cpu_time_s"],
            "n_potential_evaluations": r["n_potential_evaluations"],
            "max_frequency_error_THz": r["max_frequency_error_THz"],
            "reached_target": r["max_frequency_error_THz"] <= target,
            "torch_threads": r.get("torch_threads"),  # None: not recorded (torch's default)
            "command": r.get("command"),
        }
        if method != "phonopy" and r.get("unstable_harmonic_modes") is not None:
            row["n_unstable_harmonic_modes"] = len(r["unstable_harmonic_modes"])
            row["min_harmonic_frequency_THz"] = min(r["harmonic_supercell_frequencies_THz"][3:])
            row["min_frequency_THz"] = min(r["supercell_frequencies_THz"][3:])
        if baseline is not None and baseline["supercell_frequencies_THz"] is not None and method != "phonopy":
            row["phonopy_wall_over_this"] = baseline["wall_time_s"] / r["wall_time_s"]
            row["phonopy_cpu_over_this"] = baseline["cpu_time_s"] / r["cpu_time_s"]
            row["phonopy_evaluations_over_this"] = baseline["n_potential_evaluations"] / r["n_potential_evaluations"]
            row["agreement_with_phonopy"] = compare(
                r["supercell_frequencies_THz"], r["supercell_frequency_errors_THz"],
                baseline["supercell_frequencies_THz"], baseline["supercell_frequency_errors_THz"],
            )
        if method == "surrogate" and r.get("surrogate"):
            row["surrogate"] = r["surrogate"]
        rows[method] = row
    if "direct" in records and "surrogate" in records:
        rows["surrogate"]["agreement_with_direct"] = compare(
            records["surrogate"]["supercell_frequencies_THz"], records["surrogate"]["supercell_frequency_errors_THz"],
            records["direct"]["supercell_frequencies_THz"], records["direct"]["supercell_frequency_errors_THz"],
        )
    return rows


def markdown(report: dict) -> str:
    lines = [
        "# SSCHA cost to a frequency stochastic error of %.3g THz at %g K" % (report["target_THz"], report["temperature_K"]),
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Potential {report['potential']['name'] if isinstance(report['potential'], dict) and 'name' in report['potential'] else report['potential']}, "
        f"CPU only ({report['cpu_count']} cores shared with other jobs: wall time includes waiting, CPU time does not; "
        f"torch threads: {report.get('torch_threads', 'default')}). "
        f"phonopy loop: {report['snapshots']} snapshots per iteration, {report['transient']} transient iterations.",
        "",
        "| material | method | torch threads | reached | wall s | CPU s | evaluations | max σν THz | phonopy/this wall | phonopy/this CPU | phonopy/this evals | max abs(z) vs phonopy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for material, rows in report["materials"].items():
        for method, row in rows.items():
            agreement = row.get("agreement_with_phonopy", {})
            lines.append(
                f"| {material} | {method} | {row.get('torch_threads') or 'default'} | {row['reached_target']} | {row['wall_time_s']:.0f} | {row['cpu_time_s']:.0f} | "
                f"{row['n_potential_evaluations']} | {row['max_frequency_error_THz']:.4f} | "
                f"{row.get('phonopy_wall_over_this', float('nan')):.2f} | {row.get('phonopy_cpu_over_this', float('nan')):.2f} | "
                f"{row.get('phonopy_evaluations_over_this', float('nan')):.2f} | {agreement.get('max_abs_z', float('nan')):.2f} |"
            )
    lines.append("")
    for material, rows in report["materials"].items():
        for method, row in rows.items():
            if "n_unstable_harmonic_modes" in row:
                lines.append(
                    f"- {material} {method}: {row['n_unstable_harmonic_modes']} harmonically unstable modes at commensurate q "
                    f"(lowest harmonic {row['min_harmonic_frequency_THz']:.2f} THz), lowest renormalized "
                    f"{row['min_frequency_THz']:.2f} THz; status: {row['status']}"
                )
            if method == "phonopy":
                lines.append(f"- {material} {method}: {row['status']}")
            if row.get("surrogate"):
                s = row["surrogate"]
                lines.append(
                    f"- {material} {method}: {s['n_training_structures']} training structures, {s['n_nonzero_parameters']}/"
                    f"{s['n_parameters']} parameters; verification on {s['n_verification']} configurations: relative force "
                    f"error {s['verification_relative_force_error']:.3f}, largest frequency correction "
                    f"{s['max_frequency_difference_THz']:.3f} ± {s['frequency_difference_error_THz']:.3f} THz, "
                    f"{s['n_surrogate_evaluations']} surrogate evaluations (0: exact Gaussian averages)"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    from thermobench.potentials import DEFAULT_POTENTIAL, describe, load_potential

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--materials", nargs="+", default=list(MATERIALS), choices=list(MATERIALS))
    parser.add_argument("--methods", nargs="+", default=["direct", "surrogate", "phonopy"], choices=KNOWN_METHODS)
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--target", type=float, default=0.02, help="frequency stochastic error, THz")
    parser.add_argument("--potential", default=DEFAULT_POTENTIAL)
    parser.add_argument("--snapshots", type=int, default=500, help="phonopy loop: supercells per iteration")
    parser.add_argument("--transient", type=int, default=2, help="phonopy loop: iterations left out of the mean")
    parser.add_argument("--max-iterations", type=int, default=30, help="phonopy loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch intra-op threads (0: torch's default); 1 keeps CPU time free of spin-waiting on a busy machine",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import os

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    potential = load_potential(args.potential)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "THERMOBENCH_MODELS=../shared/models nice .venv/bin/python -m benchmarks.sscha " + " ".join(sys.argv[1:]),
        "temperature_K": args.temperature,
        "target_THz": args.target,
        "snapshots": args.snapshots,
        "transient": args.transient,
        "potential": describe(potential),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "materials": {},
    }
    for material in args.materials:
        supercell = MATERIALS[material]
        atoms = None
        records = {}
        for method in args.methods:
            path = args.out / f"{material}_{method}.json"
            if path.exists():
                records[method] = json.loads(path.read_text())
                print(f"{material} {method}: reusing {path}")
                continue
            if atoms is None:
                atoms = relaxed(material, args.potential)
                print(f"{material}: relaxed, a = {np.linalg.norm(atoms.cell[0]):.4f} Å ({len(atoms)} atoms per cell)", flush=True)
                warm_up(atoms, potential, supercell)
            record = run_method(method, atoms, potential, supercell, args)
            record.update(
                material=material, supercell=list(supercell), lattice_vectors_A=atoms.cell.array.tolist(),
                command=report["command"], torch_threads=torch.get_num_threads(),
            )
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(path)
            records[method] = record
            print(
                f"{material} {method}: converged={record['converged']}, {record['n_potential_evaluations']} evaluations, "
                f"wall {record['wall_time_s']:.0f} s, CPU {record['cpu_time_s']:.0f} s, "
                f"max error {record['max_frequency_error_THz']:.4f} THz",
                flush=True,
            )
        for method in KNOWN_METHODS:
            path = args.out / f"{material}_{method}.json"
            if method not in records and path.exists():
                records[method] = json.loads(path.read_text())
        report["materials"][material] = summarize(material, records, args.target)
        (args.out / "report.json").write_text(json.dumps(report, indent=1))
        (args.out / "report.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
