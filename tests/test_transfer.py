"""POST transfer: the objective, the cached constant terms, the gradients, the baselines and the provider boundary."""

import copy
import dataclasses
import functools
import inspect
import math
import os
import re
import sys

import pytest
import torch

import post.artifacts as artifacts
import post.config as config
import post.offline_data as offline_data
import post.public_data as public_data
import post.tasks as tasks
import post.transfer as transfer
from post.config import TransferConfig, load_config
from post.cost import plateaued
from post.models import load_model, load_tokenizer, model_name
from post.prompt import SoftPrompt, Verbalizer, encode, next_token_logits

TASK = public_data.provider_view(tasks.get_task("rotten_tomatoes"))
TEXTS = ["Great blender, works every time.", "Broke after two days. Avoid.", "It is fine, I guess.",
         "The battery life is shorter than promised but the screen is lovely and bright.", "Meh."]


pytestmark = pytest.mark.usefixtures("one_thread")


def cut(model, layers, name):
    """A source made like 01's: some of the target's layers, the same embeddings and LM head."""
    source = copy.deepcopy(model)
    source.model.layers = torch.nn.ModuleList([source.model.layers[i] for i in layers])
    for i, layer in enumerate(source.model.layers):
        layer.self_attn.layer_idx = i
    source.config.num_hidden_layers = len(layers)
    source.post_name = name
    return source


@pytest.fixture(scope="module")
def models(tiny):
    target, tok = tiny
    return cut(target, [0, 3], "tiny-source"), target, tok


def source_prompt(model, tok, epsilon=math.inf, seed=3):
    return SoftPrompt.from_vocab(model, 4, seed=seed, epsilon=epsilon, task=TASK.name, template=TASK.template,
                                 dp={"private": not math.isinf(epsilon), "delta": 1e-5}, cost={"wall_seconds": 1.0},
                                 method="compt")


def data_for(source, target, tok, prompt, texts=TEXTS):
    plain = public_data.unprompted(source, target, tok, TASK, texts, batch_size=2, max_text_tokens=32)
    return public_data.public_data(source, tok, TASK, prompt, plain, temperature=2.0, batch_size=2, max_text_tokens=32)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_loss_is_zero_when_target_is_source_and_prompts_match(models, alpha):
    _, target, tok = models
    prompt = source_prompt(target, tok)
    data = data_for(target, target, tok, prompt)
    idx = list(range(len(TEXTS)))
    same, _, _ = transfer.batch_loss(target, tok, TASK, prompt.weight, data, idx, alpha, max_text_tokens=32)
    other = SoftPrompt.from_vocab(target, 4, seed=7).weight
    different, parts, _ = transfer.batch_loss(target, tok, TASK, other, data, idx, alpha, max_text_tokens=32)
    assert abs(same.item()) < 1e-6
    assert different.item() > 1e-3 and min(parts.values()) > 1e-3  # both terms see a different prompt
    assert different.item() == pytest.approx((1 - alpha) * parts["absolute"] + alpha * parts["shift"], rel=1e-5)


