"""Checks of settings that run when a command starts, before any potential is evaluated.

Each raises :class:`SettingsError` naming the field and why its value is unphysical or unusable,
so a typo never runs to a "result" (κ = 1e306 at -5 K) or fails after hours of work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the field."""


def number(value, field: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{field} must be a number, not {value!r}") from None
    if not math.isfinite(out):
        raise SettingsError(f"{field} must be finite, not {value!r}")
    return out


def positive(value, field: str, integer: bool = False, minimum: float = 0.0, strict: bool = True) -> float:
    """A finite number above ``minimum`` (``strict``) or at least it; integers when ``integer``."""
    out = number(value, field)
    if integer and (isinstance(value, bool) or out != int(out)):
        raise SettingsError(f"{field} must be an integer, not {value!r}")
    if out < minimum or (strict and out == minimum):
        relation = ">" if strict else ">="
        raise SettingsError(f"{field} must be {relation} {minimum:g}, not {value!r}")
    return int(out) if integer else out


def fraction(value, field: str) -> float:
    out = number(value, field)
    if not 0 < out <= 1:
        raise SettingsError(f"{field} must lie in (0, 1], not {value!r}")
    return out


def temperature(value, field: str, quantum: bool = True, allow_zero: bool = True) -> float:
    """A temperature in K: finite, not negative; 0 K only with quantum statistics (and where it means something)."""
    out = number(value, field)
    if out < 0:
        raise SettingsError(f"{field} = {value!r}: a temperature in kelvin cannot be negative")
    if out == 0 and not quantum:
        raise SettingsError(
            f"{field} = 0 K with classical statistics: every atom is at rest, the ensemble has zero width; "
            "use quantum statistics or a temperature above 0 K"
        )
    if out == 0 and not allow_zero:
        raise SettingsError(f"{field} = 0 K is not allowed here")
    return out


def temperatures(values, field: str, quantum: bool = True, allow_zero: bool = True) -> tuple[float, ...]:
    """A list of distinct temperatures in K; a single number (``temperatures_K=300``) is a list of one.

    A repeated temperature is refused: each is one (material, temperature) row of the dataset, and two
    rows with the same key cannot both be scored.
    """
    if isinstance(values, int | float) and not isinstance(values, bool):
        values = [values]
    if values is None or isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) == 0:
        raise SettingsError(f"{field} expects a non-empty list of temperatures in K (e.g. [100, 300]), not {values!r}")
    out = tuple(temperature(v, f"{field}[{i}]", quantum, allow_zero) for i, v in enumerate(values))
    repeated = sorted({t for t in out if out.count(t) > 1})
    if repeated:
        raise SettingsError(
            f"{field} = {list(values)!r} lists {', '.join(f'{t:g} K' for t in repeated)} more than once: each temperature "
            "is one row per material, and two rows with the same (material, temperature) cannot both be scored; "
            "remove the repeat"
        )
    return out


def _is_list(values) -> bool:
    return not isinstance(values, str | bytes) and isinstance(values, Sequence | np.ndarray)


def mesh(values, field: str) -> tuple[int, int, int]:
    """A q-point (or k-point) mesh: three positive integers."""
    if not _is_list(values) or len(values) != 3:
        raise SettingsError(f"{field} expects a list of three positive integers (e.g. [4, 4, 4]), not {values!r}")
    return tuple(positive(v, f"{field}[{i}]", integer=True) for i, v in enumerate(values))


def mesh_or_length(values, field: str) -> tuple[int, int, int] | float:
    """A q-mesh as three positive integers, or one length in Å: phonopy's rule, n_i ≈ length × |b_i|
    (reciprocal vectors without 2π), the same sampling density for every cell, rounded to respect symmetry."""
    if _is_list(values):
        return mesh(values, field)
    try:
        return positive(values, field)
    except SettingsError:
        raise SettingsError(f"{field} expects three positive integers (e.g. [11, 11, 11]) or a length in Å "
                            f"(e.g. 40), not {values!r}") from None


def supercell_matrix(values, field: str) -> np.ndarray:
    """Three positive integers (diagonal) or a 3x3 integer matrix with a positive determinant above 1.

    The cell itself (determinant 1, e.g. [1, 1, 1]) is refused, as :func:`generate.run.labels.choose_supercell`
    never picks it: it samples Γ alone.
    """
    if _is_list(values) and len(values) == 3 and not any(_is_list(row) for row in values):
        numbers = np.diag(mesh(values, field))
    elif _is_list(values) and len(values) == 3 and all(_is_list(row) and len(row) == 3 for row in values):
        numbers = np.array([[number(x, f"{field}[{i}][{j}]") for j, x in enumerate(row)] for i, row in enumerate(values)])
        if not np.all(numbers == np.rint(numbers)):
            raise SettingsError(f"{field} must hold integers, not {values!r}")
    else:
        raise SettingsError(f"{field} expects 3 integers or a 3x3 integer matrix (e.g. [2, 2, 2]), not {values!r}")
    determinant = round(np.linalg.det(numbers))
    if determinant == 0:
        raise SettingsError(f"{field} = {values!r} is singular (determinant 0): it spans no supercell")
    if determinant < 0:
        raise SettingsError(f"{field} = {values!r} has a negative determinant (a left-handed supercell)")
    if determinant == 1:
        raise SettingsError(
            f"{field} = {values!r} is the cell itself (determinant 1): it samples Γ alone, so force constants, SSCHA "
            "frequencies and anything interpolated from them are artefacts of the periodic images; use a supercell "
            "such as [2, 2, 2]"
        )
    return numbers.astype(int)


def atom_budget(min_atoms, max_atoms, field: str = "supercell") -> tuple[int, int]:
    low = positive(min_atoms, f"{field}.min_atoms", integer=True, strict=False)
    high = positive(max_atoms, f"{field}.max_atoms", integer=True)
    if low > high:
        raise SettingsError(f"{field}.min_atoms = {low} exceeds {field}.max_atoms = {high}")
    return low, high


def choice(value, field: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise SettingsError(f"{field} must be one of {', '.join(map(repr, allowed))}, not {value!r}")
    return value
