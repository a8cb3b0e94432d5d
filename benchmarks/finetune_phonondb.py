"""Potentials against DFT on the held-out phonondb test split: base vs fine-tuned (and any other).

    THERMOBENCH_MODELS=../shared/models .venv/bin/python -m benchmarks.finetune_phonondb \\
        --phonondb-dir ../phononDB/phonon_db_tarred --potentials M3GNet-MP-2021.2.8-PES models/M3GNet-phonondb-PBEsol

For every material of the fixed test split (thermobench/data/phonondb/index.csv) with a DFT supercell
of at most ``--max-supercell-atoms`` atoms and elements every potential covers, each potential's
force constants are computed from exactly the DFT displacements on the DFT geometry and compared
with DFT on a Gamma-centred 12x12x12 mesh (bands sorted per q-point; the DFT Born charges applied to
both, so the short-range force constants are compared): frequency MAE, Wasserstein-1 distance,
error of the highest frequency, vibrational free energy, entropy and heat capacity at 300 K (the
quantities of the MDR phonon benchmark, Loew et al., npj Comput. Mater. 2025) and agreement on
dynamical stability. One JSON record per material and potential (resumable, atomic writes) under
``--work``; the report (JSON, Markdown, per-family table, scatter plot) under ``--out``.
``--import-records`` seeds ``--work`` with the records of a committed ``per_material.json`` (never over
a record that exists), so potentials already scored on the split are not recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np

from generate.harmonic.dft_data import DatasetError
from generate.harmonic.phonons import HarmonicSettings, phonon_properties
from generate.harmonic.validate_phonons import compare, load_dft_dataset, potential_phonons_on_dft_geometry
from generate.run.atomic import write_json_atomically
from thermobench.phonondb import chemical_family

REPO = Path(__file__).resolve().parents[1]
METRICS = ("frequency_mae_THz", "wasserstein_THz", "max_frequency_error_THz", "free_energy_error_meV_atom",
           "entropy_error_kB_atom", "heat_capacity_error_kB_atom")


def label_of(potential: str) -> str:
    return Path(potential).name if Path(potential).name not in ("model", "best") else Path(potential).parent.name


def evaluate_material(entry, archive: Path, models: dict, settings: HarmonicSettings, work: Path,
                      max_atoms_per_chunk: int = 2048) -> None:
    """Records of one material for every potential not yet done; a failure is recorded, not raised."""
    todo = {label: m for label, m in models.items() if not (work / label / f"{entry.material_id}.json").is_file()}
    if not todo:
        return
    base = {"material": entry.material_id, "formula": entry.formula, "spacegroup": entry.spacegroup_number,
            "family": chemical_family(entry.elements), "n_supercell": entry.n_supercell,
            "n_displacements": entry.n_displacements}
    try:
        reference = load_dft_dataset(archive)
        dft = phonon_properties(reference, settings, 0, spectra=False)
    except (DatasetError, ValueError) as error:
        for label in todo:
            write_json_atomically(work / label / f"{entry.material_id}.json", {**base, "status": f"skipped: {error}"})
        return
    for label, model in todo.items():
        start = time.perf_counter()
        try:
            ours = potential_phonons_on_dft_geometry(reference, model, settings, spectra=False, max_atoms_per_chunk=max_atoms_per_chunk)
            record = {**base, "status": "ok", **asdict(compare(dft, ours)), "wall_s": time.perf_counter() - start}
        except Exception as error:  # one material never stops the benchmark
            record = {**base, "status": f"failed: {type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        write_json_atomically(work / label / f"{entry.material_id}.json", record)


def import_records(per_material: Path, work: Path) -> int:
    """Write the records of a report's ``per_material.json`` into ``work`` where none exists; returns how many."""
    written = 0
    for label, rows in json.loads(per_material.read_text()).items():
        for row in rows:
            path = work / label / f"{row['material']}.json"
            if not path.is_file():
                write_json_atomically(path, {**row, "imported_from": str(per_material)})
                written += 1
    return written


def summarize(records: list[dict]) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return {"n_materials": 0}
    out = {"n_materials": len(ok), "n_not_ok": len(records) - len(ok)}
    for key in METRICS:
        values = np.abs([r[key] for r in ok])
        out[f"{key}_mean_abs"] = float(values.mean())
        out[f"{key}_median_abs"] = float(np.median(values))
    out["stability_agreement"] = float(np.mean([r["stability_agrees"] for r in ok]))
    return out


def report(labels: list[str], work: Path, out: Path, command: str, settings: HarmonicSettings) -> dict:
    records = {label: {p.stem: json.loads(p.read_text()) for p in sorted((work / label).glob("*.json"))} for label in labels}
    common = sorted(set.intersection(*[{m for m, r in recs.items() if r["status"] == "ok"} for recs in records.values()]))
    by_label = {label: [records[label][m] for m in common] for label in labels}
    summary = {label: summarize(rows) for label, rows in by_label.items()}
    families = sorted({records[labels[0]][m]["family"] for m in common})
    per_family = {
        family: {label: summarize([r for r in by_label[label] if r["family"] == family]) for label in labels}
        for family in families
    }
    base = labels[0]
    ratios = {}
    for label in labels[1:]:
        a = summary[base]["frequency_mae_THz_mean_abs"]
        b = summary[label]["frequency_mae_THz_mean_abs"]
        per_material = np.array([records[base][m]["frequency_mae_THz"] / max(records[label][m]["frequency_mae_THz"], 1e-9) for m in common])
        ratios[label] = {"mean_mae_ratio": a / b, "median_per_material_ratio": float(np.median(per_material)),
                         "fraction_improved": float(np.mean(per_material > 1))}
    result = {"command": command, "split": "test", "settings": {"q_mesh": list(settings.q_mesh), "temperature_K": 300.0,
              "nac": "DFT Born charges applied to DFT and potentials alike where phonondb has BORN"},
              "materials_compared": len(common), "summary": summary, "ratios_vs_base": ratios, "per_family": per_family,
              "not_ok": {label: {m: r["status"] for m, r in recs.items() if r["status"] != "ok"} for label, recs in records.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1))
    (out / "per_material.json").write_text(json.dumps({label: by_label[label] for label in labels}, default=float))
    (out / "report.md").write_text(markdown(result, labels))
    plot(records, common, labels, out / "mae_base_vs_finetuned.png")
    return result


