"""Figures that always come with the data behind them: every PNG/PDF has a CSV of the plotted numbers.

Every notebook's figures are drawn here from the rows their stages return or the tables of ``post.tables``:
the stages that make the rows (``post.tune``, ``post.transfer``, ``post.audit``) draw nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import NullFormatter

from .artifacts import METHODS, figures_dir
from .files import atomic_path
from .tables import training_curves

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


# --- 02's and 04's figures ------------------------------------------------------------------------------------


def plot_accuracy_bars(rows: list[dict], profile: str, epsilons: tuple[str, ...] = ("inf", "8")):
    """Accuracy per task and method: one panel without DP, one per DP epsilon (ZS repeated as the reference)."""
    data = pd.DataFrame(rows)
    zs = data[data.method == "ZS"]
    fig, axes = plt.subplots(1, len(epsilons), figsize=(6 * len(epsilons), 3.4), squeeze=False, sharey=True)
    plotted = []
    for ax, epsilon in zip(axes[0], epsilons):
        part = pd.concat([zs, data[data.epsilon == epsilon]]).assign(panel=epsilon)
        plotted.append(part)
        table = part.pivot_table(index="task", columns="method", values="accuracy", sort=False)
        table = table[[m.label for m in METHODS.values() if m.label in table]]
        table.plot.bar(ax=ax, rot=0, width=0.85, legend=False)
        ax.set_title("no DP" if epsilon == "inf" else f"DP, epsilon = {epsilon}")
        ax.set_xlabel("")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("test accuracy (CompPT: on the source)")
    axes[0][-1].legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    save_figure(fig, pd.concat(plotted)[["panel", "task", "method", "epsilon", "accuracy", "n"]],
                "accuracy_bars", profile)
    return fig


def _cost_panels(data: pd.DataFrame, draw: Callable, xlabels: tuple[str, str], ylabel: str):
    """One column per task, FLOPs (top row) and wall seconds (bottom row) on log x axes; ``draw(ax, task, x)``
    fills a panel with x the column "flops" or "wall_seconds" of ``data``."""
    tasks = list(dict.fromkeys(data.task))
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.4 * len(tasks), 6), squeeze=False, sharey="col")
    for row, (x, label) in enumerate(zip(("flops", "wall_seconds"), xlabels)):
        for ax, task in zip(axes[row], tasks):
            draw(ax, task, x)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # spans under a decade label every minor tick
            ax.set_title(task if row == 0 else "")
            ax.set_xlabel(label)
        axes[row][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    return fig


def plot_cost_curves(curves: pd.DataFrame, costs: pd.DataFrame, profile: str):
    """Per task, validation accuracy on the target against the FLOPs (top) and wall seconds (bottom) spent so far,
    from ``cost_curves``: FullPT as it trains, POST as its transfer trains (after the whole CompPT run), and POST
    with the provider's one-off distillation charged in full (dashed). Large markers: the step each one kept."""
    distill = costs[costs.item == "distillation (once)"].set_index("task")
    post = curves[curves.method == "POST"]
    charged = post.assign(method="POST + distillation", flops=post.flops + post.task.map(distill.flops),
                          wall_seconds=post.wall_seconds + post.task.map(distill.wall_seconds))
    data = pd.concat([curves, charged], ignore_index=True)
    style = {"FullPT": ("C0", "-"), "POST": ("C1", "-"), "POST + distillation": ("C1", "--")}

    def draw(ax, task: str, x: str) -> None:
        for method, line in data[data.task == task].groupby("method", sort=False):
            color, ls = style[method]
            ax.plot(line[x], line.accuracy, ls, color=color, marker=".", label=method)
            kept = line[line.kept]
            ax.scatter(kept[x], kept.accuracy, s=70, color=color, zorder=3)

    fig = _cost_panels(data, draw, ("FLOPs so far (2N per token)", "seconds so far"), "validation accuracy (target)")
    save_figure(fig, data, "accuracy_vs_cumulative_cost", profile)
    return fig


def plot_accuracy_vs_cost(rows: list[dict], costs: pd.DataFrame, profile: str):
    """Per task, non-private methods on the target: accuracy against the FLOPs (top) and wall seconds (bottom)
    spent after distillation, and with distillation charged to POST in full.

    FLOPs do not depend on the machine or on what else ran on it; wall seconds are what a user waits.
    """
    acc = {(r["task"], r["method"]): r["accuracy"] for r in rows if r["epsilon"] in ("inf", "-")}
    items = {"FullPT": "FullPT (tune on target)", "POST": "POST (tune + transfer)", "Direct": "CompPT (tune on source)",
             "POST + distillation": "POST + distillation"}
    points = []
    for task, part in costs.groupby("task", sort=False):
        spent = part.set_index("item")
        points += [{"task": task, "method": m, "flops": spent.flops[item], "wall_seconds": spent.wall_seconds[item],
                    "accuracy": acc[(task, "POST" if m == "POST + distillation" else m)]} for m, item in items.items()]
    data = pd.DataFrame(points)

    def draw(ax, task: str, x: str) -> None:
        ax.axhline(acc[(task, "ZS")], color="grey", ls="--", lw=1, label="ZS (no cost)")
        for method, point in data[data.task == task].groupby("method", sort=False):
            ax.scatter(point[x], point.accuracy, label=method, s=40)

    fig = _cost_panels(data, draw, ("FLOPs (2N per token)", "wall seconds here"), "test accuracy on the target")
    save_figure(fig, data, "accuracy_vs_cost", profile)
    return fig


def plot_methods_vs_epsilon(rows: list[dict], profile: str):
    """Per task, CompPT, FullPT and POST across epsilon (no DP drawn at the right), ZS as a dashed line."""
    data = pd.DataFrame(rows)
    data = data[data.method.isin(("CompPT", "FullPT", "POST"))][["task", "method", "epsilon", "accuracy", "n"]]
    zs = {r["task"]: r["accuracy"] for r in rows if r["method"] == "ZS"}
    on_source = {m.label for m in METHODS.values() if m.model == "source"}
    fig = epsilon_panels(data, lambda method, _: method + (" (source)" if method in on_source else ""), zs)
    save_figure(fig, data, "accuracy_vs_epsilon", profile)
    return fig


def plot_tuning_vs_epsilon(rows: list[dict], profile: str):
    """Test accuracy against epsilon (log axis, no-DP at the right), per task; CompPT and FullPT lines."""
    data = pd.DataFrame(rows)[["task", "method", "model", "epsilon", "accuracy", "n"]]
    fig = epsilon_panels(data, lambda method, part: f"{method} ({part.model.iloc[0].split('/')[-1]})")
    save_figure(fig, data, "tune_accuracy_vs_epsilon", profile)
    return fig


def plot_training_curves(rows: list[dict], profile: str, smooth: int = 10):
    """Per task: training loss (moving average over ``smooth`` steps) and validation accuracy, per
    non-private run (see ``training_curves``)."""
    data = training_curves(rows)
    tasks = list(dict.fromkeys(data.task))
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.3 * len(tasks), 5.2), squeeze=False, sharex="col")
    for col, task in enumerate(tasks):
        for (method, epsilon), part in data[data.task == task].groupby(["method", "epsilon"], sort=False):
            label = f"{method} eps={epsilon}"
            loss = part[part.metric == "train loss"]
            line, = axes[0][col].plot(loss.step, loss.value.rolling(smooth, min_periods=1).mean(), label=label)
            val = part[part.metric == "validation accuracy"]
            axes[1][col].plot(val.step, val.value, marker=".", color=line.get_color(), label=label)
        axes[0][col].set_title(task)
        axes[1][col].set_xlabel("step")
    axes[0][0].set_ylabel(f"train loss ({smooth}-step mean)")
    axes[1][0].set_ylabel("validation accuracy")
    axes[0][-1].legend(fontsize=7, frameon=False)
    save_figure(fig, data, "tune_training_curves", profile)
    return fig
