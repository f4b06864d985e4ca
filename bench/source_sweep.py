"""The map: how much source does a prompt transfer need? Source shapes x distillation, scored end to end.

For every (shape, distillation) point on one private task (validation split only; the test split is never read):
cut the target into a contiguous first-k + last-m source, leave it undistilled or distil it (``generic``: packed
public news; ``readout``: the target's read-out distribution on public text in the task's template;
``readout+hidden``: that plus the hidden state entering the kept last layers at every token), then record
held-out read-out agreement/KL with the target, the source's zero-shot and prompted (CompPT) accuracy, Direct
(the source prompt pasted onto the target), POST (transferred with public data only; held-out public loss
selects, the last step is reported too), FullPT on the target as the reference, and the prompt step's time on
the source relative to the target's, measured in this run, and (two classes) how well each model orders the
examples whatever its threshold: the ROC AUC of its class-score margin, beside the target's best threshold on its
zero-shot scores (a prompt that only moves the threshold reaches no further) and on POST's (what a better-placed
threshold would add to POST's ordering; both thresholds are oracles, diagnostics only). A control transfers the owner's
*starting* prompt (the public task instruction, no private step) the same way: POST's gain over it is what the
tuned prompt carries. Points are appended to the JSON as they finish, so an interrupted sweep resumes at the next
point; distillation itself resumes from its checkpoint, and each owner prompt is kept (``artifacts/<profile>/
source_sweep/owner_prompts``), so another lever run on the same source and settings does not retune it.

    python bench/source_sweep.py [--profile cpu] [--shapes 6+4 2+2 ...] [--modes readout undistilled generic]
    python bench/source_sweep.py --shapes 6+4 --modes readout:3000x4   # a larger read-out budget, its own curve
    python bench/source_sweep.py --shapes 6+4 --modes readout+hidden   # offsite-tuning's emulator loss added
    python bench/source_sweep.py --shapes 6+4 --owner-seeds 0 1 2   # the spread over the owner's tuning seed
    python bench/source_sweep.py --shapes 10+4 --modes profile   # the profile's own source (make source / 01)
    python bench/source_sweep.py --shapes --lever-point 10+4-profile --owner-seeds 0 1 2 \
        --levers public_pool=movie_plots public_pool=amazon_reviews   # transfer levers alone, on each owner seed
    python bench/source_sweep.py --shapes --lever-point 10+4-profile --owner-seeds 0 1 2 --owner-plateau \
        --transfer-steps 160 --transfer-eval-every 10 --levers ...   # owner prompts and transfer as 02 and 03 make them
    ... --owner-plateau --unseen --validation 0   # scored on the validation examples 02's selection never reads
    python bench/source_sweep.py --plot      # the figure from the JSON only
    python bench/source_sweep.py --shapes 6+4 --prompt-length 100 --out bench/results/source_sweep_prompt100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import statistics
import time
from pathlib import Path
from typing import Callable, NoReturn

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from common import as_stored, has_avx512_bf16, unseen_validation, variant
from post import distill, objectives
from post.artifacts import artifact_dir, source_model_dir
from post.config import Config, TransferConfig, TuneConfig, load_config
from post.cost import Cost
from post.declarations import Task
from post.evaluate import class_scores, majority_accuracy, owner_validation
from post.files import atomic_dir, read_json, relative, write_json
from post.hardware import autocast
from post.membership import auc
from post.models import load
from post.paper import PAPER
from post.plots import save_figure
from post.prompt import SoftPrompt, Verbalizer, encode
from post.public_data import Prepared, Unprompted, all_logits, provider_view, public_pool
from post.reuse import content_key, reuse
from post.student import end_layers
from post.tables import recovery_share
from post.tasks import PUBLIC_POOLS, Split, get_task, load_split, public_sample
from post.transfer import post_transfer
from post.tune import example_losses, run_settings, tune_prompt

OUT = Path(__file__).parent / "results" / "source_sweep.json"
# what makes points comparable: the sweep's own settings (profile defaults may move; each point keeps its own)
SWEEP_KEYS = ("task", "steps", "validation", "readout_examples", "readout_epochs", "generic_sequences", "model", "seed")
# what tells one point's transfer from another's (the profile's transfer settings move; each point keeps its own)
TRANSFER_KEYS = ("space", "steps", "patience", "alpha_rule", "lr", "public_examples", "temperature", "anchor",
                 "anchor_on")
CONTROL_KEYS = ("instruction_target", "control_post", "control_recovery", "control_selected_step")
PAPER_GPT2_XL = PAPER["accuracy"].set_index("target").loc["GPT2-XL"]  # the paper's 4-layer source of a 48-layer target
PAPER_POINTS = [{"label": "paper: gpt2-xl, 4 of 48 layers", "layer_fraction": 4 / 48,
                 "recovery": recovery_share(PAPER_GPT2_XL.ZS, PAPER_GPT2_XL.FullPT, PAPER_GPT2_XL.POST)}]


def distillation(mode: str, args) -> tuple[str, dict]:
    """``(objective, read-out settings)`` of a mode: ``readout`` is the sweep's read-out budget; colon-separated
    parts change it (each makes its own source and curve): ``3000x4`` texts per task x epochs, ``p2`` two random
    prefixes of each text read out too, ``t6`` only the top 6 layers trained, any other part a further public
    pool (``readout:3000x4:movie_plots:p2:t6``)."""
    objective, *parts = mode.split(":")
    if objective == "profile" and parts:
        raise SystemExit(f"mode {mode!r}: 'profile' is the profile's own source as made; it takes no settings")
    settings = {"readout_examples": args.readout_examples, "epochs": args.readout_epochs, "readout_pools": (),
                "readout_prefixes": 0, "train_layers": 0}
    for part in parts:
        if re.fullmatch(r"\d+x\d+", part):
            settings["readout_examples"], settings["epochs"] = (int(x) for x in part.split("x"))
        elif re.fullmatch(r"p\d+", part):
            settings["readout_prefixes"] = int(part[1:])
        elif re.fullmatch(r"t\d+", part):
            settings["train_layers"] = int(part[1:])
        elif part in PUBLIC_POOLS and part not in settings["readout_pools"]:
            settings["readout_pools"] += (part,)
        else:
            raise SystemExit(f"mode {mode!r}: {part!r} is neither TEXTSxEPOCHS, pN, tN nor a public pool not yet named "
                             f"({', '.join(PUBLIC_POOLS)})")
    return objective, settings


def shape(text: str) -> tuple[int, int]:
    first, last = (int(x) for x in text.split("+"))
    return first, last


def step_seconds(model, tokenizer, task, texts, labels, length: int, repeats: int, precision_context) -> float:
    """Median wall time of one prompt-tuning step (forward + backward to the prompt) on a fixed batch."""
    verbalizer = Verbalizer.for_task(task, tokenizer)
    batch = encode(task, tokenizer, texts, 64)
    weight = model.get_input_embeddings().weight[:length].detach().clone().float().requires_grad_()
    times = []
    for i in range(repeats + 1):
        begin = time.perf_counter()
        with precision_context():
            loss = example_losses(model, verbalizer, batch, labels, weight).mean()
        loss.backward()
        if i:  # the first step warms up
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


@dataclasses.dataclass
class Sweep:
    """What every step of one run reads, passed to each instead of closed over: the command line, the settings the
    points are made with, the JSON so far, the task's data and the target."""

    args: argparse.Namespace
    error: Callable[[str], NoReturn]  # the parser's: stops with the usage, as a bad flag does
    out: Path
    cfg: Config  # the profile with the sweep's transfer settings
    tune: TuneConfig  # FullPT's tuning (and the owner's without --owner-plateau)
    result: dict
    work: Path  # sources, owner prompts and the teacher's read-outs, kept between runs
    task: Task
    view: Task  # the provider's view of the task
    train: Split
    validation: Split
    target: torch.nn.Module
    tokenizer: object
    owner_tune: TuneConfig  # the owner's non-DP tuning (owner_recipe)
    owner_steps: int
    owner_held: Split | None  # with --owner-plateau: 02's validation examples, which choose the owner's step
    target_public: dict = dataclasses.field(default_factory=dict)  # per public pool: texts and the target's logits

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.validation.labels)

    @property
    def n_layers(self) -> int:
        return self.target.config.num_hidden_layers