def markdown(result: dict, labels: list[str]) -> str:
    lines = [f"# Phonons against DFT on the phonondb test split ({result['materials_compared']} materials)", "",
             f"Command: `{result['command']}`", "",
             "Each potential's force constants from the DFT displacements on the DFT geometry; 12x12x12 Γ-centred mesh, "
             "thermodynamics at 300 K; absolute errors potential − DFT averaged over materials (median in brackets).", "",
             "| potential | MAE (THz) | W1 (THz) | \\|Δω_max\\| (THz) | \\|ΔF\\| (meV/atom) | \\|ΔS\\| (k_B/atom) | \\|ΔC_v\\| (k_B/atom) | stability agrees |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label in labels:
        s = result["summary"][label]
        cells = [f"{s[f'{k}_mean_abs']:.3f} ({s[f'{k}_median_abs']:.3f})" for k in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * s['stability_agreement']:.0f} % |")
    lines.append("")
    for label, ratio in result["ratios_vs_base"].items():
        lines.append(f"- {label}: mean MAE {ratio['mean_mae_ratio']:.2f}× lower than {labels[0]}; per-material median ratio "
                     f"{ratio['median_per_material_ratio']:.2f}×; {100 * ratio['fraction_improved']:.0f} % of materials improved.")
    lines += ["", "## Per chemical family (mean frequency MAE, THz; materials)", "",
              "| family | n | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    for family, values in result["per_family"].items():
        n = values[labels[0]]["n_materials"]
        lines.append(f"| {family} | {n} | " + " | ".join(f"{values[l]['frequency_mae_THz_mean_abs']:.3f}" for l in labels) + " |")
    return "\n".join(lines) + "\n"


def plot(records: dict, common: list[str], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(labels) < 2 or not common:
        return
    base = np.array([records[labels[0]][m]["frequency_mae_THz"] for m in common])
    figure, axis = plt.subplots(figsize=(5, 5))
    for label in labels[1:]:
        other = np.array([records[label][m]["frequency_mae_THz"] for m in common])
        axis.loglog(base, other, ".", ms=4, label=label)
    top = max(base.max(), 1.0) * 1.2
    axis.plot([0.01, top], [0.01, top], "k-", lw=0.8)
    axis.plot([0.04, top], [0.01, top / 4], "k:", lw=0.8, label="4x better")
    axis.set_xlabel(f"{labels[0]} frequency MAE vs DFT (THz)")
    axis.set_ylabel("frequency MAE vs DFT (THz)")
    axis.set_title(f"phonondb test split, {len(common)} materials")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    import torch

    from thermobench.phonondb import archive_path, read_index, select
    from thermobench.potentials import load_potential

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phonondb-dir", type=Path, required=True, help="phonon_db_tarred/ of a clone of the mirror")
    parser.add_argument("--potentials", nargs="+", required=True, help="the first is the baseline of the ratios")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-supercell-atoms", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="first N materials (by a fixed shuffle)")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "finetune_phonondb")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "finetune_phonondb" / "report")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the records")
    parser.add_argument("--import-records", type=Path, default=None,
                        help="per_material.json of an earlier report: its records seed --work (existing ones are kept)")
    parser.add_argument("--max-atoms-per-chunk", type=int, default=2048,
                        help="atoms per batched force call (TensorNet: ~10 GB at 2,048; 512 fits beside a fine-tune)")
    parser.add_argument("--shard", default="0/1", help="K/N: compute every N-th material from the K-th (parallel runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = HarmonicSettings(q_mesh=(12, 12, 12))
    models = {label_of(p): load_potential(p) for p in args.potentials}
    # The material list depends on the baseline alone, so runs with other potentials score the same
    # materials (a material another potential cannot evaluate gets a failure record).
    elements = set(next(iter(models.values())).model.element_types)
    entries = select(read_index(), args.split, max_supercell_atoms=args.max_supercell_atoms, elements=elements)
    entries = [entries[i] for i in np.random.default_rng(0).permutation(len(entries))][: args.limit]
    command = "python -m benchmarks.finetune_phonondb " + " ".join(sys.argv[1:] if argv is None else argv)
    shard, shards = (int(x) for x in args.shard.split("/"))
    if args.import_records is not None:
        print(f"imported {import_records(args.import_records, args.work)} records from {args.import_records}", file=sys.stderr)
    if not args.report_only:
        start = time.perf_counter()
        for index, entry in enumerate(entries[shard::shards], 1):
            evaluate_material(entry, archive_path(args.phonondb_dir, entry), models, settings, args.work, args.max_atoms_per_chunk)
            if index % 10 == 0:
                print(f"[{index}/{len(entries[shard::shards])}] {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    result = report(list(models), args.work, args.out, command, settings)
    print(markdown(result, list(models)))


if __name__ == "__main__":
    main()
