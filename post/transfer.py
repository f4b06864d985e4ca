"""POST transfer (provider side): turn the owner's source prompt into a target prompt with public text only.

The provider holds the source model, the target model, the owner's prompt file and unlabelled public text
formatted with the private task's template. The target prompt ``p_t`` is trained so that, at the prediction
position and over the whole vocabulary (temperature ``T``),

    L = (1 - a) * T^2 KL(P_s || P_t)  +  a * T^2 KL(Q_s || Q_t)
    P_m = softmax(z_m(x; p_m) / T)                  what the prompted model predicts
    Q_m = softmax((z_m(x; p_m) - z_m(x)) / T)       the shift the prompt causes (logits with - without prompt)

The first term makes the prompted target predict like the prompted source; the second makes the prompt move
the target the way it moves the source, which keeps what the target knows on its own. The source side is the
teacher in both terms (the reference code's ``KLDivLoss(log P_t, P_s)``: Hinton-style distillation).
An optional third term, ``b * T^2 KL(D_t || P_t)`` with ``D_t = softmax(z_t(x; p_s) / T)``, anchors the transfer
to Direct (the source prompt pasted onto the target, POST's own starting point): the prompt moves away from
Direct's predictions only as far as the other two terms pay for. It is zero at the first step of a transfer that
starts from the source prompt; ``b = 0`` (the default) is the paper's objective. Where Direct is poor, holding
the target to it holds the target back, so the anchor can be kept to the texts where Direct picks the class the
prompted source picks (``anchor_on="agree"``): a public-data check the provider can make, like the alpha proxy.
Everything except ``z_t(x; p_t)`` is constant while ``p_t`` trains, so it is computed once per public example
(:class:`~post.public_data.PublicData`) and only the prompted target runs at each step.

The provider boundary is part of the API: nothing here accepts a :class:`~post.tasks.Split` or labels; a task
is handed over through :func:`~post.public_data.provider_view` (template, label words, instruction; its loader
refuses); text comes from :func:`~post.tasks.public_texts`; and test accuracy, for figures only, enters as a
caller's ``score`` function whose value is recorded, never used to choose anything.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .artifacts import (METHODS, artifact_dir, eps_tag, prompt_path, read_required, require, results_dir, source_model,
                        write_manifest)
from .config import Config, TransferConfig
from .cost import Cost, Timer, plateaued
from .declarations import Task
from .files import ROOT, atomic_path, read_json, readable, relative, write_json
from .hardware import autocast
from .models import load, model_name
from .prompt import SoftPrompt, check_release, encode, next_token_logits, provider_meta
from .public_data import Prepared, PublicData, alpha_proxy, prepare, public_data, public_pool
from .reuse import keyed_path, reuse


# --- the objective ------------------------------------------------------------------------------------------


def kl(teacher_log_probs: torch.Tensor, student_logits: torch.Tensor, temperature: float,
       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of T^2 KL(teacher || softmax(student / T)), each row times its weight if given; the teacher is
    given as log-probabilities."""
    student = F.log_softmax(student_logits / temperature, -1)
    rows = (teacher_log_probs.exp() * (teacher_log_probs - student)).sum(-1)
    return (rows if weights is None else rows * weights).mean() * temperature ** 2


