"""κ from phono3py with one FC3 and two FC2s (harmonic and SSCHA): tables, stability, mode
contributions, and :func:`compute_kappa`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from ase import Atoms

from generate.kappa.force_constants import (
    build_phono3py,
    fc3_from_model,
    fc3_from_potential,
    harmonic_fc2_from_potential,
    reorder_fc2,
    supercell_matrix_between,
    supercell_permutation,
    unit_cell,
)
from generate.kappa.result import (
    FC3Report,
    KappaResult,
    KappaSettings,
    KappaTable,
    ModeContributions,
    Phono3pyFailure,
    log,
)

# κ from one FC2


# Above any crystal's κ at any temperature (diamond: ~2,000-3,300 W/(m·K) at 300 K, ~4e4 at its ~100 K peak when
# isotopically enriched): such a value comes from soft modes with vanishing scattering (SrO2's floor-held SSCHA FC2
# gave 4e17, NaHS's DFT FC2 1e305 on the anchoring panel), never from transport.
MAX_KAPPA_W_MK = 1.0e5


def mesh_value(q_mesh):
    """phonopy's and phono3py's form of ``KappaSettings.q_mesh``: a list of three integers or a length (float)."""
    return float(q_mesh) if np.ndim(q_mesh) == 0 else [int(n) for n in q_mesh]


def mesh_label(q_mesh) -> str:
    return f"{float(q_mesh):g} Å length" if np.ndim(q_mesh) == 0 else "x".join(map(str, q_mesh))


def fc2_supercell_matrix_of(ph3) -> np.ndarray:
    """phono3py's FC2 supercell matrix (the FC3 one when no separate phonon supercell was set)."""
    matrix = ph3.phonon_supercell_matrix
    return np.asarray(ph3.supercell_matrix if matrix is None else matrix)


def mesh_stability(ph3, fc2: np.ndarray, settings: KappaSettings) -> tuple[float, int]:
    """(min frequency, imaginary modes counted with weights) of ``fc2`` on the Γ-centred q-mesh."""
    from phonopy import Phonopy

    phonon = Phonopy(
        ph3.unitcell,
        supercell_matrix=fc2_supercell_matrix_of(ph3),
        primitive_matrix=ph3.primitive_matrix,
        symprec=settings.symprec,
    )
    phonon.force_constants = fc2
    if ph3.nac_params is not None:
        phonon.nac_params = ph3.nac_params
    phonon.run_mesh(mesh_value(settings.q_mesh), is_gamma_center=True)
    frequencies = np.asarray(phonon.mesh.frequencies)
    weights = np.asarray(phonon.mesh.weights)
    n_imaginary = int(((frequencies < -settings.imaginary_tolerance_THz).sum(axis=1) * weights).sum())
    return float(frequencies.min()), n_imaginary


def mode_contributions(conductivity, n_bins: int) -> ModeContributions:
    """Bin the isotropic mode κ (trace/3) by frequency. phono3py's mode_kappa carries the q-point
    weights, so its sum over q-points and bands divided by the grid size is κ. Wigner: each mode gets
    its row of the mode-κ matrix (its population term plus its coherences with the other bands)."""
    try:
        mode_kappa = np.asarray(conductivity.mode_kappa)[0]  # (n_T, n_q, n_bands, 6), first sigma
    except AttributeError:
        mode_kappa = np.asarray(conductivity.mode_kappa_matrix)[0].sum(axis=3)
    frequencies = np.asarray(conductivity.frequencies)  # (n_q, n_bands)
    n_grid = float(np.asarray(conductivity.grid_weights).sum())
    isotropic = mode_kappa[..., :3].mean(axis=-1) / n_grid  # (n_T, n_q, n_bands)
    edges = np.linspace(0.0, max(float(frequencies.max()), 1e-6) * (1 + 1e-9), n_bins + 1)
    index = np.clip(np.digitize(frequencies, edges) - 1, 0, n_bins - 1)  # below 0 (ignored modes) -> bin 0
    per_bin = np.zeros((isotropic.shape[0], n_bins))
    for b in range(n_bins):
        per_bin[:, b] = isotropic[:, index == b].sum(axis=1)
    cumulative = np.cumsum(per_bin, axis=1)
    total = isotropic.sum(axis=(1, 2))
    acoustic = isotropic[:, :, :3].sum(axis=(1, 2))
    order = np.argsort(frequencies.ravel())
    medians = []
    for t in range(isotropic.shape[0]):
        running = np.cumsum(isotropic[t].ravel()[order])
        k = int(np.searchsorted(running, 0.5 * running[-1])) if running[-1] > 0 else 0
        medians.append(float(frequencies.ravel()[order][min(k, len(order) - 1)]))
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(total > 0, acoustic / total, np.nan)
    return ModeContributions(
        frequency_bin_edges_THz=edges.tolist(),
        kappa_per_bin_W_mK=per_bin.tolist(),
        cumulative_kappa_W_mK=cumulative.tolist(),
        acoustic_fraction=[None if not np.isfinite(f) else float(f) for f in fraction],
        median_frequency_THz=medians,
    )


