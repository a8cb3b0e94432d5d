"""One material's record: relax, harmonic phonons, SSCHA per temperature, κ, assembled into dataset
rows (or a failure record naming the stage); the run folder that holds the records."""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from generate.harmonic.modes import frequency_shifts, matched_frequencies
from generate.run.atomic import write_json_atomically
from generate.run.checkpoint import active as active_checkpoints
from generate.run.checkpoint import material_checkpoints
from generate.run.labels import (
    choose_supercell,
    finite_or_none,
    mode_thermodynamics,
    smeared_dos,
    structure_hash,
)
from generate.run.settings import RECORD_VERSION, GeneratorSettings, fingerprint, package_versions
from thermobench.families import Material
from thermobench.potentials import load_named_potential


class StageError(RuntimeError):
    """An error in one stage of one material; ``stage`` names it in the failure record."""

    def __init__(self, stage: str, error: BaseException):
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


# ----------------------------------------------------------------------------------------------
# One material


def material_fields(material: Material) -> dict:
    """The columns that name a material, shared by its rows and its failure records."""
    return {"material_id": material.material_id, "name": material.name, "formula": material.formula,
            "family": material.family, "source": material.source, "source_id": material.source_id}


def compute_material(material: Material, settings: GeneratorSettings, device: str = "cpu", potential=None,
                     checkpoint_dir: Path | str | None = None) -> dict:
    """Compute one material's record; never raises (a failure becomes a failure record).

    ``settings``: the run's checked settings (:func:`generate.run.settings.check_settings`).
    ``potential``: a :class:`LoadedPotential` to use instead of loading ``settings.potential``.
    ``checkpoint_dir``: where the expensive stages are checkpointed (:mod:`generate.run.checkpoint`), in a
    folder per material, deleted once the material succeeds; a failed one keeps it, so that
    ``retry_failed`` resumes. ``wall_time_s`` includes the time of the stages read back, and
    ``reused_checkpoints`` names them.
    """
    start, cpu_start = time.time(), time.process_time()
    base = {
        "record_version": RECORD_VERSION,
        **material_fields(material),
        "started": start,
        "host": os.uname().nodename,
    }
    folder = None if checkpoint_dir is None else Path(checkpoint_dir) / safe_name(material.material_id)
    with material_checkpoints(folder) as checkpoints:
        try:
            rows = _compute_rows(material, settings, device, potential, start)
        except BaseException as error:  # noqa: BLE001 - the record must say what happened, whatever it was
            if isinstance(error, KeyboardInterrupt | SystemExit):
                raise
            stage = error.stage if isinstance(error, StageError) else "unknown"
            cause = error.error if isinstance(error, StageError) else error
            return {
                **base,
                "status": "failed",
                "stage": stage,
                "reason": f"{type(cause).__name__}: {cause}",
                "traceback": "".join(traceback.format_exception(cause)),
                "wall_time_s": time.time() - start + checkpoints.reused_seconds,
                "cpu_time_s": time.process_time() - cpu_start,
                "stage_cpu_time_s": dict(checkpoints.stage_cpu_s),
                "reused_checkpoints": checkpoints.reused,
                "finished": time.time(),
            }
        checkpoints.clear()
    # CPU seconds of the worker process (every thread): the cost on a shared machine, where wall time is not.
    return {**base, "status": "ok", "rows": rows, "wall_time_s": time.time() - start + checkpoints.reused_seconds,
            "cpu_time_s": time.process_time() - cpu_start, "stage_cpu_time_s": dict(checkpoints.stage_cpu_s),
            "reused_checkpoints": checkpoints.reused,
            "finished": time.time()}