def post_loss(target_prompted: torch.Tensor, teacher: torch.Tensor, teacher_shift: torch.Tensor,
              target_plain: torch.Tensor, alpha: float, temperature: float = 2.0, anchor: float = 0.0,
              direct: torch.Tensor | None = None, anchored: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The POST objective on a batch, and its terms (floats) for the record; ``anchor`` weighs the drift
    from Direct's predictions ``direct`` (log-probabilities) on the rows ``anchored`` marks (default: all)."""
    absolute = kl(teacher, target_prompted, temperature)
    shift = kl(teacher_shift, target_prompted - target_plain, temperature)
    loss, parts = (1 - alpha) * absolute + alpha * shift, {"absolute": absolute.item(), "shift": shift.item()}
    if anchor:
        if direct is None:
            raise ValueError("an anchor weight needs Direct's predictions: build the public data with the target")
        drift = kl(direct, target_prompted, temperature, anchored)
        loss, parts["drift"] = loss + anchor * drift, drift.item()
    return loss, parts


def batch_loss(target, tokenizer, task: Task, weight: torch.Tensor, data: PublicData, idx: list[int],
               alpha: float, temperature: float = 2.0, max_text_tokens: int = 64,
               precision: str = "fp32", anchor: float = 0.0) -> tuple[torch.Tensor, dict, int]:
    """Loss of target prompt ``weight`` on examples ``idx`` of ``data``, its terms, and the tokens processed."""
    context = autocast(precision, target.device.type, "transfer.precision")  # the weight stays on the CPU
    batch = encode(task, tokenizer, [data.texts[i] for i in idx], max_text_tokens)
    with context:
        logits = next_token_logits(target, batch["input_ids"], batch["attention_mask"], weight)
    if data.project is not None:
        logits = data.project(logits)
    at = torch.as_tensor(idx)  # the constant terms stay on the CPU (N x V each); a batch's rows go to the model
    teacher, teacher_shift, target_plain = (terms[at].to(logits.device)
                                            for terms in (data.teacher, data.teacher_shift, data.target_plain))
    direct, anchored = ((x[at].to(logits.device) if anchor and x is not None else None)
                        for x in (data.direct, data.anchored))
    loss, parts = post_loss(logits.float(), teacher, teacher_shift, target_plain, alpha, temperature, anchor, direct,
                            anchored)
    return loss, parts, int(batch["attention_mask"].sum()) + weight.shape[0] * len(idx)


@torch.no_grad()
def public_loss(target, tokenizer, task: Task, weight: torch.Tensor, data: PublicData, alpha: float,
                settings: TransferConfig, cost: Cost | None = None) -> float:
    """Mean transfer loss over all of ``data`` (held-out public texts): the provider's selection signal."""
    total = 0.0
    for start in range(0, len(data), settings.batch_size):
        idx = list(range(start, min(start + settings.batch_size, len(data))))
        loss, _, tokens = batch_loss(target, tokenizer, task, weight, data, idx, alpha, settings.temperature,
                                     settings.max_text_tokens, settings.precision, settings.anchor)
        total += loss.item() * len(idx)
        if cost is not None:
            cost.add(target, tokens, len(idx), "forward")
    return total / len(data)


# --- the transfer -------------------------------------------------------------------------------------------


def initial_prompt(target, tokenizer, task: Task, source_prompt: SoftPrompt, init: str) -> torch.Tensor:
    """``source``: the source prompt itself (same embedding space); ``instruction``: the task instruction's tokens."""
    if init == "source":
        return source_prompt.weight.detach().clone()
    if init == "instruction":
        return SoftPrompt.from_text(target, tokenizer, task.instruction, source_prompt.weight.shape[0]).weight.detach()
    raise ValueError(f"unknown init {init!r}; use 'source' or 'instruction'")


@dataclass
class TransferResult:
    prompt: SoftPrompt
    history: list[dict]  # per step the loss and its terms; at evaluation steps the held-out public loss
    snapshots: dict[int, torch.Tensor]  # prompt weights at each evaluation step (0 = the initial prompt)
    selected_step: int
    cost: Cost = field(default_factory=Cost)


def transfer(target, tokenizer, task: Task, source_prompt: SoftPrompt, data: PublicData,
             holdout: PublicData | None, settings: TransferConfig, alpha: float, seed: int = 0,
             progress: bool = True, spent: Cost | None = None) -> TransferResult:
    """Train a target prompt on public ``data``; keep the last step or the lowest held-out public loss.

    ``spent`` is what making ``data`` and ``holdout`` cost: the result's cost, and the cost so far that each
    held-out evaluation records, count from it.
    """
    check_release(source_prompt.meta)  # a seeded or noiseless DP prompt must not reach the provider
    if settings.selection not in ("last", "holdout"):
        raise ValueError(f"unknown selection {settings.selection!r}; use 'last' or 'holdout'")
    if settings.selection == "holdout" and holdout is None:
        raise ValueError("selection='holdout' needs held-out public data")
    if settings.eval_every < 1 or settings.steps < 0:
        raise ValueError(f"need eval_every >= 1 and steps >= 0, got {settings.eval_every} and {settings.steps}")
    source_prompt.check(target, same_model=False)
    weight = torch.nn.Parameter(initial_prompt(target, tokenizer, task, source_prompt, settings.init))
    optimizer = torch.optim.Adam([weight], lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    cost, history, snapshots, queue = Cost() + (spent or Cost()), [], {}, []
    before = cost.wall_seconds
    with Timer() as timer:
        for step in tqdm(range(settings.steps + 1), desc=f"transfer {task.name}", disable=not progress,
                         leave=False):
            if step % settings.eval_every == 0 or step == settings.steps:
                snapshots[step] = weight.detach().clone()
                if holdout is not None:
                    value = public_loss(target, tokenizer, task, snapshots[step], holdout, alpha, settings, cost)
                    history.append({"step": step, "holdout_loss": value, "flops": cost.flops,
                                    "seconds": before + timer.seconds})
                    if plateaued([h["holdout_loss"] for h in history if "holdout_loss" in h], settings.patience):
                        break
            if step == settings.steps:
                break
            while len(queue) < settings.batch_size:  # shuffled epochs over the public examples
                queue += torch.randperm(len(data), generator=generator).tolist()
            idx, queue = queue[:settings.batch_size], queue[settings.batch_size:]
            loss, parts, tokens = batch_loss(target, tokenizer, task, weight, data, idx, alpha, settings.temperature,
                                             settings.max_text_tokens, settings.precision, settings.anchor)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            cost.add(target, tokens, len(idx), "input_grad")
            history.append({"step": step + 1, "loss": loss.item(), **parts})
    cost.wall_seconds += timer.seconds
    if settings.selection == "holdout":
        selected = min((h["holdout_loss"], h["step"]) for h in history if "holdout_loss" in h)[1]
    else:
        selected = max(snapshots)  # the last step taken
    return TransferResult(SoftPrompt(snapshots[selected]), history, snapshots, selected, cost)


def replay_stopping(held: dict[int, float], patience: int, cap: int) -> tuple[int, int]:
    """(step a transfer capped at ``cap`` stops at, step it keeps), from the held-out public losses ``held``
    (step -> loss) of a longer run with the same settings: ``transfer``'s rule with ``selection="holdout"``
    replayed, to study caps without rerunning. A transfer applies the rule as it runs."""
    if cap not in held:
        raise ValueError(f"cap {cap} is not an evaluated step of the run (evaluated: {sorted(held)})")
    seen: list[tuple[float, int]] = []
    for step in sorted(s for s in held if s <= cap):
        seen.append((held[step], step))
        if plateaued([loss for loss, _ in seen], patience):
            break
    return seen[-1][1], min(seen)[1]


def ptfer(source_prompt: SoftPrompt, source, target, tokenizer, anchors: int = 8192, steps: int = 300,
          lr: float = 0.01, seed: int = 0) -> SoftPrompt:
    """Zero-shot transfer in relative space, in the spirit of PTfer (Wu et al., ICLR 2024): no data at all.

    Each source prompt vector is described by its cosine similarities to anchor tokens' input embeddings in
    the source model; the target prompt, started from random vocabulary embeddings, is fitted to have the same
    similarities to the same tokens' embeddings in the target model. Anchors: the first ``anchors`` non-special
    vocabulary ids (BPE ids roughly follow merge frequency).
    """
    special = set(tokenizer.all_special_ids)
    ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special][:anchors])

    def relative(vectors: torch.Tensor, model) -> torch.Tensor:
        table = F.normalize(model.get_input_embeddings().weight[ids].detach().float(), dim=-1)
        return F.normalize(vectors.to(table.device), dim=-1) @ table.T  # prompts live on the CPU

    goal = relative(source_prompt.weight.detach(), source)
    weight = torch.nn.Parameter(SoftPrompt.from_vocab(target, source_prompt.weight.shape[0], seed=seed).weight)
    optimizer = torch.optim.Adam([weight], lr=lr)
    for _ in range(steps):
        loss = F.mse_loss(relative(weight, target), goal)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return SoftPrompt(weight.detach())


