"""Labels anchored on DFT's harmonic force constants against thermobench-0.2's plain ones, same potential, same crystals.

    THERMOBENCH_MODELS=../shared/models OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.anchoring_panel \\
        --phonondb-dir ../phononDB/phonon_db_tarred [--plain runs/thermobench-0.2/50d730e92f84] \\
        [--work outputs/anchoring_panel] [--out benchmarks/results/anchoring_panel] [--report-only] [--retry-failed] [--workers 2]

The panel is every phonondb crystal of the plain run (``--plain``: thermobench-0.2's records, made with
M3GNet-phonondb-PBEsol, each material relaxed by the potential, its own FC2 in a 15 Å supercell, the
surrogate SSCHA to 0.1 THz at 100/300/500 K and κ (RTA, FC3 within 5 Å) at every temperature). The
anchored run (``harmonic_reference=dft``, the generator's default) uses the same potential, SSCHA and FC3
settings (FC3: the potential's finite displacements within 5 Å, solved by symfc) with κ at 300 K only, one torch
thread per material, resumable under ``--work``; every 3rd material by id hash is audited (the default audits every
20th): the direct engine to 0.05 THz, and κ again with FC3 from the SSCHA's own surrogate fit (its cubic terms).

Reported per route: agreement of the label's harmonic stability with DFT's (phonondb's FC2 on the rows'
q-mesh), the SSCHA's verdict at 300 K, the fraction of hardening mean shifts (rows off the stabilization
floor), σᴬ, κ_harm and κ ratio at 300 K, the potential's residual force and pressure at DFT's geometry,
the audit's fast-vs-verified differences (SSCHA frequencies, σᴬ, κ_harm and κ ratio with either FC3), and the
cost per material (core-seconds: one thread per material in both runs; potential evaluations).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PLAIN = REPO / "runs" / "thermobench-0.2" / "50d730e92f84"
AUDIT_EVERY = 3  # the panel's audit sample (the default: 20)
UNSTABLE_SHARE = 0.15  # DFT-unstable crystals in the production run (thermobench-0.2's regeneration: at most 15 %)
SETTINGS = [  # the plain run's settings (its manifest), the anchoring being the default
    "potential=m3gnet_phonondb", "source=phonondb", "sscha.frequency_error_target_THz=0.1", "kappa=rta",
    "kappa.fc3_cutoff_A=5.0", "+kappa.temperatures_K=[300]", f"audit.every={AUDIT_EVERY}", "executor=serial",
]


def records(folder: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("records/*.json"))}


def run_anchored(phonondb_dir: Path, ids: list[str], work: Path, retry_failed: bool, workers: int) -> Path:
    from generate.run.config import compose
    from generate.run.pipeline import run

    # Each material on one core in either executor; the executor does not change the numbers (nor the fingerprint).
    executor = [] if workers <= 1 else ["executor=ray", f"executor.ray.num_cpus={workers}"]
    cfg = compose("generate", [*SETTINGS, *executor, f"source.phonondb_dir={phonondb_dir}", f"source.ids=[{','.join(ids)}]",
                               f"out_dir={work}", f"retry_failed={str(retry_failed).lower()}"])
    return run(cfg).run_folder


def row_at(record: dict, temperature_K: float) -> dict | None:
    return next((r for r in record.get("rows", []) if abs(r["temperature_K"] - temperature_K) < 1e-6), None)


def harmonic_stable(row: dict) -> bool:
    return row["n_imaginary_harmonic"] == 0 and row["n_imaginary_harmonic_mesh"] == 0


def sscha_stable(row: dict) -> bool:
    return row["n_imaginary_renormalized"] == 0 and not row["at_stabilization_floor"]


def quartiles(values) -> list | None:
    values = [v for v in values if v is not None]
    return [float(x) for x in np.percentile(values, [25, 50, 75])] if values else None


def cost_s(record: dict) -> float:
    """Core-seconds of a material: its worker's CPU time where recorded (a shared machine inflates wall time),
    else its wall time (one torch thread per material)."""
    return float(record.get("cpu_time_s") or record.get("wall_time_s", 0.0))


def evaluations(record: dict) -> int:
    rows = record["rows"]
    return int(sum(r["n_potential_evaluations"] for r in rows) + rows[0]["n_harmonic_evaluations"])


def summarize(label: str, runs: dict, ids: list[str], audit_every: int = 0, verdicts: dict | None = None) -> dict:
    ok = {i: runs[i] for i in ids if i in runs and runs[i]["status"] == "ok"}
    attempted = [runs[i] for i in ids if i in runs]
    at300 = {i: row_at(r, 300.0) for i, r in ok.items()}
    dft_stable = {i for i, r in at300.items() if r["dft_dynamically_stable"]}
    rows = [x for r in ok.values() for x in r["rows"]]
    shifts = [x["mean_relative_frequency_shift"] for x in rows
              if x["mean_relative_frequency_shift"] is not None and not x["at_stabilization_floor"]]
    compute = [cost_s(r) for r in attempted]
    return {
        "label": label,
        "n_attempted": len(attempted),
        "n_ok": len(ok),
        "failures": {r["material_id"]: r["reason"][:200] for r in attempted if r["status"] != "ok"},
        "n_dft_stable": len(dft_stable),
        "harmonic_stability_agrees_with_dft": float(np.mean([harmonic_stable(r) == r["dft_dynamically_stable"]
                                                             for r in at300.values()])),
        "harmonic_stable_on_dft_stable": float(np.mean([harmonic_stable(at300[i]) for i in dft_stable])) if dft_stable else None,
        "sscha_300K_stable_on_dft_stable": float(np.mean([sscha_stable(at300[i]) for i in dft_stable])) if dft_stable else None,
        "rows_at_floor": int(sum(x["at_stabilization_floor"] for x in rows)),
        "n_rows": len(rows),
        "hardening_fraction": float(np.mean(np.asarray(shifts) > 0)) if shifts else None,
        "n_shift_rows": len(shifts),
        "mean_shift_quartiles": quartiles(shifts),
        "sigma_A_300K_quartiles": quartiles(r["sigma_A"] for r in at300.values()),
        "kappa_harmonic_300K_quartiles": quartiles(r["kappa_harmonic_W_mK"] for r in at300.values()),
        "kappa_ratio_300K_quartiles": quartiles(r["kappa_ratio"] for r in at300.values()),
        "n_kappa_ratio_300K": int(sum(r["kappa_ratio"] is not None for r in at300.values())),
        "max_frequency_error_THz": float(max(x["frequency_error_THz"] for x in rows)) if rows else None,
        "core_seconds_per_material_mean": float(np.mean(compute)) if compute else None,
        "core_seconds_per_material_median": float(np.median(compute)) if compute else None,
        "sscha_seconds_per_material_mean": float(np.mean([sum(x["sscha_wall_time_s"] for x in r["rows"]) for r in ok.values()])),
        "evaluations_per_material_mean": float(np.mean([evaluations(r) for r in ok.values()])),
        "materials_per_core_hour": 3600 * len(ok) / max(sum(compute), 1e-9),
        # the audit's direct runs are part of an audited material's cost; the default audits 1 in 20, the panel 1 in 4
        "core_seconds_per_unaudited_material_mean": float(np.mean(unaudited)) if (unaudited := [
            cost_s(r) for r in ok.values() if not audited(r, audit_every)])
            else None,
        # the route's own throughput: the materials outside the audit sample, their failures' cost included
        "materials_per_core_hour_unaudited": 3600 * sum(r["status"] == "ok" for r in outside) / max(sum(map(cost_s, outside)), 1e-9)
        if (outside := [r for r in attempted if not audited(r, audit_every)]) else None,
        "n_audited": int(sum(audited(r, audit_every) for r in ok.values())),
        **fc3_agreement(at300.values()),
        **mesh_agreement(at300.values()),
        **stage_costs([r for r in attempted if not audited(r, audit_every)]),
        **by_dft_stability(attempted, audit_every, verdicts or {}),
    }


def stage_costs(records: list[dict]) -> dict:
    """Mean CPU seconds per stage (records that carry them: ``stage_cpu_time_s``), failures included."""
    timed = [r["stage_cpu_time_s"] for r in records if r.get("stage_cpu_time_s")]
    if not timed:
        return {}
    stages = sorted({k for t in timed for k in t}, key=lambda k: -sum(t.get(k, 0.0) for t in timed))
    return {"stage_cpu_seconds_mean": {k: float(np.mean([t.get(k, 0.0) for t in timed])) for k in stages},
            "n_stage_timed": len(timed)}


def dft_verdicts(*runs: dict) -> dict:
    """material id -> DFT's stability verdict, from the rows of any run that finished it."""
    return {i: row_at(r, 300.0)["dft_dynamically_stable"] for run in runs for i, r in run.items() if r["status"] == "ok"}


