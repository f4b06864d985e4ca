"""Membership-inference statistics: the one-run bound against hand-derived values, the metrics by hand, and
LiRA's leave-one-out references on a planted leak."""

import math

import numpy as np
import pytest
from scipy.special import logit

from post.membership import (VARIANTS, auc, canary_epsilon, canary_guesses, canary_scores, lira, lira_metrics,
                             membership_score, one_run_epsilon, one_run_p_value, roc_curve, tpr_at)


# --- the one-run bound ------------------------------------------------------------------------------------------


def test_bound_without_delta_is_the_binomial_tail():
    # all r guesses right: P[Bin(r, q) >= r] = q^r = 0.05  =>  q = 0.05^(1/r), eps = log(q / (1 - q))
    for r in (5, 10, 40):
        assert one_run_epsilon(1000, r, r) == pytest.approx(logit(0.05 ** (1 / r)), abs=1e-6)
    # r = 3, v = 2 at eps = log 3 (q = 3/4): 3 q^2 (1 - q) + q^3 = 27/64 + 27/64
    assert one_run_p_value(10, 3, 2, math.log(3)) == pytest.approx(54 / 64)
    # two guesses, both right: q^2 <= 0.05 needs q < 1/2, i.e. no positive epsilon is rejected
    assert one_run_epsilon(10, 2, 2) == 0.0
    assert one_run_epsilon(100, 10, 5) == 0.0  # chance-level guessing proves nothing


def test_bound_delta_term_by_hand():
    # r = v = 2, q = 3/4: f(2) = 9/16; max_i (f(2 - i) - f(2)) / i = max(P[B=1], (P[B=1] + P[B=0]) / 2) = 3/8
    assert one_run_p_value(10, 2, 2, math.log(3), 0.001) == pytest.approx(9 / 16 + 2 * 10 * 0.001 * 3 / 8)
    assert one_run_p_value(10, 2, 0, math.log(3), 0.001) == 1.0
    # delta only weakens the conclusion, and more correct guesses only strengthen it
    assert 0 < one_run_epsilon(1000, 100, 90, 1e-4) < one_run_epsilon(1000, 100, 90, 0.0)
    assert one_run_epsilon(1000, 100, 80) < one_run_epsilon(1000, 100, 90)
    with pytest.raises(ValueError):
        one_run_p_value(10, 5, 6, 1.0)


def test_canary_guesses_and_bonferroni():
    included = np.array([True, True, False, True, False, False])
    scores = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    assert canary_guesses(scores, included, 2) == 2  # 6 called in (right), 1 called out (right)
    assert canary_guesses(scores, included, 6) == 4  # wrong: 4 (out, called in), 3 (in, called out)
    rng = np.random.default_rng(0)
    included = rng.random(400) < 0.5
    perfect = canary_epsilon(included.astype(float), included, 0.0, (100,))
    assert perfect["v"] == 100 and perfect["eps_hat"] == pytest.approx(logit(0.05 ** (1 / 100)), abs=1e-6)
    corrected = canary_epsilon(included.astype(float), included, 0.0, (100, 50))
    assert corrected["eps_hat"] == pytest.approx(logit(0.025 ** (1 / 100)), abs=1e-6)  # two tries: 2.5% each


def test_canary_scores_are_calibrated_per_canary_and_centred_per_label():
    statistic = np.array([[1.0, 5.0, -2.0, 0.0], [2.0, 9.0, -2.0, 3.0]])  # (initial, trained) x 4 canaries
    # changes 1, 4 (label 0) and 0, 3 (label 1); each label's mean change taken out
    assert canary_scores(statistic, [0, 0, 1, 1]).tolist() == [-1.5, 1.5, -1.5, 1.5]


# --- the statistic and the metrics ------------------------------------------------------------------------------


