"""Privacy audit of soft prompts: does a tuned prompt give away which examples it was trained on?

Two audits, both on prompts tuned by the owner's own code (``post.tune.tune_prompt``) and read with the
statistics of ``post.membership``:

**LiRA**. K shadow prompts are tuned on the small source model with 02's settings (prompt length, learning
rate, clipping norm, batch and steps, a DP run's larger Poisson batch and fewer steps included), each on a
random half of an audit pool of private training examples (every example joins every prompt's training set
independently with probability 1/2). The one difference from 02: a half of the pool is smaller than 02's
training set, so each example is seen more often. Each prompt is attacked with the other K-1 as reference
models. A DP row carries evidence only when the no-DP row, same settings, is above chance: otherwise it reads
"not informative".

**One run with canaries**. m canaries, texts of random tokens with random labels (a prompt can only fit one by
memorising it), each join a single training run with probability 1/2, for many epochs; the canaries the
trained prompt moves most give ``eps_hat``, a 95% lower bound on the training's true epsilon.

Controls make the numbers mean something. LiRA: a positive control (a non-private prompt, small pool, many
epochs) must show leakage, and a null control (the same prompts with the membership labels shuffled) must
not. One run: the same DP training with the noise removed (sigma = 0 while the smallest audited epsilon is
claimed) must give an ``eps_hat`` above that epsilon, or the audit could not have caught a missing noise.
Shadow prompts are also transferred to the target with POST exactly as 03 transfers (``post.transfer``) and
attacked there: transfer is post-processing, so it cannot add leakage about the private data, only keep or
lose it. Not covered here: the choice of hyper-parameters with sight of private results, and the several
prompts released per dataset (each epsilon of 02's grid, FullPT), whose guarantees compose.

The audit trains dozens of prompts, so it resumes: each finished part (a setting's shadow prompts with their
scores, their scores on the target after transfer, a canary run) is kept in ``artifacts/<profile>/audit/``
under a digest of everything that determines it. A rerun with the same settings reads it back (a DP part with
secret randomness could not be made again anyway); a changed setting misses it and makes it anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import dp, public_data, transfer
from .artifacts import artifact_dir, eps_tag, results_dir, source_model
from .config import Config, TuneConfig
from .cost import Cost, Timer
from .declarations import Task
from .files import atomic_path, read_json, write_json
from .membership import auc, canary_epsilon, canary_scores, lira, lira_metrics, membership_score, roc_curve, tpr_at
from .models import load, model_name
from .paper import PAPER
from .prompt import SoftPrompt, prompt_class_scores
from .reuse import keyed_path, reuse, save_json
from .tasks import Split, get_task, load_split
from .tune import fixed_length, run_settings, source_fingerprint, tune_prompt

STREAMS = {"membership": 1, "null": 2, "canaries": 3, "canary_texts": 4, "shadows": 5}  # one per purpose
CANARY_TOKENS = 16  # random vocabulary tokens per canary text
NO_NOISE = "no noise (positive control)"  # the one-run row of the DP run with sigma = 0


def rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator for one purpose: draws made from the same seed for different purposes never line up."""
    return np.random.default_rng([seed, STREAMS[purpose]])


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


def without_validation(tune: TuneConfig) -> TuneConfig:
    """02's settings for a prompt trained without validation, keeping its last step, as every audit prompt is.
    02's validation settings (how often, on how many examples, when to stop) are zeroed, so they stay out of the
    keys of the audit's parts: changing how 02 validates does not remake an audit that never validates."""
    return dataclasses.replace(tune, eval_every=0, eval_examples=0, select="last", patience=0, max_steps=0)


def shadow_settings(tune: TuneConfig, epsilon: float) -> tuple[TuneConfig, int]:
    """02's settings and steps for a prompt at ``epsilon`` (DP: larger Poisson batches, fewer steps), without
    validation. A non-private shadow takes 02's fixed ``tune.steps`` too: it has no plateau to stop at."""
    return run_settings(without_validation(tune), epsilon, tune.steps)