def by_dft_stability(records: list[dict], audit_every: int, verdicts: dict) -> dict:
    """Core-seconds per material outside the audit sample, DFT-stable and DFT-unstable crystals apart (failures
    included, by the verdict of ``verdicts``), and the materials per core-hour of a run whose DFT-unstable share is
    ``UNSTABLE_SHARE`` (the production run's ceiling) at these per-class costs."""
    outside = [r for r in records if not audited(r, audit_every) and r["material_id"] in verdicts]
    classes = {stable: [r for r in outside if verdicts[r["material_id"]] == stable] for stable in (True, False)}
    if not classes[True] or not classes[False]:
        return {}
    cost = {stable: float(np.mean([cost_s(r) for r in rs])) for stable, rs in classes.items()}
    rate = {stable: sum(r["status"] == "ok" for r in rs) / sum(map(cost_s, rs)) for stable, rs in classes.items()}
    mix = 1 / ((1 - UNSTABLE_SHARE) / rate[True] + UNSTABLE_SHARE / rate[False])  # finished materials per core-second
    return {"core_seconds_dft_stable_mean": cost[True], "core_seconds_dft_unstable_mean": cost[False],
            "n_dft_stable_outside_audit": len(classes[True]), "n_dft_unstable_outside_audit": len(classes[False]),
            "materials_per_core_hour_production_mix": 3600 * mix}


