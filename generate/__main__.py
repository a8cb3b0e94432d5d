"""``python -m generate [group=option ...] [key=value ...]``: run the generation pipeline (conf/generate.yaml)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, open_dict

from generate.run.config import checked_temperatures, register

register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from generate.run.pipeline import run

    for name in ("thermobench.sscha", "thermobench.kappa"):  # the progress bar reports materials; steps are noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    with open_dict(cfg):
        cfg.command_line = "python -m generate " + " ".join(sys.argv[1:])
    checked_temperatures(cfg)  # `temperatures_K=300` is [300]; `[300K]` names the field
    summary = run(cfg)
    print(
        f"[generate] {summary.n_done} done, {summary.n_failed} failed, {summary.n_skipped} already finished "
        f"of {summary.n_materials} in {summary.wall_time_s:.0f} s; records in {summary.run_folder}"
    )


if __name__ == "__main__":
    main()
