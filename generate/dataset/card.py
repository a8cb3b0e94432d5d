"""The dataset card: what the rows are, how they were made, and what they are worth (label fidelity
against DFT, convergence, failures, cost), with figures of the targets by family and element."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from generate.harmonic.phonons import mesh_mean_frequency_change
from thermobench.dataset import COLUMNS, CONFIGS, RANDOM_FRACTIONS, SCHEMA_VERSION, SPLITS, ood_holdout


def _configs_yaml(dicts) -> str:
    lines = ["configs:"]
    for config in CONFIGS:
        lines.append(f"- config_name: {config}")
        if config == "random":
            lines.append("  default: true")
        lines.append("  data_files:")
        for split in SPLITS:
            if not len(dicts[config][split]):
                continue
            lines.append(f"  - split: {split}")
            lines.append(f"    path: {config}/{split}*.parquet")  # also matches push_to_hub shard names
    return "\n".join(lines)


def _coverage(manifest: dict, ok: list[dict], failed: list[dict]) -> str:
    """How far the run has come: finished and failed materials against those its source lists."""
    requested = max((int(run.get("n_requested", 0)) for run in manifest["runs"]), default=0)
    done = len(ok) + len(failed)
    if requested <= done:
        return f"All {requested} materials of the run's source were attempted."
    return (f"**In progress:** {len(ok)} finished and {len(failed)} failed of the {requested} materials the run's source "
            f"lists ({done / requested:.1%} attempted); the run is resumable and these files are re-assembled as it grows.")


def _holdout_text(holdout) -> str:
    text = f"whole structure families held out for test ({', '.join(holdout.families)})"
    if holdout.elements:
        text += f" and every material containing {holdout.elements_name or 'one of'} ({', '.join(holdout.elements)})"
    return text


def _run_history(manifest: dict) -> tuple[list[str], float]:
    commands, wall = [], 0.0
    for run in manifest["runs"]:
        wall += float(run.get("wall_time_s", 0.0))
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run["started"]))
        commands.append(
            f"- {started}, {run.get('executor')} on `{run.get('host')}`: `{run.get('command') or '(called from Python)'}` — "
            f"{run.get('n_done', 0)} done, {run.get('n_failed', 0)} failed, {run.get('n_skipped', 0)} skipped "
            f"(already finished), {float(run.get('wall_time_s', 0.0)) / 60:.1f} min"
        )
    return commands, wall


def dataset_card(title: str, manifest: dict, ok: list[dict], failed: list[dict], rows: list[dict], dicts,
                 out_folder: Path, notes: Path | None = None) -> str:
    settings = manifest["settings"]
    families = Counter(record["family"] for record in ok)
    temperatures = sorted({row["temperature_K"] for row in rows})
    commands, wall = _run_history(manifest)
    compute = sum(float(r.get("wall_time_s", 0.0)) for r in ok + failed)
    converged = sum(bool(r["sscha_converged"]) for r in rows)
    n_kappa = sum(r["kappa_ratio"] is not None for r in rows)
    potential = rows[0]["potential"]
    sha = rows[0]["potential_sha256"]
    versions = json.loads(rows[0]["package_versions"])
    split_table = ["| config | train | validation | test |", "|---|---|---|---|"]
    for config, dd in dicts.items():
        counts = [f"{len(set(dd[s]['material_id']))} materials / {len(dd[s])} rows" for s in SPLITS]
        split_table.append(f"| {config} | " + " | ".join(counts) + " |")
    column_table = ["| column | type | unit | description |", "|---|---|---|---|"]
    for c in COLUMNS:
        nullable = " (nullable)" if c.nullable else ""
        column_table.append(f"| `{c.name}` | {c.dtype}{nullable} | {c.unit or '–'} | {c.description} |")
    failure_table = ["| material | stage | reason |", "|---|---|---|"] + [
        f"| {r['material_id']} | {r['stage']} | {r['reason'][:160].replace('|', '/')} |" for r in failed
    ]
    family_list = ", ".join(f"{f} ({n})" for f, n in sorted(families.items()))
    header = f"""---
license: cc-by-4.0
pretty_name: {title}
tags:
- materials-science
- phonons
- anharmonicity
- sscha
size_categories:
- n<1K
task_categories:
- tabular-regression
{_configs_yaml(dicts)}
---"""
    body = f"""