def mesh_agreement(rows) -> dict:
    """κ on the rows' q-mesh against the audit's reference mesh (same FC2s and FC3), audit sample."""
    pairs = [(r["kappa_harmonic_W_mK"] / r["audit_kappa_harmonic_reference_mesh_W_mK"] - 1,
              r["kappa_ratio"] * r["audit_kappa_harmonic_reference_mesh_W_mK"] / r["audit_kappa_renormalized_reference_mesh_W_mK"] - 1)
             for r in rows if r.get("audit_kappa_harmonic_reference_mesh_W_mK") and r.get("audit_kappa_renormalized_reference_mesh_W_mK")
             and r["kappa_harmonic_W_mK"] and r["kappa_ratio"] is not None]
    if not pairs:
        return {"n_mesh_compared": 0}
    harmonic, ratio = np.abs(np.asarray(pairs)).T
    return {"n_mesh_compared": len(pairs), "kappa_harmonic_mesh_deviation_median": float(np.median(harmonic)),
            "kappa_harmonic_mesh_deviation_max": float(harmonic.max()), "kappa_ratio_mesh_deviation_median": float(np.median(ratio)),
            "kappa_ratio_mesh_deviation_max": float(ratio.max())}


def fc3_pair(row: dict) -> dict | None:
    """κ_harm and κ ratio with the surrogate's FC3 and with the potential's finite-displacement FC3: the row's own
    and the audit's other one; None outside the audit sample."""
    other_h, other_r = row.get("audit_kappa_harmonic_other_fc3_W_mK"), row.get("audit_kappa_renormalized_other_fc3_W_mK")
    if not other_h or other_r is None or not row["kappa_harmonic_W_mK"] or row["kappa_ratio"] is None:
        return None
    own, other = (row["kappa_harmonic_W_mK"], row["kappa_ratio"]), (other_h, other_r / other_h)
    surrogate, fd = (own, other) if row["kappa_fc3_source"].startswith("surrogate") else (other, own)
    return {"kappa_harmonic_surrogate": surrogate[0], "kappa_harmonic_fd": fd[0],
            "kappa_ratio_surrogate": surrogate[1], "kappa_ratio_fd": fd[1]}