def conductivity(ph3, fc2: np.ndarray, settings: KappaSettings, label: str, temperatures_K=None) -> KappaTable:
    """κ with ``fc2`` and the FC3 set on ``ph3``; instability and phono3py failures are returned, not raised."""
    start = time.perf_counter()
    temperatures = [float(t) for t in (temperatures_K if temperatures_K is not None else settings.temperatures_K)]

    def table(status, reason, **kwargs) -> KappaTable:
        values = dict(kappa_W_mK=None, kappa_average_W_mK=None, min_frequency_THz=None, n_imaginary_modes=None)
        values.update(kwargs)
        return KappaTable(label=label, status=status, reason=reason, temperatures_K=temperatures,
                          wall_time_s=time.perf_counter() - start, **values)

    try:
        min_frequency, n_imaginary = mesh_stability(ph3, fc2, settings)
    except Exception as error:  # noqa: BLE001 - phonopy failure is recorded
        return table("failed", f"phonopy on the {label} FC2 failed: {type(error).__name__}: {error}")
    if n_imaginary > 0:
        return table(
            "unstable",
            f"{label} FC2 is dynamically unstable: {n_imaginary} imaginary mode(s) on the "
            f"{mesh_label(settings.q_mesh)} mesh below -{settings.imaginary_tolerance_THz} THz "
            f"(min {min_frequency:.3f} THz)",
            min_frequency_THz=min_frequency, n_imaginary_modes=n_imaginary,
        )
    if settings.method not in ("rta", "wigner"):
        raise ValueError(f"method must be 'rta' or 'wigner', not {settings.method!r}")
    try:
        ph3.fc2 = fc2
        ph3.mesh_numbers = mesh_value(settings.q_mesh)
        ph3.init_phph_interaction(
            average_degenerate_weights=settings.average_degenerate_weights,
            symmetrize_tetrahedra=settings.symmetrize_tetrahedra,
        )
        ph3.run_thermal_conductivity(
            temperatures=temperatures,
            is_isotope=settings.isotope,
            transport_type="SMM19" if settings.method == "wigner" else None,
        )
        result = ph3.thermal_conductivity
        kappa = np.asarray(result.kappa)[0]  # Wigner: populations + coherences
        extra = {}
        if settings.method == "wigner":
            extra = dict(kappa_populations_W_mK=np.asarray(result.kappa_intra)[0].tolist(),
                         kappa_coherences_W_mK=np.asarray(result.kappa_inter)[0].tolist())
        if not np.all(np.isfinite(kappa)):
            raise FloatingPointError(f"phono3py returned non-finite κ {kappa.tolist()}")
        contributions = mode_contributions(result, settings.n_frequency_bins)
    except Exception as error:  # noqa: BLE001 - a phono3py failure goes into the record
        return table("failed", f"phono3py κ with the {label} FC2 failed: {type(error).__name__}: {error}",
                     min_frequency_THz=min_frequency, n_imaginary_modes=n_imaginary)
    largest = float(np.abs(kappa[:, :3]).max())
    if largest > MAX_KAPPA_W_MK:
        return table("unphysical", f"{label} κ of {largest:.3g} W/(m·K) exceeds any crystal's ({MAX_KAPPA_W_MK:g}): a mode "
                     "near zero frequency that the FC2 leaves almost unscattered, not a conductivity",
                     min_frequency_THz=min_frequency, n_imaginary_modes=n_imaginary)
    return table(
        "ok", None,
        kappa_W_mK=kappa.tolist(),
        kappa_average_W_mK=kappa[:, :3].mean(axis=1).tolist(),
        min_frequency_THz=min_frequency,
        n_imaginary_modes=n_imaginary,
        contributions=contributions,
        **extra,
    )


# ----------------------------------------------------------------------------------------------
# Harmonic and renormalized κ with one FC3


