"""The generator's κ step and KappaSettings from plain mappings (YAML)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from ase import Atoms

from generate.kappa.result import KappaSettings
from generate.kappa.force_constants import SitesNotMatchedError
from generate.kappa.result import Phono3pyFailure
from generate.kappa.transport import failed_kappa, kappa_of_prepared, prepare_kappa

# ----------------------------------------------------------------------------------------------
# Pipeline step


class SurrogateFC3:
    """FC3 from the SSCHA's fitted expansion (``kappa.fc3_method: surrogate``): the compressive-sensing fit's
    cubic terms, exactly, at no potential evaluation and without phono3py's finite-difference solver. The
    expansion is folded onto the SSCHA supercell, as finite displacements in that supercell would see it."""

    def __init__(self, expansion):
        self.expansion = expansion

    def fc3_for(self, ph3) -> np.ndarray:
        """Compact FC3 (primitive sites, N, N, 3, 3, 3) in ``ph3``'s supercell order (atoms matched by position)."""
        from generate.kappa.force_constants import supercell_permutation

        perm = supercell_permutation(self.expansion.reference_atoms, ph3.supercell)  # target i = source perm[i]
        rows = self.expansion.third_derivatives(perm[np.asarray(ph3.primitive.p2s_map)])
        return np.ascontiguousarray(rows[:, perm][:, :, perm])


def settings_from_dict(values: Mapping | None) -> KappaSettings:
    """KappaSettings from a plain mapping (YAML); lists become tuples; unknown keys are an error."""
    from generate.run.config import settings_of

    return settings_of(KappaSettings, values, "kappa")


@dataclass(frozen=True)
class KappaPlan:
    """What the κ step computes: its settings, the SSCHA results (temperatures) it uses, the FC3 model
    (None: finite displacements of the potential) and the FC3's description for the rows."""

    settings: KappaSettings | None
    wanted: list[float]
    chosen: list
    fc3: SurrogateFC3 | None
    fc3_source: str


def kappa_plan(supercell_matrix, results, cfg: Mapping) -> KappaPlan:
    """The κ step's settings from the ``kappa`` config (FC3 supercell: the SSCHA's unless given) and the
    SSCHA results at ``kappa.temperatures_K`` (all when absent)."""
    values = {k: v for k, v in dict(cfg).items() if k != "enabled"}
    if values.get("fc3_supercell_matrix") is None:
        values["fc3_supercell_matrix"] = np.asarray(supercell_matrix).tolist()
    wanted = [float(t) for t in values.get("temperatures_K") or [r.temperature_K for r in results]]
    chosen = [r for r in results if any(abs(r.temperature_K - t) < 1e-9 for t in wanted)]
    if not chosen:
        return KappaPlan(None, wanted, [], None, "")
    values["temperatures_K"] = [float(r.temperature_K) for r in chosen]
    settings = settings_from_dict(values)
    expansions = [r.expansion for r in results if getattr(r, "expansion", None) is not None]
    fc3_source = "potential, finite displacements" if settings.fc3_method != "random_fit" else "potential, symfc random fit"
    fc3 = None
    if settings.fc3_method == "surrogate":
        settings = replace(settings, fc3_method="finite_displacement")  # where no SSCHA result has an expansion
        if expansions:  # the last fit: refits at later temperatures only add configurations
            fc3, fc3_source = SurrogateFC3(expansions[-1]), "surrogate expansion, cubic terms"
    return KappaPlan(settings, wanted, chosen, fc3, fc3_source)


