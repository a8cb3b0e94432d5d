"""κ against its q-mesh on the anchoring panel: the 0.2 run's fixed 11×11×11 mesh against meshes of one
sampling density (a length in Å, phonopy's rule n_i ≈ L·|b_i|), same FC2s and FC3, with the cost of each.

    THERMOBENCH_MODELS=../shared/models OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 .venv/bin/python -m benchmarks.kappa_mesh \\
        --phonondb-dir ../phononDB/phonon_db_tarred [--lengths 20 30 40] [--reference 11 11 11] \\
        [--work outputs/kappa_mesh] [--out benchmarks/results/kappa_mesh] [--report-only] [--reverse]

Per material (the anchoring panel's crystals, its settings: DFT geometry and FC2, the SSCHA at 300 K on
the potential anchored to DFT, the potential's FC3 by finite displacements within 5 Å, DFT Born charges):
the FC3 is computed once (:func:`generate.kappa.transport.prepare_kappa`), then κ_harm, κ_ren and their
ratio at 300 K on the reference mesh and on each length, with phono3py's CPU seconds for each. A record per
material under ``--work`` (resumable); the report gives each mesh's largest and median relative deviation
from the reference and its cost relative to the reference's, measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.anchoring_panel import PLAIN, SETTINGS, records

REPO = Path(__file__).resolve().parents[1]
TEMPERATURE_K = 300.0


class DFTUnstable(Exception):
    """No κ_harm to compare: a DFT mesh frequency is imaginary."""


def anchored_300K(material, settings, loaded):
    """The anchoring panel's path up to κ at 300 K: (DFT reference, κ plan, SSCHA result, CPU s); raises
    :class:`DFTUnstable` before any SSCHA for a crystal unstable in DFT."""
    from generate.harmonic.reference import dft_reference
    from generate.kappa.step import kappa_plan
    from generate.run.records import sscha_with_floor

    start = time.process_time()
    reference = dft_reference(material, material.atoms(), loaded, settings)
    tolerance = settings.harmonic.imaginary_tolerance_THz
    if np.min(reference.large.mesh_frequencies_THz) < -tolerance:
        raise DFTUnstable(f"DFT-unstable (a mesh frequency below -{tolerance} THz): no κ")
    one = [s for s in settings.sscha if abs(s.temperature_K - TEMPERATURE_K) < 1e-9]
    fc_harmonic = np.asarray(reference.harmonic.phonon.force_constants)
    results, _, _ = sscha_with_floor(settings.engine, reference.cell, reference.sscha_potential, reference.supercell_matrix,
                                     one, (fc_harmonic, 0))
    values = {**settings.kappa, "symprec": settings.harmonic.symprec,
              "imaginary_tolerance_THz": settings.harmonic.imaginary_tolerance_THz, "temperatures_K": [TEMPERATURE_K]}
    plan = kappa_plan(reference.supercell_matrix, results, values)
    (result,) = plan.chosen
    return reference, plan, result, time.process_time() - start


def prepared_kappa(reference, plan, result, loaded, settings=None):
    """:func:`generate.kappa.transport.prepare_kappa` with the SSCHA's FC2s, DFT's Born charges and ``settings``
    (default: the plan's)."""
    from generate.kappa.transport import prepare_kappa

    return prepare_kappa(reference.cell, loaded.model, settings or plan.settings, fc3=plan.fc3,
                         fc2_renormalized={TEMPERATURE_K: result.force_constants_eV_A2}, fc2_supercell=result.supercell,
                         fc2_harmonic=result.harmonic_force_constants_eV_A2,
                         nac_params=None if reference.nac_params is None else dict(reference.nac_params))


def measure(material, settings, loaded, reference_mesh, lengths) -> dict:
    from generate.kappa.transport import kappa_of_prepared

    try:
        reference, plan, result, sscha_s = anchored_300K(material, settings, loaded)
    except DFTUnstable as error:
        return {"material_id": material.material_id, "formula": material.formula, "error": str(error)}
    start = time.process_time()
    prepared = prepared_kappa(reference, plan, result, loaded)
    record = {"material_id": material.material_id, "formula": material.formula, "n_primitive_atoms": len(prepared.ph3.primitive),
              "sscha_and_reference_cpu_s": sscha_s, "fc3_cpu_s": time.process_time() - start,
              "fc3_evaluations": prepared.fc3.n_potential_evaluations, "meshes": []}
    for mesh in [tuple(reference_mesh), *lengths]:
        start = time.process_time()
        kappa = kappa_of_prepared(prepared, replace(plan.settings, q_mesh=mesh))
        record["meshes"].append({
            "q_mesh": list(mesh) if np.ndim(mesh) else float(mesh),
            "mesh_numbers": None if prepared.ph3.mesh_numbers is None else [int(n) for n in prepared.ph3.mesh_numbers],
            "kappa_harmonic_W_mK": kappa.harmonic.average_at(TEMPERATURE_K) if kappa.harmonic else None,
            "kappa_renormalized_W_mK": kappa.renormalized.average_at(TEMPERATURE_K) if kappa.renormalized else None,
            "kappa_ratio": kappa.kappa_ratio[0], "reason": kappa.reason, "cpu_s": time.process_time() - start,
        })
    return record


def deviation(value, reference):
    return None if value is None or reference is None or reference == 0 else float(value / reference - 1)


def deviation_spreads(ok: list[dict], key: str, k: int) -> tuple[str, str]:
    """"median / largest |deviation|" of κ_harm and of the κ ratio of each material's ``key`` variant ``k`` from
    its variant 0 (meshes, FC3 routes)."""
    def spread(name):
        xs = [abs(d) for m in ok if (d := deviation(m[key][k][name], m[key][0][name])) is not None]
        return f"{100 * np.median(xs):.1f} % / {100 * max(xs):.1f} %" if xs else "—"

    return spread("kappa_harmonic_W_mK"), spread("kappa_ratio")


def report(materials: list[dict], command: str) -> str:
    ok = [m for m in materials if "meshes" in m]
    labels = [m["q_mesh"] for m in ok[0]["meshes"]] if ok else []
    name = lambda q: "x".join(map(str, q)) if isinstance(q, list) else f"{q:g} Å"  # noqa: E731
    lines = ["# κ(300 K) against the q-mesh: a fixed mesh vs one sampling density", "", f"Command: `{command}`", "",
             "Same FC2s (DFT's harmonic, the anchored SSCHA's at 300 K) and FC3 (the potential's finite displacements "
             "within 5 Å) for every mesh; relative deviations from the first mesh; cost: phono3py's CPU seconds for "
             "κ_harm and κ_ren together, summed over the materials, relative to the first mesh's (one process, one thread).",
             "Computed with `python -m benchmarks.kappa_mesh --phonondb-dir ../phononDB/phonon_db_tarred --lengths 20 30 40 "
             "--work benchmarks/results/kappa_mesh/work` (resumable; `--reverse` runs a second process from the other end). "
             "Mesh columns give phono3py's grid (the diagonal of its Smith normal form: their product is the number of q-points).",
             "", f"{len(ok)} materials; left out: " + (", ".join(f"{m['material_id']}: {m['error'][:120]}"
                                                               for m in materials if "error" in m) or "none"), "",
             "| mesh | κ_harm: median / largest \\|dev\\| | κ ratio: median / largest \\|dev\\| | cost vs first | "
             "κ (FC3 + RTA) share of the material's cost |", "|---|---:|---:|---:|---:|"]
    for k, label in enumerate(labels):
        harm, ratio = deviation_spreads(ok, "meshes", k)
        cost = sum(m["meshes"][k]["cpu_s"] for m in ok) / max(sum(m["meshes"][0]["cpu_s"] for m in ok), 1e-9)
        share = np.median([(m["fc3_cpu_s"] + m["meshes"][k]["cpu_s"]) /
                           (m["fc3_cpu_s"] + m["meshes"][k]["cpu_s"] + m["sscha_and_reference_cpu_s"]) for m in ok])
        lines.append(f"| {name(label)} | {harm} | {ratio} | {cost:.3f} | {100 * share:.0f} % (median) |")
    lines += ["", "## Per material", "", "| material | primitive atoms | FC3 CPU s | "
              + " | ".join(f"{name(q)}: mesh, κ_harm, ratio, CPU s" for q in labels) + " |",
              "|---|---:|---:|" + "---|" * len(labels)]
    for m in ok:
        cells = [f"{'x'.join(map(str, x['mesh_numbers'] or ['—']))}, {_f(x['kappa_harmonic_W_mK'])}, {_f(x['kappa_ratio'], 3)}, "
                 f"{x['cpu_s']:.0f}" for x in m["meshes"]]
        lines.append(f"| {m['material_id']} ({m['formula']}) | {m['n_primitive_atoms']} | {m['fc3_cpu_s']:.0f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _f(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def run_panel(args, measure_one) -> None:
    """``measure_one(material, settings, loaded)`` for every panel crystal without a record under ``args.work``
    (the anchoring panel's settings; ``args``: phonondb_dir, plain, work, report_only, reverse)."""
    from generate.run.config import compose
    from generate.run.settings import check_settings, settings_from_config
    from generate.run.sources import materials_from_config
    from thermobench.potentials import load_named_potential

    ids = sorted(r["source_id"] for r in records(args.plain).values() if r.get("source") == "phonondb")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return
    if args.phonondb_dir is None:
        raise SystemExit("--phonondb-dir is needed to compute (or pass --report-only)")
    cfg = compose("generate", [*SETTINGS, f"source.phonondb_dir={args.phonondb_dir}", f"source.ids=[{','.join(ids)}]"])
    settings = check_settings(settings_from_config(cfg))
    loaded = load_named_potential(settings.potential, "cpu")
    materials = materials_from_config(cfg.source)
    for k, material in enumerate(materials[::-1] if args.reverse else materials):
        path = args.work / f"{material.material_id}.json"
        if path.exists():
            continue
        print(f"[{k + 1}/{len(ids)}] {material.material_id} ({material.formula})", flush=True)
        try:
            record = measure_one(material, settings, loaded)
        except Exception as error:  # noqa: BLE001 - one crystal's failure is reported, the panel goes on
            record = {"material_id": material.material_id, "formula": material.formula, "error": f"{type(error).__name__}: {error}"}
        path.write_text(json.dumps(record, indent=1))


def write_report(args, name: str, report, argv) -> None:
    """The records under ``args.work`` as ``report.json`` and ``report.md`` (``report(materials, command)``) in ``args.out``."""
    materials = [json.loads(p.read_text()) for p in sorted(args.work.glob("*.json"))]
    command = f"python -m benchmarks.{name} " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({"command": command, "materials": materials}, indent=1))
    text = report(materials, command)
    (args.out / "report.md").write_text(text)
    print(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phonondb-dir", type=Path)
    parser.add_argument("--plain", type=Path, default=PLAIN, help="the panel: the phonondb crystals of these records")
    parser.add_argument("--lengths", type=float, nargs="+", default=[20.0, 30.0, 40.0])
    parser.add_argument("--reference", type=int, nargs=3, default=[11, 11, 11])
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "kappa_mesh")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "kappa_mesh")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--reverse", action="store_true", help="last material first: a second process on another core")
    args = parser.parse_args(argv)
    run_panel(args, lambda material, settings, loaded: measure(material, settings, loaded, args.reference, args.lengths))
    write_report(args, "kappa_mesh", report, argv)

if __name__ == "__main__":
    main()