def arguments() -> argparse.ArgumentParser:
    """The sweep's command line (the module docstring shows it in use)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--shapes", nargs="*", default=["6+4", "2+2", "12+4", "18+4"])
    parser.add_argument("--modes", nargs="*", default=["readout", "undistilled", "generic"])
    parser.add_argument("--steps", type=int, default=100, help="prompt-tuning steps (CompPT and FullPT)")
    parser.add_argument("--owner-plateau", action="store_true",
                        help="tune CompPT and FullPT as 02 does instead of --steps: keep the best step on 02's "
                             "validation examples, stop at the plateau (tune.patience, at most tune.max_steps)")
    parser.add_argument("--validation", type=int, default=300, help="validation examples scored (0: all)")
    parser.add_argument("--unseen", action="store_true",
                        help="score on the validation examples after those 02's selection reads (with "
                             "--owner-plateau the owner's step is chosen on those, which flatters CompPT and Direct)")
    parser.add_argument("--readout-examples", type=int, default=2000)
    parser.add_argument("--readout-epochs", type=int, default=2)
    parser.add_argument("--generic-sequences", type=int, default=512)
    parser.add_argument("--transfer-steps", type=int, default=120)
    parser.add_argument("--transfer-eval-every", type=int, default=20)
    parser.add_argument("--transfer-space", choices=("vocab", "labels"), help="default: the profile's transfer.space")
    parser.add_argument("--levers", nargs="*", default=[],
                        help="transfer variants on --lever-point, e.g. space=labels lr=0.001 alpha_rule=fixed,alpha=1")
    parser.add_argument("--lever-point", default="6+4-readout")
    parser.add_argument("--owner-seeds", type=int, nargs="*",
                        help="seeds of the owner's prompt tuning (its batch order); several give the spread of one "
                             "source's CompPT, Direct and POST. Default: the profile's seed")
    parser.add_argument("--prompt-length", type=int,
                        help="soft-prompt tokens; default: the profile's tune.prompt_length")
    parser.add_argument("--out", default=str(OUT), help="one JSON per prompt length; its figure is named after it")
    parser.add_argument("--plot", action="store_true", help="only draw the figure from --out")
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    for mode in args.modes:  # a misspelt mode stops here, before any model is loaded
        distillation(mode, args)
    out = Path(args.out)
    if args.plot:
        plot(read_json(out), args.profile, out.stem)
        return
    sweep = start(args, out, parser.error)
    print("reference", reference(sweep), flush=True)
    target_step = prompt_step_seconds(sweep, sweep.target)
    # the transfer's public pool for the task (a lever may name another): the target's logits on it are made once
    pool = public_pool(sweep.cfg, sweep.task.name)
    # the held-out read-out agreement of each map point (the teacher's read-outs take minutes; levers need none)
    readout = readout_objective(sweep) if args.shapes else None
    map_points(sweep, pool, target_step, readout)
    if args.levers:
        lever_runs(sweep, pool)
    if sweep.result["points"]:  # levers alone (--shapes with none) make no map
        plot(sweep.result, args.profile, out.stem)


# --- the run's settings, data and target ------------------------------------------------------------------------


def start(args: argparse.Namespace, out: Path, error: Callable[[str], NoReturn]) -> Sweep:
    """What every point shares, made once a run: the settings, the JSON so far (resumed where its settings are
    these), the task's data, the target and the owner's tuning recipe."""
    cfg, tune = configure(args, error)
    result = resumed(out, sweep_settings(args, cfg, tune), tune.prompt_length, error)
    work = artifact_dir(args.profile, "source_sweep")
    task = get_task(args.task)
    view = provider_view(task)
    train, validation = task_data(args, cfg, task, error)
    target, tokenizer = load(cfg.model)
    return Sweep(args, error, out, cfg, tune, result, work, task, view, train, validation, target, tokenizer,
                 *owner_recipe(args, cfg, tune, task))


def configure(args: argparse.Namespace, error: Callable[[str], NoReturn]) -> tuple[Config, TuneConfig]:
    """The profile with the sweep's transfer settings, and FullPT's tuning: the profile's at the asked prompt
    length, scored only at its end."""
    cfg = load_config(args.profile, {"data": {"tasks": [args.task]}})
    if args.prompt_length is not None and args.prompt_length < 1:
        error("--prompt-length must be at least 1")
    tune = dataclasses.replace(cfg.tune, eval_every=0, prompt_length=args.prompt_length or cfg.tune.prompt_length)
    cfg = cfg.with_changes("transfer", steps=args.transfer_steps, eval_every=args.transfer_eval_every,
                           space=args.transfer_space or cfg.transfer.space)
    return cfg, tune


def sweep_settings(args: argparse.Namespace, cfg: Config, tune: TuneConfig) -> dict:
    """The settings the JSON keeps with its points; their SWEEP_KEYS decide whether a rerun resumes it."""
    return {"task": args.task, "steps": "plateau" if args.owner_plateau else args.steps,
            "validation": f"unseen:{args.validation}" if args.unseen else args.validation,
            "tune": dataclasses.asdict(tune),
            "transfer": dataclasses.asdict(cfg.transfer), "readout_examples": args.readout_examples,
            "readout_epochs": args.readout_epochs, "generic_sequences": args.generic_sequences,
            "distill": dataclasses.asdict(cfg.distill), "model": cfg.model, "seed": cfg.seed}


def resumed(out: Path, settings: dict, prompt_length: int, error: Callable[[str], NoReturn]) -> dict:
    """The JSON at ``out`` where it was made with these settings, else a fresh one. A JSON of another prompt
    length is refused: points of two prompt lengths are not one map."""
    result = read_json(out) if out.exists() else {}
    made = result.get("settings", {}).get("tune", {}).get("prompt_length", prompt_length)
    if made != prompt_length:
        error(f"{out} holds prompts of {made} tokens, not {prompt_length}: pass another --out")
    if {k: result.get("settings", {}).get(k) for k in SWEEP_KEYS} != {k: settings[k] for k in SWEEP_KEYS}:
        result = {"settings": as_stored(settings), "points": []}
    return result


def task_data(args: argparse.Namespace, cfg: Config, task: Task,
              error: Callable[[str], NoReturn]) -> tuple[Split, Split]:
    """The owner's training split and the validation examples scored (with --unseen, those 02's selection never
    reads); the test split is never read."""
    train, validation = load_split(task.name, "train", 0), load_split(task.name, "validation", args.validation)
    if args.unseen:
        try:
            validation = unseen_validation(cfg, task.name, args.validation)
        except ValueError as problem:
            error(str(problem))
    return train, validation


def owner_recipe(args: argparse.Namespace, cfg: Config, tune: TuneConfig,
                 task: Task) -> tuple[TuneConfig, int, Split | None]:
    """The owner's non-DP tuning: --steps fixed steps, or (--owner-plateau) as 02 tunes, its step chosen on 02's
    validation examples."""
    if args.owner_plateau:
        return (*run_settings(dataclasses.replace(cfg.tune, prompt_length=tune.prompt_length), math.inf,
                              cfg.tune.steps),
                owner_validation(cfg, task.name))
    return tune, args.steps, None


def save(sweep: Sweep) -> None:
    """Write the JSON so far, with the machine's state at the time: step times depend on it."""
    sweep.result.update(threads=torch.get_num_threads(), avx512_bf16=has_avx512_bf16(),
                        load_average_1min=os.getloadavg()[0])
    write_json(sweep.out, sweep.result)


