"""Tasks (private, labelled) and public text pools (inputs only): the registry, and each task's fixed splits.

The built-in tasks below are declarations in the schema of a user's YAML task file (:mod:`post.declarations`;
:func:`register_file` adds a file's tasks and pools), read from the offline data of :mod:`post.offline_data`
or from hub datasets.

A class's score is the mean next-token logit of its label words at the prediction position (as in the paper).
Splits are fixed, seeded and stratified, and do not depend on the profile: profiles only take stratified
slices of them, so the test examples of a small profile are a subset of the larger one's. A data file with a
``split`` column (train / validation / test) keeps its own splits instead. The test split is for final
numbers only; the owner selects on ``validation``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from .declarations import Examples, SPLITS, Task, TaskError, declare, read_task_file
from .offline_data import (SENTIMENTS, TREC_CLASSES, load_amazon_reviews, load_movie_plots, load_movie_questions,
                           load_news)

SPLIT_SEED = 20250619  # fixed: the same examples are test examples in every profile and every run
FRACTIONS = dict(zip(SPLITS, (0.7, 0.1, 0.2)))  # of a task's examples: train, validation, test


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


BINARY_WORDS = ((" negative", " bad", " terrible"), (" positive", " good", " great"))
TERNARY_WORDS = (BINARY_WORDS[0], (" neutral", " okay", " mixed"), BINARY_WORDS[1])
TREC_WORDS = ((" abbreviation", " acronym"), (" entity", " thing", " object"), (" description", " definition"),
              (" person", " human", " people"), (" location", " place", " city"), (" number", " quantity", " date"))
REVIEW = "Review: {text}\nSentiment:"
TWEET = "Tweet: {text}\nSentiment:"
QUESTION = "Question: {text}\nAnswer type:"
MOVIE_INSTRUCTION = "Classify the sentiment of the movie review as positive or negative."
TWEET_INSTRUCTION = "Classify the sentiment of the tweet as negative, neutral or positive."
TREC_INSTRUCTION = "Classify what the question asks for: abbreviation, entity, description, person, location or number."


MOVIES = {"classes": dict(zip(("negative", "positive"), BINARY_WORDS)), "template": REVIEW,
          "instruction": MOVIE_INSTRUCTION, "public_pool": "amazon_reviews"}
TWEETS = {"classes": dict(zip(SENTIMENTS, TERNARY_WORDS)), "template": TWEET,
          "instruction": TWEET_INSTRUCTION, "public_pool": "amazon_reviews"}
QUESTIONS = {"classes": dict(zip(TREC_CLASSES, TREC_WORDS)), "template": QUESTION, "instruction": TREC_INSTRUCTION,
             "public_pool": "movie_questions"}
BUILTIN = {  # task name -> declaration, in the schema of a task file
    "rotten_tomatoes": {"data": "offline:rotten_tomatoes", **MOVIES},
    "trec": {"data": "offline:trec", **QUESTIONS},
    "tweet_sentiment": {"data": "offline:tweet_sentiment", **TWEETS},
    "hf/sst2": {"data": "hf:stanfordnlp/sst2", "text": "sentence", "hub_splits": ["train", "validation"], **MOVIES},
    "hf/imdb": {"data": "hf:stanfordnlp/imdb", "hub_splits": ["train", "test"], **MOVIES},
    "hf/rotten_tomatoes": {"data": "hf:cornell-movie-review-data/rotten_tomatoes", **MOVIES},
    "hf/tweet_eval": {"data": "hf:cardiffnlp/tweet_eval:sentiment", **TWEETS},
    "hf/ag_news": {"data": "hf:fancyzhx/ag_news", "hub_splits": ["train", "test"],
                   "classes": {"world": (" world", " politics"), "sports": (" sports",), "business": (" business",),
                               "technology": (" technology", " science")},
                   "template": "Article: {text}\nTopic:", "public_pool": "news",
                   "instruction": "Classify the topic of the news article: world, sports, business or technology."},
    "hf/trec": {"data": "hf:CogComp/trec", "label": "coarse_label", "hub_splits": ["train", "test"], **QUESTIONS},
}

TASKS: dict[str, Task] = {name: declare(name, spec) for name, spec in BUILTIN.items()}

PUBLIC_POOLS: dict[str, Callable[[], list[str]]] = {
    "amazon_reviews": load_amazon_reviews,
    "news": load_news,
    "movie_plots": load_movie_plots,
    "movie_questions": load_movie_questions,
}

# The public pool the provider transfers with when a profile names none: text of the same kind as the task's.
DEFAULT_POOLS = {name: spec["public_pool"] for name, spec in BUILTIN.items()}
BUILTIN_NAMES = frozenset(TASKS) | frozenset(PUBLIC_POOLS)


def register_file(path: str | Path) -> list[str]:
    """Declare the tasks and public pools of a YAML task file (``examples/sms_spam.yaml`` is one).

    Nothing is registered unless the whole file is valid; a built-in name cannot be declared again, a name
    from another task file can (the latest declaration counts). The data are not read: a provider registers
    the owner's task file for its template and label words, without the data. Returns the task names.
    """
    declared, pools, defaults = read_task_file(path, BUILTIN_NAMES, PUBLIC_POOLS)
    PUBLIC_POOLS.update(pools)
    TASKS.update(declared)
    for name in declared:
        DEFAULT_POOLS.pop(name, None)
    DEFAULT_POOLS.update(defaults)
    _splits.cache_clear()
    return list(declared)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def fingerprint(name: str) -> str:
    """Digest of a declared task's wording and examples: a prompt tuned before either changed is stale.

    Built-in tasks are fixed by this package's version, so their prompts' run keys leave this out.
    """
    task, splits = get_task(name), _splits(name)
    payload = [task.classes, task.label_words, task.template, task.instruction,
               {split: [data.texts, list(map(int, data.labels))] for split, data in splits.items()}]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def public_texts(pool: str) -> list[str]:
    """Unlabelled public text: what the provider may use."""
    if pool not in PUBLIC_POOLS:
        raise KeyError(f"unknown public pool {pool!r}; known pools: {sorted(PUBLIC_POOLS)}")
    return PUBLIC_POOLS[pool]()


def default_pool(task: str) -> str:
    if task not in DEFAULT_POOLS:
        raise KeyError(f"no default public pool for task {task!r}; name one (transfer.public_pool) from "
                       f"{sorted(PUBLIC_POOLS)}")
    return DEFAULT_POOLS[task]


def public_sample(pool: str, n: int | None, holdout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` training (None: all the others) and ``holdout`` held-out texts of a public pool (distinct texts,
    seeded order).

    The held-out texts come first in the order and the training texts after them, so the held-out set does
    not depend on ``n`` and a larger ``n`` extends a smaller one.
    """
    texts = list(dict.fromkeys(t.strip() for t in public_texts(pool) if t.strip()))
    n = len(texts) - holdout if n is None else n
    if n + holdout > len(texts):
        raise ValueError(f"public pool {pool!r} has {len(texts)} distinct texts; asked for {n} + {holdout} held out")
    order = np.random.default_rng(seed).permutation(len(texts))
    chosen = [texts[i] for i in order[:holdout + n]]
    return chosen[holdout:], chosen[:holdout]


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation whose every prefix is (as nearly as possible) stratified by label."""
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        # spread class c's examples evenly over [0, 1): prefix of length n holds ~n*share of each class
        keys[rng.permutation(idx)] = (np.arange(len(idx)) + rng.random()) / len(idx)
    return np.argsort(keys, kind="stable")


def _deduplicate(texts: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
    """Keep one copy of each repeated text; drop texts that occur with different labels."""
    seen: dict[str, set[int]] = {}
    for text, label in zip(texts, labels):
        seen.setdefault(text, set()).add(label)
    unique = [(t, next(iter(ls))) for t, ls in seen.items() if len(ls) == 1]
    return [t for t, _ in unique], [l for _, l in unique]


def _carve(texts: list[str], labels: list[int], shares: dict[str, float],
           rng: np.random.Generator) -> dict[str, Examples]:
    """Cut each class's examples, in a seeded order, into ``shares`` of its size (in order); the rest is train."""
    y = np.asarray(labels)
    parts: dict[str, list[int]] = {s: [] for s in FRACTIONS}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for split, share in shares.items():
            n = int(round(len(idx) * share))
            parts[split] += idx[start:start + n].tolist()
            start += n
        parts["train"] += idx[start:].tolist()
    return {s: ([texts[i] for i in idx], [labels[i] for i in idx]) for s, idx in parts.items()}


