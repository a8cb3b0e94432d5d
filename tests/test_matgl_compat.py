"""Detecting which message-passing convention a checkpoint needs, and refusing wrong combinations."""

import json
import shutil

import pytest
from conftest import CHECKPOINTS

from thermobench.matgl_compat import Convention, IncompatibleCheckpointError, apply_convention, detect_convention
from thermobench.potentials import load_potential, write_convention_metadata


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_shared_checkpoints_need_the_destination_convention(shared, name):
    assert detect_convention(shared / "models" / name) is Convention.DESTINATION


def test_model_saved_by_current_matgl_loads_unchanged(tmp_path):
    """A checkpoint written by matgl 4 (as on the Hub today) is not touched."""
    import matgl
    from matgl.apps.pes import Potential
    from matgl.models import M3GNet, TensorNet

    for model in (M3GNet(element_types=("Na", "Cl"), is_intensive=False), TensorNet(element_types=("Na", "Cl"), is_intensive=False)):
        directory = tmp_path / type(model).__name__
        Potential(model=model).save(directory)
        assert detect_convention(directory) is Convention.SOURCE
        potential = load_potential(directory)
        assert type(potential.model) is type(matgl.load_model(directory).model)
        if isinstance(model, M3GNet):
            assert type(potential.model.graph_layers[0].conv).__name__ == "M3GNetGraphConv"
        else:
            assert type(potential.model.tensor_embedding).__name__ == "TensorEmbedding"


def test_convention_metadata_overrides_the_heuristics(shared, tmp_path):
    directory = tmp_path / "finetuned"
    shutil.copytree(shared / "models" / "M3GNet-MP-2021.2.8-PES", directory)
    (directory / "model.json").chmod(0o644)
    write_convention_metadata(directory, Convention.SOURCE)
    assert json.loads((directory / "model.json").read_text())["metadata"]["thermobench_message_passing"] == "source"
    assert detect_convention(directory) is Convention.SOURCE


def test_forcing_a_wrong_convention_is_refused(shared):
    with pytest.raises(IncompatibleCheckpointError, match="destination-aggregation"):
        load_potential("M3GNet-MP-2021.2.8-PES", convention="source")


def test_legacy_architecture_without_compat_layer_is_refused():
    from matgl.apps.pes import Potential
    from matgl.models import MEGNet

    potential = Potential(model=MEGNet(element_types=("Na", "Cl"), is_intensive=False))
    with pytest.raises(IncompatibleCheckpointError, match="MEGNet"):
        apply_convention(potential, Convention.DESTINATION)
