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


def epsilon_panels(data: pd.DataFrame, label, reference: dict[str, float] | None = None):
    """One panel per task of ``accuracy`` against ``epsilon`` (tags; log axis, "inf" drawn as "no DP" at the
    right), one line per method named ``label(method, rows)``; ``reference[task]`` as a dashed ZS line."""
    finite = sorted({float(e) for e in data.epsilon if e != "inf"})
    ticks = finite + [finite[-1] * 4 if finite else 1.0]
    position = dict(zip([f"{e:g}" for e in finite] + ["inf"], ticks))
    tasks = list(dict.fromkeys(data.task))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.2), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        if reference:
            ax.axhline(reference[task], color="grey", ls="--", lw=1, label="ZS")
        for method, part in data[data.task == task].groupby("method", sort=False):
            part = part.assign(x=part.epsilon.map(position)).sort_values("x")
            ax.plot(part.x, part.accuracy, marker="o", label=label(method, part))
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{e:g}" for e in finite] + ["no DP"])
        ax.minorticks_off()
        ax.set_title(task)
        ax.set_xlabel("epsilon")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    return fig
