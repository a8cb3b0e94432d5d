import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("THERMOBENCH_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"
REFERENCE = SHARED / "reference"
CHECKPOINTS = ["M3GNet-MP-2021.2.8-PES", "M3GNet-MatPES-PBE-v2025.1-PES", "TensorNet-MatPES-PBE-v2025.1-PES"]

os.environ.setdefault("THERMOBENCH_MODELS", str(MODELS))
# Absolute, so tests that change the working directory still find the models (CI passes ../shared/models).
os.environ["THERMOBENCH_MODELS"] = os.pathsep.join(
    str(Path(p).resolve()) for p in os.environ["THERMOBENCH_MODELS"].split(os.pathsep) if p
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never use the network


@pytest.fixture(scope="session")
def shared() -> Path:
    if not MODELS.is_dir():
        message = f"the shared models and references are expected at {SHARED} (set THERMOBENCH_SHARED)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED
