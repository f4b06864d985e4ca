"""The privacy audit stage: LiRA rows on a planted leak and on a null, shadow prompts tuned as 02 tunes, the
canary audit catching a DP run whose noise is gone while a real one passes, and a rerun that resumes."""

import dataclasses
import math

import numpy as np
import pytest

import post.artifacts as artifacts
import post.transfer as transfer
from post import audit, tables
from post.config import ConfigError, load_config
from post.membership import VARIANTS
from post.models import load
from post.tasks import Split, get_task, load_split

SMOKE = load_config("smoke")
TASK = get_task("rotten_tomatoes")
pytestmark = pytest.mark.usefixtures("one_thread")  # also keeps the seeded runs below on one trajectory


# --- the design ---------------------------------------------------------------------------------------------------


def test_membership_matrix_is_independent_bernoulli_halves():
    m = audit.membership_matrix(16, 2000, seed=3)
    assert m.shape == (16, 2000) and abs(m.mean() - 0.5) < 0.01
    assert (m == audit.membership_matrix(16, 2000, seed=3)).all()
    assert len(set(m.sum(0))) > 5  # not a balanced design: example counts vary
    with pytest.raises(ValueError):
        audit.membership_matrix(2, 10, 0)


# --- LiRA: a planted leak, and the null control ---------------------------------------------------------------


def memorising_run(shadows=16, n=400, leak=1.5, seed=0) -> audit.ShadowRun:
    """A "model" that memorises: the true class's score is the example's difficulty, plus ``leak`` where the
    prompt was trained on the example, plus noise. Difficulty varies a lot, so only reference models find it."""
    rng = np.random.default_rng([seed, 99])  # not the membership's stream
    membership = audit.membership_matrix(shadows, n, seed)
    labels = rng.integers(0, 2, n)
    true = rng.normal(0, 3, n) + leak * membership + rng.normal(0, 0.7, (shadows, n))
    class_scores = np.zeros((shadows, n, 2))
    class_scores[:, np.arange(n), labels] = true
    pool = Split([f"example {i}" for i in range(n)], labels.tolist())
    return audit.ShadowRun("planted", math.inf, pool, membership, [], class_scores, audit.Cost())


def test_lira_finds_a_planted_leak():
    rows, curves = audit.audit_rows(memorising_run(), "source", bootstrap=200, seed=0)
    by = {r["variant"]: r for r in rows}
    assert by["online"]["auc"] > 0.85 and by["online"]["auc_ci"][0] > 0.8
    assert by["online"]["tpr_at_0.01"] > 0.1  # ten times chance at 1% FPR
    assert by["offline"]["auc"] > 0.8
    assert by["global"]["auc"] < by["online"]["auc"] - 0.15  # the references are what finds it
    assert {c["variant"] for c in curves} == set(VARIANTS)


def test_null_control_covers_one_half():
    run = memorising_run(seed=1)
    for row in audit.audit_rows(audit.shuffled(run, seed=2), "source", bootstrap=200, seed=0)[0]:
        assert row["setting"] == "null control"
        low, high = row["auc_ci"]
        assert low < 0.5 < high, row


def test_dp_rows_are_not_informative_when_no_dp_is_at_chance():
    def row(setting, ci, model="source"):
        return {"setting": setting, "model": model, "variant": "online", "auc_ci": ci}

    at_chance = audit.readings([row("no DP", [0.48, 0.53]), row("eps=8", [0.51, 0.56]),
                                row("positive control", [0.6, 0.7])])
    assert [r["reading"] for r in at_chance] == ["at chance", "not informative: no DP is not above chance",
                                                 "above chance"]
    leaking = audit.readings([row("no DP", [0.55, 0.6]), row("eps=8", [0.47, 0.52]),
                              row("eps=8", [0.47, 0.52], "target (POST)")])
    assert [r["reading"] for r in leaking] == ["above chance", "at chance",
                                               "not informative: no DP is not above chance"]


# --- the real pipeline on the tiny model ------------------------------------------------------------------------