def _merge_tables(tables: list[KappaTable], temperatures: list[float], label: str) -> KappaTable:
    """One table from per-temperature tables (each renormalized FC2 belongs to its own temperature).
    A temperature whose FC2 is unstable or failed gets null entries; the others keep their κ."""
    if len(tables) == 1:
        return tables[0]
    rows = {t.temperatures_K[0]: t for t in tables}
    ordered = [rows[T] for T in temperatures]
    bad = [t for t in ordered if t.status != "ok"]
    good = [t for t in ordered if t.status == "ok"]

    def stack(name):
        values = [getattr(t, name)[0] if getattr(t, name) is not None else None for t in ordered]
        return None if all(v is None for v in values) else values

    def per_temperature(name):
        return [getattr(t.contributions, name)[0] if t.contributions is not None else None for t in ordered]

    contributions = None
    if good:
        contributions = ModeContributions(
            frequency_bin_edges_THz=good[0].contributions.frequency_bin_edges_THz,  # of the first stable FC2
            kappa_per_bin_W_mK=per_temperature("kappa_per_bin_W_mK"),
            cumulative_kappa_W_mK=per_temperature("cumulative_kappa_W_mK"),
            acoustic_fraction=per_temperature("acoustic_fraction"),
            median_frequency_THz=per_temperature("median_frequency_THz"),
        )
    statuses = {t.status for t in bad}
    return KappaTable(
        label=label,
        status="ok" if not bad else ("failed" if "failed" in statuses else "unphysical" if "unphysical" in statuses else "unstable"),
        reason="; ".join(f"{t.temperatures_K[0]:g} K: {t.reason}" for t in bad) or None,
        temperatures_K=temperatures,
        kappa_W_mK=stack("kappa_W_mK"),
        kappa_average_W_mK=stack("kappa_average_W_mK"),
        min_frequency_THz=min((t.min_frequency_THz for t in tables if t.min_frequency_THz is not None), default=None),
        n_imaginary_modes=max((t.n_imaginary_modes for t in tables if t.n_imaginary_modes is not None), default=None),
        contributions=contributions,
        kappa_populations_W_mK=stack("kappa_populations_W_mK"),
        kappa_coherences_W_mK=stack("kappa_coherences_W_mK"),
        wall_time_s=sum(t.wall_time_s for t in tables),
    )


def kappa_from_phono3py(
    ph3,
    settings: KappaSettings = KappaSettings(),
    *,
    fc2_harmonic: np.ndarray | None = None,
    fc2_renormalized: np.ndarray | Mapping[float, np.ndarray] | None = None,
    fc3_report: FC3Report | None = None,
    n_potential_evaluations: int = 0,
) -> KappaResult:
    """κ_harmonic, κ_renormalized and their ratio from a Phono3py object whose FC3 is set.

    FC2s are (N, N, 3, 3) in the order of ``ph3.phonon_supercell``. ``fc2_harmonic`` defaults to
    ``ph3.fc2``; ``fc2_renormalized`` is one array for every temperature or a mapping temperature ->
    array (the SSCHA FC2 of that temperature). Without it only κ_harmonic is computed.
    """
    start = time.perf_counter()
    temperatures = [float(t) for t in settings.temperatures_K]
    if ph3.fc3 is None:
        raise ValueError("ph3 has no FC3: produce or set it before kappa_from_phono3py")
    fc2_harmonic = np.array(ph3.fc2) if fc2_harmonic is None and ph3.fc2 is not None else fc2_harmonic
    harmonic = None if fc2_harmonic is None else conductivity(ph3, fc2_harmonic, settings, "harmonic", temperatures)
    renormalized = None
    if fc2_renormalized is not None:
        if isinstance(fc2_renormalized, Mapping):
            by_temperature = {float(t): np.asarray(fc) for t, fc in fc2_renormalized.items()}
            missing = [t for t in temperatures if not any(abs(t - k) < 1e-6 for k in by_temperature)]
            if missing:
                raise ValueError(f"no renormalized FC2 for {missing} K (have {sorted(by_temperature)})")
            tables = [
                conductivity(ph3, by_temperature[min(by_temperature, key=lambda k: abs(k - t))], settings, "renormalized", [t])
                for t in temperatures
            ]
            renormalized = _merge_tables(tables, temperatures, "renormalized")
        else:
            renormalized = conductivity(ph3, np.asarray(fc2_renormalized), settings, "renormalized", temperatures)
    ratio, ratio_reason = [None] * len(temperatures), None
    if harmonic is None or renormalized is None:
        ratio_reason = "no renormalized FC2 given" if renormalized is None else "no harmonic FC2 given"
    else:
        harm = harmonic.kappa_average_W_mK or [None] * len(temperatures)
        ren = renormalized.kappa_average_W_mK or [None] * len(temperatures)
        ratio = [r / h if r is not None and h is not None and h > 0 else None for r, h in zip(ren, harm, strict=True)]
        if harmonic.status != "ok":
            ratio_reason = f"κ_harmonic is null: {harmonic.reason}"
        elif renormalized.status != "ok":
            ratio_reason = f"κ_renormalized is null: {renormalized.reason}"
        elif any(r is None for r in ratio):
            ratio_reason = "κ_harmonic is zero"
    tables = [t for t in (harmonic, renormalized) if t is not None]
    n_ok = sum(t.status == "ok" for t in tables)
    status = "ok" if tables and n_ok == len(tables) else ("partial" if n_ok else "failed")
    reason = "; ".join(t.reason for t in tables if t.reason) or (None if tables else "no FC2 given")
    return KappaResult(
        status=status,
        reason=reason,
        temperatures_K=temperatures,
        harmonic=harmonic,
        renormalized=renormalized,
        kappa_ratio=ratio,
        kappa_ratio_null_reason=ratio_reason,
        fc3=fc3_report,
        n_potential_evaluations=n_potential_evaluations,
        settings=settings,
        wall_time_s=time.perf_counter() - start,
        fc2_supercell_matrix=fc2_supercell_matrix_of(ph3).tolist(),
        nac=ph3.nac_params is not None,
    )


