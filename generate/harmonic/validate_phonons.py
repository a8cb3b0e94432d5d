"""How far are a potential's phonons from DFT? Compare with phonopy DFT displacement datasets.

    python -m generate.harmonic.validate_phonons --potential M3GNet-MP-2021.2.8-PES \\
        [--datasets ../shared/reference/dft-phonons] [--out benchmarks/results/phonons/NAME]

For each dataset directory (``phonopy_disp.yaml`` + ``FORCE_SETS``, optional ``BORN``) the potential's
phonons are computed (a) on the DFT geometry with the DFT displacements and (b) on the geometry the
potential relaxes to, and compared with DFT on a common q-mesh. The DFT Born charges and dielectric
tensor are applied to the potential's phonons too: the potential predicts neither, so the comparison
measures its short-range force constants. Writes ``report.json``, ``report.md`` and a band-structure
PNG per material. A broken dataset is reported by name and skipped; the others still run.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from generate.harmonic.dft_data import (
    DatasetError,
    dataset_name,
    find_datasets,
    load_dft_dataset,
)
from generate.harmonic.fidelity import potential_phonopy_on_dft_geometry, same_setup_phonopy
from generate.harmonic.phonons import (
    HarmonicResult,
    HarmonicSettings,
    displaced_supercell_forces,
    mesh_frequency_mae,
    phonon_properties,
    to_ase_atoms,
    to_phonopy_atoms,
)
from generate.harmonic.relax import RelaxSettings, relax

DEFAULT_DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "dft-phonons"
COMPARISON_TEMPERATURE_K = 300.0


@dataclass(frozen=True)
class PhononComparison:
    frequency_mae_THz: float
    wasserstein_THz: float
    max_frequency_error_THz: float
    free_energy_error_meV_atom: float
    entropy_error_kB_atom: float
    heat_capacity_error_kB_atom: float
    stability_agrees: bool
    reference_stable: bool
    potential_stable: bool
    potential_min_frequency_THz: float


def _same_setup_phonopy(reference, unitcell):
    """A phonopy object with the reference's supercell, primitive matrix, NAC and symmetry tolerance."""
    phonon = same_setup_phonopy(reference, unitcell)
    if reference.nac_params is not None:
        phonon.nac_params = reference.nac_params
    return phonon


def potential_phonons_on_dft_geometry(reference, model, settings: HarmonicSettings, spectra: bool = True,
                                      max_atoms_per_chunk: int = 2048) -> HarmonicResult:
    """The potential's FC2 from exactly the DFT displacements of the DFT geometry (its residual forces
    there subtracted: :func:`generate.harmonic.fidelity.potential_phonopy_on_dft_geometry`), with the DFT NAC."""
    phonon, evaluations = potential_phonopy_on_dft_geometry(reference, model, max_atoms_per_chunk)
    if reference.nac_params is not None:
        phonon.nac_params = reference.nac_params
    return phonon_properties(phonon, settings, evaluations, spectra)


def potential_phonons_relaxed(reference, model, calculator, settings: HarmonicSettings, relax_settings: RelaxSettings):
    """Relax the DFT unit cell with the potential, then its phonons; ``(relax_result, phonons or None)``."""
    relaxed = relax(to_ase_atoms(reference.unitcell), calculator, relax_settings)
    if not relaxed.converged:
        return relaxed, None
    phonon = _same_setup_phonopy(reference, to_phonopy_atoms(relaxed.atoms))
    phonon.generate_displacements(distance=settings.displacement_A)
    evaluations = displaced_supercell_forces(phonon, model)
    phonon.produce_force_constants()
    phonon.symmetrize_force_constants()
    return relaxed, phonon_properties(phonon, settings, evaluations)


def compare(reference: HarmonicResult, candidate: HarmonicResult, temperature_K: float = COMPARISON_TEMPERATURE_K):
    """Errors of ``candidate`` against ``reference`` on their common q-mesh (bands sorted per q-point)."""
    from scipy.stats import wasserstein_distance

    if reference.mesh_frequencies_THz.shape != candidate.mesh_frequencies_THz.shape:
        raise ValueError("phonons were computed on different q-meshes")
    weights = reference.mesh_weights / reference.mesh_weights.sum()
    n_bands = reference.mesh_frequencies_THz.shape[1]
    mode_weights = np.repeat(weights, n_bands)
    ref_thermo = reference.thermodynamics.at(temperature_K)
    cand_thermo = candidate.thermodynamics.at(temperature_K)
    return PhononComparison(
        frequency_mae_THz=mesh_frequency_mae(reference.mesh_frequencies_THz, candidate.mesh_frequencies_THz, weights),
        wasserstein_THz=float(
            wasserstein_distance(
                reference.mesh_frequencies_THz.ravel(), candidate.mesh_frequencies_THz.ravel(), mode_weights, mode_weights
            )
        ),
        max_frequency_error_THz=float(candidate.mesh_frequencies_THz.max() - reference.mesh_frequencies_THz.max()),
        free_energy_error_meV_atom=1000 * (cand_thermo["free_energy_eV_atom"] - ref_thermo["free_energy_eV_atom"]),
        entropy_error_kB_atom=cand_thermo["entropy_kB_atom"] - ref_thermo["entropy_kB_atom"],
        heat_capacity_error_kB_atom=cand_thermo["heat_capacity_kB_atom"] - ref_thermo["heat_capacity_kB_atom"],
        stability_agrees=reference.is_stable == candidate.is_stable,
        reference_stable=reference.is_stable,
        potential_stable=candidate.is_stable,
        potential_min_frequency_THz=candidate.min_frequency_THz,
    )


