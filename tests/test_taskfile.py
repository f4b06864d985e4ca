"""Tasks and public pools declared in YAML files: data files read alike, own splits kept, every mistake named."""

import hashlib
import json
import re
import time

import pandas as pd
import pytest
import yaml

from post import tasks
from post.declarations import TaskError
from post.public_data import ProviderBoundary, provider_view

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
    with pytest.raises(TaskError, match=re.escape(error)):
        declare({"fine": {"data": "a.csv", **DECLARATION}, "mine": declaration})
    assert tasks.TASKS == before


def test_built_in_names_and_broken_files_are_refused(declare, tmp_path):
    with pytest.raises(TaskError, match="'trec' cannot name a task or pool: built in"):
        declare({"trec": {"data": "a.csv", **DECLARATION}})
    (tmp_path / "broken.yaml").write_text("tasks: [unclosed\n")
    with pytest.raises(TaskError, match="broken.yaml is not valid YAML"):
        tasks.register_file(tmp_path / "broken.yaml")
    with pytest.raises(TaskError, match="nothing.yaml: no such task file"):
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


def write(path, content: dict):
    """A task file with its keys in the order given (the ``declare`` fixture sorts them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.mark.parametrize("key, value", [("pools.p", "/etc/hostname"), ("pools.p", "../outside.txt"),
                                        ("pools.p", "~/outside.txt"), ("pools.p", "link.txt"),
                                        ("tasks.a.data", "ABSOLUTE"), ("tasks.a.data", "../outside.csv")])
def test_a_task_file_names_only_files_in_its_own_folder(declare, tmp_path, key, value):
    """Else a shared task file could have the provider read any file of its machine as public text."""
    (tmp_path / "outside.txt").write_text("a private line\n")
    FRAME.to_csv(tmp_path / "outside.csv", index=False)
    (tmp_path / "declared").mkdir()
    (tmp_path / "declared" / "link.txt").symlink_to(tmp_path / "outside.txt")
    value = value.replace("ABSOLUTE", str(tmp_path / "outside.csv"))
    data, pool = (value, "lines.txt") if key == "tasks.a.data" else ("a.csv", value)
    path = write(tmp_path / "declared" / "tasks.yaml", {"tasks": {"a": {"data": data, **DECLARATION}},
                                                        "pools": {"p": pool}})
    before = dict(tasks.TASKS), dict(tasks.PUBLIC_POOLS)
    with pytest.raises(TaskError) as err:
        tasks.register_file(path)
    assert f"tasks.yaml: {key} = {value!r} is outside " in str(err.value) and "\n" not in str(err.value)
    assert (dict(tasks.TASKS), dict(tasks.PUBLIC_POOLS)) == before


def test_the_example_task_file_reads_its_data_next_to_it(declare):
    assert tasks.register_file("examples/sms_spam.yaml") == ["sms_spam"]
    assert len(tasks.load_split("sms_spam", "test")) > 0 and tasks.public_texts("public_messages")


def test_numeric_labels_are_class_names_first_and_indices_only_when_none_is(declare, tmp_path):
    """Classes "1", "0" (in that order) with labels 1 / 0: label 1 is class "1", not the class at index 1."""
    FRAME.assign(label=(FRAME.label == "spam").astype(int)).to_csv(tmp_path / "digits.csv", index=False)
    named = {**DECLARATION, "classes": {"1": [" yes"], "0": [" no"]}, "data": "digits.csv"}
    indexed = {**DECLARATION, "data": "digits.csv"}  # ham, spam: 0 and 1 are no class's name, so indices
    tasks.register_file(write(tmp_path / "tasks.yaml", {"tasks": {"named": named, "indexed": indexed}}))
    spam = [i % 4 != 0 for i in range(40)]
    assert tasks.get_task("named").load()[1] == [0 if s else 1 for s in spam]
    assert tasks.get_task("indexed").load()[1] == [1 if s else 0 for s in spam]


def test_a_label_column_of_class_names_and_other_values_is_refused(declare, tmp_path):
    FRAME.assign(label=[*FRAME.label[:-1], "1"]).to_csv(tmp_path / "mixed.csv", index=False)
    declare({"mixed": {**DECLARATION, "data": "mixed.csv"}})
    with pytest.raises(TaskError) as err:
        tasks.get_task("mixed").load()
    assert "mixed.csv: label '1' (data row 40) is not a class (ham, spam)" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_data_too_few_to_split_are_refused_in_one_line(declare, tmp_path, split):
    """Three rows all land in train; a stage asking for validation or test rows is stopped, not handed none."""
    FRAME[:3].to_csv(tmp_path / "three.csv", index=False)
    declare({"three": {**DECLARATION, "data": "three.csv"}})
    with pytest.raises(TaskError) as err:
        tasks.load_split("three", split)
    assert f"three.csv: 3 rows of 2 classes are too few for a {split} split (train 3, validation 0, test 0)" in str(
        err.value) and "\n" not in str(err.value)
    assert len(tasks.load_split("three", "train")) == 3


def test_an_unreachable_hub_dataset_is_one_line_and_fast(declare, monkeypatch):
    monkeypatch.delenv("POST_HUB_MIRROR", raising=False)  # tests run with HF_HUB_OFFLINE=1 (conftest)
    declare({"hub": {**DECLARATION, "data": "hf:nobody/nothing"}})
    start = time.monotonic()
    with pytest.raises(TaskError) as err:
        tasks.load_split("hub", "test")
    assert time.monotonic() - start < 10
    assert str(err.value).startswith("hf:nobody/nothing cannot be loaded") and "POST_HUB_MIRROR" in str(err.value)
    assert "\n" not in str(err.value)
