"""The datasets the leaderboard scores on: a committed registry of names, versions and test-label checksums.

Test labels are public, so a copy of a dataset whose labels were replaced by a model's predictions is
easy to make. The leaderboard therefore resolves an entry's ``dataset.name`` only through this
registry (never as a path), and refuses the data unless the checksum of its test labels equals the
committed one. After re-assembling an embedded dataset, update its record with one command:

    python -m thermobench.leaderboard register thermobench/data/thermobench-0.2

The checksum is over values, not Parquet bytes: for each split configuration, the test rows sorted by
(material_id, temperature_K) with their dataset version and the target column of every benchmark
task (``conf/task/*.yaml``). Re-writing identical data leaves it unchanged; any changed label,
row or version changes it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from thermobench.dataset import CONFIGS, DATA_DIR, EMBEDDED

REGISTRY = DATA_DIR / "official_datasets.json"
TASK_DIR = Path(__file__).resolve().parents[1] / "conf" / "task"
KEY_COLUMNS = ("material_id", "temperature_K")
REGISTER_COMMAND = "python -m thermobench.leaderboard register {folder}"


class DatasetNotOfficialError(ValueError):
    """A dataset the leaderboard does not score on, or whose test labels differ from the registered ones."""


def label_columns() -> tuple[str, ...]:
    """The target column of every benchmark task, sorted: what the leaderboard scores against."""
    import yaml

    return tuple(sorted({yaml.safe_load(p.read_text())["target"] for p in TASK_DIR.glob("*.yaml")}))


def test_frames(source: str | Path) -> dict[str, pd.DataFrame]:
    """The test split of each split configuration of a dataset (embedded name or folder) as DataFrames."""
    from thermobench.dataset import load_dataset

    return {config: load_dataset(str(source), split="test", name=config).to_pandas() for config in CONFIGS}


def _canonical(value) -> str | None:
    """One cell as text independent of storage: floats by repr (exact round trip), null/NaN as None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float | int) and not isinstance(value, bool):
        return repr(float(value))
    return str(value)


def label_checksum(frames: dict[str, pd.DataFrame]) -> str:
    """sha256 over the sorted test rows' keys, dataset version and task target columns of every configuration."""
    columns = label_columns()
    payload = {}
    for config in sorted(frames):
        frame = frames[config]
        present = [c for c in columns if c in frame.columns]
        table = frame[[*KEY_COLUMNS, "dataset_version", *present]].copy()
        table["material_id"] = table["material_id"].astype(str)
        table["temperature_K"] = table["temperature_K"].astype(float)
        table = table.sort_values(list(KEY_COLUMNS), kind="stable")
        payload[config] = {"columns": list(table.columns),
                           "rows": [[_canonical(v) for v in row] for row in table.itertuples(index=False, name=None)]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def version_of(frames: dict[str, pd.DataFrame], label: str) -> str:
    versions = sorted({str(v) for frame in frames.values() for v in frame["dataset_version"]})
    if len(versions) != 1:
        raise DatasetNotOfficialError(f"{label}: test splits hold {len(versions)} dataset versions {versions}, not one")
    return versions[0]


def dataset_record(folder: str | Path, name: str | None = None) -> dict:
    """The registry record of a dataset folder: name (default: the folder's name), version, checksum."""
    folder = Path(folder)
    frames = test_frames(folder)
    return {"name": name or folder.resolve().name, "version": version_of(frames, str(folder)),
            "test_labels_sha256": label_checksum(frames), "n_test_rows": {c: len(f) for c, f in frames.items()}}


def read_registry(path: Path = REGISTRY) -> dict[str, dict]:
    """Official datasets by name: ``{name: {"version", "test_labels_sha256", "n_test_rows"}}``."""
    if not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text())


def register(folder: str | Path, name: str | None = None, path: Path = REGISTRY) -> tuple[dict, dict | None]:
    """Record (or update) a dataset's entry in the registry; returns the new record and the one it replaced.

    Only a folder that the name resolves to can be registered (an embedded dataset), so that what the
    leaderboard later loads by that name is what was hashed.
    """
    from thermobench.dataset import resolve_dataset

    folder = Path(folder)
    record = dataset_record(folder, name)
    resolved = Path(resolve_dataset(record["name"]))
    if not resolved.is_dir() or resolved.resolve() != folder.resolve():
        raise DatasetNotOfficialError(
            f"{record['name']!r} resolves to {resolved}, not to {folder}: only a dataset the package loads by that "
            f"name (embedded: {', '.join(EMBEDDED)}) can be registered"
        )
    registry = read_registry(path)
    previous = registry.get(record["name"])
    registry[record["name"]] = {k: v for k, v in record.items() if k != "name"}
    Path(path).write_text(json.dumps(dict(sorted(registry.items())), indent=2) + "\n")
    return record, previous


def official_test_frames(name: str, path: Path = REGISTRY) -> tuple[dict[str, pd.DataFrame], str]:
    """The test splits of an official dataset and its version, after checking their labels' checksum.

    ``name`` is looked up in the registry, never used as a path: anything else is refused.
    """
    registry = read_registry(path)
    if name not in registry:
        known = ", ".join(f"{n} {r['version']}" for n, r in registry.items()) or "none"
        raise DatasetNotOfficialError(
            f"dataset {name!r} is not an official leaderboard dataset (registered in {path.name}: {known}); "
            "entries are scored only on these, loaded by name"
        )
    record = registry[name]
    frames = test_frames(name)
    checksum = label_checksum(frames)
    if checksum != record["test_labels_sha256"]:
        raise DatasetNotOfficialError(
            f"dataset {name!r}: the test labels loaded ({checksum[:12]}…) differ from the registered ones "
            f"({record['test_labels_sha256'][:12]}…, version {record['version']}); if the dataset was re-assembled, "
            f"run `{REGISTER_COMMAND.format(folder=f'thermobench/data/{name}')}` and re-score its entries"
        )
    return frames, record["version"]