def test_cached_constant_terms_equal_recomputed(models):
    source, target, tok = models
    prompt = source_prompt(source, tok)
    data = data_for(source, target, tok, prompt)  # computed in length-sorted batches of 2
    idx = [4, 0, 3]  # recompute live, in another batch, in another order
    batch = encode(TASK, tok, [TEXTS[i] for i in idx], 32)
    with torch.no_grad():
        with_prompt = next_token_logits(source, batch["input_ids"], batch["attention_mask"], prompt.weight)
        without = next_token_logits(source, batch["input_ids"], batch["attention_mask"])
        target_plain = next_token_logits(target, batch["input_ids"], batch["attention_mask"])
    at = torch.tensor(idx)
    torch.testing.assert_close(data.teacher[at], torch.log_softmax(with_prompt / 2, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.teacher_shift[at], torch.log_softmax((with_prompt - without) / 2, -1),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(data.target_plain[at], target_plain, atol=1e-5, rtol=0)
    assert not (data.teacher.requires_grad or data.teacher_shift.requires_grad or data.target_plain.requires_grad)


def test_gradients_flow_only_to_the_target_prompt(models):
    source, target, tok = models
    prompt = source_prompt(source, tok)
    data = data_for(source, target, tok, prompt)
    weight = torch.nn.Parameter(SoftPrompt.from_vocab(target, 4, seed=5).weight)
    loss, _, _ = transfer.batch_loss(target, tok, TASK, weight, data, [0, 1, 2], 0.5, max_text_tokens=32)
    loss.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert prompt.weight.grad is None
    assert all(p.grad is None and not p.requires_grad for m in (source, target) for p in m.parameters())


def test_transfer_lowers_the_held_out_loss_and_selects_on_it(models):
    source, target, tok = models
    prompt = source_prompt(source, tok)
    texts, held = tasks.public_sample("amazon_reviews", 32, 8)
    data, holdout = (data_for(source, target, tok, prompt, t) for t in (texts, held))
    settings = TransferConfig(steps=12, batch_size=8, lr=0.05, eval_every=4, max_text_tokens=32, init="instruction",
                              precision="fp32")
    result = transfer.transfer(target, tok, TASK, prompt, data, holdout, settings, alpha=0.5, progress=False)
    held_losses = {h["step"]: h["holdout_loss"] for h in result.history if "holdout_loss" in h}
    assert sorted(held_losses) == sorted(result.snapshots) == [0, 4, 8, 12]
    assert held_losses[12] < held_losses[0]
    assert result.selected_step == min(held_losses, key=held_losses.get)
    assert torch.equal(result.prompt.weight, result.snapshots[result.selected_step])
    last = transfer.transfer(target, tok, TASK, prompt, data, None, dataclasses.replace(settings, selection="last"),
                             alpha=0.5, progress=False)
    assert last.selected_step == 12 and torch.equal(last.prompt.weight, result.snapshots[12])  # same seed, same run
    assert result.cost.flops > 0 and result.cost.examples >= 12 * 8


def test_label_space_loss_compares_class_distributions(models):
    source, target, tok = models
    prompt = source_prompt(source, tok)
    plain = public_data.unprompted(source, target, tok, TASK, TEXTS, batch_size=2, max_text_tokens=32)
    data = public_data.public_data(source, tok, TASK, prompt, plain, batch_size=2, max_text_tokens=32, space="labels")
    assert data.teacher.shape == data.teacher_shift.shape == data.target_plain.shape == (len(TEXTS), 2)
    verbalizer = Verbalizer.for_task(TASK, tok)
    weight = SoftPrompt.from_vocab(target, 4, seed=5).weight
    loss, parts, _ = transfer.batch_loss(target, tok, TASK, weight, data, [0, 1], 0.0, max_text_tokens=32)
    batch = encode(TASK, tok, TEXTS[:2], 32)
    with torch.no_grad():
        classes = verbalizer.scores(next_token_logits(target, batch["input_ids"], batch["attention_mask"], weight))
    assert loss.item() == pytest.approx(transfer.kl(data.teacher[:2], classes, 2.0).item(), rel=1e-5)
    same = public_data.public_data(target, tok, TASK, prompt,
                                   public_data.unprompted(target, target, tok, TASK, TEXTS, 2, 32),
                                   batch_size=2, max_text_tokens=32, space="labels")
    assert transfer.batch_loss(target, tok, TASK, prompt.weight, same, [0, 1, 2], 0.5, max_text_tokens=32)[0].item() \
        == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("space", ["vocab", "labels"])
def test_anchor_is_the_drift_from_direct_and_zero_at_the_pasted_prompt(models, space):
    """The anchor term is T^2 KL(target with the source prompt || target with this prompt): nothing at the pasted
    prompt (where a transfer from the source prompt starts), the drift's weight times the drift elsewhere."""
    source, target, tok = models
    prompt = source_prompt(source, tok)
    plain = public_data.unprompted(source, target, tok, TASK, TEXTS, batch_size=2, max_text_tokens=32)
    data = public_data.public_data(source, tok, TASK, prompt, plain, batch_size=2, max_text_tokens=32, space=space,
                                   target=target)
    idx = [0, 2, 4]
    loss = functools.partial(transfer.batch_loss, target, tok, TASK, data=data, idx=idx, alpha=0.5,
                             max_text_tokens=32)
    at_direct, parts, _ = loss(prompt.weight, anchor=2.0)
    assert parts["drift"] == pytest.approx(0.0, abs=1e-6)
    assert at_direct.item() == pytest.approx(loss(prompt.weight)[0].item(), abs=1e-6)
    other = SoftPrompt.from_vocab(target, 4, seed=7).weight
    anchored, parts, _ = loss(other, anchor=2.0)
    batch = encode(TASK, tok, [TEXTS[i] for i in idx], 32)
    with torch.no_grad():  # the drift recomputed from its definition
        direct, moved = (next_token_logits(target, batch["input_ids"], batch["attention_mask"], w)
                         for w in (prompt.weight, other))
    if space == "labels":
        direct, moved = (data.project(z) for z in (direct, moved))
    drift = transfer.kl(torch.log_softmax(direct / 2, -1), moved, 2.0).item()
    assert parts["drift"] == pytest.approx(drift, rel=1e-4) and drift > 1e-4
    assert anchored.item() == pytest.approx(loss(other)[0].item() + 2.0 * drift, rel=1e-4)
    assert "drift" not in loss(other)[1] and data_for(source, target, tok, prompt).direct is None  # made only on ask
    with pytest.raises(ValueError, match="anchor"):
        transfer.batch_loss(target, tok, TASK, other, data_for(source, target, tok, prompt), idx, 0.5,
                            max_text_tokens=32, anchor=1.0)


def test_anchor_on_agree_holds_only_the_texts_where_direct_picks_the_sources_class(models):
    """``anchor_on="agree"`` marks the texts where the target with the pasted prompt (Direct) and the prompted
    source pick the same class, and the drift is the batch mean of each text's KL times its mark."""
    source, target, tok = models
    prompt = source_prompt(source, tok)
    plain = public_data.unprompted(source, target, tok, TASK, TEXTS, batch_size=2, max_text_tokens=32)
    build = functools.partial(public_data.public_data, source, tok, TASK, prompt, plain, batch_size=2,
                              max_text_tokens=32, target=target)
    everywhere, gated = build(), build(anchor_on="agree")
    verbalizer = Verbalizer.for_task(TASK, tok)
    batch = encode(TASK, tok, TEXTS, 32)
    with torch.no_grad():  # the marks recomputed from their definition
        direct, prompted = (next_token_logits(model, batch["input_ids"], batch["attention_mask"], prompt.weight)
                            for model in (target, source))
    agrees = (verbalizer.scores(direct).argmax(1) == verbalizer.scores(prompted).argmax(1)).float()
    assert gated.anchored.tolist() == agrees.tolist() and everywhere.anchored is None  # None: every text held
    assert gated.direct_agreement == everywhere.direct_agreement == pytest.approx(agrees.mean().item())
    marks = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])  # a mix of held and free texts, whatever the tiny models agree on
    data, idx = dataclasses.replace(gated, anchored=marks), [0, 1, 2, 3]
    other = SoftPrompt.from_vocab(target, 4, seed=7).weight
    _, parts, _ = transfer.batch_loss(target, tok, TASK, other, data, idx, 0.5, max_text_tokens=32, anchor=1.0)
    part = encode(TASK, tok, [TEXTS[i] for i in idx], 32)
    with torch.no_grad():
        moved = next_token_logits(target, part["input_ids"], part["attention_mask"], other)
    rows = [transfer.kl(data.direct[[i]], moved[[j]], 2.0).item() for j, i in enumerate(idx)]
    assert parts["drift"] == pytest.approx(sum(r * m for r, m in zip(rows, marks.tolist())) / len(idx), rel=1e-4)
    assert parts["drift"] < sum(rows) / len(idx)  # the free texts pull nothing


