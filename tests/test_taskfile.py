"""Tasks and public pools declared in YAML files: data files read alike, own splits kept, every mistake named."""

import hashlib
import json
import re

import pandas as pd
import pytest
import yaml

from post import tasks
from post.transfer import ProviderBoundary, provider_view

CLASSES = {"ham": [" no"], "spam": [" yes"]}
DECLARATION = {"classes": CLASSES, "template": "Message: {text}\nSpam?", "instruction": "Is the message spam?"}
FRAME = pd.DataFrame({"text": [f"message {i}" for i in range(40)],
                      "label": ["spam" if i % 4 else "ham" for i in range(40)]})  # 10 ham, 30 spam


@pytest.fixture
def declare(tmp_path):
    """Write a task file (``{name: declaration}`` and pools) under tmp_path and register it; forget it after."""
    saved = [(registry, dict(registry)) for registry in (tasks.TASKS, tasks.PUBLIC_POOLS, tasks.DEFAULT_POOLS)]

    def register(declared: dict, pools: dict | None = None) -> list[str]:
        path = tmp_path / "tasks.yaml"
        path.write_text(yaml.safe_dump({"tasks": declared, **({"pools": pools} if pools else {})}))
        return tasks.register_file(path)

    yield register
    for registry, before in saved:
        registry.clear()
        registry.update(before)
    tasks._splits.cache_clear()


def splits(name: str) -> dict:
    return {s: tasks.load_split(name, s) for s in tasks.FRACTIONS}


def test_csv_jsonl_and_parquet_files_give_the_same_task(declare, tmp_path):
    FRAME.to_csv(tmp_path / "a.csv", index=False)
    FRAME.assign(label=(FRAME.label == "spam").astype(int)).to_json(tmp_path / "b.jsonl", orient="records", lines=True)
    FRAME.rename(columns={"text": "message"}).to_parquet(tmp_path / "c.parquet")
    declare({"a": {"data": "a.csv", **DECLARATION}, "b": {"data": "b.jsonl", **DECLARATION},  # labels as indices
             "c": {"data": "c.parquet", "text": "message", **DECLARATION}})
    assert splits("a") == splits("b") == splits("c")
    assert [len(s) for s in splits("a").values()] == [28, 4, 8]  # 70/10/20, stratified: 10 ham, 30 spam
    assert sum(splits("a")["test"].labels) == 6


def test_a_split_column_is_kept_and_validation_carved_from_train_when_missing(declare, tmp_path):
    frame = FRAME.assign(part=["test" if i < 8 else "train" for i in range(40)])
    frame = pd.concat([frame, frame.iloc[:1].assign(part="train")])  # a test text repeated in train
    frame.to_csv(tmp_path / "split.csv", index=False)
    declare({"own": {"data": "split.csv", "split": "part", **DECLARATION}})
    own = splits("own")
    assert set(own["test"].texts) == {f"message {i}" for i in range(8)}
    assert len(own["validation"]) == 4 and len(own["train"]) == 28  # an eighth of train, per class
    train = set(own["train"].texts)
    assert not train & set(own["test"].texts) and not train & set(own["validation"].texts)


def test_the_built_in_tasks_are_declarations_with_their_splits_unchanged():
    assert tasks.TASKS["trec"].source == "offline:trec"
    assert tasks.TASKS["hf/tweet_eval"].source == "hf:cardiffnlp/tweet_eval:sentiment"
    assert tasks.DEFAULT_POOLS["trec"] == "movie_questions" and tasks.DEFAULT_POOLS["hf/ag_news"] == "news"
    digests = {name: hashlib.sha256(json.dumps([split.texts, split.labels]).encode()).hexdigest()[:16]
               for name in ("rotten_tomatoes", "trec", "tweet_sentiment")
               for split in [tasks.load_split(name, "test")]}
    assert digests == {"rotten_tomatoes": "6fea735c7d67274c", "trec": "23db1b281dd5fe01",  # as before declarations
                       "tweet_sentiment": "24c529d4a3ff57fd"}


def test_public_pools_from_files_and_the_default_pool(declare, tmp_path):
    (tmp_path / "lines.txt").write_text("".join(f"public line {i}\n" for i in range(30)) + "\n   \n")
    rows = pd.DataFrame({"body": [f"row {i}" for i in range(5)]})
    rows.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    FRAME.to_csv(tmp_path / "a.csv", index=False)
    declare({"a": {"data": "a.csv", **DECLARATION, "public_pool": "lines"}},
            {"lines": "lines.txt", "rows": {"data": "rows.jsonl", "text": "body"}})
    assert tasks.public_texts("lines") == [f"public line {i}" for i in range(30)]
    assert tasks.public_texts("rows")[-1] == "row 4" and tasks.default_pool("a") == "lines"
    train, held = tasks.public_sample("lines", 20, 5)
    assert len(set(train + held)) == 25