def plot_bands(path: Path, title: str, curves: list[tuple[str, HarmonicResult, dict]]) -> None:
    """Overlay band structures; all curves share the reference's path and distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 5))
    reference_bands = curves[0][1].band_structure
    for label, result, style in curves:
        for k, (distances, frequencies) in enumerate(
            zip(reference_bands.distances, result.band_structure.frequencies_THz, strict=True)
        ):
            axis.plot(distances, frequencies, **style)
        axis.plot([], [], label=label, **style)  # one legend entry per curve
    ticks = [reference_bands.distances[0][0]] + [d[-1] for d in reference_bands.distances]
    axis.set_xticks(ticks, reference_bands.labels)
    for tick in ticks:
        axis.axvline(tick, color="0.8", lw=0.5)
    axis.axhline(0, color="0.5", lw=0.5)
    axis.set_xlim(ticks[0], ticks[-1])
    axis.set_ylabel("frequency (THz)")
    axis.set_title(title)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(curves), fontsize=7, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def validate_dataset(directory: Path, model, calculator, settings, relax_settings, plot_dir: Path | None, label: str):
    """One material's record: both comparisons, relaxation diagnostics, or the reason it failed."""
    record: dict = {"material": dataset_name(directory), "status": "ok"}
    start = time.perf_counter()
    reference = load_dft_dataset(directory)
    dft = phonon_properties(reference, settings, n_potential_evaluations=0)
    on_dft_geometry = potential_phonons_on_dft_geometry(reference, model, settings)
    record["dft_geometry"] = asdict(compare(dft, on_dft_geometry))
    relaxed, on_relaxed = potential_phonons_relaxed(reference, model, calculator, settings, relax_settings)
    dft_volume = abs(np.linalg.det(reference.unitcell.cell))
    record["relaxation"] = {
        "converged": relaxed.converged,
        "steps": relaxed.steps,
        "max_force_eV_A": relaxed.max_force_eV_A,
        "max_stress_eV_A3": relaxed.max_stress_eV_A3,
        "symmetry_kept": relaxed.symmetry_kept,
        "spacegroup": relaxed.spacegroup_after,
        "volume_change_percent": 100 * (relaxed.atoms.get_volume() / dft_volume - 1),
    }
    if on_relaxed is None:
        record["relaxed_geometry"] = None
        record["status"] = "relaxation did not converge; relaxed-geometry phonons not computed"
    else:
        record["relaxed_geometry"] = asdict(compare(dft, on_relaxed))
    record["n_potential_evaluations"] = on_dft_geometry.n_potential_evaluations + (
        on_relaxed.n_potential_evaluations if on_relaxed else 0
    )
    record["wall_time_s"] = time.perf_counter() - start
    if plot_dir is not None:
        curves = [("DFT", dft, {"color": "k", "lw": 1.2}), (f"{label} (DFT geometry)", on_dft_geometry, {"color": "tab:red", "lw": 1.0})]
        if on_relaxed is not None:
            curves.append((f"{label} (relaxed)", on_relaxed, {"color": "tab:blue", "lw": 1.0, "ls": "--"}))
        plot_bands(plot_dir / f"{dataset_name(directory)}.png", dataset_name(directory), curves)
    return record


def summarize(records: list[dict]) -> dict:
    """Means over the materials that ran, per geometry."""
    summary = {}
    for geometry in ("dft_geometry", "relaxed_geometry"):
        rows = [r[geometry] for r in records if r.get(geometry)]
        if not rows:
            continue
        summary[geometry] = {
            "n_materials": len(rows),
            "frequency_mae_THz": float(np.mean([r["frequency_mae_THz"] for r in rows])),
            "wasserstein_THz": float(np.mean([r["wasserstein_THz"] for r in rows])),
            "max_frequency_abs_error_THz": float(np.mean([abs(r["max_frequency_error_THz"]) for r in rows])),
            "free_energy_abs_error_meV_atom": float(np.mean([abs(r["free_energy_error_meV_atom"]) for r in rows])),
            "entropy_abs_error_kB_atom": float(np.mean([abs(r["entropy_error_kB_atom"]) for r in rows])),
            "heat_capacity_abs_error_kB_atom": float(np.mean([abs(r["heat_capacity_error_kB_atom"]) for r in rows])),
            "stability_agreement": float(np.mean([r["stability_agrees"] for r in rows])),
        }
    return summary


