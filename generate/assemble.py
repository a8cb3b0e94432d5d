"""Reducer: pipeline records → a HuggingFace ``DatasetDict`` per split configuration → Parquet + card.

``python -m generate.assemble RUN_FOLDER OUT_FOLDER`` reads ``RUN_FOLDER/records/*.json`` (a run
folder made by ``python -m generate``; an ``out_dir`` holding exactly one run folder also works) and
writes::

    OUT_FOLDER/README.md                     dataset card with the `configs:` YAML header
    OUT_FOLDER/random/{train,validation,test}.parquet
    OUT_FOLDER/ood/{train,validation,test}.parquet
    OUT_FOLDER/failures.jsonl                one line per failed material (stage, reason)

Rows are checked first: every column present with its declared type, numbers finite, and a null
only in a nullable column, next to a reason where the schema has a reason column.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

from thermobench.dataset import (
    COLUMNS,
    CONFIGS,
    RANDOM_FRACTIONS,
    SCHEMA_VERSION,
    SPLITS,
    features,
    ood_holdout,
    split_of,
)

# Nullable columns whose null must be explained, and the column that explains it.
NULL_REASONS = {
    "free_energy_harmonic_eV_atom": "harmonic_thermo_null_reason",
    "entropy_harmonic_kB_atom": "harmonic_thermo_null_reason",
    "heat_capacity_harmonic_kB_atom": "harmonic_thermo_null_reason",
    "anharmonic_free_energy_eV_atom": "harmonic_thermo_null_reason",
    "mean_relative_frequency_shift": "shift_null_reason",
    "max_relative_frequency_shift": "shift_null_reason",
    "kappa_harmonic_W_mK": "kappa_null_reason",
    "kappa_renormalized_W_mK": "kappa_null_reason",
    "kappa_ratio": "kappa_null_reason",
    "dft_mesh_frequencies_THz": "dft_null_reason",
    "potential_dft_mae_THz": "dft_null_reason",
    "dft_min_frequency_THz": "dft_null_reason",
    "dft_dynamically_stable": "dft_null_reason",
}


class InvalidRecordError(ValueError):
    pass


def find_run_folder(path: Path) -> Path:
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    runs = sorted(p for p in path.iterdir() if (p / "manifest.json").is_file()) if path.is_dir() else []
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise FileNotFoundError(f"{path} is neither a run folder (manifest.json) nor an out_dir holding one")
    raise ValueError(f"{path} holds runs with different settings ({', '.join(p.name for p in runs)}); name one")


def read_records(run_folder: Path) -> tuple[dict, list[dict], list[dict]]:
    """(manifest, ok records, failed records) of a run folder, sorted by material id."""
    manifest = json.loads((run_folder / "manifest.json").read_text())
    ok, failed = [], []
    for path in sorted((run_folder / "records").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InvalidRecordError(
                f"{path}: truncated or corrupt record ({error}); delete it and rerun the generator to recompute it"
            ) from None
        if record.get("settings_fingerprint", manifest["settings_fingerprint"]) != manifest["settings_fingerprint"]:
            raise InvalidRecordError(f"{path} was made with other settings than {run_folder}/manifest.json")
        (ok if record["status"] == "ok" else failed).append(record)
    return manifest, ok, failed


def _check_value(column, value, where: str) -> None:
    if value is None:
        if not column.nullable:
            raise InvalidRecordError(f"{where}: {column.name} is null but not nullable")
        return
    numbers = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            numbers.append(item)
    bad = [x for x in numbers if not math.isfinite(x)]
    if bad:
        raise InvalidRecordError(f"{where}: {column.name} holds non-finite values {bad[:3]}")


def validate_rows(rows: list[dict]) -> None:
    names = {c.name for c in COLUMNS}
    for row in rows:
        where = f"{row.get('material_id')} at {row.get('temperature_K')} K"
        missing = names - set(row)
        if missing:
            raise InvalidRecordError(f"{where}: missing columns {sorted(missing)}")
        extra = set(row) - names
        if extra:
            raise InvalidRecordError(f"{where}: columns not in the schema {sorted(extra)}")
        for column in COLUMNS:
            _check_value(column, row[column.name], where)
        for target, reason in NULL_REASONS.items():
            if row[target] is None and not row[reason]:
                raise InvalidRecordError(f"{where}: {target} is null without a reason in {reason}")


def build_dataset_dicts(rows: list[dict]):
    """{config: DatasetDict(train, validation, test)} with the declared features, grouped by material."""
    from datasets import Dataset, DatasetDict

    from thermobench.dataset import COLUMN_NAMES

    table = Dataset.from_list([{name: row[name] for name in COLUMN_NAMES} for row in rows], features=features())
    holdout = ood_holdout(rows[0]["dataset_version"])
    out = {}
    for config in CONFIGS:
        labels = [split_of(m, f, config, e, holdout)
                  for m, f, e in zip(table["material_id"], table["family"], table["elements"], strict=True)]
        out[config] = DatasetDict(
            {split: table.select([i for i, s in enumerate(labels) if s == split]) for split in SPLITS}
        )
    return out


def assemble(run_folder: Path, out_folder: Path, title: str | None = None) -> dict:
    """Write the dataset of a run folder; ``title`` defaults to the output folder's name."""
    run_folder = find_run_folder(Path(run_folder))
    out_folder = Path(out_folder)
    title = title or out_folder.resolve().name
    manifest, ok, failed = read_records(run_folder)
    rows = [row for record in ok for row in record["rows"]]
    if not rows:
        raise InvalidRecordError(f"{run_folder} has no finished material yet")
    versions = sorted({str(row.get("dataset_version")) for row in rows})
    if len(versions) != 1:
        raise InvalidRecordError(f"{run_folder}: rows of several dataset versions {versions}; one dataset has one version")
    validate_rows(rows)
    import datasets

    datasets.disable_progress_bars()
    dicts = build_dataset_dicts(rows)
    out_folder.mkdir(parents=True, exist_ok=True)
    for config, dataset_dict in dicts.items():
        (out_folder / config).mkdir(exist_ok=True)
        for split in SPLITS:
            path = out_folder / config / f"{split}.parquet"
            path.unlink(missing_ok=True)  # a split that became empty must not keep stale rows
            if len(dataset_dict[split]):  # datasets cannot load an empty split; it is left out of the card too
                dataset_dict[split].to_parquet(str(path))
    with open(out_folder / "failures.jsonl", "w") as handle:
        for record in failed:
            keys = ("material_id", "name", "formula", "family", "source", "source_id", "stage", "reason")
            handle.write(json.dumps({k: record.get(k) for k in keys}) + "\n")
    stats = {
        "n_materials": len(ok),
        "n_failed": len(failed),
        "n_rows": len(rows),
        "splits": {c: {s: len(d) for s, d in dd.items()} for c, dd in dicts.items()},
    }
    (out_folder / "README.md").write_text(dataset_card(title, manifest, ok, failed, rows, dicts))
    return stats


