"""The generator's settings: read from Hydra as plain data (fingerprinted), checked and typed once, before any work."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

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


@dataclass(frozen=True)
class GeneratorSettings:
    """The generator's settings, typed and checked once (:func:`check_settings`), for every material of a run.

    ``plain`` is the plain-data form (fingerprinted, written beside every row); the rest is built from it.
    """

    plain: dict = field(repr=False)
    temperatures_K: tuple[float, ...]
    harmonic_reference: str  # dft | potential (generate.harmonic.reference)
    supercell: dict  # the SSCHA supercell rule (generate.run.labels.choose_supercell)
    relax: object  # RelaxSettings
    harmonic: object  # HarmonicSettings with the temperatures; the supercell is set per material (harmonic_in)
    sscha: tuple  # one SSCHASettings per temperature
    engine: object  # DirectEngine | SurrogateEngine
    kappa: dict  # the kappa node (generate.kappa.pipeline_kappa_columns)
    audit_every: int
    audit_frequency_error_target_THz: float
    audit_kappa_q_mesh: tuple | float  # κ's reference mesh on the audit sample (checks.mesh_or_length)
    shift_min_frequency_THz: float
    classical_sigma_A_configurations: int
    dos_sigma_THz: float
    dos_n_points: int
    seed: int
    potential: str

    def harmonic_in(self, supercell_matrix):
        """The harmonic settings in one material's supercell."""
        return replace(self.harmonic, supercell_matrix=tuple(map(tuple, np.asarray(supercell_matrix).tolist())))

    @property
    def frequency_error_target_THz(self) -> float | None:
        return self.sscha[0].frequency_error_target_THz


def check_settings(settings: dict) -> GeneratorSettings:
    """Every setting, checked and typed before the first material; ``SettingsError`` names the field."""
    from generate.harmonic.phonons import HarmonicSettings
    from generate.harmonic.reference import REFERENCES
    from generate.run import checks
    from generate.run.config import relax_settings, settings_of
    from generate.run.config import sscha_engine as engine_of
    from generate.run.config import sscha_settings as settings_at

    checks.choice(settings["harmonic_reference"], "harmonic_reference", REFERENCES)
    audit_every = checks.positive(settings["audit"]["every"], "audit.every", integer=True, strict=False)
    audit_target = checks.positive(settings["audit"]["frequency_error_target_THz"], "audit.frequency_error_target_THz")
    audit_mesh = checks.mesh_or_length(settings["audit"]["kappa_q_mesh"], "audit.kappa_q_mesh")
    quantum = bool(settings["sscha"].get("quantum", True))
    temperatures = tuple(checks.temperatures(settings["temperatures_K"], "temperatures_K", quantum=quantum))
    sc = settings["supercell"]
    checks.atom_budget(sc["min_atoms"], sc["max_atoms"])
    checks.positive(sc["min_length_A"], "supercell.min_length_A", strict=False)
    if sc.get("matrix") is not None:
        checks.supercell_matrix(sc["matrix"], "supercell.matrix")
    relax = relax_settings(settings["relax"], settings["harmonic"])
    harmonic = settings_of(HarmonicSettings, settings["harmonic"], "harmonic", temperatures_K=temperatures)
    sscha = tuple(settings_at(settings["sscha"], settings["harmonic"], t, settings["seed"]) for t in temperatures)
    engine = engine_of(settings["sscha"])
    if settings["kappa"].get("enabled"):
        from generate.kappa import settings_from_dict

        values = {k: v for k, v in settings["kappa"].items() if k != "enabled"}
        if values.get("fc3_supercell_matrix") is None:
            values["fc3_supercell_matrix"] = [2, 2, 2]  # stands in for the SSCHA supercell in this check
        settings_from_dict({**values, "temperatures_K": list(temperatures), "symprec": settings["harmonic"]["symprec"],
                            "imaginary_tolerance_THz": settings["harmonic"]["imaginary_tolerance_THz"]})
    return GeneratorSettings(
        plain=settings,
        temperatures_K=temperatures,
        harmonic_reference=settings["harmonic_reference"],
        supercell=dict(sc),
        relax=relax,
        harmonic=harmonic,
        sscha=sscha,
        engine=engine,
        kappa=dict(settings["kappa"]),
        audit_every=int(audit_every),
        audit_frequency_error_target_THz=float(audit_target),
        audit_kappa_q_mesh=audit_mesh,
        shift_min_frequency_THz=checks.positive(settings["targets"]["shift_min_frequency_THz"],
                                                "targets.shift_min_frequency_THz", strict=False),
        classical_sigma_A_configurations=checks.positive(settings["targets"]["classical_sigma_A_configurations"],
                                                         "targets.classical_sigma_A_configurations", integer=True,
                                                         minimum=4, strict=False),
        dos_sigma_THz=checks.positive(settings["dos"]["sigma_THz"], "dos.sigma_THz"),
        dos_n_points=checks.positive(settings["dos"]["n_points"], "dos.n_points", integer=True, minimum=2, strict=False),
        seed=int(settings["seed"]),
        potential=str(settings["potential"]),
    )


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
