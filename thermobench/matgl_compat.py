"""Run checkpoints trained under matgl's pre-3.0 message-passing convention on matgl 4.x.

What changed (found by diffing matgl 1.1.3/2.0.4 against 4.1.2 layer by layer):

* ``M3GNetGraphConv.node_update_``: matgl <= 2.x (DGL ``update_all(copy_e, sum)``) summed the
  edge message ``phi(v_src, v_dst, e)`` onto the edge's *destination* node; matgl >= 3.0 scatters
  it onto the *source* node.
* ``TensorEmbedding`` (TensorNet): matgl 2.0.x aggregated the first tensor messages onto
  ``edge_index[1]`` (destination); matgl >= 2.1 (``TensorNet.__version__`` 2) uses
  ``edge_index[0]``. ``TensorNetInteraction`` is unchanged.

* ``ThreeBodyInteractions`` (M3GNet): matgl <= 2.x numbered the line-graph nodes by bond id in the
  graph *pruned* to the three-body cutoff, then used those ids directly on the unpruned bond arrays
  (end atom, cutoff weights and the bond that receives the sum). matgl >= 3.0 lifts them to the
  parent bond ids. The old indexing is what the weights were trained with, so it is reproduced per
  structure (a batch of structures behaves as the structures one by one).

The first two are the same cause, and the one shared by both architectures: the message carries
``[v_src, v_dst]`` in a fixed order, so on a symmetric graph the choice of receiving node is
invisible only when all neighbours are the same element, which is why elemental crystals agree and
compounds do not (the three-body indexing adds errors of order 1 meV/atom for dense,
short-bonded crystals such as diamond). Graph construction, the basis functions, readouts and the
``Potential`` wrapper are identical between versions.

The fix replaces the two affected modules of a loaded model by subclasses that aggregate onto the
destination node, keeping every weight. Nothing in matgl is patched globally.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from matgl.graph._compute import compute_pair_vector_and_distance
from matgl.layers._embedding import TensorEmbedding
from matgl.layers._graph_convolution import M3GNetGraphConv
from matgl.layers._three_body import ThreeBodyInteractions
from matgl.utils.maths import scatter_add

METADATA_KEY = "thermobench_message_passing"


class Convention(str, Enum):
    """Which node receives an edge's message in a graph convolution."""

    DESTINATION = "destination"  # matgl < 3.0 (M3GNet), matgl < 2.1 (TensorNet)
    SOURCE = "source"  # matgl >= 3.0


class IncompatibleCheckpointError(ValueError):
    """A checkpoint and a requested convention (or architecture) that are known to give wrong results."""


class DestinationAggregatingM3GNetGraphConv(M3GNetGraphConv):
    """M3GNet convolution whose node update sums messages onto the destination node (matgl < 3.0)."""

    def node_update_(self, edge_index, edge_feat, node_feat, rbf, u_per_edge, num_nodes):  # noqa: D102
        src, dst = edge_index[0], edge_index[1]
        parts = [node_feat[src], node_feat[dst], edge_feat]
        if self.include_state:
            parts.append(u_per_edge)
        message = self.node_update_func(torch.hstack(parts)) * self.node_weight_func(rbf)
        return scatter_add(message, dst, dim_size=num_nodes, dim=0)


class DestinationAggregatingTensorEmbedding(TensorEmbedding):
    """TensorNet embedding that sums its first messages onto the destination node (matgl < 2.1)."""

    def forward(self, z, edge_index, edge_attr, edge_weight, edge_vec, state_attr=None):  # noqa: D102
        self._receivers = edge_index[1]
        try:
            return super().forward(z, edge_index, edge_attr, edge_weight, edge_vec, state_attr)
        finally:
            self._receivers = None

    def aggregate(self, msg, index, dim_size):  # noqa: D102
        return super().aggregate(msg, self._receivers, dim_size)


class PrunedIndexThreeBodyInteractions(ThreeBodyInteractions):
    """Three-body update that indexes bond arrays with pruned-graph bond ids (matgl < 3.0).

    ``legacy_bond_ids`` maps a parent bond id to the id the old code used for it; it is set by
    :func:`_set_legacy_bond_ids` before every forward pass of the owning M3GNet.
    """

    legacy_bond_ids: torch.Tensor | None = None

    def forward(self, edge_dst_atom, line_edge_index, n_triple_ij, num_bonds, *args):  # noqa: D102
        legacy_line_edge_index = self.legacy_bond_ids[line_edge_index]
        return super().forward(edge_dst_atom, legacy_line_edge_index, n_triple_ij, num_bonds, *args)


