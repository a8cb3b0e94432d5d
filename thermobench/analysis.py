"""Pictures of the dataset's scientific story and of what the descriptor model learned.

    python -m thermobench.analysis [--dataset thermobench-mini] [--out leaderboard/figures]

writes a periodic-table heat map of mean σᴬ per element (each material counts for every element it
contains) and σᴬ / frequency-shift trends with temperature by structure family.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_feature_importance(importance: pd.DataFrame, path: Path, title: str = "", top: int = 15) -> Path:
    plt = _pyplot()
    shown = importance.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(shown) + 1.2))
    ax.barh(shown["feature"], shown["importance_mean"], xerr=shown["importance_std"], color="tab:green")
    ax.set_xlabel("increase of test error when the feature is shuffled")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def element_means(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean and count of ``column`` per element over the rows of materials containing it."""
    rows = [(element, value) for elements, value in zip(frame["elements"], frame[column]) if np.isfinite(value)
            for element in elements]
    table = pd.DataFrame(rows, columns=["element", column])
    return table.groupby("element")[column].agg(["mean", "count"]).reset_index()


def plot_periodic_table(means: pd.DataFrame, path: Path, label: str) -> Path:
    from pymatgen.core.periodic_table import Element

    plt = _pyplot()
    import matplotlib
    from matplotlib import cm, colors

    grid = np.full((10, 18), np.nan)
    for symbol, value in zip(means["element"], means["mean"]):
        element = Element(symbol)
        row, column = element.row, element.group
        if element.is_lanthanoid or element.is_actinoid:  # f-block rows below the table
            row, column = (8 if element.is_lanthanoid else 9), 3 + (element.Z - (57 if element.is_lanthanoid else 89))
        grid[row - 1, column - 1] = value
    fig, ax = plt.subplots(figsize=(11, 6))
    norm = colors.Normalize(np.nanmin(grid), np.nanmax(grid))
    cmap = matplotlib.colormaps["viridis"]
    for z in range(1, 104):
        element = Element.from_Z(z)
        row, column = element.row, element.group
        if element.is_lanthanoid or element.is_actinoid:
            row, column = (8 if element.is_lanthanoid else 9), 3 + (z - (57 if element.is_lanthanoid else 89))
        value = grid[row - 1, column - 1]
        face = cmap(norm(value)) if np.isfinite(value) else "0.93"
        ax.add_patch(plt.Rectangle((column - 1, -row), 0.95, 0.95, color=face))
        text_color = "white" if np.isfinite(value) and norm(value) < 0.6 else "black"
        ax.text(column - 0.52, -row + 0.6, element.symbol, ha="center", va="center", fontsize=8, color=text_color)
        if np.isfinite(value):
            ax.text(column - 0.52, -row + 0.25, f"{value:.2f}", ha="center", va="center", fontsize=6, color=text_color)
    ax.set_xlim(0, 18)
    ax.set_ylim(-9.2, 0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.6, label=label)
    ax.set_title(label, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def plot_family_trends(frame: pd.DataFrame, path: Path, columns: tuple[str, ...] = ("sigma_A", "mean_relative_frequency_shift")) -> Path:
    """Mean ± std over materials of each column versus temperature, one line per structure family."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(6 * len(columns), 4.5), squeeze=False)
    for ax, column in zip(axes[0], columns):
        stats = frame.groupby(["family", "temperature_K"])[column].agg(["mean", "std", "count"]).reset_index()
        order = stats.groupby("family")["mean"].max().sort_values(ascending=False).index
        for family in order:
            part = stats[stats["family"] == family]
            n = int(frame.loc[frame["family"] == family, "material_id"].nunique())
            ax.errorbar(part["temperature_K"], part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=2,
                        label=f"{family} ({n})")
        ax.set_xlabel("temperature (K)")
        ax.set_ylabel(column)
        ax.set_title(f"{column} by structure family (mean ± std over materials)", fontsize=9)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def dataset_figures(dataset: str, out: Path, temperature_K: float = 300.0) -> list[Path]:
    """The heat map at ``temperature_K`` and the family trends of the whole dataset."""
    from thermobench.datamodule import STAGES, load_frame

    frame = pd.concat([load_frame(dataset, "random", stage) for stage in STAGES], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    at_t = frame[np.isclose(frame["temperature_K"].astype(float), temperature_K)]
    if at_t.empty:
        raise ValueError(f"{dataset} has no rows at {temperature_K} K (temperatures: {sorted(frame['temperature_K'].unique())})")
    label = f"mean sigma_A at {temperature_K:g} K per element ({at_t['material_id'].nunique()} materials)"
    return [
        plot_periodic_table(element_means(at_t, "sigma_A"), out / f"sigma_A_periodic_table_{temperature_K:g}K.png", label),
        plot_family_trends(frame, out / "family_trends.png"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m thermobench.analysis", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="thermobench-mini")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "leaderboard" / "figures")
    parser.add_argument("--temperature", type=float, default=300.0)
    args = parser.parse_args(argv)
    for path in dataset_figures(args.dataset, args.out, args.temperature):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
