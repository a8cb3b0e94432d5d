"""Phonon errors before and after fine-tuning: in-sample and leave-one-material-out.

    THERMOBENCH_MODELS=../shared/models .venv/bin/python -m benchmarks.finetune [finetune overrides ...]

Fine-tunes the base potential on all datasets (in-sample) and once per material with that material
left out (the honest measure of transfer), validates with generate.harmonic.validate_phonons and writes
benchmarks/results/finetune/{report.json,report.md}. Overrides are Hydra overrides of conf/finetune.yaml.
The run takes about an hour on 2 cores and is resumable: each stage's models and validation reports
stay in outputs/finetune-benchmark (THERMOBENCH_FT_WORK to move it) and a finished stage is skipped;
delete that directory after changing the fine-tune settings.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from generate.harmonic.phonons import HarmonicSettings
from generate.harmonic.relax import RelaxSettings
from generate.harmonic.validate_phonons import validate
from generate.potential.finetune import finetune

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "finetune"


def phonon_mae(report: dict, geometry: str = "dft_geometry") -> dict[str, float]:
    return {r["material"]: r[geometry]["frequency_mae_THz"] for r in report["materials"] if r.get(geometry)}


def free_energy_error(report: dict) -> dict[str, float]:
    return {r["material"]: r["dft_geometry"]["free_energy_error_meV_atom"] for r in report["materials"] if r.get("dft_geometry")}


def main() -> None:
    overrides = sys.argv[1:]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose(config_name="finetune", overrides=overrides)
    OUT.mkdir(parents=True, exist_ok=True)
    data_dir = Path(config.data_dir)
    materials = sorted(p for p in data_dir.iterdir() if (p / "FORCE_SETS").is_file())
    settings, relax_settings = HarmonicSettings(), RelaxSettings()
    start = time.perf_counter()
    work = Path(os.environ.get("THERMOBENCH_FT_WORK", REPO / "outputs" / "finetune-benchmark"))
    work.mkdir(parents=True, exist_ok=True)

    def stage(name: str, compute):
        """Run a stage once; its JSON result makes a restarted benchmark skip it."""
        done = work / f"{name}.json"
        if done.is_file():
            return json.loads(done.read_text())
        value = compute()
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, default=str))
        tmp.replace(done)
        print(f"[finetune benchmark] {name} done after {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr, flush=True)
        return value

    base = stage("base", lambda: validate(config.base_potential, data_dir, work / "base", settings, relax_settings, "base"))

    def full_finetune():
        full_start = time.perf_counter()
        report = finetune(compose_like(config, out_dir=str(work / "full"), exclude=[]))
        return {"report": report, "wall_time_s": time.perf_counter() - full_start}

    full = stage("full-finetune", full_finetune)
    full_report, full_time = full["report"], full["wall_time_s"]
    tuned = stage("in-sample", lambda: validate(str(work / "full" / "model"), data_dir, work / "full-val", settings, relax_settings, "in-sample"))
    loo_mae, loo_relaxed_mae, loo_free_energy = {}, {}, {}
    for material in materials:

        def leave_out(material=material):
            finetune(compose_like(config, out_dir=str(work / f"loo-{material.name}"), exclude=[material.name], parity_dir=None))
            only_dir = work / f"only-{material.name}"
            if not only_dir.exists():
                only_dir.mkdir()
                (only_dir / material.name).symlink_to(material.resolve())
            return validate(str(work / f"loo-{material.name}" / "model"), only_dir, work / f"loo-val-{material.name}", settings, relax_settings, "loo")

        held_out = stage(f"loo-{material.name}", leave_out)
        loo_mae.update(phonon_mae(held_out))
        loo_relaxed_mae.update(phonon_mae(held_out, "relaxed_geometry"))
        loo_free_energy.update(free_energy_error(held_out))
        print(f"LOO {material.name}: {loo_mae.get(material.name)}", file=sys.stderr, flush=True)
    before, after = phonon_mae(base), phonon_mae(tuned)
    result = {
        "command": "THERMOBENCH_MODELS=../shared/models python -m benchmarks.finetune " + " ".join(overrides),
        "finetune_config": {k: config[k] for k in config},
        "full_finetune_wall_time_s": full_time,
        "wall_time_this_invocation_s": time.perf_counter() - start,
        "frequency_mae_THz": {"base": before, "in_sample": after, "leave_one_out": loo_mae},
        "frequency_mae_relaxed_geometry_THz": {
            "base": phonon_mae(base, "relaxed_geometry"),
            "in_sample": phonon_mae(tuned, "relaxed_geometry"),
            "leave_one_out": loo_relaxed_mae,
        },
        "free_energy_error_300K_meV_atom": {"base": free_energy_error(base), "in_sample": free_energy_error(tuned), "leave_one_out": loo_free_energy},
        "mean_frequency_mae_THz": {k: float(np.mean(list(v.values()))) for k, v in (("base", before), ("in_sample", after), ("leave_one_out", loo_mae))},
        "parity_drift": full_report["parity_drift"],
    }
    result["mean_frequency_mae_relaxed_geometry_THz"] = {
        k: float(np.mean(list(v.values()))) for k, v in result["frequency_mae_relaxed_geometry_THz"].items()
    }
    means, relaxed = result["mean_frequency_mae_THz"], result["mean_frequency_mae_relaxed_geometry_THz"]
    result["improvement_factor"] = {"in_sample": means["base"] / means["in_sample"], "leave_one_out": means["base"] / means["leave_one_out"]}
    result["improvement_factor_relaxed_geometry"] = {
        "in_sample": relaxed["base"] / relaxed["in_sample"],
        "leave_one_out": relaxed["base"] / relaxed["leave_one_out"],
    }
    (OUT / "report.json").write_text(json.dumps(result, indent=2, default=str))
    (OUT / "report.md").write_text(markdown(result))
    print(markdown(result))


def compose_like(config, **changes):
    from omegaconf import OmegaConf

    copy = OmegaConf.to_container(config, resolve=True)
    copy.update(changes)
    copy["progress_bar"] = False
    return OmegaConf.create(copy)


def markdown(result: dict) -> str:
    mae, free = result["frequency_mae_THz"], result["free_energy_error_300K_meV_atom"]
    lines = [
        "# Fine-tuning on DFT phonons: frequency MAE against DFT (THz, DFT geometry, 12x12x12 q-mesh)",
        "",
        f"Command: `{result['command']}`; full fine-tune {result['full_finetune_wall_time_s']:.0f} s, "
        f"this invocation {result['wall_time_this_invocation_s'] / 60:.0f} min on this machine (resumed stages are not counted).",
        "",
        "| material | base | in-sample | leave-one-out | ΔF base (meV/atom) | ΔF in-sample | ΔF leave-one-out |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for material in mae["base"]:
        lines.append(
            f"| {material} | {mae['base'][material]:.3f} | {mae['in_sample'].get(material, float('nan')):.3f} | "
            f"{mae['leave_one_out'].get(material, float('nan')):.3f} | {free['base'][material]:+.1f} | "
            f"{free['in_sample'].get(material, float('nan')):+.1f} | {free['leave_one_out'].get(material, float('nan')):+.1f} |"
        )
    means, factor = result["mean_frequency_mae_THz"], result["improvement_factor"]
    lines += [
        f"| **mean** | {means['base']:.3f} | {means['in_sample']:.3f} | {means['leave_one_out']:.3f} | | | |",
        "",
        f"Improvement factor of the mean MAE: in-sample {factor['in_sample']:.2f}x, leave-one-out {factor['leave_one_out']:.2f}x "
        "(published: about 4x).",
        "",
        "Each potential's own relaxed geometry (lattice and phonons both from the potential):",
        "",
        "| material | base | in-sample | leave-one-out |",
        "|---|---:|---:|---:|",
    ]
    relaxed = result["frequency_mae_relaxed_geometry_THz"]
    for material in relaxed["base"]:
        lines.append(
            f"| {material} | {relaxed['base'][material]:.3f} | {relaxed['in_sample'].get(material, float('nan')):.3f} | "
            f"{relaxed['leave_one_out'].get(material, float('nan')):.3f} |"
        )
    means_relaxed, factor_relaxed = result["mean_frequency_mae_relaxed_geometry_THz"], result["improvement_factor_relaxed_geometry"]
    lines += [
        f"| **mean** | {means_relaxed['base']:.3f} | {means_relaxed['in_sample']:.3f} | {means_relaxed['leave_one_out']:.3f} |",
        "",
        f"Improvement factor, relaxed geometry: in-sample {factor_relaxed['in_sample']:.2f}x, "
        f"leave-one-out {factor_relaxed['leave_one_out']:.2f}x.",
    ]
    drift = result["parity_drift"]
    if drift.get("available"):
        lines.append(
            f"Parity structures: max lattice-constant change {drift['lattice_constant_change_percent_max_abs']:.2f} %, "
            f"mean |ΔE| {1000 * drift['energy_abs_change_eV_atom_mean']:.1f} meV/atom."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
