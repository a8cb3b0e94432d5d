"""The generator's settings as plain data: read from Hydra, checked before any work, fingerprinted."""

from __future__ import annotations

import hashlib
import json

import numpy as np

# ----------------------------------------------------------------------------------------------
# Settings


RECORD_VERSION = "2"


def settings_from_config(cfg) -> dict:
    """The settings that change the numbers, as plain data (the fingerprint is taken over this)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True)
    # dataset_version is part of the fingerprint: another version never writes into this run's folder.
    keys = ("temperatures_K", "harmonic_reference", "audit", "supercell", "relax", "harmonic", "sscha", "kappa", "targets", "dos", "seed",
            "dataset_version")
    settings = {k: container[k] for k in keys}
    settings["potential"] = str(container["potential"]["name"])  # the device does not change the numbers
    settings["dataset_version"] = str(settings["dataset_version"])
    settings["temperatures_K"] = [float(t) for t in settings["temperatures_K"]]
    settings["record_version"] = RECORD_VERSION
    from thermobench.dataset import SCHEMA_VERSION

    settings["schema_version"] = SCHEMA_VERSION
    return settings


def sscha_engine(settings: dict):
    """The SSCHA engine of the run (the ``sscha`` group's ``_target_``)."""
    from generate.config import sscha_engine as engine_of

    return engine_of(settings["sscha"])


def sscha_settings(settings: dict, temperature_K: float):
    """The SSCHA's settings at one temperature: the ``sscha`` group plus the harmonic keys it shares."""
    from generate.config import sscha_settings as settings_at

    return settings_at(settings["sscha"], settings["harmonic"], temperature_K, settings["seed"])


def harmonic_settings(settings: dict, supercell_matrix=None, temperatures_K=()):
    from generate.config import settings_of
    from generate.harmonic import HarmonicSettings

    extra = {"temperatures_K": tuple(temperatures_K)} if temperatures_K else {}
    if supercell_matrix is not None:
        extra["supercell_matrix"] = tuple(map(tuple, np.asarray(supercell_matrix).tolist()))
    return settings_of(HarmonicSettings, settings["harmonic"], "harmonic", **extra)


def check_settings(settings: dict) -> None:
    """Every numerical setting, checked before the first material; ``SettingsError`` names the field."""
    from generate import checks
    from generate.config import relax_settings

    from generate.harmonic_reference import REFERENCES

    checks.choice(settings["harmonic_reference"], "harmonic_reference", REFERENCES)
    checks.positive(settings["audit"]["every"], "audit.every", integer=True, strict=False)
    checks.positive(settings["audit"]["frequency_error_target_THz"], "audit.frequency_error_target_THz")
    quantum = bool(settings["sscha"].get("quantum", True))
    temperatures = checks.temperatures(settings["temperatures_K"], "temperatures_K", quantum=quantum)
    sc = settings["supercell"]
    checks.atom_budget(sc["min_atoms"], sc["max_atoms"])
    checks.positive(sc["min_length_A"], "supercell.min_length_A", strict=False)
    if sc.get("matrix") is not None:
        checks.supercell_matrix(sc["matrix"], "supercell.matrix")
    relax_settings(settings["relax"], settings["harmonic"])
    harmonic_settings(settings, temperatures_K=temperatures)
    for temperature in temperatures:
        sscha_settings(settings, temperature)
    sscha_engine(settings)
    if settings["kappa"].get("enabled"):
        from generate.kappa import settings_from_dict

        values = {k: v for k, v in settings["kappa"].items() if k != "enabled"}
        if values.get("fc3_supercell_matrix") is None:
            values["fc3_supercell_matrix"] = [2, 2, 2]  # stands in for the SSCHA supercell in this check
        settings_from_dict({**values, "temperatures_K": list(temperatures), "symprec": settings["harmonic"]["symprec"],
                            "imaginary_tolerance_THz": settings["harmonic"]["imaginary_tolerance_THz"]})
    checks.positive(settings["dos"]["sigma_THz"], "dos.sigma_THz")
    checks.positive(settings["dos"]["n_points"], "dos.n_points", integer=True, minimum=2, strict=False)
    checks.positive(settings["targets"]["shift_min_frequency_THz"], "targets.shift_min_frequency_THz", strict=False)
    checks.positive(settings["targets"]["classical_sigma_A_configurations"], "targets.classical_sigma_A_configurations",
                    integer=True, minimum=4, strict=False)


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
