"""Soft-prompt tuning, with and without differential privacy: the data owner's stage, plus the FullPT baseline.

The prompt starts from the embeddings of the task's instruction text and is trained with Adam on the
cross-entropy of the verbalizer's class scores, for a fixed number of steps. With a finite epsilon the steps
are DP-SGD steps (``post.dp``): Poisson batches, exact per-sample gradients, clipping, Gaussian noise.

CompPT is the owner's prompt, tuned on the small source model: this code path loads the source model only,
never the target's weights. FullPT is the same code on the target (the expensive reference, which needs the
private data at the provider). Nothing here reads a test split except the final scoring in ``run_tune``;
the optional checkpoint selection uses the validation split carved from the owner's own data.

What a prompt file carries is only the weights and the public facts of ``post.prompt.PROVIDER_KEYS``;
the owner's record of the run (curves, validation scores, batch sizes, cost) is saved next to it. A DP run's
sampler and noise come from OS entropy unless ``tune.dp_randomness`` is "seeded" (tests only), so DP runs
are not bit-reproducible: two runs with the same settings give different prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import dp
from .artifacts import METHODS, eps_tag, prompt_path, results_dir, source_model
from .config import Config, TuneConfig, keyed
from .cost import Cost, Timer, plateaued
from .declarations import Task
from .evaluate import accuracy, owner_validation
from .files import read_json, readable, relative, write_json
from .hardware import autocast, resolve_precision
from .models import load, model_name
from .prompt import SoftPrompt, Verbalizer, encode, grouped_logits, provider_meta, read_record, record_path
from .reuse import content_key, reuse
from .tasks import BUILTIN, Split, fingerprint, get_task, load_split


def example_losses(model, verbalizer: Verbalizer, batch: dict, labels: torch.Tensor,
                   prompt: torch.Tensor) -> torch.Tensor:
    """(B,) cross-entropy of the class scores; ``prompt`` is (P, D) shared or (B, P, D) per example."""
    logits = grouped_logits(model, batch["input_ids"], batch["attention_mask"], prompt)
    return F.cross_entropy(verbalizer.scores(logits), labels.to(logits.device), reduction="none")


def per_sample_grads(model, verbalizer: Verbalizer, batch: dict, labels: torch.Tensor,
                     weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-example gradients (B, P, D) of each example's loss, and the losses, from one backward pass.

    Each example gets its own copy of the prompt; example i's loss depends on copy i only, so the gradient
    of the summed loss with respect to copy i is example i's gradient.
    """
    copies = weight.detach().unsqueeze(0).repeat(len(labels), 1, 1).requires_grad_()
    losses = example_losses(model, verbalizer, batch, labels, copies)
    (grads,) = torch.autograd.grad(losses.sum(), copies)
    return grads, losses.detach()


def per_sample_check(model, tokenizer, task: Task, split: Split, weight: torch.Tensor,
                     max_text_tokens: int = 64) -> float:
    """Max abs difference between the batched per-sample gradients and one-example-at-a-time ones."""
    verbalizer, labels = Verbalizer.for_task(task, tokenizer), torch.tensor(split.labels)
    batch = encode(task, tokenizer, split.texts, max_text_tokens)
    grads, _ = per_sample_grads(model, verbalizer, batch, labels, weight)
    worst = 0.0
    for i, text in enumerate(split.texts):  # reference: the ordinary gradient of one example, unpadded
        alone = weight.detach().clone().requires_grad_()
        loss = example_losses(model, verbalizer, encode(task, tokenizer, [text], max_text_tokens),
                              labels[i:i + 1], alone).sum()
        worst = max(worst, float((grads[i] - torch.autograd.grad(loss, alone)[0]).abs().max()))
    return worst