def test_transfer_stops_once_the_held_out_loss_stops_improving(models):
    source, target, tok = models
    prompt = source_prompt(source, tok)
    texts, held = tasks.public_sample("amazon_reviews", 16, 8)
    data, holdout = (data_for(source, source, tok, prompt, t) for t in (texts, held))
    # the target is the source and starts at the source prompt: step 0 is already optimal, nothing improves it
    settings = TransferConfig(steps=40, batch_size=8, lr=0.05, eval_every=2, max_text_tokens=32, precision="fp32",
                              patience=2)
    result = transfer.transfer(source, tok, TASK, prompt, data, holdout, settings, alpha=0.5, progress=False)
    assert sorted(result.snapshots) == [0, 2, 4] and result.selected_step == 0
    assert torch.equal(result.prompt.weight, prompt.weight)  # POST never ends below its own starting point
    held = [h for h in result.history if "holdout_loss" in h]  # each evaluation carries the cost so far
    assert 0 < held[0]["flops"] < held[1]["flops"] < held[2]["flops"]
    assert 0 <= held[0]["seconds"] < held[1]["seconds"] < held[2]["seconds"]
    # what making the public data cost comes first: the same run counts from it, to the FLOP
    after = transfer.transfer(source, tok, TASK, prompt, data, holdout, settings, alpha=0.5, progress=False,
                              spent=transfer.Cost(flops=1e12, wall_seconds=5.0))
    assert [h["flops"] for h in after.history if "flops" in h] == [h["flops"] + 1e12 for h in held]
    assert after.cost.flops == result.cost.flops + 1e12 and after.history[0]["seconds"] >= 5.0
    assert not plateaued([3, 2, 1], 2)
    assert plateaued([1, 2, 1.5], 2)
    assert not plateaued([1, 2, 1.5], 0)


