"""Privacy audit of soft prompts: does a tuned prompt give away which examples it was trained on?

Two audits, both run on prompts tuned exactly as the owner's stage tunes them (``post.tune.tune_prompt``):

**LiRA** (Carlini et al. 2022, the attack of the POST paper's privacy table). K shadow prompts are tuned on the
small source model, each on a random half of an audit pool of private training examples (every example joins
every prompt's training set independently with probability 1/2). Leave-one-out: each prompt in turn is the
target and the other K-1 are reference models. The per-example statistic is the logit of the
prompted model's probability of the true class, ``log p / (1 - p)``, which is close to Gaussian across
prompts. For each example the references give its mean statistic with it (in) and without it (out); the
variance is fixed (one variance for all examples, pooled from the references' deviations around each
example's means), which is what works with few shadows. Online LiRA scores the likelihood ratio of the two
Gaussians, offline LiRA the one-sided tail of the out-Gaussian only; "global" thresholds the raw statistic
(the attack without reference models). Every (prompt, example) pair is one membership guess.

**One run with canaries** (Steinke, Nasr, Jagielski 2023, "Privacy auditing with one (1) training run"). m
mislabelled canaries each join a single DP training run with probability 1/2. The auditor guesses "in" for
the canaries the prompt fits best and "out" for the worst, abstaining on the rest; under (eps, delta)-DP the
number of correct guesses among r is dominated by Binomial(r, e^eps / (1 + e^eps)) plus a delta term, so the
largest eps under which the observed count has probability <= 5% is a 95% lower bound ``eps_hat`` on the
prompt's true epsilon. An ``eps_hat`` above the accountant's epsilon means a bug, never a result.

Controls make the numbers mean something: a positive control (a non-private prompt, small pool, many epochs)
must show leakage, and a null control (the same prompts with the membership labels shuffled) must not.
The prompts are also transferred to the target with POST (``post.transfer``) and audited there: transfer is
post-processing, so it cannot add leakage about the private data, only keep or lose it.
"""

from __future__ import annotations

import dataclasses
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy import stats
from scipy.optimize import brentq
from scipy.special import expit, logsumexp
from tqdm.auto import tqdm

from . import dp, transfer
from .artifacts import eps_tag, require, results_dir, source_model_dir, write_json
from .config import AuditConfig, Config, TuneConfig
from .cost import Cost, Timer
from .models import load, model_name
from .plots import save_figure
from .prompt import SoftPrompt, Verbalizer, encode, next_token_logits
from .tasks import Split, Task, get_task, load_split
from .tune import tune_prompt

VARIANTS = ("online", "offline", "global")
FPRS = (0.01, 0.001)
MIN_FALSE_POSITIVES = 10  # a TPR at FPR f is reported only when n_out * f >= 10: fewer is a handful of outliers
STREAMS = {"membership": 1, "null": 2, "canaries": 3, "mislabel": 4}  # one random stream per purpose
PAPER_LIRA = (  # POST paper, LiRA on prompts of RoBERTa-base, private task sst2, 8 shadow models
    {"setting": "no DP", "epsilon": "inf", "auc": 0.561},
    {"setting": "eps=8", "epsilon": "8", "auc": 0.526},
)


def rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator for one purpose: draws made from the same seed for different purposes never line up."""
    return np.random.default_rng([seed, STREAMS[purpose]])


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


@torch.inference_mode()
def prompt_class_scores(model, tokenizer, task: Task, texts: list[str], prompts: list[torch.Tensor],
                        batch_size: int = 32, max_text_tokens: int = 64, progress: bool = True,
                        cost: Cost | None = None) -> np.ndarray:
    """(K, N, C) class scores of every prompt on every text; each batch is tokenised once for all K prompts."""
    verbalizer = Verbalizer.for_task(task, tokenizer)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(prompts), len(texts), len(task.classes)), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc=f"score {len(prompts)} prompts",
                      disable=not progress, leave=False):
        idx = order[start:start + batch_size]
        batch = encode(task, tokenizer, [texts[i] for i in idx], max_text_tokens)
        for k, weight in enumerate(prompts):
            logits = next_token_logits(model, batch["input_ids"], batch["attention_mask"], weight)
            out[k, idx] = verbalizer.scores(logits).numpy()
            if cost is not None:
                cost.add(model, int(batch["attention_mask"].sum()) + weight.shape[0] * len(idx), len(idx))
    return out


# --- shadow prompts ---------------------------------------------------------------------------------------------


def membership_matrix(shadows: int, n: int, seed: int) -> np.ndarray:
    """(K, N) bool, independent Bernoulli(1/2): which pool examples each shadow prompt is tuned on.

    Independence matters: with a balanced design (every example in exactly K/2 prompts) the number of
    in-references left after taking out the target reveals the target's membership, which biases the
    attack (below 0.5 on a null with few shadows).
    """
    if shadows < 3:
        raise ValueError(f"leave-one-out LiRA needs at least 3 shadow prompts, got {shadows}")
    return rng(seed, "membership").random((shadows, n)) < 0.5


def shadow_settings(tune: TuneConfig, audit: AuditConfig) -> TuneConfig:
    """The owner's tuning settings with the audit's shorter prompt and batch; no validation, last step."""
    return dataclasses.replace(tune, prompt_length=audit.prompt_length, batch_size=audit.batch_size,
                               eval_every=0, select="last")


def train_prompts(model, tokenizer, task: Task, pool: Split, membership: np.ndarray, settings: TuneConfig,
                  epsilon: float, epochs: float, seed: int = 0, max_text_tokens: int = 64,
                  progress: bool = True) -> list[SoftPrompt]:
    """One prompt per row of ``membership``, tuned on the pool examples that row includes."""
    prompts = []
    for k, row in enumerate(tqdm(membership, desc=f"shadows eps={eps_tag(epsilon)}", disable=not progress,
                                 leave=False)):
        idx = np.flatnonzero(row)
        subset = Split([pool.texts[i] for i in idx], [pool.labels[i] for i in idx])
        steps = max(1, round(epochs * len(subset) / min(settings.batch_size, len(subset))))
        prompts.append(tune_prompt(model, tokenizer, task, subset, settings, epsilon, steps, seed=seed * 1000 + k,
                                   max_text_tokens=max_text_tokens, progress=False))
    return prompts


# --- LiRA -------------------------------------------------------------------------------------------------------


def _masked_mean_and_pooled_std(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-example mean over the rows in ``mask`` (NaN without any), and one std pooled from all deviations."""
    count = mask.sum(0)
    with np.errstate(invalid="ignore"):
        mean = np.where(mask, scores, 0.0).sum(0) / count
    squares = np.where(mask, (scores - np.nan_to_num(mean)) ** 2, 0.0).sum()
    dof = max(int(count.sum() - (count > 0).sum()), 1)
    return mean, max(math.sqrt(squares / dof), 1e-6)


