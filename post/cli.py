"""The ``post`` command: what the provider and the data owner do, one subcommand each, on the study's files.

    post distill --profile quick                                        # provider: make the source model
    post tune --profile quick --task-file T.yaml --task NAME --epsilon 8   # owner: CompPT, with DP
    post transfer --profile quick --task-file T.yaml --prompt FILE      # provider: source -> target prompt
    post evaluate --profile quick --task-file T.yaml --prompt FILE      # owner: test accuracy
    post export --profile quick --prompt FILE --peft DIR                # a PEFT adapter anyone can load

Each subcommand calls the functions the notebooks call and reads and writes the same files (the paths of
``post.artifacts``), so a prompt tuned here is the prompt 02 tunes with that profile. Commands that write hold
the profile's lock, as ``make`` does. Bad input is refused in one line before anything is written. Torch and
the stages are imported by the commands that use them, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path

from .artifacts import MissingArtifact, prompt_path, results_dir, source_model, source_model_dir
from .assets import MissingAsset
from .config import ConfigError, PARAMS_DIR, check_profile_name, load_config
from .declarations import Task, TaskError
from .files import ROOT, UnreadableArtifact, read_artifact, relative
from .tasks import DEFAULT_POOLS, PUBLIC_POOLS, TASKS, load_split, register_file

EXIT_CODES = """exit codes:
  0    done
  1    the work failed (a traceback follows)
  2    bad input: usage, profile, task file or data, a prompt that does not fit or may not be released
  3    not ready: an earlier step's artifact is missing, or another run holds the profile
  130  stopped (Ctrl-C)"""


class UsageError(ValueError):
    """Input the command cannot use; the message is one line."""


# --- helpers shared by the subcommands ---------------------------------------------------------------------------


def _task(name: str | None) -> Task:
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; known: {', '.join(TASKS)} (declare yours in a YAML file and pass "
                         "--task-file FILE)")
    return TASKS[name]


def _config(args, task: str | None = None, **sections):
    """The profile, checked, with ``task`` as its only task and ``sections`` (e.g. audit={...}) overriding it."""
    overrides = {"data": {"tasks": [task]}} if task else {}
    return load_config(args.profile, {**overrides, **sections})


def _check_task(task: Task, cfg, owner: bool) -> None:
    """Read and check the data (owner only: the provider has none) and the label words, before any work."""
    from .models import load_tokenizer
    from .prompt import Verbalizer

    if owner:
        load_split(task.name, "train")  # reads and checks all of it
    try:
        Verbalizer.for_task(task, load_tokenizer(cfg.model))
    except ValueError as err:  # a label word that is not one token, named
        raise TaskError(str(err)) from None


def _read_prompt(path: str):
    from .prompt import SoftPrompt

    if not Path(path).is_file():
        raise UsageError(f"{path}: no such prompt file")
    return read_artifact(Path(path), SoftPrompt.load)


def _fits(prompt, model, file: str, role: str) -> None:
    """Refuse a prompt made for another model than the one the command uses it with."""
    from .models import model_name

    if prompt.meta.get("model") != model_name(model):
        raise UsageError(f"{file} was made for {prompt.meta.get('model')!r}, but {role} is {model_name(model)!r}")
    prompt.check(model)


def _profile_model(prompt, cfg, file: str) -> str | Path:
    """The model a prompt is scored with: the profile's target or its source, never a name the file chooses (a
    provider's file must not make the owner open another folder or hub id)."""
    source = source_model_dir(cfg.profile)
    if prompt.meta.get("model") == cfg.model:
        return cfg.model
    if prompt.meta.get("model") == relative(source):
        return source_model(cfg.profile)
    raise UsageError(f"{file} was made for {prompt.meta.get('model')!r}; profile {cfg.profile!r} scores prompts for "
                     f"its target {cfg.model!r} or its source {relative(source)!r} only")


def _same_template(prompt, task: Task, file: str) -> None:
    if prompt.meta.get("template") != task.template:
        raise UsageError(f"{file} was tuned with the template {prompt.meta.get('template')!r}; task {task.name!r} "
                         f"declares {task.template!r}")