# ----------------------------------------------------------------------------------------------
# Dataset card


def _configs_yaml(dicts) -> str:
    lines = ["configs:"]
    for config in CONFIGS:
        lines.append(f"- config_name: {config}")
        if config == "random":
            lines.append("  default: true")
        lines.append("  data_files:")
        for split in SPLITS:
            if not len(dicts[config][split]):
                continue
            lines.append(f"  - split: {split}")
            lines.append(f"    path: {config}/{split}*.parquet")  # also matches push_to_hub shard names
    return "\n".join(lines)


def _holdout_text(holdout) -> str:
    text = f"whole structure families held out for test ({', '.join(holdout.families)})"
    if holdout.elements:
        text += f" and every material containing {holdout.elements_name or 'one of'} ({', '.join(holdout.elements)})"
    return text


def _run_history(manifest: dict) -> tuple[list[str], float]:
    commands, wall = [], 0.0
    for run in manifest["runs"]:
        wall += float(run.get("wall_time_s", 0.0))
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run["started"]))
        commands.append(
            f"- {started}, {run.get('executor')} on `{run.get('host')}`: `{run.get('command') or '(called from Python)'}` — "
            f"{run.get('n_done', 0)} done, {run.get('n_failed', 0)} failed, {run.get('n_skipped', 0)} skipped "
            f"(already finished), {float(run.get('wall_time_s', 0.0)) / 60:.1f} min"
        )
    return commands, wall


