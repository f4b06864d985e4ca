"""The held-out tasks (heldout/heldout.yaml): declared as a user's task file is, with usable splits, single-token
label words, public pools that share no text with their task, and data files that make_heldout.py reproduces."""

import importlib.util
import re
from pathlib import Path

import pandas as pd
import pytest

from post import tasks
from post.config import load_config
from post.declarations import load_yaml
from post.models import load_tokenizer
from post.prompt import Verbalizer

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "heldout"
TASK_FILE = HELDOUT / "heldout.yaml"
DECLARED = load_yaml(TASK_FILE)
NAMES = list(DECLARED["tasks"])


@pytest.fixture
def registry():
    """Forget whatever a test registers."""
    saved = [(registry, dict(registry)) for registry in (tasks.TASKS, tasks.PUBLIC_POOLS, tasks.DEFAULT_POOLS)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)
    tasks._splits.cache_clear()


@pytest.fixture
def held_out(registry):
    assert tasks.register_file(TASK_FILE) == NAMES
    return NAMES


def test_the_held_out_tasks_are_declared_as_a_users_task_file(registry):
    header = TASK_FILE.read_text().split("\ntasks:")[0]
    assert "declared on 2026-12-07" in header and "no setting of the study was chosen on them" in header
    assert len(NAMES) >= 2 and not set(NAMES) & tasks.BUILTIN_NAMES
    cfg = load_config("smoke", {"data": {"task_files": ["heldout/heldout.yaml"], "tasks": NAMES}})
    assert cfg.data.tasks == tuple(NAMES)
    for name in NAMES:
        task = tasks.get_task(name)
        assert 2 <= len(task.classes) <= 3 and Path(task.source).parent.resolve() == HELDOUT
        assert tasks.default_pool(name) in DECLARED["pools"]


def test_every_split_is_non_empty_with_every_class_and_no_text_twice(held_out):
    for name in held_out:
        task, seen = tasks.get_task(name), set()
        frame = pd.read_csv(HELDOUT / DECLARED["tasks"][name]["data"])
        assert not frame.text.str.strip().duplicated().any(), name
        assert set(frame.label) == set(task.classes) and set(frame.split) == set(tasks.FRACTIONS), name
        for split in tasks.FRACTIONS:
            data = tasks.load_split(name, split)
            assert sorted(set(data.labels)) == list(range(len(task.classes))), (name, split)
            assert not seen & set(data.texts), (name, split)
            seen |= set(data.texts)
        assert len(seen) == len(frame), name  # post kept every row: none was a repeat


def test_label_words_are_single_tokens_of_the_target(held_out):
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    for name in held_out:
        task = tasks.get_task(name)
        for word in (w for words in task.label_words for w in words):
            assert word.startswith(" ") and len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
        Verbalizer.for_task(task, tokenizer)  # what every run checks when it loads the model


def words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def found_in(texts: list[str], others: list[str], n: int = 12) -> list[str]:
    """The texts that share a run of ``n`` words with one of ``others``, or that a shorter one is part of."""
    grams = set()
    for other in others:
        w = words(other).split()
        grams |= {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}
    joined = " " + " \n ".join(map(words, others)) + " "
    hits = []
    for text in texts:
        w = words(text).split()
        if (any(" ".join(w[i:i + n]) in grams for i in range(len(w) - n + 1)) if len(w) >= n
                else f" {' '.join(w)} " in joined):
            hits.append(text)
    return hits


def test_each_public_pool_shares_no_text_with_its_task(held_out):
    for name in held_out:
        pool = tasks.public_texts(tasks.default_pool(name))
        data = [t for split in tasks.FRACTIONS for t in tasks.load_split(name, split).texts]
        assert not set(pool) & set(data), name
        assert not found_in(data, pool) and not found_in(pool, data), name


def test_each_public_pool_is_large_enough_for_every_profile(held_out):
    for profile in sorted((ROOT / "params").glob("*.yaml")):
        transfer = load_yaml(profile).get("transfer", {})
        for name in held_out:  # public_sample draws this many distinct texts
            tasks.public_sample(tasks.default_pool(name), transfer.get("public_examples", 0),
                                transfer.get("holdout_examples", 0))


def test_make_heldout_reproduces_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_heldout", HELDOUT / "make_heldout.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.convention_party(tmp_path)
    script.nyt_editorial_sentiment(tmp_path)
    files = [spec["data"] for spec in DECLARED["tasks"].values()] + list(DECLARED["pools"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    for file in files:
        assert (tmp_path / file).read_bytes() == (HELDOUT / file).read_bytes(), file
