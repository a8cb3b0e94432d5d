"""``python -m generate.kappa``: κ of one crystal from the command line (settings in conf/kappa.yaml)."""

from __future__ import annotations

import json
import logging

from ase import Atoms

from generate.kappa.result import KappaResult, KappaSettings, log
from generate.kappa.step import settings_from_dict
from generate.kappa.transport import compute_kappa

# ----------------------------------------------------------------------------------------------
# Command line


def load_config(argv: list[str] | None = None):
    """conf/kappa.yaml, then --config FILE, then the flags, then --set key=value overrides."""
    import argparse
    from pathlib import Path

    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(prog="python -m generate.kappa", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML merged over conf/kappa.yaml")
    parser.add_argument("--structure", help="built-in name (thermobench.structures) or structure file")
    parser.add_argument("--potential", help="potential name or model directory")
    parser.add_argument("--temperatures", type=float, nargs="+", help="K")
    parser.add_argument("--q-mesh", type=int, nargs=3, metavar=("N1", "N2", "N3"))
    parser.add_argument("--fc3-supercell", type=int, nargs=3, metavar=("N1", "N2", "N3"), help="of the unit cell")
    parser.add_argument("--fc3-method", choices=["finite_displacement", "random_fit"])
    parser.add_argument("--fc3-cutoff", type=float, help="Å")
    parser.add_argument("--method", choices=["rta", "wigner"])
    parser.add_argument("--no-isotope", action="store_true", help="leave out isotope scattering")
    parser.add_argument("--no-sscha", action="store_true", help="harmonic κ only")
    parser.add_argument("--born", help="phonopy BORN file (Born charges, dielectric tensor) for NAC")
    parser.add_argument("--no-relax", action="store_true", help="use the structure as given")
    parser.add_argument("--out", help="JSON result file")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. kappa.fc3_cutoff_A=4.5")
    args = parser.parse_args(argv)
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "kappa.yaml")
    if args.config:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(args.config))
    flags = {
        "structure": args.structure,
        "potential": args.potential,
        "out": args.out,
        "born_file": args.born,
        "kappa.temperatures_K": args.temperatures,
        "kappa.q_mesh": list(args.q_mesh) if args.q_mesh else None,
        "kappa.fc3_supercell_matrix": list(args.fc3_supercell) if args.fc3_supercell else None,
        "kappa.fc3_method": args.fc3_method,
        "kappa.fc3_cutoff_A": args.fc3_cutoff,
        "kappa.method": args.method,
        "kappa.isotope": False if args.no_isotope else None,
        "sscha.enabled": False if args.no_sscha else None,
        "relax": False if args.no_relax else None,
    }
    for key, value in flags.items():
        if value is not None:
            OmegaConf.update(cfg, key, value)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.set))


def read_nac_params(born_file, atoms: Atoms, settings: KappaSettings) -> dict:
    """phonopy's NAC parameters from a BORN file for the primitive cell of ``atoms``."""
    from pathlib import Path

    from phonopy import Phonopy
    from phonopy.file_IO import parse_BORN

    from generate.harmonic import explicit_primitive_matrix, to_phonopy_atoms

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

    from generate import checks
    from generate.relax import RelaxSettings, relax
    from generate.sscha import SSCHASettings, run_sscha
    from thermobench.potentials import check_structure, load_named_potential
    from thermobench.structures import load_structure

    # Every setting is checked before the structure is read or a potential evaluated.
    settings = settings_from_dict(OmegaConf.to_container(cfg.kappa, resolve=True))
    sscha_cfg = OmegaConf.to_container(cfg.sscha, resolve=True)
    sscha_enabled, supercell = sscha_cfg.pop("enabled"), sscha_cfg.pop("supercell")
    sscha_settings = {}
    if sscha_enabled:
        checks.supercell_matrix(supercell, "sscha.supercell")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in sscha_cfg.items()}
        sscha_settings = {t: SSCHASettings(**values, temperature_K=t) for t in settings.temperatures_K}
    if cfg.get("born_file") and not Path(cfg.born_file).is_file():
        raise FileNotFoundError(f"born_file {cfg.born_file} does not exist")
    atoms = load_structure(str(cfg.structure))
    loaded = load_named_potential(str(cfg.potential), device=cfg.device)  # a matgl checkpoint, or EMT (tests)
    check_structure(atoms, loaded.element_types, str(cfg.structure))
    potential = loaded.model
    if cfg.relax:
        log.info("relaxing %s", atoms.get_chemical_formula())
        atoms = relax(atoms, loaded.calculator, RelaxSettings()).atoms
    nac_params = read_nac_params(cfg.born_file, atoms, settings) if cfg.get("born_file") else None
    kwargs, sscha_summary = {}, []
    if sscha_enabled:
        fc2_by_temperature = {}
        for temperature in settings.temperatures_K:
            log.info("SSCHA at %g K (renormalized FC2)", temperature)
            sscha = run_sscha(atoms, potential, supercell, sscha_settings[temperature])
            fc2_by_temperature[float(temperature)] = sscha.force_constants_eV_A2
            kwargs.update(fc2_supercell=sscha.supercell, fc2_harmonic=sscha.harmonic_force_constants_eV_A2)
            sscha_summary.append({"temperature_K": temperature, "converged": sscha.converged, "status": sscha.status,
                                  "n_potential_evaluations": sscha.n_potential_evaluations,
                                  "wall_time_s": sscha.wall_time_s})
        kwargs["fc2_renormalized"] = fc2_by_temperature
    result = compute_kappa(atoms, potential, settings, nac_params=nac_params, **kwargs)
    record = result.to_json_dict()
    record["structure"] = str(cfg.structure)
    record["formula"] = atoms.get_chemical_formula()
    record["potential"] = {"name": loaded.name, "sha256": loaded.sha256}
    record["sscha"] = sscha_summary
    record["config"] = OmegaConf.to_container(cfg, resolve=True)
    return result, record


def main(argv: list[str] | None = None) -> KappaResult:
    from generate.atomic import write_json_atomically

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(argv)
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


def _fmt(value, digits: int = 1) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def to_json(result: KappaResult) -> str:
    return json.dumps(result.to_json_dict(), indent=1)


if __name__ == "__main__":
    main()
