"""How a task or a public pool is declared, and what a declaration becomes: a :class:`Task`, a pool's loader.

A task is a declaration: where its examples are (``data``), which columns hold text and label, its classes
with their label words, a template, an instruction, and the public pool the provider transfers with. The
built-in tasks (:data:`post.tasks.BUILTIN`) are declarations of the same kind as the entries of a user's YAML
task file (:func:`read_task_file`; ``examples/sms_spam.yaml`` is one), so a new classification task needs a data
file (CSV, JSON lines, Parquet, or a hub dataset) and a few lines of YAML, no Python. A declaration is checked
when it is registered and its data when they are first read, each problem in one line naming the file.

Nothing here knows which tasks are registered: :mod:`post.tasks` holds the registry, declares its built-in tasks
with :func:`declare`, and passes in the names and pools a task file is checked against.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .offline_data import load_rotten_tomatoes, load_trec, load_tweet_sentiment

SPLITS = ("train", "validation", "test")  # the splits of a task's examples; a data file's split column names them


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
        if not set(where) <= set(SPLITS) or not {"train", "test"} <= set(where):
            raise TaskError(f"{_shown(self.path)}: column {self.split!r} must say train, validation or test on "
                            f"every row, with train and test rows present; it has {sorted(set(where))}")
        return {s: ([t for t, w in zip(texts, where) if w == s], [l for l, w in zip(labels, where) if w == s])
                for s in SPLITS if s in where}

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


def read_task_file(path: str | Path, reserved: Collection[str],
                   known_pools: Collection[str]) -> tuple[dict[str, Task], dict[str, Callable], dict[str, str]]:
    """The tasks, the public pools and the tasks' default pools that a YAML task file declares, all checked.

    ``reserved`` are names the file may not declare (the built-in ones); a task's ``public_pool`` names a pool of
    the file or one of ``known_pools``. The data are not read.
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
        if name in reserved or not (isinstance(name, str) and NAME.fullmatch(name)):
            raise TaskError(f"{_shown(path)}: {name!r} cannot name a task or pool: built in, or not letters, digits "
                            "and _ . - starting with a letter or digit")
    pools = {name: declare_pool(spec, path.parent, f"{_shown(path)}: pools.{name}") for name, spec in pools.items()}
    declared = {name: declare(name, spec, path.parent, f"{_shown(path)}: tasks.{name}") for name, spec in tasks.items()}
    defaults = {name: spec["public_pool"] for name, spec in tasks.items() if "public_pool" in spec}
    for name, pool in defaults.items():
        if not isinstance(pool, str) or pool not in known_pools and pool not in pools:
            raise TaskError(f"{_shown(path)}: tasks.{name}.public_pool = {pool!r} is neither a pool of this file nor "
                            f"one of {', '.join(known_pools)}")
    return declared, pools, defaults
