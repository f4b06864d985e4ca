"""Accuracy of a (model, optional soft prompt) on a task split, with throughput."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .artifacts import read_json, results_dir, write_json
from .models import load
from .prompt import SoftPrompt, Verbalizer, encode, next_token_logits
from .tasks import Split, Task, get_task, load_split


@torch.inference_mode()
def class_scores(model, tokenizer, task: Task, texts: list[str], prompt: SoftPrompt | None = None,
                 batch_size: int = 32, max_text_tokens: int = 64, progress: bool = True) -> np.ndarray:
    """(N, C) class scores; batches are formed from length-sorted texts to waste little on padding."""
    verbalizer = Verbalizer.for_task(task, tokenizer)
    order = np.argsort([len(t) for t in texts], kind="stable")
    scores = np.zeros((len(texts), len(task.classes)), dtype=np.float32)
    weight = None if prompt is None else prompt.weight
    for start in tqdm(range(0, len(texts), batch_size), desc=f"eval {task.name}", disable=not progress,
                      leave=False):
        idx = order[start:start + batch_size]
        batch = encode(task, tokenizer, [texts[i] for i in idx], max_text_tokens)
        logits = next_token_logits(model, batch["input_ids"], batch["attention_mask"], weight)
        scores[idx] = verbalizer.scores(logits).numpy()
    return scores


def accuracy(model, tokenizer, task: Task, split: Split, prompt: SoftPrompt | None = None,
             batch_size: int = 32, max_text_tokens: int = 64, progress: bool = True) -> dict:
    """Plain accuracy on ``split`` plus examples/second and the predicted-class distribution."""
    start = time.perf_counter()
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
    path = results_dir(cfg.profile) / "zero_shot.json"
    key = cfg.section_hash("data", "eval")
    if path.exists() and read_json(path).get("key") == key:
        return read_json(path)["rows"]
    if model is None:
        model, tokenizer = load(cfg.model)
    rows = []
    for name in cfg.data.tasks:
        test = load_split(name, "test", cfg.data.max_test)
        result = accuracy(model, tokenizer, get_task(name), test, None, cfg.eval.batch_size,
                          cfg.data.max_text_tokens)
        rows.append({"task": name, "method": "ZS", "model": cfg.model, "majority": majority_accuracy(test),
                     **result})
    write_json(path, {"key": key, "rows": rows})
    return rows
