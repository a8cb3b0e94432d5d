"""Hydra for every command: the configs compose, their defaults are the settings dataclasses', and
the sscha group's _target_ picks the engine."""

import dataclasses

import pytest

from generate.harmonic.phonons import HarmonicSettings
from generate.harmonic.relax import RelaxSettings
from generate.kappa.result import KappaSettings
from generate.run.config import SHARED, compose, relax_settings, sscha_engine, sscha_settings
from generate.sscha import DirectEngine, SSCHASettings, SurrogateEngine, SurrogateSettings

COMMANDS = ("generate", "sscha", "kappa", "relax", "validate_phonons", "finetune", "assemble", "publish")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_composes(command):
    cfg = compose(command)
    assert cfg is not None
    if "potential" in cfg:
        assert {"name", "device"} <= set(cfg.potential)


def test_defaults_are_the_dataclasses():
    """What a command runs with when nothing is overridden is exactly the dataclasses' defaults (the
    shared keys come from the harmonic group, i.e. from HarmonicSettings)."""
    cfg = compose("generate")
    harmonic = HarmonicSettings()
    assert relax_settings(cfg.relax, cfg.harmonic) == RelaxSettings(symprec=harmonic.symprec)
    shared = {k: getattr(harmonic, k) for k in ("symprec", "q_mesh", "displacement_A", "imaginary_tolerance_THz")}
    assert sscha_settings(cfg.sscha, cfg.harmonic, 300.0, 0) == SSCHASettings(temperature_K=300.0, seed=0, **shared)
    engine = sscha_engine(cfg.sscha)
    assert engine == SurrogateEngine() and engine.surrogate == SurrogateSettings()
    kappa_fields = {f.name for f in dataclasses.fields(KappaSettings)} - set(SHARED)
    defaults = KappaSettings()
    for name in kappa_fields - {"fc3_supercell_matrix"}:  # generate: FC3 in the SSCHA supercell
        expected = getattr(defaults, name)
        assert cfg.kappa[name] == (list(expected) if isinstance(expected, tuple) else expected), name
    assert cfg.kappa.enabled is False and cfg.kappa.fc3_supercell_matrix is None


@pytest.mark.parametrize(("choice", "cls"), [("direct", DirectEngine), ("surrogate", SurrogateEngine)])
def test_the_sscha_group_picks_the_engine(choice, cls):
    cfg = compose("generate", [f"sscha={choice}"])
    assert type(sscha_engine(cfg.sscha)) is cls
    # the engine keys never leak into the SSCHA settings
    assert sscha_settings(cfg.sscha, cfg.harmonic, 100.0, 1).temperature_K == 100.0