def _own_splits(data: dict[str, Examples], rng: np.random.Generator) -> dict[str, Examples]:
    """The data's own splits with each text in one of them only (test first, then validation); data without
    a validation split get one carved out of train, the same share of it as a seeded split would take."""
    parts, taken = {}, set()
    for split in ("test", "validation", "train"):
        texts, labels = _deduplicate(*data.get(split, ([], [])))
        keep = [i for i, t in enumerate(texts) if t not in taken]
        taken.update(texts)
        parts[split] = ([texts[i] for i in keep], [labels[i] for i in keep])
    if "validation" not in data:
        share = FRACTIONS["validation"] / (1 - FRACTIONS["test"])
        carved = _carve(*parts["train"], {"validation": share}, rng)
        parts["train"], parts["validation"] = carved["train"], carved["validation"]
    return parts


@lru_cache(maxsize=None)
def _splits(name: str) -> dict[str, Split]:
    """Split a task once: a text lands in exactly one split (repeats would leak train into test)."""
    data = get_task(name).load()
    rng = np.random.default_rng(SPLIT_SEED)
    if isinstance(data, dict):
        parts = _own_splits(data, rng)
    else:
        parts = _carve(*_deduplicate(*data), {"test": FRACTIONS["test"], "validation": FRACTIONS["validation"]}, rng)
    out = {}
    for split in FRACTIONS:
        texts, labels = parts[split]
        order = _stratified_order(np.asarray(labels, dtype=int), rng)
        out[split] = Split([texts[i] for i in order], [int(labels[i]) for i in order])
    return out


def load_split(name: str, split: str, limit: int = 0) -> Split:
    """The fixed ``split`` of task ``name``; ``limit`` > 0 takes a stratified prefix of that many.

    A split that comes out empty, or a train split missing a class, is refused in one line here rather than
    failing deep in a stage; only the split asked for is checked, so a test-only use of small data still works.
    """
    if split not in FRACTIONS:
        raise KeyError(f"unknown split {split!r}; splits: {list(FRACTIONS)}")
    splits, task = _splits(name), get_task(name)
    data = splits[split]
    if not data or split == "train" and len(set(data.labels)) < len(task.classes):
        sizes = ", ".join(f"{s} {len(d)}" for s, d in splits.items())
        raise TaskError(f"{task.source}: {sum(map(len, splits.values()))} rows of {len(task.classes)} classes are too "
                        f"few for a {split} split ({sizes}): each split needs a row, and train one of each class")
    if limit and limit < len(data):
        data = Split(data.texts[:limit], data.labels[:limit])
    return data