def failed_kappa(settings: KappaSettings, reason: str, start: float | None = None) -> KappaResult:
    """No κ: the FC3 solver failed (``start``: when the attempt began, for its wall time)."""
    return KappaResult(
        status="failed", reason=reason, temperatures_K=[float(t) for t in settings.temperatures_K],
        harmonic=None, renormalized=None, kappa_ratio=[None] * len(settings.temperatures_K),
        kappa_ratio_null_reason=reason, fc3=None, n_potential_evaluations=0, settings=settings,
        wall_time_s=0.0 if start is None else time.perf_counter() - start,
    )


@dataclass(frozen=True)
class PreparedKappa:
    """A Phono3py object with its FC3 set and the FC2s in its phonon supercell's order: κ at any q-mesh from
    here costs phono3py's RTA alone (:func:`kappa_from_phono3py`)."""

    ph3: object
    fc2_harmonic: np.ndarray
    fc2_renormalized: np.ndarray | Mapping[float, np.ndarray] | None
    fc3: FC3Report
    n_potential_evaluations: int


def prepare_kappa(
    atoms: Atoms,
    potential,
    settings: KappaSettings = KappaSettings(),
    *,
    fc2_renormalized: np.ndarray | Mapping[float, np.ndarray] | None = None,
    fc2_supercell: Atoms | None = None,
    fc2_harmonic: np.ndarray | None = None,
    nac_params: dict | None = None,
    fc3=None,
) -> PreparedKappa:
    """Everything of :func:`compute_kappa` before phono3py's RTA (arguments as there); raises
    :class:`Phono3pyFailure` when phono3py's FC3 solver fails."""
    unit = unit_cell(atoms, settings)
    fc2_matrix = None if fc2_supercell is None else supercell_matrix_between(unit, fc2_supercell)
    ph3 = build_phono3py(unit, settings, fc2_matrix, nac_params)
    n_fc2 = len(ph3.phonon_supercell)
    perm = None
    if fc2_supercell is not None:
        perm = supercell_permutation(fc2_supercell, ph3.phonon_supercell)

    def prepare(fc2, name):
        fc2 = np.asarray(fc2, dtype=float)
        if fc2.shape != (n_fc2, n_fc2, 3, 3):
            raise ValueError(f"{name} has shape {fc2.shape}; phono3py's FC2 supercell needs {(n_fc2, n_fc2, 3, 3)}")
        return fc2 if perm is None else reorder_fc2(fc2, perm)

    if fc2_renormalized is not None:
        if isinstance(fc2_renormalized, Mapping):
            fc2_renormalized = {t: prepare(fc, f"fc2_renormalized[{t}]") for t, fc in fc2_renormalized.items()}
        else:
            fc2_renormalized = prepare(fc2_renormalized, "fc2_renormalized")
    evaluations = 0
    if fc2_harmonic is not None:
        fc2_harmonic = prepare(fc2_harmonic, "fc2_harmonic")
    else:
        log.info("harmonic FC2: %d-atom supercell", n_fc2)
        fc2_harmonic, evaluations = harmonic_fc2_from_potential(ph3, potential, settings)
    log.info("FC3 (%s) in the %d-atom supercell", settings.fc3_method, len(ph3.supercell))
    report = fc3_from_potential(ph3, potential, settings) if fc3 is None else fc3_from_model(ph3, fc3)
    log.info("FC3 done (%d potential evaluations, %.0f s)", report.n_potential_evaluations, report.wall_time_s)
    return PreparedKappa(ph3, fc2_harmonic, fc2_renormalized, report, evaluations + report.n_potential_evaluations)