def markdown_table(report: dict) -> str:
    lines = [
        f"# Phonons of {report['potential']} against DFT",
        "",
        f"Command: `{report['command']}`",
        "",
        f"q-mesh {report['settings']['q_mesh']}, thermodynamics at {COMPARISON_TEMPERATURE_K:.0f} K; "
        "errors are potential minus DFT. MAE: bands sorted per q-point. W1: Wasserstein-1 distance of the spectra.",
        "",
        "| material | geometry | MAE (THz) | W1 (THz) | Δω_max (THz) | ΔF (meV/atom) | ΔS (k_B/atom) | ΔC_v (k_B/atom) | stable DFT/pot |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for record in report["materials"]:
        if record["status"] not in ("ok",) and "dft_geometry" not in record:
            lines.append(f"| {record['material']} | skipped: {record['status']} | | | | | | | |")
            continue
        for geometry, name in (("dft_geometry", "DFT"), ("relaxed_geometry", "relaxed")):
            row = record.get(geometry)
            if row is None:
                lines.append(f"| {record['material']} | {name} | {record['status']} | | | | | | |")
                continue
            verdict = f"{'yes' if row['reference_stable'] else 'no'}/{'yes' if row['potential_stable'] else 'no'}"
            lines.append(
                f"| {record['material']} | {name} | {row['frequency_mae_THz']:.3f} | {row['wasserstein_THz']:.3f} | "
                f"{row['max_frequency_error_THz']:+.2f} | {row['free_energy_error_meV_atom']:+.1f} | "
                f"{row['entropy_error_kB_atom']:+.3f} | {row['heat_capacity_error_kB_atom']:+.4f} | {verdict} |"
            )
    for geometry, name in (("dft_geometry", "DFT"), ("relaxed_geometry", "relaxed")):
        mean = report["summary"].get(geometry)
        if mean:
            lines.append(
                f"| **mean ({mean['n_materials']})** | {name} | {mean['frequency_mae_THz']:.3f} | {mean['wasserstein_THz']:.3f} | "
                f"{mean['max_frequency_abs_error_THz']:.2f} (abs) | {mean['free_energy_abs_error_meV_atom']:.1f} (abs) | "
                f"{mean['entropy_abs_error_kB_atom']:.3f} (abs) | {mean['heat_capacity_abs_error_kB_atom']:.4f} (abs) | "
                f"{100 * mean['stability_agreement']:.0f} % agree |"
            )
    return "\n".join(lines) + "\n"


def validate(potential: str, datasets: Path, out: Path, settings: HarmonicSettings, relax_settings: RelaxSettings, command: str) -> dict:
    from thermobench.potentials import ThermobenchCalculator, describe, load_potential

    model = load_potential(potential)
    calculator = ThermobenchCalculator(model, stress_unit="eV/A3")
    out.mkdir(parents=True, exist_ok=True)
    directories = find_datasets(Path(datasets))
    if not directories:
        raise DatasetError(f"no phonopy datasets (directories or archives) in {datasets}")
    records = []
    for index, directory in enumerate(directories, 1):
        name = dataset_name(directory)
        print(f"[{index}/{len(directories)}] {name}", file=sys.stderr, flush=True)
        try:
            records.append(validate_dataset(directory, model, calculator, settings, relax_settings, out, Path(potential).name))
        except DatasetError as error:
            print(f"  skipped: {error}", file=sys.stderr)
            records.append({"material": name, "status": f"skipped: {error}"})
        except Exception as error:  # one broken material never stops the others
            print(f"  failed: {type(error).__name__}: {error}", file=sys.stderr)
            records.append({"material": name, "status": f"failed: {type(error).__name__}: {error}", "traceback": traceback.format_exc()})
    report = {
        "potential": Path(potential).name,
        "potential_provenance": describe(model),
        "command": command,
        "settings": {**asdict(settings), "relax": asdict(relax_settings)},
        "nac": "DFT Born charges and dielectric tensor applied to DFT and potential phonons alike",
        "materials": records,
        "summary": summarize(records),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown_table(report))
    return report


def run_command(cfg) -> dict:
    from generate.run.config import relax_settings, settings_of

    # Never overwrite the committed reports under benchmarks/results/ unless out= says so.
    out = Path(cfg.out) if cfg.out else Path("outputs/validate_phonons") / Path(str(cfg.potential.name)).name
    command = "python -m generate.harmonic.validate_phonons " + " ".join(sys.argv[1:])
    settings = settings_of(HarmonicSettings, {k: v for k, v in cfg.harmonic.items()}, "harmonic")
    report = validate(str(cfg.potential.name), Path(cfg.datasets or DEFAULT_DATASETS), out, settings, relax_settings(cfg.relax, cfg.harmonic), command)
    print(markdown_table(report))
    return report


def main() -> None:
    import hydra

    from generate.run.config import register

    register()
    hydra.main(version_base="1.3", config_path="../../conf", config_name="validate_phonons")(run_command)()


if __name__ == "__main__":
    main()