def _shuffled_batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless fixed-size batches, each epoch a fresh permutation (the non-private sampler)."""
    queue = torch.empty(0, dtype=torch.long)
    while True:
        while len(queue) < batch_size:
            queue = torch.cat([queue, torch.randperm(n, generator=generator)])
        yield queue[:batch_size]
        queue = queue[batch_size:]


def _prompted_tokens(tokenizer, task: Task, texts: list[str], prompt_length: int, max_text_tokens: int) -> int:
    """Tokens an evaluation processes (prompt + templated text per example), for the cost record."""
    ids = encode(task, tokenizer, texts, max_text_tokens)["attention_mask"]
    return int(ids.sum()) + prompt_length * len(texts)


def tune_prompt(model, tokenizer, task: Task, train: Split, settings: TuneConfig, epsilon: float, steps: int,
                validation: Split | None = None, seed: int = 0, max_text_tokens: int = 64,
                eval_batch_size: int = 32, progress: bool = True, add_noise: bool = True) -> SoftPrompt:
    """Tune a soft prompt on ``train``; ``epsilon`` < inf makes every step a DP-SGD step.

    The returned prompt's ``meta`` is what may go to the provider: model, task and template, epsilon and the
    DP record (delta, sigma, C, q, steps, N, spent epsilon, where the randomness came from). Its ``record``
    is the owner's: all of that plus the settings, the seed, the training curve (loss and size of every
    batch), validation accuracy every ``eval_every`` steps and the cost (wall time, examples, tokens, FLOPs).

    ``seed`` drives the non-private batches, and the DP sampler and noise only if ``settings.dp_randomness``
    is "seeded" (then the prompt is stamped ``reproducible_not_private``). ``add_noise=False`` runs the DP
    plan with sigma = 0: the audit's positive control, a prompt with no guarantee that is never released.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive (math.inf for no DP), got {epsilon}")
    private = not math.isinf(epsilon)
    n, batch_size = len(train), min(settings.batch_size, len(train))
    verbalizer = Verbalizer.for_task(task, tokenizer)
    labels = torch.tensor(train.labels)
    prompt = SoftPrompt.from_text(model, tokenizer, task.instruction, settings.prompt_length, task=task.name,
                                  template=task.template, epsilon=epsilon)
    weight = prompt.weight
    optimizer = torch.optim.Adam([weight], lr=settings.lr)
    if private:
        plan = dp.plan(epsilon, n, batch_size, steps, settings.max_grad_norm)
        plan = plan if add_noise else dataclasses.replace(plan, noise_multiplier=0.0)
        sampler, noise = dp.streams(settings.dp_randomness, seed)
        optimizer, accountant = dp.optimizer(weight, optimizer, plan, noise)
    else:
        batches = _shuffled_batches(n, batch_size, torch.Generator().manual_seed(seed))
    # the owner may select a checkpoint on its own validation data; a DP prompt always keeps its last step,
    # so that the guarantee covers every private example that influenced it
    select = settings.select if validation is not None and not private else "last"
    curve = {"step": [], "loss": [], "batch_size": []}
    evals = {"step": [], "accuracy": [], "flops": [], "seconds": []}  # with the run's cost so far
    best = (-1.0, 0, None)  # (validation accuracy, step, weight)
    cost = Cost()

    def evaluate(step: int) -> bool:
        """Score ``step`` on validation, keep it if best; True once the accuracy has plateaued."""
        nonlocal best
        result = accuracy(model, tokenizer, task, validation, prompt, eval_batch_size, max_text_tokens, False)
        cost.add(model, _prompted_tokens(tokenizer, task, validation.texts, settings.prompt_length,
                                         max_text_tokens), 0, "forward")  # examples counts training only
        for name, value in zip(evals, (step, result["accuracy"], cost.flops, timer.seconds)):
            evals[name].append(value)
        if select == "validation" and result["accuracy"] > best[0]:
            best = (result["accuracy"], step, weight.detach().clone())
        return plateaued([-a for a in evals["accuracy"]], patience)

    eval_every = settings.eval_every if validation is not None else 0
    patience = settings.patience if select == "validation" else 0  # stop at the validation plateau
    step_context = autocast(settings.precision, model.device.type, "tune.precision")  # the weight stays on the CPU
    with Timer() as timer:
        if eval_every:
            evaluate(0)
        bar = tqdm(range(1, steps + 1), desc=f"{task.name} {model_name(model)} eps={eps_tag(epsilon)}",
                   disable=not progress, leave=False)
        for step in bar:
            idx = dp.poisson_batch(n, plan.sample_rate, sampler) if private else next(batches)
            optimizer.zero_grad()
            loss = math.nan
            if len(idx):
                batch = encode(task, tokenizer, [train.texts[i] for i in idx], max_text_tokens)
                with step_context:  # the prompt and its (per-sample) gradients stay fp32
                    if private:
                        grads, losses = per_sample_grads(model, verbalizer, batch, labels[idx], weight)
                        loss = float(losses.mean())
                    else:
                        mean_loss = example_losses(model, verbalizer, batch, labels[idx], weight).mean()
                        mean_loss.backward()
                        loss = float(mean_loss.detach())
                cost.add(model, batch["input_ids"].numel() + settings.prompt_length * len(idx), len(idx),
                         "input_grad")
            if private:
                # an empty Poisson batch is a real step: zero clipped sum + noise, and it is accounted
                dp.set_grad_sample(weight, grads if len(idx) else weight.new_zeros((0, *weight.shape)))
            optimizer.step()
            curve["step"].append(step)
            curve["loss"].append(None if math.isnan(loss) else loss)
            curve["batch_size"].append(len(idx))
            bar.set_postfix(loss=f"{loss:.3f}")
            if eval_every and (step % eval_every == 0 or step == steps) and evaluate(step):
                break
    cost.wall_seconds = timer.seconds
    taken = selected = step if steps else 0
    if select == "validation":
        _, selected, best_weight = best
        with torch.no_grad():
            weight.copy_(best_weight)
    privacy = {"private": private}
    if private:
        randomness = "secret" if settings.dp_randomness == "secret" else dp.NOT_PRIVATE
        privacy.update(plan.to_dict(), randomness=randomness, **dp.spent(accountant, plan.delta))
    record = {**prompt.meta, "dp": privacy, "seed": seed, "train_examples": n, "steps": taken, "max_steps": steps,
              "batch_size": batch_size, "lr": settings.lr, "optimizer": "adam",
              "precision": resolve_precision(settings.precision, model.device.type, "tune.precision"),
              "select": select, "selected_step": selected, "curve": curve, "validation": evals,
              "validation_examples": 0 if validation is None else len(validation), "cost": cost.to_dict()}
    return SoftPrompt(weight, record=record, **provider_meta(record))


