"""Fine-tune a matgl potential on DFT phonon data (phonopy displacement datasets).

    python -m generate.potential.finetune [data_dir=DIR] [potential=m3gnet_mp|potential.name=DIR] [epochs=..] [exclude=[NaCl]]

Every displaced supercell of every dataset under ``data_dir`` is a training sample with its DFT
forces; the perfect supercell enters with zero forces (the DFT equilibrium). The force loss has two
parts: the force *change* between a displaced supercell and its perfect supercell against the DFT
forces (this is what fixes the force constants, independently of where the potential puts its
equilibrium), and the forces on the perfect supercell against zero (the equilibrium geometry).
Supercell energies are used when a dataset has them; otherwise the energy is anchored to the base
model on the perfect supercells, so the energy scale cannot drift. Optional replay structures
(rattled built-in crystals labelled by the base model) guard against forgetting.

Writes a matgl model directory loadable by ``load_potential`` (with a model card) and
``finetune_report.json`` with the loss history and the drift on the parity structures.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms


@dataclass
class Sample:
    """One supercell with its labels; ``energy_eV`` is None when the dataset has no energies."""

    material: str
    atoms: Atoms
    forces_eV_A: np.ndarray
    energy_eV: float | None = None
    energy_is_anchor: bool = False  # label from the base model, not DFT
    force_weight: float = 1.0  # 1 / mean squared DFT force of the sample's material
    # further supercells of the same material and their coefficients: the label is then the combination
    # ΔF(atoms) + Σ c·ΔF(term) of force changes relative to the perfect supercell (generate/potential/distillation.py)
    terms: tuple = ()
    guard: str | None = None  # the anharmonic guard's combination, if the sample is one


@dataclass
class ReadReport:
    samples: list[Sample] = field(default_factory=list)
    materials: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def dataset_samples(path: Path, element_types) -> list[Sample]:
    """Training samples of one dataset (any layout); raises ``DatasetError`` naming what is wrong with it."""
    from generate.harmonic.dft_data import DatasetError, dataset_name, displaced_forces, load_phonon_dataset
    from generate.harmonic.phonons import to_ase_atoms

    name = dataset_name(path)
    phonon = load_phonon_dataset(path)
    unknown = sorted(set(phonon.supercell.symbols) - set(element_types))
    if unknown:
        raise DatasetError(f"{name}: element(s) {', '.join(unknown)} not covered by the base model")
    supercells, forces = displaced_forces(phonon)
    dataset = phonon.dataset
    if "first_atoms" in dataset:
        energies = [d.get("supercell_energy") for d in dataset["first_atoms"]]
    else:
        energies = list(dataset.get("supercell_energies", [None] * len(forces)))
    samples = [
        Sample(name, to_ase_atoms(cell), force, None if energy is None else float(energy))
        for cell, force, energy in zip(supercells, forces, energies, strict=True)
    ]
    perfect = to_ase_atoms(phonon.supercell)
    samples.append(Sample(name, perfect, np.zeros((len(perfect), 3))))
    return samples


def read_phonon_datasets(root: Path, element_types, exclude=()) -> ReadReport:
    """All phonopy datasets under ``root`` (any depth, any layout); broken ones are named and skipped."""
    from generate.harmonic.dft_data import DatasetError, dataset_name, find_datasets

    report = ReadReport()
    for path in find_datasets(Path(root)):
        name = dataset_name(path)
        if name in exclude:
            continue
        try:
            report.samples.extend(dataset_samples(path, element_types))
            report.materials.append(name)
        except (DatasetError, ValueError, KeyError, OSError) as error:
            report.skipped[name] = str(error)
            print(f"skipped {name}: {error}", file=sys.stderr)
    return report


def weight_by_force_scale(samples: list[Sample]) -> None:
    """Weight each material by its inverse mean squared force, so the loss is a relative force error.

    Phonon forces from 0.01 A displacements are ~0.01 eV/A in soft ionic crystals and ~1 eV/A in hard
    oxides; unweighted, the hard materials alone would set the loss.
    """
    by_material: dict[str, list[np.ndarray]] = {}
    for sample in samples:
        if np.any(sample.forces_eV_A):
            by_material.setdefault(sample.material, []).append(sample.forces_eV_A)
    for sample in samples:
        forces = by_material.get(sample.material)
        if forces:
            sample.force_weight = 1.0 / float(np.mean(np.concatenate(forces) ** 2))


def replay_samples(potential, count: int, seed: int) -> list[Sample]:
    """Rattled 2x2x2 supercells of built-in crystals labelled by the base model (against forgetting)."""
    from thermobench.potentials import evaluate_batch
    from thermobench.structures import BUILTIN_CRYSTALS, builtin_structure

    rng = np.random.default_rng(seed)
    names = sorted(BUILTIN_CRYSTALS)
    structures = []
    for k in range(count):
        atoms = builtin_structure(names[k % len(names)]).repeat(2)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        structures.append(atoms)
    if not structures:
        return []
    labels = evaluate_batch(potential, structures)
    return [
        Sample("replay", atoms, forces, float(energy), energy_is_anchor=True)
        for atoms, forces, energy in zip(structures, labels.forces_eV_A, labels.energies_eV, strict=True)
    ]


def anchor_energies(potential, samples: list[Sample]) -> None:
    """Label perfect supercells without a DFT energy with the base model's energy."""
    from thermobench.potentials import evaluate_batch

    unlabeled = [s for s in samples if s.energy_eV is None and not np.any(s.forces_eV_A)]
    if unlabeled:
        energies = evaluate_batch(potential, [s.atoms for s in unlabeled]).energies_eV
        for sample, energy in zip(unlabeled, energies, strict=True):
            sample.energy_eV, sample.energy_is_anchor = float(energy), True