def epochs_to_steps(epochs: float, examples: float, batch_size: int) -> int:
    return max(1, round(epochs * examples / batch_size))


def train_prompts(model, tokenizer, task: Task, pool: Split, membership: np.ndarray, settings: TuneConfig,
                  epsilon: float, steps: int, seed: int = 0, max_text_tokens: int = 64,
                  progress: bool = True) -> list[SoftPrompt]:
    """One prompt per row of ``membership``, tuned for ``steps`` on the pool examples that row includes.

    Each prompt gets its own seed, drawn from a stream of ``seed`` kept for this purpose (with seeded DP
    randomness, no two prompts share a sampler or noise stream).
    """
    seeds = rng(seed, "shadows").integers(0, 2 ** 63, len(membership))
    prompts = []
    bar = tqdm(membership, desc=f"shadows eps={eps_tag(epsilon)}", disable=not progress, leave=False)
    for row, prompt_seed in zip(bar, seeds):
        idx = np.flatnonzero(row)
        subset = Split([pool.texts[i] for i in idx], [pool.labels[i] for i in idx])
        prompts.append(tune_prompt(model, tokenizer, task, subset, settings, epsilon, steps, seed=int(prompt_seed),
                                   max_text_tokens=max_text_tokens, progress=False))
    return prompts


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

    def save(self, path: Path) -> Path:
        """Everything but the pool, which the caller has (and keys the file by); prompts without their records."""
        state = {"setting": self.setting, "epsilon": self.epsilon, "membership": torch.from_numpy(self.membership),
                 "prompts": [{"weight": p.weight.detach().cpu(), "meta": p.meta} for p in self.prompts],
                 "class_scores": torch.from_numpy(self.class_scores), "cost": self.cost.to_dict()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: Path, pool: Split) -> "ShadowRun":
        state = torch.load(path, map_location="cpu", weights_only=True)
        prompts = [SoftPrompt(p["weight"], **p["meta"]) for p in state["prompts"]]
        return cls(state["setting"], state["epsilon"], pool, state["membership"].numpy(), prompts,
                   state["class_scores"].numpy(), Cost(**state["cost"]))


def shadow_run(model, tokenizer, task: Task, pool: Split, setting: str, settings: TuneConfig, epsilon: float,
               steps: int, shadows: int, seed: int = 0, max_text_tokens: int = 64, batch_size: int = 32,
               progress: bool = True) -> ShadowRun:
    """Tune K shadow prompts on random halves of ``pool`` and score all of them on the whole pool."""
    membership = membership_matrix(shadows, len(pool), seed)
    cost = Cost()
    with Timer() as timer:
        prompts = train_prompts(model, tokenizer, task, pool, membership, settings, epsilon, steps, seed,
                                max_text_tokens, progress)
        for p in prompts:
            cost = cost + Cost(**{**p.record["cost"], "wall_seconds": 0.0})
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


def random_canaries(tokenizer, m: int, num_classes: int, seed: int, length: int = CANARY_TOKENS) -> Split:
    """m canaries: texts of ``length`` random vocabulary tokens, labels uniform over the classes.

    Nothing in the data or in the model's knowledge predicts their labels, so a prompt that fits a canary
    has memorised it: the example a DP guarantee must hide and a memorising prompt gives away.
    """
    draw = rng(seed, "canary_texts")
    special = set(tokenizer.all_special_ids)
    vocabulary = np.array([i for i in range(len(tokenizer)) if i not in special])
    texts = [tokenizer.decode(draw.choice(vocabulary, length).tolist()) for _ in range(m)]
    return Split(texts, draw.integers(0, num_classes, m).tolist())


