"""Which POST snapshot to keep? Selection rules compared on 03's own transfers, a lever study on validation.

03 keeps the snapshot with the lowest held-out public loss, a label-free rule; its first snapshot (step 0) is the
source prompt pasted onto the target, i.e. Direct, which that loss never picks. When the pasted prompt already
works, the transfer can end below its own starting point. This bench replays other public rules on the same
snapshots (``artifacts/<profile>/prompts/<task>/post_epsinf_seed<seed>.snapshots.pt``, nothing is retransferred):

- ``held-out loss``: 03's rule, as committed;
- ``public labels``: the best accuracy on labelled public text of the task's kind, step 0 included. Amazon
  review snippets carry mean human ratings (VADER), classed as the tweets of tweet_sentiment are
  (``post.offline_data.vader_sentiment``; neutral left out for two-class tasks). Reviews of the transfer's own public
  sample are excluded. This adds an assumption POST does not make (the provider holds labelled public text of
  the task family), so it applies only to tasks whose public pool has labels: the sentiment tasks here, not TREC;
- ``direct`` (step 0) and ``last`` for reference, and the ``oracle``: the best step on the owner's validation
  split, which only private labels could pick (a diagnostic, never a choice).

Each rule's step is measured on the owner's validation split with the accuracies 04 already computed for its
cost curves (the figure's data, ``figures/<profile>/accuracy_vs_cumulative_cost.csv``), beside validation
zero-shot and FullPT's kept step.
Writes ``bench/results/transfer_selection.json`` and ``figures/<profile>/transfer_selection.png``.

    python bench/transfer_selection.py [--profile cpu] [--tasks rotten_tomatoes tweet_sentiment] [--public 300]
    python bench/transfer_selection.py --plot   # the figure from the JSON only
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from tqdm.auto import tqdm

from common import parse_or_plot
from post.artifacts import figures_dir, prompt_path, require
from post.config import load_config
from post.evaluate import accuracy, owner_validation
from post.files import write_json
from post.hardware import resolve_precision
from post.models import load
from post.offline_data import SENTIMENTS, amazon_review_ratings, vader_sentiment
from post.plots import save_figure
from post.prompt import SoftPrompt
from post.tables import recovery_share
from post.tasks import Split, default_pool, get_task, public_sample
from post.transfer import load_run

SENTIMENT = {SENTIMENTS, ("negative", "positive")}


def rated_reviews(task, cfg, n: int) -> Split:
    """``n`` labelled Amazon snippets outside the transfer's public sample, labelled in ``task``'s classes."""
    pool = cfg.transfer.public_pool or default_pool(task.name)
    if pool != "amazon_reviews" or task.classes not in SENTIMENT:
        raise SystemExit(f"{task.name}: no labelled public pool (transfer pool {pool!r}); only sentiment tasks "
                         f"transferred on amazon_reviews have one")
    used = set(sum(public_sample(pool, cfg.transfer.public_examples, cfg.transfer.holdout_examples, cfg.seed), []))
    rest, _ = public_sample(pool, None, 0, cfg.seed)
    rating = {text.strip(): r for r, text in amazon_review_ratings()}
    texts, labels = [], []
    for text in (t for t in rest if t not in used):
        name = SENTIMENTS[vader_sentiment(rating[text])]
        if name in task.classes:
            texts.append(text)
            labels.append(task.classes.index(name))
        if len(texts) == n:
            break
    return Split(texts, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--tasks", nargs="+", default=["rotten_tomatoes", "tweet_sentiment"])
    parser.add_argument("--public", type=int, default=300, help="labelled public reviews scored per snapshot")
    args = parse_or_plot(parser, "transfer_selection", plot)
    if args is None:
        return
    cfg = load_config(args.profile)
    curves = pd.read_csv(require(figures_dir(cfg.profile) / "accuracy_vs_cumulative_cost.csv", "04_evaluate",
                                 cfg.profile))
    target, tokenizer = load(cfg.model, device=cfg.device)
    score = lambda task, split, weight: accuracy(  # noqa: E731
        target, tokenizer, task, split, None if weight is None else SoftPrompt(weight), cfg.eval.batch_size,
        cfg.data.max_text_tokens, False, cfg.eval.precision)["accuracy"]
    rows = []
    for name in args.tasks:
        task = get_task(name)
        public = rated_reviews(task, cfg, args.public)
        run = load_run(prompt_path(cfg.profile, name, "post", math.inf, cfg.seed))
        post = curves[(curves.task == name) & (curves.method == "POST")].set_index("step").accuracy
        full = curves[(curves.task == name) & (curves.method == "FullPT") & curves.kept].accuracy.iloc[0]
        validation = owner_validation(cfg, name)  # the examples 04's curves scored
        zero_shot = score(task, validation, None)
        snapshots = tqdm(sorted(run.snapshots.items()), desc=f"public {name}", leave=False)
        curve = [{"step": step, "public_accuracy": score(task, public, weight),
                  "validation_accuracy": float(post[step])} for step, weight in snapshots]
        best = lambda key: max(curve, key=lambda c: (c[key], -c["step"]))["step"]  # noqa: E731  ties: earliest
        steps = {"held-out loss": run.selected_step, "public labels": best("public_accuracy"), "direct": 0,
                 "last": curve[-1]["step"], "oracle": best("validation_accuracy")}
        rows.append({"task": name, "public_examples": len(public.texts),
                     "public_classes": pd.Series(public.labels).value_counts().sort_index().tolist(),
                     "validation_examples": len(validation.texts), "validation_zero_shot": zero_shot,
                     "validation_fullpt": float(full), "public_zero_shot": score(task, public, None),
                     "rules": [{"rule": rule, "step": step, "validation_accuracy": float(post[step]),
                                "validation_recovery": recovery_share(zero_shot, full, post[step])}
                               for rule, step in steps.items()], "curve": curve})
        print({k: v for k, v in rows[-1].items() if k != "curve"}, flush=True)
    result = {"profile": args.profile, "eval_precision": resolve_precision(cfg.eval.precision),
              "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0], "rows": rows}
    write_json(Path(args.out), result)
    plot(result)


def plot(result: dict):
    """Per task: each snapshot's accuracy on labelled public reviews and on the owner's validation split, with
    validation zero-shot and FullPT as grey lines and the step each rule keeps."""
    rows = result["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 3.4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        curve = pd.DataFrame(row["curve"])
        ax.plot(curve.step, curve.validation_accuracy, color="C0", label="owner validation")
        ax.plot(curve.step, curve.public_accuracy, color="C1", label="labelled public reviews")
        ax.axhline(row["validation_zero_shot"], color="grey", ls="--", lw=1, label="target ZS (validation)")
        ax.axhline(row["validation_fullpt"], color="grey", ls="-.", lw=1, label="FullPT (validation)")
        for i, rule in enumerate(r for r in row["rules"] if r["rule"] in ("held-out loss", "public labels")):
            ax.plot([rule["step"]], [rule["validation_accuracy"]], marker="o", ls="", color=f"C{i + 2}",
                    ms=10 - 3 * i, label=f"kept by {rule['rule']}")
        ax.set_title(row["task"])
        ax.set_xlabel("transfer step (0 = Direct)")
        ax.set_ylabel("accuracy (target)")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, frameon=False, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 0))
    data = pd.concat([pd.DataFrame(r["curve"]).assign(task=r["task"]) for r in rows])
    save_figure(fig, data, "transfer_selection", result["profile"])
    return fig


if __name__ == "__main__":
    main()
