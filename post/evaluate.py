"""Scoring: accuracy of a (model, optional soft prompt) on a task split, with throughput; the zero-shot and
Table 1 scoreboards; validation accuracy along each method's cost (04's curves). Every model run of 04 is here.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import METHODS, eps_tag, prompt_path, require, results_dir
from .config import Config
from .declarations import Task
from .files import read_json, write_json
from .hardware import autocast
from .models import load
from .prompt import SoftPrompt, prompt_class_scores, read_record
from .reuse import reuse
from .tasks import Split, get_task, load_split
from .transfer import load_run, source_prompt_path


def class_scores(model, tokenizer, task: Task, texts: list[str], prompt: SoftPrompt | None = None,
                 batch_size: int = 32, max_text_tokens: int = 64, progress: bool = True) -> np.ndarray:
    """(N, C) class scores of one prompt (None: zero-shot)."""
    weight = None if prompt is None else prompt.weight
    return prompt_class_scores(model, tokenizer, task, texts, [weight], batch_size, max_text_tokens, progress)[0]


def accuracy(model, tokenizer, task: Task, split: Split, prompt: SoftPrompt | None = None,
             batch_size: int = 32, max_text_tokens: int = 64, progress: bool = True, precision: str = "fp32") -> dict:
    """Plain accuracy on ``split`` plus examples/second and the predicted-class distribution.

    ``precision="bf16"`` runs the forward passes under bf16 autocast: ~3.5x faster on this CPU, and on 128
    Rotten Tomatoes reviews 97.7% of the predictions equal the fp32 ones (a study scores every method alike).
    """
    context = autocast(precision, next(model.parameters()).device.type, "eval.precision")
    start = time.perf_counter()
    with context:
        scores = class_scores(model, tokenizer, task, split.texts, prompt, batch_size, max_text_tokens, progress)
    seconds = time.perf_counter() - start
    predictions = scores.argmax(1)
    labels = np.asarray(split.labels)
    return {
        "accuracy": float((predictions == labels).mean()),
        "n": len(labels),
        "seconds": seconds,
        "examples_per_s": len(labels) / seconds,
        "predicted_share": np.bincount(predictions, minlength=len(task.classes)).tolist(),
    }


def majority_accuracy(split: Split) -> float:
    """Accuracy of always answering the most frequent test class: the floor every method must clear."""
    return float(np.bincount(split.labels).max() / len(split))


def zero_shot(cfg, model=None, tokenizer=None) -> list[dict]:
    """Zero-shot test accuracy of the target on every task of the profile; writes ``zero_shot.json``.

    A rerun with the same model, data and eval settings returns the recorded rows instead of recomputing.
    """
    key = f"{cfg.model}-{cfg.section_hash('data', 'eval')}"

    def score() -> list[dict]:
        loaded = (model, tokenizer) if model is not None else load(cfg.model, device=cfg.device)
        rows = []
        for name in cfg.data.tasks:
            test = load_split(name, "test", cfg.data.max_test)
            result = accuracy(*loaded, get_task(name), test, None, cfg.eval.batch_size, cfg.data.max_text_tokens,
                              precision=cfg.eval.precision)
            rows.append({"task": name, "method": METHODS["zs"].label, "model": cfg.model,
                         "majority": majority_accuracy(test), **result})
        return rows

    def recorded(path: Path) -> list[dict] | None:  # the rows, if these settings made them
        made = read_json(path)
        return made["rows"] if made.get("key") == key else None

    return reuse(results_dir(cfg.profile) / "zero_shot.json", recorded, score,
                 lambda rows, path: write_json(path, {"key": key, "rows": rows}))


def validation_zero_shot(cfg, models: dict[str, tuple]) -> list[dict]:
    """Zero-shot validation accuracy of each ``{label: (model, tokenizer)}`` and the majority class on every task
    of the profile; writes ``results/<profile>/distill_zero_shot.json``.

    The study harness of 01, not the provider: it reads private validation splits to show what distillation
    bought. The test splits stay untouched until 04.
    """
    rows = []
    for name in cfg.data.tasks:
        split = load_split(name, "validation", cfg.data.max_validation)
        rows.append({"task": name, "model": "majority class", "accuracy": majority_accuracy(split), "n": len(split)})
        for label, (model, tokenizer) in models.items():
            result = accuracy(model, tokenizer, get_task(name), split, None, cfg.eval.batch_size,
                              cfg.data.max_text_tokens)
            rows.append({"task": name, "model": label, **result})
    write_json(results_dir(cfg.profile) / "distill_zero_shot.json", rows)
    return rows


# --- the study's scoreboard (04) -----------------------------------------------------------------------------

SCORED_HERE = ("direct", "ptfer", "post")  # 02 scored CompPT and FullPT on the models they were tuned on


def scoreboard(cfg, progress: bool = True) -> list[dict]:
    """Test accuracy of every method on every task of the profile: the rows of the paper's Table 1.

    ZS, CompPT (on the source) and FullPT come from ``zero_shot.json`` and ``tune.json``, already scored on the
    same test split. Direct (the CompPT prompt pasted onto the target unchanged), PTfer and POST are scored
    here on the target, for every epsilon 03 transferred. Each score is cached in ``scores.json`` under the
    prompt's weights and the data/eval settings and written as soon as it exists, so a rerun or a resumed
    run scores only what is new.
    """
    out = results_dir(cfg.profile)
    tuned = read_json(require(out / "tune.json", "prompts", cfg.profile))
    rows = [{**row, "epsilon": "-", "seed": cfg.seed} for row in zero_shot(cfg)]
    rows += [{key: row[key] for key in ("task", "method", "epsilon", "model", "accuracy", "n", "seed")}
             for row in tuned]
    cache_path, settings = out / "scores.json", cfg.section_hash("data", "eval")
    cache = read_json(cache_path) if cache_path.exists() else {}
    model = tokenizer = None
    for name in cfg.data.tasks:
        test, task = None, get_task(name)
        for epsilon in cfg.transfer.epsilons:
            for method in map(METHODS.get, SCORED_HERE):
                path = require(prompt_path(cfg.profile, name, method.key, epsilon, cfg.seed), method.stage,
                               cfg.profile)
                prompt = SoftPrompt.load(path)
                key = f"{name}/{method.label}/{prompt.digest()}/{settings}"
                if key not in cache:
                    if model is None:
                        model, tokenizer = load(cfg.model, device=cfg.device)
                    test = test or load_split(name, "test", cfg.data.max_test)
                    prompt.check(model, same_model=METHODS[method.prompt].model == method.model)
                    result = accuracy(model, tokenizer, task, test, prompt, cfg.eval.batch_size,
                                      cfg.data.max_text_tokens, progress, cfg.eval.precision)
                    cache[key] = {"accuracy": result["accuracy"], "n": result["n"], "seconds": result["seconds"]}
                    write_json(cache_path, cache)
                rows.append({"task": name, "method": method.label, "epsilon": eps_tag(epsilon), "model": cfg.model,
                             "seed": cfg.seed, **{k: cache[key][k] for k in ("accuracy", "n")}})
    return rows


def cost_curves(cfg: Config, target, tokenizer, progress: bool = True) -> pd.DataFrame:
    """Per task, validation accuracy on the target against the cost spent so far, for non-private FullPT and POST.

    FullPT: 02's own evaluations, read from its owner record (accuracy, FLOPs and seconds at each). POST: the
    CompPT run's whole cost, then 03's transfer: each evaluation snapshot, scored here on the same validation
    examples (fp32, as 02 scores), at the transfer's cost so far (its setup passes included). Its first point is
    the source prompt pasted onto the target, i.e. Direct. ``kept`` marks the step each method selected.
    """
    history = read_json(results_dir(cfg.profile) / "transfer_history.json")
    rows = []
    for name in cfg.data.tasks:
        task, validation = get_task(name), owner_validation(cfg, name)
        full = read_record(prompt_path(cfg.profile, name, "fullpt", math.inf, cfg.seed))
        e = full["validation"]
        rows += [{"task": name, "method": "FullPT", "step": step, "accuracy": acc, "flops": flops,
                  "wall_seconds": seconds, "kept": step == full["selected_step"]}
                 for step, acc, flops, seconds in zip(e["step"], e["accuracy"], e["flops"], e["seconds"])]
        tuning = read_record(source_prompt_path(cfg, name, math.inf))["cost"]  # the owner's CompPT run, whole
        run = load_run(prompt_path(cfg.profile, name, "post", math.inf, cfg.seed))
        for h in (h for h in history[f"{name}/inf"] if "holdout_loss" in h):
            acc = accuracy(target, tokenizer, task, validation, SoftPrompt(run.snapshots[h["step"]]),
                           cfg.eval.batch_size, cfg.data.max_text_tokens, progress)["accuracy"]
            rows.append({"task": name, "method": "POST", "step": h["step"], "accuracy": acc,
                         "flops": tuning["flops"] + h["flops"], "wall_seconds": tuning["wall_seconds"] + h["seconds"],
                         "kept": h["step"] == run.selected_step})
    return pd.DataFrame(rows)


def owner_validation(cfg: Config, task: str) -> Split | None:
    """The validation examples 02 evaluates on during training (None if it does not), also for 04's curves."""
    if not cfg.tune.eval_every:
        return None
    limits = [n for n in (cfg.data.max_validation, cfg.tune.eval_examples) if n]
    return load_split(task, "validation", min(limits, default=0))