def lira(scores: np.ndarray, membership: np.ndarray) -> dict[str, np.ndarray]:
    """Leave-one-out LiRA with fixed variance: (K, N) attack scores per variant, higher = more likely a member.

    Row k is prompt k attacked with the other K-1 prompts as reference models (its own membership is never
    used for its own scores). Where the references hold no in- (or no out-) model of an example, that guess
    is NaN in every variant and left out of the metrics (it depends on the references only, so leaving it
    out biases nothing; with 16 shadows it is 2 in 2^15 examples).
    """
    scores, membership = np.asarray(scores, dtype=np.float64), np.asarray(membership, dtype=bool)
    if scores.shape != membership.shape:
        raise ValueError(f"scores {scores.shape} and membership {membership.shape} differ in shape")
    out = {v: np.empty(scores.shape) for v in VARIANTS}
    for k in range(len(scores)):
        refs = np.arange(len(scores)) != k
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

    The bootstrap resamples examples with all K guesses of each (they are correlated) and reruns the attack
    on every resample, so the CIs also carry the uncertainty of the fitted variances, which all examples
    share. TPR at FPR f is ``None`` when fewer than MIN_FALSE_POSITIVES non-members would be allowed.
    """
    attacks = lira(scores, membership)
    valid = np.isfinite(attacks["online"])
    n_in, n_out = int(membership[valid].sum()), int((~membership[valid]).sum())
    fprs = [f for f in FPRS if n_out * f >= MIN_FALSE_POSITIVES]
    keys = ["auc"] + [f"tpr_at_{f:g}" for f in fprs]
    samples = {v: [] for v in VARIANTS}
    draw = np.random.default_rng(seed)
    for _ in range(bootstrap):
        cols = draw.integers(0, scores.shape[1], scores.shape[1])
        m = membership[:, cols]
        try:
            for variant, attack in lira(scores[:, cols], m).items():
                samples[variant].append(_metrics(attack, m, fprs))
        except ValueError:  # a resample without members or without non-members
            continue
    result = {}
    for variant, attack in attacks.items():
        row = {"n_in": n_in, "n_out": n_out, **dict(zip(keys, _metrics(attack, membership, fprs)))}
        row.update({f"tpr_at_{f:g}": None for f in FPRS if f not in fprs})
        if samples[variant]:
            low, high = np.quantile(samples[variant], [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
            row.update({f"{key}_ci": [float(lo), float(hi)] for key, lo, hi in zip(keys, low, high)})
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


# --- the experiments --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ShadowRun:
    """K prompts tuned on halves of a pool, with their statistic on every pool example."""

    setting: str
    epsilon: float
    pool: Split
    membership: np.ndarray  # (K, N) bool
    prompts: list[SoftPrompt]
    class_scores: np.ndarray  # (K, N, C) on the model the prompts were tuned on
    cost: Cost

    @property
    def scores(self) -> np.ndarray:
        return membership_score(self.class_scores, self.pool.labels)


def shadow_run(model, tokenizer, task: Task, pool: Split, setting: str, settings: TuneConfig, epsilon: float,
               epochs: float, shadows: int, seed: int = 0, max_text_tokens: int = 64, batch_size: int = 32,
               progress: bool = True) -> ShadowRun:
    """Tune K shadow prompts on random halves of ``pool`` and score all of them on the whole pool."""
    membership = membership_matrix(shadows, len(pool), seed)
    cost = Cost()
    with Timer() as timer:
        prompts = train_prompts(model, tokenizer, task, pool, membership, settings, epsilon, epochs, seed,
                                max_text_tokens, progress)
        for p in prompts:
            cost = cost + Cost(**{**p.meta["cost"], "wall_seconds": 0.0})
        scores = prompt_class_scores(model, tokenizer, task, pool.texts, [p.weight for p in prompts], batch_size,
                                     max_text_tokens, progress, cost)
    cost.wall_seconds = timer.seconds
    return ShadowRun(setting, epsilon, pool, membership, prompts, scores, cost)


def shuffled(run: ShadowRun, seed: int) -> ShadowRun:
    """The null control: the same prompts and scores, membership labels permuted across examples."""
    perm = rng(seed, "null").permutation(len(run.pool))
    return dataclasses.replace(run, setting="null control", membership=run.membership[:, perm], cost=Cost())


def restrict(run: ShadowRun, columns: np.ndarray) -> ShadowRun:
    """The same run on a subset of its pool's examples."""
    pool = Split([run.pool.texts[i] for i in columns], [run.pool.labels[i] for i in columns])
    return dataclasses.replace(run, pool=pool, membership=run.membership[:, columns],
                               class_scores=run.class_scores[:, columns])


