"""``python -m generate.dataset.publish --repo-id OWNER/NAME [--folder DIR] [--tag v0.1.0]``: push an assembled
dataset folder to the HuggingFace Hub.

Each split configuration is pushed with ``DatasetDict.push_to_hub(config_name=...)`` (Parquet shards
under ``<config>/``), then the folder's dataset card (whose ``configs`` paths match those shards)
and ``failures.jsonl`` replace the generated card. ``--tag`` marks the release so users can pin it
with ``revision=``; a published version is never overwritten (make a new tag). Needs a network and a
token (``huggingface-cli login`` or ``HF_TOKEN``); never run in tests.
"""

from __future__ import annotations

from pathlib import Path

from thermobench.dataset import CONFIGS


def publish(folder: Path, repo_id: str, tag: str | None = None, private: bool = False) -> None:
    import datasets
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no README.md: run python -m generate.dataset.assemble first")
    api = HfApi()
    if tag is not None:
        existing = {t.name for t in api.list_repo_refs(repo_id, repo_type="dataset").tags} if api.repo_exists(repo_id, repo_type="dataset") else set()
        if tag in existing:
            raise ValueError(f"{repo_id} already has a release {tag!r}; published versions are immutable, choose a new tag")
    for config in CONFIGS:
        dataset_dict = datasets.load_dataset(str(folder), config)
        dataset_dict.push_to_hub(repo_id, config_name=config, private=private, commit_message=f"thermobench: {config} splits")
    api.upload_file(path_or_fileobj=str(folder / "README.md"), path_in_repo="README.md", repo_id=repo_id, repo_type="dataset")
    if (folder / "failures.jsonl").is_file():
        api.upload_file(path_or_fileobj=str(folder / "failures.jsonl"), path_in_repo="failures.jsonl", repo_id=repo_id, repo_type="dataset")
    if tag is not None:
        api.create_tag(repo_id, tag=tag, repo_type="dataset")
    print(f"[publish] {folder} -> https://huggingface.co/datasets/{repo_id}" + (f" (tag {tag})" if tag else ""))


def run_command(cfg) -> None:
    from generate.run.checks import SettingsError

    if not cfg.get("repo_id"):
        raise SettingsError("repo_id is required: python -m generate.dataset.publish repo_id=OWNER/NAME")
    publish(Path(cfg.folder), str(cfg.repo_id), cfg.tag, bool(cfg.private))


def main() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path="../../conf", config_name="publish")(run_command)()


if __name__ == "__main__":
    main()