def test_shadows_tune_with_02s_settings_on_their_halves(tiny):
    model, tok = tiny
    pool = load_split("rotten_tomatoes", "train", 16)
    settings, steps = audit.shadow_settings(SMOKE.tune, math.inf)
    assert (settings.prompt_length, settings.batch_size, settings.lr, steps) == \
        (SMOKE.tune.prompt_length, SMOKE.tune.batch_size, SMOKE.tune.lr, SMOKE.tune.steps)
    dp_settings, dp_steps = audit.shadow_settings(SMOKE.tune, 1.0)  # as 02's DP runs: larger batch, fewer steps
    assert (dp_settings.batch_size, dp_steps) == (SMOKE.tune.dp_batch_size, 2)
    run = audit.shadow_run(model, tok, TASK, pool, "no DP", settings, math.inf, steps, shadows=4, seed=0,
                           max_text_tokens=32, progress=False)
    assert [p.record["train_examples"] for p in run.prompts] == run.membership.sum(1).tolist()
    assert run.class_scores.shape == (4, 16, 2) and np.isfinite(run.scores).all()
    assert len({float(p.weight.detach().sum()) for p in run.prompts}) == 4  # four different prompts
    assert len({p.record["seed"] for p in run.prompts}) == 4


def test_how_02_validates_does_not_change_the_audits_prompts():
    """Audit prompts never validate: 02's validation settings must not reach them (nor the keys of their parts)."""
    validating = dataclasses.replace(SMOKE.tune, eval_every=7, eval_examples=3, select="validation", patience=2,
                                     max_steps=99)
    for epsilon in (math.inf, 1.0):
        assert audit.shadow_settings(validating, epsilon) == audit.shadow_settings(SMOKE.tune, epsilon)
    assert audit.without_validation(validating) == audit.without_validation(SMOKE.tune)
    assert audit.without_validation(validating).eval_every == 0


@pytest.mark.stage
def test_a_rerun_reads_finished_parts_back_and_redoes_only_what_changed(tiny, tmp_path, monkeypatch):
    """A second run_audit with the same settings trains and transfers nothing and returns the same rows (with
    secret DP randomness only reading the shadows back can); a changed epsilon trains that setting's shadows and
    canary runs again, and nothing else."""
    model, tok = tiny
    monkeypatch.setattr(artifacts, "ARTIFACTS", tmp_path / "artifacts")
    monkeypatch.setattr(artifacts, "RESULTS", tmp_path / "results")
    model.save_pretrained(artifacts.source_model_dir("smoke"))  # the tiny model stands in for the source too
    tok.save_pretrained(artifacts.source_model_dir("smoke"))
    (artifacts.source_model_dir("smoke") / "distill.json").write_text('{"distill_hash": "tiny"}')
    fast = {"canary_epochs": 4, "bootstrap": 10}
    trained, transferred = [], []  # the epsilon of every prompt tuned, and every POST transfer
    tune_prompt, post_transfer = audit.tune_prompt, transfer.post_transfer
    monkeypatch.setattr(audit, "tune_prompt", lambda *a, **k: trained.append(a[5]) or tune_prompt(*a, **k))
    monkeypatch.setattr(transfer, "post_transfer", lambda *a, **k: transferred.append(a) or post_transfer(*a, **k))
    cfg = load_config("smoke", {"audit": fast})
    first = audit.run_audit(cfg, progress=False)
    assert len(trained) == 3 * 4 + 3 and len(transferred) == 4  # shadows of no DP, eps=1, positive; 3 canary runs
    assert first["distill_hash"] == "tiny"  # which source was audited: the report compares it with the results'
    kept = sorted(p.name.split("_")[0] for p in artifacts.artifact_dir("smoke", "audit").iterdir())
    assert kept == ["canaries"] * 3 + ["shadows"] * 3 + ["transfer"]
    again = audit.run_audit(cfg, progress=False)
    assert len(trained) == 15 and len(transferred) == 4
    assert again["lira"] == first["lira"] and again["canaries"] == first["canaries"]
    assert again["cost"] == first["cost"] | {"attack and bootstrap": again["cost"]["attack and bootstrap"]}

    changed = audit.run_audit(load_config("smoke", {"audit": {**fast, "epsilons": [math.inf, 2]}}), progress=False)
    assert trained[15:] == [2.0] * 6 and len(transferred) == 4  # 4 shadows, the DP canary run and its control
    unchanged = [r for r in first["lira"] if r["setting"] != "eps=1"]
    assert [r for r in changed["lira"] if r["setting"] != "eps=2"] == unchanged
    assert changed["canaries"][0] == first["canaries"][0]  # no DP


