from collections import Counter
from pathlib import Path

import pytest

from post import declarations, offline_data, tasks
from post.prompt import Verbalizer

OFFLINE = ["rotten_tomatoes", "trec", "tweet_sentiment"]
HUB = {"hf/sst2": 30, "hf/imdb": 30, "hf/rotten_tomatoes": 32, "hf/tweet_eval": 30, "hf/ag_news": 32, "hf/trec": 36}
MIRROR = Path(__file__).parent / "fixtures" / "hub"


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_splits_are_disjoint_stratified_and_fixed(name):
    splits = {s: tasks.load_split(name, s) for s in tasks.FRACTIONS}
    texts = {s: set(d.texts) for s, d in splits.items()}
    assert not texts["train"] & texts["test"] and not texts["validation"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    total = Counter(l for d in splits.values() for l in d.labels)
    test = Counter(splits["test"].labels)
    for label, count in total.items():
        assert abs(test[label] / len(splits["test"]) - count / sum(total.values())) < 0.01
    prefix = tasks.load_split(name, "test", 100)
    assert prefix.texts == splits["test"].texts[:100]
    assert max(Counter(prefix.labels).values()) / 100 < max(test.values()) / len(splits["test"]) + 0.05


def test_offline_task_sizes_match_their_sources():
    raw = {n: len(tasks.get_task(n).load()[0]) for n in OFFLINE}
    assert raw == {"rotten_tomatoes": 12808, "trec": 5452, "tweet_sentiment": 4200}
    for name in OFFLINE:
        texts = [t for s in tasks.FRACTIONS for t in tasks.load_split(name, s).texts]
        assert len(texts) == len(set(texts)) > 0.97 * raw[name]  # repeated texts kept once


def test_deduplicate_drops_conflicting_labels():
    texts, labels = tasks._deduplicate(["a", "b", "a", "c", "c"], [0, 1, 0, 0, 1])
    assert (texts, labels) == (["a", "b"], [0, 1])


@pytest.mark.parametrize("name", OFFLINE)
def test_label_words_are_single_tokens(tiny, name):
    _, tok = tiny
    verbalizer = Verbalizer.for_task(tasks.get_task(name), tok)
    assert verbalizer.token_ids.shape[0] == len(tasks.get_task(name).classes)


@pytest.mark.parametrize("name,rows", HUB.items())
def test_hub_tasks_load_from_a_local_mirror_in_the_hubs_schema(monkeypatch, tiny, name, rows):
    monkeypatch.setenv("POST_HUB_MIRROR", str(MIRROR))
    task = tasks.get_task(name)
    texts, labels = task.load()
    assert len(texts) == rows  # unlabelled rows (label -1) are dropped
    assert set(labels) == set(range(len(task.classes)))
    Verbalizer.for_task(task, tiny[1])
    tasks._splits.cache_clear()
    assert len(tasks.load_split(name, "test")) > 0
    tasks._splits.cache_clear()


def test_without_a_mirror_hub_data_come_from_the_hub(monkeypatch):
    import datasets

    calls = []
    monkeypatch.delenv("POST_HUB_MIRROR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or "rows")
    assert declarations.load_hub_dataset("cardiffnlp/tweet_eval", "sentiment", split="train") == "rows"
    assert calls == [(("cardiffnlp/tweet_eval", "sentiment"), {"split": "train"})]


def test_public_pools_have_text():
    for pool in tasks.PUBLIC_POOLS:
        texts = tasks.public_texts(pool)
        assert len(texts) > 500 and all(isinstance(t, str) and t for t in texts)


def test_the_film_synopses_are_the_carriers_and_share_no_text_with_the_reviews():
    plots = offline_data.load_movie_plots()
    assert plots == offline_data.movie_plots_in_carrier() and len(plots) == 1083
    reviews = {t.strip().lower() for t in offline_data.load_rotten_tomatoes()[0]}
    assert not reviews & {p.lower() for p in plots}


def test_unknown_names_are_clear():
    with pytest.raises(KeyError, match="known tasks"):
        tasks.get_task("sst3")
    with pytest.raises(KeyError, match="known pools"):
        tasks.public_texts("wiki")
