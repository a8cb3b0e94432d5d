"""κ against the FC3 route on the anchoring panel: the generator's finite displacements within 5 Å against
symfc's fit of random displacements (and other cutoffs), same FC2s and q-mesh, with the cost of each.

    THERMOBENCH_MODELS=../shared/models OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 .venv/bin/python -m benchmarks.fc3_route \\
        --phonondb-dir ../phononDB/phonon_db_tarred [--routes finite_displacement:5 random_fit:5:1 random_fit:5:2] \\
        [--work outputs/fc3_route] [--out benchmarks/results/fc3_route] [--report-only] [--reverse]

Per DFT-stable panel crystal (the anchoring panel's settings: DFT geometry and FC2, the SSCHA at 300 K on the
potential anchored to DFT, DFT Born charges, κ on the generator's default q-mesh): the FC3 by each route, then
κ_harm, κ_ren and their ratio at 300 K, with the CPU seconds of the FC3 (potential evaluations and solver) and
of phono3py's RTA. A route is ``method:cutoff_A[:multiple]``; for ``random_fit`` the number of random snapshots is
``multiple`` × symfc's estimate of the fewest that determine FC2 and FC3 (``minimum_random_snapshots``). The
first route is the reference of the deviations. A record per material under ``--work`` (resumable).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.anchoring_panel import PLAIN
from benchmarks.kappa_mesh import (
    TEMPERATURE_K,
    DFTUnstable,
    _f,
    anchored_300K,
    deviation_spreads,
    prepared_kappa,
    run_panel,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]


def route_settings(base, route: str, reference, result):
    """KappaSettings of one route (``method:cutoff[:multiple]``), the random snapshots counted for this cell."""
    from generate.kappa.force_constants import build_phono3py, minimum_random_snapshots, supercell_matrix_between, unit_cell

    method, cutoff, *multiple = route.split(":")
    settings = replace(base, fc3_method=method, fc3_cutoff_A=float(cutoff))
    if method == "random_fit":
        unit = unit_cell(reference.cell, settings)
        ph3 = build_phono3py(unit, settings, supercell_matrix_between(unit, result.supercell))
        minimum = minimum_random_snapshots(ph3, settings.fc3_cutoff_A)
        settings = replace(settings, fc3_n_snapshots=int(np.ceil(float(multiple[0] if multiple else 1) * minimum)))
    return settings


def measure(material, settings, loaded, routes: list[str]) -> dict:
    from generate.kappa.transport import kappa_of_prepared

    try:
        reference, plan, result, sscha_s = anchored_300K(material, settings, loaded)
    except DFTUnstable as error:
        return {"material_id": material.material_id, "formula": material.formula, "error": str(error)}
    record = {"material_id": material.material_id, "formula": material.formula, "sscha_and_reference_cpu_s": sscha_s,
              "n_supercell_atoms": len(result.supercell), "routes": []}
    for route in routes:
        one = route_settings(plan.settings, route, reference, result)
        start = time.process_time()
        prepared = prepared_kappa(reference, replace(plan, fc3=None), result, loaded, one)
        fc3_s = time.process_time() - start
        start = time.process_time()
        kappa = kappa_of_prepared(prepared, one)
        record["routes"].append({
            "route": route, "n_snapshots": one.fc3_n_snapshots, "fc3_evaluations": prepared.fc3.n_potential_evaluations,
            "fc3_solver": prepared.fc3.solver, "fc3_cpu_s": fc3_s, "rta_cpu_s": time.process_time() - start,
            "kappa_harmonic_W_mK": kappa.harmonic.average_at(TEMPERATURE_K) if kappa.harmonic else None,
            "kappa_renormalized_W_mK": kappa.renormalized.average_at(TEMPERATURE_K) if kappa.renormalized else None,
            "kappa_ratio": kappa.kappa_ratio[0], "reason": kappa.reason,
        })
    return record


def report(materials: list[dict], command: str) -> str:
    ok = [m for m in materials if "routes" in m]
    routes = [r["route"] for r in ok[0]["routes"]] if ok else []
    lines = ["# κ(300 K) against the FC3 route", "", f"Command: `{command}`", "",
             "Same FC2s (DFT's harmonic, the anchored SSCHA's at 300 K), q-mesh and Born charges for every route; FC3 in the "
             "SSCHA supercell. Deviations from the first route; cost: the FC3's CPU seconds (potential evaluations and "
             "solver) summed over the materials, relative to the first route's (one process, one thread).", "",
             f"{len(ok)} materials; left out: " + (", ".join(f"{m['material_id']}: {m['error'][:100]}"
                                                            for m in materials if "error" in m) or "none"), "",
             "| route | κ_harm: median / largest \\|dev\\| | κ ratio: median / largest \\|dev\\| | FC3 cost vs first | "
             "evaluations vs first |", "|---|---:|---:|---:|---:|"]
    for k, route in enumerate(routes):
        harm, ratio = deviation_spreads(ok, "routes", k)
        cost = sum(m["routes"][k]["fc3_cpu_s"] for m in ok) / max(sum(m["routes"][0]["fc3_cpu_s"] for m in ok), 1e-9)
        evaluations = sum(m["routes"][k]["fc3_evaluations"] for m in ok) / max(sum(m["routes"][0]["fc3_evaluations"] for m in ok), 1)
        lines.append(f"| {route} | {harm} | {ratio} | {cost:.3f} | {evaluations:.3f} |")
    lines += ["", "## Per material", "", "| material | supercell atoms | "
              + " | ".join(f"{r}: κ_harm, ratio, evaluations, FC3 s, RTA s" for r in routes) + " |",
              "|---|---:|" + "---|" * len(routes)]
    for m in ok:
        cells = [f"{_f(x['kappa_harmonic_W_mK'])}, {_f(x['kappa_ratio'], 3)}, {x['fc3_evaluations']}, {x['fc3_cpu_s']:.0f}, "
                 f"{x['rta_cpu_s']:.0f}" for x in m["routes"]]
        lines.append(f"| {m['material_id']} ({m['formula']}) | {m['n_supercell_atoms']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phonondb-dir", type=Path)
    parser.add_argument("--plain", type=Path, default=PLAIN, help="the panel: the phonondb crystals of these records")
    parser.add_argument("--routes", nargs="+", default=["finite_displacement:5", "random_fit:5:1", "random_fit:5:2"])
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "fc3_route")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fc3_route")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--reverse", action="store_true", help="last material first: a second process on another core")
    args = parser.parse_args(argv)
    run_panel(args, lambda material, settings, loaded: measure(material, settings, loaded, args.routes))
    write_report(args, "fc3_route", report, argv)

if __name__ == "__main__":
    main()