def _not_an_input(out: Path, *inputs: str | Path) -> None:
    """Refuse an output path that is one of the command's inputs: no command writes over what it reads."""
    for path in map(Path, inputs):
        if out.resolve() == path.resolve() or (out.exists() and path.exists() and out.samefile(path)):
            raise UsageError(f"--out {out} is an input of this command ({path}); name a new file")


def _lock(cfg, what: str):
    from .run import profile_lock

    return profile_lock(cfg.profile, what)


def epsilon(text: str) -> float:
    value = float(text)  # "inf" parses: no DP
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: epsilon must be > 0 (inf for no DP)")
    return value


DP_FACTS = {"delta": "delta", "noise_multiplier": "sigma", "max_grad_norm": "C", "sample_rate": "q",
            "steps_taken": "steps", "n": "N", "prv_epsilon": "spent (PRV)", "rdp_epsilon": "spent (RDP)",
            "randomness": "randomness"}  # key of a DP record -> how inspect names it


def _facts(record: dict, names: dict[str, str]) -> str:
    """``name value, ...`` for the keys of ``names`` that ``record`` has, floats to 4 significant digits."""
    return ", ".join(f"{name} {record[key]:.4g}" if isinstance(record[key], float) else f"{name} {record[key]}"
                     for key, name in names.items() if key in record)


# --- provider ----------------------------------------------------------------------------------------------------


def distill(args) -> None:
    from . import distill as stage

    cfg = _config(args)
    with _lock(cfg, "post distill"):
        record = stage.run_distill(cfg, not args.quiet, args.release)
    before, after = record["before"], record["after"]
    print(f"source model: {relative(source_model_dir(cfg.profile))} (layers {record['student_layers']} of "
          f"{cfg.model}'s {record['teacher_layers']}); held-out top-1 agreement with the target "
          f"{before['top1']:.3f} -> {after['top1']:.3f}")
    if args.release:
        from .release import release_dir

        print(f"release: {relative(release_dir(cfg.profile))} (commit it once; the distill stage rebuilds the "
              "source from it while the profile's distillation settings stay the same)")


def transfer(args) -> None:
    from . import transfer as stage
    from .prompt import check_release, record_path
    from .public_data import prepare
    from .tasks import public_sample

    prompt = _read_prompt(args.prompt)
    task = _task(prompt.meta.get("task"))
    _same_template(prompt, task, args.prompt)
    check_release(prompt.meta)
    cfg = _config(args, task.name)
    _check_task(task, cfg, owner=False)
    pool = args.pool or cfg.transfer.public_pool or DEFAULT_POOLS.get(task.name)
    if pool not in PUBLIC_POOLS:
        missing = f"no public pool {pool!r}" if pool else f"task {task.name!r} names no public pool"
        raise UsageError(f"{missing}: pass --pool with one of {', '.join(PUBLIC_POOLS)}, or declare public_pool "
                         "in the task file")
    try:
        public_sample(pool, cfg.transfer.public_examples, cfg.transfer.holdout_examples, cfg.seed)
    except ValueError as err:  # a pool with too few texts for the profile
        raise TaskError(str(err)) from None
    out = Path(args.out) if args.out else prompt_path(cfg.profile, task.name, "post", prompt.meta["epsilon"], cfg.seed)
    _not_an_input(out, args.prompt, record_path(Path(args.prompt)), *args.task_file)
    with _lock(cfg, "post transfer"):
        source, target, tokenizer = stage.load_models(cfg)
        _fits(prompt, source, args.prompt, f"the source model of profile {cfg.profile!r}")
        prepared = prepare(cfg, source, target, tokenizer, task.name, pool)
        result, row = stage.post_transfer(cfg, source, target, tokenizer, prepared, prompt, progress=not args.quiet)
        result.prompt.save(out)
    print(f"target prompt: {relative(out)} (for {cfg.model}; {row['public_examples']} public texts of {pool!r}, "
          f"alpha {row['alpha']:.2f}, step {row['selected_step']} of {row['steps']} kept)")


# --- owner -------------------------------------------------------------------------------------------------------


