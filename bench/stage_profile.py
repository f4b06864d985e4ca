"""Where the study's time goes: each kind of stage work, timed through the stages' own functions, against the peak.

On a fixed slice of a profile, every kind of work of stages 02-05 runs once through the function the stage calls
(``tune_prompt``, ``prepare``, ``post_transfer``, ``accuracy``, ``shadow_run``, ``canary_run``), and for each kind
the record says: wall seconds (``post.cost.Timer`` around the call), FLOPs as ``post.cost`` counts them (the
``Cost`` the stage keeps; scoring, which keeps none, is counted as ``tune_prompt`` counts its evaluations), the
achieved GFLOP/s, that as a fraction of the matmul peak (the best of a few large ``torch.mm`` calls under the
autocast the kind's code runs in, read just before and just after it, the larger kept), and the share of padding
among the text tokens of the batches it processes (``post.prompt.encode``; a DP run's Poisson draws are secret,
so its share is read on fresh draws of the sizes it drew). The kinds:

- ``compt_step``, ``dp_step``, ``fullpt_step``: ``--steps`` steps of 02 on the source (no DP; DP at epsilon 8
  with secret randomness, the profile's DP batch and proportionally fewer steps) and on the target (no DP);
- ``transfer_prepare``: 03's constant terms, both models unprompted over the public texts (``prepare``);
- ``transfer_step``: ``post_transfer`` for ``--steps`` steps (its prompted-source pass included); ``per_step``
  is the window between its first and last held-out evaluation: the steps and one held-out pass;
- ``validation_eval``: the source with the CompPT prompt on 02's validation examples, as 02 evaluates (fp32);
- ``test_scoring``: the target with the POST prompt on ``--test`` test examples, as 04 scores (the time only:
  no accuracy is recorded);
- ``lira_shadow``: 05's ``shadow_run``, 3 shadows of ``--steps``/3 steps on a ``--pool`` pool, and their scoring;
- ``canary_step``: 05's ``canary_run`` (no DP) on ``--canaries`` canaries for about ``--steps`` steps.

The training kinds' per-step GFLOP/s (``per_step``, from the stage's own record of its steps) is the headline.
Writes ``bench/results/stage_profile.json`` with the machine's facts (avx512_bf16, threads, load) and prints a
table.

    python bench/stage_profile.py [--profile cpu] [--task rotten_tomatoes] [--steps 24] [--test 256] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, has_avx512_bf16
from post.artifacts import require, source_model_dir
from post.audit import audit_data, canary_run, shadow_run, shadow_settings, without_validation
from post.config import Config, load_config
from post.cost import Cost, Timer
from post.evaluate import accuracy, owner_validation
from post.files import relative, write_json
from post.hardware import autocast
from post.models import load
from post.prompt import SoftPrompt, encode
from post.public_data import prepare
from post.tasks import Split, get_task, load_split
from post.transfer import post_transfer
from post.tune import _prompted_tokens, run_settings, tune_prompt

DP_EPSILON = 8.0
SHADOWS = 3
# the section whose precision a kind's code runs under; None: the code runs no autocast, so fp32 whatever it says
PRECISION_OF = {"compt_step": "tune", "dp_step": "tune", "fullpt_step": "tune", "transfer_prepare": None,
                "transfer_step": "transfer", "validation_eval": None, "test_scoring": "eval", "lira_shadow": "tune",
                "canary_step": "tune"}


@dataclass
class Measured:
    """What one kind did: its cost as post counts it, the wall seconds, its batches' padding share, and (training
    kinds) the steps with the stage's own record of their cost."""

    cost: Cost
    seconds: float
    padding_share: float
    batches: int
    per_step: dict = field(default_factory=dict)  # {"steps", "seconds", "flops"} of the steps alone
    notes: str = ""


@dataclass
class Bench:
    """The loaded models and data every kind runs on, and the prompts one kind hands the next."""

    cfg: Config
    args: argparse.Namespace
    source: object
    target: object
    tokenizer: object
    made: dict = field(default_factory=dict)

    @property
    def task(self):
        return get_task(self.args.task)

    def tuning(self, **changes) -> Config:
        """02's settings for a run of fixed length that keeps its last step (no validation during the run)."""
        return self.cfg.with_changes("tune", eval_every=0, select="last", patience=0, **changes)


# --- measuring -------------------------------------------------------------------------------------------------