def derived_meta(source_prompt: SoftPrompt, target, method: str, cost: Cost, **record) -> dict:
    """The source prompt's public facts plus the transfer's record; ``cost`` is the transfer's own cost.

    Only the whitelisted keys of the source's metadata are kept (``post.prompt.provider_meta``), whatever the
    file carried: the owner's curves, costs and scores never pass on. The privacy record (epsilon, delta,
    noise, ...) is kept as it is: the transfer never sees private data, so it is post-processing of the DP
    prompt. The source's model and method move to source_*, and ``source_digest`` names the source prompt by
    its weights (a rerun knows which prompt a transfer was made from).
    """
    meta = provider_meta(source_prompt.meta)
    moved = {f"source_{key}": meta.pop(key) for key in ("model", "method") if key in meta}
    return {**meta, **moved, "source_digest": source_prompt.digest(), "model": model_name(target), "method": method,
            "cost": cost.to_dict(), "transfer": record}


# --- the stage: every CompPT prompt of a profile, and the sweeps behind the figures -----------------------


def load_models(cfg: Config):
    """``(source, target, tokenizer)``: the distilled source from 01 and the target; they share the tokenizer."""
    source_dir = source_model(cfg.profile)
    target, tokenizer = load(cfg.model, device=cfg.device)
    source, _ = load(source_dir, device=cfg.device)
    return source, target, tokenizer


