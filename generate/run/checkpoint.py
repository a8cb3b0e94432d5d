"""Checkpoints inside one material: an expensive stage's result saved under a hash of its inputs, so a
material whose worker stopped (an allocation ended, a killed worker, a restart after a code change)
resumes after its last finished stage instead of from scratch. The SSCHA of a hard material takes
an hour; its κ another.

A run folder keeps them in ``partial/<material_id>/`` (pickles: read only your own) and deletes a
material's once its record is written. The key covers the stage's inputs (structure, supercell,
settings, force constants), not the code: like finished records, a checkpoint survives a code change;
delete ``partial/`` when the change alters a stage's numbers.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from ase import Atoms

log = logging.getLogger("thermobench.generate")
PROGRESS = "progress.json"  # the stage a material has reached, beside its checkpoints


def digest(value) -> str:
    """sha256 of a stage's inputs: arrays by dtype, shape and bytes; Atoms by cell, positions, numbers
    and pbc; dataclasses by their fields; containers recursively; anything else by its repr."""
    h = hashlib.sha256()
    _update(h, value)
    return h.hexdigest()


def _update(h, value) -> None:
    if isinstance(value, Atoms):
        _update(h, ("Atoms", value.cell.array, value.positions, value.numbers, value.pbc))
    elif isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        h.update(f"ndarray{array.dtype.str}{array.shape}".encode())
        h.update(array.tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _update(h, (type(value).__qualname__, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}))
    elif isinstance(value, dict):
        h.update(b"dict")
        for key in sorted(value, key=repr):
            _update(h, key)
            _update(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _update(h, item)
    else:
        h.update(repr(value).encode())


@dataclasses.dataclass
class Checkpoints:
    """One material's checkpoints in ``directory`` (None: nothing is saved, every stage computes).
    ``reused``: (stage, seconds its first computation took) of each result read back."""

    directory: Path | None
    reused: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    stage_cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)  # CPU seconds spent in each stage

    def cached(self, stage: str, inputs, compute: Callable):
        """``compute()``, or the result saved for the same ``stage`` and ``inputs``."""
        if self.directory is None:
            return compute()
        path = self.directory / f"{stage}-{digest(inputs)[:24]}.pkl"
        if path.exists():
            try:
                with open(path, "rb") as handle:
                    seconds, value = pickle.load(handle)
            except Exception:  # noqa: BLE001 - a truncated or stale file is recomputed, not fatal
                path.unlink(missing_ok=True)
            else:
                self.reused.append((stage, float(seconds)))
                return value
        start = time.time()
        value = compute()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(descriptor, "wb") as handle:
                pickle.dump((time.time() - start, value), handle, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, path)
        except OSError as error:  # a worker without the run folder's disk: go on without a checkpoint
            log.warning("checkpoint of %s not saved in %s: %s", stage, self.directory, error)
        return value

    def mark(self, stage: str) -> None:
        """Record in ``progress.json`` the stage the material has reached, for ``python -m generate.run.status``."""
        if self.directory is None:
            return
        from generate.run.atomic import write_json_atomically

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json_atomically(self.directory / PROGRESS, {"stage": stage, "since": time.time(), "host": os.uname().nodename,
                                                              "pid": os.getpid()})
        except OSError as error:
            log.warning("progress of %s not saved in %s: %s", stage, self.directory, error)

    @property
    def reused_seconds(self) -> float:
        return sum(seconds for _, seconds in self.reused)

    def clear(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


_ACTIVE: contextvars.ContextVar[Checkpoints | None] = contextvars.ContextVar("checkpoints", default=None)


def active() -> Checkpoints:
    """The checkpoints of the material being computed (a no-op outside :func:`material_checkpoints`)."""
    return _ACTIVE.get() or Checkpoints(None)


@contextlib.contextmanager
def material_checkpoints(directory: Path | str | None) -> Iterator[Checkpoints]:
    """Make ``directory`` the active checkpoints of the stages computed inside the block."""
    checkpoints = Checkpoints(None if directory is None else Path(directory))
    token = _ACTIVE.set(checkpoints)
    try:
        yield checkpoints
    finally:
        _ACTIVE.reset(token)
