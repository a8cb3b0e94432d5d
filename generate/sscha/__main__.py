"""``python -m generate.sscha``: one SSCHA run from the command line (settings in conf/sscha.yaml)."""

from __future__ import annotations

import logging

from generate.atomic import write_json_atomically
from generate.sscha.direct import run_sscha
from generate.sscha.result import SSCHAResult, SSCHASettings
from generate.sscha.surrogate import SurrogateSettings, run_sscha_surrogate


def settings_from_config(cfg) -> tuple[SSCHASettings, "SurrogateSettings"]:
    from omegaconf import OmegaConf

    def build(cls, node):
        values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    return build(SSCHASettings, cfg.get("sscha")), build(SurrogateSettings, cfg.get("surrogate"))


def load_config(argv: list[str] | None = None):
    """conf/sscha.yaml, then --config FILE, then the flags, then --set key=value overrides."""
    import argparse
    from pathlib import Path

    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(prog="python -m generate.sscha", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML merged over conf/sscha.yaml")
    parser.add_argument("--structure", help="built-in name (thermobench.structures) or structure file")
    parser.add_argument("--supercell", type=int, nargs=3, metavar=("N1", "N2", "N3"))
    parser.add_argument("--temperature", type=float, help="K")
    parser.add_argument("--potential", help="potential name or model directory")
    parser.add_argument("--backend", choices=["direct", "surrogate"])
    parser.add_argument("--classical", action="store_true", help="classical instead of quantum statistics")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-relax", action="store_true", help="use the structure as given")
    parser.add_argument("--out", help="JSON result file")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. sscha.n_configurations=800")
    args = parser.parse_args(argv)
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "sscha.yaml")
    if args.config:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(args.config))
    flags = {
        "structure": args.structure,
        "supercell": list(args.supercell) if args.supercell else None,
        "potential": args.potential,
        "backend": args.backend,
        "out": args.out,
        "sscha.temperature_K": args.temperature,
        "sscha.seed": args.seed,
        "sscha.quantum": False if args.classical else None,
        "relax": False if args.no_relax else None,
    }
    for key, value in flags.items():
        if value is not None:
            OmegaConf.update(cfg, key, value)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.set))



def main(argv: list[str] | None = None) -> SSCHAResult:
    from generate import checks
    from generate.relax import RelaxSettings, relax
    from thermobench.potentials import check_structure, load_named_potential
    from thermobench.structures import load_structure

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(argv)
    settings, surrogate_settings = settings_from_config(cfg)  # checked here, before any work
    checks.supercell_matrix(list(cfg.supercell), "supercell")
    checks.choice(cfg.backend, "backend", ("direct", "surrogate"))
    atoms = load_structure(str(cfg.structure))
    loaded = load_named_potential(str(cfg.potential), device=cfg.device)  # a matgl checkpoint, or EMT (tests)
    check_structure(atoms, loaded.element_types, str(cfg.structure))
    if cfg.relax:
        atoms = relax(atoms, loaded.calculator, RelaxSettings()).atoms
    if cfg.backend == "direct":
        result = run_sscha(atoms, loaded.model, list(cfg.supercell), settings)
    else:
        result = run_sscha_surrogate(atoms, loaded.model, list(cfg.supercell), settings, surrogate_settings)
    from omegaconf import OmegaConf

    record = result.to_json_dict()
    record["structure"] = str(cfg.structure)
    record["supercell"] = list(cfg.supercell)
    record["potential"] = {"name": loaded.name, "sha256": loaded.sha256}
    record["settings"] = OmegaConf.to_container(cfg, resolve=True)
    write_json_atomically(cfg.out, record, indent=1)
    state = "converged" if result.converged else f"NOT converged ({result.status})"
    print(
        f"{atoms.get_chemical_formula()} {list(cfg.supercell)} at {settings.temperature_K} K ({cfg.backend}): {state} "
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


if __name__ == "__main__":
    main()