# --- scoring on the validation examples ---------------------------------------------------------------------


def validation_scores(sweep: Sweep, model, prompt: SoftPrompt | None = None) -> np.ndarray:
    """(N, C) class scores on the validation examples, scored as every method is."""
    with autocast(sweep.cfg.eval.precision, "cpu", "eval.precision"):
        return class_scores(model, sweep.tokenizer, sweep.task, sweep.validation.texts, prompt,
                            sweep.cfg.eval.batch_size, sweep.cfg.data.max_text_tokens, False)


def rate(s: np.ndarray, labels: np.ndarray) -> tuple[float, float | None]:
    """Validation accuracy of class scores ``s`` and, for two classes, the ROC AUC of their margin: how well
    they order the examples whatever the threshold. A source that answers one class throughout can still
    order them, and the transfer carries score changes, not answers. (post.evaluate.accuracy runs the model
    itself and keeps no scores, which the AUC and threshold_only read.)"""
    return float((s.argmax(1) == labels).mean()), auc(s[:, 1] - s[:, 0], labels == 1) if s.shape[1] == 2 else None


def measure(sweep: Sweep, model, prompt: SoftPrompt | None = None) -> tuple[float, float | None]:
    """Validation accuracy and (two classes) ROC AUC of ``model`` with ``prompt`` (None: zero-shot)."""
    return rate(validation_scores(sweep, model, prompt), sweep.labels)


