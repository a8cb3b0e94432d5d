"""Physically motivated descriptors of a (material, temperature) row for the descriptor model.

Structure: nearest-neighbour bond lengths and their spread, coordination numbers, bond length over
the sum of covalent radii (loose "rattler" sites), volume per atom. Chemistry: masses, atomic radii,
Pauling electronegativities and their differences across first-shell bonds. Harmonic phonons (from
``harmonic_frequencies_THz``): moments of the spectrum, soft and imaginary modes, and the classical
thermal displacement at T relative to the bond length (a Lindemann ratio), which is what makes a
lattice anharmonic.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from thermobench.graphs import atoms_from_row

KB_EV_K = 8.617333262e-5
AMU_A2_PER_PS2_EV = 1.0364269e-4  # 1 amu·Å²/ps² in eV
ACOUSTIC_CUTOFF_THZ = 0.1  # |ν| below this counts as an acoustic (zero) mode
FIRST_SHELL_TOLERANCE = 1.2  # neighbours within 1.2 × the site's nearest distance form its first shell
SOFT_MODE_THZ = 1.0


@lru_cache(maxsize=None)
def element_properties(symbol: str) -> tuple[float, float, float, float, float]:
    """(mass amu, atomic radius Å, Pauling electronegativity, period, group) from pymatgen."""
    from pymatgen.core.periodic_table import Element

    element = Element(symbol)
    radius = element.atomic_radius or element.atomic_radius_calculated
    electronegativity = element.X if np.isfinite(element.X) else 0.0  # noble gases have none
    return float(element.atomic_mass), float(radius), float(electronegativity), float(element.row), float(element.group)


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_std": float(values.std()),
        f"{prefix}_min": float(values.min()),
        f"{prefix}_max": float(values.max()),
    }


def structure_features(row) -> dict[str, float]:
    """Temperature-independent descriptors of one material."""
    atoms = atoms_from_row(row)
    symbols = atoms.get_chemical_symbols()
    props = np.array([element_properties(s) for s in symbols])
    mass, radius, chi, period, group = props.T
    n = len(atoms)
    i, j, d = neighbor_list("ijd", atoms, 6.0)
    nearest = np.array([d[i == k].min() if np.any(i == k) else 6.0 for k in range(n)])
    shell = d <= FIRST_SHELL_TOLERANCE * nearest[i]
    coordination = np.bincount(i[shell], minlength=n)
    spread = np.array([d[(i == k) & shell].std() / nearest[k] if coordination[k] else 0.0 for k in range(n)])
    delta_chi = np.abs(chi[i[shell]] - chi[j[shell]])
    covalent = covalent_radii[atoms.numbers]
    bond_strain = d[shell] / (covalent[i[shell]] + covalent[j[shell]])
    features = {
        "nsites": float(n),
        "n_elements": float(len(set(symbols))),
        "volume_per_atom_A3": float(atoms.get_volume() / n),
        "density_amu_A3": float(mass.sum() / atoms.get_volume()),
        "mass_ratio_max_min": float(mass.max() / mass.min()),
        "delta_chi_bond_mean": float(delta_chi.mean()) if delta_chi.size else 0.0,
        "delta_chi_bond_max": float(delta_chi.max()) if delta_chi.size else 0.0,
    }
    for prefix, values in (
        ("mass_amu", mass), ("atomic_radius_A", radius), ("electronegativity", chi), ("period", period),
        ("group", group), ("nn_distance_A", nearest), ("coordination", coordination),
        ("first_shell_spread", spread), ("bond_over_covalent", bond_strain),
    ):
        features.update(_stats(prefix, values))
    return features


def harmonic_features(row, mean_mass_amu: float, nn_distance_A: float) -> dict[str, float]:
    """Spectrum statistics of ``harmonic_frequencies_THz`` and the thermal displacement scale per kT."""
    nu = np.asarray(row["harmonic_frequencies_THz"], dtype=float)
    finite = nu[np.abs(nu) > ACOUSTIC_CUTOFF_THZ]
    stable = finite[finite > 0]
    if stable.size == 0:
        stable = np.array([ACOUSTIC_CUTOFF_THZ])
    omega = 2 * np.pi * stable  # rad/ps
    # classical <u²> = kT / (m ω²) per mode; per eV of kT, in Å²
    u2_per_kT = float(np.mean(1.0 / (mean_mass_amu * omega**2 * AMU_A2_PER_PS2_EV)))
    return {
        "harmonic_mean_THz": float(stable.mean()),
        "harmonic_std_THz": float(stable.std()),
        "harmonic_max_THz": float(stable.max()),
        "harmonic_lowest_optical_THz": float(stable.min()),
        "harmonic_min_THz": float(nu.min()),
        "harmonic_inverse_square_mean_THz2": float(np.mean(1.0 / stable**2)),
        "harmonic_soft_fraction": float(np.mean(finite < SOFT_MODE_THZ)) if finite.size else 0.0,
        "n_imaginary_harmonic": float(np.sum(nu < -ACOUSTIC_CUTOFF_THZ)),
        "u2_per_kT_A2_eV": u2_per_kT,
        "u2_per_kT_over_d2": u2_per_kT / nn_distance_A**2,
    }


def descriptor_frame(frame: pd.DataFrame, temperature_input: bool = True) -> pd.DataFrame:
    """One feature row per dataset row, in the same order (materials are computed once)."""
    per_material: dict[str, dict[str, float]] = {}
    rows = []
    for row in frame.to_dict("records"):
        material = row["material_id"]
        if material not in per_material:
            base = structure_features(row)
            base.update(harmonic_features(row, base["mass_amu_mean"], base["nn_distance_A_min"]))
            per_material[material] = base
        features = dict(per_material[material])
        if temperature_input:
            temperature = float(row["temperature_K"])
            features["temperature_K"] = temperature
            # thermal displacement at T relative to the shortest bond: a Lindemann ratio squared
            features["lindemann_ratio2_T"] = KB_EV_K * temperature * features["u2_per_kT_over_d2"]
        rows.append(features)
    return pd.DataFrame(rows, index=frame.index)