def compute_kappa(
    atoms: Atoms,
    potential,
    settings: KappaSettings = KappaSettings(),
    *,
    fc2_renormalized: np.ndarray | Mapping[float, np.ndarray] | None = None,
    fc2_supercell: Atoms | None = None,
    fc2_harmonic: np.ndarray | None = None,
    nac_params: dict | None = None,
    fc3=None,
) -> KappaResult:
    """κ of ``atoms`` (relaxed) with a matgl Potential or an ASE calculator, harmonic and renormalized.

    ``fc2_renormalized``: (N, N, 3, 3) SSCHA force constants (``SSCHAResult.force_constants_eV_A2``),
    or a mapping temperature -> array. ``fc2_supercell``: the supercell those arrays are ordered in
    (``SSCHAResult.supercell``); it fixes the FC2 supercell of both κ and is matched atom by atom to
    phono3py's phonon supercell. Without it the arrays must already be in phono3py's order for
    ``settings.fc2_supercell_matrix``. ``fc2_harmonic`` (same order) skips the harmonic finite
    displacements (e.g. ``SSCHAResult.harmonic_force_constants_eV_A2``). ``nac_params``: phonopy's
    {"born", "dielectric", "factor"} for the non-analytic correction. ``fc3``: an FC3 model with
    ``fc3_for(ph3)`` (:class:`generate.kappa.step.SurrogateFC3`) instead of finite displacements of ``potential``.

    A phono3py failure while fitting FC3 or computing κ is returned as ``status="failed"`` with the
    reason; bad input (shapes, lattices, unknown elements) raises.
    """
    start = time.perf_counter()
    try:
        prepared = prepare_kappa(atoms, potential, settings, fc2_renormalized=fc2_renormalized, fc2_supercell=fc2_supercell,
                                 fc2_harmonic=fc2_harmonic, nac_params=nac_params, fc3=fc3)
    except Phono3pyFailure as error:
        return failed_kappa(settings, str(error), start=start)
    return replace(kappa_of_prepared(prepared, settings), wall_time_s=time.perf_counter() - start)


def kappa_of_prepared(prepared: PreparedKappa, settings: KappaSettings) -> KappaResult:
    """κ_harmonic, κ_renormalized and their ratio on ``settings``' q-mesh from :func:`prepare_kappa`'s result."""
    log.info("κ (%s) on a %s q-mesh at %s K", settings.method, mesh_label(settings.q_mesh),
             ", ".join(f"{t:g}" for t in settings.temperatures_K))
    return kappa_from_phono3py(prepared.ph3, settings, fc2_harmonic=prepared.fc2_harmonic,
                               fc2_renormalized=prepared.fc2_renormalized, fc3_report=prepared.fc3,
                               n_potential_evaluations=prepared.n_potential_evaluations)


def load_phono3py_dataset(
    phono3py_yaml, forces_fc3=None, forces_fc2=None, *, symmetrize: bool = True, nac: bool = True
):
    """A Phono3py object with FC3 and FC2 from a phono3py displacement dataset and its forces
    (e.g. a DFT calculation: ``phono3py_disp.yaml`` + ``FORCES_FC3``), by finite differences,
    symmetrized as ``phono3py-load`` does. Never reads fc*.hdf5 from the working directory."""
    import phono3py

    ph3 = phono3py.load(
        phono3py_yaml, forces_fc3_filename=forces_fc3, forces_fc2_filename=forces_fc2, produce_fc=False,
        is_nac=nac, log_level=0,
    )
    if ph3.dataset is None or ph3.forces is None:
        raise ValueError(f"{phono3py_yaml}: no FC3 displacement dataset with forces (FORCES_FC3 given: {forces_fc3})")
    ph3.produce_fc3()
    if symmetrize:
        ph3.symmetrize_fc3()
    if ph3.phonon_supercell_matrix is not None and ph3.phonon_dataset is not None:
        ph3.produce_fc2()
    if symmetrize and ph3.fc2 is not None:
        ph3.symmetrize_fc2()
    return ph3
