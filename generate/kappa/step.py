"""The generator's κ step and KappaSettings from plain mappings (YAML)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from ase import Atoms

from generate.kappa.result import KappaSettings
from generate.kappa.transport import compute_kappa

# ----------------------------------------------------------------------------------------------
# Pipeline step


def settings_from_dict(values: Mapping | None) -> KappaSettings:
    """KappaSettings from a plain mapping (YAML); lists become tuples; unknown keys are an error."""
    from generate.config import settings_of

    return settings_of(KappaSettings, values, "kappa")


def pipeline_kappa_columns(cell: Atoms, supercell_matrix, model, harmonic, results, cfg: Mapping) -> list[dict]:
    """``generate.pipeline``'s κ step: one dict of the four κ columns per SSCHA result (temperature).

    FC2s are the pipeline's own (harmonic and SSCHA, in ``supercell_matrix``); FC3 is computed once
    in ``cfg["fc3_supercell_matrix"]`` (default: the same supercell). κ is the isotropic average.
    """
    values = {k: v for k, v in dict(cfg).items() if k != "enabled"}
    if values.get("fc3_supercell_matrix") is None:
        values["fc3_supercell_matrix"] = np.asarray(supercell_matrix).tolist()
    values["temperatures_K"] = [float(r.temperature_K) for r in results]
    settings = settings_from_dict(values)
    result = compute_kappa(
        cell, model, settings,
        fc2_renormalized={float(r.temperature_K): r.force_constants_eV_A2 for r in results},
        fc2_supercell=results[0].supercell,
        fc2_harmonic=results[0].harmonic_force_constants_eV_A2,
    )
    rows = []
    harmonic_kappa = (result.harmonic.kappa_average_W_mK if result.harmonic else None) or [None] * len(results)
    renormalized_kappa = (result.renormalized.kappa_average_W_mK if result.renormalized else None) or [None] * len(results)
    for k in range(len(settings.temperatures_K)):
        ratio = result.kappa_ratio[k]
        rows.append({
            "kappa_harmonic_W_mK": harmonic_kappa[k],
            "kappa_renormalized_W_mK": renormalized_kappa[k],
            "kappa_ratio": ratio,
            "kappa_null_reason": None if ratio is not None else (result.kappa_ratio_null_reason or result.reason),
        })
    return rows