def score(sweep: Sweep, model, prompt: SoftPrompt | None = None) -> float:
    """Validation accuracy alone, where the ordering is not reported."""
    return measure(sweep, model, prompt)[0]


def threshold_only(s: np.ndarray, labels: np.ndarray) -> dict:
    """What moving only the threshold of class scores ``s`` reaches (two classes): the best threshold on their
    margin, an oracle that reads the validation labels (a diagnostic, never a choice), and the scores centred
    on the unlabelled validation inputs. On the target's zero-shot scores: how far a prompt that only shifts
    the threshold gets; on POST's: what a better-placed threshold would add to its ordering."""
    margin = s[:, 1] - s[:, 0]
    cuts = np.r_[-np.inf, np.unique(margin)]  # -inf: every example in class 1; the largest margin: none
    return {"zero_shot_auc": auc(margin, labels == 1),
            "threshold_oracle": max(float(((margin > t) == labels).mean()) for t in cuts),
            "threshold_centred": float(((s - s.mean(0)).argmax(1) == labels).mean())}


def recovery(ref: dict, accuracy: float) -> float:
    """The share of FullPT's gain over zero-shot that ``accuracy`` recovers. Not post.tables.recovery_share,
    which answers nan where FullPT does not beat zero-shot: the sweep's JSON keeps the plain ratio."""
    return (accuracy - ref["zero_shot"]) / (ref["fullpt"] - ref["zero_shot"])


def reference(sweep: Sweep) -> dict:
    """The target's zero-shot and FullPT accuracy, the majority class and (two classes) what moving only the
    zero-shot threshold reaches: made once a JSON (FullPT takes minutes), the threshold added to one made
    before it was measured."""
    result, two_classes = sweep.result, len(sweep.task.classes) == 2
    if "reference" not in result:
        begin = time.perf_counter()
        full = owner_tuned(sweep, sweep.target, sweep.cfg.seed)  # FullPT, timed: never from the cache
        zero_shot = validation_scores(sweep, sweep.target)  # one pass for the accuracy and, two classes, the threshold
        result["reference"] = {"layers": sweep.n_layers, "zero_shot": rate(zero_shot, sweep.labels)[0],
                               "fullpt": score(sweep, sweep.target, full),
                               "fullpt_seconds": time.perf_counter() - begin,
                               "majority": majority_accuracy(sweep.validation),
                               **(threshold_only(zero_shot, sweep.labels) if two_classes else {})}
        save(sweep)
    ref = result["reference"]
    if "zero_shot_auc" not in ref and two_classes:  # added after the first maps: no FullPT rerun
        ref.update(threshold_only(validation_scores(sweep, sweep.target), sweep.labels))
        save(sweep)
    return ref


