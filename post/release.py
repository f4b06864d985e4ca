"""The provider's released source: only what distillation trained, so a long distillation is made once.

A source distilled with ``distill.train_layers`` is the target cut to a few layers with the top ones
retrained; its embeddings, head and lower layers are the target's own. A release stores only the trained
tensors (bf16 safetensors, tens of MB where the whole source is hundreds) next to a manifest: the settings
and their distill hash, tokens, wall time, the command and commit that made it, the files' SHA-256 and a
digest of the whole source. ``post distill --release`` (``make source``) writes it to ``sources/<profile>/``,
where it is committed once; the distill stage rebuilds the source from it on the target when it was made with
the profile's settings, and distils otherwise. Rebuilt or distilled, the source is the same model: a
distillation with ``train_layers`` ends by rounding what it trained to bf16, and the rebuilt source must have
the digest the manifest names (the same target underneath).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .artifacts import write_manifest
from .config import Config
from .files import ROOT, atomic_dir, read_json, relative, write_json
from .student import distill_hash, make_student, trainable

SOURCES = ROOT / "sources"
FILE = "layers.safetensors"
LIMIT_MB = 60  # a repository keeps every version it was ever given


class ReleaseError(ValueError):
    """A release that cannot be written (too large) or trusted (not what its manifest names)."""


def release_dir(profile: str) -> Path:
    return SOURCES / profile


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_digest(model) -> str:
    """SHA-256 of a model's whole state (names and fp32 values): the same only for the same source."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def trained_names(student, cfg: Config) -> list[str]:
    """The parameters distillation trains under ``cfg.distill``: what a release has to carry."""
    ids = {id(p) for p in trainable(student, cfg.distill)}
    names = [name for name, p in student.named_parameters() if id(p) in ids]
    student.requires_grad_(False)
    return names


def release_megabytes(student, cfg: Config) -> float:
    params = dict(student.named_parameters())
    return sum(params[name].numel() * 2 for name in trained_names(student, cfg)) / 1e6


def check_releasable(cut, cfg: Config) -> None:
    """Refuse, before any distillation, a release that could not be written: it needs ``train_layers`` (the
    bf16 rounding that makes a rebuilt source the distilled one) and must fit the size limit."""
    if not cfg.distill.train_layers:
        raise ReleaseError("a release stores only the layers distillation trained: set distill.train_layers")
    size = release_megabytes(cut, cfg)
    if size > LIMIT_MB:
        one = release_megabytes(cut, dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill,
                                                                                            train_layers=1)))
        advice = ("set a smaller distill.train_layers" if one <= LIMIT_MB else
                  f"even one of {cfg.model}'s layers takes {one:.0f} MB: distil its sources where they are used")
        raise ReleaseError(f"the top {cfg.distill.train_layers} layers take {size:.0f} MB in bf16, more than a "
                           f"release's {LIMIT_MB} MB: {advice}")


def write_release(cfg: Config, student, record: dict) -> Path:
    """Write the trained tensors of ``student`` (made by ``cfg``'s distillation, ``record``) and the manifest."""
    check_releasable(student, cfg)
    params = dict(student.named_parameters())
    tensors = {name: params[name].detach().to("cpu", torch.bfloat16).contiguous()
               for name in trained_names(student, cfg)}
    if not all(torch.equal(params[name].detach().cpu(), t.to(params[name].dtype)) for name, t in tensors.items()):
        raise ReleaseError("the source's trained tensors are not bf16 values: it was distilled before "
                           "distillation rounded them; distil it again")
    target = release_dir(cfg.profile)
    with atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / FILE))
        write_json(tmp / "distill.json", record)
        write_manifest(tmp, cfg, distill_hash=record["distill_hash"], precision=record["precision"],
                       student_layers=record["student_layers"], train_layers=cfg.distill.train_layers,
                       tensors=len(tensors),
                       megabytes=round(sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6, 1),
                       sha256={name: sha256(tmp / name) for name in (FILE, "distill.json")},
                       source_digest=state_digest(student), train_tokens=record["train_tokens"],
                       distill_wall_seconds=record["cost"]["total"]["wall_seconds"],
                       command=f"post distill --profile {cfg.profile} --release",
                       written=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    return target


def release_hash(cfg: Config) -> str | None:
    """The distill hash of the profile's release if it was made with the profile's settings, else None.

    A ``precision`` of "auto" counts as what it meant where the release was made: the released source is the
    same model on a machine where "auto" means something else, so it is used there too.
    """
    manifest = release_dir(cfg.profile) / "manifest.json"
    if not manifest.is_file():
        return None
    made = read_json(manifest)
    if "distill.precision" in cfg.auto_settings:
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, precision=made["precision"]))
    return made["distill_hash"] if made["distill_hash"] == distill_hash(cfg) else None


def verify(cfg: Config) -> dict:
    """The release's manifest, once its files are the ones it names."""
    directory = release_dir(cfg.profile)
    manifest = read_json(directory / "manifest.json")
    for name, digest in manifest["sha256"].items():
        if sha256(directory / name) != digest:
            raise ReleaseError(f"{relative(directory / name)} is not the file its manifest names (SHA-256 "
                               "differs): restore it from git, or delete the directory to distil again")
    return manifest


def load_release(cfg: Config, teacher) -> tuple[torch.nn.Module, dict] | None:
    """The source rebuilt from the profile's release on ``teacher``, with its distillation record; None when
    the profile has no release for its settings. A release that is not what its manifest names is refused."""
    if release_hash(cfg) is None:
        return None
    directory = release_dir(cfg.profile)
    manifest = verify(cfg)
    student = make_student(teacher, manifest["student_layers"])
    tensors = load_file(str(directory / FILE))
    params = dict(student.named_parameters())
    expected = {name: tuple(params[name].shape) for name in trained_names(student, cfg)}
    if {name: tuple(t.shape) for name, t in tensors.items()} != expected:
        raise ReleaseError(f"{relative(directory / FILE)} does not hold the tensors these settings train, in "
                           "their shapes")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name].dtype))
    if state_digest(student) != manifest["source_digest"]:
        raise ReleaseError(f"the source rebuilt from {relative(directory)} on {cfg.model} is not the released one "
                           "(another target underneath?): delete the directory to distil again")
    return student, read_json(directory / "distill.json")
