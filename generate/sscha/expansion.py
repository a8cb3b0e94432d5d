"""A force-constant expansion as a cheap potential: 2nd-4th order monomials of the displacements,
folded onto the supercell, with exact Gaussian averages (the surrogate engine's model)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes


@dataclass(frozen=True)
class Monomials:
    """One order of a polynomial in the flattened displacements u (index 3·atom + Cartesian):
    Σ_t coefficients[t] Π_k u[dofs[t, k]], each monomial once (indices sorted within a row)."""

    dofs: np.ndarray  # (T, order) int
    coefficients: np.ndarray  # (T,)

    @property
    def order(self) -> int:
        return self.dofs.shape[1]


def merge_monomials(dofs: np.ndarray, coefficients: np.ndarray, tolerance: float = 0.0) -> Monomials:
    """Sort each row (the product commutes), sum the coefficients of equal rows, drop |c| <= tolerance."""
    dofs = np.sort(dofs, axis=1)
    unique, inverse = np.unique(dofs, axis=0, return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=coefficients, minlength=len(unique))
    keep = np.abs(summed) > tolerance
    return Monomials(dofs=np.ascontiguousarray(unique[keep]), coefficients=summed[keep])


def harmonic_monomials(matrix: np.ndarray) -> Monomials:
    """½ uᵀ M u as monomials: M_ij u_i u_j for i < j and ½ M_ii u_i²."""
    i, j = np.triu_indices(matrix.shape[0])
    return merge_monomials(np.stack([i, j], axis=1), np.where(i == j, 0.5, 1.0) * matrix[i, j])


def folded_monomials(force_constants, n_atoms: int, copies: int, chunk: int = 20000) -> list[Monomials]:
    """The energy per copy of a hiphive force-constant set on a tiled supercell, as monomials of the
    small supercell's displacements.

    For displacements periodic with the small supercell (every copy moved alike, tiled atom k moving
    as atom k mod N) the tiled energy is ``copies`` times that of one copy. A sorted cluster c adds
    Φ_c·u⊗…⊗u / Π_a m_a! (m_a: how often atom a appears in c), hiphive's convention; folding its atoms
    onto the small supercell and summing equal monomials gives the folded force constants, so the
    SSCHA supercell is evaluated as it is, for a whole ensemble at once.
    """
    from collections import Counter
    from math import factorial, prod

    out = []
    for order in force_constants.orders:
        items = list(force_constants.get_fc_dict(order).items())
        alphas = np.array(np.unravel_index(np.arange(3**order), (3,) * order)).T  # (3^n, n)
        parts = []
        for start in range(0, len(items), chunk):
            clusters = [c for c, _ in items[start : start + chunk]]
            tensors = np.array([fc for _, fc in items[start : start + chunk]]).reshape(len(clusters), -1)
            weights = np.array([1.0 / prod(factorial(m) for m in Counter(c).values()) for c in clusters]) / copies
            dofs = 3 * (np.array(clusters)[:, None, :] % n_atoms) + alphas[None, :, :]
            parts.append(merge_monomials(dofs.reshape(-1, order), (tensors * weights[:, None]).reshape(-1)))
        out.append(
            merge_monomials(
                np.concatenate([p.dofs for p in parts]), np.concatenate([p.coefficients for p in parts]), tolerance=1e-14
            )
        )
    return out


def gaussian_moments(columns: list[np.ndarray], mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """E[Π_k u_{columns[k]}] for u ~ N(mean, covariance), elementwise over the rows of the columns.

    Isserlis' recursion with a mean: E[u_a Π_rest] = mean_a E[Π_rest] + Σ_j C_{a,j} E[Π_{rest∖j}].
    """
    if not columns:
        return np.ones(1)
    first, rest = columns[0], columns[1:]
    out = mean[first] * gaussian_moments(rest, mean, covariance)
    for j in range(len(rest)):
        out = out + covariance[first, rest[j]] * gaussian_moments(rest[:j] + rest[j + 1 :], mean, covariance)
    return out


class ForceConstantExpansion(Calculator):
    """V = E0 + Σ_orders Σ_t c_t Π u: a force-constant expansion on the SSCHA supercell.

    :meth:`energies_and_forces` evaluates a whole ensemble in vectorized passes (what
    :func:`evaluate` uses): the second order as a dense matrix, higher orders as sparse monomials
    whose gradients are scattered back with a sparse incidence matrix. As an ASE calculator it
    evaluates one structure. u is measured from ``reference`` (the supercell's positions).
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, reference: Atoms, energy0_eV: float, orders: list[Monomials], block_elements: int = 2**20):
        super().__init__()
        from scipy.sparse import csr_matrix

        self.reference = reference.positions.copy()
        self.reference_atoms = Atoms(reference.numbers, positions=reference.positions, cell=reference.cell.array, pbc=True)
        self.energy0_eV = energy0_eV
        self.orders = orders
        self.block_elements = block_elements  # bounds the (configurations × monomials) work arrays
        n_dofs = self.reference.size
        self.matrix = np.zeros((n_dofs, n_dofs))  # second order: E = ½ uᵀ M u
        self.higher, self.incidence = [], []
        for monomials in orders:
            if monomials.order == 2:
                i, j = monomials.dofs.T
                np.add.at(self.matrix, (i, j), monomials.coefficients)
                np.add.at(self.matrix, (j, i), monomials.coefficients)
                continue
            # One column per (position k, monomial t), with a one at the dof in position k.
            rows = monomials.dofs.T.reshape(-1)
            self.incidence.append(
                csr_matrix((np.ones(rows.size), (rows, np.arange(rows.size))), shape=(n_dofs, rows.size))
            )
            self.higher.append(monomials)

    @property
    def n_monomials(self) -> int:
        return sum(len(m.coefficients) for m in self.orders)

    def evaluate_structures(self, structures) -> tuple[np.ndarray, np.ndarray]:
        """Energies and forces of whole structures (same supercell), as the engines' ``evaluate`` takes them."""
        return self.energies_and_forces(np.array([atoms.positions for atoms in structures]) - self.reference)

    def energies_and_forces(self, displacements_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies (B,) and forces (B, N, 3) for displacements (B, N, 3) from the reference."""
        u = displacements_A.reshape(len(displacements_A), -1)
        linear = u @ self.matrix
        energies = self.energy0_eV + 0.5 * np.einsum("bi,bi->b", linear, u)
        gradient = linear
        for monomials, incidence in zip(self.higher, self.incidence, strict=True):
            order, coefficients = monomials.order, monomials.coefficients
            step = max(1, self.block_elements // max(1, coefficients.size))
            for start in range(0, len(u), step):
                columns = [u[start : start + step, monomials.dofs[:, k]] for k in range(order)]  # (b, T) each
                left = [None] * (order + 1)  # left[k]: product of the first k columns
                left[1] = columns[0]
                for k in range(1, order):
                    left[k + 1] = left[k] * columns[k]
                energies[start : start + step] += left[order] @ coefficients
                partials = []  # ∂/∂(column k) of each monomial, times its coefficient
                right = coefficients  # product of the columns after k, times the coefficient
                for k in range(order - 1, -1, -1):
                    partials.append(right if k == 0 else left[k] * right)
                    right = right * columns[k]
                stacked = np.concatenate(partials[::-1], axis=1)  # (b, order·T), position-major
                gradient[start : start + step] += (incidence @ stacked.T).T
        return energies, -gradient.reshape(displacements_A.shape)

    def gaussian_averages(self, mean_A: np.ndarray, covariance_A2: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Exact ⟨V⟩, ⟨∂V/∂u⟩ (3N,) and ⟨∂²V/∂u∂u⟩ (3N, 3N) over the Gaussian u ~ N(mean, covariance).

        A polynomial's Gaussian averages are finite sums of moments (Isserlis' theorem with a mean,
        :func:`gaussian_moments`): the SSCHA on the expansion needs no ensemble and has no
        stochastic error. Derivatives of Π_k u_{d_k} are sums over positions k (and ordered pairs
        k ≠ l) of the product of the remaining factors, so repeated dofs come out right.
        """
        mean, covariance = mean_A.reshape(-1), covariance_A2
        n_dofs = mean.size
        energy = self.energy0_eV + 0.5 * (np.sum(self.matrix * covariance) + mean @ self.matrix @ mean)
        gradient = self.matrix @ mean
        hessian = self.matrix.copy()
        for monomials in self.higher:
            columns, coefficients, order = list(monomials.dofs.T), monomials.coefficients, monomials.order
            energy += float(coefficients @ gaussian_moments(columns, mean, covariance))
            for k in range(order):
                others = columns[:k] + columns[k + 1 :]
                gradient += np.bincount(columns[k], coefficients * gaussian_moments(others, mean, covariance), n_dofs)
                for l in range(k + 1, order):
                    rest = [c for m, c in enumerate(columns) if m not in (k, l)]
                    values = coefficients * gaussian_moments(rest, mean, covariance)
                    pair = np.bincount(columns[k] * n_dofs + columns[l], values, n_dofs**2).reshape(n_dofs, n_dofs)
                    hessian += pair + pair.T
        return float(energy), gradient, hessian

    def third_derivatives(self, atoms: np.ndarray) -> np.ndarray:
        """∂³V/∂u_iα∂u_jβ∂u_kγ (eV/Å³) for i in ``atoms``: (len(atoms), N, N, 3, 3, 3), phono3py's compact FC3 layout
        when ``atoms`` are the primitive cell's sites. A monomial c·Π u over dofs (a, b, c) gives c times the
        product of the factorials of its repeated dofs (c·u_a²u_b: ∂³/∂a∂a∂b = 2c), in every permutation."""
        from itertools import permutations

        n = len(self.reference)
        atoms = np.asarray(atoms, dtype=int)
        row_of = np.full(n, -1)
        row_of[atoms] = np.arange(len(atoms))
        out = np.zeros((len(atoms), n, n, 3, 3, 3))
        for monomials in self.higher:
            if monomials.order != 3:
                continue
            dofs = monomials.dofs
            first, second, third = dofs.T
            repeats = np.where((first == second) & (second == third), 6.0,
                               np.where((first == second) | (second == third), 2.0, 1.0))  # sorted rows
            values = monomials.coefficients * repeats
            for order in permutations(range(3)):
                a, b, c = dofs[:, order].T
                keep = row_of[a // 3] >= 0
                out[row_of[a[keep] // 3], b[keep] // 3, c[keep] // 3, a[keep] % 3, b[keep] % 3, c[keep] % 3] = values[keep]
        return out

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces = self.energies_and_forces((self.atoms.positions - self.reference)[None])
        self.results["energy"] = float(energies[0])
        self.results["forces"] = forces[0]
