"""Atomic JSON writes: a reader (or a resumed run) sees the old file or the whole new one, never half."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomically(path, data, indent: int | None = None) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=indent, default=float)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
