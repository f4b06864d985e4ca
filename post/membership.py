"""Membership-inference statistics: how well an attacker tells a prompt's training examples from the rest, and
what that proves about the training's privacy. Pure numpy and scipy on numbers ``post.audit`` measures.

**The statistic.** Per (prompt, example), the logit of the prompted model's probability of the true class,
``log p / (1 - p)``, which is close to Gaussian across prompts.

**LiRA** (Carlini et al. 2022, the attack of the POST paper's privacy table), on K shadow prompts each trained
on a known random half of a pool. Leave-one-out: each prompt in turn is the target and the other K-1 are
reference models. For each example the references give its mean statistic with it (in) and without it (out);
the variance is fixed (one variance for all examples, pooled from the references' deviations around each
example's means), which is what works with few shadows. Online LiRA scores the likelihood ratio of the two
Gaussians, offline LiRA the one-sided tail of the out-Gaussian only; "global" thresholds the raw statistic (the
attack without reference models). Every (prompt, example) pair is one membership guess; the bootstrap CIs of
the AUC and of the TPR at low FPR resample prompts and examples.

**One run with canaries** (Steinke, Nasr, Jagielski 2023, "Privacy auditing with one (1) training run"). m
canaries each join a single training run with probability 1/2. A canary's score is the change of its statistic
from the initial prompt to the trained one, less the mean change of the canaries with its label (the prompt's
shift toward a class is the same for members and non-members). The auditor guesses "in" for the canaries with
the highest scores and "out" for the lowest, abstaining on the rest; under (eps, delta)-DP the number of correct
guesses among r is dominated by Binomial(r, e^eps / (1 + e^eps)) plus a delta term, so the largest eps under
which the observed count has probability <= 5% is a 95% lower bound ``eps_hat`` on the training's true
epsilon. An ``eps_hat`` above the accountant's epsilon means a bug, never a result.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from scipy.optimize import brentq
from scipy.special import expit, logsumexp

VARIANTS = ("online", "offline", "global")
FPRS = (0.01, 0.001)
MIN_FALSE_POSITIVES = 10  # a TPR at FPR f is reported only when n_out * f >= 10: fewer is a handful of outliers


# --- the statistic: logit of the true class's probability ------------------------------------------------------


def membership_score(class_scores: np.ndarray, labels) -> np.ndarray:
    """``log p_y - log(1 - p_y)`` with ``p = softmax(class scores)``, computed as ``s_y - logsumexp_{c != y} s_c``.

    ``class_scores`` is (..., N, C), ``labels`` (N,). The difference form stays finite where p is 0 or 1 in
    floating point, which is where members and non-members differ most.
    """
    s = np.asarray(class_scores, dtype=np.float64)
    index = np.broadcast_to(np.asarray(labels)[:, None], s.shape[:-1] + (1,))
    own = np.take_along_axis(s, index, -1)[..., 0]
    rest = s.copy()
    np.put_along_axis(rest, index, -np.inf, -1)
    return own - logsumexp(rest, axis=-1)


# --- LiRA -------------------------------------------------------------------------------------------------------


def _masked_mean_and_pooled_std(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-example mean over the rows in ``mask`` (NaN without any), and one std pooled from all deviations."""
    count = mask.sum(0)
    with np.errstate(invalid="ignore"):
        mean = np.where(mask, scores, 0.0).sum(0) / count
    squares = np.where(mask, (scores - np.nan_to_num(mean)) ** 2, 0.0).sum()
    dof = max(int(count.sum() - (count > 0).sum()), 1)
    return mean, max(math.sqrt(squares / dof), 1e-6)


