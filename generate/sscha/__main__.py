"""``python -m generate.sscha [key=value ...]``: one SSCHA run from the command line (conf/sscha.yaml, Hydra)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from generate.run.atomic import write_json_atomically
from generate.run.config import register
from generate.sscha.result import SSCHAResult

register()


def run_command(cfg: DictConfig) -> SSCHAResult:
    """Check every setting, then relax (optional), run the chosen engine and write ``cfg.out``."""
    from generate.harmonic.relax import relax
    from generate.run import checks
    from generate.run.config import relax_settings, sscha_engine, sscha_settings
    from thermobench.potentials import check_structure, load_named_potential
    from thermobench.structures import load_structure

    # Every setting is checked before the structure is read or a potential evaluated.
    settings = sscha_settings(cfg.sscha, cfg.harmonic, cfg.temperature_K, cfg.seed)
    engine = sscha_engine(cfg.sscha)
    relaxation = relax_settings(cfg.relax, cfg.harmonic)
    supercell = checks.supercell_matrix(cfg.supercell, "supercell")  # never the cell alone (Γ only)
    atoms = load_structure(str(cfg.structure))
    loaded = load_named_potential(str(cfg.potential.name), device=cfg.potential.device)  # matgl, or EMT (tests)
    check_structure(atoms, loaded.element_types, str(cfg.structure), loaded.cutoff_A)
    if cfg.relax_structure:
        atoms = relax(atoms, loaded.calculator, relaxation).atoms
    (result,) = engine.run(atoms, loaded.model, supercell, [settings])
    record = result.to_json_dict()
    record["structure"] = str(cfg.structure)
    record["supercell"] = list(cfg.supercell)
    record["potential"] = {"name": loaded.name, "sha256": loaded.sha256}
    record["settings"] = OmegaConf.to_container(cfg, resolve=True)
    write_json_atomically(cfg.out, record, indent=1)
    state = "converged" if result.converged else f"NOT converged ({result.status})"
    print(
        f"{atoms.get_chemical_formula()} {list(cfg.supercell)} at {settings.temperature_K} K ({engine.name}): {state} "
        f"in {len(result.history)} steps, {result.n_potential_evaluations} potential evaluations, "
        f"{result.wall_time_s:.1f} s"
    )
    print(
        f"frequencies {result.supercell_frequencies_THz.min():.3f}..{result.supercell_frequencies_THz.max():.3f} THz "
        f"(harmonic {result.harmonic_supercell_frequencies_THz.min():.3f}..), max stochastic error "
        f"{result.max_frequency_error_THz:.3f} THz; F = {result.free_energy_eV_atom:.5f} ± "
        f"{result.free_energy_error_eV_atom:.5f} eV/atom; sigma_A = {result.sigma_A:.3f}; wrote {cfg.out}"
    )
    return result


@hydra.main(version_base="1.3", config_path="../../conf", config_name="sscha")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_command(cfg)


if __name__ == "__main__":
    main()