def _set_legacy_bond_ids(model, args, kwargs):
    """Forward pre-hook of a legacy M3GNet: parent bond id -> pruned id, offset per structure."""
    g = kwargs["g"] if "g" in kwargs else args[0]
    with torch.no_grad():
        _, bond_dist = compute_pair_vector_and_distance(g.pos, g.edge_index, getattr(g, "pbc_offshift", None))
        kept = (bond_dist <= model.threebody_cutoff).long()
        batch = getattr(g, "batch", None)
        edge_graph = torch.zeros_like(kept) if batch is None else batch[g.edge_index[0]].long()
        num_graphs = int(edge_graph.max()) + 1 if edge_graph.numel() else 1
        # Bonds of one structure are contiguous; the old ids restart at that structure's first bond.
        first_bond = torch.full((num_graphs,), kept.numel(), dtype=torch.long, device=kept.device)
        first_bond = first_bond.scatter_reduce(0, edge_graph, torch.arange(kept.numel(), device=kept.device), "amin")
        kept_before = torch.cumsum(kept, 0) - kept
        rank_in_graph = kept_before - kept_before[first_bond[edge_graph]]
        legacy_ids = first_bond[edge_graph] + rank_in_graph
    for interaction in model.three_body_interactions:
        interaction.legacy_bond_ids = legacy_ids


def _architecture(model_json: dict[str, Any]) -> tuple[str, int]:
    inner = model_json.get("kwargs", {}).get("model", {})
    return inner.get("@class", model_json.get("@class", "")), int(inner.get("@model_version", 0))


def detect_convention(model_dir: str | Path) -> Convention:
    """Tell from a matgl model directory which convention its weights were trained with.

    Rules, in order:
    1. thermobench writes the convention into the metadata of every model it saves.
    2. TensorNet ``@model_version`` < 2 was saved by matgl <= 2.0 (destination); >= 2 is source.
    3. M3GNet kept ``@model_version`` 2 across the change, so the saving matgl version is read from
       the module paths and the ``Potential`` arguments it recorded: ``*_dgl`` / ``*_pyg`` module
       names come from matgl 2.x / 3.x, and matgl 1.x is the only ``matgl.apps.pes`` writer without
       a ``calc_charge`` argument.
    """
    model_json = json.loads((Path(model_dir) / "model.json").read_text())
    metadata = model_json.get("metadata") or {}
    if isinstance(metadata, dict) and METADATA_KEY in metadata:
        return Convention(metadata[METADATA_KEY])
    arch, version = _architecture(model_json)
    inner_module = model_json.get("kwargs", {}).get("model", {}).get("@module", "")
    outer_module = model_json.get("@module", "")
    if arch == "TensorNet":
        return Convention.DESTINATION if version < 2 else Convention.SOURCE
    if arch == "M3GNet":
        if inner_module.endswith("_pyg") or outer_module.endswith("_pyg"):
            return Convention.SOURCE
        if outer_module.endswith("_dgl") and inner_module.endswith("_dgl"):
            return Convention.SOURCE  # matgl 3.0 DGL port already used the source convention
        if outer_module.endswith("_dgl") or "calc_charge" not in model_json.get("kwargs", {}):
            return Convention.DESTINATION
        return Convention.SOURCE
    return Convention.SOURCE


def apply_convention(potential, convention: Convention):
    """Make a loaded matgl ``Potential`` compute with ``convention``; returns the same object."""
    if convention is Convention.SOURCE:
        return potential
    model = potential.model
    arch = type(model).__name__
    if arch == "M3GNet":
        for interaction in model.three_body_interactions:
            interaction.__class__ = PrunedIndexThreeBodyInteractions  # same weights, old indexing
        model.register_forward_pre_hook(_set_legacy_bond_ids, with_kwargs=True)
        for block in model.graph_layers:
            conv = block.conv
            block.conv = DestinationAggregatingM3GNetGraphConv(
                conv.include_state,
                conv.edge_update_func,
                conv.edge_weight_func,
                conv.node_update_func,
                conv.node_weight_func,
                conv.state_update_func,
            )
    elif arch == "TensorNet":
        if getattr(model, "_use_warp", False):
            raise IncompatibleCheckpointError(
                "This TensorNet checkpoint needs the pre-2.1 destination-aggregation convention, which the "
                "warp kernels of nvalchemi-toolkit-ops cannot compute; uninstall nvalchemi-toolkit-ops."
            )
        model.tensor_embedding.__class__ = DestinationAggregatingTensorEmbedding  # same weights, old receivers
    else:
        raise IncompatibleCheckpointError(
            f"No compatibility layer for a {arch} checkpoint trained with the destination convention: "
            "matgl 4.x would silently give wrong energies and forces for it."
        )
    return potential
