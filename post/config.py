"""Profiles: one strict YAML per profile in ``params/``, loaded into frozen dataclasses.

Strict means an unknown or misspelt key is an error that lists the valid keys, so a typo never silently
falls back to a default, and every choice, range and cross-field rule is checked when the profile is loaded,
so a bad setting stops the study before its first stage rather than when a later stage reaches it. Each
stage reads its own section; ``Config.section_hash`` lets a stage tell whether its parameters changed since
its artifacts were made.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import hardware
from .declarations import TaskError, load_yaml
from .files import ROOT
from .reuse import content_key
from .tasks import PUBLIC_POOLS, TASKS, register_file

PARAMS_DIR = ROOT / "params"
PROFILES = ("smoke", "quick", "cpu", "gpu")
PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a plain file name: no "/", "..", spaces or globs
SEED_MAX = 2**63 - 1  # torch and numpy take seeds that fit int64


class ConfigError(ValueError):
    """A profile file that does not match the schema."""


# Which settings enter a skip-if-done key (``keyed``) is declared on the field; a field says nothing when it does.
KEYED_WHEN_SET = {"keyed": "when set"}  # added after artifacts existed: keyed only when set, so theirs stay valid
UNKEYED = {"keyed": "never"}  # grids and figures-only settings: a change never remakes a stage's artifacts


@dataclass(frozen=True)
class DataConfig:
    tasks: tuple[str, ...] = ("rotten_tomatoes", "trec", "tweet_sentiment")
    task_files: tuple[str, ...] = ()  # YAML task files (relative to the repository) declaring tasks and pools
    max_train: int = 0  # 0 = the whole training split
    max_validation: int = 0
    max_test: int = 0
    max_text_tokens: int = 64  # input text is shortened to this many tokens before templating


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 32
    precision: str = "auto"  # test-split scoring: "fp32", "bf16" autocast (~3.5x faster on avx512_bf16) or "auto"


@dataclass(frozen=True)
class DistillConfig:
    public_pool: str = "news"  # a public pool of post.tasks, or "hf:<dataset>[:<config>]" (its train split)
    text_column: str = "text"  # column of a hub dataset holding the text
    student_layers: tuple[int, ...] = ()  # teacher layer indices; () = num_student_layers spread out
    num_student_layers: int = 4  # default cut: first, last and evenly spaced layers in between
    keep_last: int = 0  # > 0: contiguous ends instead, the first num_student_layers - keep_last and the last keep_last
    objective: str = "generic"  # "generic": packed public text (KD + LM + cosine); "readout": the task read-out;
    # "readout+hidden": the read-out plus the cosine on the hidden state entering the kept last layers (keep_last)
    readout_examples: int = 2000  # "readout": public texts per task, in the task's template (default pool)
    readout_holdout: int = 128  # "readout": further public texts per task for held-out agreement
    # "readout": more public pools, each up to readout_examples texts per task
    readout_pools: tuple[str, ...] = field(default=(), metadata=KEYED_WHEN_SET)
    # "readout": each training text also read out after this many random prefixes
    readout_prefixes: int = field(default=0, metadata=KEYED_WHEN_SET)
    # > 0: only the student's top train_layers layers learn; those below stay the target's
    train_layers: int = field(default=0, metadata=KEYED_WHEN_SET)
    train_embeddings: bool = False  # False: embeddings and LM head stay exactly the target's
    seq_len: int = 128  # tokens per packed public sequence
    train_sequences: int = 1024
    eval_sequences: int = 32  # held-out public sequences (disjoint documents) for agreement and KL
    batch_size: int = 8
    epochs: int = 1
    lr: float = 5e-4  # AdamW peak; 5% linear warm-up, cosine decay to 10%
    temperature: float = 2.0
    a_ce: float = 5.0  # weight of KL_T(teacher || student) * T^2
    a_lm: float = 2.0  # weight of the next-token cross-entropy
    a_cos: float = 1.0  # weight of the cosine loss on hidden states (generic: final; readout+hidden: see above)
    teacher_cache: str = "hidden"  # "hidden" (exact logits from cached hidden states) | "topk" | "none" (live)
    top_k: int = 64  # logits kept per token by the "topk" cache
    precision: str = "auto"  # "bf16": teacher targets and student steps under bf16 autocast; "fp32"; "auto"
    eval_every: int = 24
    checkpoint_every: int = 24


@dataclass(frozen=True)
class TuneConfig:
    prompt_length: int = 20  # soft-prompt tokens P (the paper uses 100)
    steps: int = 200  # CompPT steps on the source model, at every epsilon
    batch_size: int = 32  # fixed batch of the non-private runs
    dp_batch_size: int = 0  # expected Poisson batch q*N of DP runs: same examples, fewer steps (0 = batch_size)
    lr: float = 0.01  # Adam
    epsilons: tuple[float, ...] = field(default=(math.inf, 8.0, 4.0, 1.0), metadata=UNKEYED)  # CompPT grid; inf: no DP
    full_pt_epsilons: tuple[float, ...] = field(default=(math.inf, 8.0), metadata=UNKEYED)  # FullPT (target) grid
    full_pt_steps: int = 50
    max_grad_norm: float = 1.0  # C: per-example clipping norm under DP
    dp_randomness: str = "secret"  # DP sampler/noise: "secret" (OS entropy, never kept) | "seeded" (tests only)
    precision: str = "auto"  # "bf16": training steps under bf16 autocast (~2.5x faster on avx512_bf16); "fp32"; "auto"
    eval_every: int = 50  # validation accuracy every this many steps (0 = no validation during training)
    eval_examples: int = 200  # validation examples for curves and selection (0 = all of data.max_validation)
    select: str = "last"  # "last" | "validation" (best validation step; non-private prompts only)
    patience: int = 0  # non-private runs: stop once this many evaluations bring no better validation accuracy
    max_steps: int = 0  # non-private runs with patience: the step cap of CompPT and FullPT (0 = their steps)


@dataclass(frozen=True)
class TransferConfig:
    epsilons: tuple[float, ...] = (float("inf"), 8.0)  # the CompPT source prompts (by epsilon) to transfer
    public_pool: str = ""  # a public pool of post.tasks; "" = the task's default (post.tasks.DEFAULT_POOLS)
    # "task=pool": this task's pool instead (post.public_data.public_pool); checked on each task's own rows
    task_pools: tuple[str, ...] = field(default=(), metadata=UNKEYED)
    public_examples: int = 512  # public texts the target prompt is trained on
    holdout_examples: int = 64  # further public texts: held-out transfer loss for selection
    max_text_tokens: int = 48  # public texts are shortened to this many tokens before templating
    steps: int = 200
    batch_size: int = 16
    lr: float = 0.01  # Adam
    precision: str = "auto"  # "bf16": the prompted target's steps under bf16 autocast; "fp32"; "auto"
    alpha_rule: str = "proxy"  # "proxy": alpha from public data (post.public_data.alpha_proxy); "fixed": use alpha
    alpha: float = 0.5  # weight of the shift term when alpha_rule is "fixed"
    temperature: float = 2.0
    # weight of T^2 KL(Direct || POST): keeps the target prompt near the pasted one (0: the paper)
    anchor: float = field(default=0.0, metadata=KEYED_WHEN_SET)
    # public texts it holds: "all" | "agree" (where Direct picks the prompted source's class)
    anchor_on: str = field(default="all", metadata=KEYED_WHEN_SET)
    init: str = "source"  # target prompt starts as "source" (the source prompt) or "instruction" (its text)
    selection: str = "holdout"  # "holdout": lowest held-out public loss among evaluation steps; "last"
    patience: int = 0  # stop once the held-out public loss has not improved for this many evaluations (0: never)
    space: str = "vocab"  # the KL over the whole vocabulary ("vocab", the paper) or over the task's classes ("labels")
    eval_every: int = 50  # held-out public loss and a prompt snapshot every this many steps
    ptfer_anchors: int = 8192  # PTfer baseline: anchor tokens of the relative space
    ptfer_steps: int = 300
    # figures only (03's sweeps; no transfer that 04 or 05 uses reads them):
    sweep_task: str = field(default="rotten_tomatoes", metadata=UNKEYED)  # the task the sweeps run on
    sweep_test: int = field(default=400, metadata=UNKEYED)  # test examples per point
    alphas: tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata=UNKEYED)
    public_sizes: tuple[int, ...] = field(default=(32, 128, 512, 2048), metadata=UNKEYED)
    pools: tuple[str, ...] = field(default=("amazon_reviews", "news", "movie_questions"), metadata=UNKEYED)

    @property
    def pools_by_task(self) -> dict[str, str]:
        """``task_pools`` as {task: pool}."""
        return dict(entry.partition("=")[::2] for entry in self.task_pools)


@dataclass(frozen=True)
class AuditConfig:
    task: str = ""  # the private task audited; "" = the first of data.tasks
    pool_size: int = 500  # LiRA audit pool: a prefix of the task's train split; halves tuned with 02's settings
    shadows: int = 16  # K shadow prompts, each tuned on an independent Bernoulli(1/2) half of the pool
    epsilons: tuple[float, ...] = (float("inf"), 8.0, 1.0)  # settings audited; must include inf
    positive_control_pool: int = 32  # non-DP shadows on a prefix of the pool, many epochs: must leak
    positive_control_epochs: float = 8.0
    transfer_settings: tuple[str, ...] = ("positive",)  # shadows also POST-transferred: "positive" or eps tags
    transfer_pool: int = 0  # pool examples scored on the target (0 = all); transfers use 03's settings
    canaries: int = 500  # m random-token canaries with random labels for the one-run audit, each in w.p. 1/2
    canary_epochs: float = 60.0  # passes over the included canaries in each one-run training
    canary_batch_size: int = 16  # (expected Poisson) batch of every one-run training, DP or not
    canary_guesses: tuple[int, ...] = (50, 100, 250, 500)  # numbers of guesses tried (Bonferroni over them)
    confidence: float = 0.95  # of eps_hat and of the bootstrap CIs
    bootstrap: int = 1000  # resamples of examples for the AUC / TPR confidence intervals


@dataclass(frozen=True)
class Config:
    profile: str = "cpu"
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    device: str = "auto"  # where every stage runs: "auto" (cuda if available, else cpu), "cpu" or "cuda"
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    # set by load_config, never by a profile: the settings that said "auto", now what "auto" means here
    auto_settings: tuple[str, ...] = ()

    def section_hash(self, *sections: str) -> str:
        """Short digest of the keyed settings of the named sections (plus model and seed): changes exactly when
        they change. A precision that said "auto" counts as what it meant here (load_config resolved it):
        artifacts made in bf16 are not reused where "auto" means fp32."""
        return content_key({"model": self.model, "seed": self.seed,
                            **{name: keyed(getattr(self, name)) for name in sections}})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_changes(self, section: str, **changes: Any) -> "Config":
        """This config with ``changes`` to ``section``, checked as a loaded profile is: the one way benches and
        notebooks vary a setting. A string for a setting that is not a string is read as YAML would read it
        (``"0.25"``, ``"inf"``, ``"[1, 2]"``), so command-line variants need no casting of their own."""
        current = getattr(self, section)
        hints = typing.get_type_hints(type(current))
        parsed = {key: yaml.safe_load(value) if isinstance(value, str) and hints.get(key) is not str else value
                  for key, value in changes.items()}
        built = _build(type(current), {**dataclasses.asdict(current), **parsed}, section)
        return hardware.resolved(check(dataclasses.replace(self, **{section: built})))


def keyed(section: Any) -> dict[str, Any]:
    """The settings of a config section that enter skip-if-done keys, as each field declares: every one,
    except an UNKEYED field, and a KEYED_WHEN_SET field left at its default."""
    out = {}
    for f in dataclasses.fields(section):
        value, rule = getattr(section, f.name), f.metadata.get("keyed")
        if rule == "never" or (rule == "when set" and value == f.default):
            continue
        out[f.name] = value
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML value to the field's annotated type, refusing mismatches (``inf`` is a float)."""
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return float("inf")
    if hint in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or (hint is int and not float(value).is_integer()):
            raise ConfigError(f"{where} must be {'an integer' if hint is int else 'a number'}, got {value!r}")
        return hint(value)
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'profile'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or 'profile'}; valid keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], value, path)
        else:
            values[name] = _coerce(value, hints[name], path)
    return cls(**values)


