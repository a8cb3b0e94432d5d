"""Generator throughput and precision on a fixed panel: thermobench-mini's settings vs the new defaults, one run.

    THERMOBENCH_MODELS=../shared/models .venv/bin/python -m benchmarks.pipeline_panel \\
        [--settings mini new] [--materials ...] [--work outputs/pipeline_panel] [--out benchmarks/results/pipeline]

Each settings set runs the whole panel serially with one torch thread through ``generate.pipeline.run``
(resumable: records are kept under ``--work``), then the report gives per set the materials per
core-hour (compute time per material, summed over temperatures), the potential evaluations, the
precision reached (max stochastic frequency error σν) and, per material, how σᴬ and the mean shift
move from the old to the new supercells (supercell convergence).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PANEL = (  # at least one crystal per family the dataset balances
    "rocksalt-NaCl", "zincblende-GaAs", "diamond-Si", "wurtzite-ZnO", "fluorite-CaF2", "antifluorite-Li2O",
    "rutile-SnO2", "perovskite-cubic-SrTiO3", "double-perovskite-elpasolite-Cs2AgBiBr6", "cesium-chloride-CsCl",
    "fcc-Al", "bcc-Na", "half-heusler-TiNiSn",
)
SETTINGS = {
    # what thermobench-mini 0.1 was generated with (its card lists the command)
    "mini": ["supercell.min_atoms=16", "supercell.max_atoms=64", "sscha.n_configurations=100",
             "sscha.max_configurations=200", "sscha.max_steps=20", "relax.max_steps=200"],
    # larger supercells, the verified surrogate with its fall-back, ensembles grown to an error target
    "new": ["supercell.min_atoms=64", "supercell.max_atoms=160", "engine.name=surrogate",
            "sscha.frequency_error_target_THz=0.05", "sscha.max_configurations=3200", "sscha.max_steps=60"],
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="generate", overrides=overrides)


def summarize(records: dict) -> dict:
    ok = {m: r for m, r in records.items() if r["status"] == "ok"}
    compute_s = [r["wall_time_s"] for r in ok.values()]
    return {
        "n_ok": len(ok), "n_failed": len(records) - len(ok),
        "materials_per_core_hour": 3600 * len(ok) / max(sum(compute_s), 1e-9),
        "potential_evaluations_per_material": float(np.mean([sum(x["n_potential_evaluations"] for x in r["rows"]) for r in ok.values()])) if ok else None,
        "max_frequency_error_THz": float(np.max([x["frequency_error_THz"] for r in ok.values() for x in r["rows"]])) if ok else None,
        "per_material": {m: {"supercell_atoms": r["rows"][0]["n_supercell_atoms"], "compute_s": r["wall_time_s"],
                             "sigma_A": [x["sigma_A"] for x in r["rows"]],
                             "mean_shift": [x["mean_relative_frequency_shift"] for x in r["rows"]],
                             "status": [x["sscha_status"] for x in r["rows"]]} for m, r in ok.items()},
        "failed": {m: r.get("reason") for m, r in records.items() if r["status"] != "ok"},
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    from generate.assemble import find_run_folder, read_records
    from generate.pipeline import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--materials", nargs="+", default=list(PANEL))
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "pipeline_panel")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "pipeline_panel" / "report")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = {"command": "python -m benchmarks.pipeline_panel " + " ".join(sys.argv[1:] if argv is None else argv),
              "panel": args.materials, "settings": {k: SETTINGS[k] for k in args.settings}, "results": {}}
    for name in args.settings:
        out = args.work / name
        cfg = compose([*SETTINGS[name], f"source.ids=[{','.join(args.materials)}]", "executor.kind=serial", f"out_dir={out}"])
        run(cfg)
        _, ok, failed = read_records(find_run_folder(out))
        report["results"][name] = summarize({r["material_id"]: r for r in ok + failed})
    if {"mini", "new"} <= set(report["results"]):
        old, new = report["results"]["mini"], report["results"]["new"]
        report["throughput_ratio_new_over_mini"] = new["materials_per_core_hour"] / old["materials_per_core_hour"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps({k: v for k, v in report.items() if k != "results"} | {
        n: {k: v for k, v in r.items() if k not in ("per_material", "failed")} for n, r in report["results"].items()}, indent=1))


if __name__ == "__main__":
    main()
