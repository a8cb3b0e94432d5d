"""Graph networks mapping a batch of crystal graphs (+ temperature) to one number per graph.

Each network is a plain ``nn.Module`` with ``forward(batch) -> (n_graphs,)``; the Lightning module
(:mod:`thermobench.models.module`) handles loss, optimizer and target scaling. Targets are
intensive, so atoms are mean-pooled; the temperature joins after pooling (``TemperatureHead``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import CGConv, global_mean_pool
from torch_geometric.nn.models.schnet import GaussianSmearing, InteractionBlock, ShiftedSoftplus

TEMPERATURE_SCALE_K = 1000.0
MAX_Z = 100


def temperature_features(temperature_K: torch.Tensor) -> torch.Tensor:
    """(T/1000 K, sqrt(T/1000 K)): σᴬ grows like sqrt(T) and frequency shifts like T classically."""
    t = temperature_K.reshape(-1, 1).float() / TEMPERATURE_SCALE_K
    return torch.cat([t, t.clamp_min(0).sqrt()], dim=1)


class TemperatureHead(nn.Module):
    """MLP readout on [pooled graph features, temperature features]."""

    def __init__(self, in_features: int, hidden: int, temperature_input: bool = True):
        super().__init__()
        self.temperature_input = temperature_input
        width = in_features + (2 if temperature_input else 0)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor, temperature_K: torch.Tensor) -> torch.Tensor:
        if self.temperature_input:
            pooled = torch.cat([pooled, temperature_features(temperature_K)], dim=1)
        return self.mlp(pooled).reshape(-1)


class CGCNN(nn.Module):
    """Crystal graph convolutional network (Xie & Grossman, PRL 120, 145301, 2018) with a temperature head."""

    def __init__(self, hidden: int = 64, n_layers: int = 3, n_gaussians: int = 40, cutoff_A: float = 5.0,
                 temperature_input: bool = True):
        super().__init__()
        self.cutoff_A = cutoff_A
        self.embedding = nn.Embedding(MAX_Z + 1, hidden)
        self.expansion = GaussianSmearing(0.0, cutoff_A, n_gaussians)
        self.convs = nn.ModuleList(CGConv(hidden, dim=n_gaussians, batch_norm=True) for _ in range(n_layers))
        self.head = TemperatureHead(hidden, hidden, temperature_input)

    def forward(self, batch) -> torch.Tensor:
        keep = batch.edge_distance <= self.cutoff_A  # graphs may be built with a larger cutoff
        edge_index, distance = batch.edge_index[:, keep], batch.edge_distance[keep]
        h = self.embedding(batch.z)
        edge_attr = self.expansion(distance)
        for conv in self.convs:
            h = nn.functional.softplus(conv(h, edge_index, edge_attr))
        return self.head(global_mean_pool(h, batch.batch), batch.temperature_K)


class SchNet(nn.Module):
    """SchNet (Schütt et al., J. Chem. Phys. 148, 241722, 2018) on periodic graphs with a temperature head.

    Reuses torch-geometric's interaction blocks; the edges come from the periodic neighbour list
    rather than from SchNet's own non-periodic radius graph.
    """

    def __init__(self, hidden: int = 64, n_filters: int = 64, n_interactions: int = 3, n_gaussians: int = 50,
                 cutoff_A: float = 5.0, temperature_input: bool = True):
        super().__init__()
        self.cutoff_A = cutoff_A
        self.embedding = nn.Embedding(MAX_Z + 1, hidden)
        self.expansion = GaussianSmearing(0.0, cutoff_A, n_gaussians)
        self.interactions = nn.ModuleList(
            InteractionBlock(hidden, n_gaussians, n_filters, cutoff_A) for _ in range(n_interactions)
        )
        self.atomwise = nn.Sequential(nn.Linear(hidden, hidden), ShiftedSoftplus(), nn.Linear(hidden, hidden))
        self.head = TemperatureHead(hidden, hidden, temperature_input)

    def forward(self, batch) -> torch.Tensor:
        keep = batch.edge_distance <= self.cutoff_A
        edge_index, distance = batch.edge_index[:, keep], batch.edge_distance[keep]
        h = self.embedding(batch.z)
        edge_attr = self.expansion(distance)
        for interaction in self.interactions:
            h = h + interaction(h, edge_index, distance, edge_attr)
        return self.head(global_mean_pool(self.atomwise(h), batch.batch), batch.temperature_K)


class MatglNet(nn.Module):
    """A matgl M3GNet or TensorNet encoder, mean-pooled node features, and a temperature head.

    Args:
        architecture: ``M3GNet`` or ``TensorNet`` (from scratch), ignored with ``init_from_potential``.
        init_from_potential: name or path of a matgl potential (``thermobench.potentials.load_potential``,
            which applies :mod:`thermobench.matgl_compat`); its network becomes the encoder, so training
            starts from what the potential learned about bonding.
        freeze_encoder: train only the head.
        encoder_kwargs: passed to the matgl model built from scratch (e.g. ``nblocks``, ``units``).
    """

    def __init__(self, architecture: str = "M3GNet", init_from_potential: str | None = None,
                 freeze_encoder: bool = False, hidden: int = 64, cutoff_A: float = 5.0,
                 temperature_input: bool = True, encoder_kwargs: dict | None = None):
        super().__init__()
        if init_from_potential:
            from thermobench.potentials import load_potential

            encoder = load_potential(init_from_potential).model.train()
        else:
            from matgl.models import M3GNet, TensorNet

            builders = {"M3GNet": M3GNet, "TensorNet": TensorNet}
            if architecture not in builders:
                raise ValueError(f"architecture {architecture!r} unknown; choose one of {sorted(builders)}")
            encoder = builders[architecture](is_intensive=False, cutoff=cutoff_A, **(encoder_kwargs or {}))
        if encoder.cutoff > cutoff_A + 1e-6:
            raise ValueError(
                f"the encoder's cutoff ({encoder.cutoff} A) exceeds the graphs' ({cutoff_A} A): set data.cutoff_A >= "
                f"{encoder.cutoff}"
            )
        self.encoder = encoder
        self.encoder_cutoff_A = float(encoder.cutoff)
        self.architecture = type(encoder).__name__
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        lookup = torch.full((MAX_Z + 1,), -1, dtype=torch.long)
        from ase.data import atomic_numbers

        for index, symbol in enumerate(encoder.element_types):
            lookup[atomic_numbers[symbol]] = index
        self.register_buffer("node_type_of_z", lookup, persistent=False)
        width = self._node_width()
        self.head = TemperatureHead(width, hidden, temperature_input)

    def _node_width(self) -> int:
        if self.architecture == "TensorNet":
            return int(self.encoder.units)
        return int(self.encoder.embedding.layer_node_embedding.embedding_dim)  # M3GNet keeps this width

    def forward(self, batch) -> torch.Tensor:
        from torch_geometric.data import Data

        node_type = self.node_type_of_z[batch.z]
        if (node_type < 0).any():
            missing = sorted(set(batch.z[node_type < 0].tolist()))
            raise ValueError(f"atomic numbers {missing} are not among the encoder's element types")
        keep = batch.edge_distance <= self.encoder_cutoff_A
        g = Data(node_type=node_type, pos=batch.pos, edge_index=batch.edge_index[:, keep],
                 pbc_offshift=batch.pbc_offshift[keep], batch=batch.batch, num_graphs=batch.num_graphs)
        if self.architecture == "TensorNet":
            nodes = self.encoder.forward_features(g=g)["readout"]
        else:
            self.encoder(g)
            nodes = self.encoder.feature_dict[f"gc_{self.encoder.n_blocks}"]["node_feat"]
        return self.head(global_mean_pool(nodes, batch.batch), batch.temperature_K)