def prompt_step_seconds(sweep: Sweep, model) -> float:
    """A prompt-tuning step's time on ``model`` (step_seconds on the owner's first batch, at the tuning's
    precision): the source's over the target's, both measured in this run, is a point's step cost."""
    texts, labels = sweep.train.texts[:sweep.tune.batch_size], torch.tensor(sweep.train.labels[:sweep.tune.batch_size])
    precision = functools.partial(autocast, sweep.tune.precision, "cpu", "tune.precision")
    return step_seconds(model, sweep.tokenizer, sweep.task, texts, labels, sweep.tune.prompt_length, 3, precision)


# --- the owner's prompt ----------------------------------------------------------------------------------------


def owner_tuned(sweep: Sweep, model, seed: int) -> SoftPrompt:
    """The owner's tuning (owner_recipe) of a prompt on ``model`` from ``seed``; on the target it is FullPT."""
    return tune_prompt(model, sweep.tokenizer, sweep.task, sweep.train, sweep.owner_tune, math.inf, sweep.owner_steps,
                       sweep.owner_held, seed, sweep.cfg.data.max_text_tokens, sweep.cfg.eval.batch_size, True)


def owner_prompt(sweep: Sweep, model, seed: int, source: str, record: dict | None) -> SoftPrompt:
    """The owner's prompt on ``source`` (its name and distillation record), kept under ``work``: reruns and
    later lever runs on the same source reuse it instead of retuning (minutes a seed)."""
    key = content_key({"source": source, "record": record, "task": sweep.task.name, "seed": seed,
                       "tune": dataclasses.asdict(sweep.owner_tune), "steps": sweep.owner_steps,
                       "held": len(sweep.owner_held.texts) if sweep.owner_held else 0,
                       "max_text_tokens": sweep.cfg.data.max_text_tokens})
    path = sweep.work / "owner_prompts" / f"{sweep.task.name}-{source}-seed{seed}-{key}.pt"
    # the key names the source; its model name does not (a source distilled in this run is named apart
    # from the same one reloaded)
    return reuse(path, lambda p: SoftPrompt.load(p, model, same_model=False), lambda: owner_tuned(sweep, model, seed),
                 SoftPrompt.save)


def owner_seeds(sweep: Sweep) -> list[int]:
    """The owner's tuning seeds asked for (the profile's by default), each once, in order."""
    return list(dict.fromkeys(sweep.args.owner_seeds or [sweep.cfg.seed]))


def owner_scores(sweep: Sweep, source, prompt: SoftPrompt, seed: int) -> dict:
    """The owner's prompt on validation: on its source (CompPT) and pasted onto the target (Direct)."""
    return {"owner_seed": seed, **dict(zip(("compt", "compt_auc"), measure(sweep, source, prompt))),
            **dict(zip(("direct", "direct_auc"), measure(sweep, sweep.target, prompt)))}


# --- sources -----------------------------------------------------------------------------------------------------


def make_source(sweep: Sweep, text: str, mode: str, objective: str,
                settings: dict) -> tuple[torch.nn.Module, dict | None]:
    """The undistilled cut, or the distilled source (kept under ``work`` so reruns and levers reuse it)."""
    first, last = shape(text)
    if objective == "undistilled":
        return distill.make_student(sweep.target, end_layers(sweep.n_layers, first + last, last)), None
    if objective == "profile":
        return profile_source(sweep, first, last)
    saved = sweep.work / f"{text}-{mode.replace(':', '-')}"
    if (saved / "distill.json").exists():
        return load(saved)[0], read_json(saved / "distill.json")
    return distilled(sweep, first, last, objective, settings, saved)


def profile_source(sweep: Sweep, first: int, last: int) -> tuple[torch.nn.Module, dict]:
    """The profile's own source, as 01 or make source made it (all its tasks), refused unless it is this cut."""
    directory = source_model_dir(sweep.args.profile)
    if not (directory / "distill.json").exists():
        raise SystemExit(f"mode 'profile': no {relative(directory)}: run make source or 01 first")
    record = read_json(directory / "distill.json")
    if record["student_layers"] != list(end_layers(sweep.n_layers, first + last, last)):
        raise SystemExit(f"mode 'profile': the profile's source has layers {record['student_layers']}, "
                         f"not the first {first} + last {last}")
    return load(directory)[0], record