def test_replaying_the_stopping_rule_on_a_longer_run_gives_what_a_capped_run_keeps(models):
    source, target, tok = models
    prompt = source_prompt(source, tok)
    texts, held = tasks.public_sample("amazon_reviews", 16, 8)
    settings = TransferConfig(steps=24, batch_size=8, lr=0.5, eval_every=2, max_text_tokens=32, precision="fp32")
    stopped = set()
    # onto the target from its instruction text the held-out loss keeps falling; onto the source itself from the
    # source prompt nothing improves on step 0: one run goes to its cap, the other stops at its plateau
    for model, init in ((target, "instruction"), (source, "source")):
        data, holdout = (data_for(source, model, tok, prompt, t) for t in (texts, held))
        run = functools.partial(transfer.transfer, model, tok, TASK, prompt, data, holdout, alpha=0.5, progress=False)
        long = run(dataclasses.replace(settings, init=init))
        losses = {h["step"]: h["holdout_loss"] for h in long.history if "holdout_loss" in h}
        assert transfer.replay_stopping(losses, 0, 24) == (24, long.selected_step)
        for cap in (8, 24):
            capped = run(dataclasses.replace(settings, init=init, steps=cap, patience=2))
            assert transfer.replay_stopping(losses, 2, cap) == (max(capped.snapshots), capped.selected_step)
            stopped.add(max(capped.snapshots) < cap)
    assert stopped == {False, True}


def test_public_samples_are_nested_and_held_out_fixed():
    small_train, small_held = tasks.public_sample("amazon_reviews", 16, 8, seed=1)
    big_train, big_held = tasks.public_sample("amazon_reviews", 64, 8, seed=1)
    assert small_held == big_held and big_train[:16] == small_train and not set(big_train) & set(big_held)
    with pytest.raises(ValueError, match="distinct texts"):
        tasks.public_sample("amazon_reviews", 10**6, 8)