def lira(scores: np.ndarray, membership: np.ndarray, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Leave-one-out LiRA with fixed variance: (K, N) attack scores per variant, higher = more likely a member.

    Row k is prompt k attacked with the other prompts as reference models (its own membership is never used
    for its own scores). ``ids`` names the prompt behind each row when rows repeat (a bootstrap over
    prompts): a row's references are the rows of other prompts. Where the references hold no in- (or no out-)
    model of an example, that guess is NaN in every variant and left out of the metrics (it depends on the
    references only, so leaving it out biases nothing; with 16 shadows it is 2 in 2^15 examples).
    """
    scores, membership = np.asarray(scores, dtype=np.float64), np.asarray(membership, dtype=bool)
    if scores.shape != membership.shape:
        raise ValueError(f"scores {scores.shape} and membership {membership.shape} differ in shape")
    ids = np.arange(len(scores)) if ids is None else np.asarray(ids)
    out = {v: np.empty(scores.shape) for v in VARIANTS}
    for k in range(len(scores)):
        refs = ids != ids[k]
        mu_in, sd_in = _masked_mean_and_pooled_std(scores[refs], membership[refs])
        mu_out, sd_out = _masked_mean_and_pooled_std(scores[refs], ~membership[refs])
        x = scores[k]
        missing = np.isnan(mu_in) | np.isnan(mu_out)
        out["online"][k] = stats.norm.logpdf(x, mu_in, sd_in) - stats.norm.logpdf(x, mu_out, sd_out)
        out["offline"][k] = stats.norm.logcdf((x - mu_out) / sd_out)
        out["global"][k] = x
        for attack in out.values():
            attack[k, missing] = np.nan
    return out


# --- metrics ----------------------------------------------------------------------------------------------------


def roc_curve(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores, members = np.asarray(scores), np.asarray(members, dtype=bool)
    if members.all() or not members.any():
        raise ValueError("a ROC curve needs members and non-members")
    order = np.argsort(-scores, kind="stable")
    s, m = scores[order], members[order]
    last = np.r_[s[1:] != s[:-1], True]  # the end of each group of tied scores
    tp, fp = np.cumsum(m)[last], np.cumsum(~m)[last]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The best TPR of a threshold whose FPR is at most ``target``."""
    return float(tpr[np.searchsorted(fpr, target, side="right") - 1])


def auc(scores: np.ndarray, members: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half, as in the Mann-Whitney statistic)."""
    return float(np.trapezoid(*roc_curve(scores, members)[::-1]))


def _metrics(attack: np.ndarray, membership: np.ndarray, fprs: list[float]) -> list[float]:
    valid = np.isfinite(attack)
    fpr, tpr = roc_curve(attack[valid], membership[valid])
    return [float(np.trapezoid(tpr, fpr))] + [tpr_at(fpr, tpr, f) for f in fprs]


def lira_metrics(scores: np.ndarray, membership: np.ndarray, bootstrap: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, dict]:
    """Per LiRA variant: AUC and TPR at low FPR over all (prompt, example) guesses, with bootstrap CIs.

    Each bootstrap resample draws K prompts and N examples with replacement (the guesses of one prompt, and
    those on one example, are correlated) and reruns the attack on it, so the CIs carry the variance over
    shadow prompts, over examples, and of the fitted variances. A resample that repeats prompts has fewer
    distinct reference prompts, so its attack is weaker and the resampled metrics sit below the estimate (with
    8 shadows the plain percentile interval can exclude it); the interval keeps the resamples' spread and is
    centred on the estimate (the resamples' median moved onto it), clipped to [0, 1]. TPR at FPR f is ``None``
    when fewer than MIN_FALSE_POSITIVES non-members would be allowed.
    """
    attacks = lira(scores, membership)
    valid = np.isfinite(attacks["online"])
    n_in, n_out = int(membership[valid].sum()), int((~membership[valid]).sum())
    fprs = [f for f in FPRS if n_out * f >= MIN_FALSE_POSITIVES]
    keys = ["auc"] + [f"tpr_at_{f:g}" for f in fprs]
    samples = {v: [] for v in VARIANTS}
    draw = np.random.default_rng(seed)
    k, n = scores.shape
    for _ in range(bootstrap):
        rows, cols = draw.integers(0, k, k), draw.integers(0, n, n)
        m = membership[np.ix_(rows, cols)]
        try:
            for variant, attack in lira(scores[np.ix_(rows, cols)], m, rows).items():
                samples[variant].append(_metrics(attack, m, fprs))
        except ValueError:  # a resample without members, without non-members, or of a single prompt
            continue
    result = {}
    for variant, attack in attacks.items():
        row = {"n_in": n_in, "n_out": n_out, **dict(zip(keys, _metrics(attack, membership, fprs)))}
        row.update({f"tpr_at_{f:g}": None for f in FPRS if f not in fprs})
        if samples[variant]:
            low, median, high = np.quantile(samples[variant], [(1 - confidence) / 2, 0.5, (1 + confidence) / 2],
                                            axis=0)
            shift = np.array([row[key] for key in keys]) - median
            row.update({f"{key}_ci": [float(np.clip(lo + d, 0, 1)), float(np.clip(hi + d, 0, 1))]
                        for key, lo, hi, d in zip(keys, low, high, shift)})
        result[variant] = row
    return result


# --- the one-run epsilon lower bound ------------------------------------------------------------------------


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """P[at least v of r guesses correct] bounded under (epsilon, delta)-DP (Steinke et al. 2023, Thm 3.3).

    With ``f(u) = P[Binomial(r, q) >= u]``, ``q = e^eps / (1 + e^eps)``, the bound is
    ``f(v) + 2 m delta max_{i >= 1} (f(v - i) - f(v)) / i``; with delta = 0 it is the binomial tail.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    q = expit(epsilon)
    tail = stats.binom.sf(v - 1, r, q)
    if delta == 0 or v == 0:
        return float(min(tail, 1.0))
    i = np.arange(1, v + 1)  # beyond i = v the numerator stays 1 - f(v) while i grows
    alpha = np.max((stats.binom.sf(v - i - 1, r, q) - tail) / i)
    return float(min(tail + 2 * m * delta * alpha, 1.0))


def one_run_epsilon(m: int, r: int, v: int, delta: float = 0.0, significance: float = 0.05) -> float:
    """The largest epsilon that r guesses with v correct reject at level ``significance`` (0 if none)."""
    def excess(eps: float) -> float:  # > 0 while (eps, delta)-DP is rejected
        return significance - one_run_p_value(m, r, v, eps, delta)

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
        if high > 1e4:
            return math.inf
    return float(brentq(excess, 0.0, high, xtol=1e-7))


def canary_guesses(scores: np.ndarray, included: np.ndarray, r: int) -> int:
    """Correct guesses when the r/2 highest-scoring canaries are called in and the r/2 lowest out."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    top, bottom = order[:(r + 1) // 2], order[len(order) - r // 2:]
    included = np.asarray(included, dtype=bool)
    return int(included[top].sum() + (~included[bottom]).sum())


def canary_epsilon(scores: np.ndarray, included: np.ndarray, delta: float, guesses: tuple[int, ...],
                   confidence: float = 0.95) -> dict:
    """eps_hat: the best lower bound over the numbers of guesses tried, Bonferroni-corrected over them."""
    m = len(scores)
    counts = sorted({min(r, m) for r in guesses})
    significance = (1 - confidence) / len(counts)
    rows = []
    for r in counts:
        v = canary_guesses(scores, included, r)
        rows.append({"r": r, "v": v, "eps_hat": one_run_epsilon(m, r, v, delta, significance)})
    best = max(rows, key=lambda row: row["eps_hat"])
    return {"eps_hat": best["eps_hat"], "r": best["r"], "v": best["v"], "m": m, "delta": delta,
            "confidence": confidence, "guesses": rows}


def canary_scores(statistic: np.ndarray, labels) -> np.ndarray:
    """Calibrated canary scores from the (2, m) statistic under the initial and the trained prompt.

    The change from the initial prompt takes out what the model makes of each canary on its own; taking out
    the mean change of the canaries with the same label removes the prompt's shift toward a class, which
    moves members and non-members alike. Neither uses which canaries were included.
    """
    change = np.asarray(statistic[1] - statistic[0], dtype=np.float64)
    labels = np.asarray(labels)
    for label in np.unique(labels):
        change[labels == label] -= change[labels == label].mean()
    return change


def ci_text(ci) -> str:
    """A confidence interval as every table prints it, ``[0.488, 0.526]``; "-" where there is none."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, (list, tuple)) else "-"