def audit_rows(run: ShadowRun, model: str, bootstrap: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Metric rows (one per LiRA variant) and ROC points (a log-spaced grid of FPRs) of one run."""
    membership, scores = run.membership, run.scores
    correct = run.class_scores.argmax(-1) == np.asarray(run.pool.labels)
    common = {"setting": run.setting, "epsilon": eps_tag(run.epsilon), "model": model, "shadows": len(membership),
              "pool": len(run.pool), "train_accuracy": float(correct[membership].mean()),
              "heldout_accuracy": float(correct[~membership].mean())}
    metrics = lira_metrics(scores, membership, bootstrap, seed)
    rows, curves = [], []
    for variant, attack in lira(scores, membership).items():
        rows.append({**common, "variant": variant, **metrics[variant]})
        valid = np.isfinite(attack)
        fpr, tpr = roc_curve(attack[valid], membership[valid])
        curves += [{"setting": run.setting, "model": model, "variant": variant, "fpr": float(f),
                    "tpr": tpr_at(fpr, tpr, f)} for f in np.geomspace(1 / (~membership[valid]).sum(), 1, 150)]
    return rows, curves


def mislabelled(split: Split, num_classes: int, seed: int) -> Split:
    """Canaries: the texts of ``split`` with a wrong label drawn uniformly from the other classes."""
    shift = rng(seed, "mislabel").integers(1, num_classes, len(split))
    return Split(list(split.texts), [int((y + s) % num_classes) for y, s in zip(split.labels, shift)])


def canary_run(model, tokenizer, task: Task, base: Split, canaries: Split, settings: TuneConfig, epsilon: float,
               epochs: float, guesses: tuple[int, ...], confidence: float = 0.95, seed: int = 0,
               max_text_tokens: int = 64, batch_size: int = 32, progress: bool = True) -> dict:
    """One training run on ``base`` plus a random half of ``canaries``; eps_hat from the canaries' statistic.

    delta is the one the DP plan uses for this training set (also for eps = inf, where no plan exists, so
    that the rows compare).
    """
    included = rng(seed, "canaries").random(len(canaries)) < 0.5
    idx = np.flatnonzero(included)
    train = Split(base.texts + [canaries.texts[i] for i in idx], base.labels + [canaries.labels[i] for i in idx])
    steps = max(1, round(epochs * len(train) / settings.batch_size))
    with Timer() as timer:
        prompt = tune_prompt(model, tokenizer, task, train, settings, epsilon, steps, seed=seed,
                             max_text_tokens=max_text_tokens, progress=progress)
        cost = Cost(**prompt.meta["cost"])
        class_scores = prompt_class_scores(model, tokenizer, task, canaries.texts, [prompt.weight], batch_size,
                                           max_text_tokens, progress, cost)[0]
    cost.wall_seconds = timer.seconds
    scores = membership_score(class_scores, canaries.labels)
    bound = canary_epsilon(scores, included, dp.target_delta(len(train)), guesses, confidence)
    privacy = prompt.meta["dp"]
    return {"epsilon": eps_tag(epsilon), **bound, "train_examples": len(train), "steps": steps,
            "canaries_included": int(included.sum()), "noise_multiplier": privacy.get("noise_multiplier"),
            "prv_epsilon": privacy.get("prv_epsilon"), "auc": auc(scores, included), "cost": cost,
            "scores": scores.tolist(), "included": included.tolist()}


def transferred_scores(cfg: Config, source, target, tokenizer, task_name: str, prompts: list[SoftPrompt],
                       texts: list[str], progress: bool = True) -> tuple[np.ndarray, Cost]:
    """(K, N, C) class scores on the target of every prompt after POST transfer (``post.transfer``).

    The provider side as in 03, with the audit's step count and the last step (no held-out selection, which
    would cost two extra target passes per prompt); the unprompted logits are shared by all K transfers.
    """
    a = cfg.audit
    settings = dataclasses.replace(cfg.transfer, steps=a.transfer_steps, batch_size=a.transfer_batch_size,
                                   eval_every=a.transfer_steps, selection="last")
    prepared = transfer.prepare(cfg, source, target, tokenizer, task_name, examples=a.transfer_examples)
    cost = Cost() + prepared.cost
    weights = []
    with Timer() as timer:
        for k, prompt in enumerate(tqdm(prompts, desc="transfer shadows", disable=not progress, leave=False)):
            data = transfer.public_data(source, tokenizer, prepared.task, prompt, prepared.train,
                                        settings.temperature, cfg.eval.batch_size, settings.max_text_tokens, cost)
            alpha = (transfer.alpha_proxy(data, len(prepared.task.classes)) if settings.alpha_rule == "proxy"
                     else settings.alpha)
            result = transfer.transfer(target, tokenizer, prepared.task, prompt, data, None, settings, alpha,
                                       seed=cfg.seed + k, progress=False)
            cost = cost + result.cost
            weights.append(result.prompt.weight)
        scores = prompt_class_scores(target, tokenizer, get_task(task_name), texts, weights, cfg.eval.batch_size,
                                     cfg.data.max_text_tokens, progress, cost)
    cost.wall_seconds += timer.seconds
    return scores, cost


# --- the stage ----------------------------------------------------------------------------------------------


def setting_name(epsilon: float) -> str:
    return "no DP" if math.isinf(epsilon) else f"eps={eps_tag(epsilon)}"


def audit_task(cfg: Config) -> str:
    return cfg.audit.task or cfg.data.tasks[0]


def audit_data(cfg: Config) -> dict[str, Split]:
    """Disjoint slices of the private task's training split: the LiRA pool and the canaries."""
    a, name = cfg.audit, audit_task(cfg)
    train = load_split(name, "train")
    if a.pool_size + a.canaries > len(train) or a.positive_control_pool > a.pool_size:
        raise ValueError(f"{name} has {len(train)} training examples; the audit asks for a pool of {a.pool_size} "
                         f"(positive control {a.positive_control_pool} of them) and {a.canaries} canaries")
    pool = Split(train.texts[:a.pool_size], train.labels[:a.pool_size])
    stop = a.pool_size + a.canaries
    canaries = mislabelled(Split(train.texts[a.pool_size:stop], train.labels[a.pool_size:stop]),
                           len(get_task(name).classes), cfg.seed)
    small = Split(pool.texts[:a.positive_control_pool], pool.labels[:a.positive_control_pool])
    return {"pool": pool, "positive": small, "canaries": canaries}