# {title}

Temperature-dependent (anharmonic) phonons of {len(ok)} inorganic crystals at
{", ".join(f"{t:g}" for t in temperatures)} K, computed with the stochastic self-consistent harmonic
approximation (SSCHA) on the machine-learned potential **{potential}** (checkpoint sha256 `{sha}`).
One row per (material, temperature): {len(rows)} rows. Made by the `thermobench` generation pipeline
(`python -m generate`, then `python -m generate.dataset.assemble`); schema version {SCHEMA_VERSION}.

Structure families (materials): {family_list}.

{_coverage(manifest, ok, failed)}

**These are potential-level numbers, not DFT or experiment**: they show what {potential} predicts
with the settings below, and are meant for benchmarking models that learn temperature-dependent
phonons, with a stochastic error bar and full provenance on every row.

## Loading

```python
import thermobench
test = thermobench.load_dataset("{title}", name="random", split="test")   # embedded copy
# or: datasets.load_dataset("path/to/this/folder", "ood", split="test")
```

## Splits

Splits are fixed and grouped by material: all temperatures of a material are in the same split, and
no material is in two splits (an empty split is left out of the files). A material's split is a hash of its id, so it does not change when
materials are added.
- `random`: {RANDOM_FRACTIONS[0]:.0%} / {RANDOM_FRACTIONS[1]:.0%} / {RANDOM_FRACTIONS[2]:.0%} train / validation / test by material.
- `ood`: {_holdout_text(ood_holdout(rows[0]["dataset_version"]))}; validation is
  drawn from the rest only.

{chr(10).join(split_table)}

## Targets

- `sigma_A`: Knoop's anharmonicity score σᴬ = sqrt(Σ(f − f_harm)² / Σ f²) over the final SSCHA
  ensemble (quantum: displacements drawn from the renormalized Gaussian at the temperature, zero-point
  motion included), with f_harm from the harmonic force constants of the relaxed structure;
  `sigma_A_error` is its stochastic error (jackknife over antithetic pairs). `sigma_A_classical`
  (± `sigma_A_classical_error`) is the same score over a classical Gaussian ensemble (variances
  k_B T/ω² of the SSCHA auxiliary force constants, {settings["targets"].get("classical_sigma_A_configurations", "?")} configurations), the quantity comparable
  with the molecular-dynamics σᴬ of Knoop et al. (PRM 4, 083809, 2020; npj Comput. Mater. 2023).
- `mean_relative_frequency_shift`: mean over the supercell's modes of (ν_SSCHA − ν_harm)/ν_harm, each
  renormalized mode paired with its harmonic self by eigenvector overlap at its commensurate q-point
  (`renormalized_commensurate_frequencies_matched_THz`; `min_mode_overlap` says how well the pairs
  match); only modes with ν_harm ≥ `shift_min_frequency_THz` ({settings["targets"]["shift_min_frequency_THz"]} THz) count, and it is
  null (reason in `shift_null_reason`) when the harmonic spectrum has imaginary modes, since then
  there is no harmonic reference. Signed: positive means hardening. `max_relative_frequency_shift` is
  the largest |shift| over the same modes.