def force_errors(potential, samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Per material: MAE (eV/A) of the force change on displacement, and of the equilibrium forces."""
    from thermobench.potentials import evaluate_batch

    phonon_samples = [s for s in samples if s.material != "replay"]
    predicted = evaluate_batch(potential, [s.atoms for s in phonon_samples]).forces_eV_A
    perfect = {s.material: f for s, f in zip(phonon_samples, predicted, strict=True) if not np.any(s.forces_eV_A)}
    change: dict[str, list[float]] = {}
    for sample, forces in zip(phonon_samples, predicted, strict=True):
        if np.any(sample.forces_eV_A):
            error = np.abs(forces - perfect[sample.material] - sample.forces_eV_A).mean()
            change.setdefault(sample.material, []).append(float(error))
    return {
        material: {
            "force_change_mae_eV_A": float(np.mean(change[material])),
            "equilibrium_force_mae_eV_A": float(np.abs(perfect[material]).mean()),
        }
        for material in change
    }


def parity_drift(base, tuned, parity_dir: Path, relax_settings) -> dict:
    """Energy, force and lattice-constant changes of the fine-tuned model on the parity structures."""
    from ase.io import read

    from generate.harmonic.relax import relax
    from thermobench.potentials import ThermobenchCalculator, evaluate_batch

    own = Path(parity_dir) / f"{base.thermobench_info['name']}.extxyz"
    files = [own] if own.is_file() else sorted(Path(parity_dir).glob("*.extxyz"))
    if not files:
        return {"available": False, "reason": f"no parity structures in {parity_dir}"}
    frames = read(files[0], ":")
    before, after = evaluate_batch(base, frames), evaluate_batch(tuned, frames)
    energy_drift = [abs(a - b) / len(f) for a, b, f in zip(after.energies_eV, before.energies_eV, frames, strict=True)]
    force_drift = [float(np.abs(a - b).max()) for a, b in zip(after.forces_eV_A, before.forces_eV_A, strict=True)]
    lattice = {}
    base_calc, tuned_calc = ThermobenchCalculator(base, stress_unit="eV/A3"), ThermobenchCalculator(tuned, stress_unit="eV/A3")
    for frame in frames:
        label = frame.info.get("label", "")
        if "rattled" in label or "222" in label:
            continue  # only the unperturbed unit cells have a lattice constant to compare
        atoms = Atoms(frame.get_chemical_symbols(), positions=frame.positions, cell=frame.cell, pbc=True)
        a0 = relax(atoms, base_calc, relax_settings).atoms.get_volume() ** (1 / 3)
        a1 = relax(atoms, tuned_calc, relax_settings).atoms.get_volume() ** (1 / 3)
        lattice[label] = 100 * (a1 / a0 - 1)
    return {
        "available": True,
        "structures": len(frames),
        "energy_abs_change_eV_atom_mean": float(np.mean(energy_drift)),
        "energy_abs_change_eV_atom_max": float(np.max(energy_drift)),
        "force_abs_change_eV_A_max": float(np.max(force_drift)),
        "lattice_constant_change_percent": lattice,
        "lattice_constant_change_percent_max_abs": float(max(map(abs, lattice.values()), default=0.0)),
    }


def _batch(samples: list[Sample], converter, device):
    """One batched graph with labels.

    Every label row is a linear combination of the batch's predicted atomic forces, given as (row, atom,
    coefficient) triples: a displaced supercell (and each of its ``terms``) enters through its force change
    relative to its material's perfect supercell in the batch, everything else through its forces. ``displaced``
    marks the rows of the first kind. A supercell shared by several samples is one graph.
    """
    import matgl
    import torch
    from torch_geometric.data import Batch

    structures, graph_of = [], {}
    for sample in samples:
        for atoms in (sample.atoms, *(t for t, _ in sample.terms)):
            if id(atoms) not in graph_of:
                graph_of[id(atoms)] = len(structures)
                structures.append(atoms)
    offsets = np.cumsum([0] + [len(s) for s in structures])
    perfect = {s.material: graph_of[id(s.atoms)] for s in samples if s.material != "replay" and not np.any(s.forces_eV_A)}
    rows, columns, coefficients, displaced = [], [], [], []
    for sample in samples:
        n, first = len(sample.atoms), len(displaced)
        atom = np.arange(n)
        p = perfect.get(sample.material) if np.any(sample.forces_eV_A) and sample.material != "replay" else None
        terms = [(sample.atoms, 1.0), *sample.terms] if p is not None else [(sample.atoms, 1.0)]
        for atoms, coefficient in terms:
            rows.append(first + atom), columns.append(offsets[graph_of[id(atoms)]] + atom), coefficients.append(np.full(n, coefficient))
        if p is not None:
            rows.append(first + atom), columns.append(offsets[p] + atom), coefficients.append(np.full(n, -sum(c for _, c in terms)))
        displaced += [p is not None] * n
    energies = np.zeros(len(structures))
    has_energy = np.zeros(len(structures), bool)
    for sample in samples:
        if sample.energy_eV is not None:
            energies[graph_of[id(sample.atoms)]], has_energy[graph_of[id(sample.atoms)]] = sample.energy_eV, True
    graphs, lattices, states = [], [], []
    for atoms in structures:
        graph, lattice, state = converter.get_graph(atoms)
        graphs.append(graph)
        lattices.append(torch.as_tensor(np.asarray(lattice), dtype=matgl.float_th).reshape(3, 3))
        states.append(np.asarray(state, dtype=float).reshape(-1))
    as_float = dict(dtype=matgl.float_th)
    labels = (
        torch.as_tensor(np.concatenate([s.forces_eV_A for s in samples]), **as_float),
        torch.as_tensor(np.concatenate([np.full(len(s.atoms), s.force_weight) for s in samples]), **as_float),
        torch.as_tensor(displaced),
        torch.as_tensor(np.concatenate(rows)),
        torch.as_tensor(np.concatenate(columns)),
        torch.as_tensor(np.concatenate(coefficients), **as_float),
        torch.as_tensor(energies, **as_float),
        torch.as_tensor(has_energy),
        torch.as_tensor([len(s) for s in structures], **as_float),
    )
    batch = Batch.from_data_list(graphs)
    state = torch.as_tensor(np.stack(states), **as_float)
    return tuple(x.to(device) for x in (batch, torch.stack(lattices), state, *labels))


def material_batches(samples: list[Sample], batch_size: int) -> list[list[Sample]]:
    """All supercells of one material in one batch (so force changes are taken within it); replay in chunks."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.material, []).append(sample)
    replay = groups.pop("replay", [])
    return list(groups.values()) + [replay[i : i + batch_size] for i in range(0, len(replay), batch_size)]