def dataset_card(title: str, manifest: dict, ok: list[dict], failed: list[dict], rows: list[dict], dicts) -> str:
    settings = manifest["settings"]
    families = Counter(record["family"] for record in ok)
    temperatures = sorted({row["temperature_K"] for row in rows})
    commands, wall = _run_history(manifest)
    compute = sum(float(r.get("wall_time_s", 0.0)) for r in ok + failed)
    converged = sum(bool(r["sscha_converged"]) for r in rows)
    n_kappa = sum(r["kappa_ratio"] is not None for r in rows)
    potential = rows[0]["potential"]
    sha = rows[0]["potential_sha256"]
    versions = json.loads(rows[0]["package_versions"])
    split_table = ["| config | train | validation | test |", "|---|---|---|---|"]
    for config, dd in dicts.items():
        counts = [f"{len(set(dd[s]['material_id']))} materials / {len(dd[s])} rows" for s in SPLITS]
        split_table.append(f"| {config} | " + " | ".join(counts) + " |")
    column_table = ["| column | type | unit | description |", "|---|---|---|---|"]
    for c in COLUMNS:
        nullable = " (nullable)" if c.nullable else ""
        column_table.append(f"| `{c.name}` | {c.dtype}{nullable} | {c.unit or '–'} | {c.description} |")
    failure_table = ["| material | stage | reason |", "|---|---|---|"] + [
        f"| {r['material_id']} | {r['stage']} | {r['reason'][:160].replace('|', '/')} |" for r in failed
    ]
    family_list = ", ".join(f"{f} ({n})" for f, n in sorted(families.items()))
    header = f"""---
license: cc-by-4.0
pretty_name: {title}
tags:
- materials-science
- phonons
- anharmonicity
- sscha
size_categories:
- n<1K
task_categories:
- tabular-regression
{_configs_yaml(dicts)}
---"""
    body = f"""
# {title}

Temperature-dependent (anharmonic) phonons of {len(ok)} inorganic crystals at
{", ".join(f"{t:g}" for t in temperatures)} K, computed with the stochastic self-consistent harmonic
approximation (SSCHA) on the machine-learned potential **{potential}** (checkpoint sha256 `{sha}`).
One row per (material, temperature): {len(rows)} rows. Made by the `thermobench` generation pipeline
(`python -m generate`, then `python -m generate.assemble`); schema version {SCHEMA_VERSION}.

Structure families (materials): {family_list}.

**These are potential-level numbers, not DFT or experiment**: they show what {potential} predicts
with the settings below, and are meant for benchmarking models that learn temperature-dependent
phonons, with a stochastic error bar and full provenance on every row.

## Loading

```python
import thermobench
test = thermobench.load_dataset("{title}", name="random", split="test")   # embedded copy
# or: datasets.load_dataset("path/to/this/folder", "ood", split="test")
```

## Splits

Splits are fixed and grouped by material: all temperatures of a material are in the same split, and
no material is in two splits (an empty split is left out of the files). A material's split is a hash of its id, so it does not change when
materials are added.
- `random`: {RANDOM_FRACTIONS[0]:.0%} / {RANDOM_FRACTIONS[1]:.0%} / {RANDOM_FRACTIONS[2]:.0%} train / validation / test by material.
- `ood`: {_holdout_text(ood_holdout(rows[0]["dataset_version"]))}; validation is
  drawn from the rest only.

{chr(10).join(split_table)}

## Targets

- `sigma_A`: Knoop's anharmonicity score σᴬ = sqrt(Σ(f − f_harm)² / Σ f²) over the final SSCHA
  ensemble (displacements drawn from the renormalized Gaussian at the temperature), with f_harm from
  the harmonic force constants of the relaxed structure.
- `mean_relative_frequency_shift`: mean over supercell modes of (ν_SSCHA − ν_harm)/ν_harm, the two
  sorted spectra paired by rank; only modes with ν_harm ≥ `shift_min_frequency_THz`
  ({settings["targets"]["shift_min_frequency_THz"]} THz) count, and it is null (reason in
  `shift_null_reason`) when the harmonic spectrum has imaginary modes, since then there is no harmonic
  reference. Signed: positive means hardening. `max_relative_frequency_shift` is the largest
  |shift| over the same modes.
- κ columns: {n_kappa} of {len(rows)} rows have κ; the others are null with `kappa_null_reason`.
- SSCHA convergence: {converged} of {len(rows)} rows converged (`sscha_converged`); the others are
  kept, flagged with `sscha_status`, never dropped.

Conventions: frequencies in THz, negative = imaginary; `lattice_vectors` rows are lattice vectors
(Å), positions Cartesian (Å); energies per atom; entropies and heat capacities in k_B per atom.
Harmonic and SSCHA thermodynamics are both computed on the supercell modes (commensurate q), so their
difference is consistent; S and C_v of the SSCHA columns use the harmonic-oscillator formulas on the
renormalized frequencies. Nullable numbers are null (never NaN) with a reason column.

## How it was made

{method_text(settings)}

Commands (resumed runs listed in order; records of finished materials are reused, never recomputed):

{chr(10).join(commands)}

Total wall time of the runs: {wall / 3600:.2f} h ({compute / 3600:.2f} h of per-material compute,
summed over parallel workers). Then: `python -m generate.assemble <run folder> <this folder>`.

Settings fingerprint: `{manifest["settings_fingerprint"]}`. Packages: {", ".join(f"{k} {v}" for k, v in versions.items() if v)}.
Full settings (also in every row's `settings_json`):

```json
{json.dumps(settings, indent=1, sort_keys=True)}
```

## Failed materials

{len(failed)} material(s) failed and are listed in `failures.jsonl` with the stage and the reason:

{chr(10).join(failure_table) if failed else "(none)"}

## Columns

{chr(10).join(column_table)}

## License and citation

Data: CC BY 4.0. The potential {potential} is distributed with matgl (BSD-3-Clause).

```bibtex
@misc{{thermobench,
  title  = {{thermobench: a dataset and benchmark of temperature-dependent anharmonic phonons}},
  note   = {{{title}, dataset version {rows[0]["dataset_version"]}, schema {SCHEMA_VERSION}}},
  year   = {{2026}}
}}
```
Please also cite the SSCHA (Monacelli et al., J. Phys.: Condens. Matter 33, 363001, 2021), σᴬ
(Knoop et al., Phys. Rev. Materials 4, 083809, 2020), M3GNet (Chen & Ong, Nat. Comput. Sci. 2, 718,
2022) and phonopy (Togo, J. Phys. Soc. Jpn. 92, 012001, 2023).
"""
    return header + "\n" + body