def _check(a: AuditConfig) -> None:
    known = {"positive"} | {eps_tag(e) for e in a.epsilons}
    unknown = [s for s in a.transfer_settings if s not in known]
    if unknown:
        raise ValueError(f"audit.transfer_settings {unknown} are not audited settings; choose from {sorted(known)}")
    if not math.isinf(max(a.epsilons, default=0.0)):
        raise ValueError("audit.epsilons must include inf: the DP rows are read against the non-private one")


def run_audit(cfg: Config, progress: bool = True) -> dict:
    """The whole audit: LiRA per setting and controls on the source, on the target after transfer, canaries.

    Writes ``results/<profile>/audit.json`` (everything but the ROC points, which go with the figure), with a
    cost record (wall time, examples, tokens, FLOPs) per part.
    """
    a = cfg.audit
    _check(a)
    name = audit_task(cfg)
    task = get_task(name)
    source_dir = require(source_model_dir(cfg.profile), "source_model", cfg.profile)
    costs: dict[str, Cost] = {}
    rows, curves = [], []
    analysis = Cost()

    def add(run: ShadowRun, model: str) -> None:
        with Timer() as timer:
            r, c = audit_rows(run, model, a.bootstrap, cfg.seed)
        analysis.wall_seconds += timer.seconds
        rows.extend(r)
        curves.extend(c)

    with Timer() as total:
        source, tokenizer = load(source_dir)
        data = audit_data(cfg)
        settings = shadow_settings(cfg.tune, a)
        runs: dict[str, ShadowRun] = {}
        args = dict(shadows=a.shadows, max_text_tokens=cfg.data.max_text_tokens, batch_size=cfg.eval.batch_size,
                    progress=progress)
        for i, epsilon in enumerate(a.epsilons):
            runs[eps_tag(epsilon)] = shadow_run(source, tokenizer, task, data["pool"], setting_name(epsilon),
                                                settings, epsilon, a.epochs, seed=cfg.seed + i, **args)
        runs["positive"] = shadow_run(source, tokenizer, task, data["positive"], "positive control", settings,
                                      math.inf, a.positive_control_epochs, seed=cfg.seed + 100, **args)
        for run in runs.values():
            costs[f"shadows, {run.setting}"] = run.cost
            add(run, "source")
        add(shuffled(runs["positive"], cfg.seed + 200), "source")
        if a.transfer_settings:
            target, _ = load(cfg.model)
            for key in a.transfer_settings:
                run = runs[key]
                part = restrict(run, np.arange(min(a.transfer_pool or len(run.pool), len(run.pool))))
                scores, cost = transferred_scores(cfg, source, target, tokenizer, name, run.prompts,
                                                  part.pool.texts, progress)
                costs[f"transfer and target scoring, {run.setting}"] = cost
                add(dataclasses.replace(part, class_scores=scores), "target (POST)")
                if len(part.pool) < len(run.pool):  # the source prompts on the same examples, for a paired read
                    add(part, "source (same examples)")
            del target
        canaries = []
        for epsilon in a.epsilons:
            row = canary_run(source, tokenizer, task, data["pool"], data["canaries"], settings, epsilon,
                             a.canary_epochs, a.canary_guesses, a.confidence, cfg.seed, cfg.data.max_text_tokens,
                             cfg.eval.batch_size, progress)
            costs[f"canaries, {setting_name(epsilon)}"] = row.pop("cost")
            canaries.append(row)
        costs["attack and bootstrap"] = analysis
    result = {
        "profile": cfg.profile, "task": name, "source_model": model_name(source), "target_model": cfg.model,
        "settings": dataclasses.asdict(a), "shadow_tuning": dataclasses.asdict(settings), "lira": rows,
        "canaries": canaries, "paper": list(PAPER_LIRA),
        "cost": {part: cost.to_dict() for part, cost in costs.items()},
        "wall_seconds": {**{part: cost.wall_seconds for part, cost in costs.items()}, "total": total.seconds},
    }
    write_json(results_dir(cfg.profile) / "audit.json", result)
    return {**result, "roc": curves}


