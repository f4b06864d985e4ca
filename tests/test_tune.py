import dataclasses
import math
from pathlib import Path

import pytest
import torch

import post.models
from post import artifacts, dp, files, plots, public_data, tables, transfer, tune
from post.config import load_config
from post.models import load_model
from post.prompt import PROVIDER_DP_KEYS, PROVIDER_KEYS, NotReleasable, SoftPrompt, read_record
from post.tasks import get_task, load_split

TASK = get_task("rotten_tomatoes")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return load_split(TASK.name, "train", 16), load_split(TASK.name, "validation", 8)


def settings(**changes):
    return dataclasses.replace(load_config("smoke").tune, **changes)


def test_tuning_descends_the_training_loss(tiny, data):
    model, tok = tiny
    train = load_split(TASK.name, "train", 8)
    prompt = tune.tune_prompt(model, tok, TASK, train, settings(batch_size=8, lr=0.01, precision="fp32"),
                              math.inf, 15, progress=False)
    loss = prompt.record["curve"]["loss"]  # full batch: the same 8 examples every step
    assert len(loss) == 15 and prompt.record["curve"]["batch_size"] == [8] * 15
    assert all(b < a for a, b in zip(loss, loss[1:])) and loss[-1] < loss[0] - 0.01
    assert prompt.meta["dp"] == {"private": False} and prompt.record["selected_step"] == 15
    assert prompt.record["init_text"] == TASK.instruction and prompt.meta["model"] == "tiny-random-llama"
    cost = prompt.record["cost"]
    assert cost["examples"] == 120 and cost["flops"] > 0 and cost["wall_seconds"] > 0
    assert not any(p.requires_grad for p in model.parameters())  # only the prompt is trained


def test_dp_tuning_records_its_guarantee(tiny, data):
    model, tok = tiny
    train, validation = data
    prompt = tune.tune_prompt(model, tok, TASK, train, settings(batch_size=2, select="validation", patience=1,
                                                                 dp_randomness="seeded"), 4.0, 12,
                              validation, seed=3, progress=False)
    privacy = prompt.meta["dp"]
    assert privacy == prompt.record["dp"] and privacy["randomness"] == dp.NOT_PRIVATE  # seeded: never released
    assert privacy["private"] and privacy["accountant"] == "prv"
    assert privacy["epsilon"] == 4.0 and privacy["delta"] == 1e-5 and privacy["noise_multiplier"] > 0
    assert privacy["sample_rate"] == 2 / 16 and privacy["steps"] == privacy["steps_taken"] == 12
    assert 3.9 < privacy["prv_epsilon"] <= 4.0 <= privacy["rdp_epsilon"]  # spent as planned; RDP is looser
    curve = prompt.record["curve"]
    assert 0 in curve["batch_size"]  # an empty Poisson batch occurred and was a normal step
    assert curve["loss"][curve["batch_size"].index(0)] is None
    # a DP prompt keeps its last step, and takes all its planned steps, even when the profile selects on
    # validation and stops at the plateau
    assert prompt.record["select"] == "last" and prompt.record["selected_step"] == prompt.record["steps"] == 12
    assert prompt.record["validation"]["step"] == [0, 2, 4, 6, 8, 10, 12]


def test_selection_uses_validation_only(tiny, data, monkeypatch):
    model, tok = tiny
    train, validation = data
    seen = []
    real = tune.accuracy
    monkeypatch.setattr(tune, "accuracy",
                        lambda m, t, task, split, *a: seen.append(split) or real(m, t, task, split, *a))
    prompt = tune.tune_prompt(model, tok, TASK, train, settings(select="validation", lr=0.05), math.inf, 6,
                              validation, progress=False)
    assert seen and all(split is validation for split in seen)
    evals = prompt.record["validation"]
    best = max(evals["accuracy"])
    assert len(set(evals["accuracy"])) > 1  # otherwise there is nothing to select
    assert prompt.record["selected_step"] == evals["step"][evals["accuracy"].index(best)]
    again = tune.accuracy(model, tok, TASK, validation, prompt, 32, 64, False)["accuracy"]
    assert again == best  # the kept weights are the selected step's


def test_a_run_stops_at_its_validation_plateau_and_keeps_its_best_step(tiny, data):
    model, tok = tiny
    train, validation = data
    # lr 0: the accuracy never improves on step 0, so two evaluations later the run has plateaued
    prompt = tune.tune_prompt(model, tok, TASK, train, settings(select="validation", patience=2, eval_every=3,
                                                                lr=0.0), math.inf, 50, validation, progress=False)
    record = prompt.record
    assert record["steps"] == 6 and record["max_steps"] == 50 and record["selected_step"] == 0
    assert record["curve"]["step"] == list(range(1, 7)) and record["cost"]["examples"] == 6 * 8
    evals = record["validation"]  # every evaluation carries the run's cost so far: the cost-to-accuracy curve
    assert evals["step"] == [0, 3, 6] and len(set(evals["accuracy"])) == 1
    assert 0 < evals["flops"][0] < evals["flops"][1] < evals["flops"][2] <= record["cost"]["flops"]
    assert evals["seconds"] == sorted(evals["seconds"]) and evals["seconds"][-1] <= record["cost"]["wall_seconds"]