def run_command(cfg) -> dict:
    from generate.checks import SettingsError

    for key in ("run_folder", "out_folder"):
        if not cfg.get(key):
            raise SettingsError(f"{key} is required: python -m generate.assemble run_folder=RUN out_folder=DATASET")
    stats = assemble(Path(cfg.run_folder), Path(cfg.out_folder), cfg.title)
    print(
        f"[assemble] {stats['n_materials']} materials ({stats['n_rows']} rows), {stats['n_failed']} failed -> "
        f"{cfg.out_folder}; splits {stats['splits']}"
    )
    return stats


def method_text(settings: dict) -> str:
    """How a row was made, in words, from its run's settings (older runs lack the newer keys)."""
    sc, h, sscha, relax = settings["supercell"], settings["harmonic"], settings["sscha"], settings["relax"]
    target = sscha.get("frequency_error_target_THz")
    engine = str(sscha.get("_target_", "direct")).rsplit(".", 1)[-1]
    if engine == "SurrogateEngine":
        engine_text = (f"the verified surrogate engine (one hiphive fit per material, the SCHA on it exactly, corrected "
                       f"against the potential with {sscha['surrogate']['n_verification']}-configuration verification "
                       f"ensembles; a temperature whose verification fails falls back to the direct engine, as "
                       f"`sscha_status` says)")
    else:
        engine_text = (f"the direct engine ({sscha['n_configurations']} configurations per ensemble, at most "
                       f"{sscha['max_configurations']})")
    large = h.get("supercell_max_atoms") and "min_length_A" in sc  # the embedding came with both
    mesh = (f"q-mesh {h['q_mesh']}: harmonic FC2 of a larger supercell (planes ≥ {h['supercell_min_length_A']} Å "
            f"apart, at most {h['supercell_max_atoms']} atoms) with the SSCHA correction embedded (generate.embedding)"
            if large else f"q-mesh {h['q_mesh']} by Fourier interpolation of the SSCHA supercell")
    return (
        f"Per material: relax cell and positions under the space-group constraint (ASE {relax['optimizer']}, "
        f"fmax {relax['fmax_eV_A']} eV/Å, at most {relax['max_steps']} steps) → harmonic FC2 by finite displacements "
        f"({h['displacement_A']} Å, phonopy, symprec {h['symprec']}) in the SSCHA supercell: the smallest balanced "
        f"diagonal one with planes ≥ {sc.get('min_length_A', 0)} Å apart and ≥ {sc['min_atoms']} atoms (at most "
        f"{sc['max_atoms']}) → SSCHA at each temperature ({'quantum' if sscha['quantum'] else 'classical'} statistics, "
        f"{engine_text}, at most {sscha['max_steps']} steps"
        + (f", every frequency to a stochastic error of {target} THz" if target else "")
        + f", seed {settings['seed']}) → {mesh}; DOS with {settings['dos']['sigma_THz']} THz Gaussian smearing. "
        "The frequencies are the SSCHA auxiliary ones at fixed volume (the relaxed static cell)."
    )


def main() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path="../conf", config_name="assemble")(run_command)()


if __name__ == "__main__":
    main()
