"""Profiles: one strict YAML per profile in ``params/``, loaded into frozen dataclasses.

Strict means an unknown or misspelt key is an error that lists the valid keys, so a typo never silently
falls back to a default. Each stage reads its own section; ``Config.section_hash`` lets a stage tell whether
its parameters changed since its artifacts were made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS_DIR = ROOT / "params"
PROFILES = ("smoke", "quick", "cpu", "gpu")


class ConfigError(ValueError):
    """A profile file that does not match the schema."""


@dataclass(frozen=True)
class DataConfig:
    tasks: tuple[str, ...] = ("rotten_tomatoes", "trec", "tweet_sentiment")
    max_train: int = 0  # 0 = the whole training split
    max_validation: int = 0
    max_test: int = 0
    max_text_tokens: int = 64  # input text is shortened to this many tokens before templating


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 32
    precision: str = "fp32"  # test-split scoring: "fp32", or "bf16" autocast (~3.5x faster on CPU)


@dataclass(frozen=True)
class DistillConfig:
    public_pool: str = "news"  # a public pool of post.tasks, or "hf:<dataset>[:<config>]" (its train split)
    text_column: str = "text"  # column of a hub dataset holding the text
    student_layers: tuple[int, ...] = ()  # teacher layer indices; () = num_student_layers spread out
    num_student_layers: int = 4  # default cut: first, last and evenly spaced layers in between
    keep_last: int = 0  # > 0: contiguous ends instead, the first num_student_layers - keep_last and the last keep_last
    objective: str = "generic"  # "generic": packed public text (KD + LM + cosine); "readout": the task read-out
    readout_examples: int = 2000  # "readout": public texts per task, in the task's template (default pool)
    readout_holdout: int = 128  # "readout": further public texts per task for held-out agreement
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
    a_cos: float = 1.0  # weight of the cosine loss on final hidden states
    teacher_cache: str = "hidden"  # "hidden" (exact logits from cached hidden states) | "topk" | "none" (live)
    top_k: int = 64  # logits kept per token by the "topk" cache
    precision: str = "bf16"  # "bf16": teacher targets and student steps under bf16 autocast; "fp32"
    eval_every: int = 24
    checkpoint_every: int = 24


@dataclass(frozen=True)
class TuneConfig:
    prompt_length: int = 20  # soft-prompt tokens P (the paper uses 100)
    steps: int = 200  # CompPT steps on the source model, at every epsilon
    batch_size: int = 32  # fixed batch of the non-private runs
    dp_batch_size: int = 0  # expected Poisson batch q*N of DP runs: same examples, fewer steps (0 = batch_size)
    lr: float = 0.01  # Adam
    epsilons: tuple[float, ...] = (float("inf"), 8.0, 4.0, 1.0)  # CompPT grid; inf = no DP
    full_pt_epsilons: tuple[float, ...] = (float("inf"), 8.0)  # FullPT (target) grid
    full_pt_steps: int = 50
    max_grad_norm: float = 1.0  # C: per-example clipping norm under DP
    precision: str = "bf16"  # "bf16": training steps under bf16 autocast (~2.5x faster on CPU); "fp32"
    eval_every: int = 50  # validation accuracy every this many steps (0 = no validation during training)
    eval_examples: int = 200  # validation examples for curves and selection (0 = all of data.max_validation)
    select: str = "last"  # "last" | "validation" (best validation step; non-private prompts only)


@dataclass(frozen=True)
class TransferConfig:
    epsilons: tuple[float, ...] = (float("inf"), 8.0)  # the CompPT source prompts (by epsilon) to transfer
    public_pool: str = ""  # a public pool of post.tasks; "" = the task's default (post.tasks.DEFAULT_POOLS)
    public_examples: int = 512  # public texts the target prompt is trained on
    holdout_examples: int = 64  # further public texts: held-out transfer loss for selection
    max_text_tokens: int = 48  # public texts are shortened to this many tokens before templating
    steps: int = 200
    batch_size: int = 16
    lr: float = 0.01  # Adam
    precision: str = "bf16"  # "bf16": the prompted target's steps under bf16 autocast (~2x faster on CPU); "fp32"
    alpha_rule: str = "proxy"  # "proxy": alpha from public data (transfer.alpha_proxy); "fixed": use alpha
    alpha: float = 0.5  # weight of the shift term when alpha_rule is "fixed"
    temperature: float = 2.0
    init: str = "source"  # target prompt starts as "source" (the source prompt) or "instruction" (its text)
    selection: str = "holdout"  # "holdout": lowest held-out public loss among evaluation steps; "last"
    patience: int = 0  # stop once the held-out public loss has not improved for this many evaluations (0: never)
    space: str = "vocab"  # the KL over the whole vocabulary ("vocab", the paper) or over the task's classes ("labels")
    eval_every: int = 50  # held-out public loss and a prompt snapshot every this many steps
    ptfer_anchors: int = 8192  # PTfer baseline: anchor tokens of the relative space
    ptfer_steps: int = 300
    sweep_task: str = "rotten_tomatoes"  # figures only: the task the alpha / size / pool / init sweeps run on
    sweep_test: int = 400  # figures only: test examples per point
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    public_sizes: tuple[int, ...] = (32, 128, 512, 2048)
    pools: tuple[str, ...] = ("amazon_reviews", "news", "movie_questions")


@dataclass(frozen=True)
class AuditConfig:
    task: str = ""  # the private task audited; "" = the first of data.tasks
    pool_size: int = 500  # LiRA audit pool: a prefix of the task's train split
    shadows: int = 16  # K shadow prompts, each tuned on an independent Bernoulli(1/2) half of the pool
    prompt_length: int = 8  # shadow prompts are shorter than the study's to keep K trainings cheap
    batch_size: int = 32  # as tune.batch_size (expected Poisson batch with DP); lr and C come from tune
    epochs: float = 1.0  # passes over each shadow's half (02's CompPT also sees each example about once)
    epsilons: tuple[float, ...] = (float("inf"), 8.0, 1.0)  # settings audited; must include inf
    positive_control_pool: int = 32  # non-DP shadows on a prefix of the pool, many epochs: must leak
    positive_control_epochs: float = 8.0
    transfer_settings: tuple[str, ...] = ("positive",)  # shadows also POST-transferred: "positive" or eps tags
    transfer_pool: int = 0  # pool examples scored on the target (0 = all)
    transfer_steps: int = 10  # POST steps per shadow transfer (last step kept)
    transfer_batch_size: int = 8  # public examples per POST step
    transfer_examples: int = 64  # public examples per shadow transfer
    canaries: int = 500  # m mislabelled canaries for the one-run audit, each in the run w.p. 1/2
    canary_epochs: float = 1.0  # passes over pool + included canaries in each one-run training
    canary_guesses: tuple[int, ...] = (50, 100, 250, 500)  # numbers of guesses tried (Bonferroni over them)
    confidence: float = 0.95  # of eps_hat and of the bootstrap CIs
    bootstrap: int = 1000  # resamples of examples for the AUC / TPR confidence intervals


@dataclass(frozen=True)
class Config:
    profile: str = "cpu"
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    def section_hash(self, *sections: str) -> str:
        """Short digest of the named sections (plus model and seed): changes exactly when they change."""
        payload = {"model": self.model, "seed": self.seed}
        payload.update({s: dataclasses.asdict(getattr(self, s)) for s in sections})
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def load_config(profile: str = "cpu", overrides: dict[str, Any] | None = None) -> Config:
    """Read ``params/<profile>.yaml`` strictly; ``overrides`` (same nesting) win over the file."""
    path = PARAMS_DIR / f"{profile}.yaml"
    if not path.exists():
        raise ConfigError(f"no profile {profile!r}: {path} does not exist (profiles: {', '.join(PROFILES)})")
    data = yaml.safe_load(path.read_text()) or {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    data.setdefault("profile", profile)
    if data["profile"] != profile:
        raise ConfigError(f"{path} says profile {data['profile']!r} but was loaded as {profile!r}")
    return _build(Config, data, "")