def test_transfers_are_reused_across_sweep_changes_but_not_transfer_changes():
    cfg = load_config("smoke")
    key = transfer.settings_hash(cfg)

    def with_transfer(**change):
        return dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, **change))

    figures_only = {"sweep_task": "trec", "sweep_test": 7, "alphas": (0.3,), "public_sizes": (5,), "pools": ("news",),
                    "task_pools": ("trec=news",)}
    unkeyed = {f.name for f in dataclasses.fields(cfg.transfer) if f.metadata == config.UNKEYED}
    assert unkeyed == set(figures_only)  # a new figures-only setting is declared so, and tested here
    for name, value in figures_only.items():
        assert transfer.settings_hash(with_transfer(**{name: value})) == key, name
    for change in ({"lr": cfg.transfer.lr / 2}, {"temperature": 3.0}, {"steps": cfg.transfer.steps + 1},
                   {"anchor": 0.25}):
        assert transfer.settings_hash(with_transfer(**change)) != key, change


def test_ptfer_recovers_the_prompt_direction_when_the_embeddings_are_shared(models):
    source, target, tok = models  # the cut shares the target's embeddings, as 01's source does
    prompt = source_prompt(source, tok)
    moved = transfer.ptfer(prompt, source, target, tok, anchors=2048, steps=300, lr=0.02)
    cosine = torch.nn.functional.cosine_similarity(moved.weight, prompt.weight)
    start = torch.nn.functional.cosine_similarity(SoftPrompt.from_vocab(target, 4, seed=0).weight, prompt.weight)
    assert cosine.min() > 0.95 > start.abs().max()


def test_alpha_proxy_is_chance_corrected_agreement():
    data = public_data.PublicData([], *(torch.zeros(0),) * 3, agreement=0.75)
    assert public_data.alpha_proxy(data, 2) == pytest.approx(0.5)
    assert public_data.alpha_proxy(dataclasses.replace(data, agreement=0.2), 2) == 0.0
    assert public_data.alpha_proxy(dataclasses.replace(data, agreement=1.0), 6) == 1.0


def test_default_public_pools_share_no_text_with_their_tasks():
    """Exact matches after normalisation; stock phrases ("wow", "don't waste your money") may occur anywhere."""
    def norm(text):
        return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()

    pools = {pool: {norm(t) for t in tasks.public_texts(pool)} for pool in ("movie_questions", "amazon_reviews")}
    assert len(pools["movie_questions"]) > 5000
    for task in ("trec", "rotten_tomatoes", "tweet_sentiment"):
        private = {norm(t) for t in tasks.get_task(task).load()[0]}
        shared = {t for t in private & pools[tasks.DEFAULT_POOLS[task]] if len(t.split()) > 5}
        assert not shared, f"{tasks.DEFAULT_POOLS[task]} shares texts with {task}: {sorted(shared)[:5]}"
    assert "why did the chicken cross the road" in {norm(t) for t in tasks.get_task("trec").load()[0]}


def test_the_transfer_api_takes_no_private_data():
    for module in (transfer, public_data):  # the transfer and the public data it trains on
        for name, func in inspect.getmembers(module, inspect.isfunction):
            if func.__module__ != module.__name__:
                continue
            for param in inspect.signature(func).parameters.values():
                assert "Split" not in str(param.annotation), f"{name}({param.name}) accepts a Split"
                assert param.name not in ("split", "labels", "train", "test", "validation"), f"{name}({param.name})"
        assert not hasattr(module, "load_split") and not hasattr(module, "Split")
    with pytest.raises(public_data.ProviderBoundary):
        TASK.load()


OPENED = None  # paths opened while a test watches, through the audit hook below


def _watch(event, args):
    if event == "open" and OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.path.realpath(os.fsdecode(args[0])))


@pytest.fixture
def watch():
    """Record every file Python opens inside ``with watch():`` (audit hooks see io, bz2, pandas, zipfile)."""
    if _watch not in getattr(sys, "_post_hooks", []):
        sys.addaudithook(_watch)
        sys._post_hooks = getattr(sys, "_post_hooks", []) + [_watch]

    class Watch:
        def __enter__(self):
            global OPENED
            OPENED = []
            return OPENED

        def __exit__(self, *exc):
            global OPENED
            OPENED = None

    return Watch


