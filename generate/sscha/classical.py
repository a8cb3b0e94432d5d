"""σᴬ over a classical thermal ensemble: the counterpart of the molecular-dynamics σᴬ of Knoop et al.
(PRM 4, 083809, 2020; 2023), whose nuclei are classical.

Displacements are drawn from the Gaussian of the final SSCHA auxiliary force constants with
classical mode variances k_B T / ω² around the SSCHA centroids (the SSCHA ensemble itself is
quantum: at 100 K its high-frequency modes carry zero-point motion that molecular dynamics lacks).
At high T both ensembles tend to the same distribution.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from generate.sscha.direct import anharmonicity_score, new_ensemble
from generate.sscha.result import SSCHAResult, SSCHASettings
from generate.sscha.supercell import gaussian_modes, supercell_model, to_matrix


def classical_sigma_A(atoms, supercell_matrix, potential, result: SSCHAResult, settings: SSCHASettings,
                      n_configurations: int) -> tuple[float, float]:
    """(σᴬ, its jackknife error) over ``n_configurations`` classical configurations (antithetic pairs)
    at ``result.temperature_K``; forces from ``potential``, f_harm from the result's harmonic FC2."""
    classical = replace(settings, quantum=False, temperature_K=result.temperature_K)
    model = supercell_model(atoms, supercell_matrix, classical)
    dynamical = to_matrix(result.force_constants_eV_A2) / np.outer(model.sqrt_masses, model.sqrt_masses)
    modes = gaussian_modes(model, dynamical, classical)
    rng = np.random.default_rng([settings.seed, 2, round(result.temperature_K * 1000)])  # apart from the SSCHA's
    ensemble = new_ensemble(model, potential, result.supercell.positions, modes, n_configurations, rng, classical)
    weights = np.full(len(ensemble.energies_eV), 1.0 / len(ensemble.energies_eV))
    return anharmonicity_score(model, ensemble, weights, result.harmonic_force_constants_eV_A2)