# --- checks: each failure is one line naming the key, its value and what is allowed -------------------------

CHOICES = {
    "device": hardware.DEVICES,
    "eval.precision": hardware.PRECISIONS,
    "distill.objective": ("generic", "readout", "readout+hidden"),
    "distill.teacher_cache": ("hidden", "topk", "none"),
    "distill.precision": hardware.PRECISIONS,
    "tune.precision": hardware.PRECISIONS,
    "tune.select": ("last", "validation"),
    "tune.dp_randomness": ("secret", "seeded"),
    "transfer.precision": hardware.PRECISIONS,
    "transfer.alpha_rule": ("proxy", "fixed"),
    "transfer.init": ("source", "instruction"),
    "transfer.selection": ("holdout", "last"),
    "transfer.anchor_on": ("all", "agree"),
    "transfer.space": ("vocab", "labels"),
}
# Every number must be >= 0 and finite (inf only in epsilon lists); these must also be above 0.
POSITIVE = {
    "eval.batch_size",
    "distill.num_student_layers", "distill.readout_examples", "distill.readout_holdout", "distill.seq_len",
    "distill.train_sequences", "distill.eval_sequences", "distill.batch_size", "distill.epochs", "distill.lr",
    "distill.temperature", "distill.top_k", "distill.eval_every", "distill.checkpoint_every",
    "tune.prompt_length", "tune.steps", "tune.batch_size", "tune.lr", "tune.epsilons", "tune.full_pt_epsilons",
    "tune.full_pt_steps", "tune.max_grad_norm",
    "transfer.epsilons", "transfer.public_examples", "transfer.steps", "transfer.batch_size", "transfer.lr",
    "transfer.temperature", "transfer.eval_every", "transfer.ptfer_anchors", "transfer.ptfer_steps",
    "transfer.sweep_test", "transfer.public_sizes",
    "audit.pool_size", "audit.shadows", "audit.epsilons", "audit.positive_control_pool",
    "audit.positive_control_epochs", "audit.canaries", "audit.canary_epochs", "audit.canary_batch_size",
    "audit.canary_guesses", "audit.confidence", "audit.bootstrap",
}
FRACTIONS = {"transfer.alpha", "transfer.alphas"}  # in [0, 1]
NON_EMPTY = {"data.tasks", "tune.epsilons", "transfer.epsilons", "audit.epsilons", "audit.canary_guesses"}