def canary_run(model, tokenizer, task: Task, canaries: Split, settings: TuneConfig, epsilon: float, epochs: float,
               guesses: tuple[int, ...], confidence: float = 0.95, seed: int = 0, max_text_tokens: int = 64,
               batch_size: int = 32, progress: bool = True, add_noise: bool = True) -> dict:
    """One training run on a random half of ``canaries``; eps_hat from the canaries' calibrated scores.

    The training set is the included canaries alone: other data would only take prompt capacity from them,
    and the guarantee under audit holds for any data. ``settings`` are 02's but for the batch (the same at
    every epsilon, chosen for how well the prompt memorises: the guarantee holds for any), run for ``epochs``
    passes. ``add_noise=False`` is the positive control: the same DP run with sigma = 0. delta is the one the
    DP plan uses for this training set (also for eps = inf, where no plan exists, so that rows compare).
    """
    included = rng(seed, "canaries").random(len(canaries)) < 0.5
    idx = np.flatnonzero(included)
    train = Split([canaries.texts[i] for i in idx], [canaries.labels[i] for i in idx])
    steps = epochs_to_steps(epochs, len(train), settings.batch_size)
    with Timer() as timer:
        prompt = tune_prompt(model, tokenizer, task, train, settings, epsilon, steps, seed=seed,
                             max_text_tokens=max_text_tokens, progress=progress, add_noise=add_noise)
        cost = Cost(**prompt.record["cost"])
        initial = SoftPrompt.from_text(model, tokenizer, task.instruction, settings.prompt_length)  # as tune_prompt
        class_scores = prompt_class_scores(model, tokenizer, task, canaries.texts, [initial.weight, prompt.weight],
                                           batch_size, max_text_tokens, progress, cost)
    cost.wall_seconds = timer.seconds
    scores = canary_scores(membership_score(class_scores, canaries.labels), canaries.labels)
    bound = canary_epsilon(scores, included, dp.target_delta(len(train)), guesses, confidence)
    privacy = prompt.meta["dp"]
    setting = setting_name(epsilon) if add_noise else NO_NOISE
    return {"setting": setting, "epsilon": eps_tag(epsilon), **bound, "train_examples": len(train),
            "steps": steps, "batch_size": settings.batch_size, "canaries_included": int(included.sum()),
            "noise_multiplier": privacy.get("noise_multiplier"), "prv_epsilon": privacy.get("prv_epsilon"),
            "auc": auc(scores, included), "cost": cost.to_dict(), "scores": scores.tolist(),
            "included": included.tolist()}


def transferred_scores(cfg: Config, source, target, tokenizer, task_name: str, prompts: list[SoftPrompt],
                       texts: list[str], progress: bool = True) -> tuple[np.ndarray, Cost]:
    """(K, N, C) class scores on the target of every prompt after POST transfer with 03's settings.

    Each prompt goes through ``post.transfer.post_transfer``, as in 03; the unprompted public passes are
    shared by the K transfers and counted once.
    """
    prepared = public_data.prepare(cfg, source, target, tokenizer, task_name)
    shared = dataclasses.replace(prepared, cost=Cost())
    cost = Cost() + prepared.cost
    weights = []
    with Timer() as timer:
        for prompt in tqdm(prompts, desc="transfer shadows", disable=not progress, leave=False):
            result, _ = transfer.post_transfer(cfg, source, target, tokenizer, shared, prompt, progress=False)
            cost = cost + result.cost
            weights.append(result.prompt.weight)
        scores = prompt_class_scores(target, tokenizer, get_task(task_name), texts, weights, cfg.eval.batch_size,
                                     cfg.data.max_text_tokens, progress, cost)
    cost.wall_seconds = prepared.cost.wall_seconds + timer.seconds
    return scores, cost


# --- the stage ----------------------------------------------------------------------------------------------


def setting_name(epsilon: float) -> str:
    return "no DP" if math.isinf(epsilon) else f"eps={eps_tag(epsilon)}"


def audit_task(cfg: Config) -> str:
    return cfg.audit.task or cfg.data.tasks[0]


