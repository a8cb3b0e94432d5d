"""Relax a crystal with a potential, keeping its space group, and report how the relaxation went.

``python -m generate.harmonic.relax`` relaxes the configured structure (default: NaCl with the default
potential) and prints its lattice constant and energy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator


@dataclass(frozen=True)
class RelaxSettings:
    # One set of defaults for every command: BFGS needs ~3 steps where FIRE needs ~20 with the cell filter.
    optimizer: str = "BFGS"
    fmax_eV_A: float = 1e-3
    max_steps: int = 500
    relax_cell: bool = True
    keep_symmetry: bool = True
    symprec: float = 1e-5

    def __post_init__(self):
        from ase import optimize

        from generate.run import checks

        if not isinstance(getattr(optimize, str(self.optimizer), None), type):
            raise checks.SettingsError(f"relax.optimizer {self.optimizer!r} is not an ASE optimizer (e.g. BFGS, FIRE, LBFGS)")
        checks.positive(self.fmax_eV_A, "relax.fmax_eV_A")
        checks.positive(self.max_steps, "relax.max_steps", integer=True, strict=False)
        checks.positive(self.symprec, "relax.symprec")


@dataclass(frozen=True)
class RelaxResult:
    atoms: Atoms
    energy_eV: float
    steps: int
    converged: bool
    max_force_eV_A: float
    max_stress_eV_A3: float
    spacegroup_before: str
    spacegroup_after: str

    @property
    def symmetry_kept(self) -> bool:
        return self.spacegroup_before == self.spacegroup_after

    @property
    def energy_eV_atom(self) -> float:
        return self.energy_eV / len(self.atoms)


def spacegroup(atoms: Atoms, symprec: float) -> str:
    import spglib

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    return spglib.get_spacegroup(cell, symprec=symprec) or "unknown"


def relax(atoms: Atoms, calculator: Calculator, settings: RelaxSettings = RelaxSettings()) -> RelaxResult:
    """Relax positions (and cell) under ``FixSymmetry``; non-convergence is reported, not raised."""
    from ase import optimize
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter

    atoms = atoms.copy()
    atoms.calc = calculator
    before = spacegroup(atoms, settings.symprec)
    if settings.keep_symmetry:
        atoms.set_constraint(FixSymmetry(atoms, symprec=settings.symprec))
    target = FrechetCellFilter(atoms) if settings.relax_cell else atoms
    optimizer_class = getattr(optimize, settings.optimizer)
    optimizer = optimizer_class(target, logfile=None)
    converged = bool(optimizer.run(fmax=settings.fmax_eV_A, steps=settings.max_steps))
    forces = atoms.get_forces()
    stress = atoms.get_stress() if settings.relax_cell else np.zeros(6)
    atoms.set_constraint()
    relaxed = atoms.copy()
    energy = float(atoms.get_potential_energy())
    return RelaxResult(
        atoms=relaxed,
        energy_eV=energy,
        steps=int(optimizer.nsteps),
        converged=converged,
        max_force_eV_A=float(np.linalg.norm(forces, axis=1).max()),
        max_stress_eV_A3=float(np.abs(stress).max()),
        spacegroup_before=before,
        spacegroup_after=spacegroup(relaxed, settings.symprec),
    )


def conventional_cubic_lattice_constant(atoms: Atoms) -> float:
    """Cubic lattice constant from the volume per formula-unit cell of a cubic primitive cell."""
    from ase.spacegroup.symmetrize import check_symmetry

    dataset = check_symmetry(atoms, 1e-3)
    if dataset is None or not 195 <= dataset.number <= 230:
        raise ValueError(f"{atoms.get_chemical_formula()} is not cubic; no single lattice constant")
    return float(np.linalg.norm(dataset.std_lattice[0]))


def run_command(cfg) -> RelaxResult:
    from generate.run.config import relax_settings
    from thermobench.potentials import check_structure, load_named_potential
    from thermobench.structures import load_structure

    settings = relax_settings(cfg.relax, cfg.harmonic)  # checked before anything is read
    atoms = load_structure(str(cfg.structure))
    loaded = load_named_potential(str(cfg.potential.name), device=cfg.potential.device)
    check_structure(atoms, loaded.element_types, str(cfg.structure), loaded.cutoff_A)
    result = relax(atoms, loaded.calculator, settings)
    status = "converged" if result.converged else "NOT converged"
    print(f"{atoms.get_chemical_formula()} relaxed with {loaded.name}: {status} in {result.steps} steps")
    try:
        print(f"lattice constant a = {conventional_cubic_lattice_constant(result.atoms):.4f} A")
    except ValueError:
        print("cell lengths (A) = " + " ".join(f"{x:.4f}" for x in result.atoms.cell.lengths()))
    print(f"energy = {result.energy_eV:.6f} eV ({result.energy_eV_atom:.6f} eV/atom)")
    print(
        f"max force = {result.max_force_eV_A:.2e} eV/A, max stress = {result.max_stress_eV_A3:.2e} eV/A^3, "
        f"space group {result.spacegroup_before} -> {result.spacegroup_after}"
    )
    return result


def main() -> None:
    import hydra

    from generate.run.config import register

    register()
    hydra.main(version_base="1.3", config_path="../../conf", config_name="relax")(run_command)()


if __name__ == "__main__":
    main()
