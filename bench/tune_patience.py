"""Is 02's patience long enough? The owner's plateau rule judged on validation examples it never selected on.

02 tunes every non-DP prompt until ``tune.patience`` evaluations (every ``tune.eval_every`` steps, on the first
``data.max_validation`` validation examples) bring no better accuracy, at most ``tune.max_steps`` steps, and keeps
the best step. On 500 examples (standard error about 0.02) a short patience can stop at a chance dip. For each
owner seed this bench tunes once with the longest patience asked for, and reads off its validation curve where
each shorter patience would have stopped and which step it would have kept: the batch order depends on the seed
alone, so a shorter patience's run is a prefix of the longer one. Each distinct kept step is retuned to exactly
that step (checked against the curve) and every kept prompt is scored on the validation examples after the
selection's (rotten_tomatoes has 775 of them; trec's and tweet_sentiment's validation splits are nearly or wholly
used by the selection, so they cannot judge it). The test split is never read. Each finished seed is kept in the
JSON, so an interrupted run resumes at the next one.

    python bench/tune_patience.py [--profile cpu] [--task rotten_tomatoes] [--method compt] [--patiences 2 4] \
        [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from pathlib import Path

from common import as_stored, unseen_validation
from post.artifacts import require, source_model_dir
from post.config import load_config
from post.cost import plateaued
from post.evaluate import accuracy, owner_validation
from post.files import read_json, write_json
from post.models import load
from post.tasks import get_task, load_split
from post.tune import run_settings, tune_prompt

OUT = Path(__file__).parent / "results" / "tune_patience.json"


def stop_and_keep(steps: list[int], scores: list[float], patience: int) -> tuple[int, int]:
    """Where a run with ``patience`` stops on the validation curve (``steps``, ``scores``) and which step it keeps:
    the first best among the evaluations it made, as ``tune_prompt`` does."""
    for i in range(len(scores)):
        if plateaued([-s for s in scores[:i + 1]], patience) or i == len(scores) - 1:
            seen = scores[:i + 1]
            return steps[i], steps[seen.index(max(seen))]
    raise ValueError("an empty validation curve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--method", choices=("compt", "fullpt"), default="compt",
                        help="compt: the distilled source (02's CompPT); fullpt: the target")
    parser.add_argument("--patiences", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if min(args.patiences) < 1:
        parser.error("--patiences must be at least 1")
    cfg = load_config(args.profile, {"data": {"tasks": [args.task]}})
    if not cfg.tune.eval_every:
        parser.error(f"profile {args.profile!r} does not evaluate during tuning (tune.eval_every: 0)")
    task = get_task(args.task)
    selection = owner_validation(cfg, task.name)
    try:
        held_out = unseen_validation(cfg, task.name)
    except ValueError as error:
        parser.error(str(error))
    longest = max(args.patiences)
    settings, max_steps = run_settings(dataclasses.replace(cfg.tune, patience=longest, select="validation"),
                                       math.inf, cfg.tune.steps)
    out = Path(args.out)
    key = {"profile": cfg.profile, "task": task.name, "method": args.method, "tune": dataclasses.asdict(settings),
           "patiences": sorted(args.patiences),  # each seed's stops are made for these: others start afresh
           "selection_examples": len(selection), "held_out_examples": len(held_out.texts)}
    key = as_stored(key)
    result = read_json(out) if out.exists() else {}
    if result.get("settings") != key:
        result = {"settings": key, "seeds": []}
    path = cfg.model if args.method == "fullpt" else require(source_model_dir(cfg.profile), "source_model", cfg.profile)
    model, tokenizer = load(path, device=cfg.device)
    train = load_split(task.name, "train", cfg.data.max_train)

    def tuned(seed: int, steps: int, validation):
        return tune_prompt(model, tokenizer, task, train, settings, math.inf, steps, validation, seed,
                           cfg.data.max_text_tokens, cfg.eval.batch_size, True)

    def score(prompt, split) -> float:  # as tune_prompt scores its validation curve
        return accuracy(model, tokenizer, task, split, prompt, cfg.eval.batch_size, cfg.data.max_text_tokens,
                        False)["accuracy"]

    for seed in args.seeds:
        if any(r["seed"] == seed for r in result["seeds"]):
            continue
        begin = time.perf_counter()
        prompt = tuned(seed, max_steps, selection)
        curve = prompt.record["validation"]
        at = dict(zip(curve["step"], curve["accuracy"]))
        stops = {p: stop_and_keep(curve["step"], curve["accuracy"], p) for p in sorted(args.patiences)}
        prompts = {prompt.record["selected_step"]: prompt}
        if stops[longest][1] not in prompts:
            raise RuntimeError(f"seed {seed}: the plateau rule read off the curve disagrees with tune_prompt's")
        for _, kept in stops.values():
            if kept not in prompts:  # the same batches up to ``kept``: that step's prompt, made again
                prompts[kept] = tuned(seed, kept, None)
                again = score(prompts[kept], selection)
                if again != at[kept]:
                    raise RuntimeError(f"seed {seed}: step {kept} retuned scores {again} on the selection examples, "
                                       f"not {at[kept]}: the run is not replayable")
        held = {step: score(p, held_out) for step, p in prompts.items()}  # each kept prompt scored once
        runs = [{"patience": p, "stopped_step": stopped, "kept_step": kept, "selection_accuracy": at[kept],
                 "held_out_accuracy": held[kept]} for p, (stopped, kept) in stops.items()]
        result["seeds"].append({"seed": seed, "curve": {"step": curve["step"], "accuracy": curve["accuracy"]},
                                "runs": runs, "seconds": time.perf_counter() - begin})
        write_json(out, result)
        print(seed, runs, flush=True)
    result["summary"] = [summary(result["seeds"], p) for p in sorted(args.patiences)]
    write_json(out, result)
    print(result["summary"])


def summary(seeds: list[dict], patience: int) -> dict:
    runs = [r for s in seeds for r in s["runs"] if r["patience"] == patience]
    return {"patience": patience, "seeds": len(runs),
            "held_out_mean": statistics.mean(r["held_out_accuracy"] for r in runs),
            "selection_mean": statistics.mean(r["selection_accuracy"] for r in runs),
            "stopped_steps": [r["stopped_step"] for r in runs], "kept_steps": [r["kept_step"] for r in runs]}


if __name__ == "__main__":
    main()