def audit_data(cfg: Config, tokenizer) -> dict[str, Split]:
    """The LiRA pool (a prefix of the private task's training split), its small positive-control prefix, and
    the random canaries."""
    a, name = cfg.audit, audit_task(cfg)
    train = load_split(name, "train")
    if a.pool_size > len(train) or a.positive_control_pool > a.pool_size:
        raise ValueError(f"{name} has {len(train)} training examples; the audit asks for a pool of {a.pool_size} "
                         f"(positive control {a.positive_control_pool} of them)")
    pool = Split(train.texts[:a.pool_size], train.labels[:a.pool_size])
    small = Split(pool.texts[:a.positive_control_pool], pool.labels[:a.positive_control_pool])
    canaries = random_canaries(tokenizer, a.canaries, len(get_task(name).classes), cfg.seed)
    return {"pool": pool, "positive": small, "canaries": canaries}


def reading(ci: list[float]) -> str:
    return "above chance" if ci[0] > 0.5 else "below chance" if ci[1] < 0.5 else "at chance"


def readings(rows: list[dict]) -> list[dict]:
    """Each LiRA row with its reading: a DP row says something only next to a no-DP row (same model and
    variant) that is above chance; otherwise it is "not informative" whatever its own AUC."""
    baseline = {(r["model"], r["variant"]): reading(r["auc_ci"]) for r in rows
                if r["setting"] == setting_name(math.inf) and "auc_ci" in r}
    out = []
    for row in rows:
        text = reading(row["auc_ci"]) if "auc_ci" in row else "no CI"
        if row["setting"].startswith("eps=") and baseline.get((row["model"], row["variant"])) != "above chance":
            text = "not informative: no DP is not above chance"
        out.append({**row, "reading": text})
    return out


