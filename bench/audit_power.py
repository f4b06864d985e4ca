"""Does the LiRA positive control have power? Sizing the planted leak before an audit rerun.

05's LiRA positive control tunes ``audit.shadows`` non-private prompts on random halves of a small pool
(``audit.positive_control_pool`` examples, ``audit.positive_control_epochs`` passes) and must read "above
chance" (AUC 95% CI above 0.5); otherwise the audit's other LiRA rows cannot say the attack would have seen a
leak. For each (pool, epochs) of the grid this bench tunes the shadows exactly as 05 does (``shadow_settings``,
the same seed and pool prefix), attacks them with the same statistics and bootstrap, and records the AUC with
its CI next to the shuffled-membership null, with the part's wall time. Only the source side: 05 also
transfers each planted prompt to the target, a cost that does not depend on the pool (27 min on the cpu
profile in 05's last run). Parts are kept under ``artifacts/<profile>/bench/audit_power/``, so an interrupted
run redoes only what is missing. Writes ``bench/results/audit_power.json`` and ``figures/<profile>/audit_power.png``.

    python bench/audit_power.py [--profile cpu] [--pools 32 64 128] [--epochs 8 32] [--shadows 8]
    python bench/audit_power.py --plot   # the figure from the JSON only
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from common import parse_or_plot
from post.artifacts import artifact_dir, require, source_model_dir
from post.audit import (ShadowRun, audit_data, audit_rows, audit_task, epochs_to_steps, reading, shadow_run,
                        shadow_settings, shuffled)
from post.config import load_config
from post.files import write_json
from post.hardware import resolve_precision
from post.models import load, model_name
from post.plots import save_figure
from post.reuse import keyed_path, reuse
from post.tasks import Split, get_task
from post.tune import source_fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--pools", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--epochs", type=float, nargs="+", default=[8, 32])
    parser.add_argument("--shadows", type=int, default=0, help="shadow prompts per point (default: audit.shadows)")
    args = parse_or_plot(parser, "audit_power", plot)
    if args is None:
        return
    cfg = load_config(args.profile)
    shadows = args.shadows or cfg.audit.shadows
    if max(args.pools) > cfg.audit.pool_size:
        parser.error(f"a pool is a prefix of the audit pool: at most audit.pool_size ({cfg.audit.pool_size})")
    source, tokenizer = load(require(source_model_dir(cfg.profile), "source_model", cfg.profile), device=cfg.device)
    task = get_task(audit_task(cfg))
    pool = audit_data(cfg, tokenizer)["pool"]
    settings, _ = shadow_settings(cfg.tune, math.inf)
    rows = []
    for size in args.pools:
        part = Split(pool.texts[:size], pool.labels[:size])
        for epochs in args.epochs:
            steps = epochs_to_steps(epochs, size / 2, settings.batch_size)
            path = keyed_path(artifact_dir(cfg.profile, "bench"), "audit_power", ".pt", {
                "source": source_fingerprint(cfg.profile), "pool": [part.texts, part.labels], "steps": steps,
                "settings": dataclasses.asdict(settings), "shadows": shadows, "seed": cfg.seed,
                "max_text_tokens": cfg.data.max_text_tokens, "eval_batch_size": cfg.eval.batch_size})
            # 05's positive control: same seed offset, so the audit's own point reproduces
            run = reuse(path, lambda p: ShadowRun.load(p, part), lambda: shadow_run(
                source, tokenizer, task, part, "positive control", settings, math.inf, steps, shadows,
                cfg.seed + 100, cfg.data.max_text_tokens, cfg.eval.batch_size), ShadowRun.save)
            point = {"pool": size, "epochs": epochs, "steps": steps, "shadows": shadows,
                     "wall_seconds": run.cost.wall_seconds}
            for control, attacked in (("positive", run), ("null", shuffled(run, cfg.seed + 200))):
                for r in audit_rows(attacked, "source", cfg.audit.bootstrap, cfg.seed)[0]:
                    rows.append({**point, "control": control, "variant": r["variant"], "auc": r["auc"],
                                 "auc_ci": r["auc_ci"], "reading": reading(r["auc_ci"]), "n_in": r["n_in"],
                                 "n_out": r["n_out"], "train_accuracy": r["train_accuracy"],
                                 "heldout_accuracy": r["heldout_accuracy"]})
            online = [r for r in rows if r["variant"] == "online" and (r["pool"], r["epochs"]) == (size, epochs)]
            print({**point, **{r["control"]: f"{r['auc']:.3f} {r['reading']}" for r in online}}, flush=True)
    result = {"profile": args.profile, "task": task.name, "source_model": model_name(source),
              "tune_precision": resolve_precision(settings.precision), "threads": torch.get_num_threads(),
              "load_average_1min": os.getloadavg()[0], "audit_setting": {
                  "pool": cfg.audit.positive_control_pool, "epochs": cfg.audit.positive_control_epochs},
              "rows": rows}
    write_json(Path(args.out), result)
    plot(result)


def plot(result: dict):
    """Online-LiRA AUC with its 95% CI against the pool size, one line per epoch count, positive and null."""
    data = pd.DataFrame(result["rows"])
    data = data[data.variant == "online"]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, (epochs, group) in enumerate(data[data.control == "positive"].groupby("epochs")):
        low, high = zip(*group.auc_ci)
        ax.errorbar(group["pool"], group.auc, yerr=[group.auc - low, pd.Series(high, index=group.index) - group.auc],
                    marker="o", capsize=3, color=f"C{i}", label=f"planted leak, {epochs:g} epochs")
        null = data[(data.control == "null") & (data.epochs == epochs)]
        ax.plot(null["pool"], null.auc, ls=":", marker="x", color=f"C{i}", label=f"null, {epochs:g} epochs")
    audit = result["audit_setting"]
    ax.axvline(audit["pool"], color="grey", lw=0.8, ls="--", label=f"05's setting ({audit['epochs']:g} epochs)")
    ax.axhline(0.5, color="black", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("positive-control pool (examples)")
    ax.set_ylabel("online LiRA AUC (95% CI)")
    ax.set_title(f"LiRA positive control on the source ({result['task']})")
    ax.legend(fontsize=7, frameon=False)
    save_figure(fig, data.drop(columns="auc_ci").assign(ci_low=[c[0] for c in data.auc_ci],
                                                        ci_high=[c[1] for c in data.auc_ci]),
                "audit_power", result["profile"])
    return fig


if __name__ == "__main__":
    main()