# --- tables and figures -----------------------------------------------------------------------------------------


def lira_table(result: dict, variant: str = "online") -> pd.DataFrame:
    """One row per (setting, model): AUC with CI, TPR at 1% FPR with CI, accuracies on members / non-members."""
    data = pd.DataFrame(result["lira"])
    data = data[data.variant == variant].copy()
    fmt = lambda ci: "" if not isinstance(ci, list) else f"[{ci[0]:.3f}, {ci[1]:.3f}]"  # noqa: E731
    data["auc 95% CI"] = data["auc_ci"].map(fmt)
    data["tpr@1%fpr 95% CI"] = data.get("tpr_at_0.01_ci", pd.Series(index=data.index, dtype=object)).map(fmt)
    columns = ["setting", "model", "auc", "auc 95% CI", "tpr_at_0.01", "tpr@1%fpr 95% CI", "tpr_at_0.001",
               "train_accuracy", "heldout_accuracy", "n_in", "n_out"]
    return data[columns].reset_index(drop=True)


def control_checks(result: dict) -> pd.DataFrame:
    """Whether the audit can be trusted: the positive control leaks, the null does not, eps_hat <= epsilon."""
    lira_rows = pd.DataFrame(result["lira"])
    online = lira_rows[(lira_rows.variant == "online") & (lira_rows.model == "source")].set_index("setting")
    checks = []
    if "positive control" in online.index:
        low = online.loc["positive control", "auc_ci"][0]
        checks.append({"check": "positive control leaks (AUC CI above 0.5)", "value": f"CI low {low:.3f}",
                       "passed": bool(low > 0.5)})
    if "null control" in online.index:
        low, high = online.loc["null control", "auc_ci"]
        checks.append({"check": "null control does not (AUC CI covers 0.5)", "value": f"[{low:.3f}, {high:.3f}]",
                       "passed": bool(low <= 0.5 <= high)})
    for row in result["canaries"]:
        if row["epsilon"] != "inf":
            checks.append({"check": f"eps_hat <= configured epsilon {row['epsilon']}",
                           "value": f"eps_hat {row['eps_hat']:.3f}",
                           "passed": bool(row["eps_hat"] <= float(row["epsilon"]))})
    return pd.DataFrame(checks)