def loss_terms(potential, batch, config):
    """``(loss, force_mse, energy_mse)`` of one labelled batch (see ``_batch``)."""
    import torch

    graph, lattice, state, forces, row_weights, displaced, rows, columns, coefficients, energies, mask, n_atoms = batch
    energy, force = potential(graph, lattice, state)[:2]
    predicted = torch.zeros_like(forces).index_add(0, rows, coefficients[:, None] * force[columns])
    weights = row_weights * torch.where(displaced, config.force_weight, config.equilibrium_weight)
    force_loss = (weights[:, None] * (predicted - forces) ** 2).mean()
    energy_loss = (
        torch.mean(((energy - energies) / n_atoms)[mask] ** 2) if bool(mask.any()) else torch.zeros((), device=force.device)
    )
    return force_loss + config.energy_weight * energy_loss, force_loss, energy_loss


def make_module(potential, config):
    """The LightningModule: force (and energy-per-atom) MSE on the wrapped matgl ``Potential``."""
    import lightning.pytorch as pl
    import torch

    class PhononFineTune(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.potential = potential

        def training_step(self, batch, batch_idx):
            loss, force_loss, energy_loss = loss_terms(self.potential, batch, config)
            self.log_dict(
                {"train/loss": loss, "train/force_mse": force_loss, "train/energy_mse": energy_loss},
                batch_size=int(batch[1].shape[0]), on_epoch=True, on_step=False,
            )
            return loss

        def configure_optimizers(self):
            parameters = [p for p in self.potential.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(parameters, lr=config.lr)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs), eta_min=config.lr * 0.05)
            return [optimizer], [scheduler]

    return PhononFineTune()


