"""Figures that always come with the data behind them: every PNG/PDF has a CSV of the plotted numbers.

03's and 05's figures are drawn here from the rows their stages return, on the figure side: the stages that
make the rows (``post.transfer``, ``post.audit``) draw nothing.
"""

from __future__ import annotations

import math
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


# --- 03: the transfer -----------------------------------------------------------------------------------------


def _references(ax, compared: list[dict]) -> None:
    """Dashed lines for ZS, Direct and FullPT (no DP) accuracy."""
    for method, style in (("ZS", ":"), ("Direct", "--"), ("FullPT", "-.")):
        value = next((r["accuracy"] for r in compared if r["method"] == method and r["epsilon"] in ("-", "inf")), None)
        if value is not None:
            ax.axhline(value, color="grey", ls=style, lw=1, label=method)


def plot_steps(sweeps: list[dict], compared: list[dict], history: list[dict], profile: str):
    """Test accuracy of the default run's snapshots (figure only) next to the held-out public loss it selects on."""
    steps = pd.DataFrame([r for r in sweeps if r["kind"] == "steps"])[["value", "accuracy"]].rename(
        columns={"value": "step"})
    held = pd.DataFrame([h for h in history if "holdout_loss" in h])
    data = steps.merge(held, on="step", how="left") if len(held) else steps.assign(holdout_loss=math.nan)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.1))
    left.plot(data.step, data.accuracy, marker="o", label="POST (test, figure only)")
    _references(left, compared)
    left.set_xlabel("transfer step")
    left.set_ylabel("test accuracy")
    left.legend(fontsize=8, frameon=False)
    right.plot(data.step, data.holdout_loss, marker="o", color="C1")
    selected = next((r["selected_step"] for r in sweeps if r["kind"] == "steps"), None)
    if selected is not None:
        right.axvline(selected, color="grey", ls="--", lw=1, label=f"selected step {selected}")
        right.legend(fontsize=8, frameon=False)
    right.set_xlabel("transfer step")
    right.set_ylabel("held-out public transfer loss")
    save_figure(fig, data, "transfer_accuracy_vs_steps", profile)
    return fig


def plot_sweep(sweeps: list[dict], compared: list[dict], kind: str, profile: str, xlabel: str, log: bool = False):
    """Test accuracy against one swept setting (figure only); alpha also marks the public-data proxy's choice."""
    data = pd.DataFrame([r for r in sweeps if r["kind"] == kind])[
        ["value", "accuracy", "alpha", "public_examples", "public_pool", "init", "selected_step", "holdout_loss"]]
    fig, ax = plt.subplots(figsize=(4.2, 3.1))
    numeric = kind in ("alpha", "public_examples")
    if numeric:
        data = data.sort_values("value")
        ax.plot(data.value, data.accuracy, marker="o", label="POST")
    else:
        ax.bar(data.value.astype(str), data.accuracy, color="C0", width=0.6)
        everything = list(data.accuracy) + [r["accuracy"] for r in compared]
        ax.set_ylim(min(everything) - 0.05, max(everything) + 0.05)
        for x, y in zip(data.value.astype(str), data.accuracy):
            ax.annotate(f"{y:.3f}", (x, y), ha="center", va="bottom", fontsize=8)
    if kind == "alpha":
        default = next(r for r in sweeps if r["kind"] == "default")
        ax.plot([default["alpha"]], [default["accuracy"]], marker="*", ms=12, ls="", color="C3",
                label=f"{default['alpha_rule']} alpha = {default['alpha']:.2f}")
    if log:
        ax.set_xscale("log")
    _references(ax, compared)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, frameon=False)
    save_figure(fig, data, f"transfer_accuracy_vs_{kind}", profile)
    return fig


def plot_losses(histories: dict[str, list[dict]], profile: str, smooth: int = 5):
    """Transfer loss and its terms per task and epsilon (moving average over ``smooth`` steps); the drift from
    Direct gets a panel where the transfer was anchored."""
    data = pd.DataFrame([{"run": run, **h} for run, history in histories.items() for h in history if "loss" in h])
    titles = {"loss": "POST loss", "absolute": "KL(P_s || P_t)", "shift": "KL(Q_s || Q_t)", "drift": "KL(D_t || P_t)"}
    terms = [term for term in titles if term in data]
    fig, axes = plt.subplots(1, len(terms), figsize=(10 / 3 * len(terms), 3.0), sharex=True)
    for ax, term in zip(axes, terms):
        for run, part in data.groupby("run", sort=False):
            ax.plot(part.step, part[term].rolling(smooth, min_periods=1).mean(), label=run)
        ax.set_title(titles[term])
        ax.set_xlabel("transfer step")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7, frameon=False)
    save_figure(fig, data, "transfer_losses", profile)
    return fig


# --- 05: the privacy audit ------------------------------------------------------------------------------------


def plot_roc(result: dict, profile: str):
    """ROC curves on log-log axes, one panel per setting: online (solid) and offline (dashed) LiRA per model."""
    data = pd.DataFrame(result["roc"])
    data = data[data.variant.isin(["online", "offline"])]
    settings = list(dict.fromkeys(data.setting))
    models = list(dict.fromkeys(data.model))
    fig, axes = plt.subplots(1, len(settings), figsize=(3.0 * len(settings), 3.2), squeeze=False, sharey=True)
    floor = data.fpr.min()
    for ax, setting in zip(axes[0], settings):
        for (model, variant), part in data[data.setting == setting].groupby(["model", "variant"], sort=False):
            ax.plot(part.fpr, part.tpr.clip(lower=floor), color=f"C{models.index(model)}", lw=1.3,
                    ls="-" if variant == "online" else "--", label=f"{model}, {variant}")
        ax.plot([floor, 1], [floor, 1], color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1.05), xlabel="false positive rate",
               title=setting)
    axes[0][0].set_ylabel("true positive rate")
    handles = {line.get_label(): line for ax in axes[0] for line in ax.get_lines()
               if not line.get_label().startswith("_")}
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=7, frameon=False, loc="upper left")
    save_figure(fig, data, "audit_roc", profile)
    return fig


def plot_eps_hat(result: dict, profile: str):
    """eps_hat (95% lower bound) against the claimed epsilon, with y = x: DP runs must stay below it, the run
    without noise (the positive control) must not."""
    data = pd.DataFrame(result["canaries"])[["setting", "epsilon", "eps_hat", "prv_epsilon", "noise_multiplier", "r",
                                             "v", "m", "delta"]]
    finite = data[data.epsilon != "inf"].assign(claimed=lambda d: d.epsilon.astype(float))
    control = finite.noise_multiplier == 0  # the DP run without its noise
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    top = max([1.0, *finite.claimed, *data.eps_hat]) * 1.1
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=1, label="y = x (the DP guarantee)")
    ax.plot(finite.claimed[~control], finite.eps_hat[~control], "o", label="one-run audit, DP prompts")
    for setting, part in finite[control].groupby("setting"):
        ax.plot(part.claimed, part.eps_hat, "x", color="C3", ms=8, label=setting)
    for _, row in data[data.epsilon == "inf"].iterrows():
        ax.axhline(row.eps_hat, color="C3", ls=":", lw=1.2, label=f"no DP: eps_hat = {row.eps_hat:.2f}")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="claimed epsilon", ylabel="eps_hat (95% lower bound)")
    ax.legend(fontsize=7, frameon=False)
    save_figure(fig, data, "audit_eps_hat", profile)
    return fig