def matmul_peak(precision: str, device: torch.device, n: int, repeats: int) -> float:
    """GFLOP/s of the best of ``repeats`` n x n ``torch.mm`` calls under the ``precision`` autocast."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    wait = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = math.inf
    with torch.no_grad(), autocast(precision, device.type):
        for _ in range(repeats + 1):  # one more: the first call warms up (and is slowest)
            wait()
            start = time.perf_counter()
            torch.mm(a, b)
            wait()
            best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def padding_share(task, tokenizer, batches: list[list[str]], max_text_tokens: int) -> float:
    """Mean over ``batches`` of the share of pads among the text tokens, tokenised as the stages do."""
    masks = [encode(task, tokenizer, texts, max_text_tokens)["attention_mask"] for texts in batches if texts]
    return float(np.mean([1 - float(m.sum()) / m.numel() for m in masks]))


def drawn_batches(texts: list[str], sizes: list[int], seed: int = 0) -> list[list[str]]:
    """Batches of the ``sizes`` a training run drew, drawn afresh from its texts: the same padding in expectation
    (a DP run's draws are secret; the other samplers' are not worth replaying for a share)."""
    generator = torch.Generator().manual_seed(seed)
    return [[texts[i] for i in torch.randperm(len(texts), generator=generator)[:k]] for k in sizes if k]


def scoring_batches(texts: list[str], batch_size: int) -> list[list[str]]:
    """The batches ``prompt_class_scores`` scores: length-sorted texts, ``batch_size`` at a time."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    return [[texts[i] for i in order[start:start + batch_size]] for start in range(0, len(texts), batch_size)]


def rate(flops: float, seconds: float, peak: float) -> dict:
    gflops = flops / seconds / 1e9 if seconds > 0 else 0.0
    return {"gflops_per_s": gflops, "fraction_of_peak": gflops / peak}


def summary(measured: Measured, precision: str, peaks: list[float]) -> dict:
    """One kind's record: wall time, post's FLOPs, GFLOP/s against the peak read around it, padding, per step."""
    peak, cost = max(peaks), measured.cost
    out = {"precision": precision, "wall_seconds": measured.seconds, "flops": cost.flops, "tokens": cost.tokens,
           "examples": cost.examples, **rate(cost.flops, measured.seconds, peak), "matmul_peak_gflops_per_s": peak,
           "matmul_peak_before_after": peaks, "padding_share": measured.padding_share, "batches": measured.batches}
    if measured.per_step:
        step = measured.per_step
        out["per_step"] = {**step, **rate(step["flops"], step["seconds"], peak),
                           "seconds_per_step": step["seconds"] / step["steps"],
                           "gflop_per_step": step["flops"] / step["steps"] / 1e9}
    if measured.notes:
        out["notes"] = measured.notes
    return out


# --- the kinds --------------------------------------------------------------------------------------------------


def tuned(b: Bench, model, epsilon: float, extra: dict | None = None, key: str = "") -> Measured:
    """``--steps`` of 02's steps (a DP run: its batch and steps by ``run_settings``) on ``model``."""
    cfg = b.tuning(**(extra or {}))
    settings, steps = run_settings(cfg.tune, epsilon, b.args.steps)
    train = load_split(b.task.name, "train", cfg.data.max_train)
    with Timer() as timer:
        prompt = tune_prompt(model, b.tokenizer, b.task, train, settings, epsilon, steps, None, cfg.seed,
                             cfg.data.max_text_tokens, cfg.eval.batch_size, False)
    if key:
        b.made[key] = prompt
    record = prompt.record
    batches = drawn_batches(train.texts, record["curve"]["batch_size"])
    cost = Cost(**record["cost"])
    return Measured(cost, timer.seconds, padding_share(b.task, b.tokenizer, batches, cfg.data.max_text_tokens),
                    len(batches), notes=f"batch {settings.batch_size}, {steps} steps",
                    per_step={"steps": record["steps"], "seconds": cost.wall_seconds, "flops": cost.flops})


def compt_step(b: Bench) -> Measured:
    return tuned(b, b.source, math.inf, key="compt")


def dp_step(b: Bench) -> Measured:
    measured = tuned(b, b.source, DP_EPSILON, {"dp_randomness": "secret"})
    measured.notes += ("; the wall seconds beyond per_step's are tune_prompt's DP set-up and close (calibrating "
                       "sigma, the spent epsilon), outside its cost record")
    return measured


def fullpt_step(b: Bench) -> Measured:
    return tuned(b, b.target, math.inf)


def transfer_settings(b: Bench) -> Config:
    """03's settings for ``--steps`` steps, held out at the first and the last step only."""
    return b.cfg.with_changes("transfer", steps=b.args.steps, eval_every=b.args.steps)