def source_prompt_path(cfg: Config, task: str, epsilon: float) -> Path:
    return require(prompt_path(cfg.profile, task, "compt", epsilon, cfg.seed), METHODS["compt"].stage, cfg.profile)


def snapshot_path(prompt_file: Path) -> Path:
    """Where the evaluation-step snapshots of a POST prompt live (next to the prompt)."""
    return Path(prompt_file).with_suffix(".snapshots.pt")


def post_transfer(cfg: Config, source, target, tokenizer, prepared: Prepared, source_prompt: SoftPrompt,
                  settings: TransferConfig | None = None, progress: bool = True) -> tuple[TransferResult, dict]:
    """One POST transfer of ``source_prompt`` on ``settings.public_examples`` prepared texts.

    Returns the result, whose prompt carries the source's metadata plus the transfer record, and a result row.
    The cost counts the unprompted passes of ``prepared`` too: one transfer on its own needs them.
    """
    s = settings or cfg.transfer
    cost = Cost() + prepared.cost
    with Timer() as timer:
        data, holdout = (public_data(source, tokenizer, prepared.task, source_prompt, plain, s.temperature,
                                     cfg.eval.batch_size, s.max_text_tokens, cost, s.space,
                                     target if s.anchor else None, s.anchor_on)
                         for plain in (prepared.train.subset(s.public_examples), prepared.holdout))
    cost.wall_seconds += timer.seconds
    alpha = alpha_proxy(data, len(prepared.task.classes)) if s.alpha_rule == "proxy" else s.alpha
    result = transfer(target, tokenizer, prepared.task, source_prompt, data, holdout, s, alpha, cfg.seed, progress,
                      spent=cost)
    held = {h["step"]: h["holdout_loss"] for h in result.history if "holdout_loss" in h}
    record = {"public_pool": prepared.pool, "public_examples": len(data), "alpha": alpha, "alpha_rule": s.alpha_rule,
              "agreement": data.agreement, "init": s.init, "steps": s.steps, "batch_size": s.batch_size, "lr": s.lr,
              "temperature": s.temperature, "space": s.space, "anchor": s.anchor, "anchor_on": s.anchor_on,
              "direct_agreement": data.direct_agreement, "patience": s.patience, "selection": s.selection,
              "selected_step": result.selected_step, "last_step": max(result.snapshots),
              "holdout_loss": held.get(result.selected_step)}
    result.prompt = SoftPrompt(result.prompt.weight, **derived_meta(source_prompt, target, "post", result.cost,
                                                                    **record))
    return result, run_row(result.prompt)


def run_row(prompt: SoftPrompt) -> dict:
    """The results row of a POST prompt, from its metadata: task, epsilon, the transfer's record and cost."""
    meta = prompt.meta
    return {"task": meta["task"], "method": "post", "epsilon": eps_tag(meta.get("epsilon", math.inf)),
            **meta["transfer"], "cost": meta["cost"]}


def ptfer_transfer(cfg: Config, source, target, tokenizer, source_prompt: SoftPrompt) -> tuple[SoftPrompt, dict]:
    s = cfg.transfer
    with Timer() as timer:
        weight = ptfer(source_prompt, source, target, tokenizer, s.ptfer_anchors, s.ptfer_steps, seed=cfg.seed).weight
    cost, record = Cost(wall_seconds=timer.seconds), {"anchors": s.ptfer_anchors, "steps": s.ptfer_steps}
    row = {"method": "ptfer", "epsilon": eps_tag(source_prompt.meta.get("epsilon", math.inf)), **record,
           "cost": cost.to_dict()}
    return SoftPrompt(weight, **derived_meta(source_prompt, target, "ptfer", cost, **record)), row