@pytest.mark.stage
def test_transfer_stage_runs_without_touching_private_data(tmp_path, monkeypatch, watch, dp_record):
    names = ["rotten_tomatoes", "trec"]
    with watch() as opened:  # the files the private tasks are read from, measured rather than listed
        for name in names:
            tasks.get_task(name).load()
    private_files = set(opened)
    assert len(private_files) >= 2

    monkeypatch.setattr(artifacts, "ARTIFACTS", tmp_path / "artifacts")
    monkeypatch.setattr(artifacts, "RESULTS", tmp_path / "results")
    cfg = load_config("smoke", {"data": {"tasks": names}, "transfer": {
        "epsilons": [math.inf, 8], "public_examples": 16, "holdout_examples": 8, "steps": 2, "batch_size": 8,
        "eval_every": 1, "max_text_tokens": 16, "ptfer_anchors": 512, "ptfer_steps": 5,
        "alphas": [0.0, 1.0], "public_sizes": [8, 16], "pools": ["amazon_reviews", "movie_questions"]}})
    target = load_model(cfg.model)
    source = cut(target, [0, 3], "source")
    source.save_pretrained(artifacts.source_model_dir("smoke"))
    target_tok = load_tokenizer(cfg.model)
    target_tok.save_pretrained(artifacts.source_model_dir("smoke"))
    source_name = model_name(load_model(str(artifacts.source_model_dir("smoke"))))
    for name in names:
        for epsilon in cfg.transfer.epsilons:
            prompt = source_prompt(source, target_tok, epsilon)
            prompt.meta.update(model=source_name, task=name, **({} if math.isinf(epsilon) else {"dp": dp_record(8.0)}))
            prompt.save(artifacts.prompt_path("smoke", name, "compt", epsilon))

    def refuse(*args, **kwargs):
        raise AssertionError("the transfer stage asked for private data")

    monkeypatch.setattr(tasks, "_splits", refuse)
    monkeypatch.setattr(tasks, "load_split", refuse)
    for name in names:
        monkeypatch.setitem(tasks.TASKS, name, dataclasses.replace(tasks.TASKS[name], load=refuse))
    runs = []
    real_transfer = transfer.transfer
    monkeypatch.setattr(transfer, "transfer", lambda *a, **k: runs.append(a[7]) or real_transfer(*a, **k))
    with watch() as opened:
        rows = transfer.run_transfer(cfg, progress=False)
        assert len(runs) == 4  # POST for 2 tasks x 2 epsilons
        noise = torch.Generator().manual_seed(0)
        sweeps = [transfer.run_sweeps(cfg, score, progress=False)
                  for score in (lambda p: 0.5, lambda p: torch.rand(1, generator=noise).item())]
    touched = private_files & set(opened)
    assert not touched, f"the transfer stage opened private files: {sorted(touched)}"
    assert any(p.endswith("amazonReviewSnippets_GroundTruth.txt") for p in opened)  # the watch does see files

    assert {(r["task"], r["method"], r["epsilon"]) for r in rows} == {
        (n, m, e) for n in names for m in ("post", "ptfer") for e in ("inf", "8")}
    for row in rows:
        prompt = SoftPrompt.load(row["prompt"], target)  # made for the target
        assert prompt.meta["dp"]["private"] == (row["epsilon"] != "inf") and prompt.meta["dp"]["delta"] == 1e-5
        assert prompt.meta["source_model"] == source_name and "source_cost" not in prompt.meta  # stays with the owner
        assert prompt.meta["method"] == row["method"] and prompt.meta["cost"]["wall_seconds"] > 0
    post_rows = [r for r in rows if r["method"] == "post"]
    assert {r["public_pool"] for r in post_rows} == {"amazon_reviews", "movie_questions"}
    assert all(r["cost"]["flops"] > 0 and 0 <= r["alpha"] <= 1 for r in post_rows)
    assert (artifacts.RESULTS / "smoke" / "transfer.json").exists()

    # the sweeps: the stage's own run is reused as the default, variants equal to it are not rerun, and the
    # caller's score (test accuracy in the notebook) changes no choice: rerun with random scores, same runs
    assert len(runs) == 4 + 5  # alpha 0 and 1, 8 public examples, movie_questions, instruction init; the second
    # sweep read all five back from artifacts/smoke/sweeps/
    kinds = [(r["kind"], r["value"]) for r in sweeps[0]]
    assert kinds == [("default", "default"), ("steps", 0), ("steps", 1), ("steps", 2), ("alpha", 0.0), ("alpha", 1.0),
                     ("public_examples", 8), ("public_examples", 16), ("pool", "amazon_reviews"),
                     ("pool", "movie_questions"), ("init", "source"), ("init", "instruction")]
    chosen = [[(r["alpha"], r["selected_step"], r["public_examples"], r["public_pool"]) for r in run] for run in sweeps]
    assert chosen[0] == chosen[1] and {r["accuracy"] for r in sweeps[0]} == {0.5}

    # a rerun (or a run resumed after an interruption) keeps the finished transfers and redoes only what changed,
    # to the same prompt and the same record
    assert transfer.run_transfer(cfg, progress=False) == rows and len(runs) == 4 + 5
    crashed = artifacts.prompt_path("smoke", names[0], "post", 8.0)
    before = SoftPrompt.load(crashed).weight
    crashed.write_bytes(crashed.read_bytes()[:200])  # a write cut short: that transfer alone is redone
    again = transfer.run_transfer(cfg, progress=False)
    assert len(runs) == 4 + 5 + 1 and torch.equal(SoftPrompt.load(crashed).weight, before)
    assert without_cost(again) == without_cost(rows)
    kept = sorted((artifacts.ARTIFACTS / "smoke" / "sweeps").glob("transfer_*[0-9a-f].pt"))
    assert len(kept) == 5  # the variants (each with its snapshots); the default is run_transfer's own transfer
    assert all(transfer.snapshot_path(path).exists() for path in kept)
    kept[0].write_bytes(kept[0].read_bytes()[:100])  # an interrupted sweep: one variant is missing
    redone = transfer.run_sweeps(cfg, lambda p: 0.5, progress=False)
    assert len(runs) == 4 + 5 + 1 + 1 and without_cost(redone) == without_cost(sweeps[0])

    # one task's own pool: that task's transfers alone are redone, and the film synopses, which ship offline in
    # the file of the private reviews, are read from their own copy
    plots = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, task_pools=("rotten_tomatoes=movie_plots",)))
    with watch() as opened:
        moved = transfer.run_transfer(plots, progress=False)
    assert not private_files & set(opened) and str(offline_data.MOVIE_PLOTS.resolve()) in opened
    assert len(runs) == 4 + 5 + 1 + 1 + 2
    pools = {(r["task"], r["epsilon"]): r["public_pool"] for r in moved if r["method"] == "post"}
    assert pools == {("rotten_tomatoes", "inf"): "movie_plots", ("rotten_tomatoes", "8"): "movie_plots",
                     ("trec", "inf"): "movie_questions", ("trec", "8"): "movie_questions"}
    assert without_cost(r for r in moved if r["task"] == "trec") == without_cost(r for r in again if r["task"] == "trec")


def without_cost(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "cost"} for r in rows]


def test_loss_figure_shows_the_drift_only_where_a_transfer_was_anchored(tmp_path, monkeypatch):
    import pandas as pd

    from post import plots

    monkeypatch.setattr(artifacts, "FIGURES", tmp_path)
    plain = [{"step": s, "loss": 1.0 / s, "absolute": 0.5 / s, "shift": 1.0 / s} for s in range(1, 6)]
    anchored = [{**h, "drift": 0.01 * h["step"]} for h in plain]
    assert len(plots.plot_losses({"rotten_tomatoes/inf": plain}, "smoke").axes) == 3
    assert len(plots.plot_losses({"rotten_tomatoes/inf": anchored}, "smoke").axes) == 4
    drawn = pd.read_csv(tmp_path / "smoke" / "transfer_losses.csv")
    assert list(drawn.drift) == pytest.approx([h["drift"] for h in anchored])
