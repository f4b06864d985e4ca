"""Distil the source model: a few of the target's layers, trained on public text to imitate the target.

This is the provider's first stage and it reads public text only (``post.corpus``). The student keeps the
target's embeddings, final norm and LM head (frozen by default; its shape is ``post.student``), so it shares
the tokenizer and the embedding space: a soft prompt tuned on the student lives in the target's input space.

This module is the training loop (AdamW, warm-up and cosine decay, checkpoints an interrupted run resumes from
bit for bit) and the stage's entry points: :func:`run_distill`, :func:`existing` and the release path
(``post.release``). What the student learns to match is ``post.objectives``; the teacher's outputs it matches,
computed once and cached, are ``post.teacher_outputs``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .artifacts import artifact_dir, results_dir, source_model_dir, weights_whole, write_manifest
from .config import Config, DistillConfig
from .cost import Cost, n_params
from .files import atomic_dir, atomic_path, read_json, readable, relative, write_json
from .hardware import resolve_device, resolve_precision
from .models import load_model, load_tokenizer
from .objectives import objective_for
from .release import check_releasable, load_release, release_dir, release_hash, verify, write_release
from .student import distill_hash, layer_list, make_student, student_layers, trainable
from .teacher_outputs import autocast, checked

MAX_GRAD_NORM = 1.0
WARMUP = 0.05  # share of steps with a linear learning-rate warm-up; cosine decay to 10% after it
CHECKPOINT = {"run_key": str, "model": dict, "optimizer": dict, "rng": torch.Tensor, "state": dict}


# --- training with checkpoints -------------------------------------------------------------------------------


def learning_rate(step: int, total: int, lr: float) -> float:
    warm = max(1, round(WARMUP * total))
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return float(lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))))  # a float: checkpoints hold plain data


def batch_rows(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of training step ``step``: a fresh seeded permutation each epoch (a pure function of the step)."""
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    return np.random.default_rng([seed, epoch]).permutation(n)[i * batch_size:(i + 1) * batch_size]


def train_step(student, optimizer, params: list, objective, rows: np.ndarray) -> tuple[dict, int]:
    """One optimisation step on training rows ``rows``; returns the loss terms and the tokens processed."""
    losses, tokens = objective.losses(student, rows)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    return losses, tokens


def train(student, objective, dc: DistillConfig, seed: int, checkpoint: Path, run_key: str,
          progress: bool = True) -> dict:
    """Distil ``student`` in place on ``objective``; resumes from ``checkpoint`` if it belongs to the same run.

    Returns the history (per-step losses, held-out agreement every ``eval_every`` steps from step 0, the
    undistilled cut) and the costs of training and evaluation (a live teacher's passes count in training).
    """
    n = len(objective)
    if n < dc.batch_size:
        raise ValueError(f"{n} training rows are fewer than distill.batch_size ({dc.batch_size})")
    total = (n // dc.batch_size) * dc.epochs
    params = trainable(student, dc)
    optimizer = torch.optim.AdamW(params, lr=dc.lr)
    state = {"step": 0, "losses": [], "evals": [], "train_cost": Cost(), "eval_cost": Cost()}
    saved = readable(checkpoint, lambda f: checked(torch.load(f, map_location="cpu", weights_only=True), CHECKPOINT))
    if saved is not None and saved["run_key"] == run_key:
        student.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        state = {**saved["state"], **{k: Cost(**saved["state"][k]) for k in ("train_cost", "eval_cost")}}
    student.train()

    def evaluate(step: int) -> dict:
        begin = time.perf_counter()
        was_training = student.training
        student.eval()
        metrics, tokens = objective.evaluate(student)
        student.train(was_training)
        state["evals"].append({"step": step, **metrics})
        state["eval_cost"].add(student, tokens, 0, "forward")
        state["eval_cost"].wall_seconds += time.perf_counter() - begin
        return state["evals"][-1]

    if state["step"] == 0 and not state["evals"]:
        evaluate(0)
    bar = tqdm(total=total, initial=state["step"], desc="distil", unit="step", disable=not progress)
    for step in range(state["step"], total):
        begin = time.perf_counter()
        rows = batch_rows(step, n, dc.batch_size, seed)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total, dc.lr)
        losses, tokens = train_step(student, optimizer, params, objective, rows)
        if objective.teacher is not None:
            state["train_cost"].add(objective.teacher, tokens, 0, "forward")
        state["train_cost"].add(student, tokens, len(rows), "full")
        state["train_cost"].wall_seconds += time.perf_counter() - begin
        state["losses"].append({"step": step + 1, "lr": optimizer.param_groups[0]["lr"],
                                **{k: v.item() for k, v in losses.items()}})
        state["step"] = step + 1
        if state["step"] == total and dc.train_layers:  # what a release stores (post.release): a source made
            with torch.no_grad():  # here and one rebuilt from its release are the same model
                for p in params:
                    p.copy_(p.to(torch.bfloat16))
        postfix = {"loss": f"{losses['total'].item():.3f}"}
        if state["step"] % dc.eval_every == 0 or state["step"] == total:
            postfix["top1"] = f"{evaluate(state['step'])['top1']:.3f}"
        bar.set_postfix(postfix)
        bar.update(1)
        if state["step"] % dc.checkpoint_every == 0 and state["step"] < total:
            save_checkpoint(checkpoint, run_key, student, optimizer, state)
    bar.close()
    student.eval().requires_grad_(False)
    return {"steps": total, "trainable_params": sum(p.numel() for p in params), "losses": state["losses"],
            "evals": state["evals"], "train_cost": state["train_cost"].to_dict(),
            "eval_cost": state["eval_cost"].to_dict()}


