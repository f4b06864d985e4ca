import numpy as np
import pytest

from post import artifacts, evaluate, files
from post.config import load_config
from post.tasks import Split, get_task


def test_accuracy_counts_correct_predictions(tiny):
    model, tok = tiny
    task = get_task("rotten_tomatoes")
    texts = ["good", "bad", "fine", "awful film", "a joy"]
    scores = evaluate.class_scores(model, tok, task, texts, progress=False)
    predicted = scores.argmax(1)
    result = evaluate.accuracy(model, tok, task, Split(texts, predicted.tolist()), progress=False)
    assert result["accuracy"] == 1.0 and result["n"] == 5
    flipped = evaluate.accuracy(model, tok, task, Split(texts, (1 - predicted).tolist()), progress=False)
    assert flipped["accuracy"] == 0.0
    assert sum(result["predicted_share"]) == 5


def test_scores_do_not_depend_on_batch_size(tiny):
    model, tok = tiny
    task = get_task("trec")
    texts = ["Who wrote Hamlet ?", "What is the capital of Peru and why was it founded there ?", "Why ?"]
    a = evaluate.class_scores(model, tok, task, texts, batch_size=1, progress=False)
    b = evaluate.class_scores(model, tok, task, texts, batch_size=3, progress=False)
    assert np.abs(a - b).max() < 1e-4


def test_zero_shot_reuses_results_for_unchanged_settings(monkeypatch, tmp_path):
    monkeypatch.setattr(artifacts, "RESULTS", tmp_path)  # no file from another run can answer for this one
    cfg = load_config("smoke", {"data": {"tasks": ["trec"], "max_test": 12}})
    loads, real_load = [], evaluate.load
    monkeypatch.setattr(evaluate, "load", lambda name, **kw: loads.append(name) or real_load(name, **kw))
    first = evaluate.zero_shot(cfg)
    assert loads == ["tiny-random-llama"] and first[0]["n"] == 12
    assert evaluate.zero_shot(cfg) == first and len(loads) == 1  # unchanged: read back, not recomputed
    evaluate.zero_shot(load_config("smoke", {"data": {"tasks": ["trec"], "max_test": 8}}))
    assert len(loads) == 2  # changed data settings: recomputed


def test_01s_zero_shot_table_reads_validation_only_and_has_one_file(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(artifacts, "RESULTS", tmp_path)
    cfg = load_config("smoke", {"data": {"tasks": ["trec", "rotten_tomatoes"], "max_validation": 6}})
    splits, real = [], evaluate.load_split
    monkeypatch.setattr(evaluate, "load_split", lambda name, split, n: splits.append(split) or real(name, split, n))
    rows = evaluate.validation_zero_shot(cfg, {"a": tiny, "b": tiny})
    assert set(splits) == {"validation"}
    assert [(r["task"], r["model"]) for r in rows] == [(t, m) for t in ("trec", "rotten_tomatoes")
                                                       for m in ("majority class", "a", "b")]
    assert all(r["n"] == 6 for r in rows) and rows[1]["accuracy"] == rows[2]["accuracy"]  # the same model twice
    assert files.read_json(tmp_path / "smoke" / "distill_zero_shot.json") == rows
    assert not (tmp_path / "smoke" / "distill.json").exists()  # 01's stage record has its own writer


def test_bf16_scoring_mostly_agrees_with_fp32_and_bad_precision_is_refused(smol):
    model, tok = smol
    task = get_task("rotten_tomatoes")
    test = evaluate.load_split(task.name, "test", 64)
    exact = evaluate.class_scores(model, tok, task, test.texts, progress=False).argmax(1)
    fast = evaluate.accuracy(model, tok, task, test, progress=False, precision="bf16")
    assert abs(fast["accuracy"] - np.mean(exact == np.asarray(test.labels))) <= 0.05  # 3 of 64 examples
    assert np.abs(np.asarray(fast["predicted_share"]) - np.bincount(exact, minlength=2)).max() <= 3
    with pytest.raises(ValueError, match="precision"):
        evaluate.accuracy(model, tok, task, test, progress=False, precision="fp16")
