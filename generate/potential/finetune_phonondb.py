"""Fine-tune at scale on the Kyoto phonon database: streamed, step-resumable, selected on validation.

    python -m generate.potential.finetune source=phonondb source.phonondb_dir=../phononDB/phonon_db_tarred \\
        out_dir=outputs/finetune/phonondb max_steps=4000

phonondb materials carry ~25 displaced supercells each, so a full epoch over thousands of materials
costs core-days on CPU. Each step therefore draws ``materials_per_step`` training materials (a fresh
permutation of the training split per pass) and, of each, its perfect supercell and
``displacements_per_step`` of its displaced supercells at random; the loss is that of
``generate.potential.finetune`` (DFT force change relative to the perfect supercell, weighted by the material's
inverse mean squared DFT force; zero forces on the perfect supercell; the energy of the perfect
supercell anchored to the base model) plus a replay batch every ``replay_every`` steps. With ``distill_weight`` > 0
each material also brings the anharmonic guard (``generate/potential/distillation.py``): per ``distill_pairs`` draw
of DFT's phonons at ``distill_temperature_K``, the cubic and quartic force combinations of four thermal supercells,
labelled by the base model, which the 0.01 Å data alone leave free to drift.

Every ``validate_every`` steps the relative force-change error on a fixed subset of the validation
split is measured; the best model so far is saved (``best/``). The state (model, optimizer, step,
validation history) is written to ``checkpoint.pt`` at each validation: rerunning the same command
resumes from it. The order of materials depends only on the seed and the step, so a resumed run
sees what an uninterrupted one would. The test split is never read here.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from generate.harmonic.dft_data import DatasetError, displaced_forces, load_phonon_dataset
from generate.potential.finetune import (
    Sample,
    _batch,
    drift_sentence,
    freeze,
    loss_terms,
    replay_samples,
    weight_by_force_scale,
)


class MaterialCache:
    """Displaced supercells and DFT forces of phonondb materials, read on first use."""

    def __init__(self, phonondb_dir: Path, element_types, thermal=None):
        from thermobench.phonondb import archive_path

        self._archive_path = archive_path
        self.phonondb_dir = Path(phonondb_dir)
        self.element_types = set(element_types)
        self.thermal = thermal  # (phonon, material_id) -> the guard's Samples or None; None: no guard
        self.data: dict[str, tuple] = {}
        self.skipped: dict[str, str] = {}

    def get(self, entry):
        """``(perfect Atoms, [displaced Atoms], forces (n, natom, 3), weight, thermal)`` or None if unusable;
        ``thermal``: the anharmonic guard's samples, or None."""
        from generate.harmonic.phonons import to_ase_atoms

        key = entry.material_id
        if key in self.skipped:
            return None
        if key not in self.data:
            try:
                unknown = sorted(set(entry.elements) - self.element_types)
                if unknown:
                    raise DatasetError(f"{key}: element(s) {', '.join(unknown)} not covered by the base model")
                phonon = load_phonon_dataset(self._archive_path(self.phonondb_dir, entry))
                cells, forces = displaced_forces(phonon)
                weight = 1.0 / float(np.mean(forces**2))
                thermal = None if self.thermal is None else self.thermal(phonon, key)
                self.data[key] = (to_ase_atoms(phonon.supercell), [to_ase_atoms(c) for c in cells], forces, weight, thermal)
            except (DatasetError, FileNotFoundError, ValueError) as error:
                self.skipped[key] = str(error)
                print(f"skipped {error}", file=sys.stderr, flush=True)
                return None
        return self.data[key]


def material_samples(cache: MaterialCache, entry, displacements: int, rng, anchor, distill_weight: float = 0.0) -> list[Sample]:
    """The perfect supercell, ``displacements`` random displaced supercells of one material and its guard samples
    (each weighted by ``distill_weight`` over its own mean squared label: its relative error counts)."""
    got = cache.get(entry)
    if got is None:
        return []
    perfect, cells, forces, weight, thermal = got
    chosen = rng.choice(len(cells), size=min(displacements, len(cells)), replace=False)
    samples = [Sample(entry.material_id, cells[k], forces[k], force_weight=weight) for k in sorted(chosen)]
    if thermal is not None and distill_weight > 0:
        samples += [replace(guard, force_weight=distill_weight / float(np.mean(guard.forces_eV_A**2))) for guard in thermal]
    energy = anchor(entry.material_id, perfect)
    samples.append(Sample(entry.material_id, perfect, np.zeros((len(perfect), 3)), energy, True, weight))
    return samples