def run_transfer(cfg: Config, progress: bool = True) -> list[dict]:
    """Transfer every CompPT prompt of the profile (tasks x ``transfer.epsilons``) with POST and with PTfer.

    Writes the prompts to ``prompt_path(..., "post" | "ptfer", ...)`` (POST's snapshots next to them), the rows
    to ``results/<profile>/transfer.json`` and the loss curves to ``transfer_history.json``. No private data.
    """
    source, target, tokenizer = load_models(cfg)
    table, history_file = results_dir(cfg.profile) / "transfer.json", results_dir(cfg.profile) / "transfer_history.json"
    done = {(r["task"], r["method"], r["epsilon"]): r for r in readable(table, read_json) or []}
    done_histories = readable(history_file, read_json) or {}
    rows, histories = [], {}
    for name in tqdm(cfg.data.tasks, desc="tasks", disable=not progress):
        prepared = None
        for epsilon in cfg.transfer.epsilons:
            path = source_prompt_path(cfg, name, epsilon)
            source_prompt = read_required(path, METHODS["compt"].stage, cfg.profile, SoftPrompt.load)
            source_prompt.check(source)
            run = f"{name}/{eps_tag(epsilon)}"
            finished = finished_rows(cfg, done, name, epsilon, source_prompt)
            if finished and run in done_histories:  # an earlier (interrupted) run made these: keep them
                rows += finished
                histories[run] = done_histories[run]
            else:
                prepared = prepared or prepare(cfg, source, target, tokenizer, name)
                result, row = post_transfer(cfg, source, target, tokenizer, prepared, source_prompt,
                                            progress=progress)
                out = save_run(prompt_path(cfg.profile, name, "post", epsilon, cfg.seed), result)
                rows.append({**row, "source_prompt": relative(path), "prompt": relative(out),
                             "config_hash": settings_hash(cfg)})
                histories[run] = result.history
                prompt, row = ptfer_transfer(cfg, source, target, tokenizer, source_prompt)
                out = prompt.save(prompt_path(cfg.profile, name, "ptfer", epsilon, cfg.seed))
                rows.append({"task": name, **row, "source_prompt": relative(path), "prompt": relative(out),
                             "config_hash": settings_hash(cfg)})
            write_json(history_file, histories)  # progress: a rerun resumes after the last finished transfer
            write_json(table, rows)
    write_manifest(artifact_dir(cfg.profile, "prompts"), cfg, stage="transfer", transfer_hash=settings_hash(cfg))
    return rows


def finished_rows(cfg: Config, done: dict, task: str, epsilon: float, source_prompt: SoftPrompt) -> list[dict]:
    """The POST and PTfer rows of an earlier run of this transfer, if made from this prompt with these settings
    and pool (a task's default pool is not in the settings) and their prompt files are still readable; else []."""
    rows = [done.get((task, method, eps_tag(epsilon))) for method in ("post", "ptfer")]
    if (any(r is None or r.get("config_hash") != settings_hash(cfg) for r in rows)
            or rows[0].get("public_pool") != public_pool(cfg, task)):
        return []
    for row in rows:
        made = readable(ROOT / row["prompt"], SoftPrompt.load)
        if made is None or made.meta.get("source_digest") != source_prompt.digest():
            return []
    return rows


def settings_hash(cfg: Config) -> str:
    """The settings all tasks' transfers share: not the sweeps' (``config.UNKEYED``), so that changing a figure
    does not redo every transfer (and 05's); which pool a task used is checked on its own rows."""
    return cfg.section_hash("transfer", "data", "eval")


def saved_run(cfg: Config, source_prompt: SoftPrompt) -> tuple[dict, TransferResult] | None:
    """run_transfer's POST transfer of the sweep task's non-private prompt, if made from this prompt and config."""
    path = prompt_path(cfg.profile, cfg.transfer.sweep_task, "post", math.inf, cfg.seed)
    table = results_dir(cfg.profile) / "transfer.json"
    if not (path.exists() and snapshot_path(path).exists() and table.exists()):
        return None
    row = next((r for r in read_json(table) if r["method"] == "post" and r["prompt"] == relative(path)), None)
    result = load_run(path)
    if (row is None or row.get("config_hash") != settings_hash(cfg)
            or row.get("public_pool") != public_pool(cfg, cfg.transfer.sweep_task)
            or result.prompt.meta.get("source_digest") != source_prompt.digest()):
        return None
    return row, result