def transfer_prepare(b: Bench) -> Measured:
    cfg = transfer_settings(b)
    with Timer() as timer:
        prepared = prepare(cfg, b.source, b.target, b.tokenizer, b.task.name)
    b.made["prepared"] = prepared
    batches = [x for part in (prepared.train, prepared.holdout)
               for x in scoring_batches(part.texts, cfg.eval.batch_size)]
    return Measured(prepared.cost, timer.seconds,
                    padding_share(prepared.task, b.tokenizer, batches, cfg.transfer.max_text_tokens), 2 * len(batches),
                    notes="both models over each batch; post.public_data runs no autocast")


def transfer_step(b: Bench) -> Measured:
    cfg, prepared = transfer_settings(b), b.made["prepared"]
    s = cfg.transfer
    with Timer() as timer:
        result, _ = post_transfer(cfg, b.source, b.target, b.tokenizer, prepared, b.made["compt"], progress=False)
    b.made["post"] = result.prompt
    spent = prepared.cost.to_dict()  # counted in the result's cost, but prepare is a kind of its own
    cost = Cost(**{key: value - spent[key] for key, value in result.cost.to_dict().items()})
    held = [h for h in result.history if "holdout_loss" in h]
    steps = max(h["step"] for h in result.history)
    texts = prepared.train.texts[:s.public_examples]
    batches = drawn_batches(texts, [s.batch_size] * steps, cfg.seed)
    return Measured(cost, timer.seconds, padding_share(prepared.task, b.tokenizer, batches, s.max_text_tokens),
                    len(batches), per_step={"steps": steps, "seconds": held[-1]["seconds"] - held[0]["seconds"],
                                            "flops": held[-1]["flops"] - held[0]["flops"]},
                    notes="the whole includes the prompted source pass (fp32) over the public texts and two held-out "
                    "passes; per_step: the steps and the last held-out pass")


def scored(b: Bench, model, split: Split, prompt: SoftPrompt, precision: str) -> Measured:
    """One ``accuracy`` call, its FLOPs counted as ``tune_prompt`` counts an evaluation's."""
    cfg = b.cfg
    with Timer() as timer:
        accuracy(model, b.tokenizer, b.task, split, prompt, cfg.eval.batch_size, cfg.data.max_text_tokens, False,
                 precision)
    cost = Cost(wall_seconds=timer.seconds)
    tokens = _prompted_tokens(b.tokenizer, b.task, split.texts, prompt.weight.shape[0], cfg.data.max_text_tokens)
    cost.add(model, tokens, len(split), "forward")
    batches = scoring_batches(split.texts, cfg.eval.batch_size)
    return Measured(cost, timer.seconds, padding_share(b.task, b.tokenizer, batches, cfg.data.max_text_tokens),
                    len(batches), notes=f"{len(split)} examples")


def validation_eval(b: Bench) -> Measured:
    split = owner_validation(b.cfg, b.task.name) or load_split(b.task.name, "validation", b.cfg.data.max_validation)
    return scored(b, b.source, split, b.made["compt"], "fp32")  # tune_prompt evaluates at accuracy's default


def test_scoring(b: Bench) -> Measured:
    split = load_split(b.task.name, "test", b.args.test)
    return scored(b, b.target, split, b.made["post"], b.cfg.eval.precision)


def audit_config(b: Bench) -> Config:
    a = b.cfg.audit
    return b.cfg.with_changes("audit", task=b.task.name, shadows=SHADOWS, pool_size=b.args.pool,
                              positive_control_pool=min(a.positive_control_pool, b.args.pool),
                              canaries=b.args.canaries)