def freeze(potential, prefixes) -> list[str]:
    """Freeze parameters whose names start with any prefix; returns the frozen names."""
    frozen = []
    for name, parameter in potential.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def finetune(config) -> dict:
    """Fine-tune ``config.base_potential`` on the datasets; write the model and its report."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger
    from matgl.ext.ase import Atoms2Graph

    from generate.harmonic.relax import RelaxSettings
    from thermobench.matgl_compat import detect_convention
    from thermobench.potentials import describe, load_potential, resolve_model_dir, write_convention_metadata

    start = time.perf_counter()
    pl.seed_everything(config.seed, workers=True)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = load_potential(config.base_potential)
    tuned = load_potential(config.base_potential)
    element_types = tuned.model.element_types
    data = read_phonon_datasets(Path(config.data_dir), element_types, exclude=tuple(config.exclude))
    if not data.samples:
        raise ValueError(f"no usable phonon datasets under {config.data_dir} (skipped: {data.skipped})")
    anchor_energies(base, data.samples)
    replay = replay_samples(base, config.replay_structures, config.seed)
    samples = data.samples + replay
    weight_by_force_scale(samples)
    errors_before = force_errors(base, data.samples)

    frozen = freeze(tuned, list(config.frozen_prefixes))
    converter = Atoms2Graph(element_types=element_types, cutoff=tuned.model.cutoff)
    batches = [_batch(group, converter, "cpu") for group in material_batches(samples, config.batch_size)]
    rng = np.random.default_rng(config.seed)

    class ShuffledBatches(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from (batches[i] for i in rng.permutation(len(batches)))

    loader = torch.utils.data.DataLoader(ShuffledBatches(), batch_size=None)
    module = make_module(tuned, config)
    tuned.train()
    trainer = pl.Trainer(
        max_epochs=config.epochs, accelerator=config.accelerator, devices=1, logger=CSVLogger(out, name="logs"),
        enable_checkpointing=False, enable_progress_bar=config.progress_bar, enable_model_summary=False,
        deterministic=True, gradient_clip_val=config.gradient_clip,
    )
    fit_start = time.perf_counter()
    trainer.fit(module, loader)
    fit_time = time.perf_counter() - fit_start
    tuned = tuned.cpu().eval()

    errors_after = force_errors(tuned, data.samples)
    model_dir = out / "model"
    tuned.save(model_dir)
    write_convention_metadata(model_dir, detect_convention(resolve_model_dir(config.base_potential)))
    drift = parity_drift(base, tuned, Path(config.parity_dir), RelaxSettings(fmax_eV_A=1e-3, max_steps=300)) if config.parity_dir else {"available": False}
    report = {
        "base_potential": describe(base),
        "materials": data.materials,
        "skipped": data.skipped,
        "n_samples": len(data.samples),
        "n_replay": len(replay),
        "energies": "DFT supercell energies" if any(s.energy_eV is not None and not s.energy_is_anchor for s in data.samples) else "none in the data: force loss, energy anchored to the base model on perfect supercells",
        "frozen_parameters": len(frozen),
        "hyperparameters": {k: getattr(config, k) for k in ("lr", "epochs", "batch_size", "force_weight", "equilibrium_weight", "energy_weight", "seed", "replay_structures", "gradient_clip")} | {"frozen_prefixes": list(config.frozen_prefixes), "exclude": list(config.exclude)},
        "force_errors_before": errors_before,
        "force_errors_after": errors_after,
        "parity_drift": drift,
        "fit_time_s": fit_time,
        "wall_time_s": time.perf_counter() - start,
    }
    (out / "finetune_report.json").write_text(json.dumps(report, indent=2, default=str))
    (model_dir / "README.md").write_text(model_card(report, config))
    return report


def drift_sentence(drift: dict) -> str:
    """One line of a model card on the parity structures' drift (``parity_drift``'s result)."""
    if not drift.get("available"):
        return "Parity drift not computed."
    return (f"Parity structures ({drift['structures']}): mean |ΔE| {1000 * drift['energy_abs_change_eV_atom_mean']:.1f} meV/atom, "
            f"max |ΔF| {drift['force_abs_change_eV_A_max']:.3f} eV/Å, max lattice-constant change "
            f"{drift['lattice_constant_change_percent_max_abs']:.2f} %.")


def model_card(report: dict, config) -> str:
    base = report["base_potential"]
    before, after = report["force_errors_before"], report["force_errors_after"]
    rows = "\n".join(
        f"| {m} | {before[m]['force_change_mae_eV_A']:.4f} | {after[m]['force_change_mae_eV_A']:.4f} | "
        f"{before[m]['equilibrium_force_mae_eV_A']:.4f} | {after[m]['equilibrium_force_mae_eV_A']:.4f} |"
        for m in before
    )
    drift_text = drift_sentence(report["parity_drift"])
    return f"""# {Path(config.out_dir).name}: {base.get('name')} fine-tuned on DFT phonon data