def save_checkpoint(path: Path, run_key: str, student, optimizer, state: dict) -> None:
    """Everything a resumed run needs to continue bit for bit: weights, optimizer, RNG, step, history."""
    with atomic_path(path) as tmp:
        costs = {k: state[k].to_dict() for k in ("train_cost", "eval_cost")}
        plain = json.loads(json.dumps({**state, **costs}, default=float))  # numbers only: it loads weights_only
        torch.save({"run_key": run_key, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(), "state": plain}, tmp)


# --- the stage -----------------------------------------------------------------------------------------------


def work_dir(profile: str) -> Path:
    """Teacher caches and the training checkpoint (``artifacts/<profile>/distill_work/``)."""
    return artifact_dir(profile, "distill_work")


def existing(cfg: Config) -> dict | None:
    """The record of a source model already distilled with these exact settings, else None."""
    directory = source_model_dir(cfg.profile)
    manifest = directory / "manifest.json"
    if (manifest.exists() and read_json(manifest).get("distill_hash") in (distill_hash(cfg), release_hash(cfg))
            and weights_whole(directory)):  # a model file cut short is made again, not kept
        return read_json(directory / "distill.json")
    return None


def distill_student(cfg: Config, teacher, tokenizer, work: Path, progress: bool = True) -> tuple[nn.Module, dict]:
    """Cut the student ``cfg.distill`` asks for out of ``teacher`` and distil it; returns it and its record.

    Teacher outputs and the resumable checkpoint live under ``work``; the checkpoint is removed when done.
    """
    dc = cfg.distill
    start = time.perf_counter()
    n_layers = len(layer_list(teacher)[1])
    layers = student_layers(dc, n_layers)
    student = make_student(teacher, layers)
    objective, teacher_cost = objective_for(cfg, teacher, tokenizer, work, progress)
    torch.manual_seed(cfg.seed)
    checkpoint = work / "checkpoint.pt"
    history = train(student, objective, dc, cfg.seed, checkpoint, distill_hash(cfg), progress)
    checkpoint.unlink(missing_ok=True)
    costs = {"teacher_outputs": teacher_cost.to_dict(), "train": history.pop("train_cost"),
             "eval": history.pop("eval_cost")}
    costs["total"] = sum((Cost(**c) for c in costs.values()), Cost()).to_dict()
    record = {
        "teacher": cfg.model, "teacher_layers": n_layers, "student_layers": list(layers),
        "student_params": n_params(student), "device": str(teacher.device), "objective": dc.objective,
        "precision": resolve_precision(dc.precision, teacher.device.type, "distill.precision"),
        "teacher_cache": dc.teacher_cache, "train_tokens": costs["train"]["tokens"], **history,
        **({"readout_pools": list(dc.readout_pools), "readout_prefixes": dc.readout_prefixes}
           if dc.objective != "generic" else {}),
        **({"train_layers": dc.train_layers} if dc.train_layers else {}),
        "before": history["evals"][0], "after": history["evals"][-1], "cost": costs,
        "session_wall_seconds": time.perf_counter() - start, "distill_hash": distill_hash(cfg),
    }
    return student, record


def run_distill(cfg: Config, progress: bool = True, release: bool = False) -> dict:
    """Make the source model of ``cfg.profile`` in ``artifacts/<profile>/source_model/``.

    Skips all work when that directory was made with the same distillation settings; rebuilds it from the
    profile's release (``sources/<profile>/``, :mod:`post.release`) when that was; otherwise distils, resuming
    an interrupted run. Writes the model, tokenizer, ``distill.json`` (history, before/after agreement, costs),
    ``cost.json`` and ``manifest.json`` there, copies the record to ``results/<profile>/distill.json`` and
    returns it. ``release``: also write the release (refused before distilling if it could not be written),
    unless the profile's release is already this source.
    """
    dc = cfg.distill
    autocast(dc, torch.device("cpu"))  # refuses an unknown precision before any work
    record = existing(cfg)
    if record is None:
        tokenizer = load_tokenizer(cfg.model)
        teacher = load_model(cfg.model, seed=cfg.seed).to(resolve_device(cfg.device))
        if release:
            check_releasable(make_student(teacher, student_layers(dc, len(layer_list(teacher)[1]))), cfg)
        rebuilt = load_release(cfg, teacher)
        if rebuilt is not None:
            student, record = rebuilt
        else:
            if (release_dir(cfg.profile) / "manifest.json").is_file():
                print(f"{relative(release_dir(cfg.profile))} was released with other distillation settings: "
                      "distilling")
            student, record = distill_student(cfg, teacher, tokenizer, work_dir(cfg.profile), progress)
        save_source_model(cfg, student, tokenizer, record,
                          **({"rebuilt_from": relative(release_dir(cfg.profile))} if rebuilt else {}))
    if release:
        if release_hash(cfg) == record["distill_hash"]:
            verify(cfg)
        else:
            write_release(cfg, load_model(str(source_model_dir(cfg.profile))), record)
    write_json(results_dir(cfg.profile) / "distill.json", record)
    return record


def save_source_model(cfg: Config, student, tokenizer, record: dict, **manifest) -> Path:
    """Write the student as a Hugging Face checkpoint with its records; it appears complete or not at all."""
    target = source_model_dir(cfg.profile)
    with atomic_dir(target) as tmp:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "distill.json", record)
        write_json(tmp / "cost.json", record["cost"])
        write_manifest(tmp, cfg, distill_hash=record["distill_hash"], student_layers=record["student_layers"],
                       cost=record["cost"]["total"], **manifest)
    return target