def pipeline_kappa_columns(cell: Atoms, supercell_matrix, model, harmonic, results, cfg: Mapping,
                           nac_params: Mapping | None = None, reference_q_mesh=None) -> list[dict]:
    """``generate.run.pipeline``'s κ step: one dict of the four κ columns per SSCHA result (temperature).

    FC2s are the pipeline's own (harmonic and SSCHA, in ``supercell_matrix``); FC3 is computed once
    in ``cfg["fc3_supercell_matrix"]`` (default: the same supercell). κ is the isotropic average.
    κ is computed at the SSCHA temperatures listed in ``cfg["temperatures_K"]`` (all of them when the key
    is absent, as in the ``kappa`` config node; ``+kappa.temperatures_K=[300]`` adds it): each renormalized
    FC2 costs a full phono3py run, minutes for a 10-atom cell on 11³. ``nac_params``: DFT's Born charges and
    dielectric tensor (phonopy's dict), applied to both κ. ``reference_q_mesh`` (the audit sample): κ again on
    that mesh with the same FC2s and FC3, in the ``audit_kappa_*_reference_mesh_W_mK`` columns (null where it is
    the rows' mesh).
    """
    plan = kappa_plan(supercell_matrix, results, cfg)
    skipped = {"kappa_harmonic_W_mK": None, "kappa_renormalized_W_mK": None, "kappa_ratio": None,
               "kappa_null_reason": f"not computed at this temperature (kappa.temperatures_K = {plan.wanted})",
               "kappa_fc3_source": None}
    if not plan.chosen:
        return [dict(skipped) for _ in results]
    settings, chosen, fc3, fc3_source = plan.settings, plan.chosen, plan.fc3, plan.fc3_source
    try:
        prepared = prepare_kappa(
            cell, model, settings, fc3=fc3,
            fc2_renormalized={float(r.temperature_K): r.force_constants_eV_A2 for r in chosen},
            fc2_supercell=chosen[0].supercell,
            fc2_harmonic=chosen[0].harmonic_force_constants_eV_A2,
            nac_params=None if nac_params is None else dict(nac_params),
        )
    except SitesNotMatchedError as error:  # before any FC3 work: the SSCHA centroids left the cell's sites
        reason = f"not computed: {error}: the SSCHA centroids left the cell's sites (a distorted structure)"
        return [{**skipped, "kappa_null_reason": reason} if any(r is c for c in chosen) else dict(skipped) for r in results]
    except Phono3pyFailure as error:
        result = failed_kappa(settings, str(error))
    else:
        result = kappa_of_prepared(prepared, settings)
    reference = {}
    if reference_q_mesh is not None and result.fc3 is not None and not same_mesh(reference_q_mesh, settings.q_mesh):
        check = kappa_of_prepared(prepared, replace(settings, q_mesh=reference_q_mesh))
        reference = {float(r.temperature_K): {
            "audit_kappa_harmonic_reference_mesh_W_mK": check.harmonic.average_at(r.temperature_K) if check.harmonic else None,
            "audit_kappa_renormalized_reference_mesh_W_mK": (check.renormalized.average_at(r.temperature_K)
                                                             if check.renormalized else None)} for r in chosen}
    harmonic_kappa = (result.harmonic.kappa_average_W_mK if result.harmonic else None) or [None] * len(chosen)
    renormalized_kappa = (result.renormalized.kappa_average_W_mK if result.renormalized else None) or [None] * len(chosen)
    by_temperature = {}  # the SSCHA temperatures of one material are distinct
    for k, r in enumerate(chosen):
        ratio = result.kappa_ratio[k]
        by_temperature[float(r.temperature_K)] = {
            "kappa_harmonic_W_mK": harmonic_kappa[k],
            "kappa_renormalized_W_mK": renormalized_kappa[k],
            "kappa_ratio": ratio,
            "kappa_null_reason": None if ratio is not None else (result.kappa_ratio_null_reason or result.reason),
            "kappa_fc3_source": fc3_source,
            **reference.get(float(r.temperature_K), REFERENCE_MESH),
        }
    return [by_temperature.get(float(r.temperature_K), {**skipped, **REFERENCE_MESH}) for r in results]


REFERENCE_MESH = {"audit_kappa_harmonic_reference_mesh_W_mK": None, "audit_kappa_renormalized_reference_mesh_W_mK": None}


def same_mesh(a, b) -> bool:
    return np.ndim(a) == np.ndim(b) and np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