def distilled(sweep: Sweep, first: int, last: int, objective: str, settings: dict,
              saved: Path) -> tuple[torch.nn.Module, dict]:
    """Distil the first-``first`` + last-``last`` cut with ``objective`` (``generic``: packed public text; the
    read-out objectives: ``settings``' budget) and keep it, with its record, in ``saved``."""
    cfg = sweep.cfg
    common = {"num_student_layers": first + last, "keep_last": last, "objective": objective}
    dc = dataclasses.replace(cfg.distill, **common, **settings, batch_size=16, lr=3e-4) \
        if objective != "generic" else \
        dataclasses.replace(cfg.distill, **common, train_sequences=sweep.args.generic_sequences,
                            train_layers=settings["train_layers"])
    source, record = distill.distill_student(dataclasses.replace(cfg, distill=dc), sweep.target, sweep.tokenizer,
                                             sweep.work, True)
    with atomic_dir(saved) as tmp:
        source.save_pretrained(tmp)
        sweep.tokenizer.save_pretrained(tmp)
        write_json(tmp / "distill.json", record)
    return source, record


def readout_objective(sweep: Sweep):
    """The read-out objective at the sweep's read-out budget: a source's held-out agreement with the target."""
    cfg = sweep.cfg
    rcfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, objective="readout",
                                                                readout_examples=sweep.args.readout_examples))
    return objectives.objective_for(rcfg, sweep.target, sweep.tokenizer, sweep.work, True)[0]


def distill_facts(objective: str, settings: dict, record: dict | None) -> dict:
    """How a distilled source was made and what its distillation cost; nothing for an undistilled cut."""
    if not record:
        return {}
    facts = {}
    if objective == "profile":
        facts.update(distill_hash=record["distill_hash"], train_layers=record.get("train_layers"),
                     readout_pools=record.get("readout_pools"), readout_prefixes=record.get("readout_prefixes"))
    elif objective != "generic":
        facts.update(readout_examples=settings["readout_examples"], readout_epochs=settings["epochs"],
                     **{k: settings[k] for k in ("readout_pools", "readout_prefixes") if settings[k]})
    if settings["train_layers"]:
        facts["train_layers"] = settings["train_layers"]
    facts.update(distill_tokens=record["train_tokens"], distill_after=record["after"],
                 distill_seconds=record["cost"]["total"]["wall_seconds"])
    return facts


# --- the transfer ------------------------------------------------------------------------------------------------


def public_logits(sweep: Sweep, name: str) -> dict:
    """A public pool's training and held-out texts with the target's logits on them, made once a pool for every
    source (post.public_data.prepare gives the same numbers but runs the target again for each source)."""
    if name not in sweep.target_public:
        transfer = sweep.cfg.transfer
        texts, held = public_sample(name, transfer.public_examples, transfer.holdout_examples, sweep.cfg.seed)
        sweep.target_public[name] = {part: (x, all_logits(sweep.target, sweep.tokenizer, sweep.view, x, None,
                                                          sweep.cfg.eval.batch_size, transfer.max_text_tokens))
                                     for part, x in (("train", texts), ("holdout", held))}
    return sweep.target_public[name]


def prepare(sweep: Sweep, source, name: str) -> Prepared:
    """The unprompted source's and target's logits on a pool's public texts: once a source and pool, for all
    its transfers."""
    return Prepared(sweep.view, name,
                    *(Unprompted(x, all_logits(source, sweep.tokenizer, sweep.view, x, None, sweep.cfg.eval.batch_size,
                                               sweep.cfg.transfer.max_text_tokens), plain)
                      for x, plain in public_logits(sweep, name).values()), cost=Cost())


def transfer_settings(settings: TransferConfig) -> dict:
    """A transfer's settings as a point or lever run keeps them: what tells one transfer from another."""
    return {f"transfer_{k}": getattr(settings, k) for k in TRANSFER_KEYS}


def transferred(sweep: Sweep, source, prepared: Prepared, prompt: SoftPrompt, settings: TransferConfig) -> dict:
    """POST with ``settings``, scored on validation: held-out-selected and last step."""
    begin = time.perf_counter()
    run, row = post_transfer(sweep.cfg, source, sweep.target, sweep.tokenizer, prepared, prompt, settings, True)
    scores = validation_scores(sweep, sweep.target, run.prompt)
    post, post_auc = rate(scores, sweep.labels)
    last = score(sweep, sweep.target, SoftPrompt(run.snapshots[max(run.snapshots)]))
    # how much of what POST misses is its threshold (diagnostics: the oracle reads the validation labels)
    ceiling = {f"post_{k}": v for k, v in threshold_only(scores, sweep.labels).items() if k != "zero_shot_auc"} \
        if post_auc is not None else {}
    ref = sweep.result["reference"]
    return {"post": post, "post_auc": post_auc, **ceiling, "post_last": last, "recovery": recovery(ref, post),
            "recovery_last": recovery(ref, last), "post_selected_step": run.selected_step,
            "post_last_step": max(run.snapshots), "alpha": row["alpha"],
            "direct_agreement": row["direct_agreement"], "transfer_seconds": time.perf_counter() - begin}