def test_the_provider_cannot_read_a_file_tasks_data(declare, tmp_path):
    FRAME.assign(part=["test" if i < 8 else "train" for i in range(40)]).to_csv(tmp_path / "a.csv", index=False)
    declare({"a": {"data": "a.csv", "split": "part", **DECLARATION}})
    with pytest.raises(ProviderBoundary):
        provider_view(tasks.get_task("a")).load()


DECLARATION_ERRORS = {  # declaration -> error
    "unknown key": ({"data": "a.csv", "labels": "x", **DECLARATION}, "unknown key(s) ['labels'] for file data"),
    "missing key": ({"data": "a.csv", "classes": CLASSES}, "missing template, instruction"),
    "unquoted yes/no": ({**DECLARATION, "data": "a.csv", "classes": {True: [" yes"], False: [" no"]}},
                        "class name False is not a string; quote it"),
    "one class": ({**DECLARATION, "data": "a.csv", "classes": {"ham": [" no"]}}, "must map at least two class names"),
    "word for two classes": ({**DECLARATION, "data": "a.csv", "classes": {"a": [" no"], "b": [" no"]}},
                             "label word ' no' stands for both 'a' and 'b'"),
    "another field": ({**DECLARATION, "data": "a.csv", "template": "{text} in {place}"},
                      "has a field other than {text}"),
    "unknown file type": ({"data": "a.xlsx", **DECLARATION}, "a data file is .csv, .jsonl, .parquet"),
    "unknown offline data": ({"data": "offline:imdb", **DECLARATION}, "offline data are offline:rotten_tomatoes"),
    "unknown pool": ({"data": "a.csv", "public_pool": "wiki", **DECLARATION}, "public_pool = 'wiki' is neither"),
}


@pytest.mark.parametrize("case", DECLARATION_ERRORS)
def test_a_bad_declaration_is_refused_naming_the_key_and_registers_nothing(case, declare):
    declaration, error = DECLARATION_ERRORS[case]
    before = dict(tasks.TASKS)
    with pytest.raises(tasks.TaskError, match=re.escape(error)):
        declare({"fine": {"data": "a.csv", **DECLARATION}, "mine": declaration})
    assert tasks.TASKS == before


def test_built_in_names_and_broken_files_are_refused(declare, tmp_path):
    with pytest.raises(tasks.TaskError, match="'trec' cannot name a task or pool: built in"):
        declare({"trec": {"data": "a.csv", **DECLARATION}})
    (tmp_path / "broken.yaml").write_text("tasks: [unclosed\n")
    with pytest.raises(tasks.TaskError, match="broken.yaml is not valid YAML"):
        tasks.register_file(tmp_path / "broken.yaml")
    with pytest.raises(tasks.TaskError, match="nothing.yaml: no such task file"):
        tasks.register_file(tmp_path / "nothing.yaml")


def test_editing_a_task_file_changes_the_prompts_run_key(declare, tmp_path, monkeypatch):
    from post import tune
    from post.config import load_config

    monkeypatch.setattr(tune, "source_fingerprint", lambda profile: "source")
    FRAME.to_csv(tmp_path / "data.csv", index=False)
    declare({"spam": {**DECLARATION, "data": "data.csv"}})
    cfg = load_config("smoke", {"data": {"tasks": ["spam"]}})
    before = tune.run_key(cfg, "spam", "compt", 8.0)
    assert tune.run_key(cfg, "spam", "compt", 8.0) == before
    declare({"spam": {**DECLARATION, "data": "data.csv", "template": "Text: {text}\nSpam?"}})
    tasks._splits.cache_clear()
    reworded = tune.run_key(cfg, "spam", "compt", 8.0)
    assert reworded != before  # reworded: the old prompt is stale
    FRAME.assign(label=FRAME.label[::-1].values).to_csv(tmp_path / "data.csv", index=False)
    declare({"spam": {**DECLARATION, "data": "data.csv", "template": "Text: {text}\nSpam?"}})
    tasks._splits.cache_clear()
    assert tune.run_key(cfg, "spam", "compt", 8.0) not in (before, reworded)  # relabelled data: stale too
