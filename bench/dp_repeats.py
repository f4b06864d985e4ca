"""The spread of DP results over repeats.

A DP prompt draws its sampling and noise from secret randomness (``tune.dp_randomness: secret``), so it cannot be
made again bit for bit, and the one DP number per epsilon that 02 publishes is one draw. This benchmark tunes
CompPT on one task ``--repeats`` more times per epsilon, exactly as 02 does (same source, data, settings, DP
batch and steps), scores each on the test split, and reports mean, spread and range beside 02's own number.
Each finished repeat is kept in the JSON with the run key 02 gives that prompt (``post.tune.run_key``: source, data,
DP settings), so an interrupted run resumes at the next one, and repeats made under other settings are dropped
instead of being mixed with new ones.

    python bench/dp_repeats.py [--profile cpu] [--task rotten_tomatoes] [--epsilons 8 1] [--repeats 3] [--out ...]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from post.artifacts import require, results_dir, source_model_dir
from post.config import eps_tag, load_config
from post.evaluate import accuracy
from post.files import read_json, write_json
from post.models import load
from post.tasks import get_task, load_split
from post.tune import run_key, run_settings, tune_prompt

OUT = Path(__file__).parent / "results" / "dp_repeats.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--epsilons", nargs="+", type=float, default=[8.0, 1.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    out = Path(args.out)
    cfg = load_config(args.profile)
    if cfg.tune.dp_randomness != "secret":
        raise SystemExit(f"profile {args.profile!r} seeds its DP randomness: repeats would only replay one run")

    published = {r["epsilon"]: r["accuracy"] for r in read_json(results_dir(cfg.profile) / "tune.json")
                 if r["task"] == args.task and r["method"] == "CompPT"}
    keys = {eps_tag(e): run_key(cfg, args.task, "compt", e) for e in args.epsilons}  # what 02 would make now
    result = read_json(out) if out.exists() else {}
    if result.get("profile") != cfg.profile or result.get("task") != args.task:
        result = {"profile": cfg.profile, "task": args.task, "runs": []}
    result["runs"] = [r for r in result["runs"] if keys.get(r["epsilon"], r.get("run_key")) == r.get("run_key")]
    model, tokenizer = load(require(source_model_dir(cfg.profile), "source_model", cfg.profile), device=cfg.device)
    task = get_task(args.task)
    train = load_split(args.task, "train", cfg.data.max_train)
    test = load_split(args.task, "test", cfg.data.max_test)
    for epsilon in args.epsilons:
        done = sum(r["epsilon"] == eps_tag(epsilon) for r in result["runs"])
        for repeat in range(done, args.repeats):
            settings, steps = run_settings(cfg.tune, epsilon, cfg.tune.steps)
            prompt = tune_prompt(model, tokenizer, task, train, settings, epsilon, steps, None, cfg.seed,
                                 cfg.data.max_text_tokens, cfg.eval.batch_size)
            score = accuracy(model, tokenizer, task, test, prompt, cfg.eval.batch_size, cfg.data.max_text_tokens,
                             True, cfg.eval.precision)["accuracy"]
            result["runs"].append({"epsilon": eps_tag(epsilon), "repeat": repeat, "accuracy": score,
                                   "randomness": prompt.meta["dp"]["randomness"], "test_n": len(test),
                                   "run_key": keys[eps_tag(epsilon)]})
            write_json(out, result)
            print(result["runs"][-1], flush=True)
    result["summary"] = [summary(result["runs"], tag, published.get(tag)) for tag in map(eps_tag, args.epsilons)]
    write_json(out, result)
    print(result["summary"])


def summary(runs: list[dict], tag: str, published: float | None) -> dict:
    scores = [r["accuracy"] for r in runs if r["epsilon"] == tag]
    return {"epsilon": tag, "repeats": len(scores), "mean": statistics.mean(scores),
            "sd": statistics.stdev(scores) if len(scores) > 1 else None, "min": min(scores), "max": max(scores),
            "published": published}


if __name__ == "__main__":
    main()
