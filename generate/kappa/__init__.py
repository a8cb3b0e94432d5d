"""Lattice thermal conductivity κ with phono3py, for harmonic and SSCHA-renormalized FC2 with one FC3.

κ is computed in the relaxation-time approximation (``method="rta"``) or the Wigner formulation
(``"wigner"``: populations plus coherences, phono3py's SMM19), with isotope scattering from natural
abundances on by default and the non-analytic correction when Born charges are given.

Third-order force constants (FC3) come from the potential, either by finite displacements
(``fc3_method="finite_displacement"``: phono3py's pair displacements, optionally cut at
``fc3_cutoff_A``) or by a compressive-sensing fit (``"random_fit"``: supercells with every atom
displaced at random, fitted with symfc within ``fc3_cutoff_A``), which needs far fewer potential
calls. The same FC3 is then combined with two FC2s, the harmonic one and the SSCHA one
(:class:`generate.sscha.SSCHAResult`), giving ``kappa_ratio = κ_SSCHA(T) / κ_harmonic(T)``.

Entry points:

- :func:`compute_kappa` (atoms + potential -> :class:`KappaResult`), the function the generator uses;
- :func:`kappa_from_phono3py` (a :class:`phono3py.Phono3py` with FC3 already set, e.g. from a DFT
  dataset via :func:`load_phono3py_dataset`);
- :func:`pipeline_kappa_columns`, the ``kappa`` step of ``generate.run.pipeline``;
- ``python -m generate.kappa --structure Si --temperatures 300 --out kappa.json`` (settings in
  ``conf/kappa.yaml``).

A harmonically unstable crystal gets κ_harmonic = null with the reason (κ from the renormalized FC2
is still computed when that one is stable); a phono3py failure is recorded with its reason instead of
raised. Units: κ in W/(m·K), frequencies in THz, force constants in eV/Å², eV/Å³.

Modules: result (settings, tables, results), force_constants (phono3py objects, FC3, FC2, supercell
matching), transport (κ), step (the generator's κ step), __main__ (the command line).
"""

from generate.kappa.force_constants import (
    build_phono3py,
    fc3_from_potential,
    harmonic_fc2_from_potential,
    minimum_random_snapshots,
    reorder_fc2,
    supercell_matrix_between,
    supercell_permutation,
    unit_cell,
)
from generate.kappa.result import FC3Report, KappaResult, KappaSettings, KappaTable, ModeContributions, Phono3pyFailure
from generate.kappa.step import pipeline_kappa_columns, settings_from_dict
from generate.kappa.transport import (
    compute_kappa,
    conductivity,
    fc2_supercell_matrix_of,
    kappa_from_phono3py,
    load_phono3py_dataset,
    mesh_stability,
    mode_contributions,
)

__all__ = [
    "FC3Report", "KappaResult", "KappaSettings", "KappaTable", "ModeContributions", "Phono3pyFailure", "build_phono3py",
    "compute_kappa", "conductivity", "fc2_supercell_matrix_of", "fc3_from_potential", "harmonic_fc2_from_potential",
    "kappa_from_phono3py", "load_phono3py_dataset", "mesh_stability", "minimum_random_snapshots", "mode_contributions",
    "pipeline_kappa_columns", "reorder_fc2", "settings_from_dict", "supercell_matrix_between", "supercell_permutation",
    "unit_cell",
]