def _stage(name: str, function: Callable, *args, **kwargs):
    checkpoints = active_checkpoints()
    checkpoints.mark(name)
    cpu_start = time.process_time()
    try:
        return function(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001
        raise StageError(name, error) from error
    finally:
        spent = checkpoints.stage_cpu_s
        spent[name] = spent.get(name, 0.0) + time.process_time() - cpu_start


def _compute_rows(material: Material, settings: GeneratorSettings, device: str, potential, start: float) -> list[dict]:
    from generate.harmonic.reference import dft_reference, potential_reference, uses_dft
    from generate.sscha.classical import classical_sigma_A
    from thermobench.families import formula_reduced
    from thermobench.phonondb import chemical_family
    from thermobench.potentials import check_structure

    atoms = _stage("load", material.atoms)
    loaded = potential if potential is not None else _stage("potential", load_named_potential, settings.potential, device)
    _stage("check", check_structure, atoms, loaded.element_types, f"{material.material_id} ({material.formula})",
           loaded.cutoff_A)
    anchored = uses_dft(material, settings.harmonic_reference)
    if not anchored:
        _stage("check", sscha_supercells, atoms, settings.supercell, settings.harmonic)  # before the relaxation
    if material.source == "file":  # a file's name says nothing reliable about its formula
        material = replace(material, formula=atoms.get_chemical_formula("metal", empirical=True))

    symprec = settings.harmonic.symprec
    temperatures = list(settings.temperatures_K)
    tolerance = float(settings.harmonic.imaginary_tolerance_THz)
    if anchored:
        reference = _stage("harmonic", dft_reference, material, atoms, loaded, settings)
    else:
        reference = potential_reference(atoms, loaded, settings, _stage)
    cell, matrix, harmonic, large = reference.cell, reference.supercell_matrix, reference.harmonic, reference.large
    model = reference.sscha_potential
    fc_harmonic = np.asarray(harmonic.phonon.force_constants)
    n_super = len(harmonic.phonon.supercell)

    sg = _stage("symmetry", _spacegroup_number_symbol, cell, symprec)
    versions = package_versions()
    shift_min = settings.shift_min_frequency_THz
    static_energy = reference.static_energy_eV_atom
    harm_mesh = np.asarray(large.mesh_frequencies_THz)
    dft = _stage("dft", dft_comparison, material, reference, tolerance, loaded.model)
    harm_comm = np.asarray(harmonic.commensurate_frequencies_THz)

    results, floor, raised = _stage("sscha", sscha_with_floor, settings.engine, cell, model, matrix, list(settings.sscha),
                                    (fc_harmonic, 0))
    at_floor = [replace(s, min_frequency_THz=floor) for s in settings.sscha]
    harmonic_super = results[0].harmonic_supercell_frequencies_THz
    ren_meshes = _stage("embedding", _embedded_meshes, cell, matrix, harmonic, large, results, symprec)

    kappas = _stage("kappa", _kappa_columns, settings, cell, matrix, loaded, harmonic, results, reference.nac_params,
                    in_audit_sample(material.material_id, settings.audit_every), floor)
    matched = _stage("modes", _matched_modes, cell, matrix, harmonic, results, symprec)
    classical = [_stage("classical", classical_sigma_A, cell, matrix, model, r, one, settings.classical_sigma_A_configurations)
                 for r, one in zip(results, settings.sscha, strict=True)]
    audits = _stage("audit", audit_columns, material.material_id, settings, cell, model, matrix, at_floor,
                    (fc_harmonic, 0), results)

    # Frequency grid shared by every temperature, so DOS rows are comparable.
    all_max = max([harm_mesh.max()] + [m.max() for m in ren_meshes])
    all_min = min([harm_mesh.min()] + [m.min() for m in ren_meshes])
    sigma = settings.dos_sigma_THz
    grid = np.linspace(min(0.0, all_min) - 3 * sigma, all_max + 3 * sigma, settings.dos_n_points)
    harm_dos = smeared_dos(harm_mesh, large.mesh_weights, grid, sigma)

    n_imag = int((harmonic_super < -tolerance).sum())
    harm_min = float(min(harm_mesh.min(), harmonic_super.min()))
    mesh_full = np.asarray(large.mesh_weights)
    n_imag_mesh = int(((harm_mesh < -tolerance).sum(axis=1) * mesh_full).sum())
    dft_columns = _dft_columns(material, dft)
    source_volume = abs(np.linalg.det(atoms.cell.array)) / len(atoms)
    relaxed = reference.relax
    potential_stable = n_imag_mesh == 0 and n_imag == 0 if dft is None or dft.get("potential_stable") is None else dft["potential_stable"]
    identity = {
        **material_fields(material),
        "chemistry": chemical_family(cell.get_chemical_symbols()),
        "spacegroup_number": sg[0],
        "spacegroup_symbol": sg[1],
        "structure_hash": structure_hash(cell),
        "lattice_vectors": cell.cell.array.tolist(),
        "cartesian_site_positions": cell.positions.tolist(),
        "species_at_sites": cell.get_chemical_symbols(),
        "nsites": len(cell),
        "elements": sorted(set(cell.get_chemical_symbols())),
        "chemical_formula_reduced": formula_reduced(cell),
        "supercell_matrix": matrix.astype(int).tolist(),
        "n_supercell_atoms": n_super,
        "static_energy_eV_atom": static_energy,
        "volume_change_vs_source": float(abs(np.linalg.det(cell.cell.array)) / len(cell) / source_volume - 1),
        **dft_columns,
        "potential_dynamically_stable": bool(potential_stable),
        "harmonic_reference": reference.kind,
        "nac_applied": reference.nac_params is not None,
        "potential_residual_max_force_eV_A": reference.residual_max_force_eV_A,
        "potential_residual_pressure_GPa": reference.residual_pressure_GPa,
    }
    rows = []
    wall = time.time() - start + active_checkpoints().reused_seconds
    target = settings.frequency_error_target_THz
    for temperature, result, kappa, ren_mesh, (harm_pairs, ren_pairs, overlaps), (sigma_cl, sigma_cl_error), audit in zip(
        temperatures, results, kappas, ren_meshes, matched, classical, audits, strict=True
    ):
        if n_imag == 0:
            f_h, s_h, c_h = mode_thermodynamics(harmonic_super, temperature, n_super, tolerance)
            f_h += static_energy
            thermo_reason = None
        else:
            f_h = s_h = c_h = None
            thermo_reason = f"{n_imag} harmonic imaginary mode(s) at commensurate q"
        _, s_s, c_s = mode_thermodynamics(result.supercell_frequencies_THz, temperature, n_super, tolerance)
        mean_shift, max_shift, n_shift, shift_reason = frequency_shifts(harm_pairs, ren_pairs, n_imag, shift_min)
        n_floor = n_at_floor(result, floor)
        meets_target = target is None or result.max_frequency_error_THz <= target * (1 + 1e-9)
        status = result.status + (f"; {raised}" if raised else "") + ("" if not n_floor else (
            f"; final auxiliary system: {n_floor} mode(s) at the {floor} THz floor, where the SCHA wants "
            "them softer (a structural instability of this cell at this T, or an artefact of the potential): the "
            "row's frequencies and targets are bounds, not solutions"))
        rows.append(
            {
                **identity,
                "temperature_K": temperature,
                "quantum": bool(result.quantum),
                "harmonic_frequencies_THz": np.asarray(harmonic_super).tolist(),
                "renormalized_frequencies_THz": result.supercell_frequencies_THz.tolist(),
                "renormalized_frequency_errors_THz": result.supercell_frequency_errors_THz.tolist(),
                "commensurate_qpoints": np.asarray(harmonic.commensurate_qpoints).tolist(),
                "harmonic_commensurate_frequencies_THz": harm_comm.tolist(),
                "renormalized_commensurate_frequencies_THz": np.asarray(result.commensurate_frequencies_THz).tolist(),
                "renormalized_commensurate_frequencies_matched_THz": ren_pairs.tolist(),
                "min_mode_overlap": float(overlaps.min()),
                "q_mesh": [int(x) for x in settings.harmonic.q_mesh],
                "mesh_qpoints": np.asarray(large.mesh_qpoints).tolist(),
                "mesh_weights": [int(w) for w in large.mesh_weights],
                "harmonic_mesh_frequencies_THz": harm_mesh.tolist(),
                "renormalized_mesh_frequencies_THz": ren_mesh.tolist(),
                "dos_frequencies_THz": grid.tolist(),
                "harmonic_dos_states_per_THz": harm_dos.tolist(),
                "renormalized_dos_states_per_THz": smeared_dos(ren_mesh, large.mesh_weights, grid, sigma).tolist(),
                "dos_sigma_THz": sigma,
                "imaginary_tolerance_THz": tolerance,
                "n_imaginary_harmonic": n_imag,
                "n_imaginary_harmonic_mesh": n_imag_mesh,
                "harmonic_min_frequency_THz": harm_min,
                "n_imaginary_renormalized": int((result.supercell_frequencies_THz < -tolerance).sum()),
                "renormalized_min_frequency_THz": float(min(ren_mesh.min(), result.supercell_frequencies_THz.min())),
                "free_energy_harmonic_eV_atom": finite_or_none(f_h),
                "entropy_harmonic_kB_atom": finite_or_none(s_h),
                "heat_capacity_harmonic_kB_atom": finite_or_none(c_h),
                "harmonic_thermo_null_reason": thermo_reason,
                "free_energy_sscha_eV_atom": float(result.free_energy_eV_atom),
                "entropy_sscha_kB_atom": s_s,
                "heat_capacity_sscha_kB_atom": c_s,
                "anharmonic_free_energy_eV_atom": None if f_h is None else float(result.free_energy_eV_atom - f_h),
                "sigma_A": float(result.sigma_A),
                "sigma_A_error": finite_or_none(result.sigma_A_error),
                "sigma_A_classical": float(sigma_cl),
                "sigma_A_classical_error": finite_or_none(sigma_cl_error),
                "mean_relative_frequency_shift": mean_shift,
                "max_relative_frequency_shift": max_shift,
                "n_shift_modes": n_shift,
                "shift_min_frequency_THz": shift_min,
                "shift_null_reason": shift_reason,
                **kappa,
                "sscha_converged": bool(result.converged and meets_target and not n_floor),
                "sscha_status": status,
                "n_stabilized_modes": n_floor,
                "at_stabilization_floor": n_floor > 0,
                "frequency_error_target_THz": finite_or_none(target),
                "sscha_steps": len(result.history),
                "sscha_n_configurations": int(result.history[-1].n_configurations),
                "frequency_error_THz": float(result.max_frequency_error_THz),
                "free_energy_error_eV_atom": float(result.free_energy_error_eV_atom),
                "n_potential_evaluations": int(result.n_potential_evaluations),
                "n_harmonic_evaluations": int(harmonic.n_potential_evaluations),
                "relax_converged": None if relaxed is None else bool(relaxed.converged),
                "relax_max_force_eV_A": None if relaxed is None else float(relaxed.max_force_eV_A),
                "relax_symmetry_kept": None if relaxed is None else bool(relaxed.symmetry_kept),
                "verified_relative_force_error": (None if result.surrogate is None
                                                  else float(result.surrogate.verification_relative_force_error)),
                **audit,
                "sscha_wall_time_s": float(result.wall_time_s),
                "material_wall_time_s": wall,
                "potential": loaded.name,
                "potential_sha256": loaded.sha256,
                "thermobench_version": versions["thermobench"] or "unknown",
                "package_versions": json.dumps(versions, sort_keys=True),
                "seed": settings.seed,
                "settings_json": json.dumps(settings.plain, sort_keys=True),
            }
        )
    for row in rows:  # fields a float column would otherwise carry as NaN or inf
        for key, value in row.items():
            if isinstance(value, float) and not np.isfinite(value):
                raise StageError("record", ValueError(f"{key} = {value} at {row['temperature_K']} K is not finite"))
    return rows


def sscha_supercells(atoms, supercell: dict, harmonic) -> tuple[np.ndarray, np.ndarray]:
    """The SSCHA supercell (``supercell`` settings) and the harmonic one of the q-mesh
    (``harmonic.supercell_min_length_A`` within ``harmonic.supercell_max_atoms``), never smaller than the SSCHA's."""
    sc = supercell
    matrix = choose_supercell(atoms, sc["min_atoms"], sc["max_atoms"], sc.get("matrix"), sc["min_length_A"])
    n_small = len(atoms) * round(abs(np.linalg.det(matrix)))
    budget = harmonic.supercell_max_atoms or 10**6
    if sc.get("matrix") is not None or budget <= n_small:
        return matrix, matrix
    large = choose_supercell(atoms, 0, budget, None, harmonic.supercell_min_length_A)
    return matrix, (large if abs(np.linalg.det(large)) > abs(np.linalg.det(matrix)) else matrix)


def dft_comparison(material: Material, reference, tolerance_THz: float, model=None) -> dict | None:
    """The DFT harmonic frequencies of the same crystal on the rows' q-mesh, beside the potential's, for a
    source that has them (phonondb); None otherwise.

    The potential's frequencies are taken at the rows' geometry: its own relaxed one on the potential route
    (and, with ``model``, also at DFT's geometry, :mod:`generate.harmonic.fidelity`, which separates its force
    constants from its lattice), DFT's on the anchored route (its Φ_pot of the anchoring, no new evaluations),
    where both MAE columns are that one. Both sides without the non-analytic correction (the potential
    predicts no Born charges), so the MAE measures the short-range force constants, as
    ``generate.harmonic.validate_phonons`` does. The q-points are reduced coordinates of the same primitive cell.
    """
    from generate.harmonic.fidelity import dft_geometry_mae
    from generate.harmonic.phonons import mesh_frequency_mae

    build = getattr(material.build, "dft_phonons", None)
    if build is None:
        return None
    dft = build()
    dft.nac_params = None
    qpoints, weights = np.asarray(reference.large.mesh_qpoints), reference.large.mesh_weights
    dft.run_qpoints(qpoints)
    frequencies = np.asarray(dft.qpoints.frequencies)
    potential_stable = None
    if reference.kind == "dft":
        from generate.harmonic.embedding import supercell_phonopy

        own = supercell_phonopy(reference.cell, reference.supercell_matrix, np.eye(3), dft.symmetry.tolerance,
                                reference.potential_fc2)
        own.run_qpoints(qpoints)
        potential = np.asarray(own.qpoints.frequencies)
        from generate.sscha.supercell import frequencies_THz, to_matrix

        sqrt_m = np.repeat(np.sqrt(own.supercell.masses), 3)
        in_supercell = frequencies_THz(to_matrix(reference.potential_fc2) / np.outer(sqrt_m, sqrt_m))
        potential_stable = bool(min(potential.min(), in_supercell.min()) >= -tolerance_THz)
    else:
        potential = np.asarray(reference.large.mesh_frequencies_THz)
    if frequencies.shape != potential.shape:
        raise ValueError(f"DFT primitive cell has {frequencies.shape[1] // 3} atoms, the generator's {potential.shape[1] // 3}")
    mae = mesh_frequency_mae(frequencies, potential, weights)
    if reference.kind == "dft":
        at_dft = mae
    else:
        at_dft = None if model is None else dft_geometry_mae(dft, model, qpoints, weights, frequencies)
    return {
        "source": material.source,
        "source_id": material.source_id,
        "mesh_frequencies_THz": frequencies.tolist(),  # on the rows' mesh_qpoints, bands sorted
        "harmonic_mae_THz": mae,  # potential - DFT at the rows' geometry, weighted over the mesh, every band
        "harmonic_mae_dft_geometry_THz": at_dft,  # the same with the potential's FC2 at DFT's geometry
        "min_frequency_THz": float(frequencies.min()),
        "dft_stable": bool(frequencies.min() >= -tolerance_THz),
        "potential_stable": potential_stable,  # at DFT's geometry (anchored route); None: from the rows' own modes
        "dft_supercell_atoms": len(dft.supercell),
        "nac": "not applied to either (short-range force constants compared)",
    }


def _dft_columns(material: Material, dft: dict | None) -> dict:
    """The per-row ground-truth columns: phonondb's DFT harmonic frequencies beside the potential's."""
    from thermobench.phonondb import split_of

    if dft is None:
        return {"phonondb_split": None, "dft_mesh_frequencies_THz": None, "potential_dft_mae_THz": None,
                "potential_dft_mae_dft_geometry_THz": None, "dft_min_frequency_THz": None, "dft_dynamically_stable": None,
                "dft_null_reason": f"source {material.source!r} has no DFT phonons"}
    return {"phonondb_split": split_of(material.source_id), "dft_mesh_frequencies_THz": dft["mesh_frequencies_THz"],
            "potential_dft_mae_THz": dft["harmonic_mae_THz"],
            "potential_dft_mae_dft_geometry_THz": dft.get("harmonic_mae_dft_geometry_THz"),
            "dft_min_frequency_THz": dft["min_frequency_THz"],
            "dft_dynamically_stable": dft["dft_stable"], "dft_null_reason": None}


def in_audit_sample(material_id: str, every: int) -> bool:
    """Every ``every``-th material by a hash of its id (0: none): a fixed sample whatever order the run takes."""
    import hashlib

    return every > 0 and int(hashlib.sha256(material_id.encode()).hexdigest(), 16) % every == 0


def audit_columns(material_id: str, settings: GeneratorSettings, cell, model, matrix, per_temperature: list, harmonic,
                  results) -> list[dict]:
    """The audit of the fast route: for a material of the audit sample, the direct engine (every force from the
    (anchored) potential) to ``audit.frequency_error_target_THz`` at every temperature, beside the row's own
    result: the largest difference of the sorted supercell frequencies, its stochastic error and the σᴬ
    difference. Null columns outside the sample, and at a temperature whose row holds modes at the stabilization
    floor: both routes hold the same modes there, so the difference of two bounds says nothing of the fast route's
    precision, and the direct engine stalls on them (the anchoring panel's BaTiO3: over an hour per temperature)."""
    from generate.sscha.engine import DirectEngine

    empty = {"audit_max_frequency_difference_THz": None, "audit_frequency_difference_error_THz": None,
             "audit_sigma_A_difference": None}
    if not in_audit_sample(material_id, settings.audit_every):
        return [dict(empty) for _ in results]
    target = settings.audit_frequency_error_target_THz
    free = [not n_at_floor(r, s.min_frequency_THz) for r, s in zip(results, per_temperature, strict=True)]
    verified = iter(DirectEngine().run(cell, model, matrix, [replace(s, frequency_error_target_THz=target)
                                                             for s, f in zip(per_temperature, free, strict=True) if f],
                                       harmonic=harmonic) if any(free) else [])
    out = []
    for fast, audited in zip(results, free, strict=True):
        if not audited:
            out.append(dict(empty))
            continue
        slow = next(verified)
        difference = np.asarray(fast.supercell_frequencies_THz) - np.asarray(slow.supercell_frequencies_THz)
        error = np.hypot(fast.supercell_frequency_errors_THz, slow.supercell_frequency_errors_THz)
        out.append({"audit_max_frequency_difference_THz": float(np.abs(difference).max()),
                    "audit_frequency_difference_error_THz": float(error[np.argmax(np.abs(difference))]),
                    "audit_sigma_A_difference": float(fast.sigma_A - slow.sigma_A)})
    return out


RAISED_FLOORS_THZ = (1.0, 2.0)  # stabilization floors tried when the configured one throws atoms onto each other
# A real harmonic mode softer than the floor is lowered to no floor above this fraction of it (it may soften by half
# before being held), never below LOWEST_FLOOR_THZ (a Gaussian that wide leaves the potential's domain).
FLOOR_FRACTION, LOWEST_FLOOR_THZ = 0.5, 0.1


def sscha_with_floor(engine, cell, model, matrix, per_temperature: list, harmonic) -> tuple[list, float, str | None]:
    """The engine's SSCHA results, with the stabilization floor raised (:data:`RAISED_FLOORS_THZ`) when an
    ensemble puts two atoms closer than the potential accepts.

    A mode held at a low floor in a soft-mode crystal (a cubic perovskite below its transition) gets a
    Gaussian amplitude of the order of an ångström (⟨u²⟩ = k_B T / m ω² classically), so its
    configurations overlap atoms: the Gaussian ansatz has left its domain, not the crystal. A higher
    floor bounds the amplitude (4× smaller variance per doubling); the rows then say the floor was
    raised, and any mode that ends at it is flagged. Returns (results, floor used, status note or None).

    A *real* harmonic mode softer than the floor is another matter: held at the floor from the start, it reads as an
    instability the crystal does not have (layered CaI2: four stable 0.33 THz modes held at 0.5 THz at every
    temperature). The floor starts at no more than :data:`FLOOR_FRACTION` of the softest real mode.
    """
    from thermobench.potentials import OverlappingAtomsError

    configured = floor = float(per_temperature[0].min_frequency_THz)
    notes = []
    if cell is not None and harmonic is not None:
        from generate.sscha.supercell import softest_real_mode_THz, supercell_model

        softest = softest_real_mode_THz(supercell_model(cell, matrix, per_temperature[0]), harmonic[0])
        floor = max(min(floor, FLOOR_FRACTION * softest), min(floor, LOWEST_FLOOR_THZ))
        if floor < configured:
            notes.append(f"stabilization floor lowered from {configured} to {floor:.3g} THz, {FLOOR_FRACTION:g} of the "
                         f"softest real harmonic mode ({softest:.3g} THz)")
    last = None
    for used in (floor, *(f for f in RAISED_FLOORS_THZ if f > floor)):
        settings = [replace(s, min_frequency_THz=used) for s in per_temperature]
        try:
            results = engine.run(cell, model, matrix, settings, harmonic=harmonic)
        except OverlappingAtomsError as error:
            last = error
            continue
        if last is not None:
            notes.append(f"stabilization floor raised from {floor:.3g} to {used} THz: with a lower one an ensemble "
                         f"overlapped atoms ({last})")
        return results, used, "; ".join(notes) or None
    raise last


def n_at_floor(result, floor_THz: float) -> int:
    """Modes of the final auxiliary system the stabilization rule holds at its floor (ω = ω_min)."""
    from generate.sscha.result import n_held

    nu = np.asarray(result.supercell_frequencies_THz)
    at_floor = int(np.sum(np.abs(nu - floor_THz) < 1e-6 * max(floor_THz, 1e-12)))
    return max(at_floor, n_held(result))


def _matched_modes(cell, matrix, harmonic, results, symprec: float) -> list[tuple]:
    """Per temperature, the SSCHA modes at the commensurate q-points paired with the harmonic ones
    (:func:`generate.harmonic.modes.matched_frequencies`)."""
    from generate.harmonic.embedding import supercell_phonopy

    out = []
    for result in results:
        renormalized = supercell_phonopy(cell, matrix, harmonic.phonon.primitive_matrix, symprec, result.force_constants_eV_A2)
        out.append(matched_frequencies(harmonic.phonon, renormalized, harmonic.commensurate_qpoints))
    return out


def _embedded_meshes(cell, matrix, harmonic, large, results, symprec: float) -> list[np.ndarray]:
    """Renormalized mesh frequencies per temperature: the large supercell's harmonic FC2 plus each
    SSCHA correction (:mod:`generate.harmonic.embedding`), on the harmonic mesh."""
    from generate.harmonic.embedding import embedded_frequencies_THz, supercell_phonopy

    out = []
    for result in results:
        correction = supercell_phonopy(cell, matrix, harmonic.phonon.primitive_matrix, symprec,
                                        result.force_constants_eV_A2 - result.harmonic_force_constants_eV_A2)
        out.append(embedded_frequencies_THz(large.phonon, correction, large.mesh_qpoints))
    return out


def _spacegroup_number_symbol(atoms, symprec: float) -> tuple[int, str]:
    import spglib

    data = spglib.get_symmetry_dataset((atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers), symprec=symprec)
    if data is None:
        raise ValueError(f"spglib found no symmetry at symprec={symprec}")
    return int(data.number), str(data.international)


def _kappa_columns(settings: GeneratorSettings, cell, matrix, loaded, harmonic, results, nac_params=None,
                   audited: bool = False, floor_THz: float | None = None) -> list[dict]:
    """κ columns per temperature: computed when enabled and generate.kappa exists, else null with the reason.
    ``audited`` (the audit sample): κ again on ``audit.kappa_q_mesh``, and with the other FC3 (the surrogate's
    cubic terms where the rows use the potential's finite displacements, and the reverse), in the audit columns.
    A temperature whose SSCHA holds modes at ``floor_THz`` gets no κ: its FC2's soft modes sit where the floor
    put them, so κ_ren would measure the floor (SrO2: 4e17 W/(m·K)); with no ratio, κ_harm is not computed either."""
    cfg = settings.kappa
    if not cfg.get("enabled", False):
        return [_null_kappa("not computed: kappa disabled in the generation settings") for _ in results]
    held = [0 if floor_THz is None else n_at_floor(r, floor_THz) for r in results]
    if any(held):
        free = [r for r, n in zip(results, held, strict=True) if not n]
        wanted = [float(t) for t in cfg.get("temperatures_K") or [r.temperature_K for r in results]]
        columns = iter(_kappa_columns(settings, cell, matrix, loaded, harmonic, free, nac_params, audited) if free else [])
        return [next(columns) if not n else _null_kappa(
            f"not computed: the SSCHA FC2 holds {n} mode(s) at the {floor_THz:g} THz stabilization floor, so "
            "κ_renormalized would measure the floor, not the crystal (κ_harmonic is left out with the ratio)"
            if any(abs(r.temperature_K - t) < 1e-9 for t in wanted) else
            f"not computed at this temperature (kappa.temperatures_K = {wanted})") for r, n in zip(results, held, strict=True)]
    try:
        from generate import kappa as kappa_module
    except ImportError:
        return [_null_kappa("not computed: generate.kappa is not available in this installation") for _ in results]
    # Contract with generate.kappa: pipeline_kappa_columns(cell, supercell_matrix, model, harmonic result,
    # SSCHA results (one per temperature), kappa settings) -> one dict of the four κ columns per temperature,
    # with kappa_null_reason set where κ could not be computed (e.g. harmonically unstable).
    adapter = getattr(kappa_module, "pipeline_kappa_columns", None)
    if adapter is None:
        return [_null_kappa("not computed: generate.kappa has no pipeline_kappa_columns entry point") for _ in results]
    values = {**cfg, "symprec": settings.harmonic.symprec, "imaginary_tolerance_THz": settings.harmonic.imaginary_tolerance_THz}
    inputs = (cell, np.asarray(matrix), values, np.asarray(harmonic.phonon.force_constants),
              [(r.temperature_K, r.force_constants_eV_A2) for r in results])
    if nac_params is not None:
        inputs = (*inputs, {k: np.asarray(v).tolist() for k, v in nac_params.items()})
    # FC3 is the plain potential's at the rows' geometry (its residual forces subtracted): the anchoring only
    # changes the quadratic part, so the anchored potential's FC3 is the same.
    reference_mesh = settings.audit_kappa_q_mesh if audited else None
    kappas = active_checkpoints().cached("kappa", (inputs, reference_mesh), lambda: adapter(
        cell, matrix, loaded.model, harmonic, results, values, nac_params=nac_params, reference_q_mesh=reference_mesh))
    other = {"surrogate": "finite_displacement", "finite_displacement": "surrogate"}.get(values.get("fc3_method"))
    if other == "surrogate" and not any(getattr(r, "expansion", None) is not None for r in results):
        other = None  # the direct engine fitted no expansion
    if not (audited and other):
        return [{**AUDIT_KAPPA, **k} for k in kappas]
    checks = active_checkpoints().cached("kappa_audit", inputs, lambda: adapter(
        cell, matrix, loaded.model, harmonic, results, {**values, "fc3_method": other}, nac_params=nac_params))
    return [{**AUDIT_KAPPA, **k, "audit_kappa_harmonic_other_fc3_W_mK": c["kappa_harmonic_W_mK"],
             "audit_kappa_renormalized_other_fc3_W_mK": c["kappa_renormalized_W_mK"],
             "audit_kappa_other_fc3_source": c["kappa_fc3_source"]} for k, c in zip(kappas, checks, strict=True)]


AUDIT_KAPPA = {"audit_kappa_harmonic_other_fc3_W_mK": None, "audit_kappa_renormalized_other_fc3_W_mK": None,
               "audit_kappa_other_fc3_source": None, "audit_kappa_harmonic_reference_mesh_W_mK": None,
               "audit_kappa_renormalized_reference_mesh_W_mK": None}


def _null_kappa(reason: str) -> dict:
    return {"kappa_harmonic_W_mK": None, "kappa_renormalized_W_mK": None, "kappa_ratio": None, "kappa_null_reason": reason,
            "kappa_fc3_source": None, **AUDIT_KAPPA}


# ----------------------------------------------------------------------------------------------
# Records on disk


def safe_name(material_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", material_id)


@dataclass
class RunFolder:
    """``<out_dir>/<fingerprint[:12]>/``: manifest.json, records/<material_id>.json and partial/."""

    root: Path

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def partial(self) -> Path:
        """Checkpoints of materials not finished yet (:mod:`generate.run.checkpoint`), a folder each."""
        return self.root / "partial"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def record_path(self, material_id: str) -> Path:
        return self.records / f"{safe_name(material_id)}.json"

    def read_record(self, material_id: str) -> dict | None:
        path = self.record_path(material_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a torn file cannot exist with atomic writes, but never trust it

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def save_run(self, entry: dict) -> None:
        """Write this run's entry of the manifest's history (added, or replaced by its ``started`` and
        ``pid``), re-reading the file under a lock: several runs may share a folder (e.g. another
        source into the same settings), and none may drop another's entry."""
        import fcntl

        from generate.run.atomic import write_json_atomically

        with open(self.root / ".manifest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = self.manifest()
            runs = [r for r in manifest["runs"] if (r.get("started"), r.get("pid")) != (entry["started"], entry["pid"])]
            manifest["runs"] = sorted([*runs, entry], key=lambda r: r["started"])
            write_json_atomically(self.manifest_path, manifest)


def open_run_folder(out_dir: Path, settings: dict, sha: str) -> tuple[RunFolder, dict]:
    """The run folder for these settings, created with its manifest, or reopened after checking it."""
    fp = fingerprint(settings, sha)
    folder = RunFolder(Path(out_dir) / fp[:12])
    if folder.manifest_path.is_file():
        manifest = folder.manifest()
        if manifest["settings_fingerprint"] != fp:
            raise RuntimeError(
                f"{folder.manifest_path} belongs to settings {manifest['settings_fingerprint']}, not {fp}; "
                "refusing to mix records (choose another out_dir)"
            )
    else:
        manifest = {
            "settings_fingerprint": fp,
            "settings": settings,
            "potential_sha256": sha,
            "created": time.time(),
            "runs": [],
        }
        write_json_atomically(folder.manifest_path, manifest)
    others = [p.name for p in Path(out_dir).iterdir() if p.is_dir() and p.name != folder.root.name and (p / "manifest.json").is_file()]
    return folder, {"fingerprint": fp, "other_settings": others}