def tune(args) -> None:
    from . import tune as stage
    from .prompt import record_path

    task = _task(args.task)
    cfg = _config(args, task.name)
    _check_task(task, cfg, owner=True)
    if not math.isinf(args.epsilon):
        try:
            stage.stage_plan(cfg, task.name, args.epsilon)  # calibrates the noise: an unreachable epsilon says so
        except ValueError as err:
            raise UsageError(f"--epsilon {args.epsilon:g}: {err}") from None
    with _lock(cfg, "post tune"):
        (row,) = stage.tune_method(cfg, "compt", not args.quiet, epsilons=(args.epsilon,))
    path = ROOT / row["prompt"]
    privacy = ("no DP" if math.isinf(args.epsilon) else
               f"(epsilon {row['epsilon']}, delta {row['delta']:.0e})-DP, {row['prv_epsilon']:.2f} spent")
    print(f"prompt file, for the provider: {relative(path)}\n"
          f"owner record, keep it:        {relative(record_path(path))}\n"
          f"{privacy}; test accuracy on the source model {row['accuracy']:.3f} (n={row['n']})")


def evaluate(args) -> None:
    from .evaluate import accuracy, majority_accuracy
    from .models import load

    prompt = _read_prompt(args.prompt)
    task = _task(args.task or prompt.meta.get("task"))
    _same_template(prompt, task, args.prompt)
    cfg = _config(args, task.name)
    _check_task(task, cfg, owner=True)
    split = load_split(task.name, args.split, cfg.data.max_test if args.split == "test" else cfg.data.max_validation)
    model, tokenizer = load(_profile_model(prompt, cfg, args.prompt), device=cfg.device)
    prompt.check(model)
    scores = {name: accuracy(model, tokenizer, task, split, p, cfg.eval.batch_size, cfg.data.max_text_tokens,
                             not args.quiet, cfg.eval.precision)["accuracy"]
              for name, p in (("prompt", prompt), ("none", None))}
    print(f"{task.name} {args.split} (n={len(split)}) on {prompt.meta['model']}: accuracy {scores['prompt']:.3f} with "
          f"the prompt, {scores['none']:.3f} without it, {majority_accuracy(split):.3f} for the majority class")


# --- both ----------------------------------------------------------------------------------------------------------


def audit(args) -> None:
    from . import audit as stage
    from .tables import control_checks, lira_table

    cfg = _config(args, **({"audit": {"task": _task(args.task).name}} if args.task else {}))
    _check_task(_task(stage.audit_task(cfg)), cfg, owner=True)
    with _lock(cfg, "post audit"):
        result = stage.run_audit(cfg, not args.quiet)
    print(control_checks(result).to_string(index=False))
    table = lira_table(result)[["setting", "model", "auc", "auc 95% CI", "reading"]]
    print(table.round(3).to_string(index=False))
    print(f"written: {relative(results_dir(cfg.profile) / 'audit.json')}")


def inspect(args) -> None:
    from .peft_export import read_adapter
    from .prompt import NotReleasable, check_claim, check_release, record_path

    path = Path(args.file)
    if path.is_dir():
        adapter, meta = read_adapter(path)
        if not adapter:
            raise UsageError(f"{path} is a directory without adapter_config.json: not an exported adapter")
        print(f"{path}: PEFT {adapter.get('peft_type')} adapter for {adapter.get('base_model_name_or_path')}, "
              f"{adapter.get('num_virtual_tokens')} virtual tokens of width {adapter.get('token_dim')}")
        meta = {**meta, "epsilon": float(meta.get("epsilon", "inf"))}  # "inf" or "8": strict JSON
        check_claim(meta, str(path / "post.json"))
    else:
        prompt = _read_prompt(args.file)
        meta = {**prompt.meta, "digest": prompt.digest()}
        print(f"{args.file}: a prompt of {meta.get('length')} vectors of width {meta.get('hidden_size')}")
    rows = {"model": meta.get("model"), "task": meta.get("task"), "template": repr(meta.get("template", "")),
            "method": meta.get("method"), "digest": meta.get("digest"), "source model": meta.get("source_model"),
            "source digest": meta.get("source_digest")}
    privacy = meta.get("dp") or {}
    rows["privacy"] = "none: tuned without DP (epsilon inf)"
    if privacy.get("private"):
        rows["privacy"] = f"epsilon {meta['epsilon']:g} by DP-SGD: " + _facts(privacy, DP_FACTS)
    try:
        check_release(meta)
        rows["release"] = "may be handed to a provider"
    except NotReleasable as err:
        rows["release"] = f"must stay with the owner: {err}"
    if meta.get("transfer"):
        rows["transfer"] = _facts(meta["transfer"], {key: key for key in meta["transfer"]})
    record = record_path(path)
    if record.is_file():
        rows["owner record"] = f"{record} (the owner's: curves and scores from the private data; never hand it over)"
    for key, value in rows.items():
        if value is not None:
            print(f"  {key:13} {value}")