def run_audit(cfg: Config, progress: bool = True) -> dict:
    """The whole audit: LiRA per setting and controls on the source, on the target after transfer, canaries.

    Writes ``results/<profile>/audit.json`` (everything but the ROC points, which go with the figure), with a
    cost record (wall time, examples, tokens, FLOPs) per part. Finished parts are read back from their
    checkpoints (``keyed_path``) with the cost of their making; only the attack and bootstrap always rerun.
    DP runs follow ``tune.dp_randomness``, so with secret randomness a DP part made anew gives other numbers
    (within the CIs).
    """
    a = cfg.audit
    name = audit_task(cfg)
    task = get_task(name)
    source_dir = source_model(cfg.profile)
    identity = {"source": source_fingerprint(cfg.profile), "max_text_tokens": cfg.data.max_text_tokens,
                "eval_batch_size": cfg.eval.batch_size,
                "task": [name, task.classes, task.label_words, task.template, task.instruction]}
    costs: dict[str, Cost] = {}
    rows, curves, tuning = [], [], {}
    analysis = Cost()

    def add(run: ShadowRun, model: str) -> None:
        with Timer() as timer:
            r, c = audit_rows(run, model, a.bootstrap, cfg.seed)
        analysis.wall_seconds += timer.seconds
        rows.extend(r)
        curves.extend(c)

    def shadows(pool: Split, setting: str, settings: TuneConfig, epsilon: float, steps: int, seed: int) -> ShadowRun:
        tuning[setting] = {**dataclasses.asdict(settings), "steps": steps, "pool": len(pool),
                           "passes_per_example": steps * settings.batch_size / (len(pool) / 2)}  # 02: / N
        path = keyed_path(artifact_dir(cfg.profile, "audit"), "shadows", ".pt", {
            **identity, "pool": [pool.texts, pool.labels], "setting": setting, "epsilon": eps_tag(epsilon),
            "settings": fixed_length(dataclasses.asdict(settings)), "steps": steps, "shadows": a.shadows,
            "seed": seed})
        return reuse(path, lambda p: ShadowRun.load(p, pool), lambda: shadow_run(
            source, tokenizer, task, pool, setting, settings, epsilon, steps, a.shadows, seed,
            cfg.data.max_text_tokens, cfg.eval.batch_size, progress), ShadowRun.save)

    with Timer() as total:
        source, tokenizer = load(source_dir, device=cfg.device)
        data = audit_data(cfg, tokenizer)
        owner_examples = len(load_split(name, "train", cfg.data.max_train))
        runs: dict[str, ShadowRun] = {}
        for i, epsilon in enumerate(a.epsilons):
            settings, steps = shadow_settings(cfg.tune, epsilon)
            runs[eps_tag(epsilon)] = shadows(data["pool"], setting_name(epsilon), settings, epsilon, steps,
                                             cfg.seed + i)
        settings, _ = shadow_settings(cfg.tune, math.inf)
        steps = epochs_to_steps(a.positive_control_epochs, len(data["positive"]) / 2, settings.batch_size)
        runs["positive"] = shadows(data["positive"], "positive control", settings, math.inf, steps, cfg.seed + 100)
        for run in runs.values():
            costs[f"shadows, {run.setting}"] = run.cost
            add(run, "source")
        add(shuffled(runs["positive"], cfg.seed + 200), "source")
        if a.transfer_settings:
            target, _ = load(cfg.model, device=cfg.device)
            for key in a.transfer_settings:
                run = runs[key]
                part = restrict(run, np.arange(min(a.transfer_pool or len(run.pool), len(run.pool))))
                weights = torch.stack([p.weight.detach().cpu() for p in run.prompts]).numpy()
                path = keyed_path(artifact_dir(cfg.profile, "audit"), "transfer", ".json", {
                    **identity, "prompts": hashlib.sha256(weights.tobytes()).hexdigest(), "texts": part.pool.texts,
                    "transfer": transfer.settings_hash(cfg), "pool": public_data.public_pool(cfg, name)})

                def score() -> dict:  # reuse calls it at once, so this iteration's run and part
                    scores, cost = transferred_scores(cfg, source, target, tokenizer, name, run.prompts,
                                                      part.pool.texts, progress)
                    return {"class_scores": scores.tolist(), "cost": cost.to_dict()}

                scored = reuse(path, read_json, score, save_json)
                costs[f"transfer and target scoring, {run.setting}"] = Cost(**scored["cost"])
                add(dataclasses.replace(part, class_scores=np.asarray(scored["class_scores"], np.float32)),
                    "target (POST)")
                if len(part.pool) < len(run.pool):  # the source prompts on the same examples, for a paired read
                    add(part, "source (same examples)")
            del target
        canaries = []
        finite = [e for e in a.epsilons if not math.isinf(e)]
        control = [(min(finite), False)] if finite else []  # the smallest epsilon claimed, no noise added
        settings = dataclasses.replace(without_validation(cfg.tune), batch_size=a.canary_batch_size)
        for epsilon, noise in [(e, True) for e in a.epsilons] + control:
            path = keyed_path(artifact_dir(cfg.profile, "audit"), "canaries", ".json", {
                **identity, "canaries": [data["canaries"].texts, data["canaries"].labels],
                "epsilon": eps_tag(epsilon), "noise": noise, "settings": fixed_length(dataclasses.asdict(settings)),
                "epochs": a.canary_epochs, "guesses": a.canary_guesses, "confidence": a.confidence, "seed": cfg.seed})
            row = reuse(path, read_json, lambda: canary_run(
                source, tokenizer, task, data["canaries"], settings, epsilon, a.canary_epochs, a.canary_guesses,
                a.confidence, cfg.seed, cfg.data.max_text_tokens, cfg.eval.batch_size, progress, noise), save_json)
            costs[f"canaries, {row['setting']}"] = Cost(**row.pop("cost"))
            canaries.append(row)
        costs["attack and bootstrap"] = analysis
    result = {
        "profile": cfg.profile, "task": name, "source_model": model_name(source), "target_model": cfg.model,
        "distill_hash": read_json(source_dir / "distill.json")["distill_hash"],  # which source: the report checks it
        "settings": dataclasses.asdict(a), "shadow_tuning": tuning, "owner_train_examples": owner_examples,
        "lira": readings(rows), "canaries": canaries, "paper": list(PAPER["lira"]),
        "cost": {part: cost.to_dict() for part, cost in costs.items()},
        "wall_seconds": {**{part: cost.wall_seconds for part, cost in costs.items()}, "total": total.seconds},
    }
    write_json(results_dir(cfg.profile) / "audit.json", result)
    return {**result, "roc": curves}