def save_run(path: Path, result: TransferResult) -> Path:
    """A POST transfer on disk: its snapshots (``snapshot_path``), then the prompt file, so that a prompt file
    always has its snapshots beside it. The history goes to ``transfer_history.json``."""
    with atomic_path(snapshot_path(path)) as tmp:
        torch.save(result.snapshots, tmp)
    return result.prompt.save(path)


def load_run(path: Path) -> TransferResult:
    """A transfer as ``save_run`` wrote it (without its history)."""
    prompt = SoftPrompt.load(path)
    snapshots = torch.load(snapshot_path(path), map_location="cpu", weights_only=True)
    return TransferResult(prompt, [], snapshots, prompt.meta["transfer"]["selected_step"])


def run_sweeps(cfg: Config, score: Callable[[SoftPrompt], float], progress: bool = True) -> list[dict]:
    """Figures only: transfer the sweep task's non-private CompPT prompt, changing one setting at a time.

    Rows carry ``kind`` (steps / alpha / public_examples / pool / init), ``value``, the run's record and
    ``accuracy = score(prompt)``, the caller's measurement (test accuracy in the notebook). The default run
    (the profile's settings; run_transfer's own run when it matches) also gives the accuracy-vs-steps curve
    from its snapshots; a variant equal to it is not run twice. Each finished variant is kept in
    ``artifacts/<profile>/sweeps/`` under the key of its settings (``keyed_path``), so a rerun or an interrupted
    sweep redoes only what is missing or changed. Writes ``results/<profile>/transfer_sweeps.json``.
    """
    s = cfg.transfer
    source, target, tokenizer = load_models(cfg)
    source_prompt = SoftPrompt.load(source_prompt_path(cfg, s.sweep_task, math.inf), source)
    default_pool_name = public_pool(cfg, s.sweep_task)
    largest = max(s.public_sizes + (s.public_examples,))
    prepared = {default_pool_name: prepare(cfg, source, target, tokenizer, s.sweep_task, examples=largest)}
    variants = ([("alpha", a, dataclasses.replace(s, alpha_rule="fixed", alpha=a), default_pool_name) for a in s.alphas]
                + [("public_examples", n, dataclasses.replace(s, public_examples=n), default_pool_name)
                   for n in s.public_sizes]
                + [("pool", pool, s, pool) for pool in s.pools]
                + [("init", init, dataclasses.replace(s, init=init), default_pool_name)
                   for init in ("source", "instruction")])
    rows, done = [], {}
    saved = saved_run(cfg, source_prompt)
    if saved:
        done[(s, default_pool_name)] = ({**saved[0], "accuracy": score(saved[1].prompt)}, saved[1])
    for kind, value, settings, pool in [("default", "default", s, default_pool_name)] + variants:
        key = (settings, pool)
        if key not in done:  # a finished variant is kept, so an interrupted sweep resumes after it
            path = keyed_path(artifact_dir(cfg.profile, "sweeps"), "transfer", ".pt", {
                "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "task_pools"},
                "pool": pool, "config": settings_hash(cfg), "source_prompt": source_prompt.digest()})

            def transferred() -> TransferResult:
                if pool not in prepared:
                    prepared[pool] = prepare(cfg, source, target, tokenizer, s.sweep_task, pool)
                return post_transfer(cfg, source, target, tokenizer, prepared[pool], source_prompt, settings,
                                     progress)[0]
            result = reuse(path, load_run, transferred, lambda made, p: save_run(p, made))
            done[key] = ({**run_row(result.prompt), "accuracy": score(result.prompt)}, result)
        row, result = done[key]
        rows.append({**row, "kind": kind, "value": value})
        if kind == "default":  # the selected snapshot is the prompt just scored
            rows += [{**row, "kind": "steps", "value": step,
                      "accuracy": row["accuracy"] if step == result.selected_step else score(SoftPrompt(weight))}
                     for step, weight in result.snapshots.items()]
    write_json(results_dir(cfg.profile) / "transfer_sweeps.json", rows)
    return rows