def lira_shadow(b: Bench) -> Measured:
    cfg = audit_config(b)
    pool = audit_data(cfg, b.tokenizer)["pool"]
    settings, _ = shadow_settings(cfg.tune, math.inf)
    steps = max(1, b.args.steps // SHADOWS)
    with Timer() as timer:
        run = shadow_run(b.source, b.tokenizer, b.task, pool, "no DP", settings, math.inf, steps, SHADOWS, cfg.seed,
                         cfg.data.max_text_tokens, cfg.eval.batch_size, False)
    records = [p.record for p in run.prompts]
    batches = [x for row, record in zip(run.membership, records)
               for x in drawn_batches([pool.texts[i] for i in np.flatnonzero(row)], record["curve"]["batch_size"])]
    batches += scoring_batches(pool.texts, cfg.eval.batch_size) * SHADOWS
    per_step = {"steps": sum(r["steps"] for r in records), "seconds": sum(r["cost"]["wall_seconds"] for r in records),
                "flops": sum(r["cost"]["flops"] for r in records)}
    return Measured(run.cost, timer.seconds, padding_share(b.task, b.tokenizer, batches, cfg.data.max_text_tokens),
                    len(batches), per_step, notes=f"{SHADOWS} shadows x {steps} steps on a pool of {len(pool)}, then "
                    "scored on the pool (fp32: post.audit scores without autocast)")


def canary_step(b: Bench) -> Measured:
    cfg = audit_config(b)
    canaries = audit_data(cfg, b.tokenizer)["canaries"]
    settings = dataclasses.replace(without_validation(cfg.tune), batch_size=cfg.audit.canary_batch_size)  # as 05
    included = len(canaries) / 2  # expected: canary_run draws which canaries join
    epochs = b.args.steps * settings.batch_size / included
    with Timer() as timer:
        row = canary_run(b.source, b.tokenizer, b.task, canaries, settings, math.inf, epochs,
                         cfg.audit.canary_guesses, cfg.audit.confidence, cfg.seed, cfg.data.max_text_tokens,
                         cfg.eval.batch_size, False)
    train = [t for t, joined in zip(canaries.texts, row["included"]) if joined]
    sizes = [min(settings.batch_size, len(train))] * row["steps"]
    batches = drawn_batches(train, sizes) + scoring_batches(canaries.texts, cfg.eval.batch_size) * 2
    return Measured(Cost(**row["cost"]), timer.seconds,
                    padding_share(b.task, b.tokenizer, batches, cfg.data.max_text_tokens), len(batches),
                    notes=f"{row['steps']} steps of batch {settings.batch_size} on {len(train)} canaries, then both "
                          "prompts scored on all; canary_run keeps one cost for both, so no per_step")


KINDS = {"compt_step": compt_step, "dp_step": dp_step, "fullpt_step": fullpt_step,
         "transfer_prepare": transfer_prepare, "transfer_step": transfer_step, "validation_eval": validation_eval,
         "test_scoring": test_scoring, "lira_shadow": lira_shadow, "canary_step": canary_step}


# --- the run ----------------------------------------------------------------------------------------------------


def table(kinds: dict[str, dict]) -> str:
    lines = [f"{'kind':<17}{'prec':>5}{'wall s':>9}{'GFLOP':>10}{'GFLOP/s':>9}{'of peak':>8}{'pad':>6}"
             f"{'step GFLOP/s':>13}{'s/step':>8}"]
    for name, k in kinds.items():
        step = k.get("per_step")
        tail = f"{step['gflops_per_s']:>13.2f}{step['seconds_per_step']:>8.3f}" if step else f"{'-':>13}{'-':>8}"
        lines.append(f"{name:<17}{k['precision']:>5}{k['wall_seconds']:>9.2f}{k['flops'] / 1e9:>10.2f}"
                     f"{k['gflops_per_s']:>9.2f}{k['fraction_of_peak']:>8.3f}{k['padding_share']:>6.2f}{tail}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--steps", type=int, default=24, help="steps of each training kind")
    parser.add_argument("--test", type=int, default=256, help="test examples scored")
    parser.add_argument("--pool", type=int, default=64, help="LiRA pool of the shadows")
    parser.add_argument("--canaries", type=int, default=64)
    parser.add_argument("--peak-size", type=int, default=2048, help="n of the n x n matmuls of the peak")
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", default=str(RESULTS / "stage_profile.json"))
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    cfg = load_config(args.profile)
    source_dir = require(source_model_dir(cfg.profile), "source_model", cfg.profile)
    source, tokenizer = load(source_dir, device=cfg.device)
    target, _ = load(cfg.model, device=cfg.device)
    b = Bench(cfg, args, source, target, tokenizer)
    device = next(target.parameters()).device
    kinds = {}
    for name, run in KINDS.items():
        section = PRECISION_OF[name]
        precision = getattr(cfg, section).precision if section else "fp32"
        before = matmul_peak(precision, device, args.peak_size, args.peak_repeats)
        measured = run(b)
        after = matmul_peak(precision, device, args.peak_size, args.peak_repeats)
        kinds[name] = summary(measured, precision, [before, after])
        print(f"{name}: {measured.seconds:.2f} s", flush=True)
    result = {"profile": cfg.profile, "task": args.task, "steps": args.steps,
              "command": shlex.join(["python", *sys.argv]), "source_model": relative(source_dir),
              "target_model": cfg.model,
              "precisions": {name: getattr(cfg, name).precision for name in ("tune", "transfer", "eval")},
              "machine": {"avx512_bf16": has_avx512_bf16(), "threads": torch.get_num_threads(), "device": str(device),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                          "load_average_before": load_before, "load_average_after": os.getloadavg()[0]},
              "kinds": kinds}
    write_json(Path(args.out), result)
    print(table(kinds))


if __name__ == "__main__":
    main()