# --- the stage: CompPT on the source for every epsilon, FullPT on the target -----------------------------


def source_fingerprint(profile: str) -> str:
    """Digest of the source model directory's JSON files (config, manifest): changes when 01 re-distills."""
    directory = source_model(profile)
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.json")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def run_key(cfg: Config, task: str, method: str, epsilon: float) -> str:
    """Digest of everything that determines one prompt (not the grids), so reruns skip finished prompts."""
    tune = keyed(cfg.tune)
    tune.pop("steps" if method == "fullpt" else "full_pt_steps")  # the other method's length
    tune = tune if math.isinf(epsilon) else fixed_length(tune)
    payload = {"task": task, "method": method, "epsilon": eps_tag(epsilon), "seed": cfg.seed, "tune": tune,
               "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in ("tasks", "task_files")},
               "eval_batch_size": cfg.eval.batch_size,
               "model": source_fingerprint(cfg.profile) if METHODS[method].model == "source" else cfg.model}
    if task not in BUILTIN:  # a task from a file: its wording and data are part of what made the prompt
        payload["declaration"] = fingerprint(task)
    return content_key(payload)


def fixed_length(tune: dict) -> dict:
    """The tune settings (as a dict) that determine a run of fixed length keeping its last step, as every DP
    run and audit run is: the plateau rule never applies to it, so it stays out of the run's key."""
    return {**{k: v for k, v in tune.items() if k not in ("patience", "max_steps")}, "select": "last"}


def run_settings(tune: TuneConfig, epsilon: float, steps: int) -> tuple[TuneConfig, int]:
    """Batch and steps of one stage run: a DP run takes ``dp_batch_size`` Poisson batches and proportionally
    fewer steps, so it sees as many examples (about the same compute) as the fixed-length non-private run. A
    non-private run with ``tune.patience`` may take up to ``tune.max_steps`` and stops at its plateau; a DP run
    cannot (its budget is spent on a planned number of steps), so it keeps the fixed length.

    Why: each DP step adds noise of fixed size sigma*C to the sum of at most B clipped gradients, so the
    signal-to-noise ratio of a step grows with B, while sigma barely changes with the sampling rate here.
    """
    if math.isinf(epsilon):  # trained to its validation plateau (if tune.patience), at most tune.max_steps
        return tune, (tune.max_steps or steps) if tune.patience else steps
    if not tune.dp_batch_size:
        return tune, steps
    return (dataclasses.replace(tune, batch_size=tune.dp_batch_size),
            max(1, math.ceil(steps * tune.batch_size / tune.dp_batch_size)))


def _owner_data(cfg: Config, task: str) -> tuple[Split, Split | None]:
    """The owner's training data and (if the stage evaluates during training) its carved validation split."""
    return load_split(task, "train", cfg.data.max_train), owner_validation(cfg, task)


def stage_plan(cfg: Config, task: str, epsilon: float) -> dp.DPPlan:
    """The DP plan ``run_tune`` calibrates for CompPT on ``task`` at ``epsilon``: the owner's training-set size,
    the DP batch and steps of ``run_settings`` and the profile's C, as ``tune_prompt`` passes them to ``dp.plan``."""
    train, _ = _owner_data(cfg, task)
    settings, steps = run_settings(cfg.tune, epsilon, cfg.tune.steps)
    return dp.plan(epsilon, len(train), min(settings.batch_size, len(train)), steps, settings.max_grad_norm)