def fc3_agreement(rows) -> dict:
    """κ with the surrogate's FC3 against κ with the potential's finite-displacement FC3 (audit sample)."""
    pairs = [p for p in map(fc3_pair, rows) if p is not None]
    if not pairs:
        return {"n_fc3_compared": 0}
    harmonic = np.log([p["kappa_harmonic_surrogate"] / p["kappa_harmonic_fd"] for p in pairs])
    ratio = np.log([p["kappa_ratio_surrogate"] / p["kappa_ratio_fd"] for p in pairs])
    return {"n_fc3_compared": len(pairs),
            "kappa_harmonic_surrogate_over_fd_geomean": float(np.exp(harmonic.mean())),
            "kappa_harmonic_surrogate_over_fd_range": [float(np.exp(harmonic.min())), float(np.exp(harmonic.max()))],
            "kappa_ratio_surrogate_over_fd_geomean": float(np.exp(ratio.mean())),
            "kappa_ratio_surrogate_over_fd_max_deviation": float(np.abs(np.expm1(ratio)).max())}


def audited(record: dict, every: int) -> bool:
    """In its run's audit sample (``every``: the run's audit.every); a failure by its id, the sample being fixed by it."""
    from generate.run.records import in_audit_sample

    if record["status"] == "ok":
        return any(x.get("audit_max_frequency_difference_THz") is not None for x in record["rows"])
    return in_audit_sample(record["material_id"], every)


def per_material(plain: dict, anchored: dict, ids: list[str]) -> list[dict]:
    out = []
    for i in ids:
        entry = {"material_id": i}
        for label, runs in (("plain", plain), ("anchored", anchored)):
            record = runs.get(i)
            if record is None or record["status"] != "ok":
                entry[label] = None if record is None else {"failed": record.get("reason", "")[:200]}
                continue
            row = row_at(record, 300.0)
            entry["formula"] = row["formula"]
            entry["dft_stable"] = row["dft_dynamically_stable"]
            entry[label] = {
                "harmonic_stable": harmonic_stable(row), "sscha_300K_stable": sscha_stable(row),
                "at_floor": row["at_stabilization_floor"], "mean_shift": row["mean_relative_frequency_shift"],
                "sigma_A": row["sigma_A"], "kappa_harmonic_W_mK": row["kappa_harmonic_W_mK"],
                "kappa_ratio": row["kappa_ratio"], "core_s": cost_s(record), "evaluations": evaluations(record),
                "potential_dft_mae_THz": row["potential_dft_mae_THz"],
                "residual_max_force_eV_A": row.get("potential_residual_max_force_eV_A"),
                "residual_pressure_GPa": row.get("potential_residual_pressure_GPa"),
                "audit": None if row.get("audit_max_frequency_difference_THz") is None else [
                    {"T": x["temperature_K"], "max_dnu_THz": x["audit_max_frequency_difference_THz"],
                     "error_THz": x["audit_frequency_difference_error_THz"], "d_sigma_A": x["audit_sigma_A_difference"]}
                    for x in record["rows"]],
                "kappa_fc3_source": row.get("kappa_fc3_source"),
                "fc3": fc3_pair(row),
            }
        out.append(entry)
    return out


