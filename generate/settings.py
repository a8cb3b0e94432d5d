"""The generator's settings as plain data: read from Hydra, checked before any work, fingerprinted."""

from __future__ import annotations

import hashlib
import json

# ----------------------------------------------------------------------------------------------
# Settings


RECORD_VERSION = "1"


def settings_from_config(cfg) -> dict:
    """The settings that change the numbers, as plain data (the fingerprint is taken over this)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True)
    # dataset_version is part of the fingerprint: another version never writes into this run's folder.
    keys = ("potential", "temperatures_K", "supercell", "relax", "harmonic", "sscha", "engine", "kappa", "targets", "dos",
            "seed", "dataset_version")
    settings = {k: container[k] for k in keys}
    settings["dataset_version"] = str(settings["dataset_version"])
    settings["temperatures_K"] = [float(t) for t in settings["temperatures_K"]]
    settings["record_version"] = RECORD_VERSION
    from thermobench.dataset import SCHEMA_VERSION

    settings["schema_version"] = SCHEMA_VERSION
    return settings


def engine_settings(settings: dict):
    """The SSCHA engine of the run (``engine`` in conf/generate.yaml) as :class:`generate.sscha.EngineSettings`."""
    from generate.sscha import EngineSettings, SurrogateSettings

    values = dict(settings["engine"])
    surrogate = {k: tuple(v) if isinstance(v, list) else v for k, v in (values.pop("surrogate", None) or {}).items()}
    return EngineSettings(**values, surrogate=SurrogateSettings(**surrogate))


def sscha_settings(settings: dict, temperature_K: float):
    """The SSCHA's settings at one temperature: the ``sscha`` block plus the harmonic ones it shares."""
    from generate.sscha import SSCHASettings

    h = settings["harmonic"]
    return SSCHASettings(**{**settings["sscha"], "temperature_K": float(temperature_K), "seed": int(settings["seed"]),
                            "symprec": h["symprec"], "q_mesh": tuple(h["q_mesh"]), "displacement_A": h["displacement_A"],
                            "imaginary_tolerance_THz": h["imaginary_tolerance_THz"]})


def check_settings(settings: dict) -> None:
    """Every numerical setting, checked before the first material; ``SettingsError`` names the field."""
    from generate import checks
    from generate.harmonic import HarmonicSettings
    from generate.relax import RelaxSettings

    quantum = bool(settings["sscha"].get("quantum", True))
    temperatures = checks.temperatures(settings["temperatures_K"], "temperatures_K", quantum=quantum)
    sc = settings["supercell"]
    checks.atom_budget(sc["min_atoms"], sc["max_atoms"])
    if sc.get("matrix") is not None:
        checks.supercell_matrix(sc["matrix"], "supercell.matrix")
    h = settings["harmonic"]
    RelaxSettings(**{**settings["relax"], "symprec": h["symprec"]})
    HarmonicSettings(displacement_A=h["displacement_A"], symprec=h["symprec"], q_mesh=tuple(h["q_mesh"]),
                     imaginary_tolerance_THz=h["imaginary_tolerance_THz"], temperatures_K=temperatures)
    for temperature in temperatures:
        sscha_settings(settings, temperature)
    if settings["kappa"].get("enabled"):
        from generate.kappa import settings_from_dict

        values = {k: v for k, v in settings["kappa"].items() if k != "enabled"}
        settings_from_dict({**values, "temperatures_K": list(temperatures)})
    engine_settings(settings)
    checks.positive(settings["dos"]["sigma_THz"], "dos.sigma_THz")
    checks.positive(settings["dos"]["n_points"], "dos.n_points", integer=True, minimum=2, strict=False)
    checks.positive(settings["targets"]["shift_min_frequency_THz"], "targets.shift_min_frequency_THz", strict=False)


def fingerprint(settings: dict, potential_sha256: str) -> str:
    payload = json.dumps({"settings": settings, "potential_sha256": potential_sha256}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("thermobench", "ase", "phonopy", "spglib", "numpy", "matgl", "torch", "phono3py", "hiphive"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