def control(sweep: Sweep, source, prepared: Prepared) -> dict:
    """POST of the owner's starting prompt (the task instruction's embeddings, no private step): what the
    transfer gives without the owner's data, so the part of POST's gain the tuned prompt carries shows."""
    start = SoftPrompt.from_text(source, sweep.tokenizer, sweep.task.instruction, sweep.tune.prompt_length,
                                 task=sweep.task.name)
    run = transferred(sweep, source, prepared, start, sweep.cfg.transfer)
    return dict(zip(CONTROL_KEYS, (score(sweep, sweep.target, start), run["post"], run["recovery"],
                                   run["post_selected_step"])))


# --- the map and the levers --------------------------------------------------------------------------------------


def map_points(sweep: Sweep, pool: str, target_step: float, readout) -> None:
    """Every (shape, mode) point of --shapes x --modes, shape by shape, on each owner seed the JSON lacks."""
    space = sweep.cfg.transfer.space
    done = {(p["shape"], p["mode"], p["transfer_space"], p.get("owner_seed", sweep.cfg.seed))
            for p in sweep.result["points"]}
    for text, mode in [(t, m) for t in sweep.args.shapes for m in sweep.args.modes]:  # shape by shape
        seeds = [s for s in owner_seeds(sweep) if (text, mode, space, s) not in done]
        if seeds:  # another transfer or owner seed makes another point on the same source
            source_points(sweep, text, mode, seeds, pool, target_step, readout)


def source_facts(sweep: Sweep, text: str, mode: str, pool: str, objective: str, settings: dict,
                 record: dict | None) -> dict:
    """What names a source's points: its cut and share of the target's layers, the public pool, the transfer's
    settings and how the source was distilled."""
    first, last = shape(text)
    return {"shape": text, "mode": mode, "layers": first + last, "first": first, "last": last,
            "public_pool": pool, "layer_fraction": (first + last) / sweep.n_layers, "threads": torch.get_num_threads(),
            **transfer_settings(sweep.cfg.transfer), **distill_facts(objective, settings, record)}


def source_points(sweep: Sweep, text: str, mode: str, seeds: list[int], pool: str, target_step: float,
                  readout) -> None:
    """One source's points, one per owner seed, each saved as it finishes. What is measured on the source alone is
    shared; its step cost and control are taken from the JSON where already measured. ``seconds``: since the
    last point."""
    begin = time.perf_counter()
    objective, settings = distillation(mode, sweep.args)
    source, record = make_source(sweep, text, mode, objective, settings)
    common = source_facts(sweep, text, mode, pool, objective, settings, record)
    common["readout_agreement"] = readout.evaluate(source)[0]
    common["source_zero_shot"], common["source_auc"] = measure(sweep, source)
    stored = [p for p in sweep.result["points"]  # this source's step cost and control, where already measured
              if (p["shape"], p["mode"], p["transfer_space"]) == (text, mode, sweep.cfg.transfer.space)]
    common["step_ratio"] = stored[0]["step_ratio"] if stored else prompt_step_seconds(sweep, source) / target_step
    control_run = {k: stored[0][k] for k in CONTROL_KEYS} if stored and "control_post" in stored[0] else None
    prepared = prepare(sweep, source, pool)
    for seed in seeds:
        prompt = owner_prompt(sweep, source, seed, f"{text}-{mode}", record)
        point = {**common, **owner_scores(sweep, source, prompt, seed)}
        point.update(transferred(sweep, source, prepared, prompt, sweep.cfg.transfer))
        control_run = control_run or control(sweep, source, prepared)  # the same for every owner seed: made once
        point.update(control_run, seconds=time.perf_counter() - begin)
        begin = time.perf_counter()
        sweep.result["points"].append(point)
        save(sweep)
        print({k: v for k, v in point.items() if k != "distill_after"}, flush=True)


def lever_runs(sweep: Sweep, pool: str) -> None:
    """Each --levers variant on each owner seed's prompt at --lever-point, saved run by run: a lever is judged
    against the seeds' spread. A variant the JSON has on a seed is not run again."""
    args = sweep.args
    text, mode = args.lever_point.rsplit("-", 1)
    (source, record), prepared = make_source(sweep, text, mode, *distillation(mode, args)), {}
    levers = sweep.result.setdefault("levers", {"point": args.lever_point, "runs": []})
    if levers["point"] != args.lever_point:
        sweep.error(f"{sweep.out} holds levers on {levers['point']}, not {args.lever_point}: pass another --out")
    seed_of = lambda run: run.get("owner_seed", sweep.cfg.seed)  # noqa: E731  (runs before seeds: the profile's)
    for seed in owner_seeds(sweep):
        todo = [v for v in args.levers if not any((r["variant"], seed_of(r)) == (v, seed) for r in levers["runs"])]
        if not todo:
            continue
        prompt = owner_prompt(sweep, source, seed, args.lever_point, record)
        owner = owner_scores(sweep, source, prompt, seed)
        for lever in todo:
            levers["runs"].append({"variant": lever, **owner,
                                   **lever_run(sweep, source, prepared, prompt, lever, pool)})
            save(sweep)
            print(levers["runs"][-1], flush=True)


