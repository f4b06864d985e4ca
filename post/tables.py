"""The study's tables, from result rows and the files the stages wrote: what the notebooks show and RESULTS.md
prints. Table 1 analogue (accuracy of every method, recovery of FullPT's gain), Table 4 analogue (cost), the DP
parameters behind each private prompt and the privacy audit's readings. Nothing here runs a model; 03's
comparison takes the caller's scoring function.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .artifacts import METHODS, artifact_dir, eps_tag, prompt_path, require, results_dir, source_model_dir
from .audit import NO_NOISE
from .config import Config
from .files import ROOT, atomic_path, read_json
from .membership import ci_text
from .paper import PAPER
from .prompt import SoftPrompt, read_record
from .transfer import source_prompt_path


def column(method: str, epsilon: str) -> str:
    return method if epsilon in ("inf", "-") else f"{method} eps={epsilon}"


def recovery_share(zs: float, full: float, post: float) -> float:
    """(POST - ZS) / (FullPT - ZS); undefined (nan) when FullPT does not beat zero-shot."""
    return (post - zs) / (full - zs) if full > zs else math.nan


def accuracy_table(rows: list[dict], epsilons: tuple[str, ...] = ("inf", "8")) -> pd.DataFrame:
    """One row per task: mean accuracy over seeds per method and epsilon, seeds, and POST's recovery."""
    data = pd.DataFrame(rows)
    data = data[data.epsilon.isin(("-",) + epsilons)]
    grouped = data.groupby(["task", "method", "epsilon"], sort=False).accuracy
    stats = grouped.agg(["mean", "std", "count"]).reset_index()
    stats["column"] = [column(m, e) for m, e in zip(stats.method, stats.epsilon)]
    order = [column(m.label, e) for e in epsilons for m in METHODS.values() if m.key != "zs" or e == epsilons[0]]
    table = stats.pivot(index="task", columns="column", values="mean")
    table = table[[c for c in order if c in table.columns]]
    table.insert(0, "test n", data.groupby("task", sort=False).n.max())
    table.insert(1, "seeds", stats.groupby("task", sort=False)["count"].max())
    for epsilon in epsilons:  # against FullPT at the same epsilon, else the non-private FullPT
        post, full = column("POST", epsilon), column("FullPT", epsilon)
        full = full if full in table else "FullPT"
        if post in table and full in table:
            table[column("recovery", epsilon)] = [recovery_share(z, f, p) for z, f, p in
                                                  zip(table.ZS, table[full], table[post])]
    if (stats["count"] > 1).any():  # several seeds: a std column per method
        for name, part in stats.groupby("column", sort=False):
            table[f"{name} std"] = part.set_index("task")["std"]
    return table.reset_index()


def recovery(rows: list[dict]) -> dict[str, float]:
    """(POST - ZS) / (FullPT - ZS) per epsilon, from ``compare`` rows (FullPT at the same epsilon, else no DP).

    Defined only where FullPT beats zero-shot; otherwise there is no gain to recover.
    """
    acc = {(r["method"], r["epsilon"]): r["accuracy"] for r in rows}
    zs, out = acc[("ZS", "-")], {}
    for (method, epsilon), value in acc.items():
        full = acc.get(("FullPT", epsilon), acc.get(("FullPT", "inf")))
        if method == "POST" and full is not None and not math.isnan(share := recovery_share(zs, full, value)):
            out[epsilon] = share
    return out


def compare(cfg: Config, target, score: Callable[[SoftPrompt | None], float]) -> list[dict]:
    """Every prompt of the sweep task on the target, scored by the caller (figures and the recovery check).

    ZS (no prompt), Direct (the CompPT prompt pasted unchanged), PTfer, POST and, when 02 made it, FullPT.
    ``wall_seconds`` is what the method costs the owner and provider after distillation: the source tuning
    plus the transfer for Direct / PTfer / POST, the tuning on the target for FullPT.
    """
    task, rows = cfg.transfer.sweep_task, [{"method": METHODS["zs"].label, "epsilon": "-", "accuracy": score(None),
                                             "wall_seconds": 0.0}]
    for epsilon in cfg.transfer.epsilons:
        compt = SoftPrompt.load(source_prompt_path(cfg, task, epsilon), target, same_model=False)
        tuning = _tuning_seconds(source_prompt_path(cfg, task, epsilon), epsilon)
        rows.append({"method": METHODS["direct"].label, "epsilon": eps_tag(epsilon), "accuracy": score(compt),
                     "wall_seconds": tuning})
        for method in (METHODS["ptfer"], METHODS["post"]):
            prompt = SoftPrompt.load(require(prompt_path(cfg.profile, task, method.key, epsilon, cfg.seed),
                                             method.stage, cfg.profile), target)
            rows.append({"method": method.label, "epsilon": eps_tag(epsilon), "accuracy": score(prompt),
                         "wall_seconds": tuning + prompt.meta["cost"]["wall_seconds"]})
        full = prompt_path(cfg.profile, task, "fullpt", epsilon, cfg.seed)
        if full.exists():
            prompt = SoftPrompt.load(full, target)
            rows.append({"method": METHODS["fullpt"].label, "epsilon": eps_tag(epsilon), "accuracy": score(prompt),
                         "wall_seconds": _tuning_seconds(full, epsilon)})
    return rows


def _tuning_seconds(prompt_file: Path, epsilon: float) -> float:
    """The wall time of a prompt's tuning from the owner's record; NaN for a DP prompt, whose time is a noiseless
    function of its Poisson draws and stays with the owner."""
    return read_record(prompt_file)["cost"]["wall_seconds"] if math.isinf(epsilon) else math.nan


def accuracy_vs_paper(table: pd.DataFrame, task: str = "rotten_tomatoes") -> pd.DataFrame:
    """The paper's sst2 rows (labelled as the paper's) beside ours on ``task``, accuracy in %, with recovery."""
    ours, paper = table.set_index("task").loc[task], PAPER["accuracy"]
    mine = {"target": f"SmolLM2-135M (ours, {task})",
            **{c: 100 * ours[c] for c in paper.columns[1:] if c in ours.index}}
    both = pd.concat([paper.assign(target=paper.target + " (paper, sst2)"), pd.DataFrame([mine])], ignore_index=True)
    both["recovery"] = [recovery_share(z, f, p) for z, f, p in zip(both.ZS, both.FullPT, both.POST)]
    return both


def cost_table(profile: str, epsilon: float = math.inf, seed: int = 0) -> pd.DataFrame:
    """Per task, the measured cost of FullPT and of POST (CompPT on the source + the transfer), then the ratios.

    Read from the prompts' cost records (02, 03) and the source model's (01); a POST prompt's transfer cost
    includes its share of the unprompted public passes.
    """
    distill = read_json(source_model_dir(profile) / "cost.json")["total"]
    records = []
    for task in sorted({p.parent.name for p in artifact_dir(profile, "prompts").glob("*/post_*")}):
        cost = {m: read_record(prompt_path(profile, task, m, epsilon, seed))["cost"] for m in ("fullpt", "compt")}
        cost["post"] = SoftPrompt.load(prompt_path(profile, task, "post", epsilon, seed)).meta["cost"]  # provider's
        post = {k: cost["compt"][k] + cost["post"][k] for k in cost["post"]}
        items = {"FullPT (tune on target)": cost["fullpt"], "CompPT (tune on source)": cost["compt"],
                 "POST transfer": cost["post"], "POST (tune + transfer)": post, "distillation (once)": distill,
                 "POST + distillation": {k: post[k] + distill[k] for k in post}}
        records += [{"task": task, "item": item, **{k: c[k] for k in ("wall_seconds", "examples", "tokens", "flops")}}
                    for item, c in items.items()]
    return pd.DataFrame(records)


def curve_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Per task and method, from ``cost_curves``: the step kept and its validation accuracy, the cost spent to reach
    it and in all (each run goes on until its stopping rule), and for POST what FullPT spent before it first
    matched POST's kept accuracy (blank if it never did)."""
    rows = []
    for (task, method), line in curves.groupby(["task", "method"], sort=False):
        kept = line[line.kept].iloc[0]
        rows.append({"task": task, "method": method, "kept step": int(kept.step), "last step": int(line.step.max()),
                     "validation accuracy": kept.accuracy, "TFLOPs to kept": kept.flops / 1e12,
                     "TFLOPs in all": line.flops.max() / 1e12, "seconds in all": line.wall_seconds.max()})
        if method == "POST":
            full = curves[(curves.task == task) & (curves.method == "FullPT")]
            reached = full[full.accuracy >= kept.accuracy]
            rows[-1]["FullPT TFLOPs to match"] = reached.flops.min() / 1e12 if len(reached) else math.nan
    return pd.DataFrame(rows)


def cost_ratios(costs: pd.DataFrame) -> pd.DataFrame:
    """FullPT / POST per task, in wall time and FLOPs, without and with the distillation."""
    rows = []
    for task, part in costs.groupby("task", sort=False):
        item = part.set_index("item")
        full = item.loc["FullPT (tune on target)"]
        for label, post in (("POST", "POST (tune + transfer)"), ("POST + distillation", "POST + distillation")):
            rows.append({"task": task, "FullPT over": label,
                         "wall time": full.wall_seconds / item.loc[post].wall_seconds,
                         "FLOPs": full.flops / item.loc[post].flops})
    return pd.DataFrame(rows)


def cost_summary(costs: pd.DataFrame, ratios: pd.DataFrame) -> pd.DataFrame:
    """One row per task: wall seconds of each part and the FullPT / POST ratios (RESULTS.md's short form)."""
    wall = costs.pivot(index="task", columns="item", values="wall_seconds")
    ratio = ratios.pivot(index="task", columns="FullPT over", values=["wall time", "FLOPs"])
    return pd.DataFrame({
        "FullPT s": wall["FullPT (tune on target)"], "CompPT s": wall["CompPT (tune on source)"],
        "transfer s": wall["POST transfer"], "distillation s (once)": wall["distillation (once)"],
        "FullPT/POST wall": ratio[("wall time", "POST")], "FullPT/POST FLOPs": ratio[("FLOPs", "POST")],
        "FullPT/(POST+distillation) wall": ratio[("wall time", "POST + distillation")],
    }).reset_index()


def tuning_summary(rows: list[dict]) -> pd.DataFrame:
    """Test accuracy per task (rows) and method/epsilon (columns)."""
    data = pd.DataFrame(rows)
    data["run"] = data.method + " eps=" + data.epsilon
    return data.pivot_table(index="task", columns="run", values="accuracy", sort=False)


def privacy_table(rows: list[dict]) -> pd.DataFrame:
    """The DP parameters behind every private prompt: target vs spent epsilon (PRV, RDP), delta, sigma, C, q."""
    data = pd.DataFrame(rows)
    data = data[data.epsilon != "inf"]
    return data[["task", "method", "epsilon", "prv_epsilon", "rdp_epsilon", "delta", "noise_multiplier",
                 "max_grad_norm", "sample_rate", "steps", "batch_size"]].reset_index(drop=True)


def training_curves(rows: list[dict]) -> pd.DataFrame:
    """Long table (task, method, epsilon, step, metric, value) of the non-private runs' training curves.

    Read from the owner's records. A DP run's curve (the raw loss of every private batch, validation accuracy)
    is left out: it is computed from the private data without noise, so publishing it would void the guarantee
    that its prompt carries; the owner can read it in the record.
    """
    records = []
    for row in (r for r in rows if r["epsilon"] == "inf"):
        record = read_record(ROOT / row["prompt"])
        ident = {"task": row["task"], "method": row["method"], "epsilon": row["epsilon"]}
        records += [{**ident, "step": s, "metric": "train loss", "value": v}
                    for s, v in zip(record["curve"]["step"], record["curve"]["loss"]) if v is not None]
        records += [{**ident, "step": s, "metric": "validation accuracy", "value": v}
                    for s, v in zip(record["validation"]["step"], record["validation"]["accuracy"])]
    return pd.DataFrame(records)


def shadow_table(result: dict) -> pd.DataFrame:
    """How each setting's shadows were tuned, with how often they see each pool example against how often
    02's prompt at the same setting sees each of its training examples."""
    data = pd.DataFrame(result["shadow_tuning"]).T
    audited = data.index != "positive control"
    data["passes_per_example_in_02"] = (data.steps * data.batch_size / result["owner_train_examples"]).where(audited)
    return data[["prompt_length", "lr", "max_grad_norm", "batch_size", "steps", "pool", "passes_per_example",
                 "passes_per_example_in_02"]]


def lira_table(result: dict, variant: str = "online") -> pd.DataFrame:
    """One row per (setting, model): AUC with CI and its reading, TPR at 1% FPR with CI, accuracies on
    members / non-members."""
    data = pd.DataFrame(result["lira"])
    data = data[data.variant == variant].copy()
    data["auc 95% CI"] = data["auc_ci"].map(ci_text)
    data["tpr@1%fpr 95% CI"] = data.get("tpr_at_0.01_ci", pd.Series(index=data.index, dtype=object)).map(ci_text)
    columns = ["setting", "model", "auc", "auc 95% CI", "reading", "tpr_at_0.01", "tpr@1%fpr 95% CI",
               "tpr_at_0.001", "train_accuracy", "heldout_accuracy", "n_in", "n_out"]
    return data[columns].reset_index(drop=True)


def control_checks(result: dict) -> pd.DataFrame:
    """Whether the audit can be trusted: the positive controls leak (LiRA; one run without noise proves more
    than the epsilon it claims), the null does not, and every DP run's eps_hat stays <= its epsilon."""
    lira_rows = pd.DataFrame(result["lira"])
    online = lira_rows[(lira_rows.variant == "online") & (lira_rows.model == "source")].set_index("setting")
    checks = []
    if "positive control" in online.index:
        low = online.loc["positive control", "auc_ci"][0]
        checks.append({"check": "positive control leaks (AUC CI above 0.5)", "value": f"CI low {low:.3f}",
                       "passed": bool(low > 0.5)})
    if "null control" in online.index:
        ci = online.loc["null control", "auc_ci"]
        checks.append({"check": "null control does not (AUC CI covers 0.5)", "value": ci_text(ci),
                       "passed": bool(ci[0] <= 0.5 <= ci[1])})
    for row in result["canaries"]:
        if row["setting"] == NO_NOISE:
            checks.append({"check": f"one run without noise: eps_hat > claimed epsilon {row['epsilon']}",
                           "value": f"eps_hat {row['eps_hat']:.3f}",
                           "passed": bool(row["eps_hat"] > float(row["epsilon"]))})
        elif row["epsilon"] != "inf":
            checks.append({"check": f"eps_hat <= configured epsilon {row['epsilon']}",
                           "value": f"eps_hat {row['eps_hat']:.3f}",
                           "passed": bool(row["eps_hat"] <= float(row["epsilon"]))})
    return pd.DataFrame(checks)


def audit_vs_paper(result: dict) -> pd.DataFrame:
    """Our online-LiRA AUC on the source prompts next to the POST paper's (labelled as the paper's)."""
    ours = pd.DataFrame(result["lira"])
    ours = ours[(ours.variant == "online") & (ours.model == "source")].set_index("setting")["auc"]
    return pd.DataFrame([{"setting": p["setting"], "paper AUC (RoBERTa-base, sst2, 8 shadows)": p["auc"],
                          f"our AUC ({result['task']}, {result['settings']['shadows']} shadows)":
                              ours.get(p["setting"], float("nan"))} for p in result["paper"]])


def write_table(table: pd.DataFrame, name: str, profile: str, digits: int = 3) -> str:
    """``results/<profile>/<name>.csv`` (full precision) and ``.md`` (rounded); returns the markdown."""
    out = results_dir(profile)
    with atomic_path(out / f"{name}.csv") as tmp:
        table.to_csv(tmp, index=False)
    markdown = markdown_table(table, digits)
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text(markdown + "\n")
    return markdown


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, (float, np.floating)):
            if math.isnan(value):
                return "-"
            if abs(value) >= 1e6 or (value and abs(value) < 0.001):
                return f"{value:.{digits}g}"
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * table.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