def paper_comparison(result: dict) -> pd.DataFrame:
    """Our online-LiRA AUC on the source prompts next to the POST paper's (labelled as the paper's)."""
    ours = pd.DataFrame(result["lira"])
    ours = ours[(ours.variant == "online") & (ours.model == "source")].set_index("setting")["auc"]
    return pd.DataFrame([{"setting": p["setting"], "paper AUC (RoBERTa-base, sst2, 8 shadows)": p["auc"],
                          f"our AUC ({result['task']}, {result['settings']['shadows']} shadows)":
                              ours.get(p["setting"], float("nan"))} for p in result["paper"]])


def plot_roc(result: dict, profile: str):
    """ROC curves on log-log axes, one panel per setting: online (solid) and offline (dashed) LiRA per model."""
    data = pd.DataFrame(result["roc"])
    data = data[data.variant.isin(["online", "offline"])]
    settings = list(dict.fromkeys(data.setting))
    models = list(dict.fromkeys(data.model))
    fig, axes = plt.subplots(1, len(settings), figsize=(3.0 * len(settings), 3.2), squeeze=False, sharey=True)
    floor = data.fpr.min()
    for ax, setting in zip(axes[0], settings):
        for (model, variant), part in data[data.setting == setting].groupby(["model", "variant"], sort=False):
            ax.plot(part.fpr, part.tpr.clip(lower=floor), color=f"C{models.index(model)}", lw=1.3,
                    ls="-" if variant == "online" else "--", label=f"{model}, {variant}")
        ax.plot([floor, 1], [floor, 1], color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1.05), xlabel="false positive rate",
               title=setting)
    axes[0][0].set_ylabel("true positive rate")
    handles = {line.get_label(): line for ax in axes[0] for line in ax.get_lines()
               if not line.get_label().startswith("_")}
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=7, frameon=False, loc="upper left")
    save_figure(fig, data, "audit_roc", profile)
    return fig


def plot_eps_hat(result: dict, profile: str):
    """eps_hat (95% lower bound) against the accountant's epsilon, with y = x: points must stay below it."""
    data = pd.DataFrame(result["canaries"])[["epsilon", "eps_hat", "prv_epsilon", "r", "v", "m", "delta"]]
    finite = data[data.epsilon != "inf"].assign(configured=lambda d: d.epsilon.astype(float))
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    top = max([1.0, *finite.configured, *data.eps_hat]) * 1.1
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=1, label="y = x (the DP guarantee)")
    ax.plot(finite.configured, finite.eps_hat, "o", label="one-run audit, DP prompts")
    for _, row in data[data.epsilon == "inf"].iterrows():
        ax.axhline(row.eps_hat, color="C3", ls=":", lw=1.2, label=f"no DP: eps_hat = {row.eps_hat:.2f}")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="configured epsilon", ylabel="eps_hat (95% lower bound)")
    ax.legend(fontsize=7, frameon=False)
    save_figure(fig, data, "audit_eps_hat", profile)
    return fig