- The renormalized frequencies are those of the SSCHA auxiliary force constants at fixed volume (the
  potential's relaxed static cell): no thermal expansion, and not the dynamical (Hessian of F) ones.
- κ columns: {n_kappa} of {len(rows)} rows have κ; the others are null with `kappa_null_reason`.
- SSCHA convergence: {converged} of {len(rows)} rows converged (`sscha_converged`: the gradient at the
  noise level on an independent ensemble, every frequency within `frequency_error_target_THz`, no mode
  at the stabilization floor); the others are kept, flagged with `sscha_status`, never dropped.

{fidelity_section(ok, failed, rows, settings)}

{figure_section(rows, out_folder)}

{notes.read_text() if notes else ""}

Conventions: frequencies in THz, negative = imaginary; `lattice_vectors` rows are lattice vectors
(Å), positions Cartesian (Å); energies per atom; entropies and heat capacities in k_B per atom.
Harmonic and SSCHA thermodynamics are both computed on the supercell modes (commensurate q), so their
difference is consistent; S and C_v of the SSCHA columns use the harmonic-oscillator formulas on the
renormalized frequencies. Nullable numbers are null (never NaN) with a reason column.

## How it was made

{method_text(settings)}

Commands (resumed runs listed in order; records of finished materials are reused, never recomputed):

{chr(10).join(commands)}

Total wall time of the runs: {wall / 3600:.2f} h ({compute / 3600:.2f} h of per-material compute,
summed over parallel workers). Then: `python -m generate.dataset.assemble <run folder> <this folder>`.

Settings fingerprint: `{manifest["settings_fingerprint"]}`. Packages: {", ".join(f"{k} {v}" for k, v in versions.items() if v)}.
Full settings (also in every row's `settings_json`):

```json
{json.dumps(settings, indent=1, sort_keys=True)}
```

## Failed materials

{len(failed)} material(s) failed and are listed in `failures.jsonl` with the stage and the reason:

{chr(10).join(failure_table) if failed else "(none)"}

## Columns

{chr(10).join(column_table)}

## License and citation

Data: CC BY 4.0. The potential {potential} is distributed with matgl (BSD-3-Clause).

```bibtex
@misc{{thermobench,
  title  = {{thermobench: a dataset and benchmark of temperature-dependent anharmonic phonons}},
  note   = {{{title}, dataset version {rows[0]["dataset_version"]}, schema {SCHEMA_VERSION}}},
  year   = {{2026}}
}}
```
Please also cite the SSCHA (Monacelli et al., J. Phys.: Condens. Matter 33, 363001, 2021), σᴬ
(Knoop et al., Phys. Rev. Materials 4, 083809, 2020), M3GNet (Chen & Ong, Nat. Comput. Sci. 2, 718,
2022) and phonopy (Togo, J. Phys. Soc. Jpn. 92, 012001, 2023).
"""
    return header + "\n" + body


def method_text(settings: dict) -> str:
    """How a row was made, in words, from its run's settings (older runs lack the newer keys)."""
    sc, h, sscha, relax = settings["supercell"], settings["harmonic"], settings["sscha"], settings["relax"]
    target = sscha.get("frequency_error_target_THz")
    engine = str(sscha.get("_target_", "direct")).rsplit(".", 1)[-1]
    if engine == "SurrogateEngine":
        engine_text = (f"the verified surrogate engine (one hiphive fit per material, the SCHA on it exactly, corrected "
                       f"against the potential with {sscha['surrogate']['n_verification']}-configuration verification "
                       f"ensembles; a temperature whose verification fails falls back to the direct engine, as "
                       f"`sscha_status` says)")
    else:
        engine_text = (f"the direct engine ({sscha['n_configurations']} configurations per ensemble, at most "
                       f"{sscha['max_configurations']})")
    large = h.get("supercell_max_atoms") and "min_length_A" in sc  # the embedding came with both
    mesh = (f"q-mesh {h['q_mesh']}: harmonic FC2 of a larger supercell (planes ≥ {h['supercell_min_length_A']} Å "
            f"apart, at most {h['supercell_max_atoms']} atoms) with the SSCHA correction embedded (generate.harmonic.embedding)"
            if large else f"q-mesh {h['q_mesh']} by Fourier interpolation of the SSCHA supercell")
    return (
        f"Per material: relax cell and positions under the space-group constraint (ASE {relax['optimizer']}, "
        f"fmax {relax['fmax_eV_A']} eV/Å, at most {relax['max_steps']} steps) → harmonic FC2 by finite displacements "
        f"({h['displacement_A']} Å, phonopy, symprec {h['symprec']}) in the SSCHA supercell: the smallest balanced "
        f"diagonal one with planes ≥ {sc.get('min_length_A', 0)} Å apart and ≥ {sc['min_atoms']} atoms (at most "
        f"{sc['max_atoms']}) → SSCHA at each temperature ({'quantum' if sscha['quantum'] else 'classical'} statistics, "
        f"{engine_text}, at most {sscha['max_steps']} steps"
        + (f", every frequency to a stochastic error of {target} THz" if target else "")
        + f", seed {settings['seed']}) → {mesh}; DOS with {settings['dos']['sigma_THz']} THz Gaussian smearing. "
        "The frequencies are the SSCHA auxiliary ones at fixed volume (the relaxed static cell)."
        + kappa_text(settings.get("kappa") or {})
        + (anchoring_text(settings) if settings.get("harmonic_reference") == "dft" else "")
    )


FC3_TEXT = {"finite_displacement": "the potential's finite displacements", "random_fit": "symfc's fit of random displacements",
            "surrogate": "the SSCHA surrogate's cubic terms"}


def kappa_text(kappa: dict) -> str:
    """How κ was computed, from the run's ``kappa`` settings (empty when it was not)."""
    if not kappa.get("enabled"):
        return ""
    mesh = kappa.get("q_mesh")
    mesh_text = (f"a q-mesh of {mesh:g} Å sampling length (n_i ≈ {mesh:g} Å × |b_i|, phonopy's rule, the same density "
                 "for every cell)" if isinstance(mesh, int | float) else f"a {'x'.join(map(str, mesh))} q-mesh")
    temperatures = kappa.get("temperatures_K")
    return (f" κ: phono3py ({str(kappa.get('method', 'rta')).upper()}, isotopes {'on' if kappa.get('isotope', True) else 'off'}) "
            f"on {mesh_text}, at {'every SSCHA temperature' if not temperatures else ', '.join(f'{t:g}' for t in temperatures) + ' K'}; "
            f"FC3 from {FC3_TEXT.get(kappa.get('fc3_method', 'finite_displacement'), kappa.get('fc3_method'))}"
            + (f" within {kappa['fc3_cutoff_A']:g} Å" if kappa.get("fc3_cutoff_A") else "")
            + " in the SSCHA supercell, one FC3 for the harmonic and the renormalized FC2.")


def anchoring_text(settings: dict) -> str:
    """The anchored route in words (``harmonic_reference: dft``)."""
    audit = settings.get("audit") or {}
    every = int(audit.get("every", 0))
    return (
        "\n\n**Materials with DFT force constants (phonondb; `harmonic_reference` = `dft`) take their harmonic part from "
        "DFT and only the anharmonic part from the potential.** They are not relaxed: DFT's (PBEsol) cell is used as "
        "given, DFT's FC2 is the harmonic result (mesh, DOS, harmonic thermodynamics, κ_harm; phonondb's Born charges "
        "applied to the mesh and both κ, `nac_applied`), and the SSCHA, σᴬ, the shifts, κ_ren and FC3 use the potential "
        "anchored to DFT about the DFT supercell R0 (generate.harmonic.anchoring): V(R0+u) = V_pot(R0+u) + F_pot(R0)·u − ½uᵀΦ_pot u "
        "+ ½uᵀΦ_DFT u, Φ_pot the potential's FC2 at R0 by central differences. Its harmonic phonons are DFT's by "
        "construction; its cubic and higher terms are the potential's. The SSCHA supercell is DFT's own where it fits "
        "the atom budget (else Φ_DFT is Fourier-interpolated from DFT's dynamical matrices). Limits: DFT's static "
        "volume (no thermal expansion), the potential's anharmonic terms, and its residual force at DFT's geometry "
        "(removed, not relaxed: `potential_residual_max_force_eV_A`, `potential_residual_pressure_GPa`). Other "
        "materials (`harmonic_reference` = `potential`) are relaxed by the potential and take everything from it."
        + (f" One material in {every} (by a hash of its id) is audited: also run with the direct engine to "
           f"{audit.get('frequency_error_target_THz')} THz, its rows carry the differences (`audit_*` columns; "
           "none at rows held at the stabilization floor, which are bounds on both routes)."
           if every else "")
    )




def _median(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.median(values):.3f}" if values else "–"


def anchored_fidelity(materials: list[dict], rows: list[dict]) -> str:
    """The anchored materials' fidelity: the potential at DFT's geometry, its stability there, the labels' stability
    and the audit, from the rows."""
    lines = [f"{len(materials)} materials are anchored on DFT (`harmonic_reference` = `dft`). The potential's own harmonic "
             "frequencies at DFT's geometry against DFT (`potential_dft_mae_THz`, no NAC on either side), by phonondb split "
             "(the fine-tune's):", "", "| phonondb split | materials | median MAE (THz) | mean | median max residual force "
             "(eV/Å) | median pressure (GPa) |", "|---|---|---|---|---|---|"]
    for split in ("train", "validation", "test"):
        group = [m for m in materials if m["phonondb_split"] == split]
        if group:
            mae = [m["potential_dft_mae_THz"] for m in group]
            lines.append(f"| {split} | {len(group)} | {np.median(mae):.3f} | {np.mean(mae):.3f} | "
                         f"{_median([m['potential_residual_max_force_eV_A'] for m in group])} | "
                         f"{_median([m['potential_residual_pressure_GPa'] for m in group])} |")
    agree = Counter((bool(m["dft_dynamically_stable"]), bool(m["potential_dynamically_stable"])) for m in materials)
    at300 = [r for r in rows if r.get("harmonic_reference") == "dft" and r["temperature_K"] == 300.0]
    stable_dft = [r for r in at300 if r["dft_dynamically_stable"]]
    kept = sum(r["n_imaginary_renormalized"] == 0 and not r["at_stabilization_floor"] for r in stable_dft)
    lines += ["", f"The potential's own verdict at DFT's geometry: both stable {agree[(True, True)]}, both unstable "
                  f"{agree[(False, False)]}, DFT stable but the potential not {agree[(True, False)]}, the potential stable but "
                  f"DFT not {agree[(False, True)]}; the labels' harmonic part is DFT's, so their harmonic verdict is DFT's. "
                  f"At 300 K the SSCHA keeps {kept} of the {len(stable_dft)} DFT-stable crystals stable."]
    shifts = [r["mean_relative_frequency_shift"] for r in rows if r.get("harmonic_reference") == "dft"
              and r["mean_relative_frequency_shift"] is not None and not r["at_stabilization_floor"]]
    if shifts:
        lines.append(f"Mean shifts off the floor: {np.mean(np.asarray(shifts) > 0):.0%} of {len(shifts)} rows harden "
                     f"(median {np.median(shifts):+.3f}).")
    audited = [r for r in rows if r.get("audit_max_frequency_difference_THz") is not None]
    if audited:
        worst = max(audited, key=lambda r: r["audit_max_frequency_difference_THz"])
        lines.append(f"Audit ({len({r['material_id'] for r in audited})} materials, {len(audited)} rows): the fast route's "
                     f"supercell frequencies differ from the direct engine's by at most "
                     f"{worst['audit_max_frequency_difference_THz']:.3f} THz ({worst['material_id']} at "
                     f"{worst['temperature_K']:.0f} K, stochastic error {worst['audit_frequency_difference_error_THz']:.3f} THz), "
                     f"median {_median([r['audit_max_frequency_difference_THz'] for r in audited])} THz; median |Δσᴬ| "
                     f"{_median([abs(r['audit_sigma_A_difference']) for r in audited])}.")
    other = [r for r in audited if r.get("audit_kappa_harmonic_other_fc3_W_mK") and r.get("kappa_harmonic_W_mK")
             and r.get("audit_kappa_renormalized_other_fc3_W_mK") is not None and r.get("kappa_ratio") is not None]
    if other:
        harmonic = [r["kappa_harmonic_W_mK"] / r["audit_kappa_harmonic_other_fc3_W_mK"] for r in other]
        ratio = [r["kappa_ratio"] * r["audit_kappa_harmonic_other_fc3_W_mK"] / r["audit_kappa_renormalized_other_fc3_W_mK"]
                 for r in other]
        lines.append(f"κ with the other FC3 ({other[0]['audit_kappa_other_fc3_source']}) on {len(other)} audited rows: "
                     f"κ_harm of the rows over it, geometric mean {float(np.exp(np.mean(np.log(harmonic)))):.2f} (range "
                     f"{min(harmonic):.2f}–{max(harmonic):.2f}); κ ratio {float(np.exp(np.mean(np.log(ratio)))):.3f} "
                     f"(range {min(ratio):.3f}–{max(ratio):.3f}).")
    meshed = [r for r in audited if r.get("audit_kappa_harmonic_reference_mesh_W_mK") and r.get("kappa_harmonic_W_mK")
              and r.get("audit_kappa_renormalized_reference_mesh_W_mK") and r.get("kappa_ratio") is not None]
    if meshed:
        harmonic = [abs(r["kappa_harmonic_W_mK"] / r["audit_kappa_harmonic_reference_mesh_W_mK"] - 1) for r in meshed]
        ratio = [abs(r["kappa_ratio"] * r["audit_kappa_harmonic_reference_mesh_W_mK"]
                     / r["audit_kappa_renormalized_reference_mesh_W_mK"] - 1) for r in meshed]
        lines.append(f"κ on the rows' q-mesh against the reference mesh (`audit.kappa_q_mesh`; same FC2s and FC3), {len(meshed)} audited "
                     f"rows: |Δκ_harm| median {np.median(harmonic):.1%}, largest {max(harmonic):.1%}; |Δ(κ ratio)| median "
                     f"{np.median(ratio):.1%}, largest {max(ratio):.1%}.")
    return "\n".join(lines)


def fidelity_section(ok: list[dict], failed: list[dict], rows: list[dict], settings: dict) -> str:
    """What the labels are worth: the potential against DFT, the floor, failures and cost, from the rows."""
    first = {}
    for row in rows:
        first.setdefault(row["material_id"], row)
    materials = list(first.values())
    lines = ["## Label fidelity, failures and cost", ""]
    anchored = [m for m in materials if m.get("harmonic_reference") == "dft"]
    if anchored:
        lines += [anchored_fidelity(anchored, rows), ""]
    with_dft = [m for m in materials if m.get("potential_dft_mae_THz") is not None and m.get("harmonic_reference") != "dft"]
    if with_dft:
        lines.append(f"Potential vs DFT (phonondb PBEsol) harmonic frequencies, {len(with_dft)} materials "
                     f"(mesh-weighted MAE over every band): `potential_dft_mae_THz` with the potential at its own "
                     f"relaxed geometry, the one the labels use, and `potential_dft_mae_dft_geometry_THz` with its force "
                     f"constants at DFT's geometry; their difference is what the potential's lattice error adds.")
        lines += ["", "| phonondb split (fine-tune) | materials | median MAE, own geometry (THz) | mean | "
                      "median MAE, DFT geometry (THz) | mean |", "|---|---|---|---|---|---|"]
        for split in ("train", "validation", "test"):
            group = [m for m in with_dft if m["phonondb_split"] == split]
            if group:
                own = [m["potential_dft_mae_THz"] for m in group]
                at_dft = [m["potential_dft_mae_dft_geometry_THz"] for m in group
                          if m.get("potential_dft_mae_dft_geometry_THz") is not None]
                dft_text = f"{np.median(at_dft):.3f} | {np.mean(at_dft):.3f}" if at_dft else "– | –"
                lines.append(f"| {split} | {len(group)} | {np.median(own):.3f} | {np.mean(own):.3f} | {dft_text} |")
        agree = Counter((bool(m["dft_dynamically_stable"]), bool(m["potential_dynamically_stable"])) for m in with_dft)
        stability = (f"Harmonic dynamical stability (materials): both stable {agree[(True, True)]}, both unstable "
                     f"{agree[(False, False)]}, DFT stable but the potential not {agree[(True, False)]}, the potential "
                     f"stable but DFT not {agree[(False, True)]}.")
        # potential_dft_mae_THz is computed from these columns, so every material of with_dft has them
        change = [mesh_mean_frequency_change(m["dft_mesh_frequencies_THz"], m["harmonic_mesh_frequencies_THz"],
                                             m["mesh_weights"]) for m in with_dft]
        lines += ["", f"Signed: the potential's mean harmonic frequency (own geometry) is below DFT's for "
                      f"{sum(c < 0 for c in change)} of {len(change)} materials, median relative change "
                      f"{np.median(change):+.3f}: universal potentials are systematically soft (Deng et al. 2024), "
                      "and a soft harmonic reference can make thermal renormalization look harder than it is."]
        volume = (f"Median |volume change| of the potential's relaxed cell vs DFT's: "
                  f"{_median([abs(m['volume_change_vs_source']) for m in with_dft])} (fraction).")
        lines += ["", stability, volume]
        lines.append("")
        lines.append("Rows on `test` of the phonondb split are out-of-sample for the fine-tuned potential; "
                     "`train` rows measure how well it fits data it was trained on.")
    floor = [r for r in rows if r.get("at_stabilization_floor")]
    floor_text = (f"Rows at the stabilization floor: {len(floor)} of {len(rows)} "
                  f"({', '.join(sorted({r['material_id'] for r in floor})) or 'none'}): their soft modes are held at "
                  f"{settings['sscha'].get('min_frequency_THz', 0.5)} THz because the SCHA wants them softer (a structural "
                  "instability of the cell at that temperature, or the potential's); they are flagged, not converged, "
                  "and explained in `sscha_status`. The other modes are solved self-consistently with those held "
                  "(the constrained SCHA; `sscha_status` says \"self-consistent with N modes held\" when it was reached, "
                  "\"stalled with N modes held\" when modes crossing the floor and back kept it from being reached; "
                  "\"kept as a bound\" when the surrogate's verified correction did not converge, which is then in "
                  "the error bars). They carry no κ: κ_renormalized would measure the floor.")
    lines += ["", floor_text]
    n_attempted = len(ok) + len(failed)
    stages = Counter(r.get("stage") for r in failed)
    lines.append(f"Failures: {len(failed)} of {n_attempted} attempted materials ({len(failed) / max(n_attempted, 1):.1%})"
                 + (f", by stage: {', '.join(f'{k} {v}' for k, v in sorted(stages.items()))}" if failed else "") + ".")
    kappa_materials = {r["material_id"] for r in rows if r["kappa_ratio"] is not None and r["temperature_K"] == 300.0}
    stable = {m["material_id"] for m in materials
              if (m["dft_dynamically_stable"] if m.get("harmonic_reference") == "dft" else m["potential_dynamically_stable"])}
    lines.append(f"κ at 300 K: {len(kappa_materials)} materials of {len(stable)} whose harmonic reference (DFT's where "
                 "anchored, else the potential's) is dynamically stable.")
    hours = [float(r.get("wall_time_s", 0.0)) / 3600 for r in ok]
    if hours:
        lines.append(f"Cost: {np.mean(hours):.2f} core-hours per finished material on average (median {np.median(hours):.2f}, "
                     f"max {max(hours):.2f}; one CPU core per material), {sum(hours) + sum(float(r.get('wall_time_s', 0.0)) for r in failed) / 3600:.1f} core-hours in all.")
    return "\n".join(lines)


def figure_section(rows: list[dict], out_folder: Path) -> str:
    """σᴬ at 300 K and the κ ratio by structure family and by element, as PNG files beside the card."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at_300 = [r for r in rows if r["temperature_K"] == 300.0] or rows
    figures = out_folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    panels = [("sigma_A", "σᴬ (quantum SSCHA ensemble)"), ("kappa_ratio", "κ_SSCHA / κ_harmonic")]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), squeeze=False)
    for row_index, (key, label) in enumerate(panels):
        for col_index, group in enumerate(("family", "elements")):
            ax = axes[row_index][col_index]
            values: dict[str, list[float]] = {}
            for r in at_300:
                if r[key] is None:
                    continue
                for name in (r[group] if group == "elements" else [r[group]]):
                    values.setdefault(name, []).append(r[key])
            names = sorted(values, key=lambda n: np.median(values[n]))
            if group == "elements":
                names = [n for n in names if len(values[n]) >= 2] or names
            if names:
                ax.boxplot([values[n] for n in names], vert=False, showfliers=False)
                for position, n in enumerate(names, start=1):  # every material as a dot: groups are small
                    ax.plot(values[n], [position] * len(values[n]), "o", ms=3, alpha=0.6, color="tab:blue")
                ax.set_yticks(range(1, len(names) + 1), [f"{n} ({len(values[n])})" for n in names], fontsize=6 if len(names) > 25 else 8)
            ax.set_xlabel(f"{label} at {at_300[0]['temperature_K']:g} K")
            ax.set_title(f"by {'structure family' if group == 'family' else 'element (materials containing it)'}")
    fig.tight_layout()
    fig.savefig(figures / "targets_by_family_and_element.png", dpi=110)
    plt.close(fig)
    return ("## Figures\n\n![σᴬ and κ ratio by family and element](figures/targets_by_family_and_element.png)\n\n"
            "Boxes: quartiles over materials, dots: the materials; numbers: materials in the group; elements seen in a single material are left out "
            "when others exist.")
