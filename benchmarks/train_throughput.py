"""Training throughput of the graph networks: graphs per second (forward + backward + optimizer step).

    python benchmarks/train_throughput.py [--device cpu|cuda] [--batch-size 32] [--steps 20]

Structures: the embedded thermobench-mini training rows when the dataset is present, else the
built-in crystals of thermobench.families (their primitive cells; throughput does not depend on
the labels, which are then set to zero). Networks use the committed model configs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def graphs(cutoff_A: float) -> tuple[list, str]:
    from thermobench.dataset import EMBEDDED
    from thermobench.graphs import build_graphs, structure_graph

    if (EMBEDDED["thermobench-mini"] / "README.md").is_file():
        from thermobench.datamodule import load_frame

        frame = load_frame("thermobench-mini", "random", "train")
        by_material = build_graphs(frame.to_dict("records"), cutoff_A)
        items = []
        for material, temperature in zip(frame["material_id"], frame["temperature_K"]):
            graph = by_material[material].clone()
            graph.y = torch.zeros(1)  # throughput does not depend on the label
            graph.temperature_K = torch.tensor([float(temperature)])
            items.append(graph)
        return items, f"thermobench-mini random/train ({len(frame)} rows)"
    from thermobench.families import builtin_materials

    items = []
    for material in builtin_materials():
        graph = structure_graph(material.atoms(), cutoff_A)
        graph.y = torch.zeros(1)
        graph.temperature_K = torch.tensor([300.0])
        items.append(graph)
    return items, f"{len(items)} built-in crystals (prototype cells)"


def net_from_config(name: str, cutoff_A: float):
    import hydra

    config = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())["net"]
    config.update(cutoff_A=cutoff_A, temperature_input=True)
    return hydra.utils.instantiate(config)


def measure(name: str, items: list, batch_size: int, steps: int, device: str) -> float:
    from torch_geometric.loader import DataLoader

    torch.manual_seed(0)
    net = net_from_config(name, 5.0).to(device)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    loader = DataLoader(items, batch_size=batch_size, shuffle=True)
    batches = [b.to(device) for _, b in zip(range(steps + 2), iter(_cycle(loader)))]

    def step(batch):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net(batch), batch.y)
        loss.backward()
        optimizer.step()

    for batch in batches[:2]:  # warm-up
        step(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = 0
    for batch in batches[2:]:
        step(batch)
        n += batch.num_graphs
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def _cycle(loader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["cgcnn", "schnet", "m3gnet"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (train.py's default is 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    items, source = graphs(5.0)
    atoms = sum(g.num_nodes for g in items) / len(items)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {source}, {atoms:.1f} atoms/graph on average, batch {args.batch_size}, {args.steps} steps, {name}")
    print("| model | graphs/s (train step) |")
    print("|---|---:|")
    for model in args.models:
        print(f"| {model} | {measure(model, items, args.batch_size, args.steps, args.device):.1f} |", flush=True)


if __name__ == "__main__":
    main()