def test_only_non_private_runs_stop_at_a_plateau_and_their_key_says_so():
    plateau = settings(select="validation", patience=3, max_steps=400)
    assert tune.run_settings(plateau, math.inf, 50) == (plateau, 400)  # up to max_steps, then the plateau rule
    assert tune.run_settings(settings(select="validation", patience=3), math.inf, 50)[1] == 50  # no cap: steps
    assert tune.run_settings(plateau, 8.0, 50)[1] == tune.run_settings(settings(), 8.0, 50)[1]  # fixed length
    cfg = load_config("smoke")
    plateau_cfg = dataclasses.replace(cfg, tune=plateau)
    # the plateau rule is part of what makes a non-private prompt, never of a DP one (so DP prompts are reused)
    assert tune.run_key(plateau_cfg, TASK.name, "fullpt", math.inf) != tune.run_key(cfg, TASK.name, "fullpt",
                                                                                    math.inf)
    assert tune.run_key(plateau_cfg, TASK.name, "fullpt", 8.0) == tune.run_key(cfg, TASK.name, "fullpt", 8.0)


@pytest.mark.stage
def test_dp_runs_cannot_be_replayed_unless_seeded(tiny, data):
    """Secret randomness: the same configuration twice gives two different prompts, so nobody can rerun the
    training with and without an example to see which matches. The seeded mode replays, and says so."""
    model, tok = tiny
    train = data[0]
    run = lambda randomness: tune.tune_prompt(model, tok, TASK, train, settings(dp_randomness=randomness),  # noqa
                                              4.0, 3, seed=0, progress=False)
    first, second = run("secret"), run("secret")
    assert not torch.equal(first.weight, second.weight)
    assert first.meta["dp"]["randomness"] == "secret" and "seed" not in first.meta
    replayed = [run("seeded") for _ in range(2)]
    assert torch.equal(replayed[0].weight, replayed[1].weight)
    assert replayed[0].meta["dp"]["randomness"] == dp.NOT_PRIVATE


@pytest.mark.stage
def test_the_provider_file_is_whitelisted_and_transfers(tiny, data, tmp_path):
    """What 02 writes for the provider carries the weights and public facts only; 03 runs on it, and refuses
    a seeded or noiseless DP prompt with the reason."""
    model, tok = tiny
    train, validation = data
    cfg = load_config("smoke")
    made = tune.tune_prompt(model, tok, TASK, train, settings(), 8.0, 4, validation, progress=False)
    path = made.save(tmp_path / "compt.pt")
    meta = torch.load(path, weights_only=True)["meta"]
    assert set(meta) <= PROVIDER_KEYS and set(meta["dp"]) <= PROVIDER_DP_KEYS
    assert {"task", "template", "epsilon", "model", "hidden_size", "length"} <= set(meta)
    assert {"delta", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "n", "accountant",
            "prv_epsilon"} <= set(meta["dp"]) and meta["template"] == TASK.template
    record = read_record(path)  # the owner's side: everything, curves and costs included
    assert {"curve", "validation", "cost", "batch_size", "seed"} <= set(record) and record["dp"] == meta["dp"]

    prompt = SoftPrompt.load(path, model)
    prepared = public_data.prepare(cfg, model, model, tok, TASK.name)
    result, _ = transfer.post_transfer(cfg, model, model, tok, prepared, prompt, progress=False)
    moved = result.prompt.meta
    assert moved["dp"] == meta["dp"] and moved["task"] == TASK.name
    assert set(moved) - PROVIDER_KEYS == {"source_model", "source_digest", "cost", "transfer"}
    assert moved["source_digest"] == prompt.digest()  # names the source prompt by its weights, nothing else
    assert moved["cost"]["flops"] > 0  # the transfer's own cost, not the owner's

    seeded = tune.tune_prompt(model, tok, TASK, train, settings(dp_randomness="seeded"), 8.0, 2, progress=False)
    noiseless = tune.tune_prompt(model, tok, TASK, train, settings(), 8.0, 2, progress=False, add_noise=False)
    for bad, reason in ((seeded, dp.NOT_PRIVATE), (noiseless, "without noise")):
        bad = SoftPrompt.load(bad.save(tmp_path / "bad.pt"), model)
        with pytest.raises(NotReleasable, match=reason):
            transfer.post_transfer(cfg, model, model, tok, prepared, bad, progress=False)


def test_dp_runs_take_larger_batches_and_fewer_steps():
    tune_cfg = settings(batch_size=16, dp_batch_size=64)
    assert tune.run_settings(tune_cfg, math.inf, 50) == (tune_cfg, 50)
    dp_cfg, steps = tune.run_settings(tune_cfg, 8.0, 50)
    assert dp_cfg.batch_size == 64 and steps == 13  # 13 * 64 >= 50 * 16 examples
    assert tune.run_settings(settings(dp_batch_size=0), 8.0, 50)[1] == 50