def lever_run(sweep: Sweep, source, prepared: dict, prompt: SoftPrompt, lever: str, pool: str) -> dict:
    """One transfer variant (``public_pool=...`` transfers with that pool instead of the profile's); ``prepared``
    keeps each pool's public logits for the variants after it."""
    settings = sweep.cfg.with_changes("transfer", **variant(lever)).transfer
    name = settings.public_pool if settings.public_pool != sweep.cfg.transfer.public_pool else pool
    if name not in prepared:
        prepared[name] = prepare(sweep, source, name)
    return {"public_pool": name, **transfer_settings(settings),
            **transferred(sweep, source, prepared[name], prompt, settings)}


def plot(result: dict, profile: str, name: str = OUT.stem):
    """CompPT and POST recovery against the source's share of the target's layers, per distillation mode.

    The layer share, not the measured step cost, is the x axis: it is the paper's, and the step times measured in
    separate runs of this sweep on a shared machine differ by up to 2x for one source (the table keeps them)."""
    data = pd.DataFrame(result["points"])
    ref = result["reference"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 3.6))
    color = {mode: f"C{i}" for i, mode in enumerate(dict.fromkeys(data["mode"]))}
    marker = {last: m for last, m in zip(sorted(data["last"].unique(), reverse=True), "osD^v<>")}

    def by_shape(part: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
        """One row a source, however many transfers and owner seeds it has: their mean."""
        return part.groupby("shape")[[*columns, "layer_fraction"]].mean().sort_values("layer_fraction")

    # one line per distillation and number of kept last layers (a family of cuts); seeds as dots where several
    for (mode, last), part in data.groupby(["mode", "last"], sort=False):
        mean = by_shape(part, ["compt", "source_zero_shot"])
        left.plot(mean.layer_fraction, mean.compt, marker=marker[last], color=color[mode],
                  label=f"{mode}, last {last}: CompPT")
        left.plot(mean.layer_fraction, mean.source_zero_shot, marker=".", ls=":", color=color[mode],
                  label=f"{mode}, last {last}: zero-shot")
    for (mode, space, last), part in data.groupby(["mode", "transfer_space", "last"], sort=False):
        mean = by_shape(part, ["recovery"])
        right.plot(mean.layer_fraction, mean.recovery, marker=marker[last], color=color[mode],
                   ls="-" if space == "vocab" else "--", label=f"{mode}, last {last}, {space}-space transfer")
        if part.duplicated("shape").any():
            right.scatter(part.layer_fraction, part.recovery, s=10, color=color[mode], alpha=0.6)
    if "control_recovery" in data:  # the owner's starting prompt transferred: no private step, no gain of its own
        for (mode, last), part in data.dropna(subset=["control_recovery"]).groupby(["mode", "last"], sort=False):
            mean = by_shape(part, ["control_recovery"])
            right.plot(mean.layer_fraction, mean.control_recovery, marker="x", ls=":", color=color[mode],
                       label=f"{mode}, last {last}: control (instruction prompt)")
    for ax, value, label in ((left, ref["zero_shot"], "target ZS"), (left, ref["fullpt"], "target FullPT")):
        ax.axhline(value, color="grey", ls="--" if "ZS" in label else "-.", lw=1, label=label)
    for p in PAPER_POINTS:
        right.plot([p["layer_fraction"]], [p["recovery"]], marker="*", ms=12, ls="", color="C3", label=p["label"])
    if "levers" in result:  # the best transfer variant on the lever point, at that point's cost
        lev = result["levers"]  # a variant's recovery: its mean over the owner seeds it ran on
        best = pd.DataFrame(lev["runs"]).groupby("variant", sort=False)["recovery"].mean().reset_index().loc[
            lambda v: v["recovery"].idxmax()]
        shape_, mode = lev["point"].rsplit("-", 1)
        at = data[(data["shape"] == shape_) & (data["mode"] == mode)].layer_fraction
        if len(at):
            right.plot([at.iloc[0]], [best["recovery"]], marker="D", ms=7, ls="", color="C2",
                       label=f"{lev['point']}, transfer {best['variant']}")
    right.axhline(0, color="grey", lw=0.8)
    if "threshold_oracle" in ref:  # the target's zero-shot with only its threshold moved, at best
        right.axhline(recovery_share(ref["zero_shot"], ref["fullpt"], ref["threshold_oracle"]), color="grey",
                      ls=(0, (1, 3)), lw=1.2, label="target: best threshold on its zero-shot scores (oracle)")
    settings = result["settings"]
    fig.suptitle(f"{settings['task']} validation, soft prompts of {settings['tune']['prompt_length']} tokens",
                 fontsize=10)
    left.set_ylabel("validation accuracy (source)")
    right.set_ylabel("POST recovery (POST-ZS)/(FullPT-ZS)")
    for ax in (left, right):
        ax.set_xlabel("source layers / target layers")
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    save_figure(fig, data.drop(columns=[c for c in ("distill_after", "readout_agreement") if c in data]),
                name, profile)
    return fig


if __name__ == "__main__":
    main()