def export(args) -> None:
    from .hardware import resolve_precision
    from .models import hub_id, load
    from .peft_export import export_peft

    out = Path(args.peft)
    reusable = out.is_dir() and ((out / "post.json").is_file() or not any(out.iterdir()))
    if out.exists() and not reusable:
        raise UsageError(f"{out} exists and is not an adapter written by post export; name a new directory")
    prompt = _read_prompt(args.prompt)
    task = _task(prompt.meta.get("task"))
    cfg = _config(args)
    model, _ = load(cfg.model, device=cfg.device)
    _fits(prompt, model, args.prompt, f"the target of profile {cfg.profile!r}")
    precision = resolve_precision(cfg.eval.precision, model.device.type, "eval.precision")
    export_peft(prompt, model, task, out, {"max_text_tokens": cfg.data.max_text_tokens, "precision": precision})
    print(f"PEFT prompt-tuning adapter: {out} (base model {hub_id(cfg.model)}); load it with "
          f"peft.PeftModel.from_pretrained(model, {str(out)!r}); post.json holds the template and label words")


def profiles(args) -> None:
    for path in sorted(PARAMS_DIR.glob("*.yaml")):
        first = path.read_text().split("\n", 1)[0]
        about = first.lstrip("# ") if first.startswith("#") else ""
        try:
            cfg = load_config(path.stem)
            print(f"{path.stem:8} {cfg.model}; tasks {', '.join(cfg.data.tasks)}; epsilons "
                  f"{', '.join(f'{e:g}' for e in cfg.tune.epsilons)}\n         {about}")
        except ConfigError as err:
            print(f"{path.stem:8} not usable: {err}")


def tasks(args) -> None:
    if args.name:
        task = _task(args.name)
        print(f"{task.name}: data {task.source}, public pool {DEFAULT_POOLS.get(task.name, '(none)')}\n"
              f"  template     {task.template!r}\n  instruction  {task.instruction}")
        for name, words in zip(task.classes, task.label_words):
            print(f"  class {name!r}: label words {', '.join(map(repr, words))}")
        return
    for name, task in TASKS.items():
        print(f"{name:20} {task.source:44} {len(task.classes)} classes: {', '.join(task.classes)}")
    print(f"public pools: {', '.join(PUBLIC_POOLS)}")


# --- the parser ----------------------------------------------------------------------------------------------------