def test_canaries_are_random_token_texts_with_random_labels(tiny):
    _, tok = tiny
    canaries = audit.audit_data(SMOKE, tok)["canaries"]
    assert len(set(canaries.texts)) == len(canaries) == SMOKE.audit.canaries
    assert not set(canaries.texts) & set(load_split("rotten_tomatoes", "train").texts)
    assert 0.3 < np.mean(canaries.labels) < 0.7 and set(canaries.labels) == {0, 1}
    lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in canaries.texts]
    assert np.median(lengths) >= audit.CANARY_TOKENS - 2  # decoded and re-tokenised, about as long
    assert canaries == audit.random_canaries(tok, SMOKE.audit.canaries, 2, SMOKE.seed)


@pytest.fixture(scope="module")
def steerable():
    """The first four layers of SmolLM2-135M, what 01 distills the source from: unlike the random tiny model
    (on which a prompt memorises nothing), a prompt on it can memorise a canary."""
    model, tok = load("smollm2-135m-instruct")
    model.model.layers = model.model.layers[:4]
    model.config.num_hidden_layers = 4
    return model, tok


@pytest.mark.model
def test_one_run_audit_catches_a_dp_run_without_noise(steerable):
    """The smoke profile's canary audit, seeded: the DP run at the smallest epsilon stays below it, and the
    same run with the noise removed proves more than that epsilon. So this fails if DP-SGD drops its noise.

    The prompt is the cpu profile's 10 tokens: with smoke's 4, the control's margin rests on 16 of 16 guesses.
    """
    model, tok = steerable
    a = SMOKE.audit
    epsilon = min(e for e in a.epsilons if not math.isinf(e))
    canaries = audit.random_canaries(tok, a.canaries, len(TASK.classes), SMOKE.seed)
    settings = dataclasses.replace(SMOKE.tune, prompt_length=10, batch_size=a.canary_batch_size,
                                   dp_randomness="seeded", precision="fp32")

    def run(add_noise: bool) -> dict:
        return audit.canary_run(model, tok, TASK, canaries, settings, epsilon, a.canary_epochs, a.canary_guesses,
                                a.confidence, SMOKE.seed, SMOKE.data.max_text_tokens, progress=False,
                                add_noise=add_noise)

    private, control = run(True), run(False)
    assert private["noise_multiplier"] > 0 and private["prv_epsilon"] <= epsilon * 1.001
    assert private["eps_hat"] <= epsilon, private
    assert control["setting"] == audit.NO_NOISE and control["noise_multiplier"] == 0
    assert control["prv_epsilon"] == math.inf and control["eps_hat"] > epsilon, control


def test_control_checks_read_the_one_run_positive_control_the_other_way():
    def canary(setting, epsilon, eps_hat):
        return {"setting": setting, "epsilon": epsilon, "eps_hat": eps_hat}

    lira = [{"setting": "positive control", "model": "source", "variant": "online", "auc_ci": [0.6, 0.7]}]
    checks = tables.control_checks({"lira": lira, "canaries": [
        canary("no DP", "inf", 3.0), canary("eps=1", "1", 0.2), canary(audit.NO_NOISE, "1", 1.8)]})
    assert checks.passed.all() and len(checks) == 3  # the no-DP row is not checked against anything
    broken = tables.control_checks({"lira": lira, "canaries": [canary("eps=1", "1", 1.8),
                                                              canary(audit.NO_NOISE, "1", 0.2)]})
    assert broken.passed.tolist() == [True, False, False]


def test_transferred_prompts_are_scored_on_the_target(tiny):
    model, tok = tiny
    pool = load_split("rotten_tomatoes", "train", 8)
    settings, steps = audit.shadow_settings(SMOKE.tune, math.inf)
    membership = audit.membership_matrix(3, len(pool), 0)
    prompts = audit.train_prompts(model, tok, TASK, pool, membership, settings, math.inf, steps, progress=False)
    # the tiny model stands in for both source and target: POST still trains a new prompt from each source one
    scores, cost = audit.transferred_scores(SMOKE, model, model, tok, "rotten_tomatoes", prompts, pool.texts,
                                            progress=False)
    source = audit.prompt_class_scores(model, tok, TASK, pool.texts, [p.weight for p in prompts], progress=False)
    assert scores.shape == source.shape == (3, 8, 2) and np.isfinite(scores).all()
    assert not np.allclose(scores, source)
    assert cost.flops > 0


def test_bad_audit_settings_are_refused():
    with pytest.raises(ConfigError, match="transfer_settings"):
        load_config("smoke", {"audit": {"transfer_settings": ["4"]}})
    with pytest.raises(ConfigError, match="inf"):
        load_config("smoke", {"audit": {"epsilons": [8], "transfer_settings": []}})