def tune_method(cfg: Config, method: str, progress: bool = True, cached: dict | None = None,
                epsilons: tuple[float, ...] = ()) -> list[dict]:
    """Tune (or reuse) every prompt of ``method`` (at ``epsilons``, else the profile's grid for it) and score it
    on the test split with the model it was tuned on.

    ``compt`` loads only the distilled source model; ``fullpt`` loads the target. A prompt file whose owner
    record has the current run key is not retrained (a DP prompt is released once, not again at every rerun),
    and if ``cached`` (prompt digest -> row of an earlier run) has its row scored at the current eval precision
    on as many test examples, not rescored either.
    """
    grids = {"compt": (cfg.tune.epsilons, cfg.tune.steps),
             "fullpt": (cfg.tune.full_pt_epsilons, cfg.tune.full_pt_steps)}
    if method not in grids:
        raise KeyError(f"tune methods are {sorted(grids)}, not {method!r}")
    grid, steps = grids[method]
    epsilons = epsilons or grid
    name = str(source_model(cfg.profile)) \
        if METHODS[method].model == "source" else cfg.model
    cached = cached or {}
    model = functools.cache(lambda: load(name, device=cfg.device))  # loaded once something needs it
    rows = []
    for task_name in cfg.data.tasks:
        task = get_task(task_name)
        test_split = load_split(task_name, "test", cfg.data.max_test)
        for epsilon in epsilons:
            key = run_key(cfg, task_name, method, epsilon)

            def owners(path: Path) -> SoftPrompt | None:  # the prompt, if these settings made it (its record says)
                made_by = (readable(record_path(path), read_json) or {}).get("run_key")
                return SoftPrompt.load(path) if made_by == key else None

            def tuned() -> SoftPrompt:
                train, validation = _owner_data(cfg, task_name)
                settings, run_steps = run_settings(cfg.tune, epsilon, steps)
                prompt = tune_prompt(*model(), task, train, settings, epsilon, run_steps, validation, cfg.seed,
                                     cfg.data.max_text_tokens, cfg.eval.batch_size, progress)
                prompt.meta["method"] = method
                prompt.record.update(method=method, run_key=key)  # the owner's: a task file's key digests its data
                return prompt

            path = prompt_path(cfg.profile, task_name, method, epsilon, cfg.seed)
            prompt = reuse(path, owners, tuned, SoftPrompt.save)
            row = cached.get(prompt.digest())
            if row and row.get("eval_precision") == cfg.eval.precision and row.get("n") == len(test_split):
                rows.append(row)
                continue
            test = accuracy(*model(), task, test_split, prompt, cfg.eval.batch_size, cfg.data.max_text_tokens,
                            progress, cfg.eval.precision)
            rows.append({**_row(read_record(path), test, prompt.digest(), path), "eval_precision": cfg.eval.precision})
    return rows


# what a DP prompt's row leaves out: noiseless functions of its Poisson draws and of the private texts they drew
# (the time, FLOPs and examples its steps took); the owner's record keeps them
DP_UNPUBLISHED = ("train_seconds", "train_flops", "examples_seen")


def _row(record: dict, test: dict, digest: str, path: Path) -> dict:
    """One results row from the owner's record of a prompt and its test score; a DP prompt's row publishes only
    what its guarantee covers (the planned steps and expected batch, the DP parameters, the test score)."""
    privacy = record["dp"]
    row = {
        "task": record["task"], "method": METHODS[record["method"]].label, "model": record["model"],
        "epsilon": eps_tag(record["epsilon"]), "seed": record["seed"], "accuracy": test["accuracy"],
        "n": test["n"], "predicted_share": test["predicted_share"], "eval_seconds": test["seconds"],
        "train_seconds": record["cost"]["wall_seconds"], "train_flops": record["cost"]["flops"],
        "train_size": record["train_examples"], "examples_seen": record["cost"]["examples"],
        "steps": record["steps"], "batch_size": record["batch_size"],
        "prompt_length": record["length"], "selected_step": record["selected_step"],
        "prv_epsilon": privacy.get("prv_epsilon"), "rdp_epsilon": privacy.get("rdp_epsilon"),
        "delta": privacy.get("delta"), "noise_multiplier": privacy.get("noise_multiplier"),
        "max_grad_norm": privacy.get("max_grad_norm"), "sample_rate": privacy.get("sample_rate"),
        "prompt_digest": digest, "prompt": relative(path),
    }
    return {k: v for k, v in row.items() if k not in DP_UNPUBLISHED} if privacy["private"] else row


def run_tune(cfg: Config, progress: bool = True) -> list[dict]:
    """The whole stage: CompPT for every epsilon (source only), then FullPT; writes ``tune.json``.

    A prompt already tuned with the same settings (run key) is reused; its row too, if ``tune.json`` has it.
    """
    out = results_dir(cfg.profile) / "tune.json"
    cached = {row.get("prompt_digest"): row for row in readable(out, read_json) or []}
    rows = tune_method(cfg, "compt", progress, cached) + tune_method(cfg, "fullpt", progress, cached)
    write_json(out, rows)
    return rows