COMMANDS = {  # name -> (function, help, description)
    "distill": (distill, "provider: distil the source model from the target on public text",
                "Provider. Cut a few of the target's layers into a small source model and distil it on public text "
                "(notebook 01). Writes artifacts/<profile>/source_model/; with the same settings again, does nothing. "
                "With --release also writes sources/<profile>/: the trained layers only, which the stage rebuilds "
                "the source from on any machine (make source)."),
    "transfer": (transfer, "provider: turn an owner's prompt file into a prompt for the target",
                 "Provider. POST transfer (notebook 03's code) of the owner's prompt file to the target, on public "
                 "text only. Needs the task's declaration (--task-file), never its data. Writes "
                 "artifacts/<profile>/prompts/<task>/post_eps<E>_seed<S>.pt unless --out."),
    "tune": (tune, "owner: tune a soft prompt on the source model, with DP or not",
             "Owner. CompPT (notebook 02's code): a soft prompt tuned on the source model with the private data, "
             "with DP-SGD at --epsilon (inf: no DP). Writes the prompt file for the provider, "
             "artifacts/<profile>/prompts/<task>/compt_eps<E>_seed<S>.pt, and next to it the owner's record "
             "(.owner.json: curves and scores from the private data, which stays with the owner). A prompt already "
             "tuned with the same settings is reused, not tuned again."),
    "evaluate": (evaluate, "owner: accuracy of a prompt on the task's test split",
                 "Owner. Accuracy of a prompt with the model it was made for (a target prompt: the target), on the "
                 "task's test split (or --split validation), next to the model without it and the majority class."),
    "audit": (audit, "both: the privacy audit (LiRA and canaries) of notebook 05",
              "Both. Membership inference against shadow prompts (LiRA) and a one-run canary audit, as notebook 05, "
              "on the profile's audit task or --task. Writes results/<profile>/audit.json."),
    "inspect": (inspect, "both: what a prompt file or an exported adapter holds",
                "Both. What a prompt file (or a directory written by post export) holds: model, prompt length, "
                "task and template, the DP guarantee, provenance, and whether it may be handed to a provider."),
    "export": (export, "both: write a target prompt as a PEFT prompt-tuning adapter",
               "Both. Write a prompt for the profile's target as a standard PEFT prompt-tuning adapter "
               "(adapter_config.json, adapter_model.safetensors) for the target's Hugging Face id, plus post.json "
               "(template, label words, DP facts). A prompt made for another model is refused."),
    "profiles": (profiles, "the profiles in params/", "The profiles in params/: model, tasks and epsilons."),
    "tasks": (tasks, "the tasks and public pools",
              "The tasks (built in, and those of --task-file) and the public pools; with a task name, its whole "
              "declaration."),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="post", epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                  description="POST, privacy-preserving soft-prompt transfer: the provider's and the "
                                              "data owner's steps on your own data.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (function, short, description) in COMMANDS.items():
        p = sub.add_parser(name, help=short, description=textwrap.fill(description, 100), epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=function)
        if name not in ("inspect", "profiles"):
            p.add_argument("--task-file", action="append", default=[], metavar="FILE",
                           help="a YAML file declaring tasks and public pools (repeatable)")
        if name not in ("inspect", "profiles", "tasks"):
            p.add_argument("--profile", default="cpu", help="params/<profile>.yaml (default: cpu)")
        if name in ("distill", "transfer", "tune", "evaluate", "audit"):
            p.add_argument("--quiet", action="store_true", help="no progress bars")
    options = sub.choices
    options["distill"].add_argument("--release", action="store_true",
                                    help="also write sources/<profile>/, the trained layers to commit")
    options["tune"].add_argument("--task", required=True, help="the private task")
    options["tune"].add_argument("--epsilon", required=True, type=epsilon, help="DP epsilon; inf for no DP")
    options["transfer"].add_argument("--prompt", required=True, metavar="FILE", help="the owner's prompt file")
    options["transfer"].add_argument("--pool", help="public pool (default: the task's public_pool)")
    options["transfer"].add_argument("--out", metavar="FILE", help="where to write the target prompt")
    options["evaluate"].add_argument("--prompt", required=True, metavar="FILE", help="a prompt file")
    options["evaluate"].add_argument("--task", help="the task (default: the prompt's; same template required)")
    options["evaluate"].add_argument("--split", default="test", choices=("test", "validation"))
    options["audit"].add_argument("--task", help="the audited task (default: the profile's audit.task)")
    options["inspect"].add_argument("file", metavar="FILE", help="a prompt file or an exported adapter directory")
    options["export"].add_argument("--prompt", required=True, metavar="FILE", help="a prompt for the target")
    options["export"].add_argument("--peft", required=True, metavar="DIR", help="the adapter directory to write")
    options["tasks"].add_argument("name", nargs="?", help="show this task's declaration")
    return top


def exit_code(err: Exception) -> int | None:
    """2 for bad input, 3 for a step that cannot run yet; None for a failure (shown with its traceback)."""
    from .prompt import NotReleasable, PromptMismatch
    from .run import StageFailed

    if isinstance(err, (UsageError, ConfigError, TaskError, PromptMismatch, NotReleasable, UnreadableArtifact)):
        return 2
    if isinstance(err, (MissingArtifact, MissingAsset, StageFailed)):
        return 3
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "quiet", False):
        from transformers.utils import logging

        logging.disable_progress_bar()
    try:
        if hasattr(args, "profile"):  # first: whatever the command reads or writes, a bad name stops it
            check_profile_name(args.profile)
        for path in getattr(args, "task_file", []):
            register_file(path)
        args.run(args)
    except KeyboardInterrupt:
        print(f"post {args.command}: stopped", file=sys.stderr)
        return 130
    except Exception as err:
        code = exit_code(err)
        if code is None:
            raise
        print(f"post {args.command}: {err}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