def eps_tag(epsilon: float) -> str:
    """An epsilon as written in file names and tables: ``inf`` or ``8``."""
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_show, value)) + "]"
    return "inf" if isinstance(value, float) and math.isinf(value) else repr(value)


def _require(ok: Any, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {_show(value)}: {rule}")


def _settings(cfg: Config) -> list[tuple[str, Any]]:
    """(dotted key, value) of every setting of a profile."""
    found = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            found += [(f"{f.name}.{g.name}", getattr(value, g.name)) for g in dataclasses.fields(value)]
        else:
            found.append((f.name, value))
    return found


def _check_item(key: str, where: str, value: Any) -> None:
    """The per-value rules: a choice, or a number's range."""
    if key in CHOICES:
        _require(value in CHOICES[key], where, value, f"must be one of {', '.join(CHOICES[key])}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _require(value > 0 or (key not in POSITIVE and value == 0), where, value,
                 f"out of range: must be {'> 0' if key in POSITIVE else '>= 0'}")
        _require(not math.isinf(value) or key.endswith("epsilons"), where, value,
                 "must be finite (inf only in epsilon lists)")
        _require(key not in FRACTIONS or value <= 1, where, value, "out of range: must be in [0, 1]")


def check(cfg: Config) -> Config:
    """Every choice, range and cross-field rule of a profile, so that a bad setting fails before any stage."""
    for key, value in _settings(cfg):
        if isinstance(value, tuple):
            _require(value or key not in NON_EMPTY, key, value, "must list at least one entry")
            _require(len(set(value)) == len(value), key, value, "repeats an entry (each may appear once)")
            for i, item in enumerate(value):
                _check_item(key, f"{key}[{i}]", item)
        else:
            _check_item(key, key, value)
    _require(cfg.seed <= SEED_MAX, "seed", cfg.seed, "out of range: must be an integer in [0, 2**63 - 1]")
    d, dc, t, tr, a = cfg.data, cfg.distill, cfg.tune, cfg.transfer, cfg.audit
    _require(cfg.model, "model", cfg.model, "must name a model (offline name, local directory or hub id)")
    tasks = f"a task of post.tasks ({', '.join(TASKS)})"
    for i, name in enumerate(d.tasks):
        _require(name in TASKS, f"data.tasks[{i}]", name, f"must be {tasks}")
    pools = ", ".join(PUBLIC_POOLS)
    _require(dc.public_pool in PUBLIC_POOLS or dc.public_pool.startswith("hf:"), "distill.public_pool",
             dc.public_pool, f"must be a public pool ({pools}) or hf:<dataset>[:<config>]")
    _require(dc.keep_last < dc.num_student_layers or not dc.keep_last, "distill.keep_last", dc.keep_last,
             f"must be 0 or below distill.num_student_layers ({dc.num_student_layers})")
    n_student = len(dc.student_layers) or dc.num_student_layers
    _require(0 <= dc.train_layers <= n_student, "distill.train_layers", dc.train_layers,
             f"must be 0 (all layers learn) or at most the student's {n_student} layers")
    _require(dc.objective != "readout+hidden" or not dc.train_layers or dc.train_layers > dc.keep_last,
             "distill.train_layers", dc.train_layers, f"must exceed distill.keep_last ({dc.keep_last}) with objective "
             "'readout+hidden' (its hidden-state term is read below the kept last layers)")
    _require(dc.objective != "readout+hidden" or (dc.keep_last and not dc.student_layers), "distill.objective",
             dc.objective, "needs distill.keep_last > 0 and no distill.student_layers (it matches the hidden state "
             "entering the kept last layers)")
    _require(math.inf in t.epsilons, "tune.epsilons", t.epsilons,
             "must include inf: 03's sweeps transfer the non-private CompPT prompt")
    _require(t.select == "last" or t.eval_every, "tune.select", t.select,
             "must be 'last' when tune.eval_every is 0 (validation selects among evaluated steps)")
    _require(not t.patience or t.select == "validation", "tune.patience", t.patience,
             "must be 0 unless tune.select is 'validation' (a run stopped at its plateau keeps its best step)")
    for i, epsilon in enumerate(tr.epsilons):
        _require(epsilon in t.epsilons, f"transfer.epsilons[{i}]", epsilon,
                 f"must be one of tune.epsilons {_show(t.epsilons)}: 03 transfers the prompts 02 tuned")
    _require(tr.public_pool in ("", *PUBLIC_POOLS), "transfer.public_pool", tr.public_pool,
             f"must be '' (the task's default pool) or one of {pools}")
    for i, entry in enumerate(tr.task_pools):
        task, _, pool = entry.partition("=")
        _require(task in TASKS and pool in PUBLIC_POOLS, f"transfer.task_pools[{i}]", entry,
                 f"must be task=pool, a task of {tasks} and a pool of {pools}")
    _require(len(tr.pools_by_task) == len(tr.task_pools), "transfer.task_pools", tr.task_pools, "names a task twice")
    for i, pool in enumerate(dc.readout_pools):
        _require(pool in PUBLIC_POOLS, f"distill.readout_pools[{i}]", pool, f"must be a public pool ({pools})")
    for i, pool in enumerate(tr.pools):
        _require(pool in PUBLIC_POOLS, f"transfer.pools[{i}]", pool, f"must be one of {pools}")
    _require(tr.holdout_examples or tr.selection == "last", "transfer.holdout_examples", tr.holdout_examples,
             "must be > 0 when transfer.selection is 'holdout'")
    _require(tr.sweep_task in TASKS, "transfer.sweep_task", tr.sweep_task, f"must be {tasks}")
    _require(a.task in ("", *TASKS), "audit.task", a.task, f"must be '' (the first of data.tasks) or {tasks}")
    _require(a.shadows >= 3, "audit.shadows", a.shadows, "must be >= 3 (leave-one-out LiRA)")
    _require(a.positive_control_pool <= a.pool_size, "audit.positive_control_pool", a.positive_control_pool,
             f"must be <= audit.pool_size ({a.pool_size}): the control is a prefix of the pool")
    _require(math.inf in a.epsilons, "audit.epsilons", a.epsilons,
             "must include inf: the DP rows are read against the non-private one")
    audited = ("positive", *map(eps_tag, a.epsilons))
    for i, setting in enumerate(a.transfer_settings):
        _require(setting in audited, f"audit.transfer_settings[{i}]", setting,
                 f"must be one of {', '.join(audited)} (positive, or an audit.epsilons tag)")
    _require(a.confidence < 1, "audit.confidence", a.confidence, "out of range: must be in (0, 1)")
    return cfg


def check_profile_name(profile: str) -> str:
    """``profile`` if it names a file ``params/<profile>.yaml``, else a one-line ConfigError listing the profiles.

    The name becomes a path under params/, artifacts/, results/ and figures/, which ``make clean`` deletes: a
    name with "/", ".." or an absolute path would reach outside them, so only plain names are accepted.
    """
    plain = PROFILE_NAME.fullmatch(profile)
    path = PARAMS_DIR / f"{profile}.yaml"
    if plain and path.is_file():
        return profile
    why = f"{os.path.relpath(path, ROOT)} does not exist" if plain else "a name is letters, digits, _ and - only"
    profiles = ", ".join(sorted(p.stem for p in PARAMS_DIR.glob("*.yaml")))
    raise ConfigError(f"no profile {profile!r}: {why} (profiles: {profiles})")


def load_config(profile: str = "cpu", overrides: dict[str, Any] | None = None) -> Config:
    """Read ``params/<profile>.yaml`` strictly and check it; ``overrides`` (same nesting) win over the file."""
    path = PARAMS_DIR / f"{check_profile_name(profile)}.yaml"
    shown = os.path.relpath(path, ROOT)
    try:
        data = load_yaml(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"{shown} is not valid YAML: {' '.join(str(err).split())}") from None
    if not data:
        raise ConfigError(f"{shown} is empty: a profile sets at least its model (start from params/smoke.yaml)")
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    data.setdefault("profile", profile)
    if data["profile"] != profile:
        raise ConfigError(f"{shown} says profile {data['profile']!r} but was loaded as {profile!r}")
    if "auto_settings" in data:
        raise ConfigError(f"{shown}: auto_settings is not a setting (load_config records there what said auto)")
    cfg = _build(Config, data, "")
    for path in cfg.data.task_files:  # declared tasks exist before the checks look them up
        try:
            register_file(ROOT / path)
        except TaskError as err:
            raise ConfigError(f"data.task_files: {err}") from None
    cfg = check(cfg)
    try:
        return hardware.resolved(cfg)
    except ValueError as err:  # a device torch cannot find here
        raise ConfigError(str(err)) from None

