"""``python -m generate.kappa [key=value ...]``: κ of one crystal from the command line (conf/kappa.yaml, Hydra)."""

from __future__ import annotations

import json
import logging

import hydra
from ase import Atoms
from omegaconf import DictConfig

from generate.kappa.result import KappaResult, KappaSettings, log
from generate.kappa.step import settings_from_dict
from generate.kappa.transport import compute_kappa
from generate.run.config import register

register()


def read_nac_params(born_file, atoms: Atoms, settings: KappaSettings) -> dict:
    """phonopy's NAC parameters from a BORN file for the primitive cell of ``atoms``."""
    from pathlib import Path

    from phonopy import Phonopy
    from phonopy.file_IO import parse_BORN

    from generate.harmonic.phonons import explicit_primitive_matrix, to_phonopy_atoms

    if not Path(born_file).is_file():
        raise FileNotFoundError(f"BORN file {born_file} does not exist")
    unitcell = to_phonopy_atoms(atoms)
    primitive = explicit_primitive_matrix(unitcell, settings.primitive_matrix, settings.symprec)
    phonon = Phonopy(unitcell, primitive_matrix=primitive, symprec=settings.symprec)
    try:
        return parse_BORN(phonon.primitive, symprec=settings.symprec, filename=str(born_file))
    except Exception as error:
        raise ValueError(f"cannot read Born charges from {born_file}: {error}") from error


def run_from_config(cfg) -> tuple[KappaResult, dict]:
    """Relax (optional), SSCHA per temperature (optional), κ; returns the result and the JSON record."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from generate.harmonic.relax import relax
    from generate.run import checks
    from generate.run.config import relax_settings, sscha_engine, sscha_settings
    from thermobench.potentials import check_structure, load_named_potential
    from thermobench.structures import load_structure

    # Every setting is checked before the structure is read or a potential evaluated.
    temperatures = list(checks.temperatures(cfg.temperatures_K, "kappa.temperatures_K"))  # a number is a list of one
    values = {k: v for k, v in OmegaConf.to_container(cfg.kappa, resolve=True).items() if k != "enabled"}
    settings = settings_from_dict({**values, "temperatures_K": temperatures, "seed": cfg.seed,
                                   "symprec": cfg.harmonic.symprec, "imaginary_tolerance_THz": cfg.harmonic.imaginary_tolerance_THz})
    relaxation = relax_settings(cfg.relax, cfg.harmonic)
    engine, per_temperature, supercell = None, [], None
    if cfg.renormalize:
        supercell = checks.supercell_matrix(list(cfg.sscha_supercell), "sscha_supercell")
        engine = sscha_engine(cfg.sscha)
        per_temperature = [sscha_settings(cfg.sscha, cfg.harmonic, t, cfg.seed) for t in settings.temperatures_K]
    if cfg.get("born_file") and not Path(cfg.born_file).is_file():
        raise FileNotFoundError(f"born_file {cfg.born_file} does not exist")
    atoms = load_structure(str(cfg.structure))
    loaded = load_named_potential(str(cfg.potential.name), device=cfg.potential.device)  # matgl, or EMT (tests)
    check_structure(atoms, loaded.element_types, str(cfg.structure), loaded.cutoff_A)
    potential = loaded.model
    if cfg.relax_structure:
        log.info("relaxing %s", atoms.get_chemical_formula())
        atoms = relax(atoms, loaded.calculator, relaxation).atoms
    nac_params = read_nac_params(cfg.born_file, atoms, settings) if cfg.get("born_file") else None
    kwargs, sscha_summary = {}, []
    if engine is not None:
        log.info("SSCHA at %s K (renormalized FC2, %s engine)", ", ".join(f"{t:g}" for t in settings.temperatures_K), engine.name)
        results = engine.run(atoms, potential, supercell, per_temperature)
        kwargs.update(fc2_supercell=results[0].supercell, fc2_harmonic=results[0].harmonic_force_constants_eV_A2,
                      fc2_renormalized={float(r.temperature_K): r.force_constants_eV_A2 for r in results})
        sscha_summary = [{"temperature_K": r.temperature_K, "converged": r.converged, "status": r.status,
                          "n_potential_evaluations": r.n_potential_evaluations, "wall_time_s": r.wall_time_s} for r in results]
    result = compute_kappa(atoms, potential, settings, nac_params=nac_params, **kwargs)
    record = result.to_json_dict()
    record["structure"] = str(cfg.structure)
    record["formula"] = atoms.get_chemical_formula()
    record["potential"] = {"name": loaded.name, "sha256": loaded.sha256}
    record["sscha"] = sscha_summary
    record["config"] = OmegaConf.to_container(cfg, resolve=True)
    return result, record


def run_command(cfg) -> KappaResult:
    from generate.run.atomic import write_json_atomically

    result, record = run_from_config(cfg)
    write_json_atomically(cfg.out, record)
    for T, ratio in zip(result.temperatures_K, result.kappa_ratio, strict=True):
        harm = result.harmonic.average_at(T) if result.harmonic else None
        ren = result.renormalized.average_at(T) if result.renormalized else None
        print(f"{record['formula']} {T:g} K: κ_harmonic {_fmt(harm)}, κ_renormalized {_fmt(ren)} W/(m·K), ratio {_fmt(ratio, 3)}")
    if result.reason:
        print(f"status {result.status}: {result.reason}")
    fc3 = result.fc3
    if fc3 is not None:
        print(f"FC3 ({fc3.method}, {fc3.n_supercell_atoms} atoms): {fc3.n_potential_evaluations} potential evaluations, "
              f"{fc3.wall_time_s:.1f} s; wrote {cfg.out}")
    return result


@hydra.main(version_base="1.3", config_path="../../conf", config_name="kappa")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_command(cfg)


def _fmt(value, digits: int = 1) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def to_json(result: KappaResult) -> str:
    return json.dumps(result.to_json_dict(), indent=1)


if __name__ == "__main__":
    main()
