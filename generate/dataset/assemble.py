"""Reducer: pipeline records → a HuggingFace ``DatasetDict`` per split configuration → Parquet + card.

``python -m generate.dataset.assemble RUN_FOLDER OUT_FOLDER`` reads ``RUN_FOLDER/records/*.json`` (a run
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
from pathlib import Path

from generate.harmonic.reference import REFERENCES
from thermobench.dataset import (
    COLUMNS,
    CONFIGS,
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
    "potential_dft_mae_dft_geometry_THz": "dft_null_reason",
    "dft_min_frequency_THz": "dft_null_reason",
    "dft_dynamically_stable": "dft_null_reason",
}


RELAX_COLUMNS = ("relax_converged", "relax_max_force_eV_A", "relax_symmetry_kept")


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
        if row["harmonic_reference"] not in REFERENCES:
            raise InvalidRecordError(f"{where}: harmonic_reference {row['harmonic_reference']!r} is none of {REFERENCES}")
        relaxed = row["harmonic_reference"] == "potential"
        for name in RELAX_COLUMNS:  # null exactly when the row stays at DFT's geometry
            if (row[name] is None) == relaxed:
                raise InvalidRecordError(f"{where}: {name} is {row[name]!r} with harmonic_reference {row['harmonic_reference']!r}")


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


def assemble(run_folder: Path, out_folder: Path, title: str | None = None, notes: Path | None = None) -> dict:
    """Write the dataset of a run folder; ``title`` defaults to the output folder's name; ``notes``: a
    Markdown file of validations made outside the run, added to the card."""
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
    from generate.dataset.card import dataset_card

    (out_folder / "README.md").write_text(dataset_card(title, manifest, ok, failed, rows, dicts, out_folder, notes))
    return stats


def run_command(cfg) -> dict:
    from generate.run.checks import SettingsError

    for key in ("run_folder", "out_folder"):
        if not cfg.get(key):
            raise SettingsError(f"{key} is required: python -m generate.dataset.assemble run_folder=RUN out_folder=DATASET")
    stats = assemble(Path(cfg.run_folder), Path(cfg.out_folder), cfg.title, Path(cfg.notes) if cfg.get("notes") else None)
    print(
        f"[assemble] {stats['n_materials']} materials ({stats['n_rows']} rows), {stats['n_failed']} failed -> "
        f"{cfg.out_folder}; splits {stats['splits']}"
    )
    return stats


def main() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path="../../conf", config_name="assemble")(run_command)()


if __name__ == "__main__":
    main()