def fmt(x, digits=2):
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, list):
        return " / ".join(fmt(v, digits) for v in x)
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def report(summary: dict, materials: list[dict], command: str) -> str:
    p, a, same = summary["plain"], summary["anchored"], summary["plain_same"]
    lines = [
        "# Anchored labels vs thermobench-0.2's plain labels (same potential, same crystals)", "",
        f"Command: `{command}`", "",
        "Plain: thermobench-0.2's records (M3GNet-phonondb-PBEsol; relaxed by the potential, its own FC2, κ at 100/300/500 K). "
        "Anchored: `harmonic_reference=dft` (DFT's geometry and FC2, the SSCHA on the potential anchored to it, DFT Born "
        "charges on mesh and κ), same potential, SSCHA and FC3 settings (FC3 within 5 Å solved by symfc where that sphere fits "
        "the supercell, else by phono3py's own solver as in the plain run), κ at 300 K only, on the generator's default q-mesh "
        "(`kappa.q_mesh`; the plain run's: 11×11×11). One torch thread per material in "
        "both runs. Quartiles are 25 / 50 / 75 %.", "",
        "| | plain (0.2), whole panel | plain, the materials anchored finished | anchored |", "|---|---:|---:|---:|",
    ]
    rows = [
        ("materials finished / attempted", lambda s: f"{s['n_ok']} / {s['n_attempted']}"),
        ("harmonic stability agrees with DFT", lambda s: fmt(100 * s["harmonic_stability_agrees_with_dft"], 0) + " %"),
        ("DFT-stable crystals stable in the label's harmonic part",
         lambda s: fmt(100 * s["harmonic_stable_on_dft_stable"], 0) + f" % of {s['n_dft_stable']}"),
        ("DFT-stable crystals stable in the SSCHA at 300 K", lambda s: fmt(100 * s["sscha_300K_stable_on_dft_stable"], 0) + " %"),
        ("rows at the stabilization floor", lambda s: f"{s['rows_at_floor']} of {s['n_rows']}"),
        ("hardening mean shifts (rows off the floor)", lambda s: fmt(100 * s["hardening_fraction"], 0) + f" % of {s['n_shift_rows']}"),
        ("mean relative shift, quartiles", lambda s: fmt(s["mean_shift_quartiles"], 3)),
        ("σᴬ at 300 K, quartiles", lambda s: fmt(s["sigma_A_300K_quartiles"], 3)),
        ("κ_harm at 300 K (W/mK), quartiles", lambda s: fmt(s["kappa_harmonic_300K_quartiles"], 2)),
        ("κ ratio at 300 K, quartiles", lambda s: fmt(s["kappa_ratio_300K_quartiles"], 2) + f" (n = {s['n_kappa_ratio_300K']})"),
        ("largest stochastic frequency error (THz)", lambda s: fmt(s["max_frequency_error_THz"], 3)),
        ("core-seconds per material, mean (median)",
         lambda s: f"{fmt(s['core_seconds_per_material_mean'], 0)} ({fmt(s['core_seconds_per_material_median'], 0)})"),
        ("SSCHA seconds per material, mean", lambda s: fmt(s["sscha_seconds_per_material_mean"], 0)),
        ("potential evaluations per material, mean", lambda s: fmt(s["evaluations_per_material_mean"], 0)),
        ("materials per core-hour", lambda s: fmt(s["materials_per_core_hour"], 1)),
        ("core-seconds per material outside the audit sample, mean",
         lambda s: f"{fmt(s['core_seconds_per_unaudited_material_mean'], 0)} ({s['n_audited']} audited)"),
        ("materials per core-hour outside the audit sample", lambda s: fmt(s["materials_per_core_hour_unaudited"], 1)),
    ]
    for name, f in rows:
        lines.append(f"| {name} | {f(p)} | {f(same)} | {f(a)} |")
    plain_rate, same_rate = p["materials_per_core_hour"], max(same["materials_per_core_hour"], 1e-9)
    own = a["materials_per_core_hour_unaudited"]
    lines += ["", f"Materials per core-hour: anchored {a['materials_per_core_hour']:.1f} with this panel's audit of 1 material in "
                  f"{AUDIT_EVERY} (its audited materials also run the direct engine to 0.05 THz and κ with the other FC3), "
                  f"{fmt(own, 1)} outside the audit sample, failures' cost included (the default audits 1 in 20). Against the "
                  f"plain run's {plain_rate:.1f} on the whole panel: **{(own or 0) / max(plain_rate, 1e-9):.1f}×** outside the audit, "
                  f"{a['materials_per_core_hour'] / max(plain_rate, 1e-9):.1f}× with it; against its {same_rate:.1f} on the materials "
                  f"the anchored run finished: {(own or 0) / same_rate:.1f}× and {a['materials_per_core_hour'] / same_rate:.1f}×. "
                  "The plain records' cost is their wall time (CPU time was not recorded then; one torch thread per material, "
                  "two materials on two cores), the anchored ones' their worker's CPU time.", ""]
    if a.get("stage_cpu_seconds_mean"):
        lines += [f"Where an anchored material's time goes (CPU seconds per stage, mean over the {a['n_stage_timed']} materials "
                  "outside the audit sample): " + ", ".join(f"{k} {v:.0f}" for k, v in a["stage_cpu_seconds_mean"].items()
                                                            if v >= 0.5) + ".", ""]
    if a.get("materials_per_core_hour_production_mix"):
        lines += [f"By DFT stability (outside the audit sample, failures included): {a['n_dft_stable_outside_audit']} DFT-stable "
                  f"crystals {a['core_seconds_dft_stable_mean']:.0f} core-s each, {a['n_dft_unstable_outside_audit']} DFT-unstable "
                  f"ones {a['core_seconds_dft_unstable_mean']:.0f} (a share of {a['n_dft_unstable_outside_audit'] / (a['n_dft_stable_outside_audit'] + a['n_dft_unstable_outside_audit']):.0%}); "
                  f"at the production run's share of {UNSTABLE_SHARE:.0%} these costs give "
                  f"{a['materials_per_core_hour_production_mix']:.1f} materials per core-hour "
                  f"({a['materials_per_core_hour_production_mix'] / max(plain_rate, 1e-9):.1f}× the plain run's whole-panel rate; "
                  "a projection, not a measurement of that mix).", ""]
    if a.get("n_mesh_compared"):
        lines += [f"κ on the rows' q-mesh against the audit's reference mesh (same FC2s and FC3; {a['n_mesh_compared']} audited "
                  f"materials at 300 K): |Δκ_harm| median {a['kappa_harmonic_mesh_deviation_median']:.1%}, largest "
                  f"{a['kappa_harmonic_mesh_deviation_max']:.1%}; |Δ(κ ratio)| median {a['kappa_ratio_mesh_deviation_median']:.1%}, "
                  f"largest {a['kappa_ratio_mesh_deviation_max']:.1%}.", ""]
    for label, s in (("plain", p), ("anchored", a)):
        if s["failures"]:
            lines.append(f"Failures ({label}): " + "; ".join(f"{k}: {v}" for k, v in s["failures"].items()))
    lines += ["", "## Per material (300 K)", "",
              "| material | DFT stable | plain: harm. stable / SSCHA stable / shift / σᴬ / κ_harm / κ ratio / core-s | "
              "anchored: SSCHA stable / shift / σᴬ / κ_harm / κ ratio / core-s | potential at DFT geometry: MAE THz / max force eV/Å / P GPa |",
              "|---|---|---|---|---|"]
    for m in materials:
        pl, an = m.get("plain"), m.get("anchored")

        def cells(x, keys):
            if x is None:
                return "—"
            if "failed" in x:
                return "failed: " + x["failed"][:60]
            return " / ".join(fmt(x[k], 3 if k in ("mean_shift", "sigma_A") else 2 if k.startswith("kappa") else 0)
                              for k in keys)
        fidelity = "—" if not an or "failed" in an else (f"{fmt(an['potential_dft_mae_THz'], 2)} / "
                                                         f"{fmt(an['residual_max_force_eV_A'], 3)} / {fmt(an['residual_pressure_GPa'], 1)}")
        lines.append(f"| {m['material_id']} ({m.get('formula', '')}) | {fmt(m.get('dft_stable'))} | "
                     f"{cells(pl, ['harmonic_stable', 'sscha_300K_stable', 'mean_shift', 'sigma_A', 'kappa_harmonic_W_mK', 'kappa_ratio', 'core_s'])} | "
                     f"{cells(an, ['sscha_300K_stable', 'mean_shift', 'sigma_A', 'kappa_harmonic_W_mK', 'kappa_ratio', 'core_s'])} | {fidelity} |")
    if a.get("n_fc3_compared"):
        lines += ["", "## κ: the surrogate's FC3 against the potential's finite-displacement FC3 (audit sample, 300 K)", "",
                  f"{a['n_fc3_compared']} materials: κ_harm(surrogate FC3) / κ_harm(finite displacements) geometric mean "
                  f"{a['kappa_harmonic_surrogate_over_fd_geomean']:.2f} (range {fmt(a['kappa_harmonic_surrogate_over_fd_range'], 2)}); "
                  f"κ ratio geometric mean {a['kappa_ratio_surrogate_over_fd_geomean']:.3f}, largest deviation "
                  f"{100 * a['kappa_ratio_surrogate_over_fd_max_deviation']:.1f} %.", "",
                  "| material | κ_harm surrogate FC3 | κ_harm finite-displacement FC3 | κ ratio surrogate | κ ratio finite displacements |",
                  "|---|---:|---:|---:|---:|"]
        for m in materials:
            an = m.get("anchored")
            if an and "failed" not in an and an.get("fc3"):
                x = an["fc3"]
                lines.append(f"| {m['material_id']} ({m.get('formula', '')}) | {fmt(x['kappa_harmonic_surrogate'])} | "
                             f"{fmt(x['kappa_harmonic_fd'])} | {fmt(x['kappa_ratio_surrogate'], 3)} | {fmt(x['kappa_ratio_fd'], 3)} |")
    audited = [(m, x) for m in materials if m.get("anchored") and "failed" not in m["anchored"] and m["anchored"]["audit"]
               for x in m["anchored"]["audit"]]
    if audited:
        lines += ["", "## Audit: the fast route (surrogate, 0.1 THz) against the verified one (direct, 0.05 THz)", "",
                  "| material | T (K) | largest Δν (THz) | its error (THz) | Δσᴬ |", "|---|---:|---:|---:|---:|"]
        for m, x in audited:
            lines.append(f"| {m['material_id']} ({m.get('formula', '')}) | {x['T']:.0f} | {x['max_dnu_THz']:.3f} | "
                         f"{x['error_THz']:.3f} | {x['d_sigma_A']:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phonondb-dir", type=Path)
    parser.add_argument("--plain", type=Path, default=PLAIN)
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "anchoring_panel")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "anchoring_panel")
    parser.add_argument("--report-only", action="store_true", help="report the records under --work, compute nothing")
    parser.add_argument("--retry-failed", action="store_true", help="recompute the materials whose record is a failure")
    parser.add_argument("--workers", type=int, default=1, help="materials computed at once (Ray), one core each")
    args = parser.parse_args(argv)
    plain = records(args.plain)
    ids = sorted(r["source_id"] for r in plain.values() if r.get("source") == "phonondb")
    if not args.report_only:
        if args.phonondb_dir is None:
            parser.error("--phonondb-dir is needed to compute (or pass --report-only)")
        run_anchored(args.phonondb_dir, ids, args.work, args.retry_failed, args.workers)
    (folder,) = [p for p in args.work.iterdir() if (p / "manifest.json").is_file()]
    anchored = records(folder)
    material_ids = [f"phonondb-{i}" for i in ids]
    finished = [i for i in material_ids if anchored.get(i, {}).get("status") == "ok"]
    verdicts = dft_verdicts(plain, anchored)
    summary = {"plain": summarize("plain", plain, material_ids),
               "anchored": summarize("anchored", anchored, material_ids, AUDIT_EVERY, verdicts),
               "plain_same": summarize("plain, the materials the anchored run finished", plain, finished)}
    materials = per_material(plain, anchored, material_ids)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.anchoring_panel " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "report.json").write_text(json.dumps({"command": command, "settings": SETTINGS, "summary": summary,
                                                      "materials": materials}, indent=1))
    text = report(summary, materials, command)
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