def test_bad_settings_are_refused(tiny, data):
    model, tok = tiny
    with pytest.raises(ValueError, match="precision"):
        tune.tune_prompt(model, tok, TASK, data[0], settings(precision="fp16"), math.inf, 1, progress=False)
    with pytest.raises(ValueError, match="epsilon"):
        tune.tune_prompt(model, tok, TASK, data[0], settings(), 0.0, 1, progress=False)


@pytest.fixture
def stage(workspace, monkeypatch):
    """Smoke profile with artifacts/results/figures in a temporary directory and a 'distilled' source model."""
    cfg = load_config("smoke", {"data": {"tasks": ["rotten_tomatoes", "trec"], "max_test": 16}})
    source = artifacts.source_model_dir("smoke")
    model = load_model("tiny-random-llama", seed=1)
    model.save_pretrained(source)
    post.models.load_tokenizer("tiny-random-llama").save_pretrained(source)
    loaded = []
    real_model, real_tokenizer = post.models.load_model, post.models.load_tokenizer
    monkeypatch.setattr(post.models, "load_model",
                        lambda name, *a, **k: loaded.append(name) or real_model(name, *a, **k))
    monkeypatch.setattr(post.models, "load_tokenizer", lambda name: loaded.append(name) or real_tokenizer(name))
    return cfg, source, loaded


def test_owner_side_never_loads_the_target(stage):
    cfg, source, loaded = stage
    rows = tune.tune_method(cfg, "compt", progress=False)
    assert loaded and set(loaded) == {str(source)}
    assert cfg.model not in loaded
    assert len(rows) == len(cfg.data.tasks) * len(cfg.tune.epsilons)
    assert {r["model"] for r in rows} == {str(source)}


@pytest.mark.stage
def test_stage_writes_prompts_results_and_skips_finished_work(stage):
    cfg, source, loaded = stage
    rows = tune.run_tune(cfg, progress=False)
    assert cfg.model in loaded  # FullPT is tuned on the target
    assert [(r["method"], r["epsilon"]) for r in rows if r["task"] == "trec"] == \
        [("CompPT", "inf"), ("CompPT", "8"), ("FullPT", "inf")]
    for row in rows:
        prompt = SoftPrompt.load(row["prompt"])
        assert prompt.digest() == row["prompt_digest"] and 0 <= row["accuracy"] <= 1 and row["n"] == 16
        assert (row["epsilon"] == "inf") != prompt.meta["dp"]["private"]
        assert set(prompt.meta) <= PROVIDER_KEYS and "run_key" not in prompt.meta  # the key is the owner's
        assert read_record(row["prompt"])["run_key"] == tune.run_key(cfg, row["task"], "compt" if row["method"] ==
                                                                     "CompPT" else "fullpt", math.inf if
                                                                     row["epsilon"] == "inf" else 8.0)
        # a DP row publishes only what the guarantee covers: not the time, FLOPs or examples its draws took
        assert prompt.meta["dp"]["private"] == (not set(tune.DP_UNPUBLISHED) & set(row))
        # DP runs: batches of dp_batch_size (16), the same examples in fewer steps
        assert (row["batch_size"], row["steps"]) == ((8, 4) if row["epsilon"] == "inf" else (16, 2))
    assert files.read_json(artifacts.results_dir("smoke") / "tune.json") == rows
    loaded.clear()
    assert tune.run_tune(cfg, progress=False) == rows and loaded == []  # nothing retrained, nothing loaded
    made = {r["prompt"]: Path(r["prompt"]).stat().st_mtime_ns for r in rows}
    (artifacts.results_dir("smoke") / "tune.json").unlink()  # results lost: prompts are rescored, not retrained
    rescored = tune.run_tune(cfg, progress=False)
    assert [r["accuracy"] for r in rescored] == [r["accuracy"] for r in rows]
    assert {r["prompt"]: Path(r["prompt"]).stat().st_mtime_ns for r in rescored} == made
    loaded.clear()
    more = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, steps=cfg.tune.steps + 1))
    again = tune.run_tune(more, progress=False)
    assert loaded == [str(source), str(source)]  # CompPT retrained, FullPT (same settings) reused
    assert [r["prompt_digest"] for r in again if r["method"] == "FullPT"] == \
        [r["prompt_digest"] for r in rows if r["method"] == "FullPT"]
    plots.plot_tuning_vs_epsilon(again, "smoke")
    plots.plot_training_curves(again, "smoke")
    curves = tables.training_curves(again)
    assert set(curves.metric) == {"train loss", "validation accuracy"}
    assert set(curves.epsilon) == {"inf"}  # a DP run's raw curve is the owner's only: never published
    for name in ("tune_accuracy_vs_epsilon", "tune_training_curves"):
        assert all((artifacts.figures_dir("smoke") / f"{name}.{s}").exists() for s in ("png", "pdf", "csv"))
    assert set(tables.privacy_table(again).epsilon) == {"8"}


def test_compt_needs_the_source_model(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "ARTIFACTS", tmp_path)
    with pytest.raises(artifacts.MissingArtifact, match="01_distill"):
        tune.tune_method(load_config("smoke"), "compt", progress=False)

