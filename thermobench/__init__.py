"""thermobench: temperature-dependent (anharmonic) phonons of inorganic crystals.

Submodules are imported lazily so that ``import thermobench`` never pulls in torch or phonopy.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_potential": "thermobench.potentials",
    "load_calculator": "thermobench.potentials",
    "evaluate_batch": "thermobench.potentials",
    "load_dataset": "thermobench.dataset",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thermobench' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
