"""Hydra for every command: the settings dataclasses registered as config nodes, so that they are the
one place each default lives, and the helpers that turn a composed config back into settings.

``conf/{relax,harmonic,sscha,kappa}/*.yaml`` start from these nodes (``defaults: [/base/sscha@_here_]``)
and only choose (the engine's ``_target_``, ``enabled``); ``python -m generate --cfg job`` prints the
merged values. Keys shared by several settings (symmetry tolerance, q-mesh, finite displacement,
imaginary tolerance, temperatures, seed) live once, in ``harmonic`` or at the top of a command's
config, and are handed to each dataclass by :func:`sscha_settings` and friends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from hydra.core.config_store import ConfigStore

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Set from one place per command (the harmonic group, or the command's temperatures and seed).
SHARED = ("temperature_K", "temperatures_K", "seed", "symprec", "q_mesh", "displacement_A", "imaginary_tolerance_THz")


def plain(value):
    """A dataclass default as YAML-ready data (tuples as lists)."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def node(cls, leave_out=SHARED, **extra) -> dict:
    """The defaults of settings class ``cls`` as a config node, shared keys left out."""
    instance = cls()
    return {**{f.name: plain(getattr(instance, f.name)) for f in dataclasses.fields(cls) if f.name not in leave_out}, **extra}


def register() -> None:
    """Store the dataclass defaults under the ``base`` group (idempotent; Hydra reads it at compose time)."""
    from generate.harmonic.phonons import HarmonicSettings
    from generate.harmonic.relax import RelaxSettings
    from generate.kappa.result import KappaSettings
    from generate.sscha.engine import SurrogateEngine
    from generate.sscha.result import SSCHASettings

    store = ConfigStore.instance()
    store.store(group="base", name="relax", node=node(RelaxSettings, leave_out=("symprec",)))
    store.store(group="base", name="harmonic", node=node(HarmonicSettings, leave_out=("temperatures_K", "supercell_matrix")))
    store.store(group="base", name="sscha", node=node(SSCHASettings))
    store.store(group="base", name="surrogate_engine", node=node(SurrogateEngine))
    store.store(group="base", name="kappa", node=node(KappaSettings, leave_out=("temperatures_K", "seed", "symprec")))


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = ()):
    """A command's config as the command line would compose it (tests, benchmarks, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def container(values) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(values, resolve=True) if OmegaConf.is_config(values) else dict(values or {})


def settings_of(cls, values: Mapping, section: str, **shared):
    """``cls(**values, **shared)`` with lists as tuples; an unknown key is a SettingsError naming it."""
    from generate.run.checks import SettingsError

    values = {k: v for k, v in container(values).items() if k != "_target_"}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"unknown {section} setting(s) {unknown}; known: {sorted(known)}")

    def convert(v):
        return tuple(convert(x) for x in v) if isinstance(v, list | tuple) else v

    return cls(**{k: convert(v) for k, v in {**values, **shared}.items()})


def checked_temperatures(cfg, key: str = "temperatures_K") -> None:
    """Check ``cfg[key]`` (naming the field) and store it as a list of floats, before anything converts
    it: a single temperature (``temperatures_K=300``) becomes a list of one."""
    from omegaconf import open_dict

    from generate.run import checks

    with open_dict(cfg):
        cfg[key] = list(checks.temperatures(cfg[key], key))


def harmonic_shared(harmonic: Mapping) -> dict:
    """The harmonic group's keys that the relaxation and the SSCHA share."""
    return {k: container(harmonic)[k] for k in ("symprec", "q_mesh", "displacement_A", "imaginary_tolerance_THz")}


def relax_settings(relax: Mapping, harmonic: Mapping):
    from generate.harmonic.relax import RelaxSettings

    return settings_of(RelaxSettings, relax, "relax", symprec=container(harmonic)["symprec"])


def sscha_settings(sscha: Mapping, harmonic: Mapping, temperature_K: float, seed: int):
    """The SSCHA settings at one temperature: the ``sscha`` node less its engine keys, plus the shared ones."""
    from generate.sscha.engine import ENGINES, engine_keys
    from generate.sscha.result import SSCHASettings

    engine_only = set().union(*(engine_keys(cls) for cls in ENGINES.values()))
    values = {k: v for k, v in container(sscha).items() if k not in engine_only}
    return settings_of(SSCHASettings, values, "sscha", temperature_K=float(temperature_K), seed=int(seed),
                       **harmonic_shared(harmonic))


def sscha_engine(sscha: Mapping):
    from generate.sscha.engine import engine_from_config

    return engine_from_config(container(sscha))
