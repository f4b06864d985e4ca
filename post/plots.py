"""Figures that always come with the data behind them: every PNG/PDF has a CSV of the plotted numbers."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .artifacts import atomic_path, figures_dir

plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
                     "axes.grid": True, "grid.alpha": 0.3, "font.size": 10})


def save_figure(fig, data: pd.DataFrame, name: str, profile: str) -> Path:
    """Write ``figures/<profile>/<name>.{png,pdf,csv}``; returns the PNG path."""
    out = figures_dir(profile)
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        with atomic_path(out / f"{name}.{suffix}") as tmp:
            fig.savefig(tmp, format=suffix, bbox_inches="tight")
    with atomic_path(out / f"{name}.csv") as tmp:
        data.to_csv(tmp, index=False)
    return out / f"{name}.png"


def bar_chart(data: pd.DataFrame, x: str, y: str, hue: str | None = None, ylabel: str = "", title: str = "",
              reference: float | None = None):
    """Grouped bars of ``y`` per ``x`` (and ``hue``); returns the figure."""
    grouped = hue is not None
    table = data.pivot_table(index=x, columns=hue, values=y, sort=False) if grouped else data.set_index(x)[[y]]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(table) * max(1, table.shape[1]) ** 0.5, 3.2))
    table.plot.bar(ax=ax, rot=0, width=0.8, legend=grouped)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    if grouped:
        ax.legend(title=hue or None, fontsize=8, frameon=False)
    return fig
