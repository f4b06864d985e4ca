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


@dataclass(frozen=True)
class DistillConfig:
    public_pool: str = "news"
    student_layers: tuple[int, ...] = ()  # () = first, last and evenly spaced ones (num_student_layers)
    num_student_layers: int = 4
    seq_len: int = 128
    train_sequences: int = 2048
    eval_sequences: int = 64
    batch_size: int = 8
    epochs: int = 1
    lr: float = 1e-4
    temperature: float = 2.0
    a_ce: float = 5.0
    a_lm: float = 2.0
    a_cos: float = 1.0
    teacher_cache: str = "topk"  # "topk" | "full" | "none"
    top_k: int = 64
    eval_every: int = 50
    checkpoint_every: int = 50


@dataclass(frozen=True)
class TuneConfig:
    prompt_length: int = 20
    steps: int = 200
    batch_size: int = 32
    lr: float = 0.01
    epsilons: tuple[float, ...] = (float("inf"), 8.0, 4.0, 1.0)
    full_pt_epsilons: tuple[float, ...] = (float("inf"), 8.0)
    full_pt_steps: int = 50
    max_grad_norm: float = 1.0
    eval_every: int = 50
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class TransferConfig:
    public_examples: int = 512
    steps: int = 200
    batch_size: int = 16
    lr: float = 0.01
    alpha: float = 0.5
    temperature: float = 2.0
    init: str = "source"  # "source" | "instruction"
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    public_sizes: tuple[int, ...] = (32, 128, 512, 2048)
    eval_every: int = 50


@dataclass(frozen=True)
class AuditConfig:
    pool_size: int = 1000
    shadows: int = 16
    epochs: int = 4
    epsilons: tuple[float, ...] = (float("inf"), 8.0, 1.0)
    canaries: int = 1000
    positive_control_pool: int = 64
    positive_control_epochs: int = 30
    bootstrap: int = 1000


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