def test_membership_score_is_a_stable_logit():
    scores = np.array([[0.3, -0.2, 1.0], [2.0, 0.0, -1.0]])
    p = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    labels = [2, 0]
    assert membership_score(scores, labels) == pytest.approx(logit(p[[0, 1], labels]))
    extreme = membership_score(np.array([[800.0, -800.0], [-800.0, 800.0]]), [0, 0])
    assert extreme.tolist() == [1600.0, -1600.0]  # p rounds to 1 and 0; the logit does not overflow
    stacked = np.stack([scores, 2 * scores])  # (K, N, C) works row by row
    expected = [membership_score(scores, labels), membership_score(2 * scores, labels)]
    assert membership_score(stacked, labels) == pytest.approx(np.stack(expected))


def test_auc_and_tpr_by_hand():
    scores, members = np.array([4.0, 3.0, 2.0, 1.0]), np.array([True, False, True, False])
    assert auc(scores, members) == 0.75
    assert auc(np.zeros(4), members) == 0.5  # all tied
    fpr, tpr = roc_curve(scores, members)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert tpr_at(fpr, tpr, 0.0) == 0.5  # threshold above 3: one of two members, no false one
    assert tpr_at(fpr, tpr, 0.49) == 0.5 and tpr_at(fpr, tpr, 0.5) == 1.0
    rng = np.random.default_rng(0)
    metrics = lira_metrics(rng.normal(size=(6, 10)), rng.random((6, 10)) < 0.5, bootstrap=0)
    assert metrics["online"]["tpr_at_0.01"] is None  # ~30 non-members cannot resolve a 1% false-positive rate


# --- LiRA -------------------------------------------------------------------------------------------------------


def planted(shadows=16, n=400, leak=1.5, seed=0):
    """(K, N) statistics and membership of a "model" that memorises: each example's difficulty, plus ``leak``
    where the prompt was trained on it, plus noise. Difficulty varies a lot, so only reference models find it."""
    rng = np.random.default_rng(seed)
    membership = rng.random((shadows, n)) < 0.5
    return rng.normal(0, 3, n) + leak * membership + rng.normal(0, 0.7, (shadows, n)), membership


def test_a_repeated_prompt_is_never_its_own_reference():
    """The bootstrap draws prompts with replacement: a copy of the target among its references would hand it
    its own membership. With ``ids``, prompt 0 drawn twice is attacked exactly as without the copy."""
    scores, members = planted(shadows=6, n=50)
    once = lira(scores, members)
    rows = np.array([0, 0, 1, 2, 3, 4, 5])
    twice = lira(scores[rows], members[rows], rows)
    for variant in VARIANTS:
        np.testing.assert_allclose(twice[variant][0], once[variant][0])
        np.testing.assert_allclose(twice[variant][1], once[variant][0])
    naive = lira(scores[rows], members[rows])  # the copy as a reference: the bias prevented
    assert auc(naive["online"][0], members[0]) > auc(once["online"][0], members[0])


def test_lira_leaves_guesses_without_references_out():
    membership = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 0]], dtype=bool)  # example 0: never out
    scores = np.random.default_rng(0).normal(size=membership.shape)
    attacks = lira(scores, membership)
    assert np.isnan(attacks["online"][:, 0]).all() and np.isfinite(attacks["online"][:, 1:]).all()
    assert np.isnan(attacks["global"][:, 0]).all()  # every variant sees the same guesses


def test_bootstrap_intervals_hold_the_estimate_on_a_planted_leak():
    """Resampling prompts with replacement weakens the attack in every resample; without centring, the interval
    of 8 shadows excludes the estimate (online AUC 0.912 against [0.845, 0.910] here)."""
    scores, members = planted(shadows=8, n=500, seed=1)
    metrics = lira_metrics(scores, members, bootstrap=200, seed=0)
    for variant, row in metrics.items():
        for key in [k for k in row if k.endswith("_ci")]:
            low, high = row[key]
            assert low < row[key[:-3]] < high, (variant, key, row[key[:-3]], row[key])