def step_materials(entries: list, step: int, per_step: int, seed: int) -> list:
    """The training materials of ``step``: consecutive slices of a per-pass permutation (resumable)."""
    per_pass = max(1, len(entries) // per_step)
    epoch, position = divmod(step, per_pass)
    order = np.random.default_rng([seed, epoch]).permutation(len(entries))
    return [entries[i] for i in order[position * per_step : (position + 1) * per_step]]


def validation_error(potential, cache, entries, displacements: int, seed: int) -> dict:
    """Mean over materials of the relative force-change error |ΔF_pred - ΔF_DFT| / rms(ΔF_DFT), and where the
    cache has the anharmonic guard the same for each of its combinations against the base model's values
    (``guard_cubic_mae``, ``guard_quartic_mae``: how far the model's anharmonicity has moved from the base's)."""
    from thermobench.potentials import evaluate_batch

    errors, guard_errors = {}, {}
    for index, entry in enumerate(entries):
        got = cache.get(entry)
        if got is None:
            continue
        perfect, cells, forces, _, guards = got
        rng = np.random.default_rng([seed, index])
        chosen = sorted(rng.choice(len(cells), size=min(displacements, len(cells)), replace=False))
        structures = {id(a): a for a in [perfect] + [cells[k] for k in chosen]}
        for guard in guards or ():
            structures |= {id(a): a for a in (guard.atoms, *(t for t, _ in guard.terms))}
        predicted = dict(zip(structures, evaluate_batch(potential, list(structures.values())).forces_eV_A, strict=True))

        def change(atoms):
            return predicted[id(atoms)] - predicted[id(perfect)]

        errors[entry.material_id] = relative_mae(np.array([change(cells[k]) for k in chosen]), forces[chosen])
        for guard in guards or ():
            value = change(guard.atoms) + sum(c * change(atoms) for atoms, c in guard.terms)
            guard_errors.setdefault(guard.guard, {}).setdefault(entry.material_id, []).append(relative_mae(value, guard.forces_eV_A))
    out = {"relative_force_change_mae": float(np.mean(list(errors.values()))), "n_materials": len(errors)}
    for name, by_material in guard_errors.items():
        out[f"guard_{name}_mae"] = float(np.mean([np.mean(e) for e in by_material.values()]))
    return out


def relative_mae(predicted: np.ndarray, target: np.ndarray) -> float:
    return float(np.abs(predicted - target).mean() / np.sqrt(np.mean(target**2)))


def finetune_at_scale(config) -> dict:
    import torch
    from matgl.ext.ase import Atoms2Graph

    from thermobench.matgl_compat import detect_convention
    from thermobench.phonondb import MIRROR_COMMIT, present_ids, read_index, select
    from thermobench.potentials import (
        describe,
        evaluate_batch,
        load_potential,
        resolve_model_dir,
        write_convention_metadata,
    )

    source = config.source
    torch.manual_seed(config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = load_potential(config.base_potential)
    tuned = load_potential(config.base_potential)
    element_types = tuned.model.element_types
    present = present_ids(Path(source.phonondb_dir))  # a clone, or a subset of its archives
    index = [e for e in read_index() if e.material_id in present]
    elements = set(element_types)
    filters = dict(max_supercell_atoms=source.max_supercell_atoms, elements=elements)
    train = select(index, "train", **filters)
    if source.max_train_materials:
        train = train[: source.max_train_materials]
    validation = select(index, "validation", **filters)
    validation = [validation[i] for i in np.random.default_rng(config.seed).permutation(len(validation))[: source.validation_materials]]
    thermal = None
    if config.distill_weight > 0:
        from generate.potential.distillation import guard_samples

        def thermal(phonon, material_id):  # a material's own stream: the same supercells whenever it is read
            return guard_samples(base, phonon, material_id, config.distill_temperature_K, config.distill_pairs,
                                            np.random.default_rng([config.seed, zlib.crc32(material_id.encode())]))
    cache = MaterialCache(Path(source.phonondb_dir), element_types, thermal)
    anchors: dict[str, float] = {}

    def anchor(material_id, atoms):
        if material_id not in anchors:
            anchors[material_id] = float(evaluate_batch(base, [atoms]).energies_eV[0])
        return anchors[material_id]

    frozen = freeze(tuned, list(config.frozen_prefixes))
    parameters = [p for p in tuned.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    warmup = max(1, min(200, config.max_steps // 20))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(s, config.max_steps) / config.max_steps))),
    )
    state = {"step": 0, "history": [], "best": None, "wall_s": 0.0, "anchors": {}}
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        tuned.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        state = saved["state"]
        anchors.update(state.get("anchors", {}))
        print(f"resumed at step {state['step']} from {checkpoint}", file=sys.stderr, flush=True)
    replay = replay_samples(base, config.replay_structures, config.seed)
    weight_by_force_scale(replay)
    converter = Atoms2Graph(element_types=element_types, cutoff=tuned.model.cutoff)

    def save(best: bool) -> None:
        tuned.eval()
        if best:
            tuned.save(out / "best")
            write_convention_metadata(out / "best", detect_convention(resolve_model_dir(config.base_potential)))
        state["anchors"] = anchors
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"model": tuned.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "state": state}, tmp)
        tmp.replace(checkpoint)
        tuned.train()

    if state["best"] is None:
        error = validation_error(base, cache, validation, source.validation_displacements, config.seed)
        state["history"].append({"step": 0, **error})
        state["best"] = {"step": 0, **error}
        print(f"step 0: validation {error}", file=sys.stderr, flush=True)
        save(best=True)
    tuned.train()
    started = time.perf_counter() - state["wall_s"]
    losses: list[float] = []
    while state["step"] < config.max_steps:
        step = state["step"]
        rng = np.random.default_rng([config.seed, step, 1])
        samples = []
        for entry in step_materials(train, step, source.materials_per_step, config.seed):
            state.setdefault("train_read", set()).add(entry.material_id)
            samples += material_samples(cache, entry, source.displacements_per_step, rng, anchor, config.distill_weight)
        if config.replay_every and replay and step % config.replay_every == 0:
            samples += [replay[k] for k in rng.choice(len(replay), size=min(config.batch_size, len(replay)), replace=False)]
        if samples:
            batch = _batch(samples, converter, "cpu")
            loss, force_loss, energy_loss = loss_terms(tuned, batch, config)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.gradient_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
        schedule.step()
        state["step"] = step + 1
        if state["step"] % config.validate_every == 0 or state["step"] == config.max_steps:
            tuned.eval()
            error = validation_error(tuned, cache, validation, source.validation_displacements, config.seed)
            state["wall_s"] = time.perf_counter() - started
            record = {"step": state["step"], **error, "train_loss": float(np.mean(losses)) if losses else None,
                      "lr": schedule.get_last_lr()[0], "wall_s": state["wall_s"], "train_materials_seen": len(state.get("train_read", ()))}
            losses = []
            state["history"].append(record)
            improved = error["relative_force_change_mae"] < state["best"]["relative_force_change_mae"]
            if improved:
                state["best"] = {"step": state["step"], **error}
            print(json.dumps(record), file=sys.stderr, flush=True)
            with open(out / "progress.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            save(best=improved)

    if "parity_drift" not in state and config.parity_dir:
        from generate.harmonic.relax import RelaxSettings
        from generate.potential.finetune import parity_drift

        selected = load_potential(str(out / "best"))
        state["parity_drift"] = parity_drift(base, selected, Path(config.parity_dir), RelaxSettings(fmax_eV_A=1e-3, max_steps=300))
        save(best=False)
    report = {
        "base_potential": describe(base),
        "data": {"source": "phonondb", "mirror_commit": MIRROR_COMMIT, "split": "train (fixed hash split, thermobench/data/phonondb/index.csv)",
                 "max_supercell_atoms": source.max_supercell_atoms, "train_materials": len(train),
                 # runs checkpointed before the set was kept logged materials read, validation included
                 "train_materials_read": len(state["train_read"]) if state.get("train_read")
                 else state["history"][-1].get("materials_seen", 0) - len(validation),
                 "validation_materials": len(validation), "read": sorted(cache.data), "skipped": cache.skipped},
        "hyperparameters": {k: config[k] for k in ("lr", "max_steps", "batch_size", "force_weight", "equilibrium_weight", "energy_weight",
                                                    "seed", "replay_structures", "replay_every", "gradient_clip", "validate_every",
                                                    "distill_weight", "distill_temperature_K", "distill_pairs")}
        | {"materials_per_step": source.materials_per_step, "displacements_per_step": source.displacements_per_step,
           "frozen_prefixes": list(config.frozen_prefixes), "frozen_parameters": len(frozen)},
        "supercells_seen": state["step"] * source.materials_per_step * (source.displacements_per_step + 1),
        "history": state["history"],
        "best": state["best"],
        "parity_drift": state.get("parity_drift", {"available": False}),
        "wall_time_s": state["wall_s"],
    }
    (out / "finetune_report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "best" / "README.md").write_text(model_card(report, config))
    return report


def model_card(report: dict, config) -> str:
    """The shipped model's card: data, split, recipe, selection, drift, licence and citation."""
    from thermobench.phonondb import CITATION, MIRROR_URL

    base, data, best = report["base_potential"], report["data"], report["best"]
    drift_text = drift_sentence(report["parity_drift"])
    return f"""# {base.get('name')} fine-tuned on the Kyoto phonon database (PBEsol)

- Base: `{base.get('name')}` (sha256 `{base.get('sha256')}`), matgl {base.get('matgl_version')}; loads through
  `thermobench.potentials.load_potential`, which applies the message-passing convention recorded in `model.json`.
- Data: phonondb (A. Togo, 2018-04-17, VASP PBEsol, 0.01 Å finite displacements, CC BY 4.0), mirror
  {MIRROR_URL} at commit `{data['mirror_commit']}`; the fixed hash split of
  `thermobench/data/phonondb/index.csv`: {data['train_materials']} training materials with DFT supercells of at most
  {data['max_supercell_atoms']} atoms ({data['train_materials_read']} of them seen in {report['hyperparameters']['max_steps']}
  steps), model selection on {data['validation_materials']} validation materials, the test split never read.
- Recipe: per step {report['hyperparameters']['materials_per_step']} materials, each its perfect supercell and
  {report['hyperparameters']['displacements_per_step']} random displaced supercells; loss = DFT force change relative to
  the perfect supercell, weighted by the material's inverse mean squared DFT force, + equilibrium forces
  (weight {report['hyperparameters']['equilibrium_weight']}) + perfect-supercell energy anchored to the base model
  (weight {report['hyperparameters']['energy_weight']}) + replay structures labelled by the base model every
  {report['hyperparameters']['replay_every']} steps; Adam, lr {report['hyperparameters']['lr']} with warm-up and cosine decay.
  Hyperparameters: `{json.dumps(report['hyperparameters'])}`.
- Selected: step {best['step']} (validation relative force-change MAE {best['relative_force_change_mae']:.4f}; the base
  model's is {report['history'][0]['relative_force_change_mae']:.4f}); {report['supercells_seen']} supercells in
  {report['wall_time_s'] / 3600:.2f} h of one CPU core.
- {drift_text}
- Errors against DFT on the held-out test split: `benchmarks/results/finetune_phonondb/report.md`.

Cite phonondb ({CITATION}), M3GNet (Chen & Ong, Nat. Comput. Sci. 2, 718, 2022) and matgl. The weights are a
derivative of the matgl checkpoint (BSD-3-Clause, `../shared/models/LICENSE-matgl`) trained on CC BY 4.0 data.
"""
