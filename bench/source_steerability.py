"""How far can a soft prompt steer each candidate source model? POST can only transfer what the source learns.

For the target, the profile's distilled source and undistilled layer cuts of the target (first, last and evenly
spaced layers), tune a prompt on the task's training split with the profile's tune settings and report
validation accuracy without and with the prompt, and the mean training loss over the first and last fifth of
the steps. Writes ``bench/results/source_steerability.json``.

    python bench/source_steerability.py [--profile cpu] [--task rotten_tomatoes] [--steps 100] [--cuts 4 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch

from post.artifacts import source_model_dir
from post.config import load_config
from post.evaluate import accuracy
from post.files import write_json
from post.models import load
from post.student import default_layers, make_student
from post.tasks import get_task, load_split
from post.tune import tune_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--cuts", type=int, nargs="*", default=[4, 15])
    parser.add_argument("--validation", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "source_steerability.json"))
    args = parser.parse_args()

    cfg = load_config(args.profile)
    settings = dataclasses.replace(cfg.tune, eval_every=0)
    task = get_task(args.task)
    train, validation = load_split(task.name, "train", 0), load_split(task.name, "validation", args.validation)
    target, tokenizer = load(cfg.model)
    n_layers = target.config.num_hidden_layers
    candidates = {f"target ({n_layers} layers)": lambda: target,
                  f"distilled source ({args.profile})": lambda: load(source_model_dir(args.profile))[0]}
    for k in args.cuts:
        candidates[f"undistilled cut ({k} layers)"] = lambda k=k: make_student(target, default_layers(n_layers, k))
    rows = []
    for name, build in candidates.items():
        model = build().requires_grad_(False).eval()
        score = lambda prompt: accuracy(model, tokenizer, task, validation, prompt, cfg.eval.batch_size,  # noqa: E731
                                        cfg.data.max_text_tokens, False, cfg.eval.precision)["accuracy"]
        before = score(None)
        prompt = tune_prompt(model, tokenizer, task, train, settings, math.inf, args.steps, None, cfg.seed,
                             cfg.data.max_text_tokens, cfg.eval.batch_size, False)
        loss = np.asarray(prompt.record["curve"]["loss"], dtype=float)
        fifth = max(1, len(loss) // 5)
        rows.append({"model": name, "layers": model.config.num_hidden_layers, "validation_zero_shot": before,
                     "validation_prompted": score(prompt), "loss_first_fifth": float(loss[:fifth].mean()),
                     "loss_last_fifth": float(loss[-fifth:].mean()), "train_seconds": prompt.record["cost"]["wall_seconds"]})
        print(rows[-1], flush=True)
    majority = float(np.bincount(validation.labels).max() / len(validation))
    write_json(Path(args.out), {"profile": args.profile, "task": task.name, "steps": args.steps,
                                "prompt_length": settings.prompt_length, "lr": settings.lr,
                                "batch_size": settings.batch_size, "validation_examples": len(validation),
                                "validation_majority": majority, "threads": torch.get_num_threads(),
                                "load_average_1min": os.getloadavg()[0], "rows": rows})

if __name__ == "__main__":
    main()
