"""Does POST's transfer gain from running past the profile's step cap? A lever study on validation.

For each task, transfer the non-private CompPT prompt as 03 does but without stopping (``--steps`` long,
patience 0), keeping a snapshot and the held-out public loss every ``transfer.eval_every`` steps. Every snapshot
is then scored on the first ``--validation`` examples of the task's validation split, next to the unprompted
target (zero-shot) and the FullPT prompt, so each step has a validation recovery. For each cap of ``--caps``,
the profile's own rule (stop once ``transfer.patience`` evaluations bring no lower held-out public loss, keep the
lowest) is replayed on the same run: which step it keeps and what that step scores. Selection stays public-only;
validation only measures. The run is kept under ``artifacts/<profile>/bench/``, so an interrupted bench redoes
only the scoring. Writes ``bench/results/transfer_length.json`` and ``figures/<profile>/transfer_length.png``.

    python bench/transfer_length.py [--profile cpu] [--tasks rotten_tomatoes] [--steps 480] [--caps 160 320 480]
    python bench/transfer_length.py --set lr=0.003 --out bench/results/transfer_length_lr0.003.json  # a variant
    python bench/transfer_length.py --plot   # the figure from the JSON only (named after --out)
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
from tqdm.auto import tqdm

from common import parse_or_plot, variant
from post.artifacts import artifact_dir, prompt_path
from post.config import load_config
from post.evaluate import accuracy
from post.files import read_json, write_json
from post.hardware import resolve_precision
from post.plots import save_figure
from post.prompt import SoftPrompt
from post.public_data import prepare
from post.reuse import keyed_path, reuse
from post.tables import recovery_share
from post.tasks import get_task, load_split
from post.transfer import (load_models, load_run, post_transfer, replay_stopping, save_run, settings_hash,
                           source_prompt_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--tasks", nargs="+", default=["rotten_tomatoes"])
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--caps", type=int, nargs="+", default=[160, 320, 480])
    parser.add_argument("--validation", type=int, default=300)
    parser.add_argument("--set", default="", metavar="KEY=VALUE,...",
                        help="transfer settings changed for this run, e.g. lr=0.003 or public_pool=movie_plots")
    args = parse_or_plot(parser, "transfer_length", plot)
    if args is None:
        return
    cfg = load_config(args.profile)
    every = cfg.transfer.eval_every
    if max(args.caps) > args.steps or any(cap % every for cap in args.caps):
        parser.error(f"every cap must be a multiple of transfer.eval_every ({every}) and at most --steps ({args.steps})")
    changed = variant(args.set)
    settings = cfg.with_changes("transfer", **changed, steps=args.steps, patience=0).transfer
    source, target, tokenizer = load_models(cfg)
    rows = []
    for name in args.tasks:
        task = get_task(name)
        source_prompt = SoftPrompt.load(source_prompt_path(cfg, name, math.inf), source)
        path = keyed_path(artifact_dir(cfg.profile, "bench"), "transfer_length", ".pt", {
            "task": name, "settings": dataclasses.asdict(settings), "config": settings_hash(cfg),
            "source_prompt": source_prompt.digest()})
        held_path = path.with_suffix(".holdout.json")  # load_run keeps no history: the held-out losses go beside

        def transferred():
            prepared = prepare(cfg, source, target, tokenizer, name, settings.public_pool)
            return post_transfer(cfg, source, target, tokenizer, prepared, source_prompt, settings)[0]

        def save(run, path):
            write_json(held_path, {h["step"]: h["holdout_loss"] for h in run.history if "holdout_loss" in h})
            save_run(path, run)

        run = reuse(path, lambda p: load_run(p) if held_path.exists() else None, transferred, save)
        held = {int(step): loss for step, loss in read_json(held_path).items()}
        validation = load_split(name, "validation", args.validation)
        score = lambda weight: accuracy(target, tokenizer, task, validation,  # noqa: E731
                                        None if weight is None else SoftPrompt(weight), cfg.eval.batch_size,
                                        cfg.data.max_text_tokens, False, cfg.eval.precision)["accuracy"]
        zero_shot = score(None)
        full_pt = score(SoftPrompt.load(prompt_path(cfg.profile, name, "fullpt", math.inf, cfg.seed), target).weight)
        curve = [{"step": step, "holdout_loss": held[step], "validation_accuracy": score(weight)}
                 for step, weight in tqdm(sorted(run.snapshots.items()), desc=f"score {name}", leave=False)]
        by_step = {c["step"]: c["validation_accuracy"] for c in curve}
        rules = []
        for cap in args.caps:
            stopped, kept = replay_stopping(held, cfg.transfer.patience, cap)
            rules.append({"cap": cap, "stopped_at": stopped, "kept_step": kept, "validation_accuracy": by_step[kept],
                          "validation_recovery": recovery_share(zero_shot, full_pt, by_step[kept])})
        best = max(curve, key=lambda c: c["validation_accuracy"])  # an oracle: what selection on private labels gets
        rows.append({"task": name, "validation_zero_shot": zero_shot, "validation_fullpt": full_pt,
                     "direct": by_step[0], "last": curve[-1]["validation_accuracy"], "rules": rules,
                     "oracle_step": best["step"], "oracle_accuracy": best["validation_accuracy"],
                     "transfer_seconds": run.prompt.meta["cost"]["wall_seconds"], "curve": curve})
        print({k: v for k, v in rows[-1].items() if k != "curve"}, flush=True)
    result = {"profile": args.profile, "figure": Path(args.out).stem, "changes": changed, "steps": args.steps,
              "patience": cfg.transfer.patience, "eval_every": cfg.transfer.eval_every,
              "holdout_examples": cfg.transfer.holdout_examples,
              "validation_examples": args.validation, "transfer_precision": resolve_precision(settings.precision),
              "eval_precision": resolve_precision(cfg.eval.precision), "threads": torch.get_num_threads(),
              "load_average_1min": os.getloadavg()[0], "rows": rows}
    write_json(Path(args.out), result)
    plot(result)


def plot(result: dict):
    """Per task: validation accuracy of every snapshot (left axis) and the held-out public loss (right axis)
    against the transfer step, with zero-shot and FullPT as grey lines and the step each cap's rule keeps."""
    rows = result["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 3.4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        curve = pd.DataFrame(row["curve"])
        ax.plot(curve.step, curve.validation_accuracy, color="C0", label="validation accuracy")
        ax.axhline(row["validation_zero_shot"], color="grey", ls="--", lw=1, label="target ZS")
        ax.axhline(row["validation_fullpt"], color="grey", ls="-.", lw=1, label="target FullPT")
        for i, rule in enumerate(row["rules"]):
            ax.plot([rule["kept_step"]], [rule["validation_accuracy"]], marker="o", ls="", color=f"C{i + 2}",
                    ms=11 - 3 * i, label=f"kept with cap {rule['cap']}")  # shrinking: equal steps stay visible
        loss = ax.twinx()
        loss.plot(curve.step, curve.holdout_loss, color="C1", lw=0.8, alpha=0.7, label="held-out public loss")
        loss.set_ylabel("held-out public loss", color="C1")
        ax.set_title(row["task"])
        ax.set_xlabel("transfer step")
        ax.set_ylabel("validation accuracy (target)")
    handles, labels = (sum(pair, []) for pair in zip(ax.get_legend_handles_labels(), loss.get_legend_handles_labels()))
    fig.legend(handles, labels, fontsize=7, frameon=False, loc="upper center", ncol=len(labels),
               bbox_to_anchor=(0.5, 0))
    data = pd.concat([pd.DataFrame(r["curve"]).assign(task=r["task"]) for r in rows])
    save_figure(fig, data, result.get("figure", "transfer_length"), result["profile"])
    return fig


if __name__ == "__main__":
    main()
