"""The privacy audit: the one-run bound against hand-derived values, LiRA on a planted leak and on a null,
the metrics by hand, and the canary audit catching a DP run whose noise is gone while a real one passes."""

import dataclasses
import math

import numpy as np
import pytest
from scipy.special import logit

from post import audit
from post.config import ConfigError, load_config
from post.models import load
from post.tasks import Split, get_task, load_split

SMOKE = load_config("smoke")
TASK = get_task("rotten_tomatoes")
pytestmark = pytest.mark.usefixtures("one_thread")  # also keeps the seeded runs below on one trajectory


# --- the one-run bound ------------------------------------------------------------------------------------------


def test_bound_without_delta_is_the_binomial_tail():
    # all r guesses right: P[Bin(r, q) >= r] = q^r = 0.05  =>  q = 0.05^(1/r), eps = log(q / (1 - q))
    for r in (5, 10, 40):
        assert audit.one_run_epsilon(1000, r, r) == pytest.approx(logit(0.05 ** (1 / r)), abs=1e-6)
    # r = 3, v = 2 at eps = log 3 (q = 3/4): 3 q^2 (1 - q) + q^3 = 27/64 + 27/64
    assert audit.one_run_p_value(10, 3, 2, math.log(3)) == pytest.approx(54 / 64)
    # two guesses, both right: q^2 <= 0.05 needs q < 1/2, i.e. no positive epsilon is rejected
    assert audit.one_run_epsilon(10, 2, 2) == 0.0
    assert audit.one_run_epsilon(100, 10, 5) == 0.0  # chance-level guessing proves nothing


def test_bound_delta_term_by_hand():
    # r = v = 2, q = 3/4: f(2) = 9/16; max_i (f(2 - i) - f(2)) / i = max(P[B=1], (P[B=1] + P[B=0]) / 2) = 3/8
    assert audit.one_run_p_value(10, 2, 2, math.log(3), 0.001) == pytest.approx(9 / 16 + 2 * 10 * 0.001 * 3 / 8)
    assert audit.one_run_p_value(10, 2, 0, math.log(3), 0.001) == 1.0
    # delta only weakens the conclusion, and more correct guesses only strengthen it
    assert 0 < audit.one_run_epsilon(1000, 100, 90, 1e-4) < audit.one_run_epsilon(1000, 100, 90, 0.0)
    assert audit.one_run_epsilon(1000, 100, 80) < audit.one_run_epsilon(1000, 100, 90)
    with pytest.raises(ValueError):
        audit.one_run_p_value(10, 5, 6, 1.0)


def test_canary_guesses_and_bonferroni():
    included = np.array([True, True, False, True, False, False])
    scores = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    assert audit.canary_guesses(scores, included, 2) == 2  # 6 called in (right), 1 called out (right)
    assert audit.canary_guesses(scores, included, 6) == 4  # wrong: 4 (out, called in), 3 (in, called out)
    rng = np.random.default_rng(0)
    included = rng.random(400) < 0.5
    perfect = audit.canary_epsilon(included.astype(float), included, 0.0, (100,))
    assert perfect["v"] == 100 and perfect["eps_hat"] == pytest.approx(logit(0.05 ** (1 / 100)), abs=1e-6)
    corrected = audit.canary_epsilon(included.astype(float), included, 0.0, (100, 50))
    assert corrected["eps_hat"] == pytest.approx(logit(0.025 ** (1 / 100)), abs=1e-6)  # two tries: 2.5% each


# --- the statistic and the metrics ------------------------------------------------------------------------------


def test_membership_score_is_a_stable_logit():
    scores = np.array([[0.3, -0.2, 1.0], [2.0, 0.0, -1.0]])
    p = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    labels = [2, 0]
    assert audit.membership_score(scores, labels) == pytest.approx(logit(p[[0, 1], labels]))
    extreme = audit.membership_score(np.array([[800.0, -800.0], [-800.0, 800.0]]), [0, 0])
    assert extreme.tolist() == [1600.0, -1600.0]  # p rounds to 1 and 0; the logit does not overflow
    stacked = np.stack([scores, 2 * scores])  # (K, N, C) works row by row
    expected = [audit.membership_score(scores, labels), audit.membership_score(2 * scores, labels)]
    assert audit.membership_score(stacked, labels) == pytest.approx(np.stack(expected))