Base checkpoint: `{base.get('name')}` (sha256 `{base.get('sha256')}`), message-passing convention
`{base.get('convention')}` (recorded in `model.json` metadata), matgl {base.get('matgl_version')}.

Training data: displaced supercells of {', '.join(report['materials'])} from `{config.data_dir}`
({report['n_samples']} supercells, perfect supercells with zero forces) and {report['n_replay']} replay structures
labelled by the base model. Energies: {report['energies']}.

Hyperparameters: `{json.dumps(report['hyperparameters'])}`

| material | force-change MAE before (eV/Å) | after | equilibrium force MAE before (eV/Å) | after |
|---|---:|---:|---:|---:|
{rows}

{drift_text}

Load with `thermobench.potentials.load_potential("<this directory>")`.
"""


def main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path="../../conf", config_name="finetune")
    def run(cfg) -> None:
        if cfg.source.name == "phonondb":
            from generate.potential.finetune_phonondb import finetune_at_scale

            report = finetune_at_scale(cfg)
            print(json.dumps({k: report[k] for k in ("data", "best", "wall_time_s")}, indent=1, default=str))
            return
        if cfg.source.name != "directory":
            raise ValueError(f"source.name must be 'directory' or 'phonondb', not {cfg.source.name!r}")
        report = finetune(cfg)
        print(json.dumps({k: report[k] for k in ("materials", "skipped", "force_errors_before", "force_errors_after")}, indent=1))
        drift = report["parity_drift"]
        if drift.get("available"):
            print(f"max lattice-constant change on parity structures: {drift['lattice_constant_change_percent_max_abs']:.3f} %")
        print(f"model written to {Path(cfg.out_dir) / 'model'} in {report['wall_time_s']:.0f} s")

    run()


if __name__ == "__main__":
    main()