def test_auc_and_tpr_by_hand():
    scores, members = np.array([4.0, 3.0, 2.0, 1.0]), np.array([True, False, True, False])
    assert audit.auc(scores, members) == 0.75
    assert audit.auc(np.zeros(4), members) == 0.5  # all tied
    fpr, tpr = audit.roc_curve(scores, members)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert audit.tpr_at(fpr, tpr, 0.0) == 0.5  # threshold above 3: one of two members, no false one
    assert audit.tpr_at(fpr, tpr, 0.49) == 0.5 and audit.tpr_at(fpr, tpr, 0.5) == 1.0
    membership = audit.membership_matrix(6, 10, 0)
    metrics = audit.lira_metrics(np.random.default_rng(0).normal(size=(6, 10)), membership, bootstrap=0)
    assert metrics["online"]["tpr_at_0.01"] is None  # ~30 non-members cannot resolve a 1% false-positive rate


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
    assert {c["variant"] for c in curves} == set(audit.VARIANTS)


def test_null_control_covers_one_half():
    run = memorising_run(seed=1)
    for row in audit.audit_rows(audit.shuffled(run, seed=2), "source", bootstrap=200, seed=0)[0]:
        assert row["setting"] == "null control"
        low, high = row["auc_ci"]
        assert low < 0.5 < high, row


def test_a_repeated_prompt_is_never_its_own_reference():
    """The bootstrap draws prompts with replacement: a copy of the target among its references would hand it
    its own membership. With ``ids``, prompt 0 drawn twice is attacked exactly as without the copy."""
    run = memorising_run(shadows=6, n=50)
    once = audit.lira(run.scores, run.membership)
    rows = np.array([0, 0, 1, 2, 3, 4, 5])
    twice = audit.lira(run.scores[rows], run.membership[rows], rows)
    for variant in audit.VARIANTS:
        np.testing.assert_allclose(twice[variant][0], once[variant][0])
        np.testing.assert_allclose(twice[variant][1], once[variant][0])
    naive = audit.lira(run.scores[rows], run.membership[rows])  # the copy as a reference: the bias prevented
    assert audit.auc(naive["online"][0], run.membership[0]) > audit.auc(once["online"][0], run.membership[0])


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


def test_lira_leaves_guesses_without_references_out():
    membership = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 0]], dtype=bool)  # example 0: never out
    scores = np.random.default_rng(0).normal(size=membership.shape)
    attacks = audit.lira(scores, membership)
    assert np.isnan(attacks["online"][:, 0]).all() and np.isfinite(attacks["online"][:, 1:]).all()
    assert np.isnan(attacks["global"][:, 0]).all()  # every variant sees the same guesses


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


def test_canary_scores_are_calibrated_per_canary_and_centred_per_label():
    statistic = np.array([[1.0, 5.0, -2.0, 0.0], [2.0, 9.0, -2.0, 3.0]])  # (initial, trained) x 4 canaries
    # changes 1, 4 (label 0) and 0, 3 (label 1); each label's mean change taken out
    assert audit.canary_scores(statistic, [0, 0, 1, 1]).tolist() == [-1.5, 1.5, -1.5, 1.5]


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
    checks = audit.control_checks({"lira": lira, "canaries": [
        canary("no DP", "inf", 3.0), canary("eps=1", "1", 0.2), canary(audit.NO_NOISE, "1", 1.8)]})
    assert checks.passed.all() and len(checks) == 3  # the no-DP row is not checked against anything
    broken = audit.control_checks({"lira": lira, "canaries": [canary("eps=1", "1", 1.8),
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
